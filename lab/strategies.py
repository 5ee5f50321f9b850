"""Distribution through Lightning: which strategy object a config gets, and how ranks agree.

    from lab.strategies import build_strategy, check_supported, notebook_switch
    cfg.trainer.strategy = notebook_switch(cfg.trainer.strategy)   # ddp -> ddp_notebook in Jupyter
    check_supported(cfg)              # FSDP/DeepSpeed on CPU, or with LoRA: LabError before any work
    strategy = build_strategy(cfg)    # "auto", DDPStrategy(timeout=...), FSDPStrategy(auto_wrap_policy={Block}, ...)

    ctx = launch_context()            # who am I (rank), and did a launcher (torchrun, srun) start us?
    ctx.is_zero                       # only global rank 0 writes the run folder, summary.json, tokenizer

Rules this module keeps, so ``lab.train`` stays a plain sequence:

- FSDP wraps each block the model's family names (``ModelFamily.blocks``: the GPT's and the
  ViT's transformer ``Block``), uses the run's
  precision for parameters, gradient reductions and buffers, writes full or sharded
  checkpoints and optionally offloads to CPU; activation checkpointing is FSDP's own for
  FSDP and torch's checkpoint wrapper otherwise.
- Every strategy gets the config's collective timeout, so a dead rank ends the job.
- Ranks agree on ONE run folder: a launcher that starts all processes at once (torchrun,
  srun) gets the process group early and rank 0 broadcasts the folder; Lightning's own
  ``ddp`` launcher re-runs the command for ranks 1.., which inherit it via ``RUN_DIR_ENV``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from lab.errors import LabError
from lab.families import family_of

SHARDED = ("fsdp", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload")
"""Strategies that need GPUs (Lightning refuses them on CPU, after much of the setup)."""
RUN_DIR_ENV = "LAB_DDP_RUN_DIR"
"""Set by rank 0 for the processes Lightning's ``ddp`` launcher starts, so they use its run folder."""
_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16,
           "16-true": torch.float16}


def in_notebook() -> bool:
    """Whether this process is a Jupyter (IPython) kernel, where Lightning cannot launch ``ddp``."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def notebook_switch(strategy: str, notebook: bool | None = None, say: Callable[[str], Any] = print) -> str:
    """``ddp`` inside Jupyter becomes ``ddp_notebook`` (forked workers), with a one-line notice."""
    notebook = in_notebook() if notebook is None else notebook
    if notebook and strategy == "ddp":
        say("note: strategy ddp cannot be launched from a notebook; using ddp_notebook (forked processes)")
        return "ddp_notebook"
    return strategy


def _uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_supported(cfg: Any) -> None:
    """Refuse what cannot run here before any data or run folder is touched."""
    t = cfg.trainer
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "torch sees no GPU on this machine"
        raise LabError(f"trainer.accelerator {t.accelerator}: {why}; use --trainer.accelerator cpu (or auto), "
                       "or run on a GPU machine")
    if t.accelerator in ("gpu", "cuda") and isinstance(t.devices, int) and t.devices > torch.cuda.device_count() \
            and not launch_context().external:
        raise LabError(f"trainer.devices {t.devices}: this machine has {torch.cuda.device_count()} GPU(s); "
                       "use that many or fewer (lab launch spreads more over several machines)")
    if t.accelerator == "mps" and not torch.backends.mps.is_available():
        raise LabError("trainer.accelerator mps: Apple's Metal (MPS) is not available here; "
                       "use --trainer.accelerator cpu (or auto)")
    if t.precision == "16-mixed" and not _uses_gpu(t.accelerator):
        # Lightning would quietly train in bf16-mixed instead: say so before any work.
        raise LabError("trainer.precision 16-mixed needs a GPU (fp16 autocast does not run on the CPU; Lightning would "
                       "silently switch to bf16-mixed): use --trainer.precision bf16-mixed on the CPU")
    if t.strategy in SHARDED and cfg.finetune.lora:
        # Not verified, and not needed: FSDP flattens each wrapped block's frozen weights and trainable
        # adapters into one tensor (its gradient then covers the frozen part too), and the states LoRA
        # trains are too small to be worth sharding.
        raise LabError(f"strategy {t.strategy} with finetune.method lora is not supported: use --trainer.strategy ddp "
                       "(only the adapters have gradients and optimizer states, so every device holding them "
                       "costs little), or --finetune.method full to shard a full fine-tune")
    if t.strategy in SHARDED and not _uses_gpu(t.accelerator):
        raise LabError(f"strategy {t.strategy} needs GPUs (it shards the model across them) and this run is on CPU: "
                       "use --trainer.strategy ddp to train on several CPU processes, or run on a GPU machine")
    if t.strategy.startswith("deepspeed"):
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise LabError(f"strategy {t.strategy} needs the deepspeed package: pip install deepspeed "
                           "(or use --trainer.strategy fsdp, which needs nothing extra)") from None
    if t.compile and sys.platform == "win32":
        raise LabError("trainer.compile needs torch.compile, which does not support Windows: set it to false")


def block_classes(cfg: Any) -> set[type[nn.Module]]:
    """The module classes FSDP wraps one by one and activation checkpointing recomputes: the family's ``blocks``."""
    return set(family_of(cfg).blocks)


