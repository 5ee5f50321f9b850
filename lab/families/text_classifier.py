"""The GPT text-classifier family: a GPT backbone (pretrained or not) and a classification head.

    from lab.families.text_classifier import FAMILY
    FAMILY.task, FAMILY.data                 # "classifier", ("labelled-text",)
    lab fit --config sentiment                                   # from random weights
    lab fit --config sentiment --model.init_from gpt-nano/<run_id>   # from the quickstart's language model

Its own facts: the vocabulary comes from the tokenizer, and the class names and their count
from the data (both recorded in the run's config); with ``model.init_from`` the tokenizer is
the pretrained model's (``lab.hub.tokenizer_of``) and ``pretrained`` copies its weights into
the backbone -- every tensor but the LM head, which the classifier does not have. Pruning,
distillation, FSDP and activation checkpointing work per ``Block``, as for the GPT.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lab.data.labelled_text import LabelledTextDataModule
from lab.errors import ConfigError, LabError
from lab.families.gpt import CHAR_VOCAB_BOUND, LORA_TARGETS, STRUCTURE, narrow
from lab.families.gpt import plan_shape as gpt_plan_shape
from lab.families.record import Explainable, ModelFamily, Servable, replace_config
from lab.hub import load_gpt, tokenizer_of
from lab.models.gpt import Block
from lab.models.text_classifier import TextClassifier, TextClassifierConfig
from lab.modules import Classifier


def datamodule(cfg: Any) -> LabelledTextDataModule:
    """Texts cut to ``block_size`` tokens (or ``data.max_tokens``); the pretrained tokenizer with ``init_from``."""
    tokenizer = None
    if cfg.model.init_from is not None:
        tokenizer = tokenizer_of(cfg.model.init_from)
        if tokenizer is None:
            raise LabError(f"model.init_from = {cfg.model.init_from!r} has no tokenizer, so its token ids mean "
                           "nothing to this data: use a source that has one (a lab run, or an HF folder with "
                           "tokenizer.json)")
    return LabelledTextDataModule(cfg.data, seed=cfg.seed, block_size=cfg.model.block_size, tokenizer=tokenizer,
                                  labels=cfg.model.labels)


def complete(c: TextClassifierConfig, dm: Any) -> TextClassifierConfig:
    """What the data decides: the vocabulary (from the tokenizer), the class names and their count (a copy)."""
    changes: dict[str, Any] = {}
    vocab = getattr(dm, "vocab_size", None)
    if c.vocab_size is None:
        if vocab is None:
            raise LabError("model.vocab_size is null: give it, or build the module with its DataModule")
        changes["vocab_size"] = vocab
    elif vocab is not None and c.vocab_size < vocab:
        raise LabError(f"model.vocab_size = {c.vocab_size} is smaller than the tokenizer's {vocab} tokens: "
                       "raise it or leave it null")
    names = getattr(dm, "class_names", None)
    if names:  # a DataModule that has read the data (a tokenizer alone knows no labels)
        if c.labels is None:
            changes["labels"] = tuple(names)
        if c.num_classes is None:
            changes["num_classes"] = len(names)
        elif c.num_classes != len(names):
            raise ConfigError("model.num_classes", c.num_classes, f"{len(names)}: the data has the labels "
                              f"{', '.join(names)}", "leave it null to take it from the data")
    return replace_config(c, **changes) if changes else c


def module(cfg: Any, model: TextClassifier, dm: Any) -> Classifier:
    return Classifier(model, cfg.optimizer, cfg.trainer.max_steps, num_classes=model.config.num_classes)


def example(c: TextClassifierConfig, n: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random full-length texts (no padding) and labels."""
    vocab = c.vocab_size or CHAR_VOCAB_BOUND
    return (torch.randint(0, vocab, (n, c.block_size), generator=gen),
            torch.randint(0, c.num_classes or 2, (n,), generator=gen))


def plan_shape(cfg: Any) -> tuple[TextClassifierConfig, str | None]:
    """The GPT's vocabulary assumption, and two classes when the data has not said how many."""
    m, note = gpt_plan_shape(cfg)
    if m.num_classes is None:
        m = replace_config(m, num_classes=len(m.labels) if m.labels else 2)
    return m, note


def check(cfg: Any) -> None:
    """The texts must fit the backbone's positions."""
    d, m = cfg.data, cfg.model
    if d.max_tokens is not None and d.max_tokens > m.block_size:
        raise ConfigError("data.max_tokens", d.max_tokens, f"at most model.block_size = {m.block_size}",
                          "the backbone has no position for later tokens")


def pretrained(model: TextClassifier, source: Any) -> None:
    """Copy a pretrained GPT (``lab.hub.Pretrained``) into the backbone: the GPT family's checks and copy
    (``lab.hub.load_gpt``: every tensor's shape, n_head, the activation; a shorter block_size takes the
    first positions), without the LM head, which the classifier does not have: its own head stays
    at its random start."""
    body = {k: v for k, v in source.state_dict.items() if k != "lm_head.weight"}  # tied: it is the embedding
    load_gpt(model.backbone, dataclasses.replace(source, state_dict=body))


FAMILY = ModelFamily(
    name="gpt-classifier", config=TextClassifierConfig, model=TextClassifier, data=("labelled-text",),
    task="classifier", module=module, example=example, loss=Classifier.loss, metric="val/accuracy", mode="max",
    tokenized=True, datamodule=datamodule, complete=complete, check=check, blocks=(Block,), plan_shape=plan_shape,
    narrow=narrow, structure=STRUCTURE, pretrained=pretrained,
    lora_targets=LORA_TARGETS, lora_trainable=("head",),  # the new head trains; the backbone gets adapters
    explain=Explainable(("integrated_gradients", "occlusion", "attention"), "tokens", "backbone.transformer.wte"),
    serve=Servable("text", "text", pad=-1),  # the model ignores ids below 0
    describe="A GPT text classifier: token ids [batch, sequence] (right-padded with -1) -> logits [batch, classes]",
)
