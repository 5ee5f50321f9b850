"""Pruning: zero the smallest weights (``prune``) or cut whole heads, neurons and channels (``prune-structured``).

    from lab.compress import compress
    compress(run, "prune")                         # 50% global magnitude sparsity + 100 fine-tune steps
    compress(run, "prune-structured")              # half the heads / MLP neurons / conv channels, dense
    # or directly, as the framework calls them:
    art = unstructured(module, dm, cfg, out_dir, sparsity=0.7, steps=200)
    art = structured(module, dm, cfg, out_dir, sparsity=0.25, steps=100, batches=8)
    model = load_pruned(out_dir)                   # the structured model again, from its files

Unstructured pruning keeps the tensors' shapes: it only shows up as zeros, so dense
kernels run exactly as fast and the dense safetensors file is just as large. Structured
pruning builds a genuinely smaller dense model (new ``nn.Linear``/``nn.Conv2d`` with fewer
rows/columns), which is what can run faster.

Which units go (structured): each unit's importance is a first-order Taylor estimate of the
loss change when all of its weights are zeroed, ``(sum_w w * dL/dw)^2``, averaged over a few
training batches (Molchanov et al., 2019). Unlike a weight norm it needs no special case for
BatchNorm (which rescales a conv's weights freely) and sees what the data actually uses. A family
may rank its units from the data instead (``Structure.importance``: a recommender's item rows by
how often each item was chosen in training).
Each layer loses the same fraction, so the new shape is a few numbers in the model config.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from safetensors.torch import load_model, save_model
from torch import nn
from torch.nn.utils import prune as torch_prune

from lab.compress import Artifact
from lab.config import Config, from_dict, plain, read_yaml
from lab.errors import LabError
from lab.cost import num_params
from lab.compress import structure as cutting
from lab.compress.structure import Group, Structure
from lab.families import build_model, family
from lab.modules import LabModule
from lab.train import train_module

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
NO_SPEEDUP = ("Unstructured sparsity gives no speed-up on dense kernels (and no size gain: the zeros are stored "
              "as dense fp32). It needs sparse kernels or compressed storage to pay off; use prune-structured "
              "for a smaller dense model.")


def check_fraction(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1), or a LabError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise LabError(f"option {name}={value!r}: expected a fraction in [0, 1)")
    return float(value)


def check_steps(value: Any, minimum: int = 0) -> int:
    """``value`` as a whole number of steps >= ``minimum``, or a LabError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LabError(f"option steps={value!r}: expected a whole number >= {minimum}")
    return value


