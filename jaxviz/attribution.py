"""Attribution: which pixels (or units) a network's score depends on.

Every technique takes `(model, params, images, target, ...)`:

  * `model`: a `jaxviz.models.Model`; `params` its parameter pytree;
  * `images`: `[N, H, W, C]` floating point in [0, 1] (the model normalises internally);
  * `target`: a class index (int), `[N]` ints (one class per image), or any
    `jaxviz.objectives.Objective` (e.g. `channel("relu4_2", 7)`, `neuron("conv5_3", 3)`). Class
    scores are the unnormalised (pre-softmax) logits; the model runs only as far as the target needs.

All functions are pure, work on a batch (images are independent: the gradient of the summed scores is
the per-image gradient), jit-compile with the model static or closed over, and map under `jax.vmap`
over experiments, e.g. many classes for one image:

    sal = jax.jit(saliency, static_argnums=0)
    maps = jax.vmap(lambda c: sal(model, params, x, c))(jnp.arange(10))     # [10, N, H, W]

Class indices and objective indices are traced, so a jitted function does not recompile for a new
class. Configuration arguments (`layer`, `steps`, `num_samples`, `batch_size`, `size`, `stride`,
`method`, `mode`, string `fill`) are static: bind them with `functools.partial` or `static_argnames`.

Techniques: input gradients and saliency (Simonyan et al. 2014), guided backpropagation (Springenberg
et al. 2015) and the deconvnet rule (Zeiler & Fergus 2014) through a `jax.custom_vjp` ReLU swapped into
the model, Grad-CAM and guided Grad-CAM (Selvaraju et al. 2017), SmoothGrad / SmoothGrad^2 / VarGrad
(Smilkov et al. 2017; Adebayo et al. 2018), integrated gradients (Sundararajan et al. 2017) and
occlusion sensitivity (Zeiler & Fergus 2014).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxviz import imaging, objectives
from jaxviz.models.base import Model
from jaxviz.objectives import Objective

Array = jax.Array
Target = Union[int, Array, Objective]


# --------------------------------------------------------------------------- modified ReLUs
@jax.custom_vjp
def guided_relu(x: Array) -> Array:
    """ReLU whose backward pass is guided backpropagation's: `(x > 0) * (g > 0) * g`.

    Forward it is `max(x, 0)`; backward it passes only positive gradients, and only through units
    that were active. Use it as `model.apply(params, images, relu=guided_relu)`.
    """
    return jnp.maximum(x, 0)


def _guided_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_vjp
def deconv_relu(x: Array) -> Array:
    """ReLU whose backward pass is the deconvnet rule: `max(g, 0)`, ignoring the forward input."""
    return jnp.maximum(x, 0)


def _deconv_fwd(x):
    return jnp.maximum(x, 0), None


def _deconv_bwd(_, g):
    return (jnp.maximum(g, 0),)


deconv_relu.defvjp(_deconv_fwd, _deconv_bwd)


# --------------------------------------------------------------------------- helpers
def _prepare(model: Model, images: Array, target: Target) -> Objective:
    """Validate `images` and turn `target` into an objective bound to `model`."""
    model.check_images(images)
    if not isinstance(target, Objective):
        _check_class_target(model, target, images.shape[0])
    return objectives.as_objective(model, target)  # UnknownLayerError (a ValueError) for unknown layers


def _check_class_target(model: Model, target, n: int) -> None:
    """Shape / dtype / range of a class-index target, when its value is known (not traced)."""
    shape = jnp.shape(target)
    if len(shape) > 1 or (len(shape) == 1 and shape[0] != n):
        raise ValueError(f"target must be a class index or [N] = [{n}] class indices; got shape {tuple(shape)}")
    if model.num_classes is not None:
        objectives.check_index(target, model.num_classes, f"class index for {model.name}")


def _score_fn(model: Model, params, obj: Objective, **apply_kwargs) -> Callable[[Array], Array]:
    """`images [N, H, W, C] -> scores [N]`, running the model only as far as `obj` reads."""
    return lambda x: objectives.evaluate(model, params, x, obj, **apply_kwargs)


def _grad_fn(score: Callable[[Array], Array]) -> Callable[[Array], Array]:
    # Images are independent, so the gradient of the summed scores is each image's own gradient.
    return jax.grad(lambda x: jnp.sum(score(x)))


def _check_positive_int(value, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer (static, not traced); got {value!r}")
    return int(value)


def _chunks(num: int, batch_size: Optional[int]) -> tuple[int, int]:
    """`(number of chunks, chunk size)` covering `num` items with chunks of at most `batch_size`."""
    size = num if batch_size is None else min(_check_positive_int(batch_size, "batch_size"), num)
    return -(-num // size), size


def _split_chunks(xs, num: int, batch_size: Optional[int]) -> tuple[Array, Array, int]:
    """`xs[:num]` as `[n_chunks, size, ...]` chunks of at most `batch_size` items, the last padded by
    repeating the last item; also `valid [n_chunks, size]` (False on the padding) and `size`."""
    n_chunks, size = _chunks(num, batch_size)
    idx = jnp.minimum(jnp.arange(n_chunks * size), num - 1)
    valid = (jnp.arange(n_chunks * size) < num).reshape(n_chunks, size)
    return xs[idx].reshape((n_chunks, size) + xs.shape[1:]), valid, size


def _chunked_weighted_sum(fn: Callable, xs: Array, weights: Array, batch_size: Optional[int], like: Array) -> Array:
    """`sum_i weights[i] * fn(xs[i:i+1])[0]` with `fn` mapping a chunk `[B, ...]` to `[B, *like.shape]`.

    Chunks of `batch_size` items are evaluated one after another in a `lax.scan`, so memory holds one
    chunk's results plus the running sum. The last chunk is padded with zero-weight copies.
    """
    xs, valid, size = _split_chunks(xs, xs.shape[0], batch_size)
    weights, _, _ = _split_chunks(weights, weights.shape[0], batch_size)
    weights = jnp.where(valid, weights, 0)

    def step(total, chunk):
        x, w = chunk
        out = fn(x)
        w = w.astype(out.dtype).reshape((size,) + (1,) * (out.ndim - 1))
        return total + jnp.sum(w * out, axis=0), None

    total, _ = lax.scan(step, jnp.zeros_like(like), (xs, weights))
    return total


def _chunked_moments(fn: Callable, xs, num: int, batch_size: Optional[int], like: Array) -> tuple[Array, Array]:
    """Mean and mean squared deviation (population variance) over `num` items of `fn(chunk)`, whose
    items have the shape and dtype of `like`.

    `xs` is indexable along its first axis (e.g. an array of PRNG keys). Chunk statistics are
    computed two-pass within a chunk and merged with Chan et al.'s parallel update, which avoids the
    cancellation of `E[g^2] - E[g]^2` in floating point.
    """
    xs, valid, size = _split_chunks(xs, num, batch_size)

    def step(carry, chunk):
        count, mean, m2 = carry
        x, ok = chunk
        out = fn(x)
        w = ok.astype(out.dtype).reshape((size,) + (1,) * (out.ndim - 1))
        n_b = jnp.sum(ok).astype(out.dtype)
        mean_b = jnp.sum(w * out, axis=0) / n_b
        m2_b = jnp.sum(w * jnp.square(out - mean_b[None]), axis=0)
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + jnp.square(delta) * (count * n_b / total)
        return (total, mean, m2), None

    zeros = jnp.zeros_like(like)
    (count, mean, m2), _ = lax.scan(step, (jnp.zeros((), like.dtype), zeros, zeros), (xs, valid))
    return mean, m2 / count


# --------------------------------------------------------------------------- gradients
def input_gradients(model: Model, params, images: Array, target: Target, **apply_kwargs) -> Array:
    """Gradient of the target score with respect to the input pixels.

    Args:
      model, params: the network.
      images: `[N, H, W, C]` in [0, 1].
      target: class index, `[N]` class indices, or an `Objective`.
      **apply_kwargs: passed to `Model.apply` (e.g. `relu=guided_relu`, `pool="avg"`).

    Returns:
      `[N, H, W, C]`, `d score_n / d images[n]` (in units of score per unit of [0, 1] intensity).
    """
    obj = _prepare(model, images, target)
    return _grad_fn(_score_fn(model, params, obj, **apply_kwargs))(images)


def saliency(model: Model, params, images: Array, target: Target, **apply_kwargs) -> Array:
    """Simonyan et al.'s saliency map: `max_c |d score / d images[..., c]|`.

    Returns:
      `[N, H, W]`, non-negative, not normalised.
    """
    return jnp.max(jnp.abs(input_gradients(model, params, images, target, **apply_kwargs)), axis=-1)


def guided_backprop(model: Model, params, images: Array, target: Target, **apply_kwargs) -> Array:
    """Guided backpropagation of a class score or any intermediate neuron / channel objective.

    The model's ReLUs are swapped for `guided_relu` (`Model.apply(..., relu=)`); the weights and
    the forward pass are unchanged.

    Returns:
      `[N, H, W, C]` signed image-space gradients (show with `jaxviz.imaging.gradient_image`).
    """
    return input_gradients(model, params, images, target, relu=guided_relu, **apply_kwargs)


def deconvnet(model: Model, params, images: Array, target: Target, **apply_kwargs) -> Array:
    """Zeiler & Fergus's deconvnet reconstruction: backward ReLUs rectify the signal (`max(g, 0)`),
    ignoring the forward activations; max-pool switches are the gradient's. Returns `[N, H, W, C]`."""
    return input_gradients(model, params, images, target, relu=deconv_relu, **apply_kwargs)


