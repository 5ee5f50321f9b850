"""Explain a model: attribution heatmaps, attention maps and the logit lens, and checks that they mean something.

    from lab.explain import explain
    result = explain("digits-cnn/<run_id>", index=3)              # test sample 3: IG, Saliency, Occlusion
    result = explain("gpt-nano/<run_id>", text="The pass statement", check=True)
    result.target_name, result.confidence, result.maps["integrated_gradients"]
    result.lens["top"][-1]          # the GPT's last layer: the likeliest next tokens
    result.checks["passed"]         # completeness, model randomisation, deletion curve (lab.explain.checks)
    result.pictures                 # name -> PNG bytes, also written to runs/<exp>/<id>/reports/explain/
    lab explain RUN [--input 3 | --input "a prompt"] [--method occlusion] [--check] [--compressed int8-dynamic]

What a run gets is what its family record declares (``ModelFamily.explain``): classifiers and
regressors attribution heatmaps over the pixels, features or tokens (Integrated Gradients,
Saliency, Occlusion through Captum: ``lab.explain.attributions``); a GPT token attributions for
its next token, its attention maps per layer and head and the logit lens
(``lab.explain.transformer``). ``--check`` runs the sanity checks on the first ``CHECK_SAMPLES``
test samples (``lab.explain.checks``); ``--compressed`` explains an artifact of ``lab compress``
beside its original (``lab.explain.compare``). Pictures: ``lab.explain.pictures``; PNGs and a
JSON report go to the run's ``reports/explain/`` as ``<label>-<picture>.png`` and ``<label>.json``
(label ``test-<index>`` or ``text-<hash>``), the same images to its TensorBoard (IMAGES tab).

Every refusal (a family that declares no method, an index past the test split, a prompt longer
than the context, an artifact not made yet) is one ``LabError`` line before anything is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lab import runs
from lab.errors import LabError
from lab.explain import pictures
from lab.explain.attributions import ATTRIBUTIONS, Subject, attribute, output_name
from lab.fileio import atomic_write, check_writable, read_only_run_advice, storage_errors, write_json

CHECK_SAMPLES = 8
"""Test samples ``--check`` runs on: the first ones, so two runs (or two checkpoints) are checked alike."""
TOP = 5
"""Outputs listed with their probabilities (classes, next tokens)."""


class Loaded:
    """A run's model, tokenizer and (on first use) test data: what explaining one input needs.

    ``load(run)`` makes one; the dashboard keeps it between clicks.
    """

    def __init__(self, run: runs.Run, ckpt: str = "best") -> None:
        from lab.evaluate import load_checked, run_config
        from lab.families import family_of

        self.run, self.ckpt = run, ckpt
        self.cfg = run_config(run)
        self.family = family_of(self.cfg)
        self.spec = declared(run, self.family)
        self.tokenizer = None
        if self.spec.inputs == "tokens":
            from lab.data.tokenizers import load_tokenizer

            if not run.tokenizer_path.is_file():
                raise LabError(f"{run.name} has no tokenizer.json, so its token ids cannot be read: restore the file "
                               "or train again")
            self.tokenizer = load_tokenizer(run.tokenizer_path)
        self.module = load_checked(run, ckpt)
        self.model = self.module.model.eval()
        self.block_size = getattr(self.model.config, "block_size", None)
        self._dm: Any = None
        self.subject = Subject.of(self.model, self.spec, self.family.task, self._baseline())

    @property
    def dm(self) -> Any:
        """The run's DataModule, set up for the test split (read on first use)."""
        if self._dm is None:
            from lab.evaluate import load_data

            self._dm = load_data(self.cfg, "test", self.module)
        return self._dm

    def _baseline(self) -> float:
        """What "absent" is (the family record's ``explain.baseline``): a blank token for texts; 0 as the
        model sees it (the training mean); or ``black``, 0 before the DataModule standardised it."""
        if self.tokenizer is not None:
            try:
                blank = self.tokenizer.encode(" ")
            except LabError:  # a character vocabulary without a space
                blank = []
            return float(blank[0]) if len(blank) == 1 else 0.0
        if self.spec.baseline == "black":
            mean, std = getattr(self.dm, "mean", None), getattr(self.dm, "std", None)
            if isinstance(mean, float) and isinstance(std, float) and std > 0:
                return -mean / std
        return 0.0

    def test_size(self) -> int:
        return len(self.dm.test_dataloader().dataset)

    def test_input(self, index: int) -> torch.Tensor:
        """Test sample ``index`` as a batch of one; one line when it is past the split's end."""
        n = self.test_size()
        if not 0 <= index < n:
            raise LabError(f"--input {index}: {self.run.name}'s test split has {n} samples; give an index from 0 to "
                           f"{n - 1}")
        x = self.dm.test_dataloader().dataset[index][0][None]
        return x[:, : int((x[0] >= 0).sum())] if self.spec.inputs == "tokens" else x  # a text without its padding

    def test_indices(self, n: int = CHECK_SAMPLES) -> list[int]:
        """``n`` test samples spread evenly over the split (neighbouring text windows are alike), always the same."""
        size = self.test_size()
        return sorted({round(i * (size - 1) / max(1, n - 1)) for i in range(min(n, size))})

    def test_batch(self, n: int = CHECK_SAMPLES) -> torch.Tensor:
        """The samples of ``test_indices(n)`` as one batch (texts keep their padding)."""
        data = self.dm.test_dataloader().dataset
        return torch.stack([data[i][0] for i in self.test_indices(n)])

    def encode(self, text: str) -> torch.Tensor:
        """A text as token ids ``[1, T]``; one line when it is empty or longer than the model's context."""
        if not text.strip():
            raise LabError("--input is empty: give a prompt (a language model) or a text to classify")
        ids = self.tokenizer.encode(text)
        if self.block_size is not None and len(ids) > self.block_size:
            raise LabError(f"--input is {len(ids)} tokens long but {self.run.name}'s model reads at most "
                           f"{self.block_size} (model.block_size): give a shorter text")
        return torch.tensor([ids], dtype=torch.long)

    def default_text(self) -> str:
        """What a text box starts with: test sample 0 as text."""
        return self.decode(self.test_input(0)[0].tolist()) if self.tokenizer is not None else ""

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i >= 0])