def finetune(module: LabModule, dm: L.LightningDataModule, steps: int, lr_scale: float) -> LabModule:
    """Fine-tune with ``train_module`` on a schedule fitted to ``steps``.

    The run's schedule is for its own ``max_steps`` (a 100-step fine-tune of gpt-nano would be
    all warm-up), so the cosine restarts over ``steps`` with a short warm-up (a tenth of them at
    most), peaking at the run's lr times ``lr_scale``.
    """
    if steps == 0:
        return module.eval()
    o = module.optimizer_config
    module.optimizer_config = dataclasses.replace(o, lr=o.lr * lr_scale, warmup_steps=min(o.warmup_steps, steps // 10))
    module.max_steps = steps
    # Lightning keeps each submodule's train/eval mode as it finds it: a module loaded (or
    # returned by train_module) in eval mode would otherwise fine-tune with BatchNorm frozen.
    return train_module(module.train(), dm, steps)


def save_weights(model: nn.Module, out_dir: Path, config: dict[str, Any] | None = None) -> list[Path]:
    """Write ``model.safetensors`` (tied tensors once) and, when the shape changed, ``config.yaml``."""
    files = [out_dir / WEIGHTS_FILE]
    save_model(model, str(files[0]))
    if config is not None:
        files.append(out_dir / CONFIG_FILE)
        files[1].write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return files


# ---------------------------------------------------------------------------------------------
# Unstructured: global magnitude pruning


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` of every Linear and Conv layer except embeddings and layers tied to them.

    Embedding rows are table lookups, not matmuls, so their zeros would save nothing even with
    sparse kernels, and each row is a token's whole representation. The GPT's ``lm_head``
    shares its tensor with the token embedding: pruning re-parametrises ``weight`` on the one
    module it is applied to, which would silently untie the pair.
    """
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [(m, "weight") for m in model.modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and id(m.weight) not in embedded]


def unstructured(module: LabModule, dm: L.LightningDataModule, cfg: Config, out_dir: Path,
                 sparsity: float = 0.5, steps: int = 100, lr_scale: float = 0.1, **_: Any) -> Artifact:
    """Global L1 (magnitude) pruning to ``sparsity``, a masked fine-tune of ``steps``, then permanent zeros.

    One threshold across all layers (``global_unstructured``) lets robust layers give up more
    than sensitive ones, which loses less than the same fraction in every layer. The fine-tune
    runs at a tenth of the run's lr (gpt-nano, 50%, 100 steps: val loss 1.489 at lr x0.1,
    1.529 at x1, 1.542 with no fine-tune, 1.496 unpruned).
    """
    sparsity, steps = check_fraction("sparsity", sparsity), check_steps(steps)
    pruned = copy.deepcopy(module)
    targets = prunable_weights(pruned.model)
    if not targets:
        raise LabError(f"{type(pruned.model).__name__} has no Linear/Conv weights to prune")
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    # The masks stay attached while fine-tuning: the forward uses weight_orig * mask, so the
    # pruned entries get no gradient through the loss, and whatever weight decay does to
    # weight_orig underneath is multiplied by 0.
    finetune(pruned, dm, steps, lr_scale)
    for m, name in targets:
        torch_prune.remove(m, name)  # weight = weight_orig * mask, as a plain Parameter again
    total = sum(m.weight.numel() for m, _ in targets)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    model = pruned.model.eval()
    return Artifact(
        predict=model, files=save_weights(model, out_dir), params=num_params(model), backend="torch eager fp32",
        example_module=model,
        notes={"target_sparsity": sparsity, "sparsity": zeros / total, "zeros": zeros, "prunable_params": total,
               "params_nonzero": num_params(model) - zeros, "prunable_layers": len(targets),
               "excluded": "embeddings and the lm_head tied to them", "finetune_steps": steps,
               "lr_scale": lr_scale, "note": NO_SPEEDUP})


# ---------------------------------------------------------------------------------------------
# Structured: remove heads, neurons, channels


def _group_sums(model: nn.Module, group: Group, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum ``values`` (per-element figures keyed by tensor name) over each unit of ``group``."""
    total = torch.zeros(group.n)
    for cut in group.cuts:
        v = values.get(f"{cut.module}.{cut.tensor}")
        if v is not None:
            per_pos = v.transpose(0, cut.dim).reshape(v.shape[cut.dim], -1).sum(1)
            total.index_add_(0, cut.unit_of, per_pos.float())
    return total


def taylor_scores(module: LabModule, groups: list[Group], dm: L.LightningDataModule, batches: int) -> list[torch.Tensor]:
    """Per-unit ``(sum_w w * dL/dw)^2`` averaged over ``batches`` training batches (eval mode: no dropout)."""
    model = module.model.eval()
    scores = [torch.zeros(g.n) for g in groups]
    seen = 0
    with torch.enable_grad():
        for x, y in dm.train_dataloader():
            if seen == batches:
                break
            model.zero_grad(set_to_none=True)
            module.loss(model(x), y).backward()
            wg = {n: (p.detach() * p.grad) for n, p in model.named_parameters() if p.grad is not None}
            for g, s in zip(groups, scores):
                s += _group_sums(model, g, wg) ** 2
            seen += 1
    model.zero_grad(set_to_none=True)
    return [s / max(seen, 1) for s in scores]


def structured(module: LabModule, dm: L.LightningDataModule, cfg: Config, out_dir: Path,
               sparsity: float = 0.5, steps: int = 100, batches: int = 8, lr_scale: float = 1.0, **_: Any) -> Artifact:
    """Remove the fraction ``sparsity`` of every layer's heads and MLP neurons (GPT, ViT), conv channels and hidden
    neurons (CNN) or hidden neurons (MLP) by Taylor importance on ``batches`` batches, then fine-tune.

    The fine-tune runs at the run's full lr (``lr_scale=1``), unlike unstructured pruning's 0.1:
    losing half of every layer is a bigger jump to recover from in few steps (gpt-nano, 100
    steps: val loss 1.65 at lr x1 against 1.69 at x0.1, from 2.13 right after the cut).
    """
    sparsity, steps = check_fraction("sparsity", sparsity), check_steps(steps)
    pruned = copy.deepcopy(module)
    model = pruned.model
    structure = _structure(model)
    groups = structure.groups(model)
    how = f"first-order Taylor (sum w*dL/dw)^2 over {batches} train batches"
    if structure.importance is not None:  # the family knows better (e.g. how often each item was chosen)
        scores, how = structure.importance(model, groups, dm), (structure.importance.__doc__ or "").strip()
    else:
        scores = taylor_scores(pruned, groups, dm, batches)
    # At least one unit per group: an empty layer would cut the network in two.
    keep = [torch.sort(torch.topk(s, max(1, round(g.n * (1 - sparsity)))).indices).values for g, s in zip(groups, scores)]
    params_before = num_params(model)
    shrink(model, structure, groups, keep)
    config = {**cfg.to_dict(), "model": plain(structure.shape(model, [len(k) for k in keep]))}
    finetune(pruned, dm, steps, lr_scale)
    model.eval()
    return Artifact(
        predict=model, files=save_weights(model, out_dir, config), params=num_params(model),
        backend="torch eager fp32", example_module=model,
        notes={"sparsity": sparsity, "importance": how,
               "params_before": params_before, "params_after": num_params(model),
               "params_ratio": num_params(model) / params_before,
               "kept": {g.name: f"{g.n} -> {len(k)}" for g, k in zip(groups, keep)},
               "model": config["model"], "finetune_steps": steps, "lr_scale": lr_scale})


def load_pruned(out_dir: str | Path) -> nn.Module:
    """Rebuild a structured-pruned model from ``config.yaml`` + ``model.safetensors`` (eval mode).

    The family's ``structure.rebuild`` reads a pruned section its config cannot hold (a pruned
    GPT/ViT's ``head_dim`` and ``mlp_hidden``): the original shape is built, cut to those sizes,
    then loaded.
    """
    out_dir = Path(out_dir)
    section = dict(read_yaml(out_dir / CONFIG_FILE)["model"])
    structure = family(section.get("name")).structure
    kept = None
    if structure is not None and structure.rebuild is not None:
        section, kept = structure.rebuild(section)
    model = build_model(from_dict({"model": section}).model)
    if kept is not None:
        groups = structure.groups(model)
        shrink(model, structure, groups, [torch.arange(kept(g)) for g in groups])
    load_model(model, str(out_dir / WEIGHTS_FILE))
    return model.eval()


def _structure(model: nn.Module) -> Structure:
    """How ``model``'s family shrinks; refused in one line when it does not say."""
    name = getattr(getattr(model, "config", None), "name", None)
    structure = family(name).structure if name is not None else None
    if structure is None:
        raise LabError(f"prune-structured does not know how to shrink a {type(model).__name__}")
    return structure


def shrink(model: nn.Module, structure: Structure, groups: list[Group], keep: list[torch.Tensor]) -> None:
    """Cut ``model`` to the kept units of each group, then let its family finish (e.g. fewer heads)."""
    cutting.cut(model, groups, keep)
    if structure.finish is not None:
        structure.finish(model, groups, keep)
