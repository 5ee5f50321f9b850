"""lab plan: published anchors, the formulas against measured bytes, recommendations, refusals, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.models.gpt import GPT, GPTConfig
from lab.plan import KNOWN_ACCELERATORS, Accelerator, parse_count, plan, recommend
from lab.plan.formulas import (
    PRECISIONS,
    deepspeed_zero2_estimate,
    deepspeed_zero3_estimate,
    gpt_layer_activation_bytes,
    gpt_output_activation_bytes,
    zero_model_states,
)
from lab.plan.measure import measure
from lab.plan.memory import estimate_memory
from lab.plan.model import ModelFacts, trace_training_step

H100 = KNOWN_ACCELERATORS["H100"]
# A small GPT that trains a few steps in about a second on 2 CPU cores.
TINY_GPT = {"model.vocab_size": 512, "model.n_layer": 2, "model.n_embd": 64, "model.n_head": 4,
            "model.block_size": 32, "data.batch_size": 4}


def facts(params: int, largest: int = 0) -> ModelFacts:
    """A made-up model with no activations: isolates the model-state formulas."""
    return ModelFacts("mlp", params, params, largest, "samples", 1, 6.0 * params)


# --- anchors -------------------------------------------------------------------------------------

def test_gpt2_124m_has_exactly_124439808_parameters() -> None:
    p = plan("gpt2-124m", device="H100", with_recommendation=False)
    assert p.model.params == 124_439_808
    # FLOPs per token: the same formula GPT.flops_per_token uses at full context.
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=True))
    assert p.flops_per_unit == model.flops_per_token()


def test_zero_paper_7_5b_anchors() -> None:
    """ZeRO paper, figure 1: 7.5B parameters, 64 GPUs: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB."""
    psi = 7.5e9
    assert zero_model_states(psi, 0, 64) == 120e9
    assert [round(zero_model_states(psi, s, 64) / 1e9, 1) for s in (1, 2, 3)] == [31.4, 16.6, 1.9]
    # The planner's own layout for mixed-precision AdamW on one device: 4 + 4 + 8 = 16 bytes/param.
    mem = estimate_memory(facts(int(psi)), PRECISIONS["bf16-mixed"], "adamw", 0.9, "single", 1, 1, 1)
    assert mem.model_states == 120e9
    assert (mem.weights, mem.gradients, mem.optimizer) == (4 * psi, 4 * psi, 8 * psi)


@pytest.mark.parametrize("strategy,offload", [("deepspeed_stage_2", False), ("deepspeed_stage_2_offload", True)])
def test_zero2_matches_deepspeeds_estimator(strategy: str, offload: bool) -> None:
    psi = 1_000_000_000
    mem = estimate_memory(facts(psi), PRECISIONS["bf16-mixed"], "adamw", 0.9, strategy, 8, 2, 1)
    cpu, gpu = deepspeed_zero2_estimate(psi, gpus_per_node=8, nodes=2, cpu_offload=offload)
    assert mem.model_states == pytest.approx(gpu, abs=8)
    assert gpu == (2 * psi if offload else 4 * psi + 16 * psi // 16)
    if offload:
        assert mem.host == cpu == int(psi * 64 * 1.5)


@pytest.mark.parametrize("strategy,offload", [("deepspeed_stage_3", False), ("deepspeed_stage_3_offload", True)])
def test_zero3_matches_deepspeeds_estimator(strategy: str, offload: bool) -> None:
    psi, largest = 1_000_000_000, 50_000_000
    mem = estimate_memory(facts(psi, largest), PRECISIONS["bf16-mixed"], "adamw", 0.9, strategy, 8, 1, 1)
    cpu, gpu = deepspeed_zero3_estimate(psi, largest, gpus_per_node=8, nodes=1, cpu_offload=offload,
                                        cpu_offload_params=offload)
    assert mem.model_states == pytest.approx(gpu, abs=8)
    assert gpu == (4 * largest if offload else 4 * largest + 18 * psi // 8)
    if offload:
        assert mem.host == cpu


def test_ddp_adds_gradient_buckets_and_fsdp_shards_optimizer_states() -> None:
    f, prec = facts(1_000_000), PRECISIONS["32-true"]
    single = estimate_memory(f, prec, "adamw", 0.9, "single", 1, 1, 1)
    ddp = estimate_memory(f, prec, "adamw", 0.9, "ddp", 4, 1, 1)
    fsdp = estimate_memory(f, prec, "adamw", 0.9, "fsdp", 4, 1, 1)
    assert ddp.other - single.other == 4 * 1_000_000
    assert fsdp.optimizer == single.optimizer // 4
    sgd = estimate_memory(f, prec, "sgd", 0.0, "single", 1, 1, 1)
    assert sgd.optimizer == 0


# --- formulas against what torch really does -----------------------------------------------------

class _Autocast(torch.nn.Module):
    """Runs the wrapped model under CPU bf16 autocast, as Lightning's bf16-mixed does."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            return self.model(x)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gpt_activation_formula_matches_saved_tensors(precision: str) -> None:
    """Korthikanti et al. adapted to the lab's GPT vs the bytes autograd really saves, within 3%."""
    cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=64)
    model, b = GPT(cfg), 4
    x, y = torch.randint(0, 256, (b, 64)), torch.randint(0, 256, (b, 64))
    autocast = precision == "bf16-mixed"

    def loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Lightning computes the loss inside its autocast context too (so cross-entropy runs in fp32).
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return F.cross_entropy(out.flatten(0, 1), t.flatten())

    saved, flops = trace_training_step(_Autocast(model) if autocast else model, x, y, loss)
    prec = PRECISIONS[precision]
    estimate = 2 * gpt_layer_activation_bytes(b, 64, 64, 4, prec) + gpt_output_activation_bytes(b, 64, 64, 256, prec)
    # Autocast's bf16 weight copies are saved too: every matrix but the position table (an embedding lookup).
    estimate += prec.cast * (sum(p.numel() for p in model.parameters() if p.dim() == 2) - 64 * 64)
    assert estimate == pytest.approx(saved, rel=0.03)
    assert flops > 0


