"""Checking an artifact against the model it came from, on real inputs.

    from lab.compress.parity import max_abs_diff, parity_inputs, val_batches
    batches = val_batches(dm, 3)                       # real validation inputs
    xs = parity_inputs(batches[0], batches[1:])        # + a smaller batch and a shorter sequence
    diff = max_abs_diff(model, predict, xs)            # worst |predict(x) - model(x)|

Used by the ONNX and int8-static methods and by ``lab.export``: every format that is not the
original module is compared with it before it is accepted.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from lab.cost import is_token_ids
from lab.errors import LabError


def val_batches(dm: Any, n: int = 3) -> list[torch.Tensor]:
    """The inputs of the first ``n`` validation batches."""
    out = []
    for i, (x, _) in enumerate(dm.val_dataloader()):
        if i >= n:
            break
        out.append(x)
    if not out:
        raise LabError("the validation split is empty: no real inputs to build and check the artifact with")
    return out


def parity_inputs(example: torch.Tensor, more: list[torch.Tensor]) -> list[torch.Tensor]:
    """Real batches at the export shape, a smaller batch and (token ids) a shorter sequence."""
    xs = [example, *more, example[: max(1, len(example) // 3)]]
    if is_token_ids(example) and example.shape[1] > 2:
        xs.append(example[:, : example.shape[1] // 2])
    return xs


def max_abs_diff(model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
                 predict: Callable[[torch.Tensor], torch.Tensor], xs: list[torch.Tensor]) -> float:
    """Largest absolute difference between ``predict`` and ``model`` outputs over ``xs``."""
    worst = 0.0
    with torch.inference_mode():
        for x in xs:
            worst = max(worst, float((predict(x).float() - model(x).float()).abs().max()))
    return worst
