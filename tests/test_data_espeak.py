"""lab.data.espeak: the bundled spoken digits, and the real-audio path through the espeak-ng synthesizer.

Tests that need the ``espeak-ng`` program skip where it is missing, except under ``CI=true``: CI
installs it (``.ci/run``), so there a missing synthesizer is a failure, not a skip.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lab import runs
from lab.cli import main
from lab.config import load_config
from lab.data import audio, espeak
from lab.data.speech import scan, voice_of
from lab.errors import DataError, LabError


@pytest.fixture
def espeak_ng() -> str:
    """The espeak-ng program; a skip where it is missing, a failure under CI."""
    if not espeak.available():
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("espeak-ng is not installed: CI must install it (.ci/run runs apt-get install espeak-ng)")
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng / brew install espeak-ng)")
    return espeak.program()


def clips(n_voices: int = 2, seconds: float = 0.3) -> list[espeak.Clip]:
    """Clean tone 'words' (each word its pitch), as synthesize_all would return them."""
    t = np.arange(int(espeak.RATE * seconds)) / espeak.RATE
    return [espeak.Clip(word, f"v{v}", "en-us", 150 + v, 40, (0.3 * np.sin(2 * math.pi * (200 + 100 * i) * t))
                        .astype(np.float32)) for v in range(n_voices) for i, word in enumerate(espeak.WORDS[:3])]


def test_a_bundle_round_trips_through_mu_law(tmp_path: Path) -> None:
    made = clips()
    path = espeak.save_bundle(made, tmp_path / "b.npz", info={"espeak-ng": "test"})
    back = espeak.load_bundle(path)
    assert [(c.word, c.voice, c.accent, c.speed, c.pitch) for c in back] == \
        [(c.word, c.voice, c.accent, c.speed, c.pitch) for c in made]
    assert all(np.abs(a.samples - b.samples).max() < 0.02 for a, b in zip(back, made))
    info = espeak.bundle_info(path)
    assert info["clips"] == 6 and info["words"] == list(espeak.WORDS[:3]) and info["espeak-ng"] == "test"
    assert info["seconds"] == pytest.approx(1.8) and info["bytes"] == path.stat().st_size


def test_a_bundle_over_the_size_limit_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).uniform(-1, 1, 2 * espeak.BUNDLE_LIMIT).astype(np.float32)
    with pytest.raises(LabError, match="over the repository's 4 MiB"):
        espeak.save_bundle([espeak.Clip("zero", "v", "en", 1, 1, noise)], tmp_path / "big.npz")
    assert not any(tmp_path.iterdir())
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read the speech bundle.*restore it"):
        espeak.load_bundle(tmp_path / "broken.npz")


def test_the_shipped_bundle_has_every_word_by_every_voice() -> None:
    info = espeak.bundle_info()
    assert info["bytes"] < espeak.BUNDLE_LIMIT and info["rate"] == espeak.RATE == 8000
    assert info["words"] == list(espeak.WORDS) and len(info["voices"]) >= 30 and len(info["accents"]) >= 6
    made = espeak.load_bundle()
    counts = Counter((c.voice, c.word) for c in made)
    assert len(counts) == len(info["voices"]) * 10 and set(counts.values()) == {info["takes"]}
    assert len({(c.word, c.filename) for c in made}) == len(made)  # no two clips share a file
    assert all(0.1 < len(c.samples) / espeak.RATE < 1.0 for c in made)
    assert info["espeak-ng"].startswith("eSpeak NG") and info["snr_db"] == list(espeak.SNR_DB)


def test_write_folder_adds_the_same_noise_every_time(tmp_path: Path) -> None:
    made = clips()
    a, b = espeak.write_folder(made, tmp_path / "a"), espeak.write_folder(made, tmp_path / "b")
    files = scan(a)
    assert len(files) == 6 and {voice_of(f) for f in files} == {"v0", "v1"}
    assert all(f.read_bytes() == (b / f.relative_to(a)).read_bytes() for f in files)
    other = espeak.write_folder(made, tmp_path / "c", seed=1)
    assert files[0].read_bytes() != (other / files[0].relative_to(a)).read_bytes()
    # Each word sits somewhere in a second of noise, at a signal-to-noise ratio in SNR_DB.
    word = made[0].samples
    x, rate = audio.read_wav(a / "zero" / made[0].filename)
    assert rate == espeak.RATE and len(x) == espeak.RATE * espeak.SECONDS
    start = int(np.argmax(np.correlate(x, word, "valid")))
    noise = x.copy()
    noise[start:start + len(word)] -= word
    snr = 10 * np.log10(np.mean(word.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert espeak.SNR_DB[0] - 0.5 < snr < espeak.SNR_DB[1] + 0.5
    zeros = [audio.read_wav(f)[0] for f in files if f.parent.name == "zero"]
    starts = {int(np.argmax(np.correlate(x, word, "valid"))) for x in zeros}
    assert len(starts) == 2  # the two voices' "zero"s sit at different places


def test_lab_data_speech_describes_the_bundled_copy(capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "speech"]) == 0
    out = capsys.readouterr().out
    info = espeak.bundle_info()
    assert f"{info['clips']} clips" in out and "zero, one, two" in out and info["voices"][0] in out


def test_espeak_ng_says_a_word_in_a_voice(espeak_ng: str) -> None:
    x, rate = espeak.speak("seven", "f3", "en-us", 175, 50)
    assert rate == 22050 and 0.3 < len(x) / rate < 1.5 and np.abs(x).max() > 0.05
    made = espeak.synthesize_all(words=("one", "two"), voices=("f3", "m2"), takes=2, seed=1)
    assert len(made) == 8 and len({(c.word, c.filename) for c in made}) == 8
    assert all(c.voice in ("f3", "m2") and 0.1 < len(c.samples) / espeak.RATE < 1.0 for c in made)
    assert "m2" in espeak.variants() and "f3" in espeak.variants()
    with pytest.raises(LabError, match="no voice variant robot9"):
        espeak.synthesize_all(voices=("robot9",))


@pytest.mark.slow
def test_the_real_audio_path_synthesize_write_read_train(espeak_ng: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from lab.train import fit

    out = tmp_path / "digits"
    voices = "f1,f2,f3,f4,m1,m2,m3,m4,m5,Alex"
    assert main(["data", "speech", "--generate", "--out", str(out), "--voices", voices, "--takes", "2"]) == 0
    assert f"--data.path {out}" in capsys.readouterr().out
    files = scan(out)
    assert len(files) == 10 * 10 * 2 and {f.parent.name for f in files} == set(espeak.WORDS)
    x, rate = audio.read_wav(files[0])
    assert rate == espeak.RATE and np.abs(x).max() > 0.05
    # A folder that is not empty is never written into.
    assert main(["data", "speech", "--generate", "--out", str(out), "--voices", "f1"]) == 2
    overrides = {"data.path": str(out), "trainer.max_steps": 120, "trainer.val_check_interval": 40,
                 "data.batch_size": 32, "trainer.log_every_n_steps": 2, "model.channels": [8, 16],
                 "model.hidden": 32}
    run = fit(load_config("speech-cnn", overrides), runs_root=tmp_path / "runs", progress=False)
    assert run.status == "completed" and run.config["model"]["num_classes"] == 10
    loss = runs.scalars(run)["train/loss"]
    assert loss[-1][2] < loss[0][2] * 0.7
    assert run.summary["test"]["test/accuracy"] > 0.3  # held-out voices; chance is 0.1
