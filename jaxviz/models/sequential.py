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
from jax import lax

from jaxviz.models import layers as L
from jaxviz.models.base import LayerSpec, Model


def apply_layers(specs: Sequence[LayerSpec], params, x, *, until=None, relu=jax.nn.relu, pool="max", perturb=None) -> dict:
    """Run `specs` in order on preprocessed `x` `[N, H, W, C]`; see `Model.apply`."""
    acts = {}
    perturb = perturb or {}
    fold = None  # (map, output_size) of an adaptive pool that the next fc layer can fold in
    for spec in specs:
        unpooled, fold = fold, None
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
            if spec.name not in perturb and L.pooling_folds(x.shape[1:3], spec.output_size):
                fold = (x, spec.output_size)
            x = L.adaptive_avg_pool(x, spec.output_size)
        elif spec.kind == "fc":
            if unpooled is not None:
                # The pooled map itself stays in `acts` (unused values cost nothing under jit).
                x = L.pooled_linear(unpooled[0], **params[spec.name], output_size=unpooled[1])
            else:
                if x.ndim == 4:
                    x = x.reshape(x.shape[0], -1)
                x = L.linear(x, **params[spec.name])
        else:
            raise ValueError(f"unknown layer kind {spec.kind!r} for layer {spec.name!r}")
        if spec.name in perturb:
            x = x + perturb[spec.name]
        acts[spec.name] = x
        if spec.name == until:
            break
    return acts


def frozen_params(specs: Sequence[LayerSpec], params) -> dict:
    """`params` with `"kernel_w": layers.winograd_kernel(kernel)` added to every convolution that may
    take the Winograd path (`layers.winograd_applies` for any map size) and `"kernel_t":
    layers.backward_kernel(kernel)` to every other convolution whose input gradient can use it
    (`layers.frozen_kernel_applies`); see `Model.frozen`."""
    convs = [spec for spec in specs if spec.kind == "conv" and spec.name in params]
    names_w = [spec.name for spec in convs
               if L.winograd_applies(jnp.shape(params[spec.name]["kernel"]), spec.stride, spec.padding,
                                     jnp.result_type(params[spec.name]["kernel"]))]
    # A layer with `kernel_w` gets no `kernel_t`: where it takes another path (im2col on maps of one
    # tile, the direct convolution for another dtype) `conv2d` uses its kernel as it is (VGG16 float32:
    # 57 MB less to hold).
    names = [spec.name for spec in convs if spec.name not in names_w
             and L.frozen_kernel_applies(jnp.shape(params[spec.name]["kernel"]), spec.stride)]
    # One compiled program for the kernels alone: the other weights are not touched (not copied).
    kernels_t, kernels_w = _frozen_kernels([params[name]["kernel"] for name in names],
                                           [params[name]["kernel"] for name in names_w])
    out = dict(params)
    for name, kernel_t in zip(names, kernels_t):
        out[name] = {**params[name], "kernel_t": kernel_t}
    for name, kernel_w in zip(names_w, kernels_w):
        out[name] = {**out[name], "kernel_w": kernel_w}
    return out


#: Layer kinds that act on each channel separately: a layer after them still has the channels of the
#: layer before them, so `restricted_params` can look through them to the convolution or dense layer.
_CHANNELWISE = ("relu", "bn", "pool", "adaptive_avgpool")


def restricted_params(specs: Sequence[LayerSpec], params, layer: str, channels) -> Optional[dict]:
    """`params` with the convolution or dense layer that produces `layer`'s channels (through
    channel-wise layers, `_CHANNELWISE`) gathered at `channels` `[K]`: its kernel and bias, `frozen`'s
    backward kernel, and the batch-norm parameters in between; `None` if `layer` is not reached that
    way. See `Model.restricted`."""
    channels = jnp.asarray(channels)
    names = [spec.name for spec in specs]
    changed = {}
    for spec in reversed(specs[: names.index(layer) + 1]):
        if spec.kind == "bn":
            changed[spec.name] = {k: jnp.take(v, channels, axis=0) for k, v in params[spec.name].items()}
        elif spec.kind in ("conv", "fc"):
            p = params[spec.name]
            new = dict(p, kernel=jnp.take(p["kernel"], channels, axis=-1), bias=jnp.take(p["bias"], channels, axis=0))
            if "kernel_t" in p:  # `frozen`: [kh, kw, C_out, C_in]
                new["kernel_t"] = jnp.take(p["kernel_t"], channels, axis=2)
            if "kernel_w" in p:  # `frozen`: [4, 4, C_in, C_out]
                new["kernel_w"] = jnp.take(p["kernel_w"], channels, axis=3)
            changed[spec.name] = new
            return {**params, **changed}
        elif spec.kind not in _CHANNELWISE:
            return None
    return None


