"""AlexNet as torchvision defines it (the single-tower "one weird trick" variant).

Layers: `conv1` (11x11/4, pad 2, 64) `relu1` `pool1` (3x3/2), `conv2` (5x5, pad 2, 192) `relu2`
`pool2`, `conv3` (3x3, 384) `relu3`, `conv4` (256) `relu4`, `conv5` (256) `relu5` `pool5`,
`avgpool` (adaptive 6x6), `fc6` `relu6` `fc7` `relu7` `fc8`. Dropout is omitted (identity at
inference).
"""

from __future__ import annotations

from typing import Optional, Sequence

from jaxviz.models.base import LayerSpec, Model
from jaxviz.models.sequential import sequential_model
from jaxviz.models.vgg import IMAGENET_MEAN, IMAGENET_STD


def alexnet_layers(num_classes: int = 1000) -> tuple[LayerSpec, ...]:
    """torchvision AlexNet's layers as named `LayerSpec`s (see the module docstring)."""
    pool = dict(kernel=(3, 3), stride=(2, 2))
    return (
        LayerSpec("conv1", "conv", 64, (11, 11), (4, 4), (2, 2)),
        LayerSpec("relu1", "relu", 64),
        LayerSpec("pool1", "pool", 64, **pool),
        LayerSpec("conv2", "conv", 192, (5, 5), (1, 1), (2, 2)),
        LayerSpec("relu2", "relu", 192),
        LayerSpec("pool2", "pool", 192, **pool),
        LayerSpec("conv3", "conv", 384, (3, 3), (1, 1), (1, 1)),
        LayerSpec("relu3", "relu", 384),
        LayerSpec("conv4", "conv", 256, (3, 3), (1, 1), (1, 1)),
        LayerSpec("relu4", "relu", 256),
        LayerSpec("conv5", "conv", 256, (3, 3), (1, 1), (1, 1)),
        LayerSpec("relu5", "relu", 256),
        LayerSpec("pool5", "pool", 256, **pool),
        LayerSpec("avgpool", "adaptive_avgpool", 256, output_size=(6, 6)),
        LayerSpec("fc6", "fc", 4096),
        LayerSpec("relu6", "relu", 4096),
        LayerSpec("fc7", "fc", 4096),
        LayerSpec("relu7", "relu", 4096),
        LayerSpec("fc8", "fc", num_classes),
    )


def make_alexnet(
    num_classes: int = 1000,
    *,
    class_names: Optional[Sequence[str]] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Model:
    """torchvision's AlexNet as a `Model` (random init: torch's default `Conv2d`/`Linear` scheme)."""
    return sequential_model(
        "alexnet",
        alexnet_layers(num_classes),
        init_scheme="torch_default",
        mean=mean,
        std=std,
        input_size=(224, 224),
        logits="fc8",
        features="fc7",
        class_names=class_names,
    )
