"""Datasets as Lightning DataModules, picked by the ``data.name`` of a config.

    from lab.data import DATAMODULES
    config_cls, module_cls = DATAMODULES["text"]
    dm = module_cls(config_cls(tokenizer="bpe"), block_size=64)   # text also needs block_size
    dm.prepare_data(); dm.setup()
    x, y = next(iter(dm.train_dataloader()))

    from lab.data import DigitsDataConfig, DigitsDataModule
    dm = DigitsDataModule(DigitsDataConfig(), seed=1337); dm.setup()

Modules: ``text`` (language modelling on the bundled corpus, local files or a
verified download; char or byte-level BPE tokens), ``labelled_text`` (texts with labels for
classifiers: CSV/JSONL, a folder per label, or the bundled sentiment set), ``vision`` (sklearn digits),
``tabular`` (synthetic Friedman regression), ``ratings`` (implicit feedback for recommenders: a
synthetic world with planted tastes, or MovieLens files), ``speech`` (spoken keywords: a WAV
folder per label or the bundled spoken digits, as log-mel spectrograms split by voice; their
signal processing in ``audio``, the digits' synthesis in ``espeak``), ``tokenizers``, and the shared
helpers in ``splits`` and ``corpus`` (prepared data is cached under ``lab.fileio``'s cache
folder, ``$LAB_CACHE_DIR``). Every DataModule checks its
config in ``__init__`` and raises ``lab.errors.ConfigError`` before doing any work.
"""

from __future__ import annotations

from lab.data.labelled_text import LabelledTextConfig, LabelledTextDataModule
from lab.data.ratings import RatingsDataConfig, RatingsDataModule
from lab.data.speech import SpeechDataConfig, SpeechDataModule
from lab.data.tabular import RegressionDataConfig, RegressionDataModule
from lab.data.text import TextDataConfig, TextDataModule
from lab.data.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer, train_tokenizer
from lab.data.vision import DigitsDataConfig, DigitsDataModule

DATAMODULES: dict[str, tuple[type, type]] = {
    "text": (TextDataConfig, TextDataModule),
    "digits": (DigitsDataConfig, DigitsDataModule),
    "regression": (RegressionDataConfig, RegressionDataModule),
    "labelled-text": (LabelledTextConfig, LabelledTextDataModule),
    "ratings": (RatingsDataConfig, RatingsDataModule),
    "speech": (SpeechDataConfig, SpeechDataModule),
}
"""data.name -> (config dataclass, DataModule class)."""

__all__ = [
    "DATAMODULES",
    "BPETokenizer",
    "CharTokenizer",
    "DigitsDataConfig",
    "DigitsDataModule",
    "RatingsDataConfig",
    "RatingsDataModule",
    "RegressionDataConfig",
    "RegressionDataModule",
    "TextDataConfig",
    "TextDataModule",
    "Tokenizer",
    "load_tokenizer",
    "train_tokenizer",
]
