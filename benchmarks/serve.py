"""`lab serve` under bounded load on 127.0.0.1: batching, int8, the KV cache, and a soak, in one run.

    python benchmarks/serve.py                                   # trains what it needs (~1 min), then ~10 minutes
    python benchmarks/serve.py --quick                           # shorter cells and a ~30 s soak
    python benchmarks/serve.py --gpt gpt-nano/<id> --digits digits-cnn/<id> --runs_dir runs   # reuse runs
    python benchmarks/serve.py --soak-seconds 600 --threads 2 --json serve.json   # longer soak, 2 torch threads

Runs: the digits classifier (``digits-cnn`` preset as is, seconds) and ``gpt-nano`` (``--gpt-steps``
steps, default 300: speed is measured, not quality) are trained into a temporary runs folder, and each
gets its ``int8-dynamic`` artifact (``lab.compress``), unless ``--gpt/--digits/--runs_dir`` name runs
(an artifact they lack is made in place).

Every server is a real ``lab serve`` process (``--threads`` torch threads, default 1), so its CPU and
memory are its own; the clients are ``aiohttp`` workers in this process (the soak's: ``httpx``),
closed-loop: each sends its next request when the last one is answered, for ``--seconds`` after
``--warmup`` seconds.
One torch thread by default: the clients share the machine's cores with the server, and on 2 cores a
second torch thread spin-waits between the small models' operations, taking CPU from the server's
event loop and the clients (measured side by side: gpt-nano c32 batched ~10% more req/s and a lower
p99 with 1 thread; digits c1 p99 7 ms against 18 ms).

1. **Batching** -- requests/s and p50/p99 latency at concurrency 1, 8 and 32, for each model and
   artifact (fp32, int8-dynamic), on a batched server (``--max-batch-size 32 --max-wait-ms 5``)
   and an unbatched one (``--max-batch-size 1``). Both servers of a pair run side by side and the
   cells alternate (c1 unbatched, c1 batched, c8 ...), so the pair shares the machine's minutes.
   digits: ``POST /predict`` with one 8x8 image; gpt-nano: ``POST /v1/completions`` (not streamed,
   greedy, ``--tokens`` new tokens, default 16). The mean batch size comes from the server's /metrics.
   Goal: batched at concurrency 32 >= 3x the requests/s of one-at-a-time, with p99 <= 2x the
   unbatched p99 at concurrency 1. A second table sets what the p99 goal asks of a wave of 32 (answered
   within 2x the c1 p99; by Little's law at least 16 / c1 p99 req/s) against floors measured here:
   the model alone (this process, the server's code path without HTTP, timed for 1 request and for 32
   together before each pair's servers start, with ``--threads`` and with every core: the faster one),
   and the CPU the batched c32 cell spent per request, server and clients (psutil, ``time.process_time``),
   times 32 spread over every core; and both together (``joint_floor``: the model is fastest with every
   core, but then the requests' HTTP work has no core of its own; its CPU, timed alone too, counts every
   torch thread, spinning or working). A wave of 32 cannot come back sooner than any of them, however the
   server schedules it (with torch's threads as it runs them). "One-at-a-time" is the unbatched server at the *same*
   concurrency 32: the same offered load, only batching differs (unbatched at concurrency 32 also
   overlaps HTTP work with the model, so it serves at least as many requests/s as at concurrency 1,
   and the ratio against it is the stricter one; the ratio against concurrency 1 is printed too).
2. **KV cache** -- ``GPT.generate`` tokens/s with ``use_cache=True`` against ``use_cache=False``, in
   this process, on the ``gpt-10m`` preset's shape with random weights (the char vocabulary of the
   bundled corpus), batch 1, a 1-token prompt, 128 new tokens, greedy (``top_k=1``), the median of
   ``--kv-repeats`` alternated runs. Goal >= 2x.
3. **Soak** -- ``--soak-seconds`` (default 180; ``--quick`` 30) at concurrency 32 of streamed
   completions (``--soak-tokens`` tokens, default 32) on the batched gpt-nano fp32 server; every
   4th request of each client disconnects after its second chunk. Goals: no error beyond those
   provoked (any non-200, exception, error chunk or stream without ``[DONE]`` counts), and the
   server's RSS (psutil) at the end within 10% of its RSS after the warm-up (the first ``--warmup``
   x 5 seconds of the same load). Afterwards /metrics must show no completion left in flight.

They run in the order batching, soak, KV cache (``--only`` picks among them). Prints the CPU, the load
average before and after, the tables, PASS / BELOW-GOAL per goal, and
always exits 0: a benchmark measures, it does not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from benchmarks.scenarios import finish, load, status, table  # noqa: E402  (the same table, verdicts and load line)
from lab.env.probe import cpu_line  # noqa: E402
from lab.ports import free_port  # noqa: E402

BATCH_GOAL = 3.0
"""Batched requests/s at concurrency 32 over one-at-a-time's."""
P99_GOAL = 2.0
"""Batched p99 at concurrency 32 over the unbatched p99 at concurrency 1."""
KV_GOAL = 2.0
RSS_GOAL = 0.10
CONCURRENCY = (1, 8, 32)
PROMPT = "def "
CORES = os.cpu_count() or 1




