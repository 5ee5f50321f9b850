"""The GPT family: a decoder-only language model on text, next-token loss.

    from lab.families.gpt import FAMILY
    FAMILY.task, FAMILY.unit                 # "lm", "tokens"
    FAMILY.transformer(GPTConfig(vocab_size=65))   # the planner's shape

Its own facts: the vocabulary comes from the run's tokenizer when ``model.vocab_size`` is
null; the text DataModule needs the context length and how many windows the run will read;
FSDP and activation checkpointing work per ``Block``.
"""

from __future__ import annotations

from typing import Any

import torch

from lab.data import DATAMODULES
from lab.errors import LabError
from lab.families.record import ModelFamily, TransformerShape, replace_config
from lab.models.gpt import GPT, Block, GPTConfig
from lab.modules import LanguageModel

CHAR_VOCAB_BOUND = 256
"""Vocabulary assumed for a char tokenizer with ``model.vocab_size: null`` when no data is read
(the real count is only known once the corpus is read; 256 bounds byte-like text)."""


def datamodule(cfg: Any) -> Any:
    """Text windows of ``block_size`` tokens: one window per micro-batch sample of the whole run,
    so the n-th batch is the same every run (and after a resume)."""
    t = cfg.trainer
    ranks = (t.devices if isinstance(t.devices, int) else 1) * t.num_nodes  # each rank reads its share
    samples = t.max_steps * t.accumulate_grad_batches * cfg.data.batch_size * ranks
    return DATAMODULES[cfg.data.name][1](cfg.data, block_size=cfg.model.block_size, seed=cfg.seed,
                                        num_train_samples=samples)


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
    return {"n_layer": max(1, c.n_layer // 2), "n_embd": c.n_head * max(1, round(c.n_embd * scale / c.n_head))}


FAMILY = ModelFamily(
    name="gpt", config=GPTConfig, model=GPT, data=("text",), task="lm", module=module, example=example,
    loss=LanguageModel.loss, unit="tokens", tokenized=True, datamodule=datamodule, blocks=(Block,),
    complete=with_vocab, transformer=transformer, plan_shape=plan_shape, narrow=narrow, int8_static=True,
    describe="A GPT language model: token ids [batch, sequence] -> logits [batch, sequence, vocab]",
)
