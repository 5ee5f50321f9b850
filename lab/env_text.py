"""The readable form of ``lab doctor``'s report (``EnvReport.to_text()``).

    from lab import env
    print(env.report().to_text())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from lab.env import EnvReport

MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}


def _gib(n: Any) -> str:
    return f"{n / 2**30:.1f} GiB" if isinstance(n, (int, float)) else "?"


def _table(rows: list[Sequence[Any]], header: Sequence[str]) -> list[str]:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
           "  " + "  ".join("-" * w for w in widths)]
    return out + ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]


def _rate(value: float | str | None, unit: str) -> str:
    if value is None or isinstance(value, str):
        return value or "-"  # a measurement that failed carries its error text
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def bench_lines(bench: dict[str, Any]) -> list[str]:
    """The ``--bench`` section: one row per measurement."""
    rows = []
    for key, label, unit in (("cpu_matmul_fp32", "CPU matmul fp32", "FLOP/s"), ("cpu_matmul_bf16", "CPU matmul bf16", "FLOP/s"),
                             ("host_memory_bandwidth", "host memory copy", "B/s"),
                             ("gpu_matmul_fp32", "GPU matmul fp32", "FLOP/s"), ("gpu_matmul_bf16", "GPU matmul bf16", "FLOP/s"),
                             ("gpu_memory_bandwidth", "GPU memory copy", "B/s"),
                             ("host_to_gpu_bandwidth", "host -> GPU (pinned)", "B/s")):
        if bench.get(key) is not None:
            rows.append((label, _rate(bench[key], unit)))
    ar = bench.get("allreduce") or {}
    if ar.get("error"):
        rows.append((f"all-reduce ({ar.get('backend')})", f"failed: {ar['error']}"))
    elif ar:
        rows.append((f"all-reduce latency, {ar['world_size']} procs {ar['backend']}", f"{ar['latency_s'] * 1e6:.0f} us"))
        rows.append((f"all-reduce bus bandwidth, {ar['bytes'] / 2**20:.0f} MiB", _rate(ar["bus_bandwidth"], "B/s")))
    rows.append(("took", f"{bench.get('seconds', 0):.1f} s; CPU peak cached for MFU: {_rate(bench.get('peak_flops_cached'), 'FLOP/s')}"))
    return ["", "bench"] + _table(rows, ["measurement", "result"])


def report_text(r: EnvReport) -> str:
    """Sections as a key/value table, then the packages, the checks, the install command and the bench."""
    s, t, c, d, j = r.system, r.torch, r.cpu, r.disk, r.jupyter
    gpus = "; ".join(f"{g['name']} {_gib(g.get('memory_free'))} free of {_gib(g.get('memory_total'))}, "
                     f"cc {g.get('compute_capability') or '-'}, bf16 {'yes' if g.get('bf16') else 'no'}, "
                     f"TF32 {'yes' if g.get('tf32') else 'no'}, driver {g.get('driver') or '-'}" for g in r.gpus)
    facts = [
        ("os", f"{s['os']} {s['kernel']} ({s.get('distribution') or '-'}), {s['machine']}"),
        ("python", f"{s['python']} {s['implementation']} at {s['executable']} ({s['environment']})"),
        ("torch", f"{t['version']}, {t['build']} build; cuDNN {t['cudnn'] or '-'}, NCCL {t['nccl'] or 'no'}, "
                  f"gloo {'yes' if t['gloo'] else 'no'}, MPI {'yes' if t['mpi'] else 'no'}"
                  f" (mpirun {'found' if t['mpirun'] else 'not found'}), oneDNN {'yes' if t['onednn'] else 'no'}"),
        ("cpu", f"{c['model'] or '?'}: {c['logical_cores']} logical / {c['physical_cores'] or '?'} physical cores, "
                f"{c['usable_cores']} usable" + (f" (cgroup quota {c['cgroup_cpu_quota']})" if c.get("cgroup_cpu_quota") else "")
                + f", torch threads {c['torch_threads']} ({c['torch_cpu_capability']})"),
        ("cpu extensions", ", ".join(c["extensions"]) or "-"),
        ("memory", f"{_gib(r.memory['total'])} total, {_gib(r.memory['available'])} available"),
        ("runs folder", f"{d['runs_dir']} ({'exists' if d['exists'] else 'not created yet'}): {_gib(d['free'])} free, "
                        f"{'writable' if d['writable'] else 'NOT writable'}"),
        ("gpus", gpus or r.gpu_note),
        ("distributed env", ", ".join(f"{k}={v}" for k, v in r.distributed.items()) or "none set"),
        ("jupyter", f"kernel '{j['this_interpreter']}' runs this interpreter" if j.get("this_interpreter")
         else f"no kernel for this interpreter (registered: {', '.join(j.get('kernels') or []) or 'none'})"),
    ]
    lines = ["Large Model Lab doctor  " + r.created, ""] + _table(facts, ["", ""])[2:]
    lines += ["", "packages"] + _table([(p["name"], p["version"] or "missing", p["required"], p["status"]) for p in r.packages],
                                       ["package", "version", "required", "status"])
    lines += ["", "checks"] + _table([(MARK[k.status], k.name, k.detail, k.fix) for k in r.checks],
                                     ["status", "check", "detail", "fix"])
    lines += ["", f"install on this machine ({r.install['why']})", f"  pip:   {r.install['pip']}",
              f"  conda: {r.install['conda']}"]
    if r.bench:
        lines += bench_lines(r.bench)
    n = r.counts
    lines += ["", f"{n['pass']} pass, {n['warn']} warn, {n['fail']} fail"
              + (": fix the FAIL lines above (exit code 1)" if n["fail"] else "")]
    return "\n".join(lines)
