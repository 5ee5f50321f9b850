"""Facts about this machine, gathered for ``lab doctor`` (``lab.env.report``): no judgement here.

    from lab.env import probe
    probe.cpu_info()          # {"model": "Intel(R) Xeon(R) ...", "logical_cores": 2, "extensions": ["AVX2", ...], ...}
    probe.host_memory()       # (total_bytes, available_bytes), None where the OS does not say
    probe.gpu_info()          # ([{"name": "NVIDIA H100 80GB HBM3", "memory_total": ..., "bf16": True, ...}], note)

Each probe reads the OS (``/proc``, ``sysctl``, ``nvidia-smi``) or torch and never raises:
a fact that cannot be read is None. The parsers (``parse_nvidia_smi``, ``cpu_extensions``,
``kernel_for_interpreter``) are pure so tests can feed them text.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

# CPU feature flags (as /proc/cpuinfo spells them) -> the names people search for.
EXTENSIONS = (
    ("sse4_2", "SSE4.2"), ("avx", "AVX"), ("avx2", "AVX2"), ("fma", "FMA"), ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX512-VNNI"), ("avx512_bf16", "AVX512-BF16"), ("avx512_fp16", "AVX512-FP16"),
    ("avx_vnni", "AVX-VNNI"), ("amx_tile", "AMX"), ("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8"),
    ("asimd", "NEON"), ("asimddp", "NEON-DOT"), ("sve", "SVE"), ("sve2", "SVE2"), ("bf16", "ARM-BF16"),
)
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK",
             "GROUP_RANK", "TORCHELASTIC_RUN_ID", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
             "ROCR_VISIBLE_DEVICES", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "OMP_NUM_THREADS")
"""Variables that change how (or whether) processes find each other and their devices."""


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def system_info() -> dict[str, Any]:
    """OS, kernel, architecture and the Python interpreter."""
    pretty = None
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            pretty = line.split("=", 1)[1].strip().strip('"')
    if platform.system() == "Darwin":
        pretty = f"macOS {platform.mac_ver()[0]}"
    return {
        "os": platform.system(), "distribution": pretty, "kernel": platform.release(), "machine": platform.machine(),
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "executable": sys.executable, "prefix": sys.prefix,
        "environment": ("conda: " + os.environ["CONDA_DEFAULT_ENV"]) if os.environ.get("CONDA_DEFAULT_ENV")
        else ("venv" if sys.prefix != sys.base_prefix else "system"),
    }


def version_of(dist: str) -> str | None:
    """Installed version of distribution ``dist``, or None."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def cpu_extensions(flags: set[str]) -> list[str]:
    """Vector/matrix extensions among CPU ``flags`` (``{"avx2", "amx_tile", ...}`` -> ``["AVX2", "AMX"]``)."""
    return [name for flag, name in EXTENSIONS if flag in flags]