def build_strategy(cfg: Any) -> Any:
    """The ``strategy=`` argument for Lightning's Trainer: a name, or a configured Strategy object."""
    t = cfg.trainer
    timeout = timedelta(seconds=t.collective_timeout_s)
    name = t.strategy
    if name in ("ddp", "ddp_spawn", "ddp_notebook"):
        from lightning.pytorch.strategies import DDPStrategy

        if name == "ddp_notebook":
            return _forked_ddp(timeout)
        start = {"ddp": "popen", "ddp_spawn": "spawn"}[name]
        return DDPStrategy(start_method=start, timeout=timeout)
    if name == "fsdp":
        return _fsdp(cfg, timeout)
    if name.startswith("deepspeed"):
        from lightning.pytorch.strategies import DeepSpeedStrategy

        offload = name.endswith("_offload")
        stage = 3 if "stage_3" in name else 2
        return DeepSpeedStrategy(stage=stage, offload_optimizer=offload, offload_parameters=offload and stage == 3,
                                 timeout=timeout)
    return name  # "auto": one device, nothing to tune


def _forked_ddp(timeout: timedelta) -> Any:
    """``ddp_notebook``: DDP in processes forked from this one, each with ONE intra-op thread.

    A forked child inherits the parent's OpenMP thread pool in a state it cannot use: once the
    parent has run a multi-threaded op (a notebook kernel always has), the child's first parallel
    op with more than one thread deadlocks. Lightning gives each worker ``cores // processes``
    threads, so one worker on a laptop got all the cores and hung at step 0 (or in the test after
    training). One thread per worker is the only safe count after a fork.
    """
    from lightning.pytorch.strategies import DDPStrategy

    class ForkedDDPStrategy(DDPStrategy):
        def setup_environment(self) -> None:
            torch.set_num_threads(1)  # runs in the worker, after Lightning's own thread setting
            super().setup_environment()

    return ForkedDDPStrategy(start_method="fork", timeout=timeout)


def _fsdp(cfg: Any, timeout: timedelta) -> Any:
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import CPUOffload, MixedPrecision

    t = cfg.trainer
    blocks = block_classes(cfg)
    dtype = _DTYPES.get(t.precision)
    # Parameters, gradient reductions and buffers all in the run's precision: reducing in
    # bf16 halves the traffic, and what Lightning picks by itself for these precisions.
    mixed = MixedPrecision(param_dtype=dtype, reduce_dtype=dtype, buffer_dtype=dtype) if dtype else None
    return FSDPStrategy(
        auto_wrap_policy=blocks, mixed_precision=mixed, state_dict_type=t.fsdp_state_dict,
        cpu_offload=CPUOffload(offload_params=True) if t.fsdp_cpu_offload else None,
        sharding_strategy=t.fsdp_sharding, timeout=timeout,
        activation_checkpointing_policy=blocks if t.activation_checkpointing else None)


def checkpoint_blocks(model: nn.Module, blocks: Iterable[type[nn.Module]]) -> int:
    """Wrap every ``blocks`` module of ``model`` so its activations are recomputed in backward; returns how many.

    Used outside FSDP (which does it itself). The wrapper's state-dict hooks strip its prefix,
    so checkpoints stay loadable by an unwrapped model.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    kinds = tuple(blocks)
    count = sum(isinstance(m, kinds) for m in model.modules())
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, kinds))
    return count


@dataclass
class LaunchContext:
    """Where this process sits in the job, read from the launcher's environment."""

    rank: int
    """Global rank (0 when not launched as one of several processes)."""
    world_size: int
    """Processes in the job as the launcher sees them (1 for a plain run)."""
    external: bool
    """True when a launcher (torchrun, srun) started every process: the group can form before fit."""
    inherited_run_dir: Path | None
    """The run folder rank 0 handed to a process Lightning's ``ddp`` launcher started."""

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


