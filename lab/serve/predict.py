"""``/predict`` for every family that is not a language model: JSON body -> a batch -> JSON answers.

    x = parse_sample(served, {"image": [[...], ...]})     # one sample tensor, or BadRequest saying what is wrong
    x = parse_sample(served, {"image": "iVBORw0KGgo..."})  # an image family also takes a base64 PNG
    batch = collate(served, [x1, x2])                     # the batch the model takes
    answers(served, outputs, [{"k": 5}, {}])              # one JSON answer per request, by the family's task

What a body holds comes from the family record's ``serve`` (``lab.families.record.Servable``): which
key, and whether it is numbers shaped like one sample of the family's ``example`` (or, for images, a
PNG), a text for the run's tokenizer, or an id below a model config field. The answer follows the record's ``task``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lab.errors import LabError


class BadRequest(Exception):
    """A request the server refuses with a 4xx, the message saying what was wrong."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


def _numbers(value: Any, shape: tuple[int, ...], key: str) -> torch.Tensor:
    # NumPy, not torch.tensor, reads the JSON lists: it holds the GIL while it works (a torch call lets go of
    # it and must then wait for the model's thread to hand it back), and it is ~2.5x faster at this size.
    refused = BadRequest(f"'{key}' must be a (nested) list of numbers of shape {list(shape)}", param=key)
    try:
        a = np.asarray(value)
    except ValueError:  # ragged lists
        raise refused from None
    if a.dtype.kind not in "biuf":  # strings (even "1.5"), objects, null
        raise refused
    if a.size != math.prod(shape) or (a.ndim > 1 and a.shape != shape):
        raise BadRequest(f"'{key}' has shape {list(a.shape)}: give {list(shape)} numbers "
                         f"({math.prod(shape)} in a flat list also works)", param=key)
    with np.errstate(over="ignore"):  # past float32's range is inf, refused next
        a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise BadRequest(f"'{key}' holds a value that is not a finite number", param=key)
    return torch.from_numpy(a.reshape(shape))


MAX_PNG_PIXELS = 4096 * 4096
"""A PNG's width x height is checked against this before it is decoded (a tiny file can hold a huge image)."""


def _png(value: str, shape: tuple[int, ...], key: str, pixels: tuple[float, float]) -> torch.Tensor:
    """A base64 PNG (or ``data:image/png;base64,...``) as one standardised sample of ``shape`` (C, H, W)."""
    import base64
    import binascii
    import io

    from PIL import Image, UnidentifiedImageError

    data = value.split(",", 1)[1] if value.startswith("data:") else value
    refused = BadRequest(f"'{key}' is a string, so it must be a base64-encoded PNG (or a list of numbers of shape "
                         f"{list(shape)})", param=key)
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        if image.format != "PNG":
            raise refused
        if image.width * image.height > MAX_PNG_PIXELS:
            raise BadRequest(f"'{key}' is a {image.width}x{image.height} PNG; send at most {MAX_PNG_PIXELS:,} pixels",
                             param=key)
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise refused from None
    channels, height, width = shape
    # BOX averages each output pixel's area: how the bundled 8x8 digits were made from 32x32 bitmaps.
    image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BOX)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    x = x[None] if channels == 1 else x.permute(2, 0, 1)
    mean, std = pixels
    return (x - mean) / std


def parse_sample(served: Any, body: Any) -> torch.Tensor:
    """One sample from a ``/predict`` body (a JSON object); BadRequest naming the problem."""
    spec = served.family.serve
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if spec.field not in body:
        raise BadRequest(f"the body needs '{spec.field}' ({spec.inputs}); it has {sorted(body) or 'no keys'}",
                         param=spec.field)
    value = body[spec.field]
    if spec.inputs == "numbers":
        if spec.png and isinstance(value, str) and served.pixels is not None:
            return _png(value, served.sample_shape, spec.field, served.pixels)
        return _numbers(value, served.sample_shape, spec.field)
    if spec.inputs == "text":
        if not isinstance(value, str) or not value:
            raise BadRequest(f"'{spec.field}' must be a non-empty string", param=spec.field)
        try:
            ids = served.tokenizer.encode(value)
        except LabError as e:  # a character the char tokenizer never saw
            raise BadRequest(f"'{spec.field}' cannot be tokenized: {e}", param=spec.field) from None
        block = served.block_size
        if block is not None and len(ids) > block:
            raise BadRequest(f"'{spec.field}' is {len(ids)} tokens; the model reads at most {block}", param=spec.field)
        return torch.tensor(ids, dtype=torch.long)
    bound = getattr(served.config, spec.bound)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound:
        raise BadRequest(f"'{spec.field}' must be a whole number in [0, {bound - 1}], got {value!r}", param=spec.field)
    return torch.tensor(value, dtype=torch.long)


def parse_k(served: Any, body: dict[str, Any]) -> int:
    """A ranking's ``k`` (items to return, default 10); checked before the request is queued."""
    k = body.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BadRequest(f"'k' must be a whole number >= 1, got {k!r}", param="k")
    return k


def collate(served: Any, samples: list[torch.Tensor]) -> torch.Tensor:
    """Stack samples into a batch; texts of different lengths are right-padded with the record's ``pad``."""
    if served.family.serve.inputs == "text":
        longest = max(s.numel() for s in samples)
        return torch.stack([F.pad(s, (0, longest - s.numel()), value=served.family.serve.pad) for s in samples])
    return torch.stack(samples)


def answers(served: Any, outputs: torch.Tensor, ks: list[int]) -> list[dict[str, Any]]:
    """One JSON answer per row of ``outputs``, as the family's task reads them."""
    # Whole-batch tensor calls and one ``tolist`` each, not a torch call per number (each waits to take the
    # GIL back from the busy event loop, as _numbers says).
    task = served.family.task
    if task == "classifier":
        probs = outputs.float().softmax(-1)
        return [{"label": label, "probabilities": [round(v, 6) for v in row]}
                for label, row in zip(probs.argmax(-1).tolist(), probs.tolist())]
    if task == "ranking":
        top = torch.topk(outputs.float(), min(max(ks), outputs.shape[-1]))  # the first k of the top max(k)
        return [{"items": items[:k], "scores": [round(v, 6) for v in scores[:k]]}
                for items, scores, k in zip(top.indices.tolist(), top.values.tolist(), ks)]
    return [{"outputs": row} for row in outputs.float().reshape(len(outputs), -1).tolist()]
