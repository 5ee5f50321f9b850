"""Training: the one place that builds a Lightning Trainer.

    from lab.config import load_config
    from lab.train import fit
    run = fit(load_config("gpt-nano", {"trainer.max_steps": 200}))
    run.summary["best"]["val/loss"], run.path          # metrics and runs/gpt-nano/<run_id>

``fit`` reads as its phases: ``_checked`` (a validated copy of the config and every refusal
that needs no data: ``lab.preflight``), ``_prepare`` (data, model, the checkpoint to continue
from), ``_agree_on_run`` (the run folder), ``_open`` (the Trainer; summary.json says
``running``) and ``_train`` (train, test, close; ``lab.failures`` words what cannot go on).
Only then is the run folder created, so a refused config writes nothing.
It records the run's life in summary.json: ``running`` -> ``completed`` / ``failed`` /
``interrupted``. A read-only runs folder is refused before the run folder is made; a disk
that fills mid-run ends it ``failed`` with one ``StorageError`` line (the folder, the cause,
and ``--resume`` advice only when a checkpoint of the run loads).

Under several processes (``ddp``, torchrun, srun) every rank runs ``fit``; the ranks agree
on one run folder (see ``lab.strategies``), rank 0 alone prepares the data and writes the
folder, summary.json and the tokenizer, and a collective timeout turns a dead rank into a
``failed`` run with a non-zero exit instead of a hang.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lab import env, failures, hub, preflight, procs, runs, strategies
from lab.callbacks import (FiniteLossGuard, ResumeState, SaveOnInterrupt, StepCheckpoint, StopRequested, Throughput,
                           progress_bar)
from lab.checkpoints import AtomicCheckpointIO, load_checkpoint, newest_intact
from lab.config import Config, flatten, from_dict, validate
from lab.errors import LabError, RunInterrupted
from lab.fileio import quiet_tensorboard_writer_errors, storage_cause
from lab.families import build_datamodule, build_module, family_of
from lab.modules import LabModule

# Lightning output a lab user can do nothing about, silenced once, where the lab's Trainers are
# built (other info lines stay; notebooks hide all of them with workshop.quiet()):
# - torch 2.13 deprecates a pytree class that Lightning 2.6's own code still builds, at every
#   fit, test and lr_find: only that Lightning module's FutureWarnings are hidden;
# - "💡 Tip" lines advertising Lightning's cloud services (this lab runs offline), written
#   through the logger behind rank_zero_info.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not record.getMessage().startswith("💡 Tip"))
quiet_tensorboard_writer_errors()  # a full disk ends in one line, not the event writer's traceback too


def global_batch(cfg: Config, devices: int | None = None) -> dict[str, int]:
    """Global batch = micro-batch x devices x nodes x accumulation (the lr is not rescaled).

    ``devices``: processes per node as the Trainer resolved them (default: from the config).
    """
    t = cfg.trainer
    if devices is None:
        devices = t.devices if isinstance(t.devices, int) else max(1, torch.cuda.device_count())
    return {"micro_batch": cfg.data.batch_size, "devices": devices, "nodes": t.num_nodes,
            "accumulate": t.accumulate_grad_batches,
            "global": cfg.data.batch_size * devices * t.num_nodes * t.accumulate_grad_batches}


def build_trainer(cfg: Config, run: runs.Run, callbacks: Iterable[L.Callback] = (), progress: bool = True,
                  resume_step: int | None = None, stop: threading.Event | None = None) -> L.Trainer:
    """Lightning Trainer with the lab's logger, checkpoints and callbacks for ``run``.

    ``resume_step`` continues the run's TensorBoard curves: events at or after that step
    written by the killed process are purged, so no step appears twice. Setting ``stop``
    (from another thread) ends training like Ctrl-C: last.ckpt saved, run ``interrupted``.
    """
    t = cfg.trainer
    logger = TensorBoardLogger(save_dir=str(run.path), name="", version="", default_hp_metric=False,
                               **({"purge_step": resume_step} if resume_step is not None else {}))
    # best.ckpt by val/loss; last.ckpt every N steps, after each validation and at the end.
    best = ModelCheckpoint(dirpath=run.checkpoints_dir, filename="best", monitor="val/loss", mode="min",
                           save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
    cbs: list[L.Callback] = [best, LearningRateMonitor(logging_interval="step"), ResumeState(), FiniteLossGuard(),
                             SaveOnInterrupt(run.checkpoint("last"), stop), StepCheckpoint(run.checkpoints_dir,
                                                                                     t.checkpoint_every_n_steps or 0),
                             *callbacks]
    if progress and not any(isinstance(c, ProgressBar) for c in cbs):
        cbs.append(progress_bar())
    if t.early_stopping_patience:
        cbs.append(EarlyStopping(monitor="val/loss", mode="min", patience=t.early_stopping_patience))
    return L.Trainer(
        default_root_dir=run.path, logger=logger, callbacks=cbs, plugins=[AtomicCheckpointIO()],
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=strategies.build_strategy(cfg), precision=t.precision, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None, limit_val_batches=t.limit_val_batches, log_every_n_steps=t.log_every_n_steps,
        use_distributed_sampler=False,  # lab.strategies.shard_train_loader shards, keeping the lab's order
        deterministic=t.deterministic, enable_progress_bar=progress, enable_model_summary=False,
        num_sanity_val_steps=1 if resume_step is None else 0,
    )


def _metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def fit(config: Config | dict[str, Any] | None = None, runs_root: Any = None, callbacks: Iterable[L.Callback] = (),
        progress: bool = True, test: bool = True, resume: runs.Run | None = None,
        stop: threading.Event | None = None) -> runs.Run:
    """Train ``config`` into a new run folder (or continue ``resume``) and return the Run.

    Raises ``ConfigError``/``DataError`` before anything is written for a bad config;
    re-raises training errors after marking the run ``failed``, and interruptions
    (Ctrl-C, SIGTERM) as ``RunInterrupted`` after saving ``last.ckpt`` and marking it
    ``interrupted``. With ``resume``, the run's own config is used unless one is given,
    and training continues from its newest intact checkpoint into the same folder.
    ``stop``: an Event another thread sets to stop the run cleanly (a notebook's Stop button).
    The config given is never changed: fit works on a copy.

    The phases: refuse what cannot work, prepare data and model, open the run, train and close.
    """
    cfg = _checked(config, resume)  # nothing is written before this returns
    ctx, dm, module, start = _prepare(cfg, resume, runs_root)
    run = _agree_on_run(cfg, ctx, dm, module, runs_root, resume)
    session = _open(cfg, ctx, dm, module, run, start, [*callbacks], progress, stop)
    return _train(session, test)


@dataclass
class _Start:
    """Where training starts: a checkpoint to continue from (and what was skipped to find it), or nothing."""

    ckpt_path: Path | None = None
    step: int | None = None
    notes: list[str] = field(default_factory=list)
    lineage: dict[str, Any] | None = None
    """Where a fresh run's weights came from (``model.init_from``: ``lab.hub``); None = random init."""


@dataclass
class _Session:
    """One training session of a run: what ``fit``'s phases hand each other."""

    cfg: Config
    ctx: strategies.LaunchContext
    dm: L.LightningDataModule
    module: LabModule
    run: runs.Run
    start: _Start
    trainer: L.Trainer
    throughput: Throughput
    write: bool
    """Global rank 0 writes summary.json; the other ranks keep their view in memory."""
    began: float = field(default_factory=time.time)
    before: float = 0.0
    """Wall time of the run's earlier sessions (a resumed run adds to it)."""

    def ended(self, **fields: Any) -> dict[str, Any]:
        return _update(self.run, self.write, ended_at=runs.now_iso(), wall_time_s=self.before + time.time() - self.began,
                       step=_steps_done(self.trainer, self.run), throughput=self.throughput.summary(), **fields)


def _checked(config: Config | dict[str, Any] | None, resume: runs.Run | None) -> Config:
    """Phase 1: a validated copy of the config, and every refusal that needs no data."""
    if config is None and resume is None:
        raise LabError("fit needs a config or a run to resume")
    if resume is not None:
        preflight.refuse_resume(resume)
    # A copy: fit never changes the config it was given (a notebook reuses it for the next run).
    cfg = from_dict(config if config is not None else resume.config) if not isinstance(config, Config) \
        else copy.deepcopy(config)
    validate(cfg)
    cfg.trainer.strategy = strategies.notebook_switch(cfg.trainer.strategy)
    strategies.check_supported(cfg)  # FSDP/DeepSpeed on CPU: refused before any work
    preflight.check_memory(cfg)  # a model that cannot fit: refused before a byte of it is allocated
    return cfg


def _prepare(cfg: Config, resume: runs.Run | None, runs_root: Any = None) -> tuple[
        strategies.LaunchContext, L.LightningDataModule, LabModule, _Start]:
    """Phase 2: the data (rank 0 prepares it, the others wait), the model, and the checkpoint to continue from."""
    ctx = strategies.launch_context()
    if ctx.external:
        strategies.init_early(cfg)  # torchrun/srun: the group forms now, so rank 0 can share the folder
    init_from = getattr(cfg.model, "init_from", None) if resume is None else None  # a resume has its weights
    if init_from:  # a source that cannot start this model is refused before any data is read
        cfg.model = hub.resolve(cfg, runs_root)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    failure: Exception | None = None
    if ctx.is_zero:
        try:
            dm.prepare_data()  # once; the other ranks wait, then read what rank 0 wrote
        except Exception as e:
            failure = e
    if ctx.external:
        # Rank 0 tells the others whether the data is ready: a rank waiting at a barrier for a
        # rank 0 that already failed would only give up at the collective timeout.
        why, failed = strategies.broadcast_text(f"{type(failure).__name__}: {failure}" if failure else None,
                                               failed=failure is not None)
        if failed and failure is None:
            raise LabError(f"rank 0 could not prepare the data, so this rank stops too: {why}")
    if failure is not None:
        raise failure
    dm.setup("fit")  # data-dependent checks (block_size vs split sizes) happen here, before the run folder
    preflight.check_batch(cfg, dm)
    strategies.shard_train_loader(dm)
    fam = family_of(cfg)
    if fam.complete is not None:  # what the data decides (a vocabulary) goes into the run's resolved config
        cfg.model = fam.complete(cfg.model, dm)
    module = build_module(cfg, dm)
    lineage = hub.lineage(init_from, runs_root) if init_from else None  # build_module loaded the weights
    if cfg.trainer.activation_checkpointing and cfg.trainer.strategy != "fsdp":
        strategies.checkpoint_blocks(module.model, fam.blocks)  # FSDP does its own, per wrapped block
    if cfg.trainer.compile:
        # In place (nn.Module.compile): the model's state-dict keys stay the same, so checkpoints
        # load into an uncompiled model; compiling the whole LightningModule trips on self.log.
        module.model.compile()
    start = _Start(lineage=lineage)
    if resume is not None:
        start.ckpt_path, start.notes = newest_intact(resume.path)
        state = load_checkpoint(start.ckpt_path)
        start.step = int(state.get("global_step", 0))
        preflight.check_shapes(module, state, resume, start.ckpt_path)
        if start.notes and ctx.is_zero:  # summary.json records it too, but the person resuming should see it now
            print(f"note: {'; '.join(start.notes)}; resuming from {start.ckpt_path.name} (step {start.step})",
                  flush=True)
    return ctx, dm, module, start


def _open(cfg: Config, ctx: strategies.LaunchContext, dm: L.LightningDataModule, module: LabModule, run: runs.Run,
          start: _Start, callbacks: list[L.Callback], progress: bool, stop: threading.Event | None) -> _Session:
    """Phase 3: the Trainer for the run, and summary.json saying ``running`` and who is training."""
    throughput = Throughput(peak_flops=env.peak_flops(preflight.training_device(cfg)),
                            log_every=cfg.trainer.log_every_n_steps)
    trainer = build_trainer(cfg, run, [throughput, *callbacks], progress=progress, resume_step=start.step, stop=stop)
    s = _Session(cfg, ctx, dm, module, run, start, trainer, throughput, write=ctx.is_zero and trainer.is_global_zero,
                 before=float(run.summary.get("wall_time_s") or 0.0))
    gb = global_batch(cfg, devices=trainer.num_devices)
    if s.write and gb["global"] != gb["micro_batch"]:  # a plain one-device run has nothing to explain
        print(f"global batch {gb['global']} = micro-batch {gb['micro_batch']} x {gb['devices']} devices x "
              f"{gb['nodes']} nodes x {gb['accumulate']} accumulation (lr {cfg.optimizer.lr:g}, not rescaled)",
              flush=True)
    # process: who is training, so a run killed without a word reads "crashed", not "running".
    fields: dict[str, Any] = {"status": "running", "error": None, "process": procs.identity()}
    if start.ckpt_path is None:
        fields.update(
            experiment=run.experiment, run_id=run.run_id, started_at=runs.now_iso(),
            model={"name": cfg.model.name, "params": int(sum(p.numel() for p in module.model.parameters())),
                   "trainable": int(sum(p.numel() for p in module.model.parameters() if p.requires_grad))},
            global_batch=gb, strategy=cfg.trainer.strategy, baseline=_baseline(dm), env=env.fingerprint())
        if start.lineage is not None:
            fields["lineage"] = start.lineage
    else:
        fields["resumed"] = [*run.summary.get("resumed", []), {"at": runs.now_iso(), "from": start.ckpt_path.name,
                                                               "step": start.step, "skipped": start.notes}]
    _update(run, s.write, **fields)
    tokenizer = run.tokenizer_path.read_text(encoding="utf-8") if run.tokenizer_path.is_file() else None
    module.record = {"config": cfg.to_dict(), "tokenizer": tokenizer}  # saved in every checkpoint
    return s


def _train(s: _Session, test: bool) -> runs.Run:
    """Phase 4: train (then test the best checkpoint), and close the run as completed, interrupted or failed."""
    cfg, run, trainer, module = s.cfg, s.run, s.trainer, s.module
    if s.ctx.is_zero and not s.ctx.external:
        os.environ[strategies.RUN_DIR_ENV] = str(run.path)  # ranks Lightning's ddp launcher starts use this run
    try:
        with warnings.catch_warnings():
            if s.start.ckpt_path is not None:
                # False alarms on a resume: ResumeState puts back the sampler position and RNG
                # states (tests/test_train_resume.py: bitwise equal to an uninterrupted run), and
                # the checkpoints folder is meant to hold the interrupted run's files.
                warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before")
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            try:
                trainer.fit(module, datamodule=s.dm, ckpt_path=s.start.ckpt_path, weights_only=True)
            except Exception as e:  # ddp_notebook: the workers' clean stop arrives as their exception's text
                stopped = StopRequested.from_worker(e)
                if stopped is None:
                    raise
                raise stopped from None
        if trainer.interrupted:
            raise KeyboardInterrupt
        _recover_from_workers(trainer, run, s.throughput)
        final = _metrics(trainer)
        test_metrics: dict[str, float] = {}
        if test and _has_test_split(cfg):
            # The best checkpoint when validation has made one; else the weights as they are.
            best_path = trainer.checkpoint_callback.best_model_path or None
            trainer.test(module, datamodule=s.dm, ckpt_path=best_path, verbose=False, weights_only=True)
            test_metrics = {k: v for k, v in _metrics(trainer).items() if k.startswith("test/")}
    except (StopRequested, KeyboardInterrupt, SystemExit, SIGTERMException) as e:  # Lightning: Ctrl-C -> SystemExit(1)
        s.ended(status="interrupted")
        signum = e.signum if isinstance(e, StopRequested) else 15 if isinstance(e, SIGTERMException) else 2
        raise RunInterrupted(signum, run.path) from e
    except BaseException as e:
        _close_progress_bars(trainer)
        storage = storage_cause(e) if isinstance(e, Exception) else None
        if storage is not None:  # a full disk or read-only folder: one line, and advice that holds
            raise failures.storage_failure(storage, run, s.write, s.ended) from None
        s.ended(status="failed", error=f"{type(e).__name__}: {e}")
        if not s.write and (run.path / runs.SUMMARY).exists():
            # Rank 0 may be the one that died: a survivor that shares its folder (same node or
            # a shared file system) records the failure, so the run does not stay "running".
            runs.update_summary(runs.load_run(run.path), status="failed", ended_at=runs.now_iso(),
                                step=trainer.global_step, error=f"rank {trainer.global_rank}: {type(e).__name__}: {e}")
        if failures.is_out_of_memory(e):
            raise LabError(failures.oom_advice(cfg, run)) from e
        raise
    finally:
        if s.ctx.is_zero and not s.ctx.external:
            os.environ.pop(strategies.RUN_DIR_ENV, None)
    if (s.throughput.summary().get("mfu") or 0) > 1:
        # Faster than the cached peak, so that peak was probed while the machine was busy: probe
        # again now that training has stopped (the cache keeps the best probe).
        s.throughput.peak_flops = env.peak_flops(preflight.training_device(cfg), refresh=True)
    ckpt_cb = trainer.checkpoint_callback
    best = {"val/loss": float(ckpt_cb.best_model_score)} if ckpt_cb and ckpt_cb.best_model_score is not None else {}
    try:
        summary = s.ended(status="completed", best=best, final=final, test=test_metrics)
        hp_metrics = {f"hp/{k.replace('/', '_')}": v for k, v in {**best, **test_metrics}.items()}
        trainer.logger.log_hyperparams(_hparams(cfg), metrics=hp_metrics or {"hp/none": 0.0})
        trainer.logger.finalize("success")
    except Exception as e:
        storage = storage_cause(e)
        if storage is None:
            raise
        raise failures.storage_failure(storage, run, s.write, s.ended) from None
    run.summary = summary
    return run


def _agree_on_run(cfg: Config, ctx: strategies.LaunchContext, dm: L.LightningDataModule, module: LabModule,
                  runs_root: Any, resume: runs.Run | None) -> runs.Run:
    """The run folder every rank uses; only global rank 0 creates it and writes into it."""
    run: runs.Run | None = None
    failure: str | None = None
    if ctx.is_zero:
        try:
            preflight.check_disk(runs.runs_root(runs_root) if resume is None else resume.path, module,
                        resume=None if resume is None else resume.name)
            run = resume if resume is not None else runs.create_run(runs_root, cfg.experiment, cfg.to_dict())
            if hasattr(dm, "tokenizer") and not run.tokenizer_path.exists():
                dm.tokenizer.save(run.tokenizer_path)
        except LabError as e:
            failure = str(e)
            if not ctx.external:
                raise
    if ctx.external:
        # Rank 0 sends the folder, or why it has none: the others must not wait for a folder that never comes.
        mine = failure if failure is not None else (str(run.path) if run is not None else None)
        shared, failed = strategies.broadcast_text(mine, failed=failure is not None)
        if failed:
            raise LabError(failure if ctx.is_zero else f"rank 0 could not start the run: {shared}")
        path = Path(shared)
    elif ctx.inherited_run_dir is not None:
        path = ctx.inherited_run_dir
    else:
        assert run is not None
        return run
    return run if run is not None else runs.Run(path, config=cfg.to_dict(), summary=dict(resume.summary if resume else {}))


def _close_progress_bars(trainer: L.Trainer) -> None:
    """End Lightning's tqdm bars (an error leaves them open) so the error line starts a line of its own."""
    bar = trainer.progress_bar_callback
    for name in ("_train_progress_bar", "_val_progress_bar", "_test_progress_bar"):
        tqdm_bar = getattr(bar, name, None)
        if tqdm_bar is not None:
            try:
                tqdm_bar.close()
            except Exception:  # a bar that cannot close only costs a line break
                pass


def _update(run: runs.Run, write: bool, **fields: Any) -> dict[str, Any]:
    """summary.json is rank 0's: the other ranks keep their view in memory only."""
    if write:
        return runs.update_summary(run, **fields)
    run.summary = {**run.summary, **fields}
    return run.summary


def _recover_from_workers(trainer: L.Trainer, run: runs.Run, throughput: Throughput) -> None:
    """ddp_spawn/ddp_notebook train in worker processes whose callbacks this process never sees.

    Lightning sends back the best checkpoint's path and the last metrics, not the best score
    (a TODO in its launcher) nor callback state: read both from the workers' last.ckpt.
    """
    if trainer.global_step or not trainer.is_global_zero or not run.checkpoint("last").exists():
        return  # trained in this process: the callbacks are already up to date
    saved = load_checkpoint(run.checkpoint("last")).get("callbacks", {})
    if throughput.state_key in saved:
        throughput.load_state_dict(saved[throughput.state_key])
    best = trainer.checkpoint_callback
    if best is not None and best.best_model_score is None:
        score = saved.get(best.state_key, {}).get("best_model_score")
        if score is not None:
            best.best_model_score = torch.as_tensor(score)


def _steps_done(trainer: L.Trainer, run: runs.Run) -> int:
    """The optimizer steps taken; ddp_spawn/ddp_notebook train in worker processes, so ask their last.ckpt."""
    if trainer.global_step or not run.checkpoint("last").exists():
        return trainer.global_step
    return int(load_checkpoint(run.checkpoint("last")).get("global_step", 0))


def _has_test_split(cfg: Config) -> bool:
    return cfg.data.test_fraction > 0


def _baseline(dm: L.LightningDataModule) -> dict[str, float]:
    """What a model that ignores its input scores: the unigram loss for text (nats/token)."""
    fn = getattr(dm, "unigram_loss", None)
    return {"unigram_loss": float(fn())} if fn else {}


def _hparams(cfg: Config) -> dict[str, Any]:
    """Flat scalar hparams for TensorBoard's HParams tab (lists become strings)."""
    flat = flatten(cfg.to_dict())
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}


def train_module(module: L.LightningModule, dm: L.LightningDataModule, max_steps: int,
                 gradient_clip_val: float | None = 1.0, seed: int = 1337) -> L.LightningModule:
    """Train ``module`` for ``max_steps`` with no run folder, logger or checkpoints.

    For short fine-tunes inside other jobs (pruning, distillation); a full run uses ``fit``.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, gradient_clip_val=gradient_clip_val)
    with warnings.catch_warnings():  # no validation on purpose: the caller evaluates afterwards
        warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")
        trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return module.eval()


def lr_find(cfg: Config, num_steps: int = 200, min_lr: float = 1e-5, max_lr: float = 1.0) -> Any:
    """The learning-rate range test on ``cfg``'s model and data, with no run folder: ``lab.lr_finder.find_lr``.

    Returns an ``LRFinderResult``: ``.suggestion``, ``.rule`` (how it was picked) and ``.plot()``.
    Lightning's ``Tuner.lr_find`` is not used: its smoothing reads the first losses at half
    their value, and its steepest-slope pick lands on that artefact (see ``lab.lr_finder``).
    """
    from lab.lr_finder import find_lr

    return find_lr(cfg, num_steps=num_steps, min_lr=min_lr, max_lr=max_lr)
