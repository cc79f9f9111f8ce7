"""Attribution: which pixels (or units) a network's score depends on.

Every technique takes `(model, params, images, target, ...)`:

  * `model`: a `jaxviz.models.Model`; `params` its parameter pytree;
  * `images`: `[N, H, W, C]` floating point in [0, 1] (the model normalises internally);
  * `target`: a class index (int), `[N]` ints (one class per image), or any
    `jaxviz.objectives.Objective` (e.g. `channel("relu4_2", 7)`, `neuron("conv5_3", 3)`). Class
    scores are the unnormalised (pre-softmax) logits; the model runs only as far as the target needs.

All functions are pure, work on a batch (images are independent: the gradient of the summed scores is
the per-image gradient), jit-compile with the model static or closed over, and map under `jax.vmap`
over experiments, e.g. many classes for one image (params passed as an argument, never closed over:
XLA would constant-fold the weights):

    sal = jax.jit(saliency, static_argnums=0)
    maps = jax.vmap(lambda c: sal(model, params, x, c))(jnp.arange(10))     # [10, N, H, W]

Class indices and objective indices are traced, so a jitted function does not recompile for a new
class. Configuration arguments (`layer`, `steps`, `num_samples`, `batch_size`, `size`, `stride`,
`method`, `mode`, `absolute`, `upsample`, `loop`, string `fill`) are static: bind them with
`functools.partial` or `static_argnames`. Called without `jit`, every technique still runs compiled
code (its core is jitted and cached per model and configuration).

Bad input: concrete images must be non-empty, finite and in [0, 1] (`Model.check_images`), concrete
indices in range, sizes positive integers, noise and fill finite: otherwise a `ValueError` that names
the problem, raised before any work. Traced values cannot be checked, so they propagate NaN instead: an
image whose score is not finite (a NaN or inf pixel, a traced class index out of range, NaN noise or
fill) gets an all-NaN map, never another class's map or a silent zero.

Chunked techniques (SmoothGrad, integrated gradients, occlusion) evaluate `batch_size` items per model
call under `jaxviz.loops`' policy (`loop="auto"`: a Python loop over one jitted chunk on CPU, where
XLA runs a chunk 3-4x slower inside `lax.scan`; `lax.scan` under `jit`/`vmap` and on accelerators).
Both loops compute the same chunks; results agree to float rounding.

Techniques: input gradients and saliency (Simonyan et al. 2014), guided backpropagation (Springenberg
et al. 2015) and the deconvnet rule (Zeiler & Fergus 2014) through a `jax.custom_vjp` ReLU swapped into
the model, Grad-CAM and guided Grad-CAM (Selvaraju et al. 2017), SmoothGrad / SmoothGrad^2 / VarGrad
(Smilkov et al. 2017; Adebayo et al. 2018), integrated gradients (Sundararajan et al. 2017) and
occlusion sensitivity (Zeiler & Fergus 2014).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import imaging, loops, objectives
from jaxviz.models.base import RANGE_TOLERANCE, Model, check_pixel_values
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


# --------------------------------------------------------------------------- validation
def _check_images(model: Model, images) -> None:
    """`Model.check_images`: shape, dtype, non-empty batch; concrete pixels finite and in [0, 1]."""
    model.check_images(images)


def _prepare(model: Model, params, images: Array, target: Target) -> Objective:
    """Validate `images` and `target` (everything that can be checked, before any work) and turn
    `target` into an objective bound to `model`."""
    _check_images(model, images)
    if not isinstance(target, Objective):
        _check_class_target(model, target, images.shape[0])
    obj = objectives.as_objective(model, target)  # UnknownLayerError (a ValueError) for unknown layers
    objectives.check_objective(model, params, images, obj)
    return obj


def _check_class_target(model: Model, target, n: int) -> None:
    """Shape / dtype / range of a class-index target, when its value is known (not traced)."""
    shape = jnp.shape(target)
    if len(shape) > 1 or (len(shape) == 1 and shape[0] != n):
        raise ValueError(f"target must be a class index or [N] = [{n}] class indices; got shape {tuple(shape)}")
    if model.num_classes is not None:
        objectives.check_index(target, model.num_classes, f"class index for {model.name}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_positive_int(value, name: str) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer (static, not traced); got {value!r}")
    return int(value)


def _check_loop(loop) -> None:
    if loop not in loops.LOOPS:
        raise ValueError(f"loop must be one of {loops.LOOPS}; got {loop!r}")


def _concrete_float(value, name: str) -> Optional[float]:
    """`value` as a Python float if it is a concrete real scalar, `None` if traced."""
    if isinstance(value, jax.core.Tracer):
        return None
    arr = np.asarray(value)
    if arr.shape != () or arr.dtype.kind not in "iuf" or arr.dtype == bool:
        raise ValueError(f"{name} must be a real number; got {value!r}")
    return float(arr)


def _split_kwargs(apply_kwargs: dict) -> tuple[tuple, dict]:
    """`Model.apply` options split into hashable ones (static: `relu=`, `pool=`) and the rest (arrays,
    e.g. `perturb=`), which are passed as traced arguments."""
    static, dynamic = [], {}
    for name, value in sorted(apply_kwargs.items()):
        try:
            hash(value)
        except TypeError:
            dynamic[name] = value
        else:
            static.append((name, value))
    return tuple(static), dynamic


# --------------------------------------------------------------------------- pure cores
def _evaluate(model: Model, kw: tuple, params, images: Array, obj: Objective, dyn: dict) -> Array:
    return objectives.evaluate(model, params, images, obj, **dict(kw), **dyn)


def _finite_images(images: Array) -> Array:
    """`[N]`: whether every pixel of each image is finite."""
    return jnp.all(jnp.isfinite(images).reshape(images.shape[0], -1), axis=1)


def _nan_unless(values: Array, ok: Array) -> Array:
    """`values [N, ...]` with every entry of image `n` set to NaN unless `ok[n]`.

    Applied explicitly, after any reduction: XLA's CPU max / min need not propagate NaN (fast min/max
    is its default; its YNNPACK reductions skip NaN), and ReLUs and max-pooling pass zero derivatives
    through NaN activations, so a NaN pixel or a NaN score would otherwise give a finite-looking map.
    """
    return jnp.where(ok.reshape((-1,) + (1,) * (values.ndim - 1)), values, jnp.nan)


def _scores_and_gradients(model: Model, kw: tuple, params, images: Array, obj: Objective, dyn: dict):
    """`(scores [N], d scores / d images [N, H, W, C], ok [N])`; `ok[n]` says that image `n` and its
    score are finite, and the gradients of the other images are NaN."""
    scores, pullback = jax.vjp(lambda x: _evaluate(model, kw, params, x, obj, dyn), images)
    (grads,) = pullback(jnp.ones_like(scores))
    ok = jnp.isfinite(scores) & _finite_images(images)
    return scores, _nan_unless(grads, ok), ok


@functools.partial(jax.jit, static_argnums=(0, 1))
def _input_gradients(model, kw, params, images, obj, dyn):
    return _scores_and_gradients(model, kw, params, images, obj, dyn)[1]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _saliency(model, kw, params, images, obj, dyn):
    _, grads, ok = _scores_and_gradients(model, kw, params, images, obj, dyn)
    return _nan_unless(jnp.max(jnp.abs(grads), axis=-1), ok)


def _layer_gradients(model, kw, layer, until, params, images, obj, dyn):
    """`(activations, d scores / d activations)` of `layer`, through a zero perturbation of its output."""
    dyn = dict(dyn)
    user_perturb = dict(dyn.pop("perturb", None) or {})
    shape = jax.eval_shape(lambda x: model.apply(params, x, until=layer, **dict(kw), **dyn)[layer], images)

    def score(delta):
        perturb = dict(user_perturb)
        perturb[layer] = perturb[layer] + delta if layer in perturb else delta
        acts = model.apply(params, images, until=until, perturb=perturb, **dict(kw), **dyn)
        return obj(acts), acts[layer]

    scores, pullback, act = jax.vjp(score, jnp.zeros(shape.shape, shape.dtype), has_aux=True)
    (grad,) = pullback(jnp.ones_like(scores))
    ok = jnp.isfinite(scores) & _finite_images(images)
    return act, _nan_unless(grad, ok), ok


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _activation_gradients(model, kw, layer, until, params, images, obj, dyn):
    return _layer_gradients(model, kw, layer, until, params, images, obj, dyn)[:2]


def _upsample(cam: Array, size: tuple[int, int], method: str) -> Array:
    """`[N, h, w] -> [N, H, W]`: `"bilinear"` (half-pixel centres, no antialiasing when enlarging: torch's
    `interpolate(mode="bilinear", align_corners=False)`) or `"nearest"` (torch's legacy
    `interpolate(mode="nearest")`, captum's `LayerAttribution.interpolate` default: output pixel `i`
    takes input `floor(i * h / H)`)."""
    n, h, w = cam.shape
    if method == "bilinear":
        return jax.image.resize(cam, (n, *size), method="bilinear")
    rows = (np.arange(size[0]) * h) // size[0]
    cols = (np.arange(size[1]) * w) // size[1]
    return cam[:, rows][:, :, cols]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _gradcam(model, kw, layer, until, relu, upsample, normalize, params, images, obj, dyn):
    act, grad, ok = _layer_gradients(model, kw, layer, until, params, images, obj, dyn)
    weights = jnp.mean(grad, axis=(1, 2))
    cam = jnp.einsum("nhwc,nc->nhw", act, weights)
    if relu:
        cam = jnp.maximum(cam, 0)
    if upsample:
        cam = _upsample(cam, images.shape[1:3], upsample)
    if normalize:
        cam = imaging.normalize(cam, axis=(1, 2))
    return _nan_unless(cam, ok)


# --------------------------------------------------------------------------- chunks
def _chunks(num: int, batch_size: Optional[int]) -> tuple[int, int]:
    """`(number of chunks, chunk size)` covering `num` items with chunks of at most `batch_size`."""
    size = num if batch_size is None else min(_check_positive_int(batch_size, "batch_size"), num)
    return -(-num // size), size


def _chunk_layout(num: int, batch_size: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """`(index [n_chunks, size], valid [n_chunks, size])`: items `0..num-1` in chunks of at most
    `batch_size`, the last chunk padded by repeating the last item (`valid` False there)."""
    n_chunks, size = _chunks(num, batch_size)
    flat = np.arange(n_chunks * size)
    return np.minimum(flat, num - 1).reshape(n_chunks, size), (flat < num).reshape(n_chunks, size)


def _merge_moments(carry, out: Array, ok: Array):
    """Chan et al.'s parallel update of `(count, mean, m2)` with a chunk `out [B, ...]` (rows where
    `ok [B]` is False are padding). Chunk statistics are two-pass, which avoids the cancellation of
    `E[g^2] - E[g]^2`."""
    count, mean, m2 = carry
    w = ok.astype(out.dtype).reshape((-1,) + (1,) * (out.ndim - 1))
    n_b = jnp.sum(ok).astype(out.dtype)
    mean_b = jnp.sum(w * out, axis=0) / n_b
    m2_b = jnp.sum(w * jnp.square(out - mean_b[None]), axis=0)
    total = count + n_b
    delta = mean_b - mean
    return total, mean + delta * (n_b / total), m2 + m2_b + jnp.square(delta) * (count * n_b / total)


def _smoothgrad_step(static, consts, carry, chunk):
    """One chunk of SmoothGrad: gradients at `B` noisy copies of every image, merged into the moments."""
    model, kw, absolute = static
    params, images, obj, sigma, dyn = consts
    keys, ok = chunk
    eps = jax.vmap(lambda k: jax.random.normal(k, images.shape[1:], images.dtype))(keys)  # [B, H, W, C]
    noisy = images[None] + sigma[None] * eps[:, None]  # [B, N, H, W, C]
    grads = jax.vmap(lambda x: _scores_and_gradients(model, kw, params, x, obj, dyn)[1])(noisy)
    if absolute:
        grads = jnp.abs(grads)
    return _merge_moments(carry, grads, ok), None


def _integrated_gradients_step(static, consts, total, chunk):
    """One chunk of integrated gradients: `total + sum_b weights[b] * grad(base + alphas[b] * diff)`."""
    model, kw = static
    params, base, diff, obj, dyn = consts
    alphas, weights = chunk  # [B], [B]; zero weight on the padding
    path = base[None] + alphas.reshape(-1, 1, 1, 1, 1) * diff[None]
    grads = jax.vmap(lambda x: _scores_and_gradients(model, kw, params, x, obj, dyn)[1])(path)
    return total + jnp.sum(weights.reshape(-1, 1, 1, 1, 1) * grads, axis=0), None


@functools.partial(jax.jit, static_argnums=(0, 1))
def _path_ends(model, kw, params, images, base, obj, dyn):
    """Scores `[2, N]` of the images and of the baseline (each a batch of its own)."""
    return jax.vmap(lambda x: _evaluate(model, kw, params, x, obj, dyn))(jnp.stack([images, base]))


def _occlusion_chunk(static, consts, positions):
    """Scores `[B, N]` with the patch at each of `B` positions covering every image."""
    model, kw, (ph, pw, sh, sw, nw), prob = static
    params, images, fill_value, obj, dyn = consts
    rows, cols = jnp.arange(images.shape[1]), jnp.arange(images.shape[2])

    def occluded_score(p):
        y0, x0 = (p // nw) * sh, (p % nw) * sw
        inside = ((rows >= y0) & (rows < y0 + ph))[:, None] & ((cols >= x0) & (cols < x0 + pw))[None, :]
        occluded = jnp.where(inside[None, :, :, None], fill_value, images)
        scores = _evaluate(model, kw, params, occluded, obj, dyn)
        return _nan_unless(jnp.exp(scores) if prob else scores, _finite_images(occluded))

    return jax.vmap(occluded_score)(positions)


# --------------------------------------------------------------------------- gradients
def input_gradients(model: Model, params, images: Array, target: Target, **apply_kwargs) -> Array:
    """Gradient of the target score with respect to the input pixels.

    Args:
      model, params: the network.
      images: `[N, H, W, C]` in [0, 1].
      target: class index, `[N]` class indices, or an `Objective`.
      **apply_kwargs: passed to `Model.apply` (e.g. `relu=guided_relu`, `pool="avg"`).

    Returns:
      `[N, H, W, C]`, `d score_n / d images[n]` (in units of score per unit of [0, 1] intensity); all
      NaN for an image whose score is not finite (traced NaN/inf pixels or out-of-range indices).
    """
    obj = _prepare(model, params, images, target)
    kw, dyn = _split_kwargs(apply_kwargs)
    return _input_gradients(model, kw, params, images, obj, dyn)


def saliency(model: Model, params, images: Array, target: Target, **apply_kwargs) -> Array:
    """Simonyan et al.'s saliency map: `max_c |d score / d images[..., c]|`.

    Returns:
      `[N, H, W]`, non-negative, not normalised (NaN for images whose score is not finite).
    """
    obj = _prepare(model, params, images, target)
    kw, dyn = _split_kwargs(apply_kwargs)
    return _saliency(model, kw, params, images, obj, dyn)


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


def _target_reads_after(model: Model, obj: Objective, layer: str) -> str:
    """The deepest layer `obj` reads, checked to come at or after `layer`."""
    idx = model.index(layer)
    target_last = objectives.last_layer(model, obj)
    if target_last is None or model.index(target_last) < idx:
        raise ValueError(
            f"the target {obj.name} reads {target_last or 'no layer'}, which does not depend on {layer!r}; "
            "pick a layer before the target's"
        )
    return target_last


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
      layers, `[N, D]` for fully connected ones); the gradients of an image whose score is not finite
      are NaN.
    """
    obj = _prepare(model, params, images, target)
    until = _target_reads_after(model, obj, layer)
    kw, dyn = _split_kwargs(apply_kwargs)
    return _activation_gradients(model, kw, layer, until, params, images, obj, dyn)


