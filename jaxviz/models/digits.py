"""The small VGG-style network for scikit-learn's handwritten digits (architecture only, for now)."""

from __future__ import annotations

from jaxviz.models import register
from jaxviz.models.vgg import VGGConfig, make_vgg

DIGITS_CONFIG = VGGConfig(
    convs=(32, 32, "M", 64, 64, "M", 128, 128, "M"),
    hidden=(256,),
    num_classes=10,
    pooled_size=(4, 4),
)


def digits_model():
    return make_vgg(
        "digits",
        DIGITS_CONFIG,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=(32, 32),
        class_names=tuple(str(i) for i in range(10)),
    )


register("digits", digits_model)
