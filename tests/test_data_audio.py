"""lab.data.audio: WAV files in and out, resampling, log-mel features, mu-law, SpecAugment."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from lab.data import audio
from lab.errors import DataError


def tone(freq: float, rate: int, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def wav_header(rate: int, data: bytes, bits: int = 16, channels: int = 1, fmt: int = 1) -> bytes:
    """A WAV file written by hand, so its header can say what a broken one says."""
    align = channels * bits // 8
    chunk = struct.pack("<HHIIHH", fmt, channels, rate, rate * align, align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(chunk)) + chunk + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


# --------------------------------------------------------------------------- WAV files


def test_wav_round_trip_keeps_the_samples_to_16_bit_precision(tmp_path: Path) -> None:
    x = tone(440, 8000)
    path = audio.write_wav(tmp_path / "a" / "tone.wav", x, 8000)
    back, rate = audio.read_wav(path)
    assert rate == 8000 and back.dtype == np.float32 and len(back) == len(x)
    assert np.abs(back - x).max() < 1.5 / 32767
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.parametrize("width", [1, 3, 4])
def test_other_sample_widths_and_stereo_read_as_the_same_signal(tmp_path: Path, width: int) -> None:
    x = tone(300, 8000, 0.1)
    scale = 2 ** (8 * width - 1) - 1
    ints = np.round(x * scale).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif width == 3:
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        raw = ints.astype("<i4").tobytes()
    stereo = b"".join(raw[i * width:(i + 1) * width] * 2 for i in range(len(x)))  # both channels the same
    path = tmp_path / "x.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(width)
        w.setframerate(8000)
        w.writeframes(stereo)
    back, rate = audio.read_wav(path)
    assert rate == 8000 and len(back) == len(x)
    assert np.abs(back - x).max() < 2.0 / 2 ** (8 * width - 1) + (1 / 128 if width == 1 else 0)


@pytest.mark.parametrize("content,needle", [
    (b"hello, this is a text file and not audio at all" * 10, "not a PCM WAV"),
    (wav_header(0, b"\x00\x01" * 100), "sample rate is 0"),
    (wav_header(8000, b"\x00" * 400, bits=32, fmt=3), "not a PCM WAV"),   # 32-bit float samples
    (wav_header(8000, b""), "no audio samples"),
    (b"", "not a PCM WAV"),
])
def test_files_that_are_not_usable_audio_are_refused_naming_the_file(tmp_path: Path, content: bytes,
                                                                   needle: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(DataError, match=needle) as e:
        audio.read_wav(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- signal processing


def test_resampling_keeps_a_tone_and_filters_what_the_new_rate_cannot_hold() -> None:
    x = tone(440, 22050, 1.0)
    y = audio.resample(x, 22050, 8000)
    assert len(y) == 8000 and y.dtype == np.float32
    assert abs(dominant_hz(y, 8000) - 440) <= 2
    assert abs(np.sqrt(np.mean(y[500:-500] ** 2)) - 0.5 / math.sqrt(2)) < 0.01  # same loudness
    # 5 kHz is above 8 kHz's Nyquist (4 kHz): decimating without a low-pass would fold it to 3 kHz.
    high = tone(5000, 22050, 1.0)
    filtered = audio.resample(high, 22050, 8000)
    naive = np.interp(np.arange(8000) / 8000, np.arange(len(high)) / 22050, high)
    assert np.sqrt(np.mean(filtered[500:-500] ** 2)) < 0.01 * np.sqrt(np.mean(naive ** 2))
    assert abs(dominant_hz(naive, 8000) - 3000) < 5  # what the filter prevents
    assert audio.resample(x, 22050, 22050) is not None and len(audio.resample(x, 22050, 22050)) == len(x)


def test_fit_clip_keeps_the_loudest_stretch_and_puts_the_word_in_the_middle() -> None:
    x = np.zeros(10_000, np.float32)
    x[7000:7500] = 1.0
    out = audio.fit_clip(x, 2000)
    assert len(out) == 2000 and out.sum() == 500 and np.array_equal(np.nonzero(out)[0], np.arange(750, 1250))
    short = np.ones(100, np.float32)
    padded = audio.fit_clip(short, 400)
    assert len(padded) == 400 and padded[150:250].sum() == 100 and padded[:150].sum() == padded[250:].sum() == 0
    # A word early in its second of noise is moved to the middle; the noise floor does not pull it.
    rng = np.random.default_rng(0)
    noisy = (0.01 * rng.standard_normal(8000)).astype(np.float32)
    noisy[500:2500] += tone(300, 8000, 0.25)
    centred = audio.fit_clip(noisy, 8000)
    assert np.allclose(sorted(centred), sorted(noisy))  # the same samples, rolled
    loud = np.nonzero(np.abs(centred) > 0.1)[0]
    assert abs((loud.min() + loud.max()) / 2 - 4000) < 80
    assert np.array_equal(audio.fit_clip(np.zeros(800, np.float32), 800), np.zeros(800))


def test_trim_silence_keeps_the_word_and_a_margin() -> None:
    x = np.concatenate([np.zeros(4000), tone(300, 8000, 0.25), np.zeros(4000)]).astype(np.float32)
    out = audio.trim_silence(x, 8000, margin_s=0.03)
    assert 2000 <= len(out) <= 2000 + 2 * 240 + 160
    assert np.abs(out).max() == pytest.approx(np.abs(x).max())


def test_add_noise_reaches_the_asked_signal_to_noise_ratio() -> None:
    x = tone(300, 8000, 2.0)
    noisy = audio.add_noise(x, 20.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((noisy - x).astype(np.float64) ** 2))
    assert abs(snr - 20.0) < 0.3
    again = audio.add_noise(x, 20.0, np.random.default_rng(0))
    assert np.array_equal(noisy, again)


def test_the_mel_filterbank_is_triangles_centred_on_evenly_spaced_mels() -> None:
    fb = audio.mel_filterbank(n_fft=512, rate=16000, n_mels=20, fmin=0.0)
    assert fb.shape == (257, 20) and float(fb.min()) >= 0 and float(fb.max()) <= 1
    centres = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(8000), 22))[1:-1]
    bins = np.linspace(0, 8000, 257)
    peaks = bins[fb.argmax(0).numpy()]
    assert np.all(np.abs(peaks - centres) <= 8000 / 256)  # each band peaks at the bin nearest its centre
    assert np.all(np.diff(peaks) > 0)
    assert audio.hz_to_mel(700) == pytest.approx(2595 * math.log10(2))
    assert audio.mel_to_hz(audio.hz_to_mel(1234.5)) == pytest.approx(1234.5)
    assert audio.empty_bands(256, 8000, 40) == [] and audio.empty_bands(64, 8000, 80)  # too narrow for 64 bins


def test_log_mel_puts_a_tone_in_its_band_and_keeps_batch_dimensions() -> None:
    rate, n_fft, hop, n_mels = 8000, 256, 200, 40
    x = torch.from_numpy(tone(1000, rate, 1.0))
    spec = audio.log_mel(x, rate, n_fft, hop, n_mels)
    assert spec.shape == (n_mels, 1 + 8000 // hop)
    band = int(spec[:, 10:30].mean(1).argmax())
    centres = audio.mel_to_hz(np.linspace(audio.hz_to_mel(20), audio.hz_to_mel(4000), n_mels + 2))[1:-1]
    assert abs(centres[band] - 1000) < 60
    batch = audio.log_mel(torch.stack([x, torch.zeros_like(x)]).reshape(1, 2, -1), rate, n_fft, hop, n_mels)
    assert batch.shape == (1, 2, n_mels, 41) and torch.allclose(batch[0, 0], spec, atol=1e-4)
    assert torch.allclose(batch[0, 1], torch.full_like(spec, math.log(audio.LOG_FLOOR)))  # silence: the floor
    louder = audio.log_mel(2 * x, rate, n_fft, hop, n_mels)
    assert torch.allclose((louder - spec)[band, 10:30], torch.full((20,), math.log(4.0)), atol=1e-3)


# --------------------------------------------------------------------------- storage and augmentation


def test_mu_law_round_trip_is_close_and_keeps_quiet_detail() -> None:
    x = np.linspace(-1, 1, 2001).astype(np.float32)
    codes = audio.mu_law_encode(x)
    assert codes.dtype == np.uint8 and codes.min() == 0 and codes.max() == 255
    assert np.all(np.diff(codes.astype(int)) >= 0)  # monotonic
    back = audio.mu_law_decode(codes)
    loud = np.abs(x) > 0.01
    assert np.all(np.abs(back - x)[loud] / np.abs(x)[loud] < 0.035)
    assert np.abs(back - x).max() < 0.035
    quiet = tone(300, 8000, 0.5, amplitude=0.01)
    err = audio.mu_law_decode(audio.mu_law_encode(quiet)) - quiet
    assert 10 * np.log10(np.mean(quiet ** 2) / np.mean(err ** 2)) > 30  # 8 bits linear would give ~4 dB here


def test_spec_augment_masks_bands_and_frames_and_shifts_in_time() -> None:
    torch.manual_seed(0)
    spec = torch.arange(40 * 41, dtype=torch.float32).reshape(1, 40, 41) + 1
    assert torch.equal(audio.SpecAugment()(spec), spec) and not audio.SpecAugment().active
    masked = audio.SpecAugment(freq_mask=8, time_mask=8)(spec, torch.Generator().manual_seed(3))
    zero_rows = (masked[0] == 0).all(1).sum()
    zero_cols = (masked[0] == 0).all(0).sum()
    assert 0 < zero_rows <= 8 and 0 < zero_cols <= 8
    keep = masked != 0
    assert torch.equal(masked[keep], spec[keep]) and torch.all(spec > 0)  # the input itself is untouched
    again = audio.SpecAugment(freq_mask=8, time_mask=8)(spec, torch.Generator().manual_seed(3))
    assert torch.equal(masked, again)
    shifted = audio.SpecAugment(time_shift=5)(spec, torch.Generator().manual_seed(1))
    blank = (shifted[0] == 0).all(0)
    k = int(blank.sum())
    assert 0 < k <= 5
    if bool(blank[0]):  # shifted right: frame t came from frame t - k
        assert torch.equal(shifted[..., k:], spec[..., :-k])
    else:
        assert torch.equal(shifted[..., :-k], spec[..., k:])
    up = audio.SpecAugment(freq_shift=3)(spec, torch.Generator().manual_seed(2))
    rows = int((up[0] == 0).all(1).sum())
    assert 0 < rows <= 3 and audio.SpecAugment(freq_shift=3).active
    if bool((up[0, 0] == 0).all()):  # shifted up: band b came from band b - rows
        assert torch.equal(up[..., rows:, :], spec[..., :-rows, :])
    else:
        assert torch.equal(up[..., :-rows, :], spec[..., rows:, :])


def test_spectrogram_picture_is_an_rgb_image() -> None:
    img = audio.spectrogram_picture([torch.randn(40, 41) for _ in range(4)], ["a", "b", "c", "d"], columns=2,
                                    title="t")
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 100
