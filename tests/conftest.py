"""Shared test setup: keep every cache (prepared corpora, measured peaks) out of ~/.cache."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

# Set at import time so subprocesses the tests start (the `lab` CLI) inherit it too; one
# folder for the whole session so the bundled corpus is tokenised once.
os.environ.setdefault("LAB_CACHE_DIR", tempfile.mkdtemp(prefix="lab-test-cache-"))


@pytest.fixture(autouse=True)
def _quiet_tokenizers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def other_process() -> Any:
    """A live Python process and its ``lab.procs.identity()``: ``(popen, identity)``; killed at teardown."""
    import json
    import subprocess
    import sys

    code = "import json, time; from lab import procs; print(json.dumps(procs.identity()), flush=True); time.sleep(120)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        yield child, json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


@pytest.fixture(scope="module")
def tiny_gpt_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 1-layer, 32-wide gpt-nano trained 10 steps in its own runs folder (one per test module)."""
    from lab.config import load_config
    from lab.train import fit

    tiny = {"trainer.max_steps": 10, "trainer.val_check_interval": 5, "trainer.limit_val_batches": 2,
            "model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2, "model.block_size": 32,
            "optimizer.warmup_steps": 2}
    return fit(load_config("gpt-nano", tiny), runs_root=tmp_path_factory.mktemp("runs"), progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    models this small gain nothing from more, and on a busy 2-core machine spinning OpenMP
    workers can slow every step down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_tiny(preset: str, overrides: dict[str, Any], steps: int = 60) -> tuple[Any, Any, Any]:
    from lightning import seed_everything

    from lab.config import load_config
    from lab.train import build_datamodule, build_module, train_module

    cfg = load_config(preset, overrides)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg, dm)
    train_module(module, dm, steps)
    return module, dm, cfg


@pytest.fixture(scope="session")
def train_tiny() -> Callable[..., tuple[Any, Any, Any]]:
    """``train_tiny(preset, overrides, steps)`` -> (module, datamodule, config), trained with no run folder."""
    return _train_tiny


TRAINED_GPT = {"trainer.max_steps": 60, "model.n_layer": 2, "model.n_embd": 32, "model.n_head": 2,
               "model.block_size": 32, "optimizer.warmup_steps": 5}
"""A 2-layer gpt-nano worth compressing: two blocks to prune or halve, trained 60 steps."""


@pytest.fixture(scope="module")
def trained_gpt() -> tuple[Any, Any, Any]:
    """(module, datamodule, config) of ``TRAINED_GPT``, trained with no run folder (one per test module)."""
    return _train_tiny("gpt-nano", TRAINED_GPT)


def _three_runs(base: Any) -> Any:
    """Two seed-mlp runs that differ in learning rate, and one tiny gpt-nano (samples, tokens), under ``base``."""
    from lab.config import load_config
    from lab.train import fit

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for lr in (0.05, 0.02):
        fit(load_config("seed-mlp", {"trainer.max_steps": 30, "trainer.val_check_interval": 10,
                                     "optimizer.lr": lr}), runs_root=base, progress=False)
    fit(load_config("gpt-nano", {"trainer.max_steps": 20, "model.n_layer": 1, "model.n_embd": 32,
                                 "trainer.val_check_interval": 10, "trainer.limit_val_batches": 2}),
        runs_root=base, progress=False)
    return base


@pytest.fixture(scope="session")
def three_runs() -> Callable[[Any], Any]:
    """``three_runs(folder)`` trains the dashboard tests' runs there (each module keeps its own copy)."""
    return _three_runs


CORRUPT_RUNS = {
    "yaml-tag": ("config.yaml", b"model: !!python/object/apply:os.system ['echo pwned']\n"),
    "yaml-syntax": ("config.yaml", b"model: {name: gpt\ntrainer: [1, 2\n"),
    "binary": ("config.yaml", bytes(range(256)) * 4),
    "summary-list": ("summary.json", b'[1, 2, "not an object"]'),
}
"""One corrupt run of each kind issue 18 names: experiment name -> (file, its bytes)."""


def add_corrupt_runs(root: Any, outside: Any = None) -> list[str]:
    """Write one corrupt run of each kind under ``root`` (plus, given ``outside``, a run folder
    there and a symlinked run in ``root`` pointing at it); returns their ``<exp>/<id>`` names."""
    from pathlib import Path

    root = Path(root)
    names = []
    for exp, (file, data) in CORRUPT_RUNS.items():
        run_dir = root / exp / "20990101-000000-bad0"
        run_dir.mkdir(parents=True)
        (run_dir / file).write_bytes(data)
        if file == "summary.json":
            (run_dir / "config.yaml").write_text("seed: 1\n")
        names.append(f"{exp}/{run_dir.name}")
    if outside is not None:
        target = Path(outside) / "secret-run"
        target.mkdir(parents=True)
        (target / "config.yaml").write_text("experiment: secret\nseed: 7\n")
        (target / "summary.json").write_text('{"status": "completed", "error": "outside data"}')
        (root / "linked").mkdir(parents=True)
        (root / "linked" / "20990101-000000-link").symlink_to(target, target_is_directory=True)
        names.append("linked/20990101-000000-link")
    return names


@pytest.fixture
def corrupt_runs() -> Callable[..., list[str]]:
    """``corrupt_runs(root, outside=None)``: see ``add_corrupt_runs``."""
    return add_corrupt_runs


def _tensorboard_scalars(path: Any) -> dict[str, list[tuple[int, float, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="session")
def tensorboard_scalars() -> Callable[[Any], dict[str, list[tuple[int, float, float]]]]:
    """``tensorboard_scalars(run_dir)``: TensorBoard's own reader (EventAccumulator, its purges
    included), the reference ``lab.tfevents`` is checked against."""
    return _tensorboard_scalars


@pytest.fixture()
def dashboard_page(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``dashboard_page(root, "run.py", run=name)``: a dashboard page (None: the app) run by Streamlit's
    AppTest over the runs root ``root`` (None: ``$LAB_RUNS_DIR`` as it is), from the repository root
    (where .streamlit/ is)."""
    from streamlit.testing.v1 import AppTest

    repo = Path(__file__).resolve().parents[1]
    # AppTest leaves sys.modules["__main__"] as the last page it ran; a later test that spawns processes
    # (multiprocessing re-imports __main__ in the child) would run that page there. Put it back after.
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])

    def open_page(root: Path | None, page: str | None = None, **query: str) -> AppTest:
        if root is not None:
            monkeypatch.setenv("LAB_RUNS_DIR", str(root))
        monkeypatch.chdir(repo)
        at = AppTest.from_file(str(repo / "dashboard" / (page and f"pages/{page}" or "app.py")), default_timeout=90)
        for k, v in query.items():
            at.query_params[k] = v
        return at.run()

    return open_page


def listed_and_compared(dashboard_page: Callable[..., Any], run: Any, model: str, metric: str) -> None:
    """The Runs page lists ``run`` (the only one in its root) as ``model``; the Compare page shows its test
    ``metric`` as summary.json has it (to the 6 significant digits the table prints)."""
    root = run.path.parents[1]
    table = dashboard_page(root, "runs.py")
    assert not table.exception
    rows = next(d.value for d in table.dataframe if "run" in d.value.columns)
    assert list(rows["run"]) == [run.name] and list(rows["model"]) == [model]
    compare = dashboard_page(root, "compare.py", runs=run.name)
    assert not compare.exception
    metrics = next(d.value for d in compare.dataframe if run.name in d.value.columns and metric in d.value.index)
    assert float(metrics.loc[metric, run.name]) == pytest.approx(run.summary["test"][metric], rel=1e-5)
