"""What this machine is, whether the lab will work on it, and how fast it multiplies matrices.

    from lab import env
    r = env.report()                  # EnvReport: sections + checks (what `lab doctor` prints)
    r.exit_code, r.checks[0]          # 0 when nothing fails; Check(name, status, detail, fix)
    print(r.to_text()); r.to_json()   # the readable table; the stable machine-readable document
    env.report(bench=True).bench      # + matmul / memory / all-reduce measurements (lab.env.bench)
    env.check_torch_version("2.5.1")  # every check is a pure function of its inputs
    env.fingerprint()                 # {"python": "3.11.7", "torch": "2.13.0+cpu", ..., "device": "cpu"}
    env.peak_flops(torch.device("cpu"))   # measured once (matmul probe), then read from the cache

The measured peak is what the throughput callback divides by to report model-FLOPs
utilisation (MFU) on CPUs; GPUs use their published dense peak. The package, imports flowing
one way (each module below imports only those listed after it):

- ``lab.env`` (this module): the checks, which only judge facts, so tests feed them made-up
  inputs, and ``report``; the notebooks and the dashboard show the same report;
- ``lab.env.text``: the report as text (``EnvReport.to_text``);
- ``lab.env.bench``: ``lab doctor --bench``'s measurements;
- ``lab.env.peak``: the accelerator table (published peaks and memory, which ``lab.plan``
  plans with), the matmul probe and the cached CPU peak;
- ``lab.env.probe``: the facts, read from /proc, nvidia-smi and torch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from lab.env import bench as bench_mod
from lab.env import probe
from lab.env.peak import matmul_flops, peak_flops  # noqa: F401 - the public names: env.peak_flops(...)
from lab.env.text import report_text
from lab.units import GiB, human_bytes


def fingerprint() -> dict[str, str]:
    """Versions and device a run was made with (stored in summary.json)."""
    import lightning

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
        "device": device,
        "torch_threads": str(torch.get_num_threads()),
    }


# ---------------------------------------------------------------------------------------------
# The doctor: facts (lab.env.probe) -> checks (pure functions below) -> EnvReport.

PASS, WARN, FAIL = "pass", "warn", "fail"
SCHEMA = "lab.env/1"
"""Version of the ``to_json`` document; bumped only when a key changes meaning or goes away."""
MIN_FREE_DISK = 2 * GiB
"""Below this much free space where runs are written, checkpoints start failing."""
DIST = "large-model-lab"
OPTIONAL = {
    "onnxruntime": "lab compress --method onnx/onnx-int8",
    "onnx": "lab export --format onnx",
    "deepspeed": "deepspeed_* strategies on GPUs (optional)",
    "ipykernel": "the notebooks' Jupyter kernel (dev extra)",
    "pytest": "the tests (dev extra)",
    "packaging": "version checks in lab doctor",
}
"""Packages the lab can use but does not install, and what for."""


@dataclass
class Check:
    """One verdict of the doctor."""

    name: str
    """What was checked, e.g. ``torch version``."""
    status: str
    """pass, warn or fail (fail makes ``lab doctor`` exit 1)."""
    detail: str
    """What was found, one line."""
    fix: str = ""
    """One line: the command or step that fixes it (empty when it passes)."""


@dataclass
class EnvReport:
    """Everything ``lab doctor`` found; ``to_json()`` is a stable document (``schema``)."""

    schema: str
    """Document version, ``lab.env/1``."""
    created: str
    """When the report was made (UTC, ISO 8601)."""
    system: dict[str, Any]
    """OS, distribution, kernel, architecture, Python and its environment."""
    packages: list[dict[str, Any]]
    """name, version (None if missing), required (the specifier, or what an optional one is for), status."""
    torch: dict[str, Any]
    """Version and build: CUDA/ROCm, cuDNN, NCCL, gloo, MPI, oneDNN, OpenMP."""
    cpu: dict[str, Any]
    """Model, cores, torch threads, vector extensions."""
    memory: dict[str, Any]
    """RAM ``total`` and ``available`` in bytes."""
    disk: dict[str, Any]
    """Where runs go, free bytes there, whether it is writable."""
    gpus: list[dict[str, Any]]
    """One entry per GPU: name, memory_total/free, compute_capability, bf16, tf32, driver."""
    gpu_note: str
    """One line on the GPUs, also when there are none."""
    distributed: dict[str, str]
    """Distributed/device environment variables that are set."""
    jupyter: dict[str, Any]
    """Registered kernels and the one running this interpreter (None if none)."""
    install: dict[str, str]
    """The install commands that fit this machine: pip and conda."""
    checks: list[Check]
    """Every verdict, in report order."""
    bench: dict[str, Any] | None = None
    """``--bench`` measurements (``lab.env.bench.run``), else None."""

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (PASS, WARN, FAIL)}

    @property
    def exit_code(self) -> int:
        """0 when no check fails, 1 otherwise (what ``lab doctor`` exits with)."""
        return 1 if self.counts[FAIL] else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def to_text(self) -> str:
        return report_text(self)


def _version(v: str | None) -> Any:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(v) if v else None
    except InvalidVersion:
        return None


def _satisfies(version: str | None, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet

    v = _version(version)
    # prereleases=True: a nightly torch (2.14.0.dev...) still counts as >= 2.6.
    return v is not None and (not spec or SpecifierSet(spec).contains(v, prereleases=True))


def check_python(version: str, spec: str = ">=3.10") -> Check:
    """The interpreter satisfies the lab's ``Requires-Python``."""
    if _satisfies(version, spec):
        return Check("python", PASS, f"Python {version} ({spec})")
    return Check("python", FAIL, f"Python {version} does not satisfy {spec}",
                 "install Python 3.11 (conda env create -f environment.yml does)")


