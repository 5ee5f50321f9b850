"""``lab dashboard``: start the Streamlit dashboard with the safe settings, from any folder.

    lab dashboard                                  # http://127.0.0.1:8501, the runs of $LAB_RUNS_DIR or ./runs
    lab dashboard --runs_dir /data/runs --port 8600
    lab dashboard --host 0.0.0.0                   # reachable from other machines: only when asked

    from lab import dashboard_server
    argv, env = dashboard_server.command("runs", host="127.0.0.1", port=8501)   # what it runs

Why a command rather than ``streamlit run dashboard/app.py``: Streamlit listens on every
interface and collects usage statistics unless its config says otherwise, and which config
files it reads depends on the working directory and its version. Here every safe setting is a
flag (flags beat every config file and ``STREAMLIT_*`` variable): ``--server.address`` (127.0.0.1
unless ``--host``), ``--server.headless true``, ``--browser.gatherUsageStats false``. The runs
root is fixed here, absolute, in ``$LAB_RUNS_DIR`` of the server: the pages read it and no
widget can change it, so the browser chooses among runs, never among folders.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

from lab.errors import LabError
from lab.ports import LOOPBACK, check_listen
from lab.runs import runs_root

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
DEFAULT_HOST, DEFAULT_PORT = LOOPBACK, 8501
ROOT_ENV = "LAB_RUNS_DIR"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def command(runs_dir: str | Path | None = None, host: str = DEFAULT_HOST,
            port: int = DEFAULT_PORT) -> tuple[list[str], dict[str, str]]:
    """The ``streamlit run`` argv and environment ``lab dashboard`` starts; ``LabError`` for bad input."""
    if not host or any(c.isspace() for c in host):
        raise LabError(f"--host {host!r}: give an address of this machine, e.g. 127.0.0.1 (the default)")
    if not 1 <= port <= 65535:
        raise LabError(f"--port {port}: give a TCP port in [1, 65535], e.g. 8501 (the default)")
    root = runs_root(runs_dir).absolute()
    if root.exists() and not root.is_dir():
        raise LabError(f"runs root {root} is a file, not a folder: pass another --runs_dir or set {ROOT_ENV}")
    if not APP.is_file():
        raise LabError(f"the dashboard's pages are not in this installation ({APP} is missing): "
                       "run `lab dashboard` from a clone of the repository (pip install -e .)")
    if importlib.util.find_spec("streamlit") is None:
        raise LabError("streamlit is not installed: pip install streamlit")
    argv = [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    env = {**os.environ, ROOT_ENV: str(root)}
    return argv, env


def serve(runs_dir: str | Path | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Check the settings, say where the dashboard is, then become the Streamlit server (exec)."""
    argv, env = command(runs_dir, host, port)
    check_listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"dashboard: http://{shown}:{port} (runs: {env[ROOT_ENV]}; Ctrl-C stops it)", flush=True)
    if not is_loopback(host):
        print(f"warning: listening on {host}: other machines can open the dashboard and start jobs; "
              "use the default 127.0.0.1 (with an SSH tunnel) unless this network is trusted", file=sys.stderr)
    if os.name == "posix":
        # exec: Ctrl-C and kill reach Streamlit itself, and no parent is left behind to orphan it.
        os.execve(sys.executable, argv, env)
    return subprocess.call(argv, env=env)  # pragma: no cover (Windows)
