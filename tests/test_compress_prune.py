"""Pruning: exact zeros at the target sparsity, and genuinely smaller dense models that load back."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_model
from torch import nn

from lab.compress import Artifact
from lab.compress.prune import load_pruned, prunable_weights, structured, unstructured
from lab.families.gpt import PrunedAttention
from lab.config import from_dict, read_yaml
from lab.errors import LabError
from lab.evaluate import quality
from lab.train import build_module



pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt(trained_gpt):
    return trained_gpt


@pytest.fixture(scope="module")
def gpt_val_loss(gpt) -> float:
    module, dm, _ = gpt
    return quality(module.model, dm, "val", "lm")["loss"]


def _batch(dm) -> torch.Tensor:
    return next(iter(dm.val_dataloader()))[0]


def _no_masks(model: nn.Module) -> bool:
    return not any(m._forward_pre_hooks for m in model.modules()) and not any(
        n.endswith(("_orig", "_mask")) for n, _ in [*model.named_parameters(), *model.named_buffers()])


def test_prunable_weights_leave_out_embeddings_and_the_tied_lm_head(gpt) -> None:
    model = gpt[0].model
    names = {id(m) for m, _ in prunable_weights(model)}
    assert id(model.lm_head) not in names
    assert id(model.transformer.h[0].attn.c_attn) in names and id(model.transformer.h[1].mlp.c_proj) in names


def test_unstructured_hits_the_target_with_exact_zeros(gpt, tmp_path: Path) -> None:
    module, dm, cfg = gpt
    before = {k: v.clone() for k, v in module.state_dict().items()}
    art = unstructured(module, dm, cfg, tmp_path, sparsity=0.6, steps=20)
    assert isinstance(art, Artifact) and art.files == [tmp_path / "model.safetensors"] and art.files[0].exists()
    # The pruned positions are the globally smallest |w| of the original prunable weights...
    weights = [m.weight.detach() for m, _ in prunable_weights(module.model)]
    flat = torch.cat([w.abs().flatten() for w in weights])
    k = round(0.6 * flat.numel())
    expected = torch.zeros(flat.numel(), dtype=torch.bool)
    expected[torch.topk(flat, k, largest=False).indices] = True
    # ...and after the fine-tune they are still exactly zero, the others are not.
    after = torch.cat([m.weight.detach().flatten() for m, _ in prunable_weights(art.example_module)])
    assert torch.all(after[expected] == 0)
    assert art.notes["sparsity"] == pytest.approx(0.6, abs=0.01) and art.notes["zeros"] == k
    assert "no speed-up" in art.notes["note"]
    assert _no_masks(art.example_module)
    assert art.example_module.lm_head.weight is art.example_module.transformer.wte.weight  # still tied
    # The caller's module is untouched.
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_unstructured_weights_load_back_identically(gpt, tmp_path: Path) -> None:
    module, dm, cfg = gpt
    art = unstructured(module, dm, cfg, tmp_path, sparsity=0.5, steps=5)
    fresh = build_module(cfg, dm).model.eval()
    load_model(fresh, str(art.files[0]))
    x = _batch(dm)
    with torch.inference_mode():
        assert torch.equal(fresh(x), art.predict(x))


def test_structured_gpt_is_smaller_dense_and_still_a_language_model(gpt, gpt_val_loss, tmp_path: Path) -> None:
    module, dm, cfg = gpt
    art = structured(module, dm, cfg, tmp_path, sparsity=0.5, steps=30)
    model = art.example_module
    n = art.notes
    assert n["params_after"] == art.params == sum(p.numel() for p in model.parameters()) < n["params_before"]
    block = model.transformer.h[0]
    assert isinstance(block.attn, PrunedAttention) and block.attn.n_head == 1 and block.attn.head_dim == 16
    assert tuple(block.attn.c_attn.weight.shape) == (3 * 16, 32) and tuple(block.attn.c_proj.weight.shape) == (32, 16)
    assert type(block.mlp.c_fc) is nn.Linear and block.mlp.c_fc.out_features == 64 == block.mlp.c_proj.in_features
    assert _no_masks(model)
    x = _batch(dm)
    with torch.inference_mode():
        assert art.predict(x).shape == module.model(x).shape
    # Half the heads and neurons gone, 30 steps of fine-tune: still close to the original.
    pruned_loss = quality(art.predict, dm, "val", "lm")["loss"]
    assert torch.isfinite(torch.tensor(pruned_loss)) and pruned_loss < gpt_val_loss + 0.3
    assert n["model"]["head_dim"] == 16 and n["model"]["mlp_hidden"] == 64 and n["model"]["n_head"] == 1
    # The files alone rebuild the same function.
    with torch.inference_mode():
        assert torch.equal(load_pruned(tmp_path)(x), art.predict(x))


def test_structured_removes_exactly_the_units_that_do_nothing(gpt, tmp_path: Path) -> None:
    """Silence head 1 and half the MLP neurons of every block: pruning them must not change the outputs."""
    module, dm, cfg = gpt
    silenced = copy.deepcopy(module)
    for block in silenced.model.transformer.h:
        with torch.no_grad():
            block.attn.c_proj.weight[:, 16:] = 0  # head 1 writes nothing
            block.mlp.c_fc.weight[::2] = 0        # even neurons: GELU(0) = 0 ...
            block.mlp.c_proj.weight[:, ::2] = 0   # ... and nothing reads them
    art = structured(silenced, dm, cfg, tmp_path, sparsity=0.5, steps=0)
    for block in art.example_module.transformer.h:
        assert not torch.any(block.mlp.c_proj.weight == 0)
    x = _batch(dm)
    with torch.inference_mode():
        torch.testing.assert_close(art.predict(x), silenced.model(x), rtol=1e-5, atol=1e-5)


def test_structured_with_nothing_removed_is_the_same_function(gpt, tmp_path: Path) -> None:
    module, dm, cfg = gpt
    art = structured(module, dm, cfg, tmp_path, sparsity=0.0, steps=0)
    assert art.notes["params_after"] == art.notes["params_before"]
    x = _batch(dm)
    with torch.inference_mode():
        torch.testing.assert_close(art.predict(x), module.model(x), rtol=1e-5, atol=1e-5)


def test_structured_cnn_drops_channels_and_saves_a_plain_config(tmp_path: Path, train_tiny) -> None:
    module, dm, cfg = train_tiny("digits-cnn", {"trainer.max_steps": 30}, steps=30)
    art = structured(module, dm, cfg, tmp_path, sparsity=0.5, steps=10)
    model = art.example_module
    assert model.config.channels == (8, 16) and model.config.hidden == 32
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [8, 16] and convs[1].in_channels == 8
    assert [b.running_mean.numel() for b in bns] == [8, 16]
    assert art.params < art.notes["params_before"]
    saved = from_dict(read_yaml(tmp_path / "config.yaml"))  # a config the lab can train again
    assert list(saved.model.channels) == [8, 16]
    x = _batch(dm)
    with torch.inference_mode():
        assert art.predict(x).shape == (len(x), 10)
        assert torch.equal(load_pruned(tmp_path)(x), art.predict(x))


def test_structured_mlp_halves_the_hidden_layer(tmp_path: Path, train_tiny) -> None:
    module, dm, cfg = train_tiny("seed-mlp", {"trainer.max_steps": 60})
    art = structured(module, dm, cfg, tmp_path, sparsity=0.5, steps=20)
    assert art.example_module.config.hidden == (10,)
    assert art.notes["params_before"] == 241 and art.params == 10 * 10 + 10 + 10 + 1
    x = _batch(dm)
    with torch.inference_mode():
        assert torch.equal(load_pruned(tmp_path)(x), art.predict(x))


@pytest.mark.parametrize("method, options", [
    (unstructured, {"sparsity": 1.0}), (unstructured, {"sparsity": "half"}), (unstructured, {"steps": -1}),
    (structured, {"sparsity": -0.1}), (structured, {"sparsity": 1}),
])
def test_bad_options_are_refused(gpt, tmp_path: Path, method, options) -> None:
    module, dm, cfg = gpt
    with pytest.raises(LabError, match="option"):
        method(module, dm, cfg, tmp_path, **options)


def test_a_structurally_pruned_gpt_generates_the_same_with_its_kv_cache():
    # PrunedAttention takes the GPT's KV cache too (lab.models.gpt.attend): lab serve generates from it.
    from lab.compress.prune import shrink
    from lab.families.gpt import STRUCTURE
    from lab.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=4, n_embd=32)).eval()
    groups = STRUCTURE.groups(model)
    shrink(model, STRUCTURE, groups, [torch.arange(2) if g.name.endswith("heads") else torch.arange(50)
                                      for g in groups])
    x = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.generate(x, 20, top_k=1), model.generate(x, 20, top_k=1, use_cache=False))
