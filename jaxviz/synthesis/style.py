"""Neural style transfer (Gatys, Ecker & Bethge 2016) as a configuration of the one engine, with the
options users of neural-style know, colour preservation, coarse-to-fine multi-scale, spatial
control by masks, style + DeepDream, rematerialisation and bfloat16 for high resolution, and
batches of experiments.

    res = style.transfer(model, params, content, style_image, key=jax.random.key(0), steps=500)
    res.images                      # [E, H, W, 3] in [0, 1]

Scale: what neural-style's weights 5 / 100 / 1e-3 refer to
-----------------------------------------------------------
neural-style (Lua L419-436) optimises the *preprocessed* image `p = 256 * x_BGR - mean_BGR`
(x in [0, 1]; mean pixel 103.939, 116.779, 123.68) fed to Caffe's VGG. jaxviz optimises the same
variable: the parameterisation `NeuralStylePixels` has `raw = 256 * x - CAFFE_MEAN_RGB` (RGB order:
the channel order does not change any loss) and `images = raw / 256 + CAFFE_MEAN_RGB / 256`, which
the model then normalises as it always does (torchvision's mean/std for VGG). So:

  * init "random" is neural-style's `randn * 0.001` in raw units (the mean pixel plus noise of
    0.001/256 in [0, 1] units); Adam's learning rate is in raw units (neural-style Lua's 10; 10/256
    in [0, 1] units; style-transfer-pytorch's 0.02 is 5.12 here); L-BFGS sees the same variable;
  * total variation is computed on `256 * images` (the mean offset cancels in differences), form
    "half-sum-squared" by default: the loss whose gradient neural-style Lua codes, so
    `tv_weight * 0.5 * sum(dx^2 + dy^2)` over the 0-256 image, i.e. `65536 * tv_weight` times the
    half-sum-squared TV of the [0, 1] image (neural-style-pt: `tv_form="l1"`, `256 * tv_weight`);
  * content and style terms are neural-style's formulas on the features of the model in use:
    `content_weight * mean((F - P)^2)` per content layer and
    `style_weight * layer_weight * mean((F F^T / CHW - A)^2)` per style layer (`A` the blended style
    Gram / CHW). The features are the given network's: torchvision's VGG19 on its normalised input is
    not Caffe's VGG19 on the 0-256 input (different weights; no exact feature conversion exists), so
    the same weights balance differently with converted torchvision weights (its features are
    smaller: the PyTorch tutorial with torchvision VGG19 uses style/content 1e6 / 1).
  `tests/test_style.py` checks that `loss_terms` equals a direct torch re-implementation of
  neural-style's formula on the preprocessed image and the same features.

Options (defaults as neural-style unless said)
----------------------------------------------
content layer relu4_2, style layers relu1_1..relu5_1 (per-layer weights `style_layer_weights`),
weights 5 / 100 / 1e-3, L-BFGS (torch's, without line search, history 100:
`jaxviz.synthesis.optimizers.lbfgs`, see `LBFGS_NOTE`) or Adam (lr 10), `style_scale` (style resized
to `round(style_scale * long side)` long side; neural-style Lua uses ceil, -pt int), several style
images blended with weights normalised to sum 1, init "random" / "content" / "style" / an image, max
or average pooling, `normalize_gradients` (each loss term's gradient at its layer L1-normalised,
then times its weight, as neural-style Lua `-normalize_gradients`), `original_colors`
(luminance-only post-processing, neural-style's `-original_colors 1`, YUV as torch/image) and
`match_colors` (Gatys' `match_color` of the style to the content before synthesis, "pca" / "chol" /
"sym"), `convention` for the Gram normalisation (`jaxviz.synthesis.losses`; "neural-style" default).

Multi-scale (`min_scale=`): style-transfer-pytorch's schedule, long sides
`round(end / 2^(i/2))` while >= min_scale, bicubic resizing, each scale started from the previous
result (its averaged iterate with `iterate_average`); with `optimizer="adam"` Adam's moments are
carried across scales (`mu` bicubic, `nu` bilinear clipped at 0, the step count kept, as its
`scale_adam`); any other optimiser (L-BFGS included) starts afresh at each scale. `iterate_average=0.99`: a bias-corrected EMA of the iterates (restarted at
each scale, as style-transfer-pytorch) is the result.

Masks (`masks=`): `[R, H, W]` in [0, 1] at the content's size, one per region, with one style per
region: region r's Gram at each layer is the mask-weighted Gram `sum_p m_p f_p f_p^T / (C sum_p m_p)`
(m the mask resized to the layer, bilinear with antialiasing; for binary masks: the features
multiplied by the mask, normalised by the mask's area) compared with its own style's Gram. Pixels
outside every mask get no style loss (content and TV only).

Style + DeepDream (`dream_layers=`): fast-neural-style's `slow_neural_style` DeepDreamLoss: value
`-dream_weight * w_l * 0.5 * sum(F^2)`, gradient `-dream_weight * w_l * clip(F, -max_grad, max_grad)`
(max_grad 100 as there).

High resolution: `remat=True` runs the network in blocks (the layers up to each pooling layer)
under a custom-VJP checkpoint, so the backward pass keeps only the block boundaries and recomputes
one block at a time (XLA's memory analysis of value_and_grad of the neural-style loss, VGG19 to
relu5_1, CPU, jax 0.10.2, benchmarks/style_bench.py: 128 / 256 / 512 px temporaries 89 / 200 /
643 MiB without, 76 / 155 / 575 MiB with remat, 122 / 182 / 427 MiB with remat + bf16);
`dtype=jnp.bfloat16` runs the network in bfloat16 (the losses in float32; the bf16 copies of the
weights make it cost more than it saves below ~256 px). Remat needs a model whose ReLUs can be swapped and are called in layer order
(VGG, AlexNet); others get a clear error.

Experiments: `transfer` runs E experiments when a weight is a sequence of E values (a sweep), and
`transfer_many` one experiment per style (several styles for one content). Each is its own engine
experiment and equals a one-by-one run given the same per-experiment key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.models import base
from jaxviz.synthesis import color, engine, losses, optimizers
from jaxviz.synthesis.texture import check_layers

Array = jax.Array

CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
#: neural-style's mean pixel (Caffe VGG, BGR 103.939, 116.779, 123.68) in RGB order, 0-256 units.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
PIXEL_SCALE = 256.0
INITS = ("random", "content", "style")
OPTIMIZERS = ("lbfgs", "lbfgs-linesearch", "adam")
DREAM_MAX_GRAD = 100.0

LBFGS_NOTE = (
    "optimizer='lbfgs' is torch's L-BFGS without line search as neural-style runs it (history 100, "
    "step 1, the first step min(1, 1/||g||_1), one evaluation per step, a curvature pair stored only "
    "when s.y > 1e-10 ||s|| ||y|| (torch: s.y > 1e-10, which refuses every pair of a loss of small "
    "scale)): `jaxviz.synthesis.optimizers.lbfgs`, equal to torch.optim.LBFGS to float64 rounding "
    "(tests/test_optimizers.py). Not optax.lbfgs(linesearch=None), which keeps pairs of negative "
    "curvature and can climb on a style loss. 'lbfgs-linesearch' is optax.lbfgs(memory_size=100) "
    "with its zoom line search "
    "(more evaluations per step, monotone)."
)


# --------------------------------------------------------------------------- parameterisation
@dataclasses.dataclass(frozen=True)
class NeuralStylePixels:
    """neural-style's optimisation variable: `raw = 256 * images - CAFFE_MEAN_RGB` `[B, H, W, 3]`.

    `to_images` is not clipped (neural-style does not clamp while optimising; values may leave
    [0, 1] a little); `transfer` clips its output. `init`: `sd * randn` in raw units (neural-style:
    0.001), i.e. the mean pixel plus tiny noise."""

    shape: tuple = (256, 256, 3)
    sd: float = 0.001

    @property
    def raw_shape(self) -> tuple:
        return tuple(self.shape)

    def _mean(self, ndim, dtype):
        return jnp.asarray(CAFFE_MEAN_RGB, dtype).reshape((1,) * (ndim - 1) + (3,))

    def init(self, key: Array, batch: int = 1) -> Array:
        return self.sd * jax.random.normal(key, (int(batch), *self.shape), jnp.float32)

    def to_images(self, raw: Array, consts: Any = None) -> Array:
        del consts
        return (raw + self._mean(raw.ndim, raw.dtype)) / PIXEL_SCALE

    def from_images(self, images: Array) -> Array:
        images = jnp.asarray(images, jnp.float32)
        return images * PIXEL_SCALE - self._mean(images.ndim, images.dtype)


# --------------------------------------------------------------------------- optimisers
class AverageState(NamedTuple):
    """Bias-corrected EMA of the iterates: average = value / (1 - accum)."""

    value: Any
    accum: Array


def iterate_average(decay: float = 0.99) -> optax.GradientTransformationExtraArgs:
    """Pass-through transformation that tracks an EMA of the iterates (params + updates) in its
    state, style-transfer-pytorch's `EMA` (bias-corrected, started at the initial iterate). Chain
    it last; read the average with `averaged(state)`."""
    if not 0 < decay < 1:
        raise ValueError(f"iterate_average decay must be in (0, 1); got {decay}")

    def init(params):
        return AverageState(jax.tree_util.tree_map(lambda p: (1 - decay) * p, params), jnp.asarray(decay, jnp.float32))

    def update(updates, state, params=None, **extra):
        new = optax.apply_updates(params, updates)
        value = jax.tree_util.tree_map(lambda v, p: decay * v + (1 - decay) * p, state.value, new)
        return updates, AverageState(value, state.accum * decay)

    return optax.GradientTransformationExtraArgs(init, update)


def _find(state, kind):
    found = []

    def visit(s):
        if isinstance(s, kind):
            found.append(s)
        elif isinstance(s, (tuple, list)) and not hasattr(s, "_fields"):
            for x in s:
                visit(x)
        elif hasattr(s, "_fields"):
            for x in s:
                visit(x)

    visit(state)
    return found


def averaged(opt_state) -> Any:
    """The bias-corrected averaged iterate held in an optimiser state built with `iterate_average`
    (leaves `[E, ...]`)."""
    found = _find(opt_state, AverageState)
    if not found:
        raise ValueError("the optimiser state holds no iterate average (build it with iterate_average)")
    s = found[-1]
    return jax.tree_util.tree_map(lambda v: v / (1 - s.accum.reshape(s.accum.shape + (1,) * (v.ndim - s.accum.ndim))), s.value)


def _clip_raw() -> optax.GradientTransformationExtraArgs:
    """Project the raw iterate so the image stays in [0, 1] (style-transfer-pytorch clamps after
    each Adam step)."""

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None, **extra):
        def proj(u, p):
            mean = jnp.asarray(CAFFE_MEAN_RGB, p.dtype).reshape((1,) * (p.ndim - 1) + (3,))
            return jnp.clip(p + u, -mean, PIXEL_SCALE - mean) - p

        return jax.tree_util.tree_map(proj, updates, params), state

    return optax.GradientTransformationExtraArgs(init, update)


@functools.lru_cache(maxsize=None)
def make_optimizer(optimizer="lbfgs", learning_rate: Optional[float] = None, clip: bool = False, average: Optional[float] = None):
    """The optax transformation `transfer` uses (cached: the same settings reuse a compilation).

    `optimizer`: "lbfgs" (`LBFGS_NOTE`), "lbfgs-linesearch", "adam" (neural-style's Adam: default
    lr 10 in raw units, betas 0.9/0.999), or any optax transformation. `clip`: keep the image in
    [0, 1] after each step. `average`: EMA decay of the iterate average, or None."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS} or an optax transformation; got {optimizer!r}")
        lr = learning_rate
        if lr is not None and not lr > 0:
            raise ValueError(f"learning_rate must be positive; got {lr}")
        if optimizer == "adam":
            base_opt = optax.adam(10.0 if lr is None else lr)
        elif optimizer == "lbfgs":
            base_opt = optimizers.lbfgs(learning_rate=1.0 if lr is None else lr, history_size=100)
        else:
            base_opt = optax.lbfgs(learning_rate=lr, memory_size=100)
    else:
        base_opt = optimizer
    parts = [base_opt]
    if clip:
        parts.append(_clip_raw())
    if average is not None:
        parts.append(iterate_average(float(average)))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