@pytest.mark.parametrize("preset,overrides,precision,optimizer", [
    ("gpt-nano", TINY_GPT, "32-true", "adamw"),
    ("digits-cnn", {"data.batch_size": 16}, "bf16-true", "sgd"),
    ("gpt-nano", {**TINY_GPT, "finetune.method": "lora"}, "32-true", "adamw"),  # states for the adapters only
])
def test_model_state_estimate_matches_allocated_tensors(preset: str, overrides: dict, precision: str,
                                                        optimizer: str) -> None:
    """Two small models train 3 steps on the CPU; parameter + gradient + optimizer storage within 5%."""
    cfg = load_config(preset, {**overrides, "optimizer.name": optimizer})
    measured = measure(cfg, precision, steps=3, peak=False)
    estimated = plan(cfg, precision=precision, device="cpu", with_recommendation=False).memory
    assert measured.optimizer > 0 and measured.gradients > 0
    assert estimated.model_states == pytest.approx(measured.model_states, rel=0.05)
    assert estimated.weights == pytest.approx(measured.weights, rel=0.05)


def test_total_estimate_is_near_the_measured_cpu_peak() -> None:
    cfg = load_config("gpt-nano", TINY_GPT)
    measured = measure(cfg, "32-true", steps=2)
    estimated = plan(cfg, precision="32-true", device="cpu", with_recommendation=False).memory.total
    assert measured.peak and "profiler" in measured.method
    assert 0.85 <= estimated / measured.peak <= 1.15


