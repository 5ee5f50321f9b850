"""The GPT family: a decoder-only language model on text, next-token loss.

    from lab.families.gpt import FAMILY
    FAMILY.task, FAMILY.unit                 # "lm", "tokens"
    FAMILY.transformer(GPTConfig(vocab_size=65))   # the planner's shape

Its own facts: the vocabulary comes from the run's tokenizer when ``model.vocab_size`` is
null; the text DataModule needs the context length and how many windows the run will read;
FSDP and activation checkpointing work per ``Block``. With ``model.init_from`` the data is
tokenized with the source's tokenizer and ``lab.hub.load_gpt`` copies its weights in; a GPT
exports as a Hugging Face GPT-2 folder too (``hf``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from lab.compress.structure import Group, Structure, cuts, neurons
from lab.data import DATAMODULES
from lab.errors import LabError
from lab.families.record import Explainable, ModelFamily, TransformerShape, replace_config
from lab.hub import load_gpt, tokenizer_of
from lab.models.gpt import GPT, Block, GPTConfig, LayerCache, attend
from lab.modules import LanguageModel

CHAR_VOCAB_BOUND = 256
"""Vocabulary assumed for a char tokenizer with ``model.vocab_size: null`` when no data is read
(the real count is only known once the corpus is read; 256 bounds byte-like text)."""


def datamodule(cfg: Any) -> Any:
    """Text windows of ``block_size`` tokens: one window per micro-batch sample of the whole run,
    so the n-th batch is the same every run (and after a resume). A pretrained source's tokenizer
    tokenizes the text when ``model.init_from`` is set (its ids are what the embeddings know)."""
    t = cfg.trainer
    ranks = (t.devices if isinstance(t.devices, int) else 1) * t.num_nodes  # each rank reads its share
    samples = t.max_steps * t.accumulate_grad_batches * cfg.data.batch_size * ranks
    given = tokenizer_of(cfg.model.init_from) if cfg.model.init_from else None
    return DATAMODULES[cfg.data.name][1](cfg.data, block_size=cfg.model.block_size, seed=cfg.seed,
                                        num_train_samples=samples,
                                        **({"tokenizer": given} if given is not None else {}))


def with_vocab(model_cfg: GPTConfig, dm: Any) -> GPTConfig:
    """``model_cfg`` with its vocabulary filled in from the DataModule's tokenizer (a copy)."""
    if model_cfg.vocab_size is None:
        if dm is None:
            raise LabError("model.vocab_size is null: give it, or build the module with its DataModule")
        return replace_config(model_cfg, vocab_size=dm.vocab_size)
    if dm is not None and model_cfg.vocab_size < dm.vocab_size:
        raise LabError(f"model.vocab_size = {model_cfg.vocab_size} is smaller than the tokenizer's "
                       f"{dm.vocab_size} tokens: raise it or leave it null")
    return model_cfg


def module(cfg: Any, model: Any, dm: Any) -> LanguageModel:
    tok = dm.tokenizer if dm is not None and hasattr(dm, "tokenizer") else None
    return LanguageModel(model, cfg.optimizer, cfg.trainer.max_steps, decode=tok.decode if tok else None,
                         encode=tok.encode if tok else None)


def example(c: GPTConfig, n: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = c.vocab_size or CHAR_VOCAB_BOUND
    return (torch.randint(0, vocab, (n, c.block_size), generator=gen),
            torch.randint(0, vocab, (n, c.block_size), generator=gen))


def plan_shape(cfg: Any) -> tuple[GPTConfig, str | None]:
    """The vocabulary the planner assumes when it is left to the tokenizer."""
    m = cfg.model
    if m.vocab_size is not None:
        return m, None
    bpe = getattr(cfg.data, "tokenizer", None) == "bpe"
    vocab = cfg.data.vocab_size if bpe else CHAR_VOCAB_BOUND
    note = (f"model.vocab_size is null: planned with {vocab} tokens "
            f"({'data.vocab_size' if bpe else 'an upper bound for characters'})")
    return replace_config(m, vocab_size=vocab), note


def transformer(c: GPTConfig) -> TransformerShape:
    return TransformerShape(c.n_layer, c.n_embd, c.n_head, c.block_size, c.vocab_size or CHAR_VOCAB_BOUND, c.dropout)


def narrow(c: GPTConfig, scale: float) -> dict[str, Any]:
    # Half the blocks, then width in whole heads (n_embd must stay a multiple of n_head).
    out: dict[str, Any] = {"n_layer": max(1, c.n_layer // 2),
                           "n_embd": c.n_head * max(1, round(c.n_embd * scale / c.n_head))}
    if getattr(c, "init_from", None):  # a student of another shape cannot start from the teacher's source
        out["init_from"] = None
    return out




# ------------------------------------------------------------------ structured pruning of transformer blocks
# (the ViT's blocks are the GPT's Block too: lab.families.vit uses the same structure)


class PrunedAttention(nn.Module):
    """Self-attention with ``n_head`` heads of ``head_dim`` channels that need not add up to the residual width.

    The lab's ``CausalSelfAttention`` ties the two (``n_embd = n_head * head_dim``); this keeps its
    submodule names (``c_attn``, ``c_proj``), so the weights load under the same keys.
    """

    def __init__(self, attn: nn.Module, n_head: int, head_dim: int) -> None:
        super().__init__()
        self.c_attn, self.c_proj, self.resid_dropout = attn.c_attn, attn.c_proj, attn.resid_dropout
        self.n_head, self.head_dim, self.dropout, self.is_causal = n_head, head_dim, attn.dropout, attn.is_causal

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        inner = self.n_head * self.head_dim
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in self.c_attn(x).split(inner, 2))
        y = attend(q, k, v, self.dropout if self.training else 0.0, self.is_causal, cache)  # a KV cache when generating
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, inner)))