# --------------------------------------------------------------------------- features (remat, bf16)
def _relu_names(model) -> tuple:
    return tuple(s.name for s in model.layers if s.kind == "relu")


def _segments(model, last: str, needed: Sequence[str]):
    """Block boundaries: the ReLU right before each pooling layer, before `last`."""
    names = model.layer_names
    i_last = names.index(last)
    bounds = []
    for i, spec in enumerate(model.layers[: i_last]):
        if spec.kind == "pool" and i > 0 and model.layers[i - 1].kind == "relu":
            bounds.append(names[i - 1])
    bounds = [b for b in bounds if names.index(b) < i_last] + [last]
    segs, start = [], None
    for end in bounds:
        lo = names.index(start) if start is not None else -1
        keep = tuple(dict.fromkeys([n for n in needed if lo < names.index(n) <= names.index(end)] + [end]))
        segs.append((start, end, keep))
        start = end
    return segs


def _segment_fn(model, pool, start, end, keep):
    relus = _relu_names(model)

    def f(params, images, h):
        if start is None:
            acts = model.apply(params, images, until=end, pool=pool)
            return {k: acts[k] for k in keep}
        order = iter(relus)
        hit = []

        def hook(x):
            name = next(order, None)
            if name == start:
                if x.shape != h.shape:
                    raise ValueError(f"remat: {model.name}'s ReLU call for {start!r} has shape {x.shape}, expected {h.shape}; "
                                     "remat needs a model that calls its ReLUs in layer order (VGG, AlexNet)")
                hit.append(name)
                return h
            return jax.nn.relu(x)

        acts = model.apply(params, images, until=end, pool=pool, relu=hook)
        if not hit:
            raise ValueError(f"remat: {model.name} never called its ReLU for {start!r}; remat=True needs a model whose "
                             "ReLUs are swappable and called in layer order (VGG, AlexNet)")
        return {k: acts[k] for k in keep}

    @jax.custom_vjp
    def seg(params, images, h):
        return f(params, images, h)

    def fwd(params, images, h):
        return f(params, images, h), (params, images, h)

    def bwd(res, g):
        params, images, h = res
        # Tie the recomputation to the cotangent of the block's output, which only exists once the
        # later blocks' backward passes ran: XLA can then neither merge it with the forward pass
        # (CSE) nor schedule it early, so one block's activations live at a time.
        tie = jnp.reshape(g[end], (-1,))[0] * 0
        zeros_p = jax.tree_util.tree_map(jnp.zeros_like, params)
        if start is None:
            _, vjp = jax.vjp(lambda x: f(params, x, h), images + tie.astype(images.dtype))
            (gx,) = vjp(g)
            return zeros_p, gx, jnp.zeros_like(h)
        _, vjp = jax.vjp(lambda hh: f(params, images, hh), h + tie.astype(h.dtype))
        (gh,) = vjp(g)
        return zeros_p, jnp.zeros_like(images), gh

    seg.defvjp(fwd, bwd)
    return seg


