"""Training: the one place that builds a Lightning Trainer.

    from lab.config import load_config
    from lab.train import fit
    run = fit(load_config("gpt-nano", {"trainer.max_steps": 200}))
    run.summary["best"]["val/loss"], run.path          # metrics and runs/gpt-nano/<run_id>

``fit`` validates the config, prepares the data (refusing e.g. a block_size larger than
the data) and only then creates the run folder, so a refused config writes nothing.
It records the run's life in summary.json: ``running`` -> ``completed`` / ``failed`` /
``interrupted``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lab import env, runs
from lab.callbacks import Throughput
from lab.config import Config, flatten, from_dict, validate
from lab.data import DATAMODULES
from lab.errors import LabError
from lab.models import build_model
from lab.modules import Classifier, LabModule, LanguageModel, Regressor


def build_datamodule(cfg: Config) -> L.LightningDataModule:
    """The DataModule for ``cfg.data`` (text needs the model's block size and a sample budget)."""
    cls = DATAMODULES[cfg.data.name][1]
    if cfg.data.name == "text":
        # One window per micro-batch sample of the whole run: the n-th batch is the same every run.
        samples = cfg.trainer.max_steps * cfg.trainer.accumulate_grad_batches * cfg.data.batch_size
        return cls(cfg.data, block_size=cfg.model.block_size, seed=cfg.seed, num_train_samples=samples)
    return cls(cfg.data, seed=cfg.seed)


def build_module(cfg: Config, dm: L.LightningDataModule | None = None) -> LabModule:
    """The model wrapped in its LightningModule; text models take vocab size and decoder from ``dm``."""
    model_cfg = cfg.model
    if model_cfg.name == "gpt":
        if model_cfg.vocab_size is None:
            if dm is None:
                raise LabError("model.vocab_size is null: give it, or build the module with its DataModule")
            model_cfg.vocab_size = dm.vocab_size
        elif dm is not None and model_cfg.vocab_size < dm.vocab_size:
            raise LabError(f"model.vocab_size = {model_cfg.vocab_size} is smaller than the tokenizer's "
                           f"{dm.vocab_size} tokens: raise it or leave it null")
        decode = dm.tokenizer.decode if dm is not None else None
        return LanguageModel(build_model(model_cfg), cfg.optimizer, cfg.trainer.max_steps, decode=decode)
    if model_cfg.name == "mlp":
        return Regressor(build_model(model_cfg), cfg.optimizer, cfg.trainer.max_steps)
    return Classifier(build_model(model_cfg), cfg.optimizer, cfg.trainer.max_steps, num_classes=model_cfg.num_classes)


def global_batch(cfg: Config) -> dict[str, int]:
    """Global batch = micro-batch x devices x nodes x accumulation (the lr is not rescaled)."""
    t = cfg.trainer
    devices = t.devices if isinstance(t.devices, int) else max(1, torch.cuda.device_count())
    return {"micro_batch": cfg.data.batch_size, "devices": devices, "nodes": t.num_nodes,
            "accumulate": t.accumulate_grad_batches,
            "global": cfg.data.batch_size * devices * t.num_nodes * t.accumulate_grad_batches}


def build_trainer(cfg: Config, run: runs.Run, callbacks: Iterable[L.Callback] = (), progress: bool = True) -> L.Trainer:
    """Lightning Trainer with the lab's logger, checkpoints and callbacks for ``run``."""
    t = cfg.trainer
    logger = TensorBoardLogger(save_dir=str(run.path), name="", version="", default_hp_metric=False)
    ckpt = ModelCheckpoint(dirpath=run.checkpoints_dir, filename="best", monitor="val/loss", mode="min",
                           save_top_k=1, save_last=True, auto_insert_metric_name=False, enable_version_counter=False)
    cbs: list[L.Callback] = [ckpt, LearningRateMonitor(logging_interval="step"), *callbacks]
    if t.early_stopping_patience:
        cbs.append(EarlyStopping(monitor="val/loss", mode="min", patience=t.early_stopping_patience))
    return L.Trainer(
        default_root_dir=run.path, logger=logger, callbacks=cbs,
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None, limit_val_batches=t.limit_val_batches, log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic, enable_progress_bar=progress, enable_model_summary=False,
        num_sanity_val_steps=1,
    )


def _metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def fit(config: Config | dict[str, Any], runs_root: Any = None, callbacks: Iterable[L.Callback] = (),
        progress: bool = True, test: bool = True) -> runs.Run:
    """Train ``config`` into a new run folder and return the Run (summary included).

    Raises ``ConfigError``/``DataError`` before anything is written for a bad config;
    re-raises training errors after marking the run ``failed`` (or ``interrupted``).
    """
    cfg = from_dict(config) if isinstance(config, dict) else config
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")  # data-dependent checks (block_size vs split sizes) happen here, before the run folder
    module = build_module(cfg, dm)
    run = runs.create_run(runs_root, cfg.experiment, cfg.to_dict())
    if hasattr(dm, "tokenizer"):
        dm.tokenizer.save(run.tokenizer_path)
    throughput = Throughput(peak_flops=env.peak_flops(_device(cfg)))
    trainer = build_trainer(cfg, run, [throughput, *callbacks], progress=progress)
    started = time.time()
    runs.update_summary(
        run, status="running", experiment=run.experiment, run_id=run.run_id, started_at=runs.now_iso(),
        model={"name": cfg.model.name, "params": int(sum(p.numel() for p in module.model.parameters()))},
        global_batch=global_batch(cfg), baseline=_baseline(dm), env=env.fingerprint(),
    )
    try:
        trainer.fit(module, datamodule=dm)
        if trainer.interrupted:
            raise KeyboardInterrupt
        final = _metrics(trainer)
        test_metrics: dict[str, float] = {}
        if test and _has_test_split(cfg):
            trainer.test(module, datamodule=dm, ckpt_path="best", verbose=False, weights_only=True)
            test_metrics = {k: v for k, v in _metrics(trainer).items() if k.startswith("test/")}
    except (KeyboardInterrupt, SystemExit) as e:  # Lightning turns Ctrl-C into SystemExit(1)
        runs.update_summary(run, status="interrupted", ended_at=runs.now_iso(), wall_time_s=time.time() - started,
                            step=trainer.global_step, throughput=throughput.summary())
        raise KeyboardInterrupt from e
    except BaseException as e:
        runs.update_summary(run, status="failed", error=f"{type(e).__name__}: {e}", ended_at=runs.now_iso(),
                            wall_time_s=time.time() - started, step=trainer.global_step)
        raise
    ckpt_cb = trainer.checkpoint_callback
    best = {"val/loss": float(ckpt_cb.best_model_score)} if ckpt_cb and ckpt_cb.best_model_score is not None else {}
    summary = runs.update_summary(
        run, status="completed", ended_at=runs.now_iso(), wall_time_s=time.time() - started,
        step=trainer.global_step, best=best, final=final, test=test_metrics, throughput=throughput.summary(),
    )
    hp_metrics = {f"hp/{k.replace('/', '_')}": v for k, v in {**best, **test_metrics}.items()}
    trainer.logger.log_hyperparams(_hparams(cfg), metrics=hp_metrics or {"hp/none": 0.0})
    trainer.logger.finalize("success")
    run.summary = summary
    return run


def _device(cfg: Config) -> torch.device:
    if cfg.trainer.accelerator in ("gpu", "cuda") or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


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


def load_module(run: runs.Run, which: str = "best") -> LabModule:
    """Rebuild a run's LightningModule from its config and load a checkpoint safely.

    ``which`` is ``best``, ``last`` or a path; loading uses ``torch.load(weights_only=True)``,
    so a checkpoint cannot execute code.
    """
    path = run.checkpoint(which) if which in ("best", "last") else Path(which)
    if not path.exists():
        raise LabError(f"no checkpoint {path}: the run has {sorted(p.name for p in run.checkpoints_dir.glob('*.ckpt'))}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as e:
        raise LabError(f"checkpoint {path} cannot be loaded safely ({type(e).__name__}: {str(e).splitlines()[0]})")
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


def train_module(module: L.LightningModule, dm: L.LightningDataModule, max_steps: int,
                 gradient_clip_val: float | None = 1.0, seed: int = 1337) -> L.LightningModule:
    """Train ``module`` for ``max_steps`` with no run folder, logger or checkpoints.

    For short fine-tunes inside other jobs (pruning, distillation); a full run uses ``fit``.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, gradient_clip_val=gradient_clip_val)
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return module.eval()
