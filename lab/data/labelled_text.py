"""Labelled texts for classifiers: a CSV or JSONL file, a folder per label, or a verified download.

    from lab.data.labelled_text import LabelledTextConfig, LabelledTextDataModule
    dm = LabelledTextDataModule(LabelledTextConfig(), block_size=64)   # the bundled sentiment set
    dm.prepare_data(); dm.setup()
    ids, labels = next(iter(dm.train_dataloader()))   # int64 [32, T] right-padded with PAD_ID, int64 [32]
    dm.class_names, dm.num_classes, dm.tokenizer, dm.vocab_size, dm.split_sizes

Sources (one of):

- nothing: ``lab/data/bundled/sentiment.jsonl``, 4,000 positive/negative review sentences written
  for the lab (CC0; see ``lab/data/bundled/README.md``), so it runs offline;
- ``data.path`` to a ``.csv``/``.tsv`` file with a header, or a ``.jsonl`` file of objects (either
  may end in ``.gz``), reading the ``text_field`` and ``label_field`` columns;
- ``data.path`` to a folder holding one folder per label, one text per file (IMDB's
  ``aclImdb/train/{pos,neg}`` layout); files beside the label folders are ignored, and with
  ``model.labels`` set only those folders are read (IMDB's ``unsup`` is left out by
  ``model.labels: [neg, pos]``);
- ``data.url`` + ``data.sha256``: a CSV or JSONL file downloaded once into the cache and verified.

Labels are strings; their order (the classifier's output order) is ``labels`` (the model's
``model.labels``, recorded in the run's config) or else sorted (numerically when they are all
whole numbers). A file row whose label is not among given ``labels`` is refused.

Tokens: a ``char`` or ``bpe`` tokenizer trained on the texts, or the pretrained model's own
(``tokenizer=``, what the gpt-classifier family passes with ``model.init_from``). A character
tokenizer trained on other text lacks some characters: ``data.unknown`` says what happens to
them -- ``drop`` (default: left out), ``error`` (refused, naming the character and the row),
or one character the tokenizer has, which stands in for each of them. Texts are cut to their
first ``max_tokens`` tokens and right-padded with ``PAD_ID`` (-1, below every real id) to the
longest text of the set; the model reads ids below 0 as padding.

Everything is read and tokenized in memory at ``setup`` (a fraction of a second for the bundled
set, seconds for IMDB's 25,000 reviews); only downloads are cached (``$LAB_CACHE_DIR/downloads``).
Splits are stratified by label and depend only on the seed.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.data.corpus import check_source, fetch
from lab.data.splits import ArrayDataModule, check_int, split_indices, validate_data_config
from lab.data.tokenizers import CharTokenizer, Tokenizer, check_tokenizer_fields, train_tokenizer
from lab.errors import ConfigError, DataError, require
from lab.fileio import resolve_cache_dir

BUNDLED = Path(__file__).parent / "bundled" / "sentiment.jsonl"
"""The labelled set the lab ships (positive/negative review sentences; CC0, written for the lab)."""
PAD_ID = -1
"""Padding after each text: below every real token id, so it never collides with one."""
UNKNOWN_POLICIES = ("drop", "error")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass
class LabelledTextConfig:
    """Settings for the labelled-text DataModule (the ``data:`` section of a text classifier)."""

    name: str = "labelled-text"
    """Registry key; selects LabelledTextDataModule."""
    path: str | None = None
    """A .csv/.tsv/.jsonl file (optionally .gz), or a folder with one folder of text files per label;
    None = the bundled sentiment set."""
    url: str | None = None
    """A CSV or JSONL file to download (only when set); cached under the cache dir's downloads/."""
    sha256: str | None = None
    """SHA-256 of the file at ``url``; required with ``url`` so a changed or broken download is refused."""
    text_field: str = "text"
    """The column (CSV) or key (JSONL) holding each text."""
    label_field: str = "label"
    """The column (CSV) or key (JSONL) holding each label."""
    tokenizer: str = "char"
    """"char" or "bpe", trained on the texts; with model.init_from the pretrained model's tokenizer is used."""
    vocab_size: int = 512
    """Target BPE vocabulary size including the 256 byte tokens (>= 257); ignored for "char"."""
    max_tokens: int | None = None
    """Tokens kept from the start of each text; None = model.block_size (it may not be larger)."""
    unknown: str = "drop"
    """Characters a pretrained character tokenizer lacks: "drop" them, "error", or one character to use instead."""
    val_fraction: float = 0.1
    """Share of the texts used for validation, in (0, 1); stratified by label."""
    test_fraction: float = 0.2
    """Share of the texts held out for the final test, in [0, 1); 0 = no test split."""
    batch_size: int = 32
    """Texts per batch."""
    num_workers: int = 0
    """DataLoader worker processes; 0 reads in the main process (the data is in memory)."""

    def validate(self) -> None:
        """Refuse invalid values with a ConfigError naming the field (before any file is read)."""
        validate_data_config(self)
        check_source(self)
        check_tokenizer_fields(self)
        require(self.max_tokens is None or self.max_tokens >= 1, "data.max_tokens", self.max_tokens,
                "a whole number >= 1, or null for model.block_size")
        require(self.unknown in UNKNOWN_POLICIES or len(self.unknown) == 1, "data.unknown", self.unknown,
                "drop, error, or a single character to put in place of unknown ones")
        require(bool(self.text_field) and bool(self.label_field) and self.text_field != self.label_field,
                "data.label_field", self.label_field, f"a column name other than data.text_field={self.text_field!r}")
        require(self.path is None or Path(self.path).exists(), "data.path", self.path,
                "an existing .csv/.tsv/.jsonl file or a folder of label folders", "leave it out for the bundled set")
        if self.path is not None and Path(self.path).is_file():
            _format(Path(self.path))
        if self.url is not None:
            _format(Path(urllib.parse.urlparse(self.url).path), "data.url", self.url)