def features(model, params, images, layers: Sequence[str], *, pool: str = "max", remat: bool = False, dtype=jnp.float32) -> dict:
    """`{layer: activation}` (float32) for `layers` of `images` `[B, H, W, 3]`; the network runs in
    `dtype` and, with `remat=True`, in rematerialised blocks (module docstring). Same values both
    ways (remat recomputes exactly)."""
    layers = tuple(dict.fromkeys(layers))
    last = max(layers, key=model.index)
    low = jnp.dtype(dtype).itemsize < 4
    out_dtype = jnp.promote_types(images.dtype, jnp.float32)
    x = images.astype(dtype if low else jnp.promote_types(images.dtype, dtype))
    if not remat:
        acts = model.apply(params, x, until=last, pool=pool)
        return {l: acts[l].astype(out_dtype) for l in layers}
    if not model.swappable_relu:
        raise ValueError(f"remat=True needs a model whose ReLUs can be swapped; {model.name}'s cannot")
    out = {}
    h = jnp.zeros((), x.dtype)
    for start, end, keep in _segments(model, last, layers):
        r = _segment_fn(model, pool, start, end, keep)(params, x, h)
        out.update(r)
        h = r[end]
    return {l: out[l].astype(out_dtype) for l in layers}


# --------------------------------------------------------------------------- the loss
@dataclasses.dataclass(frozen=True)
class Static:
    """Hashable configuration of the style loss (the engine's `static`)."""

    model: Any
    content_layers: tuple
    style_layers: tuple
    style_layer_weights: tuple
    convention: str
    pool: str
    tv_form: str
    normalize_gradients: bool
    masked: bool
    dream_layers: tuple
    dream_layer_weights: tuple
    dream_max_grad: Optional[float]
    remat: bool
    dtype: str

    @property
    def layers(self) -> tuple:
        return tuple(dict.fromkeys(self.content_layers + self.style_layers + self.dream_layers))


