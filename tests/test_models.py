"""Tests for lab.models: shapes, parameter counts, causality, sampling, and that a GPT can learn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lab.errors import ConfigError
from lab.families import FAMILIES, build_model
from lab.models import CNN, GPT, MLP, CNNConfig, GPTConfig, MLPConfig, ViT, ViTConfig
from lab.models import gpt as gpt_module


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    kw = dict(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=32)
    kw.update(overrides)
    return GPT(GPTConfig(**kw))


# --- GPT ---------------------------------------------------------------------------------------

def test_gpt2_small_has_published_parameter_count():
    cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=True)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = GPT(cfg)
    assert model.num_params() == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768


def test_gpt_ties_embedding_and_head():
    model = tiny_gpt()
    assert model.transformer.wte.weight is model.lm_head.weight
    # Counted once: a second copy would add vocab_size * n_embd.
    assert model.num_params() == sum(p.numel() for p in set(model.parameters()))


def test_gpt_init_scales_residual_projections():
    model = tiny_gpt(n_layer=8, n_embd=64, vocab_size=512, block_size=64)
    c_proj = model.transformer.h[0].mlp.c_proj.weight
    c_fc = model.transformer.h[0].mlp.c_fc.weight
    assert c_fc.std().item() == pytest.approx(0.02, rel=0.05)
    assert c_proj.std().item() == pytest.approx(0.02 / (2 * 8) ** 0.5, rel=0.05)


def test_gpt_output_shape():
    model = tiny_gpt()
    idx = torch.randint(0, 17, (3, 10))
    logits = model(idx)
    assert logits.shape == (3, 10, 17)
    assert logits.dtype == torch.float32


def test_gpt_is_causal():
    model = tiny_gpt().eval()
    idx = torch.randint(0, 17, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 17
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_gpt_refuses_too_long_input():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros((1, 17), dtype=torch.long))


def test_gpt_refuses_head_count_not_dividing_width():
    with pytest.raises(ConfigError) as err:
        GPT(GPTConfig(vocab_size=10, n_embd=128, n_head=3))
    assert err.value.field == "model.n_embd" and err.value.value == 128 and "model.n_head=3" in str(err.value)


@pytest.mark.parametrize("vocab_size", [None, 0])
def test_gpt_refuses_missing_vocab_size(vocab_size):
    with pytest.raises(ConfigError) as err:
        GPT(GPTConfig(vocab_size=vocab_size))
    assert err.value.field == "model.vocab_size"


def test_gpt_activation_picks_the_exact_or_the_tanh_gelu():
    # GPT-2's weights were trained with the tanh approximation (its gelu_new): lab.hub sets gelu_tanh.
    x = torch.linspace(-4, 4, 101)
    for activation, approximate in (("gelu", "none"), ("gelu_tanh", "tanh")):
        mlp = GPT(GPTConfig(vocab_size=8, n_layer=1, activation=activation)).transformer.h[0].mlp
        assert torch.equal(mlp.gelu(x), F.gelu(x, approximate=approximate))
    assert GPTConfig().activation == "gelu"  # the default is unchanged
    with pytest.raises(ConfigError, match="model.activation"):
        GPTConfig(vocab_size=8, activation="relu").validate()


def test_gpt_flops_per_token_matches_hand_count():
    model = tiny_gpt(bias=False)  # V=17, T=16, L=2, C=32
    V, T, L, C = 17, 16, 2, 32
    per_block = 2 * C + 3 * C * C + C * C + 4 * C * C + 4 * C * C  # two LayerNorms (no bias) + attn + mlp
    n_non_embedding = V * C + L * per_block + C  # tied wte/lm_head + blocks + ln_f; wpe left out
    assert model.num_params(non_embedding=True) == n_non_embedding
    assert model.num_params() == n_non_embedding + T * C
    assert model.flops_per_token() == 6 * n_non_embedding + 12 * L * C * T


def test_generate_length_and_restores_training_mode():
    model = tiny_gpt().train()
    out = model.generate(torch.zeros((2, 3), dtype=torch.long), max_new_tokens=20)  # runs past block_size
    assert out.shape == (2, 23) and out.dtype == torch.long
    assert ((out >= 0) & (out < 17)).all()
    assert model.training


def test_generate_is_reproducible_with_a_seeded_generator():
    model = tiny_gpt()
    start = torch.zeros((1, 1), dtype=torch.long)
    a = model.generate(start, 30, generator=torch.Generator().manual_seed(7))
    b = model.generate(start, 30, generator=torch.Generator().manual_seed(7))
    c = model.generate(start, 30, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generate_top_k_one_is_greedy():
    model = tiny_gpt().eval()
    start = torch.randint(0, 17, (2, 4))
    out = model.generate(start, 10, top_k=1, generator=torch.Generator().manual_seed(0))
    greedy = start
    for _ in range(10):
        nxt = model(greedy[:, -16:])[:, -1].argmax(-1, keepdim=True)
        greedy = torch.cat((greedy, nxt), dim=1)
    assert torch.equal(out, greedy)
    # top_k larger than the vocabulary is clamped, not an error.
    assert model.generate(start, 2, top_k=1000).shape == (2, 6)


def test_generate_with_kv_cache_is_greedy_identical_to_recomputing_past_block_size():
    # block_size 16, 4 + 30 tokens: the cache fills, then the window is cropped and recomputed.
    model = tiny_gpt().eval()
    start = torch.randint(0, 17, (3, 4), generator=torch.Generator().manual_seed(1))
    cached = model.generate(start, 30, top_k=1)
    plain = model.generate(start, 30, top_k=1, use_cache=False)
    assert cached.shape == (3, 34)
    assert torch.equal(cached, plain)


def test_generate_takes_a_context_longer_than_block_size():
    model = tiny_gpt().eval()
    long = torch.randint(0, 17, (1, 40), generator=torch.Generator().manual_seed(2))  # 2.5 x block_size
    out = model.generate(long, 5, top_k=1)
    assert out.shape == (1, 45) and torch.equal(out[:, :40], long)
    assert torch.equal(out, model.generate(long, 5, top_k=1, use_cache=False))


def test_cached_step_computes_the_last_positions_logits_only():
    model = tiny_gpt().eval()
    idx = torch.randint(0, 17, (2, 7), generator=torch.Generator().manual_seed(3))
    cache = gpt_module.KVCache(model.config.n_layer)
    with torch.no_grad():
        first = model(idx[:, :6], cache=cache)
        step = model(idx[:, 6:], cache=cache)
        full = model(idx)
    assert first.shape == (2, 17) and step.shape == (2, 17)
    torch.testing.assert_close(first, full[:, 5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step, full[:, 6], atol=1e-5, rtol=1e-5)
    assert cache.length == 7


def test_decoder_left_padding_decodes_each_row_as_if_alone():
    model = tiny_gpt().eval()
    short, long = torch.tensor([[3, 5]]), torch.tensor([[1, 2, 4, 6, 8]])
    batch = torch.tensor([[0, 0, 0, 3, 5], [1, 2, 4, 6, 8]])
    mask = torch.tensor([[False, False, False, True, True], [True] * 5])
    dec = gpt_module.Decoder(model, batch, mask)
    alone = [gpt_module.Decoder(model, short), gpt_module.Decoder(model, long)]
    for _ in range(20):  # past block_size: the cropped window keeps the padding rule
        for row, solo in enumerate(alone):
            torch.testing.assert_close(dec.logits[row], solo.logits[0], atol=1e-4, rtol=1e-4)
        nxt = dec.logits.argmax(-1)
        dec.push(nxt)
        for row, solo in enumerate(alone):
            solo.push(nxt[row:row + 1])


def test_decoder_rows_join_mid_run_and_leave_as_if_alone():
    # Continuous batching: a longer row joins a batch that has decoded 2 steps (its keys outnumber the
    # batch's), a left-padded one joins after 6, the first leaves after 9, and the run goes past
    # block_size (16), so the cropped window is recomputed with joined rows too.
    model = tiny_gpt().eval()
    prompts = [torch.tensor([[1, 2, 4]]), torch.tensor([[3, 5, 7, 9, 11, 2, 4]]), torch.tensor([[6]])]
    alone = [gpt_module.Decoder(model, p) for p in prompts]
    dec = gpt_module.Decoder(model, prompts[0])
    rows = [0]  # which prompt each row of dec is
    for step in range(24):
        if step == 2:
            dec.join(gpt_module.Decoder(model, prompts[1]))
            rows += [1]
        if step == 6:
            dec.join(gpt_module.Decoder(model, torch.cat((torch.zeros(1, 6, dtype=torch.long), prompts[2]), 1),
                                        torch.tensor([[False] * 6 + [True]])))
            rows += [2]
        if step == 9:
            dec.keep(torch.tensor([1, 2]))
            rows = rows[1:]
            assert dec.cache.valid.any(0).all()  # the padding only the dropped row needed is gone
        for row, p in enumerate(rows):
            torch.testing.assert_close(dec.logits[row], alone[p].logits[0], atol=1e-4, rtol=1e-4)
        nxt = dec.logits.argmax(-1)
        dec.push(nxt)
        for row, p in enumerate(rows):
            alone[p].push(nxt[row:row + 1])
    assert dec.idx.shape == (2, 7 + 22)  # the longest kept row's context, nothing more


def test_sample_next_top_p_keeps_the_nucleus_and_temperature_zero_is_argmax():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    seen = {int(gpt_module.sample_next(logits, 1.0, top_p=0.7, generator=gen)) for _ in range(200)}
    assert seen == {0, 1}  # 0.5 alone is short of 0.7; 0.5 + 0.3 reaches it
    assert int(gpt_module.sample_next(logits, 0.0)) == 0
    with pytest.raises(ValueError, match="top_p"):
        gpt_module.check_sampling(1.0, None, 1.5)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_generate_refuses_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        tiny_gpt().generate(torch.zeros((1, 1), dtype=torch.long), 5, temperature=temperature)


def test_tiny_gpt_overfits_one_batch():
    model = tiny_gpt(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 32, (4, 17), generator=g)
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_now() -> torch.Tensor:
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    first = loss_now().item()
    for _ in range(100):
        loss = loss_now()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    last = loss_now().item()
    assert last < 0.5 * first, (first, last)


# --- vision and MLP ----------------------------------------------------------------------------

def test_cnn_shape_and_parameter_count():
    model = CNN(CNNConfig())
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    convs = 1 * 16 * 9 + 16 * 32 * 9  # 3x3 convs without bias (BatchNorm follows)
    norms = 2 * 16 + 2 * 32  # BatchNorm weight + bias
    head = (32 * 2 * 2) * 64 + 64 + 64 * 10 + 10  # 8 -> 4 -> 2 pixels after two pools
    assert model.num_params() == convs + norms + head


def test_cnn_accepts_list_and_many_stages():
    cfg = CNNConfig(channels=[8, 8, 8, 8, 8], num_classes=3)
    assert cfg.channels == (8, 8, 8, 8, 8)
    model = CNN(cfg).eval()  # more stages than 8x8 can be halved: pooling stops at 1x1
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_cnn_reads_non_square_inputs_such_as_spectrograms():
    cfg = CNNConfig(channels=(16, 32, 64), image_size=40, image_width=41)
    model = CNN(cfg).eval()
    assert cfg.width == 41 and CNNConfig().width == 8
    assert model(torch.randn(2, 1, 40, 41)).shape == (2, 10)
    assert model.head[1].in_features == 64 * 5 * 5  # 40x41 -> 20x20 -> 10x10 -> 5x5 (floor)
    with pytest.raises(ConfigError, match="model.image_width"):
        CNN(CNNConfig(image_width=0))
    tall = CNN(CNNConfig(channels=(4, 4, 4), image_size=8, image_width=2)).eval()  # pooling stops at 1 px wide
    assert tall.head[1].in_features == 4 * 4 * 1 and tall(torch.randn(1, 1, 8, 2)).shape == (1, 10)


def test_vit_shape_and_parameter_count():
    cfg = ViTConfig()
    model = ViT(cfg)
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    C, n_tokens = 64, (8 // 2) ** 2 + 1
    patch = 1 * C * 2 * 2 + C
    block = 2 * (2 * C) + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    expected = patch + C + n_tokens * C + 2 * block + 2 * C + (C * 10 + 10)  # + cls, pos, ln_f, head
    assert model.num_params() == expected


def test_vit_reuses_gpt_block_without_causal_mask():
    model = ViT(ViTConfig())
    blocks = [m for m in model.modules() if isinstance(m, gpt_module.Block)]
    assert len(blocks) == 2
    assert all(b.attn.is_causal is False for b in blocks)
    # Bidirectional: changing the last patch changes the CLS output (first token).
    model.eval()
    x = torch.randn(1, 1, 8, 8)
    x2 = x.clone()
    x2[..., 6:, 6:] += 1.0
    assert not torch.allclose(model(x), model(x2))


@pytest.mark.parametrize("kw, field", [
    (dict(image_size=8, patch_size=3), "model.patch_size"),
    (dict(n_embd=64, n_head=5), "model.n_embd"),
])
def test_vit_refuses_bad_shapes(kw, field):
    with pytest.raises(ConfigError) as err:
        ViT(ViTConfig(**kw))
    assert err.value.field == field


def test_mlp_default_is_the_seed_example():
    model = MLP(MLPConfig())
    assert model.num_params() == 10 * 20 + 20 + 20 * 1 + 1 == 241
    assert model(torch.randn(4, 10)).shape == (4, 1)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_mlp_activations_and_list_hidden(activation):
    cfg = MLPConfig(in_features=3, hidden=[8, 5], out_features=2, activation=activation)
    assert cfg.hidden == (8, 5)
    model = MLP(cfg)
    assert model(torch.randn(4, 3)).shape == (4, 2)
    assert model.num_params() == (3 * 8 + 8) + (8 * 5 + 5) + (5 * 2 + 2)


def test_mlp_refuses_unknown_activation():
    with pytest.raises(ConfigError) as err:
        MLP(MLPConfig(activation="swish"))
    assert err.value.field == "model.activation"


# --- registry ----------------------------------------------------------------------------------

@pytest.mark.parametrize("config, cls", [
    (GPTConfig(vocab_size=11), GPT), (CNNConfig(), CNN), (ViTConfig(), ViT), (MLPConfig(), MLP),
])
def test_build_model_picks_class_by_name(config, cls):
    model = build_model(config)
    assert type(model) is cls
    assert (FAMILIES[config.name].config, FAMILIES[config.name].model) == (type(config), cls)


def test_build_model_refuses_unknown_name():
    cfg = MLPConfig()
    cfg.name = "resnet"
    with pytest.raises(ConfigError) as err:
        build_model(cfg)
    assert err.value.field == "model.name" and "gpt, cnn, vit, mlp" in str(err.value)


def test_models_do_not_import_lightning():
    code = "import sys, lab.models; sys.exit('lightning' in sys.modules or 'pytorch_lightning' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True).returncode == 0
