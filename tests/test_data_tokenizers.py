"""Tests for lab.data.tokenizers: round trips, save/load, refusals."""

from __future__ import annotations

import json

import pytest

from lab.data import tokenizers as tk
from lab.data.corpus import bundled_corpus
from lab.data.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer, train_tokenizer
from lab.errors import ConfigError, DataError

# Characters the BPE never saw in training (the corpus is mostly ASCII English).
UNSEEN = "naïve café — 日本語のテキスト 🙂👍🏽 Ελληνικά \t\r\n\x00 tab\ttrailing  "


@pytest.fixture(scope="module")
def corpus() -> str:
    return bundled_corpus()[:60_000]


@pytest.fixture(scope="module")
def bpe(corpus: str) -> BPETokenizer:
    return train_tokenizer("bpe", corpus, vocab_size=400)


def test_char_round_trip_and_vocab() -> None:
    tok = train_tokenizer("char", "hello world", vocab_size=999)  # vocab_size ignored for char
    assert isinstance(tok, CharTokenizer)
    assert tok.chars == sorted(set("hello world"))
    assert tok.vocab_size == len(set("hello world"))
    ids = tok.encode("low hello")
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == "low hello"


def test_char_unicode_round_trip() -> None:
    tok = CharTokenizer(UNSEEN)
    assert tok.decode(tok.encode(UNSEEN)) == UNSEEN
    assert len(tok.encode(UNSEEN)) == len(UNSEEN)


def test_char_unknown_character_is_named() -> None:
    tok = CharTokenizer("abc")
    with pytest.raises(DataError, match="'z'"):
        tok.encode("abz")


def test_char_decode_out_of_range() -> None:
    tok = CharTokenizer("abc")
    with pytest.raises(DataError, match="outside"):
        tok.decode([0, 3])
    with pytest.raises(DataError):
        tok.decode([-1])


def test_char_from_empty_text_refused() -> None:
    with pytest.raises(DataError, match="empty"):
        CharTokenizer("")


def test_bpe_round_trip_seen_text(bpe: BPETokenizer, corpus: str) -> None:
    sample = corpus[10_000:20_000]
    ids = bpe.encode(sample)
    assert bpe.decode(ids) == sample
    # Merges must actually compress: fewer tokens than characters.
    assert len(ids) < 0.7 * len(sample)


def test_bpe_round_trip_unseen_non_ascii(bpe: BPETokenizer) -> None:
    ids = bpe.encode(UNSEEN)
    assert ids and all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == UNSEEN


def test_bpe_vocab_size_respected(bpe: BPETokenizer) -> None:
    assert 256 < bpe.vocab_size <= 400


def test_bpe_is_deterministic(bpe: BPETokenizer, corpus: str) -> None:
    again = train_tokenizer("bpe", corpus, vocab_size=400)
    assert again.hf.to_str() == bpe.hf.to_str()


def test_bpe_chunked_encoding_is_lossless(bpe: BPETokenizer, corpus: str, monkeypatch) -> None:
    pieces = list(tk._chunks(corpus, 1000))
    assert len(pieces) > 10 and "".join(pieces) == corpus
    assert all(p.endswith("\n") for p in pieces[:-1])
    monkeypatch.setattr(tk, "_CHUNK_CHARS", 1000)
    assert bpe.decode(bpe.encode(corpus)) == corpus


def test_bad_kind_and_vocab_refused() -> None:
    with pytest.raises(ConfigError) as e:
        train_tokenizer("word", "text", 512)
    assert e.value.field == "data.tokenizer"
    with pytest.raises(ConfigError) as e:
        train_tokenizer("bpe", "text", 100)
    assert e.value.field == "data.vocab_size"


def test_save_load_char(tmp_path) -> None:
    tok = CharTokenizer("hello wörld")
    path = tok.save(tmp_path / "tok.json")
    assert json.loads(path.read_text(encoding="utf-8")) == {"type": "char", "chars": tok.chars}
    loaded = load_tokenizer(path)
    assert isinstance(loaded, CharTokenizer) and isinstance(loaded, Tokenizer)
    assert loaded.chars == tok.chars
    assert loaded.encode("wörld") == tok.encode("wörld")


def test_save_load_bpe(bpe: BPETokenizer, tmp_path) -> None:
    path = bpe.save(tmp_path / "tokenizer.json")
    assert json.loads(path.read_text(encoding="utf-8"))["model"]["type"] == "BPE"
    loaded = load_tokenizer(path)
    assert isinstance(loaded, BPETokenizer) and isinstance(loaded, Tokenizer)
    assert loaded.vocab_size == bpe.vocab_size
    assert loaded.encode(UNSEEN) == bpe.encode(UNSEEN)
    assert loaded.decode(loaded.encode(UNSEEN)) == UNSEEN
    assert not list(tmp_path.glob(".*")), "atomic save left a temp file behind"


@pytest.mark.parametrize(
    "content",
    ["this is not json", json.dumps({"hello": 1}), json.dumps([1, 2]), json.dumps({"type": "char", "chars": ["ab"]}),
     json.dumps({"model": {"type": "BPE"}})],
)
def test_load_junk_refused(tmp_path, content: str) -> None:
    path = tmp_path / "junk.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="junk.json"):
        load_tokenizer(path)


def test_load_missing_or_binary_refused(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError):
        load_tokenizer(tmp_path / "bin.json")