@pytest.mark.parametrize("targets", ["attention", "mlp", "both"])
def test_total_estimate_of_a_lora_run_is_near_the_measured_cpu_peak(targets: str) -> None:
    cfg = load_config("gpt-nano", {**TINY_GPT, "finetune.method": "lora", "finetune.targets": targets})
    measured = measure(cfg, "32-true", steps=2)
    p = plan(cfg, precision="32-true", device="cpu", with_recommendation=False)
    full = plan(load_config("gpt-nano", TINY_GPT), precision="32-true", device="cpu", with_recommendation=False)
    assert p.model.trainable == measured.gradients // 4 < p.model.params  # fp32: 4 bytes per trainable parameter
    assert p.memory.optimizer == 2 * p.memory.gradients  # AdamW's two moments
    assert measured.optimizer == pytest.approx(p.memory.optimizer, rel=0.01)  # (+ a step counter per tensor)
    assert p.memory.activations < full.memory.activations and p.memory.total < full.memory.total
    assert 0.85 <= p.memory.total / measured.peak <= 1.15


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("targets", ["attention", "mlp", "both"])
def test_lora_activation_change_matches_saved_tensors(precision: str, targets: str) -> None:
    """LoRA on the lab's GPT: the formula (full training's, changed by LoRA) vs what autograd saves, within 3%."""
    from lab.families import family
    from lab.finetune import FinetuneConfig, apply
    from lab.plan.formulas import gpt_lora_activation_change

    cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=3, n_head=4, n_embd=64)
    model, b = apply(GPT(cfg), FinetuneConfig(method="lora", targets=targets), family("gpt")), 4
    x, y = torch.randint(0, 256, (b, 64)), torch.randint(0, 256, (b, 64))
    autocast = precision == "bf16-mixed"

    def loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return F.cross_entropy(out.flatten(0, 1), t.flatten())

    saved, _ = trace_training_step(_Autocast(model) if autocast else model, x, y, loss)
    prec = PRECISIONS[precision]
    per_block, once = gpt_lora_activation_change(b, 64, 64, 4, prec, targets, rank=8)
    estimate = 3 * (gpt_layer_activation_bytes(b, 64, 64, 4, prec) + per_block) + once
    estimate += gpt_output_activation_bytes(b, 64, 64, 256, prec)
    estimate += prec.cast * (sum(p.numel() for p in model.parameters() if p.dim() == 2) - 64 * 64)
    assert estimate == pytest.approx(saved, rel=0.03)


def test_lora_is_planned_with_the_strategies_fit_trains_it_with() -> None:
    lora = {"finetune.method": "lora"}
    with pytest.raises(ConfigError, match=r"^strategy = 'fsdp'.*single or ddp with finetune.method lora"):
        plan("gpt2-124m", lora, strategy="fsdp", devices=8, device="H100")
    # The recommendation never shards what lab fit refuses to shard (it shrinks the micro-batch instead).
    rec = recommend("gpt2-124m", overrides=lora, precision="bf16-mixed", micro_batch=64, device="L4")
    assert rec.strategy in ("single", "ddp") and "--finetune.method lora" in rec.command
    p = plan("gpt2-124m", lora, precision="bf16-mixed", device="H100", with_recommendation=False)
    full = plan("gpt2-124m", precision="bf16-mixed", device="H100", with_recommendation=False)
    assert p.memory.gradients == 4 * p.model.trainable and p.memory.optimizer == 8 * p.model.trainable
    assert p.memory.weights == 4 * p.model.params > full.memory.weights  # the adapters add a little
    assert "442,368 train: LoRA rank 8 on attention" in p.to_text()


# --- plan, recommend ----------------------------------------------------------------------------

