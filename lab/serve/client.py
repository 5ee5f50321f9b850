"""Talking to a running ``lab serve``: health, a completion, the metrics in a small table, servers as jobs.

    from lab.serve import client
    client.health("http://127.0.0.1:8000")              # {"status": "ok", "model": ..., "artifact": ...} or "down"
    client.complete(url, model, "ROMEO:", max_tokens=40) # {"text", "finish_reason", "usage"}; LabError says why not
    client.summary(scrape(url))                          # [{"figure": "requests", "value": "12"}, ...]
    job, new = client.start_job("gpt-nano/<run_id>", root)   # `lab serve RUN --port P` as a background job
    client.servers(root, "gpt-nano/<run_id>")            # the serve jobs still active: job, url, port, artifact

What the dashboard's Serve page and notebook 13 use, so the page stays a thin view. Plain
``urllib``: no client library is needed to read a server's state.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.ports import LOOPBACK, free_port


def _request(url: str, body: Any = None, api_key: str | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None


def health(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """What ``/health`` says: status ``ok``, ``loading`` or ``failed`` (with ``error``), or ``down`` when
    nothing answers (not started yet, stopped, crashed). Never raises."""
    try:
        status, body = _request(url.rstrip("/") + "/health", timeout=timeout)
    except (OSError, ValueError) as e:
        return {"status": "down", "error": str(getattr(e, "reason", e))}
    if not isinstance(body, dict) or "status" not in body:
        return {"status": "failed", "error": f"/health answered {status} without a status"}
    return body


def completion_body(model: str, prompt: str, max_tokens: int = 40, temperature: float = 0.8,
                    seed: int | None = None) -> dict[str, Any]:
    """The JSON body of ``POST /v1/completions`` (OpenAI's fields)."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": int(max_tokens),
                            "temperature": float(temperature)}
    if seed is not None:
        body["seed"] = int(seed)
    return body


