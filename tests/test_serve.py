"""Tests for lab.serve: a real server on a free loopback port, called with the openai client and httpx.

Fast tests serve tiny models built here (a GPT with a character tokenizer, an MLP regressor, a
recommender-like family registered in this file); the slow test trains a tiny run and serves it,
its int8-dynamic artifact and ``lab serve``'s refusals end to end.
"""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
import torch
from torch import nn

from lab.data.tokenizers import CharTokenizer
from lab.families import FAMILIES, family, register, unregister
from lab.families.record import ModelFamily, Servable
from lab.models.gpt import GPT, GPTConfig
from lab.ports import free_port
from lab.serve import ServeConfig, scrape, start
from lab.serve.batching import Batcher, OneShot
from lab.serve.generation import Completion, _advance
from lab.serve.loaded import Served
from lab.serve.predict import BadRequest, answers, parse_sample

TEXT = "hello world, the quick brown fox jumps over the lazy dog.\n"
KEY = "sekret"


def tiny_lm() -> Served:
    torch.manual_seed(0)
    tok = CharTokenizer(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = GPT(cfg).eval()
    return Served(name="tiny-gpt", family=family("gpt"), config=cfg, forward=model, module=model, tokenizer=tok,
                  artifact="fp32")


@pytest.fixture(scope="module")
def lm_server():
    cfg = ServeConfig(run="unused", port=0, api_key=KEY, max_tokens=64, max_prompt_tokens=40, max_streams=2,
                      max_body_bytes=4000)
    server = start(cfg, tiny_lm())
    assert server.wait_ready()
    yield server
    server.stop()


def client(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def test_server_listens_on_loopback_by_default(lm_server):
    assert ServeConfig(run="x").host == "127.0.0.1"
    assert lm_server.url.startswith("http://127.0.0.1:")


def test_openai_client_completes_and_streams_unchanged(lm_server):
    from openai import OpenAI

    oa = OpenAI(base_url=lm_server.url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in oa.models.list().data] == ["tiny-gpt"]
    done = oa.completions.create(model="tiny-gpt", prompt="hello", max_tokens=12, temperature=0)
    assert done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 12 and done.usage.prompt_tokens == 5
    # Greedy: the same text streamed, in pieces, as the model alone produces it.
    pieces = list(oa.completions.create(model="tiny-gpt", prompt="hello", max_tokens=12, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == done.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"
    model = tiny_lm()
    ids = torch.tensor([model.tokenizer.encode("hello")])
    expected = model.tokenizer.decode(model.module.generate(ids, 12, top_k=1)[0, 5:].tolist())
    assert done.choices[0].text == expected


def test_a_model_without_a_kv_cache_generates_the_same_greedy_text():
    # ONNX artifacts are served through a plain forward (windowed, recomputed each step): a batch of prompts of
    # different lengths, run past block_size (16), gives what the KV-cached module gives each prompt alone.
    from lab.serve.generation import Completion, run_completions

    cached = tiny_lm()
    plain = Served(name="tiny-gpt", family=cached.family, config=cached.config, forward=cached.module, module=None,
                   tokenizer=cached.tokenizer, artifact="onnx")
    prompts = ["hello", "the quick brown", "a"]

    def complete(served: Served) -> list[str]:
        jobs = [Completion(served.tokenizer.encode(t), 24, 0.0, None, 1.0, 0, [], lambda *_: None) for t in prompts]
        run_completions(served, jobs)
        return [j.text for j in jobs]

    got = complete(plain)
    assert got == complete(cached)
    for text, prompt in zip(got, prompts):
        ids = torch.tensor([cached.tokenizer.encode(prompt)])
        alone = cached.module.generate(ids, 24, top_k=1)[0, ids.shape[1]:].tolist()
        assert text == cached.tokenizer.decode(alone)


def feed(tokenizer, ids: list[int], stop: list[str] = ()) -> tuple[list[str], Completion]:
    """Drive a row's text token by token, as DecodeBatch.step does; -> (the pieces emitted, the job)."""
    pieces: list[str] = []
    job = Completion([0], len(ids), 0.0, None, 1.0, 0, list(stop), lambda text, _: pieces.append(text))
    for i in ids:
        job.new_ids.append(i)
        _advance(job, tokenizer.decode)
        if job.finish:
            break
    return pieces, job


def test_incremental_text_joins_to_the_whole_decode_and_never_splits_a_character():
    import random

    from lab.data.tokenizers import BPETokenizer

    bpe = BPETokenizer.train("snow and ice and more snow, ok " * 50, 260)  # "☃" is 3 byte tokens here
    text = "snow ☃ and é, ok ✓ ice"
    ids = bpe.encode(text)
    assert len(ids) > len(text) - 5  # the multi-byte characters really are split across tokens
    pieces, job = feed(bpe, ids)
    assert "".join(pieces) == job.text == text and job.finish == "length"
    assert not any("\ufffd" in p for p in pieces)  # a half character is never sent
    # Any tokens at all (bytes that never make a character too): the pieces join to the whole decode.
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(bpe.vocab_size) for _ in range(rng.randrange(1, 40))]
        pieces, job = feed(bpe, ids)
        assert "".join(pieces) == job.text == bpe.decode(ids)
    # A stop sequence of multi-byte characters ends the text before it, and none of it is sent.
    pieces, job = feed(bpe, bpe.encode(text), stop=["☃ a"])
    assert job.finish == "stop" and job.text == "".join(pieces) == "snow "
    chars = CharTokenizer(text)
    pieces, job = feed(chars, chars.encode(text), stop=["ok", "é,"])
    assert job.text == "".join(pieces) == "snow ☃ and " and job.finish == "stop"


def test_a_long_completion_decodes_each_token_a_bounded_number_of_times():
    # Decoding all of a row's tokens at every step made a long completion quadratic (500 tokens: 125,000
    # decoded); incrementally each step decodes the newest tokens and the piece before them.
    chars = CharTokenizer("abcdefgh")
    decoded = 0

    class Counting:
        @staticmethod
        def decode(ids):
            nonlocal decoded
            decoded += len(ids)
            return chars.decode(ids)

    ids = [i % 8 for i in range(500)]
    pieces, job = feed(Counting, ids)
    assert job.text == chars.decode(ids) and len(pieces) == 500
    assert decoded <= 3 * len(ids)


def test_stream_ends_with_done_and_seed_makes_samples_reproducible(lm_server):
    body = {"model": "tiny-gpt", "prompt": "the ", "max_tokens": 20, "temperature": 1.0, "top_p": 0.9, "seed": 3,
            "stream": True}
    with client(lm_server) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        streamed = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])
        again = c.post("/v1/completions", json={**body, "stream": False}).json()
        assert again["choices"][0]["text"] == streamed


def test_stop_sequence_ends_the_completion_without_it(lm_server):
    with client(lm_server) as c:
        free = c.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "the", "max_tokens": 30,
                                               "temperature": 0}).json()["choices"][0]["text"]
        stop = free[5:7]
        out = c.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "the", "max_tokens": 30,
                                              "temperature": 0, "stop": [stop]}).json()["choices"][0]
    assert out["finish_reason"] == "stop"
    assert out["text"] == free[:free.index(stop)]