def div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


# --------------------------------------------------------------------------- runs


def prepare_runs(args: argparse.Namespace, folder: Path) -> tuple[str, str, str]:
    """(gpt run, digits run, runs root), each with an int8-dynamic artifact."""
    from lab.compress import compress
    from lab.config import load_config
    from lab.runs import resolve_run
    from lab.train import fit

    root = args.runs_dir or str(folder)
    names = {}
    for key, preset, overrides in (("digits", "digits-cnn", {}),
                                   ("gpt", "gpt-nano", {"trainer.max_steps": args.gpt_steps,
                                                        "trainer.val_check_interval": min(100, args.gpt_steps)})):
        given = getattr(args, key)
        if given:
            run = resolve_run(given, args.runs_dir)
        else:
            start = time.time()
            run = fit(load_config(preset, overrides), runs_root=Path(root), progress=False)
            print(f"trained {run.name} in {time.time() - start:.0f}s", flush=True)
        if not (run.compressed_dir("int8-dynamic") / "report.json").is_file():
            start = time.time()
            compress(run, "int8-dynamic", threads=args.threads, repeats=3, max_batches=4)
            print(f"compressed {run.name} int8-dynamic in {time.time() - start:.0f}s", flush=True)
        names[key] = run.name
    return names["gpt"], names["digits"], root


# --------------------------------------------------------------------------- servers


