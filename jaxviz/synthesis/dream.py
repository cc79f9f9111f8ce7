"""DeepDream (Mordvintsev, Olah & Tyka 2015, `google/deepdream` `dream.ipynb`) on the one engine.

Each step maximises the squared activations of a layer (`objective_L2`: the gradient at the layer
is the activation itself, i.e. the objective is `0.5 * sum(a^2)`) or, guided, the dot product of
every position's feature vector with the guide image's best-matching feature vector
(`objective_guide`). The step is DeepDream's: a random circular shift of the image (jitter, undone
after the step: here the shift is a differentiable transform, so the gradient comes back
unshifted), `x += step_size / mean|g| * g`, then the pixels are clipped to the valid range.

Octaves: the image is shrunk `octaves - 1` times by `octave_scale` (each from the previous one,
bilinear); from the smallest up, `steps` steps run on `octave_base + detail`, and the detail the
steps added (`result - octave_base`) is enlarged (bilinear) to the next octave. DeepDream uses
`scipy.ndimage.zoom(order=1)`; `jax.image.resize("linear")` samples pixel centres (half-pixel
offsets), so the octave images differ from scipy's by interpolation detail only.

Defaults follow `dream.ipynb`: 4 octaves, scale 1.4, 10 steps per octave, jitter 32 pixels,
step 1.5 in Caffe's 0-255 units, i.e. `1.5 / 255` for jaxviz's [0, 1] images (the `/ mean|g|`
normalisation makes the mean absolute step `step_size` pixels whatever the network's scale).

    res = dream.deepdream(model, params, images, layer="relu4_3", key=jax.random.key(0))
    res.images                     # [E, H, W, C] in [0, 1]
    res.gain                       # [octaves, E]: layer mean-square after / before each octave
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.models.base import Model
from jaxviz.synthesis import engine, param, regularizers, transforms

Array = jax.Array

#: google/deepdream `make_step(step_size=1.5)` in 0-255 pixel units, for images in [0, 1].
STEP_SIZE = 1.5 / 255


class DreamResult(NamedTuple):
    """What `deepdream` returns (E experiments, O octaves).

    Attributes:
      images: `[E, H, W, C]` in [0, 1], the dream at the input size.
      octaves: tuple of O arrays `[E, h_o, w_o, C]`, the result of each octave, smallest first.
      l2_before, l2_after: `[O, E]` mean squared activation of `layer` on each octave's start image
        (base + carried detail) and on its result.
      gain: `[O, E]` = `l2_after / l2_before`.
    """

    images: Array
    octaves: tuple
    l2_before: Array
    l2_after: Array
    gain: Array


@functools.lru_cache(maxsize=None)
def dream_optimizer(step_size: float = STEP_SIZE, clip: bool = True) -> optax.GradientTransformation:
    """DeepDream's update: `x += step_size * g / mean|g|`, then clip to [0, 1] (cached, so the same
    settings reuse one compilation)."""
    parts = [regularizers.normalize_by_mean_abs(), optax.sgd(step_size)]
    if clip:
        parts.append(regularizers.clip_to_range(0.0, 1.0))
    return optax.chain(*parts)


def _features(a: Array) -> Array:
    """`[N, ..., C]` -> `[N, P, C]` feature columns (P positions; 1 for a vector layer)."""
    return a.reshape(a.shape[0], -1, a.shape[-1])


def _dream_loss(static, consts, targets, images, key, step):
    model, layer, guided = static
    a = model.apply(consts, images, until=layer)[layer]
    if not guided:
        return -0.5 * jnp.sum(jnp.square(a).reshape(a.shape[0], -1), axis=1)
    x = _features(a)  # [1, P, C]
    guide = targets["guide"]  # [1, M, C]
    best = jnp.argmax(jnp.einsum("npc,nmc->npm", x, guide), axis=-1)  # [1, P]
    chosen = jax.lax.stop_gradient(jnp.take_along_axis(guide, best[..., None], axis=1))  # [1, P, C]
    return -jnp.sum(x * chosen, axis=(1, 2))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _mean_square(model: Model, layer: str, params, images: Array) -> Array:
    a = model.apply(params, images, until=layer)[layer]
    return jnp.mean(jnp.square(a).reshape(a.shape[0], -1), axis=1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _guide_features(model: Model, layer: str, params, guide: Array) -> Array:
    return _features(model.apply(params, guide, until=layer)[layer])


def octave_sizes(size, octaves: int, octave_scale: float) -> list[tuple[int, int]]:
    """Image sizes of the octaves, largest (the input) first: each `round(previous / scale)`, as
    DeepDream's repeated `nd.zoom(prev, 1 / octave_scale)`."""
    sizes = [tuple(int(s) for s in size)]
    for _ in range(octaves - 1):
        h, w = sizes[-1]
        sizes.append((max(1, int(round(h / octave_scale))), max(1, int(round(w / octave_scale)))))
    return sizes


def _resize(x: Array, size) -> Array:
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "linear")