def test_concurrent_requests_are_batched_and_metrics_count_them(lm_server):
    results: list[str] = []

    def ask(i: int) -> None:
        with client(lm_server) as c:
            r = c.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "fox"[: i + 1], "max_tokens": 8,
                                                "temperature": 0})
            results.append(r.json()["choices"][0]["text"])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]  # max_streams is 2
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    m = scrape(lm_server.url, KEY)
    assert m['lab_serve_requests_total{endpoint="/v1/completions",status="200"}'] >= 2
    assert m["lab_serve_generated_tokens_total"] >= 16
    assert m['lab_serve_batch_size_count{kind="generate"}'] >= 1
    assert 'lab_serve_queue_depth{kind="generate"}' in m and "lab_serve_tokens_per_second" in m
    assert m["lab_serve_ready"] == 1
    assert any(k.startswith("lab_serve_request_seconds_bucket") for k in m)


def test_health_needs_no_key_but_everything_else_does(lm_server):
    r = httpx.get(lm_server.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    for path in ("/v1/models", "/metrics"):
        r = httpx.get(lm_server.url + path)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    r = httpx.get(lm_server.url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "not valid JSON"),
    ({"model": "tiny-gpt", "prompt": 5}, 400, "prompt"),
    ({"model": "tiny-gpt", "prompt": "hi", "max_tokens": "7"}, 400, "max_tokens"),
    ({"model": "tiny-gpt", "prompt": "hi", "temperature": -1}, 400, "temperature"),
    ({"model": "tiny-gpt", "prompt": "hi", "n": 2}, 400, "n"),
    ({"model": "gpt-5", "prompt": "hi"}, 404, "unknown model"),
    ({"model": "tiny-gpt", "prompt": "hi", "max_tokens": 65}, 400, "max_tokens"),
    ({"model": "tiny-gpt", "prompt": "x" * 41}, 400, "41 tokens"),
    ({"model": "tiny-gpt", "prompt": "HELLO"}, 400, "'H'"),  # not in the char tokenizer's vocabulary
    ({"model": "tiny-gpt", "prompt": ""}, 400, "prompt"),
    ({"prompt": "hi"}, 400, "model"),
    ({"model": "tiny-gpt", "prompt": "a" * 5000}, 413, "at most 4000"),
])
def test_bad_requests_get_a_4xx_json_error_and_the_server_lives_on(lm_server, body, status, says):
    with client(lm_server) as c:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = c.post("/v1/completions", content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == status, r.text
        assert says in r.json()["error"]["message"]
        assert c.get("/health").status_code == 200


def test_predict_is_refused_for_a_language_model(lm_server):
    with client(lm_server) as c:
        r = c.post("/predict", json={"features": [1.0]})
    assert r.status_code == 404 and "/v1/completions" in r.json()["error"]["message"]


def test_a_client_that_disconnects_mid_stream_frees_its_slot(lm_server):
    body = {"model": "tiny-gpt", "prompt": "the", "max_tokens": 64, "temperature": 1.0, "stream": True}
    for _ in range(3):  # more than max_streams=2: each gone client must have given its slot back
        with client(lm_server) as c:
            with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                next(r.iter_lines())
    deadline = time.monotonic() + 30
    while scrape(lm_server.url, KEY)["lab_serve_active_completions"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scrape(lm_server.url, KEY)["lab_serve_active_completions"] == 0
    with client(lm_server) as c:
        assert c.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2}).status_code == 200


