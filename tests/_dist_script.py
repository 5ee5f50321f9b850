"""Entry point the distributed tests launch (directly, via Lightning's ddp launcher, or torchrun).

    python tests/_dist_script.py OUT RUNS_DIR [--dotted.override value ...]

Trains with ``lab.train.fit`` and writes, per global rank, ``OUT/rank<r>.pt``: the final
parameters, the world size and the run folder that rank used. ``LAB_TEST_KILL_RANK=r``
SIGKILLs rank r at step 5 (the dead-rank test); ``LAB_TEST_STOP_RANK=r`` SIGSTOPs it
there after writing its pid to ``OUT/stopped.pid`` (the hung-rank test);
``LAB_TEST_PREPARE_FAILS=1`` makes global rank 0's ``prepare_data`` raise (the data-prep test);
``LAB_TEST_PRESET`` names the preset to train (default ``seed-mlp``; the LoRA test trains a GPT).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch

from lab.config import load_config
from lab.train import fit


class Dump(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        kill = os.environ.get("LAB_TEST_KILL_RANK")
        if kill is not None and trainer.global_rank == int(kill) and trainer.global_step == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        stop = os.environ.get("LAB_TEST_STOP_RANK")  # a hung rank: alive, silent, its sockets open
        if stop is not None and trainer.global_rank == int(stop) and trainer.global_step == 5:
            (self.out / "stopped.pid").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)

    def on_train_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save({"state": state, "world_size": trainer.world_size, "run_dir": str(trainer.default_root_dir)},
                   self.out / f"rank{trainer.global_rank}.pt")


def main(argv: list[str]) -> None:
    out, runs_dir, overrides = Path(argv[0]), argv[1], argv[2:]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if os.environ.get("LAB_TEST_PREPARE_FAILS") and os.environ.get("RANK") == "0":
        from lab.data.splits import ArrayDataModule
        from lab.errors import DataError

        def fail(self) -> None:  # type: ignore[no-untyped-def]
            raise DataError("injected: the cache folder is full")

        ArrayDataModule.prepare_data = fail  # type: ignore[method-assign]
    preset = os.environ.get("LAB_TEST_PRESET", "seed-mlp")
    fit(load_config(preset, overrides), runs_root=runs_dir, callbacks=[Dump(out)], progress=False, test=False)


if __name__ == "__main__":
    main(sys.argv[1:])
