"""The Streamlit dashboard: every page under AppTest, and real-browser tests (headless Chromium)
against one server started by ``lab dashboard`` from another folder.

The runs folder comes from real short trainings (two seed-mlp runs that differ in learning
rate, one tiny gpt-nano). The hardening tests (issue 18) add, in a copy: one corrupt run of each
kind, a run folder linked to outside the root, a failed run whose error is Markdown with an
image and a link, and a run that is training (this process's identity, event files written by
TensorBoard's writer).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import add_corrupt_runs
from test_dashboard_data import add_running_run

from lab import jobs
from lab.config import load_config, to_yaml
from lab.fileio import write_json
from lab.ports import free_port
from lab.runs import list_runs, resolve_run

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboard" / "app.py"
PAGES = REPO / "dashboard" / "pages"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, three_runs) -> Path:
    return three_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture()
def app(root: Path, dashboard_page, monkeypatch: pytest.MonkeyPatch):
    """Open a page (None: the app) over the three-run root: ``app("run.py", run=name)``; a test may
    point ``LAB_RUNS_DIR`` elsewhere before it opens one."""
    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    return lambda page=None, **query: dashboard_page(None, page, **query)


def scratch(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the runs folder for tests that add runs or jobs (the shared one stays as trained)."""
    copy = tmp_path / "runs"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".jobs"))
    monkeypatch.setenv("LAB_RUNS_DIR", str(copy))
    return copy


def names(root: Path, experiment: str) -> list[str]:
    return [r.name for r in list_runs(root) if r.experiment == experiment]


