"""lab.callbacks: the progress bar of a run bounded by steps (the other callbacks: tests/test_train_resume.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab.callbacks import _RichBar, progress_bar
from lab.config import load_config
from lab.train import fit

TINY = {"trainer.max_steps": 6, "trainer.val_check_interval": 3, "trainer.limit_val_batches": 2,
        "model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2, "model.block_size": 32,
        "optimizer.warmup_steps": 1}


def test_a_step_bounded_run_names_its_epoch_without_a_negative_total(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    assert isinstance(progress_bar(), _RichBar)  # rich comes with transformers (through typer): the bar under test
    fit(load_config("gpt-nano", TINY), runs_root=tmp_path, progress=True, test=False)
    out = capsys.readouterr()
    shown = re.findall(r"Epoch [0-9/-]+", out.out + out.err)
    assert shown and set(shown) == {"Epoch 0"}  # Lightning 2.6's own bar printed "Epoch 0/-2" here