# ------------------------------------------------------------------ lab.serve.client (the dashboard's Serve page)


def test_client_health_completion_and_metrics_summary(lm_server):
    from lab.errors import LabError
    from lab.serve import client as sc

    h = sc.health(lm_server.url)
    assert h["status"] == "ok" and h["model"] == "tiny-gpt"
    before_m = scrape(lm_server.url, KEY)
    before = sc.figures(before_m)
    out = sc.complete(lm_server.url, "tiny-gpt", "hello", max_tokens=6, temperature=0, api_key=KEY)
    assert out["finish_reason"] == "length" and len(out["text"]) == 6 and out["usage"]["completion_tokens"] == 6
    assert sc.completion_body("m", "p", 3, 0, seed=2) == {"model": "m", "prompt": "p", "max_tokens": 3,
                                                          "temperature": 0.0, "seed": 2}
    with pytest.raises(LabError, match="answered 404: model: unknown model 'gpt-5'"):
        sc.complete(lm_server.url, "gpt-5", "hello", api_key=KEY)
    with pytest.raises(LabError, match="answered 401"):
        sc.complete(lm_server.url, "tiny-gpt", "hello")
    after = sc.figures(scrape(lm_server.url, KEY))
    # Counted: one completion more, 6 tokens more, two refused requests; the /metrics polling is not a request.
    assert after["completions"] == before["completions"] + 1
    assert after["tokens"] == before["tokens"] + 6
    assert after["errors"] == before["errors"] + 2 and after["requests"] == before["requests"] + 3
    assert after["latency_ms"] > 0 and after["ready"] == 1 and after["queue"] == 0 and after["batch_size"] >= 1
    # Each request's time is observed once (the answered completion, the 404 and the 401 alike).
    seconds = 'lab_serve_request_seconds_count{endpoint="/v1/completions"}'
    assert scrape(lm_server.url, KEY)[seconds] - before_m[seconds] == 3
    rows = sc.summary(scrape(lm_server.url, KEY))
    shown = {r["figure"]: r["value"] for r in rows}
    assert shown["completions"] == f"{after['completions']:.0f}" and shown["predictions"] == "0"
    assert list(shown) == ["requests answered", "errors (4xx/5xx)", "completions", "predictions", "mean latency (ms)",
                           "generated tokens", "tokens/s (last second)", "mean batch size", "queue depth",
                           "active completions"]


def test_client_says_down_and_why_when_nothing_listens():
    from lab.errors import LabError
    from lab.serve import client as sc

    url = f"http://127.0.0.1:{free_port()}"
    assert sc.health(url)["status"] == "down"
    with pytest.raises(LabError, match="did not answer"):
        sc.complete(url, "m", "hello", timeout=5)
    # Nothing measured yet: '-' rather than a made-up zero.
    assert {r["figure"]: r["value"] for r in sc.summary({})}["mean latency (ms)"] == "-"


