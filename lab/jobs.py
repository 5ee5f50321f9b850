"""Background jobs: ``lab evaluate/compress/export/fit/serve`` as subprocesses whose state lives on disk.

    from lab import jobs
    job = jobs.start(["evaluate", "seed-mlp/20261128-120000-ab12", "--max_batches", "2"], root="runs")
    jobs.start([...same...], root="runs").id == job.id    # a second click returns the running job
    jobs.list_jobs("runs")      # newest first; states: queued, running, done, failed, cancelled
    jobs.tail(job, 20)          # the last lines of its log; job.error says why a failed job failed
    jobs.cancel(job.id, "runs")

Layout: ``<runs root>/.jobs/<id>.json`` (the state, written atomically) and ``<id>.log`` (the
command's stdout+stderr). Each job is run by a small detached runner process
(``python -m lab.jobs run <state file>``, its own session) that waits for a free slot
(``LAB_JOBS_PARALLEL``, default 1: the lab targets 2-core machines), starts the command, and
writes the final state. Because the runner -- not the dashboard -- owns the job, a job keeps
running and its state stays right across a browser refresh or a dashboard restart. All
read-modify-write of state files happens under one ``flock`` so the runner, a cancel and a
second click never lose each other's updates. A runner that vanished (killed -9, machine
rebooted) is detected by its pid and the job marked failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from lab import procs
from lab.errors import LabError
from lab.fileio import atomic_write_text, write_json
from lab.runs import runs_root

JOBS_DIR = ".jobs"
ACTIVE = ("queued", "running")
STATES = (*ACTIVE, "done", "failed", "cancelled")
COMMANDS = ("evaluate", "compress", "export", "fit", "serve")
"""The only ``lab`` sub-commands a job may run: the dashboard never runs arbitrary commands."""
SERVICES = ("serve",)
"""Commands that run until stopped (a server): they start at once and take no ``LAB_JOBS_PARALLEL`` slot,
else one server would hold the only slot and every later job would wait behind it."""
_children: list[subprocess.Popen] = []  # runners this process started: polled so they never linger as zombies


@dataclass
class Job:
    """One background job, as stored in ``.jobs/<id>.json``."""

    id: str
    args: list[str]
    """The ``lab`` arguments, e.g. ``["evaluate", "exp/run", "--max_batches", "2"]``."""
    root: str
    """The runs root (absolute) the command runs against (``--runs_dir``)."""
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    """The runner's pid (also its process group: cancel signals the whole group)."""
    returncode: int | None = None
    error: str | None = None
    label: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "lab.cli", *self.args, "--runs_dir", self.root]

    @property
    def display_command(self) -> str:
        return " ".join(["lab", *self.args])

    @property
    def state_path(self) -> Path:
        return jobs_dir(self.root) / f"{self.id}.json"

    @property
    def log_path(self) -> Path:
        return jobs_dir(self.root) / f"{self.id}.log"

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds it has run (so far, while running)."""
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else (now or time.time())) - self.started


def jobs_dir(root: str | Path | None) -> Path:
    return runs_root(root) / JOBS_DIR


@contextlib.contextmanager
def _lock(root: str | Path | None) -> Iterator[None]:
    d = jobs_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _save(job: Job) -> None:
    write_json(job.state_path, asdict(job))


def _load(path: Path) -> Job | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Job(**data)
    except (OSError, json.JSONDecodeError, TypeError):
        return None


def _alive(pid: int | None, job_id: str) -> bool:
    """Is the runner of ``job_id`` still running? (its cmdline names the job: pid reuse can't fool it)."""
    if not pid:
        return False
    line = procs.cmdline(pid)  # None: gone, a zombie, or not ours to read (then not our runner)
    return line is not None and any(job_id in part for part in line)


def _reap() -> None:
    for p in list(_children):
        if p.poll() is not None:
            _children.remove(p)


def _check_stale(job: Job) -> Job:
    """Mark an active job whose runner has vanished as failed (caller holds the lock)."""
    stale_queue = job.state == "queued" and job.pid is None and time.time() - job.created > 60
    if job.active and (stale_queue or (job.pid is not None and not _alive(job.pid, job.id))):
        job.state, job.ended = "failed", time.time()
        job.error = job.error or ("the job's runner process exited without recording a result "
                                  "(killed, or the machine restarted)")
        _save(job)
    return job


def list_jobs(root: str | Path | None = None) -> list[Job]:
    """Every job under the runs root, newest first (vanished runners are marked failed here)."""
    _reap()
    d = jobs_dir(root)
    if not d.is_dir():
        return []
    with _lock(root):
        found = [j for j in (_load(p) for p in d.glob("*.json")) if j is not None]
        found = [_check_stale(j) if j.active else j for j in found]
    return sorted(found, key=lambda j: (j.created, j.id), reverse=True)


def get(job_id: str, root: str | Path | None = None) -> Job:
    """One job by id (``LabError`` when there is none)."""
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise LabError(f"bad job id {job_id!r}: pick a job from the jobs list")
    job = _load(jobs_dir(root) / f"{job_id}.json")
    if job is None:
        raise LabError(f"no job {job_id} under {jobs_dir(root)}")
    return job


def start(args: list[str], root: str | Path | None = None, label: str = "") -> Job:
    """Start ``lab <args> --runs_dir <root>`` in the background, or return the identical job still active."""
    args = [str(a) for a in args]
    if not args or args[0] not in COMMANDS:
        raise LabError(f"a job cannot run {args[:1]}: choose one of {', '.join(COMMANDS)}")
    if "--runs_dir" in args:
        raise LabError("--runs_dir is set by the job runner from the runs root: drop it from the arguments")
    root_abs = str(runs_root(root).resolve())
    for existing in list_jobs(root_abs):  # also marks vanished runners failed so they don't block
        if existing.active and existing.args == args:
            return existing
    with _lock(root_abs):
        # Checked again under the lock: two clicks racing both get the same job.
        for p in jobs_dir(root_abs).glob("*.json"):
            j = _load(p)
            if j is not None and j.active and j.args == args:
                return j
        job = Job(id=f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}", args=args,
                  root=root_abs, label=label or " ".join(args[:2]))
        _save(job)
        job.log_path.touch()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # The runner imports lab from the same tree as this process, installed or not.
        pkg_parent = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen([sys.executable, "-m", "lab.jobs", "run", str(job.state_path)], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
        _children.append(proc)
        job.pid = proc.pid
        _save(job)
    return job


def cancel(job_id: str, root: str | Path | None = None) -> Job:
    """Cancel a queued or running job: state ``cancelled`` first, then SIGTERM to its process group.

    ``lab fit`` answers SIGTERM by saving ``last.ckpt`` and marking its run interrupted.
    """
    with _lock(root):
        job = get(job_id, root)
        if not job.active:
            return job
        job.state, job.ended = "cancelled", time.time()
        _save(job)
    if job.pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, signal.SIGTERM)
    return job


