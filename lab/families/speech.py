"""The speech family: spoken keyword recognition with the lab's CNN over log-mel spectrograms.

    from lab.families.speech import FAMILY
    FAMILY.task, FAMILY.data                 # "classifier", ("speech",)
    lab fit --config speech-cnn              # the bundled spoken digits, held-out voices
    lab fit --config speech-cnn --data.path speech_commands/   # any folder with a folder of WAVs per label

The model is ``lab.models.vision.CNN`` -- a spectrogram is a one-channel image, ``n_mels`` bands
high and ``frames`` wide -- so pruning, distillation and int8 work as for the digits CNN. What is
this family's own: the input shape comes from the data section (``check`` refuses a model whose
``image_size``/``image_width`` do not match ``data.n_mels`` and the data's frames), the class
names and their count from the label folders (recorded in the run's config), and a picture of
the spectrograms the model learns from -- as they are and as SpecAugment shows them to it --
logged to TensorBoard when training starts (the dashboard's Run page shows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lab.compress.structure import Structure
from lab.data.audio import spectrogram_picture
from lab.data.speech import SpeechDataConfig, SpeechDataModule, label_names
from lab.errors import ConfigError, LabError, require, require_positive
from lab.families.cnn import conv_groups, conv_shape, narrow
from lab.families.record import Explainable, ModelFamily, Servable, replace_config
from lab.models.vision import CNN, CNNConfig
from lab.modules import Classifier

PICTURE_TAG = "inputs/spectrograms"
"""TensorBoard tag of the picture of training inputs (one clip per label, clean and augmented)."""


@dataclass
class KeywordCNNConfig(CNNConfig):
    """The keyword CNN (the ``model:`` section of a config with ``name: keyword-cnn``)."""

    name: str = "keyword-cnn"
    """Registry key; selects the speech family (the lab's CNN over spectrograms)."""
    channels: tuple[int, ...] = (16, 32, 64)
    """Output channels of each conv stage (a list is accepted); one conv + BatchNorm + ReLU + 2x2 pool each."""
    dropout: float = 0.2
    """Dropout before the output layer."""
    image_size: int = 40
    """Spectrogram height: must equal data.n_mels."""
    image_width: int | None = 41
    """Spectrogram width: must equal the data's frames, 1 + clip samples // hop (41 for 1 s at 8 kHz, 25 ms hop)."""
    num_classes: int | None = None
    """Keywords to tell apart; null = as many as the data has label folders."""
    labels: tuple[str, ...] | None = None
    """The keywords in output order; null = the data's label folders (recorded in the run's config)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.labels is not None:
            self.labels = tuple(self.labels)

    def validate(self) -> None:
        """Refuse a shape that cannot be built; the class count may wait for the data."""
        require_positive("model", self, "channels", "hidden", "image_size")
        require(self.image_width is None or self.image_width >= 1, "model.image_width", self.image_width,
                "a whole number >= 1")
        require(self.num_classes is None or self.num_classes >= 2, "model.num_classes", self.num_classes,
                "a whole number >= 2, or null to take it from the data")
        require(self.labels is None or len(set(self.labels)) == len(self.labels) >= 2, "model.labels", self.labels,
                "two or more different names, or null to take them from the data")
        require(0 <= self.dropout < 1, "model.dropout", self.dropout, "a number in [0, 1)")


class KeywordClassifier(Classifier):
    """The lab's classifier, which also logs a picture of its training inputs when training starts."""

    def __init__(self, model: CNN, cfg: Any, dm: Any) -> None:
        super().__init__(model, cfg.optimizer, cfg.trainer.max_steps, num_classes=model.config.num_classes)
        self._dm = dm

    def on_train_start(self) -> None:
        if self.global_step == 0 and self.trainer.is_global_zero and self.logger is not None and self._dm is not None:
            self.logger.experiment.add_image(PICTURE_TAG, training_picture(self._dm), 0, dataformats="HWC")


def training_picture(dm: Any, seed: int = 0, labels: int = 10) -> Any:
    """One training clip of each of the first ``labels`` labels, as stored (top) and as SpecAugment shows
    it to the model (below), as an RGB array.

    The masks come from their own generator: drawing the picture leaves training's randomness alone.
    """
    data = dm.datasets["train"]
    first: dict[int, int] = {}
    for i, y in enumerate(data.y.tolist()):
        first.setdefault(y, i)
    order = [first[k] for k in sorted(first)][:labels]
    gen = torch.Generator().manual_seed(seed)
    clean = [data.x[i] for i in order]
    seen = [data.augment(x, generator=gen) if data.augment is not None else x for x in clean]
    names = [dm.class_names[int(data.y[i])] for i in order]
    return spectrogram_picture(clean + seen, names + [f"{n} (augmented)" for n in names], columns=len(order),
                               title="log-mel spectrograms of training clips: as stored, and as training sees them")


def datamodule(cfg: Any) -> SpeechDataModule:
    """The speech data, its outputs in ``model.labels``' order when the config gives one."""
    return SpeechDataModule(cfg.data, seed=cfg.seed, labels=cfg.model.labels)


def module(cfg: Any, model: CNN, dm: Any) -> KeywordClassifier:
    return KeywordClassifier(model, cfg, dm)


def example(c: KeywordCNNConfig, n: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random spectrograms ``[n, 1, image_size, width]`` and labels."""
    return (torch.randn(n, 1, c.image_size, c.width, generator=gen),
            torch.randint(0, c.num_classes or 10, (n,), generator=gen))


def check(cfg: Any) -> None:
    """The CNN's input must be the data's spectrogram: ``n_mels`` high, ``frames`` wide."""
    m, d = cfg.model, cfg.data
    if m.image_size != d.n_mels:
        raise ConfigError("model.image_size", m.image_size, f"{d.n_mels}, the spectrogram's height (data.n_mels)",
                          f"set --model.image_size {d.n_mels}")
    if m.width != d.frames:
        raise ConfigError("model.image_width", m.image_width,
                          f"{d.frames}, the spectrogram's frames: 1 + {d.clip_samples} samples // hop {d.hop}",
                          f"set --model.image_width {d.frames}")


def complete(c: KeywordCNNConfig, dm: Any) -> KeywordCNNConfig:
    """What the data decides: the keywords and their count (a copy); refused when the config disagrees."""
    names = tuple(getattr(dm, "class_names", None) or ())
    if not names:
        if c.num_classes is None:
            raise LabError("model.num_classes is null: give it, or build the module with its DataModule")
        return c
    if c.labels is not None and c.labels != names:
        raise ConfigError("model.labels", list(c.labels), f"the data's labels {list(names)}",
                          "leave model.labels null to take them from the data")
    if c.num_classes is not None and c.num_classes != len(names):
        raise ConfigError("model.num_classes", c.num_classes, f"{len(names)}: the data has the labels "
                          f"{', '.join(names)}", "leave it null to take it from the data")
    return replace_config(c, labels=names, num_classes=len(names))


def plan_shape(cfg: Any) -> tuple[KeywordCNNConfig, str | None]:
    """The class count from the label folders (or the bundled words), without reading audio."""
    m = cfg.model
    if m.num_classes is not None:
        return m, None
    names = m.labels or label_names(cfg.data if isinstance(cfg.data, SpeechDataConfig) else SpeechDataConfig())
    return replace_config(m, num_classes=max(2, len(names))), None


FAMILY = ModelFamily(
    name="keyword-cnn", config=KeywordCNNConfig, model=CNN, data=("speech",), task="classifier", module=module,
    example=example, loss=Classifier.loss, metric="val/accuracy", mode="max", datamodule=datamodule,
    complete=complete, check=check,
    plan_shape=plan_shape, narrow=narrow, structure=Structure(groups=conv_groups, shape=conv_shape),
    explain=Explainable(("integrated_gradients", "saliency", "occlusion"), "image"),  # over the spectrogram
    serve=Servable("spectrogram", "numbers"),
    describe="A keyword-spotting CNN: log-mel spectrograms [batch, 1, n_mels, frames] (lab.data.audio.log_mel of "
             "clip_seconds of audio, standardised with the training split's mean and std) -> logits [batch, keywords]",
)
