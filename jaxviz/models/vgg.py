"""VGG networks as torchvision defines them, built from a config of conv widths and pools.

`vgg_layers(config)` turns e.g. `(64, 64, "M", 128, 128, "M", ...)` plus hidden fc widths into named
`LayerSpec`s: convolutions `conv{block}_{i}` (3x3, stride 1, padding 1), optional `bn{block}_{i}`,
`relu{block}_{i}`, pools `pool{block}` (2x2, stride 2), then `avgpool` (torch's
`AdaptiveAvgPool2d`), then fully connected `fc{n}`/`relu{n}` numbered on from the last block
(VGG: `fc6`, `relu6`, `fc7`, `relu7`, `fc8`). Dropout is omitted: it is the identity at inference.
The same builder makes the small digits network (`jaxviz.models.digits`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

from jaxviz.models.base import LayerSpec, Model
from jaxviz.models.sequential import sequential_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's `cfgs` A, B, D, E.
CONV_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


@dataclasses.dataclass(frozen=True)
class VGGConfig:
    """A VGG-style network.

    Attributes:
      convs: conv output widths in order, `"M"` for a 2x2/2 max pool ending a block.
      hidden: widths of the hidden fully connected layers (VGG: `(4096, 4096)`).
      num_classes: width of the last fc layer (the class scores).
      batch_norm: batch norm after every conv (torchvision's `_bn` variants).
      pooled_size: output size of the adaptive average pool before the classifier.
      in_channels: image channels.
    """

    convs: tuple[Union[int, str], ...]
    hidden: tuple[int, ...] = (4096, 4096)
    num_classes: int = 1000
    batch_norm: bool = False
    pooled_size: tuple[int, int] = (7, 7)
    in_channels: int = 3


def vgg_layers(config: VGGConfig) -> tuple[LayerSpec, ...]:
    """Named `LayerSpec`s for `config` (see the module docstring for the naming)."""
    specs = []
    block, index = 1, 0
    for item in config.convs:
        if item == "M":
            specs.append(LayerSpec(f"pool{block}", "pool", specs[-1].channels if specs else None, (2, 2), (2, 2)))
            block, index = block + 1, 0
            continue
        if not isinstance(item, int) or item <= 0:
            raise ValueError(f"conv widths must be positive integers or 'M'; got {item!r}")
        index += 1
        suffix = f"{block}_{index}"
        specs.append(LayerSpec(f"conv{suffix}", "conv", item, (3, 3), (1, 1), (1, 1)))
        if config.batch_norm:
            specs.append(LayerSpec(f"bn{suffix}", "bn", item))
        specs.append(LayerSpec(f"relu{suffix}", "relu", item))
    if index != 0:
        block += 1  # a trailing conv block without a pool still counts
    channels = specs[-1].channels
    specs.append(LayerSpec("avgpool", "adaptive_avgpool", channels, output_size=tuple(config.pooled_size)))
    n = block
    for width in config.hidden:
        specs.append(LayerSpec(f"fc{n}", "fc", width))
        specs.append(LayerSpec(f"relu{n}", "relu", width))
        n += 1
    specs.append(LayerSpec(f"fc{n}", "fc", config.num_classes))
    return tuple(specs)


def make_vgg(
    name: str,
    config: VGGConfig,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    input_size=(224, 224),
    class_names: Optional[Sequence[str]] = None,
    features: Optional[str] = None,
) -> Model:
    """A `Model` for any `VGGConfig`. `features` defaults to the last hidden fc layer (VGG: `fc7`)."""
    specs = vgg_layers(config)
    fcs = [s.name for s in specs if s.kind == "fc"]
    return sequential_model(
        name,
        specs,
        init_scheme="vgg",
        in_channels=config.in_channels,
        mean=mean,
        std=std,
        input_size=input_size,
        logits=fcs[-1],
        features=features or (fcs[-2] if len(fcs) > 1 else "avgpool"),
        class_names=class_names,
    )


def vgg_config(arch: str) -> VGGConfig:
    """torchvision's config for `arch` in `vgg11`, ..., `vgg19_bn`."""
    base, bn = (arch[:-3], True) if arch.endswith("_bn") else (arch, False)
    if base not in CONV_CONFIGS:
        raise ValueError(f"unknown VGG architecture {arch!r}")
    return VGGConfig(CONV_CONFIGS[base], batch_norm=bn)