def check_package(name: str, version: str | None, spec: str) -> Check:
    """A required package is installed at a version its specifier allows."""
    if version is None:
        return Check(name, FAIL, f"not installed (needs {name}{spec})", f'pip install "{name}{spec}"')
    if not _satisfies(version, spec):
        return Check(name, FAIL, f"{version} does not satisfy {spec}", f'pip install -U "{name}{spec}"')
    return Check(name, PASS, f"{version} ({spec or 'any'})")


def check_torch_version(version: str | None) -> Check:
    """torch >= 2.6: earlier ``torch.load`` defaults to ``weights_only=False``, and <= 2.5.1 has a
    code-execution advisory even with ``weights_only=True`` (CVE-2025-32434)."""
    if version is None:
        return Check("torch version", FAIL, "torch is not installed", "pip install torch (see the install command below)")
    v = _version(version)
    if v is None or v.release[:2] < (2, 6):
        return Check("torch version", FAIL,
                     f"torch {version} < 2.6: torch.load unpickles arbitrary code by default, and <= 2.5.1 is "
                     "open to CVE-2025-32434", 'pip install -U "torch>=2.6" (see the install command below)')
    return Check("torch version", PASS, f"torch {version} (>= 2.6: torch.load is weights-only by default)")


def check_lightning_version(version: str | None, spec: str = ">=2.4,!=2.6.2,!=2.6.3") -> Check:
    """lightning is installed, satisfies the lab's specifier, and is not 2.6.2/2.6.3 (compromised on PyPI)."""
    if version is None:
        return Check("lightning version", FAIL, "lightning is not installed", f'pip install "lightning{spec}"')
    if version in ("2.6.2", "2.6.3"):
        return Check("lightning version", FAIL, f"lightning {version} is a compromised release (malicious code on PyPI)",
                     f'pip install -U "lightning{spec}" and rotate credentials this machine holds')
    if not _satisfies(version, spec):
        return Check("lightning version", FAIL, f"lightning {version} does not satisfy {spec}",
                     f'pip install -U "lightning{spec}"')
    return Check("lightning version", PASS, f"lightning {version} ({spec})")