UPSAMPLE = ("bilinear", "nearest")


def _upsample_method(upsample) -> Optional[str]:
    if upsample is True:
        return "bilinear"
    if upsample is False or upsample is None:
        return None
    if upsample not in UPSAMPLE:
        raise ValueError(f"upsample must be True, False, 'bilinear' or 'nearest'; got {upsample!r}")
    return upsample


def gradcam(
    model: Model,
    params,
    images: Array,
    target: Target,
    *,
    layer: Optional[str] = None,
    relu: bool = True,
    upsample: Union[bool, str] = True,
    normalize: bool = False,
    **apply_kwargs,
) -> Array:
    """Grad-CAM: class activation map of a convolutional layer weighted by the score's gradient.

    `w_c = mean_{i,j} d score / d A[i, j, c]`, `map = ReLU(sum_c w_c A[..., c])`.

    Args:
      layer: any spatial layer; default `default_cam_layer(model)`, the last ReLU of the trunk
        (`relu5_3` for VGG16).
      relu: apply the ReLU to the map (Grad-CAM's choice: keep only positive evidence; captum's
        `LayerGradCam` defaults to no ReLU).
      upsample: resize to the image size `[N, H, W]`: `True` or `"bilinear"` (the paper's choice;
        torch's `interpolate(mode="bilinear", align_corners=False)`), `"nearest"` (torch's legacy
        nearest, captum's `LayerAttribution.interpolate` default); `False` returns the layer
        resolution `[N, h, w]`.
      normalize: min-max scale each map to [0, 1]. Off by default: the absolute scale is comparable
        across images and classes.

    Returns:
      `[N, H, W]` (or `[N, h, w]`), in score units per activation unit unless `normalize`.
    """
    method = _upsample_method(upsample)
    layer = default_cam_layer(model) if layer is None else layer
    obj = _prepare(model, params, images, target)
    until = _target_reads_after(model, obj, layer)
    shape = objectives.activation_shapes(model, params, images, layer)[layer].shape
    if len(shape) != 4:
        raise ValueError(f"Grad-CAM needs a spatial layer; {layer!r} has shape {shape}")
    kw, dyn = _split_kwargs(apply_kwargs)
    return _gradcam(model, kw, layer, until, bool(relu), method, bool(normalize), params, images, obj, dyn)


