"""`lab launch`: torchrun commands per node and the sbatch script, checked line by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import launch
from lab.cli import main
from lab.errors import LabError

FIT = ["lab", "fit", "--config", "gpt2-124m", "--trainer.precision", "bf16-mixed"]
TAIL = ("fit --config gpt2-124m --trainer.precision bf16-mixed --trainer.num_nodes 2 --trainer.devices 4 "
        "--trainer.strategy ddp --trainer.accelerator gpu")


def test_torchrun_text_line_by_line() -> None:
    text = launch.torchrun_text(FIT, nodes=2, gpus_per_node=4, master_addr="10.0.0.1", master_port=29555)
    assert text.splitlines() == [
        "# 2 node(s) x 4 process(es); start every line at about the same time,",
        "# each on its own machine; 10.0.0.1 must be node 0's address, reachable on port 29555.",
        "# Only global rank 0 writes the run folder; resuming needs the runs folder on a shared filesystem.",
        "# node 0",
        "torchrun --nnodes=2 --nproc_per_node=4 --node_rank=0 --master_addr=10.0.0.1 --master_port=29555 -m lab.cli "
        + TAIL,
        "# node 1",
        "torchrun --nnodes=2 --nproc_per_node=4 --node_rank=1 --master_addr=10.0.0.1 --master_port=29555 -m lab.cli "
        + TAIL,
    ]
    assert text == launch.torchrun_text(FIT, nodes=2, gpus_per_node=4, master_addr="10.0.0.1", master_port=29555)


def test_sbatch_script_line_by_line() -> None:
    text = launch.sbatch_script(FIT, nodes=2, gpus_per_node=4, time="12:00:00", job_name="gpt2", partition="gpu",
                                cpus_per_task=8)
    assert text.splitlines() == [
        "#!/bin/bash",
        "#SBATCH --job-name=gpt2",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=12:00:00",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
        "#SBATCH --output=slurm-%j.out",
        "",
        "# Lightning's SLURMEnvironment reads the ranks and node list srun sets (SLURM_PROCID, SLURM_NODELIST...)",
        "# and, on SIGUSR1, saves a checkpoint and requeues this job before the time limit.",
        "set -euo pipefail",
        "export PYTHONUNBUFFERED=1",
        'RESUME=""',
        'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then RESUME="--resume last"; fi',
        "srun python -m lab.cli " + TAIL + " $RESUME",
    ]


def test_user_values_are_kept_and_contradictions_refused() -> None:
    args = launch.fit_arguments(["--", "lab", "fit", "--trainer.strategy=fsdp", "--trainer.accelerator", "cpu",
                                 "--trainer.devices", "2"], nodes=1, gpus_per_node=2)
    assert args == ["fit", "--trainer.strategy=fsdp", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                    "--trainer.num_nodes", "1"]
    with pytest.raises(LabError, match="trainer.devices 8"):
        launch.fit_arguments(FIT + ["--trainer.devices", "8"], nodes=2, gpus_per_node=4)
    with pytest.raises(LabError, match="cannot run under torchrun"):
        launch.fit_arguments(FIT + ["--trainer.strategy", "ddp_spawn"], nodes=2, gpus_per_node=4)
    with pytest.raises(LabError, match="training command"):
        launch.fit_arguments(["lab", "runs"], nodes=2, gpus_per_node=4)
    with pytest.raises(LabError, match=">= 1"):
        launch.fit_arguments(FIT, nodes=0, gpus_per_node=4)
    with pytest.raises(LabError, match="time limit"):
        launch.sbatch_script(FIT, nodes=1, gpus_per_node=1, time="soon")


def test_quoting_survives_spaces() -> None:
    (line,) = launch.torchrun_commands(["lab", "fit", "--data.path", "my book.txt"], 1, 1, "127.0.0.1")
    assert line.endswith("--data.path 'my book.txt' --trainer.num_nodes 1 --trainer.devices 1 "
                         "--trainer.strategy ddp --trainer.accelerator gpu")


def test_cli_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "job.sbatch"
    assert main(["launch", "--nodes", "2", "--gpus-per-node", "4", "--slurm", "--time", "12:00:00", "--job-name",
                 "gpt2", "--partition", "gpu", "--cpus-per-task", "8", "--out", str(out), "--", *FIT]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text() == launch.sbatch_script(FIT, 2, 4, "12:00:00", "gpt2", "gpu", 8)
    assert out.stat().st_mode & 0o100  # executable
    assert main(["launch", "--nodes", "2", "--gpus-per-node", "4", "--", "lab", "runs"]) == 2
    assert "training command" in capsys.readouterr().err