class Problem(NamedTuple):
    """A prepared style-transfer problem at one size: the engine's `static` and per-experiment
    `targets` (leaves `[E, ...]`), and the image `size` `(H, W)`."""

    static: Static
    targets: dict
    size: tuple


def _col(w, x):
    """Per-experiment weight `[B]` shaped to broadcast against `x` `[B]`."""
    return jnp.reshape(w, x.shape)


def _weighted(term_fn, f, w, normalize):
    """`w * term_fn(f)` `[B]`; with `normalize`, the gradient at `f` is L1-normalised then times
    `w` (neural-style's -normalize_gradients), the value still `w * term`."""
    if not normalize:
        v = term_fn(f)
        return _col(w, v) * v
    v = term_fn(losses.normalize_gradient(f, w))
    wv = _col(w, v)
    return v + jax.lax.stop_gradient((wv - 1) * v)


def _masked_gram_loss(f, target, masks, convention):
    # f [B, h, w, C], masks [B, R, h, w], target [B, R, C, C] -> [B]
    c = f.shape[-1]
    area = jnp.sum(masks, axis=(2, 3))  # [B, R]
    g = jnp.einsum("bhwc,bhwd,brhw->brcd", f, f, masks)
    denom = jnp.maximum(area, 1e-12) * (c if convention == "neural-style" else 1)
    g = g / denom[:, :, None, None]
    per = jnp.mean(jnp.square(g - target), axis=(2, 3))
    if convention == "gatys":
        per = per / 4
    return jnp.sum(jnp.where(area > 0, per, 0.0), axis=1)


def _dream(f, max_grad):
    # value -0.5 * sum(F^2), gradient -clip(F, -max_grad, max_grad) (fast-neural-style DeepDreamLoss)
    axes = tuple(range(1, f.ndim))
    value = -0.5 * jnp.sum(jnp.square(f), axis=axes)
    if max_grad is None:
        return value
    g = jax.lax.stop_gradient(jnp.clip(f, -max_grad, max_grad))
    surrogate = -jnp.sum(g * f, axis=axes)
    return surrogate + jax.lax.stop_gradient(value - surrogate)


def loss_terms(static: Static, params, targets: dict, images: Array) -> dict:
    """The weighted terms `{"content", "style", "tv", "dream"}`, each `[B]`, of images `[B, H, W, 3]`
    (targets with leading axis B or 1). Their sum is what `transfer` minimises."""
    acts = features(static.model, params, images, static.layers, pool=static.pool, remat=static.remat, dtype=jnp.dtype(static.dtype))
    w = targets["w"]
    ng = static.normalize_gradients
    b = images.shape[0]
    zero = jnp.zeros((b,), jnp.promote_types(images.dtype, jnp.float32))
    content = zero
    for l in static.content_layers:
        content = content + _weighted(lambda f, l=l: losses.content_loss(f, targets["content"][l]), acts[l], w["content"], ng)
    style = zero
    for l, lw in zip(static.style_layers, static.style_layer_weights):
        if static.masked:
            fn = lambda f, l=l: _masked_gram_loss(f, targets["style"][l], targets["masks"][l], static.convention)  # noqa: E731
        else:
            fn = lambda f, l=l: losses.style_distance(f, targets["style"][l], convention=static.convention)  # noqa: E731
        style = style + _weighted(fn, acts[l], lw * w["style"], ng)
    tv = _col(w["tv"], zero) * losses.total_variation(images * PIXEL_SCALE, form=static.tv_form)
    dream = zero
    for l, lw in zip(static.dream_layers, static.dream_layer_weights):
        dream = dream + _col(lw * w["dream"], zero) * _dream(acts[l], static.dream_max_grad)
    return {"content": content, "style": style, "tv": tv, "dream": dream}


