"""A text classifier in plain PyTorch: a GPT backbone, pooling over the real tokens, a linear head.

    import torch
    from lab.models.text_classifier import TextClassifier, TextClassifierConfig
    cfg = TextClassifierConfig(vocab_size=65, num_classes=2, pooling="mean")
    model = TextClassifier(cfg)
    ids = torch.tensor([[5, 9, 12, -1, -1], [7, 3, 3, 8, 1]])   # right-padded with -1
    logits = model(ids)                                        # [2, 2]
    model.backbone                                             # a lab.models.gpt.GPT whose output is its hidden states

The backbone is the lab's own ``GPT`` (so a language model the lab trained, or GPT-2 through
``lab.hub``, loads into it under the same tensor names), with its LM head replaced by the
identity: ``backbone(ids)`` returns the final LayerNorm's output ``[B, T, n_embd]``.

Padding: any id below 0 is padding, and it must come after the text (right padding, which
is what ``lab.data.labelled_text`` writes). Attention is causal, so no real token ever sees
a pad: a padded sample's real positions are computed exactly as without the padding, and
the pooling below reads only them -- ``last`` takes the last real token's state (the one
that has read the whole text), ``mean`` averages the states of all real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lab.errors import require
from lab.models.gpt import GPT, GPTConfig

POOLINGS = ("mean", "last")


@dataclass
class TextClassifierConfig:
    """A GPT backbone with a classification head (the ``model:`` section with ``name: gpt-classifier``)."""

    name: str = "gpt-classifier"
    """Registry key; selects TextClassifier."""
    block_size: int = 64
    """Longest text in tokens (the backbone's position table); longer texts are cut to data.max_tokens."""
    vocab_size: int | None = None
    """Tokens in the vocabulary; None = taken from the tokenizer (the pretrained model's, with init_from)."""
    n_layer: int = 4
    """Transformer blocks of the backbone."""
    n_head: int = 4
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 128
    """Width of the residual stream (and of the pooled features the head reads)."""
    dropout: float = 0.0
    """Dropout inside the backbone (embeddings, attention, residual branches)."""
    bias: bool = False
    """Biases in the backbone's Linear and LayerNorm layers (True for GPT-2 weights)."""
    activation: str = "gelu"
    """The backbone's GELU: "gelu" (exact) or "gelu_tanh" (GPT-2's approximation; its weights need it)."""
    num_classes: int | None = None
    """Classes the head predicts; None = the number of labels the data has."""
    labels: tuple[str, ...] | None = None
    """Class names in output order; None = the data's labels, sorted (recorded in the run's config)."""
    pooling: str = "mean"
    """How the token states become one vector: "mean" over the real tokens, or the "last" real token's."""
    head_dropout: float = 0.1
    """Dropout on the pooled vector before the linear head."""
    init_from: str | None = None
    """Start the backbone from a pretrained GPT: a lab run (gpt-nano/<run_id>, a run folder or a .ckpt), an
    HF folder or Hub id (lab.hub); its tokenizer is used too, and the shape fields must be its. null = random."""

    def validate(self) -> None:
        """Refuse a shape or setting that cannot be built, naming the field and what is allowed."""
        self.backbone_config().validate()
        require(self.pooling in POOLINGS, "model.pooling", self.pooling, " or ".join(POOLINGS))
        require(0 <= self.head_dropout < 1, "model.head_dropout", self.head_dropout, "a number in [0, 1)")
        require(self.num_classes is None or self.num_classes >= 2, "model.num_classes", self.num_classes,
                "a whole number >= 2, or null to take it from the data's labels")
        if self.labels is not None:
            require(len(self.labels) >= 2 and len(set(self.labels)) == len(self.labels), "model.labels",
                    list(self.labels), "two or more distinct class names, or null to take them from the data")
            require(self.num_classes in (None, len(self.labels)), "model.num_classes", self.num_classes,
                    f"{len(self.labels)} (model.labels names {len(self.labels)} classes) or null")
        require(self.init_from is None or bool(str(self.init_from).strip()), "model.init_from", self.init_from,
                "a pretrained model (e.g. gpt-nano/<run_id>), or null for random weights")

    def backbone_config(self) -> GPTConfig:
        """The backbone's shape as a ``GPTConfig`` (what a pretrained GPT must match)."""
        return GPTConfig(block_size=self.block_size, vocab_size=self.vocab_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=self.bias,
                         activation=self.activation)


class TextClassifier(nn.Module):
    """Token ids ``[B, T]`` (negative = padding, after the text) -> class logits ``[B, num_classes]``."""

    def __init__(self, config: TextClassifierConfig) -> None:
        super().__init__()
        config.validate()
        require(config.num_classes is not None, "model.num_classes", None,
                "a whole number >= 2 (None is only allowed until the data fills it in)")
        self.config = config
        self.backbone = GPT(config.backbone_config())
        # The LM head shares its matrix with the token embedding (weight tying), which keeps it;
        # as the identity, the GPT's own forward returns the hidden states after its final LayerNorm.
        self.backbone.lm_head = nn.Identity()
        self.head_drop = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(config.n_embd, config.num_classes)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        mask = idx >= 0
        h = self.backbone(idx.clamp(min=0))  # a pad's embedding is never read: the mask drops its state
        if self.config.pooling == "last":
            last = (mask.sum(1) - 1).clamp(min=0)  # right padding: the last real token's position
            pooled = h[torch.arange(h.shape[0], device=h.device), last]
        else:
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(self.head_drop(pooled))

    def num_params(self) -> int:
        """Parameter count, each (tied) tensor once."""
        return sum(p.numel() for p in self.parameters())