def _blocks(model: nn.Module) -> list[tuple[str, Block]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Block)]


def block_groups(model: nn.Module) -> list[Group]:
    """Each block's attention heads and MLP neurons."""
    groups: list[Group] = []
    for prefix, block in _blocks(model):
        attn, width = block.attn, block.attn.c_proj.out_features
        d = width // attn.n_head
        heads = [*cuts(model, f"{prefix}.attn.c_attn", 0, (torch.arange(3 * width) % width) // d),
                 *cuts(model, f"{prefix}.attn.c_proj", 1, torch.arange(width) // d, ("weight",))]
        groups += [Group(f"{prefix}.attn heads", attn.n_head, heads),
                   neurons(model, f"{prefix}.mlp.c_fc", f"{prefix}.mlp.c_proj")]
    return groups


def fewer_heads(model: nn.Module, groups: list[Group], keep: list[torch.Tensor]) -> None:
    """After the cut: each block's attention runs its kept heads at the original head width."""
    for prefix, block in _blocks(model):
        g = next(g for g in groups if g.name == f"{prefix}.attn heads")
        width = block.attn.c_proj.out_features
        block.attn = PrunedAttention(block.attn, len(keep[groups.index(g)]), width // g.n)


def block_shape(model: nn.Module, counts: list[int]) -> dict[str, Any]:
    """The pruned section: two fields the config lacks (``head_dim``, ``mlp_hidden``, read by ``rebuild``).

    Every block keeps the same counts (same sizes, same fraction), so the first block's stand for all.
    """
    c = dataclasses.asdict(model.config)
    return {**c, "n_head": counts[0], "head_dim": c["n_embd"] // c["n_head"], "mlp_hidden": counts[1]}


def block_rebuild(section: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The original shape to build (its head count from ``head_dim``) and the units each group keeps."""
    section = dict(section)
    head_dim, mlp_hidden = section.pop("head_dim", None), section.pop("mlp_hidden", None)
    if head_dim is None:
        return section, None
    section["n_head"], heads = section["n_embd"] // head_dim, section["n_head"]
    return section, lambda g: heads if g.name.endswith("heads") else mlp_hidden


STRUCTURE = Structure(groups=block_groups, shape=block_shape, finish=fewer_heads, rebuild=block_rebuild)


LORA_TARGETS = {"attention": ("attn.c_attn", "attn.c_proj"), "mlp": ("mlp.c_fc", "mlp.c_proj")}
"""The Linears of every GPT ``Block`` that LoRA adapts (the GPT's, the text classifier's backbone's)."""


FAMILY = ModelFamily(
    name="gpt", config=GPTConfig, model=GPT, data=("text",), task="lm", module=module, example=example,
    loss=LanguageModel.loss, unit="tokens", tokenized=True, datamodule=datamodule, blocks=(Block,),
    complete=with_vocab, transformer=transformer, plan_shape=plan_shape, narrow=narrow, structure=STRUCTURE,
    int8_static=True, lora_targets=LORA_TARGETS,
    pretrained=load_gpt, export_formats=("safetensors", "onnx", "torchscript", "hf"),
    explain=Explainable(("integrated_gradients", "occlusion", "attention", "logit_lens"), "tokens", "transformer.wte"),
    describe="A GPT language model: token ids [batch, sequence] -> logits [batch, sequence, vocab]",
)
