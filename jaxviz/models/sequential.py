"""Feed-forward CNNs described by a list of `LayerSpec`s: one interpreter for VGG, AlexNet and the
small digits network.

Parameters are a flat dict keyed by layer name:
  conv: `{"kernel": [kh, kw, C_in, C_out], "bias": [C_out]}` (HWIO);
  bn:   `{"scale", "bias", "mean", "var"}`, each `[C]` (running statistics, inference mode);
  fc:   `{"kernel": [D_in, D_out], "bias": [D_out]}`. The first fully connected layer after a
        spatial map takes the map flattened in NHWC (H, W, C) order.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from jaxviz.models import layers as L
from jaxviz.models.base import LayerSpec, Model


def apply_layers(specs: Sequence[LayerSpec], params, x, *, until=None, relu=jax.nn.relu, pool="max") -> dict:
    """Run `specs` in order on preprocessed `x` `[N, H, W, C]`; see `Model.apply`."""
    acts = {}
    for spec in specs:
        if spec.kind == "conv":
            x = L.conv2d(x, **params[spec.name], stride=spec.stride, padding=spec.padding)
        elif spec.kind == "bn":
            x = L.batch_norm(x, **params[spec.name])
        elif spec.kind == "relu":
            x = relu(x)
        elif spec.kind == "pool":
            pool_fn = L.max_pool if pool == "max" else L.avg_pool
            x = pool_fn(x, spec.kernel, spec.stride)
        elif spec.kind == "adaptive_avgpool":
            x = L.adaptive_avg_pool(x, spec.output_size)
        elif spec.kind == "fc":
            if x.ndim == 4:
                x = x.reshape(x.shape[0], -1)
            x = L.linear(x, **params[spec.name])
        else:
            raise ValueError(f"unknown layer kind {spec.kind!r} for layer {spec.name!r}")
        acts[spec.name] = x
        if spec.name == until:
            break
    return acts


def _fan(shape):
    """(fan_in, fan_out) like torch: kernels [kh, kw, in, out] or [in, out]."""
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def param_shapes(specs: Sequence[LayerSpec], in_channels: int) -> dict:
    """`{layer: {param: shape}}` implied by `specs`.

    The first fc layer after the convolutional trunk must follow an `adaptive_avgpool` layer, whose
    fixed output size makes the flattened feature count independent of the input size.
    """
    shapes = {}
    features = in_channels  # channels of a spatial map, or features of a vector
    pooled = None  # (h, w) fixed by an adaptive pool, until the flatten
    is_spatial = True
    for spec in specs:
        if spec.kind == "conv":
            shapes[spec.name] = {"kernel": (*spec.kernel, features, spec.channels), "bias": (spec.channels,)}
            features = spec.channels
        elif spec.kind == "bn":
            shapes[spec.name] = {k: (features,) for k in ("scale", "bias", "mean", "var")}
        elif spec.kind == "adaptive_avgpool":
            pooled = spec.output_size
        elif spec.kind == "fc":
            if is_spatial:
                if pooled is None:
                    raise ValueError(f"fc layer {spec.name!r} follows a spatial map of unknown size: put an "
                                     "adaptive_avgpool layer before it")
                features = pooled[0] * pooled[1] * features
                is_spatial = False
            shapes[spec.name] = {"kernel": (features, spec.channels), "bias": (spec.channels,)}
            features = spec.channels
    return shapes


def init_params(key, specs: Sequence[LayerSpec], in_channels: int, *, scheme: str, dtype=jnp.float32) -> dict:
    """Random parameters for `specs`.

    Schemes (as in torchvision, so random networks behave like torchvision's `weights=None`):
      `"vgg"`: conv kernels Kaiming-normal (fan_out, ReLU gain), biases 0; fc weights N(0, 0.01),
        biases 0; batch norm scale 1, bias 0, running mean 0, running var 1.
      `"torch_default"`: torch's default `Conv2d`/`Linear` init, U(-b, b) with `b = 1 / sqrt(fan_in)`
        for weights and biases (torchvision's AlexNet uses it).
    """
    shapes = param_shapes(specs, in_channels)
    params = {}
    keys = jax.random.split(key, len(shapes))
    for k, (name, pshapes) in zip(keys, shapes.items()):
        kind = next(s.kind for s in specs if s.name == name)
        kw, kb = jax.random.split(k)
        if kind == "bn":
            c = pshapes["scale"][0]
            params[name] = {
                "scale": jnp.ones((c,), dtype),
                "bias": jnp.zeros((c,), dtype),
                "mean": jnp.zeros((c,), dtype),
                "var": jnp.ones((c,), dtype),
            }
            continue
        wshape, bshape = pshapes["kernel"], pshapes["bias"]
        fan_in, fan_out = _fan(wshape)
        if scheme == "vgg":
            if kind == "conv":
                w = jax.random.normal(kw, wshape, dtype) * math.sqrt(2.0 / fan_out)
            else:
                w = jax.random.normal(kw, wshape, dtype) * 0.01
            b = jnp.zeros(bshape, dtype)
        elif scheme == "torch_default":
            bound = 1.0 / math.sqrt(fan_in)
            w = jax.random.uniform(kw, wshape, dtype, -bound, bound)
            b = jax.random.uniform(kb, bshape, dtype, -bound, bound)
        else:
            raise ValueError(f"unknown init scheme {scheme!r}")
        params[name] = {"kernel": w, "bias": b}
    return params


def min_input_size(specs: Sequence[LayerSpec]) -> tuple[int, int]:
    """Smallest `(H, W)` for which every spatial layer of `specs` has at least one output pixel."""
    need = [1, 1]
    for spec in reversed([s for s in specs if s.spatial]):
        for a in range(2):
            # Output size o needs input >= (o - 1) * s + k - 2p.
            need[a] = max(1, (need[a] - 1) * spec.stride[a] + spec.kernel[a] - 2 * spec.padding[a])
    return tuple(need)


def sequential_model(
    name: str,
    specs: Sequence[LayerSpec],
    *,
    init_scheme: str,
    in_channels: int = 3,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    input_size=(224, 224),
    logits: Optional[str] = None,
    features: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
) -> Model:
    """A `Model` whose `apply` interprets `specs` (see `apply_layers`)."""
    specs = tuple(specs)

    def apply_fn(params, x, *, until=None, relu=jax.nn.relu, pool="max"):
        return apply_layers(specs, params, x, until=until, relu=relu, pool=pool)

    def init_fn(key):
        return init_params(key, specs, in_channels, scheme=init_scheme)

    return Model(
        name=name,
        layers=specs,
        apply_fn=apply_fn,
        init_fn=init_fn,
        mean=tuple(mean),
        std=tuple(std),
        input_size=tuple(input_size),
        min_size=min_input_size(specs),
        in_channels=in_channels,
        logits=logits,
        features=features,
        class_names=None if class_names is None else tuple(class_names),
        swappable_relu=True,
        pool_modes=("max", "avg"),
    )