def _loss(static, consts, targets, images, key, step):
    t = loss_terms(static, consts, targets, images)
    return jnp.concatenate([t["content"], t["style"], t["tv"], t["dream"]])


# --------------------------------------------------------------------------- setup
def _as_batch(x, what) -> Array:
    x = jnp.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{what} must be an RGB image [H, W, 3] or [1, H, W, 3] in [0, 1]; got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{what} must be floating point in [0, 1]; got dtype {x.dtype}")
    base.check_pixel_values(x, what)
    return x.astype(jnp.float32)


def _style_list(style, what="style") -> list:
    """One experiment's style images: an image, `[S, H, W, 3]`, or a list of images."""
    if isinstance(style, (list, tuple)):
        out = []
        for i, s in enumerate(style):
            s = _as_batch(s, f"{what} image {i}")
            out.extend(s[j : j + 1] for j in range(s.shape[0]))
    else:
        s = _as_batch(style, f"{what} image")
        out = [s[j : j + 1] for j in range(s.shape[0])]
    if not out:
        raise ValueError(f"give at least one {what} image")
    return out


def fit_size(hw, long_side: int) -> tuple:
    """`(h, w)` with the long side `long_side` and the aspect ratio of `hw` (style-transfer-pytorch's
    `size_to_fit`, scaling up too)."""
    h, w = int(hw[0]), int(hw[1])
    if h >= w:
        return int(long_side), max(1, round(long_side * w / h))
    return max(1, round(long_side * h / w)), int(long_side)


def resize(images: Array, hw, method: str = "cubic") -> Array:
    """Resize `[B, H, W, C]` to `(h, w)` (antialiased when shrinking), clipped to [0, 1]."""
    hw = (int(hw[0]), int(hw[1]))
    if tuple(images.shape[1:3]) == hw:
        return images
    out = jax.image.resize(images, (images.shape[0], *hw, images.shape[-1]), method)
    return jnp.clip(out, 0.0, 1.0)


def multiscale_sizes(min_scale: int, end_scale: int) -> tuple:
    """style-transfer-pytorch's `gen_scales`: `round(end / 2^(i/2))` for i = 0, 1, ... while >= min,
    ascending."""
    if not (int(min_scale) == min_scale and min_scale >= 1):
        raise ValueError(f"min_scale must be a positive int; got {min_scale}")
    min_scale = min(int(min_scale), int(end_scale))
    scales, i, s = set(), 0, int(end_scale)
    while s >= min_scale:
        scales.add(s)
        i += 1
        s = round(end_scale / 2 ** (i / 2))
    return tuple(sorted(scales))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _target_features(model, layers, pool, dtype, params, images):
    return features(model, params, images, layers, pool=pool, dtype=jnp.dtype(dtype))


def _layer_sizes(model, params, layers, hw, pool):
    shapes = jax.eval_shape(lambda p, x: model.apply(p, x, until=max(layers, key=model.index), pool=pool), params,
                            jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32))
    return {l: tuple(shapes[l].shape[1:3]) for l in layers}


def _per_experiment(value, name, n, positive=False):
    vals = tuple(float(v) for v in (value if isinstance(value, (list, tuple, np.ndarray)) else [value]))
    if not vals:
        raise ValueError(f"{name} is empty")
    for v in vals:
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise ValueError(f"{name} must be {'positive' if positive else '>= 0'} and finite; got {vals}")
    if len(vals) not in (1, n):
        raise ValueError(f"{name} has {len(vals)} values but there are {n} experiments")
    return vals * n if len(vals) == 1 else vals


