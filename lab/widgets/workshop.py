"""Settings the workshop notebooks share: small mode for tests and CI, and where runs go.

    from lab.widgets import workshop
    workshop.SMALL                         # True when LAB_NOTEBOOK_SMALL=1 (tests, CI, a slow laptop)
    workshop.steps(300)                    # 300 normally, a handful in small mode
    workshop.tiny("gpt-nano")              # overrides that shrink a preset in small mode ({} otherwise)
    workshop.runs_dir()                    # $LAB_RUNS_DIR, else the repository's runs/ folder
    workshop.quiet()                       # Lightning's start-up chatter (GPU/TPU available, tips) off

Small mode exists so every notebook can be executed top to bottom in a few seconds by
``tests/test_notebooks.py``; the teaching is the same, the numbers are just less pretty.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lab.runs import runs_root

ENV = "LAB_NOTEBOOK_SMALL"


def small_mode() -> bool:
    """Whether ``LAB_NOTEBOOK_SMALL`` is set to something other than 0/false/empty."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


SMALL = small_mode()

# Validation every few steps and few validation batches, so even a 30-step run has a curve.
_SMALL_TRAINER = {"trainer.val_check_interval": 10, "trainer.limit_val_batches": 2, "trainer.log_every_n_steps": 5,
                  "trainer.checkpoint_every_n_steps": None}
_SMALL: dict[str, dict[str, Any]] = {
    "gpt-nano": {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "trainer.max_steps": 30,
                 "optimizer.warmup_steps": 5, **_SMALL_TRAINER},
    "seed-mlp": {"trainer.max_steps": 40, **_SMALL_TRAINER},
    "digits-cnn": {"trainer.max_steps": 30, **_SMALL_TRAINER},
    "digits-vit": {"model.n_layer": 1, "trainer.max_steps": 30, **_SMALL_TRAINER},
    "speech-cnn": {"model.channels": [8, 16], "model.hidden": 32, "trainer.max_steps": 30,
                   "optimizer.warmup_steps": 3, **_SMALL_TRAINER},
    # gpt-nano's small backbone (and its block_size, 64 in both presets), so model.init_from can start it.
    "sentiment": {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "trainer.max_steps": 30,
                  "optimizer.warmup_steps": 5, **_SMALL_TRAINER},
    "recommender-mf": {"data.n_users": 200, "data.n_items": 100, "data.interactions": 15, "data.batch_size": 64,
                       "trainer.max_steps": 60, "optimizer.warmup_steps": 5, **_SMALL_TRAINER},
}


def tiny(preset: str, small: bool | None = None) -> dict[str, Any]:
    """Overrides that make ``preset`` train in seconds in small mode; ``{}`` in normal mode."""
    if not (SMALL if small is None else small):
        return {}
    return dict(_SMALL.get(preset, {"trainer.max_steps": 30, **_SMALL_TRAINER}))


def steps(normal: int, small: int = 20) -> int:
    """``normal`` steps, or ``small`` in small mode."""
    return small if SMALL else normal


def runs_dir() -> Path:
    """Where the notebooks' runs go: ``lab.runs.runs_root()`` (``$LAB_RUNS_DIR``, else the repository's
    ``runs/``), the same folder ``lab runs`` and the dashboard read from any folder of the repository."""
    return runs_root()


def quiet() -> None:
    """Hide Lightning's informational lines (GPU/TPU available, tips, restored checkpoints); warnings stay."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