def _format(file: Path, field: str = "data.path", value: str | None = None) -> str:
    """The file's format from its name (``.gz`` is looked through); ConfigError naming ``value`` for any other."""
    suffixes = [s.lower() for s in file.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    kind = FORMATS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise ConfigError(field, value or str(file), "a file ending in .csv, .tsv, .jsonl or .json (optionally .gz)"
                          + (", or a folder with one folder of texts per label" if field == "data.path" else ""))
    return kind


# --------------------------------------------------------------------------- reading


def _read_text(file: Path) -> str:
    try:
        raw = file.read_bytes()
        return (gzip.decompress(raw) if file.suffix.lower() == ".gz" else raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{file} is not UTF-8 text (bad byte at offset {e.start}); convert it, "
                        "e.g. `iconv -f latin1 -t utf-8`") from None
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {file}: {e}") from None


def _rows_csv(file: Path, text_field: str, label_field: str, delimiter: str) -> list[tuple[str, str, str]]:
    reader = csv.DictReader(io.StringIO(_read_text(file), newline=""), delimiter=delimiter)
    columns = reader.fieldnames or []
    for field, name in (("data.text_field", text_field), ("data.label_field", label_field)):
        if columns and name not in columns:
            raise DataError(f"{file} has no {name!r} column (its columns: {', '.join(columns)}); set {field} "
                            "to the right one")
    # Row numbers count the header as line 1, as a spreadsheet shows them.
    return [(f"{file.name} line {i}", row.get(text_field) or "", row.get(label_field) or "")
            for i, row in enumerate(reader, start=2)]


def _rows_jsonl(file: Path, text_field: str, label_field: str) -> list[tuple[str, str, str]]:
    rows = []
    for i, line in enumerate(_read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file.name} line {i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where} is not JSON ({e.msg}); each line must be one object like "
                            f'{{"{text_field}": "...", "{label_field}": "..."}}') from None
        if not isinstance(obj, dict):
            raise DataError(f"{where} is not a JSON object; each line must look like "
                            f'{{"{text_field}": "...", "{label_field}": "..."}}')
        for field, name in (("data.text_field", text_field), ("data.label_field", label_field)):
            if name not in obj:
                raise DataError(f"{where} has no {name!r} key (it has {', '.join(map(repr, obj)) or 'none'}); "
                                f"set {field} to the right one")
        label = obj[label_field]
        if not isinstance(label, (str, int)) or isinstance(label, bool):
            raise DataError(f"{where}: the label {label!r} is not a string or whole number")
        rows.append((where, obj[text_field] if isinstance(obj[text_field], str) else "", str(label)))
    return rows


def _rows_folders(root: Path, labels: list[str] | None) -> list[tuple[str, str, str]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if labels is not None:
        missing = [name for name in labels if not (root / name).is_dir()]
        if missing:
            raise DataError(f"{root} has no folder for the label(s) {', '.join(missing)} (model.labels); its "
                            f"folders: {', '.join(p.name for p in folders) or 'none'}")
        folders = [root / name for name in labels]
    rows = []
    for folder in folders:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(folder).parts)):
            rows.append((str(file.relative_to(root)), _read_text(file), folder.name))
    return rows


def read_labelled(source: Path, text_field: str = "text", label_field: str = "label",
                  labels: list[str] | None = None) -> list[tuple[str, str, str]]:
    """``(where, text, label)`` for every text of a file or label-folder tree; DataError if there is none."""
    if source.is_dir():
        rows = _rows_folders(source, labels)
    else:
        kind = _format(source)
        rows = (_rows_jsonl(source, text_field, label_field) if kind == "jsonl"
                else _rows_csv(source, text_field, label_field, "\t" if kind == "tsv" else ","))
    if not rows:
        raise DataError(f"{source} holds no labelled texts; give it rows with a {text_field!r} and a "
                        f"{label_field!r}" + (" (or folders of text files, one per label)" if source.is_dir() else ""))
    return rows


