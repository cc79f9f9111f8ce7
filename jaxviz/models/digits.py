"""The small VGG-style network for scikit-learn's handwritten digits: the architecture only.

    from jaxviz import models, pretrained
    model = models.get("digits")
    params = pretrained.digits_params()     # trained here once (32-65 s on 2 idle CPU cores), then cached

Architecture: the VGG builder (`jaxviz.models.vgg`) with convs 32-32-M-64-64-M-128-128-M (3x3,
padding 1), `avgpool` (4x4, the identity at 32x32 input), `fc4` (256) + `relu4`, `fc5` (10 class
scores). Inputs are 32x32 RGB digits from `jaxviz.data.load_digits` (ink bright, in [0, 1]).

`fc4` reads the 4x4 `pool3` map position by position, so Grad-CAM at its default layer (`relu3_2`),
whose channel weights average the gradient over positions, does not point at the evidence on this
network; earlier layers (`relu1_2`) do. tests/test_meaning.py records the measurements, over
several trainings, and why a global-average-pooling head was not adopted instead.

No weights are shipped and nothing here trains or touches files: `jaxviz.pretrained` trains the
network with a fixed recipe and caches the result.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from jaxviz.models.base import Model
from jaxviz.models.vgg import VGGConfig, make_vgg

DIGITS_CONFIG = VGGConfig(
    convs=(32, 32, "M", 64, 64, "M", 128, 128, "M"),
    hidden=(256,),
    num_classes=10,
    pooled_size=(4, 4),
)
# Statistics of the upsampled digits (pixel mean 0.31, std 0.32): centred, unit-scale inputs train
# faster than with (0.5, 0.5).
DIGITS_MEAN = (0.3, 0.3, 0.3)
DIGITS_STD = (0.3, 0.3, 0.3)
DIGITS_SIZE = 32


@functools.lru_cache(maxsize=None)
def digits_model() -> Model:
    """The digits `Model` (random weights until given `jaxviz.pretrained.digits_params()`); one shared
    object, the same as `models.get("digits")`, so `jit` caches are reused."""
    return make_vgg(
        "digits",
        DIGITS_CONFIG,
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        input_size=(DIGITS_SIZE, DIGITS_SIZE),
        class_names=tuple(str(i) for i in range(10)),
    )


def init_digits(seed: int) -> dict:
    """Initial weights of the digits network, drawn with numpy from `seed`.

    The same distributions as `models.get("digits").init` (torchvision's VGG scheme: conv kernels
    Kaiming-normal with fan_out, fully connected weights N(0, 0.01), biases 0), but drawn by numpy:
    compiling JAX's threefry generator for every weight shape takes 10-25 s on a small CPU, longer
    than a third of the training itself.
    """
    model = digits_model()
    rng = np.random.default_rng(seed)
    shapes = model.param_shapes()
    params = {}
    for spec in model.layers:
        if spec.name not in shapes:
            continue
        kshape = tuple(shapes[spec.name]["kernel"].shape)
        if spec.kind == "conv":
            scale = np.sqrt(2.0 / (kshape[0] * kshape[1] * kshape[3]))
        else:
            scale = 0.01
        params[spec.name] = {
            "kernel": jnp.asarray((rng.standard_normal(kshape) * scale).astype(np.float32)),
            "bias": jnp.zeros(tuple(shapes[spec.name]["bias"].shape), jnp.float32),
        }
    return params
