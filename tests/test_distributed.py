"""Real multi-process training on CPU with gloo: DDP, two torchrun "nodes" on loopback, a killed rank, Jupyter.

Each test starts real processes (tests/_dist_script.py dumps every rank's final weights),
so they are marked slow; they stay small (seed-mlp, 20 steps) to run in CI.
Tolerance for 2 processes vs 1: 1e-5 absolute on every parameter after 20 SGD steps. The
two runs see the same samples in every global batch (RankShard interleaves the lab's
order), so only the summation order of the gradient average differs (float32 rounding).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lab import runs
from lab.launch import torchrun_commands
from lab.ports import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "_dist_script.py"
SMALL = ["--trainer.max_steps", "20", "--trainer.accelerator", "cpu", "--trainer.val_check_interval", "10",
         "--trainer.limit_val_batches", "2"]
TOLERANCE = 1e-5
LORA_TOLERANCE = 1e-4
"""The LoRA run trains with AdamW, which divides by the root of its second moment and so enlarges the
float32 rounding of the averaged gradient more than seed-mlp's SGD does (measured 4.1e-6 after 20 steps)."""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _run(out: Path, runs_dir: Path, *overrides: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    # Output to a file, not a pipe: a stopped rank would hold a pipe open and block reading it.
    log = out.parent / f"{out.name}.log"
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, str(SCRIPT), str(out), str(runs_dir), *SMALL, *overrides], cwd=ROOT,
                              env=_env(**env), stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout=text, stderr=text)


def _dump(out: Path, rank: int) -> dict:
    return torch.load(out / f"rank{rank}.pt", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    two = _run(tmp_path / "two", tmp_path / "runs", "--trainer.strategy", "ddp", "--trainer.devices", "2",
               "--data.batch_size", "16")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run(tmp_path / "one", tmp_path / "runs1", "--data.batch_size", "32")
    assert one.returncode == 0, one.stderr[-3000:]
    r0, r1, single = _dump(tmp_path / "two", 0), _dump(tmp_path / "two", 1), _dump(tmp_path / "one", 0)
    assert r0["world_size"] == r1["world_size"] == 2
    assert _max_diff(r0["state"], r1["state"]) == 0.0  # DDP keeps replicas bit-identical
    assert _max_diff(r0["state"], single["state"]) < TOLERANCE
    (run,) = runs.list_runs(tmp_path / "runs")
    assert r0["run_dir"] == r1["run_dir"] == str(run.path)  # one folder, shared by both ranks
    s = run.summary
    assert s["status"] == "completed" and s["step"] == 20
    assert s["global_batch"] == {"micro_batch": 16, "devices": 2, "nodes": 1, "accumulate": 1, "global": 32}
    assert "global batch 32 = micro-batch 16 x 2 devices" in two.stdout


def test_two_process_ddp_fine_tunes_lora_adapters(tmp_path: Path) -> None:
    """LoRA under DDP: only the adapters train, the replicas stay identical, and 2 processes match 1."""
    lora = ["--finetune.method", "lora", "--finetune.targets", "both", "--model.n_layer", "1", "--model.n_embd", "32",
            "--model.n_head", "2", "--model.block_size", "32", "--optimizer.warmup_steps", "2"]
    two = _run(tmp_path / "two", tmp_path / "runs", "--trainer.strategy", "ddp", "--trainer.devices", "2",
               "--data.batch_size", "4", *lora, LAB_TEST_PRESET="gpt-nano")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run(tmp_path / "one", tmp_path / "runs1", "--data.batch_size", "8", *lora, LAB_TEST_PRESET="gpt-nano")
    assert one.returncode == 0, one.stderr[-3000:]
    r0, r1, single = _dump(tmp_path / "two", 0), _dump(tmp_path / "two", 1), _dump(tmp_path / "one", 0)
    assert r0["world_size"] == 2 and _max_diff(r0["state"], r1["state"]) == 0.0
    adapters = [k for k in r0["state"] if "lora_" in k]
    assert len(adapters) == 8 and all(torch.count_nonzero(r0["state"][k]) for k in adapters)  # B moved off zero
    # The frozen base is bitwise the same everywhere (nothing updated it); the adapters agree with one process.
    assert all(torch.equal(r0["state"][k], single["state"][k]) for k in r0["state"] if k not in adapters)
    assert max((r0["state"][k] - single["state"][k]).abs().max().item() for k in adapters) < LORA_TOLERANCE


def test_two_torchrun_nodes_on_loopback_train_together(tmp_path: Path) -> None:
    port = free_port()
    lines = torchrun_commands(["lab", "fit", *SMALL, "--data.batch_size", "16"], nodes=2, gpus_per_node=1,
                              master_addr="127.0.0.1", master_port=port)
    procs = []
    for node, line in enumerate(lines):
        argv = shlex.split(line)
        assert argv[0] == "torchrun" and f"--node_rank={node}" in argv
        k = argv.index("-m")
        assert argv[k:k + 3] == ["-m", "lab.cli", "fit"]
        # The launcher's exact command, with the test script in place of `lab fit` (it dumps the weights)
        # and a runs folder per node, so "only rank 0 writes" is visible on disk.
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:k], str(SCRIPT), str(tmp_path / "out"),
                str(tmp_path / f"runs-node{node}"), *argv[k + 3:]]
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    r0, r1 = _dump(tmp_path / "out", 0), _dump(tmp_path / "out", 1)
    assert r0["world_size"] == r1["world_size"] == 2
    assert _max_diff(r0["state"], r1["state"]) == 0.0
    (run,) = runs.list_runs(tmp_path / "runs-node0")
    assert r0["run_dir"] == r1["run_dir"] == str(run.path)
    assert not (tmp_path / "runs-node1").exists()  # node 1 (global rank 1) wrote nothing
    assert run.summary["status"] == "completed"
    assert run.summary["global_batch"]["global"] == 32 and run.summary["global_batch"]["nodes"] == 2


