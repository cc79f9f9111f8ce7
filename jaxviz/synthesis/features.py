"""Feature visualisation on the one engine: class, neuron, channel, direction and any objective algebra.

Each technique is a configuration of `jaxviz.synthesis.optimize`, named after its paper, with the
peer's defaults (SYNTHESIS.md sections 1 and 2):

  * `visualize`: lucid / lucent `render_vis` (FFT + colour decorrelation + sigmoid, standard
    transforms, Adam 0.05, 512 steps, 128 px, ReLU gradient redirection for steps 0..16); lucid's
    diversity over a group of images; multifaceted starts (Nguyen et al. 2016) through `init=`;
  * `simonyan`: Simonyan, Vedaldi & Zisserman 2014, pixel-space L2-regularised gradient ascent on the
    class score;
  * `yosinski`: Yosinski et al. 2015, regularised ascent with the paper's rows (a)-(d) (row (c) by
    default), run literally in his units, with the toolbox's best / majority / last records;
  * `multifaceted_starts`: k-means over real images' features; each cluster's mean image is a start.

A batch is a batch of experiments: `visualize(model, params, jnp.arange(64), key=k)` renders 64
classes in one call, each with its own key, optimiser state and random transforms, equal to 64
one-by-one calls given the same per-experiment keys (`key` may be `[E]` keys). Objectives travel to
the engine as `targets`, so new class or channel indices reuse the compilation.

    from jaxviz import models, objectives as O
    from jaxviz.synthesis import features
    vis = features.visualize(model, params, O.channel("relu4_3", jnp.arange(8)), key=jax.random.key(0))
    vis.images      # [8, 128, 128, 3] in [0, 1];  vis.scores: [8] objective values of the final images

Scores are pre-softmax (the class-score layer) unless the objective says otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz import objectives as O
from jaxviz.models import base
from jaxviz.synthesis import engine, param as P, regularizers as R, transforms as T

Array = jax.Array

#: lucid/lucent `render_vis` defaults (SYNTHESIS.md section 1.4).
LUCID_LEARNING_RATE = 0.05
LUCID_STEPS = 512
LUCID_SIZE = 128
#: lucid's diversity weight in its notebooks: `channel(...) - 1e2 * diversity(layer)`.
LUCID_DIVERSITY = 1e2


# --------------------------------------------------------------------------- shared small pieces
@functools.lru_cache(maxsize=None)
def adam(learning_rate: float) -> optax.GradientTransformation:
    """`optax.adam(learning_rate)`, one object per rate (the engine compiles once per optimiser object)."""
    return optax.adam(float(learning_rate))


def _finite_nonneg(value, what: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be a finite number >= 0; got {value!r}")
    return v


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    return int(steps)


def _check_size(model: base.Model, size) -> tuple[int, int]:
    if size is None:
        return tuple(model.input_size)
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, (int, np.integer)) for s in size)):
        raise ValueError(f"size must be an int or (height, width); got {size!r}")
    if size[0] < model.min_size[0] or size[1] < model.min_size[1]:
        raise ValueError(f"{model.name} needs images of at least {model.min_size[0]}x{model.min_size[1]} pixels; got size {tuple(size)}")
    return int(size[0]), int(size[1])


def experiment_keys(key, n: int) -> Array:
    """`[n]` keys: one key is split into n; `[n]` keys are kept (so that one-by-one runs can be given
    the batch's keys)."""
    if not isinstance(key, jax.Array) or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise ValueError(f"key must be a jax.random.key or [E] keys; got {type(key).__name__} {getattr(key, 'dtype', '')}")
    if key.ndim == 0:
        return jax.random.split(key, n)
    if key.shape != (n,):
        raise ValueError(f"key must be one key or [E] = [{n}] keys; got shape {key.shape}")
    return key


def _init_raw(p, keys: Array, group: int) -> Array:
    """Experiment e starts from `p.init(fold_in(keys[e], 0), group)` (the batch equals one-by-one)."""
    raws = jax.vmap(lambda k: p.init(jax.random.fold_in(k, 0), group))(keys)
    return raws if group > 1 else raws[:, 0]


# --------------------------------------------------------------------------- objectives per experiment
def experiment_objective(model: base.Model, objective, n: Optional[int] = None) -> tuple[O.Objective, int]:
    """`(objective with every leaf [E, ...], E)`, bound to `model`.

    `objective` is
      * an int or `[E]` ints: class scores (`class_logit`, pre-softmax), one class per experiment;
      * a sequence of `Objective`s of one structure (e.g. `[channel("relu3_1", c) for c in cs]`):
        experiment e maximises the e-th (their numbers are stacked);
      * one `Objective`: its integer leaves of shape `[E]` (class, channel, position indices) are per
        experiment, every other leaf (weights, direction vectors `[C]`) is shared by all `E`
        experiments; without `[E]` leaves, `E = n` (default 1) copies of it. For per-experiment
        directions or weights, give a sequence.
    """
    if isinstance(objective, O.Objective):
        leaves, treedef = jax.tree_util.tree_flatten(objective)
        sizes = {int(np.shape(x)[0]) for x in leaves if np.ndim(x) == 1 and jnp.issubdtype(jnp.result_type(x), jnp.integer)}
        if len(sizes) > 1:
            raise ValueError(f"the objective's per-experiment indices disagree on the number of experiments: {sorted(sizes)}")
        e = sizes.pop() if sizes else (1 if n is None else int(n))
        if n is not None and int(n) != e:
            raise ValueError(f"n={n} but the objective's indices have {e} entries")

        def per_exp(x):
            x = jnp.asarray(x)
            if x.ndim == 1 and jnp.issubdtype(x.dtype, jnp.integer):
                return x
            return jnp.broadcast_to(x, (e, *x.shape))

        obj = jax.tree_util.tree_unflatten(treedef, [per_exp(x) for x in leaves])
    elif isinstance(objective, (list, tuple)) and objective and all(isinstance(o, O.Objective) for o in objective):
        structures = {jax.tree_util.tree_structure(o) for o in objective}
        if len(structures) != 1:
            raise ValueError("a sequence of objectives must share one structure (same kinds, layers and operations); "
                             f"got {[repr(o) for o in objective]}")
        obj = jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *objective)
        e = len(objective)
    else:
        idx = np.asarray(objective)
        if idx.dtype.kind not in "iu" or idx.ndim > 1 or idx.size == 0:
            raise ValueError(f"objective must be an Objective, a sequence of Objectives, or class indices (an int or [E] ints); got {objective!r}")
        idx = idx.reshape(-1)
        e = idx.shape[0]
        obj = O.class_logit(jnp.asarray(idx, jnp.int32))
    if n is not None and int(n) != e:
        raise ValueError(f"n={n} but the objective holds {e} experiments")
    return O.as_objective(model, obj), e


