"""Tests for lab.data.labelled_text: the bundled set, CSV/JSONL/folder/url sources, tokens and refusals."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import torch

from lab.config import load_config
from lab.data import DATAMODULES
from lab.data.bundled import make_sentiment
from lab.data.labelled_text import BUNDLED, PAD_ID, LabelledTextConfig, LabelledTextDataModule
from lab.data.tokenizers import CharTokenizer, train_tokenizer
from lab.errors import ConfigError, DataError


def setup_dm(config: LabelledTextConfig, **kwargs) -> LabelledTextDataModule:
    kwargs.setdefault("block_size", 64)
    dm = LabelledTextDataModule(config, **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


def all_rows(dm: LabelledTextDataModule) -> list[tuple[str, str]]:
    """(decoded text, class name) of every sample in every split."""
    out = []
    for ds in dm.datasets.values():
        x, y = ds.tensors
        for ids, label in zip(x, y):
            out.append((dm.tokenizer.decode(ids[ids != PAD_ID].tolist()), dm.class_names[int(label)]))
    return sorted(out)


# --------------------------------------------------------------------------- the bundled set


@pytest.fixture(scope="module")
def bundled() -> LabelledTextDataModule:
    return setup_dm(LabelledTextConfig())


def test_the_shipped_file_is_what_its_generator_writes() -> None:
    assert BUNDLED.read_text(encoding="utf-8") == make_sentiment.render(make_sentiment.generate())
    rows = [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4000 and sum(r["label"] == "positive" for r in rows) == 2000
    assert len({r["text"] for r in rows}) == 4000 and max(len(r["text"]) for r in rows) <= 64
    readme = (BUNDLED.parent / "README.md").read_text(encoding="utf-8")
    assert "CC0" in readme and "Written for the Large Model Lab" in readme


def test_the_opinion_words_appear_under_both_labels() -> None:
    """Negations and contrasts put every adjective of the grammar under both labels: no word decides alone."""
    rows = [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines()]
    words = [r["text"].lower().replace(".", " ").replace(",", " ").replace(":", " ").split() for r in rows]
    for adjective in make_sentiment.GOOD + make_sentiment.BAD:
        labels = [r["label"] for r, w in zip(rows, words) if adjective in w]
        positive = labels.count("positive") / len(labels)
        assert len(labels) >= 30 and 0.25 < positive < 0.75, adjective


def test_bundled_splits_padding_and_labels(bundled: LabelledTextDataModule) -> None:
    assert bundled.split_sizes == {"train": 2800, "val": 400, "test": 800}
    assert bundled.class_names == ["negative", "positive"] and bundled.num_classes == 2
    assert isinstance(bundled.tokenizer, CharTokenizer) and bundled.vocab_size == bundled.tokenizer.vocab_size
    for split in ("train", "val", "test"):  # stratified: both classes equally in every split
        y = bundled.datasets[split].tensors[1]
        assert int(y.sum()) * 2 == len(y)
    x, y = next(iter(bundled.train_dataloader()))
    assert x.dtype == torch.int64 and y.dtype == torch.int64 and x.shape[0] == 32
    real = x != PAD_ID
    assert real[:, 0].all()  # every text has a first token
    assert (real.int().diff(dim=1) <= 0).all()  # right padding: no real token after a pad
    assert int(x.max()) < bundled.vocab_size
    texts = [json.loads(line)["text"] for line in BUNDLED.read_text(encoding="utf-8").splitlines()]
    assert sorted(t for t, _ in all_rows(bundled)) == sorted(texts)


def test_the_split_depends_only_on_the_seed(bundled: LabelledTextDataModule) -> None:
    again = setup_dm(LabelledTextConfig())
    other = setup_dm(LabelledTextConfig(), seed=7)
    test = bundled.datasets["test"].tensors[0]
    assert torch.equal(again.datasets["test"].tensors[0], test)
    assert not torch.equal(other.datasets["test"].tensors[0], test)


def test_texts_are_cut_to_max_tokens() -> None:
    dm = setup_dm(LabelledTextConfig(max_tokens=10))
    x = dm.datasets["train"].tensors[0]
    assert x.shape[1] == 10 and (x != PAD_ID).all(dim=1).any()
    with pytest.raises(ConfigError, match="data.max_tokens"):
        LabelledTextDataModule(LabelledTextConfig(max_tokens=100), block_size=64)


def test_the_registry_and_the_family_preset_use_it() -> None:
    assert DATAMODULES["labelled-text"] == (LabelledTextConfig, LabelledTextDataModule)
    cfg = load_config("sentiment")
    assert cfg.data.name == "labelled-text" and cfg.model.block_size == 64
    with pytest.raises(ConfigError, match="data.max_tokens"):
        load_config("sentiment", {"data.max_tokens": 65})


# --------------------------------------------------------------------------- sources


ROWS = [("A fine, warm film.", "pos"), ("Dull and slow.", "neg"), ("I loved it!", "pos"), ("Never again.", "neg"),
        ("So \"clever\", really.", "pos"), ("Awful, just awful.", "neg"), ("Great fun.", "pos"), ("Flat.", "neg"),
        ("Superb cast.", "pos"), ("Broken on arrival.", "neg")]


def small(*, given=None, labels=None, cache_dir=None, **fields) -> LabelledTextDataModule:
    """A DataModule on a few texts (``given``: a tokenizer to use): 20% each for validation and
    test, so every split has both classes."""
    config = LabelledTextConfig(**{"val_fraction": 0.2, "test_fraction": 0.2, **fields})
    return setup_dm(config, tokenizer=given, labels=labels, cache_dir=cache_dir)


def write_csv(path: Path, rows=ROWS, header=("text", "label"), delimiter=",") -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows=ROWS, text_key="text", label_key="label") -> Path:
    text = "".join(json.dumps({text_key: t, label_key: lab}) + "\n" for t, lab in rows)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def test_csv_file(tmp_path: Path) -> None:
    dm = small(path=str(write_csv(tmp_path / "r.csv")))
    assert dm.class_names == ["neg", "pos"] and all_rows(dm) == sorted(ROWS)
    assert dm.split_sizes == {"train": 6, "val": 2, "test": 2}


def test_tsv_with_other_column_names(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.tsv", header=("review", "sentiment"), delimiter="\t")
    dm = small(path=str(path), text_field="review", label_field="sentiment")
    assert all_rows(dm) == sorted(ROWS)


def test_gzipped_jsonl_file_and_numeric_labels_in_numeric_order(tmp_path: Path) -> None:
    rows = [(t, {"pos": 10, "neg": 2}[lab]) for t, lab in ROWS]
    dm = small(path=str(write_jsonl(tmp_path / "r.jsonl.gz", rows)))
    assert dm.class_names == ["2", "10"] and all_rows(dm) == sorted((t, str(lab)) for t, lab in rows)


def test_a_folder_per_label_like_imdb(tmp_path: Path) -> None:
    root = tmp_path / "aclImdb" / "train"
    for i, (text, label) in enumerate(ROWS):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{i}_7.txt").write_text(text, encoding="utf-8")
    (root / "unsup").mkdir()
    for i in range(3):
        (root / "unsup" / f"{i}_0.txt").write_text(f"No label here ({i}).", encoding="utf-8")
    (root / "urls_pos.txt").write_text("http://example.org\n", encoding="utf-8")  # beside the folders: ignored
    (root / "pos" / ".hidden").write_text("not a review", encoding="utf-8")
    dm = small(path=str(root), labels=["neg", "pos"])  # model.labels picks the folders
    assert dm.class_names == ["neg", "pos"] and all_rows(dm) == sorted(ROWS)
    everything = small(path=str(root), val_fraction=0.3, test_fraction=0.3)
    assert everything.class_names == ["neg", "pos", "unsup"]
    with pytest.raises(DataError, match="no folder for the label.*neutral"):
        small(path=str(root), labels=["neg", "neutral"])


def test_given_labels_set_the_output_order(tmp_path: Path) -> None:
    dm = small(path=str(write_csv(tmp_path / "r.csv")), labels=("pos", "neg"))
    assert dm.class_names == ["pos", "neg"]
    x, y = dm.datasets["train"].tensors
    for ids, label in zip(x, y):
        text = dm.tokenizer.decode(ids[ids != PAD_ID].tolist())
        assert dict(ROWS)[text] == ["pos", "neg"][int(label)]


def test_url_with_sha256_is_downloaded_once_then_read_offline(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "reviews.jsonl")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dm = small(url=src.as_uri(), sha256=sha, cache_dir=tmp_path / "cache")
    assert all_rows(dm) == sorted(ROWS)
    src.unlink()  # gone at the source: the verified copy in the cache serves
    assert all_rows(small(url=src.as_uri(), sha256=sha, cache_dir=tmp_path / "cache")) == sorted(ROWS)


def test_a_wrong_sha256_keeps_nothing(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "reviews.jsonl")
    with pytest.raises(DataError, match="checksum mismatch"):
        small(url=src.as_uri(), sha256="0" * 64, cache_dir=tmp_path / "cache")
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_bpe_tokens(tmp_path: Path) -> None:
    dm = small(path=str(write_csv(tmp_path / "r.csv")), tokenizer="bpe", vocab_size=300)
    assert dm.vocab_size <= 300 and all_rows(dm) == sorted(ROWS)


# --------------------------------------------------------------------------- a pretrained tokenizer


def test_a_given_tokenizer_is_used_and_unknown_characters_follow_the_policy(tmp_path: Path) -> None:
    path = str(write_csv(tmp_path / "r.csv", rows=[("café crème", "pos"), ("bad tea", "neg")] * 5))
    tok = train_tokenizer("char", "abcdefghijklmnopqrstuvwxyz ", 0)  # no é, like a model of English prose
    dropped = small(path=path, given=tok)
    assert dropped.tokenizer is tok and sorted({t for t, _ in all_rows(dropped)}) == ["bad tea", "caf crme"]
    stand_in = small(path=path, unknown="e", given=tok)
    assert sorted({t for t, _ in all_rows(stand_in)}) == ["bad tea", "cafe creme"]
    with pytest.raises(DataError, match=r"line 2: the character 'é' \(U\+00E9\).*data.unknown"):
        small(path=path, unknown="error", given=tok)
    with pytest.raises(ConfigError, match="data.unknown = '!'"):
        small(path=path, unknown="!", given=tok)


# --------------------------------------------------------------------------- refusals: one line each


@pytest.mark.parametrize("bad, match", [
    ({"unknown": "skip"}, "data.unknown = 'skip'"),
    ({"tokenizer": "word"}, "data.tokenizer = 'word'"),
    ({"url": "http://x/y.jsonl"}, "data.sha256"),
    ({"url": "http://x/y.parquet", "sha256": "0" * 64}, "data.url = 'http://x/y.parquet'"),
    ({"path": "nowhere.csv"}, "data.path = 'nowhere.csv'"),
    ({"max_tokens": 0}, "data.max_tokens = 0"),
    ({"label_field": "text"}, "data.label_field = 'text'"),
    ({"test_fraction": 0.95}, "data.test_fraction"),
])
def test_bad_settings_are_refused_before_any_reading(bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LabelledTextDataModule(LabelledTextConfig(**bad), block_size=64)


def test_a_file_of_another_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "r.txt").write_text("text,label\n")
    with pytest.raises(ConfigError, match=r"data.path = .*r.txt.*\.csv, \.tsv, \.jsonl"):
        LabelledTextDataModule(LabelledTextConfig(path=str(tmp_path / "r.txt")), block_size=64)


def test_a_missing_column_is_named_with_the_ones_there(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", header=("review", "label"))
    with pytest.raises(DataError, match=r"no 'text' column \(its columns: review, label\); set data.text_field"):
        small(path=str(path))
    jl = write_jsonl(tmp_path / "r.jsonl", label_key="sentiment")
    with pytest.raises(DataError, match=r"r.jsonl line 1 has no 'label' key .*set data.label_field"):
        small(path=str(jl))


def test_an_unknown_label_is_refused_naming_the_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", rows=[*ROWS, ("Meh.", "neutral")])
    with pytest.raises(DataError, match=r"r.csv line 12 has the label 'neutral', which is not in model.labels"):
        small(path=str(path), labels=["neg", "pos"])


@pytest.mark.parametrize("content, match", [
    ("", "holds no labelled texts"),
    ("text,label\n", "holds no labelled texts"),
    ("text,label\nGood.,pos\nFine.,pos\n", "only the label 'pos'"),
    ("text,label\nGood.,pos\n,neg\n", "line 3 has no text to classify"),
])
def test_empty_or_unusable_files_are_refused(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "r.csv").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        small(path=str(tmp_path / "r.csv"))


def test_broken_jsonl_lines_are_named(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text('{"text": "ok", "label": "a"}\n{"text": "no end"\n', encoding="utf-8")
    with pytest.raises(DataError, match="r.jsonl line 2 is not JSON"):
        small(path=str(tmp_path / "r.jsonl"))
    (tmp_path / "r.jsonl").write_text('["text", "label"]\n', encoding="utf-8")
    with pytest.raises(DataError, match="r.jsonl line 1 is not a JSON object"):
        small(path=str(tmp_path / "r.jsonl"))


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        small(path=str(tmp_path / "r.csv"))


def test_too_few_texts_for_the_splits_are_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", rows=ROWS[:4])
    with pytest.raises(DataError, match="too few"):
        small(path=str(path), val_fraction=0.1, test_fraction=0.1)