def check_torch_lightning(torch_version: str | None, lightning_version: str | None, lightning_torch_spec: str,
                          fit_has_weights_only: bool) -> Check:
    """torch satisfies what the installed Lightning declares, and Lightning takes ``Trainer.fit(weights_only=)``,
    which ``lab fit`` passes so that resuming never unpickles code."""
    name = "torch x lightning"
    if torch_version is None or lightning_version is None:
        return Check(name, FAIL, "torch or lightning is missing", "pip install -e . (installs both)")
    if not _satisfies(torch_version, lightning_torch_spec):
        return Check(name, FAIL, f"lightning {lightning_version} needs torch{lightning_torch_spec}, found {torch_version}",
                     f'pip install "torch{lightning_torch_spec}" or a lightning release that supports torch {torch_version}')
    if not fit_has_weights_only:
        return Check(name, FAIL, f"lightning {lightning_version}'s Trainer.fit has no weights_only argument (lab fit uses it)",
                     'pip install -U "lightning>=2.6,!=2.6.2,!=2.6.3"')
    return Check(name, PASS, f"lightning {lightning_version} supports torch {torch_version} ({lightning_torch_spec})")


def check_gpu_build(build: str, cuda_available: bool, gpus_present: int, driver: str | None = None) -> Check:
    """torch's build matches the hardware: no CUDA wheel without a driver, no CPU wheel on a GPU machine."""
    name = "torch build vs GPUs"
    if build == "CPU":
        if gpus_present:
            return Check(name, FAIL, f"CPU-only torch on a machine with {gpus_present} GPU(s): training would not use them",
                         "install the CUDA build: see the install command below")
        return Check(name, PASS, "CPU build, and no GPU on this machine")
    if cuda_available:
        return Check(name, PASS, f"{build} build, GPUs usable" + (f" (driver {driver})" if driver else ""))
    if gpus_present:
        return Check(name, FAIL, f"{build} build but no usable driver for the {gpus_present} GPU(s)"
                     + (f" (driver {driver} may be too old)" if driver else ""),
                     "install or upgrade the NVIDIA driver (nvidia-smi must work), or a torch build for your driver")
    return Check(name, WARN, f"{build} build on a machine without GPUs: it runs on the CPU, from a much larger wheel",
                 "pip install torch --index-url https://download.pytorch.org/whl/cpu")


def check_gpus(gpus: list[dict[str, Any]]) -> Check:
    """Every GPU does bf16 (Ampere or newer); older ones should train with 16-mixed."""
    if not gpus:
        return Check("GPU features", PASS, "no GPU: bf16/TF32 checks do not apply")
    old = [g["name"] for g in gpus if g.get("bf16") is False]
    if old:
        return Check("GPU features", WARN, f"no bf16 on {', '.join(old)} (compute capability < 8.0)",
                     "train with --trainer.precision 16-mixed instead of bf16-mixed")
    return Check("GPU features", PASS, f"{len(gpus)} GPU(s) with bf16" + (" and TF32" if all(g.get("tf32") for g in gpus) else ""))


def check_cpu(extensions: list[str], machine: str) -> Check:
    """x86 CPUs without AVX2 run torch's matmuls several times slower."""
    if machine.lower() in ("x86_64", "amd64") and "AVX2" not in extensions:
        return Check("CPU extensions", WARN, "no AVX2: CPU training will be slow", "use a newer CPU or a GPU machine")
    return Check("CPU extensions", PASS, ", ".join(extensions) or "none reported")


def check_memory(total: int | None, available: int | None) -> Check:
    """Enough RAM for the CPU presets (gpt-nano needs well under 1 GiB; 4 GiB leaves room for notebooks)."""
    if total is None:
        return Check("RAM", WARN, "could not read the machine's memory",
                     "check it yourself (free -g, or the OS's memory monitor): gpt-nano needs under 1 GiB")
    if total < 4 * GiB or (available is not None and available < GiB):
        return Check("RAM", WARN, f"{human_bytes(total, 1)} total, {human_bytes(available or 0, 1)} available",
                     "close other programs, or lower --data.batch_size")
    return Check("RAM", PASS, f"{human_bytes(total, 1)} total"
                 + (f", {human_bytes(available, 1)} available" if available else ""))


