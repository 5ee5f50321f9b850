"""``int8-static``: calibrated int8 (weights per channel, activations per tensor), compiled by Inductor.

    from lab.compress import compress
    report = compress(run, "int8-static")            # compressed/int8-static/model_int8.safetensors

    from lab.compress.int8_static import load
    predict = load(folder, fp32_model, example)        # rebuilds the int8 graph, compiles it for this CPU
    logits = predict(ids)

How (PyTorch 2's own int8 path for x86 CPUs, the "PT2E" flow of torchao):

1. ``torch.export`` captures the model with dynamic batch (and, for token ids, sequence) axes;
2. ``prepare_pt2e`` with ``X86InductorQuantizer`` inserts observers: per-channel int8 ranges for
   weights, per-tensor uint8 ranges for the activations that feed Linear/Conv layers (7-bit,
   0..127, on CPUs without VNNI: see ``seven_bit_activations``);
3. the observers see ``calibration_batches`` real validation batches (static: the activation
   ranges are fixed here, not measured per batch at run time);
4. ``convert_pt2e`` turns observers into quantize/dequantize pairs, and AOTInductor (with
   ``freezing``) fuses those with the matmuls into oneDNN int8 kernels, and LayerNorm, GELU and
   attention's glue into generated C++ loops. That fusion is where the speed comes from:
   ``int8-dynamic`` leaves everything but the matmuls in eager fp32.

What is saved is portable and cannot run code: one safetensors file with the int8 weights, their
per-channel scales, the fp32 parameters that stay fp32 (embeddings, norms) and every observer's
scale and zero point. The compiled library is *not* the artifact: it holds kernels for this CPU's
instruction set (AMX, AVX-512 with VNNI or AVX2 only, on this project's machines), so ``load`` rebuilds
the graph from the file and compiles it on the machine that runs it (about 30 s for gpt-nano on 2
cores; needs a C++ compiler). The rebuilt graph is checked against the calibrated one before the
artifact is accepted.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lab.compress import Artifact
from lab.compress.parity import max_abs_diff, parity_inputs, val_batches
from lab.compress.quantize import quiet_torchao_import
from lab.cost import is_token_ids, num_params
from lab.errors import LabError
from lab.families import FAMILIES, family_of

WEIGHTS_FILE = "model_int8.safetensors"
PARITY_TOLERANCE = 1e-4
"""Max |rebuilt - calibrated| on the outputs: both are the same int8 graph, so only fp32 reordering."""
Q, SCALE, ZERO, FP32 = "q.", "scale.", "zero_point.", "fp32."
"""Key prefixes in the safetensors file: int8 weight, observer scale / zero point, fp32 parameter."""


def _require() -> None:
    """Refuse early, with what to do, where this method cannot run."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise LabError(f"int8-static uses Inductor's x86 int8 kernels; this CPU is {platform.machine()}: "
                       "use --method int8-dynamic or onnx-int8")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        raise LabError("int8-static compiles the model with a C++ compiler and none was found: install one "
                       "(apt-get install g++, or conda install cxx-compiler) or use --method onnx-int8")
    try:
        with quiet_torchao_import():
            import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    except Exception as e:  # ImportError, or a torchao built for another torch
        raise LabError(f"int8-static needs torchao's PT2E quantization (pip install torchao): {e}") from None


def seven_bit_activations() -> bool:
    """Whether this CPU needs activations kept to 0..127 (it has no VNNI int8 dot-product instructions).

    Without VNNI (AVX2, and AVX-512 before Cascade Lake) the int8 matmul multiplies uint8 by int8
    and adds pairs into int16 (``vpmaddubsw``), which saturates above 32,767: 255 x 127 x 2 does,
    127 x 127 x 2 does not. Measured on a 2-core AMD EPYC (AVX2): with 8-bit activations the
    compiled model's logits were off by 0.14 where int8 itself was off by 0.007; torchao's own
    advice is ``reduce_range=True`` on such CPUs.
    """
    has_vnni = getattr(torch.cpu, "_is_vnni_supported", None)  # private; absent -> assume no VNNI (safe)
    return not (has_vnni is not None and has_vnni())


