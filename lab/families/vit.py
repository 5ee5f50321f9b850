"""The ViT family: a vision transformer over image patches, with a CLS token (the digits).

    from lab.families.vit import FAMILY
    FAMILY.blocks                            # (Block,): FSDP wraps them, checkpointing recomputes them
"""

from __future__ import annotations

from lab.families.record import ModelFamily, Servable
from lab.families.cnn import IMAGE_EXPLAIN, images, module
from lab.families.gpt import STRUCTURE, narrow
from lab.models.gpt import Block
from lab.models.vision import ViT, ViTConfig
from lab.modules import Classifier

FAMILY = ModelFamily(
    name="vit", config=ViTConfig, model=ViT, data=("digits",), task="classifier", module=module, example=images,
    loss=Classifier.loss, metric="val/accuracy", mode="max", blocks=(Block,), narrow=narrow,
    structure=STRUCTURE, explain=IMAGE_EXPLAIN, serve=Servable("image", "numbers", png=True),
    describe="A vision transformer image classifier: images [batch, 1, height, width] -> logits [batch, classes]",
)