@pytest.mark.parametrize("rank", [1, 0])
def test_a_killed_rank_fails_the_job_instead_of_hanging(tmp_path: Path, rank: int) -> None:
    res = _run(tmp_path / "out", tmp_path / "runs", "--trainer.strategy", "ddp", "--trainer.devices", "2",
               "--data.batch_size", "16", "--trainer.collective_timeout_s", "60", LAB_TEST_KILL_RANK=str(rank))
    assert res.returncode != 0
    (run,) = runs.list_runs(tmp_path / "runs")
    deadline = time.time() + 90  # rank 0 killed: the survivor (a child left behind) records it
    while run.summary["status"] == "running" and time.time() < deadline:
        time.sleep(0.5)
        run = runs.load_run(run.path)
    assert run.summary["status"] == "failed" and run.summary["error"]
    assert not (tmp_path / "out" / "rank0.pt").exists()  # training did not finish on the survivor
    assert run.summary["step"] < 20


def test_a_hung_rank_trips_the_collective_timeout(tmp_path: Path) -> None:
    res = _run(tmp_path / "out", tmp_path / "runs", "--trainer.strategy", "ddp", "--trainer.devices", "2",
               "--data.batch_size", "16", "--trainer.collective_timeout_s", "10", LAB_TEST_STOP_RANK="1")
    pid = int((tmp_path / "out" / "stopped.pid").read_text())
    try:
        os.kill(pid, signal.SIGKILL)  # in case the launcher left the stopped rank behind
    except ProcessLookupError:
        pass
    assert res.returncode != 0
    (run,) = runs.list_runs(tmp_path / "runs")
    assert run.summary["status"] == "failed" and "timeout" in run.summary["error"].lower()


