"""lab doctor: the report on this machine, a stable JSON document, every check's branches, the CLI."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from lab import env
from lab.env import probe
from lab.cli import main
from lab.env import FAIL, PASS, WARN, Check, EnvReport

GiB = 2**30
TOP_KEYS = ["schema", "created", "system", "packages", "torch", "cpu", "memory", "disk", "gpus", "gpu_note",
            "distributed", "jupyter", "install", "checks", "bench"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> EnvReport:
    return env.report(runs_dir=tmp_path_factory.mktemp("doctor") / "runs")


# --- this machine -------------------------------------------------------------------------------

def test_report_on_this_machine(report: EnvReport) -> None:
    assert report.system["python"] == ".".join(map(str, sys.version_info[:3]))
    assert report.torch["version"] == torch.__version__
    assert report.cpu["logical_cores"] >= 1 and report.cpu["torch_threads"] == torch.get_num_threads()
    assert report.memory["total"] > 0 and report.disk["writable"] and not report.disk["exists"]
    names = [c.name for c in report.checks]
    for name in ("python", "torch version", "lightning version", "torch x lightning", "torch build vs GPUs",
                 "disk space", "runs folder writable", "Jupyter kernel", "distributed env"):
        assert name in names
    assert report.exit_code == (1 if any(c.status == FAIL for c in report.checks) else 0)
    assert {p["name"] for p in report.packages} >= {"torch", "lightning", "tensorboard", "streamlit", "jupyterlab",
                                                    "ipywidgets", "torchmetrics", "tokenizers", "onnxruntime"}
    if not torch.cuda.is_available():
        assert report.gpus == [] and "no GPU" in report.gpu_note
        assert "whl/cpu" in report.install["pip"]


def test_text_report_has_every_section(report: EnvReport) -> None:
    text = report.to_text()
    for needle in ("os ", "python ", "torch ", "cpu extensions", "memory ", "runs folder", "gpus ", "jupyter ",
                   "packages", "checks", "install on this machine", "pip:", "conda:", "pass,"):
        assert needle in text
    if not torch.cuda.is_available():
        assert "no GPU found" in text


def test_json_document_is_stable(report: EnvReport) -> None:
    doc = json.loads(report.to_json())
    assert list(doc) == TOP_KEYS and doc["schema"] == "lab.env/1"
    assert all(list(c) == ["name", "status", "detail", "fix"] for c in doc["checks"])
    assert all(c["status"] in (PASS, WARN, FAIL) for c in doc["checks"])
    assert all(list(p) == ["name", "version", "required", "status"] for p in doc["packages"])
    assert list(doc["memory"]) == ["total", "available"]
    assert list(doc["disk"]) == ["runs_dir", "checked", "exists", "free", "writable"]
    assert set(doc["install"]) == {"pip", "conda", "why"}
    gpu = probe.parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 81559, 80000, 9.0, 570.86.15")[0]
    assert list(gpu) == ["index", "name", "memory_total", "memory_free", "compute_capability", "bf16", "tf32",
                         "driver", "usable_by_torch"]


# --- every check, both ways ---------------------------------------------------------------------

@pytest.mark.parametrize("check,status", [
    (lambda: env.check_python("3.11.7", ">=3.10"), PASS),
    (lambda: env.check_python("3.9.18", ">=3.10"), FAIL),
    (lambda: env.check_package("numpy", "2.4.0", ">=1.26"), PASS),
    (lambda: env.check_package("numpy", "1.21.0", ">=1.26"), FAIL),
    (lambda: env.check_package("numpy", None, ">=1.26"), FAIL),
    (lambda: env.check_torch_version("2.13.0+cpu"), PASS),
    (lambda: env.check_torch_version("2.6.0"), PASS),
    (lambda: env.check_torch_version("2.14.0.dev20261101+cu128"), PASS),
    (lambda: env.check_torch_version("2.5.1"), FAIL),
    (lambda: env.check_torch_version(None), FAIL),
    (lambda: env.check_lightning_version("2.6.6"), PASS),
    (lambda: env.check_lightning_version("2.6.2"), FAIL),
    (lambda: env.check_lightning_version("2.6.3"), FAIL),
    (lambda: env.check_lightning_version("2.3.0"), FAIL),
    (lambda: env.check_lightning_version(None), FAIL),
    (lambda: env.check_torch_lightning("2.13.0", "2.6.6", "<4.0,>=2.1.0", True), PASS),
    (lambda: env.check_torch_lightning("2.0.1", "2.6.6", "<4.0,>=2.1.0", True), FAIL),
    (lambda: env.check_torch_lightning("2.13.0", "2.4.0", "<4.0,>=2.1.0", False), FAIL),
    (lambda: env.check_gpu_build("CPU", False, 0), PASS),
    (lambda: env.check_gpu_build("CPU", False, 4), FAIL),
    (lambda: env.check_gpu_build("CUDA 12.8", True, 8, "570.86"), PASS),
    (lambda: env.check_gpu_build("CUDA 12.8", False, 2, "450.80"), FAIL),
    (lambda: env.check_gpu_build("CUDA 12.8", False, 0), WARN),
    (lambda: env.check_gpus([]), PASS),
    (lambda: env.check_gpus([{"name": "H100", "bf16": True, "tf32": True}]), PASS),
    (lambda: env.check_gpus([{"name": "Tesla V100", "bf16": False, "tf32": False}]), WARN),
    (lambda: env.check_cpu(["AVX", "AVX2"], "x86_64"), PASS),
    (lambda: env.check_cpu(["AVX"], "x86_64"), WARN),
    (lambda: env.check_cpu(["NEON"], "arm64"), PASS),
    (lambda: env.check_memory(32 * GiB, 20 * GiB), PASS),
    (lambda: env.check_memory(2 * GiB, GiB // 2), WARN),
    (lambda: env.check_memory(None, None), WARN),
    (lambda: env.check_jupyter_kernel("python3"), PASS),
    (lambda: env.check_jupyter_kernel(None), WARN),
    (lambda: env.check_distributed({}), PASS),
    (lambda: env.check_distributed({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "16",
                                    "RANK": "3", "SLURM_JOB_ID": "42"}), PASS),
    (lambda: env.check_distributed({"WORLD_SIZE": "2"}), WARN),
    (lambda: env.check_distributed({"MASTER_ADDR": "h", "MASTER_PORT": "1", "WORLD_SIZE": "2", "RANK": "2"}), WARN),
    (lambda: env.check_distributed({"CUDA_VISIBLE_DEVICES": ""}), WARN),
])
def test_check_branches(check, status: str) -> None:
    c = check()
    assert isinstance(c, Check) and c.status == status and c.detail
    assert bool(c.fix) == (status != PASS)  # every warn/fail says how to fix it, in one line
    assert "\n" not in c.fix


@pytest.mark.parametrize("free,writable,failed", [
    (50 * GiB, True, set()), (GiB, True, {"disk space"}), (50 * GiB, False, {"runs folder writable"}),
    (GiB // 2, False, {"disk space", "runs folder writable"}),
])
def test_disk_checks(free: int, writable: bool, failed: set[str]) -> None:
    checks = env.check_disk(free, writable, "/data/runs")
    assert {c.name for c in checks if c.status == FAIL} == failed
    assert all(c.fix for c in checks if c.status == FAIL)


@pytest.mark.parametrize("system,driver,rocm,needle", [
    ("Linux", None, None, "whl/cpu"), ("Linux", "580.65.06", None, "whl/cu130"), ("Linux", "570.86.15", None, "whl/cu128"),
    ("Linux", "535.104.05", None, "whl/cu126"), ("Linux", "470.82", None, "whl/cpu"), ("Darwin", None, None, "pip install torch -e ."),
    ("Linux", None, "6.4.43482", "whl/rocm6.4"),
])
def test_install_command_fits_the_machine(system: str, driver: str | None, rocm: str | None, needle: str) -> None:
    cmd = env.install_command(system, driver, rocm)
    assert needle in cmd["pip"] and "environment.yml" in cmd["conda"] and cmd["why"]
    if driver == "470.82":
        assert "upgrade the driver" in cmd["why"]


def test_exit_code_follows_the_checks(report: EnvReport) -> None:
    good = dataclasses.replace(report, checks=[Check("a", PASS, "ok"), Check("b", WARN, "meh", "do x")])
    bad = dataclasses.replace(report, checks=[*good.checks, Check("c", FAIL, "broken", "do y")])
    assert good.exit_code == 0 and bad.exit_code == 1
    assert bad.counts == {PASS: 1, WARN: 1, FAIL: 1} and "1 fail" in bad.to_text()


# --- the parsers the probes use -----------------------------------------------------------------

def test_parse_nvidia_smi() -> None:
    text = "0, NVIDIA H100 80GB HBM3, 81559, 81000, 9.0, 570.86.15\n1, Tesla V100-SXM2-16GB, 16384, 16000, 7.0, 570.86.15\n"
    h100, v100 = probe.parse_nvidia_smi(text)
    assert h100["memory_total"] == 81559 * 2**20 and h100["bf16"] and h100["tf32"] and h100["driver"] == "570.86.15"
    assert v100["bf16"] is False and v100["compute_capability"] == "7.0"
    assert probe.parse_nvidia_smi("") == []


def test_cpu_extensions_and_distributed_env() -> None:
    flags = {"fpu", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_bf16"}
    assert probe.cpu_extensions(flags) == ["AVX", "AVX2", "FMA", "AVX-512", "AVX512-VNNI", "AMX", "AMX-BF16"]
    seen = probe.distributed_env({"HOME": "/root", "RANK": "0", "SLURM_JOB_ID": "7", "PATH": "/bin"})
    assert seen == {"RANK": "0", "SLURM_JOB_ID": "7"}


def test_cpu_line_names_model_and_extensions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "cpu_info", lambda: {"model": "AMD EPYC", "extensions": ["AVX2", "FMA"]})
    assert probe.cpu_line() == "AMD EPYC (AVX2, FMA)"
    monkeypatch.setattr(probe, "cpu_info", lambda: {"model": None, "extensions": []})
    assert probe.cpu_line() == f"{probe.platform.machine()} (extensions unknown)"


def test_kernel_for_interpreter(tmp_path: Path) -> None:
    exe = str(Path(sys.executable))
    specs = {
        "other": {"resource_dir": "/elsewhere/k", "spec": {"argv": ["/opt/other/bin/python", "-m", "ipykernel"]}},
        "mine": {"resource_dir": str(tmp_path / "share/jupyter/kernels/mine"), "spec": {"argv": ["python", "-m", "x"]}},
    }
    assert probe.kernel_for_interpreter(specs, exe, str(tmp_path)) == "mine"
    assert probe.kernel_for_interpreter({"abs": {"spec": {"argv": [exe]}}}, exe, "/nowhere") == "abs"
    assert probe.kernel_for_interpreter({"other": specs["other"]}, exe, str(tmp_path)) is None


def test_requirements_come_from_the_installed_metadata() -> None:
    reqs, python = probe.lab_requirements()
    assert "2.6" in reqs["torch"] and "!=2.6.2" in reqs["lightning"] and "!=2.6.3" in reqs["lightning"]
    assert "pytest" not in reqs  # extras are not requirements
    assert python.startswith(">=3.")
    assert probe.requirement_of("lightning", "torch")  # lightning declares which torch it supports


def test_disk_info_does_not_create_the_runs_folder(tmp_path: Path) -> None:
    info = probe.disk_info(tmp_path / "a" / "b" / "runs")
    assert info["checked"] == str(tmp_path.resolve()) and info["writable"] and info["free"] > 0
    assert not (tmp_path / "a").exists()


# --- the command --------------------------------------------------------------------------------

def test_cli_doctor_text_json_and_exit_codes(report: EnvReport, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    good = dataclasses.replace(report, checks=[Check("x", PASS, "ok")])
    bad = dataclasses.replace(report, checks=[Check("torch version", FAIL, "torch 2.5.1 < 2.6", "pip install -U torch")])
    calls = []
    monkeypatch.setattr(env, "report", lambda runs_dir=None, bench=False: calls.append((runs_dir, bench)) or good)
    assert main(["doctor", "--runs_dir", "somewhere"]) == 0
    assert "Large Model Lab doctor" in capsys.readouterr().out and calls[-1] == ("somewhere", False)
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "lab.env/1"
    monkeypatch.setattr(env, "report", lambda runs_dir=None, bench=False: calls.append((runs_dir, bench)) or bad)
    assert main(["doctor", "--bench"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "pip install -U torch" in out and calls[-1] == (None, True)


def test_measuring_the_peak_leaves_the_global_rng_alone() -> None:
    # A run that measures the peak (cold cache) must draw the same dropout masks as one that reads it.
    torch.manual_seed(0)
    before = torch.get_rng_state()
    env.matmul_flops(64, seconds=0.01)
    assert torch.equal(before, torch.get_rng_state())