def guided_gradcam(
    model: Model,
    params,
    images: Array,
    target: Target,
    *,
    layer: Optional[str] = None,
    upsample: str = "bilinear",
    **apply_kwargs,
) -> Array:
    """Guided Grad-CAM: guided backpropagation times the upsampled, un-normalised Grad-CAM map (with
    its ReLU).

    Args:
      layer: as `gradcam`.
      upsample: how the map is brought to the image size: `"bilinear"` (jaxviz's default, the paper's
        Grad-CAM upsampling) or `"nearest"` (captum's `GuidedGradCam` default,
        `interpolate_mode="nearest"`). Both equal captum's result with that mode.

    Returns:
      `[N, H, W, C]`.
    """
    method = _upsample_method(upsample)
    if method is None:
        raise ValueError(f"guided Grad-CAM needs the map at image size: upsample must be 'bilinear' or 'nearest'; got {upsample!r}")
    cam = gradcam(model, params, images, target, layer=layer, upsample=method, **apply_kwargs)
    return guided_backprop(model, params, images, target, **apply_kwargs) * cam[..., None]


# --------------------------------------------------------------------------- SmoothGrad
SMOOTHGRAD_MODES = ("mean", "squared", "variance")


def _noise_scale(images: Array, noise) -> Array:
    """`sigma [N, 1, 1, 1] = noise * (max - min)` of each image; NaN for a traced negative or NaN noise."""
    value = _concrete_float(noise, "noise")
    if value is not None and not (np.isfinite(value) and value >= 0):
        raise ValueError(f"noise must be a finite number >= 0 (a fraction of each image's value range); got {noise!r}")
    axes = (1, 2, 3)
    spread = jnp.max(images, axis=axes, keepdims=True) - jnp.min(images, axis=axes, keepdims=True)
    noise = jnp.asarray(noise, spread.dtype)
    return jnp.where(noise >= 0, noise, jnp.nan) * spread


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
    absolute: bool = False,
    batch_size: Optional[int] = None,
    loop: str = "auto",
    **apply_kwargs,
) -> Array:
    """SmoothGrad: input gradients averaged over noisy copies of each image.

    Noise: `keys = jax.random.split(key, num_samples)`; sample `s` adds
    `sigma[n] * jax.random.normal(keys[s], (H, W, C), images.dtype)` to image `n`, with
    `sigma[n] = noise * (max(images[n]) - min(images[n]))` (PAIR's convention: a fraction of each
    image's value range). Every image of the batch gets the same unit-noise pattern, so an image's
    result does not depend on the rest of the batch, nor on `batch_size` or `loop`.

    Defaults side by side with captum's `NoiseTunnel(Saliency(model))`:

      ==============  ===============================  ========================================
      setting         jaxviz `smoothgrad`              captum `NoiseTunnel(Saliency)`
      ==============  ===============================  ========================================
      samples         `num_samples=25` (PAIR)          `nt_samples=5`
      noise std       `noise=0.15` x each image's      `stdevs=1.0`, absolute (inputs'
                      range (PAIR)                     units)
      per sample      signed gradient                  `|gradient|` (`Saliency(abs=True)`)
                      (`absolute=False`)
      statistic       `mode="mean"`                    `nt_type="smoothgrad"` (mean)
      ==============  ===============================  ========================================

    `absolute=True` reproduces captum's default (mean of `|gradient|`); `mode="squared"` is captum's
    `"smoothgrad_sq"` and `mode="variance"` its `"vargrad"`. With the same noise the results agree
    with captum to float64 rounding (tests/test_attribution.py).

    Args:
      key: PRNG key (same key, same result).
      num_samples: noisy copies per image.
      noise: noise standard deviation as a fraction of each image's range; concrete values must be
        finite and >= 0, traced negative or NaN ones give NaN maps.
      mode: `"mean"` (SmoothGrad), `"squared"` (SmoothGrad^2: mean of squared gradients) or
        `"variance"` (VarGrad: population variance of the gradients).
      absolute: take `|gradient|` of each sample before the statistic (captum's default).
      batch_size: noisy copies per model call (each call sees `batch_size * N` images); `None` all.
      loop: `"auto"`, `"python"` or `"scan"`: how chunks are looped over (`jaxviz.loops`).
      **apply_kwargs: passed to `Model.apply` (e.g. `relu=guided_relu` for guided SmoothGrad).

    Returns:
      `[N, H, W, C]`; take `jnp.abs(g).max(-1)` for a saliency-style map. NaN for images whose score
      is not finite.
    """
    if mode not in SMOOTHGRAD_MODES:
        raise ValueError(f"mode must be 'mean', 'squared' or 'variance'; got {mode!r}")
    num_samples = _check_positive_int(num_samples, "num_samples")
    _check_loop(loop)
    obj = _prepare(model, params, images, target)
    sigma = _noise_scale(images, noise)
    index, valid = _chunk_layout(num_samples, batch_size)
    keys = jax.random.split(key, num_samples)[index]
    kw, dyn = _split_kwargs(apply_kwargs)
    dtype = jnp.result_type(images)
    zeros = jnp.zeros(images.shape, dtype)
    (count, mean, m2), _ = loops.scan(
        _smoothgrad_step,
        (model, kw, bool(absolute)),
        (params, images, obj, sigma, dyn),
        (jnp.zeros((), dtype), zeros, zeros),
        (keys, jnp.asarray(valid)),
        loop=loop,
    )
    var = m2 / count
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


