"""Where the text comes from: the bundled corpus, local files, or a verified download.

    from lab.data.corpus import bundled_corpus, read_corpus, fetch
    text = bundled_corpus()                               # offline, ships with CPython
    text = read_corpus(TextDataConfig(path="my_texts/"), cache_dir)
    file = fetch("https://example.org/t.txt", "ab12...", cache_dir)  # cached, hash-checked

Nothing here touches the network unless ``data.url`` is set, and a download is
only ever visible under its final name after its SHA-256 matched.
"""

from __future__ import annotations

import hashlib
import re
import urllib.error
import urllib.parse
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lab.fileio import atomic_write
from lab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from lab.data.text import TextDataConfig

_SHA256 = re.compile(r"[0-9a-f]{64}")
_READ_CHUNK = 1 << 20


@lru_cache(maxsize=1)
def bundled_corpus() -> str:
    """CPython's own reference text (``pydoc_data.topics``): ~465 KB of English, always offline.

    Keys are sorted so the text is identical on every run of the same Python.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def check_source(config: TextDataConfig) -> None:
    """ConfigError for an impossible corpus source (url without sha256, path and url together)."""
    if config.path is not None and config.url is not None:
        raise ConfigError("data.url", config.url, "unset when data.path is set", hint="use one source")
    if config.url is not None:
        if config.sha256 is None:
            raise ConfigError("data.sha256", None, "the SHA-256 of the file at data.url",
                              hint="downloads are always verified; compute it with `sha256sum FILE`")
        normalise_sha256(config.sha256)


def normalise_sha256(sha256: str) -> str:
    """``sha256`` in lower case, or ConfigError unless it is 64 hex digits."""
    value = sha256.strip().lower() if isinstance(sha256, str) else sha256
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ConfigError("data.sha256", sha256, "64 hex digits (the SHA-256 of the file at data.url)")
    return value


def corpus_files(path: str | Path) -> list[Path]:
    """``path`` itself, or every non-hidden file below the folder ``path`` in sorted order."""
    root = Path(path).expanduser()
    if root.is_file():
        return [root]
    if not root.exists():
        raise DataError(f"data.path {str(root)!r} does not exist; point it at a UTF-8 text file or a folder of them")
    files = sorted(
        p for p in root.rglob("*")
        # Hidden files include .git folders and our own in-progress ".part" files.
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"data.path {str(root)!r} is a folder with no (non-hidden) files; put text files in it")
    return files


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks so big files never sit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def corpus_fingerprint(config: TextDataConfig) -> str:
    """A hash that changes whenever the corpus text would change, computed without decoding it.

    For a url this is the expected SHA-256 itself, so a cache built from a download
    can be found again without any network access.
    """
    check_source(config)
    if config.url is not None:
        return "url:" + normalise_sha256(config.sha256)
    if config.path is None:
        return "bundled:" + hashlib.sha256(bundled_corpus().encode("utf-8")).hexdigest()
    h = hashlib.sha256()
    for file in corpus_files(config.path):
        # The per-file marker keeps "ab" + "c" apart from "a" + "bc".
        h.update(f"\0file:{file.stat().st_size}\0".encode())
        h.update(bytes.fromhex(file_sha256(file)))
    return "path:" + h.hexdigest()


def _decode(file: Path) -> str:
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{file} is not UTF-8 text (bad byte at offset {e.start}); convert it, "
            "e.g. `iconv -f latin1 -t utf-8`, or remove it from data.path"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read {file}: {e}") from None


def read_corpus(config: TextDataConfig, cache_dir: str | Path) -> str:
    """The whole corpus as one string; several files are joined with a blank line between them."""
    check_source(config)
    if config.url is not None:
        files = [fetch(config.url, config.sha256, cache_dir)]
        where = config.url
    elif config.path is not None:
        files = corpus_files(config.path)
        where = str(config.path)
    else:
        return bundled_corpus()
    text = "\n\n".join(_decode(f) for f in files)
    if not text.strip():
        raise DataError(f"the corpus at {where!r} is empty; give data.path (or data.url) some text")
    return text


def _download_name(url: str, sha256: str) -> str:
    # The hash prefix keeps two different files with the same basename apart.
    base = Path(urllib.parse.urlparse(url).path).name or "download"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "download"
    return f"{sha256[:16]}-{base}"


def fetch(url: str, sha256: str, cache_dir: str | Path) -> Path:
    """The file at ``url`` under ``cache_dir/downloads/``, verified against ``sha256``.

    A cached copy whose hash matches is returned without any network access.
    The download streams into a temp file that is renamed only after the hash
    matched; on a mismatch or an error the temp file is deleted.
    """
    sha256 = normalise_sha256(sha256)
    target = Path(cache_dir).expanduser() / "downloads" / _download_name(url, sha256)
    if target.is_file() and file_sha256(target) == sha256:
        return target

    def download(out: BinaryIO) -> None:
        h = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(_READ_CHUNK):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256:
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {h.hexdigest()}; "
                "the file changed or data.sha256 is wrong — check both (nothing was kept)"
            )

    try:
        return atomic_write(target, download)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DataError(f"could not download {url}: {e}; check the URL and your network, "
                        "or download it yourself and set data.path") from None
