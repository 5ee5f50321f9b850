"""A run's compressed artifact as a PyTorch module: the one place that rebuilds one.

    from lab.compress.artifacts import MODULE_ARTIFACTS, artifact_file, load_artifact
    model = load_artifact(run, "int8-dynamic", module.model, family)   # eval mode, ready to call
    path = artifact_file(run, "onnx-int8", "model.onnx")               # LabError saying how to make it

``lab explain --compressed`` and ``lab serve --artifact`` both load artifacts through here. Which ones
rebuild as an ``nn.Module``: ``int8-dynamic`` (the torch.ao backend), ``prune`` (the original's shape,
with zeros), ``prune-structured`` and ``distill`` (a new, smaller shape from the artifact's own
config.yaml and model.safetensors). ONNX and AOTInductor artifacts run outside PyTorch's modules
(``lab.compress.onnx``). Weights are read from safetensors, never unpickled.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import nn

from lab.errors import LabError

MODULE_ARTIFACTS = ("int8-dynamic", "prune", "prune-structured", "distill")
"""Compression methods whose artifact rebuilds as a PyTorch module."""


def artifact_file(run: Any, method: str, name: str = "report.json") -> Path:
    """``compressed/<method>/<name>`` of a run; a LabError that says how to make it when it is not there."""
    path = run.compressed_dir(method) / name
    if not path.is_file():
        raise LabError(f"{run.name} has no {method} artifact yet: run `lab compress {run.name} --method {method}` first")
    return path


def load_artifact(run: Any, method: str, original: nn.Module, family: Any) -> nn.Module:
    """The artifact of ``method`` as a module in eval mode; ``original`` is the run's model (not changed)."""
    from lab.compress.prune import WEIGHTS_FILE, load_pruned
    from lab.compress.quantize import TORCH_AO, load_int8
    from lab.compress.quantize import WEIGHTS_FILE as INT8_FILE

    if method not in MODULE_ARTIFACTS:
        raise LabError(f"{method} artifacts do not rebuild as a PyTorch module: choose one of "
                       f"{', '.join(MODULE_ARTIFACTS)}")
    folder = artifact_file(run, method).parent
    if method == "int8-dynamic":
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        if report.get("backend") != TORCH_AO:
            raise LabError(f"{run.name}'s int8-dynamic artifact was made with {report.get('backend')}, whose tensors "
                           "load only through torchao: recompress with `--opt backend=torch.ao` to load it as a "
                           "PyTorch module")
        return load_int8(folder / INT8_FILE, copy.deepcopy(original), family.int8_targets).eval()
    if method == "prune":
        from safetensors.torch import load_model

        model = copy.deepcopy(original)
        load_model(model, str(folder / WEIGHTS_FILE))
        return model.eval()
    return load_pruned(folder)  # prune-structured, distill: config.yaml + model.safetensors


__all__ = ["MODULE_ARTIFACTS", "artifact_file", "load_artifact"]
