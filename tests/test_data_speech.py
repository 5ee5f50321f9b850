"""lab.data.speech: a WAV folder per label -> cached log-mel features, split by voice, augmented in training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lab.data import audio, espeak
from lab.data.speech import (FEATURES_DIR, SpectrogramDataset, SpeechDataConfig, SpeechDataModule, bundled_folder,
                             label_names, scan, voice_of, voice_split)
from lab.errors import ConfigError, DataError

TONES = {"high": 2000.0, "low": 300.0, "mid": 900.0}


def make_folder(root: Path, voices: int = 6, takes: int = 2, rate: int = 16000) -> Path:
    """A folder per label of short tones (each label its own pitch), ``voices`` speakers, Speech Commands names."""
    rng = np.random.default_rng(0)
    for label, hz in TONES.items():
        for v in range(voices):
            for t in range(takes):
                seconds = 0.3 + 0.1 * t
                x = 0.4 * np.sin(2 * math.pi * hz * (1 + 0.02 * v) * np.arange(int(rate * seconds)) / rate)
                audio.write_wav(root / label / f"spk{v}_nohash_{t}.wav", audio.add_noise(x, 25, rng), rate)
    (root / "_background_noise_").mkdir()
    (root / "_background_noise_" / "hum.wav").write_bytes(audio.wav_bytes(np.zeros(100), rate))
    (root / "README.txt").write_text("files beside the label folders are ignored")
    return root


def dm_for(folder: Path, **changes) -> SpeechDataModule:
    return SpeechDataModule(SpeechDataConfig(path=str(folder), **{"val_fraction": 0.2, "test_fraction": 0.2,
                                                                   "batch_size": 4, **changes}), seed=1)


def test_scan_reads_the_label_folders_and_refuses_an_empty_one(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "words", voices=2, takes=1)
    files = scan(folder)
    assert [f.parent.name for f in files] == ["high", "high", "low", "low", "mid", "mid"]
    assert voice_of(files[0]) == "spk0" and voice_of(Path("f3_en-us_s175_p50.wav")) == "f3"
    assert label_names(SpeechDataConfig(path=str(folder))) == ["high", "low", "mid"]
    (folder / "silence").mkdir()
    with pytest.raises(DataError, match="silence holds no .wav files.*add recordings"):
        scan(folder)
    with pytest.raises(DataError, match="no label folders"):
        scan(folder / "_background_noise_")


def test_voices_split_whole_and_deterministically() -> None:
    voices = [f"v{i}" for i in range(10) for _ in range(3)]
    a = voice_split(voices, 0.2, 0.3, seed=5)
    assert a == voice_split(voices, 0.2, 0.3, seed=5) and a != voice_split(voices, 0.2, 0.3, seed=6)
    assert [len(a[k]) for k in ("train", "val", "test")] == [5, 2, 3]
    assert set(a["train"]) | set(a["val"]) | set(a["test"]) == set(voices)
    assert not (set(a["train"]) & set(a["val"])) and not (set(a["train"]) & set(a["test"]))
    assert "test" not in voice_split(voices, 0.2, 0.0, seed=5)
    assert [len(v) for v in voice_split(["a", "b", "c"], 0.1, 0.1, seed=0).values()] == [1, 1, 1]  # one each
    with pytest.raises(DataError, match="2 voices are too few"):
        voice_split(["a", "b"], 0.1, 0.1, seed=0)


def test_features_are_cached_beside_the_data_and_keyed_by_content(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "words")
    dm = dm_for(folder)
    dm.prepare_data()
    cache = dm.features_path
    assert cache.parent == folder / FEATURES_DIR and (cache / "meta.json").is_file()
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["shape"] == [40, 41] and len(meta["files"]) == 36 and "hum.wav" not in str(meta["files"])
    stamp = (cache / "features.npy").stat().st_mtime_ns
    again = dm_for(folder)
    again.prepare_data()
    assert again.features_path == cache and (cache / "features.npy").stat().st_mtime_ns == stamp  # reused
    # Another feature setting or a changed file: another key, computed anew.
    other = dm_for(folder, n_mels=20)
    other.prepare_data()
    assert other.features_path != cache
    first = scan(folder)[0]
    audio.write_wav(first, np.zeros(800, np.float32) + 0.1, 16000)
    changed = dm_for(folder)
    changed.prepare_data()
    assert changed.features_path not in (cache, other.features_path)
    assert len(list((folder / FEATURES_DIR).iterdir())) == 3


def test_splits_hold_whole_voices_and_the_training_split_is_augmented(tmp_path: Path) -> None:
    dm = dm_for(make_folder(tmp_path / "words"))
    dm.prepare_data()
    dm.setup()
    assert dm.class_names == ["high", "low", "mid"] and dm.num_classes == 3 and dm.input_shape == (1, 40, 41)
    assert dm.split_sizes == {"train": 24, "val": 6, "test": 6}
    assert {k: len(v) for k, v in dm.split_voices.items()} == {"train": 4, "val": 1, "test": 1}
    for split in ("val", "test"):
        assert not set(dm.voices[split]) & set(dm.voices["train"])
        assert set(dm.voices[split]) == set(dm.split_voices[split])
    assert all(voice_of(Path(f)) == v for f, v in zip(dm.files["test"], dm.voices["test"]))
    # Standardised with the train split's statistics.
    train = dm.datasets["train"]
    assert isinstance(train, SpectrogramDataset) and train.augment.active and dm.datasets["val"].augment is None
    assert abs(float(train.x.mean())) < 1e-4 and abs(float(train.x.std()) - 1) < 1e-3
    torch.manual_seed(0)
    x, y = train[0]
    assert x.shape == (1, 40, 41) and not torch.equal(x, train.x[0]) and int(y) == int(train.y[0])
    xv, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(xv, dm.datasets["val"].x[:4])  # held-out data is never augmented
    # The test split's files, in loader order, are the clips behind its labels.
    labels = torch.cat([b[1] for b in dm.test_dataloader()]).tolist()
    assert [dm.class_names[i] for i in labels] == [Path(f).parent.name for f in dm.files["test"]]
    # features() + standardised() reproduce what the cache holds for a file.
    samples, rate = audio.read_wav(dm.files["test"][0])
    assert torch.allclose(dm.standardised(dm.features(samples, rate)), dm.datasets["test"].x[0, 0], atol=0.02)


def test_the_label_order_can_be_given_and_must_match_the_folders(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "words", voices=4, takes=1)
    config = SpeechDataConfig(path=str(folder), test_fraction=0.25, val_fraction=0.25)
    dm = SpeechDataModule(config, labels=["low", "mid", "high"])
    dm.setup()
    assert dm.class_names == ["low", "mid", "high"]
    assert all(dm.class_names[int(y)] == Path(f).parent.name
               for y, f in zip(dm.datasets["train"].y, dm.files["train"]))
    with pytest.raises(ConfigError, match="model.labels"):
        SpeechDataModule(config, labels=["low", "mid"]).setup()


def test_a_bad_wav_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "words", voices=3, takes=1)
    (folder / "low" / "spk9_nohash_0.wav").write_text("this is not audio")
    with pytest.raises(DataError, match="spk9_nohash_0.wav is not a PCM WAV"):
        dm_for(folder).prepare_data()
    assert not (folder / FEATURES_DIR).exists()


@pytest.mark.parametrize("field,value", [("n_mels", 200), ("sample_rate", 0), ("hop_ms", 0), ("hop_ms", 5000),
                                         ("clip_seconds", 0), ("fmin", 4000), ("freq_mask", -1), ("path", "nowhere")])
def test_bad_settings_are_refused_before_any_file_is_read(field: str, value, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"data.{field}"):
        SpeechDataModule(SpeechDataConfig(**{field: value}), cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_bundled_digits_become_a_wav_folder_once(tmp_path: Path) -> None:
    folder = bundled_folder(tmp_path)
    assert folder.parent == tmp_path / "speech"
    info = espeak.bundle_info()
    files = scan(folder)
    assert len(files) == info["clips"] and sorted({f.parent.name for f in files}) == sorted(espeak.WORDS)
    assert {voice_of(f) for f in files} == set(info["voices"])
    samples, rate = audio.read_wav(files[0])
    assert rate == espeak.RATE and len(samples) == espeak.RATE * espeak.SECONDS  # a second: the word in noise
    stamp = files[0].stat().st_mtime_ns
    assert bundled_folder(tmp_path) == folder and files[0].stat().st_mtime_ns == stamp  # written once
    assert label_names(SpeechDataConfig()) == list(espeak.WORDS)  # digit order, not alphabetical