def _check_supported(cfg: Any) -> None:
    """Only families whose record says int8-static was verified on them (the GPT and the MLP).

    Measured on the digits models: PT2E folds the CNN's BatchNorm into its conv weights, so the
    saved weights would not be the ones quantized; and Inductor's compiled ViT differed from its
    own eager int8 graph by more than int8 differs from fp32. ``int8_static``'s parity checks
    catch both, but a clear refusal before any work is kinder.
    """
    fam = family_of(cfg)
    if not fam.int8_static:
        verified = ", ".join(f.name for f in FAMILIES.values() if f.int8_static)
        raise LabError(f"int8-static supports {verified} models, not {fam.name}: use --method int8-dynamic or onnx-int8")


def _block_size(model: nn.Module) -> int | None:
    """A GPT's longest context (the sequence axis's upper bound); None for other models."""
    return getattr(getattr(model, "config", None), "block_size", None)


def _dynamic_shapes(example: torch.Tensor, block_size: int | None) -> tuple[dict[int, Any]]:
    """Batch is always dynamic; token ids also get a dynamic sequence axis up to the block size."""
    from torch.export import Dim

    axes: dict[int, Any] = {0: Dim("batch", min=1)}
    if is_token_ids(example):
        axes[1] = Dim("sequence", min=1, max=block_size or example.shape[1])
    return (axes,)


def _prepare(model: nn.Module, example: torch.Tensor, seven_bit: bool) -> torch.fx.GraphModule:
    """The exported model with observers inserted (the same names every time for the same model).

    ``seven_bit``: activations quantized to 0..127 instead of 0..255 (``seven_bit_activations``).
    """
    with quiet_torchao_import():
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=False,
                                                                              reduce_range=seven_bit))
        exported = torch.export.export(model.eval(), (example,),
                                       dynamic_shapes=_dynamic_shapes(example, _block_size(model)))
        return prepare_pt2e(exported.module(), quantizer)


def _observers(prepared: torch.fx.GraphModule) -> dict[str, Any]:
    """Observer call nodes by module name."""
    return {n.target: n for n in prepared.graph.nodes if n.op == "call_module" and "activation_post_process" in n.target}


def _convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    with quiet_torchao_import():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        return convert_pt2e(prepared)


def calibrate(model: nn.Module, batches: list[torch.Tensor], seven_bit: bool) -> torch.fx.GraphModule:
    """Observers inserted and run on ``batches`` (the model itself is not modified)."""
    prepared = _prepare(model, batches[0], seven_bit)
    with torch.no_grad():
        for x in batches:
            prepared(x)
    return prepared


def _weight_observers(prepared: torch.fx.GraphModule) -> dict[str, str]:
    """Parameter name -> its observer, for weights that nothing but their observer reads.

    Those can be stored as int8; a weight with other readers (GPT's tied embedding, which the
    token lookup also reads) stays fp32 and is quantized for its matmul when the graph is built.
    """
    out = {}
    for name, node in _observers(prepared).items():
        src = node.args[0]
        if src.op == "get_attr" and len(src.users) == 1:
            out[src.target] = name
    return out


