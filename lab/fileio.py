"""Files written safely, and the lab's cache folder.

    from lab.fileio import atomic_write, write_json, default_cache_dir
    root = default_cache_dir()                 # $LAB_CACHE_DIR or ~/.cache/large-model-lab
    atomic_write(root / "tokens.bin", lambda f: f.write(b"..."))
    write_json(run_dir / "summary.json", {"status": "running"})

Every file the lab writes (data caches, summaries, configs, reports) goes through
``atomic_write``: it is written to a temporary file in the same folder, flushed and
fsynced, and renamed into place, so a crash or a Ctrl-C never leaves a half-written
file under its final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

CACHE_ENV = "LAB_CACHE_DIR"


def default_cache_dir() -> Path:
    """The cache root: ``$LAB_CACHE_DIR`` if set, else ``~/.cache/large-model-lab``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "large-model-lab"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` as a Path, or the default when None."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Create ``path`` by calling ``write(file)`` on a temp file, then renaming it.

    The temp file sits in the target folder because ``os.replace`` is only atomic
    within one file system; its name starts with a dot so that folder scans
    (e.g. a corpus folder) skip it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; cached data should be readable like any other file.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        # BaseException so that Ctrl-C also cleans up the partial file.
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``atomic_write`` for a UTF-8 text file."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (serialised before the file is touched)."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    return atomic_write_text(path, text)
