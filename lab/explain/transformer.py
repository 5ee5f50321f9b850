"""Inside a transformer: attention weights per layer and head, and the logit lens.

    from lab.explain.transformer import attention_maps, explicit_attention, logit_lens
    maps = attention_maps(model, ids)         # [n_layer, n_head, T, T] for one sequence; rows sum to 1
    y, w = explicit_attention(block.attn, x)  # the block's attention output (as SDPA computes it) and its weights
    lens = logit_lens(gpt, ids, decode, k=5)  # the residual stream after each block, read by ln_f + lm_head

The lab's attention (``lab.models.gpt.CausalSelfAttention``) calls PyTorch's fused
``scaled_dot_product_attention``, which never materialises the attention weights. Explaining
needs them, so ``explicit_attention`` computes the same thing step by step from the block's
own ``c_attn`` and ``c_proj`` weights -- ``softmax(Q K^T / sqrt(d))`` with the causal mask, times
``V`` -- and returns the weights too. It is used only while explaining (``recording_attention``
swaps it in for the duration of one forward and puts the fused path back); its output equals
the fused path's to 1e-5 (``tests/test_explain_transformer.py``). Any model built from the lab's
``Block`` works: the GPT, the text classifier's backbone, the ViT (bidirectional: no mask).

The logit lens (nostalgebraist, 2020) reads the residual stream after every block through the
model's final LayerNorm and output head, as if the model stopped there: which next token each
layer already "believes". The last layer's reading is the model's real output.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lab.models.gpt import Block


def explicit_attention(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention module's output for ``x [B, T, C]`` and its weights ``[B, n_head, T, T]``.

    Reads ``attn.c_attn`` (query, key and value of all heads in one Linear), ``attn.c_proj``,
    ``attn.n_head`` and ``attn.is_causal``; the head width is ``c_attn``'s width / 3 / n_head, so a
    structurally pruned attention (fewer heads of the original width) works too.
    """
    B, T, _ = x.shape
    inner = attn.c_attn.out_features // 3
    n_head = attn.n_head
    d = inner // n_head
    q, k, v = (t.view(B, T, n_head, d).transpose(1, 2) for t in attn.c_attn(x).split(inner, dim=2))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
    if attn.is_causal:  # each position sees itself and the past only
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    weights = F.softmax(scores, dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(B, T, inner)
    return attn.resid_dropout(attn.c_proj(y)), weights


def blocks(model: nn.Module) -> list[Block]:
    """The model's transformer blocks, in the order they run."""
    return [m for m in model.modules() if isinstance(m, Block)]


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While inside, every block's attention runs the explicit path and appends its weights to the list.

        with recording_attention(model) as weights:
            model(ids)
        weights[0]   # [B, n_head, T, T] of the first block
    """
    found = blocks(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no transformer blocks: no attention to record")
    weights: list[torch.Tensor] = []

    def explicit(attn: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            y, w = explicit_attention(attn, x)
            weights.append(w.detach())
            return y
        return forward

    for block in found:
        block.attn.forward = explicit(block.attn)  # an instance attribute shadows the class's forward
    try:
        yield weights
    finally:
        for block in found:
            del block.attn.forward


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Attention weights for a batch of one input (token ids ``[1, T]``, an image ``[1, C, H, W]``):
    ``[n_layer, n_head, T, T]``, row = the position that looks, column = where it looks."""
    with recording_attention(model) as weights:
        model(x)
    return torch.stack([w[0] for w in weights])


@torch.no_grad()
def logit_lens(gpt: nn.Module, ids: torch.Tensor, decode: Callable[[list[int]], str], k: int = 5,
               positions: int = 12) -> dict[str, Any]:
    """What each layer of a GPT (``lab.models.gpt.GPT``) predicts next, read through ``ln_f`` and ``lm_head``.

    Returns ``layers`` (``embeddings``, ``block 1``, ...), ``top`` (per layer: the ``k`` likeliest
    next tokens after the last position, as ``[token, probability]``), ``grid`` (per layer: the top
    token at each of the last ``positions`` positions, with its probability) and ``tokens`` (those
    positions' input tokens), and ``final_matches_output`` (the last layer's reading equals the
    model's logits: the lens reads the real stream).
    """
    ids = ids.reshape(1, -1)
    states: list[torch.Tensor] = []
    hooks = [gpt.transformer.drop.register_forward_hook(lambda m, i, out: states.append(out))]
    hooks += [b.register_forward_hook(lambda m, i, out: states.append(out)) for b in gpt.transformer.h]
    try:
        logits = gpt(ids)
    finally:
        for h in hooks:
            h.remove()
    read = [gpt.lm_head(gpt.transformer.ln_f(s))[0] for s in states]  # each [T, vocab]
    probs = [F.softmax(r.float(), dim=-1) for r in read]
    T = ids.shape[1]
    last = range(max(0, T - positions), T)
    names = ["embeddings"] + [f"block {i + 1}" for i in range(len(states) - 1)]
    top = []
    for p in probs:
        values, index = p[-1].topk(min(k, p.shape[-1]))
        top.append([[decode([int(i)]), float(v)] for v, i in zip(values, index)])
    grid = [[[decode([int(p[t].argmax())]), float(p[t].max())] for t in last] for p in probs]
    return {"layers": names, "top": top, "grid": grid, "tokens": [decode([int(ids[0, t])]) for t in last],
            "final_matches_output": bool(torch.allclose(read[-1], logits[0], atol=1e-5))}


__all__ = ["attention_maps", "blocks", "explicit_attention", "logit_lens", "recording_attention"]