class Server:
    """A ``lab serve`` process on a free loopback port."""

    def __init__(self, run: str, runs_dir: str, artifact: str, batch: int, args: argparse.Namespace) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "lab.cli", "serve", run, "--runs_dir", runs_dir, "--artifact", artifact,
               "--host", "127.0.0.1", "--port", str(self.port), "--max-batch-size", str(batch),
               "--max-wait-ms", str(args.max_wait_ms), "--max-streams", "64", "--threads", str(args.threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.name = run

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"lab serve exited {self.proc.returncode}: {self.log.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"lab serve on {self.url} not ready after {timeout:.0f}s")

    def metrics(self) -> dict[str, float]:
        from lab.serve import scrape

        return scrape(self.url)

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------- load


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of ``proc`` and its children (a server's ``--workers`` are child processes)."""
    return sum(t.user + t.system for t in [proc.cpu_times(), *(c.cpu_times() for c in proc.children(recursive=True))])


async def closed_loop(url: str, path: str, body: dict[str, Any], concurrency: int, seconds: float,
                      warmup: float, server: psutil.Process) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request when answered; counts what completes in the window.

    Also the CPU time the ``server`` process and this one (the clients) spent in the window, per request
    completed in it (``cpu ms``): the work each request costs the machine, wherever it runs.

    The clients are aiohttp's: httpx's connection pool took a whole core at concurrency 32 (0.98 cores for
    ~260 req/s against a digits server that answers ~600 req/s to aiohttp's clients using 0.24 cores), so
    the load generator, not the server, set the pace and the tail.
    """
    lat: list[float] = []
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:
        t0 = time.perf_counter()
        begin, end = t0 + warmup, t0 + warmup + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                s = time.perf_counter()
                try:
                    async with client.post(path, json=body) as r:
                        await r.read()
                        bad = None if r.status == 200 else str(r.status)
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    bad = type(e).__name__
                e_ = time.perf_counter()
                if begin <= e_ <= end:
                    if bad:
                        errors[bad] += 1
                    else:
                        lat.append(e_ - s)

        async def cpu_in_window() -> dict[str, float]:
            await asyncio.sleep(max(0.0, begin - time.perf_counter()))
            s0, c0 = cpu_seconds(server), time.process_time()
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            return {"server": (cpu_seconds(server) - s0) * 1e3, "clients": (time.process_time() - c0) * 1e3}

        *_, cpu = await asyncio.gather(*(worker() for _ in range(concurrency)), cpu_in_window())
    n = max(len(lat), 1)
    return {"rps": len(lat) / seconds, "p50": pct(lat, 0.5) * 1e3, "p99": pct(lat, 0.99) * 1e3, "n": len(lat),
            "errors": dict(errors), "cpu ms": {k: v / n for k, v in cpu.items()}}


def model_alone(run: str, root: str, artifact: str, body: dict[str, Any],
                args: argparse.Namespace) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], float]]:
    """Milliseconds the served model itself takes for one request's work alone and for 32 requests' together:
    (wall time, CPU time of this process -- every torch thread, spinning or working).

    In this process, on the server's code path without HTTP: ``run_completions`` for a completion (prefill
    and every decoding step), ``collate`` + forward + ``answers`` for a prediction; alternated, median of
    ``--alone-repeats``; keyed ``(torch threads, requests)``, with the servers' ``--threads`` and with every
    core. Their ratio is what batching can give at best: a wave of 32 requests cannot come back sooner than
    the model takes for them together, whatever the server does around it, even with the whole machine.
    """
    from lab.serve.config import ServeConfig
    from lab.serve.generation import Completion, run_completions
    from lab.serve.loaded import load
    from lab.serve.predict import answers, collate, parse_sample

    served = load(ServeConfig(run=run, runs_dir=root, artifact=artifact, threads=args.threads))

    ids = served.tokenizer.encode(body["prompt"]) if served.generates else []

    def work(n: int) -> None:
        if served.generates:
            run_completions(served, [Completion(ids, body["max_tokens"], 0.0, None, 1.0, 0, [], lambda *_: None)
                                     for _ in range(n)])
        else:
            with torch.inference_mode():
                x = parse_sample(served, body)
                answers(served, served.forward(collate(served, [x] * n)), [0] * n)

    counts = sorted({args.threads, CORES})
    times: dict[tuple[int, int], list[float]] = {(t, n): [] for t in counts for n in (1, 32)}
    cpu: dict[tuple[int, int], list[float]] = {(t, n): [] for t in counts for n in (1, 32)}
    try:
        for _ in range(1 + args.alone_repeats):  # the first round warms up
            for threads in counts:
                torch.set_num_threads(threads)
                work(1)  # untimed: the first operations after a change of threads start the thread pool
                for n in (1, 32):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    work(n)
                    times[(threads, n)].append((time.perf_counter() - start) * 1e3)
                    cpu[(threads, n)].append((time.process_time() - start_cpu) * 1e3)
    finally:
        torch.set_num_threads(args.threads)
    return ({key: statistics.median(t[1:]) for key, t in times.items()},
            {key: statistics.median(t[1:]) for key, t in cpu.items()})


def joint_floor(wall: dict[int, float], cpu: dict[int, float], other_cpu: float, cores: int = CORES) -> float:
    """The least time a wave can take when the model's work and the rest of the requests' work share the cores.

    ``wall``/``cpu``: the model alone for the wave, by torch thread count (its CPU counts every torch thread,
    spinning or working: a floor for torch as the server runs it); ``other_cpu``: the CPU the wave costs
    beyond the model alone (HTTP, server and clients). Any share f of the model's work may run with one
    thread count and the rest with another; the wave lasts at least the model's time, and at least all of
    its CPU spread perfectly over ``cores``. -> the least of max(wall, cpu / cores) over every such mix.
    """
    best = float("inf")
    for a in wall:
        for b in wall:
            w0, w1 = wall[a], wall[b]
            c0, c1 = (cpu[a] + other_cpu) / cores, (cpu[b] + other_cpu) / cores
            # Both are linear in f, so the larger is least at an end, or where the two cross.
            shares = [0.0, 1.0]
            slope = (w1 - w0) - (c1 - c0)
            if slope and 0 <= (c0 - w0) / slope <= 1:
                shares.append((c0 - w0) / slope)
            best = min(best, *(max(w0 + f * (w1 - w0), c0 + f * (c1 - c0)) for f in shares))
    return best


def batch_mean(before: dict[str, float], after: dict[str, float], kind: str) -> float:
    """Mean batch size between two /metrics scrapes, from the server's batch-size histogram."""
    key = f'{{kind="{kind}"}}'
    s = after.get("lab_serve_batch_size_sum" + key, 0) - before.get("lab_serve_batch_size_sum" + key, 0)
    n = after.get("lab_serve_batch_size_count" + key, 0) - before.get("lab_serve_batch_size_count" + key, 0)
    return s / n if n else float("nan")


def batching(args: argparse.Namespace, gpt: str, digits: str, root: str) -> tuple[list, list, list, dict]:
    """(the load table, the p99 bounds table, goals, figures)."""
    rows: list[dict[str, Any]] = []
    bounds: list[dict[str, Any]] = []
    goals: list[tuple[str, str, str]] = []
    figures: dict[str, Any] = {}
    image = [float((i * 7) % 17) for i in range(64)]  # one 8x8 image, flat (the server reshapes it)
    models = [("digits-cnn", digits, "/predict", "predict", lambda name: {"image": image}),
              ("gpt-nano", gpt, "/v1/completions", "generate",
               lambda name: {"model": name, "prompt": PROMPT, "max_tokens": args.tokens, "temperature": 0})]
    for label, run, path, kind, make_body in models:
        for artifact in args.artifacts:
            alone, alone_cpu = model_alone(run, root, artifact, make_body(run), args)
            threads = sorted({t for t, _ in alone})
            print(f"  {label} {artifact} model alone: " + "; ".join(
                f"{t} thread(s): 1 request {alone[(t, 1)]:.2f} ms, 32 together {alone[(t, 32)]:.2f} ms = "
                f"{alone[(t, 32)] / alone[(t, 1)]:.2f}x" for t in threads), flush=True)
            servers = {"unbatched": Server(run, root, artifact, 1, args),
                       "batched": Server(run, root, artifact, args.max_batch_size, args)}
            try:
                for s in servers.values():
                    s.wait_ready()
                cell: dict[tuple[str, int], dict[str, Any]] = {}
                for c in CONCURRENCY:
                    for mode, s in servers.items():
                        before = s.metrics()
                        r = asyncio.run(closed_loop(s.url, path, make_body(s.name), c, args.seconds, args.warmup,
                                                    psutil.Process(s.proc.pid)))
                        r["batch"] = batch_mean(before, s.metrics(), kind)
                        cell[(mode, c)] = r
                        print(f"  {label} {artifact} {mode} c={c}: {r['rps']:.1f} req/s, p50 {r['p50']:.1f} ms, "
                              f"p99 {r['p99']:.1f} ms, mean batch {r['batch']:.1f}, errors {r['errors'] or 0}",
                              flush=True)
            finally:
                for s in servers.values():
                    s.stop()
            for c in CONCURRENCY:
                for mode in servers:
                    r = cell[(mode, c)]
                    rows.append({"model": label, "artifact": artifact, "server": mode, "conc": c,
                                 "req/s": r["rps"], "p50 ms": r["p50"], "p99 ms": r["p99"],
                                 "mean batch": r["batch"], "errors": sum(r["errors"].values()),
                                 "x unbatched": div(r["rps"], cell[("unbatched", c)]["rps"])})
            b32, u32, u1 = cell[("batched", 32)], cell[("unbatched", 32)], cell[("unbatched", 1)]
            x32, x1, p = div(b32["rps"], u32["rps"]), div(b32["rps"], u1["rps"]), div(b32["p99"], u1["p99"])
            where = f"{label} {artifact}"
            goals.append(("batching", f"{where}: batched c32 {b32['rps']:.1f} req/s = {x32:.2f}x unbatched c32 "
                                      f"({u32['rps']:.1f}); {x1:.2f}x unbatched c1 ({u1['rps']:.1f}) (goal >= 3x "
                                      "unbatched c32)", status(x32 >= BATCH_GOAL)))
            # Little's law: 32 clients that each wait p99-at-most for an answer are served >= 32 / p99 req/s.
            need = 32 / (P99_GOAL * u1["p99"] / 1e3)
            # Floors under a wave of 32: the model alone (the faster thread count); the CPU the wave's requests
            # cost the server and the clients, spread perfectly over every core; and the two together (the
            # model is fastest on every core, but then the HTTP work has none of its own: ``joint_floor``).
            cpu = sum(b32["cpu ms"].values())
            other_cpu = max(0.0, 32 * cpu - alone_cpu[(args.threads, 32)])  # the server's model runs --threads
            joint = joint_floor({t: alone[(t, 32)] for t in threads}, {t: alone_cpu[(t, 32)] for t in threads},
                                other_cpu)
            bound = {"model": label, "artifact": artifact, "c1 p99 ms": u1["p99"], "goal ms": P99_GOAL * u1["p99"],
                     "c32 p99 ms": b32["p99"], "need req/s": need, "served req/s": b32["rps"],
                     "alone 32 ms": min(alone[(t, 32)] for t in threads),
                     "alone x": min(alone[(t, 32)] / alone[(t, 1)] for t in threads),
                     "server cpu/req ms": b32["cpu ms"]["server"], "clients cpu/req ms": b32["cpu ms"]["clients"],
                     "cpu floor ms": 32 * cpu / CORES, "other cpu/wave ms": other_cpu, "joint floor ms": joint}
            bounds.append(bound)
            goals.append(("batching", f"{where}: batched c32 p99 {b32['p99']:.1f} ms = {p:.2f}x unbatched c1 p99 "
                                      f"({u1['p99']:.1f} ms) (goal <= 2x: needs >= {need:.0f} req/s at c32, served "
                                      f"{b32['rps']:.0f}; floors of a wave of 32: the model alone "
                                      f"{bound['alone 32 ms']:.1f} ms, its CPU on {CORES} cores "
                                      f"{bound['cpu floor ms']:.1f} ms, both together {joint:.1f} ms, against "
                                      f"{bound['goal ms']:.1f} ms)",
                          status(p <= P99_GOAL)))
            figures[where] = {f"{m} c{c}": v for (m, c), v in cell.items()}
            figures[where]["model alone ms"] = {f"{t} threads, {n} requests": v for (t, n), v in alone.items()}
            figures[where]["model alone cpu ms"] = {f"{t} threads, {n} requests": v
                                                    for (t, n), v in alone_cpu.items()}
    # int8 against fp32, same server kind and concurrency
    if "fp32" in args.artifacts and "int8-dynamic" in args.artifacts:
        by = {(r["model"], r["artifact"], r["server"], r["conc"]): r for r in rows}
        for r in rows:
            if r["artifact"] == "int8-dynamic":
                f = by[(r["model"], "fp32", r["server"], r["conc"])]
                r["x fp32"] = div(r["req/s"], f["req/s"])
        for r in rows:
            r.setdefault("x fp32", 1.0 if r["artifact"] == "fp32" else float("nan"))
    return rows, bounds, goals, figures


# --------------------------------------------------------------------------- KV cache


def kv_cache(args: argparse.Namespace, gpt: str, root: str) -> tuple[list, list, dict]:
    from dataclasses import replace

    from lab.config import load_config
    from lab.data.tokenizers import load_tokenizer
    from lab.families import build_model
    from lab.runs import resolve_run

    vocab = load_tokenizer(resolve_run(gpt, root).tokenizer_path).vocab_size
    torch.manual_seed(0)
    model = build_model(replace(load_config("gpt-10m").model, vocab_size=vocab)).eval()
    params = sum(p.numel() for p in model.parameters())
    idx = torch.zeros(1, 1, dtype=torch.long)
    times: dict[bool, list[float]] = {True: [], False: []}
    for use_cache in (True, False):  # warm-up
        model.generate(idx, 8, top_k=1, use_cache=use_cache)
    outs = {}
    for _ in range(args.kv_repeats):
        for use_cache in (True, False):
            start = time.perf_counter()
            outs[use_cache] = model.generate(idx, args.kv_tokens, top_k=1, use_cache=use_cache)
            times[use_cache].append(time.perf_counter() - start)
    same = bool(torch.equal(outs[True], outs[False]))
    tps = {k: args.kv_tokens / statistics.median(v) for k, v in times.items()}
    ratio = tps[True] / tps[False]
    rows = [{"generate": "use_cache=False (recompute)", "tokens/s": tps[False],
             "runs (s)": " ".join(f"{t:.2f}" for t in times[False]), "x no cache": 1.0},
            {"generate": "use_cache=True (KV cache)", "tokens/s": tps[True],
             "runs (s)": " ".join(f"{t:.2f}" for t in times[True]), "x no cache": ratio}]
    print(f"\nKV cache: gpt-10m shape ({params / 1e6:.1f}M params, vocab {vocab}, random weights), batch 1, "
          f"1-token prompt, {args.kv_tokens} new tokens, greedy; median of {args.kv_repeats}; "
          f"greedy outputs identical: {same}")
    print(table(rows))
    goals = [("kv-cache", f"gpt-10m {args.kv_tokens} new tokens: {tps[True]:.0f} vs {tps[False]:.0f} tokens/s = "
                          f"{ratio:.2f}x (goal >= 2x)", status(ratio >= KV_GOAL))]
    return rows, goals, {"tokens_per_s": {"cache": tps[True], "no_cache": tps[False]}, "ratio": ratio,
                         "identical": same, "params": params}


# --------------------------------------------------------------------------- soak


async def soak_load(server: Server, args: argparse.Namespace, seconds: float, warmup: float) -> dict[str, Any]:
    conc = 32
    limits = httpx.Limits(max_connections=conc + 4, max_keepalive_connections=conc + 4)
    body = {"model": server.name, "prompt": PROMPT, "max_tokens": args.soak_tokens, "temperature": 0.8, "seed": 0,
            "stream": True}
    stats: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    ttft: list[float] = []
    rss: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    end = t0 + warmup + seconds

    async def worker(i: int) -> None:
        n = 0
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            while time.perf_counter() < end:
                n += 1
                leave = n % 4 == i % 4  # every 4th request of each client, staggered across clients
                s = time.perf_counter()
                try:
                    async with client.stream("POST", "/v1/completions", json=body) as r:
                        if r.status_code != 200:
                            await r.aread()
                            errors[f"HTTP {r.status_code}"] += 1
                            continue
                        chunks, done, first = 0, False, True
                        async for line in r.aiter_lines():
                            if not line.startswith("data: "):
                                continue
                            if first:
                                ttft.append(time.perf_counter() - s)
                                first = False
                            data = line[6:]
                            if data == "[DONE]":
                                done = True
                                break
                            if "error" in json.loads(data):
                                errors["error chunk"] += 1
                                break
                            chunks += 1
                            if leave and chunks == 2:
                                break
                        if leave and chunks == 2 and not done:
                            stats["disconnected (provoked)"] += 1
                        elif done:
                            stats["completed"] += 1
                        else:
                            errors["stream without [DONE]"] += 1
                except httpx.HTTPError as e:
                    errors[type(e).__name__] += 1

    async def watch() -> None:
        while time.perf_counter() < end:
            rss.append((time.perf_counter() - t0, server.rss()))
            await asyncio.sleep(1.0)

    workers = [asyncio.create_task(worker(i)) for i in range(conc)]
    watcher = asyncio.create_task(watch())
    await asyncio.sleep(warmup)
    base = server.rss()
    await asyncio.gather(*workers)
    await watcher
    final = server.rss()
    return {"stats": dict(stats), "errors": dict(errors), "rss_warm": base, "rss_end": final,
            "rss_max": max(v for _, v in rss), "ttft_p50": pct(ttft, 0.5) * 1e3, "ttft_p99": pct(ttft, 0.99) * 1e3,
            "seconds": time.perf_counter() - t0}


def soak(args: argparse.Namespace, gpt: str, root: str) -> tuple[list, list, dict]:
    server = Server(gpt, root, "fp32", args.max_batch_size, args)
    try:
        server.wait_ready()
        rss_ready = server.rss()
        warmup = max(5.0, args.warmup * 5)
        print(f"\nsoak: {args.soak_seconds:.0f}s after a {warmup:.0f}s warm-up, concurrency 32, streamed, "
              f"{args.soak_tokens} tokens, every 4th request disconnects after 2 chunks ...", flush=True)
        r = asyncio.run(soak_load(server, args, args.soak_seconds, warmup))
        time.sleep(1.0)
        m = server.metrics()
        in_flight = m.get("lab_serve_active_completions", float("nan"))
        alive = server.proc.poll() is None and httpx.get(server.url + "/health", timeout=10).status_code == 200
        codes = {k: v for k, v in m.items() if k.startswith("lab_serve_requests_total") and "completions" in k}
    finally:
        server.stop()
    growth = r["rss_end"] / r["rss_warm"] - 1
    mb = 1 / 2**20
    rows = [{"requests completed": r["stats"].get("completed", 0),
             "disconnected (provoked)": r["stats"].get("disconnected (provoked)", 0),
             "errors": sum(r["errors"].values()), "TTFT p50 ms": r["ttft_p50"], "TTFT p99 ms": r["ttft_p99"],
             "RSS ready MiB": rss_ready * mb, "RSS warm MiB": r["rss_warm"] * mb, "RSS max MiB": r["rss_max"] * mb,
             "RSS end MiB": r["rss_end"] * mb, "RSS change": f"{growth:+.1%}",
             "in flight after": int(in_flight) if in_flight == in_flight else "n/a"}]
    print(table(rows))
    print(f"errors: {r['errors'] or 'none'}; server alive and healthy after: {alive}; "
          f"server's completion requests by status: {codes}")
    errs = sum(r["errors"].values())
    goals = [("soak", f"{r['stats'].get('completed', 0)} completed + {r['stats'].get('disconnected (provoked)', 0)} "
                      f"provoked disconnects in {args.soak_seconds:.0f}s: {errs} other errors, {in_flight:.0f} "
                      "completions left in flight, healthy after: " + str(alive) + " (goal: 0 errors)",
              status(errs == 0 and in_flight == 0 and alive)),
             ("soak", f"server RSS {r['rss_warm'] * mb:.0f} MiB after warm-up -> {r['rss_end'] * mb:.0f} MiB at the "
                      f"end ({growth:+.1%}; max {r['rss_max'] * mb:.0f}) (goal within 10%)",
              status(abs(growth) <= RSS_GOAL))]
    return rows, goals, {**r, "rss_ready": rss_ready, "in_flight_after": in_flight, "healthy_after": alive,
                         "status_counts": codes}


# --------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpt", default=None, help="a gpt-nano run to serve (default: train one)")
    p.add_argument("--digits", default=None, help="a digits-cnn run to serve (default: train one)")
    p.add_argument("--runs_dir", default=None, help="where --gpt and --digits live (and where runs trained here go)")
    p.add_argument("--gpt-steps", type=int, default=300, help="training steps of the gpt-nano run trained here")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every server and of the KV-cache runs")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per load cell")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each cell")
    p.add_argument("--tokens", type=int, default=16, help="new tokens per gpt-nano completion")
    p.add_argument("--max-batch-size", type=int, default=32, help="the batched server's --max-batch-size")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="every server's --max-wait-ms")
    p.add_argument("--artifacts", default="fp32,int8-dynamic", help="comma list of artifacts to serve")
    p.add_argument("--alone-repeats", type=int, default=20,
                   help="alternated runs of the model alone (1 request, 32 together) per model and artifact")
    p.add_argument("--kv-tokens", type=int, default=128)
    p.add_argument("--kv-repeats", type=int, default=3)
    p.add_argument("--soak-seconds", type=float, default=180.0, help="soak duration (default 3 minutes)")
    p.add_argument("--soak-tokens", type=int, default=32, help="tokens per streamed soak completion")
    p.add_argument("--only", default="batching,kv,soak", help="comma list of: batching, kv, soak")
    p.add_argument("--quick", action="store_true", help="3 s cells, 1 s warm-up, 30 s soak, 2 KV repeats")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.soak_seconds, args.kv_repeats = 3.0, 1.0, 30.0, 2
    args.artifacts = args.artifacts.split(",")
    warnings.simplefilter("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {cpu_line()}, {os.cpu_count()} CPUs, {args.threads} threads per server; "
          f"load average {load()}", flush=True)
    only = args.only.split(",")
    goals: list[tuple[str, str, str]] = []
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lab-bench-serve-") as tmp:
        gpt, digits, root = prepare_runs(args, Path(tmp))
        print(f"serving {gpt} and {digits} from {root}; load average {load()}", flush=True)
        if "batching" in only:
            print(f"\nbatching: {args.seconds:.0f}s per cell after {args.warmup:.0f}s; batched = --max-batch-size "
                  f"{args.max_batch_size} --max-wait-ms {args.max_wait_ms:g}, unbatched = --max-batch-size 1; "
                  f"gpt-nano: {args.tokens} new tokens, greedy, not streamed", flush=True)
            rows, bounds, g, figures["batching"] = batching(args, gpt, digits, root)
            print()
            print(table(rows))
            print(f"\nwhat the p99 goal asks of a wave of 32 (at most 'goal ms'), against its floors on {CORES} cores:")
            print(table(bounds))
            figures["batching"]["bounds"] = bounds
            goals += g
        if "soak" in only:
            rows, g, figures["soak"] = soak(args, gpt, root)
            goals += g
        if "kv" in only:
            rows, g, figures["kv_cache"] = kv_cache(args, gpt, root)
            goals += g
    finish(goals, args.json, {"args": vars(args), "goals": goals, **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