def unescape(markdown: str) -> str:
    """What a Markdown source the pages escaped (``common.plain``) shows: backslash escapes (and
    the invisible word joiners that stop bare URLs from becoming links) removed."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")


def texts(at) -> str:
    """Everything markdown/code/caption/alerts show, to search in (as shown: escapes removed)."""
    parts = [e.value for kind in ("markdown", "code", "caption", "error", "info", "success", "warning", "text")
             for e in getattr(at, kind)]
    return unescape("\n".join(str(p) for p in parts))


def test_streamlit_config_binds_to_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    # The config next to the app (read from any folder) and the repo root's (older Streamlit) agree.
    for path in (REPO / ".streamlit" / "config.toml", APP.parent / ".streamlit" / "config.toml"):
        cfg = tomllib.loads(path.read_text())
        assert cfg["server"]["address"] == "127.0.0.1" and cfg["browser"]["gatherUsageStats"] is False, path
    # Streamlit reads ./.streamlit/config.toml: from the repo root that is the file above.
    code = "from streamlit import config; config.get_config_options(force_reparse=True); print(config.get_option('server.address'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "127.0.0.1"


def test_runs_page_lists_filters_and_searches(app, root: Path) -> None:
    at = app()
    assert not at.exception
    assert not at.sidebar.warning  # run from the repo root: bound to 127.0.0.1, no exposure warning
    # The runs root is the server's, shown read-only: no box to type another folder into.
    assert [t.label for t in at.text_input] == ["Search"]
    assert str(root.absolute()) in [t.value for t in at.sidebar.text]
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
    errors = [unescape(e.value) for e in at.error]
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
    assert "eval-best (test split)" in [unescape(h.value) for h in at.subheader]
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
    errors = [unescape(e.value) for e in at.error]
    assert any(("outside the runs root" in e) or ("URL-encoded" in e) or ("not a run folder" in e) for e in errors), errors
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
    assert any("config refused" in unescape(e.value) and "n_head" in unescape(e.value) for e in at.error), texts(at)
    edited = to_yaml(load_config("seed-mlp", {"trainer.max_steps": 5, "experiment": "edited"}))
    at.text_area[0].set_value(edited)
    next(b for b in at.button if b.label == "Train").click().run()
    assert any("Started job" in s.value and "lab fit --config" in s.value for s in at.success), texts(at)
    [fit_job] = [j for j in jobs.list_jobs(root) if j.args[0] == "fit"]
    assert Path(fit_job.args[2]).read_text() == edited
    # Every job, and the edited config, lives under the server's runs root: the browser names no folder.
    assert {j.root for j in jobs.list_jobs(root)} == {str(root.resolve())}
    assert Path(fit_job.args[2]).parent == root.resolve() / ".jobs"
    # The browser test waits for an evaluation to finish; here both started jobs are cancelled.
    for job in jobs.list_jobs(root):
        jobs.cancel(job.id, root)
    # A failed job shows its error line (argparse refuses a missing run before any import).
    failing = jobs.start(["evaluate"], root)
    end = time.time() + 60
    while time.time() < end and jobs.get(failing.id, root).active:
        time.sleep(0.2)
    at = app("actions.py", run=a)
    errors = [unescape(e.value) for e in at.error]
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
    assert any(f"pid {ident['pid']}" in unescape(w.value) and "lab fit --resume" in unescape(w.value) for w in page.warning)


def test_environment_page_shows_doctor_checks(app) -> None:
    at = app("environment.py")
    assert not at.exception
    checks = at.dataframe[0].value
    assert {"torch version", "disk space"} <= set(checks["check"])
    assert set(checks["status"]) <= {"PASS", "WARN", "FAIL"}
    # The banner follows the report: green only when no check failed.
    failed = "FAIL" in set(checks["status"])
    banner = at.error if failed else at.success
    assert len(banner) == 1 and banner[0].value.startswith("lab doctor:") and not (at.success if failed else at.error)


# --------------------------------------------------------------------------- issue 18: a hostile runs folder

MARKDOWN_ERROR = "ValueError: ![x](http://127.0.0.1:9/pixel.png) then [click](http://example.invalid) www.example.invalid"


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory: pytest.TempPathFactory, root: Path):
    """The trained runs plus: a corrupt run of each kind, a link to a run outside the root, a
    failed run with a Markdown error, a training run (this process) at step 37 of 100.

    Yields ``(root, names)``; ``names["writer"]`` logs more steps of the training run."""
    base = tmp_path_factory.mktemp("hostile")
    copy = base / "runs"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".jobs"))
    bad = add_corrupt_runs(copy, outside=base / "outside")
    md = copy / "mdfail" / "20990101-000000-md00"
    md.mkdir(parents=True)
    (md / "config.yaml").write_text(yaml.safe_dump({"experiment": "mdfail", "model": {"name": "mlp"}}))
    write_json(md / "summary.json", {"status": "failed", "error": MARKDOWN_ERROR})
    live, writer = add_running_run(copy)
    try:
        yield copy, {"bad": bad, "linked": bad[-1], "markdown": "mdfail/20990101-000000-md00", "live": live,
                     "writer": writer}
    finally:
        writer.close()


def test_every_page_works_beside_corrupt_and_linked_out_runs(app, bad_root, monkeypatch: pytest.MonkeyPatch) -> None:
    root, n = bad_root
    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    at = app()
    assert not at.exception
    df = at.dataframe[0].value.set_index("run")
    for name in n["bad"]:
        assert df.loc[name, "status"] == "unreadable" and df.loc[name, "problem"].startswith(("unreadable:", "refused:"))
    assert "outside the runs root" in df.loc[n["linked"], "problem"] and "outside data" not in texts(at)
    assert sum(f"{name}: {df.loc[name, 'problem']}" in texts(at) for name in n["bad"]) == len(n["bad"])
    readable = [name for name in df.index if name not in n["bad"]]
    # No page opens on a run it cannot read, though the corrupt ones are the newest.
    for page in ("run.py", "actions.py"):
        at = app(page)
        assert not at.exception and "cannot be opened" not in texts(at), texts(at)
        assert at.selectbox[0].value == readable[0]
    at = app("compare.py")
    assert not at.exception and at.multiselect[0].value == readable[:2]
    at = app("environment.py")
    assert not at.exception


@pytest.mark.parametrize("page", ["run.py", "actions.py", "compare.py"])
def test_picking_a_bad_run_shows_why_in_one_line(app, bad_root, monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    root, n = bad_root
    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    problems = {r.name: r.problem for r in list_runs(root) if r.problem}
    for name in n["bad"]:
        at = app(page, **({"runs": name} if page == "compare.py" else {"run": name}))
        assert not at.exception
        errors = [unescape(e.value) for e in at.error]
        assert errors == [f"{name} cannot be opened: {problems[name]}"], errors
        assert not at.get("vega_lite_chart") and "outside data" not in texts(at)


def test_text_from_run_files_is_never_markdown(app, bad_root, monkeypatch: pytest.MonkeyPatch) -> None:
    root, n = bad_root
    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    at = app("run.py", run=n["markdown"])
    [error] = [e.value for e in at.error]
    assert unescape(error) == f"failed: {MARKDOWN_ERROR}"
    # Every bracket, colon and dot escaped: no image, link or autolink left for Markdown to render.
    assert not re.search(r"(?<!\\)[\[\]():.]", error)
    runs_page = app()
    [warning] = [w.value for w in runs_page.warning if n["markdown"].split("/")[0] in unescape(w.value)]
    assert unescape(warning) == f"{n['markdown']} failed: {MARKDOWN_ERROR}" and not re.search(r"(?<!\\)[\[\]]", warning)


def test_a_training_run_shows_live_steps(app, bad_root, monkeypatch: pytest.MonkeyPatch) -> None:
    root, n = bad_root
    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    at = app()
    row = at.dataframe[0].value.set_index("run").loc[n["live"]]
    assert row["status"] == "running" and row["steps"] == 37 and row["best value"] == 2.0
    assert "refreshing every 5 s" in texts(at)
    page = app("run.py", run=n["live"])
    assert [m.value for m in page.metric][:3] == ["running", "37 / 100", "2"]


def test_lab_dashboard_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    from lab.dashboard_server import command

    argv, env = command(tmp_path / "runs", port=8600)
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1" and env["LAB_RUNS_DIR"] == str(tmp_path / "runs")
    assert argv[argv.index("--browser.gatherUsageStats") + 1] == "false" and Path(argv[4]) == APP
    (tmp_path / "file").write_text("x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cases = {("--port", "0"): "--port 0", ("--port", "70000"): "--port 70000",
                 ("--runs_dir", str(tmp_path / "file")): "is a file",
                 ("--port", str(busy)): f"cannot listen on 127.0.0.1:{busy}",
                 ("--host", "203.0.113.9"): "cannot listen on 203.0.113.9"}
        for args, why in cases.items():
            out = subprocess.run([sys.executable, "-m", "lab.cli", "dashboard", *args], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 2 and out.stderr.startswith("error: ") and why in out.stderr, (args, out.stderr)
            assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


# --------------------------------------------------------------------------- real browser, `lab dashboard`


def _chromium() -> str:
    """Debian's chromium; missing, the browser tests skip -- except under CI, where they fail."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        why = "Debian's chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run the real-browser tests")
        pytest.skip(why)
    return chromium


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                found.add(addr)
    return found