# --------------------------------------------------------------------------- the loss
@dataclasses.dataclass(frozen=True)
class ScoreLoss:
    """Static configuration of `score_loss` (hashable).

    model; redirect: lucid's ReLU redirection while `step <= redirect` (None: off); resize: `(h, w)`
    the transformed images are resized to before the network (lucent's upsampling) or None;
    l2: weight of `sum (x - l2_center)^2` over the image's pixels in the model's normalised units
    (Simonyan); diversity_layer / diversity: lucid's diversity term and its weight; restrict: compute
    only the channels the objective reads at its layer (`objectives.restrict`: same values, e.g. one
    of conv4_3's 512 output channels for a channel of relu4_3) when no diversity term reads the layer.
    """

    model: base.Model
    redirect: Optional[int] = None
    resize: Optional[tuple] = None
    l2: float = 0.0
    diversity_layer: Optional[str] = None
    diversity: float = 0.0
    restrict: bool = True


def score_loss(static: ScoreLoss, consts, obj, images, key, step):
    """Engine loss: `-mean(objective over the experiment's images) + terms`; aux = the scores.

    The mean over a group of n images is lucid's batch mean (`channel` averages over the batch), and
    lucid's diversity is summed over the group (its value), weighted by `static.diversity`."""
    del key
    model = static.model
    relu = engine.relu_for_step(step, static.redirect) if static.redirect is not None else None
    seen = images
    if static.resize is not None:
        n, _, _, c = images.shape
        seen = jax.image.resize(images, (n, *static.resize, c), "linear")
    layers = tuple(obj.layers) + ((static.diversity_layer,) if static.diversity_layer else ())
    until = max(layers, key=model.index) if layers else None
    if static.restrict and not static.diversity_layer:
        consts, obj = O.restrict(model, consts, obj)
    acts = model.apply(consts, seen, until=until, relu=relu)
    scores = obj(acts)
    loss = -jnp.mean(scores)
    if static.l2:
        x = model.preprocess(images)
        loss = loss + static.l2 * jnp.sum(jnp.square(x))
    if static.diversity_layer and static.diversity:
        loss = loss + static.diversity * jnp.sum(O.diversity(static.diversity_layer)(acts))
    return loss, scores


