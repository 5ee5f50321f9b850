"""Tests for lab.data.text and lab.data.corpus: corpus sources, downloads, token cache, windows."""

from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import threading

import numpy as np
import pytest
import torch

from lab.data import corpus as corpus_mod
from lab.data import text as text_mod
from lab.data.text import TextDataConfig, TextDataModule, TokenWindows, bundled_corpus, fetch, read_corpus
from lab.data.tokenizers import CharTokenizer
from lab.errors import ConfigError, DataError

LINES = [f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}.\n" for i in range(400)]
TEXT = "".join(LINES)  # ~25k characters: fast to prepare, long enough for every split


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test gets its own cache; nothing is written to ~."""
    path = tmp_path / "cache"
    monkeypatch.setenv("LAB_CACHE_DIR", str(path))
    return path


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def make_dm(path, block_size: int = 16, **kw) -> TextDataModule:
    dm_kw = {k: kw.pop(k) for k in ("seed", "num_train_samples", "cache_dir") if k in kw}
    dm = TextDataModule(TextDataConfig(path=str(path), **kw), block_size=block_size, **dm_kw)
    dm.prepare_data()
    dm.setup()
    return dm


# --- corpus sources -------------------------------------------------------------------------------


def test_bundled_corpus_is_large_and_deterministic() -> None:
    text = bundled_corpus()
    assert len(text) > 300_000
    assert "the" in text and "\n\n" in text
    assert bundled_corpus.__wrapped__() == text  # recomputed from scratch


def test_read_corpus_default_is_bundled(cache_dir) -> None:
    assert read_corpus(TextDataConfig(), cache_dir) == bundled_corpus()


def test_read_corpus_missing_path(tmp_path, cache_dir) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(TextDataConfig(path=str(tmp_path / "nope.txt")), cache_dir)


def test_read_corpus_non_utf8_names_file(tmp_path, cache_dir) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt.*not UTF-8"):
        read_corpus(TextDataConfig(path=str(bad)), cache_dir)


def test_read_corpus_empty_file(tmp_path, cache_dir) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        read_corpus(TextDataConfig(path=str(empty)), cache_dir)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="no .*files"):
        read_corpus(TextDataConfig(path=str(tmp_path / "emptydir")), cache_dir)


def test_read_corpus_folder_sorted_recursive_skips_hidden(tmp_path, cache_dir) -> None:
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / "b.txt").write_text("second", encoding="utf-8")
    (folder / "a.txt").write_text("first", encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("third", encoding="utf-8")
    (folder / ".hidden.txt").write_text("HIDDEN", encoding="utf-8")
    (folder / ".git" / "HEAD").write_bytes(b"\xff not utf-8 and hidden")
    assert read_corpus(TextDataConfig(path=str(folder)), cache_dir) == "first\n\nsecond\n\nthird"


# --- downloads ------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server in a thread; yields (folder it serves, base url, stop function)."""
    monkeypatch.setenv("no_proxy", "*")  # never send 127.0.0.1 through a proxy
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", stop
    stop()


def test_fetch_good_hash_is_cached_and_reused_offline(server, cache_dir) -> None:
    root, base, stop = server
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    sha = hashlib.sha256(TEXT.encode()).hexdigest()
    first = fetch(f"{base}/corpus.txt", sha, cache_dir)
    assert first.parent == cache_dir / "downloads"
    assert first.read_text(encoding="utf-8") == TEXT
    stop()
    again = fetch(f"{base}/corpus.txt", sha.upper(), cache_dir)  # server gone: must come from cache
    assert again == first
    assert [p.name for p in (cache_dir / "downloads").iterdir()] == [first.name]


def test_fetch_bad_hash_refused_and_nothing_left(server, cache_dir) -> None:
    root, base, _ = server
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    actual = hashlib.sha256(TEXT.encode()).hexdigest()
    wrong = "0" * 64
    with pytest.raises(DataError) as e:
        fetch(f"{base}/corpus.txt", wrong, cache_dir)
    assert wrong in str(e.value) and actual in str(e.value)
    downloads = cache_dir / "downloads"  # removed again when the failed download made it
    assert not downloads.exists() or list(downloads.iterdir()) == []


def test_fetch_http_error_is_data_error(server, cache_dir) -> None:
    _, base, _ = server
    with pytest.raises(DataError, match="could not download"):
        fetch(f"{base}/missing.txt", "0" * 64, cache_dir)
    downloads = cache_dir / "downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []


def test_url_end_to_end_then_setup_offline(server, cache_dir) -> None:
    root, base, stop = server
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    config = TextDataConfig(url=f"{base}/corpus.txt", sha256=hashlib.sha256(TEXT.encode()).hexdigest())
    dm = TextDataModule(config, block_size=16)
    dm.prepare_data()
    stop()
    other = TextDataModule(config, block_size=16)  # e.g. another rank: finds the cache by hash
    other.setup()
    assert other.cache_path == dm.cache_path
    assert sum(other.split_sizes.values()) == len(TEXT)


