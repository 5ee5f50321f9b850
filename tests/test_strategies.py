"""Strategy construction, the CPU refusal, the notebook switch and rank-sharded sampling (no processes started)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from lab import runs, strategies
from lab.config import load_config
from lab.data.splits import ResumableSampler
from lab.errors import ConfigError, LabError
from lab.models.gpt import Block
from lab.train import fit


@pytest.mark.parametrize("name", ["fsdp", "deepspeed_stage_2", "deepspeed_stage_3_offload"])
def test_sharded_strategies_refused_on_cpu_before_any_work(tmp_path: Path, name: str) -> None:
    cfg = load_config("seed-mlp", {"trainer.strategy": name, "trainer.accelerator": "cpu"})
    with pytest.raises(LabError, match=r"needs GPUs.*--trainer.strategy ddp"):
        fit(cfg, runs_root=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # no run folder, nothing written


def test_ddp_in_notebook_switches_with_one_line_notice() -> None:
    said: list[str] = []
    assert strategies.notebook_switch("ddp", notebook=True, say=said.append) == "ddp_notebook"
    assert len(said) == 1 and "ddp_notebook" in said[0] and "\n" not in said[0]
    assert strategies.notebook_switch("ddp", notebook=False, say=said.append) == "ddp"
    assert strategies.notebook_switch("fsdp", notebook=True, say=said.append) == "fsdp"
    assert len(said) == 1
    assert strategies.in_notebook() is False  # pytest is not a Jupyter kernel


def test_ddp_variants_get_their_start_method_and_the_timeout() -> None:
    for name, method in (("ddp", "popen"), ("ddp_spawn", "spawn"), ("ddp_notebook", "fork")):
        cfg = load_config("seed-mlp", {"trainer.strategy": name, "trainer.collective_timeout_s": 42})
        s = strategies.build_strategy(cfg)
        assert isinstance(s, DDPStrategy) and s._start_method == method
        assert s._timeout == timedelta(seconds=42)
    assert strategies.build_strategy(load_config("seed-mlp")) == "auto"


def test_fsdp_wraps_blocks_in_the_run_precision() -> None:
    cfg = load_config("gpt-nano", {"trainer.strategy": "fsdp", "trainer.precision": "bf16-mixed",
                                   "trainer.fsdp_state_dict": "sharded", "trainer.fsdp_cpu_offload": True,
                                   "trainer.activation_checkpointing": True, "trainer.fsdp_sharding": "SHARD_GRAD_OP"})
    s = strategies.build_strategy(cfg)
    assert isinstance(s, FSDPStrategy)
    mp = s.mixed_precision
    assert (mp.param_dtype, mp.reduce_dtype, mp.buffer_dtype) == (torch.bfloat16,) * 3
    assert s._state_dict_type == "sharded" and s.cpu_offload.offload_params is True
    kw = s.kwargs
    assert kw["auto_wrap_policy"]._module_classes == {Block}
    assert s._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert s.sharding_strategy.name == "SHARD_GRAD_OP"
    plain = strategies.build_strategy(load_config("gpt-nano", {"trainer.strategy": "fsdp"}))
    assert plain.mixed_precision is None and not plain.cpu_offload.offload_params
    assert plain.sharding_strategy.name == "FULL_SHARD"


def test_new_trainer_fields_are_validated() -> None:
    for key, bad in (("trainer.fsdp_state_dict", "half"), ("trainer.fsdp_sharding", "ZERO9"),
                     ("trainer.collective_timeout_s", 0)):
        with pytest.raises(ConfigError, match=key):
            load_config("gpt-nano", {key: bad})
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        load_config("seed-mlp", {"trainer.activation_checkpointing": True})


def test_checkpoint_blocks_keeps_outputs_gradients_and_state_dict_keys() -> None:
    from lab.families import build_model

    cfg = load_config("gpt-nano", {"model.n_layer": 2, "model.n_embd": 32, "model.vocab_size": 50})
    torch.manual_seed(0)
    plain = build_model(cfg.model)
    wrapped = build_model(cfg.model)
    wrapped.load_state_dict(plain.state_dict())
    assert strategies.checkpoint_blocks(wrapped, strategies.block_classes(cfg)) == 2
    assert list(wrapped.state_dict()) == list(plain.state_dict())  # checkpoints stay loadable
    idx = torch.randint(0, 50, (2, 16))
    for m in (plain, wrapped):
        m(idx).float().pow(2).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_rank_shards_interleave_to_the_single_process_order_and_resume() -> None:
    inner = ResumableSampler(10, shuffle=True, seed=3)
    order = list(inner)
    shards = [list(strategies.RankShard(ResumableSampler(10, shuffle=True, seed=3), r, 2)) for r in range(2)]
    assert shards[0] == order[0::2] and shards[1] == order[1::2]
    # Batch k of 2 per rank on 2 ranks holds the samples of batch k of 4 on one rank.
    assert sorted(shards[0][:2] + shards[1][:2]) == sorted(order[:4])
    three = [list(strategies.RankShard(ResumableSampler(10, shuffle=True, seed=3), r, 3)) for r in range(3)]
    assert [len(s) for s in three] == [3, 3, 3]  # equal lengths: no rank waits in a collective
    resumed = strategies.RankShard(ResumableSampler(10, shuffle=True, seed=3), 1, 2)
    resumed.skip(2)  # this rank had used 2 samples, so had rank 0: 4 in all
    assert list(resumed) == order[4:][1::2]


def test_launch_context_reads_the_launchers_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
                "SLURM_NTASKS", "SLURM_JOB_NAME", strategies.RUN_DIR_ENV):
        monkeypatch.delenv(var, raising=False)
    plain = strategies.launch_context()
    assert plain.is_zero and not plain.external and plain.inherited_run_dir is None
    # A rank Lightning's ddp launcher started: it takes rank 0's folder.
    monkeypatch.setenv(strategies.RUN_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    child = strategies.launch_context()
    assert child.rank == 1 and not child.is_zero and child.inherited_run_dir == tmp_path
    # torchrun: every process started at once; the group forms early.
    monkeypatch.delenv(strategies.RUN_DIR_ENV)
    for k, v in {"RANK": "1", "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    elastic = strategies.launch_context()
    assert elastic.external and elastic.rank == 1 and elastic.world_size == 2


def test_single_process_run_records_strategy_and_leaves_no_env(tmp_path: Path) -> None:
    run = fit(load_config("seed-mlp", {"trainer.max_steps": 3, "trainer.accelerator": "cpu",
                                       "trainer.accumulate_grad_batches": 2}),
              runs_root=tmp_path, progress=False, test=False)
    assert run.summary["global_batch"]["global"] == 64 and run.summary["strategy"]
    assert strategies.RUN_DIR_ENV not in __import__("os").environ
    assert [r.path for r in runs.list_runs(tmp_path)] == [run.path]


@pytest.mark.slow
def test_compile_and_activation_checkpointing_train_and_reload(tmp_path: Path) -> None:
    from lab.checkpoints import load_module

    small = {"trainer.max_steps": 3, "trainer.accelerator": "cpu", "model.n_layer": 1, "model.n_embd": 32,
             "trainer.val_check_interval": 3, "trainer.limit_val_batches": 1}
    for extra in ({"trainer.compile": True}, {"trainer.activation_checkpointing": True}):
        run = fit(load_config("gpt-nano", {**small, **extra}), runs_root=tmp_path, progress=False, test=False)
        assert run.status == "completed" and run.summary["step"] == 3, extra
        module = load_module(run, "best")  # state-dict keys unchanged by compile / the checkpoint wrapper
        assert sum(p.numel() for p in module.parameters()) == run.summary["model"]["params"]
