"""The Streamlit dashboard: every page under AppTest, and one real-browser test (headless Chromium).

The runs folder comes from real short trainings (two seed-mlp runs that differ in learning
rate, one tiny gpt-nano): no fake event files.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import jobs
from lab.config import load_config, to_yaml
from lab.runs import list_runs, resolve_run

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboard" / "app.py"
PAGES = REPO / "dashboard" / "pages"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, three_runs) -> Path:
    return three_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture()
def app(root: Path, monkeypatch: pytest.MonkeyPatch):
    """Open a page with the runs root in LAB_RUNS_DIR, from the repo root (where .streamlit/ is)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    monkeypatch.chdir(REPO)

    def open_page(page: str | None = None, **query: str) -> AppTest:
        at = AppTest.from_file(str(APP if page is None else PAGES / page), default_timeout=90)
        for k, v in query.items():
            at.query_params[k] = v
        return at.run()

    return open_page


def scratch(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the runs folder for tests that add runs or jobs (the shared one stays as trained)."""
    copy = tmp_path / "runs"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".jobs"))
    monkeypatch.setenv("LAB_RUNS_DIR", str(copy))
    return copy


def names(root: Path, experiment: str) -> list[str]:
    return [r.name for r in list_runs(root) if r.experiment == experiment]


def texts(at) -> str:
    """Everything markdown/code/caption/alerts show, to search in."""
    parts = [e.value for kind in ("markdown", "code", "caption", "error", "info", "success", "warning", "text")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def test_streamlit_config_binds_to_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    # Streamlit reads ./.streamlit/config.toml: from the repo root that is the file above.
    code = "from streamlit import config; config.get_config_options(force_reparse=True); print(config.get_option('server.address'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "127.0.0.1"


def test_runs_page_lists_filters_and_searches(app, root: Path) -> None:
    at = app()
    assert not at.exception
    assert not at.sidebar.warning  # run from the repo root: bound to 127.0.0.1, no exposure warning
    df = at.dataframe[0].value
    assert len(df) == 3 and set(df["status"]) == {"completed"}
    assert set(df["experiment"]) == {"seed-mlp", "gpt-nano"}
    assert {"params", "steps", "best value", "wall time (s)", "throughput", "started"} <= set(df.columns)
    at.text_input(key="runs-search").set_value("gpt").run()
    assert list(at.dataframe[0].value["experiment"]) == ["gpt-nano"]
    at.text_input(key="runs-search").set_value("").run()
    at.multiselect(key="runs-exp").set_value(["seed-mlp"]).run()
    assert len(at.dataframe[0].value) == 2


def test_runs_page_empty_root(app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "none"))
    at = app()
    assert not at.exception and "No runs under" in at.info[0].value


def test_compare_page_curves_config_diff_metrics(app, root: Path) -> None:
    a, b = names(root, "seed-mlp")
    at = app("compare.py", runs=f"{a},{b}")
    assert not at.exception
    assert at.multiselect[0].value == [a, b]
    charts = at.get("vega_lite_chart")
    assert len(charts) >= 3  # train/loss, val/loss, hyperparameter vs metric
    config_df, metrics_df = at.dataframe[0].value, at.dataframe[1].value
    config_df = getattr(config_df, "data", config_df)  # a Styler (differing rows highlighted)
    assert list(config_df.index) == ["optimizer.lr"]
    assert {a, b} <= set(metrics_df.columns) and "best val/loss" in metrics_df.index
    # Showing every field keeps the highlighted difference among the rest.
    only = next(c for c in at.checkbox if c.label.startswith("Only"))
    only.uncheck().run()
    full = getattr(at.dataframe[0].value, "data", at.dataframe[0].value)
    assert len(full) > 10 and "optimizer.lr" in full.index
    # x axis by tokens/samples and wall time render too.
    at.radio[0].set_value("wall time").run()
    assert not at.exception and len(at.get("vega_lite_chart")) >= 3


def test_compare_page_refuses_escaping_names(app, root: Path) -> None:
    at = app("compare.py", runs="../../etc,%2e%2e/x")
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("outside the runs root" in e for e in errors) and any("URL-encoded" in e for e in errors)


def test_run_page_shows_config_samples_artifacts_command(app, root: Path) -> None:
    [gpt] = names(root, "gpt-nano")
    at = app("run.py", run=gpt)
    assert not at.exception
    assert at.selectbox[0].value == gpt
    body = texts(at)
    assert f"lab fit --config {root / gpt / 'config.yaml'}" in body
    assert "n_embd: 32" in body  # the config tab
    assert "step 20" in body  # a generated sample
    assert len(at.get("vega_lite_chart")) >= 1
    files = at.dataframe[-1].value
    assert "checkpoints/best.ckpt" in set(files["file"])
    assert "No evaluation yet" in body


def test_run_page_shows_evaluation_and_compression_reports(app, root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.compress import compress
    from lab.evaluate import evaluate

    root = scratch(root, tmp_path, monkeypatch)
    name = names(root, "seed-mlp")[0]
    evaluate(name, max_batches=1, repeats=1, warmup=1, log=False, runs_root=root)
    compress(resolve_run(name, root), "int8-dynamic", max_batches=1, repeats=1)
    at = app("run.py", run=name)
    assert not at.exception
    assert "eval-best (test split)" in [h.value for h in at.subheader]
    frames = [d.value for d in at.dataframe]
    figures = next(f for f in frames if "figure" in f.columns)
    assert "test/mse" in set(figures["figure"])
    methods = next(f for f in frames if "method" in f.columns)
    assert list(methods["method"]) == ["int8-dynamic"] and methods["size_ratio"].iloc[0] > 0


def test_run_page_accepts_a_bare_run_id_or_last(app, root: Path) -> None:
    newest = list_runs(root)[-1]
    for given in (newest.run_id, "last"):
        at = app("run.py", run=given)
        assert not at.exception and not at.error
        assert at.selectbox[0].value == newest.name


@pytest.mark.parametrize("bad", ["../../etc", "seed-mlp/../../x", "%2e%2e", "no-such/run"])
def test_run_page_refuses_escaping_names(app, root: Path, bad: str) -> None:
    at = app("run.py", run=bad)
    assert not at.exception
    assert any(("outside the runs root" in e.value) or ("URL-encoded" in e.value) or ("not a run folder" in e.value)
               for e in at.error), [e.value for e in at.error]
    assert not at.get("vega_lite_chart")


def test_actions_page_starts_one_job_and_shows_failures(app, root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = scratch(root, tmp_path, monkeypatch)
    a = names(root, "seed-mlp")[0]
    at = app("actions.py", run=a)
    assert not at.exception
    at.number_input(key="ev-mb").set_value(1)
    at.number_input(key="ev-rep").set_value(1)
    at.button[0].click().run()  # Evaluate
    assert any("Started job" in s.value for s in at.success), texts(at)
    at.button[0].click().run()  # a second click: no duplicate
    assert any("no duplicate started" in i.value for i in at.info), texts(at)
    started = [j for j in jobs.list_jobs(root) if j.args[0] == "evaluate"]
    assert len(started) == 1
    # A bad edited config is refused before anything starts; a good one starts a training job.
    at.text_area[0].set_value("model:\n  name: gpt\n  n_embd: 128\n  n_head: 3\n")
    next(b for b in at.button if b.label == "Train").click().run()
    assert any("config refused" in e.value and "n_head" in e.value for e in at.error), texts(at)
    edited = to_yaml(load_config("seed-mlp", {"trainer.max_steps": 5, "experiment": "edited"}))
    at.text_area[0].set_value(edited)
    next(b for b in at.button if b.label == "Train").click().run()
    assert any("Started job" in s.value and "lab fit --config" in s.value for s in at.success), texts(at)
    [fit_job] = [j for j in jobs.list_jobs(root) if j.args[0] == "fit"]
    assert Path(fit_job.args[2]).read_text() == edited
    # The browser test waits for an evaluation to finish; here both started jobs are cancelled.
    for job in jobs.list_jobs(root):
        jobs.cancel(job.id, root)
    # A failed job shows its error line (argparse refuses a missing run before any import).
    failing = jobs.start(["evaluate"], root)
    end = time.time() + 60
    while time.time() < end and jobs.get(failing.id, root).active:
        time.sleep(0.2)
    at = app("actions.py", run=a)
    errors = [e.value for e in at.error]
    assert any(e.startswith("exit code 2:") and "required: run" in e for e in errors), errors
    assert {j.state for j in jobs.list_jobs(root)} == {"cancelled", "failed"}


def test_actions_page_cancels_a_job(app, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = scratch(root, tmp_path, monkeypatch)
    job = jobs.start(["fit", "--config", "seed-mlp", "--experiment", "to-cancel", "--trainer.max_steps", "100000"], root)
    at = app("actions.py")
    assert any(job.display_command in m.value and ("queued" in m.value or "running" in m.value) for m in at.markdown)
    at.button(key=f"cancel-{job.id}").click().run()
    assert jobs.get(job.id, root).state == "cancelled"
    assert not at.exception and not any(b.key == f"cancel-{job.id}" for b in at.button)


def test_runs_page_refreshes_while_a_run_trains(app, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.runs import update_summary

    copy = scratch(root, tmp_path, monkeypatch)
    update_summary(list_runs(copy)[0], status="running")
    at = app()
    assert "refreshing every 5 s" in texts(at)
    assert "running" in set(at.dataframe[0].value["status"])


def test_runs_page_shows_a_killed_run_as_crashed_and_stops_refreshing(app, root: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      other_process) -> None:
    from lab.runs import update_summary

    copy = scratch(root, tmp_path, monkeypatch)
    child, ident = other_process
    victim = list_runs(copy)[0]
    update_summary(victim, status="running", process=ident)
    at = app()
    assert "refreshing every 5 s" in texts(at) and "running" in set(at.dataframe[0].value["status"])
    child.kill()
    child.wait()  # no file changes: the cached table must still learn of it
    at.run()
    assert not at.exception and "crashed" in set(at.dataframe[0].value["status"])
    assert "refreshing every 5 s" not in texts(at)
    page = app("run.py", run=victim.name)
    assert page.metric[0].value == "crashed"
    assert any(f"pid {ident['pid']}" in w.value and "lab fit --resume" in w.value for w in page.warning)


def test_environment_page_shows_doctor_checks(app) -> None:
    at = app("environment.py")
    assert not at.exception
    checks = at.dataframe[0].value
    assert {"torch version", "disk space"} <= set(checks["check"])
    assert set(checks["status"]) <= {"PASS", "WARN", "FAIL"}
    assert (at.success or at.error)[0].value.startswith("lab doctor:")


# --------------------------------------------------------------------------- real browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_browser_compare_and_evaluate(root: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    pw = pytest.importorskip("playwright.sync_api")
    browser_root = tmp_path / "runs"
    shutil.copytree(root, browser_root, ignore=shutil.ignore_patterns(".jobs"))
    a, b = names(browser_root, "seed-mlp")
    port = _free_port()
    env = {**os.environ, "LAB_RUNS_DIR": str(browser_root), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "streamlit.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port)],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.time() + 60
        while time.time() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            page.goto(f"{url}/Compare?runs={a},{b}", timeout=60_000)
            page.wait_for_selector("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg",
                                   timeout=60_000)
            page.wait_for_selector("[data-testid='stDataFrame']", timeout=30_000)
            assert page.locator("[data-testid='stVegaLiteChart']").count() >= 2
            page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)

            page.goto(f"{url}/Actions?run={a}", timeout=60_000)
            page.get_by_role("button", name="Evaluate").click(timeout=60_000)
            page.get_by_text("Started job").wait_for(timeout=30_000)
            page.get_by_text("done", exact=True).wait_for(timeout=120_000)  # the job list refreshes itself

            page.goto(f"{url}/Run?run={a}", timeout=60_000)
            page.get_by_role("tab", name="Evaluation").click(timeout=60_000)
            page.get_by_text("eval-best (test split)").wait_for(timeout=30_000)
            page.get_by_role("tabpanel").locator("[data-testid='stDataFrame']").first.wait_for(timeout=30_000)
            assert page.get_by_role("link", name="Compare").count() >= 1  # the sidebar navigation
            page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
            browser.close()
        assert (browser_root / a / "reports" / "eval-best.json").is_file()
        assert (tmp_path / "compare.png").stat().st_size > 10_000
        # The server bound to loopback only (.streamlit/config.toml).
        assert f"127.0.0.1:{port}" in (tmp_path / "streamlit.log").read_text()
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
        log.close()
