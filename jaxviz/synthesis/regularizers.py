"""Regularisers: loss terms on images, and between-step operations as optax transformations.

Loss terms (`images [B, H, W, C] -> [B]`, one value per image; add them to a loss with a weight):
`l1`, `l2`, `alpha_norm`, and `total_variation` (the library's one total variation,
`jaxviz.synthesis.losses.total_variation`, re-exported here: several named forms, because every peer
differs, SYNTHESIS.md section 5; lucid's is `form="l1"`, Mahendran & Vedaldi's `form="beta"`).

Between-step operations (Yosinski et al. 2015; DeepDream; attacks) act on the *iterate*: each is an
`optax.GradientTransformationExtraArgs` whose `update(updates, state, params)` returns
`op(params + updates) - params`, so that after `optax.apply_updates` the new parameters are
`op(params + updates)`: the projected iterate. Chain them AFTER the optimiser, in the order they
should happen:

    tx = optax.chain(optax.sgd(100.0), decay(1e-4), gaussian_blur(1.0, every=4), clip_to_range(0, 1))

`yosinski(...)` builds exactly Yosinski's order (`optimize/gradient_optimizer.py` `_optimize`):
step -> decay -> blur every k steps (k = 0, every, 2 every, ...) -> zero small values -> zero small
pixel norms -> zero small contributions -> zero small absolute contributions -> clip (Yosinski clips
at the start of the next iteration, which is the same thing). These operations read the
parameters as pixels `[..., H, W, C]` (a `Pixels` parameterisation); the percentiles are over one
experiment's pixels (the engine runs each experiment's optimiser separately).

`normalize_by_mean_abs()` is DeepDream's `step / mean|g|` (chain it BEFORE `optax.sgd(step_size)`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.synthesis.losses import TV_FORMS, total_variation

Array = jax.Array

# --------------------------------------------------------------------------- loss terms
def _check(images) -> Array:
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"regularisers expect images [B, H, W, C]; got shape {images.shape}")
    return images


def l1(images: Array, constant: float = 0.0) -> Array:
    """`sum |x - constant|` per image `[B]` (lucid `objectives.L1`)."""
    images = _check(images)
    return jnp.sum(jnp.abs(images - constant), axis=(1, 2, 3))


def l2(images: Array, constant: float = 0.0, epsilon: float = 1e-6) -> Array:
    """`sqrt(epsilon + sum (x - constant)^2)` per image `[B]` (lucid `objectives.L2`)."""
    images = _check(images)
    return jnp.sqrt(epsilon + jnp.sum(jnp.square(images - constant), axis=(1, 2, 3)))


def alpha_norm(images: Array, alpha: float = 6.0, constant: float = 0.0) -> Array:
    """`sum |x - constant|^alpha` per image `[B]` (Mahendran & Vedaldi 2015's alpha-norm
    regulariser, alpha = 6 in the paper; they apply it to the mean-subtracted image: pass the
    model's mean pixel as `constant`)."""
    images = _check(images)
    return jnp.sum(jnp.abs(images - constant) ** alpha, axis=(1, 2, 3))


# --------------------------------------------------------------------------- between-step operations
class StepCount(NamedTuple):
    """State of the between-step operations that need the iteration number."""

    count: Array


def _between_steps(op, init, next_state=None, *, needs_grad: bool = False) -> optax.GradientTransformationExtraArgs:
    """The one core of every between-step operation: the new iterate is `op(params + updates, state,
    grad)` leaf by leaf (returned as updates, so that it chains after an optimiser); `init(params)`
    builds the state and `next_state(state)` advances it (default: it stays as built). `grad` is the
    loss gradient the engine passes as an extra argument (`None` unless `needs_grad`)."""

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("between-step operations need params: call update(updates, state, params)")
        grad = extra_args.get("grad")
        if needs_grad and grad is None:
            raise ValueError("this operation needs the loss gradient: pass grad= to update (the engine does)")
        proposed = optax.apply_updates(params, updates)
        if needs_grad:
            new = jax.tree_util.tree_map(lambda x, g: op(x, state, g), proposed, grad)
        else:
            new = jax.tree_util.tree_map(lambda x: op(x, state, None), proposed)
        new_updates = jax.tree_util.tree_map(lambda n, p: (n - p).astype(p.dtype), new, params)
        return new_updates, state if next_state is None else next_state(state)

    return optax.GradientTransformationExtraArgs(init, update)


def _projection(op, *, counted: bool = False, needs_grad: bool = False) -> optax.GradientTransformationExtraArgs:
    """A stateless operation `op(x, count, grad)`; `counted=True` keeps the iteration number (from 0)
    in a `StepCount` state and passes it as `count` (else `None`)."""
    if counted:
        return _between_steps(lambda x, s, g: op(x, s.count, g), lambda params: StepCount(jnp.zeros((), jnp.int32)),
                              lambda s: StepCount(s.count + 1), needs_grad=needs_grad)
    return _between_steps(lambda x, s, g: op(x, None, g), lambda params: optax.EmptyState(), needs_grad=needs_grad)


def decay(rate: float, center: float = 0.0) -> optax.GradientTransformationExtraArgs:
    """`x <- center + (1 - rate) * (x - center)` (Yosinski's `decay`: `xx *= 1 - decay` on the
    mean-subtracted image; on [0, 1] pixels pass the model's mean pixel as `center`)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"decay rate must be in [0, 1]; got {rate}")
    return _projection(lambda x, c, g: center + (1.0 - rate) * (x - center))


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian: radius `int(truncate * sigma + 0.5)`, normalised to sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_filter(x: Array, sigma: float, truncate: float = 4.0) -> Array:
    """Per-channel Gaussian blur over the spatial axes of `x [..., H, W, C]`, as
    `scipy.ndimage.gaussian_filter(x[..., c], sigma)` (mode "reflect", i.e. the edge pixel repeated:
    numpy's "symmetric", truncate 4)."""
    if sigma <= 0:
        return x
    k = jnp.asarray(gaussian_kernel(sigma, truncate), x.dtype)
    r = (k.shape[0] - 1) // 2
    for axis in (-3, -2):
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        # scipy's "reflect" repeats the edge; tile the reflection if the radius exceeds the size.
        xp = x if r == 0 else jnp.pad(x, pad, mode="symmetric") if r <= n else _pad_symmetric_long(x, r, axis)
        out = 0
        for i in range(k.shape[0]):
            out = out + k[i] * jax.lax.slice_in_dim(xp, i, i + n, axis=axis % x.ndim)
        x = out
    return x


def _pad_symmetric_long(x, r, axis):
    n = x.shape[axis]
    idx = np.arange(-r, n + r)
    period = 2 * n
    idx = np.mod(idx, period)
    idx = np.where(idx >= n, period - 1 - idx, idx)
    return jnp.take(x, jnp.asarray(idx), axis=axis)


def gaussian_blur(sigma: float, every: int = 1) -> optax.GradientTransformationExtraArgs:
    """Blur the iterate with `gaussian_filter(sigma)` at iterations 0, `every`, 2 `every`, ...
    (Yosinski's `blur_radius`, `blur_every`; his `ii % blur_every == 0` with `ii` from 0). The
    iteration count lives in the state (`StepCount`)."""
    if every < 1:
        raise ValueError(f"blur every must be >= 1; got {every}")

    def op(x, count, g):
        return jnp.where(count % every == 0, gaussian_filter(x, sigma), x)

    return _projection(op, counted=True)


def _percentile(values, p):
    return jnp.percentile(values.reshape(-1), p)


def zero_small_values(percentile: float) -> optax.GradientTransformationExtraArgs:
    """Zero the entries whose `|x|` is below the `percentile` of all `|x|` (Yosinski's
    `small_val_percentile`)."""

    def op(x, c, g):
        a = jnp.abs(x)
        return jnp.where(a < _percentile(a, percentile), 0.0, x).astype(x.dtype)

    return _projection(op)


def zero_small_norms(percentile: float) -> optax.GradientTransformationExtraArgs:
    """Zero whole pixels whose norm over channels is below the `percentile` of all pixel norms
    (Yosinski's `small_norm_percentile`)."""

    def op(x, c, g):
        norms = jnp.linalg.norm(x, axis=-1, keepdims=True)
        return jnp.where(norms < _percentile(norms, percentile), 0.0, x).astype(x.dtype)

    return _projection(op)


def zero_small_contributions(percentile: float, absolute: bool = False) -> optax.GradientTransformationExtraArgs:
    """Zero whole pixels whose predicted contribution `sum_c grad_loss * x` (Yosinski's
    `pred_0_benefit = sum_c grad_objective * -x`: the objective's first-order gain from setting the
    pixel to 0, with `grad_loss = -grad_objective`) is below its `percentile`; `absolute=True` uses
    its absolute value (`px_abs_benefit_percentile`). The gradient is the loss gradient at the
    previous iterate (`grad=` extra argument, supplied by the engine), `x` the current iterate."""

    def op(x, c, g):
        benefit = jnp.sum(g * x, axis=-1, keepdims=True)
        if absolute:
            benefit = jnp.abs(benefit)
        return jnp.where(benefit < _percentile(benefit, percentile), 0.0, x).astype(x.dtype)

    return _projection(op, needs_grad=True)


def iterate_op(op: Callable[[Array, Any], Array], init_state: Optional[Callable] = None) -> optax.GradientTransformationExtraArgs:
    """A between-step operation with a state of its own: the new parameters are
    `op(params + updates, state)`, `init_state(params)` builds the state (default: none), which then
    stays as built (e.g. an attack's starting images, the centre of its epsilon-ball)."""
    init = (lambda params: optax.EmptyState()) if init_state is None else init_state
    return _between_steps(lambda x, s, g: op(x, s), init)


@functools.lru_cache(maxsize=None)
def _clip(shape: tuple, lower: bytes, upper: bytes) -> optax.GradientTransformationExtraArgs:
    lo = np.frombuffer(lower, np.float64).reshape(shape)
    hi = np.frombuffer(upper, np.float64).reshape(shape)

    def op(x, count, grad):
        if lo.ndim == 0:
            return jnp.clip(x, float(lo), float(hi))
        bounds_shape = (1,) * (x.ndim - lo.ndim) + lo.shape  # bounds for the trailing axes
        return jnp.clip(x, jnp.asarray(lo, x.dtype).reshape(bounds_shape), jnp.asarray(hi, x.dtype).reshape(bounds_shape))

    return _projection(op)


def clip_to_range(lower=0.0, upper=1.0) -> optax.GradientTransformationExtraArgs:
    """`x <- clip(x, lower, upper)` (Yosinski, DeepDream, Simonyan, attacks: keep pixels valid).
    `lower`, `upper`: numbers, or arrays of one shape that bounds the trailing axes of each leaf:
    one number per channel (the last axis), e.g. the raw-unit box of `param.AffinePixels.bounds()`,
    or one per unit of a code (DGN-AM's code bounds). `lower == upper` pins a value. The same
    bounds give the same transformation object (the engine compiles once per optimiser)."""
    lo = np.asarray(lower, np.float64)
    hi = np.asarray(upper, np.float64)
    if lo.shape != hi.shape or not np.all(np.isfinite(lo) & np.isfinite(hi)) or not np.all(lo <= hi):
        raise ValueError(f"clip range needs finite lower <= upper of one shape; got {lower}, {upper}")
    return _clip(lo.shape, lo.tobytes(), hi.tobytes())


def yosinski(
    *,
    decay_rate: float = 0.0,
    decay_center: float = 0.0,
    blur_radius: float = 0.0,
    blur_every: int = 1,
    small_val_percentile: float = 0.0,
    small_norm_percentile: float = 0.0,
    px_benefit_percentile: float = 0.0,
    px_abs_benefit_percentile: float = 0.0,
    clip: Optional[tuple] = (0.0, 1.0),
) -> optax.GradientTransformationExtraArgs:
    """Yosinski et al.'s between-step operations in their order (operations with a zero setting are
    left out, as his `if` guards do); chain it after the optimiser:
    `optax.chain(optax.sgd(lr), yosinski(decay_rate=1e-4, blur_radius=1.0, blur_every=4))`
    (row (c) of the paper's table, "used for most of the images").

    Note: Yosinski's image lives in mean-subtracted 0-255 space; radii are in pixels (the same
    here), decay pulls towards `decay_center`.
    """
    parts = []
    if decay_rate:
        parts.append(decay(decay_rate, decay_center))
    if blur_radius and blur_every:
        parts.append(gaussian_blur(blur_radius, blur_every))
    if small_val_percentile:
        parts.append(zero_small_values(small_val_percentile))
    if small_norm_percentile:
        parts.append(zero_small_norms(small_norm_percentile))
    if px_benefit_percentile:
        parts.append(zero_small_contributions(px_benefit_percentile))
    if px_abs_benefit_percentile:
        parts.append(zero_small_contributions(px_abs_benefit_percentile, absolute=True))
    if clip is not None:
        parts.append(clip_to_range(*clip))
    if not parts:
        return optax.with_extra_args_support(optax.identity())
    return optax.chain(*parts)


def normalize_by_mean_abs(eps: float = 0.0) -> optax.GradientTransformationExtraArgs:
    """`u <- u / (mean|u| + eps)` over all of one experiment's parameters (google/deepdream's
    `step_size / abs(g).mean() * g`, with `optax.sgd(step_size)` chained after it; DGN-AM the same).
    DeepDream has no epsilon (the default): an all-zero gradient gives a non-finite step, which the
    engine reports instead of silently stalling."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves = jax.tree_util.tree_leaves(updates)
        total = sum(jnp.sum(jnp.abs(u)) for u in leaves)
        count = sum(u.size for u in leaves)
        mean = total / count + eps
        return jax.tree_util.tree_map(lambda u: (u / mean).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


__all__ = [
    "StepCount",
    "TV_FORMS",
    "alpha_norm",
    "clip_to_range",
    "iterate_op",
    "decay",
    "gaussian_blur",
    "gaussian_filter",
    "gaussian_kernel",
    "l1",
    "l2",
    "normalize_by_mean_abs",
    "total_variation",
    "yosinski",
    "zero_small_contributions",
    "zero_small_norms",
    "zero_small_values",
]
