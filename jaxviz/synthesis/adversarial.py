"""Fooling images and adversarial attacks on the one engine: the CS231n recipe, FGSM and PGD.

  * `fooling_images` (CS231n "Network visualization"): targeted ascent on the target's class score
    with L2-normalised steps until the target is top-1 (the engine's per-experiment early stop);
  * `fgsm` (Goodfellow et al. 2015) and `pgd` (Madry et al. 2018) with captum's conventions
    (`captum.robust.FGSM` / `PGD`, SYNTHESIS.md section 4), L-inf and L2 balls, targeted and
    untargeted, random start, bounds.

Every attack returns an `AttackResult`: the images, the perturbation, and per image whether it
succeeded, how many updates it took, and the perturbation's L-inf and L2 norms in [0, 1] pixel units.
A batch is a batch of experiments (image e attacked towards `targets[e]` with its own key), equal to
one-by-one runs.

captum conventions and where jaxviz departs:
  * step: `x' = x + eps * sign(grad L)` (untargeted) or `x - eps * sign(grad L)` (targeted) for
    FGSM and PGD, PGD then projects onto the ball around the clean image and clips to the bounds;
  * entries whose gradient satisfies `|grad L| <= zero_thresh` (captum: 1e-6, fixed) are left
    unchanged; `zero_thresh=0` moves every entry with a non-zero gradient;
  * loss: captum's default is `-log(output[target])`, which assumes the model outputs
    probabilities. jaxviz models output class scores, and jaxviz uses the cross-entropy of the
    scores (`-log_softmax(scores)[target]`), i.e. captum with
    `loss_func=torch.nn.CrossEntropyLoss(reduction="none")`;
  * PGD with `norm="L2"`: captum still takes SIGN steps (the L-inf steepest direction) and only
    projects onto the L2 ball (`step="sign"`, the default, captum-compatible); `step="l2"` takes
    the usual L2-normalised steps `eps * g / ||g||_2`. The L2 projection is torch's `renorm`:
    `d * r / (||d|| + 1e-7)` when `||d|| > r`;
  * bounds: captum's default is none (+-inf); jaxviz images live in [0, 1], so `bounds=(0, 1)` by
    default (pass captum's `lower_bound=0, upper_bound=1` to compare);
  * random start (captum `random_start=True`): uniform in the L-inf box, or uniform direction with
    radius `r * U^(1/d)` in the L2 ball, then the bounds; drawn from the experiment's key.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz import objectives as O
from jaxviz.models import base
from jaxviz.synthesis import engine, features, param as P, regularizers as R

Array = jax.Array

#: captum's `FGSM.zero_thresh` (fixed in captum; an option here).
CAPTUM_ZERO_THRESH = 1e-6
#: CS231n fooling images: learning rate 1 on L2-normalised steps in the network's normalised units.
CS231N_LEARNING_RATE = 1.0
CS231N_STEPS = 100
NORMS = ("Linf", "L2")
STEPS = ("sign", "l2")


class AttackResult(NamedTuple):
    """Per experiment (E images):

    images `[E, H, W, C]` in [0, 1]; perturbation `images - clean`; success `[E]` bool (fooling,
    targeted: the top-1 class is the target; untargeted: it is no longer the label); predictions
    `[E]` top-1 classes of `images`; steps `[E]` int: updates applied (fooling stops at success);
    linf, l2 `[E]`: `max |perturbation|` and `||perturbation||_2` in [0, 1] pixel units; result: the
    engine's `Result`.
    """

    images: Array
    perturbation: Array
    success: Array
    predictions: Array
    steps: Array
    linf: Array
    l2: Array
    result: engine.Result


def _check_images(model: base.Model, images) -> Array:
    images = jnp.asarray(images) if not isinstance(images, jax.Array) else images
    model.check_images(images)
    return images


def _check_targets(model: base.Model, targets, e: int, what: str) -> Array:
    if model.logits is None:
        raise ValueError(f"{model.name} has no class-score layer; attacks need class scores")
    t = np.asarray(targets)
    if t.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integer class indices; got dtype {t.dtype}")
    if t.ndim == 0:
        t = np.full((e,), int(t))
    if t.shape != (e,):
        raise ValueError(f"{what} must be an int or [E] = [{e}] ints (one per image); got shape {t.shape}")
    O.check_index(t, model.num_classes, what)
    return jnp.asarray(t, jnp.int32)


def _positive(value, what: str) -> float:
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{what} must be a finite number > 0; got {value!r}")
    return v


def _metrics(model, params, clean, images, targets, targeted: bool):
    pert = images - clean
    flat = pert.reshape(pert.shape[0], -1)
    pred = features._top1(model, params, images)
    success = pred == targets if targeted else pred != targets
    return pert, success, pred, jnp.max(jnp.abs(flat), axis=1), jnp.sqrt(jnp.sum(jnp.square(flat), axis=1))


# --------------------------------------------------------------------------- CS231n fooling images
def _score_loss(model, consts, target, images, key, step):
    """-score[target]; aux: the scores (for the stop criterion)."""
    del key, step
    scores = model.scores(consts, images)
    return -O.take_units(scores, target, "target class"), scores


def _is_top1(model, consts, target, images, scores):
    del consts, images
    return jnp.argmax(scores, axis=-1) == target


def fooling_images(
    model: base.Model,
    params,
    images: Array,
    targets,
    *,
    steps: int = CS231N_STEPS,
    learning_rate: float = CS231N_LEARNING_RATE,
    key: Optional[Array] = None,
    callback=None,
    loop: str = "auto",
) -> AttackResult:
    """CS231n's fooling images: ascend the target class's score with L2-normalised steps until the
    network's top-1 class is the target.

    Each step adds `learning_rate * g / ||g||_2` with g = d score_target / d x, where x is the image
    in the network's NORMALISED units `(x - mean) / std` (as in the assignment, which works on the
    preprocessed tensor): lr 1 is the assignment's 1. In [0, 1] pixel units the step's L2 norm is
    about `std` (0.3 for the digits network, ~0.226 for ImageNet networks). jaxviz clips the image to
    [0, 1] after every step (the assignment does not clip). An image stops as soon as the target is
    top-1 (checked before each update, so `steps` counts the updates it took); at most `steps`
    updates (the assignment's loop runs to 100).

    Args:
      images: `[E, H, W, C]` in [0, 1]; targets: an int or `[E]` ints (the class to reach).
      key: unused by the deterministic recipe (accepted for a uniform interface).

    Returns:
      `AttackResult` (success: top-1 == target at the end).
    """
    del key
    images = _check_images(model, images)
    e = images.shape[0]
    targets = _check_targets(model, targets, e, "targets")
    steps = features._check_steps(steps)
    learning_rate = _positive(learning_rate, "learning_rate")
    p = P.AffinePixels.normalized(model, images.shape[1:])
    raw0 = p.from_images(images)
    opt = features._normalized_sgd(learning_rate, *p.bounds())
    res = engine.optimize(_score_loss, model.frozen(params), raw0, opt, steps=steps, key=jax.random.key(0), param=p,
                          targets=targets, static=model, stop=_is_top1, callback=callback, loop=loop)
    out = jnp.clip(res.images, 0.0, 1.0)
    pert, success, pred, linf, l2 = _metrics(model, params, images, out, targets, True)
    return AttackResult(out, pert, success, pred, res.finished, linf, l2, res)


# --------------------------------------------------------------------------- FGSM / PGD
def _ce_loss(model, consts, target, images, key, step):
    """Engine loss: `sign * CE(scores, label)`: sign +1 targeted (descend), -1 untargeted (ascend).
    The sign is a per-experiment number, so targeted and untargeted runs share one compilation."""
    del key, step
    scores = model.scores(consts, images)
    logp = jax.nn.log_softmax(scores, axis=-1)
    ce = -O.take_units(logp, target["label"], "target class", support=scores)
    return target["sign"].astype(ce.dtype) * ce


def sign_step(zero_thresh: float = CAPTUM_ZERO_THRESH) -> optax.GradientTransformationExtraArgs:
    """`u <- sign(u)` where `|u| > zero_thresh`, else 0 (captum's FGSM step direction)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, **extra):
        del params, extra
        return jax.tree_util.tree_map(lambda u: jnp.where(jnp.abs(u) > zero_thresh, jnp.sign(u), 0).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


class BallState(NamedTuple):
    """The centre of the projection ball (the clean image, set by `init`)."""

    center: Array


def project_ball(norm: str, radius: float) -> optax.GradientTransformationExtraArgs:
    """Project the iterate onto the `norm` ball of `radius` around `state.center` (`init(params)`
    stores the params it is given as the centre: initialise with the clean images). L-inf:
    `c + clip(x - c, -r, r)`; L2: torch's `renorm`, `c + d * r / (||d|| + 1e-7)` where `||d|| > r`
    (captum `PGD._clip`)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")

    def op(x, state):
        d = x - state.center
        if norm == "Linf":
            return state.center + jnp.clip(d, -radius, radius)
        n = jnp.sqrt(jnp.sum(jnp.square(d)))
        return state.center + d * jnp.where(n > radius, radius / (n + 1e-7), 1.0).astype(d.dtype)

    return R.iterate_op(op, lambda params: BallState(params))


@functools.lru_cache(maxsize=None)
def attack_optimizer(step_size: float, norm: Optional[str], radius: float, step: str, zero_thresh: float, bounds) -> optax.GradientTransformation:
    """The PGD update as optax: direction (sign above `zero_thresh`, or L2-normalised) -> sgd(step) ->
    projection onto the ball (`norm` None: none, FGSM) -> bounds. Cached per setting."""
    direction = sign_step(zero_thresh) if step == "sign" else features.normalize_by_l2()
    parts = [direction, optax.sgd(step_size)]
    if norm is not None:
        parts.append(project_ball(norm, radius))
    if bounds is not None:
        parts.append(R.clip_to_range(*bounds))
    return optax.chain(*parts)


def _check_bounds(bounds):
    if bounds is None:
        return None
    lo, hi = (float(b) for b in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must be (lower, upper) with lower < upper; got {bounds}")
    return lo, hi


def random_point(key: Array, images: Array, norm: str, radius: float) -> Array:
    """captum's `PGD._random_point` for one image per key: `[E]` keys, `images [E, H, W, C]`."""

    def one(k, x):
        if norm == "Linf":
            return x + jax.random.uniform(k, x.shape, x.dtype) * (2 * radius) - radius
        k1, k2 = jax.random.split(k)
        u = jax.random.normal(k1, x.shape, x.dtype)
        u = u / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(u))), 1e-12)
        r = jax.random.uniform(k2, (), x.dtype) ** (1.0 / x.size) * radius
        return x + r * u

    return jax.vmap(one)(key, images)