@functools.partial(jax.jit, static_argnums=0)
def _scores(model, params, images, obj):
    return obj(model.apply(params, images, until=O.last_layer(model, obj)))


def evaluate(model: base.Model, params, images: Array, obj: O.Objective) -> Array:
    """Objective values `[E]` of one image per experiment (`[E, n, ...]` groups: `[E, n]`), jitted."""
    if images.ndim == 5:
        e, n = images.shape[:2]
        rep = jax.tree_util.tree_map(lambda a: jnp.repeat(a, n, axis=0), obj)
        return _scores(model, params, images.reshape(e * n, *images.shape[2:]), rep).reshape(e, n)
    return _scores(model, params, images, obj)


class Visualization(NamedTuple):
    """`images [E, H, W, C]` (groups: `[E, n, H, W, C]`) in [0, 1]; `scores [E]` (`[E, n]`): the
    objective on the final, untransformed images; `result`: the engine's `Result` (losses per step,
    finished, raw, optimiser state)."""

    images: Array
    scores: Array
    result: engine.Result


def _check_objective(model, params, obj, e, shape, transforms, resize):
    h, w, c = shape
    seen = (e, h, w, c) if transforms is None else T.output_shape(transforms, (e, h, w, c))
    if resize is not None:
        seen = (e, *resize, c)
    if seen[1] < model.min_size[0] or seen[2] < model.min_size[1]:
        raise ValueError(f"the transformed images ({seen[1]}x{seen[2]}) are smaller than {model.name}'s minimum {model.min_size}")
    O.check_objective(model, params, jnp.zeros(seen, jnp.float32), obj)


def _param(kind, shape, sd):
    if kind == "fft":
        return P.image(shape, fft=True, sd=sd)
    if kind == "pixels":
        return P.image(shape, fft=False, sd=sd)
    if hasattr(kind, "to_images"):
        return kind
    raise ValueError(f"param must be 'fft', 'pixels' or a parameterisation object; got {kind!r}")


def _transforms(t):
    if isinstance(t, str):
        if t != "standard":
            raise ValueError(f"transforms must be 'standard', None or a callable (key, images) -> images; got {t!r}")
        return T.standard_transforms()
    if t is not None and not callable(t):
        raise ValueError(f"transforms must be 'standard', None or a callable; got {t!r}")
    return t


