"""Tokenizers for the text data: characters, or byte-level BPE.

    from lab.data.tokenizers import train_tokenizer, load_tokenizer
    tok = train_tokenizer("bpe", text, vocab_size=512)   # or "char" (vocab_size ignored)
    ids = tok.encode("héllo wörld")
    assert tok.decode(ids) == "héllo wörld"
    tok.save("tokenizer.json")
    tok = load_tokenizer("tokenizer.json")                # either kind

``CharTokenizer`` maps each distinct character of its training text to an id
(the nanoGPT shakespeare_char setup). ``BPETokenizer`` is GPT-2 style byte-level
BPE trained with the HF ``tokenizers`` library: it works on UTF-8 bytes, so any
text round-trips exactly, even characters it never saw in training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lab.fileio import atomic_write_text
from lab.errors import ConfigError, DataError

TOKENIZER_KINDS = ("char", "bpe")
# 256 byte tokens plus at least one merge; fewer would be a char tokenizer over bytes.
MIN_BPE_VOCAB = 257

# Big corpora are encoded in pieces so the Rust side can work in parallel and
# never holds per-token offsets for the whole corpus at once.
_CHUNK_CHARS = 1 << 20


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of the lab needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, path: str | Path) -> Path: ...


class CharTokenizer:
    """One id per distinct character of ``text``, in code point order."""

    def __init__(self, text: str) -> None:
        self.chars: list[str] = sorted(set(text))
        if not self.chars:
            raise DataError("cannot build a character tokenizer from empty text; give it some text")
        self._index = {c: i for i, c in enumerate(self.chars)}
        # Sorted code points let encode_array use searchsorted instead of a Python loop.
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of ``text`` as an int64 array (fast path for whole corpora)."""
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        ids = np.searchsorted(self._codepoints, cps)
        clipped = np.minimum(ids, len(self._codepoints) - 1)
        unknown = self._codepoints[clipped] != cps
        if unknown.any():
            pos = int(unknown.argmax())
            ch = chr(int(cps[pos]))
            raise DataError(
                f"character {ch!r} (U+{ord(ch):04X}) at position {pos} is not in the character "
                f"tokenizer's vocabulary of {self.vocab_size} characters; rebuild the tokenizer "
                "from text that contains it, or use data.tokenizer=bpe (handles any text)"
            )
        return ids.astype(np.int64)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.chars):
                raise DataError(f"token id {i} is outside the character vocabulary 0..{len(self.chars) - 1}")
            out.append(self.chars[i])
        return "".join(out)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) backed by a HF ``tokenizers.Tokenizer``."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self.hf = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn merges on ``text`` until ``vocab_size`` tokens (256 bytes + merges) exist.

        A small text may stop short of ``vocab_size``: there are no pairs left to merge.
        """
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < MIN_BPE_VOCAB:
            raise ConfigError(
                "data.vocab_size", vocab_size,
                f"an integer >= {MIN_BPE_VOCAB} for the bpe tokenizer (its byte alphabet alone has 256 symbols)",
            )
        if not text:
            raise DataError("cannot train a BPE tokenizer on empty text; give it some text")
        tok = HFTokenizer(models.BPE())
        # add_prefix_space=False keeps decode(encode(t)) == t exactly.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_chunks(text), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of ``text`` as an int64 array; long texts are encoded in line-aligned pieces."""
        pieces = list(_chunks(text))
        if not pieces:
            return np.zeros(0, dtype=np.int64)
        encodings = self.hf.encode_batch(pieces, add_special_tokens=False)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.hf.to_str())

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def _chunks(text: str, size: int | None = None) -> Iterator[str]:
    """Consecutive pieces of ``text`` of about ``size`` chars, cut after a newline when possible.

    Byte-level BPE is lossless per piece, so the concatenated ids of the pieces
    still decode to exactly ``text``.
    """
    size = size or _CHUNK_CHARS
    start, n = 0, len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            newline = text.rfind("\n", start, end)
            if newline > start:
                end = newline + 1
        yield text[start:end]
        start = end


def train_tokenizer(kind: str, text: str, vocab_size: int) -> Tokenizer:
    """Build a ``kind`` tokenizer ("char" or "bpe") from ``text``; ``vocab_size`` is for bpe only."""
    if kind == "char":
        return CharTokenizer(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise ConfigError("data.tokenizer", kind, f"one of {', '.join(TOKENIZER_KINDS)}")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a file written by ``CharTokenizer.save`` or ``BPETokenizer.save``."""
    path = Path(path)
    what = "a character tokenizer file or a BPE tokenizer.json"
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"tokenizer file {path} does not exist; check the path or rebuild the data cache") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read tokenizer file {path} ({e}); expected {what}") from None
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError:
        raise DataError(f"{path} is not JSON, so it is not {what}; point at the right file") from None
    if isinstance(spec, dict) and spec.get("type") == "char":
        chars = spec.get("chars")
        if not (isinstance(chars, list) and chars and all(isinstance(c, str) and len(c) == 1 for c in chars)
                and chars == sorted(set(chars))):
            raise DataError(f"{path} is a damaged character tokenizer file: 'chars' must be sorted unique characters")
        return CharTokenizer("".join(chars))
    model = spec.get("model") if isinstance(spec, dict) else None
    if isinstance(model, dict) and model.get("type") == "BPE":
        try:
            return BPETokenizer(HFTokenizer.from_str(raw))
        except Exception as e:  # the Rust side raises plain Exception for any parse problem
            raise DataError(f"{path} is a damaged BPE tokenizer.json ({e}); rebuild the data cache") from None
    raise DataError(f"{path} is JSON but not {what}; point at the right file")