def declared(run: runs.Run, family: Any) -> Any:
    """The family's ``explain`` record; one line when it declares nothing."""
    from lab.families import FAMILIES

    spec = family.explain
    if spec is None or not spec.methods:
        able = [name for name, f in FAMILIES.items() if f.explain is not None and f.explain.methods]
        raise LabError(f"{run.name} is a {family.name} model, and the {family.name} family declares no explanation "
                       f"method (its record's explain is empty): pick a run of {', '.join(able)}")
    return spec


def supports(run: runs.Run) -> Any:
    """What the run's family record declares for explaining (``Explainable``), or None (nothing, or no such family)."""
    from lab.families import FAMILIES

    name = (run.config.get("model") or {}).get("name") if isinstance(run.config, dict) else None
    fam = FAMILIES.get(name) if isinstance(name, str) else None
    spec = fam.explain if fam is not None else None
    return spec if spec is not None and spec.methods else None


def lens_rows(lens: dict[str, Any]) -> list[dict[str, Any]]:
    """The logit lens as table rows: each layer with its likeliest next tokens and their probabilities."""
    return [{"layer": layer, **{f"#{i + 1}": f"{token!r} {p:.3f}" for i, (token, p) in enumerate(top)}}
            for layer, top in zip(lens["layers"], lens["top"])]


def load(run: runs.Run | str | Path, ckpt: str = "best", runs_root: Any = None) -> Loaded:
    """A run (a ``Run``, ``<experiment>/<run_id>``, an id, a path or ``last``) loaded for explaining."""
    return Loaded(run if isinstance(run, runs.Run) else runs.resolve_run(run, runs_root), ckpt)


