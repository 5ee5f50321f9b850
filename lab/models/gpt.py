"""A GPT language model in plain PyTorch, after nanoGPT's model.py.

    import torch
    from lab.models.gpt import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))
    idx = torch.randint(0, 65, (2, 64))
    logits = model(idx)                                   # [2, 64, 65]; the caller computes the loss
    model.num_params(), model.flops_per_token()
    out = model.generate(idx[:, :1], 100, temperature=0.8, top_k=50,
                         generator=torch.Generator().manual_seed(0))   # [2, 101], with a KV cache
    dec = Decoder(model, idx[:, :5])                      # next-token logits, token by token (what a server steps)
    dec.logits                                            # [2, 65]; dec.push(next_ids) appends one token per row

Generation keeps a KV cache (``KVCache``): each new token runs the blocks on itself only, against
the keys and values kept from before, and only its own position reaches the LM head. Once the
context fills ``block_size`` the position table ends, so the last ``block_size`` tokens are cropped
and recomputed in full at every step -- what the model without a cache computes too, so greedy
output is the same either way (tests/test_models.py). Rows of a batch may be left-padded (``mask``):
padding is never attended to and positions count real tokens only, so a row decodes as it would alone.

``Block`` takes ``is_causal`` so the vision transformer in ``lab.models.vision`` reuses
it with bidirectional attention instead of carrying a second copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import ConfigError, require, require_positive

ACTIVATIONS = ("gelu", "gelu_tanh")
"""``GPTConfig.activation`` values: torch's exact GELU, and its tanh approximation (GPT-2's ``gelu_new``)."""


@dataclass
class GPTConfig:
    """Shape of a GPT (the ``model:`` section of a config with ``name: gpt``)."""

    name: str = "gpt"
    """Registry key; selects GPT."""
    block_size: int = 64
    """Longest context in tokens; also the length of the learned position table."""
    vocab_size: int | None = None
    """Tokens in the vocabulary; None = taken from the tokenizer at build time."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 128
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches; 0 for small data or pretraining."""
    bias: bool = False
    """Biases in Linear and LayerNorm layers; True matches GPT-2, False is a little faster and as good."""
    activation: str = "gelu"
    """The MLP's GELU: "gelu" (exact, erf) or "gelu_tanh" (the tanh approximation GPT-2 was trained with)."""
    init_from: str | None = None
    """Start from pretrained weights: a Hugging Face Hub id (gpt2), a local folder in the HF layout, or a
    lab run (<experiment>/<run_id>, a run folder or a .ckpt). The shape fields must then be the source's
    (vocab_size null takes it; block_size may be shorter: the position table is cut); null = random init."""

    def validate(self) -> None:
        """Refuse a shape that cannot be built, naming the field and what is allowed."""
        require_positive("model", self, "n_layer", "n_head", "n_embd", "block_size")
        require(self.vocab_size is None or self.vocab_size >= 1, "model.vocab_size", self.vocab_size,
                "a whole number >= 1, or null to take it from the tokenizer")
        check_heads(self)
        require(0 <= self.dropout < 1, "model.dropout", self.dropout, "a number in [0, 1)")
        require(self.activation in ACTIVATIONS, "model.activation", self.activation, " or ".join(ACTIVATIONS))
        require(self.init_from is None or bool(self.init_from.strip()), "model.init_from", self.init_from,
                "a Hub id, a folder, a run, or null")


def check_heads(c: "GPTConfig | object") -> None:
    """Every attention head gets ``n_embd / n_head`` channels (the GPT's and the ViT's rule)."""
    require(c.n_embd % c.n_head == 0, "model.n_embd", c.n_embd, f"a multiple of model.n_head={c.n_head}",
            "each attention head gets n_embd / n_head channels")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; causal (each token sees only the past) unless told otherwise."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = False,
                 is_causal: bool = True) -> None:
        super().__init__()
        if n_head < 1 or n_embd % n_head != 0:
            raise ConfigError("model.n_head", n_head, f"a divisor of model.n_embd={n_embd}")
        self.n_head, self.n_embd, self.dropout, self.is_causal = n_head, n_embd, dropout, is_causal
        # Query, key and value for all heads in one matmul.
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: "LayerCache | None" = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # [B, T, C] -> [B, n_head, T, head_dim]: heads become a batch dimension.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = attend(q, k, v, self.dropout if self.training else 0.0, self.is_causal, cache)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float, is_causal: bool,
           cache: "LayerCache | None" = None) -> torch.Tensor:
    """Scaled dot-product attention of ``[B, heads, T, d]`` tensors, through a layer's KV cache when given.

    Without a cache SDPA picks a flash / memory-efficient kernel and the causal mask is implicit.
    With one, the new keys and values join the kept ones and the cache's mask (causal, no padding) applies.
    The GPT's attention and the pruned one (``lab.families.gpt.PrunedAttention``) both come here.
    """
    if cache is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=is_causal)
    k, v = cache.extend(k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=cache.owner.attn_mask)


