"""``POST /v1/completions``, as OpenAI's API answers it (so the ``openai`` client works unchanged).

    add_completions(app, state, body_of)     # called by lab.serve.app.create_app

A request is checked (fields, model name, prompt length, tokens), takes one of ``max_streams`` slots
(429 when none is free) and joins the generation batcher. A plain answer is the job's text once the
batcher says it ended (one wake-up of the event loop per request); a stream's text comes back from the
model's thread through an asyncio queue, sent as server-sent events -- one
``text_completion`` chunk per piece, a last chunk with ``finish_reason``, then ``data: [DONE]``. A
client that disconnects cancels its row (the batch stops decoding it) and frees its slot at once.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lab.errors import LabError
from lab.serve.batching import QueueFull
from lab.serve.generation import Completion
from lab.serve.predict import BadRequest


def _prompt_ids(state: Any, req: Any) -> list[int]:
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise BadRequest("prompt: give one text (a list of several prompts is not supported)", param="prompt")
        prompt = prompt[0]
    if not prompt:
        raise BadRequest("prompt: give some text", param="prompt")
    try:
        ids = state.served.tokenizer.encode(prompt)
    except LabError as e:  # a character tokenizer meets a character its corpus never had
        raise BadRequest(f"prompt cannot be tokenized: {e}", param="prompt") from None
    if len(ids) > state.cfg.max_prompt_tokens:
        raise BadRequest(f"prompt is {len(ids)} tokens; at most {state.cfg.max_prompt_tokens} are accepted",
                         param="prompt")
    return ids


def _chunk(rid: str, name: str, text: str, finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}


def add_completions(app: FastAPI, state: Any, body_of: Callable[[Request], Any]) -> None:
    """Add the completions route to ``app``."""
    from lab.serve.app import error, parse_completion

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        s = state.served
        if not s.generates:
            raise BadRequest(f"{s.name} does not generate text: use POST /predict", 404)
        req = parse_completion(await body_of(request))
        if req.model != s.name:
            raise BadRequest(f"model: unknown model {req.model!r}; this server has {s.name!r} (GET /v1/models)",
                             404, "model")
        if req.max_tokens > state.cfg.max_tokens:
            raise BadRequest(f"max_tokens: {req.max_tokens} is more than this server's {state.cfg.max_tokens}",
                             param="max_tokens")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or not all(stop):
            raise BadRequest("stop: give at most 4 non-empty strings", param="stop")
        ids = _prompt_ids(state, req)
        if state.streams >= state.cfg.max_streams:
            return error(429, f"{state.streams} completions are running (max_streams {state.cfg.max_streams}); "
                         "retry when one ends", kind="rate_limit_error")

        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()

        def emit(text: str, finish: str | None) -> None:  # on the model's thread: wake the loop for a stream only
            if req.stream:
                loop.call_soon_threadsafe(pieces.put_nowait, (text, finish))

        job = Completion(ids=ids, max_tokens=req.max_tokens, temperature=req.temperature, top_k=req.top_k,
                         top_p=req.top_p, seed=req.seed, stop=stop, emit=emit)
        state.streams += 1
        state.metrics.streams.set(state.streams)
        try:
            done = asyncio.ensure_future(state.generator.submit(job))
        except Exception:
            _release(state)
            raise

        async def next_piece() -> tuple[str, str | None]:
            """The next piece, or the batch's failure (a full queue, an error in the model)."""
            getter = asyncio.ensure_future(pieces.get())
            await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()
            done.result()  # raises the batch's error
            return await pieces.get()  # the batch ended normally: its last pieces are queued

        rid = f"cmpl-{uuid.uuid4().hex[:24]}"

        def finish() -> None:
            job.cancelled.set()  # a client gone mid-stream: the batch stops decoding this row
            done.cancel()  # still queued: the batcher skips it; already finished: no effect
            _release(state)

        if not req.stream:  # the whole text at once: the model's thread wakes this loop once, when it ends
            try:
                reason = await done
            except QueueFull as e:
                return error(503, f"the server is busy: {e}", kind="server_error")
            finally:
                finish()
            n_out = len(job.new_ids)
            return JSONResponse({**_chunk(rid, s.name, job.text, reason), "usage": {
                "prompt_tokens": len(ids), "completion_tokens": n_out, "total_tokens": len(ids) + n_out}})

        async def events() -> AsyncIterator[str]:
            try:
                reason = None
                while reason is None:
                    try:
                        piece, reason = await next_piece()
                    except Exception as e:  # headers are sent: the error goes in the stream
                        yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
                        break
                    if piece or reason:
                        yield f"data: {json.dumps(_chunk(rid, s.name, piece, reason))}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                finish()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _release(state: Any) -> None:
    state.streams -= 1
    state.metrics.streams.set(state.streams)
