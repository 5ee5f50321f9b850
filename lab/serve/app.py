"""The FastAPI application: OpenAI-compatible completions, /predict, /health and /metrics.

    app = create_app(ServeConfig(run="last"))           # loads the model in the background
    uvicorn.run(app, host="127.0.0.1", port=8000)        # what ``lab.serve.serve`` does

Endpoints: ``GET /health`` (200 once the model is loaded and warmed up, 503 before), ``GET /metrics``
(Prometheus text), ``GET /v1/models`` and ``POST /v1/completions`` (language models; ``stream: true``
answers server-sent events ending with ``data: [DONE]``), ``POST /predict`` (other families). Errors
are JSON in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with a 4xx for what the
client got wrong; an exception inside the model is a 500 for that request only.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers

from lab.serve.batching import Batcher, OneShot, QueueFull
from lab.serve.config import ServeConfig
from lab.serve.generation import Completion, DecodeBatch, run_completions
from lab.serve.metrics import CONTENT_TYPE, Metrics
from lab.serve.predict import BadRequest, answers, collate, parse_k, parse_sample


class CompletionRequest(BaseModel):
    """The body of ``POST /v1/completions`` (OpenAI's fields the lab supports; others are ignored)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0, le=100, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    n: Literal[1] = 1


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


class State:
    """What the routes share: config, model, batchers, metrics, the model's one thread."""

    def __init__(self, cfg: ServeConfig, served: Any = None, own_process: bool = False) -> None:
        self.cfg, self.served, self.metrics, self.own_process = cfg, served, Metrics(), own_process
        self.failed: str | None = None
        self.ready = False
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="lab-serve-model")
        self.streams = 0
        wait = cfg.max_wait_ms / 1000
        depth = self.metrics.queue_depth
        size = self.metrics.batch_size
        self.predictor = Batcher(lambda: OneShot(self._predict), cfg.max_batch_size, wait, cfg.max_queue,
                                 self.executor, size.labels(kind="predict").observe, depth.labels(kind="predict").set)
        self.generator = Batcher(self._decode_batch, cfg.max_batch_size, wait, cfg.max_queue, self.executor,
                                 size.labels(kind="generate").observe, depth.labels(kind="generate").set,
                                 join_every=cfg.join_every)

    def load(self) -> None:
        """Load (unless given) and warm up the model; runs on the model's thread."""
        try:
            if self.cfg.threads:
                torch.set_num_threads(self.cfg.threads)
            if self.served is None:
                from lab.serve.loaded import load

                self.served = load(self.cfg)
            self._warm_up()
            if self.own_process:
                # Everything loaded so far (torch, the model, the app) lives as long as the process: keep it
                # out of the garbage collector's full passes, which stalled every request in flight for
                # 50-350 ms now and then under load (not in a notebook's kernel, whose objects come and go).
                gc.freeze()
            self.ready = True
            self.metrics.ready.set(1)
        except Exception as e:  # reported by /health; the process stays up to say so
            self.failed = f"{type(e).__name__}: {e}"

    def _warm_up(self) -> None:
        s = self.served
        if s.generates:
            run_completions(s, [Completion([0], 2, 0.0, None, 1.0, 0, [], lambda *_: None)])
        elif s.family.serve is not None:
            with torch.inference_mode():
                s.forward(s.family.example(s.config, 1, torch.Generator().manual_seed(0))[0])

    def _predict(self, items: list[tuple[torch.Tensor, int]]) -> list[dict[str, Any]]:
        with torch.inference_mode():
            out = self.served.forward(collate(self.served, [x for x, _ in items]))
        return answers(self.served, out, [k for _, k in items])

    def _decode_batch(self) -> DecodeBatch:
        def tokens(n: int, seconds: float) -> None:
            self.metrics.tokens.inc(n)
            self.metrics.tokens_per_second.set(n / seconds if seconds > 0 else 0.0)

        return DecodeBatch(self.served, tokens)


ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/completions", "/predict")
"""The paths metrics are labelled with (any other path is "other")."""


class Guard:
    """Every request's gate and meter, as plain ASGI middleware: API key, body size, readiness, metrics, a 500
    for a route's error. (Starlette's ``@app.middleware("http")`` would run each response through a task
    and memory streams, a cost paid on every request.)"""

    def __init__(self, app: Any, state: State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, path = time.perf_counter(), scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status: int | None = None

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.state.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            await send(message)

        refusal = self._refusal(path, Headers(scope=scope))
        try:
            await (refusal or self.app)(scope, receive, sending)
        except Exception as e:  # a bug in a route must not take the server down
            if status is not None:  # a stream has begun: nothing more can be said in it
                raise
            await error(500, f"internal error: {type(e).__name__}: {e}", kind="server_error")(scope, receive, sending)
        # A stream's time runs to its end.
        self.state.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)

    def _refusal(self, path: str, headers: Headers) -> JSONResponse | None:
        cfg, state = self.state.cfg, self.state
        if path != "/health" and cfg.api_key is not None:
            if headers.get("authorization", "") != f"Bearer {cfg.api_key}":
                return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                             kind="authentication_error")
        size = headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > cfg.max_body_bytes):
            return error(413, f"the body is {size} bytes; at most {cfg.max_body_bytes} are accepted")
        if path not in ("/health", "/metrics") and not state.ready:
            return error(503, state.failed and f"the model failed to load: {state.failed}" or "the model is loading",
                         kind="server_error")
        return None


def create_app(cfg: ServeConfig, served: Any = None, own_process: bool = False) -> FastAPI:
    """The server for ``cfg`` (``served``: an already loaded model, e.g. in tests or a notebook;
    ``own_process``: the server is all the process does, as under ``lab serve``)."""
    state = State(cfg, served, own_process)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.predictor.start()
        state.generator.start()
        # Loading runs on the model's thread: the server answers /health ("loading") meanwhile.
        asyncio.get_running_loop().run_in_executor(state.executor, state.load)
        yield
        await state.predictor.stop()
        await state.generator.stop()
        state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="Large Model Lab server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.lab = state

    app.add_middleware(Guard, state=state)

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > cfg.max_body_bytes:
            raise BadRequest(f"the body is {len(raw)} bytes; at most {cfg.max_body_bytes} are accepted", 413)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not valid JSON: {e}") from None

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest) -> JSONResponse:
        return error(e.status, e.message, e.param)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ok", "model": state.served.name, "artifact": state.served.artifact})
        return JSONResponse({"status": "failed" if state.failed else "loading", "error": state.failed}, 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": state.served.name, "object": "model", "created": 0,
                                            "owned_by": "lab"}]}

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        s = state.served
        if s.family.serve is None:
            raise BadRequest(f"{s.name} is a language model: use POST /v1/completions", 404)
        body = await body_of(request)
        x = parse_sample(s, body)
        k = parse_k(s, body) if s.family.task == "ranking" else 0
        try:
            return JSONResponse(await state.predictor.submit((x, k)))
        except QueueFull as e:
            return error(503, f"the server is busy: {e}", kind="server_error")

    from lab.serve.completions import add_completions

    add_completions(app, state, body_of)
    return app


def parse_completion(body: Any) -> CompletionRequest:
    """The request, or BadRequest naming the first field that is wrong."""
    try:
        return CompletionRequest.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}", param=where) from None