@dataclass
class Explanation:
    """One input of one run, explained."""

    run: str
    label: str
    """``test-<index>`` or ``text-<hash>``: names the files."""
    family: str
    task: str
    inputs: str
    input: dict[str, Any]
    """``index`` or ``text``; for texts ``tokens`` too (the strings the maps cover)."""
    target: int
    """The output explained: the predicted class or next token (output 0 of a regressor)."""
    target_name: str
    confidence: float
    """The target's probability (a regressor: its value)."""
    top: list[list[Any]]
    """The likeliest outputs ``[name, probability]`` (a regressor: its outputs)."""
    maps: dict[str, Any] = field(default_factory=dict)
    """Attribution method -> map (nested lists, the input's shape; one value per token for texts)."""
    convergence_delta: float | None = None
    """Integrated Gradients: sum of the attributions minus ``f(input) - f(baseline)``."""
    attention: Any = None
    """Attention weights ``[n_layer, n_head, T, T]`` (numpy), when the family declares them."""
    lens: dict[str, Any] | None = None
    """The logit lens (``lab.explain.transformer.logit_lens``), when declared."""
    checks: dict[str, Any] | None = None
    compared: dict[str, Any] | None = None
    pictures: dict[str, bytes] = field(default_factory=dict)
    """Picture name -> PNG bytes: attributions, attention, logit-lens, checks, vs-<method>."""
    images: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    files: dict[str, str] = field(default_factory=dict)
    """Picture name -> the file written (empty until ``write``)."""

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("run", "label", "family", "task", "inputs", "input", "target",
                                              "target_name", "confidence", "top", "maps", "convergence_delta",
                                              "lens", "checks", "compared", "files")}
        if self.attention is not None:
            out["attention_shape"] = list(np.shape(self.attention))
        return out

    def headline(self) -> str:
        """What is explained, in words: ``explaining '7' (confidence 0.981)``, a regressor's value."""
        return f"explaining {self.target_name} ({'value' if self.task == 'regressor' else 'confidence'} " \
               f"{self.confidence:.3f})"

    def summary(self) -> str:
        """A few lines for a terminal: what was predicted, the checks' verdicts, where the pictures are."""
        lines = [f"{self.run} {self.label}: {self.headline()}; likeliest: "
                 + ", ".join(f"{n!r} {p:.3f}" for n, p in self.top)]
        if self.convergence_delta is not None:
            lines.append(f"integrated gradients convergence delta {self.convergence_delta:+.2e}")
        if self.lens is not None:
            lines += [f"logit lens {layer:>10}: " + " ".join(f"{t!r} {p:.2f}" for t, p in top[:3])
                      for layer, top in zip(self.lens["layers"], self.lens["top"])]
        if self.checks is not None:
            c = self.checks
            lines.append(f"completeness: {'PASS' if c['completeness']['passed'] else 'FAIL'} (relative error "
                         f"{c['completeness']['relative_error']:.2e}, tolerance {c['completeness']['tolerance']:.0%})")
            for name, r in c["randomisation"].items():
                d = c["deletion"][name]
                lines.append(f"{name}: randomisation {'PASS' if r['passed'] else 'FAIL'} (rank correlation "
                             f"{r['rank_correlation']:.3f}, passes below {r['threshold']}); deletion "
                             f"{'PASS' if d['passed'] else 'FAIL'} (area {d.get('auc_attributed', float('nan')):.3f} "
                             f"vs random {d.get('auc_random', float('nan')):.3f}, reversed "
                             f"{d.get('auc_reversed', float('nan')):.3f})")
        if self.compared is not None:
            lines.append(f"vs {self.compared['artifact']}: {self.compared['method']} rank correlation "
                         f"{self.compared['rank_correlation']:.3f}, same prediction: {self.compared['same_prediction']}")
        lines += [f"{name}: {path}" for name, path in self.files.items()]
        return "\n".join(lines)


def _check_request(methods: Any, compressed: str | None, index: int | None,
                   text: str | None, spec: Any, run: runs.Run) -> tuple[str, ...]:
    """Refuse what can be told from the request alone; return the methods to run."""
    methods = tuple(methods or spec.methods)
    unknown = [m for m in methods if m not in spec.methods]
    if unknown:
        raise LabError(f"--method {', '.join(unknown)}: {run.name}'s model supports {', '.join(spec.methods)}; "
                       "choose among them (or leave --method out for all)")
    if index is not None and text is not None:
        raise LabError("give a test-sample index or a text, not both")
    if text is not None and spec.inputs != "tokens":
        raise LabError(f"--input {text!r}: a {spec.inputs} model explains test samples; give a test-sample index "
                       "(a whole number)")
    if index is not None and index < 0:
        raise LabError(f"--input {index}: give a test-sample index >= 0")
    if compressed is not None:
        from lab.explain.compare import check_artifact

        check_artifact(run, compressed)
    return methods


def explain(run: runs.Run | str | Path | Loaded, index: int | None = None, text: str | None = None, *,
            methods: Any = None, check: bool = False, compressed: str | None = None, ckpt: str = "best",
            write: bool = True, log: bool = True, runs_root: Any = None) -> Explanation:
    """Explain one input of a run (default: test sample 0); with ``write`` save the pictures and report."""
    from lab.families import family_of

    loaded = run if isinstance(run, Loaded) else None
    run = loaded.run if loaded else run if isinstance(run, runs.Run) else runs.resolve_run(run, runs_root)
    if not run.config:
        raise LabError(f"{run.path} has no config.yaml: it is not a complete run (`lab runs` lists the runs)")
    spec = declared(run, family_of(run.config))
    methods = _check_request(methods, compressed, index, text, spec, run)
    if write:
        check_writable(run.path, if_read_only=read_only_run_advice(run.name))  # before any loading
    loaded = loaded or Loaded(run, ckpt)
    x = loaded.encode(text) if text is not None else loaded.test_input(0 if index is None else index)
    label = f"text-{hashlib.sha256(text.encode()).hexdigest()[:8]}" if text is not None else f"test-{index or 0}"
    result = _explain_one(loaded, x, label, methods, {"text": text} if text is not None else {"index": index or 0})
    if check:
        result.checks = _checks(loaded, methods)
    if compressed is not None:
        result.compared = _compare(loaded, compressed, x)
    _draw(loaded, result, x)
    if write:
        write_report(run, result, log=log)
    return result


