"""Checkpoints that survive kills and cannot run code: atomic saves, safe loads.

    trainer = L.Trainer(plugins=[AtomicCheckpointIO()])     # what lab.train does
    state = load_checkpoint(run.checkpoint("last"))          # weights_only=True, clear errors
    path, skipped = newest_intact(run)                       # what `lab fit --resume` starts from
    module = load_module(run, "best")                        # the run's LightningModule, in eval mode

Lightning's own atomic save stages the bytes in memory and writes the target in place
(or stages in the system temp folder, a copy rather than a rename across filesystems), so
a kill during the write can leave a truncated ``last.ckpt``. Here every checkpoint is
written to a temp file beside its target, flushed, fsynced and ``os.replace``-d: readers
see the previous checkpoint or the new one, never half of one. A full disk fails the save
cleanly and leaves earlier checkpoints untouched.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lab.errors import LabError
from lab.fileio import atomic_write

if TYPE_CHECKING:
    from lab.modules import LabModule
    from lab.runs import Run


class CheckpointError(LabError):
    """A checkpoint is missing, truncated, corrupted, or holds more than plain tensors."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes temp-file-then-rename in the target folder."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        try:
            atomic_write(Path(path), lambda f: torch.save(checkpoint, f))
        except OSError as e:
            raise LabError(f"could not save checkpoint {path}: {e.strerror or e}; earlier checkpoints are intact. "
                           "Free disk space and resume with `lab fit --resume`") from e

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(Path(path), map_location=map_location)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with a clear error for every way it can fail.

    A pickle that would build anything but tensors and plain containers (e.g. one whose
    unpickling calls ``os.system``) is refused before any of it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {path} was refused: it holds objects other than tensors and plain data "
                              f"({str(e).splitlines()[0][:160]}); never load checkpoints you do not trust") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def newest_intact(run_dir: str | Path, names: tuple[str, ...] = ("last", "best")) -> tuple[Path, list[str]]:
    """The newest checkpoint of a run that loads, and a note for each newer one that did not.

    Candidates are ``<name>.ckpt`` files in ``checkpoints/``, newest (by its global step,
    then modification time) first.
    """
    folder = Path(run_dir) / "checkpoints"
    candidates = [folder / f"{n}.ckpt" for n in names if (folder / f"{n}.ckpt").exists()]
    loaded: list[tuple[int, float, Path]] = []
    skipped: list[str] = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            skipped.append(str(e))
            continue
        loaded.append((int(state.get("global_step", 0)), path.stat().st_mtime, path))
    if not loaded:
        why = "; ".join(skipped) or f"no checkpoints in {folder}"
        raise CheckpointError(f"nothing to resume from: {why}")
    return max(loaded)[2], skipped


def load_module(run: Run, which: str = "best") -> LabModule:
    """Rebuild a run's LightningModule from its config and load a checkpoint safely.

    ``which`` is ``best``, ``last`` or a path; loading uses ``torch.load(weights_only=True)``,
    so a checkpoint cannot execute code.
    """
    path = run.checkpoint(which) if which in ("best", "last") else Path(which)
    if not path.exists():
        raise LabError(f"no checkpoint {path}: the run has {sorted(p.name for p in run.checkpoints_dir.glob('*.ckpt'))}")
    state = load_checkpoint(path).get("state_dict")
    if not isinstance(state, dict):
        raise LabError(f"checkpoint {path} has no state_dict: it was not written by `lab fit`")
    from lab.config import from_dict
    from lab.train import build_module  # here, not at the top: lab.train imports this module

    cfg = from_dict(run.config)
    dm = None
    if cfg.model.name == "gpt":
        from lab.data.tokenizers import load_tokenizer

        tok = load_tokenizer(run.tokenizer_path)
        dm = _TokenizerOnly(tok)
    module = build_module(cfg, dm)
    module.load_state_dict(state)
    module.eval()
    return module


class _TokenizerOnly:
    """What build_module needs from a text DataModule when only the tokenizer is at hand."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.vocab_size = tokenizer, tokenizer.vocab_size