def setup(
    model: base.Model,
    params,
    content: Array,
    styles: Sequence,
    *,
    size: Optional[tuple] = None,
    content_layers: Sequence[str] = CONTENT_LAYERS,
    style_layers: Sequence[str] = STYLE_LAYERS,
    style_layer_weights: Optional[Sequence[float]] = None,
    content_weight=5.0,
    style_weight=100.0,
    tv_weight=1e-3,
    dream_weight=0.0,
    dream_layers: Sequence[str] = (),
    dream_layer_weights: Optional[Sequence[float]] = None,
    dream_max_grad: Optional[float] = DREAM_MAX_GRAD,
    blend_weights: Optional[Sequence[float]] = None,
    style_scale: float = 1.0,
    masks: Optional[Array] = None,
    match_colors: Optional[str] = None,
    convention: str = "neural-style",
    pool: str = "max",
    tv_form: str = "half-sum-squared",
    normalize_gradients: bool = False,
    remat: bool = False,
    dtype=jnp.float32,
) -> Problem:
    """Targets and configuration of E experiments at one size (what `transfer` does per scale).

    Args:
      content: `[H, W, 3]` or `[1, H, W, 3]` in [0, 1].
      styles: E experiments' styles, each an image, `[S, H, W, 3]`, or a list of images (blended by
        `blend_weights`, or with `masks`: one per region).
      size: `(H, W)` of the output (the content is resized to it); default the content's size.
      other arguments: see `transfer`.
    """
    content = _as_batch(content, "content image")
    if content.shape[0] != 1:
        raise ValueError(f"give one content image; got {content.shape[0]}")
    size = tuple(content.shape[1:3]) if size is None else (int(size[0]), int(size[1]))
    if size[0] < model.min_size[0] or size[1] < model.min_size[1]:
        raise ValueError(f"the output size {size} is smaller than {model.name}'s minimum {model.min_size} "
                         "(with min_scale: raise min_scale so that every scale's short side reaches the minimum)")
    content_layers = check_layers(model, content_layers, "content layer")
    style_layers = check_layers(model, style_layers, "style layer")
    dream_layers = check_layers(model, dream_layers, "dream layer") if dream_layers else ()
    convention = losses.style_convention(convention)
    tv_form = losses.tv_form(tv_form)
    if pool not in model.pool_modes:
        raise ValueError(f"pool must be one of {model.pool_modes} for {model.name}; got {pool!r}")
    slw = _per_experiment(1.0 if style_layer_weights is None else style_layer_weights, "style_layer_weights", len(style_layers), positive=True)
    dlw = _per_experiment(1.0 if dream_layer_weights is None else dream_layer_weights, "dream_layer_weights", max(1, len(dream_layers)), positive=True)[: len(dream_layers)]
    if not (math.isfinite(style_scale) and style_scale > 0):
        raise ValueError(f"style_scale must be positive; got {style_scale}")
    if dream_max_grad is not None and not dream_max_grad > 0:
        raise ValueError(f"dream_max_grad must be positive or None; got {dream_max_grad}")
    if match_colors is not None and match_colors not in color.MATCH_MODES:
        raise ValueError(f"match_colors must be None or one of {color.MATCH_MODES}; got {match_colors!r}")
    n = len(styles)
    if n < 1:
        raise ValueError("give at least one experiment's style")
    w = {
        "content": _per_experiment(content_weight, "content_weight", n),
        "style": _per_experiment(style_weight, "style_weight", n),
        "tv": _per_experiment(tv_weight, "tv_weight", n),
        "dream": _per_experiment(dream_weight, "dream_weight", n),
    }
    dtype_name = jnp.dtype(dtype).name
    masked = masks is not None
    if masked and convention == "wasserstein":
        raise ValueError("masks work with Gram conventions, not 'wasserstein'")
    static = Static(model, content_layers, style_layers, tuple(slw), convention, pool, tv_form, bool(normalize_gradients),
                    masked, dream_layers, tuple(dlw), dream_max_grad, bool(remat), dtype_name)

    content_s = resize(content, size)
    all_layers = static.layers
    c_acts = _target_features(model, all_layers, pool, dtype_name, params, content_s)
    targets = {"content": {l: jnp.repeat(c_acts[l], n, axis=0) for l in content_layers}}

    if masked:
        masks = jnp.asarray(masks, jnp.float32)
        if masks.ndim == 2:
            masks = masks[None]
        if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(content.shape[1:3]):
            raise ValueError(f"masks must be [R, H, W] at the content image's size {tuple(content.shape[1:3])}; got shape {masks.shape}")
        base.check_pixel_values(masks, "masks")
        mk = resize(masks[..., None], size, "linear")[..., 0]
        sizes = _layer_sizes(model, params, style_layers, size, pool)
        layer_masks = {l: resize(mk[..., None], sizes[l], "linear")[..., 0] for l in style_layers}
        targets["masks"] = {l: jnp.repeat(m[None], n, axis=0) for l, m in layer_masks.items()}

    long_side = max(size)
    per_exp = []
    for e, spec in enumerate(styles):
        imgs = _style_list(spec, f"experiment {e}'s style")
        if masked and len(imgs) != masks.shape[0]:
            raise ValueError(f"{masks.shape[0]} mask(s) but experiment {e} has {len(imgs)} style image(s): give one style per region")
        tg = []
        for i, s in enumerate(imgs):
            hw = fit_size(s.shape[1:3], max(1, round(style_scale * long_side)))
            if hw[0] < model.min_size[0] or hw[1] < model.min_size[1]:
                raise ValueError(f"style image {i} of experiment {e} resized to {hw[0]}x{hw[1]} (style_scale {style_scale} x long side "
                                 f"{long_side}) is smaller than {model.name}'s minimum {model.min_size[0]}x{model.min_size[1]}")
            s = resize(s, hw)
            if match_colors is not None:
                s = color.match_color(s, content_s, mode=match_colors)
            acts = _target_features(model, style_layers, pool, dtype_name, params, s)
            tg.append({l: losses.style_target(acts[l], convention=convention) for l in style_layers})
        if masked:
            per_exp.append({l: jnp.stack([t[l][0] for t in tg])[None] for l in style_layers})  # [1, R, C, C]
        else:
            per_exp.append(losses.blend_targets(tg, blend_weights))
    targets["style"] = jax.tree_util.tree_map(lambda *ts: jnp.concatenate(ts, axis=0), *per_exp)
    targets["w"] = {k: jnp.asarray(v, jnp.float32) for k, v in w.items()}
    return Problem(static, targets, size)


# --------------------------------------------------------------------------- the run
class StyleResult(NamedTuple):
    """What `transfer` returns.

    Attributes:
      images: `[E, H, W, 3]` in [0, 1] (clipped; `original_colors`: the content's chroma).
      raw: final raw iterate (`NeuralStylePixels`, `[E, H, W, 3]`; the averaged one with
        `iterate_average`).
      losses: one `[T_s, E]` array per scale (summed loss per step, engine convention).
      sizes: the `(H, W)` of each scale.
      result: the engine's `Result` of the last scale (opt_state, finished, ...).
    """

    images: Array
    raw: Array
    losses: tuple
    sizes: tuple
    result: engine.Result