def test_rank_0_failing_to_prepare_data_stops_every_torchrun_rank_at_once(tmp_path: Path) -> None:
    """Not after the collective timeout (120 s here): rank 0 tells the others why it stopped."""
    log = tmp_path / "torchrun.log"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(SCRIPT), str(tmp_path / "out"),
            str(tmp_path / "runs"), *SMALL, "--data.batch_size", "16", "--trainer.collective_timeout_s", "120"]
    start = time.time()
    with log.open("w") as f:
        proc = subprocess.run(argv, cwd=ROOT, env=_env(LAB_TEST_PREPARE_FAILS="1"), stdout=f,
                              stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert proc.returncode != 0
    assert time.time() - start < 100, "a rank waited for the collective timeout"
    assert "rank 0 could not prepare the data, so this rank stops too: DataError: injected" in text, text[-3000:]
    assert not (tmp_path / "runs").exists() or not runs.list_runs(tmp_path / "runs")  # no run was started


def test_ddp_notebook_from_a_jupyter_kernel_writes_one_run(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    runs_dir = tmp_path / "runs"
    code = "\n".join([
        "import os, json",
        "import torch, lightning as L",
        "from lab.config import load_config",
        "from lab.train import fit",
        "class Dump(L.Callback):",
        "    def on_train_end(self, trainer, pl_module):",
        "        state = {k: v.clone() for k, v in pl_module.model.state_dict().items()}",
        f"        torch.save(state, {str(tmp_path)!r} + f'/rank{{trainer.global_rank}}.pt')",
        "        best = float(trainer.checkpoint_callback.best_model_score)",
        f"        open({str(tmp_path)!r} + f'/best{{trainer.global_rank}}.txt', 'w').write(repr(best))",
        "cfg = load_config('seed-mlp', {'trainer.max_steps': 20, 'trainer.strategy': 'ddp', 'trainer.devices': 2,",
        "    'trainer.accelerator': 'cpu', 'data.batch_size': 16, 'trainer.val_check_interval': 10,",
        "    'trainer.limit_val_batches': 2})",
        f"run = fit(cfg, runs_root={str(runs_dir)!r}, progress=False, test=False, callbacks=[Dump()])",
        "print('RESULT', json.dumps({'status': run.status, 'step': run.summary['step'], 'best': run.summary['best'],",
        "    'throughput': run.summary['throughput']}))",
    ])
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
                            ).execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("output_type") == "stream")
    notices = [line for line in text.splitlines() if "ddp_notebook" in line]
    assert len(notices) == 1 and notices[0].startswith("note:")
    result = json.loads(text.split("RESULT ", 1)[1].splitlines()[0])
    assert (result["status"], result["step"]) == ("completed", 20)
    # The workers' best score and throughput reach the main process's summary (from their last.ckpt).
    assert result["best"] == {"val/loss": float((tmp_path / "best0.txt").read_text())}
    assert result["throughput"]["samples_per_sec"] > 0 and result["throughput"]["flops_per_sec"] > 0
    (run,) = runs.list_runs(runs_dir)
    assert run.config["trainer"]["strategy"] == "ddp_notebook"
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert _max_diff(a, b) == 0.0


FORK_AFTER_THREADS = """
import json, sys, torch
torch.set_num_threads(2)
a = torch.randn(1500, 1500); (a @ a).sum()   # the parent's OpenMP pool runs, as in any notebook kernel
from lab.config import load_config
from lab.train import fit
cfg = load_config("seed-mlp", {"trainer.max_steps": 4, "trainer.strategy": "ddp_notebook", "trainer.devices": 1,
    "trainer.accelerator": "cpu", "trainer.val_check_interval": 2, "trainer.limit_val_batches": 1})
run = fit(cfg, runs_root=sys.argv[1], progress=False)
print("RESULT", json.dumps({"status": run.status, "step": run.summary["step"], "test": "test/loss" in run.summary["test"]}))
"""


def test_ddp_notebook_worker_does_not_hang_after_the_parent_ran_threads(tmp_path: Path) -> None:
    # One forked worker used to get all the cores and deadlock in OpenMP at its first parallel op
    # (a notebook's exercise sat at step 0; the test after training hung the same way).
    if (os.cpu_count() or 1) < 2:
        pytest.skip("a deadlock needs two OpenMP threads")
    script = tmp_path / "fork_after_threads.py"
    script.write_text(FORK_AFTER_THREADS)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    try:
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], capture_output=True, text=True,
                              timeout=240, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("the ddp_notebook worker hung (OpenMP after fork)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result == {"status": "completed", "step": 4, "test": True}
