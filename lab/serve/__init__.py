"""``lab serve``: a run's model behind HTTP -- OpenAI-compatible completions, /predict, health and metrics.

    lab serve gpt-nano/20261128-120000-ab12 [--artifact int8-dynamic] [--port 8000] [--api-key KEY]

    from lab.serve import ServeConfig, serve, start, scrape
    serve(ServeConfig(run="last"))                          # blocks, like the CLI
    server = start(ServeConfig(run="last", port=0))          # in this process, in the background
    server.url, server.wait_ready()                          # http://127.0.0.1:<free port>, True when warmed up
    scrape(server.url)                                       # {"lab_serve_requests_total{...}": 3.0, ...}
    server.stop()

    from openai import OpenAI
    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    client.completions.create(model=server.name, prompt="ROMEO:", max_tokens=50, stream=True)

A notebook or the dashboard starts a server with ``start`` (a thread of its own process) or as a
background ``lab serve`` job (``lab.jobs``), and reads ``/health`` and ``/metrics`` (``scrape``).

The stack: FastAPI on uvicorn -- maintained, async (streams and many open connections on one thread
while the model works on another), request bodies validated by pydantic, and the server-sent events
OpenAI's streaming uses are a plain streaming response. LitServe was not chosen: it is not installed,
brings its own stack, and the lab wanted its own batching across generation steps anyway.

The modules: ``config`` (ServeConfig: every limit), ``loaded`` (checkpoint or compressed artifact),
``batching`` (dynamic batches), ``generation`` (batched decoding with the GPT's KV cache), ``predict``
(``/predict`` bodies by the family record's ``serve``), ``app`` and ``completions`` (the routes),
``metrics`` (Prometheus).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from lab.errors import LabError
from lab.ports import check_listen
from lab.serve.config import ARTIFACTS, ServeConfig

CONFIG_ENV = "LAB_SERVE_CONFIG"
"""How ``--workers N`` hands the config to each worker process (uvicorn imports the app factory there)."""


def app_from_env() -> Any:
    """uvicorn's factory in each worker process: the app for the config in ``$LAB_SERVE_CONFIG``."""
    from lab.serve.app import create_app

    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])), own_process=True)


def serve(cfg: ServeConfig) -> int:
    """Run the server until Ctrl-C (the CLI's ``lab serve``); -> exit code."""
    import uvicorn

    cfg = check(cfg)
    print(f"serving {cfg.run} ({cfg.artifact}) on http://{cfg.host}:{cfg.port} -- GET /health says when it is "
          "ready; Ctrl-C stops", flush=True)
    if cfg.workers > 1:  # each worker process loads its own model
        os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(cfg))
        uvicorn.run("lab.serve:app_from_env", factory=True, host=cfg.host, port=cfg.port, workers=cfg.workers,
                    timeout_graceful_shutdown=5, access_log=cfg.access_log)
        return 0
    from lab.serve.app import create_app

    uvicorn.run(create_app(cfg, own_process=True), host=cfg.host, port=cfg.port, timeout_graceful_shutdown=5,
                access_log=cfg.access_log)
    return 0


def check(cfg: ServeConfig) -> ServeConfig:
    """Refuse, before a server starts, bad options, an address this machine cannot listen on, a run or a
    checkpoint that does not exist, or an artifact not made yet.

    -> ``cfg`` with ``run`` as the ``<experiment>/<run_id>`` it names now: "last" or a bare id is resolved
    once, so a run that finishes while the model loads does not change what is served (in any worker).
    """
    from lab.compress.artifacts import artifact_file
    from lab.evaluate import existing_checkpoint, run_config
    from lab.runs import resolve_run
    from lab.serve.loaded import ONNX_FILES

    cfg.validate()
    run = resolve_run(cfg.run, cfg.runs_dir)
    run_config(run)
    existing_checkpoint(run, cfg.ckpt)  # every artifact loads it too: the config, the tokenizer, the fp32 weights
    if cfg.artifact != "fp32":
        artifact_file(run, cfg.artifact, ONNX_FILES.get(cfg.artifact, "report.json"))
    check_listen(cfg.host, cfg.port)  # last: of these facts, the one most likely to change by the time it listens
    return dataclasses.replace(cfg, run=run.name)


@dataclass
class Running:
    """A server started by ``start`` in this process."""

    url: str
    """``http://host:port``."""
    name: str
    """The model's name in the API."""
    server: Any
    thread: threading.Thread

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Wait until /health says ready; False when it failed to load or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return True
            except urllib.error.HTTPError as e:
                if json.loads(e.read() or b"{}").get("status") == "failed":
                    return False
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start(cfg: ServeConfig, served: Any = None, timeout: float = 60.0) -> Running:
    """Start a server in a background thread of this process (``cfg.port`` 0 = a free port); returns once it listens."""
    import uvicorn

    from lab.serve.app import create_app

    if served is None:
        cfg = check(cfg)
    else:
        cfg.validate()
        check_listen(cfg.host, cfg.port)
    app = create_app(cfg, served)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, name="lab-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise LabError(f"the server did not start on {cfg.host}:{cfg.port} (is the port taken?)")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    name = served.name if served is not None else (cfg.model_name or _run_name(cfg))
    return Running(url=f"http://{cfg.host}:{port}", name=name, server=server, thread=thread)


def _run_name(cfg: ServeConfig) -> str:
    from lab.runs import resolve_run

    return resolve_run(cfg.run, cfg.runs_dir).name


def scrape(url: str, api_key: str | None = None) -> dict[str, float]:
    """A server's /metrics as ``{"name{labels}": value}`` (what a dashboard or notebook plots)."""
    from prometheus_client.parser import text_string_to_metric_families

    req = urllib.request.Request(url.rstrip("/") + "/metrics",
                                 headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


__all__ = ["ARTIFACTS", "Running", "ServeConfig", "check", "scrape", "serve", "start"]