def pgd(
    model: base.Model,
    params,
    images: Array,
    labels,
    *,
    radius: float,
    step_size: float,
    steps: int,
    norm: str = "Linf",
    targeted: bool = False,
    random_start: bool = False,
    key: Optional[Array] = None,
    step: str = "sign",
    zero_thresh: float = CAPTUM_ZERO_THRESH,
    bounds=(0.0, 1.0),
    callback=None,
    loop: str = "auto",
) -> AttackResult:
    """Projected gradient descent (Madry et al. 2018) with captum's `PGD.perturb` conventions.

    `steps` times: step of `step_size` along sign(grad CE) (`step="sign"`, captum, also for L2) or
    along `g / ||g||_2` (`step="l2"`), towards the target (`targeted=True`: descend CE of `labels`)
    or away from the label (ascend), entries with `|grad| <= zero_thresh` unchanged; project onto the
    `norm` ball of `radius` around the clean image; clip to `bounds`. `random_start=True` starts from
    a random point of the ball (captum's `random_start`; needs `key`, per-experiment keys as the
    engine's). Runs on the engine: the projection is a between-step optax transformation whose state
    holds the clean image. Module docstring: where captum differs.

    Args:
      images: `[E, H, W, C]` in [0, 1]; labels: int or `[E]` ints (true labels, or targets when
        `targeted`).
      radius, step_size: in [0, 1] pixel units (e.g. 8/255, 2/255). steps: >= 1.

    Returns:
      `AttackResult` (`steps`: the updates applied, all of them).
    """
    images = _check_images(model, images)
    e = images.shape[0]
    labels = _check_targets(model, labels, e, "labels")
    steps = features._check_steps(steps)
    radius = _positive(radius, "radius")
    step_size = _positive(step_size, "step_size")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}; got {step!r}")
    zero_thresh = features._finite_nonneg(zero_thresh, "zero_thresh")
    bounds = _check_bounds(bounds)
    return _run(model, params, images, labels, steps, step_size, norm, radius, step, zero_thresh, bounds, bool(targeted),
                random_start, key, callback, loop)


