"""Text for language models: corpus -> tokenizer -> token files on disk -> (x, y) windows.

    from lab.data.text import TextDataConfig, TextDataModule
    dm = TextDataModule(TextDataConfig(tokenizer="bpe", vocab_size=512), block_size=64)
    dm.prepare_data()          # once: read corpus, train tokenizer, write uint16 .bin files
    dm.setup()                 # every process: memory-map the .bin files
    x, y = next(iter(dm.train_dataloader()))   # int64 [12, 64]; y is x shifted by one
    dm.tokenizer.decode(x[0].tolist()), dm.vocab_size, dm.split_sizes, dm.cache_path
    TextDataModule(config, block_size=64, tokenizer=pretrained_tokenizer)   # tokenize with it, train none

The corpus is the bundled CPython reference text unless ``data.path`` (local
files) or ``data.url`` + ``data.sha256`` (a verified download) say otherwise.
Token ids are split contiguously: the first part trains, the next validates,
the last tests. ``test_fraction=0`` gives nanoGPT's 0.9/0.1 train/val layout.

Prepared data lives in ``$LAB_CACHE_DIR/text/<kind>-<key>/`` (default cache:
``~/.cache/large-model-lab``), keyed by the corpus content and the tokenizer
and split settings, so changing any of them builds a new folder and an
unchanged setup reuses the old one. A tokenizer given to the DataModule (a pretrained
model's: ``model.init_from``) replaces the trained one; the key then holds its content hash
instead of ``data.tokenizer`` and ``data.vocab_size``, which it ignores.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lab.fileio import atomic_write, atomic_write_text, resolve_cache_dir
from lab.data.corpus import bundled_corpus, check_source, corpus_fingerprint, fetch, read_corpus
from lab.data.splits import check_int, make_loader, require_split, split_sizes, validate_data_config
from lab.data.tokenizers import (MIN_BPE_VOCAB, TOKENIZER_KINDS, Tokenizer, check_tokenizer_fields, load_tokenizer,
                                 train_tokenizer)
from lab.errors import ConfigError, DataError, require

__all__ = ["TextDataConfig", "TextDataModule", "TokenWindows", "bundled_corpus", "fetch", "read_corpus"]

# Bump when the cache layout changes, so old folders are never misread.
CACHE_FORMAT = 1
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"


@dataclass
class TextDataConfig:
    """Settings for the text DataModule (the ``data:`` section of a config)."""

    name: str = "text"
    """Registry key; selects TextDataModule."""
    path: str | None = None
    """A local UTF-8 text file, or a folder whose (non-hidden) files are all used; None = bundled corpus."""
    url: str | None = None
    """A public text file to download (only when set); cached under the cache dir's downloads/."""
    sha256: str | None = None
    """SHA-256 of the file at ``url``; required with ``url`` so a changed or broken download is refused."""
    tokenizer: str = "char"
    """"char" (one id per distinct character) or "bpe" (byte-level BPE, handles any text); ignored when
    model.init_from brings its own tokenizer."""
    vocab_size: int = 512
    """Target BPE vocabulary size including the 256 byte tokens (>= 257); ignored for "char"."""
    val_fraction: float = 0.05
    """Share of the tokens used for validation, in (0, 1)."""
    test_fraction: float = 0.05
    """Share of the tokens held out for the final test, in [0, 1); 0 = nanoGPT's train/val only."""
    batch_size: int = 12
    """Windows per batch."""
    num_workers: int = 0
    """DataLoader worker processes; 0 reads in the main process (the memmap makes that cheap)."""

    def validate(self) -> None:
        """Refuse invalid values with a ConfigError naming the field (before any file is read)."""
        validate_data_config(self)
        check_source(self)
        check_tokenizer_fields(self)
        require(self.path is None or Path(self.path).exists(), "data.path", self.path,
                "an existing UTF-8 text file or folder", "leave it out to use the bundled corpus")