def _baseline(images: Array, baseline) -> Array:
    dtype = jnp.result_type(images)
    if baseline is None:
        return jnp.zeros(images.shape, dtype)
    if not isinstance(baseline, jax.core.Tracer):
        check_pixel_values(np.asarray(baseline), "the integrated-gradients baseline")
    base = jnp.asarray(baseline, dtype)
    if base.ndim == 0:
        return jnp.full(images.shape, base, dtype)
    if base.shape == images.shape[1:]:
        return jnp.broadcast_to(base[None], images.shape)
    if base.shape != images.shape:
        raise ValueError(
            f"baseline must be a number, [H, W, C] = {images.shape[1:]} or [N, H, W, C] = {images.shape}; "
            f"got shape {base.shape}"
        )
    return base


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
    loop: str = "auto",
    **apply_kwargs,
) -> IntegratedGradients:
    """Integrated gradients along the straight path from a baseline to each image.

    Args:
      baseline: `None` (zeros: a black image), a number, `[H, W, C]` or `[N, H, W, C]`, in [0, 1].
      steps: quadrature points on the path.
      method: `"trapezoid"` (Riemann trapezoid, both ends included) or `"gauss_legendre"`.
      batch_size: path points per model call (each call sees `batch_size * N` images); `None` all.
      loop: `"auto"`, `"python"` or `"scan"`: how chunks are looped over (`jaxviz.loops`).
      **apply_kwargs: passed to `Model.apply`.

    Returns:
      `IntegratedGradients(attributions [N, H, W, C], delta [N])`. `delta` measures the quadrature
      error: attributions sum to `f(x) - f(baseline)` as `steps` grows.
    """
    _check_loop(loop)
    obj = _prepare(model, params, images, target)
    base = _baseline(images, baseline)
    alphas, weights = path_weights(steps, method)
    index, valid = _chunk_layout(steps, batch_size)
    dtype = jnp.result_type(images)
    alphas = jnp.asarray(alphas[index], dtype)
    weights = jnp.asarray(np.where(valid, weights[index], 0.0), dtype)
    kw, dyn = _split_kwargs(apply_kwargs)
    diff = images - base
    total, _ = loops.scan(
        _integrated_gradients_step,
        (model, kw),
        (params, base, diff, obj, dyn),
        jnp.zeros(images.shape, dtype),
        (alphas, weights),
        loop=loop,
    )
    attributions = diff * total
    ends = _path_ends(model, kw, params, images, base, obj, dyn)
    delta = jnp.sum(attributions, axis=(1, 2, 3)) - (ends[0] - ends[1])
    return IntegratedGradients(attributions, delta)


