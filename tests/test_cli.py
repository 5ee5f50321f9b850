"""The ``lab`` command: help, print_config, refusals with exit code 2, runs, sample, README."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lab import runs
from lab.cli import main
from lab.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--trainer.max_steps", "12", "--trainer.val_check_interval", "6", "--trainer.limit_val_batches", "2",
        "--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2", "--model.block_size", "16"]


def test_help_lists_commands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("fit", "quickstart", "runs", "sample"):
        assert cmd in out


def test_fit_help_explains_overrides(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "--trainer.max_steps" in capsys.readouterr().out


@pytest.mark.parametrize("command,has_runs_dir", [("fit", True), ("evaluate", True), ("doctor", True),
                                                    ("plan", False), ("launch", False)])
def test_runs_dir_is_offered_only_where_runs_are_read_or_written(command: str, has_runs_dir: bool,
                                                                  capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert ("--runs_dir" in capsys.readouterr().out) == has_runs_dir


def test_print_config_is_resolved_yaml(capsys: pytest.CaptureFixture) -> None:
    assert main(["fit", "--config", "digits-cnn", "--print_config", "--trainer.max_steps", "7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_steps"] == 7
    assert printed == load_config("digits-cnn", {"trainer.max_steps": 7}).to_dict()


@pytest.mark.parametrize("argv,needle", [
    (["fit", "--optimizer.lr", "-1"], "optimizer.lr"),
    (["fit", "--config", "nope"], "preset"),
    (["fit", "--model.n_head", "3"], "model.n_embd"),
    (["fit", "--data.path", "/missing.txt"], "data.path"),
    (["sample", "no-such-run"], "not a run folder"),
])
def test_user_errors_exit_2_with_one_line(argv, needle, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*argv, "--runs_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.startswith("error: ")
    assert not any(tmp_path.iterdir())


def test_unknown_flag_on_runs_is_an_argparse_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["runs", "--bogus", "1"])
    assert e.value.code == 2


def test_fit_runs_and_sample(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["fit", "--runs_dir", str(tmp_path), *TINY]) == 0
    assert "completed" in capsys.readouterr().out
    (run,) = runs.list_runs(tmp_path)
    assert main(["runs", "--runs_dir", str(tmp_path)]) == 0
    assert run.name in capsys.readouterr().out
    assert main(["sample", run.name, "--runs_dir", str(tmp_path), "--tokens", "25", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert main(["sample", "last", "--runs_dir", str(tmp_path), "--tokens", "25", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first and len(first) >= 25


def test_runs_says_which_runs_crashed_and_how_to_resume(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        other_process) -> None:
    child, ident = other_process
    run = runs.create_run(tmp_path, "seed-mlp", {})
    runs.update_summary(run, status="running", process=ident)
    assert main(["runs", "--runs_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "running" in out and "crashed" not in out
    child.kill()
    child.wait()
    assert main(["runs", "--runs_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{run.name}  crashed" in out and "nothing to resume" in out and "--resume" not in out
    run.checkpoints_dir.mkdir()
    run.checkpoint("last").write_bytes(b"a checkpoint")
    assert main(["runs", "--runs_dir", str(tmp_path)]) == 0
    assert f"lab fit --resume {run.name}" in capsys.readouterr().out


def test_readme_opens_with_the_two_commands() -> None:
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    install_run, install_test = blocks[0].strip(), blocks[1].strip()
    assert "pip install" in install_run and install_run.endswith("lab quickstart")
    assert "pip install" in install_test and "pytest" in install_test
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest" in ci and "torch==2.13.0" in ci


def test_quickstart_console_script(tmp_path: Path) -> None:
    """The installed ``lab`` script runs the README's main job (shortened) in a fresh folder."""
    exe = shutil.which("lab") or pytest.fail("the `lab` console script is not installed: pip install -e .")
    env = {k: v for k, v in os.environ.items() if k != "LAB_RUNS_DIR"}
    mine = tmp_path / "my runs"  # chosen by the user, with a space in it
    proc = subprocess.run([exe, "quickstart", *TINY, "--tokens", "30", "--runs_dir", str(mine)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "A sample from the best checkpoint" in proc.stdout
    assert "tensorboard --logdir" in proc.stdout and "lab dashboard" in proc.stdout
    assert "GPU available" in proc.stderr  # Lightning's own info lines stay...
    assert "💡" not in proc.stderr + proc.stdout and "LeafSpec" not in proc.stderr  # ...its adverts do not
    (run,) = runs.list_runs(mine)
    assert run.status == "completed"
    # The advice it ends with works as printed, from the same folder: it names the chosen runs folder.
    (advice,) = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip().startswith("lab sample ")]
    sample = subprocess.run([exe, *shlex.split(advice)[1:], "--tokens", "20"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0, f"{advice}: {sample.stderr[-2000:]}"
    assert len(sample.stdout.strip()) >= 10


def test_lab_runs_lists_corrupt_runs_as_rows_and_evaluates_a_good_one(tmp_path: Path, tiny_gpt_run, corrupt_runs,
                                                                      capsys: pytest.CaptureFixture) -> None:
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(tiny_gpt_run.path, root / tiny_gpt_run.name)
    bad = corrupt_runs(root, outside=tmp_path / "elsewhere")
    assert main(["runs", "--runs_dir", str(root)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = out.splitlines()
    for name in bad:
        row = next(line for line in lines if line.startswith(name))
        assert "unreadable" in row
        assert any(line.startswith(f"{name} is skipped, ") for line in lines)
    assert any(line.startswith(tiny_gpt_run.name) and "completed" in line for line in lines)
    assert "outside data" not in out
    # A command about one good run does not read the corrupt ones.
    assert main(["evaluate", tiny_gpt_run.name, "--runs_dir", str(root), "--max_batches", "1", "--repeats", "1"]) == 0
    assert main(["sample", "last", "--runs_dir", str(root), "--tokens", "5"]) == 0


def test_fit_help_and_print_config_explain_each_field(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", "digits-cnn", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--model.channels ([16, 32]): Output channels of each conv stage" in out  # the preset's own fields
    assert "--trainer.precision ('32-true'): Lightning precision: 32-true, bf16-mixed" in out
    assert "--model.n_head" not in out
    assert main(["fit", "--config", "seed-mlp", "--print_config", "--trainer.max_steps", "9"]) == 0
    text = capsys.readouterr().out
    assert "# Optimizer steps to run" in text and yaml.safe_load(text) == load_config("seed-mlp", {
        "trainer.max_steps": 9}).to_dict()