def test_plan_time_arithmetic_and_budget() -> None:
    p = plan("gpt2-124m", precision="bf16-mixed", strategy="ddp", devices=8, device="H100", tokens="1B",
             with_recommendation=False)
    assert p.units_per_step == 16 * 1024 * 8 * 4
    assert p.step_time_s == pytest.approx(p.flops_per_step / (8 * H100.bf16_flops * 0.4))
    assert p.steps == -(-1_000_000_000 // p.units_per_step)
    assert p.time_to_budget_s == pytest.approx(p.steps * p.step_time_s)
    assert p.fits and p.headroom == H100.memory - p.memory.total
    text = p.to_text()
    assert "124,439,808" in text and "fits" in text and "to 1e+09 tokens" in text


def test_models_other_than_gpt_are_traced() -> None:
    p = plan("digits-cnn", device="cpu", with_recommendation=False)
    assert p.model.unit == "samples" and p.memory.activations > 0 and p.flops_per_unit > 0


def test_recommendation_is_the_smallest_setup_that_fits() -> None:
    small = recommend("gpt2-124m", precision="bf16-mixed", device="H100")
    assert small.fits and (small.strategy, small.devices, small.nodes) == ("single", 1, 1)
    assert small.command.startswith("lab fit --config gpt2-124m")
    big = {"model.n_layer": 48, "model.n_embd": 2048, "model.n_head": 16}   # about 2.5B parameters
    rec = recommend("gpt2-124m", overrides=big, precision="bf16-mixed", device="L4", micro_batch=1, host_memory=1)
    assert rec.fits and rec.devices * rec.nodes > 1 and "offload" not in rec.strategy
    assert f"--trainer.strategy {rec.strategy}" in rec.command and "--model.n_layer 48" in rec.command
    huge = {"model.n_layer": 96, "model.n_embd": 12288, "model.n_head": 96}  # GPT-3 175B
    rec = recommend("gpt2-124m", overrides=huge, precision="bf16-mixed", device="H100", micro_batch=1,
                    host_memory=1, gpus_per_node=8, max_nodes=4)
    assert not rec.fits and "nothing searched fits" in rec.reason
    assert rec.command.startswith("lab launch --nodes 4 --gpus-per-node 8 -- lab fit")


def test_recommendation_carries_its_time_beside_the_planned_setups() -> None:
    from lab.plan.report import human_time

    p = plan("gpt2-124m", precision="bf16-mixed", devices=8, device="H100", tokens="10B")
    r = p.recommendation
    assert (r.strategy, r.devices, r.nodes) == ("single", 1, 1)
    alone = plan("gpt2-124m", precision="bf16-mixed", strategy="single", devices=1, micro_batch=p.micro_batch,
                 accumulate=r.accumulate, device="H100", tokens="10B", with_recommendation=False)
    assert r.step_time_s == pytest.approx(alone.step_time_s) and r.time_to_budget_s == pytest.approx(alone.time_to_budget_s)
    assert r.time_to_budget_s > p.time_to_budget_s  # the fewest devices are not the fastest
    line = next(ln for ln in p.to_text().splitlines() if ln.startswith("recommendation"))
    assert f"in {human_time(r.time_to_budget_s)}" in line and human_time(p.time_to_budget_s) in line
    no_budget = plan("gpt2-124m", precision="bf16-mixed", device="H100").to_text()
    assert "step time" in next(ln for ln in no_budget.splitlines() if ln.startswith("recommendation"))


def test_plan_includes_the_recommendation_and_a_named_device_table() -> None:
    p = plan("gpt2-124m", device="a100")  # case does not matter
    assert p.device.name == "A100" and p.recommendation is not None and p.recommendation.fits
    roomy = plan("gpt-nano", device=Accelerator("x", 2**34, 1e12, 1e11), with_recommendation=False)
    tight = plan("gpt-nano", device=Accelerator("x", roomy.memory.total, 1e12, 1e11), with_recommendation=False)
    # Fits means the estimate leaves FIT_MARGIN of the device free: exactly the need does not.
    assert roomy.fits is True and tight.fits is False and roomy.memory.total == tight.memory.total


@pytest.mark.parametrize("kwargs,field", [
    ({"devices": 0}, "devices"), ({"nodes": -1}, "nodes"), ({"micro_batch": 0}, "micro_batch"),
    ({"seq_len": -5}, "seq_len"), ({"device": "Z80"}, "device"), ({"precision": "fp8"}, "precision"),
    ({"strategy": "zero9"}, "strategy"), ({"optimizer": "lion"}, "optimizer"), ({"tokens": "lots"}, "tokens"),
    ({"mfu": 1.5}, "mfu"), ({"strategy": "single", "devices": 2}, "strategy"),
])
def test_bad_input_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        plan("gpt-nano", with_recommendation=False, **{"device": "H100", **kwargs})
    assert e.value.field == field


def test_bad_config_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="preset"):
        plan("no-such-preset")
    with pytest.raises(ConfigError, match="seq_len"):
        plan("digits-cnn", seq_len=64, device="H100")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(LabError, match="not valid YAML"):
        plan(bad)


