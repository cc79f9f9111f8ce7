"""Models: pure `apply(params, images) -> {layer: activation}` functions with their descriptions.

    from jaxviz import models
    model = models.get("vgg16")
    params = model.init(jax.random.key(0))          # or jaxviz.load_params("vgg16.npz")
    acts = model.apply(params, images, until="relu4_2")

Architectures: `vgg11`, `vgg13`, `vgg16`, `vgg19` and their `_bn` variants, `alexnet` (all exactly
as torchvision defines them), and `digits` (a small VGG-style net for scikit-learn's digits; its
trained parameters come from `jaxviz.pretrained.digits_params`).
A user's own Flax module becomes a `Model` through `from_flax`.
"""

from __future__ import annotations

import functools
from typing import Callable

from jaxviz.models.alexnet import make_alexnet
from jaxviz.models.base import (
    SPATIAL_KINDS,
    LayerSpec,
    Model,
    ReceptiveField,
    UnknownLayerError,
    describe,
    receptive_field,
    spatial_shape,
)
from jaxviz.models.digits import digits_model
from jaxviz.models.imagenet import decode_predictions, imagenet_classes
from jaxviz.models.linen import from_flax
from jaxviz.models.vgg import CONV_CONFIGS, VGGConfig, make_vgg, vgg_config, vgg_layers

IMAGENET_ARCHITECTURES = tuple(
    [name for base in CONV_CONFIGS for name in (base, base + "_bn")] + ["alexnet"]
)

_FACTORIES: dict[str, Callable[[], Model]] = {}


def register(name: str, factory: Callable[[], Model]) -> None:
    """Make `get(name)` return `factory()` (called once, then cached)."""
    _FACTORIES[name] = factory


for _arch in IMAGENET_ARCHITECTURES:
    if _arch == "alexnet":
        register(_arch, lambda: make_alexnet(class_names=imagenet_classes()))
    else:
        register(_arch, functools.partial(lambda a: make_vgg(a, vgg_config(a), class_names=imagenet_classes()), _arch))
register("digits", digits_model)


def architectures() -> tuple[str, ...]:
    """Names `get` accepts."""
    return tuple(_FACTORIES)


@functools.lru_cache(maxsize=None)
def get(arch: str) -> Model:
    """The `Model` for `arch` (one shared object per name, so `jit` caches are reused)."""
    if arch not in _FACTORIES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(architectures())}")
    return _FACTORIES[arch]()


def init(key, arch: str):
    """Random parameters for `arch` with the shapes (and the initialisation) of its source."""
    return get(arch).init(key)


__all__ = [
    "IMAGENET_ARCHITECTURES",
    "SPATIAL_KINDS",
    "LayerSpec",
    "Model",
    "ReceptiveField",
    "UnknownLayerError",
    "VGGConfig",
    "architectures",
    "decode_predictions",
    "describe",
    "from_flax",
    "get",
    "imagenet_classes",
    "init",
    "make_alexnet",
    "make_vgg",
    "receptive_field",
    "register",
    "spatial_shape",
    "vgg_config",
    "vgg_layers",
]