def fgsm(
    model: base.Model,
    params,
    images: Array,
    labels,
    *,
    eps: float,
    targeted: bool = False,
    zero_thresh: float = CAPTUM_ZERO_THRESH,
    bounds=(0.0, 1.0),
) -> AttackResult:
    """FGSM (Goodfellow, Shlens & Szegedy 2015) as captum's `FGSM.perturb`: one step
    `clip(where(|g| > zero_thresh, x +- eps * sign(g), x), bounds)` with g the gradient of the
    cross-entropy of the scores (module docstring). One engine step without projection."""
    images = _check_images(model, images)
    e = images.shape[0]
    labels = _check_targets(model, labels, e, "labels")
    eps = _positive(eps, "eps")
    zero_thresh = features._finite_nonneg(zero_thresh, "zero_thresh")
    bounds = _check_bounds(bounds)
    return _run(model, params, images, labels, 1, eps, None, 0.0, "sign", zero_thresh, bounds, bool(targeted), False, None, None, "auto")


def _run(model, params, images, labels, steps, step_size, norm, radius, step, zero_thresh, bounds, targeted, rand, key, callback, loop):
    p = P.Pixels(images.shape[1:], squash="none")
    opt = attack_optimizer(step_size, norm, radius, step, zero_thresh, bounds)
    opt_state = engine.vmap_optimizer_state(opt, images)  # the ball's centre: the clean images
    raw0 = images
    if rand:
        if key is None:
            raise ValueError("random_start=True needs key=")
        keys = features.experiment_keys(key, images.shape[0])
        raw0 = random_point(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys), images, norm, radius)
        if bounds is not None:
            raw0 = jnp.clip(raw0, *bounds)
    sign = jnp.full(labels.shape, 1.0 if targeted else -1.0, images.dtype)
    res = engine.optimize(_ce_loss, model.frozen(params), raw0, opt, steps=steps, key=jax.random.key(0) if key is None else key,
                          param=p, targets={"label": labels, "sign": sign}, static=model, opt_state=opt_state,
                          callback=callback, loop=loop)
    out = res.images
    pert, success, pred, linf, l2 = _metrics(model, params, images, out, labels, targeted)
    return AttackResult(out, pert, success, pred, res.finished, linf, l2, res)


# --------------------------------------------------------------------------- demo
def demo_fooling(model: base.Model, params, images: Array, labels, *, steps: int = CS231N_STEPS) -> dict:
    """The arrays the demo shows: each image `[N, H, W, C]` turned into the next class
    (`(label + 1) % num_classes`): `{"clean", "fooled", "perturbation" (fooled - clean, signed),
    "targets", "success", "steps", "linf", "l2"}`."""
    images = _check_images(model, images)
    labels = _check_targets(model, labels, images.shape[0], "labels")
    targets = (labels + 1) % model.num_classes
    r = fooling_images(model, params, images, targets, steps=steps)
    return {"clean": images, "fooled": r.images, "perturbation": r.perturbation, "targets": targets,
            "success": r.success, "steps": r.steps, "linf": r.linf, "l2": r.l2}


__all__ = [
    "AttackResult",
    "BallState",
    "CAPTUM_ZERO_THRESH",
    "CS231N_LEARNING_RATE",
    "CS231N_STEPS",
    "attack_optimizer",
    "demo_fooling",
    "fgsm",
    "fooling_images",
    "pgd",
    "project_ball",
    "random_point",
    "sign_step",
]
