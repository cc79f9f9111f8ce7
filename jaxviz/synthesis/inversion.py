"""Feature inversion (Mahendran & Vedaldi, "Understanding deep image representations by inverting
them", CVPR 2015 / IJCV 2016) on the one engine.

Find an image whose features at a layer match a target image's, regularised towards natural
images:

    loss(x) = C * ||phi(x) - phi_0||^2 / ||phi_0||^2
              + lambda_alpha * R_alpha(x) + lambda_tv * R_TV(x)

with the paper's regularisers and its normalisations, in jaxviz's [0, 1] units:

  * `R_alpha(x) = mean over pixels and channels of |x - mean_colour|^alpha / B^alpha`, the
    alpha-norm of the mean-subtracted image (alpha = 6), normalised by the pixel range
    `B = 80 / 255` (the paper's B = 80 in 0-255 units), so a natural image scores about 1;
  * `R_TV(x) = mean over pixels of ((dx^2 + dy^2)^(beta / 2)) / V^beta` (beta = 2, forward
    differences, the paper's `V = B / 6.5`).

The normalisations follow the paper's text as we read it (the authors' MATLAB code is not available
here to check, see ../shared/SYNTHESIS.md section 12). Defaults: C = 100, both lambdas 1, Adam
(learning rate 0.02) on pixels clipped to [0, 1] after every step (the paper used momentum SGD),
a grey start with a little noise.

`invert_layers` inverts one image from several layers at once: each layer is its own experiment of
one engine call (every experiment runs the network to the deepest of them and reads its own layer),
so "every layer of the network for one image" is one compiled program.

    res = inversion.invert(model, params, images, layer="relu3_3", key=jax.random.key(0))
    res = inversion.invert_layers(model, params, image, ("relu1_2", "relu3_3", "fc7"), key=key)
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.models.base import Model
from jaxviz.synthesis import engine, losses, param, regularizers

Array = jax.Array

#: The paper's pixel range B = 80 (0-255 units) and V = B / 6.5, in [0, 1] units.
PIXEL_RANGE = 80.0 / 255.0
TV_RANGE = PIXEL_RANGE / 6.5


class InversionResult(NamedTuple):
    """What `invert` / `invert_layers` return (E experiments).

    Attributes:
      images: `[E, H, W, C]` in [0, 1], the reconstructions.
      losses: `[steps, E]` total loss per step.
      feature_error: `[E]` final `||phi(x) - phi_0||^2 / ||phi_0||^2` at each experiment's layer.
      layers: the layer each experiment inverted.
    """

    images: Array
    losses: Array
    feature_error: Array
    layers: tuple


@functools.lru_cache(maxsize=None)
def default_optimizer(learning_rate: float = 0.02) -> optax.GradientTransformation:
    """Adam, then clip the pixels to [0, 1] (cached: the same settings reuse one compilation)."""
    return optax.chain(optax.adam(learning_rate), regularizers.clip_to_range(0.0, 1.0))


def alpha_prior(images: Array, alpha: float = 6.0) -> Array:
    """`[B, H, W, C] -> [B]`: mean of `|x - mean colour|^alpha / PIXEL_RANGE^alpha`."""
    centred = images - jnp.mean(images, axis=(1, 2), keepdims=True)
    return jnp.mean(jnp.abs(centred / PIXEL_RANGE) ** alpha, axis=(1, 2, 3))


def tv_prior(images: Array, beta: float = 2.0) -> Array:
    """`[B, H, W, C] -> [B]`: mean over pixels of `((dx^2 + dy^2) / V^2)^(beta / 2)` (forward
    differences on the `(H-1) x (W-1)` grid, summed over channels inside the power as the paper):
    `losses.total_variation(images / V, form="beta", beta=beta)`."""
    return losses.total_variation(images / TV_RANGE, form="beta", beta=beta)


def _feature_errors(model: Model, layers: tuple, params, images: Array, features: dict) -> Array:
    """`[N, L]`: `||phi_l(x) - target_l||^2 / ||target_l||^2` for each layer."""
    acts = model.apply(params, images, until=max(layers, key=model.index))
    cols = []
    for layer in layers:
        f = acts[layer].reshape(images.shape[0], -1)
        t = features[layer].reshape(images.shape[0], -1).astype(f.dtype)
        norm = jnp.maximum(jnp.sum(jnp.square(t), axis=1), jnp.finfo(f.dtype).tiny)
        cols.append(jnp.sum(jnp.square(f - t), axis=1) / norm)
    return jnp.stack(cols, axis=1)


def _inversion_loss(static, consts, targets, images, key, step):
    model, layers, alpha, beta = static
    errors = _feature_errors(model, layers, consts["params"], images, targets["features"])
    data = jnp.sum(jnp.where(targets["mask"], errors, 0.0), axis=1)
    w = consts["weights"]
    return w["data"] * data + w["alpha"] * alpha_prior(images, alpha) + w["tv"] * tv_prior(images, beta)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _features_of(model: Model, layers: tuple, params, images: Array) -> dict:
    acts = model.apply(params, images, until=max(layers, key=model.index))
    return {layer: acts[layer] for layer in layers}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _final_errors(model: Model, layers: tuple, params, images, features, mask):
    errors = _feature_errors(model, layers, params, images, features)
    return jnp.sum(jnp.where(mask, errors, 0.0), axis=1)


def _check_weight(value, name: str) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return v


def _run(model, params, images, features, layers, mask, *, key, steps, data_weight, alpha, alpha_weight, beta,
         tv_weight, learning_rate, init, loop, callback) -> InversionResult:
    n, h, w, c = images.shape
    if not (np.isfinite(alpha) and alpha >= 1):
        raise ValueError(f"alpha must be a number >= 1; got {alpha!r}")
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive number; got {beta!r}")
    weights = {
        "data": _check_weight(data_weight, "data_weight"),
        "alpha": _check_weight(alpha_weight, "alpha_weight"),
        "tv": _check_weight(tv_weight, "tv_weight"),
    }
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number; got {learning_rate!r}")
    px = param.Pixels((h, w, c), squash="clip")
    if init is None:
        keys = key if (hasattr(key, "shape") and key.shape == (n,)) else jax.random.split(key, n)
        raw0 = jax.vmap(lambda k: px.init(k, 1)[0])(keys)
    else:
        model.check_images(init)
        if init.shape != images.shape:
            raise ValueError(f"init must have the shape of the experiments {images.shape}; got {init.shape}")
        raw0 = px.from_images(init)
    consts = {"params": model.frozen(params), "weights": jax.tree_util.tree_map(lambda v: jnp.float32(v), weights)}
    targets = {"features": features, "mask": mask}
    res = engine.optimize(
        _inversion_loss, consts, raw0, default_optimizer(float(learning_rate)), steps=steps, key=key, param=px,
        targets=targets, static=(model, layers, float(alpha), float(beta)), loop=loop, callback=callback,
    )
    err = _final_errors(model, layers, params, res.images, features, mask)
    chosen = tuple(layers[int(i)] for i in np.argmax(np.asarray(mask), axis=1))
    return InversionResult(res.images, res.losses, err, chosen)


def invert(
    model: Model,
    params,
    images: Array,
    *,
    layer: str,
    key: Array,
    steps: int = 200,
    data_weight: float = 100.0,
    alpha: float = 6.0,
    alpha_weight: float = 1.0,
    beta: float = 2.0,
    tv_weight: float = 1.0,
    learning_rate: float = 0.02,
    init: Optional[Array] = None,
    loop: str = "auto",
    callback: Optional[Callable] = None,
) -> InversionResult:
    """Reconstruct each image from its features at `layer` (each image its own experiment).

    Args:
      model, params: the network.
      images: `[E, H, W, C]` in [0, 1]; their features at `layer` are the targets.
      layer: any layer of `model` (spatial or fully connected).
      key: one key (split into E) or `[E]` keys: the random start (grey 0.5 + 0.01 noise).
      steps: optimisation steps.
      data_weight: C, the weight of the normalised feature error.
      alpha, alpha_weight: exponent and weight of the alpha-norm prior.
      beta, tv_weight: exponent and weight of the total-variation prior.
      learning_rate: Adam's learning rate (pixels in [0, 1]).
      init: optional start images `[E, H, W, C]` instead of grey noise.
      loop: the engine's loop mode; callback: the engine's progress callback.

    Returns:
      `InversionResult`.
    """
    model.check_images(images)
    model.layer(layer)  # UnknownLayerError naming the valid layers
    layers = (layer,)
    features = _features_of(model, layers, params, jnp.asarray(images))
    mask = jnp.ones((images.shape[0], 1), bool)
    return _run(model, params, images, features, layers, mask, key=key, steps=steps, data_weight=data_weight,
                alpha=alpha, alpha_weight=alpha_weight, beta=beta, tv_weight=tv_weight,
                learning_rate=learning_rate, init=init, loop=loop, callback=callback)


def invert_layers(
    model: Model,
    params,
    image: Array,
    layers: Sequence[str],
    *,
    key: Array,
    steps: int = 200,
    data_weight: float = 100.0,
    alpha: float = 6.0,
    alpha_weight: float = 1.0,
    beta: float = 2.0,
    tv_weight: float = 1.0,
    learning_rate: float = 0.02,
    loop: str = "auto",
    callback: Optional[Callable] = None,
) -> InversionResult:
    """Reconstruct ONE image from each of several layers in one engine call.

    Args:
      image: `[1, H, W, C]` (or `[H, W, C]`) in [0, 1].
      layers: layer names; experiment `i` inverts `layers[i]` (duplicates allowed: e.g. several
        seeds of one layer).
      key: one key (split into E = len(layers)) or `[E]` keys.
      The other arguments as `invert`.

    Returns:
      `InversionResult` with E = `len(layers)` experiments, in the order of `layers`.
    """
    image = jnp.asarray(image)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"invert_layers takes one image [1, H, W, C] or [H, W, C]; got shape {image.shape}")
    model.check_images(image)
    layers = tuple(layers)
    if not layers:
        raise ValueError("give at least one layer")
    for layer in layers:
        model.layer(layer)
    unique = tuple(dict.fromkeys(layers))
    e = len(layers)
    feats = _features_of(model, unique, params, image)
    features = {k: jnp.broadcast_to(v, (e, *v.shape[1:])) for k, v in feats.items()}
    mask = jnp.asarray([[u == layer for u in unique] for layer in layers], bool)
    images = jnp.broadcast_to(image, (e, *image.shape[1:]))
    res = _run(model, params, images, features, unique, mask, key=key, steps=steps, data_weight=data_weight,
               alpha=alpha, alpha_weight=alpha_weight, beta=beta, tv_weight=tv_weight,
               learning_rate=learning_rate, init=None, loop=loop, callback=callback)
    return res._replace(layers=layers)


def psnr(reconstructions: Array, images: Array) -> Array:
    """`[N]` peak signal-to-noise ratio in dB of images in [0, 1]: `-10 log10(mean squared error)`."""
    mse = jnp.mean(jnp.square(reconstructions - images).reshape(reconstructions.shape[0], -1), axis=1)
    return -10.0 * jnp.log10(mse)


__all__ = [
    "InversionResult", "PIXEL_RANGE", "TV_RANGE", "alpha_prior", "default_optimizer", "invert",
    "invert_layers", "psnr", "tv_prior",
]
