"""lab.explain.transformer: the explicit attention path equals SDPA's, and the logit lens reads the real stream."""

from __future__ import annotations

import pytest
import torch

from lab.explain.transformer import attention_maps, blocks, explicit_attention, logit_lens, recording_attention
from lab.families.gpt import PrunedAttention
from lab.models.gpt import GPT, Block, GPTConfig
from lab.models.vision import ViT, ViTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("causal", [True, False])
def test_explicit_attention_equals_sdpa_block_output(causal: bool) -> None:
    torch.manual_seed(0)
    block = Block(n_embd=48, n_head=4, bias=True, is_causal=causal).eval()
    x = torch.randn(3, 11, 48)
    with torch.no_grad():
        fused = block(x)  # the SDPA path
        with recording_attention(block) as weights:
            explicit = block(x)
        y, w = explicit_attention(block.attn, block.ln_1(x))
    assert (explicit - fused).abs().max() <= 1e-5  # the block's output, through either path
    assert (y - block.attn(block.ln_1(x))).abs().max() <= 1e-5  # and the attention's own
    assert torch.allclose(w, weights[0]) and w.shape == (3, 4, 11, 11)
    assert torch.allclose(w.sum(-1), torch.ones(3, 4, 11), atol=1e-6)  # each row is a distribution
    future = torch.ones(11, 11, dtype=torch.bool).triu(1)
    assert (w[..., future] == 0).all() == causal  # no query looks ahead, unless bidirectional
    # The fused path is back afterwards: no instance attribute left on the module.
    assert "forward" not in vars(block.attn)


def test_explicit_attention_of_a_structurally_pruned_block() -> None:
    """Fewer heads of the original width (what prune-structured leaves) run the same way."""
    torch.manual_seed(1)
    block = Block(n_embd=32, n_head=4).eval()
    keep = 2
    attn = block.attn
    attn.c_attn = torch.nn.Linear(32, 3 * keep * 8, bias=False)
    attn.c_proj = torch.nn.Linear(keep * 8, 32, bias=False)
    block.attn = PrunedAttention(attn, keep, 8).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        y, w = explicit_attention(block.attn, x)
        assert (y - block.attn(x)).abs().max() <= 1e-5 and w.shape == (2, keep, 7, 7)


def test_attention_maps_of_a_gpt_and_a_vit() -> None:
    torch.manual_seed(2)
    gpt = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=3, n_head=2, n_embd=16)).eval()
    ids = torch.randint(0, 20, (1, 9))
    maps = attention_maps(gpt, ids)
    assert maps.shape == (3, 2, 9, 9) and torch.allclose(maps.sum(-1), torch.ones(3, 2, 9), atol=1e-6)
    with torch.no_grad():
        assert torch.equal(gpt(ids), gpt(ids))  # still the fused path, and deterministic
    vit = ViT(ViTConfig(n_layer=2, n_head=2, n_embd=16)).eval()
    maps = attention_maps(vit, torch.randn(1, 1, 8, 8))
    assert maps.shape == (2, 2, 17, 17) and (maps[0, 0].triu(1) > 0).any()  # CLS + 16 patches, bidirectional
    assert len(blocks(vit)) == 2
    with pytest.raises(ValueError, match="no transformer blocks"):
        with recording_attention(torch.nn.Linear(2, 2)):
            pass


def test_logit_lens_last_layer_is_the_model_output() -> None:
    torch.manual_seed(3)
    gpt = GPT(GPTConfig(vocab_size=26, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    ids = torch.randint(0, 26, (1, 14))
    decode = lambda xs: "".join(chr(97 + i) for i in xs)  # noqa: E731
    lens = logit_lens(gpt, ids, decode, k=3, positions=5)
    assert lens["layers"] == ["embeddings", "block 1", "block 2"] and lens["final_matches_output"]
    assert [len(t) for t in lens["top"]] == [3, 3, 3] and len(lens["grid"][0]) == 5
    assert lens["tokens"] == [decode([int(i)]) for i in ids[0, -5:]]
    with torch.no_grad():
        probs = gpt(ids)[0, -1].softmax(-1)
    best = int(probs.argmax())
    assert lens["top"][-1][0][0] == decode([best]) and lens["top"][-1][0][1] == pytest.approx(float(probs[best]), abs=1e-6)
    assert lens["grid"][-1][-1][0] == decode([best])
    # Each layer's reading is a distribution, and the embeddings' differs from the output's.
    assert all(0 < p <= 1 for row in lens["top"] for _, p in row)
    assert lens["top"][0] != lens["top"][-1]
