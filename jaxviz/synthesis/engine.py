"""The one optimisation loop of jaxviz's image synthesis.

Every synthesis technique (feature visualisation, fooling images, DeepDream, inversion, texture and
style, the generator prior) is a configuration of `optimize`:

    result = optimize(loss_fn, consts, raw0, optimizer, steps=..., key=..., param=..., targets=...)

  * `param` (`jaxviz.synthesis.param`) turns the optimised array `raw` into images in [0, 1];
  * `transforms` (`jaxviz.synthesis.transforms`) jitter/scale/rotate the images each step;
  * `loss_fn` returns the losses to MINIMISE (techniques negate the objectives they maximise);
  * `optimizer` is any optax transformation: Adam, SGD after `normalize_by_mean_abs` (DeepDream),
    L-BFGS (`optax.lbfgs`: the engine supplies `value`, `grad` and `value_fn`), with the
    between-step regularisers of `jaxviz.synthesis.regularizers` chained after it.

Experiments. `raw0` holds E independent experiments along its leading axis (E class
visualisations, E inversions, E style weights ...). The engine runs ONE experiment's step and maps
it over the E axis with `jax.vmap`, so each experiment has its own optimiser state (Adam's count,
L-BFGS's memory and line search), its own random draws and its own early stop, and a batch gives
the same result as the experiments run one by one (to float rounding). XLA still computes the
network for all E images at once (the vmapped batch-of-one convolutions are one batched
convolution). What differs between experiments goes in `targets` (leaves with a leading E axis,
sliced per experiment); what all share (network weights, weights of loss terms) goes in `consts`.
Both are jit ARGUMENTS: never closed over (XLA would constant-fold big weights) and new values do
not recompile.

Keys. Experiment `e` uses key `keys[e]` (pass `[E]` keys, or one key that is split into E); its
step `t` uses `fold_in(keys[e], t)`, so the same key gives the same picture, and a batch equals
one-by-one runs that are given the same per-experiment keys.

Loops. `loop="auto"` runs a Python loop over one jitted step on the CPU (XLA's CPU backend runs a
step 3-4x slower inside `lax.scan`) and one jitted `lax.scan` on accelerators or when called under
a JAX transformation (e.g. `jax.vmap(optimize ...)` over hyper-parameters); both compute the same
step (`jaxviz.loops` explains the policy). The step and the scan are module-level jitted functions
of a hashable configuration: a second call with new `consts`/`targets`/`raw0` values of the same
shapes does not compile again. The configuration holds `loss_fn`, `param`, `transforms`,
`optimizer`, `stop` and `static`; pass the same objects (e.g. build the optax optimiser once per
setting, `functools.lru_cache` helps) to reuse a compilation: a new `optax.adam(0.05)` object is a
new configuration. The progress callback is not part of it.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz import loops
from jaxviz._util import is_traced

Array = jax.Array

NONFINITE = ("raise", "stop")

# A loss function: (static, consts, targets, images, key, step) -> [n] losses (or a scalar), or
# ([n] losses, aux).
LossFn = Callable[..., Any]


class Result(NamedTuple):
    """What `optimize` returns. E = number of experiments, T = `steps`.

    Attributes:
      images: `[E, H, W, C]` in [0, 1] (`group=True`: `[E, n, H, W, C]`): `param.to_images(raw)`.
      raw: the final parameterisation state, leaves `[E, ...]` (as `raw0`). A stopped experiment
        keeps the iterate at which it stopped; one with a non-finite loss keeps its last finite
        iterate (never a NaN image).
      opt_state: the final optimiser state, one per experiment (leaves `[E, ...]`; `optimizer.init`
        of one experiment's raw, stacked): pass it back as `opt_state=` to continue (multi-scale).
      losses: `[T, E]` float32: experiment e's summed loss at step t, computed at the iterate
        before that step's update (on the transformed images); NaN once the experiment has finished.
      finished: `[E]` int32: the step at which the experiment stopped (its result is the iterate
        before that step's update, i.e. `finished - step0` updates were applied); `step0 + T` if it
        ran to the end.
      stopped: `[E]` bool: the `stop` criterion fired.
      nonfinite_step: `[E]` int32: step of the first non-finite loss, gradient or update; -1 if none.
    """

    images: Array
    raw: Any
    opt_state: Any
    losses: Array
    finished: Array
    stopped: Array
    nonfinite_step: Array


class NonFiniteLossError(FloatingPointError):
    """A loss, gradient or update became NaN or infinite. `.step`, `.experiments` (indices) and
    `.result` (the `Result` so far: the failing experiments keep their last finite iterate)."""

    def __init__(self, message: str, step: int, experiments: list, result: Optional[Result] = None):
        super().__init__(message)
        self.step = step
        self.experiments = experiments
        self.result = result


class _Carry(NamedTuple):
    """One experiment's loop state (leaves get a leading E axis outside the vmap)."""

    raw: Any
    opt_state: Any
    done: Array  # bool
    finished: Array  # int32
    stopped: Array  # bool
    nonfinite: Array  # int32


@dataclasses.dataclass(frozen=True)
class _Config:
    """Hashable configuration of the compiled step (a static jit argument)."""

    loss_fn: Callable
    param: Any
    transforms: Any
    optimizer: Any
    stop: Any
    static: Any
    group: bool
    scan_callback: bool  # call back from inside the scan (jax.debug.callback)
    callback_every: int
    callback_images: bool
    return_images: bool  # python mode: return the images of each step (for the host callback)


# --------------------------------------------------------------------------- ReLU redirection
@jax.custom_vjp
def _switch_relu(x: Array, redirect: Array) -> Array:
    return jax.nn.relu(x)


def _switch_relu_fwd(x, redirect):
    return jax.nn.relu(x), (x, redirect)


def _switch_relu_bwd(res, g):
    x, redirect = res
    ordinary = jnp.where(x > 0, g, jnp.zeros_like(g))
    # lucid misc/redirected_relu_grad.py: the ReLU gradient (passing x == 0), and where it is zero
    # for a whole batch element, the incoming gradient except where it would push a negative input
    # further down (x < 0 and g > 0; the loss is minimised).
    lucid_relu = jnp.where(x < 0, jnp.zeros_like(g), g)
    pushes_down = jnp.logical_and(x < 0, g > 0)
    redirected = jnp.where(pushes_down, jnp.zeros_like(g), g)
    axes = tuple(range(1, x.ndim)) if x.ndim >= 2 else tuple(range(x.ndim))
    alive = jnp.any(lucid_relu != 0, axis=axes, keepdims=True)
    lucid = jnp.where(alive, lucid_relu, redirected)
    out = jnp.where(redirect > 0, lucid, ordinary)
    return out, jnp.zeros_like(redirect)


_switch_relu.defvjp(_switch_relu_fwd, _switch_relu_bwd)

#: lucid redirects the ReLU gradient while `global_step <= 16` (steps 0..16).
REDIRECT_STEPS = 16


def redirected_relu(x: Array) -> Array:
    """ReLU whose gradient is lucid's redirected one (`misc/redirected_relu_grad.py`).

    Forward: `max(x, 0)`. Backward (loss minimised): per batch element (leading axis), the ordinary
    ReLU gradient; if that is zero for the whole element, the incoming gradient except where
    `x < 0` and it would push `x` further down. Channels that start dead thus still get a gradient.
    Use as `model.apply(params, images, relu=redirected_relu)`; in the engine, use
    `relu_for_step(step)` to redirect only for the first steps, as lucid does.
    """
    return _switch_relu(x, jnp.float32(1.0))


def relu_for_step(step: Array, until: int = REDIRECT_STEPS) -> Callable[[Array], Array]:
    """The ReLU for engine step `step` (traced is fine): redirected gradient while `step <= until`
    (lucid: `global_step <= 16`, 17 steps), the ordinary ReLU gradient after. Pass it to
    `model.apply(..., relu=relu_for_step(step))` inside a loss function; `step` is the loss
    function's last argument."""
    redirect = (jnp.asarray(step) <= until).astype(jnp.float32)
    return lambda x: _switch_relu(x, redirect)


# --------------------------------------------------------------------------- the step
def _tree_where(pred, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _experiment_images(cfg: _Config, consts, raw) -> Array:
    return cfg.param.to_images(raw if cfg.group else jax.tree_util.tree_map(lambda a: a[None], raw), consts)


def _experiment_step(cfg: _Config, consts, target, key, c: _Carry, t):
    """One step of ONE experiment (mapped over experiments by `_step`)."""
    if not cfg.group:
        target = jax.tree_util.tree_map(lambda a: a[None], target)
    k = jax.random.fold_in(key, t)
    k_transform, k_loss = jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)

    def value(raw):
        images = _experiment_images(cfg, consts, raw)
        seen = images if cfg.transforms is None else cfg.transforms(k_transform, images)
        out = cfg.loss_fn(cfg.static, consts, target, seen, k_loss, t)
        losses, aux = out if isinstance(out, tuple) else (out, None)
        return jnp.sum(losses), (images, aux)

    (v, (images, aux)), g = jax.value_and_grad(value, has_aux=True)(c.raw)
    if isinstance(cfg.optimizer, optax.GradientTransformationExtraArgs):
        updates, new_opt = cfg.optimizer.update(g, c.opt_state, c.raw, value=v, grad=g, value_fn=lambda r: value(r)[0])
    else:
        updates, new_opt = cfg.optimizer.update(g, c.opt_state, c.raw)
    new_raw = optax.apply_updates(c.raw, updates)
    finite = jnp.isfinite(v) & _all_finite(g) & _all_finite(new_raw)
    if cfg.stop is None:
        halt_now = jnp.bool_(False)
    else:
        halt_now = jnp.all(jnp.asarray(cfg.stop(cfg.static, consts, target, images, aux), bool))
    active = jnp.logical_not(c.done)
    bad = active & jnp.logical_not(finite)
    halt = active & finite & halt_now
    go = active & finite & jnp.logical_not(halt_now)
    carry = _Carry(
        raw=_tree_where(go, new_raw, c.raw),
        opt_state=_tree_where(go, new_opt, c.opt_state),
        done=c.done | bad | halt,
        finished=jnp.where(bad | halt, t, c.finished).astype(jnp.int32),
        stopped=c.stopped | halt,
        nonfinite=jnp.where(bad, t, c.nonfinite).astype(jnp.int32),
    )
    loss = jnp.where(active, v, jnp.nan).astype(jnp.float32)
    return carry, loss, images


def _step(cfg: _Config, run, carry: _Carry, t):
    """One step of all experiments: `(carry, t) -> (carry, (losses [E], images or None))`."""
    consts, targets, keys, token = run
    carry, loss, images = jax.vmap(lambda tg, k, c: _experiment_step(cfg, consts, tg, k, c, t))(targets, keys, carry)
    if not cfg.group:
        images = images[:, 0]  # [E, 1, H, W, C] -> [E, H, W, C]
    if cfg.scan_callback:
        payload = images if cfg.callback_images else None

        def call():
            jax.debug.callback(_dispatch, token, t, loss, payload)

        jax.lax.cond(t % cfg.callback_every == 0, call, lambda: None)
    return carry, (loss, images if cfg.return_images else None)


def _scan_body(cfg: _Config, run, carry: _Carry, ts):
    return jax.lax.scan(lambda c, t: _step(cfg, run, c, t), carry, ts)


_scan_all = jax.jit(_scan_body, static_argnums=0)


def _final_images(cfg: _Config, consts, raw):
    if cfg.group:
        return jax.vmap(lambda r: cfg.param.to_images(r, consts))(raw)
    return cfg.param.to_images(raw, consts)


_final_images_jit = jax.jit(_final_images, static_argnums=0)


def _init_state(optimizer, raw):
    return jax.vmap(optimizer.init)(raw)


_init_state_jit = jax.jit(_init_state, static_argnums=0)

# --------------------------------------------------------------------------- callbacks under scan
_CALLBACKS: dict = {}
_TOKENS = itertools.count(1)


def _dispatch(token, step, losses, images):
    fn = _CALLBACKS.get(int(token))
    if fn is not None:
        fn(int(step), np.asarray(losses), None if images is None else np.asarray(images))


# --------------------------------------------------------------------------- the driver
def _keys(key, n: int) -> Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.shape[-1:] != (2,):
            raise ValueError(f"key must be a jax.random.key (or raw uint32 key data); got dtype {key.dtype}, shape {key.shape}")
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return jax.random.split(key, n)
    if key.shape != (n,):
        raise ValueError(f"key must be one key or [E] = [{n}] keys (one per experiment); got shape {key.shape}")
    return key


def _leading(tree, what: str) -> Optional[int]:
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else None for x in jax.tree_util.tree_leaves(tree)}
    if None in sizes:
        raise ValueError(f"every leaf of {what} needs a leading experiment axis; found a scalar leaf")
    if len(sizes) > 1:
        raise ValueError(f"the leaves of {what} disagree on the number of experiments (leading axes {sorted(sizes)})")
    return sizes.pop() if sizes else None


def _is_concrete(*trees) -> bool:
    return not is_traced(trees)


def optimize(
    loss_fn: LossFn,
    consts: Any,
    raw0: Any,
    optimizer: optax.GradientTransformation,
    *,
    steps: int,
    key: Array,
    param: Any,
    targets: Any = None,
    transforms: Optional[Callable] = None,
    static: Any = None,
    stop: Optional[Callable] = None,
    opt_state: Any = None,
    step0: int = 0,
    group: bool = False,
    callback: Optional[Callable] = None,
    callback_every: int = 1,
    callback_images: bool = False,
    on_nonfinite: str = "raise",
    loop: str = "auto",
) -> Result:
    """Optimise E experiments' images for `steps` steps; see the module docstring.

    Args:
      loss_fn: `loss_fn(static, consts, targets_e, images, key, step)` for ONE experiment ->
        losses to minimise, `[n]` (summed) or a scalar, or `(losses, aux)` (then `aux` goes to
        `stop`). `images` are the experiment's transformed images `[1, h, w, C]` (`group=True`:
        `[n, h, w, C]`); `targets_e` its slice of `targets` with a leading axis of 1 (so loss code
        written for a batch runs unchanged; `group=True`: the slice itself); `key` a per-step,
        per-experiment key for the loss's own randomness; `step` the step number (int32 scalar,
        traced), e.g. for `relu_for_step(step)`. Must be a long-lived function (module level).
      consts: pytree shared by all experiments (network params, loss weights), jit arguments.
      raw0: initial parameterisation state, leaves `[E, *param.raw_shape]` (`group=True`:
        `[E, n, *raw_shape]`): `param.init(key, E)` or `param.from_images(images)`.
      optimizer: any optax `GradientTransformation`. `GradientTransformationExtraArgs` (e.g.
        `optax.lbfgs()`, `optax.chain(...)`) get `value=`, `grad=` and `value_fn=` (the
        experiment's loss as a function of its raw, with this step's key) at every update. Each
        experiment has its own state and L-BFGS line search.
      steps: number of steps (>= 1); step numbers are `step0 .. step0 + steps - 1`.
      key: one `jax.random.key` (split into E) or `[E]` keys, one per experiment.
      param: the parameterisation (`Pixels`, `FFT`, or any hashable object with
        `to_images(raw, consts)`).
      targets: pytree of per-experiment values, leaves `[E, ...]` (objective indices, target
        features or Grams, per-experiment weights), or None.
      transforms: `(key, images) -> images` applied before `loss_fn` each step (e.g.
        `transforms.standard_transforms()`), or None.
      static: hashable configuration handed to `loss_fn` and `stop` (model, layer names, flags).
      stop: optional `stop(static, consts, targets_e, images, aux) -> bool` (or `[n]` bools, all
        must hold) evaluated at each step on the experiment's untransformed images `[1, H, W, C]`
        before the update (and `aux` from `loss_fn`); when True the experiment stops there and
        its raw and optimiser state are frozen (e.g. fooling: the target is top-1).
      opt_state: optimiser state to start from (a previous `Result.opt_state`); default
        `optimizer.init` per experiment.
      step0: number of the first step (keys `fold_in(key, step)`, `relu_for_step`, callbacks).
      group: each experiment is a group of n images optimised together (lucid's diversity):
        `raw0` is `[E, n, ...]` and `loss_fn` sees all n images.
      callback: `callback(step, losses [E], images [E, H, W, C] or None)` with numpy arrays, every
        `callback_every` steps (`step % callback_every == 0`); images only if `callback_images`.
        Python loop: called by the driver after the step; scan: through `jax.debug.callback`
        (steps after all experiments finished are reported too, with NaN losses). The library
        prints nothing.
      on_nonfinite: `"raise"` (default): a non-finite loss, gradient or update stops the run with a
        `NonFiniteLossError` naming the step and the experiments (Python loop: at that step; scan:
        after the scan; under a JAX transformation nothing can be raised: read
        `Result.nonfinite_step`). `"stop"`: those experiments stop (last finite iterate kept,
        `Result.nonfinite_step` set) and the others go on.
      loop: `"auto"`, `"python"` or `"scan"` (`jaxviz.loops`).

    Returns:
      `Result`.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps}")
    steps = int(steps)
    if on_nonfinite not in NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {NONFINITE}; got {on_nonfinite!r}")
    if int(callback_every) < 1:
        raise ValueError(f"callback_every must be >= 1; got {callback_every}")
    n_exp = _leading(raw0, "raw0")
    if n_exp is None:
        raise ValueError("raw0 is empty")
    if n_exp < 1:
        raise ValueError("raw0 has no experiments (leading axis 0)")
    if targets is not None:
        n_t = _leading(targets, "targets")
        if n_t is not None and n_t != n_exp:
            raise ValueError(f"targets have {n_t} experiments along their leading axis, raw0 has {n_exp}")
    keys = _keys(key, n_exp)
    mode = loops.resolve(loop, consts, targets, raw0, opt_state, keys)
    concrete = _is_concrete(consts, targets, raw0, opt_state, keys)

    if opt_state is None:
        opt_state = _init_state_jit(optimizer, raw0)
    carry = _Carry(
        raw=raw0,
        opt_state=opt_state,
        done=jnp.zeros((n_exp,), bool),
        finished=jnp.full((n_exp,), step0 + steps, jnp.int32),
        stopped=jnp.zeros((n_exp,), bool),
        nonfinite=jnp.full((n_exp,), -1, jnp.int32),
    )
    common = dict(
        loss_fn=loss_fn,
        param=param,
        transforms=transforms,
        optimizer=optimizer,
        stop=stop,
        static=static,
        group=bool(group),
        callback_every=int(callback_every),
        callback_images=bool(callback_images),
    )
    if mode == "scan":
        token = 0
        if callback is not None:
            token = next(_TOKENS)
            _CALLBACKS[token] = callback
        cfg = _Config(scan_callback=callback is not None, return_images=False, **common)
        run = (consts, targets, keys, jnp.int32(token))
        ts = jnp.arange(step0, step0 + steps, dtype=jnp.int32)
        try:
            carry, (losses, _) = _scan_all(cfg, run, carry, ts)
            if concrete and callback is not None:
                jax.effects_barrier()
        finally:
            if concrete and callback is not None:
                _CALLBACKS.pop(token, None)
        result = _result(cfg, consts, carry, losses)
        if concrete and on_nonfinite == "raise":
            _raise_nonfinite(result)
        return result

    cfg = _Config(scan_callback=False, return_images=callback is not None and callback_images, **common)
    step_fn = loops.jitted(_step)
    run = (consts, targets, keys, jnp.int32(0))
    rows = []
    for i in range(steps):
        t = step0 + i
        carry, (loss, images) = step_fn(cfg, run, carry, jnp.int32(t))
        rows.append(loss)
        if callback is not None and t % callback_every == 0:
            callback(t, np.asarray(loss), None if images is None else np.asarray(images))
        if concrete:
            done = np.asarray(carry.done)
            if on_nonfinite == "raise":
                bad = np.asarray(carry.nonfinite)
                if (bad >= 0).any():
                    losses = _pad_rows(rows, steps, n_exp)
                    _raise_nonfinite(_result(cfg, consts, carry, losses))
            if done.all():
                break
    return _result(cfg, consts, carry, _pad_rows(rows, steps, n_exp))


def _pad_rows(rows, steps, n_exp):
    losses = jnp.stack(rows)
    if len(rows) < steps:
        losses = jnp.concatenate([losses, jnp.full((steps - len(rows), n_exp), jnp.nan, jnp.float32)])
    return losses


def _result(cfg, consts, carry: _Carry, losses) -> Result:
    return Result(
        images=_final_images_jit(cfg, consts, carry.raw),
        raw=carry.raw,
        opt_state=carry.opt_state,
        losses=losses,
        finished=carry.finished,
        stopped=carry.stopped,
        nonfinite_step=carry.nonfinite,
    )


def _raise_nonfinite(result: Result) -> None:
    bad = np.asarray(result.nonfinite_step)
    if not (bad >= 0).any():
        return
    step = int(bad[bad >= 0].min())
    experiments = [int(e) for e in np.flatnonzero(bad >= 0)]
    at = ", ".join(f"experiment {e} at step {int(bad[e])}" for e in experiments)
    raise NonFiniteLossError(
        f"non-finite loss, gradient or update ({at}); the run stopped there and those experiments keep "
        "their last finite iterate (error.result). Lower the learning rate, check the loss for log(0) or "
        "0/0 (e.g. a zero gradient normalised by its mean), or pass on_nonfinite='stop' to let the other "
        "experiments go on.",
        step,
        experiments,
        result,
    )


def vmap_optimizer_state(optimizer, raw):
    """`optimizer.init` per experiment (leaves `[E, ...]`), as `optimize` does by default: for
    building or resizing a state to pass as `opt_state=`."""
    return _init_state_jit(optimizer, raw)


__all__ = [
    "NONFINITE",
    "NonFiniteLossError",
    "REDIRECT_STEPS",
    "Result",
    "optimize",
    "redirected_relu",
    "relu_for_step",
    "vmap_optimizer_state",
]