def tensors_to_save(model: nn.Module, prepared: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """int8 weights with their per-channel qparams, fp32 for the other parameters, activation qparams."""
    out: dict[str, torch.Tensor] = {}
    weights = _weight_observers(prepared)
    for name in _observers(prepared):
        if name not in weights.values():
            scale, zero_point = getattr(prepared, name).calculate_qparams()
            out[SCALE + name], out[ZERO + name] = scale.float().reshape(-1), zero_point.int().reshape(-1)
    seen: set[int] = set()
    for pname, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue  # a tied alias (lm_head.weight is transformer.wte.weight): stored once
        seen.add(tensor.data_ptr())
        obs_name = weights.get(pname)
        if obs_name is None:
            out[FP32 + pname] = tensor.detach().float().contiguous()
            continue
        obs = getattr(prepared, obs_name)
        if obs.ch_axis != 0:
            raise LabError(f"int8-static expected per-output-channel weight scales, got ch_axis={obs.ch_axis}")
        scale, zero_point = obs.calculate_qparams()
        # The op convert itself uses (it multiplies by 1/scale: dividing rounds some halves apart).
        q = torch.ops.quantized_decomposed.quantize_per_channel(
            tensor.detach().float(), scale, zero_point, 0, obs.quant_min, obs.quant_max, torch.int8)
        out[Q + pname] = q.contiguous()
        out[SCALE + pname], out[ZERO + pname] = scale.float(), zero_point.int()
    return out


def save(model: nn.Module, prepared: torch.fx.GraphModule, path: Path, meta: dict[str, Any]) -> Path:
    """Write the artifact's one file (safetensors: tensors and a JSON header, nothing executable)."""
    from safetensors.torch import save_file

    save_file(tensors_to_save(model, prepared), str(path), metadata={"lab": json.dumps(meta)})
    return path


def rebuild(tensors: dict[str, torch.Tensor], model: nn.Module, example: torch.Tensor, seven_bit: bool
            ) -> torch.fx.GraphModule:
    """The converted int8 graph from saved tensors. ``model`` (same config) has its weights overwritten.

    int8 weights are loaded dequantized and their observers are pinned to the saved scales, so
    convert quantizes them back to exactly the saved int8 values; activation observers are
    pinned to their calibrated scales.
    """
    state = {k[len(FP32):]: v for k, v in tensors.items() if k.startswith(FP32)}
    for key, q in tensors.items():
        if key.startswith(Q):
            pname = key[len(Q):]
            shape = [-1] + [1] * (q.dim() - 1)
            zero_point = tensors[ZERO + pname].float().view(shape)
            state[pname] = (q.float() - zero_point) * tensors[SCALE + pname].view(shape)
    _load_exactly(model, state)
    prepared = _prepare(model, example, seven_bit)
    weights = _weight_observers(prepared)
    by_observer = {obs: pname for pname, obs in weights.items()}
    for name in _observers(prepared):
        key = by_observer.get(name, name)
        if SCALE + key not in tensors:
            raise LabError(f"this int8-static artifact does not fit the model: no saved scale for {key}; "
                           "it was made for another model structure (run lab compress again)")
        scale, zero_point = tensors[SCALE + key], tensors[ZERO + key].long()
        # convert asks each observer for its qparams: answer with the saved ones.
        getattr(prepared, name).calculate_qparams = lambda s=scale, z=zero_point: (s, z)
    return _convert(prepared)


def _load_exactly(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict that accepts tied aliases left out, and nothing else missing or extra."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    loaded_ptrs = {own[k].data_ptr() for k in state if k in own}
    missing = sorted(k for k in own if k not in state and own[k].data_ptr() not in loaded_ptrs)
    if missing or unexpected or any(own[k].shape != v.shape for k, v in state.items() if k in own):
        raise LabError("this int8-static artifact does not fit the model "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]}, or shapes differ): "
                       "was it made from another run? Run lab compress again")
    model.load_state_dict(state, strict=False)


INDUCTOR_CONFIGS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
"""How AOTInductor compiles the int8 graph.

``freezing`` folds the weights into constants, which lets Inductor pack them for int8 matmuls and
fuse each quantize/dequantize pair into its neighbours. ``max_autotune`` times, per matmul, oneDNN's
kernel (ATEN) against Inductor's generated C++ GEMM templates (AMX / AVX-512 micro-kernels, with
the requantization fused in) and keeps the faster. Measured on gpt-nano (Intel Xeon with AMX), 1
thread, against fp32 eager: 1.9x / 1.9x / 2.4x at batch 1 / 8 / 32 without autotuning; 2.6-3.1x /
2.0-2.1x / 2.0-2.2x with it. Compiling takes about 20 s longer.
"""


