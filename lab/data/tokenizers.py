"""Tokenizers for the text data: characters, or byte-level BPE.

    from lab.data.tokenizers import train_tokenizer, load_tokenizer
    tok = train_tokenizer("bpe", text, vocab_size=512)   # or "char" (vocab_size ignored)
    ids = tok.encode("héllo wörld")
    assert tok.decode(ids) == "héllo wörld"
    tok.save("tokenizer.json")
    tok = load_tokenizer("tokenizer.json")                # either kind
    tok = load_hf_tokenizer("path/to/gpt2")               # an HF folder: tokenizer.json, or vocab.json + merges.txt

``CharTokenizer`` maps each distinct character of its training text to an id
(the nanoGPT shakespeare_char setup). ``BPETokenizer`` is GPT-2 style byte-level
BPE trained with the HF ``tokenizers`` library: it works on UTF-8 bytes, so any
text round-trips exactly, even characters it never saw in training; it also wraps a
pretrained one (GPT-2's) read from a Hugging Face folder. ``CharTokenizer.to_hf()`` is the
same character vocabulary as an HF ``tokenizer.json`` (WordLevel, one piece per character),
which ``load_tokenizer`` reads back as a ``CharTokenizer``: what ``lab export --format hf``
writes for a character-level run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lab.fileio import atomic_write_text
from lab.errors import ConfigError, DataError, require

TOKENIZER_KINDS = ("char", "bpe")
# 256 byte tokens plus at least one merge; fewer would be a char tokenizer over bytes.
MIN_BPE_VOCAB = 257


def check_tokenizer_fields(config: Any) -> None:
    """A text data config's ``tokenizer`` and ``vocab_size``: a known kind, and room for BPE's 256 byte tokens."""
    require(config.tokenizer in TOKENIZER_KINDS, "data.tokenizer", config.tokenizer, " or ".join(TOKENIZER_KINDS))
    require(config.tokenizer != "bpe" or config.vocab_size >= MIN_BPE_VOCAB, "data.vocab_size", config.vocab_size,
            f"a whole number >= {MIN_BPE_VOCAB} (byte-level BPE starts from 256 byte tokens)")


# The WordLevel unknown token of a character vocabulary as an HF tokenizer: never one of its
# characters (it is two), so an unseen character fails to encode instead of becoming one.
_NO_UNK = "<unk>"

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

    def to_json(self) -> str: ...

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
        if len(text) <= 256:  # a prompt: dict lookups beat NumPy's set-up
            try:
                return [self._index[c] for c in text]
            except KeyError:
                pass  # encode_array names the unknown character
        return self.encode_array(text).tolist()

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.chars):
                raise DataError(f"token id {i} is outside the character vocabulary 0..{len(self.chars) - 1}")
            out.append(self.chars[i])
        return "".join(out)

    def to_json(self) -> str:
        """The file ``save`` writes (and what a data cache keys a given tokenizer by)."""
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    def to_hf(self) -> HFTokenizer:
        """The same vocabulary as an HF tokenizer: each character one piece, looked up in a WordLevel table."""
        tok = HFTokenizer(models.WordLevel({c: i for i, c in enumerate(self.chars)}, unk_token=_NO_UNK))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # any one code point
        tok.decoder = decoders.Fuse()  # pieces join with nothing between them
        return tok

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

    def to_json(self) -> str:
        """The HF ``tokenizer.json`` text (what ``save`` writes)."""
        return self.hf.to_str()

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

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
    """Load a file written by ``CharTokenizer.save`` or ``BPETokenizer.save`` (or an HF ``tokenizer.json``)."""
    path = Path(path)
    what = "a character tokenizer file or a BPE tokenizer.json"
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"tokenizer file {path} does not exist; check the path or rebuild the data cache") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read tokenizer file {path} ({e}); expected {what}") from None
    return parse_tokenizer(raw, str(path))


def parse_tokenizer(raw: str, name: str = "the tokenizer") -> Tokenizer:
    """A tokenizer from the text of its file (``name`` says where it came from in errors)."""
    what = "a character tokenizer file or a BPE tokenizer.json"
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError:
        raise DataError(f"{name} is not JSON, so it is not {what}; point at the right file") from None
    if isinstance(spec, dict) and spec.get("type") == "char":
        chars = spec.get("chars")
        if not (isinstance(chars, list) and chars and all(isinstance(c, str) and len(c) == 1 for c in chars)
                and chars == sorted(set(chars))):
            raise DataError(f"{name} is a damaged character tokenizer file: 'chars' must be sorted unique characters")
        return CharTokenizer("".join(chars))
    model = spec.get("model") if isinstance(spec, dict) else None
    kind = model.get("type") if isinstance(model, dict) else None
    if kind == "WordLevel":
        # What CharTokenizer.to_hf writes: every entry one character, ids in code point order.
        vocab = model.get("vocab")
        chars = [c for c, _ in sorted(vocab.items(), key=lambda kv: kv[1])] if isinstance(vocab, dict) else []
        if chars and all(len(c) == 1 for c in chars) and chars == sorted(set(chars)) \
                and sorted(vocab.values()) == list(range(len(chars))):
            return CharTokenizer("".join(chars))
        raise DataError(f"{name} is a WordLevel tokenizer.json but not a character vocabulary; "
                        "the lab reads byte-level BPE and character tokenizers only")
    if kind == "BPE":
        try:
            return BPETokenizer(HFTokenizer.from_str(raw))
        except Exception as e:  # the Rust side raises plain Exception for any parse problem
            raise DataError(f"{name} is a damaged BPE tokenizer.json ({e}); rebuild the data cache") from None
    raise DataError(f"{name} is JSON but not {what}; point at the right file")


GPT2_END_OF_TEXT = "<|endoftext|>"
"""GPT-2's one special token: a vocab.json entry that ``GPT2TokenizerFast`` treats as special."""


def load_hf_tokenizer(folder: str | Path) -> Tokenizer | None:
    """The tokenizer of a Hugging Face model folder; None when it has none.

    ``tokenizer.json`` when there is one; else GPT-2's pair ``vocab.json`` + ``merges.txt``,
    read as byte-level BPE (its pre-tokenizer and decoder are GPT-2's, and ``<|endoftext|>``
    is kept whole, as ``GPT2TokenizerFast`` does). Nothing is downloaded.
    """
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder / "tokenizer.json")
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        return None
    try:
        tok = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as e:  # the Rust side raises plain Exception for any parse problem
        raise DataError(f"{vocab.name} + {merges.name} in {folder} are not a BPE vocabulary ({e}); "
                        "check the files or give a tokenizer.json") from None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if tok.token_to_id(GPT2_END_OF_TEXT) is not None:
        tok.add_special_tokens([AddedToken(GPT2_END_OF_TEXT, special=True)])
    return BPETokenizer(tok)
