"""Audio in, log-mel spectrograms out: WAV files, resampling, features and their augmentation.

    from lab.data.audio import read_wav, resample, fit_clip, log_mel, SpecAugment
    samples, rate = read_wav("zero/f3_en-us_s175_p50.wav")     # float32 in [-1, 1], mono
    x = fit_clip(resample(samples, rate, 8000), 8000)            # one second at 8 kHz, the word in the middle
    spec = log_mel(torch.from_numpy(x), 8000, n_fft=256, hop=200, n_mels=40)   # [40 bands, 41 frames]
    SpecAugment(freq_mask=6, time_mask=6, time_shift=4, freq_shift=4)(spec)   # a training view

Every step is a plain function of arrays, so the notebook can show each one:

- ``read_wav`` reads PCM WAV with the standard library's ``wave`` module (8/16/24/32-bit, any
  channel count, averaged to mono). A file that is not PCM WAV, says its sample rate is 0 or holds
  no samples is refused with a ``DataError`` naming the file.
- ``resample`` uses ``scipy.signal.resample_poly``: a polyphase filter (up-sample by ``L``, low-pass
  with a Kaiser-windowed FIR, down-sample by ``M``, for the exact ratio ``L/M``). The low-pass is
  what matters: linear interpolation would fold everything above the new Nyquist frequency back
  into the band as aliasing, and an FFT resampler assumes the clip repeats. SciPy is already
  installed as scikit-learn's dependency, so this adds none (torchaudio publishes no build for the
  torch the lab pins).
- ``log_mel`` is the whole feature in one function: a Hann-windowed short-time Fourier transform
  (``torch.stft``), the power spectrum, a triangular mel filterbank (HTK mel scale, as torchaudio's
  and Kaldi's defaults) and a natural log with a floor.
- ``SpecAugment`` masks random mel bands and frames (Park et al., 2019, "SpecAugment"; masked
  cells take the mean, 0 after standardising) and shifts the clip in time and in pitch: a
  training-only view.
- ``mu_law_encode``/``mu_law_decode``: 8-bit mu-law (G.711's curve, mu = 255), how the lab's
  bundled clips are stored at a byte per sample.
"""

from __future__ import annotations

import io
import math
import wave
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lab.errors import DataError
from lab.fileio import atomic_write

MU = 255
"""The mu-law constant of 8-bit telephone audio (G.711)."""
LOG_FLOOR = 1e-6
"""Added to mel energies before the log, so silence (zero energy) stays finite."""