def test_url_config_errors() -> None:
    with pytest.raises(ConfigError) as e:
        TextDataModule(TextDataConfig(url="http://x/y.txt"), block_size=8)
    assert e.value.field == "data.sha256"
    with pytest.raises(ConfigError) as e:
        TextDataModule(TextDataConfig(url="http://x/y.txt", sha256="abc"), block_size=8)
    assert e.value.field == "data.sha256"
    with pytest.raises(ConfigError) as e:
        TextDataModule(TextDataConfig(path="a.txt", url="http://x/y.txt", sha256="0" * 64), block_size=8)
    assert e.value.field == "data.url"


# --- config checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("val_fraction", 1.5), ("val_fraction", 0.0), ("test_fraction", -0.1), ("test_fraction", 0.96),
     ("batch_size", 0), ("tokenizer", "word"), ("vocab_size", 10)],
)
def test_bad_config_fails_before_any_work(field, value, monkeypatch) -> None:
    monkeypatch.setattr(text_mod, "read_corpus", lambda *a: pytest.fail("read the corpus"))
    kw = {"tokenizer": "bpe"} if field == "vocab_size" else {}
    with pytest.raises(ConfigError) as e:
        TextDataModule(TextDataConfig(**{field: value}, **kw), block_size=8)
    assert e.value.field == f"data.{field}"
    if field == "val_fraction":
        assert "a fraction in (0, 1)" in str(e.value)


def test_block_size_too_large_names_model_block_size(corpus_file) -> None:
    dm = TextDataModule(TextDataConfig(path=str(corpus_file)), block_size=5000)
    dm.prepare_data()
    with pytest.raises(ConfigError, match="at most") as e:
        dm.setup()
    assert e.value.field == "model.block_size"
    assert "smaller block_size" in str(e.value)


def test_tiny_corpus_split_refused(tmp_path) -> None:
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("just a few characters", encoding="utf-8")
    with pytest.raises(DataError, match="val split has 1 tokens"):
        make_dm(tiny, block_size=4)


# --- token cache ----------------------------------------------------------------------------------


def test_splits_contiguous_no_overlap_sizes_add_up(corpus_file) -> None:
    dm = make_dm(corpus_file, val_fraction=0.1, test_fraction=0.05)
    assert isinstance(dm.tokenizer, CharTokenizer)
    ids = np.asarray(dm.tokenizer.encode(TEXT))
    sizes = dm.split_sizes
    assert sum(sizes.values()) == len(ids)
    assert sizes["val"] == int(len(ids) * 0.1) and sizes["test"] == int(len(ids) * 0.05)
    # train, then val, then test, back to back: together they are exactly the corpus.
    joined = np.concatenate([dm.splits["train"], dm.splits["val"], dm.splits["test"]])
    assert np.array_equal(joined, ids)


def test_bin_files_are_uint16_and_memmapped(corpus_file) -> None:
    dm = make_dm(corpus_file)
    for name in ("train", "val", "test"):
        assert isinstance(dm.splits[name], np.memmap)
        assert dm.splits[name].dtype == np.uint16
        assert (dm.cache_path / f"{name}.bin").stat().st_size == 2 * dm.split_sizes[name]
    assert dm.vocab_size == len(set(TEXT))


def test_prepare_is_deterministic(corpus_file, tmp_path) -> None:
    a = make_dm(corpus_file, tokenizer="bpe", vocab_size=300, cache_dir=tmp_path / "a")
    b = make_dm(corpus_file, tokenizer="bpe", vocab_size=300, cache_dir=tmp_path / "b")
    assert a.cache_path.name == b.cache_path.name
    for name in ("train.bin", "val.bin", "test.bin", "tokenizer.json"):
        assert (a.cache_path / name).read_bytes() == (b.cache_path / name).read_bytes()
    assert a.tokenizer.decode(np.concatenate(list(a.splits.values())).tolist()) == TEXT


