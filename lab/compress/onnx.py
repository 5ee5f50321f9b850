"""``onnx`` and ``onnx-int8``: the model as an ONNX graph run by ONNX Runtime, fp32 or int8.

    from lab.compress import compress
    compress(run, "onnx")         # compressed/onnx/model.onnx, parity-checked against PyTorch
    compress(run, "onnx-int8")    # compressed/onnx-int8/model.int8.onnx (ONNX Runtime dynamic quantization)

    from lab.compress.onnx import session
    sess = session("model.onnx")                       # CPUExecutionProvider, fixed intra-op threads
    logits = sess.run(None, {"input": ids.numpy()})[0]

Export uses ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based exporter): the
dynamo exporter needs ``onnxscript``, which the lab does not depend on, and the TorchScript
one handles these models with dynamic ``batch`` (and, for token inputs, ``sequence``) axes.
The fp32 graph must match PyTorch within ``FP32_TOLERANCE`` (max absolute difference of the
outputs on real validation batches, including a smaller batch and a shorter sequence) or
the artifact is refused. ``onnxruntime.quantization.quantize_dynamic`` then stores MatMul
and Gather (embedding) weights as int8; its outputs are compared with fp32 for the record
(no tolerance: the quality delta in the report is the measure).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lab.compress import Artifact
from lab.compress.parity import max_abs_diff, parity_inputs, val_batches
from lab.cost import is_token_ids
from lab.errors import LabError

FP32_TOLERANCE = 1e-3
"""Max |onnxruntime - torch| allowed on fp32 outputs (logits are O(10); fp32 reorderings give ~1e-5)."""
OPSET = 17
INPUT, OUTPUT = "input", "output"


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis (and sequence axis for token ids)."""
    axes = {0: "batch", 1: "sequence"} if is_token_ids(example) else {0: "batch"}
    out_axes = dict(axes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python-level shape checks
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: axes, OUTPUT: out_axes}, do_constant_folding=True)
    return path


def session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (default: torch's count)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # Flush denormals to zero. A causal mask puts -inf in every attention row, and MLAS's
    # softmax computes exp() of those through denormals (slow microcode assists): measured on
    # gpt-nano at batch 8, softmax took 2.4 ms of an 8 ms int8 run, 0.3 ms with this flag.
    # Values below 1.2e-38 become 0: no measurable change in any output (tests compare).
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def predictor(sess: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``predict`` function (torch batch in, torch outputs out) around an ORT session."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {INPUT: np.ascontiguousarray(x.numpy())})[0])

    return predict


def _export_checked(model: nn.Module, dm: Any, path: Path) -> tuple[list[torch.Tensor], dict[str, Any]]:
    batches = val_batches(dm)
    export_onnx(model, batches[0], path)
    xs = parity_inputs(batches[0], batches[1:])
    diff = max_abs_diff(model, predictor(session(path)), xs)
    parity = {"max_abs_diff": diff, "tolerance": FP32_TOLERANCE, "passed": diff <= FP32_TOLERANCE,
              "inputs": [list(x.shape) for x in xs], "against": "the PyTorch fp32 model on real validation batches"}
    if not diff <= FP32_TOLERANCE:  # also catches NaN
        raise LabError(f"the ONNX graph does not match PyTorch: max abs difference {diff:.3g} > {FP32_TOLERANCE}")
    return xs, parity


def _backend(extra: str = "") -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} CPUExecutionProvider{extra}"


def _exporter() -> dict[str, Any]:
    return {"exporter": "torch.onnx.export(dynamo=False)", "opset": OPSET, "torch": torch.__version__}


def onnx_fp32(module: Any, dm: Any, cfg: Any, out_dir: Path, **_: Any) -> Artifact:
    """fp32 ONNX graph, parity-checked, run by ONNX Runtime."""
    from lab.cost import num_params

    model = module.model.eval()
    path = out_dir / "model.onnx"
    _, parity = _export_checked(model, dm, path)
    sess = session(path)
    return Artifact(predict=predictor(sess), files=[path], params=num_params(model), backend=_backend(),
                    notes={"parity": parity, **_exporter(), "threads": sess.get_session_options().intra_op_num_threads})


def onnx_int8(module: Any, dm: Any, cfg: Any, out_dir: Path, per_channel: bool = False, **_: Any) -> Artifact:
    """ONNX Runtime dynamic quantization (int8 weights, activations quantized per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from lab.cost import num_params

    model = module.model.eval()
    fp32 = out_dir / ".fp32.onnx"
    xs, parity = _export_checked(model, dm, fp32)
    path = out_dir / "model.int8.onnx"
    root_logger = logging.getLogger()
    level = root_logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # quantize_dynamic logs a root-logger hint to run quant_pre_process first; measured here,
        # pre-processing made these graphs no faster, so it is skipped and the hint silenced.
        root_logger.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=bool(per_channel))
        finally:
            root_logger.setLevel(level)
    fp32.unlink()
    sess = session(path)
    predict = predictor(sess)
    diff = max_abs_diff(model, predict, xs)
    ops = sorted({n.op_type for n in _graph_nodes(path)})
    notes = {"fp32_parity": parity, **_exporter(),
             "quantization": {"api": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
                              "per_channel": bool(per_channel), "ops_in_graph": ops},
             "int8_vs_fp32": {"max_abs_diff": diff, "note": "int8 is not expected to match fp32 exactly; "
                                                            "the quality delta is the measure"},
             "threads": sess.get_session_options().intra_op_num_threads}
    return Artifact(predict=predict, files=[path], params=num_params(model), backend=_backend(" (int8 dynamic)"),
                    notes=notes)


def _graph_nodes(path: Path) -> list[Any]:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)