def _per_experiment_keys(key, n: int) -> Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if key.ndim == 0 or (not jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1):
        return jax.random.split(key, n)
    if key.shape[0] != n:
        raise ValueError(f"key must be one key or [E] = [{n}] keys (one per image); got shape {key.shape}")
    return key


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def deepdream(
    model: Model,
    params,
    images: Array,
    *,
    layer: str,
    key: Array,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 10,
    step_size: float = STEP_SIZE,
    jitter: int = 32,
    guide: Optional[Array] = None,
    clip: bool = True,
    loop: str = "auto",
    callback: Optional[Callable] = None,
) -> DreamResult:
    """DeepDream with octaves; each image of the batch is its own experiment.

    Args:
      model, params: the network (params are passed to the compiled step as arguments).
      images: `[E, H, W, C]` in [0, 1], the images to dream on.
      layer: the layer whose activations are amplified (any layer of `model`).
      key: one key (split into E) or `[E]` keys; octave `o`, step `t` of experiment e use
        `fold_in(fold_in(keys[e], o), t)` (same key, same dream; a batch equals one-by-one runs
        given the same per-image keys).
      octaves: number of scales (>= 1); `octave_scale` (> 1) the factor between them.
      steps: steps per octave (DeepDream's `iter_n`).
      step_size: mean absolute pixel change per step, in [0, 1] units (default `1.5 / 255`).
      jitter: maximum circular shift in pixels (uniform in `-jitter..jitter`); 0 for none.
      guide: optional guide image(s) `[1 or E, h, w, C]` in [0, 1] (any size the model admits):
        guided DeepDream (`objective_guide`).
      clip: clip to [0, 1] after every step (DeepDream clips to the valid pixel range).
      loop: the engine's loop mode (`jaxviz.loops`).
      callback: `callback(octave, step, losses [E], images)` (images `None`), every step.

    Returns:
      `DreamResult`.
    """
    model.check_images(images)
    spec = model.layer(layer)  # UnknownLayerError naming the valid layers
    del spec
    octaves = _positive_int(octaves, "octaves")
    steps = _positive_int(steps, "steps")
    if octaves > 1 and not (np.isfinite(octave_scale) and octave_scale > 1):
        raise ValueError(f"octave_scale must be a number > 1; got {octave_scale!r}")
    if not (np.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number; got {step_size!r}")
    if isinstance(jitter, bool) or int(jitter) != jitter or jitter < 0:
        raise ValueError(f"jitter must be a non-negative integer number of pixels; got {jitter!r}")
    n, h, w, c = images.shape
    sizes = octave_sizes((h, w), octaves, octave_scale)
    small = sizes[-1]
    if small[0] < model.min_size[0] or small[1] < model.min_size[1]:
        raise ValueError(
            f"after {octaves - 1} octave reductions by {octave_scale} the {h}x{w} images are {small[0]}x{small[1]}, "
            f"smaller than {model.name}'s minimum {model.min_size[0]}x{model.min_size[1]}: use fewer octaves, "
            "a smaller octave_scale or larger images"
        )
    if jitter and jitter >= min(small):
        raise ValueError(f"jitter {jitter} must be smaller than the smallest octave ({small[0]}x{small[1]})")
    targets = None
    if guide is not None:
        model.check_images(guide)
        if guide.shape[0] not in (1, n):
            raise ValueError(f"guide must hold 1 or E = {n} images; got shape {guide.shape}")
        feats = _guide_features(model, layer, params, jnp.asarray(guide, images.dtype))
        targets = {"guide": jnp.broadcast_to(feats, (n, *feats.shape[1:]))}
    keys = _per_experiment_keys(key, n)
    optimizer = dream_optimizer(float(step_size), bool(clip))
    jit_transform = transforms.Jitter(int(jitter), mode="roll") if jitter else None
    static = (model, layer, guide is not None)

    frozen = model.frozen(params)  # the backward kernels once for all octaves
    bases = [jnp.asarray(images)]
    for size in sizes[1:]:
        bases.append(_resize(bases[-1], size))
    detail = jnp.zeros_like(bases[-1])
    results, before, after = [], [], []
    for o, base in enumerate(reversed(bases)):
        detail = _resize(detail, base.shape[1:3])
        start = jnp.clip(base + detail, 0.0, 1.0)
        px = param.Pixels(tuple(base.shape[1:]), squash="clip")
        octave_keys = jax.vmap(lambda k, o=o: jax.random.fold_in(k, o))(keys)
        cb = None if callback is None else functools.partial(_octave_callback, callback, o)
        res = engine.optimize(
            _dream_loss, frozen, px.from_images(start), optimizer, steps=steps, key=octave_keys, param=px,
            targets=targets, transforms=jit_transform, static=static, loop=loop, callback=cb,
        )
        before.append(_mean_square(model, layer, params, start))
        after.append(_mean_square(model, layer, params, res.images))
        results.append(res.images)
        detail = res.images - base
    before, after = jnp.stack(before), jnp.stack(after)
    return DreamResult(results[-1], tuple(results), before, after, after / before)


def _octave_callback(callback, octave, step, losses, images):
    callback(octave, step, losses, images)


__all__ = ["DreamResult", "STEP_SIZE", "deepdream", "dream_optimizer", "octave_sizes"]