def class_order(rows: list[tuple[str, str, str]], labels: list[str] | None = None) -> list[str]:
    """The class names in output order: ``labels`` if given (refusing a row with any other), else sorted."""
    if labels is not None:
        allowed = set(labels)
        for where, _, label in rows:
            if label not in allowed:
                raise DataError(f"{where} has the label {label!r}, which is not in model.labels "
                                f"({', '.join(labels)}): add it there or remove those rows")
        return list(labels)
    names = sorted({label for _, _, label in rows})
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        names.sort(key=int)
    if len(names) < 2:
        raise DataError(f"the data has only the label {names[0]!r}: a classifier needs two or more classes")
    return names


# --------------------------------------------------------------------------- tokens


def _clean(text: str, known: set[str], policy: str, where: str) -> str:
    """``text`` with the characters a character tokenizer lacks handled by ``policy`` (see the module doc)."""
    if policy == "error":
        ch = next(c for c in text if c not in known)
        raise DataError(f"{where}: the character {ch!r} (U+{ord(ch):04X}) is not in the tokenizer's "
                        f"{len(known)} characters; set data.unknown to drop (leave such characters out) "
                        "or to a character to use instead")
    stand_in = "" if policy == "drop" else policy
    return "".join(c if c in known else stand_in for c in text)


def encode_texts(rows: list[tuple[str, str, str]], tokenizer: Tokenizer, max_tokens: int,
                 unknown: str = "drop") -> np.ndarray:
    """Token ids ``[N, L]``: each text's first ``max_tokens`` tokens, right-padded with ``PAD_ID``.

    Only a character tokenizer can lack a character (byte-level BPE has them all): ``unknown``
    says what happens to those.
    """
    known = set(tokenizer.chars) if isinstance(tokenizer, CharTokenizer) else None
    if known is not None and unknown not in UNKNOWN_POLICIES and unknown not in known:
        raise ConfigError("data.unknown", unknown, "drop, error, or a character the tokenizer has")
    encoded = []
    for where, text, _ in rows:
        if known is not None and not set(text) <= known:
            text = _clean(text, known, unknown, where)
        ids = tokenizer.encode(text)[:max_tokens]
        if not ids:
            raise DataError(f"{where} has no text to classify (empty, or only characters the tokenizer lacks); "
                            "remove the row or fill it in")
        encoded.append(ids)
    out = np.full((len(encoded), max(len(ids) for ids in encoded)), PAD_ID, dtype=np.int64)
    for i, ids in enumerate(encoded):
        out[i, : len(ids)] = ids
    return out


# --------------------------------------------------------------------------- the DataModule


class LabelledTextDataModule(ArrayDataModule):
    """(ids int64 [N, T] right-padded with ``PAD_ID``, label int64 [N]) per split, in memory."""

    def __init__(self, config: LabelledTextConfig, seed: int = 1337, block_size: int | None = None,
                 tokenizer: Tokenizer | None = None, labels: list[str] | tuple[str, ...] | None = None,
                 cache_dir: str | Path | None = None) -> None:
        super().__init__(config, seed)
        config.validate()  # every check before any file is read
        max_tokens = config.max_tokens if config.max_tokens is not None else block_size
        if max_tokens is None:
            raise ConfigError("data.max_tokens", None, "a whole number >= 1 (or build the DataModule with block_size)")
        check_int("data.max_tokens", max_tokens, 1)
        if block_size is not None and max_tokens > block_size:
            raise ConfigError("data.max_tokens", max_tokens, f"at most model.block_size = {block_size}",
                              "the model has no position for later tokens")
        self.max_tokens = max_tokens
        self.given_tokenizer = tokenizer
        self.labels = list(labels) if labels is not None else None
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.tokenizer: Tokenizer | None = None
        self.vocab_size: int | None = None
        self.class_names: list[str] = []
        self.num_classes: int | None = None

    def source(self) -> Path:
        """The file or folder the texts come from (downloading ``data.url`` if it is not cached yet)."""
        c = self.config
        if c.url is not None:
            return fetch(c.url, c.sha256, self.cache_dir)
        return Path(c.path).expanduser() if c.path is not None else BUNDLED

    def prepare_data(self) -> None:
        """Download ``data.url`` once (Lightning runs this on rank 0); local sources need nothing."""
        if self.config.url is not None:
            self.source()

    def build_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        c = self.config
        source = self.source()
        rows = read_labelled(source, c.text_field, c.label_field, self.labels)
        self.class_names = class_order(rows, self.labels)
        self.num_classes = len(self.class_names)
        index = {name: i for i, name in enumerate(self.class_names)}
        y = np.array([index[label] for _, _, label in rows], dtype=np.int64)
        # A tokenizer of our own learns from every text, val and test too: it holds a vocabulary, no labels.
        self.tokenizer = self.given_tokenizer or train_tokenizer(c.tokenizer, "\n".join(t for _, t, _ in rows),
                                                                 c.vocab_size)
        self.vocab_size = self.tokenizer.vocab_size
        x = encode_texts(rows, self.tokenizer, self.max_tokens, c.unknown)
        idx = split_indices(len(y), c.val_fraction, c.test_fraction, self.seed, stratify=y)
        return {k: (x[i], y[i]) for k, i in idx.items()}