def test_serve_jobs_start_once_per_run_and_artifact(tmp_path, monkeypatch):
    from lab import jobs
    from lab.errors import LabError
    from lab.serve import client as sc

    started: list[jobs.Job] = []

    def fake_start(args, root, label=""):
        job = jobs.Job(id=f"j{len(started)}", args=list(args), root=str(root), state="running", label=label)
        started.append(job)
        return job

    monkeypatch.setattr(jobs, "start", fake_start)
    monkeypatch.setattr(jobs, "list_jobs", lambda root=None: list(reversed(started)))
    job, new = sc.start_job("gpt-nano/a", tmp_path)
    assert new and job.args[:3] == ["serve", "gpt-nano/a", "--port"] and job.args[-2:] == ["--artifact", "fp32"]
    assert 1 <= int(job.args[3]) <= 65535
    again, new = sc.start_job("gpt-nano/a", tmp_path, port=9999)  # the same run and artifact: no second server
    assert not new and again is job
    other, new = sc.start_job("gpt-nano/a", tmp_path, "int8-dynamic", port=9999)
    assert new and other.args == ["serve", "gpt-nano/a", "--port", "9999", "--artifact", "int8-dynamic"]
    found = sc.servers(tmp_path, "gpt-nano/a")
    assert [(s["url"], s["artifact"]) for s in found] == [("http://127.0.0.1:9999", "int8-dynamic"),
                                                           (f"http://127.0.0.1:{job.args[3]}", "fp32")]
    assert sc.servers(tmp_path, "gpt-nano/b") == []
    job.state = "cancelled"
    assert [s["artifact"] for s in sc.servers(tmp_path)] == ["int8-dynamic"]
    assert sc.last_failure(tmp_path, "gpt-nano/a") is None  # the newest is running
    other.state, other.error = "failed", "exit code 1: [Errno 98] address already in use"
    assert sc.last_failure(tmp_path, "gpt-nano/a") is other and sc.last_failure(tmp_path, "gpt-nano/b") is None
    for bad in (("onnx-int9", 80), ("fp32", 70000)):
        with pytest.raises(LabError):
            sc.job_args("gpt-nano/a", bad[1], bad[0])
    assert "serve" in jobs.COMMANDS and "serve" in jobs.SERVICES


def test_a_serve_job_takes_no_slot(tmp_path, monkeypatch):
    """A server runs until stopped: with LAB_JOBS_PARALLEL=1 it must not hold the one slot, nor wait for it."""
    import sys

    from lab import jobs

    monkeypatch.setenv("LAB_JOBS_PARALLEL", "1")
    root = tmp_path / "runs"
    root.mkdir()
    jobs.jobs_dir(root).mkdir(parents=True)
    jobs._save(jobs.Job(id="busy-job", args=["evaluate", "x"], root=str(root), state="running", pid=1))
    monkeypatch.setattr(jobs, "_alive", lambda pid, job_id: True)  # the evaluate job holds the one slot
    monkeypatch.setattr(jobs.Job, "command", property(lambda self: [sys.executable, "-c", "pass"]))
    serve = jobs.Job(id="serve-job", args=["serve", "x", "--port", "1"], root=str(root))
    jobs._save(serve)
    assert jobs._run(serve.state_path) == 0  # returns at once: it did not wait for the busy slot
    assert jobs.get("serve-job", root).state == "done"


# ------------------------------------------------------------------ /predict through the family record