def test_complete_cache_is_reused_incomplete_rebuilt(corpus_file, monkeypatch) -> None:
    dm = make_dm(corpus_file)
    monkeypatch.setattr(text_mod, "read_corpus", lambda *a: pytest.fail("cache was not reused"))
    again = make_dm(corpus_file)
    assert again.cache_path == dm.cache_path
    monkeypatch.undo()
    (dm.cache_path / "val.bin").unlink()
    rebuilt = make_dm(corpus_file)
    assert (rebuilt.cache_path / "val.bin").is_file()
    assert not [p for p in dm.cache_path.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_cache_key_follows_content_and_settings(corpus_file) -> None:
    base = make_dm(corpus_file).cache_path
    assert make_dm(corpus_file, val_fraction=0.1).cache_path != base
    assert make_dm(corpus_file, tokenizer="bpe", vocab_size=300).cache_path != base
    corpus_file.write_text(TEXT + "more text\n", encoding="utf-8")
    assert make_dm(corpus_file).cache_path != base


def test_setup_without_prepare_data(corpus_file) -> None:
    dm = TextDataModule(TextDataConfig(path=str(corpus_file)), block_size=16)
    dm.setup()
    assert dm.cache_path.is_dir() and dm.vocab_size == len(set(TEXT))


def test_nanogpt_train_val_mode(corpus_file) -> None:
    dm = make_dm(corpus_file, val_fraction=0.1, test_fraction=0.0)
    n = sum(dm.split_sizes.values())
    assert set(dm.split_sizes) == {"train", "val"}
    assert dm.split_sizes["val"] == int(n * 0.1)
    assert not (dm.cache_path / "test.bin").exists()
    with pytest.raises(DataError, match="no test split"):
        dm.test_dataloader()
    with pytest.raises(DataError, match="no test split"):
        dm.setup("test")


def test_bundled_corpus_bpe_end_to_end() -> None:
    dm = TextDataModule(TextDataConfig(tokenizer="bpe", vocab_size=300), block_size=32)
    dm.prepare_data()
    dm.setup()
    assert 256 < dm.vocab_size <= 300
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (12, 32) and x.dtype == torch.int64
    assert int(x.max()) < dm.vocab_size


# --- windows --------------------------------------------------------------------------------------


def test_train_windows_shift_and_come_from_train_split(corpus_file) -> None:
    dm = make_dm(corpus_file, block_size=16, batch_size=4)
    loader = dm.train_dataloader()
    x, y = next(iter(loader))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    start = int(loader.dataset.starts[0])
    window = torch.from_numpy(dm.splits["train"][start : start + 17].astype(np.int64))
    assert torch.equal(x[0], window[:-1]) and torch.equal(y[0], window[1:])
    assert len(loader.dataset) == 10_000
    assert loader.dataset.starts.max() <= dm.split_sizes["train"] - 17


def test_same_seed_same_batches_different_seed_different(corpus_file) -> None:
    def batches(seed: int) -> list[torch.Tensor]:
        dm = make_dm(corpus_file, seed=seed, num_train_samples=64)
        return [x for x, _ in dm.train_dataloader()]

    a, b, c = batches(1), batches(1), batches(2)
    assert len(a) == 64 // 12 + 1
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_val_windows_sequential_and_repeatable(corpus_file) -> None:
    dm = make_dm(corpus_file, block_size=16)
    loader = dm.val_dataloader()
    n = dm.split_sizes["val"]
    assert np.array_equal(loader.dataset.starts, np.arange(0, (n - 1) // 16 * 16, 16))
    first = torch.cat([x for x, _ in loader])
    second = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(first, second)
    # Non-overlapping and in order: the flattened x windows are the split's prefix.
    assert np.array_equal(first.flatten().numpy(), dm.splits["val"][: first.numel()])
    assert len(dm.test_dataloader().dataset) == (dm.split_sizes["test"] - 1) // 16


def test_unigram_loss_is_the_frequency_baseline(corpus_file) -> None:
    dm = make_dm(corpus_file)
    train = np.asarray(dm.splits["train"])
    counts = np.bincount(train, minlength=dm.vocab_size) + 1.0
    val = np.asarray(dm.splits["val"])
    expected = -np.log(counts[val] / counts.sum()).mean()
    assert dm.unigram_loss() == pytest.approx(expected, rel=1e-9)
    # Below the uniform guess (frequencies help) but far from 0 (it ignores context).
    assert 1.0 < dm.unigram_loss() < np.log(dm.vocab_size)


def test_token_windows_pickle_reopens_memmap(corpus_file) -> None:
    dm = make_dm(corpus_file)
    windows = TokenWindows.sequential(dm.splits["val"], 16)
    blob = pickle.dumps(windows)
    assert len(blob) < 2 * dm.split_sizes["val"]  # the tokens themselves were not pickled
    clone = pickle.loads(blob)
    assert isinstance(clone.data, np.memmap)
    assert all(torch.equal(p, q) for p, q in zip(clone[3], windows[3]))


def test_corpus_fingerprint_needs_no_network_for_url() -> None:
    config = TextDataConfig(url="http://unreachable.invalid/x.txt", sha256="A" * 64)
    assert corpus_mod.corpus_fingerprint(config) == "url:" + "a" * 64


def test_a_given_tokenizer_is_used_and_keys_the_cache(corpus_file) -> None:
    # A pretrained model's tokenizer (model.init_from): nothing is trained, data.tokenizer is ignored.
    given = CharTokenizer(TEXT + "#")  # one character the corpus lacks: not what training would give
    dms = [TextDataModule(TextDataConfig(path=str(corpus_file), tokenizer=kind), block_size=16, tokenizer=given)
           for kind in ("char", "bpe")]
    for dm in dms:
        dm.prepare_data()
        dm.setup()
    assert dms[0].cache_path == dms[1].cache_path  # the tokenizer's content keys it, not data.tokenizer
    assert dms[0].cache_path != make_dm(corpus_file)._locate()
    assert dms[0].tokenizer.to_json() == given.to_json() and dms[0].vocab_size == given.vocab_size
    ids = np.concatenate([np.asarray(dms[0].splits[s]) for s in ("train", "val", "test")])
    assert given.decode(ids.tolist()) == TEXT
    other = TextDataModule(TextDataConfig(path=str(corpus_file)), block_size=16, tokenizer=CharTokenizer(TEXT + "%"))
    assert other._locate() != dms[0].cache_path