def rebuild_from(folder: str | Path, model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """The int8 graph (eager) of a saved artifact; ``model`` is a fp32 model of the run's config."""
    from safetensors import safe_open

    _require()
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise LabError(f"{folder} has no {WEIGHTS_FILE}: not an int8-static artifact")
    with safe_open(str(path), framework="pt") as f:  # metadata and tensors in one read
        meta = json.loads((f.metadata() or {}).get("lab", "{}"))
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    seven_bit = bool(meta.get("seven_bit_activations", False))
    if not seven_bit and seven_bit_activations():
        raise LabError(f"{path} was calibrated with 8-bit activations, for CPUs with VNNI; this CPU has no VNNI, "
                       "where its int8 matmuls would saturate and give wrong outputs: run lab compress "
                       "--method int8-static on this machine, or use --method onnx-int8")
    return rebuild(tensors, model.eval(), example, seven_bit)


def compiled(graph: torch.fx.GraphModule, example: torch.Tensor, block_size: int | None
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predict`` running ``graph`` compiled by AOTInductor for this CPU (the package lives in a temp dir)."""
    # Export and compile under no_grad: only then are the weights constants to Inductor. With grad
    # on, freezing leaves them alone and the int8 weights fold back into fp32 matmuls (measured on
    # gpt-nano at batch 8: 1.1x instead of 2x).
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="lab-int8-static-") as tmp, \
            warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        # Silenced: Inductor's "use detach().clone()" notices (not the user's to act on) and the
        # autotuner's timing table, which it writes to stderr.
        warnings.simplefilter("ignore")
        ep = torch.export.export(graph, (example,), dynamic_shapes=_dynamic_shapes(example, block_size))
        package = torch._inductor.aoti_compile_and_package(
            ep, package_path=str(Path(tmp) / "model.pt2"), inductor_configs=dict(INDUCTOR_CONFIGS))
        runner = torch._inductor.aoti_load_package(package)  # extracts its library: tmp may go

    def predict(x: torch.Tensor) -> torch.Tensor:
        # The compiled runner reads inputs as contiguous whatever their strides: a sliced batch
        # (ids[:, :32]) gave wrong logits before this.
        return runner(x.contiguous())

    return predict


def load(folder: str | Path, model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predict`` for a saved int8-static artifact: rebuilt from safetensors, compiled here.

    ``model``: a fp32 model of the run's config (its weights are overwritten); ``example``: one
    input batch (its dtype and rank pick the dynamic axes; any batch size and length work after).
    """
    graph = rebuild_from(folder, model, example)
    return compiled(graph, example, _block_size(model))


def int8_static(module: Any, dm: Any, cfg: Any, out_dir: Path, calibration_batches: int = 8,
                **_: Any) -> Artifact:
    """Calibrate on validation batches, save int8 safetensors, rebuild + compile from the file."""
    _require()
    model = module.model.eval()
    _check_supported(cfg)
    batches = val_batches(dm, int(calibration_batches))
    seven_bit = seven_bit_activations()
    prepared = calibrate(copy.deepcopy(model), batches, seven_bit)
    meta = {"method": "int8-static", "torch": torch.__version__, "calibration_batches": len(batches),
            "seven_bit_activations": seven_bit}
    path = save(model, prepared, out_dir / WEIGHTS_FILE, meta)
    calibrated = _convert(prepared)  # what the file must reproduce
    graph = rebuild_from(out_dir, copy.deepcopy(model), batches[0])
    xs = parity_inputs(batches[0], batches[1:3])
    file_diff = max_abs_diff(calibrated, graph, xs)
    if not file_diff <= PARITY_TOLERANCE:
        raise LabError(f"the int8 graph rebuilt from {WEIGHTS_FILE} does not match the calibrated one: "
                       f"max abs difference {file_diff:.3g} > {PARITY_TOLERANCE}")
    predict = compiled(graph, batches[0], _block_size(model))
    quant_diff, compile_diff = max_abs_diff(model, graph, xs), max_abs_diff(graph, predict, xs)
    # Fused kernels requantize in their own order, so a few values round to the neighbouring
    # int8 step; a compiled graph that adds more error than quantizing itself did is broken.
    if not compile_diff <= max(quant_diff, PARITY_TOLERANCE):
        raise LabError(f"the compiled int8 model differs from its eager graph by {compile_diff:.3g}, more than "
                       f"int8 differs from fp32 ({quant_diff:.3g}): not accepted")
    with quiet_torchao_import():
        import torchao
    notes = {
        "quantization": {"api": "torchao PT2E prepare_pt2e / convert_pt2e, X86InductorQuantizer (static)",
                         "weights": "int8, symmetric, per output channel",
                         "activations": f"uint8 {'0..127 (this CPU has no VNNI)' if seven_bit else '0..255'}, per tensor, "
                                        "ranges fixed by calibration (histogram observer)",
                         "calibration": f"{len(batches)} validation batches", "torchao": torchao.__version__},
        "compiled_by": {"by": "AOTInductor, at load time, for the CPU it runs on", "inductor_configs": INDUCTOR_CONFIGS},
        "parity": {"file_vs_calibrated": file_diff, "tolerance": PARITY_TOLERANCE,
                   "int8_vs_fp32": quant_diff, "compiled_vs_eager_int8": compile_diff,
                   "inputs": [list(x.shape) for x in xs], "measure": "max abs difference of the outputs"},
        "load": "lab.compress.int8_static.load(folder, fp32_model, example): safetensors, no pickle; "
                "compiles for the CPU it runs on (needs a C++ compiler)",
        "size": "the safetensors file; the compiled library is built per machine and not counted",
    }
    return Artifact(predict=predict, files=[path], params=num_params(model),
                    backend=f"AOTInductor int8 static (torch {torch.__version__}, oneDNN)", notes=notes)