class Scores(nn.Module):
    """A toy ranking model: user id -> a score per item."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.n_users, config.n_items)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.table(users)


class ScoresConfig:
    name, n_users, n_items = "toy-ranker", 4, 6


@pytest.fixture
def ranker_family():
    fam = register(ModelFamily(
        name="toy-ranker", config=ScoresConfig, model=Scores, data=("ratings",), task="ranking", module=None,
        example=lambda c, n, g=None: (torch.randint(0, c.n_users, (n,), generator=g), torch.zeros(n, 2)),
        loss=None, serve=Servable("user", "id", bound="n_users")))
    yield fam
    unregister("toy-ranker")


def test_predict_reads_the_body_the_family_record_describes(ranker_family):
    assert "toy-ranker" in FAMILIES
    torch.manual_seed(0)
    model = Scores(ScoresConfig()).eval()
    served = Served(name="toy", family=ranker_family, config=ScoresConfig(), forward=model, module=model,
                    tokenizer=None, artifact="fp32")
    server = start(ServeConfig(run="unused", port=0, max_batch_size=4), served)
    try:
        assert server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.post("/predict", json={"user": 2, "k": 3})
            assert r.status_code == 200
            expected = torch.topk(model.table.weight[2].detach(), 3)
            assert r.json()["items"] == expected.indices.tolist()
            for body, says in [({"user": 4}, "[0, 3]"), ({"user": "2"}, "whole number"), ({"item": 1}, "'user'"),
                               ({"user": 1, "k": 0}, "'k'"), ([1, 2], "JSON object")]:
                r = c.post("/predict", json=body)
                assert r.status_code == 400 and says in r.json()["error"]["message"], (body, r.text)
            assert c.post("/v1/completions", json={"model": "toy", "prompt": "x"}).status_code == 404
    finally:
        server.stop()


def test_answers_of_a_batch_match_each_row_alone(ranker_family):
    """One whole-batch top-k serves requests of different k (each its own row's top k, k past the items too)."""
    torch.manual_seed(0)
    scores = torch.randn(3, 6)
    served = Served(name="toy", family=ranker_family, config=ScoresConfig(), forward=None, module=None,
                    tokenizer=None, artifact="fp32")
    got = answers(served, scores, [1, 3, 10])
    for row, k, answer in zip(scores, [1, 3, 10], got):
        top = torch.topk(row, min(k, 6))
        assert answer["items"] == top.indices.tolist()
        assert answer["scores"] == [round(v, 6) for v in top.values.tolist()]
    served.family = family("cnn")
    probs = torch.randn(2, 10)
    got = answers(served, probs, [0, 0])
    assert [a["label"] for a in got] == probs.argmax(-1).tolist()
    assert got[1]["probabilities"] == [round(v, 6) for v in probs[1].softmax(-1).tolist()]


def test_predict_numbers_of_the_example_shape_for_a_regressor():
    from lab.models.mlp import MLP, MLPConfig

    torch.manual_seed(0)
    cfg = MLPConfig()
    model = MLP(cfg).eval()
    served = Served(name="mlp", family=family("mlp"), config=cfg, forward=model, module=model, tokenizer=None,
                    artifact="fp32")
    server = start(ServeConfig(run="unused", port=0), served)
    try:
        assert server.wait_ready()
        x = torch.randn(cfg.in_features)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            out = c.post("/predict", json={"features": x.tolist()}).json()["outputs"]
            torch.testing.assert_close(torch.tensor(out), model(x[None])[0].detach(), atol=1e-5, rtol=1e-5)
            r = c.post("/predict", json={"features": [1.0, 2.0]})
            assert r.status_code == 400 and f"[{cfg.in_features}]" in r.json()["error"]["message"]
            r = c.post("/predict", json={"features": ["a"] * cfg.in_features})
            assert r.status_code == 400
    finally:
        server.stop()


def test_parse_sample_takes_numbers_of_the_sample_shape_and_refuses_the_rest():
    from lab.models.mlp import MLPConfig

    cfg = MLPConfig()
    served = Served(name="mlp", family=family("mlp"), config=cfg, forward=None, module=None, tokenizer=None,
                    artifact="fp32")
    n = cfg.in_features
    x = parse_sample(served, {"features": [float(i) for i in range(n)]})
    assert x.dtype == torch.float32 and x.tolist() == [float(i) for i in range(n)]
    for value, says in [(["1.5"] * n, "list of numbers"), ([[1.0, 2.0], [3.0]], "list of numbers"),
                        ({"a": 1}, "list of numbers"), (None, "list of numbers"), ([1, "a"] * (n // 2), "numbers"),
                        ([1.0] * (n + 1), f"give [{n}]"), ([[i] for i in range(n)], f"shape [{n}, 1]"),
                        ([1e39] * n, "not a finite number")]:
        with pytest.raises(BadRequest, match=re.escape(says)):
            parse_sample(served, {"features": value})


def test_a_server_in_its_own_process_keeps_what_it_loaded_out_of_full_gc_passes():
    import gc

    from lab.serve.app import State

    assert gc.get_freeze_count() == 0
    shared = State(ServeConfig(run="unused"), tiny_lm())  # a notebook's or a test's server
    shared.load()
    assert shared.ready and gc.get_freeze_count() == 0
    try:
        own = State(ServeConfig(run="unused"), tiny_lm(), own_process=True)  # lab serve
        own.load()
        assert own.ready and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_an_error_inside_the_model_is_a_500_for_that_request_only():
    from lab.models.mlp import MLP, MLPConfig

    cfg = MLPConfig()
    model = MLP(cfg).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if bool((x == 999).any()):
            raise RuntimeError("boom")
        return model(x)

    served = Served(name="mlp", family=family("mlp"), config=cfg, forward=forward, module=model, tokenizer=None,
                    artifact="fp32")
    server = start(ServeConfig(run="unused", port=0), served)
    try:
        assert server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.post("/predict", json={"features": [999.0] * cfg.in_features})
            assert r.status_code == 500 and r.json()["error"]["message"] == "internal error: RuntimeError: boom"
            assert c.post("/predict", json={"features": [1.0] * cfg.in_features}).status_code == 200
        m = scrape(server.url)
    finally:
        server.stop()
    assert m['lab_serve_requests_total{endpoint="/predict",status="500"}'] == 1
    assert m['lab_serve_request_seconds_count{endpoint="/predict"}'] == 2


def _png_b64(pixels) -> str:
    """0..255 pixels (H, W) as a base64 PNG, as a browser's canvas or PIL would send it."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_predict_takes_an_image_as_numbers_or_as_a_png():
    import numpy as np

    from lab.data import DigitsDataConfig, DigitsDataModule
    from lab.models.vision import CNN, CNNConfig

    dm = DigitsDataModule(DigitsDataConfig())
    dm.setup("fit")
    dm.setup("test")
    x, label = dm.test_dataloader().dataset[0]  # one standardised 1x8x8 test digit
    raw = x[0].numpy() * dm.std + dm.mean        # back to 0..1 (the bundled pixels /16)
    torch.manual_seed(0)
    cfg = CNNConfig()
    model = CNN(cfg).eval()
    served = Served(name="cnn", family=family("cnn"), config=cfg, forward=model, module=model, tokenizer=None,
                    artifact="fp32", pixels=(dm.mean, dm.std))
    server = start(ServeConfig(run="unused", port=0), served)
    try:
        assert server.wait_ready()
        expected = model(x[None])[0].softmax(-1)
        small = _png_b64(np.rint(raw * 255))
        big = _png_b64(np.kron(np.rint(raw * 255), np.ones((4, 4))))  # 32x32: each pixel a 4x4 square
        for png in (small, big):  # what the model sees: the DataModule's tensor, within half an 8-bit level
            seen = parse_sample(served, {"image": png})
            assert seen.shape == x.shape and float((seen - x).abs().max()) <= 0.5 / 255 / dm.std + 1e-6
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for body in ({"image": x.tolist()}, {"image": small}, {"image": "data:image/png;base64," + big}):
                r = c.post("/predict", json=body)
                assert r.status_code == 200, r.text
                got = torch.tensor(r.json()["probabilities"])
                # a PNG holds 8-bit pixels: at most half a level (0.5/255 of 0..1) from the numbers
                torch.testing.assert_close(got, expected.detach(), atol=2e-3, rtol=0)
            for image, says in [("not base64!", "base64-encoded PNG"), (big[: len(big) // 8 * 4], "PNG"),
                                ("R0lGODlhAQABAAAAACw=", "PNG")]:
                r = c.post("/predict", json={"image": image})
                assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
    finally:
        server.stop()


def test_predict_takes_texts_and_padding_a_batch_changes_no_answer():
    from concurrent.futures import ThreadPoolExecutor

    from lab.models.text_classifier import TextClassifier, TextClassifierConfig

    torch.manual_seed(0)
    tok = CharTokenizer(TEXT)
    cfg = TextClassifierConfig(vocab_size=tok.vocab_size, num_classes=3, block_size=32, n_layer=1, n_head=2, n_embd=32)
    model = TextClassifier(cfg).eval()
    served = Served(name="clf", family=family("gpt-classifier"), config=cfg, forward=model, module=model,
                    tokenizer=tok, artifact="fp32")
    texts = ["the fox", "a quick brown dog jumps over", "hello"]
    solo = {t: model(torch.tensor([tok.encode(t)]))[0].softmax(-1).detach() for t in texts}
    server = start(ServeConfig(run="unused", port=0, max_batch_size=8, max_wait_ms=200), served)
    try:
        assert server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as c, ThreadPoolExecutor(len(texts)) as pool:
            replies = list(pool.map(lambda t: c.post("/predict", json={"text": t}), texts))
            for t, r in zip(texts, replies):
                assert r.status_code == 200, r.text
                # batched with longer texts, right-padded: the same answer as alone
                torch.testing.assert_close(torch.tensor(r.json()["probabilities"]), solo[t], atol=1e-5, rtol=0)
            for body, says in [({"text": ""}, "non-empty string"), ({"text": "€"}, "cannot be tokenized"),
                               ({"text": "fox " * 10}, "at most 32")]:
                r = c.post("/predict", json=body)
                assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
        m = scrape(server.url)
    finally:
        server.stop()
    # the three texts waited for each other (max_wait_ms 200): some batch held more than one
    assert m['lab_serve_batch_size_sum{kind="predict"}'] > m['lab_serve_batch_size_count{kind="predict"}']


# ------------------------------------------------------------------ batching on its own


def test_batcher_groups_requests_and_a_failing_batch_fails_only_itself():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        if -1 in items:
            raise RuntimeError("boom")
        return [i * 10 for i in items]

    async def main() -> tuple[list[int], str]:
        b = Batcher(lambda: OneShot(run), max_size=3, max_wait_s=0.5, max_queue=10,
                    executor=ThreadPoolExecutor(1), on_batch=sizes.append)
        b.start()
        got = await asyncio.gather(*(b.submit(i) for i in range(5)))
        try:
            await b.submit(-1)
        except RuntimeError as e:
            failed = str(e)
        again = await b.submit(7)
        await b.stop()
        return [*got, again], failed

    got, failed = asyncio.run(main())
    assert got == [0, 10, 20, 30, 40, 70] and failed == "boom"
    assert sizes[:2] == [3, 2]  # five at once: a full batch, then the rest


def test_completions_join_a_running_batch_and_leave_when_they_end():
    # Continuous batching in DecodeBatch: a completion added after 5 steps gives the text it gives alone, and
    # a short one leaves the batch at its own last token while a long one goes on past block_size (16).
    from lab.serve.generation import Completion, DecodeBatch, run_completions

    served = tiny_lm()

    def job(prompt: str, n: int) -> Completion:
        return Completion(served.tokenizer.encode(prompt), n, 0.0, None, 1.0, 0, [], lambda *_: None)

    alone = {}
    for prompt, n in (("hello", 30), ("the quick", 4), ("a", 12)):
        alone[prompt] = job(prompt, n)
        run_completions(served, [alone[prompt]])
    batch, ended_at = DecodeBatch(served), {}
    jobs = {"hello": job("hello", 30), "the quick": job("the quick", 4), "a": job("a", 12)}
    batch.add([jobs["hello"]])
    for step in range(40):
        if step == 5:
            batch.add([jobs["the quick"], jobs["a"]])
        for j, reason in batch.step():
            assert reason == "length"
            ended_at[j.text] = step
        if not batch:
            break
    assert {p: j.text for p, j in jobs.items()} == {p: j.text for p, j in alone.items()}
    assert [ended_at[jobs[p].text] for p in ("the quick", "a", "hello")] == [5 + 3, 5 + 11, 29]


class Countdown:
    """A ``Stepped`` batch for the Batcher tests: items are [steps left]; a step takes 10 ms; -1 makes it raise."""

    def __init__(self) -> None:
        self.items: list[list[int]] = []
        self.steps = 0
        self.joined_at: list[int] = []  # the step before which each group of newcomers joined

    def add(self, items: list[list[int]]) -> None:
        if items:
            self.joined_at.append(self.steps)
        self.items += items

    def step(self) -> list[tuple[list[int], str]]:
        time.sleep(0.01)
        self.steps += 1
        if any(i[0] < 0 for i in self.items):
            raise RuntimeError("boom")
        for i in self.items:
            i[0] -= 1
        ended = [(i, "done") for i in self.items if i[0] == 0]
        self.items = [i for i in self.items if i[0] > 0]
        return ended


def test_batcher_starts_a_request_that_arrives_mid_batch_at_once():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    rows: list[int] = []
    order: list[str] = []

    async def main() -> str:
        b = Batcher(Countdown, max_size=4, max_wait_s=0.001, max_queue=10, executor=ThreadPoolExecutor(1),
                              on_batch=rows.append)
        b.start()

        async def go(name: str, steps: int, after: float) -> None:
            await asyncio.sleep(after)
            await b.submit([steps])
            order.append(name)

        # long: 40 steps (~0.4 s); short arrives after ~0.1 s and needs 3 steps: it must not wait for long.
        await asyncio.gather(go("long", 40, 0), go("short", 3, 0.1))
        try:
            await asyncio.gather(b.submit([5]), b.submit([-1]))
        except RuntimeError as e:
            failed = str(e)
        assert await b.submit([2]) == "done"  # a new batch after the failed one
        await b.stop()
        return failed

    assert asyncio.run(main()) == "boom"
    assert order == ["short", "long"]
    assert 2 in rows[:40] and rows[0] == 1  # one row, then two while short ran, then one again
    assert len(rows) < 40 + 3 + 1 + 2 + 2  # short's steps were shared with long's, not run after them


def test_batcher_lets_newcomers_join_a_running_batch_every_few_steps_only():
    # join_every=4: each joining costs a prefill pass, so newcomers that arrive one by one during a batch
    # wait for the next 4th step and join together; an empty batch takes them at once.
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    batches: list[Countdown] = []

    def new_batch() -> Countdown:
        batches.append(Countdown())
        return batches[-1]

    async def main() -> None:
        b = Batcher(new_batch, max_size=8, max_wait_s=0.001, max_queue=10, executor=ThreadPoolExecutor(1),
                    join_every=4)
        b.start()

        async def go(after: float, steps: int) -> None:
            await asyncio.sleep(after)
            await b.submit([steps])

        await asyncio.gather(go(0, 30), *(go(0.025 + 0.013 * i, 3) for i in range(5)))
        await b.stop()

    asyncio.run(main())
    joined = batches[0].joined_at
    assert len(batches) == 1 and joined[0] == 0 and len(joined) >= 2
    assert all(later - earlier >= 4 for earlier, later in zip(joined, joined[1:])), joined
    assert len(joined) < 6  # 5 newcomers arriving a step or so apart joined in fewer groups


# ------------------------------------------------------------------ end to end: a trained run, its artifact, the CLI


@pytest.mark.slow
def test_serve_a_trained_run_its_int8_artifact_and_the_cli(tmp_path):
    import os
    import subprocess
    import sys

    from openai import OpenAI

    from lab.compress import compress
    from lab.config import load_config
    from lab.train import fit

    cfg = load_config("gpt-nano", {"model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2, "model.block_size": 32,
                                   "trainer.max_steps": 4, "trainer.val_check_interval": 2,
                                   "trainer.limit_val_batches": 1, "trainer.accelerator": "cpu",
                                   "optimizer.warmup_steps": 1})
    run = fit(cfg, runs_root=tmp_path, progress=False, test=False)
    # torch.ao: the backend lab serve loads (lab compress may keep torchao's when it measures faster)
    compress(run, "int8-dynamic", split="val", max_batches=1, repeats=2, backend="torch.ao")
    compress(run, "onnx", split="val", max_batches=1, repeats=2)  # served through ONNX Runtime, no KV cache

    for artifact in ("fp32", "int8-dynamic", "onnx"):
        server = start(ServeConfig(run=run.name, runs_dir=str(tmp_path), artifact=artifact, port=0))
        try:
            assert server.wait_ready(), artifact
            oa = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
            out = oa.completions.create(model=run.name, prompt="ROMEO:", max_tokens=40, temperature=0)
            assert out.usage.completion_tokens == 40  # 6 + 40 > block_size 32: cropped and recomputed
            assert httpx.get(server.url + "/health").json()["artifact"] == artifact
        finally:
            server.stop()

    bad = subprocess.run([sys.executable, "-m", "lab.cli", "serve", run.name, "--runs_dir", str(tmp_path),
                          "--artifact", "onnx-int8"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no onnx-int8 artifact yet" in bad.stderr

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "serve", "last", "--runs_dir", str(tmp_path),
                             "--port", str(port), "--api-key", KEY], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        r = httpx.post(url + "/v1/completions", json={"model": run.name, "prompt": "ROMEO:", "max_tokens": 5},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"serving {run.name} (fp32)" in out  # "last" named as the run it resolved to
    assert "POST /v1/completions" not in out  # no access log unless --access-log


@pytest.mark.slow
def test_lab_serve_workers_each_load_the_digits_run_and_answer_a_png(tmp_path):
    import os
    import subprocess
    import sys

    import numpy as np
    import psutil

    from lab.config import load_config
    from lab.train import fit

    cfg = load_config("digits-cnn", {"trainer.max_steps": 6, "trainer.val_check_interval": 3,
                                     "trainer.limit_val_batches": 1, "trainer.accelerator": "cpu"})
    run = fit(cfg, runs_root=tmp_path, progress=False, test=False)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "serve", run.name, "--runs_dir", str(tmp_path),
                             "--port", str(port), "--workers", "2", "--access-log"],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        ready = 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and ready < 5:  # five ready answers in a row: both workers are up
            try:
                ready = ready + 1 if httpx.get(url + "/health").status_code == 200 else 0
            except httpx.TransportError:
                ready = 0
            time.sleep(0.3)
        assert ready == 5, "the server never became ready"
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]
        image = _png_b64(np.full((8, 8), 255.0) * (np.arange(8) % 2))  # stripes: any image the model can read
        for _ in range(6):  # new connections: the kernel hands them to either worker
            r = httpx.post(url + "/predict", json={"image": image}, timeout=60)
            assert r.status_code == 200 and 0 <= r.json()["label"] < 10, r.text
            assert len(r.json()["probabilities"]) == 10
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode is not None
    assert out.count('"POST /predict HTTP/1.1" 200') == 6, out[-2000:]  # --access-log reaches every worker


def test_lab_serve_hands_its_batching_options_to_the_server(monkeypatch):
    import lab.serve
    from lab.cli import main
    from lab.serve.app import State

    seen: list[ServeConfig] = []
    monkeypatch.setattr(lab.serve, "serve", lambda cfg: seen.append(cfg) or 0)
    assert main(["serve", "gpt-nano/x", "--max-batch-size", "16", "--max-wait-ms", "7.5", "--join-every", "2",
                 "--max-streams", "40", "--threads", "1"]) == 0
    (cfg,) = seen
    assert (cfg.max_batch_size, cfg.max_wait_ms, cfg.join_every, cfg.max_streams, cfg.threads) == (16, 7.5, 2, 40, 1)
    state = State(cfg, tiny_lm())
    assert (state.generator.join_every, state.generator.max_size, state.generator.max_wait_s) == (2, 16, 0.0075)
    assert ServeConfig(run="x").join_every == 4  # the default, as `lab serve --help` says