def visualize(
    model: base.Model,
    params,
    objective,
    *,
    key: Array,
    n: Optional[int] = None,
    size=LUCID_SIZE,
    steps: int = LUCID_STEPS,
    learning_rate: float = LUCID_LEARNING_RATE,
    optimizer: Optional[optax.GradientTransformation] = None,
    param: Any = "fft",
    sd: float = 0.01,
    transforms: Any = "standard",
    redirect: Optional[int] = engine.REDIRECT_STEPS,
    resize_to=None,
    group: int = 1,
    diversity: float = 0.0,
    diversity_layer: Optional[str] = None,
    init: Optional[Array] = None,
    callback=None,
    loop: str = "auto",
) -> Visualization:
    """Maximise an objective, lucid/lucent style (their `render_vis` defaults).

    Defaults: lucid's `param.image(128)` (FFT spectrum with 1/f scaling, sd 0.01, colour
    decorrelation, sigmoid; `param="pixels"`: its decorrelated `pixel_image`), `standard_transforms`
    (pad 12, jitter 8, scale 0.9-1.1, rotate -10..10 degrees, jitter 4; deviations in
    `jaxviz.synthesis.transforms`), Adam 0.05, 512 steps (lucent; lucid runs 513), and lucid's ReLU
    gradient redirection for steps 0..16 (`redirect=16`; lucent has none: `redirect=None`; models
    whose ReLU cannot be swapped run without it). lucent also upsamples images smaller than 224 px to
    224 (bilinear, align_corners) before its ImageNet models; that is about ImageNet networks, so
    jaxviz shows the network the transformed images at their own size unless asked:
    `resize_to="model"` resizes them to `model.input_size` (or give `(h, w)`), bilinear with
    half-pixel centres (`jax.image.resize`), not lucent's align_corners.

    Args:
      model, params: any jaxviz `Model` and its params (jit arguments, never closed over).
      objective: class indices (an int or `[E]` ints: pre-softmax class scores), an `Objective`
        (`channel`, `neuron`, `direction`, any algebra; integer leaves `[E]` are per experiment) or a
        sequence of `Objective`s of one structure: see `experiment_objective`.
      key: one key (split into E) or `[E]` keys: experiment e starts from `fold_in(keys[e], 0)` and
        its step t uses the engine's `fold_in(fold_in(keys[e], 1), t)`. Same key, same picture.
      n: number of experiments when `objective` holds one (default 1).
      size: int or `(H, W)` of the images (default 128, lucid; `None`: `model.input_size`).
      steps, learning_rate: Adam's steps and rate; `optimizer` replaces Adam (any optax transformation;
        build it once and reuse the object, or every call compiles again).
      param: `"fft"` (default), `"pixels"` or a parameterisation object (`jaxviz.synthesis.param`).
      sd: standard deviation of the random start (lucid 0.01).
      transforms: `"standard"`, None, or a callable `(key, images) -> images`.
      redirect: ReLU redirection while `step <= redirect` (lucid 16), None for off.
      resize_to: None, `"model"` or `(h, w)`: see above.
      group: images per experiment (lucid's `batch`), optimised together; with `diversity > 0`,
        lucid's `- diversity * diversity(diversity_layer)` term (lucid's notebooks: 1e2 over a
        group of 4) pushes them apart. Images then come as `[E, group, H, W, C]`.
      init: start images `[E, H, W, C]` (or `[E, group, H, W, C]`) in [0, 1] instead of noise
        (multifaceted starts: `multifaceted_starts`); the sigmoid parameterisations clip them to
        `[1e-6, 1 - 1e-6]`.
      callback, loop: the engine's (progress every step; `"auto"`, `"python"`, `"scan"`).

    Returns:
      `Visualization(images, scores, result)`.
    """
    obj, e = experiment_objective(model, objective, n)
    steps = _check_steps(steps)
    learning_rate = _finite_nonneg(learning_rate, "learning_rate")
    diversity = _finite_nonneg(diversity, "diversity")
    h, w = _check_size(model, size)
    shape = (h, w, model.in_channels)
    if isinstance(group, bool) or int(group) != group or group < 1:
        raise ValueError(f"group must be a positive integer; got {group!r}")
    group = int(group)
    if diversity and group < 2:
        raise ValueError("diversity needs group >= 2 images per experiment (it compares the images of a group)")
    if diversity and diversity_layer is None:
        raise ValueError("diversity needs diversity_layer= (a spatial layer, e.g. lucid's 'mixed4a' or jaxviz's 'relu3_1')")
    if diversity_layer is not None and not model.layer(diversity_layer).spatial:
        raise ValueError(f"diversity_layer {diversity_layer!r} of {model.name} is not spatial")
    if resize_to == "model":
        resize_to = tuple(model.input_size)
    elif resize_to is not None:
        resize_to = _check_size(model, resize_to)
    p = _param(param, shape, sd)
    tf = _transforms(transforms)
    _check_objective(model, params, obj, e, shape, tf, resize_to)
    keys = experiment_keys(key, e)
    if init is not None:
        init = jnp.asarray(init)
        want = (e, group, *shape) if group > 1 else (e, *shape)
        if init.shape != want:
            raise ValueError(f"init must be start images of shape {want} (one per experiment); got {init.shape}")
        base.check_pixel_values(init, "init images")
        raw0 = p.from_images(init.reshape(-1, *shape)).reshape(want[:-3] + p.raw_shape) if hasattr(p, "from_images") else None
        if raw0 is None:
            raise ValueError(f"{type(p).__name__} cannot start from images (no from_images)")
    else:
        raw0 = _init_raw(p, keys, group)
    redirect = redirect if (redirect is not None and model.swappable_relu) else None
    static = ScoreLoss(model, redirect, resize_to, 0.0, diversity_layer if diversity else None, diversity)
    opt = adam(learning_rate) if optimizer is None else optimizer
    run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    res = engine.optimize(score_loss, model.frozen(params), raw0, opt, steps=steps, key=run_keys, param=p, targets=obj,
                          transforms=tf, static=static, group=group > 1, callback=callback, loop=loop)
    return Visualization(res.images, evaluate(model, params, res.images, obj), res)


# --------------------------------------------------------------------------- Simonyan et al. 2014
#: Simonyan et al. 2014 give neither lambda nor the step size. The defaults follow the CS231n
#: assignment's class visualisation as commonly distributed (`l2_reg=1e-3`, `learning_rate=25` on an
#: L2-normalised gradient, in the network's normalised input units), without its jitter and blur.
SIMONYAN_L2 = 1e-3
SIMONYAN_LEARNING_RATE = 25.0
SIMONYAN_STEPS = 100


