"""LightningModules: losses, metrics, optimizer groups, schedule and FLOP counting."""

from __future__ import annotations

import math

import pytest
import torch

from lab.optim import OptimizerConfig
from lab.models.gpt import GPT, GPTConfig
from lab.models.mlp import MLP, MLPConfig
from lab.models.vision import CNN, CNNConfig
from lab.modules import Classifier, LanguageModel, Regressor
from lab.optim import build_optimizer, lr_lambda


def test_schedule_warms_up_then_decays_to_min_ratio() -> None:
    cfg = OptimizerConfig(warmup_steps=10, min_lr_ratio=0.1)
    f = lr_lambda(cfg, max_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)  # half-way through the cosine
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    const = lr_lambda(OptimizerConfig(warmup_steps=0, schedule="constant"), 100)
    assert const(0) == const(99) == 1.0


def test_adamw_decays_matrices_only() -> None:
    model = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=4, bias=True))
    opt = build_optimizer(model, OptimizerConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params()
    sgd = build_optimizer(model, OptimizerConfig(name="sgd", momentum=0.5), torch.device("cpu"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.5


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_frozen_parameters_get_no_gradient_and_no_optimizer_state(name: str) -> None:
    from lab.families import family
    from lab.finetune import FinetuneConfig, apply

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=8, block_size=4, bias=True))
    # LoRA on attention, and a LayerNorm left trainable: a 1-D parameter, so the no-decay group is exercised too.
    apply(model, FinetuneConfig(method="lora", rank=2), family("gpt"))
    model.transformer.ln_f.requires_grad_(True)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    before = [p.detach().clone() for p in frozen]
    opt = build_optimizer(model, OptimizerConfig(name=name, weight_decay=0.1), torch.device("cpu"))
    for _ in range(2):
        x = torch.randint(0, 11, (3, 4))
        LanguageModel.loss(model(x), x).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    handed = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert handed == {id(p) for p in trainable} and frozen  # the optimizer never sees a frozen one
    assert all(p.grad is None for p in frozen) and all(p.grad is not None for p in trainable)
    assert {id(p) for p in opt.state} == {id(p) for p in trainable}  # moments / momentum buffers: trainable only
    assert all(torch.equal(p, b) for p, b in zip(frozen, before))  # weight decay did not touch them either
    if name == "adamw":
        decay, no_decay = opt.param_groups  # LoRA's A and B decay (matrices); the norm does not
        assert {p.dim() for p in decay["params"]} == {2} and {p.dim() for p in no_decay["params"]} == {1}
        lora_only = build_optimizer(apply(GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=4)),
                                          FinetuneConfig(method="lora"), family("gpt")),
                                    OptimizerConfig(), torch.device("cpu"))
        assert len(lora_only.param_groups) == 1  # nothing 1-D trains: no empty group


def test_language_model_initial_loss_near_uniform() -> None:
    torch.manual_seed(0)
    vocab = 50
    module = LanguageModel(GPT(GPTConfig(vocab_size=vocab, n_layer=2, n_head=2, n_embd=16, block_size=8)))
    x = torch.randint(0, vocab, (4, 8))
    loss, _ = module.compute((x, x.roll(-1, 1)), "train")
    assert loss.ndim == 0 and abs(loss.item() - math.log(vocab)) < 0.3
    assert module.units_in((x, x)) == 32
    assert module.flops_per_unit((x, x)) == module.model.flops_per_token()


def test_language_model_perplexity_is_exp_of_token_weighted_mean() -> None:
    module = LanguageModel(GPT(GPTConfig(vocab_size=7, n_layer=1, n_head=1, n_embd=8, block_size=4)))
    module.mean_loss["val_"].update(torch.tensor(1.0), weight=10)
    module.mean_loss["val_"].update(torch.tensor(3.0), weight=30)
    assert module.mean_loss["val_"].compute().item() == pytest.approx(2.5)


def test_sample_decodes_and_is_reproducible() -> None:
    module = LanguageModel(GPT(GPTConfig(vocab_size=5, n_layer=1, n_head=1, n_embd=8, block_size=4)),
                           decode=lambda ids: "".join("abcde"[i] for i in ids))
    a, b = module.sample(20, seed=3), module.sample(20, seed=3)
    assert a == b and len(a) == 21 and set(a) <= set("abcde")