def _experiment_keys(key, n):
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if key.ndim == 0:
        return jax.random.split(key, n)
    if key.shape != (n,):
        raise ValueError(f"key must be one key or [E] = [{n}] keys; got shape {key.shape}")
    return key


def _carry_state(old, new, hw):
    """New scale's optimiser state: Adam's mu (bicubic) and nu (bilinear, >= 0) resized from the old
    state, its count kept; everything else (L-BFGS memory, the iterate average) fresh."""

    def visit(o, nw):
        if isinstance(nw, optax.ScaleByAdamState):
            def rs(a, method):
                return jax.image.resize(a, (a.shape[0], *hw, a.shape[-1]), method)

            mu = jax.tree_util.tree_map(lambda a: rs(a, "cubic"), o.mu)
            nu = jax.tree_util.tree_map(lambda a: jnp.maximum(rs(a, "linear"), 0.0), o.nu)
            return optax.ScaleByAdamState(count=o.count, mu=mu, nu=nu)
        if hasattr(nw, "_fields"):
            return type(nw)(*[visit(a, b) for a, b in zip(o, nw)])
        if isinstance(nw, tuple):
            return tuple(visit(a, b) for a, b in zip(o, nw))
        return nw

    return visit(old, new)


def _run(model, params, content, styles, *, key, steps, initial_steps, image_size, min_scale, init, optimizer, learning_rate,
         clip, iterate_average_decay, original_colors, color_space, callback, loop, setup_kw):
    content = _as_batch(content, "content image")
    hw0 = tuple(content.shape[1:3])
    end = max(hw0) if image_size is None else int(image_size)
    if end < 1:
        raise ValueError(f"image_size must be positive; got {image_size}")
    final = fit_size(hw0, end)
    scales = (end,) if min_scale is None else multiscale_sizes(min_scale, end)
    sizes = tuple(final if s == end else fit_size(hw0, s) for s in scales)
    n = len(styles)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps}")
    keys = _experiment_keys(key, n)
    k_init = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    k_run = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
    opt = make_optimizer(optimizer, learning_rate, bool(clip), iterate_average_decay)
    carries_adam = isinstance(optimizer, str) and optimizer == "adam"

    frozen = model.frozen(params)  # the backward kernels once for all scales
    images = None
    opt_state = None
    all_losses = []
    res = None
    step0 = 0
    for si, hw in enumerate(sizes):
        prob = setup(model, params, content, styles, size=hw, **setup_kw)
        pix = NeuralStylePixels((hw[0], hw[1], 3))
        if images is None:
            raw0 = _initial_raw(init, pix, k_init, content, styles, hw, n)
        else:
            raw0 = pix.from_images(resize(images, hw))
        state = None
        if opt_state is not None and carries_adam:
            state = _carry_state(opt_state, engine.vmap_optimizer_state(opt, raw0), hw)
        t = int(initial_steps) if (si == 0 and initial_steps is not None) else int(steps)
        res = engine.optimize(_loss, frozen, raw0, opt, steps=t, key=k_run, param=pix, targets=prob.targets, static=prob.static,
                              opt_state=state, step0=step0, callback=callback, loop=loop)
        step0 += t
        all_losses.append(res.losses)
        raw = averaged(res.opt_state) if iterate_average_decay is not None else res.raw
        images = jnp.clip(pix.to_images(raw), 0.0, 1.0)
        opt_state = res.opt_state
    out = images
    if original_colors:
        out = color.transfer_luminance(out, resize(content, sizes[-1]), space=color_space)
    return StyleResult(out, raw, tuple(all_losses), sizes, res)


def _initial_raw(init, pix, k_init, content, styles, hw, n):
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS} or an image; got {init!r}")
        if init == "random":
            return jax.vmap(lambda k: pix.init(k, 1)[0])(k_init)
        if init == "content":
            return jnp.repeat(pix.from_images(resize(content, hw)), n, axis=0)
        imgs = [resize(_style_list(s)[0], hw) for s in styles]
        return pix.from_images(jnp.concatenate(imgs, axis=0))
    img = _as_batch(init, "init image") if jnp.ndim(init) == 3 else jnp.asarray(init, jnp.float32)
    base.check_pixel_values(img, "init image")
    if img.ndim != 4 or img.shape[0] not in (1, n):
        raise ValueError(f"init image must be [H, W, 3], [1, H, W, 3] or [E={n}, H, W, 3]; got shape {img.shape}")
    img = resize(img, hw)
    return pix.from_images(jnp.broadcast_to(img, (n, *img.shape[1:])))


_SETUP_KEYS = ("content_layers", "style_layers", "style_layer_weights", "content_weight", "style_weight", "tv_weight",
               "dream_weight", "dream_layers", "dream_layer_weights", "dream_max_grad", "blend_weights", "style_scale",
               "masks", "match_colors", "convention", "pool", "tv_form", "normalize_gradients", "remat", "dtype")