@jax.jit
def _frozen_kernels(kernels_t, kernels_w):
    return [L.backward_kernel(k) for k in kernels_t], [L.winograd_kernel(k) for k in kernels_w]


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


#: Random numbers per draw in `init_params`: chunk `j` of the flat vector is drawn with
#: `fold_in(key, j)`. One draw of all of VGG16's 138M numbers needed 2.2 GB of XLA temporaries (peak
#: resident 3.0 GB for 0.55 GB of weights); chunks filled in place in a `fori_loop` keep the
#: temporaries to a few chunk-sized buffers.
_INIT_CHUNK = 1 << 22


def _chunked_draws(key, total: int, dist: str, dtype):
    """`total` numbers, N(0, 1) (`dist="normal"`) or U(-1, 1) (`"uniform"`), drawn in `_INIT_CHUNK`-sized
    chunks (chunk `j` from `fold_in(key, j)`) into one flat vector."""
    n = max(1, -(-total // _INIT_CHUNK))

    def draw(j):
        k = jax.random.fold_in(key, j)
        if dist == "normal":
            return jax.random.normal(k, (_INIT_CHUNK,), dtype)
        return jax.random.uniform(k, (_INIT_CHUNK,), dtype, -1.0, 1.0)

    def body(j, flat):
        return lax.dynamic_update_slice(flat, draw(j), (j * _INIT_CHUNK,))

    flat = lax.fori_loop(0, n, body, jnp.zeros((n * _INIT_CHUNK,), dtype))
    return flat[:total]


def init_params(key, specs: Sequence[LayerSpec], in_channels: int, *, scheme: str, dtype=jnp.float32) -> dict:
    """Random parameters for `specs`.

    Schemes (as in torchvision, so random networks behave like torchvision's `weights=None`):
      `"vgg"`: conv kernels Kaiming-normal (fan_out, ReLU gain), biases 0; fc weights N(0, 0.01),
        biases 0; batch norm scale 1, bias 0, running mean 0, running var 1.
      `"torch_default"`: torch's default `Conv2d`/`Linear` init, U(-b, b) with `b = 1 / sqrt(fan_in)`
        for weights and biases (torchvision's AlexNet uses it).
    """
    shapes = param_shapes(specs, in_channels)
    kinds = {s.name: s.kind for s in specs}
    # Which arrays are random, and how each is scaled. All random numbers come from ONE flat vector
    # (drawn in chunks, `_chunked_draws`), sliced per array: compiling the PRNG once instead of once
    # per shape makes `init` several times faster.
    random_arrays = []  # (layer, param, shape, scale)
    for name, pshapes in shapes.items():
        if kinds[name] == "bn":
            continue
        fan_in, fan_out = _fan(pshapes["kernel"])
        if scheme == "vgg":
            std = math.sqrt(2.0 / fan_out) if kinds[name] == "conv" else 0.01
            random_arrays.append((name, "kernel", pshapes["kernel"], std))
        elif scheme == "torch_default":
            bound = 1.0 / math.sqrt(fan_in)
            random_arrays.append((name, "kernel", pshapes["kernel"], bound))
            random_arrays.append((name, "bias", pshapes["bias"], bound))
        else:
            raise ValueError(f"unknown init scheme {scheme!r}")
    total = sum(math.prod(shape) for _, _, shape, _ in random_arrays)
    draws = _chunked_draws(key, total, "normal" if scheme == "vgg" else "uniform", dtype)
    params = {}
    for name, pshapes in shapes.items():
        params[name] = {p: jnp.zeros(shape, dtype) for p, shape in pshapes.items()}
        if kinds[name] == "bn":
            params[name]["scale"] = jnp.ones(pshapes["scale"], dtype)
            params[name]["var"] = jnp.ones(pshapes["var"], dtype)
    start = 0
    for name, param, shape, scale in random_arrays:
        size = math.prod(shape)
        params[name][param] = draws[start : start + size].reshape(shape) * scale
        start += size
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

    def apply_fn(params, x, *, until=None, relu=jax.nn.relu, pool="max", perturb=None):
        return apply_layers(specs, params, x, until=until, relu=relu, pool=pool, perturb=perturb)

    # Jitted: drawing VGG16's 138M numbers op by op is tens of times slower than one compiled program.
    @jax.jit
    def init_fn(key):
        return init_params(key, specs, in_channels, scheme=init_scheme)

    return Model(
        name=name,
        layers=specs,
        apply_fn=apply_fn,
        init_fn=init_fn,
        frozen_fn=lambda params: frozen_params(specs, params),
        restrict_fn=lambda params, layer, channels: restricted_params(specs, params, layer, channels),
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


