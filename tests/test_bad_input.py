"""The bad-input suite: every refusal is clean, explains itself and changes nothing.

Each case drives the CLI (in-process, through ``lab.cli.main``) with one bad input and
asserts: exit code 2 (or the command's documented code), exactly one ``error:`` line on
stderr that names the problem and says what to do, no traceback, and a runs folder whose
content hash is the same before and after. The dashboard's inputs (run names from the URL,
an edited config, job ids, chart settings) go through ``lab.dashboard_data`` and
``lab.jobs``: each must raise one one-line ``LabError`` the page shows, with the same checks.
Cases that would train are refused before training, so the whole suite takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from lab import dashboard_data, jobs, runs
from lab.checkpoints import load_checkpoint
from lab.cli import main
from lab.config import load_config
from lab.data.tokenizers import train_tokenizer
from lab.errors import LabError
from lab.train import fit


def tree_hash(root: Path) -> str:
    """SHA-256 over every path, file content and link target under ``root``."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            h.update(os.readlink(path).encode())
        elif path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lab-bad-input-pwned",))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A runs root with a real language-model run and a regression run, plus bad files beside it."""
    base = tmp_path_factory.mktemp("bad-input")
    root = base / "runs"
    tiny = {"trainer.max_steps": 8, "trainer.val_check_interval": 4, "model.n_layer": 1, "model.n_embd": 32,
            "model.n_head": 2, "model.block_size": 32}
    gpt = fit(load_config("gpt-nano", tiny), runs_root=root, progress=False, test=False)
    mlp = fit(load_config("seed-mlp", {"trainer.max_steps": 8}), runs_root=root, progress=False, test=False)
    # A copy of the GPT run whose tokenizer does not match its checkpoint (another vocabulary).
    mismatch = root / "mismatch" / gpt.run_id
    shutil.copytree(gpt.path, mismatch)
    train_tokenizer("bpe", "a different corpus, another vocabulary " * 200, 300).save(mismatch / "tokenizer.json")

    files = base / "files"
    files.mkdir()
    (files / "empty.txt").write_text("")
    (files / "binary.bin").write_bytes(bytes(range(256)) * 64)
    (files / "latin1.txt").write_bytes("café crème brûlée, à la française. ".encode("latin-1") * 100)
    (files / "short.txt").write_text("too short for a block")
    (files / "unknown_key.yaml").write_text("model:\n  name: gpt\n  n_layers: 4\n")
    (files / "malformed.yaml").write_text("model: {name: gpt\ntrainer: [1, 2\n")
    (files / "python_tag.yaml").write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    (files / "a_file").write_text("not a folder")
    whole = ("All the world's a stage, and all the men and women merely players. " * 400).encode()
    (files / "whole.txt").write_bytes(whole)
    (files / "partial.txt").write_bytes(whole[: len(whole) // 2])  # what an interrupted download leaves
    ckpt = gpt.checkpoint("best").read_bytes()
    (files / "truncated.ckpt").write_bytes(ckpt[: len(ckpt) // 3])
    with open(files / "malicious.ckpt", "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    (files / "empty.ckpt").write_bytes(b"")
    (files / "empty.yaml").write_text("")
    (files / "comments.yaml").write_text("# only a comment: as empty as an empty file\n")
    (files / "list.yaml").write_text("- model\n- data\n")
    # Search spaces for `lab sweep` (issue 25): one good, and one of each kind of mistake.
    (files / "space.yaml").write_text("optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    (files / "space_unknown.yaml").write_text("optimizer.lrr: {low: 1.0e-4, high: 1.0e-2}\n")
    (files / "space_empty_range.yaml").write_text("optimizer.lr: {low: 1.0e-2, high: 1.0e-4}\n")
    (files / "space_wrong_type.yaml").write_text("model.n_layer: {low: 1.5, high: 4}\n")
    (files / "space_refused.yaml").write_text("optimizer.lr: {low: -1, high: 1.0e-2}\n")
    (files / "space_choice.yaml").write_text("optimizer.schedule: [cosine, linear]\n")
    (files / "space_family.yaml").write_text("model.name: [gpt, cnn]\n")
    (files / "export-here").mkdir()
    (files / "export-here" / "notes.txt").write_text("a user's own folder: never replaced by an export")
    _speech_folders(files)
    # A copy of the GPT run that was interrupted (so it may be resumed), under another experiment.
    paused = root / "paused" / gpt.run_id
    shutil.copytree(gpt.path, paused)
    summary = json.loads((paused / "summary.json").read_text())
    (paused / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    return {"root": str(root), "files": str(files), "gpt": f"{gpt.experiment}/{gpt.run_id}",
            "mlp": f"{mlp.experiment}/{mlp.run_id}", "mismatch": f"mismatch/{gpt.run_id}",
            "paused": f"paused/{gpt.run_id}", "sha_whole": hashlib.sha256(whole).hexdigest()}


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")

# (command line with {placeholders}, words the message must contain[, exit code when not 2])
CASES: list[Any] = [
    # fit: config values
    ("fit --optimizer.lr -1", "optimizer.lr"),
    ("fit --optimizer.lr abc", "optimizer.lr"),
    ("fit --data.batch_size 0", "data.batch_size"),
    ("fit --trainer.max_steps 2.5", "trainer.max_steps"),
    ("fit --model.n_embd 30 --model.n_head 4", "n_embd"),
    ("fit --config no-such-preset", "no-such-preset"),
    ("fit --trainer.strategy warp_drive", "trainer.strategy"),
    ("fit --trainer.precision 7-bit", "trainer.precision"),
    ("fit --optimizer.name adamax", "optimizer.name"),
    ("fit --data.val_fraction 1.5", "data.val_fraction"),
    ("fit --data.test_fraction -0.1", "data.test_fraction"),
    ("fit --model.n_layers 3", "n_layers"),
    ("fit --trainer.max_steps", "trainer.max_steps"),
    ("fit --trainer.max_steps 99999999999999999999999", "trainer.max_steps"),  # too large for any integer
    ("fit --trainer.max_steps 999999999999", "trainer.max_steps"),  # fits 64 bits, not the RAM its data needs
    ("fit --optimizer.lr inf", "optimizer.lr"),
    ("fit --optimizer.lr nan", "optimizer.lr"),
    ("fit --optimizer.weight_decay -inf", "optimizer.weight_decay"),
    ("fit --trainer.gradient_clip_val inf", "trainer.gradient_clip_val"),
    ("fit --optimizer.betas [0.9]", "optimizer.betas"),
    ("fit --optimizer.schedule linear", "optimizer.schedule"),
    ("fit --seed -1", "seed"),
    ("fit --seed 99999999999", "seed"),
    ("fit --experiment ../escape", "experiment"),
    ("fit --trainer.devices 0", "trainer.devices"),
    ("fit --trainer.accumulate_grad_batches 0", "trainer.accumulate_grad_batches"),
    ("fit --trainer.collective_timeout_s 99999999999999999", "trainer.collective_timeout_s"),
    ("fit --trainer.val_check_interval 0", "trainer.val_check_interval"),
    ("fit --trainer.deterministic maybe", "trainer.deterministic"),
    ("fit --model.dropout 1", "model.dropout"),
    ("fit --model.name transformer", "model.name"),
    ("fit --data.name digits", "data.name"),
    ("fit --data.tokenizer wordpiece", "data.tokenizer"),
    ("fit --data.num_workers -1", "data.num_workers"),
    ("fit --config seed-mlp --model.in_features 7", "model.in_features"),
    ("fit --config digits-cnn --trainer.activation_checkpointing true", "activation_checkpointing"),
    ("fit --trainer.strategy fsdp --trainer.accelerator cpu", "fsdp"),
    ("fit --trainer.accelerator tpu", "trainer.accelerator"),
    pytest.param("fit --trainer.accelerator gpu", "trainer.accelerator gpu", marks=NO_GPU),
    ("fit --trainer.accelerator mps", "mps"),
    ("fit --trainer.accelerator gpu --trainer.devices 64", "gpu"),  # no GPU here, or fewer than 64
    # fit: what only the data or the machine can tell (refused before the run folder is made)
    ("fit --model.n_layer 48 --model.n_embd 16384 --model.n_head 64", "memory"),  # ~2,300 GiB to train
    ("fit --config seed-mlp --data.batch_size 100000", "data.batch_size"),
    ("fit --config digits-cnn --data.batch_size 5000", "data.batch_size"),
    # fit: data files
    ("fit --data.path {files}/missing.txt", "missing.txt"),
    ("fit --data.path {files}/empty.txt", "empty"),
    ("fit --data.path {files}/binary.bin", "UTF-8"),
    ("fit --data.path {files}/latin1.txt", "UTF-8"),
    ("fit --data.path {files}/short.txt --model.block_size 64", "block_size"),
    ("fit --data.url file://{files}/partial.txt --data.sha256 {sha_whole}", "checksum mismatch"),
    ("fit --data.url file://{files}/whole.txt", "data.sha256"),
    # fit: config files and folders
    ("fit --config {files}/unknown_key.yaml", "n_layers"),
    ("fit --config {files}/malformed.yaml", "YAML"),
    ("fit --config {files}/python_tag.yaml", "python"),
    ("fit --config {files}/missing.yaml", "missing.yaml"),
    ("fit --config {files}", "is a folder"),
    ("fit --config {files}/empty.yaml", "is empty"),
    ("fit --config {files}/comments.yaml", "is empty"),
    ("fit --config {files}/list.yaml", "mapping"),
    ("fit --trainer.max_steps 5 --runs_dir {files}/a_file", "a_file"),
    ("fit --trainer.max_steps 5 --runs_dir /proc/lab-runs", "/proc"),  # no space, not writable (even as root)
    ("fit --trainer.max_steps 5 --runs_dir {files}/a_file/runs", "a_file"),
    ("fit --resume no-such-run --runs_dir {root}", "no-such-run"),
    # fit --resume
    ("fit --resume {gpt} --runs_dir {root}", "already completed"),
    ("fit --resume {paused} --config seed-mlp --runs_dir {root}", "--config"),
    ("fit --resume {paused} --model.n_embd 64 --runs_dir {root}", "wte.weight is"),  # the tensor and both shapes
    ("fit --resume {paused} --model.n_layer 2 --runs_dir {root}", "cannot resume"),
    ("fit --resume last --config seed-mlp --seed -3 --runs_dir {root}", "seed"),
    ("fit --resume ../outside --runs_dir {root}", "outside the runs root"),
    # quickstart: refused before it trains
    ("quickstart --tokens 0", "--tokens"),
    ("quickstart --optimizer.lr 0", "optimizer.lr"),
    ("quickstart --model.n_head 5", "n_embd"),
    ("quickstart --tokens many", "--tokens"),
    ("quickstart --trainer.max_steps 5 --runs_dir {files}/a_file", "a_file"),
    # runs
    ("runs --runs_dir {files}/a_file", "a_file"),
    ("runs --runs_dir {files}/a_file/runs", "a_file"),
    ("runs --status completed", "--status"),
    # evaluate
    ("evaluate no-such-run --runs_dir {root}", "no-such-run"),
    ("evaluate ../outside --runs_dir {root}", "outside the runs root"),
    ("evaluate {gpt} --ckpt {files}/truncated.ckpt --runs_dir {root}", "truncated.ckpt"),
    ("evaluate {gpt} --ckpt {files}/malicious.ckpt --runs_dir {root}", "malicious.ckpt"),
    ("evaluate {gpt} --ckpt {files}/missing.ckpt --runs_dir {root}", "missing.ckpt"),
    ("evaluate {gpt} --split train --runs_dir {root}", "split"),
    ("evaluate {gpt} --ckpt {files}/empty.ckpt --runs_dir {root}", "empty"),
    ("evaluate {gpt} --threads -1 --runs_dir {root}", "threads"),
    ("evaluate {gpt} --threads 0 --runs_dir {root}", "threads"),
    ("evaluate {gpt} --repeats 0 --runs_dir {root}", "repeats"),
    ("evaluate {gpt} --max_batches 0 --runs_dir {root}", "max_batches"),
    ("evaluate {gpt} --max_batches some --runs_dir {root}", "max_batches"),
    ("evaluate {gpt} --runs_dir {files}/a_file", "a_file"),
    ("evaluate %2e%2e/etc --runs_dir {root}", "URL-encoded"),
    # compress
    ("compress {gpt} --method zip --runs_dir {root}", "zip"),
    ("compress {gpt} --method prune --sparsity 1.5 --runs_dir {root}", "sparsity"),
    ("compress %2e%2e/x --method int8-dynamic --runs_dir {root}", "URL-encoded"),
    ("compress {gpt} --method prune --sparsity nan --runs_dir {root}", "sparsity"),
    ("compress {gpt} --method prune --steps -1 --runs_dir {root}", "steps"),
    ("compress {gpt} --method distill --opt temperature=0 --runs_dir {root}", "temperature"),
    ("compress {gpt} --method int8-dynamic --opt bogus=1 --runs_dir {root}", "bogus"),
    ("compress {gpt} --method int8-dynamic --opt noequals --runs_dir {root}", "KEY=VALUE"),
    ("compress {gpt} --method int8-static --opt calibration_batches=0 --runs_dir {root}", "calibration_batches"),
    ("compress {gpt} --method int8-dynamic --threads -2 --runs_dir {root}", "threads"),
    ("compress {gpt} --method int8-dynamic --ckpt {files}/empty.ckpt --runs_dir {root}", "empty"),
    ("compress {gpt} --runs_dir {root}", "--method"),
    # sample
    ("sample {mlp} --runs_dir {root}", "language model"),
    ("sample {gpt} --temperature 0 --runs_dir {root}", "temperature"),
    ("sample {gpt} --tokens -5 --runs_dir {root}", "tokens"),
    ("sample {mismatch} --runs_dir {root}", "tokenizer"),
    ("sample /etc --runs_dir {root}", "outside the runs root"),
    ("sample {gpt} --top_k 0 --runs_dir {root}", "top_k"),
    ("sample {gpt} --temperature nan --runs_dir {root}", "temperature"),
    ("sample {gpt} --temperature inf --runs_dir {root}", "temperature"),
    ("sample {gpt} --seed -1 --runs_dir {root}", "seed"),
    ("sample {gpt} --tokens two --runs_dir {root}", "--tokens"),
    ("sample {gpt} --ckpt {files}/empty.ckpt --runs_dir {root}", "empty"),
    ("sample {gpt} --ckpt {files}/malicious.ckpt --runs_dir {root}", "malicious.ckpt"),
    ("sample {gpt} --ckpt middle --runs_dir {root}", "middle"),
    ("sample --runs_dir {root}", "run"),
    # export
    ("export {gpt} --format pickle --runs_dir {root}", "pickle"),
    ("export {gpt} --runs_dir {root}", "--format"),
    ("export no-such-run --format onnx --runs_dir {root}", "no-such-run"),
    ("export {gpt} --format onnx --ckpt {files}/truncated.ckpt --runs_dir {root}", "truncated.ckpt"),
    ("export {gpt} --format safetensors --ckpt {files}/malicious.ckpt --runs_dir {root}", "malicious.ckpt"),
    ("export {gpt} --format onnx --out {files}/export-here --runs_dir {root}", "export-here"),
    ("export {gpt} --format onnx --out {files}/a_file/model --runs_dir {root}", "a_file"),
    # plan
    ("plan --precision fp8", "precision"),
    ("plan --micro_batch 0", "micro_batch"),
    ("plan --nodes -1", "nodes"),
    ("plan --tokens 12q", "12q"),
    ("plan --device TPUv9", "TPUv9"),
    ("plan --config no-such-preset", "no-such-preset"),
    ("plan --config {files}", "is a folder"),
    ("plan --config {files}/empty.yaml", "is empty"),
    ("plan --mfu 0", "mfu"),
    ("plan --mfu nan", "mfu"),
    ("plan --devices 0", "devices"),
    ("plan --accumulate 0", "accumulate"),
    ("plan --seq_len 0", "seq_len"),
    ("plan --config seed-mlp --seq_len 64", "seq_len"),
    ("plan --host_memory lots", "host_memory"),
    ("plan --tokens inf", "tokens"),
    ("plan --strategy single --devices 4", "strategy"),
    ("plan --optimizer lion", "optimizer"),
    ("plan --optimizer.lr inf", "optimizer.lr"),
    # launch
    ("launch --nodes 0 --gpus-per-node 2 -- lab fit", "--nodes"),
    ("launch --nodes 2 --gpus-per-node 2 -- lab evaluate x", "training command"),
    ("launch --nodes 2 --gpus-per-node two -- lab fit", "gpus"),
    ("launch --nodes 2 --gpus-per-node 2 --slurm --time forever -- lab fit", "forever"),
    ("launch --nodes 1 --gpus-per-node 2", "training command"),
    ("launch --nodes 2 --gpus-per-node 2 --master-port 99999 -- lab fit", "--master-port"),
    ("launch --nodes 2 --gpus-per-node 2 --slurm --cpus-per-task 0 -- lab fit", "--cpus-per-task"),
    ("launch --nodes 2 --gpus-per-node 2 --slurm --job-name a;b -- lab fit", "job name"),
    ("launch --nodes 2 --gpus-per-node 2 -- lab fit --trainer.num_nodes 3", "num_nodes"),
    ("launch --nodes 2 --gpus-per-node 2 --out {files} -- lab fit", "is a folder"),
    ("launch --nodes 2 --gpus-per-node 2 --out {files}/a_file/launch.sh -- lab fit", "a_file"),
    # explain (issue 23): refused before anything is explained or written
    ("explain {gpt} --input 99999 --runs_dir {root}", "give an index from 0 to"),
    ("explain {gpt} --input " + "e" * 40 + " --runs_dir {root}", "40 tokens long"),  # the model reads 32
    ("explain {mlp} --input seven --runs_dir {root}", "test-sample index"),
    ("explain {mlp} --input -1 --runs_dir {root}", "index >= 0"),
    ("explain {gpt} --method saliency --runs_dir {root}", "supports integrated_gradients"),
    ("explain {gpt} --compressed onnx --runs_dir {root}", "--compressed onnx"),
    ("explain {gpt} --compressed int8-dynamic --runs_dir {root}", "no int8-dynamic artifact"),
    ("explain no-such-run --runs_dir {root}", "no-such-run"),
    # doctor
    ("doctor --runs_dir {files}/a_file", "a_file", 1),  # documented: a failed check, shown in its report
    ("doctor --frobnicate", "--frobnicate"),
    ("doctor --json extra", "extra"),
    # dashboard (the server's own flags; what the pages take is below)
    ("dashboard --runs_dir {files}/a_file", "a_file"),
    ("dashboard --port http", "--port"),
    # no such command
    ("train --config gpt-nano", "train"),
    # sweep (issue 25): the space, the options and the config, refused before any trial
    ("sweep --space {files}/space_unknown.yaml", "optimizer.lrr"),
    ("sweep --space {files}/space_empty_range.yaml", "low < high"),
    ("sweep --space {files}/space_wrong_type.yaml", "whole number"),
    ("sweep --space {files}/space_refused.yaml", "optimizer.lr"),
    ("sweep --space {files}/space_choice.yaml", "optimizer.schedule"),
    ("sweep --space {files}/space_family.yaml", "model.name"),
    ("sweep --space {files}/missing.yaml", "missing.yaml"),
    ("sweep --space {files}/empty.yaml", "is empty"),
    ("sweep --space {files}/malformed.yaml", "YAML"),
    ("sweep --space {files}/python_tag.yaml", "python"),
    ("sweep --space {files}/list.yaml", "mapping"),
    ("sweep --space {files}", "is a folder"),
    ("sweep --trials 3", "--space"),
    ("sweep --space {files}/space.yaml --trials 0", "--trials"),
    ("sweep --space {files}/space.yaml --trials many", "--trials"),
    ("sweep --space {files}/space.yaml --jobs 0", "--jobs"),
    ("sweep --space {files}/space.yaml --sampler grid", "--sampler"),
    ("sweep --space {files}/space.yaml --pruner hyperband", "--pruner"),
    ("sweep --space {files}/space.yaml --name ../escape", "sweep name"),
    ("sweep --space {files}/space.yaml --storage nonsense", "--storage"),
    ("sweep --space {files}/space.yaml --storage sqlite:///{files}/a_file/study.db", "storage"),
    ("sweep --space {files}/space.yaml --trainer.devices 2 --trainer.accelerator cpu", "one device"),
    ("sweep --space {files}/space.yaml --trainer.max_steps 10", "val_check_interval"),
    ("sweep --space {files}/space.yaml --optimizer.lr -1", "optimizer.lr"),
    ("sweep --space {files}/space.yaml --config no-such-preset", "no-such-preset"),
    ("sweep --space {files}/space.yaml --runs_dir {files}/a_file", "a_file"),
]




def _speech_folders(files: Path) -> None:
    """Folders of WAV files per label, each with one thing wrong (for the speech cases below)."""
    import struct

    from lab.data.audio import wav_bytes

    good = wav_bytes([0.1, -0.1] * 2000, 8000)
    for name in ("speech-not-audio", "speech-rate-0", "speech-empty-label"):
        for label in ("yes", "no"):
            (files / name / label).mkdir(parents=True)
            (files / name / label / "spk1_nohash_0.wav").write_bytes(good)
    (files / "speech-not-audio" / "yes" / "spk2_nohash_0.wav").write_text("a text file saved as .wav")
    header = bytearray(good)
    header[24:28] = struct.pack("<I", 0)  # the fmt chunk's sample rate
    (files / "speech-rate-0" / "no" / "spk2_nohash_0.wav").write_bytes(bytes(header))
    (files / "speech-empty-label" / "maybe").mkdir()


CASES += [
    # speech: the audio folder and its settings (refused before any feature is cached or run made)
    ("fit --config speech-cnn --data.path {files}/speech-not-audio", "not a PCM WAV"),
    ("fit --config speech-cnn --data.path {files}/speech-rate-0", "sample rate is 0"),
    ("fit --config speech-cnn --data.path {files}/speech-empty-label", "maybe holds no .wav files"),
    ("fit --config speech-cnn --data.path {files}/missing-folder", "data.path"),
    ("fit --config speech-cnn --data.n_mels 32", "model.image_size"),
    ("fit --config speech-cnn --data.n_mels 400", "data.n_mels"),
    ("fit --config speech-cnn --data.sample_rate 0", "data.sample_rate"),
    ("data speech --generate --takes 0", "takes"),
    ("data speech --generate --out {files}/a_file", "a_file"),
    ("data recipes", "recipes"),
    # serve (issue 24): the options, the address, the run, its checkpoint and the artifact, before anything loads
    ("serve {gpt} --artifact onnx-int9 --runs_dir {root}", "--artifact onnx-int9"),
    ("serve {gpt} --artifact int8-static --runs_dir {root}", "--artifact int8-static"),  # fixed shapes: not servable
    ("serve {gpt} --artifact int8-dynamic --runs_dir {root}", "no int8-dynamic artifact"),
    ("serve {gpt} --port 70000 --runs_dir {root}", "--port 70000"),
    ("serve {gpt} --port http --runs_dir {root}", "--port"),
    ("serve {gpt} --host 999.1.1.1 --runs_dir {root}", "--host 999.1.1.1"),
    ("serve {gpt} --host 203.0.113.9 --runs_dir {root}", "cannot listen on 203.0.113.9"),  # not this machine's
    ("serve {gpt} --workers 0 --runs_dir {root}", "--workers 0"),
    ("serve {gpt} --max-batch-size 0 --runs_dir {root}", "--max-batch-size 0"),
    ("serve {gpt} --max-wait-ms -1 --runs_dir {root}", "--max-wait-ms"),
    ("serve {gpt} --join-every 0 --runs_dir {root}", "--join-every 0"),
    ("serve {gpt} --max-tokens 0 --runs_dir {root}", "--max-tokens 0"),
    ("serve {gpt} --max-streams 0 --runs_dir {root}", "--max-streams 0"),
    ("serve {gpt} --threads 0 --runs_dir {root}", "--threads 0"),
    ("serve {gpt} --ckpt {files}/missing.ckpt --runs_dir {root}", "no checkpoint"),
    ("serve no-such-run --runs_dir {root}", "no-such-run"),
    # a runs folder that does not exist (a fresh clone, a typo in --runs_dir): no traceback from listing it
    ("evaluate last --runs_dir {files}/no-runs-here", "no runs folder"),
    ("sample last --runs_dir {files}/no-runs-here", "no runs folder"),
    ("export last --format onnx --runs_dir {files}/no-runs-here", "no runs folder"),
    ("serve last --runs_dir {files}/no-runs-here", "no runs folder"),
]


# A refusal says what to do: an imperative, an allowed range, or a command to run.
ADVICE = re.compile(r"\b(use|give|choose|pick|pass|set|drop|remove|leave|lower|raise|make|start|train|try|see|free|"
                    r"check|fix|restore|write|add|stop|expected|install|never|retry|resume|download|continue)\b"
                    r"|`lab |--help", re.IGNORECASE)


def _values(case: Any) -> tuple[Any, ...]:
    """(line, needle, exit code) of a case, a plain tuple or a pytest.param with marks."""
    values = tuple(case.values) if hasattr(case, "values") else tuple(case)
    return values if len(values) == 3 else (*values, 2)


def _param(case: Any) -> Any:
    return pytest.param(*_values(case), marks=getattr(case, "marks", ()), id=_values(case)[0][:80])


def assert_one_line_refusal(message: str, needle: str, what: str) -> None:
    """One line, naming the problem (``needle``) and saying what to do."""
    assert "Traceback" not in message, f"{what}: traceback\n{message}"
    assert "\n" not in message.strip(), f"{what}: more than one line\n{message}"
    assert needle.lower() in message.lower(), f"{what}: message does not name {needle!r}:\n{message}"
    assert ADVICE.search(message), f"{what}: message does not say what to do:\n{message}"


@pytest.mark.parametrize("line,needle,expected", [_param(c) for c in CASES])
def test_bad_input_is_refused_cleanly(line: str, needle: str, expected: int, world: dict[str, str],
                                      capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(world["root"])
    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    monkeypatch.chdir(Path(world["files"]))
    argv = line.format(**world).split()
    before = tree_hash(root)

    def listen(*args: Any, **kwargs: Any) -> None:  # a serve line that got through would listen until killed
        raise AssertionError(f"{line}: a server started")

    monkeypatch.setattr("uvicorn.run", listen)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    out, err = capsys.readouterr()
    message = out + err
    assert code == expected, f"{line}: exit code {code}, expected {expected}\n{message}"
    assert "Traceback" not in message
    if expected == 2:
        errors = [ln for ln in err.splitlines() if ln.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: "), f"{line}: not one error: line\n{err}"
        assert_one_line_refusal(errors[0], needle, line)
    else:
        assert needle.lower() in message.lower(), f"{line}: message does not name {needle!r}:\n{message}"
    assert tree_hash(root) == before, f"{line} changed the runs folder"
    assert not Path("/tmp/lab-bad-input-pwned").exists()


# The dashboard's inputs: (what, call(world) that must raise LabError, words the message must contain).
DASHBOARD_CASES: list[tuple[str, Callable[[dict[str, str]], Any], str]] = [
    ("run name empty", lambda w: dashboard_data.resolve("  ", w["root"]), "pick one"),
    ("run name outside", lambda w: dashboard_data.resolve("../files", w["root"]), "outside the runs root"),
    ("run name absolute", lambda w: dashboard_data.resolve("/etc", w["root"]), "outside the runs root"),
    ("run name url-encoded", lambda w: dashboard_data.resolve("%2e%2e/files", w["root"]), "URL-encoded"),
    ("run name unknown", lambda w: dashboard_data.resolve("no-such-run", w["root"]), "no-such-run"),
    ("smoothing 1", lambda w: dashboard_data.smooth([1.0, 2.0], 1.0), "smoothing"),
    ("smoothing negative", lambda w: dashboard_data.smooth([1.0, 2.0], -0.5), "smoothing"),
    ("x axis", lambda w: dashboard_data.curves([runs.resolve_run(w["gpt"], w["root"])], ["train/loss"], x="epochs"),
     "x axis"),
    ("edited config empty", lambda w: jobs.config_job_args("", w["root"]), "mapping"),
    ("edited config not YAML", lambda w: jobs.config_job_args("model: {name: gpt\n", w["root"]), "YAML"),
    ("edited config a list", lambda w: jobs.config_job_args("- 1\n- 2\n", w["root"]), "mapping"),
    ("edited config python tag", lambda w: jobs.config_job_args("model: !!python/object/apply:os.system ['x']\n",
                                                                 w["root"]), "python"),
    ("edited config lr inf", lambda w: jobs.config_job_args("optimizer:\n  lr: .inf\n", w["root"]), "optimizer.lr"),
    ("edited config max_steps huge", lambda w: jobs.config_job_args("trainer:\n  max_steps: 99999999999999999999999\n",
                                                                     w["root"]), "trainer.max_steps"),
    ("edited config unknown key", lambda w: jobs.config_job_args("trainer:\n  epochs: 3\n", w["root"]), "epochs"),
    ("job command", lambda w: jobs.start(["rm", "-rf", "/"], w["root"]), "rm"),
    ("job runs_dir", lambda w: jobs.start(["evaluate", w["gpt"], "--runs_dir", "/tmp"], w["root"]), "--runs_dir"),
    ("job id traversal", lambda w: jobs.get("../../etc/passwd", w["root"]), "job id"),
]


@pytest.mark.parametrize("what,call,needle", DASHBOARD_CASES, ids=[c[0] for c in DASHBOARD_CASES])
def test_dashboard_input_is_refused_cleanly(what: str, call: Callable[[dict[str, str]], Any], needle: str,
                                            world: dict[str, str]) -> None:
    root = Path(world["root"])
    before = tree_hash(root)
    with pytest.raises(LabError) as e:
        call(world)
    assert_one_line_refusal(str(e.value), needle, what)
    assert tree_hash(root) == before, f"{what} changed the runs folder"
    assert not Path("/tmp/lab-bad-input-pwned").exists()


def test_there_are_at_least_eighty_cases_across_every_command() -> None:
    assert len(CASES) + len(DASHBOARD_CASES) >= 80
    commands = {_values(c)[0].split()[0] for c in CASES}
    assert commands >= {"fit", "quickstart", "runs", "sample", "evaluate", "compress", "export", "doctor", "plan",
                        "launch", "sweep", "serve"}


@pytest.mark.slow
def test_resuming_from_best_because_last_is_truncated_says_so(world: dict[str, str], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """Not an error, but the fallback is printed, not only recorded in summary.json."""
    src = Path(world["root"]) / world["paused"]
    run_dir = tmp_path / "paused" / src.name
    shutil.copytree(src, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # what a kill mid-write of an unsafe save leaves
    best_step = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")["global_step"]
    assert main(["fit", "--resume", f"paused/{src.name}", "--runs_dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    notes = [ln for ln in (out + err).splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "last.ckpt" in notes[0] and "truncated" in notes[0], out + err
    assert notes[0].endswith(f"resuming from best.ckpt (step {best_step})")
    resumed = runs.load_run(run_dir).summary["resumed"][-1]
    assert resumed["from"] == "best.ckpt" and resumed["step"] == best_step


# --------------------------------------------------------------------------- ratings files (recommenders)

RATINGS_FILES = {
    "missing_column.tsv": "1\t10\t5\t881250949\n2\t20\t3\n",          # line 2 has no timestamp
    "no_timestamp.csv": "userId,movieId,rating\n1,10,5\n",               # a header without the column
    "user_name.tsv": "1\t10\t5\t881250949\nalice\t20\t3\t881250950\n",  # a user id that is not an integer
}
RATINGS_CASES = [
    ("fit --config recommender-mf --data.path {ratings}/missing_column.tsv", "line 2 has 3 columns"),
    ("fit --config recommender-mf --data.path {ratings}/no_timestamp.csv", "no timestamp column"),
    ("fit --config recommender-mf --data.path {ratings}/user_name.tsv", "user id 'alice' is not an integer"),
    ("fit --config recommender-mf --data.path {ratings}/absent.zip", "data.path"),
    ("fit --config recommender-mf --data.url https://example.org/ml-100k.zip", "data.sha256"),
    ("fit --config recommender-mf --model.kind svd", "model.kind"),
    ("fit --config recommender-mf --data.test_fraction 2", "data.test_fraction"),
    ("plan --config recommender-mf --data.path {ratings}/user_name.tsv", "not an integer"),
]


@pytest.mark.parametrize("line,needle", RATINGS_CASES, ids=[c[0][len("fit --config "):][:70] for c in RATINGS_CASES])
def test_bad_ratings_input_is_refused_cleanly(line: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root, ratings = tmp_path / "runs", tmp_path / "ratings"
    ratings.mkdir()
    for name, text in RATINGS_FILES.items():
        (ratings / name).write_text(text)
    root.mkdir()
    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    before, files_before = tree_hash(root), tree_hash(ratings)
    code = main(line.format(ratings=ratings).split())
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: "), f"{line}: {code}\n{err}"
    assert_one_line_refusal(errors[0], needle, line)
    assert tree_hash(root) == before and tree_hash(ratings) == files_before, f"{line} changed files"