def transfer_many(
    model: base.Model,
    params,
    content: Array,
    styles: Sequence,
    *,
    key: Array,
    steps: int = 1000,
    initial_steps: Optional[int] = None,
    image_size: Optional[int] = None,
    min_scale: Optional[int] = None,
    init: Union[str, Array] = "random",
    optimizer: Union[str, optax.GradientTransformation] = "lbfgs",
    learning_rate: Optional[float] = None,
    clip: bool = False,
    iterate_average: Optional[float] = None,
    original_colors: bool = False,
    color_space: str = "yuv",
    callback=None,
    loop: str = "auto",
    **options,
) -> StyleResult:
    """One experiment per entry of `styles` (each an image, `[S, H, W, 3]` or a list blended by
    `blend_weights`; with `masks`, one image per region), all for the same content, in one batched
    call; weights given as sequences vary per experiment too. Arguments as `transfer`."""
    unknown = set(options) - set(_SETUP_KEYS)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}")
    styles = list(styles)
    return _run(model, params, content, styles, key=key, steps=steps, initial_steps=initial_steps, image_size=image_size,
                min_scale=min_scale, init=init, optimizer=optimizer, learning_rate=learning_rate, clip=clip,
                iterate_average_decay=iterate_average, original_colors=original_colors, color_space=color_space,
                callback=callback, loop=loop, setup_kw=options)


def transfer(
    model: base.Model,
    params,
    content: Array,
    style,
    *,
    key: Array,
    steps: int = 1000,
    initial_steps: Optional[int] = None,
    image_size: Optional[int] = None,
    min_scale: Optional[int] = None,
    init: Union[str, Array] = "random",
    optimizer: Union[str, optax.GradientTransformation] = "lbfgs",
    learning_rate: Optional[float] = None,
    clip: bool = False,
    iterate_average: Optional[float] = None,
    original_colors: bool = False,
    color_space: str = "yuv",
    callback=None,
    loop: str = "auto",
    **options,
) -> StyleResult:
    """Gatys et al. 2016 style transfer of `content` in the style of `style` (module docstring).

    Args:
      model, params: any jaxviz `Model` (VGG19 for neural-style's layers) and its params.
      content: `[H, W, 3]` or `[1, H, W, 3]` in [0, 1].
      style: an image, `[S, H, W, 3]`, or a list of images of any sizes, blended with
        `blend_weights` (normalised to sum 1; neural-style's `-style_blend_weights`); with `masks`,
        one image per region.
      key: one PRNG key (split into E) or `[E]` keys; experiment e's result depends only on its key.
      steps: optimisation steps (per scale with `min_scale`); `initial_steps` for the first scale.
      image_size: long side of the output (neural-style's `-image_size`); default the content's.
      min_scale: coarse-to-fine from this long side up by sqrt(2) (style-transfer-pytorch).
      init: "random" (neural-style noise), "content", "style", or an image `[H, W, 3]` / `[E, H, W, 3]`.
      optimizer: "lbfgs" (default, `LBFGS_NOTE`), "lbfgs-linesearch", "adam", or any optax
        transformation acting on the raw variable (0-256 units).
      learning_rate: Adam's (default 10, neural-style Lua) or L-BFGS's step scale (default 1).
      clip: keep the image in [0, 1] after each step (style-transfer-pytorch does for Adam;
        neural-style does not).
      iterate_average: EMA decay (e.g. 0.99) of the iterates, whose bias-corrected average is the
        result (style-transfer-pytorch); None (default) for the last iterate.
      original_colors: keep the content's colours (luminance-only transfer, neural-style's
        `-original_colors 1`) in `color_space` ("yuv" as torch/image, "yiq", "yuv-gatys").
      callback, loop: the engine's.
      options: content_layers (("relu4_2",)), style_layers (relu1_1..relu5_1), style_layer_weights
        (1 each, > 0), content_weight (5), style_weight (100), tv_weight (1e-3) - each a number or
        a sequence of E numbers (a sweep: E experiments) -, blend_weights, style_scale (1.0),
        masks (`[R, H, W]` at the content's size), match_colors (None, "pca", "chol", "sym"),
        convention ("neural-style"), pool ("max" or "avg"), tv_form ("half-sum-squared"),
        normalize_gradients (False), dream_layers / dream_layer_weights / dream_weight (0) /
        dream_max_grad (100), remat (False), dtype (jnp.float32 or jnp.bfloat16).

    Returns:
      `StyleResult`.
    """
    unknown = set(options) - set(_SETUP_KEYS)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}")
    sweep = [options.get(k) for k in ("content_weight", "style_weight", "tv_weight", "dream_weight")]
    n = max([len(v) for v in sweep if isinstance(v, (list, tuple, np.ndarray))] + [1])
    return _run(model, params, content, [style] * n, key=key, steps=steps, initial_steps=initial_steps, image_size=image_size,
                min_scale=min_scale, init=init, optimizer=optimizer, learning_rate=learning_rate, clip=clip,
                iterate_average_decay=iterate_average, original_colors=original_colors, color_space=color_space,
                callback=callback, loop=loop, setup_kw=options)


__all__ = [
    "CAFFE_MEAN_RGB",
    "CONTENT_LAYERS",
    "LBFGS_NOTE",
    "NeuralStylePixels",
    "PIXEL_SCALE",
    "Problem",
    "STYLE_LAYERS",
    "Static",
    "StyleResult",
    "averaged",
    "features",
    "fit_size",
    "iterate_average",
    "loss_terms",
    "make_optimizer",
    "multiscale_sizes",
    "resize",
    "setup",
    "transfer",
    "transfer_many",
]