def complete(url: str, model: str, prompt: str, max_tokens: int = 40, temperature: float = 0.8,
             seed: int | None = None, api_key: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """One completion: ``{"text", "finish_reason", "usage"}``; LabError with the server's own message
    (a 4xx names the field) or why it could not be reached."""
    try:
        status, body = _request(url.rstrip("/") + "/v1/completions",
                                completion_body(model, prompt, max_tokens, temperature, seed), api_key, timeout)
    except (OSError, ValueError) as e:
        raise LabError(f"the server at {url} did not answer: {getattr(e, 'reason', e)}") from None
    if status != 200:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        raise LabError(f"the server answered {status}: {message or 'no error message'}")
    choice = body["choices"][0]
    return {"text": choice["text"], "finish_reason": choice["finish_reason"], "usage": body.get("usage", {})}


# --------------------------------------------------------------------------- metrics, summarised


def _labels(key: str) -> dict[str, str]:
    if "{" not in key:
        return {}
    inner = key[key.index("{") + 1:-1]
    return dict((part.split("=", 1)[0], part.split("=", 1)[1].strip('"')) for part in inner.split(",") if "=" in part)


def _name(key: str) -> str:
    return key.split("{", 1)[0]


WORK = ("/v1/completions", "/predict")
"""The endpoints whose latency is the model's."""
POLLED = ("/health", "/metrics")
"""What monitors (the dashboard, Prometheus) ask every few seconds: not counted as requests."""


def figures(metrics: dict[str, float]) -> dict[str, float | None]:
    """A scrape (``lab.serve.scrape``) as the few numbers worth watching; None where nothing was measured yet.

    requests: answered requests but /health and /metrics (a dashboard's or Prometheus' own polling);
    errors: those of them with status >= 400;
    completions / predictions: answered with 200; latency_ms: the mean time of /v1/completions and
    /predict requests (a stream: to its end); tokens, tokens_per_s: generated tokens, and the speed over
    about the last second of generation; batch_size: the mean requests per model call (a prediction
    batch, or a decoding step of the completions in flight); queue: requests waiting for a batch now;
    active: completions being written now; ready: 1 once the model is loaded.
    """
    def total(name: str, **want: Any) -> float:
        return sum(v for k, v in metrics.items() if _name(k) == name
                   and all(want[w](_labels(k).get(w, "")) for w in want))

    ok = {"status": lambda s: s == "200"}
    asked = {"endpoint": lambda e: e not in POLLED}
    count = total("lab_serve_request_seconds_count", endpoint=lambda e: e in WORK)
    batches = total("lab_serve_batch_size_count")
    return {
        "requests": total("lab_serve_requests_total", **asked),
        "errors": total("lab_serve_requests_total", status=lambda s: s.isdigit() and int(s) >= 400, **asked),
        "completions": total("lab_serve_requests_total", endpoint=lambda e: e == "/v1/completions", **ok),
        "predictions": total("lab_serve_requests_total", endpoint=lambda e: e == "/predict", **ok),
        "latency_ms": 1000 * total("lab_serve_request_seconds_sum", endpoint=lambda e: e in WORK) / count
        if count else None,
        "tokens": metrics.get("lab_serve_generated_tokens_total"),
        "tokens_per_s": metrics.get("lab_serve_tokens_per_second"),
        "batch_size": total("lab_serve_batch_size_sum") / batches if batches else None,
        "queue": total("lab_serve_queue_depth"),
        "active": metrics.get("lab_serve_active_completions"),
        "ready": metrics.get("lab_serve_ready"),
    }


_SHOWN = [("requests", "requests answered", "{:.0f}"), ("errors", "errors (4xx/5xx)", "{:.0f}"),
          ("completions", "completions", "{:.0f}"), ("predictions", "predictions", "{:.0f}"),
          ("latency_ms", "mean latency (ms)", "{:.1f}"), ("tokens", "generated tokens", "{:.0f}"),
          ("tokens_per_s", "tokens/s (last second)", "{:.1f}"), ("batch_size", "mean batch size", "{:.2f}"),
          ("queue", "queue depth", "{:.0f}"), ("active", "active completions", "{:.0f}")]


def summary(metrics: dict[str, float]) -> list[dict[str, str]]:
    """``figures`` as table rows ``{"figure", "value"}`` (values as text, ``-`` where nothing was measured)."""
    f = figures(metrics)
    return [{"figure": label, "value": "-" if f[key] is None else fmt.format(f[key])} for key, label, fmt in _SHOWN]


# --------------------------------------------------------------------------- a run, and its servers as background jobs


def generates(run: Any) -> bool:
    """Whether the run is a language model (served on /v1/completions; other families on /predict)."""
    from lab.families import family_of

    return family_of(run.config).task == "lm"


def artifacts(run: Any) -> list[str]:
    """What of the run can be served now: ``fp32`` (its best checkpoint) and each compressed artifact made."""
    from lab.serve.config import ARTIFACTS
    from lab.serve.loaded import ONNX_FILES

    found = ["fp32"] if run.checkpoint("best").is_file() else []
    return found + [a for a in ARTIFACTS[1:] if (run.compressed_dir(a) / ONNX_FILES.get(a, "report.json")).is_file()]



def job_args(run: str, port: int, artifact: str = "fp32") -> list[str]:
    """``lab serve`` arguments for a job (``lab.jobs`` adds ``--runs_dir``)."""
    from lab.serve.config import ARTIFACTS

    if artifact not in ARTIFACTS:
        raise LabError(f"--artifact {artifact}: choose one of {', '.join(ARTIFACTS)}")
    if not 1 <= int(port) <= 65535:
        raise LabError(f"--port {port}: give a TCP port in [1, 65535]")
    return ["serve", run, "--port", str(int(port)), "--artifact", artifact]


def _server_of(job: Any) -> dict[str, Any]:
    args = job.args
    port = int(args[args.index("--port") + 1])
    artifact = args[args.index("--artifact") + 1] if "--artifact" in args else "fp32"
    return {"job": job, "run": args[1], "port": port, "artifact": artifact, "url": f"http://{LOOPBACK}:{port}"}


def servers(root: str | Path | None, run: str | None = None) -> list[dict[str, Any]]:
    """The active ``lab serve`` jobs under the runs root (of ``run`` only, if given), newest first:
    ``{"job", "run", "port", "artifact", "url"}`` each."""
    from lab import jobs

    found = []
    for job in jobs.list_jobs(root):
        if job.active and job.args[:1] == ["serve"] and "--port" in job.args and (run is None or job.args[1] == run):
            found.append(_server_of(job))
    return found


def last_failure(root: str | Path | None, run: str) -> Any:
    """The newest ``lab serve`` job of ``run`` when it failed (a port taken, an artifact it cannot load), else None."""
    from lab import jobs

    mine = [j for j in jobs.list_jobs(root) if j.args[:1] == ["serve"] and j.args[1:2] == [run]]
    return mine[0] if mine and mine[0].state == "failed" else None


def start_job(run: str, root: str | Path | None, artifact: str = "fp32", port: int | None = None) -> tuple[Any, bool]:
    """Start ``lab serve RUN --port P --artifact A`` as a background job; ``port`` None picks a free one.

    -> ``(job, started)``: a server of the same run and artifact still active is returned instead
    (``started`` False), so a second click does not start a second server.
    """
    from lab import jobs

    for s in servers(root, run):
        if s["artifact"] == artifact:
            return s["job"], False
    return jobs.start(job_args(run, port or free_port(), artifact), root, label=f"serve {run} {artifact}"), True


def stop_job(job_id: str, root: str | Path | None) -> Any:
    """Stop a server job (SIGTERM: uvicorn finishes what is in flight and closes its port)."""
    from lab import jobs

    return jobs.cancel(job_id, root)
