"""A fast reader for a run's TensorBoard event files: scalar curves, text samples and pictures.

    from lab.tfevents import read_events
    ev = read_events("runs/gpt-nano/20261128-120000-ab12")
    ev.scalars["train/loss"]      # [(step, wall_time, value), ...] in file order
    ev.texts["samples/text_summary"]   # [(step, wall_time, "generated text"), ...]
    ev.images["inputs/spectrograms"]   # [(step, wall_time, PNG bytes), ...]

Why not ``lab.runs.scalars`` (TensorBoard's ``EventAccumulator``)? The accumulator builds
reservoirs, plugin assets and a purge pass per record and costs about 10x more per file;
the dashboard reads hundreds of runs. Here each record is framed by hand (TFRecord: u64
length, u32 length-CRC, payload, u32 payload-CRC) and only the ``Event`` proto is decoded
(protobuf's C implementation). CRCs are not checked -- a truncated last record (a run still
being written) is simply where reading stops, which is what the accumulator does too.

Resumed runs: ``lab fit --resume`` opens a new event file with ``purge_step`` = the step it
resumes from; TensorBoard marks that with a ``SessionLog.START`` event, and every point
read so far at that step or later is dropped (the killed process wrote them past its last
checkpoint, and the resumed one writes them again). Files written without a version
(before ``brain.Event:2``) use TensorBoard's older rule: a step going backwards in one tag
drops that tag's points from there on. So each step comes back once, as TensorBoard shows it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2

Point = tuple[int, float, float]
_HEADER = struct.Struct("<Q")


@dataclass
class Events:
    """What a run's event files hold that the dashboard shows."""

    scalars: dict[str, list[Point]] = field(default_factory=dict)
    """``{tag: [(step, wall_time, value), ...]}``, files in name order (= creation order)."""
    texts: dict[str, list[tuple[int, float, str]]] = field(default_factory=dict)
    """Text summaries (generated samples): ``{tag: [(step, wall_time, text), ...]}``."""
    images: dict[str, list[tuple[int, float, bytes]]] = field(default_factory=dict)
    """Image summaries (``add_image``: pictures of inputs): ``{tag: [(step, wall_time, encoded PNG), ...]}``."""


def event_files(run_dir: str | Path) -> list[Path]:
    """The ``events.out.tfevents.*`` files directly in a run folder, oldest first.

    By the creation time in the name (``events.out.tfevents.<unix seconds>.<host>.<pid>.<n>``),
    then by name: the order TensorBoard reads them in, which purging depends on.
    """
    def order(p: Path) -> tuple[int, str]:
        stamp = p.name.split(".")[3] if p.name.count(".") >= 3 else ""
        return (int(stamp) if stamp.isdigit() else 0, p.name)

    return sorted(Path(run_dir).glob("events.out.tfevents.*"), key=order)


def _records(data: bytes):
    i, n = 0, len(data)
    while i + 12 <= n:
        (length,) = _HEADER.unpack_from(data, i)
        start = i + 12
        if start + length + 4 > n:  # truncated record at the end of a file being written
            return
        yield data[start:start + length]
        i = start + length + 4


_START = event_pb2.SessionLog.START


def _version(text: str) -> float:
    """``"brain.Event:2"`` -> 2.0 (TensorBoard's own parse); -1 when unreadable."""
    try:
        return float(text.split("brain.Event:")[-1])
    except ValueError:
        return -1.0


def _purge(series: dict[str, list], step: int, tags: Any = None) -> None:
    """Drop points at ``step`` or later (of ``tags`` only, when given)."""
    for tag in list(series) if tags is None else [t for t in tags if t in series]:
        series[tag] = [p for p in series[tag] if p[0] < step]


def read_events(run_dir: str | Path, texts: bool = True) -> Events:
    """Every scalar (and, with ``texts``, every text and image summary) of a run's event files, purges applied."""
    out = Events()
    scal, txt, img = out.scalars, out.texts, out.images
    parse = event_pb2.Event.FromString
    versioned, newest = False, -1
    for path in event_files(run_dir):
        try:
            data = path.read_bytes()
        except OSError:  # removed between the listing and the read
            continue
        for rec in _records(data):
            try:
                ev = parse(rec)
            except Exception:  # a corrupt record: skip it, keep the rest of the curve
                continue
            step = int(ev.step)
            if ev.file_version:
                versioned = _version(ev.file_version) >= 2
                continue
            if versioned and ev.HasField("session_log") and ev.session_log.status == _START:
                for series in (scal, txt, img):
                    _purge(series, step)
                continue
            if not ev.HasField("summary"):
                continue
            if not versioned:
                if step < newest:
                    tags = [v.tag for v in ev.summary.value]
                    for series in (scal, txt, img):
                        _purge(series, step, tags)
                else:
                    newest = step
            wall = float(ev.wall_time)
            for v in ev.summary.value:
                kind = v.WhichOneof("value")
                if kind == "simple_value":
                    scal.setdefault(v.tag, []).append((step, wall, float(v.simple_value)))
                elif kind == "image" and texts:
                    img.setdefault(v.tag, []).append((step, wall, bytes(v.image.encoded_image_string)))
                elif kind == "tensor":
                    plugin = v.metadata.plugin_data.plugin_name
                    t = v.tensor
                    if plugin == "text" and texts and t.string_val:
                        txt.setdefault(v.tag, []).append(
                            (step, wall, "\n".join(s.decode("utf-8", "replace") for s in t.string_val)))
                    elif plugin == "scalars" or (not plugin and (t.float_val or t.double_val)):
                        # New-style scalars (tf.summary / torch's new_style=True) are 0-d tensors.
                        vals = list(t.float_val) or list(t.double_val)
                        if not vals and t.tensor_content:
                            fmt = "<d" if t.dtype == 2 else "<f"  # DT_DOUBLE = 2, DT_FLOAT = 1
                            vals = [struct.unpack(fmt, t.tensor_content[:struct.calcsize(fmt)])[0]]
                        if vals:
                            scal.setdefault(v.tag, []).append((step, wall, float(vals[0])))
    return out


def read_scalars(run_dir: str | Path) -> dict[str, list[Point]]:
    """Only the scalar curves: ``{tag: [(step, wall_time, value), ...]}``."""
    return read_events(run_dir, texts=False).scalars
