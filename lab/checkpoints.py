"""Checkpoints that survive kills and cannot run code: atomic saves, safe loads.

    trainer = L.Trainer(plugins=[AtomicCheckpointIO()])     # what lab.train does
    state = load_checkpoint(run.checkpoint("last"))          # weights_only=True, clear errors
    path, skipped = newest_intact(run)                       # what `lab fit --resume` starts from
    module = load_module(run, "best")                        # the run's LightningModule, in eval mode (LoRA merged)
    module = restore_module(cfg, state["state_dict"], tok)   # the same from a checkpoint's own contents

Lightning's own atomic save stages the bytes in memory and writes the target in place
(or stages in the system temp folder, a copy rather than a rename across filesystems), so
a kill during the write can leave a truncated ``last.ckpt``. Here every checkpoint is
written to a temp file beside its target, flushed, fsynced and ``os.replace``-d: readers
see the previous checkpoint or the new one, never half of one. A full disk fails the save
cleanly and leaves earlier checkpoints untouched.
"""

from __future__ import annotations

import os
import pickle
import shutil
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lab import finetune
from lab.config import from_dict
from lab.data.tokenizers import load_tokenizer
from lab.errors import LabError, StorageError
from lab.families import build_module, family_of
from lab.fileio import atomic_write, storage_error, storage_errors

if TYPE_CHECKING:
    from lab.config import Config
    from lab.modules import LabModule
    from lab.runs import Run


class CheckpointError(LabError):
    """A checkpoint is missing, truncated, corrupted, or holds more than plain tensors.

    ``problem`` is what is wrong; the message adds ``advice`` (what to do), which a caller
    that already knows what to do next (``newest_intact`` falls back to an older file) leaves out.
    """

    def __init__(self, problem: str, advice: str = "") -> None:
        self.problem, self.advice = problem, advice
        super().__init__(f"{problem}; {advice}" if advice else problem)


_USE_ANOTHER = "use another checkpoint (best, last) or train again"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes temp-file-then-rename in the target folder."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        try:
            atomic_write(Path(path), lambda f: torch.save(checkpoint, f))
        except StorageError as e:
            # No temp file is left and the previous file of this name is untouched. Whether
            # there is anything to resume from is for the caller to say (lab.train does).
            raise storage_error(e, path, what="save the checkpoint",
                                if_full="free disk space under {folder}; earlier checkpoints are untouched") from None
        except OSError as e:
            raise LabError(f"could not save the checkpoint {path}: {e.strerror or e}; earlier checkpoints are "
                           "untouched") from e

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
    if path.stat().st_size == 0:  # what a kill before the first byte, or `touch`, leaves
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)", _USE_ANOTHER)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {path} was refused: it holds objects other than tensors and plain data "
                              f"({_refused_global(e)}); never load checkpoints you do not trust") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        first = (str(e).splitlines() or [""])[0][:160]
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({type(e).__name__}: {first})",
                              _USE_ANOTHER) from None


def _refused_global(e: Exception) -> str:
    """What torch's weights-only unpickler refused: its message is a page of advice, and the
    line that matters names the global (``GLOBAL posix.system``, ``GLOBAL __main__.Payload``)."""
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"the global {found.group(1)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else type(e).__name__)


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
            skipped.append(e.problem)
            continue
        loaded.append((int(state.get("global_step", 0)), path.stat().st_mtime, path))
    if not loaded:
        why = "; ".join(skipped) or f"no checkpoints in {folder}"
        raise CheckpointError(f"nothing to resume from: {why}",
                              f"start a new run instead (lab fit --config {Path(run_dir) / 'config.yaml'})")
    return max(loaded)[2], skipped


def load_module(run: Run, which: str = "best", merged: bool = True, runs_root: Any = None) -> LabModule:
    """Rebuild a run's LightningModule from its config and load a checkpoint safely.

    ``which`` is ``best``, ``last`` or a path; loading uses ``torch.load(weights_only=True)``,
    so a checkpoint cannot execute code. A LoRA run's checkpoint may hold only its adapters:
    ``build_module`` rebuilds the base from the config's ``model.init_from`` (a run name there
    resolves under ``runs_root``) and adds empty adapters, then the checkpoint fills them.
    ``merged`` (the default) folds the adapters into the base weights (``lab.finetune.merge``),
    so what evaluate, sample, compress and export get is a plain model of the family.
    """
    path = run.checkpoint(which) if which in ("best", "last") else Path(which)
    if not path.exists():
        raise LabError(f"no checkpoint {path}: the run has {sorted(p.name for p in run.checkpoints_dir.glob('*.ckpt'))}")
    state = load_checkpoint(path).get("state_dict")
    if not isinstance(state, dict):
        raise LabError(f"checkpoint {path} has no state_dict: it was not written by `lab fit`")
    cfg = from_dict(run.config)
    tokenizer = load_tokenizer(run.tokenizer_path) if family_of(cfg).tokenized else None
    return restore_module(cfg, state, tokenizer, merged=merged, runs_root=runs_root)


def restore_module(cfg: Config, state_dict: dict[str, Any], tokenizer: Any = None, merged: bool = True,
                   runs_root: Any = None) -> LabModule:
    """The LightningModule a checkpoint's ``state_dict`` was saved from, rebuilt from its config, in eval mode.

    The one way back from saved tensors to a model (``load_module`` reads a run's files; a reader
    of a lone checkpoint, such as ``lab.hub`` taking a run's weights, passes what is inside it).
    ``tokenizer``: what a tokenized family completes its vocabulary from. ``merged``: fold LoRA
    adapters into their base weights (a plain model, with the family's own tensor names).
    """
    dm = _TokenizerOnly(tokenizer) if tokenizer is not None else None
    module = build_module(cfg, dm, runs_root=runs_root)
    module.load_state_dict(state_dict)
    if merged:
        finetune.merge(module.model)
    return module.eval()


def standalone_run(path: str | Path) -> Run:
    """A run folder for a checkpoint file on its own (copied, downloaded, its run folder gone).

    Every checkpoint ``lab fit`` writes carries the run's resolved config and tokenizer
    (``LabModule.record``). They are written beside it into ``<name>.run/`` (config.yaml,
    tokenizer.json, and checkpoints/best.ckpt, a hard link to the file or a copy), so the
    commands that take a run work on it unchanged and write their reports there.
    """
    from lab import runs
    from lab.modules import CHECKPOINT_RECORD

    path = Path(path)
    record = load_checkpoint(path).get(CHECKPOINT_RECORD)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise LabError(f"{path} carries no config (written by an older lab, or not by `lab fit`): "
                       "give its run folder instead (`lab runs` lists them)")
    folder = path.with_name(f"{path.stem}.run")
    best = folder / "checkpoints" / "best.ckpt"
    with storage_errors(folder):  # a full disk or read-only folder: one line naming it
        best.parent.mkdir(parents=True, exist_ok=True)
        if not best.exists():
            try:
                os.link(path, best)  # same file, no second copy of the weights
            except OSError:  # another file system, or links not allowed: a copy
                shutil.copyfile(path, best)
        atomic_write(folder / runs.CONFIG, lambda f: f.write(yaml.safe_dump(record["config"], sort_keys=False).encode()))
        if record.get("tokenizer"):
            atomic_write(folder / runs.TOKENIZER, lambda f: f.write(record["tokenizer"].encode("utf-8")))
    return runs.load_run(folder)


class _TokenizerOnly:
    """What build_module needs from a text DataModule when only the tokenizer is at hand."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.vocab_size = tokenizer, tokenizer.vocab_size