# --------------------------------------------------------------------------- WAV files


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """``(samples, sample_rate)`` of a PCM WAV file: float32 in [-1, 1], channels averaged to mono."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            rate, width, channels, n = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, ValueError) as e:
        raise DataError(f"{path} is not a PCM WAV audio file ({e}): convert it to 16-bit PCM WAV "
                        "(e.g. `ffmpeg -i IN -acodec pcm_s16le OUT.wav`) or remove it") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file and its permissions") from None
    if rate <= 0:
        raise DataError(f"{path} says its sample rate is {rate} Hz: the header is broken; re-export the "
                        "file with its real rate (e.g. 16000) or remove it")
    if channels < 1 or width not in (1, 2, 3, 4):
        raise DataError(f"{path} has {channels} channels of {8 * width}-bit samples: give 8, 16, 24 or 32-bit "
                        "PCM WAV")
    frames = len(raw) // (width * channels)
    if frames == 0:
        raise DataError(f"{path} holds no audio samples: remove it or record it again")
    raw = raw[: frames * width * channels]
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:  # 24-bit: widen each little-endian triple to an int32 (sign in the top byte)
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8).astype(np.float32) / 2.0**23
    else:
        dtype = np.int16 if width == 2 else np.int32
        x = np.frombuffer(raw, dtype).astype(np.float32) / float(2 ** (8 * width - 1))
    return x.reshape(frames, channels).mean(axis=1), rate


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A 16-bit mono PCM WAV file holding ``samples`` (floats in [-1, 1], clipped), as bytes."""
    pcm = (np.clip(np.asarray(samples, np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write ``samples`` as a 16-bit mono WAV file, atomically (a temp file renamed into place)."""
    data = wav_bytes(samples, sample_rate)
    return atomic_write(Path(path), lambda f: f.write(data))


# --------------------------------------------------------------------------- signal processing


def resample(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """``x`` sampled at ``rate`` Hz, resampled to ``new_rate`` Hz with an anti-aliasing polyphase filter."""
    if rate == new_rate:
        return np.asarray(x, np.float32)
    from scipy.signal import resample_poly  # here: importing SciPy's signal package costs a second

    g = math.gcd(int(rate), int(new_rate))
    return resample_poly(np.asarray(x, np.float64), new_rate // g, rate // g).astype(np.float32)


def fit_clip(x: np.ndarray, length: int) -> np.ndarray:
    """Exactly ``length`` samples with the word in the middle.

    A longer clip keeps its loudest stretch (the word, not the silence around it), a shorter one is
    padded with silence on both sides; then the clip is rolled so that the centre of its energy
    above the noise floor (the median energy of its 1/100-length frames) sits in the middle. A word
    recorded anywhere in its second then gives the same picture: the CNN's dense head does not have
    to learn every word at every position from a few hundred clips.
    """
    x = np.asarray(x, np.float32)
    if len(x) > length:
        energy = np.concatenate(([0.0], np.cumsum(x.astype(np.float64) ** 2)))
        start = int(np.argmax(energy[length:] - energy[:-length]))
        x = x[start : start + length].copy()
    else:
        before = (length - len(x)) // 2
        x = np.pad(x, (before, length - len(x) - before))
    frame = max(1, length // 100)
    n = length // frame
    power = (x[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1)
    weight = np.clip(power - np.median(power), 0.0, None)
    if weight.sum() == 0:  # silence, or noise alone: nothing to centre
        return x
    centre = float((np.arange(n) + 0.5) @ weight / weight.sum()) * frame
    return np.roll(x, int(round(length / 2 - centre)))


def trim_silence(x: np.ndarray, rate: int, threshold_db: float = -40.0, margin_s: float = 0.03) -> np.ndarray:
    """``x`` without the leading and trailing stretches quieter than ``threshold_db`` below its peak
    (10 ms frames), keeping ``margin_s`` seconds on each side."""
    frame = max(1, rate // 100)
    n = len(x) // frame
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    loud = np.nonzero(rms > rms.max() * 10 ** (threshold_db / 20))[0]
    if len(loud) == 0:
        return x
    margin = int(margin_s * rate)
    return x[max(0, loud[0] * frame - margin) : min(len(x), (loud[-1] + 1) * frame + margin)]


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator, power: float | None = None) -> np.ndarray:
    """``x`` plus white Gaussian noise ``snr_db`` decibels below ``power`` (default: ``x``'s mean power;
    give the word's own power when ``x`` is a word padded with silence)."""
    power = float(np.mean(np.asarray(x, np.float64) ** 2)) if power is None else power
    noise = rng.standard_normal(len(x)) * math.sqrt(power / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, rate: int, n_mels: int, fmin: float = 20.0, fmax: float | None = None) -> torch.Tensor:
    """Triangular filters ``[n_fft // 2 + 1, n_mels]``: column j weighs the FFT bins of mel band j.

    Band edges are ``n_mels + 2`` points evenly spaced in mel between ``fmin`` and ``fmax`` (default:
    the Nyquist frequency); band j rises from edge j to edge j + 1 and falls to edge j + 2 (unnormalised,
    as torchaudio's ``melscale_fbanks`` with ``norm=None``). A band narrower than the FFT's bin
    spacing catches no bin at all: ``empty_bands`` says which, and the data config refuses them.
    """
    fmax = rate / 2 if fmax is None else fmax
    bins = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (bins[None] - lo) / (mid - lo)
    fall = (hi - bins[None]) / (hi - mid)
    return torch.from_numpy(np.clip(np.minimum(rise, fall), 0.0, None).T.astype(np.float32))


def empty_bands(n_fft: int, rate: int, n_mels: int, fmin: float = 20.0, fmax: float | None = None) -> list[int]:
    """Mel bands that no FFT bin falls in (too narrow for this ``n_fft``): always 0 in every spectrogram."""
    weights = mel_filterbank(n_fft, rate, n_mels, fmin, fmax)
    return [int(j) for j in torch.nonzero(weights.sum(0) == 0).flatten()]


def log_mel(x: torch.Tensor, rate: int, n_fft: int = 256, hop: int = 200, n_mels: int = 40, fmin: float = 20.0,
            fmax: float | None = None) -> torch.Tensor:
    """Log-mel spectrogram of waveforms ``[..., samples]`` -> ``[..., n_mels, 1 + samples // hop]``.

    1. ``torch.stft``: frames of ``n_fft`` samples every ``hop`` samples, each times a Hann window
       (centred: the first frame is centred on sample 0, the signal padded with zeros);
    2. power spectrum ``|X|^2`` per frame: ``n_fft // 2 + 1`` bins from 0 Hz to ``rate / 2``;
    3. mel energies: the power weighted by ``mel_filterbank`` (fine resolution at low frequencies,
       where speech formants are, coarse at high ones);
    4. ``log(energy + LOG_FLOOR)``: loudness is perceived logarithmically, and the log turns the
       gain of a microphone into an additive offset that standardising removes.
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    shape = x.shape[:-1]
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft, hop_length=hop, win_length=n_fft, window=window,
                      center=True, pad_mode="constant", return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2                                  # [batch, bins, frames]
    mel = torch.matmul(mel_filterbank(n_fft, rate, n_mels, fmin, fmax).T.to(x.device), power)
    return torch.log(mel + LOG_FLOOR).reshape(*shape, n_mels, power.shape[-1])


# --------------------------------------------------------------------------- storage and augmentation


def mu_law_encode(x: np.ndarray) -> np.ndarray:
    """Floats in [-1, 1] -> uint8 codes: ``sign(x) ln(1 + mu|x|) / ln(1 + mu)`` quantised to 256 levels.

    Small amplitudes get fine steps and loud ones coarse steps, as hearing does; 8 bits of it
    sound like 13-14 bits of linear PCM.
    """
    x = np.clip(np.asarray(x, np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(MU * np.abs(x)) / math.log1p(MU)
    return np.round((y + 1.0) * 127.5).astype(np.uint8)


def mu_law_decode(codes: np.ndarray) -> np.ndarray:
    """uint8 mu-law codes -> floats in [-1, 1] (the inverse of ``mu_law_encode``, up to its rounding)."""
    y = np.asarray(codes, np.float64) / 127.5 - 1.0
    return (np.sign(y) * np.expm1(np.abs(y) * math.log1p(MU)) / MU).astype(np.float32)


class SpecAugment:
    """Random masks and shifts on a spectrogram ``[..., n_mels, frames]`` (a new tensor).

    ``freq_mask``/``time_mask``: the widest run of mel bands / frames set to ``fill`` (SpecAugment);
    ``time_shift``: the largest shift in frames either way; ``freq_shift``: the largest shift in mel
    bands up or down, a crude vocal-tract-length perturbation (another voice's formants sit higher or
    lower). Cells shifted in from outside the picture are ``fill`` too. 0 turns each off. Each call
    draws from torch's global generator, which Lightning seeds and the lab's checkpoints save, so a
    resumed run augments exactly as the uninterrupted one would.
    """

    def __init__(self, freq_mask: int = 0, time_mask: int = 0, time_shift: int = 0, freq_shift: int = 0,
                 fill: float = 0.0) -> None:
        self.freq_mask, self.time_mask, self.time_shift, self.freq_shift = freq_mask, time_mask, time_shift, freq_shift
        self.fill = fill

    @property
    def active(self) -> bool:
        return bool(self.freq_mask or self.time_mask or self.time_shift or self.freq_shift)

    def __call__(self, spec: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A masked, shifted copy of ``spec``; ``generator``: draw from it instead of the global one."""
        out = spec.clone()
        for most, dim in ((self.time_shift, -1), (self.freq_shift, -2)):
            if most:
                out = self._shift(out, int(torch.randint(-most, most + 1, (), generator=generator)), dim)
        for size, dim in ((self.freq_mask, -2), (self.time_mask, -1)):
            length = out.shape[dim]
            width = int(torch.randint(0, min(size, length) + 1, (), generator=generator)) if size else 0
            if width:
                start = int(torch.randint(0, length - width + 1, (), generator=generator))
                out.narrow(dim, start, width).fill_(self.fill)
        return out

    def _shift(self, x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
        """``x`` moved ``k`` cells along ``dim``; what rolls around from the other end is blanked."""
        if k == 0:
            return x
        x = torch.roll(x, k, dims=dim)
        length = x.shape[dim]
        x.narrow(dim, 0 if k > 0 else length + k, abs(k)).fill_(self.fill)
        return x


def spectrogram_picture(specs: Sequence[torch.Tensor | np.ndarray], titles: Sequence[str], columns: int = 5,
                        title: str = "") -> np.ndarray:
    """A grid of spectrograms (low frequencies at the bottom) with a title each, as an RGB array
    ``[height, width, 3]`` (uint8): what the notebook shows and TensorBoard and the dashboard keep."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, math.ceil(len(specs) / columns))
    fig = Figure(figsize=(1.9 * columns, 1.7 * rows + (0.3 if title else 0)), dpi=100)
    canvas = FigureCanvasAgg(fig)
    for i, (spec, name) in enumerate(zip(specs, titles)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(np.asarray(spec, np.float32).squeeze(), origin="lower", aspect="auto", cmap="magma")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