# --------------------------------------------------------------------------- gradients at a layer
def default_cam_layer(model: Model) -> str:
    """Grad-CAM's default layer: the last ReLU of the convolutional trunk (VGG16: `relu5_3`,
    AlexNet: `relu5`), not the pool after it; without ReLUs the last non-pool trunk layer."""
    trunk = [model.layer(name) for name in model.trunk]
    for kinds in (("relu",), ("conv", "bn", "act", "map")):
        names = [s.name for s in trunk if s.kind in kinds]
        if names:
            return names[-1]
    raise ValueError(f"{model.name} has no spatial layer for Grad-CAM")


def activation_gradients(
    model: Model, params, images: Array, target: Target, layer: str, **apply_kwargs
) -> tuple[Array, Array]:
    """A layer's activations and the gradient of the target score with respect to them.

    The gradient is taken with respect to a zero perturbation added to the layer's output
    (`Model.apply(..., perturb={layer: delta})`), so it works for any layer of any model, including
    a user's Flax module (submodule outputs).

    Args:
      layer: any layer before the deepest layer the target reads.
      **apply_kwargs: passed to `Model.apply` (e.g. `relu=guided_relu`, `pool="avg"`).

    Returns:
      `(activations, gradients)`, both the shape of the layer's output (`[N, h, w, C]` for spatial
      layers, `[N, D]` for fully connected ones).
    """
    obj = _prepare(model, images, target)
    idx = model.index(layer)
    target_last = objectives.last_layer(model, obj)
    if target_last is None or model.index(target_last) < idx:
        raise ValueError(
            f"the target {obj.name} reads {target_last or 'no layer'}, which does not depend on {layer!r}; "
            "pick a layer before the target's"
        )
    shape = jax.eval_shape(lambda x: model.apply(params, x, until=layer, **apply_kwargs)[layer], images)

    def score(delta):
        acts = model.apply(params, images, until=target_last, perturb={layer: delta}, **apply_kwargs)
        return jnp.sum(obj(acts)), acts[layer]

    grad, act = jax.grad(score, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    return act, grad


def gradcam(
    model: Model,
    params,
    images: Array,
    target: Target,
    *,
    layer: Optional[str] = None,
    relu: bool = True,
    upsample: bool = True,
    normalize: bool = False,
    **apply_kwargs,
) -> Array:
    """Grad-CAM: class activation map of a convolutional layer weighted by the score's gradient.

    `w_c = mean_{i,j} d score / d A[i, j, c]`, `map = ReLU(sum_c w_c A[..., c])`.

    Args:
      layer: any spatial layer; default `default_cam_layer(model)`, the last ReLU of the trunk
        (`relu5_3` for VGG16).
      relu: apply the ReLU to the map (Grad-CAM's choice: keep only positive evidence).
      upsample: resize bilinearly to the image size `[N, H, W]`; `False` returns the layer
        resolution `[N, h, w]`.
      normalize: min-max scale each map to [0, 1]. Off by default: the absolute scale is comparable
        across images and classes.

    Returns:
      `[N, H, W]` (or `[N, h, w]`), in score units per activation unit unless `normalize`.
    """
    layer = default_cam_layer(model) if layer is None else layer
    act, grad = activation_gradients(model, params, images, target, layer, **apply_kwargs)
    if act.ndim != 4:
        raise ValueError(f"Grad-CAM needs a spatial layer; {layer!r} has shape {act.shape}")
    weights = jnp.mean(grad, axis=(1, 2))
    cam = jnp.einsum("nhwc,nc->nhw", act, weights)
    if relu:
        cam = jnp.maximum(cam, 0)
    if upsample:
        cam = jax.image.resize(cam, images.shape[:3], method="bilinear")
    if normalize:
        cam = imaging.normalize(cam, axis=(1, 2))
    return cam


def guided_gradcam(
    model: Model, params, images: Array, target: Target, *, layer: Optional[str] = None, **apply_kwargs
) -> Array:
    """Guided Grad-CAM: guided backpropagation times the (upsampled, un-normalised) Grad-CAM map.

    Returns:
      `[N, H, W, C]`.
    """
    cam = gradcam(model, params, images, target, layer=layer, **apply_kwargs)
    return guided_backprop(model, params, images, target, **apply_kwargs) * cam[..., None]


# --------------------------------------------------------------------------- SmoothGrad
def smoothgrad(
    model: Model,
    params,
    images: Array,
    target: Target,
    *,
    key: Array,
    num_samples: int = 25,
    noise: float = 0.15,
    mode: str = "mean",
    batch_size: Optional[int] = None,
    **apply_kwargs,
) -> Array:
    """SmoothGrad: input gradients averaged over noisy copies of each image.

    Noise: `keys = jax.random.split(key, num_samples)`; sample `s` adds
    `sigma[n] * jax.random.normal(keys[s], (H, W, C), images.dtype)` to image `n`, with
    `sigma[n] = noise * (max(images[n]) - min(images[n]))` (PAIR's convention: a fraction of each
    image's value range). Every image of the batch gets the same unit-noise pattern, so an image's
    result does not depend on the rest of the batch, nor on `batch_size`.

    Args:
      key: PRNG key (same key, same result).
      num_samples: noisy copies per image.
      noise: noise standard deviation as a fraction of each image's range.
      mode: `"mean"` (SmoothGrad), `"squared"` (SmoothGrad^2: mean of squared gradients) or
        `"variance"` (VarGrad: population variance of the gradients).
      batch_size: noisy copies per model call (each call sees `batch_size * N` images); `None` all.
      **apply_kwargs: passed to `Model.apply` (e.g. `relu=guided_relu` for guided SmoothGrad).

    Returns:
      `[N, H, W, C]`; take `jnp.abs(g).max(-1)` for a saliency-style map.
    """
    if mode not in ("mean", "squared", "variance"):
        raise ValueError(f"mode must be 'mean', 'squared' or 'variance'; got {mode!r}")
    num_samples = _check_positive_int(num_samples, "num_samples")
    obj = _prepare(model, images, target)
    grad = _grad_fn(_score_fn(model, params, obj, **apply_kwargs))
    axes = (1, 2, 3)
    sigma = noise * (jnp.max(images, axis=axes, keepdims=True) - jnp.min(images, axis=axes, keepdims=True))

    def chunk(keys):
        eps = jax.vmap(lambda k: jax.random.normal(k, images.shape[1:], images.dtype))(keys)  # [B, H, W, C]
        return jax.vmap(grad)(images[None] + sigma[None] * eps[:, None])

    mean, var = _chunked_moments(chunk, jax.random.split(key, num_samples), num_samples, batch_size, images)
    if mode == "mean":
        return mean
    if mode == "squared":
        return var + jnp.square(mean)
    return var


# --------------------------------------------------------------------------- integrated gradients
class IntegratedGradients(NamedTuple):
    """Result of `integrated_gradients`.

    Attributes:
      attributions: `[N, H, W, C]`, `(x - baseline) * average path gradient`.
      delta: `[N]` completeness error, `sum(attributions) - (f(x) - f(baseline))`.
    """

    attributions: Array
    delta: Array


def path_weights(steps: int, method: str = "trapezoid") -> tuple[np.ndarray, np.ndarray]:
    """`(alphas, weights)` of the quadrature of `int_0^1 g(alpha) d alpha` (float64, weights sum to 1).

    `"trapezoid"`: `steps` equally spaced points including both ends (`steps >= 2`).
    `"gauss_legendre"`: `steps` Gauss-Legendre nodes (exact for polynomials of degree `2 steps - 1`).
    """
    steps = _check_positive_int(steps, "steps")
    if method == "trapezoid":
        if steps < 2:
            raise ValueError("the trapezoid rule needs steps >= 2")
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] *= 0.5
    elif method == "gauss_legendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        alphas, weights = (nodes + 1.0) / 2.0, w / 2.0
    else:
        raise ValueError(f"method must be 'trapezoid' or 'gauss_legendre'; got {method!r}")
    return alphas, weights