def test_classifier_metrics_and_flops() -> None:
    torch.manual_seed(0)
    module = Classifier(CNN(CNNConfig()), num_classes=10).eval()  # dropout and batch norm off, as in validation
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    loss, metrics = module.compute((x, y), "val")
    assert loss.item() > 0 and set(metrics) == {"accuracy", "macro_f1"}
    acc = module.metrics["val_"]["accuracy"].compute().item()
    pred = module.model(x).argmax(-1)
    assert acc == pytest.approx((pred == y).float().mean().item())
    assert module.flops_per_unit((x, y)) > 0


def test_regressor_metrics_and_exact_flops_of_seed_mlp() -> None:
    module = Regressor(MLP(MLPConfig()))
    x, y = torch.randn(32, 10), torch.randn(32, 1)
    loss, metrics = module.compute((x, y), "test")
    out = module.model(x)
    assert loss.item() == pytest.approx(torch.nn.functional.mse_loss(out, y).item(), rel=1e-5)
    assert set(metrics) == {"mse", "mae", "r2"}
    # forward 2*(10*20 + 20*1); backward: both weight gradients (same again) plus the
    # input gradient of the second layer only (the data needs no gradient): 2*20*1
    assert module.flops_per_unit((x, y)) == 2 * 220 + 2 * 220 + 2 * 20


def test_train_loss_is_logged_at_the_trainers_logging_steps_with_that_steps_value() -> None:
    """``self.log`` is skipped between logging steps (it is costly); what the logger gets must not change."""
    import lightning as L
    from lightning.pytorch.loggers.logger import Logger

    class Memory(Logger):
        name, version = "memory", 0
        experiment = None

        def __init__(self) -> None:
            super().__init__()
            self.points: list[tuple[int, float]] = []

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            if "train/loss" in metrics:
                self.points.append((int(step), float(metrics["train/loss"])))

        def log_hyperparams(self, params: object, *args: object, **kwargs: object) -> None:
            pass

    class Losses(L.Callback):
        def __init__(self) -> None:
            self.by_step: dict[int, float] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            self.by_step[trainer.global_step - 1] = float(outputs["loss"])

    torch.manual_seed(0)
    module = LanguageModel(GPT(GPTConfig(vocab_size=13, n_layer=1, n_head=2, n_embd=8, block_size=6)), max_steps=12)
    data = torch.utils.data.TensorDataset(torch.randint(0, 13, (64, 6)), torch.randint(0, 13, (64, 6)))
    logger, losses = Memory(), Losses()
    trainer = L.Trainer(max_steps=12, log_every_n_steps=5, logger=logger, callbacks=[losses], accelerator="cpu",
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    assert [s for s, _ in logger.points] == [4, 9]  # every 5th step, as Lightning writes them
    for step, value in logger.points:
        assert value == pytest.approx(losses.by_step[step])
    # The last step is logged too, so summary.json's final train/loss is that step's.
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(losses.by_step[11])


def test_sample_starts_from_a_paragraph_prompt_when_it_can_encode_one() -> None:
    from lab.data.tokenizers import CharTokenizer
    from lab.errors import DataError
    from lab.modules import PROMPT

    tok = CharTokenizer("\nThe cat sat. ")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_embd=8, block_size=16))
    module = LanguageModel(model, decode=tok.decode, encode=tok.encode)
    text = module.sample(10, seed=1)
    assert text.startswith(PROMPT) and len(text) == len(PROMPT) + 10
    assert module.sample(5, prompt="cat").startswith("cat")
    with pytest.raises(DataError, match="'z'"):  # a prompt given explicitly must be encodable
        module.sample(5, prompt="zebra")
    with pytest.raises(ValueError, match="empty"):
        module.sample(5, prompt="")
    # A vocabulary without the default prompt's characters starts from token 0, as before.
    digits = CharTokenizer("0123456789")
    plain = LanguageModel(GPT(GPTConfig(vocab_size=10, n_layer=1, n_head=1, n_embd=8, block_size=16)),
                          decode=digits.decode, encode=digits.encode)
    assert plain.sample(5).startswith("0") and len(plain.sample(5)) == 6
    with pytest.raises(ValueError, match="no tokenizer"):
        LanguageModel(model, decode=tok.decode).sample(5, prompt="cat")
