"""Refusals before training: everything ``fit`` checks before it writes a byte or allocates a model.

    from lab import preflight
    preflight.refuse_resume(run)                 # still training, or already completed
    preflight.check_memory(cfg)                  # lab plan's estimate against free memory
    preflight.check_batch(cfg, dm)               # a batch larger than the training split
    preflight.check_shapes(module, state, run, path)   # resuming with a changed model shape
    preflight.check_disk(folder, module)         # read-only folder, or no room for the checkpoints

Each raises one ``LabError`` line that names the problem and what to do; ``lab.train.fit``
calls them in order, so a refused run leaves the runs folder as it was.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lab import procs, runs
from lab.config import Config
from lab.env.probe import host_memory
from lab.errors import LabError
from lab.families import family_of
from lab.modules import LabModule
from lab.fileio import check_writable, read_only_run_advice
from lab.plan import Accelerator, plan


def training_device(cfg: Config) -> torch.device:
    """The device a config trains on: cuda for gpu/cuda (or auto with a GPU), else the CPU."""
    t = cfg.trainer
    if t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def refuse_resume(resume: runs.Run) -> None:
    """A run that is still training, or that completed, cannot be resumed."""
    if resume.summary.get("status") == "running" and resume.process_alive():
        # Two trainings writing one folder would interleave its checkpoints.
        raise LabError(f"run {resume.name} is still training ({procs.describe(resume.summary.get('process'))}): "
                       "stop it first (Ctrl-C saves last.ckpt), then resume it")
    if resume.summary.get("status") == "completed":
        # Resuming would rerun the test pass and overwrite `final`: there is nothing left to train.
        raise LabError(f"run {resume.name} already completed ({resume.summary.get('step')} steps): start a new run "
                       f"from its config instead (lab fit --config {resume.path / runs.CONFIG}, "
                       "adding e.g. --trainer.max_steps to train longer)")


def check_memory(cfg: Config) -> None:
    """Refuse a run whose model cannot fit in the free memory of the device it trains on.

    The figure is ``lab plan``'s estimate (weights, gradients, optimizer state, activations;
    built on the meta device, so nothing is allocated), checked against free memory now. Text
    runs also hold one int64 window offset per training sample in RAM.
    """
    gpu = training_device(cfg).type == "cuda"
    ram = host_memory()[1]
    free = torch.cuda.mem_get_info()[0] if gpu else ram
    if not free or not ram:
        return  # unknown here: nothing to check against
    where = "GPU memory" if gpu else "memory (RAM)"
    t = cfg.trainer
    ranks = (t.devices if isinstance(t.devices, int) else 1) * t.num_nodes
    samples = t.max_steps * t.accumulate_grad_batches * cfg.data.batch_size * ranks  # each process: build_datamodule
    if family_of(cfg).unit == "tokens" and samples * 8 > ram:
        raise LabError(f"trainer.max_steps = {t.max_steps}: the training windows for that many steps (x batch "
                       f"{cfg.data.batch_size} x accumulation {t.accumulate_grad_batches}) need "
                       f"{samples * 8 / 2**30:,.1f} GiB of RAM and {ram / 2**30:,.1f} GiB is free: "
                       "lower trainer.max_steps")
    acc = Accelerator(where, int(free), 1.0, 1.0, kind="gpu" if gpu else "cpu", source="detected")
    try:
        p = plan(cfg, device=acc, with_recommendation=False)
    except LabError:
        return  # the planner does not cover this setup: no estimate, no refusal
    if p.headroom < 0:
        need = (free - p.headroom) / 2**30
        raise LabError(f"this model needs about {need:,.1f} GiB of {where} to train ({p.model.params:,} parameters; "
                       f"lab plan's estimate) and {free / 2**30:,.1f} GiB is free: make it smaller (model.n_layer, "
                       "model.n_embd), lower data.batch_size, or see `lab plan` with the same config")


def check_batch(cfg: Config, dm: L.LightningDataModule) -> None:
    """A batch larger than the training split would silently become the whole split, every step."""
    sizes = getattr(dm, "split_sizes", None)
    train = sizes.get("train") if isinstance(sizes, dict) else None
    if train is not None and cfg.data.batch_size > train:
        raise LabError(f"data.batch_size = {cfg.data.batch_size} is larger than the {train} training samples: "
                       f"use --data.batch_size {train} or less")


def check_shapes(module: LabModule, state: dict[str, Any], run: runs.Run, path: Path) -> None:
    """Resuming with overrides that change the model's shape is refused, naming the first tensor that differs."""
    saved = state.get("state_dict")
    if not isinstance(saved, dict):
        return  # not a full checkpoint (e.g. FSDP's sharded folder): Lightning checks it while loading
    now = module.state_dict()
    for key, tensor in now.items():
        old = saved.get(key)
        if torch.is_tensor(old) and tuple(old.shape) != tuple(tensor.shape):
            raise LabError(f"cannot resume {run.name}: {key} is {list(old.shape)} in {path.name} but "
                           f"{list(tensor.shape)} with this config; drop the model overrides (a resumed run keeps "
                           "its shape) or start a new run")
    extra, missing = sorted(set(saved) - set(now)), sorted(set(now) - set(saved))
    if extra or missing:
        which = f"{extra[0]} is in {path.name} but not in the model" if extra else \
            f"{missing[0]} is in the model but not in {path.name}"
        raise LabError(f"cannot resume {run.name}: {which} (the config changes the model's layers); drop the model "
                       "overrides or start a new run")


def check_disk(folder: Path, module: L.LightningModule, resume: str | None = None) -> None:
    """Refuse to start when ``folder`` cannot be written, or the checkpoints this run will write cannot fit.

    A checkpoint holds the weights and two AdamW moments (3 x 4 bytes per parameter); the
    run keeps best and last and writes one temp copy while saving. ``resume``: the run's
    name when ``folder`` is the run being resumed (it cannot move to another runs folder).
    """
    if resume is None:
        check_writable(folder, if_read_only="choose a writable runs folder with --runs_dir or $LAB_RUNS_DIR")
    else:
        check_writable(folder, if_read_only=f"nothing was changed; {read_only_run_advice(resume)}")
    params = sum(p.numel() for p in module.parameters())
    need = 3 * (3 * 4 * params) + (16 << 20)
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise LabError(f"only {free / 2**20:.0f} MiB free under {probe}, and this run's checkpoints need about "
                       f"{need / 2**20:.0f} MiB: free some space or choose another runs folder (--runs_dir)")