def normalize_by_l2() -> optax.GradientTransformationExtraArgs:
    """`u <- u / ||u||_2` over one experiment's parameters (CS231n's `g / g.norm()`); an all-zero
    gradient gives a zero step (not NaN)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, **extra):
        del params, extra
        leaves = jax.tree_util.tree_leaves(updates)
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(u)) for u in leaves))
        inv = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
        return jax.tree_util.tree_map(lambda u: (u * inv).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


@functools.lru_cache(maxsize=None)
def _normalized_sgd(learning_rate: float, lower: tuple, upper: tuple):
    return optax.chain(normalize_by_l2(), optax.sgd(float(learning_rate)), R.clip_to_range(lower, upper))


def simonyan(
    model: base.Model,
    params,
    objective,
    *,
    key: Array,
    n: Optional[int] = None,
    size=None,
    steps: int = SIMONYAN_STEPS,
    learning_rate: float = SIMONYAN_LEARNING_RATE,
    l2: float = SIMONYAN_L2,
    sd: float = 0.0,
    transforms: Any = None,
    callback=None,
    loop: str = "auto",
) -> Visualization:
    """Simonyan, Vedaldi & Zisserman 2014: `argmax_I S_c(I) - l2 * ||I||_2^2` by gradient ascent in
    pixel space, from the zero (mean) image.

    `I` is the image in the model's normalised units `(x - mean) / std` (the paper's zero-centred
    image; for VGG the same as CS231n's). Each step adds `learning_rate * g / ||g||_2` (CS231n's
    normalised step) and clips the image to [0, 1]. The paper states neither lambda nor the step:
    defaults `l2=1e-3`, `learning_rate=25`, 100 steps are the CS231n assignment's (its jitter and blur
    are left out; pass `transforms=` for jitter). `sd > 0` starts from noise around the mean image
    instead of the paper's zero image. `size` defaults to `model.input_size`.
    """
    obj, e = experiment_objective(model, objective, n)
    steps = _check_steps(steps)
    learning_rate = _finite_nonneg(learning_rate, "learning_rate")
    l2 = _finite_nonneg(l2, "l2")
    sd = _finite_nonneg(sd, "sd")
    h, w = _check_size(model, size)
    p = P.AffinePixels.normalized(model, (h, w, model.in_channels), sd)
    tf = _transforms(transforms)
    _check_objective(model, params, obj, e, p.shape, tf, None)
    keys = experiment_keys(key, e)
    raw0 = _init_raw(p, keys, 1)
    opt = _normalized_sgd(learning_rate, *p.bounds())
    run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    res = engine.optimize(score_loss, model.frozen(params), raw0, opt, steps=steps, key=run_keys, param=p, targets=obj,
                          transforms=tf, static=ScoreLoss(model, None, None, l2), callback=callback, loop=loop)
    return Visualization(res.images, evaluate(model, params, res.images, obj), res)


# --------------------------------------------------------------------------- Yosinski et al. 2015
@dataclasses.dataclass(frozen=True)
class YosinskiRow:
    """One setting of Yosinski et al. 2015 (Table 1 / `doc/running-optimize-image.md`), in his units
    (0-255 mean-subtracted pixels). `lr_policy`: "constant" (`lr`) or "progress"
    (`min(max_lr, desired_prog / ||g||^2)`)."""

    decay: float = 0.0
    blur_radius: float = 0.0
    blur_every: int = 0
    small_norm_percentile: float = 0.0
    px_abs_benefit_percentile: float = 0.0
    steps: int = 1000
    lr_policy: str = "constant"
    lr: float = 100.0
    max_lr: float = 100.0
    desired_prog: float = 2.0


YOSINSKI_ROWS = {
    "a": YosinskiRow(decay=0.0, blur_radius=0.5, blur_every=4, small_norm_percentile=50, steps=500, lr_policy="progress", max_lr=100.0, desired_prog=2.0),
    "b": YosinskiRow(decay=0.3, small_norm_percentile=20, steps=750, lr=100.0),
    "c": YosinskiRow(decay=1e-4, blur_radius=1.0, blur_every=4, steps=1000, lr=100.0),
    "d": YosinskiRow(decay=0.0, blur_radius=0.5, blur_every=4, px_abs_benefit_percentile=90, steps=1000, lr_policy="progress", max_lr=1e8, desired_prog=2.0),
}
#: The toolbox's random start `mean_plus_rand`: N(0, 10) in mean-subtracted 0-255 units.
YOSINSKI_INIT_SD = 10.0


def progress_lr(max_lr: float, desired_prog: float) -> optax.GradientTransformationExtraArgs:
    """Yosinski's "progress" policy: `update = -min(max_lr, desired_prog / ||g||^2) * g` (g the loss
    gradient; the objective's first-order gain is `desired_prog` unless capped). Zero gradient: zero
    step."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, **extra):
        del params, extra
        leaves = jax.tree_util.tree_leaves(updates)
        sq = sum(jnp.sum(jnp.square(u)) for u in leaves)
        lr = jnp.minimum(max_lr, desired_prog / jnp.where(sq > 0, sq, 1.0))
        lr = jnp.where(sq > 0, lr, 0.0)
        return jax.tree_util.tree_map(lambda u: (-lr * u).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


@functools.lru_cache(maxsize=None)
def yosinski_optimizer(row: YosinskiRow, lower: tuple, upper: tuple) -> optax.GradientTransformation:
    """The step of `row` followed by Yosinski's between-step operations in his order (decay, blur,
    zero small norms, zero small absolute contributions), then the clip to the valid pixel box."""
    step = optax.sgd(row.lr) if row.lr_policy == "constant" else progress_lr(row.max_lr, row.desired_prog)
    regs = R.yosinski(
        decay_rate=row.decay,
        blur_radius=row.blur_radius,
        blur_every=max(row.blur_every, 1),
        small_norm_percentile=row.small_norm_percentile,
        px_abs_benefit_percentile=row.px_abs_benefit_percentile,
        clip=None,
    )
    return optax.chain(step, regs, R.clip_to_range(lower, upper))


class YosinskiResult(NamedTuple):
    """`images`: last iterates `[E, H, W, C]`; `scores [E]` their objective; with `record=True`
    (else None): `best [E, H, W, C]` (the iterate with the highest objective, as the toolbox's
    `best_xx`), `best_step [E]`, `majority [E, H, W, C]` (the first iterate whose top-1 class is
    the target: `majority_xx`; the last iterate if never, with `majority_step` -1), `majority_step
    [E]`; `result`: the engine's `Result`."""

    images: Array
    scores: Array
    best: Optional[Array]
    best_step: Optional[np.ndarray]
    majority: Optional[Array]
    majority_step: Optional[np.ndarray]
    result: engine.Result


@functools.partial(jax.jit, static_argnums=0)
def _top1(model, params, images):
    return jnp.argmax(model.scores(params, images), axis=-1)


def yosinski(
    model: base.Model,
    params,
    classes,
    *,
    key: Array,
    row: Union[str, YosinskiRow] = "c",
    size=None,
    steps: Optional[int] = None,
    init_sd: float = YOSINSKI_INIT_SD,
    record: bool = False,
    callback=None,
    loop: str = "auto",
) -> YosinskiResult:
    """Yosinski, Clune, Nguyen, Fuchs & Lipson 2015, regularised class visualisation (the
    deep-visualization-toolbox's `gradient_optimizer.py`), rows (a)-(d) of the paper by name.

    Row (c), the default ("used for most of the images in the paper"): decay 1e-4, Gaussian blur
    sigma 1.0 at iterations 0, 4, 8, ..., 1000 iterations, constant lr 100. (a): no decay, blur 0.5
    every 4, zero the 50% smallest pixel norms, 500 it, progress lr (max 100, desired 2); (b): decay
    0.3, zero the 20% smallest norms, 750 it, lr 100; (d): blur 0.5 every 4, zero the 90% smallest
    absolute contributions, 1000 it, progress lr (max 1e8, desired 2).

    Units: the update runs literally in Yosinski's units. The optimised array is the image in 0-255
    minus the model's mean pixel (`param.AffinePixels.caffe`: image in [0, 1] = raw / 255 + mean; RGB, the
    toolbox is BGR), so the gradient is d score / d(0-255 pixel) and lr 100 is his lr 100: on [0, 1]
    images the same step is `100 / 255**2 = 1.54e-3` times d score / d x. Decay pulls towards the mean
    pixel (raw 0), the zeroing operations set pixels to the mean pixel, the start is his
    `mean_plus_rand` (N(0, 10) around the mean pixel) and the iterate is clipped to [0, 255]
    ([0, 1]) after every step (he clips at the start of the next, the same thing). The "progress"
    policy is unit-free but for `max_lr`. Differences: the network is jaxviz's (normalised by its
    own mean/std inside `apply`, where Caffe networks see the 0-255 image), so the same lr moves
    torchvision-normalised networks by a different amount than his Caffe networks; his last
    iteration makes no update (here every step does).

    Args:
      classes: int or `[E]` class indices (pre-softmax scores, his `fc8`), or `Objective`s as
        `visualize` (record's majority then compares the top-1 class with the objective's index only
        for class objectives).
      row: "a", "b", "c" (default), "d" or a `YosinskiRow`.
      steps: default the row's iterations.
      record: keep the toolbox's best and majority iterates (one host callback per step with the
        images and one extra forward pass: costs time; off by default).

    Returns:
      `YosinskiResult`.
    """
    if isinstance(row, str):
        if row not in YOSINSKI_ROWS:
            raise ValueError(f"row must be one of {sorted(YOSINSKI_ROWS)} or a YosinskiRow; got {row!r}")
        row = YOSINSKI_ROWS[row]
    if row.lr_policy not in ("constant", "progress"):
        raise ValueError(f"lr_policy must be 'constant' or 'progress'; got {row.lr_policy!r}")
    for f in ("decay", "blur_radius", "small_norm_percentile", "px_abs_benefit_percentile", "lr", "max_lr", "desired_prog"):
        _finite_nonneg(getattr(row, f), f"row.{f}")
    obj, e = experiment_objective(model, classes)
    steps = _check_steps(row.steps if steps is None else steps)
    init_sd = _finite_nonneg(init_sd, "init_sd")
    h, w = _check_size(model, size)
    p = P.AffinePixels.caffe(model, (h, w, model.in_channels), init_sd)
    _check_objective(model, params, obj, e, p.shape, None, None)
    keys = experiment_keys(key, e)
    raw0 = _init_raw(p, keys, 1)
    lo, hi = (jnp.asarray(b, raw0.dtype).reshape(1, 1, 1, -1) for b in p.bounds())
    raw0 = jnp.clip(raw0, lo, hi)
    opt = yosinski_optimizer(row, *p.bounds())
    run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    rec = _Recorder(model, params, obj, e) if record else None

    def cb(t, losses, images):
        if rec is not None:
            rec(t, losses, images)
        if callback is not None:
            callback(t, losses, images)

    res = engine.optimize(score_loss, model.frozen(params), raw0, opt, steps=steps, key=run_keys, param=p, targets=obj,
                          static=ScoreLoss(model), callback=cb if (record or callback) else None,
                          callback_images=record, loop=loop)
    scores = evaluate(model, params, res.images, obj)
    if rec is None:
        return YosinskiResult(res.images, scores, None, None, None, None, res)
    best, best_step, maj, maj_step = rec.finish(res.images, scores)
    return YosinskiResult(res.images, scores, best, best_step, maj, maj_step, res)


class _Recorder:
    """Host-side best / majority records from the per-step callback (losses are -objective at the
    iterate before the step's update, no transforms)."""

    def __init__(self, model, params, obj, e):
        self.model, self.params = model, params
        self.target = np.asarray(obj.args[0]) if obj.fn is O._class_logit else None
        self.best_loss = np.full(e, np.inf)
        self.best = [None] * e
        self.best_step = np.full(e, -1)
        self.maj = [None] * e
        self.maj_step = np.full(e, -1)

    def __call__(self, t, losses, images):
        better = np.isfinite(losses) & (losses < self.best_loss)
        for i in np.flatnonzero(better):
            self.best_loss[i], self.best[i], self.best_step[i] = losses[i], images[i], t
        if self.target is not None and (self.maj_step < 0).any():
            top = np.asarray(_top1(self.model, self.params, jnp.asarray(images)))
            for i in np.flatnonzero((self.maj_step < 0) & (top == self.target)):
                self.maj[i], self.maj_step[i] = images[i], t

    def finish(self, last, last_scores):
        last = np.asarray(last)
        scores = np.asarray(last_scores)
        best = []
        for i in range(len(self.best)):
            # The final iterate (after the last update) is not seen by the callback: compare it too.
            if self.best[i] is None or -scores[i] < self.best_loss[i]:
                best.append(last[i])
                self.best_step[i] = -1 if self.best[i] is None else self.best_step[i]
            else:
                best.append(self.best[i])
        maj = [m if m is not None else last[i] for i, m in enumerate(self.maj)]
        return jnp.asarray(np.stack(best)), self.best_step, jnp.asarray(np.stack(maj)), self.maj_step


# --------------------------------------------------------------------------- multifaceted starts
def kmeans(points: Array, k: int, *, key: Array, iters: int = 50) -> tuple[Array, Array]:
    """Lloyd's k-means with k-means++ seeding: `(centres [k, D], labels [N])`. An emptied cluster
    keeps its previous centre."""
    x = jnp.asarray(points, jnp.float32)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points {n}; got {k}")
    keys = jax.random.split(key, k)
    first = jax.random.randint(keys[0], (), 0, n)
    centres = [x[first]]
    for i in range(1, k):
        d = jnp.min(jnp.stack([jnp.sum(jnp.square(x - c[None]), axis=1) for c in centres]), axis=0)
        centres.append(x[jax.random.choice(keys[i], n, p=d / jnp.sum(d))])
    c = jnp.stack(centres)
    return _lloyd(x, c, iters)


@functools.partial(jax.jit, static_argnums=2)
def _lloyd(x, c, iters):
    def body(c, _):
        d = jnp.sum(jnp.square(x), 1)[:, None] - 2 * x @ c.T + jnp.sum(jnp.square(c), 1)[None, :]
        lab = jnp.argmin(d, axis=1)
        one = jax.nn.one_hot(lab, c.shape[0], dtype=x.dtype)
        cnt = one.sum(0)
        new = (one.T @ x) / jnp.where(cnt > 0, cnt, 1.0)[:, None]
        return jnp.where((cnt > 0)[:, None], new, c), None

    c, _ = jax.lax.scan(body, c, None, length=iters)
    d = jnp.sum(jnp.square(x), 1)[:, None] - 2 * x @ c.T + jnp.sum(jnp.square(c), 1)[None, :]
    return c, jnp.argmin(d, axis=1)


def multifaceted_starts(model: base.Model, params, images: Array, k: int, *, key: Array, layer: Optional[str] = None) -> tuple[Array, Array]:
    """Nguyen, Yosinski & Clune 2016 ("multifaceted feature visualization"): cluster real images of
    one class by their features (k-means in `layer`'s feature space; default the model's embedding
    layer `model.features`, else the layer before the class scores; the paper used fc7 after t-SNE)
    and return each cluster's mean IMAGE `[k, H, W, C]` as a start (`visualize(..., init=starts)`),
    and the cluster of every image `[N]`."""
    images = jnp.asarray(images)
    model.check_images(images)
    if layer is None:
        layer = model.features or model.layer_names[model.index(model.logits) - 1]
    model.layer(layer)
    feats = jax.jit(lambda p, x: model.apply(p, x, until=layer)[layer])(params, images)
    feats = feats.reshape(feats.shape[0], -1)
    _, labels = kmeans(feats, int(k), key=key)
    one = jax.nn.one_hot(labels, int(k), dtype=images.dtype)
    cnt = jnp.maximum(one.sum(0), 1.0)
    means = jnp.einsum("nk,nhwc->khwc", one, images) / cnt[:, None, None, None]
    return means, labels


# --------------------------------------------------------------------------- demo
def demo_class_visualizations(model: base.Model, params, *, key: Array, classes=None, size=None, steps: int = 256) -> dict:
    """The arrays the demo shows: `{"pixel": ..., "fft": ..., "yosinski": ...}`, each `[K, H, W, C]`
    in [0, 1] (one per class, default all classes), with `{"...": scores [K]}` under `"scores"`:
    Simonyan's pixel-space ascent, lucid's FFT render (transforms scaled to the image: pad/jitter
    of size/32) and Yosinski's row (c) (with `steps` iterations)."""
    classes = jnp.arange(model.num_classes) if classes is None else jnp.asarray(classes)
    h, w = _check_size(model, size)
    k1, k2, k3 = jax.random.split(key, 3)
    s = max(1, min(h, w) // 32)
    small = T.Compose(T.Pad(2 * s, value=0.0), T.Jitter(2 * s), T.RandomScale((0.95, 1.0, 1.05)), T.RandomRotate((-5.0, 0.0, 5.0)), T.Jitter(s))
    pix = simonyan(model, params, classes, key=k1, size=(h, w), steps=steps)
    fft = visualize(model, params, classes, key=k2, size=(h, w), steps=steps, transforms=small)
    yos = yosinski(model, params, classes, key=k3, size=(h, w), steps=steps)
    return {
        "pixel": pix.images,
        "fft": fft.images,
        "yosinski": yos.images,
        "scores": {"pixel": pix.scores, "fft": fft.scores, "yosinski": yos.scores},
    }


__all__ = [
    "LUCID_DIVERSITY",
    "LUCID_LEARNING_RATE",
    "LUCID_SIZE",
    "LUCID_STEPS",
    "ScoreLoss",
    "Visualization",
    "YOSINSKI_ROWS",
    "YosinskiResult",
    "YosinskiRow",
    "adam",
    "demo_class_visualizations",
    "evaluate",
    "experiment_keys",
    "experiment_objective",
    "kmeans",
    "multifaceted_starts",
    "normalize_by_l2",
    "progress_lr",
    "score_loss",
    "simonyan",
    "visualize",
    "yosinski",
    "yosinski_optimizer",
]
