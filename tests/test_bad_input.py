"""The bad-input suite: every refusal is clean, explains itself and changes nothing.

Each case drives the CLI (in-process, through ``lab.cli.main``) with one bad input and
asserts: a non-zero exit, a message naming the problem, no traceback, and a runs folder
whose content hash is the same before and after.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import pytest

from lab.cli import main
from lab.config import load_config
from lab.data.tokenizers import train_tokenizer
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
    return {"root": str(root), "files": str(files), "gpt": f"{gpt.experiment}/{gpt.run_id}",
            "mlp": f"{mlp.experiment}/{mlp.run_id}", "mismatch": f"mismatch/{gpt.run_id}",
            "sha_whole": hashlib.sha256(whole).hexdigest()}


# (command line with {placeholders}, words the message must contain)
CASES: list[tuple[str, str]] = [
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
    ("fit --trainer.max_steps 5 --runs_dir {files}/a_file", "a_file"),
    ("fit --trainer.max_steps 5 --runs_dir /proc/lab-runs", "/proc"),  # no space, not writable (even as root)
    ("fit --trainer.max_steps 5 --runs_dir {files}/a_file/runs", "a_file"),
    ("fit --resume no-such-run --runs_dir {root}", "no-such-run"),
    # evaluate
    ("evaluate no-such-run --runs_dir {root}", "no-such-run"),
    ("evaluate ../outside --runs_dir {root}", "outside the runs root"),
    ("evaluate {gpt} --ckpt {files}/truncated.ckpt --runs_dir {root}", "truncated.ckpt"),
    ("evaluate {gpt} --ckpt {files}/malicious.ckpt --runs_dir {root}", "malicious.ckpt"),
    ("evaluate {gpt} --ckpt {files}/missing.ckpt --runs_dir {root}", "missing.ckpt"),
    ("evaluate {gpt} --split train --runs_dir {root}", "split"),
    # compress
    ("compress {gpt} --method zip --runs_dir {root}", "zip"),
    ("compress {gpt} --method prune --sparsity 1.5 --runs_dir {root}", "sparsity"),
    ("compress %2e%2e/x --method int8-dynamic --runs_dir {root}", "URL-encoded"),
    # sample
    ("sample {mlp} --runs_dir {root}", "language model"),
    ("sample {gpt} --temperature 0 --runs_dir {root}", "temperature"),
    ("sample {gpt} --tokens -5 --runs_dir {root}", "tokens"),
    ("sample {mismatch} --runs_dir {root}", "tokenizer"),
    ("sample /etc --runs_dir {root}", "outside the runs root"),
    # plan
    ("plan --precision fp8", "precision"),
    ("plan --micro_batch 0", "micro_batch"),
    ("plan --nodes -1", "nodes"),
    ("plan --tokens 12q", "12q"),
    ("plan --device TPUv9", "TPUv9"),
    ("plan --config no-such-preset", "no-such-preset"),
    # launch
    ("launch --nodes 0 --gpus-per-node 2 -- lab fit", "--nodes"),
    ("launch --nodes 2 --gpus-per-node 2 -- lab evaluate x", "training command"),
    ("launch --nodes 2 --gpus-per-node two -- lab fit", "gpus"),
    ("launch --nodes 2 --gpus-per-node 2 --slurm --time forever -- lab fit", "forever"),
    # doctor
    ("doctor --runs_dir {files}/a_file", "a_file"),
    ("doctor --frobnicate", "--frobnicate"),
]


@pytest.mark.parametrize("line,needle", CASES, ids=[c[0].split(" {")[0][:40] for c in CASES])
def test_bad_input_is_refused_cleanly(line: str, needle: str, world: dict[str, str],
                                      capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(world["root"])
    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    monkeypatch.chdir(Path(world["files"]))
    argv = line.format(**world).split()
    before = tree_hash(root)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    out, err = capsys.readouterr()
    message = out + err
    assert code not in (0, None), f"accepted: {line}\n{message}"
    assert needle.lower() in message.lower(), f"{line}: message does not name {needle!r}:\n{message}"
    assert "Traceback" not in message
    assert tree_hash(root) == before, f"{line} changed the runs folder"
    assert not Path("/tmp/lab-bad-input-pwned").exists()


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert {c[0].split()[0] for c in CASES} >= {"fit", "evaluate", "compress", "sample", "plan", "doctor", "launch"}
