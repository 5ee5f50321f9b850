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


def test_char_encode_of_a_prompt_and_of_a_corpus_agree() -> None:
    tok = CharTokenizer("abcdefgh ")
    short, long = "bad cafe", "bad cafe " * 100  # dict lookups up to 256 characters, NumPy past them
    assert tok.encode(short) == tok.encode_array(short).tolist() == [tok.chars.index(c) for c in short]
    assert tok.encode(long) == [tok.chars.index(c) for c in long]
    with pytest.raises(DataError, match="'z'"):
        tok.encode(long + "z")


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


def test_char_tokenizer_as_an_hf_tokenizer_round_trips(corpus: str, tmp_path) -> None:
    # What `lab export --format hf` writes for a character-level run, and reads back.
    char = CharTokenizer(corpus)
    hf = char.to_hf()
    text = corpus[1000:3000]
    assert hf.encode(text).ids == char.encode(text) and hf.decode(char.encode(text)) == text
    hf.save(str(tmp_path / "tokenizer.json"))
    back = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(back, CharTokenizer) and back.chars == char.chars
    with pytest.raises(Exception):
        hf.encode("日")  # an unseen character fails, as CharTokenizer's does, instead of becoming another


def test_an_hf_folder_tokenizer_from_vocab_and_merges_keeps_end_of_text_whole(corpus: str, tmp_path) -> None:
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    hf.train_from_iterator([corpus], trainers.BpeTrainer(vocab_size=400, special_tokens=[tk.GPT2_END_OF_TEXT],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.model.save(str(tmp_path))  # GPT-2's pair: vocab.json + merges.txt, no tokenizer.json
    assert tk.load_hf_tokenizer(tmp_path / "nothing-here") is None
    tok = tk.load_hf_tokenizer(tmp_path)
    text = corpus[5000:6000] + tk.GPT2_END_OF_TEXT + UNSEEN
    ids = tok.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False).ids and tok.decode(ids) == text
    assert ids.count(hf.token_to_id(tk.GPT2_END_OF_TEXT)) == 1
    (tmp_path / "tokenizer.json").write_text(hf.to_str())  # when both are there, tokenizer.json wins
    assert tk.load_hf_tokenizer(tmp_path).to_json() == hf.to_str()