@pytest.fixture(scope="module")
def server(bad_root, tmp_path_factory: pytest.TempPathFactory):
    """``lab dashboard --runs_dir <hostile root> --port P`` started from an empty folder: no
    .streamlit/ there, no LAB_RUNS_DIR, no STREAMLIT_* settings. Yields (url, pid, log path)."""
    _chromium()
    pytest.importorskip("playwright.sync_api")
    root, _ = bad_root
    cwd = tmp_path_factory.mktemp("elsewhere")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LAB_RUNS_DIR" and not k.startswith("STREAMLIT_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    log_path = cwd / "dashboard.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "dashboard", "--runs_dir", str(root), "--port", str(port)],
                            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.time() > end:
                    raise AssertionError(f"the dashboard did not start: {log_path.read_text()}")
                time.sleep(0.3)
        yield url, proc.pid, log_path
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


@pytest.fixture()
def browser_page(server):
    """A page of headless chromium that records every URL it requests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 2400, "height": 2200})  # every column of the Runs table
        page.requested = []
        page.on("request", lambda r: page.requested.append(r.url))
        yield page
        browser.close()
    # Nothing left this machine's dashboard: no usage statistics (data.streamlit.io), no image
    # or link from a run's files.
    assert {u.split("/")[2] for u in page.requested if u.startswith("http")} == {server[0].split("/")[2]}, \
        sorted({u for u in page.requested if not u.startswith(server[0])})


def _no_exception(page, shown: str) -> None:
    """Wait for ``shown`` (text the page ends with), then check no exception box came before it."""
    page.get_by_text(shown, exact=False).first.wait_for(timeout=90_000)
    assert page.locator("[data-testid='stException']").count() == 0, page.inner_text("body")[:2000]


@pytest.mark.slow
def test_browser_lab_dashboard_from_another_folder_listens_on_loopback_only(server) -> None:
    url, pid, log = server
    port = int(url.rsplit(":", 1)[1])
    assert _listening(port) == {"0100007F"}, _listening(port)  # 127.0.0.1, no 0.0.0.0 or :: socket
    assert Path(f"/proc/{pid}/cwd").resolve() != REPO  # started elsewhere: no .streamlit/ config there
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--browser.gatherUsageStats") + 1] == b"false"
    assert argv[argv.index(b"--server.address") + 1] == b"127.0.0.1"
    assert "dashboard: http://127.0.0.1" in log.read_text()


@pytest.mark.slow
def test_browser_hostile_runs_folder(server, bad_root, browser_page) -> None:
    url, _, _ = server
    root, n = bad_root
    page = browser_page
    page.goto(url, timeout=60_000)
    page.wait_for_selector("[data-testid='stDataFrame'] td", state="attached", timeout=60_000)
    _no_exception(page, "refreshing every 5 s")
    assert page.get_by_role("textbox", name="Runs folder").count() == 0
    assert str(root) in page.locator("[data-testid='stSidebar']").inner_text()
    cells = page.locator("[data-testid='stDataFrame'] td").all_inner_texts()
    assert cells.count("unreadable") == len(n["bad"])
    assert any(c.startswith("refused:") and "outside the runs root" in c for c in cells)
    row = cells[cells.index(n["live"]):]
    assert row[2] == "running" and "37" in row[:8]  # live steps, not None
    for path, shown in (("/Compare", "Hyperparameter vs metric"), ("/Actions", "Jobs"),
                        ("/Environment", "lab doctor:"), (f"/Run?run={n['linked']}", "outside the runs root")):
        page.goto(url + path, timeout=60_000)
        _no_exception(page, shown)

    # summary.json's error is text: no <img> fetched, no link, the characters shown as written.
    page.goto(f"{url}/Run?run={n['markdown']}", timeout=60_000)
    _no_exception(page, "pixel.png) then [click]")
    assert page.locator("img[src*='127.0.0.1:9'], img[src*='pixel']").count() == 0
    assert page.locator("a[href*='example.invalid']").count() == 0, \
        page.locator("a[href*='example.invalid']").evaluate_all("els => els.map(e => [e.href, e.outerHTML, e.parentElement.outerHTML])")
    assert MARKDOWN_ERROR in page.locator("[data-testid='stAlert']").first.inner_text().replace("\u2060", "")

    # The training run: its step is live, and the page follows it without a reload.
    page.goto(f"{url}/Run?run={n['live']}", timeout=60_000)
    page.get_by_text("37 / 100").wait_for(timeout=60_000)
    for s in range(37, 50):
        n["writer"].add_scalar("train/loss", 0.1, s)
    n["writer"].flush()
    page.get_by_text("50 / 100").wait_for(timeout=30_000)


@pytest.mark.slow
def test_browser_compare_and_evaluate(server, bad_root, browser_page, tmp_path: Path) -> None:
    url, _, _ = server
    root, _ = bad_root
    a, b = names(root, "seed-mlp")
    page = browser_page
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
    assert (root / a / "reports" / "eval-best.json").is_file()
    assert [j.root for j in jobs.list_jobs(root)] == [str(root.resolve())]  # the job ran in the server's root
    assert (tmp_path / "compare.png").stat().st_size > 10_000


@pytest.mark.slow
def test_browser_sweep_page(server, bad_root, browser_page) -> None:
    """The Sweep page (issue 25) over a real 2-trial `lab sweep`, in its own experiment, removed afterwards."""
    from lab.sweep import sweep

    url, _, _ = server
    root, _ = bad_root
    tiny = {"experiment": "sweep-check", "trainer.max_steps": 10, "trainer.val_check_interval": 5,
            "trainer.limit_val_batches": 2, "model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2,
            "model.block_size": 32, "trainer.checkpoint_every_n_steps": None}
    try:
        result = sweep("gpt-nano", {"optimizer.lr": {"low": 1e-3, "high": 3e-2, "log": True}}, trials=2,
                       overrides=tiny, runs_root=root, name="lr", pruner="none", echo=None)
        page = browser_page
        page.goto(f"{url}/Sweep?sweep=sweep-check/lr", timeout=60_000)
        page.wait_for_selector("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg",
                               timeout=90_000)
        _no_exception(page, "Trials")
        assert page.locator("[data-testid='stVegaLiteChart']").count() >= 3  # history, values per step, parallel
        assert "2 / 2" in page.locator("[data-testid='stMetric']").first.inner_text()
        best_run = result.best["run"]
        assert f"lab fit --config {root / best_run / 'config.yaml'}" in page.locator("[data-testid='stCode']").inner_text()
        assert page.get_by_role("link", name="Sweep").count() >= 1  # in the sidebar navigation
        page.goto(f"{url}/Sweep?sweep=../../etc", timeout=60_000)
        _no_exception(page, "no sweep ../../etc under this runs folder")
    finally:
        shutil.rmtree(root / "sweep-check", ignore_errors=True)  # the other tests' runs folder as it was


# --------------------------------------------------------------------------- issue 23: the Explain section


def test_run_page_explains_a_test_sample_and_a_prompt(app, root: Path) -> None:
    [mlp, _] = names(root, "seed-mlp")
    at = app("run.py", run=mlp)
    assert not at.exception and "Explain" in [h.value for h in at.subheader]
    at.number_input(key="explain-index").set_value(2)
    at.button(key="explain-go").click().run()
    assert not at.exception and not at.error, texts(at)
    assert "explaining output 0" in texts(at) and len(at.get("image")) >= 1  # bars over the 10 features
    at.number_input(key="explain-index").set_value(10**6).run()
    at.button(key="explain-go").click().run()
    assert any("give an index from 0 to" in unescape(e.value) for e in at.error)  # one line, no traceback
    [gpt] = names(root, "gpt-nano")
    at = app("run.py", run=gpt)
    at.text_input(key="explain-text").set_value("The pass")
    at.button(key="explain-go").click().run()
    assert not at.exception and not at.error, texts(at)
    lens = next(d.value for d in at.dataframe if "layer" in d.value.columns)
    assert list(lens["layer"]) == ["embeddings", "block 1"]  # a 1-layer GPT: the embeddings, then its block
    assert len(at.get("image")) >= 3  # token heatmap, attention maps, logit lens


@pytest.mark.slow
def test_browser_explain_section(server, bad_root, browser_page, tmp_path: Path) -> None:
    url, _, _ = server
    root, _ = bad_root
    [gpt] = names(root, "gpt-nano")
    page = browser_page
    page.goto(f"{url}/Run?run={gpt}", timeout=60_000)
    _no_exception(page, "the same pictures with")  # the section's caption: the page has run to its end
    if page.get_by_role("dialog").count():  # Streamlit's "Page not found" notice on a first, slow load
        page.keyboard.press("Escape")  # (it makes everything behind it inert)
    box = page.get_by_label("Text (a language model's prompt)")
    box.fill("The pass", timeout=120_000)
    box.press("Enter")
    page.get_by_role("button", name="Explain").click(timeout=120_000)
    _no_exception(page, "what each layer predicts next")  # the logit-lens table's heading
    for caption in ("attribution heatmaps", "attention weights per layer and head"):
        page.get_by_text(caption).first.wait_for(timeout=60_000)
    assert page.locator("[data-testid='stMain'] img").count() >= 3  # heatmap, attention maps, logit lens
    body = page.inner_text("body")
    assert "explaining" in body and "likeliest" in body
    assert page.locator("[data-testid='stDataFrame']").count() >= 1  # the logit-lens table (a canvas grid)
    page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)
    assert not (root / gpt / "reports" / "explain").exists()  # the page explains; it writes nothing


# --------------------------------------------------------------------------- issue 24: the Serve page


def _wait_until_serving(sc, server: dict) -> None:
    end = time.time() + 180
    while sc.health(server["url"])["status"] != "ok" and time.time() < end:
        time.sleep(0.3)
    assert sc.health(server["url"])["status"] == "ok", jobs.tail(server["job"], 30)


def _stop_every_server(sc, root: Path) -> None:
    """Cancel the serve jobs a test started, wait for their ports to close, and remove their files."""
    for s in sc.servers(root):
        sc.stop_job(s["job"].id, root)
    for job in [j for j in jobs.list_jobs(root) if j.args[:1] == ["serve"]]:
        port = int(job.args[job.args.index("--port") + 1])
        end = time.time() + 30
        while sc.health(f"http://127.0.0.1:{port}")["status"] != "down" and time.time() < end:
            time.sleep(0.2)
        job.state_path.unlink(missing_ok=True)
        job.log_path.unlink(missing_ok=True)


def test_serve_page_starts_a_server_answers_a_prompt_and_stops_it(app, root: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.serve import client as sc

    root = scratch(root, tmp_path, monkeypatch)
    [gpt] = names(root, "gpt-nano")
    at = app("serve.py", run=gpt)
    assert not at.exception and "Start a server above" in texts(at) and "No server running" in texts(at)
    assert at.selectbox(key="serve-artifact").options == ["fp32"]  # nothing compressed in this run
    try:
        at.button(key="serve-start").click().run()
        assert any("Started server job" in unescape(s.value) for s in at.success), texts(at)
        at.button(key="serve-start").click().run()  # a second click: the same server, no second one
        assert any("no second server started" in unescape(i.value) for i in at.info), texts(at)
        found = sc.servers(root, gpt)
        assert len(found) == 1, [(j.state, j.error, jobs.tail(j)) for j in jobs.list_jobs(root)]
        server = found[0]
        assert server["url"].startswith("http://127.0.0.1:") and server["job"].root == str(root.resolve())
        _wait_until_serving(sc, server)
        at.run()
        assert "**ok** · " in texts(at) and not at.exception
        at.text_area(key="serve-prompt").set_value("The ")
        at.number_input(key="serve-max-tokens").set_value(12)
        at.number_input(key="serve-temperature").set_value(0.0)
        at.button(key="serve-send").click().run()
        assert not at.exception and not at.error, texts(at)
        assert "finish_reason length · 4 prompt + 12 completion tokens" in texts(at)
        assert any(t.value.startswith("The") for t in at.text), [t.value for t in at.text]  # (maybe spaces after)
        at.run()  # the metrics table counts the completion
        table = next(d.value for d in at.dataframe if "figure" in d.value.columns)
        shown = dict(zip(table["figure"], table["value"]))
        assert shown["completions"] == "1" and shown["generated tokens"] == "12" and shown["errors (4xx/5xx)"] == "0"
        assert shown["mean latency (ms)"] != "-" and shown["queue depth"] == "0"
        at.button(key=f"serve-stop-{server['job'].id}").click().run()
        assert jobs.get(server["job"].id, root).state == "cancelled" and sc.servers(root, gpt) == []
        end = time.time() + 30
        while sc.health(server["url"])["status"] != "down" and time.time() < end:
            time.sleep(0.2)
        assert sc.health(server["url"])["status"] == "down"  # the server process is gone, its port closed
        assert "No server running" in texts(at) and not at.exception
        # A port already taken: the server's job fails, and the page says so (not just "no server").
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            at.number_input(key="serve-port").set_value(taken.getsockname()[1])
            at.button(key="serve-start").click().run()
            [job] = [s["job"] for s in sc.servers(root, gpt)]
            end = time.time() + 120
            while jobs.get(job.id, root).active and time.time() < end:
                time.sleep(0.3)
            at.run()
        assert jobs.get(job.id, root).state == "failed"
        assert any("the last server" in unescape(e.value) and "exit code" in unescape(e.value) for e in at.error), \
            texts(at)
    finally:
        _stop_every_server(sc, root)
    # A model that does not generate text gets the /predict hint instead of a prompt box.
    mlp = names(root, "seed-mlp")[0]
    at = app("serve.py", run=mlp)
    assert not at.exception and "is not a language model: send it a sample with POST /predict" in texts(at)
    assert not at.text_area


@pytest.mark.slow
def test_browser_serve_section(server, bad_root, browser_page) -> None:
    """Start a server through the Serve page, send a prompt, see the text come back, stop it."""
    from lab.serve import client as sc

    url, _, _ = server
    root, _ = bad_root
    [gpt] = names(root, "gpt-nano")
    page = browser_page
    try:
        page.goto(f"{url}/Serve?run={gpt}", timeout=60_000)
        _no_exception(page, "Start a server above")
        if page.get_by_role("dialog").count():  # Streamlit's "Page not found" notice on a first, slow load
            page.keyboard.press("Escape")
        page.get_by_role("button", name="Start server").click(timeout=60_000)
        page.get_by_text("Started server job").wait_for(timeout=30_000)
        box = page.get_by_label("Prompt", exact=True)
        box.wait_for(timeout=180_000)  # appears once /health says ok (the servers refresh every 2 s)
        box.fill("The ")
        box.press("Control+Enter")  # a text area commits its value on Ctrl+Enter (or on leaving it)
        temperature = page.get_by_label("Temperature (0 = greedy)")
        temperature.fill("0")
        temperature.press("Enter")
        page.get_by_role("button", name="Send").click(timeout=60_000)
        _no_exception(page, "finish_reason length")
        assert "4 prompt + 40 completion tokens" in page.inner_text("body")
        shown = page.locator("[data-testid='stText']").all_inner_texts()
        assert any(t.startswith("The") for t in shown), shown  # the prompt and its completion (maybe spaces)
        page.get_by_role("button", name="Stop").click(timeout=60_000)
        page.get_by_text("No server running for this run").wait_for(timeout=60_000)
        assert sc.servers(root, gpt) == []
    finally:
        _stop_every_server(sc, root)
