"""``lab.hub``: pretrained GPT-2 weights in (HF folders, Hub ids from the cache, lab runs) and out (``--format hf``).

Every Hugging Face model here is built in the test with ``transformers`` (random weights, a tiny
shape) and every tokenizer is trained in the test: nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers  # a dev dependency: the reference GPT-2
import yaml
from safetensors.torch import load_file, save_file

from lab import hub, runs
from lab.cli import main
from lab.config import load_config
from lab.data.corpus import bundled_corpus
from lab.data.tokenizers import BPETokenizer, CharTokenizer, load_hf_tokenizer, load_tokenizer
from lab.errors import LabError
from lab.models.gpt import GPT
from lab.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64)
LAB_SHAPE = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.bias": True,
             "model.activation": "gelu_tanh"}
FEW_STEPS = {"trainer.max_steps": 3, "trainer.val_check_interval": 3, "trainer.limit_val_batches": 1,
             "trainer.log_every_n_steps": 1, "optimizer.warmup_steps": 1, "data.test_fraction": 0.0}


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    """A small byte-level BPE (GPT-2's kind) trained on part of the bundled corpus."""
    return BPETokenizer.train(bundled_corpus()[:100_000], 300)


def _gpt2(vocab: int, seed: int = 0) -> Any:
    """A tiny GPT-2 whose every tensor is random (biases and LayerNorms too, so each one matters)."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SHAPE, vocab_size=vocab)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def _hf_folder(folder: Path, tok: BPETokenizer, seed: int = 0) -> tuple[Path, Any]:
    model = _gpt2(tok.vocab_size, seed)
    model.save_pretrained(folder)
    tok.save(folder / "tokenizer.json")
    return folder, model


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tok: BPETokenizer) -> tuple[Path, Any]:
    """(an HF folder: config.json, model.safetensors, tokenizer.json; the transformers model in it)."""
    return _hf_folder(tmp_path_factory.mktemp("hf") / "tiny-gpt2", tok)


def _lab(pre: hub.Pretrained, **changes: Any) -> GPT:
    model = GPT(dataclasses.replace(pre.config, **changes)).eval()  # eval: the source's dropout is off
    hub.load_gpt(model, pre)
    return model


def _ids(vocab: int, length: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (3, length), generator=torch.Generator().manual_seed(1))


def _refusal(source: str | Path, **changes: Any) -> str:
    pre = hub.load_pretrained(str(source))
    with pytest.raises(LabError) as e:
        hub.load_gpt(GPT(dataclasses.replace(pre.config, **changes)), pre)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"model.init_from {source}: ")
    return message


# ------------------------------------------------------------------ in: HF folders


def test_hf_folder_gives_the_logits_transformers_gives(folder: tuple[Path, Any], tok: BPETokenizer) -> None:
    path, reference = folder
    pre = hub.load_pretrained(str(path))
    c = pre.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (2, 2, 32, 64, tok.vocab_size)
    assert c.bias is True and c.activation == "gelu_tanh"  # GPT-2's gelu_new
    assert pre.origin == {"kind": "folder", "source": str(path), "path": str(path.resolve()),
                          "weights": "model.safetensors",
                          "sha256": hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()}
    x = _ids(tok.vocab_size)
    with torch.no_grad():
        ours, theirs = _lab(pre)(x), reference(x).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # The exact GELU is measurably different: the activation field is what makes them agree.
    exact = GPT(dataclasses.replace(pre.config, activation="gelu")).eval()
    exact.load_state_dict(_lab(pre).state_dict())
    with torch.no_grad():
        assert (exact(x) - theirs).abs().max() > 1e-4
    text = bundled_corpus()[200_000:201_000]
    assert pre.tokenizer.encode(text) == tok.encode(text)


def test_a_shorter_block_size_takes_the_first_positions(folder: tuple[Path, Any]) -> None:
    path, reference = folder
    pre = hub.load_pretrained(str(path))
    model = _lab(pre, block_size=16)
    assert torch.equal(model.transformer.wpe.weight, pre.state_dict["transformer.wpe.weight"][:16])
    x = _ids(pre.config.vocab_size, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x).logits, atol=1e-5, rtol=0)


def test_pickle_weights_with_legacy_names_and_vocab_merges_load_the_same(
        tmp_path: Path, folder: tuple[Path, Any], tok: BPETokenizer) -> None:
    path, reference = folder
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(path / "config.json", legacy)
    # What OpenAI's gpt2 pytorch_model.bin holds: GPT2Model names (no "transformer."), the causal-mask
    # buffers, and no lm_head (tied).
    state = {k.removeprefix("transformer."): v for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    for i in range(SHAPE["n_layer"]):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64, dtype=torch.bool))
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, legacy / "pytorch_model.bin")
    tok.hf.model.save(str(legacy))  # vocab.json + merges.txt, no tokenizer.json
    assert sorted(p.name for p in legacy.iterdir()) == ["config.json", "merges.txt", "pytorch_model.bin", "vocab.json"]
    pre, safe = hub.load_pretrained(str(legacy)), hub.read_hf_folder(path)
    assert pre.origin["weights"] == "pytorch_model.bin"
    assert pre.state_dict.keys() == safe.state_dict.keys()
    assert all(torch.equal(pre.state_dict[k], safe.state_dict[k]) for k in safe.state_dict)
    text = bundled_corpus()[300_000:302_000] + " <|endoftext|> naïve café"
    assert pre.tokenizer.encode(text) == tok.encode(text)
    assert pre.tokenizer.decode(pre.tokenizer.encode(text)) == text


def test_pickle_weights_that_would_run_code_are_refused(tmp_path: Path, folder: tuple[Path, Any]) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> Any:
            return os.system, (f"touch {marker}",)

    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder[0] / "config.json", bad)
    torch.save({"transformer.wte.weight": Payload()}, bad / "pytorch_model.bin")
    with pytest.raises(LabError) as e:
        hub.load_pretrained(str(bad))
    assert "\n" not in str(e.value) and "refused" in str(e.value) and "system" in str(e.value)
    assert not marker.exists()


def test_mismatches_are_refused_in_one_line_naming_the_tensor_and_both_shapes(
        tmp_path: Path, folder: tuple[Path, Any]) -> None:
    path, _ = folder
    v = hub.load_pretrained(str(path)).config.vocab_size
    msg = _refusal(path, vocab_size=65)
    assert f"transformer.wte.weight is [{v}, 32] there but [65, 32] in this config" in msg
    assert "vocab_size" in msg and "n_embd 32" in msg  # what to do: the source's shape
    assert f"transformer.wte.weight is [{v}, 32] there but [{v}, 64] in this config" in _refusal(path, n_embd=64)
    assert "transformer.wpe.weight is [64, 32] there but [128, 32]" in _refusal(path, block_size=128)
    assert "transformer.h.2.ln_1.weight is missing there (this config needs [32])" in _refusal(path, n_layer=3)
    assert "transformer.h.1.attn.c_attn.bias is there ([96]) but not in this config" in _refusal(path, n_layer=1)
    assert "transformer.h.0.attn.c_attn.bias is there ([96]) but not in this config" in _refusal(path, bias=False)
    assert "model.n_head is 2 there but 4 in this config" in _refusal(path, n_head=4)
    assert "model.activation is 'gelu_tanh' there but 'gelu' in this config" in _refusal(path, activation="gelu")
    # A damaged folder: its config says two blocks, its weights file lacks a tensor of one.
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    assert "transformer.h.1.mlp.c_fc.weight is missing there (this config needs [128, 32])" in _refusal(broken)


def test_folders_the_lab_cannot_read_are_refused_in_one_line(tmp_path: Path, folder: tuple[Path, Any]) -> None:
    config = json.loads((folder[0] / "config.json").read_text())
    cases = {"llama": ({**config, "model_type": "llama"}, "model_type 'llama'"),
             "relu": ({**config, "activation_function": "relu"}, "activation_function='relu'"),
             "untied": ({**config, "tie_word_embeddings": False}, "tie_word_embeddings=False")}
    for name, (cfg, expected) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        shutil.copy(folder[0] / "model.safetensors", tmp_path / name)
        with pytest.raises(LabError, match=expected):
            hub.load_pretrained(str(tmp_path / name))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LabError, match="no model.safetensors or pytorch_model.bin"):
        hub.load_pretrained(str(tmp_path / "empty"))
    with pytest.raises(LabError, match="neither config.json"):
        hub.load_pretrained(str(tmp_path))
    with pytest.raises(LabError, match="not a lab run .* and not a Hub id"):
        hub.load_pretrained("no/such/thing", runs_root=tmp_path)


# ------------------------------------------------------------------ in: Hub ids, from the HF cache, offline


def test_a_hub_id_resolves_offline_from_the_local_cache(tmp_path: Path, folder: tuple[Path, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--lab-tests--tiny-gpt2"
    shutil.copytree(folder[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    # huggingface_hub reads these at import; the CLI's subprocesses would take HF_HUB_CACHE/HF_HUB_OFFLINE.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pre = hub.load_pretrained("lab-tests/tiny-gpt2", runs_root=tmp_path / "runs")
    assert pre.origin == {"kind": "hub", "source": "lab-tests/tiny-gpt2", "repo_id": "lab-tests/tiny-gpt2",
                          "commit": commit}
    local = hub.read_hf_folder(folder[0])
    assert all(torch.equal(pre.state_dict[k], t) for k, t in local.state_dict.items())
    assert hub.tokenizer_of("lab-tests/tiny-gpt2").to_json() == local.tokenizer.to_json()
    # What `lab fit --model.init_from lab-tests/tiny-gpt2` resolves before reading any data.
    model_cfg = hub.resolve(load_config("gpt-nano", {**LAB_SHAPE, "model.init_from": "lab-tests/tiny-gpt2"}))
    assert model_cfg.init_from == "lab-tests/tiny-gpt2" and model_cfg.vocab_size == local.config.vocab_size
    assert hub.lineage("lab-tests/tiny-gpt2") == pre.origin
    with pytest.raises(LabError) as e:
        hub.load_pretrained("lab-tests/not-cached", runs_root=tmp_path / "runs")
    assert "\n" not in str(e.value) and "not in the Hugging Face cache" in str(e.value)
    assert str(tmp_path / "hub") in str(e.value)


# ------------------------------------------------------------------ out: --format hf, and back in


def test_hf_to_lab_to_hf_is_bitwise_the_same_folder(tmp_path: Path, folder: tuple[Path, Any]) -> None:
    path, _ = folder
    pre = hub.load_pretrained(str(path))
    hub.save_hf(_lab(pre), pre.tokenizer, tmp_path / "out")
    before, after = load_file(path / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert (tmp_path / "out" / "tokenizer.json").read_text() == (path / "tokenizer.json").read_text()
    again = hub.read_hf_folder(tmp_path / "out")
    assert again.config == pre.config
    assert all(torch.equal(again.state_dict[k], t) for k, t in pre.state_dict.items())


def test_a_bias_free_exact_gelu_lab_gpt_exports_for_transformers(tmp_path: Path, tok: BPETokenizer) -> None:
    torch.manual_seed(3)
    model = GPT(load_config("gpt-nano", {"model.vocab_size": tok.vocab_size, "model.n_layer": 2,
                                         "model.n_embd": 32, "model.n_head": 2}).model).eval()
    assert model.config.bias is False and model.config.activation == "gelu"  # the lab's defaults
    hub.save_hf(model, tok, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == "gelu" and config["n_positions"] == 64
    tensors = load_file(tmp_path / "model.safetensors")
    assert torch.equal(tensors["transformer.h.0.mlp.c_fc.bias"], torch.zeros(128))  # GPT-2 always has biases
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = _ids(tok.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=0)
    back = hub.read_hf_folder(tmp_path)
    assert back.config.bias is True and back.config.activation == "gelu"  # a GPT-2 folder always has biases
    for name, t in model.state_dict().items():
        assert torch.equal(back.state_dict[name], t)


# ------------------------------------------------------------------ lab runs as sources, and training from any source


def test_a_lab_run_is_a_source_by_name_folder_or_checkpoint(tiny_gpt_run: runs.Run) -> None:
    from lab.checkpoints import load_checkpoint

    root = tiny_gpt_run.path.parent.parent
    best = load_checkpoint(tiny_gpt_run.checkpoint("best"))["state_dict"]
    for source in (tiny_gpt_run.name, str(tiny_gpt_run.path), str(tiny_gpt_run.checkpoint("best"))):
        pre = hub.load_pretrained(source, runs_root=root)
        assert pre.origin == {"kind": "run", "source": source, "run": tiny_gpt_run.name, "checkpoint": "best.ckpt",
                              "path": str(tiny_gpt_run.checkpoint("best").resolve())}
        assert dataclasses.asdict(pre.config) == {**tiny_gpt_run.config["model"], "init_from": None}
        assert pre.state_dict.keys() == {k.removeprefix("model.") for k in best}
        assert all(torch.equal(pre.state_dict[k.removeprefix("model.")], t) for k, t in best.items())
        assert isinstance(pre.tokenizer, CharTokenizer)
        assert pre.tokenizer.to_json() == load_tokenizer(tiny_gpt_run.tokenizer_path).to_json()
    assert hub.tokenizer_of(tiny_gpt_run.name, root).to_json() == pre.tokenizer.to_json()


def test_a_distilled_student_starts_from_random_weights_not_the_teachers_source() -> None:
    from lab.compress.distill import derive_student

    teacher = load_config("gpt2-124m", {"model.init_from": "gpt2"}).model
    overrides = derive_student(teacher)
    assert overrides["init_from"] is None and overrides["n_layer"] == 6  # its shape is not the source's
    assert "init_from" not in derive_student(load_config("gpt2-124m").model)


def test_a_family_without_a_pretrained_hook_is_refused() -> None:
    from types import SimpleNamespace

    cfg = SimpleNamespace(model=SimpleNamespace(name="cnn", init_from="gpt2"))
    with pytest.raises(LabError, match="cnn models cannot start from pretrained weights"):
        hub.initialize(torch.nn.Linear(1, 1), cfg)


@pytest.mark.slow
def test_fit_from_a_run_records_its_lineage(tiny_gpt_run: runs.Run) -> None:
    root = tiny_gpt_run.path.parent.parent
    shape = {f"model.{k}": v for k, v in tiny_gpt_run.config["model"].items() if k != "vocab_size"}
    run = fit(load_config("gpt-nano", {**shape, **FEW_STEPS, "model.init_from": tiny_gpt_run.name}),
              runs_root=root, progress=False)
    assert run.status == "completed"
    assert run.summary["lineage"] == {"kind": "run", "source": tiny_gpt_run.name, "run": tiny_gpt_run.name,
                                      "checkpoint": "best.ckpt",
                                      "path": str(tiny_gpt_run.checkpoint("best").resolve())}
    assert run.config["model"]["init_from"] == str(tiny_gpt_run.path.resolve())  # pinned: needs no runs root
    assert run.tokenizer_path.read_text() == tiny_gpt_run.tokenizer_path.read_text()  # its tokenizer is the run's


@pytest.mark.slow
def test_cli_fit_from_an_hf_folder_trains_from_its_weights(tmp_path: Path, folder: tuple[Path, Any],
                                                          capsys: pytest.CaptureFixture) -> None:
    from lab.checkpoints import load_checkpoint

    path, _ = folder
    overrides = {**LAB_SHAPE, **FEW_STEPS, "model.block_size": 32, "optimizer.lr": 1e-9}
    args = [a for k, v in overrides.items() for a in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))]
    assert main(["fit", "--config", "gpt-nano", "--runs_dir", str(tmp_path), "--model.init_from", str(path),
                 *args]) == 0
    run = runs.resolve_run("last", tmp_path)
    lineage = run.summary["lineage"]
    assert lineage["kind"] == "folder" and lineage["path"] == str(path.resolve())
    assert lineage["sha256"] == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert run.config["model"]["vocab_size"] == 300  # null in gpt-nano: taken from the source
    assert json.loads(run.tokenizer_path.read_text()) == json.loads((path / "tokenizer.json").read_text())
    # At lr 1e-9 three steps move no weight by 1e-6: what trained was the source's weights.
    state = load_checkpoint(run.checkpoint("last"))["state_dict"]
    pre = hub.read_hf_folder(path)
    for name, t in pre.state_dict.items():
        want = t[:32] if name == "transformer.wpe.weight" else t
        torch.testing.assert_close(state[f"model.{name}"], want, atol=1e-6, rtol=0)


def test_cli_refuses_a_source_of_another_shape_before_any_work(tmp_path: Path, folder: tuple[Path, Any],
                                                               capsys: pytest.CaptureFixture) -> None:
    assert main(["fit", "--runs_dir", str(tmp_path / "runs"), "--model.init_from", str(folder[0])]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "transformer.wte.weight is [300, 32] there but [300, 128] in this config" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_export_hf_of_a_run_loads_in_transformers_and_back_into_the_lab(tiny_gpt_run: runs.Run) -> None:
    from lab.evaluate import load_checked

    root = tiny_gpt_run.path.parent.parent
    assert main(["export", tiny_gpt_run.name, "--format", "hf", "--runs_dir", str(root)]) == 0
    out = tiny_gpt_run.export_dir("hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "config.yaml", "README.md"} == \
        {p.name for p in out.iterdir()}
    model = load_checked(tiny_gpt_run).model.eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = _ids(model.config.vocab_size, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=0)
    # The char tokenizer is written as an HF tokenizer, and read back as the same CharTokenizer.
    chars = load_tokenizer(tiny_gpt_run.tokenizer_path)
    text = bundled_corpus()[:2000]
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids == chars.encode(text)
    assert load_hf_tokenizer(out).to_json() == chars.to_json()
    assert "character-level" in (out / "README.md").read_text()
    # init_from the exported folder: the same weights, bitwise (plus the zero biases GPT-2 carries).
    pre = hub.load_pretrained(str(out))
    for name, t in model.state_dict().items():
        assert torch.equal(pre.state_dict[name], t)
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["vocab_size"] == model.config.vocab_size
