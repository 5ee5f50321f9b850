"""Spoken keywords: a folder of WAV files per label -> cached log-mel spectrograms, split by voice.

    from lab.data.speech import SpeechDataConfig, SpeechDataModule
    dm = SpeechDataModule(SpeechDataConfig(), seed=1337)    # the bundled spoken digits
    dm.prepare_data()          # once: read every WAV, compute the features, cache them beside the data
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))   # float32 [64, 1, 40 mel bands, 41 frames], int64 [64]
    dm.class_names, dm.voices["test"], dm.files["test"][0], dm.input_shape

The data is Google Speech Commands' layout: ``data.path`` holds one folder per label
(``yes/``, ``no/``, ...) of WAV files; folders starting with ``_`` or ``.`` are not labels
(Speech Commands keeps its ``_background_noise_`` there). With no ``data.path``, the spoken
digits the lab ships (``lab.data.espeak``: espeak-ng voices, with noise) are written once as
such a folder under the cache (``$LAB_CACHE_DIR/speech/bundled-<key>/``) and used like any other.

Features: each file is read (``lab.data.audio.read_wav``), resampled to ``sample_rate``, cut or
padded to ``clip_seconds`` with the word in the middle (``fit_clip``), and turned into a log-mel spectrogram
(``lab.data.audio.log_mel``). They are computed once and cached beside the data, in
``<data.path>/.lab-features/<key>/``, keyed by the content of every WAV file and the feature
settings: an unchanged folder is read back in a moment, a changed file or setting computes anew.
A folder that cannot be written keeps its features under ``$LAB_CACHE_DIR/speech/features/``.
``meta.json`` is written last and marks the cache complete.

The model's outputs follow the label folders sorted by name, the bundled words in digit order
("zero" first), or the order of ``labels`` (a model's ``model.labels``) when given.

Split by voice, not by clip: a file's voice is its name up to the first ``_`` (Speech Commands'
speaker id), and whole voices go to train, validation or test (``val_fraction`` and
``test_fraction`` are shares of the voices), so the held-out splits are voices the model never
heard. Spectrograms are standardised with the train split's mean and standard deviation; the
training split is seen through ``SpecAugment`` (masked bands and frames, shifts in time and pitch).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lab.data import espeak
from lab.data.audio import SpecAugment, empty_bands, fit_clip, log_mel, read_wav, resample
from lab.data.splits import ArrayDataModule, check_int, require_split, standardise, validate_data_config
from lab.errors import ConfigError, DataError, StorageError, require
from lab.fileio import atomic_write, atomic_write_text, resolve_cache_dir

CACHE_FORMAT = 2
"""Bumped when the cached features change meaning, so old caches are never misread (2: words centred)."""
FEATURES_DIR = ".lab-features"
META_FILE = "meta.json"
CHUNK = 256
"""Clips read and turned into features at a time while caching (one batched STFT per chunk)."""


@dataclass
class SpeechDataConfig:
    """Settings for the spoken-keyword DataModule (the ``data:`` section of a speech model)."""

    name: str = "speech"
    """Registry key; selects SpeechDataModule."""
    path: str | None = None
    """A folder with one folder of WAV files per label (Speech Commands' layout); None = the bundled spoken digits."""
    sample_rate: int = 8000
    """Hz every clip is resampled to before its features are computed."""
    clip_seconds: float = 1.0
    """Seconds per clip: longer clips keep their loudest stretch, shorter ones are padded with silence."""
    n_mels: int = 40
    """Mel bands per frame: the spectrogram's height."""
    n_fft: int = 256
    """Samples per STFT frame (32 ms at 8 kHz); n_fft // 2 + 1 frequency bins feed the mel bands."""
    hop_ms: float = 25.0
    """Milliseconds between frames; the spectrogram has 1 + clip samples // hop frames (its width)."""
    fmin: float = 20.0
    """Lowest frequency (Hz) of the mel bands; the highest is the Nyquist frequency, sample_rate / 2."""
    freq_mask: int = 6
    """SpecAugment: training masks up to this many adjacent mel bands per clip; 0 = off."""
    time_mask: int = 6
    """SpecAugment: training masks up to this many adjacent frames per clip; 0 = off."""
    time_shift: int = 4
    """Training shifts each clip by up to this many frames either way; 0 = off."""
    freq_shift: int = 4
    """Training shifts each clip up or down by up to this many mel bands (a crude vocal-tract-length
    perturbation: other voices' formants sit higher or lower); 0 = off."""
    val_fraction: float = 0.15
    """Share of the voices held out for validation, in (0, 1) (at least one voice)."""
    test_fraction: float = 0.2
    """Share of the voices held out for the final test, in [0, 1); 0 = no test split."""
    batch_size: int = 64
    """Spectrograms per batch."""
    num_workers: int = 0
    """DataLoader worker processes; 0 reads in the main process (the features are in memory)."""

    @property
    def hop(self) -> int:
        """Samples between frames."""
        return max(1, round(self.sample_rate * self.hop_ms / 1000))

    @property
    def clip_samples(self) -> int:
        return max(1, round(self.sample_rate * self.clip_seconds))

    @property
    def frames(self) -> int:
        """The spectrogram's width: frames per clip (``torch.stft`` centres its first frame on sample 0)."""
        return 1 + self.clip_samples // self.hop

    def validate(self) -> None:
        """Refuse invalid values with a ConfigError naming the field (before any file is read)."""
        validate_data_config(self)
        check_int("data.sample_rate", self.sample_rate, 1000)
        check_int("data.n_mels", self.n_mels, 1)
        check_int("data.n_fft", self.n_fft, 16)
        for field in ("freq_mask", "time_mask", "time_shift", "freq_shift"):
            check_int(f"data.{field}", getattr(self, field), 0)
        require(0.05 <= self.clip_seconds <= 60, "data.clip_seconds", self.clip_seconds, "seconds in [0.05, 60]")
        require(self.hop_ms > 0 and self.hop < self.clip_samples, "data.hop_ms", self.hop_ms,
                f"milliseconds > 0 and shorter than the clip ({self.clip_seconds} s)")
        require(0 <= self.fmin < self.sample_rate / 2, "data.fmin", self.fmin,
                f"a frequency in [0, {self.sample_rate / 2:g}) Hz (below the Nyquist frequency)")
        empty = empty_bands(self.n_fft, self.sample_rate, self.n_mels, self.fmin)
        require(not empty, "data.n_mels", self.n_mels, f"fewer mel bands: {len(empty)} of them catch no FFT bin at "
                f"n_fft={self.n_fft}", "use fewer bands, a larger data.n_fft or a higher data.fmin")
        require(self.path is None or Path(self.path).is_dir(), "data.path", self.path,
                "an existing folder with one folder of WAV files per label", "leave it out for the bundled digits")


def scan(folder: str | Path) -> list[Path]:
    """The WAV files of a folder with a folder per label, sorted by label folder and name.

    A label folder with no WAV files is refused: it would be a class the model can never learn.
    """
    folder = Path(folder)
    labels = _label_folders(folder)
    if not labels:
        raise DataError(f"{folder} has no label folders: put the WAV files of each label in a folder named after "
                        "it (e.g. yes/, no/)")
    files: list[Path] = []
    for label in labels:
        found = sorted(p for p in (folder / label).iterdir() if p.is_file() and p.suffix.lower() == ".wav"
                       and not p.name.startswith("."))
        if not found:
            raise DataError(f"label folder {folder / label} holds no .wav files: add recordings to it or remove it")
        files += found
    return files


def label_names(config: SpeechDataConfig) -> list[str]:
    """The labels ``config`` trains on, without reading any audio: the bundled words, or the label folders."""
    return espeak.bundle_info()["words"] if config.path is None else _label_folders(Path(config.path))


def _label_folders(folder: Path) -> list[str]:
    """The folders of ``folder`` that are labels (not hidden, not ``_``-prefixed like ``_background_noise_``)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def voice_of(file: Path) -> str:
    """The speaker of a file: its name up to the first ``_`` (Speech Commands: ``<speaker>_nohash_<n>.wav``)."""
    return file.stem.split("_", 1)[0]


def voice_split(voices: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Whole voices per split, shuffled by ``seed``: at least one voice each for val (and test when > 0)."""
    names = sorted(set(voices))
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n_test = max(1, round(len(names) * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(len(names) * val_fraction))
    if n_val + n_test >= len(names):
        raise DataError(f"{len(names)} voices are too few to hold out {n_val} for validation and {n_test} for test "
                        "and still train on one: record more speakers, or lower data.val_fraction/test_fraction")
    out = {"train": order[n_val + n_test:], "val": order[:n_val]}
    if test_fraction > 0:
        out["test"] = order[n_val:n_val + n_test]
    return {k: sorted(v) for k, v in out.items()}


def bundled_folder(cache_dir: str | Path | None = None) -> Path:
    """The bundled clips as a WAV folder under the cache (written once, atomically, then reused)."""
    how = json.dumps({"snr_db": espeak.SNR_DB, "seconds": espeak.SECONDS})  # what write_folder adds
    key = hashlib.sha256(espeak.BUNDLE.read_bytes() + how.encode()).hexdigest()[:16]
    folder = resolve_cache_dir(cache_dir) / "speech" / f"bundled-{key}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            espeak.write_folder(espeak.load_bundle(), tmp)
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the clips from other users of a shared cache
            os.replace(tmp, folder)  # the whole folder appears at once
        except OSError:
            if not folder.is_dir():  # another process got there first: theirs is as good as ours
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        ok = meta.get("format") == CACHE_FORMAT and (folder / "features.npy").is_file()
    except (OSError, ValueError, AttributeError):
        return None
    return meta if ok else None


def _write_cache(folder: Path, feats: np.ndarray, meta: dict[str, Any]) -> Path:
    atomic_write(folder / "features.npy", lambda f: np.save(f, feats))
    atomic_write_text(folder / META_FILE, json.dumps(meta))  # last: marks the cache complete
    return folder


class SpectrogramDataset(Dataset):
    """``(spectrogram [1, n_mels, frames], label)`` pairs, seen through ``augment`` when given."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: SpecAugment | None = None) -> None:
        self.x, self.y, self.augment = x, y, augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        return (self.augment(x) if self.augment is not None and self.augment.active else x), self.y[i]


class SpeechDataModule(ArrayDataModule):
    """Log-mel spectrograms ``x`` float32 [N, 1, n_mels, frames] and labels ``y`` int64 [N], split by voice."""

    def __init__(self, config: SpeechDataConfig, seed: int = 1337, cache_dir: str | Path | None = None,
                 labels: Sequence[str] | None = None) -> None:
        """``labels``: the output order of the label folders (the model's ``model.labels``); None = the
        bundled words in digit order, or a folder's labels sorted."""
        config.validate()
        super().__init__(config, seed)
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.wanted = list(labels) if labels is not None else None
        self.class_names: list[str] = []
        """Label names in the order of the model's outputs: ``labels``, the bundled words, or the folders sorted."""
        self.files: dict[str, list[str]] = {}
        """Per split, each sample's WAV file, in loader order (to listen to what the model got wrong)."""
        self.voices: dict[str, list[str]] = {}
        """Per split, each sample's voice."""
        self.split_voices: dict[str, list[str]] = {}
        """Per split, its voices."""
        self.mean: float | None = None
        """Train-split mean of the log-mel values, set by setup; new audio is standardised with it."""
        self.std: float | None = None
        """Train-split standard deviation of the log-mel values."""
        self.features_path: Path | None = None
        """The cache folder the features were read from (after prepare_data)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.config.n_mels, self.config.frames)

    def data_folder(self) -> Path:
        """The WAV folder: ``data.path``, or the bundled clips written out under the cache."""
        return Path(self.config.path) if self.config.path is not None else bundled_folder(self.cache_dir)

    def features(self, samples: np.ndarray, rate: int) -> torch.Tensor:
        """One clip's log-mel spectrogram ``[n_mels, frames]`` (not standardised), as the cache holds it."""
        c = self.config
        clip = fit_clip(resample(samples, rate, c.sample_rate), c.clip_samples)
        return log_mel(torch.from_numpy(clip), c.sample_rate, c.n_fft, c.hop, c.n_mels, c.fmin)

    def _key(self, folder: Path, files: list[Path]) -> str:
        c = self.config
        h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "rate": c.sample_rate, "clip": c.clip_samples,
                                       "n_mels": c.n_mels, "n_fft": c.n_fft, "hop": c.hop, "fmin": c.fmin}).encode())
        for f in files:
            h.update(str(f.relative_to(folder).as_posix()).encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest()[:16]

    def prepare_data(self) -> None:
        """Compute and cache the features unless a complete cache for these files and settings exists."""
        folder = self.data_folder()
        files = scan(folder)
        key = self._key(folder, files)
        places = (folder / FEATURES_DIR / key, self.cache_dir / "speech" / "features" / key)
        for place in places:
            if _read_meta(place) is not None:
                self.features_path = place
                return
        # Every file is read before anything is written: a bad one is refused with nothing left behind.
        # A chunk of clips at a time: only the features (float16) of a large folder are held at once.
        c = self.config
        feats = np.empty((len(files), c.n_mels, c.frames), np.float16)
        for i in range(0, len(files), CHUNK):
            clips = np.stack([fit_clip(resample(*read_wav(f), c.sample_rate), c.clip_samples)
                              for f in files[i:i + CHUNK]])
            feats[i:i + len(clips)] = log_mel(torch.from_numpy(clips), c.sample_rate, c.n_fft, c.hop, c.n_mels,
                                              c.fmin).numpy()
        meta = {"format": CACHE_FORMAT, "files": [f.relative_to(folder).as_posix() for f in files],
                "shape": list(feats.shape[1:]), "source": str(folder)}
        beside, fallback = places
        try:
            self.features_path = _write_cache(beside, feats, meta)
        except StorageError:  # a read-only data folder: the lab's cache folder takes them instead
            self.features_path = _write_cache(fallback, feats, meta)

    def _label_order(self, found: list[str]) -> list[str]:
        if self.wanted is None:
            return label_names(self.config) if self.config.path is None else found
        if sorted(self.wanted) != found:
            raise ConfigError("model.labels", self.wanted, f"the data's labels {found} in some order",
                              "leave model.labels null to take them from the data")
        return self.wanted

    def build_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self.features_path is None:
            self.prepare_data()
        meta = _read_meta(self.features_path)
        if meta is None:
            raise DataError(f"the feature cache {self.features_path} is incomplete; delete it and retry")
        feats = np.load(self.features_path / "features.npy", allow_pickle=False)[:, None]
        found = [Path(f).parent.name for f in meta["files"]]
        self.class_names = self._label_order(sorted(set(found)))
        index = {name: i for i, name in enumerate(self.class_names)}
        targets = np.array([index[name] for name in found], np.int64)
        voices = [voice_of(Path(f)) for f in meta["files"]]
        self.split_voices = voice_split(voices, self.config.val_fraction, self.config.test_fraction, self.seed)
        idx = {k: np.array([i for i, v in enumerate(voices) if v in set(vs)], np.int64)
               for k, vs in self.split_voices.items()}
        folder = Path(meta["source"])
        self.files = {k: [str(folder / meta["files"][i]) for i in ix] for k, ix in idx.items()}
        self.voices = {k: [voices[i] for i in ix] for k, ix in idx.items()}
        scaled, mean, std = standardise({k: feats[ix].astype(np.float32) for k, ix in idx.items()}, axis=None)
        self.mean, self.std = float(mean), float(std)
        return {k: (scaled[k], targets[ix]) for k, ix in idx.items()}

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        c = self.config
        train = self.datasets["train"]
        if not isinstance(train, SpectrogramDataset):
            self.datasets = {k: SpectrogramDataset(*ds.tensors) for k, ds in self.datasets.items()}
            self.datasets["train"].augment = SpecAugment(c.freq_mask, c.time_mask, c.time_shift, c.freq_shift)

    def standardised(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """A spectrogram from ``features`` scaled as the model saw its training data (after setup)."""
        require_split(self.datasets, "train", "SpeechDataModule")
        return (spectrogram - self.mean) / self.std