def integrated_gradients(
    model: Model,
    params,
    images: Array,
    target: Target,
    *,
    baseline: Union[None, float, Array] = None,
    steps: int = 50,
    method: str = "trapezoid",
    batch_size: Optional[int] = None,
    **apply_kwargs,
) -> IntegratedGradients:
    """Integrated gradients along the straight path from a baseline to each image.

    Args:
      baseline: `None` (zeros: a black image), a number, `[H, W, C]` or `[N, H, W, C]`.
      steps: quadrature points on the path.
      method: `"trapezoid"` (Riemann trapezoid, both ends included) or `"gauss_legendre"`.
      batch_size: path points per model call (each call sees `batch_size * N` images); `None` all.
      **apply_kwargs: passed to `Model.apply`.

    Returns:
      `IntegratedGradients(attributions [N, H, W, C], delta [N])`. `delta` measures the quadrature
      error: attributions sum to `f(x) - f(baseline)` as `steps` grows.
    """
    obj = _prepare(model, images, target)
    if baseline is None:
        base = jnp.zeros_like(images)
    else:
        base = jnp.asarray(baseline, images.dtype)
        if base.ndim == 0:
            base = jnp.full(images.shape, base, images.dtype)
        elif base.shape == images.shape[1:]:
            base = jnp.broadcast_to(base[None], images.shape)
        elif base.shape != images.shape:
            raise ValueError(
                f"baseline must be a number, [H, W, C] = {images.shape[1:]} or [N, H, W, C] = {images.shape}; "
                f"got shape {base.shape}"
            )
    alphas, weights = path_weights(steps, method)
    score = _score_fn(model, params, obj, **apply_kwargs)
    grad = _grad_fn(score)
    diff = images - base

    def chunk(a):
        a = a.reshape(-1, 1, 1, 1, 1)
        return jax.vmap(grad)(base[None] + a * diff[None])

    avg = _chunked_weighted_sum(
        chunk, jnp.asarray(alphas, images.dtype), jnp.asarray(weights, images.dtype), batch_size, images
    )
    attributions = diff * avg
    ends = jax.vmap(score)(jnp.stack([images, base]))
    delta = jnp.sum(attributions, axis=(1, 2, 3)) - (ends[0] - ends[1])
    return IntegratedGradients(attributions, delta)


