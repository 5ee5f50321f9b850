"""Fine-tuning: the lab's LoRA layer against peft's, freezing, adapter-only checkpoints, resume, export, refusals."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

from lab import runs
from lab.checkpoints import load_checkpoint, load_module
from lab.config import from_dict, load_config
from lab.errors import ConfigError, LabError, RunInterrupted
from lab.export import export, load_safetensors
from lab.families import build_module, family
from lab.finetune import FinetuneConfig, LoRALinear, apply, is_adapted, merge, trainable_summary
from lab.models.gpt import GPT, GPTConfig
from lab.plan.model import model_facts
from lab.strategies import check_supported
from lab.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")

# The shape of conftest's tiny_gpt_run, which the fine-tunes here start from.
TINY_SHAPE = {"model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2, "model.block_size": 32}
SHORT = {"trainer.val_check_interval": 3, "trainer.limit_val_batches": 2, "trainer.log_every_n_steps": 1,
         "trainer.checkpoint_every_n_steps": 2, "optimizer.warmup_steps": 2, "optimizer.lr": 1e-2}


def lora_config(base: runs.Run, steps: int, **extra: object) -> object:
    return load_config("gpt-nano", {**TINY_SHAPE, **SHORT, "trainer.max_steps": steps, "experiment": "lora",
                                    "model.init_from": str(base.path), "finetune.method": "lora",
                                    "finetune.targets": "both", "finetune.rank": 4, **extra})


# --- the layer: what peft computes ---------------------------------------------------------------

class _Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 24, bias=True)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.proj(x)))


def test_lora_layer_computes_and_merges_like_peft() -> None:
    import peft  # a test-only reference (the dev extra): the lab runs its own layer
    torch.manual_seed(0)
    ours, plain = _Two(), _Two()
    plain.load_state_dict(ours.state_dict())
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=12, target_modules=["proj"]), plain)
    apply(ours, FinetuneConfig(method="lora", rank=4, alpha=12), SimpleNamespace(name="two",
                                                                                  lora_targets={"attention": ("proj",)}))
    # Same A and B in both (B non-zero, as after training), then the same input.
    a, b = torch.randn(4, 16), torch.randn(24, 4)
    with torch.no_grad():
        ours.proj.lora_A.copy_(a)
        ours.proj.lora_B.copy_(b)
        theirs.proj.lora_A["default"].weight.copy_(a)
        theirs.proj.lora_B["default"].weight.copy_(b)
    assert theirs.proj.scaling["default"] == ours.proj.scaling == 3.0
    x = torch.randn(7, 16)
    out_ours, out_theirs = ours(x), theirs(x)
    assert torch.allclose(out_ours, out_theirs, atol=1e-6)
    # The same gradients reach A and B, and the same parameters train (peft freezes the rest too).
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    assert torch.allclose(ours.proj.lora_A.grad, theirs.proj.lora_A["default"].weight.grad, atol=1e-5)
    assert torch.allclose(ours.proj.lora_B.grad, theirs.proj.lora_B["default"].weight.grad, atol=1e-5)
    assert trainable_summary(ours)[0] == sum(p.numel() for p in theirs.parameters() if p.requires_grad) == 4 * (16 + 24)
    # Merging gives peft's merged weight, and a plain Linear.
    theirs.proj.merge()
    merge(ours)
    assert type(ours.proj) is nn.Linear
    assert torch.allclose(ours.proj.weight, theirs.proj.base_layer.weight, atol=1e-6)
    assert torch.equal(ours.proj.bias, theirs.proj.base_layer.bias)
    assert torch.allclose(ours(x), out_theirs, atol=1e-5)


def test_a_new_adapter_starts_as_its_base_layer() -> None:
    torch.manual_seed(0)
    base = nn.Linear(64, 32)
    x = torch.randn(3, 64)
    expected = base(x)
    layer = LoRALinear(base, rank=8, alpha=16)
    assert layer.weight is base.weight and layer.bias is base.bias  # the same tensors, under the same names
    assert torch.equal(layer(x), expected)  # B starts at zero
    # A as peft (and nn.Linear) initialise it: Kaiming-uniform with a = sqrt(5), i.e. within 1/sqrt(fan_in).
    assert 0 < layer.lora_A.abs().max() <= 1 / math.sqrt(64) and torch.count_nonzero(layer.lora_B) == 0


# --- applying it to a family's model -------------------------------------------------------------

@pytest.mark.parametrize("targets,adapted", [
    ("attention", ("attn.c_attn", "attn.c_proj")),
    ("mlp", ("mlp.c_fc", "mlp.c_proj")),
    ("both", ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")),
])
def test_apply_freezes_the_base_and_adapts_the_targets_the_family_names(targets: str, adapted: tuple) -> None:
    c = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
    plain = GPT(c)
    model = apply(GPT(c), FinetuneConfig(method="lora", rank=4, targets=targets), family("gpt"))
    names = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert names == sorted(f"transformer.h.{i}.{s}" for i in range(2) for s in adapted)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}" for n in names for ab in "AB"}
    # Exactly r * (in + out) per adapted Linear.
    expected = sum(4 * (m.in_features + m.out_features) for m in model.modules() if isinstance(m, LoRALinear))
    assert trainable_summary(model) == (expected, sum(p.numel() for p in plain.parameters()) + expected)
    # The base keeps its names: a plain GPT's weights load into it, only the adapters are new.
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys and sorted(result.missing_keys) == sorted(f"{n}.lora_{ab}" for n in names
                                                                               for ab in "AB")


def test_a_task_head_the_family_names_keeps_training() -> None:
    # A family whose head is new (a classifier on a pretrained backbone) names it in lora_trainable.
    record = SimpleNamespace(name="two", lora_targets={"attention": ("proj",)}, lora_trainable=("head",))
    model = apply(_Two(), FinetuneConfig(method="lora", rank=2), record)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"proj.lora_A", "proj.lora_B",
                                                                           "head.weight", "head.bias"}
    assert trainable_summary(model)[0] == 2 * (16 + 24) + 24 * 5 + 5


def test_trainable_share_of_gpt2_small() -> None:
    """LoRA rank 8 on attention: 442,368 of GPT-2 small's 124.9M parameters (0.35%) train."""
    facts = model_facts(load_config("gpt2-124m", {"finetune.method": "lora"}), micro_batch=1)
    per_block = 8 * (768 + 3 * 768) + 8 * (768 + 768)  # c_attn [2304, 768] and c_proj [768, 768]
    assert facts.trainable == 12 * per_block == 442_368
    assert facts.params == 124_439_808 + 442_368
    assert facts.trainable / facts.params == pytest.approx(0.00354, abs=1e-5)


