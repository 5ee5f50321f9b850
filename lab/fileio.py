"""Files written safely, and the lab's cache folder.

    from lab.fileio import atomic_write, write_json, default_cache_dir
    root = default_cache_dir()                 # $LAB_CACHE_DIR or ~/.cache/large-model-lab
    atomic_write(root / "tokens.bin", lambda f: f.write(b"..."))
    write_json(run_dir / "summary.json", {"status": "running"})
    check_writable(run_dir)                    # StorageError now, before any work, if it is read-only
    with storage_errors(run_dir, if_read_only=read_only_run_advice(run.name)):
        export_the_model()                     # a full disk or read-only folder -> one StorageError line

Every file the lab writes (data caches, summaries, configs, reports) goes through
``atomic_write``: it is written to a temporary file in the same folder, flushed and
fsynced, and renamed into place, so a crash or a Ctrl-C never leaves a half-written
file under its final name. A write that fails because the disk is full or the folder is
read-only (or not ours) raises ``lab.errors.StorageError``: one line naming the folder, the
cause and what to do, which the CLI prints as ``error: ...``. ``storage_error`` is the one
place that words it; ``storage_errors`` puts a command's own advice on it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from lab.errors import LabError, StorageError

CACHE_ENV = "LAB_CACHE_DIR"

_CAUSES = {
    errno.ENOSPC: "no space left on the disk under {folder}",
    errno.EDQUOT: "the disk quota is used up under {folder}",
    errno.EROFS: "{folder} is read-only (read-only file system)",
    errno.EACCES: "permission denied: {folder} is not writable",
    errno.EPERM: "operation not permitted in {folder}",
}
"""The errnos that mean "this folder cannot take the file" (not a bug), and how each reads."""
_SHORT_CAUSES = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "the disk quota is used up",
                 errno.EROFS: "it is read-only (read-only file system)", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}
OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def default_cache_dir() -> Path:
    """The cache root: ``$LAB_CACHE_DIR`` if set, else ``~/.cache/large-model-lab``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "large-model-lab"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` as a Path, or the default when None."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def storage_cause(e: BaseException | None) -> OSError | None:
    """The disk-full / read-only / not-permitted ``OSError`` behind ``e``, or None.

    Looks at ``e`` and what it was raised from or during: torch.save, for one, reports a
    full disk as a RuntimeError raised while handling the OSError.
    """
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _CAUSES:
            return e
        e = e.__cause__ or e.__context__
    return None


def out_of_space(e: OSError) -> bool:
    """Whether ``e`` is a full disk or quota (freeing space helps), not a read-only folder."""
    return e.errno in OUT_OF_SPACE


def existing_folder(path: str | Path) -> Path:
    """The nearest folder at or above ``path`` that exists (where a write into ``path`` lands), absolute."""
    folder = Path(os.path.abspath(path))
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def storage_error(e: OSError, path: str | Path, *, what: str = "write", if_full: str | None = None,
                  if_read_only: str | None = None) -> StorageError:
    """``e`` (a storage errno) as one line: what could not be written, in which folder, why, what to do.

    ``if_full`` / ``if_read_only``: the advice for a full disk or an unwritable folder
    (``{folder}`` is filled in); by default, free space there / choose a writable folder.
    """
    path = Path(os.path.abspath(path))
    folder = existing_folder(path)
    if path == folder:  # "could not write to X: X is read-only" says X twice
        cause = _SHORT_CAUSES.get(e.errno, e.strerror or str(e))
    else:
        cause = _CAUSES.get(e.errno, "{folder}: " + (e.strerror or str(e))).replace("{folder}", str(folder))
    if out_of_space(e):
        advice = if_full or "free disk space under {folder} and try again"
    else:
        advice = if_read_only or "make {folder} writable or choose a writable folder"
    # replace, not str.format: advice may hold run names, which may hold braces
    return StorageError(f"could not {what} {path}: {cause}", advice.replace("{folder}", str(folder)), code=e.errno,
                        folder=folder, path=path, what=what)


@contextlib.contextmanager
def storage_errors(folder: str | Path, *, target: str | Path | None = None, if_full: str | None = None,
                   if_read_only: str | None = None) -> Iterator[None]:
    """Turn a full disk or unwritable folder inside the block into one ``StorageError`` with this advice.

    For writes the lab does not make itself (torch.onnx.export, safetensors, TensorBoard):
    ``folder`` is named when the failing call does not say which file it was writing.
    ``target``: what the block makes, named instead of the file that failed (a temp file in it).
    """
    try:
        yield
    except Exception as e:
        cause = e if isinstance(e, StorageError) else storage_cause(e)
        if cause is None:
            raise
        path = target or (cause.path if isinstance(cause, StorageError) else (cause.filename or folder))
        what = "write" if target else cause.what if isinstance(cause, StorageError) else "write"
        raise storage_error(cause, path, what=what, if_full=if_full, if_read_only=if_read_only) from None


def check_writable(folder: str | Path, *, if_full: str | None = None, if_read_only: str | None = None) -> None:
    """Refuse before any work starts when ``folder`` (or where it would be made) cannot take a file.

    Creates and removes an empty temp file there: that is what the real writes need, and it
    answers truly for read-only mounts, permissions and ACLs alike (``os.access`` does not for root).
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=existing_folder(folder), prefix=".lab-write-check.", suffix=".part")
    except OSError as e:
        cause = storage_cause(e)
        if cause is None:
            # Not a folder that takes files at all (/proc, a virtual file system): the same one line.
            raise LabError(f"cannot create files under {existing_folder(folder)} ({e.strerror or e}): "
                           "choose another folder (--runs_dir or $LAB_RUNS_DIR)") from None
        # Named by the folder asked about: the probe file's name would only confuse.
        raise storage_error(cause, folder, what="write to", if_full=if_full, if_read_only=if_read_only) from None
    os.close(fd)
    os.unlink(tmp)


def read_only_run_advice(run_name: str) -> str:
    """What to do when an existing run's folder cannot be written: it cannot simply move to another runs folder."""
    return (f"make {{folder}} writable, or copy {run_name} into a writable runs folder and use that one "
            "(--runs_dir or $LAB_RUNS_DIR)")


def quiet_tensorboard_writer_errors() -> None:
    """Keep TensorBoard's event-writer thread from printing a traceback for a full disk or read-only folder.

    That thread keeps the error and the writer raises it again at the next write, flush or
    close, in the thread that logs (the training loop, an evaluation), where the lab turns it
    into one StorageError line; printed from the thread too, it would come out a traceback.
    Other errors and other threads are printed as before. Installed once, idempotent.
    """
    previous = threading.excepthook
    if getattr(previous, "_lab_quiet_writer", False):
        return

    def hook(args: Any) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and storage_cause(args.exc_value) is not None:
            return
        previous(args)

    hook._lab_quiet_writer = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _first_missing(folder: Path) -> Path | None:
    """The topmost folder of ``folder``'s chain that does not exist yet (what ``mkdir -p`` would make first)."""
    missing = None
    while not folder.exists() and folder != folder.parent:
        missing, folder = folder, folder.parent
    return missing


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Create ``path`` by calling ``write(file)`` on a temp file, then renaming it.

    The temp file sits in the target folder because ``os.replace`` is only atomic
    within one file system; its name starts with a dot so that folder scans
    (e.g. a corpus folder) skip it. A full disk or an unwritable folder raises
    ``StorageError`` (no temp file left behind, an older ``path`` untouched).
    """
    path = Path(path)
    tmp: str | None = None
    made = _first_missing(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; cached data should be readable like any other file.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        # BaseException so that Ctrl-C also cleans up the partial file.
        with contextlib.suppress(OSError):
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            # Folders made for this file go too (if still empty): a failed write leaves no trace.
            folder = path.parent
            while made is not None and folder != made.parent and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
        cause = storage_cause(e) if isinstance(e, Exception) and not isinstance(e, StorageError) else None
        if cause is None:
            raise
        raise storage_error(cause, path) from None
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``atomic_write`` for a UTF-8 text file."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (serialised before the file is touched)."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    return atomic_write_text(path, text)