def tail(job: Job, lines: int = 20) -> str:
    """The last ``lines`` lines of a job's log."""
    try:
        with open(job.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def error_from_log(log_text: str, returncode: int) -> str:
    """Why a command failed, whole: the CLI's last ``error: ...`` message, else the exception
    that ended a traceback, else the last line. A message that goes on over several lines
    keeps them all (joined by spaces): cut after its first line it would stop mid-sentence."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    if starts:
        why = lines[starts[-1]:]
    else:
        raw = log_text.splitlines()
        tb = [i for i, ln in enumerate(raw) if ln.startswith("Traceback (most recent call last)")]
        # A traceback's frames are indented; the exception message is what follows them, unindented.
        after = raw[tb[-1] + 1:] if tb else []
        first = next((i for i, ln in enumerate(after) if ln.strip() and not ln[0].isspace()), None)
        why = [ln.strip() for ln in after[first:] if ln.strip()] if first is not None else lines[-1:]
    return f"exit code {returncode}: {' '.join(why) if why else 'no output'}"


def config_job_args(config_text: str, root: str | Path | None = None) -> list[str]:
    """``fit --config <file>`` for an edited config: validated now, stored under .jobs/ by content hash.

    The hash makes the same edited text give the same arguments, so a second click is no duplicate.
    """
    import yaml

    from lab.config import from_dict, validate, yaml_problem

    try:
        raw = yaml.safe_load(config_text)
    except yaml.YAMLError as e:
        raise LabError(f"the config is not valid YAML ({yaml_problem(e)}): fix it and start again") from None
    if not isinstance(raw, dict):
        raise LabError("the config must be a YAML mapping: write it as model:, data:, trainer:, optimizer: sections")
    validate(from_dict(raw))  # ConfigError (a LabError) names the bad field
    digest = hashlib.sha256(config_text.encode("utf-8")).hexdigest()[:12]
    path = jobs_dir(root) / f"config-{digest}.yaml"
    if not path.exists():
        atomic_write_text(path, config_text)
    return ["fit", "--config", str(path.resolve())]


# --------------------------------------------------------------------------- the runner process


def _max_parallel() -> int:
    try:
        return max(1, int(os.environ.get("LAB_JOBS_PARALLEL", "1")))
    except ValueError:
        return 1


def _run(state_path: Path) -> int:
    """Wait for a slot, run the command with output to the log, record the result."""
    job = _load(state_path)
    if job is None:
        return 2
    root = job.root
    while True:
        with _lock(root):
            job = _load(state_path)
            if job is None or job.state != "queued":
                return 0  # cancelled while queued
            running = [j for j in (_load(p) for p in jobs_dir(root).glob("*.json"))
                       if j is not None and j.id != job.id and j.state == "running" and j.args[0] not in SERVICES
                       and _alive(j.pid, j.id)]
            if job.args[0] in SERVICES or len(running) < _max_parallel():
                job.state, job.started, job.pid = "running", time.time(), os.getpid()
                _save(job)
                break
        time.sleep(0.5)
    with open(job.log_path, "ab") as log:
        log.write(f"$ {job.display_command}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            rc = proc.wait()
        except OSError as e:
            log.write(f"error: could not start the command: {e}\n".encode())
            rc = 127
    with _lock(root):
        job = _load(state_path)
        if job is None or job.state == "cancelled":
            return 0
        job.state, job.ended, job.returncode = ("done" if rc == 0 else "failed"), time.time(), rc
        if rc != 0:
            job.error = error_from_log(tail(job, 200), rc)
        _save(job)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        sys.exit(_run(Path(sys.argv[2])))
    print("usage: python -m lab.jobs run <state file>  (started by lab.jobs.start)", file=sys.stderr)
    sys.exit(2)