class TokenWindows(Dataset):
    """(x, y) windows of ``block_size`` tokens starting at ``starts``; y is x shifted by one."""

    def __init__(self, data: np.ndarray, block_size: int, starts: np.ndarray) -> None:
        self.data, self.block_size, self.starts = data, block_size, starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.starts[i])
        chunk = torch.from_numpy(self.data[start : start + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies all of its data; send workers the file name instead.
        state = self.__dict__.copy()
        if isinstance(self.data, np.memmap):
            state["data"] = (str(self.data.filename), self.data.dtype.str)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["data"], tuple):
            filename, dtype = state["data"]
            state["data"] = np.memmap(filename, dtype=dtype, mode="r")
        self.__dict__.update(state)

    @classmethod
    def random(cls, data: np.ndarray, block_size: int, num_samples: int, seed: int) -> TokenWindows:
        """``num_samples`` windows at offsets drawn once from ``default_rng(seed)``."""
        starts = np.random.default_rng(seed).integers(0, len(data) - block_size, size=num_samples)
        return cls(data, block_size, starts)

    @classmethod
    def sequential(cls, data: np.ndarray, block_size: int) -> TokenWindows:
        """Back-to-back windows from the start; the last < block_size tokens are left out."""
        return cls(data, block_size, np.arange(0, len(data) - block_size, block_size))


def _stage_splits(stage: str | None, available: dict[str, int]) -> list[str]:
    """The splits a Lightning stage reads (None = all that exist)."""
    wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": []}
    return wanted.get(stage, list(available))


def _token_counts(data: np.ndarray, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """Occurrences of each token id, counted in chunks so a memmap is never widened whole."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for start in range(0, len(data), chunk):
        counts += np.bincount(data[start : start + chunk], minlength=vocab_size)
    return counts


def _read_meta(folder: Path) -> dict[str, Any] | None:
    """The folder's meta.json if every file it lists is present with the right size, else None."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or not (folder / TOKENIZER_FILE).is_file():
        return None
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        for name, n in meta["splits"].items():
            file = folder / f"{name}.bin"
            if not file.is_file() or file.stat().st_size != n * itemsize:
                return None
    except (KeyError, TypeError, AttributeError):
        return None  # a damaged meta.json: rebuild rather than crash
    return meta


class TextDataModule(pl.LightningDataModule):
    """Token windows for next-token prediction, prepared once and memory-mapped."""

    def __init__(
        self,
        config: TextDataConfig,
        block_size: int,
        seed: int = 1337,
        num_train_samples: int = 10_000,
        cache_dir: str | Path | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        """``tokenizer``: tokenize with this one (a pretrained model's) instead of training one."""
        super().__init__()
        # Every check runs here so a bad config fails before any reading or training.
        validate_data_config(config)
        if config.tokenizer not in TOKENIZER_KINDS:
            raise ConfigError("data.tokenizer", config.tokenizer, f"one of {', '.join(TOKENIZER_KINDS)}")
        if config.tokenizer == "bpe":
            check_int("data.vocab_size", config.vocab_size, MIN_BPE_VOCAB)
        check_source(config)
        check_int("model.block_size", block_size, 1)
        check_int("num_train_samples", num_train_samples, 1)
        self.config = config
        self.block_size = block_size
        self.seed = seed
        self.num_train_samples = num_train_samples
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.given_tokenizer = tokenizer
        self.tokenizer: Tokenizer | None = None
        self.vocab_size: int | None = None
        self.split_sizes: dict[str, int] = {}
        self.splits: dict[str, np.memmap] = {}
        self.cache_path: Path | None = None
        self._meta: dict[str, Any] | None = None

    def _locate(self) -> Path:
        """The cache folder for this corpus and these settings (computed once)."""
        if self.cache_path is None:
            c, given = self.config, self.given_tokenizer
            tokenizer = {"tokenizer": c.tokenizer, "vocab_size": c.vocab_size if c.tokenizer == "bpe" else None}
            if given is not None:
                tokenizer = {"tokenizer": "given", "sha256": hashlib.sha256(given.to_json().encode()).hexdigest()}
            key = json.dumps({
                "format": CACHE_FORMAT,
                "corpus": corpus_fingerprint(c),
                **tokenizer,
                "val_fraction": c.val_fraction,
                "test_fraction": c.test_fraction,
            }, sort_keys=True)
            digest = hashlib.sha256(key.encode()).hexdigest()[:16]
            self.cache_path = self.cache_dir / "text" / f"{'given' if given is not None else c.tokenizer}-{digest}"
        return self.cache_path

    def prepare_data(self) -> None:
        """Build the cache folder unless it is already complete (Lightning runs this on rank 0)."""
        folder = self._locate()
        if _read_meta(folder) is not None:
            return
        c = self.config
        text = read_corpus(c, self.cache_dir)
        tokenizer = self.given_tokenizer if self.given_tokenizer is not None else \
            train_tokenizer(c.tokenizer, text, c.vocab_size)
        ids = tokenizer.encode_array(text)
        dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32)
        sizes = split_sizes(len(ids), c.val_fraction, c.test_fraction)
        start = 0
        for name, n in sizes.items():
            part = ids[start : start + n].astype(dtype)
            atomic_write(folder / f"{name}.bin", part.tofile)
            start += n
        tokenizer.save(folder / TOKENIZER_FILE)
        meta = {
            "format": CACHE_FORMAT,
            "dtype": dtype.name,
            "splits": sizes,
            "tokenizer": "given" if self.given_tokenizer is not None else c.tokenizer,
            "vocab_size": tokenizer.vocab_size,
            "corpus_chars": len(text),
            "source": c.url or c.path or "bundled",
        }
        # meta.json goes last: its presence is what marks the folder complete.
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2))

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer and memory-map the splits; prepares the cache first if it is missing."""
        if self._meta is None:
            folder = self._locate()
            meta = _read_meta(folder)
            if meta is None:
                # Not reached under a Trainer (prepare_data ran first); lets scripts skip that call.
                self.prepare_data()
                meta = _read_meta(folder)
                if meta is None:
                    raise DataError(f"the data cache {folder} is incomplete after prepare_data(); delete it and retry")
            self.tokenizer = load_tokenizer(folder / TOKENIZER_FILE)
            self.vocab_size = self.tokenizer.vocab_size
            self.split_sizes = dict(meta["splits"])
            # np.memmap cannot map an empty file; empty splits are refused below when used.
            self.splits = {name: np.memmap(folder / f"{name}.bin", dtype=meta["dtype"], mode="r")
                           for name, n in self.split_sizes.items() if n > 0}
            self._meta = meta
        for split in _stage_splits(stage, self.split_sizes):
            n = require_split(self.split_sizes, split, "TextDataModule")
            if n < 2:
                raise DataError(f"the {split} split has {n} tokens; use more text or a larger "
                                f"data.{split}_fraction")
            if n < self.block_size + 1:
                raise ConfigError("model.block_size", self.block_size,
                                  f"at most {n - 1} (the {split} split has {n} tokens)",
                                  hint="use a smaller block_size or more data")

    def unigram_loss(self, split: str = "val") -> float:
        """Cross-entropy (nats/token) on ``split`` of a model that ignores its input.

        It predicts train-split token frequencies (add-one smoothed, so unseen
        tokens cost a finite amount): the loss any real model must beat.
        """
        counts = _token_counts(self._data("train"), self.vocab_size) + 1.0
        log_p = np.log(counts / counts.sum())
        return float(-(_token_counts(self._data(split), self.vocab_size) * log_p).sum() / len(self.splits[split]))

    def _data(self, split: str) -> np.memmap:
        if self._meta is None:
            raise DataError("TextDataModule is not set up yet; call prepare_data() and setup() first")
        self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return self.splits[split]

    def train_dataloader(self) -> DataLoader:
        # shuffle=False: the offsets are already random, and a fixed order makes
        # the n-th batch identical on every run (exact resume).
        windows = TokenWindows.random(self._data("train"), self.block_size, self.num_train_samples, self.seed)
        return make_loader(windows, self.config.batch_size, self.config.num_workers)

    def val_dataloader(self) -> DataLoader:
        return make_loader(TokenWindows.sequential(self._data("val"), self.block_size),
                           self.config.batch_size, self.config.num_workers)

    def test_dataloader(self) -> DataLoader:
        return make_loader(TokenWindows.sequential(self._data("test"), self.block_size),
                           self.config.batch_size, self.config.num_workers)