def check_disk(free: int, writable: bool, path: str) -> list[Check]:
    """The runs folder is writable and has at least ``MIN_FREE_DISK`` free."""
    out = [Check("runs folder writable", PASS, f"{path} is writable")] if writable else [
        Check("runs folder writable", FAIL, f"cannot write under {path}", "pass --runs_dir DIR (or set LAB_RUNS_DIR) to a writable folder")]
    if free < MIN_FREE_DISK:
        low = f"{human_bytes(free)} free under {path} (< {human_bytes(MIN_FREE_DISK, 0)})"
        out.append(Check("disk space", FAIL, low, "free some space, or pass --runs_dir on a larger disk"))
    else:
        out.append(Check("disk space", PASS, f"{human_bytes(free, 1)} free under {path}"))
    return out


def check_jupyter_kernel(kernel: str | None) -> Check:
    """A Jupyter kernel runs this interpreter, so the notebooks import this lab."""
    if kernel:
        return Check("Jupyter kernel", PASS, f"kernel '{kernel}' runs this interpreter")
    return Check("Jupyter kernel", WARN, "no Jupyter kernel runs this interpreter: notebooks would not find lab",
                 'python -m ipykernel install --user --name large-model-lab --display-name "Large Model Lab"')


def check_distributed(env: Mapping[str, str]) -> Check:
    """Distributed variables, when set, are complete and consistent (torchrun/SLURM set them for you)."""
    name = "distributed env"
    if not env:
        return Check(name, PASS, "no distributed variables set (a single process; lab launch sets them)")
    problems = []
    if "WORLD_SIZE" in env and not {"MASTER_ADDR", "MASTER_PORT"} <= set(env):
        problems.append("WORLD_SIZE is set without MASTER_ADDR and MASTER_PORT")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        if key in env and not env[key].isdigit():
            problems.append(f"{key}={env[key]!r} is not a number")
    if env.get("RANK", "").isdigit() and env.get("WORLD_SIZE", "").isdigit() and int(env["RANK"]) >= int(env["WORLD_SIZE"]):
        problems.append(f"RANK={env['RANK']} is not below WORLD_SIZE={env['WORLD_SIZE']}")
    if env.get("CUDA_VISIBLE_DEVICES") == "":
        problems.append("CUDA_VISIBLE_DEVICES is empty: every GPU is hidden")
    if problems:
        return Check(name, WARN, "; ".join(problems), "unset them outside a launcher (torchrun, srun, lab launch)")
    return Check(name, PASS, ", ".join(f"{k}={v}" for k, v in list(env.items())[:6]) + (" ..." if len(env) > 6 else ""))