def _external_environment() -> Any:
    """Lightning's cluster environment when torchrun or SLURM started the processes, else None."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect() and not os.environ.get(RUN_DIR_ENV):
        return SLURMEnvironment()
    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    return None


def launch_context() -> LaunchContext:
    """Read rank and launcher from the environment (no process group is formed here)."""
    inherited = os.environ.get(RUN_DIR_ENV)
    local = os.environ.get("LOCAL_RANK")
    if inherited and local is not None and int(local) != 0:
        node = int(os.environ.get("NODE_RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return LaunchContext(rank=node * world + int(local), world_size=world, external=False,
                             inherited_run_dir=Path(inherited))
    env = _external_environment()
    if env is not None and env.world_size() > 1:
        return LaunchContext(rank=env.global_rank(), world_size=env.world_size(), external=True, inherited_run_dir=None)
    return LaunchContext(rank=0, world_size=1, external=False, inherited_run_dir=None)


def init_early(cfg: Any) -> None:
    """Form the process group before training, so ranks can agree on the run folder.

    Lightning's strategies see the group already exists and use it; the timeout is the
    config's, so a rank that dies makes the others fail instead of wait forever.
    """
    import torch.distributed as dist
    from lightning.fabric.utilities.distributed import _init_dist_connection

    if dist.is_initialized():
        return
    env = _external_environment()
    gpu = _uses_gpu(cfg.trainer.accelerator)
    if gpu:
        torch.cuda.set_device(env.local_rank())  # nccl's object collectives use the current device
    _init_dist_connection(env, "nccl" if gpu else "gloo", timeout=timedelta(seconds=cfg.trainer.collective_timeout_s))


def broadcast_text(text: str | None, failed: bool = False) -> tuple[str, bool]:
    """Rank 0's ``(text, failed)`` on every rank of the early group (a run folder, or why there is none)."""
    import torch.distributed as dist

    box = [(text, failed)]
    dist.broadcast_object_list(box, src=0)
    return str(box[0][0]), bool(box[0][1])


class RankShard(Sampler[int]):
    """Rank ``rank``'s share of ``inner``'s order: every ``world``-th index, starting at ``rank``.

    Lightning's own distributed sampler reshuffles the lab's order, so a 2-process run would
    see other samples than a 1-process run with the same global batch; interleaving keeps
    step n's global batch the same set of samples whatever the process count. Each rank
    gets the same number of indices (a remainder is dropped) so no rank waits on another.
    """

    def __init__(self, inner: Any, rank: int, world: int) -> None:
        self.inner, self.rank, self.world = inner, rank, world

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def skip(self, samples: int) -> None:
        """Resume: this rank consumed ``samples``; so did every other rank."""
        self.inner.skip(samples * self.world)

    def __iter__(self) -> Iterator[int]:
        order = list(self.inner)
        usable = len(order) - len(order) % self.world
        return iter(order[self.rank:usable:self.world])

    def __len__(self) -> int:
        return len(self.inner) // self.world


def shard_train_loader(dm: Any) -> None:
    """Make ``dm.train_dataloader()`` return this rank's RankShard of its loader under several processes.

    Used with ``Trainer(use_distributed_sampler=False)``; validation and test loaders stay
    whole on every rank (cheap here), so their metrics equal a 1-process run's.
    """
    original = dm.train_dataloader

    def train_dataloader() -> DataLoader:
        loader = original()
        trainer = getattr(dm, "trainer", None)
        if trainer is None or trainer.world_size == 1:
            return loader
        return DataLoader(loader.dataset, batch_size=loader.batch_size,
                          sampler=RankShard(loader.sampler, trainer.global_rank, trainer.world_size),
                          num_workers=loader.num_workers, persistent_workers=loader.persistent_workers,
                          generator=loader.generator, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                          drop_last=loader.drop_last, worker_init_fn=loader.worker_init_fn)

    dm.train_dataloader = train_dataloader
