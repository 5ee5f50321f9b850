"""Ready-to-run launchers for multi-node training: one ``torchrun`` command per node, or an sbatch script.

    lab launch --nodes 2 --gpus-per-node 8 -- lab fit --config gpt2-124m --trainer.precision bf16-mixed
    lab launch --nodes 4 --gpus-per-node 8 --slurm --time 24:00:00 --out job.sbatch -- lab fit --config gpt2-124m

    from lab.launch import torchrun_commands, sbatch_script
    torchrun_commands(["lab", "fit", "--config", "gpt-nano"], nodes=2, gpus_per_node=1, master_addr="10.0.0.1")

The lab never distributes anything itself: these launchers start one ``lab fit`` process per
GPU, and Lightning's cluster environments (TorchElastic for torchrun, SLURM for srun) read
the ranks from the environment. The fit command gets the overrides that must agree with
the launcher (``trainer.num_nodes``, ``trainer.devices``, a multi-process strategy); a
contradicting value already on the command line is refused rather than silently replaced.
Output is a pure function of the arguments, so it can be reviewed, diffed and tested.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Sequence

from lab.errors import LabError

DEFAULT_PORT = 29500
REQUEUE_SIGNAL = "SIGUSR1@90"
"""Lightning's SLURM support saves and requeues on SIGUSR1; 90 s leaves time to write a checkpoint."""
MULTI_PROCESS = ("ddp", "fsdp", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
                 "deepspeed_stage_3_offload")


def fit_arguments(command: Sequence[str], nodes: int, gpus_per_node: int) -> list[str]:
    """The ``fit ...`` arguments for each process: the user's, plus what the launcher fixes."""
    if nodes < 1 or gpus_per_node < 1:
        raise LabError(f"--nodes {nodes} --gpus-per-node {gpus_per_node}: give whole numbers >= 1 for both")
    args = list(command)
    if args and args[0] == "--":
        args = args[1:]
    if args[:1] == ["lab"]:
        args = args[1:]
    if args[:1] != ["fit"]:
        raise LabError("lab launch runs a training command: give it after --, e.g. "
                       "lab launch --nodes 2 --gpus-per-node 8 -- lab fit --config gpt2-124m")
    given = _given(args[1:])
    required = {"trainer.num_nodes": str(nodes), "trainer.devices": str(gpus_per_node)}
    for key, value in required.items():
        if key in given and given[key] != value:
            raise LabError(f"the fit command sets --{key} {given[key]}, but the launcher starts {value}: "
                           f"drop --{key} (lab launch sets it)")
    strategy = given.get("trainer.strategy")
    if strategy is not None and strategy not in MULTI_PROCESS:
        raise LabError(f"--trainer.strategy {strategy} cannot run under torchrun/srun: use ddp, fsdp or deepspeed_*")
    extra: list[str] = []
    for key, value in required.items():
        if key not in given:
            extra += [f"--{key}", value]
    if strategy is None:
        extra += ["--trainer.strategy", "ddp"]
    if "trainer.accelerator" not in given:
        extra += ["--trainer.accelerator", "gpu"]
    return args + extra


def _given(tokens: Sequence[str]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` pairs on a command line (flags without values are skipped)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--"):
            key, eq, value = tok[2:].partition("=")
            if not eq and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value, i = tokens[i + 1], i + 1
            out[key] = value
        i += 1
    return out


def torchrun_commands(command: Sequence[str], nodes: int, gpus_per_node: int, master_addr: str = "MASTER_ADDR",
                      master_port: int = DEFAULT_PORT) -> list[str]:
    """One shell command per node, node 0 first; ``master_addr`` is node 0's address."""
    fit = fit_arguments(command, nodes, gpus_per_node)
    lines = []
    for rank in range(nodes):
        argv = ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={gpus_per_node}", f"--node_rank={rank}",
                f"--master_addr={master_addr}", f"--master_port={master_port}", "-m", "lab.cli", *fit]
        lines.append(shlex.join(argv))
    return lines


def torchrun_text(command: Sequence[str], nodes: int, gpus_per_node: int, master_addr: str = "MASTER_ADDR",
                  master_port: int = DEFAULT_PORT) -> str:
    """What ``lab launch`` prints without ``--slurm``: a comment and a command per node."""
    out = [f"# {nodes} node(s) x {gpus_per_node} process(es); start every line at about the same time,",
           f"# each on its own machine; {master_addr} must be node 0's address, reachable on port {master_port}.",
           "# Only global rank 0 writes the run folder; resuming needs the runs folder on a shared filesystem."]
    for rank, line in enumerate(torchrun_commands(command, nodes, gpus_per_node, master_addr, master_port)):
        out += [f"# node {rank}", line]
    return "\n".join(out) + "\n"


def sbatch_script(command: Sequence[str], nodes: int, gpus_per_node: int, time: str = "24:00:00",
                  job_name: str = "lab", partition: str | None = None, cpus_per_task: int | None = None) -> str:
    """An sbatch script: ``srun`` starts one task per GPU; Lightning's SLURM environment does the rest.

    SIGUSR1 90 s before the time limit makes Lightning checkpoint and requeue the job; the
    requeued job (``SLURM_RESTART_COUNT`` > 0) continues the newest run with ``--resume last``.
    """
    if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", time):
        raise LabError(f"--time {time!r} is not a SLURM time limit: give one such as 24:00:00 or 2-00:00:00")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", job_name):
        raise LabError(f"job name {job_name!r}: use letters, digits, '.', '_' or '-'")
    fit = fit_arguments(command, nodes, gpus_per_node)
    head = ["#!/bin/bash",
            f"#SBATCH --job-name={job_name}",
            f"#SBATCH --nodes={nodes}",
            f"#SBATCH --ntasks-per-node={gpus_per_node}",
            f"#SBATCH --gpus-per-node={gpus_per_node}"]
    if cpus_per_task:
        head.append(f"#SBATCH --cpus-per-task={cpus_per_task}")
    if partition:
        head.append(f"#SBATCH --partition={shlex.quote(partition)}")
    head += [f"#SBATCH --time={time}",
             f"#SBATCH --signal={REQUEUE_SIGNAL}",
             "#SBATCH --requeue",
             "#SBATCH --output=slurm-%j.out",
             "",
             "# Lightning's SLURMEnvironment reads the ranks and node list srun sets (SLURM_PROCID, SLURM_NODELIST...)",
             "# and, on SIGUSR1, saves a checkpoint and requeues this job before the time limit.",
             "set -euo pipefail",
             "export PYTHONUNBUFFERED=1",
             'RESUME=""',
             'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then RESUME="--resume last"; fi',
             f"srun python -m lab.cli {shlex.join(fit)} $RESUME"]
    return "\n".join(head) + "\n"


def write(text: str, path: str | Path) -> Path:
    """Write a launcher file (executable, since it is a script)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    out.chmod(0o755)
    return out