def install_command(system: str, driver: str | None, rocm: str | None = None) -> dict[str, str]:
    """The install lines that fit a machine: the CPU wheel, the CUDA wheel the driver supports, or ROCm.

    CUDA wheels need a minimum driver (NVIDIA's CUDA toolkit release notes): 13.0 -> 580,
    12.8 -> 570; CUDA 12.x wheels run on any driver >= 525.60 (minor-version compatibility).
    """
    conda = "conda env create -f environment.yml && conda activate lab"
    if system == "Darwin":
        return {"pip": "pip install torch -e .", "conda": conda, "why": "macOS wheels include the Apple GPU (MPS)"}
    if rocm:
        tag = "rocm" + ".".join(rocm.split(".")[:2])
        return {"pip": f"pip install torch --index-url https://download.pytorch.org/whl/{tag} && pip install -e .",
                "conda": conda + "  (first replace its torch line with the ROCm wheel above)", "why": f"ROCm {rocm}"}
    major = _version(driver).release[0] if driver and _version(driver) else None
    if major is None:
        return {"pip": "pip install torch --index-url https://download.pytorch.org/whl/cpu && pip install -e .",
                "conda": conda, "why": "no NVIDIA driver: the CPU-only wheel (a fraction of the CUDA one's size)"}
    tag = "cu130" if major >= 580 else "cu128" if major >= 570 else "cu126" if major >= 525 else None
    if tag is None:
        return {"pip": "pip install torch --index-url https://download.pytorch.org/whl/cpu && pip install -e .",
                "conda": conda, "why": f"driver {driver} is older than any current CUDA wheel supports (>= 525): "
                                       "upgrade the driver to use the GPUs; until then, the CPU wheel"}
    return {"pip": f"pip install torch --index-url https://download.pytorch.org/whl/{tag} && pip install -e .",
            "conda": conda + f"  (first replace its torch line with: --index-url https://download.pytorch.org/whl/{tag} torch)",
            "why": f"NVIDIA driver {driver} supports the {tag} wheels"}


def report(runs_dir: str | Path | None = None, bench: bool = False) -> EnvReport:
    """Probe this machine, judge it, and return the report ``lab doctor`` prints.

    ``runs_dir`` is where runs will be written (default: ``$LAB_RUNS_DIR`` or ``./runs``);
    ``bench`` adds ``lab.env.bench.run()``'s measurements (a few seconds) and refreshes the cached
    CPU peak that the training throughput callback uses for MFU.
    """
    system, tinfo, cpu = probe.system_info(), probe.torch_info(), probe.cpu_info()
    reqs, py_spec = probe.lab_requirements()
    total, avail = probe.host_memory()
    disk = probe.disk_info(runs_dir)
    gpus, gpu_note = probe.gpu_info()
    dist_env = probe.distributed_env(os.environ)
    jupyter = probe.jupyter_info()
    driver = next((g["driver"] for g in gpus if g.get("driver")), None)
    versions = {name: probe.version_of(name) for name in [*reqs, *OPTIONAL]}
    tv, lv = versions.get("torch"), versions.get("lightning")
    fit_weights_only = probe.fit_takes_weights_only()
    checks = [check_python(system["python"], py_spec), check_torch_version(tv),
              check_lightning_version(lv, reqs.get("lightning", ">=2.4,!=2.6.2,!=2.6.3")),
              check_torch_lightning(tv, lv, probe.requirement_of("lightning", "torch"), fit_weights_only)]
    checks += [check_package(n, versions[n], spec) for n, spec in reqs.items() if n not in ("torch", "lightning")]
    checks += [check_gpu_build(tinfo["build"], tinfo["cuda_available"], max(probe.gpus_present(), len(gpus)), driver),
               check_gpus(gpus), check_cpu(cpu["extensions"], system["machine"]), check_memory(total, avail),
               *check_disk(disk["free"], disk["writable"], disk["checked"]),
               check_jupyter_kernel(jupyter.get("this_interpreter")), check_distributed(dist_env)]
    by_name = {c.name: c.status for c in checks}
    packages = [{"name": n, "version": versions[n], "required": reqs.get(n) or "any",
                 "status": by_name.get(n) or by_name.get(f"{n} version", PASS)} for n in reqs]
    packages += [{"name": n, "version": versions[n], "required": why, "status": "installed" if versions[n] else "absent"}
                 for n, why in OPTIONAL.items() if n not in reqs]
    result = EnvReport(
        schema=SCHEMA, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), system=system,
        packages=packages, torch=tinfo, cpu=cpu, memory={"total": total, "available": avail}, disk=disk, gpus=gpus,
        gpu_note=gpu_note, distributed=dist_env, jupyter=jupyter,
        install=install_command(system["os"], driver, tinfo["hip"]), checks=checks)
    if bench:
        result.bench = bench_mod.run()
    return result
