"""Spoken digits the lab makes itself: the espeak-ng synthesizer, its voices, and the bundled copy.

    from lab.data import espeak
    espeak.available()                                   # is the espeak-ng program installed?
    clips = espeak.synthesize_all(voices=espeak.VOICES[:4], takes=2)   # [Clip], clean, 8 kHz
    espeak.write_folder(clips, "digits-wavs")            # digits-wavs/<word>/<voice>_<accent>_s<speed>_p<pitch>.wav
    espeak.save_bundle(clips, "speech.npz")              # the compact copy (8-bit mu-law, compressed)
    espeak.load_bundle()                                 # the copy the lab ships (lab/data/bundled/speech.npz)

Each word is spoken by every voice (an espeak-ng *variant*: its formants, pitch range, breathiness)
in ``takes`` versions, each with an accent (an English espeak-ng language), a speed and a pitch
drawn from a seeded generator. The voice is what the speech data splits by, so held-out voices
are never heard in training; a file's voice is its name up to the first ``_``, as in Google's
Speech Commands (``<speaker>_nohash_<n>.wav``).

Clips are kept clean and trimmed of silence; ``write_folder`` places each word at a random point
of a one-second clip of white noise, at a random signal-to-noise ratio (both seeded), so the
folder the lab trains on is the same whether it came from espeak-ng or from the bundled copy.
A fresh clone needs no espeak-ng: the bundled copy (``lab data speech`` shows it) is what
``data.path: null`` trains on. ``lab data speech --generate`` synthesizes anew (more voices or
takes, another espeak-ng version) into a folder to train on with ``--data.path``, and
``--bundle`` rewrites the copy from it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lab.data.audio import add_noise, mu_law_decode, mu_law_encode, resample, trim_silence, write_wav
from lab.errors import DataError, LabError
from lab.fileio import atomic_write

BUNDLE = Path(__file__).parent / "bundled" / "speech.npz"
"""The spoken digits the lab ships (8 kHz, 8-bit mu-law), made by ``lab data speech --generate --bundle``."""
BUNDLE_LIMIT = 4 * 2**20
"""Files in the repository stay under 4 MiB: ``save_bundle`` refuses a bigger copy."""
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
"""What the default data says: the ten digits (label folders, in this order)."""
VOICES = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "Alex", "Andy", "Annie", "adam",
          "anika", "aunty", "benjamin", "boris", "caleb", "david", "ed", "grandma", "iven", "linda", "max", "norbert",
          "paul", "quincy", "rob", "steph", "travis", "victor", "zac")
"""espeak-ng voice variants (``espeak-ng --voices=variant``): 7 male and 5 female standard ones and
named ones, leaving out robots, whispers and the like."""
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
"""English espeak-ng languages (American, British, Scottish, RP, Caribbean, New York, Lancaster, West Midlands)."""
SPEEDS = (130, 210)
"""Words per minute, drawn uniformly in this range (espeak-ng's default is 175)."""
PITCHES = (30, 70)
"""espeak-ng pitch (0-99, default 50), drawn uniformly in this range."""
RATE = 8000
"""Sample rate of the clips (Hz): telephone bandwidth, plenty for telling digits apart."""
SNR_DB = (10.0, 30.0)
"""Signal-to-noise ratio of the white noise ``write_folder`` adds, drawn per clip (dB of the word's power)."""
SECONDS = 1.0
"""Length of the WAV files ``write_folder`` writes: the word at a random place in a second of noise,
as Speech Commands' one-second clips hold a word in their room's background."""


@dataclass
class Clip:
    """One spoken word and how it was made."""

    word: str
    voice: str
    accent: str
    speed: int
    pitch: int
    samples: np.ndarray
    """Clean float32 audio at ``RATE`` Hz, trimmed of silence."""

    @property
    def filename(self) -> str:
        """``<voice>_<accent>_s<speed>_p<pitch>.wav``: the voice first, as the split reads it."""
        return f"{self.voice}_{self.accent}_s{self.speed}_p{self.pitch}.wav"


def program() -> str | None:
    """The espeak-ng executable on PATH, or None."""
    return shutil.which("espeak-ng")


def available() -> bool:
    return program() is not None


def version() -> str:
    """``espeak-ng --version`` without its data folder, e.g. ``eSpeak NG text-to-speech: 1.51``
    (the audio depends on it)."""
    exe = _require_program()
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    return out.split("Data at:")[0].strip()  # the data folder's path says nothing about the voices


def variants() -> list[str]:
    """The voice variants this espeak-ng has (``espeak-ng --voices=variant``'s files, ``!v/<name>``)."""
    out = subprocess.run([_require_program(), "--voices=variant"], capture_output=True, text=True, check=False).stdout
    rows = [line.split() for line in out.splitlines()[1:]]  # Pty, Language, Age/Gender, VoiceName, File
    return sorted(row[4][3:] for row in rows if len(row) > 4 and row[4].startswith("!v/"))


def _require_program() -> str:
    exe = program()
    if exe is None:
        raise LabError("espeak-ng is not installed: install it (Debian/Ubuntu: `apt-get install espeak-ng`, macOS: "
                       "`brew install espeak-ng`), or train on the bundled copy (leave data.path out)")
    return exe


def speak(word: str, voice: str, accent: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """``(samples, rate)``: espeak-ng saying ``word`` (float32 in [-1, 1], its native rate, 22,050 Hz)."""
    exe = _require_program()
    proc = subprocess.run([exe, "-v", f"{accent}+{voice}", "-s", str(speed), "-p", str(pitch), "--stdout", word],
                          capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise LabError(f"espeak-ng could not say {word!r} with voice {accent}+{voice}: "
                       f"{proc.stderr.decode(errors='replace').strip() or 'no audio'}; check `espeak-ng --voices`")
    # On a pipe espeak-ng cannot seek back to write the sizes into the WAV header, so it writes a
    # placeholder there; wave reads the frames up to the real end of the data.
    with wave.open(io.BytesIO(proc.stdout), "rb") as w:
        rate, raw = w.getframerate(), w.readframes(w.getnframes())
    pcm = np.frombuffer(raw[: len(raw) // 2 * 2], "<i2")
    return pcm.astype(np.float32) / 32768.0, rate


def _make(word: str, voice: str, accent: str, speed: int, pitch: int) -> Clip:
    samples, rate = speak(word, voice, accent, speed, pitch)
    clean = trim_silence(resample(samples, rate, RATE), RATE)
    return Clip(word, voice, accent, speed, pitch, clean)


def synthesize_all(words: Sequence[str] = WORDS, voices: Sequence[str] = VOICES, takes: int = 3,
                   accents: Sequence[str] = ACCENTS, seed: int = 0, workers: int = 8) -> list[Clip]:
    """Every word by every voice, ``takes`` times, each with an accent, speed and pitch drawn from ``seed``.

    espeak-ng runs as ``workers`` processes at a time (most of a call is its start-up).
    """
    if takes < 1:
        raise LabError(f"takes = {takes}: give a whole number >= 1 (versions of each word per voice)")
    unknown = sorted(set(voices) - set(variants()))  # espeak-ng would quietly use its default voice instead
    if unknown:
        raise LabError(f"espeak-ng has no voice variant {', '.join(unknown)}: choose among `espeak-ng "
                       "--voices=variant` (e.g. f3, m2, Alex)")
    rng = np.random.default_rng(seed)
    jobs: list[tuple[str, str, str, int, int]] = []
    for voice in voices:
        for word in words:
            drawn: set[tuple[str, str, str, int, int]] = set()
            while len(drawn) < takes:
                job = (word, voice, str(rng.choice(accents)), int(rng.integers(SPEEDS[0], SPEEDS[1] + 1)),
                       int(rng.integers(PITCHES[0], PITCHES[1] + 1)))
                if job not in drawn:  # a repeat would get the same file name
                    drawn.add(job)
                    jobs.append(job)
    _require_program()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda job: _make(*job), jobs))


def write_folder(clips: Iterable[Clip], folder: str | Path, snr_db: tuple[float, float] = SNR_DB,
                 seed: int = 0, seconds: float = SECONDS) -> Path:
    """WAV files ``folder/<word>/<voice>_<accent>_s<speed>_p<pitch>.wav``: each word at a random place in
    ``seconds`` of white noise (longer words are kept whole), at a signal-to-noise ratio drawn from
    ``snr_db``. Clip i's placement and noise depend only on ``seed`` and i."""
    folder = Path(folder)
    for i, clip in enumerate(clips):
        rng = np.random.default_rng([seed, i])
        word = clip.samples
        padded = np.zeros(max(len(word), int(RATE * seconds)), np.float32)
        start = int(rng.integers(0, len(padded) - len(word) + 1))
        padded[start:start + len(word)] = word
        power = float(np.mean(word.astype(np.float64) ** 2))
        noisy = add_noise(padded, float(rng.uniform(*snr_db)), rng, power=power)
        # Noise may push a peak past full scale: scale the clip down rather than clip it.
        peak = float(np.abs(noisy).max())
        write_wav(folder / clip.word / clip.filename, noisy / peak * 0.9 if peak > 0.9 else noisy, RATE)
    return folder


def save_bundle(clips: Sequence[Clip], path: str | Path = BUNDLE, info: dict | None = None) -> Path:
    """The compact copy: every clip as 8-bit mu-law at ``RATE`` Hz in one compressed ``.npz``, written
    atomically; refused (nothing written) when it would reach ``BUNDLE_LIMIT``."""
    if not clips:
        raise LabError("no clips to bundle: synthesize some first")
    names = {k: sorted({getattr(c, k) for c in clips}) for k in ("word", "voice", "accent")}
    names["word"] = [w for w in WORDS if w in names["word"]] + sorted(set(names["word"]) - set(WORDS))
    index = {k: {v: i for i, v in enumerate(vs)} for k, vs in names.items()}
    arrays = {
        "audio": np.concatenate([mu_law_encode(c.samples) for c in clips]),
        "lengths": np.array([len(c.samples) for c in clips], np.int32),
        **{k: np.array([index[k][getattr(c, k)] for c in clips], np.int16) for k in names},
        **{f"{k}s": np.array(v) for k, v in names.items()},
        "speed": np.array([c.speed for c in clips], np.int16),
        "pitch": np.array([c.pitch for c in clips], np.int16),
        "rate": np.array(RATE),
        "info": np.array(json.dumps(info or {}, sort_keys=True)),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    if buf.tell() >= BUNDLE_LIMIT:
        raise LabError(f"the bundle would be {buf.tell() / 2**20:.1f} MiB, over the repository's 4 MiB per file: "
                       "use fewer voices or takes")
    return atomic_write(Path(path), lambda f: f.write(buf.getvalue()))


def _arrays(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read the speech bundle {path} ({e}): restore it from the repository "
                        "(`git checkout lab/data/bundled/speech.npz`) or rebuild it with "
                        "`lab data speech --generate --bundle`") from None


def load_bundle(path: str | Path = BUNDLE) -> list[Clip]:
    """The clips of a bundle written by ``save_bundle`` (decoded to float32)."""
    a = _arrays(path)
    starts = np.concatenate(([0], np.cumsum(a["lengths"][:-1], dtype=np.int64)))
    return [Clip(str(a["words"][a["word"][i]]), str(a["voices"][a["voice"][i]]), str(a["accents"][a["accent"][i]]),
                 int(a["speed"][i]), int(a["pitch"][i]), mu_law_decode(a["audio"][s : s + n]))
            for i, (s, n) in enumerate(zip(starts, a["lengths"]))]


def bundle_info(path: str | Path = BUNDLE) -> dict:
    """What the bundle holds: clips, words, voices, accents, seconds of audio, bytes, how it was made."""
    a = _arrays(path)
    return {"clips": int(len(a["lengths"])), "words": [str(w) for w in a["words"]],
            "voices": [str(v) for v in a["voices"]], "accents": [str(x) for x in a["accents"]],
            "seconds": float(a["lengths"].sum() / int(a["rate"])), "rate": int(a["rate"]),
            "bytes": Path(path).stat().st_size, **json.loads(str(a["info"]))}


def generate(out: str | Path | None = None, voices: Sequence[str] = VOICES, takes: int = 3, seed: int = 0,
             bundle: str | Path | None = None, cache_dir: str | Path | None = None) -> dict:
    """``lab data speech --generate``: synthesize, write the WAV folder, and a compact copy to ``bundle``
    when given (``--bundle``: ``BUNDLE``, the copy the lab ships).

    ``out`` None = ``$LAB_CACHE_DIR/speech/espeak-ng`` (replaced as a whole); a folder you name must
    be new or empty (the lab never deletes your files). The folder is written beside its final
    place and renamed into it when complete. Returns what was made (folder, clips, seconds, bundle).
    """
    from lab.fileio import resolve_cache_dir

    default = out is None
    folder = resolve_cache_dir(cache_dir) / "speech" / "espeak-ng" if default else Path(out)
    if not default and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise LabError(f"--out {folder} already exists and is not an empty folder: choose a new folder (the lab "
                       "does not overwrite your files)")
    clips = synthesize_all(voices=voices, takes=takes, seed=seed)
    info = {"espeak-ng": version(), "seed": seed, "takes": takes, "snr_db": list(SNR_DB)}
    made = None
    if bundle is not None:  # first: a bundle over the size limit is refused before the folder is written
        made = save_bundle(clips, bundle, info=info)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        write_folder(clips, tmp)  # the noise of the bundled copy's folder too: one seed for both
        os.chmod(tmp, 0o755)  # a folder like any other, not mkdtemp's private 0700
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old."))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"folder": folder, "clips": len(clips), "voices": len(set(voices)), "words": len(WORDS),
            "seconds": sum(len(c.samples) for c in clips) / RATE, "bundle": made, **info}
