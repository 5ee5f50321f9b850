"""The readable form of ``lab doctor``'s report (``EnvReport.to_text()``).

    from lab import env
    print(env.report().to_text())

Every line stays within ``WIDTH`` characters (a long last column wraps under itself), so the
report reads the same in a terminal and in a notebook cell, which wraps wider lines.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any, Sequence

from lab.units import human_bytes

if TYPE_CHECKING:
    from lab.env import EnvReport  # only a type: lab.env imports this module, never the other way

MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
WIDTH = 100
"""Longest line of the report."""


def _grouped(rows: list[Sequence[Any]], header: Sequence[str], width: int = WIDTH) -> tuple[list[str], list[list[str]]]:
    """(header lines, the lines of each row): aligned columns, the last one wrapped within ``width``."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    indent = 2 + sum(w + 2 for w in widths[:-1])
    widths[-1] = min(widths[-1], max(20, width - indent))
    head = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
            "  " + "  ".join("-" * w for w in widths)]
    body = []
    for r in cells:
        last = textwrap.wrap(r[-1], widths[-1], break_on_hyphens=False) or [""]
        first = ("  " + "  ".join(v.ljust(w) for v, w in zip([*r[:-1], last[0]], widths))).rstrip()
        body.append([first] + [" " * indent + more for more in last[1:]])
    return head, body


def _table(rows: list[Sequence[Any]], header: Sequence[str], width: int = WIDTH) -> list[str]:
    head, body = _grouped(rows, header, width)
    return head + [line for row in body for line in row]


def _checks(checks: Sequence[Any]) -> list[str]:
    """One row per check; a check that does not pass gets its fix on the line below (no fix column:
    with one, the table was wider than a notebook cell and wrapped)."""
    head, body = _grouped([(MARK[k.status], k.name, k.detail) for k in checks], ["status", "check", "detail"])
    indent = " " * (2 + len("status") + 2)
    out = list(head)
    for k, row in zip(checks, body):
        out += row
        if k.fix:
            out += textwrap.wrap(f"fix: {k.fix}", WIDTH, initial_indent=indent, subsequent_indent=indent + "     ",
                                 break_on_hyphens=False)
    return out


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
        rows.append((f"all-reduce bus bandwidth, {human_bytes(ar['bytes'], 0)}", _rate(ar["bus_bandwidth"], "B/s")))
    rows.append(("took", f"{bench.get('seconds', 0):.1f} s; CPU peak cached for MFU: {_rate(bench.get('peak_flops_cached'), 'FLOP/s')}"))
    return ["", "bench"] + _table(rows, ["measurement", "result"])


def report_text(r: EnvReport) -> str:
    """Sections as a key/value table, then the packages, the checks, the install command and the bench."""
    s, t, c, d, j = r.system, r.torch, r.cpu, r.disk, r.jupyter
    gpus = "; ".join(f"{g['name']} {human_bytes(g.get('memory_free'), 1)} free of "
                     f"{human_bytes(g.get('memory_total'), 1)}, "
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
        ("memory", f"{human_bytes(r.memory['total'], 1)} total, {human_bytes(r.memory['available'], 1)} available"),
        ("runs folder", f"{d['runs_dir']} ({'exists' if d['exists'] else 'not created yet'}): {human_bytes(d['free'], 1)} free, "
                        f"{'writable' if d['writable'] else 'NOT writable'}"),
        ("gpus", gpus or r.gpu_note),
        ("distributed env", ", ".join(f"{k}={v}" for k, v in r.distributed.items()) or "none set"),
        ("jupyter", f"kernel '{j['this_interpreter']}' runs this interpreter" if j.get("this_interpreter")
         else f"no kernel for this interpreter (registered: {', '.join(j.get('kernels') or []) or 'none'})"),
    ]
    lines = ["Large Model Lab doctor  " + r.created, ""] + _table(facts, ["", ""])[2:]
    lines += ["", "packages"] + _table([(p["name"], p["version"] or "missing", p["required"], p["status"]) for p in r.packages],
                                       ["package", "version", "required", "status"])
    lines += ["", "checks"] + _checks(r.checks)
    lines += ["", f"install on this machine ({r.install['why']})", f"  pip:   {r.install['pip']}",
              f"  conda: {r.install['conda']}"]
    if r.bench:
        lines += bench_lines(r.bench)
    n = r.counts
    lines += ["", f"{n['pass']} pass, {n['warn']} warn, {n['fail']} fail"
              + (": fix the FAIL lines above (exit code 1)" if n["fail"] else "")]
    return "\n".join(lines)