def test_merge_leaves_a_plain_model_computing_the_same() -> None:
    torch.manual_seed(0)
    c = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = apply(GPT(c), FinetuneConfig(method="lora", rank=4, targets="both"), family("gpt")).eval()
    for m in model.modules():
        if isinstance(m, LoRALinear):
            nn.init.normal_(m.lora_B)  # as if trained
    x = torch.randint(0, 65, (2, 16))
    before = model(x)
    merge(model)
    assert not is_adapted(model)
    assert list(model.state_dict()) == list(GPT(c).state_dict())  # the plain GPT's tensors, names and order
    assert torch.allclose(model(x), before, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("preset,overrides,field", [
    ("digits-cnn", {"finetune.method": "lora"}, "finetune.method"),
    ("seed-mlp", {"finetune.method": "lora"}, "finetune.method"),
    ("gpt-nano", {"finetune.method": "lora", "finetune.rank": 0}, "finetune.rank"),
    ("gpt-nano", {"finetune.method": "lora", "finetune.targets": "embeddings"}, "finetune.targets"),
    ("gpt-nano", {"finetune.method": "adapter"}, "finetune.method"),
])
def test_bad_finetune_settings_are_refused_in_one_line(preset: str, overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(preset, overrides)
    assert str(e.value).startswith(field) and "\n" not in str(e.value)


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_2"])
def test_sharded_strategies_with_lora_are_refused_before_any_work(strategy: str, tmp_path: Path) -> None:
    cfg = load_config("gpt-nano", {"finetune.method": "lora", "trainer.strategy": strategy,
                                   "trainer.accelerator": "cpu"})
    with pytest.raises(LabError, match=rf"strategy {strategy} with finetune.method lora is not supported: "
                                       r"use --trainer.strategy ddp") as e:
        check_supported(cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(LabError, match="finetune.method lora"):
        fit(cfg, runs_root=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # refused before the run folder


# --- fine-tuning a pretrained run ----------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_run(tiny_gpt_run: runs.Run, tmp_path_factory: pytest.TempPathFactory) -> runs.Run:
    return fit(lora_config(tiny_gpt_run, 6), runs_root=tmp_path_factory.mktemp("lora"), progress=False)


def test_a_lora_checkpoint_holds_the_adapters_and_names_its_base(lora_run: runs.Run, tiny_gpt_run: runs.Run) -> None:
    state = load_checkpoint(lora_run.checkpoint("last"))
    keys = sorted(state["state_dict"])
    assert keys == sorted(f"model.transformer.h.0.{s}.lora_{ab}" for s in
                          ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj") for ab in "AB")
    assert state["lab"]["config"]["model"]["init_from"] == str(tiny_gpt_run.path)
    # The optimizer holds states for the adapters only: 8 tensors, both moments of each.
    (opt,) = state["optimizer_states"]
    assert sorted(len(g["params"]) for g in opt["param_groups"]) == [8]
    assert len(opt["state"]) == 8 and all(set(s) >= {"exp_avg", "exp_avg_sq"} for s in opt["state"].values())
    base = load_checkpoint(tiny_gpt_run.checkpoint("last"))
    assert lora_run.checkpoint("last").stat().st_size < base_size(base) < tiny_gpt_run.checkpoint("last").stat().st_size


def base_size(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state["state_dict"].values())


def test_loading_rebuilds_the_base_then_the_adapters(lora_run: runs.Run, tiny_gpt_run: runs.Run) -> None:
    adapted = load_module(lora_run, "last", merged=False)
    base = load_checkpoint(tiny_gpt_run.checkpoint("best"))["state_dict"]
    own = adapted.model.state_dict()
    frozen = [k for k in own if "lora_" not in k]
    assert frozen and all(torch.equal(own[k], base[f"model.{k}"]) for k in frozen)  # the base, untouched
    saved = load_checkpoint(lora_run.checkpoint("last"))["state_dict"]
    assert all(torch.equal(own[k[len("model."):]], v) for k, v in saved.items())
    assert any(torch.count_nonzero(v) for k, v in saved.items() if k.endswith("lora_B"))  # the adapters trained
    merged = load_module(lora_run, "last")  # what evaluate, compress and export load
    assert not is_adapted(merged.model)
    x = torch.randint(0, merged.model.config.vocab_size, (2, 32))
    assert torch.allclose(merged(x), adapted(x), atol=1e-5)


def test_export_after_lora_is_a_plain_model_with_merged_weights(lora_run: runs.Run, tmp_path: Path) -> None:
    folder = export(lora_run, "safetensors", out=tmp_path / "st")
    plain = load_safetensors(folder)
    assert not is_adapted(plain) and not any("lora" in k for k in plain.state_dict())
    adapted = load_module(lora_run, "best", merged=False)
    x = torch.randint(0, plain.config.vocab_size, (2, 32))
    assert torch.allclose(plain(x), adapted(x), atol=1e-5)
    w = adapted.model.transformer.h[0].attn.c_attn
    assert torch.allclose(plain.transformer.h[0].attn.c_attn.weight, w.weight + w.delta_weight(), atol=1e-6)


class _StopAt(L.Callback):
    def __init__(self, step: int, event: threading.Event) -> None:
        self.step, self.event = step, event

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step == self.step:
            self.event.set()


def test_resuming_a_lora_run_equals_an_uninterrupted_one(tiny_gpt_run: runs.Run, tmp_path: Path) -> None:
    cfg = lora_config(tiny_gpt_run, 8, **{"trainer.deterministic": True})
    straight = fit(cfg, runs_root=tmp_path / "a", progress=False)
    stop = threading.Event()
    with pytest.raises(RunInterrupted):
        fit(cfg, runs_root=tmp_path / "b", progress=False, stop=stop, callbacks=[_StopAt(3, stop)])
    (stopped,) = runs.list_runs(tmp_path / "b")
    assert 0 < load_checkpoint(stopped.checkpoint("last"))["global_step"] < 8
    resumed = fit(None, runs_root=tmp_path / "b", progress=False, resume=stopped)
    assert resumed.status == "completed" and resumed.summary["step"] == 8
    a, b = load_checkpoint(straight.checkpoint("last")), load_checkpoint(resumed.checkpoint("last"))
    assert a["state_dict"].keys() == b["state_dict"].keys() and all("lora_" in k for k in a["state_dict"])
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][m], sb[i][m]) for i in sa for m in sa[i])


def test_a_lora_module_without_a_pretrained_base_saves_everything() -> None:
    # With random weights nothing could rebuild the base: the checkpoint must keep it.
    module = build_module(load_config("gpt-nano", {**TINY_SHAPE, "model.vocab_size": 65, "finetune.method": "lora"}))
    assert not module.trainable_only
    assert any(k.endswith("c_attn.weight") for k in module.state_dict())
    assert any(k.endswith("lora_A") for k in module.state_dict())


def test_activation_checkpointing_keeps_adapter_only_checkpoints(tiny_gpt_run: runs.Run) -> None:
    from lab.strategies import checkpoint_blocks

    cfg = lora_config(tiny_gpt_run, 2, **{"model.vocab_size": tiny_gpt_run.config["model"]["vocab_size"]})
    wrapped, plain = build_module(cfg), build_module(cfg)
    assert wrapped.trainable_only and checkpoint_blocks(wrapped.model, family("gpt").blocks) == 1
    state = wrapped.state_dict()  # the wrapper renames the block's modules; the checkpoint must not see it
    assert sorted(state) == sorted(k for k in plain.state_dict() if "lora_" in k)
    assert not wrapped.load_state_dict(state).missing_keys and not plain.load_state_dict(state).missing_keys
    with pytest.raises(RuntimeError, match="missing keys"):  # an adapter missing is still an error
        plain.load_state_dict({k: v for k, v in state.items() if not k.endswith("c_attn.lora_A")})


def test_a_lora_run_is_a_base_for_the_next_run(lora_run: runs.Run) -> None:
    # Its checkpoint holds adapters only: the next run starts from the base with them folded in.
    from lab.hub import load_pretrained

    pre = load_pretrained(str(lora_run.checkpoint("best")))
    merged = load_module(lora_run, "best").model.state_dict()
    assert set(pre.state_dict) == set(merged) and not any("lora_" in k for k in pre.state_dict)
    assert all(torch.equal(pre.state_dict[k], merged[k]) for k in merged)


def test_a_distillation_student_of_a_lora_run_trains_every_weight(lora_run: runs.Run) -> None:
    from lab.compress.distill import student_config

    cfg = from_dict(lora_run.config)
    student, _ = student_config(cfg, cfg.model, {"n_embd": 16, "init_from": None})
    assert student.finetune.method == "full" and cfg.finetune.method == "lora"


def test_the_summary_counts_the_trainable_parameters(lora_run: runs.Run) -> None:
    model = load_module(lora_run, "best", merged=False).model
    assert lora_run.summary["model"]["trainable"] == trainable_summary(model)[0] < lora_run.summary["model"]["params"]


def test_compress_after_lora_works_on_the_merged_model(lora_run: runs.Run) -> None:
    from lab.compress import compress
    from lab.compress.artifacts import load_artifact
    from lab.families import family_of

    report = compress(lora_run, "prune", sparsity=0.5, steps=0, max_batches=2, repeats=1, warmup=0, batch_sizes=(1,))
    merged = load_module(lora_run, "best")
    pruned = load_artifact(lora_run, "prune", merged.model, family_of(lora_run.config))
    # The artifact is a plain model of the family: the adapters were folded in before pruning, so
    # the pruned weight is the merged one with its smallest entries (ranked over the whole model) set to zero.
    assert not is_adapted(pruned) and not any("lora" in k for k in pruned.state_dict())
    find = lambda m: next(mod for name, mod in m.named_modules() if name.endswith("h.0.attn.c_attn"))
    w, base = find(pruned).weight, find(merged).weight
    kept = w != 0
    assert 0.2 <= 1 - float(kept.float().mean()) <= 0.8 and torch.equal(w[kept], base[kept])
    assert report["method"] == "prune"


def test_lora_dropout_drops_the_adapters_input_in_training_only() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=16))
    apply(model, FinetuneConfig(method="lora", rank=4, alpha=8, dropout=0.5, targets="attention"), family("gpt"))
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, LoRALinear) and layer.lora_dropout.p == 0.5
    nn.init.normal_(layer.lora_B)  # B starts at zero (no update yet): give the adapter something to say
    x = torch.randn(3, 16)
    layer.train()
    assert not torch.equal(layer(x), layer(x))  # a fresh mask each call
    layer.eval()
    frozen = x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)
    assert torch.allclose(layer(x), frozen + x @ layer.delta_weight().T, atol=1e-6)