def cpu_info() -> dict[str, Any]:
    """Model, cores (logical, physical, usable by this process, cgroup quota), torch threads, extensions."""
    import torch

    text = _read("/proc/cpuinfo") or ""
    model, flags, cores = None, set(), set()
    phys = core = None
    for line in text.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key in ("model name", "Hardware") and not model:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
            cores.add((phys, core))
    if platform.system() == "Darwin":
        model = (_run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "").strip() or None
        flags = set((_run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"]) or "").lower().split())
        if platform.machine() == "arm64":
            flags |= {"asimd"}
    quota = None
    cpu_max = (_read("/sys/fs/cgroup/cpu.max") or "").split()
    if len(cpu_max) == 2 and cpu_max[0] != "max":
        quota = round(int(cpu_max[0]) / int(cpu_max[1]), 2)
    return {
        "model": model or platform.processor() or None,
        "logical_cores": os.cpu_count(),
        "physical_cores": len(cores) or None,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cgroup_cpu_quota": quota,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "extensions": cpu_extensions(flags),
    }


def cpu_line() -> str:
    """This CPU in one line, for benchmark headers: ``AMD EPYC (SSE4.2, AVX, AVX2, FMA)``.

    Benchmarks print it because their figures belong to one CPU: int8 kernels, for one, differ
    between CPUs with and without VNNI / AMX.
    """
    c = cpu_info()
    return f"{c['model'] or platform.machine()} ({', '.join(c['extensions']) or 'extensions unknown'})"


def host_memory() -> tuple[int | None, int | None]:
    """(total, available) bytes of RAM, capped by a cgroup memory limit; None where unknown."""
    total = avail = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key == "MemTotal":
            total = int(value.split()[0]) * 1024
        elif key == "MemAvailable":
            avail = int(value.split()[0]) * 1024
    if total is None and platform.system() == "Darwin":
        out = _run(["sysctl", "-n", "hw.memsize"])
        total = int(out) if out and out.strip().isdigit() else None
    if total is None and hasattr(os, "sysconf"):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            pass
    limit = (_read("/sys/fs/cgroup/memory.max") or "").strip()
    if limit.isdigit() and total and int(limit) < total:
        # In a container the cgroup limit, not the host's RAM, is what the process can use.
        total = int(limit)
        used = (_read("/sys/fs/cgroup/memory.current") or "").strip()
        if used.isdigit():
            avail = min(avail or total, total - int(used))
    return total, avail


def disk_info(runs_dir: str | Path | None = None) -> dict[str, Any]:
    """Free space and writability where runs are written (the runs folder, or its nearest existing parent)."""
    from lab.runs import runs_root

    root = runs_root(runs_dir)
    probe = root.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    try:
        # A real file, not os.access: read-only mounts and full disks answer only to a write.
        with tempfile.TemporaryFile(dir=probe):
            writable = True
    except OSError:
        writable = False
    return {"runs_dir": str(root), "checked": str(probe), "exists": root.exists(), "free": free, "writable": writable}


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """Rows of ``nvidia-smi --query-gpu=index,name,memory.total,memory.free,compute_cap,driver_version
    --format=csv,noheader,nounits`` -> GPU dicts (memory in bytes)."""
    gpus = []
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 6:
            continue
        idx, name, total, free, cc, driver = cells[:6]
        major = int(cc.split(".")[0]) if cc.replace(".", "").isdigit() else None
        gpus.append({
            "index": int(idx) if idx.isdigit() else len(gpus), "name": name,
            "memory_total": int(float(total)) * 2**20 if total.replace(".", "").isdigit() else None,
            "memory_free": int(float(free)) * 2**20 if free.replace(".", "").isdigit() else None,
            "compute_capability": cc if major is not None else None,
            # Ampere (8.0) and newer: bf16 tensor cores and TF32 matmuls.
            "bf16": major >= 8 if major is not None else None, "tf32": major >= 8 if major is not None else None,
            "driver": driver, "usable_by_torch": False,
        })
    return gpus


def gpu_info() -> tuple[list[dict[str, Any]], str]:
    """Every GPU (name, memory total/free, compute capability, bf16, TF32, driver) and a one-line note."""
    import torch

    smi = _run(["nvidia-smi", "--query-gpu=index,name,memory.total,memory.free,compute_cap,driver_version",
                "--format=csv,noheader,nounits"])
    listed = parse_nvidia_smi(smi) if smi else []
    driver = listed[0]["driver"] if listed else None
    gpus: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            cc = f"{p.major}.{p.minor}"
            gpus.append({"index": i, "name": p.name, "memory_total": total, "memory_free": free,
                         "compute_capability": cc if torch.version.hip is None else getattr(p, "gcnArchName", cc),
                         "bf16": bool(torch.cuda.is_bf16_supported()) if i == 0 else p.major >= 8,
                         "tf32": torch.version.hip is None and p.major >= 8, "driver": driver, "usable_by_torch": True})
        return gpus, f"{len(gpus)} GPU(s) usable by torch"
    if listed:
        return listed, f"{len(listed)} NVIDIA GPU(s) found by nvidia-smi, but torch cannot use them"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        total, _ = host_memory()
        return [{"index": 0, "name": "Apple MPS", "memory_total": total, "memory_free": None,
                 "compute_capability": None, "bf16": True, "tf32": False, "driver": None,
                 "usable_by_torch": True}], "Apple GPU (MPS), memory shared with the CPU"
    if Path("/dev/kfd").exists():
        return [], "an AMD GPU device (/dev/kfd) exists, but torch cannot use it (ROCm build needed)"
    return [], "no GPU found (no nvidia-smi, no usable CUDA/ROCm/MPS device): training runs on the CPU"


def gpus_present() -> int:
    """GPUs the OS shows, whether or not torch can use them (for the CPU-wheel-on-a-GPU-machine check)."""
    nvidia = Path("/proc/driver/nvidia/gpus")
    n = len(list(nvidia.iterdir())) if nvidia.is_dir() else 0
    n = n or len([p for p in Path("/dev").glob("nvidia[0-9]*")])
    return n or (1 if Path("/dev/kfd").exists() else 0)


def torch_info() -> dict[str, Any]:
    """torch's version and build: CUDA/ROCm, cuDNN, NCCL, gloo, MPI, oneDNN, OpenMP."""
    import torch
    import torch.distributed as dist

    dist_ok = dist.is_available()
    nccl = None
    if dist_ok and dist.is_nccl_available() and torch.cuda.is_available():
        try:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:  # noqa: BLE001 - a broken NCCL install is reported, not raised
            nccl = "unknown version"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "version": torch.__version__,
        "build": f"ROCm {torch.version.hip}" if torch.version.hip else (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"),
        "cuda": torch.version.cuda, "hip": torch.version.hip, "cuda_available": torch.cuda.is_available(),
        "cudnn": cudnn, "nccl": nccl if nccl else (bool(dist_ok and dist.is_nccl_available()) or None),
        "gloo": bool(dist_ok and dist.is_gloo_available()), "mpi": bool(dist_ok and dist.is_mpi_available()),
        "mpirun": shutil.which("mpirun"), "onednn": torch.backends.mkldnn.is_available(),
        "openmp": torch.backends.openmp.is_available(), "interop_threads": torch.get_num_interop_threads(),
    }


def distributed_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The distributed/device variables that are set (``SLURM_*`` included), sorted."""
    keep = {k: v for k, v in environ.items() if k in DIST_VARS or k.startswith("SLURM_")}
    return dict(sorted(keep.items()))


def kernel_for_interpreter(specs: Mapping[str, Mapping[str, Any]], executable: str, prefix: str) -> str | None:
    """Name of a Jupyter kernel (from ``KernelSpecManager.get_all_specs()``) that runs ``executable``."""
    exe = Path(executable).resolve()
    for name, entry in specs.items():
        argv = (entry.get("spec") or {}).get("argv") or []
        if not argv:
            continue
        first = argv[0]
        if os.path.isabs(first):
            if Path(first).resolve() == exe or Path(first).parent == Path(executable).parent:
                return name
        elif first in ("python", "python3", "{python}") and str(entry.get("resource_dir", "")).startswith(prefix):
            # A bare "python" kernel installed inside this environment's prefix runs this interpreter.
            return name
    return None


def jupyter_info() -> dict[str, Any]:
    """Registered kernels and the one (if any) that runs this interpreter."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().get_all_specs()
    except Exception as e:  # noqa: BLE001 - jupyter_client missing or a broken kernel.json
        return {"kernels": [], "this_interpreter": None, "error": f"{type(e).__name__}: {e}"}
    return {"kernels": sorted(specs), "this_interpreter": kernel_for_interpreter(specs, sys.executable, sys.prefix),
            "ipykernel": version_of("ipykernel")}


def _pyproject_requirements() -> tuple[list[str], str]:
    # Running from a checkout that was never pip-installed: read pyproject.toml beside the package.
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return [], ">=3.10"
    path = Path(__file__).resolve().parents[2] / "pyproject.toml"  # lab/env/probe.py -> the checkout
    try:
        project = tomllib.loads(path.read_text())["project"]
    except (OSError, KeyError, ValueError):
        return [], ">=3.10"
    return list(project.get("dependencies", [])), project.get("requires-python", "")


def lab_requirements(dist: str = "large-model-lab") -> tuple[dict[str, str], str]:
    """({package: specifier}, Requires-Python) from the installed lab's metadata (extras left out)."""
    from packaging.requirements import Requirement

    try:
        reqs, python = md.requires(dist) or [], md.metadata(dist)["Requires-Python"] or ""
    except md.PackageNotFoundError:
        reqs, python = _pyproject_requirements()
    out: dict[str, str] = {}
    for line in reqs:
        req = Requirement(line)
        if req.marker is None or "extra" not in str(req.marker):
            out[req.name] = str(req.specifier)
    return out, python


def requirement_of(dist: str, dependency: str) -> str:
    """The specifier installed ``dist`` declares for ``dependency`` (e.g. lightning's for torch), or ""."""
    from packaging.requirements import Requirement

    try:
        reqs = md.requires(dist) or []
    except md.PackageNotFoundError:
        return ""
    for line in reqs:
        req = Requirement(line)
        if req.name.lower() == dependency.lower() and (req.marker is None or "extra" not in str(req.marker)):
            return str(req.specifier)
    return ""


def fit_takes_weights_only() -> bool:
    """Whether the installed Lightning's ``Trainer.fit`` has a ``weights_only`` argument.

    Read from the source with ``ast`` rather than by importing Lightning, which takes seconds.
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("lightning")
    if spec is None or not spec.submodule_search_locations:
        return False
    path = Path(list(spec.submodule_search_locations)[0]) / "pytorch" / "trainer" / "trainer.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "fit":
                    return any(a.arg == "weights_only" for a in [*fn.args.args, *fn.args.kwonlyargs])
    return False
