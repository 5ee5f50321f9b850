"""The model a server answers with: a run's checkpoint or one of its compressed artifacts, loaded once.

    from lab.serve.loaded import load
    served = load(ServeConfig(run="last", artifact="int8-dynamic"))
    served.forward(batch)         # model outputs for a batch (logits, scores), under inference_mode
    served.module                 # the nn.Module (a GPT steps its KV cache); None for ONNX Runtime artifacts

Weights are read as every lab command reads them: checkpoints through ``lab.evaluate.load_checked``
(``weights_only``), module artifacts through ``lab.compress.artifacts.load_artifact`` (the one place that
rebuilds int8-dynamic, prune, prune-structured and distill), ONNX graphs through ``lab.compress.onnx``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import torch
from torch import nn

from lab.errors import LabError
from lab.families.record import ModelFamily
from lab.serve.config import ServeConfig

ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
"""The graph file each ONNX artifact leaves in its folder (``lab.compress.onnx``)."""


@dataclass
class Served:
    """A loaded model and what the server needs to know about it."""

    name: str
    """The model's name in the API (``/v1/models``, the ``model`` field of a request)."""
    family: ModelFamily
    """Its family record: task, how ``/predict`` reads a sample (``serve``), the example sample's shape."""
    config: Any
    """The completed model config (vocabulary and classes filled in)."""
    forward: Callable[[torch.Tensor], torch.Tensor]
    """One input batch -> outputs, as the compression framework's ``predict`` (CPU tensors)."""
    module: nn.Module | None
    """The PyTorch module behind ``forward``; None when it runs outside PyTorch (ONNX Runtime)."""
    tokenizer: Any
    """The run's tokenizer for a tokenized family, else None."""
    artifact: str
    """Which artifact (``fp32`` or a compression method)."""
    pixels: tuple[float, float] | None = None
    """An image family's training (mean, std) of 0..1 pixels, which standardise a PNG sample; else None."""

    @property
    def block_size(self) -> int | None:
        return getattr(self.config, "block_size", None)

    @cached_property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample the model takes (from the family's ``example``; made once, not per request)."""
        return tuple(self.family.example(self.config, 1, torch.Generator().manual_seed(0))[0].shape[1:])

    @property
    def generates(self) -> bool:
        """A language model: served through /v1/completions."""
        return self.family.task == "lm"


def load(cfg: ServeConfig) -> Served:
    """Load ``cfg.run``'s model as ``cfg.artifact`` says, in eval mode; LabError for what is missing."""
    from lab.evaluate import load_checked
    from lab.families import family_of
    from lab.runs import resolve_run

    run = resolve_run(cfg.run, cfg.runs_dir)
    module = load_checked(run, cfg.ckpt)  # the original: its config, tokenizer, and the fp32 weights
    fam = family_of(run.config)
    tokenizer = None
    if fam.tokenized:
        from lab.data.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(run.tokenizer_path)
    model: nn.Module | None = module.model.eval()
    config = module.model.config
    forward: Callable[[torch.Tensor], torch.Tensor]
    if cfg.artifact == "fp32":
        forward = model
    elif cfg.artifact in ONNX_FILES:
        from lab.compress.artifacts import artifact_file
        from lab.compress.onnx import predictor, session

        path = artifact_file(run, cfg.artifact, ONNX_FILES[cfg.artifact])
        forward, model = predictor(session(path, cfg.threads)), None
    else:
        from lab.compress.artifacts import load_artifact

        model = load_artifact(run, cfg.artifact, model, fam)
        config = getattr(model, "config", config)
        forward = model
    return Served(name=cfg.model_name or run.name, family=fam, config=config, forward=forward, module=model,
                  tokenizer=tokenizer, artifact=cfg.artifact, pixels=_pixel_stats(run) if fam.serve and fam.serve.png
                  else None)


def _pixel_stats(run: Any) -> tuple[float, float]:
    """The training split's pixel mean and std, from the run's own DataModule (the bundled digits: instant)."""
    from lab.evaluate import load_data, run_config

    dm = load_data(run_config(run), "val")
    mean, std = getattr(dm, "mean", None), getattr(dm, "std", None)
    if not isinstance(mean, float) or not isinstance(std, float) or std <= 0:
        raise LabError(f"{run.name}'s data module has no pixel mean/std to standardise PNG images with")
    return mean, std