# --------------------------------------------------------------------------- occlusion
def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or (h, w); got {value!r}")
    return tuple(_check_positive_int(v, name) for v in pair)


def occlusion_grid(image_size: Sequence[int], size, stride=None) -> tuple[int, int]:
    """`(nh, nw)` patch positions for `image_size = (H, W)`: top-left corners `0, stride, ...` with the
    patch inside the image. `stride` defaults to half the patch size."""
    ph, pw = _pair(size, "size")
    sh, sw = _pair(stride if stride is not None else (max(ph // 2, 1), max(pw // 2, 1)), "stride")
    h, w = image_size
    if ph > h or pw > w:
        raise ValueError(f"occlusion patch {ph}x{pw} is larger than the image {h}x{w}")
    return (h - ph) // sh + 1, (w - pw) // sw + 1


def occlusion(
    model: Model,
    params,
    images: Array,
    target: Target,
    *,
    size=16,
    stride=None,
    fill: Union[str, float, Array] = "mean",
    batch_size: Optional[int] = 32,
    **apply_kwargs,
) -> Array:
    """Occlusion sensitivity: the target class's probability with a patch of each image covered.

    The patch slides with its top-left corner at `(i * stride, j * stride)`, inside the image. The
    occluded copies are made inside the evaluated chunk (never all at once), `batch_size` patch
    positions per model call.

    Args:
      target: class index or `[N]` indices: the map holds the softmax probability of that class. An
        `Objective` gives its value instead (e.g. `class_logit(c)` for the unnormalised score).
      size: patch `(h, w)` or int.
      stride: `(h, w)` or int; default half the patch.
      fill: `"mean"` (each image's mean colour), `"zeros"` (black), a number, or `[C]` values in [0, 1].
      batch_size: patch positions per model call (each call sees `batch_size * N` images); `None`
        all positions at once.

    Returns:
      `[N, nh, nw]` (see `occlusion_grid`); paint it onto the image with `occlusion_image`.
    """
    model.check_images(images)
    if isinstance(target, Objective):
        obj = _prepare(model, images, target)
        score = _score_fn(model, params, obj, **apply_kwargs)
    else:
        _check_class_target(model, target, images.shape[0])
        obj = _prepare(model, images, objectives.class_log_prob(target))
        log_prob = _score_fn(model, params, obj, **apply_kwargs)
        score = lambda x: jnp.exp(log_prob(x))  # noqa: E731
    n, h, w, c = images.shape
    ph, pw = _pair(size, "size")
    sh, sw = _pair(stride if stride is not None else (max(ph // 2, 1), max(pw // 2, 1)), "stride")
    nh, nw = occlusion_grid((h, w), (ph, pw), (sh, sw))
    if isinstance(fill, str):
        if fill == "mean":
            fill_value = jnp.mean(images, axis=(1, 2), keepdims=True)
        elif fill in ("zeros", "zero", "black"):
            fill_value = jnp.zeros((1, 1, 1, c), images.dtype)
        else:
            raise ValueError(f"fill must be 'mean', 'zeros', a number or [C] values; got {fill!r}")
    else:
        fill_value = jnp.asarray(fill, images.dtype)
        if fill_value.ndim == 0:
            fill_value = jnp.full((1, 1, 1, c), fill_value, images.dtype)
        elif fill_value.shape == (c,):
            fill_value = fill_value.reshape(1, 1, 1, c)
        else:
            raise ValueError(f"fill must be a number or {c} channel values; got shape {fill_value.shape}")

    rows, cols = jnp.arange(h), jnp.arange(w)
    num = nh * nw

    def occlude(p):
        y0, x0 = (p // nw) * sh, (p % nw) * sw
        inside = ((rows >= y0) & (rows < y0 + ph))[:, None] & ((cols >= x0) & (cols < x0 + pw))[None, :]
        return jnp.where(inside[None, :, :, None], fill_value, images)

    def chunk(positions):
        return jax.vmap(lambda p: score(occlude(p)))(positions)  # [B, N]

    n_chunks, chunk_size = _chunks(num, batch_size)
    positions = jnp.minimum(jnp.arange(n_chunks * chunk_size), num - 1).reshape(n_chunks, chunk_size)
    scores = lax.map(chunk, positions).reshape(n_chunks * chunk_size, n)[:num]
    return scores.T.reshape(n, nh, nw)


def occlusion_image(omap: Array, image_size: Sequence[int], *, size, stride=None) -> Array:
    """Paint an occlusion map onto the image grid: each pixel gets the mean of the map over the
    patches that covered it (pixels at the right / bottom edge that no patch covered take the values
    of the last covered row / column).

    Args:
      omap: `[N, nh, nw]` or `[nh, nw]` from `occlusion`.
      image_size: `(H, W)` of the occluded images.
      size, stride: as given to `occlusion`.

    Returns:
      `[N, H, W]` (or `[H, W]`).
    """
    ph, pw = _pair(size, "size")
    sh, sw = _pair(stride if stride is not None else (max(ph // 2, 1), max(pw // 2, 1)), "stride")
    h, w = (int(s) for s in image_size)
    nh, nw = occlusion_grid((h, w), (ph, pw), (sh, sw))
    if omap.shape[-2:] != (nh, nw):
        raise ValueError(f"the map must be [..., {nh}, {nw}] for these settings; got shape {omap.shape}")

    def cover(n_pix, n_pos, p, s):
        pix = np.minimum(np.arange(n_pix), (n_pos - 1) * s + p - 1)[:, None]
        start = (np.arange(n_pos) * s)[None, :]
        m = ((pix >= start) & (pix < start + p)).astype(np.float64)
        return m / m.sum(axis=1, keepdims=True)

    ry = jnp.asarray(cover(h, nh, ph, sh), omap.dtype)
    rx = jnp.asarray(cover(w, nw, pw, sw), omap.dtype)
    return jnp.einsum("yi,...ij,xj->...yx", ry, omap, rx)


__all__ = [
    "IntegratedGradients",
    "activation_gradients",
    "deconv_relu",
    "deconvnet",
    "default_cam_layer",
    "gradcam",
    "guided_backprop",
    "guided_gradcam",
    "guided_relu",
    "input_gradients",
    "integrated_gradients",
    "occlusion",
    "occlusion_grid",
    "occlusion_image",
    "path_weights",
    "saliency",
    "smoothgrad",
]