# --------------------------------------------------------------------------- occlusion
def _pair(value, name: str) -> tuple[int, int]:
    """A positive int or a pair `(h, w)` of them, as a tuple; a `ValueError` naming `name` otherwise."""
    if _is_int(value):
        pair = (value, value)
    elif isinstance(value, (tuple, list, np.ndarray)) and len(value) == 2:
        pair = tuple(value)
    else:
        raise ValueError(f"{name} must be a positive integer or a pair (h, w) of them; got {value!r}")
    if not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive integer or a pair (h, w) of them; got {value!r}")
    return int(pair[0]), int(pair[1])


def _geometry(image_size: Sequence[int], size, stride) -> tuple[int, int, int, int, int, int]:
    """`(ph, pw, sh, sw, nh, nw)`: patch, stride and grid of an occlusion."""
    ph, pw = _pair(size, "size")
    sh, sw = _pair(stride if stride is not None else (max(ph // 2, 1), max(pw // 2, 1)), "stride")
    h, w = image_size
    if ph > h or pw > w:
        raise ValueError(f"occlusion patch {ph}x{pw} is larger than the image {h}x{w}")
    return ph, pw, sh, sw, (h - ph) // sh + 1, (w - pw) // sw + 1


def occlusion_grid(image_size: Sequence[int], size, stride=None) -> tuple[int, int]:
    """`(nh, nw)` patch positions for `image_size = (H, W)`: top-left corners `0, stride, ...` with the
    patch inside the image. `stride` defaults to half the patch size."""
    return _geometry(image_size, size, stride)[4:]


def _fill_value(images: Array, fill) -> Array:
    """The occlusion fill as `[N or 1, 1, 1, C]`; concrete numbers must be finite and in [0, 1]."""
    c, dtype = images.shape[-1], jnp.result_type(images)
    if isinstance(fill, str):
        if fill == "mean":
            return jnp.mean(images, axis=(1, 2), keepdims=True)
        if fill in ("zeros", "zero", "black"):
            return jnp.zeros((1, 1, 1, c), dtype)
        raise ValueError(f"fill must be 'mean', 'zeros', a number or [C] values; got {fill!r}")
    if not isinstance(fill, jax.core.Tracer):
        values = np.asarray(fill)
        if values.dtype.kind not in "iuf" or values.dtype == bool:
            raise ValueError(f"fill must be 'mean', 'zeros', a number or [C] values in [0, 1]; got {fill!r}")
        if not np.all(np.isfinite(values)) or values.min() < -RANGE_TOLERANCE or values.max() > 1 + RANGE_TOLERANCE:
            raise ValueError(
                f"fill must be finite and in [0, 1] (tolerance {RANGE_TOLERANCE}), like the images; got {fill!r}"
            )
    value = jnp.asarray(fill, dtype)
    if value.ndim == 0:
        return jnp.full((1, 1, 1, c), value, dtype)
    if value.shape == (c,):
        return value.reshape(1, 1, 1, c)
    raise ValueError(f"fill must be a number or {c} channel values; got shape {value.shape}")


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
    loop: str = "auto",
    **apply_kwargs,
) -> Array:
    """Occlusion sensitivity: the target class's probability with a patch of each image covered.

    The patch slides with its top-left corner at `(i * stride, j * stride)`, inside the image. The
    occluded copies are made inside the evaluated chunk (never all at once), `batch_size` patch
    positions per model call.

    Args:
      target: class index or `[N]` indices: the map holds the softmax probability of that class. An
        `Objective` gives its value instead (e.g. `class_logit(c)` for the unnormalised score).
      size: patch `(h, w)` or int (positive integers, at most the image size).
      stride: `(h, w)` or int; default half the patch.
      fill: `"mean"` (each image's mean colour), `"zeros"` (black), a number, or `[C]` values in [0, 1]
        (concrete ones must be finite; a traced NaN gives NaN maps).
      batch_size: patch positions per model call (each call sees `batch_size * N` images); `None`
        all positions at once.
      loop: `"auto"`, `"python"` or `"scan"`: how chunks are looped over (`jaxviz.loops`).

    Returns:
      `[N, nh, nw]` (see `occlusion_grid`); paint it onto the image with `occlusion_image`. All NaN for
      an image with a NaN or inf pixel (traced; concrete ones are refused), or a traced class out of
      range.
    """
    _check_images(model, images)
    _check_loop(loop)
    n, h, w, _ = images.shape
    ph, pw, sh, sw, nh, nw = _geometry((h, w), size, stride)
    fill_value = _fill_value(images, fill)
    prob = not isinstance(target, Objective)
    if prob:
        _check_class_target(model, target, n)
        target = objectives.class_log_prob(target)
    obj = _prepare(model, params, images, target)
    index, _ = _chunk_layout(nh * nw, batch_size)
    kw, dyn = _split_kwargs(apply_kwargs)
    scores = loops.map(
        _occlusion_chunk,
        (model, kw, (ph, pw, sh, sw, nw), prob),
        (params, images, fill_value, obj, dyn),
        jnp.asarray(index),
        loop=loop,
    )
    omap = scores.reshape(-1, n)[: nh * nw].T.reshape(n, nh, nw)
    # A patch over a NaN pixel would give a finite score: the whole map of such an image is NaN.
    return _nan_unless(omap, _finite_images(images))


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
    h, w = (int(s) for s in image_size)
    ph, pw, sh, sw, nh, nw = _geometry((h, w), size, stride)
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
    "SMOOTHGRAD_MODES",
    "UPSAMPLE",
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
