"""The fast event reader: TensorBoard's purges (resumed runs), file order, truncated files."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from lab.tfevents import event_files, read_events, read_scalars


def _write(folder: Path, steps: range, value: float, purge_step: int | None = None, stamp: str = "") -> None:
    w = SummaryWriter(str(folder), purge_step=purge_step, filename_suffix=stamp)
    for s in steps:
        w.add_scalar("train/loss", value + s, s)
        if s % 5 == 0:
            w.add_scalar("val/loss", value - s, s)
            w.add_text("samples", f"{value} at {s}", s)
    w.close()


def test_a_resumed_run_reads_every_step_once_like_tensorboard(tmp_path: Path, tensorboard_scalars) -> None:
    _write(tmp_path, range(0, 13), 100.0)          # the killed process got to step 12...
    _write(tmp_path, range(8, 20), 200.0, purge_step=8)  # ...its checkpoint was at 8: resumed from there
    ev = read_events(tmp_path)
    steps = [s for s, _, _ in ev.scalars["train/loss"]]
    assert steps == list(range(20))  # not 0..12 then 8..19 (a curve that folds back)
    values = dict((s, v) for s, _, v in ev.scalars["train/loss"])
    assert values[7] == 107.0 and values[8] == 208.0 and values[12] == 212.0
    assert [s for s, _, _ in ev.scalars["val/loss"]] == [0, 5, 10, 15]
    assert [t for _, _, t in ev.texts["samples/text_summary"]] == ["100.0 at 0", "100.0 at 5", "200.0 at 10",
                                                                     "200.0 at 15"]
    assert read_scalars(tmp_path) == tensorboard_scalars(tmp_path)


def test_files_are_read_in_creation_order_not_name_order(tmp_path: Path, tensorboard_scalars) -> None:
    _write(tmp_path, range(0, 6), 1.0)
    _write(tmp_path, range(3, 9), 2.0, purge_step=3)
    first, second = event_files(tmp_path)
    # The resumed file's name sorts first as text (its time has one digit more): the time decides.
    a = first.with_name("events.out.tfevents.999999999.host.1.0")
    b = second.with_name("events.out.tfevents.1000000000.host.2.0")
    os.replace(first, a)
    os.replace(second, b)
    assert event_files(tmp_path) == [a, b]
    assert [v for _, _, v in read_scalars(tmp_path)["train/loss"]] == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]


def test_pictures_are_read_as_png_and_purged_like_the_rest(tmp_path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    def pictures(steps: range, shade: int, purge_step: int | None = None) -> None:
        w = SummaryWriter(str(tmp_path), purge_step=purge_step)
        for s in steps:
            w.add_image("inputs/pictures", np.full((4, 6, 3), shade + s, np.uint8), s, dataformats="HWC")
        w.close()

    pictures(range(0, 4), 10)
    pictures(range(2, 5), 100, purge_step=2)  # resumed at step 2: the killed process's 2 and 3 go
    ev = read_events(tmp_path)
    got = ev.images["inputs/pictures"]
    assert [s for s, _, _ in got] == [0, 1, 2, 3, 4] and all(png.startswith(b"\x89PNG") for _, _, png in got)
    shades = [Image.open(io.BytesIO(png)).getpixel((0, 0))[0] for _, _, png in got]
    assert shades == [10, 11, 102, 103, 104]
    assert read_events(tmp_path, texts=False).images == {}  # scalars only: no pictures decoded