def _explain_one(loaded: Loaded, x: torch.Tensor, label: str, methods: tuple[str, ...],
                 given: dict[str, Any]) -> Explanation:
    from lab.explain import transformer

    s = loaded.subject
    names = None
    if s.task == "classifier":  # a text classifier records its labels; image data knows its class names
        names = getattr(loaded.model.config, "labels", None) or getattr(loaded.dm, "class_names", None)
    decode = (lambda ids: loaded.decode(list(ids))) if loaded.tokenizer is not None else None
    target = s.predicted(x)
    with torch.no_grad():
        out = s.outputs(x)[0]
    if s.task == "regressor":
        top = [[f"output {i}", float(v)] for i, v in enumerate(out)]
        confidence = float(out[0])
    else:
        probs = out.softmax(-1)
        values, ids = probs.topk(min(TOP, len(probs)))
        top = [[output_name(s, int(i), names, decode), float(v)] for v, i in zip(values, ids)]
        confidence = float(probs[int(target[0])])
    if s.tokens:
        given = {**given, "tokens": [loaded.decode([int(i)]) for i in x[0]]}
    result = Explanation(run=loaded.run.name, label=label, family=loaded.family.name, task=s.task,
                         inputs=s.explain.inputs, input=given, target=int(target[0]),
                         target_name=output_name(s, int(target[0]), names, decode, quoted=True), confidence=confidence,
                         top=top)
    for method in (m for m in methods if m in ATTRIBUTIONS):
        maps, delta = attribute(s, method, x, target)
        result.maps[method] = maps[0].tolist()
        if delta is not None:
            result.convergence_delta = float(delta.reshape(-1)[0])
    if "attention" in methods:
        result.attention = transformer.attention_maps(loaded.model, x).numpy()
    if "logit_lens" in methods:
        result.lens = transformer.logit_lens(loaded.model, x, decode)
    return result


def _checks(loaded: Loaded, methods: tuple[str, ...]) -> dict[str, Any]:
    """The sanity checks for the requested attribution methods (Integrated Gradients' completeness always)."""
    from lab.explain.checks import run_checks

    x = loaded.test_batch()
    return run_checks(loaded.subject, x, loaded.subject.predicted(x), methods)


def _compare(loaded: Loaded, method: str, x: torch.Tensor) -> dict[str, Any]:
    from lab.compress.artifacts import load_artifact
    from lab.explain.compare import compare

    artifact = Subject(load_artifact(loaded.run, method, loaded.model, loaded.family), loaded.spec,
                       loaded.subject.task, loaded.subject.baseline)
    found = compare(loaded.subject, artifact, x, loaded.subject.predicted(x))
    return {"artifact": method, **found, "original_map": found["original_map"].tolist(),
            "artifact_map": found["artifact_map"].tolist()}


def _draw(loaded: Loaded, result: Explanation, x: torch.Tensor) -> None:
    """Every picture of the explanation, as PNG bytes and RGB arrays."""
    tokens = result.input.get("tokens")
    shown = x[0].numpy()
    figures = {}
    title = f"{result.run} {result.label}: {result.headline()}"
    if result.maps:
        figures["attributions"] = pictures.attributions_figure(result.inputs, shown, result.maps, title, tokens)
    if result.attention is not None:
        figures["attention"] = pictures.attention_figure(result.attention, tokens or [])
    if result.lens is not None:
        figures["logit-lens"] = pictures.lens_figure(result.lens, f"logit lens: {result.run} {result.label}")
    if result.checks is not None:
        figures["checks"] = pictures.deletion_figure(result.checks, f"deletion curves on {result.checks['samples']} "
                                                                    "test samples")
    if result.compared is not None:
        c = result.compared
        figures[f"vs-{c['artifact']}"] = pictures.comparison_figure(
            result.inputs, shown, np.asarray(c["original_map"]), np.asarray(c["artifact_map"]),
            ("original", c["artifact"]), c["rank_correlation"], tokens)
    for name, fig in figures.items():
        result.pictures[name], result.images[name] = pictures.render(fig)


def write_report(run: runs.Run, result: Explanation, log: bool = True) -> Path:
    """The pictures and ``<label>.json`` into ``reports/explain/`` (atomically), the images into TensorBoard."""
    folder = run.explain_dir
    with storage_errors(folder, if_read_only=read_only_run_advice(run.name)):
        for name, png in result.pictures.items():
            path = folder / f"{result.label}-{name}.png"
            atomic_write(path, lambda f, data=png: f.write(data))
            result.files[name] = str(path)
        report = write_json(folder / f"{result.label}.json", result.to_json())
        if log:
            step = int(run.summary.get("step") or 0)
            pictures.log_images(run, {f"explain/{result.label}/{n}": rgb for n, rgb in result.images.items()}, step)
    return report


__all__ = ["CHECK_SAMPLES", "Explanation", "Loaded", "declared", "explain", "lens_rows", "load", "supports",
           "write_report"]