def test_precision_names_are_the_configs() -> None:
    """The planner plans every precision a config accepts, and refuses what `lab fit` would refuse."""
    from lab import config

    assert list(PRECISIONS) == list(config.PRECISIONS)
    plans = {name: plan("gpt-nano", precision=name, device="H100", with_recommendation=False) for name in config.PRECISIONS}
    assert plans["32"].memory == plans["32-true"].memory and plans["32"].step_time_s == plans["32-true"].step_time_s
    assert plans["bf16-mixed"].step_time_s < plans["32-true"].step_time_s  # 16-bit matmuls: the bf16 peak
    assert plans["bf16-true"].memory.weights * 2 == plans["32-true"].memory.weights
    with pytest.raises(ConfigError, match="32-true"):
        plan("gpt-nano", precision="bf16", device="H100", with_recommendation=False)  # Lightning's alias; configs refuse it
    v100 = {name: plan("gpt-nano", precision=name, device="V100", with_recommendation=False).notes
            for name in ("bf16-mixed", "16-mixed")}
    assert any("V100 has no bf16" in n for n in v100["bf16-mixed"]) and not any("bf16" in n for n in v100["16-mixed"])


def test_parse_count() -> None:
    assert parse_count("10B") == 10**10 and parse_count("300M") == 3 * 10**8 and parse_count("2.5e9") == 2_500_000_000
    assert parse_count(1_000) == 1000


# --- the command --------------------------------------------------------------------------------

def test_cli_plan_prints_the_plan_and_exits_0(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "--config", "gpt2-124m", "--precision", "bf16-mixed", "--devices", "8", "--device", "H100"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out and "ddp on 8" in out and "lab fit --config gpt2-124m" in out
    assert main(["plan", "--config", "gpt-nano", "--device", "H100", "--json", "--model.n_layer", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"]["shape"]["n_layer"] == 2 and doc["memory"]["total"] > 0 and "recommendation" in doc


@pytest.mark.parametrize("argv,needle", [
    (["--config", "nope"], "config"), (["--devices", "0"], "devices"), (["--micro_batch", "-1"], "micro_batch"),
    (["--seq_len", "0"], "seq_len"), (["--device", "Z80"], "device"), (["--nodes", "0"], "nodes"),
])
def test_cli_plan_bad_input_exits_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


def test_cli_plan_unparsable_file_and_non_integer_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {max_steps: [\n")
    assert main(["plan", "--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["plan", "--devices", "eight"])
    assert e.value.code == 2


def test_fsdp_plans_the_units_the_lab_wraps_not_the_whole_model() -> None:
    from lab.config import load_config
    from lab.models import GPT

    cfg = load_config("gpt2-124m")
    facts = plan(cfg, precision="bf16-mixed", devices=8, strategy="fsdp", device="A100",
                 with_recommendation=False).model
    model = GPT(cfg.model)
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    outside = facts.params - cfg.model.n_layer * block
    assert facts.fsdp_unit_params == outside + 2 * block  # root unit + the running and the prefetched block
    full, grad_op = (plan(cfg, precision="bf16-mixed", devices=8, strategy=s, device="A100",
                          with_recommendation=False).memory for s in ("fsdp", "fsdp_grad_op"))
    # SHARD_GRAD_OP keeps every unit gathered: 2 + 2 bytes more per parameter outside the units.
    assert grad_op.weights - full.weights == 2 * (facts.params - facts.fsdp_unit_params)