class KVCache:
    """Keys and values of every block for the tokens seen so far, and which of them are real (not padding).

    ``GPT.forward(idx, cache=...)`` fills it; ``Decoder`` decides when to start a new one.
    """

    def __init__(self, n_layer: int, mask: torch.Tensor | None = None) -> None:
        self.layers = [LayerCache(self) for _ in range(n_layer)]
        self.valid: torch.Tensor | None = None
        """``[B, S]`` bool: which cached positions are real tokens (False = left padding)."""
        self.attn_mask: torch.Tensor | None = None
        """``[B, 1, T, S]`` bool for the chunk being run: which keys each new query may see."""
        self._pending = mask  # the first chunk's padding mask

    @property
    def length(self) -> int:
        return 0 if self.valid is None else self.valid.size(1)

    def begin(self, idx: torch.Tensor) -> torch.Tensor:
        """Register a chunk of ``T`` new tokens; -> their positions ``[B, T]`` (real tokens counted from 0)."""
        B, T = idx.shape
        new = self._pending if self._pending is not None else torch.ones(B, T, dtype=torch.bool, device=idx.device)
        self._pending = None
        self.valid = new if self.valid is None else torch.cat((self.valid, new), dim=1)
        S = self.valid.size(1)
        keys = torch.arange(S, device=idx.device)
        queries = torch.arange(S - T, S, device=idx.device)
        causal = keys[None, :] <= queries[:, None]                                    # [T, S]
        # A padding query sees itself: a row with nothing to attend to would be NaN, and NaN values
        # poison the real rows too (0 weight * NaN). Real queries never see padding keys.
        self.attn_mask = ((causal & self.valid[:, None, :]) | (keys[None, :] == queries[:, None]))[:, None]
        return (self.valid.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]

    def join(self, other: KVCache) -> None:
        """Append ``other``'s rows (continuous batching): the shorter side is left-padded with masked keys."""
        S = max(self.length, other.length)
        self.valid = torch.cat([pad_left(c.valid, S, False) for c in (self, other)])
        for mine, theirs in zip(self.layers, other.layers):
            mine.k = torch.cat([pad_left(t, S, 0.0, dim=2) for t in (mine.k, theirs.k)])
            mine.v = torch.cat([pad_left(t, S, 0.0, dim=2) for t in (mine.v, theirs.v)])

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` and drop the leading positions that are padding in all of them."""
        valid = self.valid[rows]
        start = first_used(valid)
        self.valid = valid[:, start:]
        for layer in self.layers:
            layer.k, layer.v = layer.k[rows, :, start:], layer.v[rows, :, start:]


def first_used(mask: torch.Tensor) -> int:
    """The first position of ``mask [B, S]`` that some row really has (the columns before it are all padding)."""
    return int(mask.any(0).long().argmax())


def pad_left(t: torch.Tensor, length: int, value: float | bool, dim: int = 1) -> torch.Tensor:
    """``t`` left-padded with ``value`` along ``dim`` to ``length``."""
    n = length - t.size(dim)
    return F.pad(t, (0, 0) * (t.dim() - 1 - dim) + (n, 0), value=value) if n > 0 else t


class LayerCache:
    """One block's kept keys and values ``[B, heads, S, d]``."""

    def __init__(self, owner: KVCache) -> None:
        self.owner = owner
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        return self.k, self.v


class MLP(nn.Module):
    """The feed-forward half of a block: widen 4x, GELU, project back."""

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = False, activation: str = "gelu") -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        # GPT-2's weights were trained with the tanh approximation: the exact GELU moves its logits by ~1e-3.
        self.gelu = nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = False,
                 is_causal: bool = True, activation: str = "gelu") -> None:
        super().__init__()
        # Normalising the branch inputs (not the sum) keeps a clean residual path, which
        # is what lets deep stacks train without warm-up tricks.
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias, is_causal=is_causal)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias, activation)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        # Without a cache attn is called with x alone: lab.explain swaps in an explicit attention of that shape.
        x = x + (self.attn(self.ln_1(x)) if cache is None else self.attn(self.ln_1(x), cache))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer: token + position embeddings, blocks, LayerNorm, tied LM head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None or config.vocab_size < 1:
            raise ConfigError("model.vocab_size", config.vocab_size,
                              "a whole number >= 1 (None is only allowed until the tokenizer fills it in)")
        config.validate()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config.n_embd, config.n_head, config.dropout, config.bias,
                                  activation=config.activation) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf, 2017): the input embedding and the output projection
        # share one matrix, which saves vocab_size * n_embd parameters and trains as well.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layer)
        # (two per block) so the stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count, each tied tensor once; ``non_embedding`` leaves out the position table.

        As in nanoGPT, the token embedding stays in the non-embedding count because it is
        also the output layer's weight.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token, forward plus backward, at full context.

        ``6 * N + 12 * n_layer * n_embd * block_size`` with ``N = num_params(non_embedding=True)``:
        6N for the weight matmuls (2 forward, 4 backward) plus the attention scores and
        weighted sums, from the PaLM paper (Chowdhery et al., 2022), appendix B, as used in
        nanoGPT's ``estimate_mfu``.
        """
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * c.block_size

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids ``[B, T]`` (T <= block_size) -> logits ``[B, T, vocab_size]``.

        With a ``cache`` (``KVCache``), ``idx`` are the tokens after those cached: the blocks run on
        them only, the cache keeps their keys and values, and only the last position goes through the
        LM head -> logits ``[B, vocab_size]`` (a generation step needs nothing more).
        """
        _, T = idx.shape
        if T + (cache.length if cache is not None else 0) > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.config.block_size}")
        if cache is None:
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
        else:
            pos = cache.begin(idx)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x) if cache is None else block(x, cache.layers[i])
        if cache is not None:
            return self.lm_head(self.transformer.ln_f(x[:, -1]))
        # Full logits at every position: the caller picks the loss (or the last position).
        return self.lm_head(self.transformer.ln_f(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None, *,
                 top_p: float | None = None, use_cache: bool = True) -> torch.Tensor:
        """Extend ``idx [B, T]`` by sampling ``max_new_tokens`` tokens -> ``[B, T + max_new_tokens]``.

        ``temperature`` (> 0) divides the logits: below 1 sharpens, above 1 flattens.
        ``top_k`` keeps only the k most likely tokens (clamped to the vocabulary; 1 = greedy);
        ``top_p`` only the likeliest tokens whose probabilities add up to p (nucleus sampling).
        Pass a seeded ``generator`` (on the model's device) for reproducible samples.
        ``use_cache=False`` recomputes the whole context at every step (the reference the cache is tested against).
        """
        check_sampling(temperature, top_k, top_p)
        was_training = self.training
        self.eval()  # no dropout while sampling
        try:
            dec = Decoder(self, idx, use_cache=use_cache)
            for _ in range(max_new_tokens):
                dec.push(sample_next(dec.logits, temperature, top_k, top_p, generator))
        finally:
            self.train(was_training)
        return dec.idx


def check_sampling(temperature: float, top_k: int | None = None, top_p: float | None = None) -> None:
    """Refuse sampling settings that mean nothing (ValueError naming the value)."""
    if not temperature > 0:  # also refuses NaN
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next-token logits ``[B, V]`` -> one sampled id per row ``[B]`` (``temperature`` 0 = the likeliest)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = torch.sort(logits, descending=True)
        # Drop a token when the likelier ones already reach top_p (the likeliest always stays).
        drop = F.softmax(ordered, dim=-1).cumsum(-1) - F.softmax(ordered, dim=-1) >= top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]


class Decoder:
    """Next-token logits for a batch of contexts, one token at a time.

        dec = Decoder(model, idx, mask)       # idx [B, T], mask [B, T] bool (False = left padding) or None
        dec.logits                            # [B, V] for the token after each row
        dec.push(next_ids)                    # [B]: append, step the cache (or recompute the cropped window)

    While the context fits ``block_size`` the KV cache grows by one token per step. Once it is full the
    position table has no next entry, so the last ``block_size`` tokens are cropped and run again in
    full, as a model without a cache does. ``use_cache=False`` always recomputes.
    """

    def __init__(self, model: GPT, idx: torch.Tensor, mask: torch.Tensor | None = None, use_cache: bool = True) -> None:
        self.model, self.idx, self.use_cache = model, idx, use_cache
        self.mask = mask if mask is not None else torch.ones_like(idx, dtype=torch.bool)
        self.cache: KVCache | None = None
        self.logits = self._window()

    def _window(self) -> torch.Tensor:
        size = self.model.config.block_size
        idx, mask = self.idx[:, -size:], self.mask[:, -size:]
        if not self.use_cache and bool(mask.all()):
            return self.model(idx)[:, -1, :]
        self.cache = KVCache(len(self.model.transformer.h), mask)
        return self.model(idx, cache=self.cache)

    @torch.no_grad()
    def push(self, next_ids: torch.Tensor) -> None:
        """Append one token per row and compute the logits after it."""
        step = next_ids.view(-1, 1).to(self.idx.dtype)
        self.idx = torch.cat((self.idx, step), dim=1)
        self.mask = torch.cat((self.mask, torch.ones_like(step, dtype=torch.bool)), dim=1)
        if self.use_cache and self.cache is not None and self.cache.length < self.model.config.block_size:
            self.logits = self.model(step, cache=self.cache)
        else:
            self.logits = self._window()

    def join(self, other: Decoder) -> None:
        """Take ``other``'s rows in after these: a request joins a running batch (continuous batching)."""
        T = max(self.idx.size(1), other.idx.size(1))
        self.idx = torch.cat([pad_left(d.idx, T, 0) for d in (self, other)])
        self.mask = torch.cat([pad_left(d.mask, T, False) for d in (self, other)])
        self.logits = torch.cat((self.logits, other.logits))
        if self.cache is not None and other.cache is not None:
            self.cache.join(other.cache)
        else:  # a side without a cache (use_cache=False): the next push recomputes the window for all rows
            self.cache = None

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (a request ended): the batch shrinks to the positions they still use."""
        mask = self.mask[rows]
        start = first_used(mask)
        self.idx, self.mask, self.logits = self.idx[rows, start:], mask[:, start:], self.logits[rows]
        if self.cache is not None:
            self.cache.keep(rows)
