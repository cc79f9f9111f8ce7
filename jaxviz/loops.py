"""One loop policy for every iterative computation in jaxviz.

XLA on CPU runs the same computation 3-4x slower inside `lax.scan` / `lax.map` / `fori_loop`
than as one jitted call (measured on a 2-core CPU: 16 VGG16 input gradients batched 2.1 s, the same
inside a length-1 scan 5.9 s; a style-transfer step 8-9 steps/s in a Python loop, 2.4 in a scan).
On accelerators a scan avoids one dispatch per step and wins. So every loop in the library
(optimisation steps, chunks of SmoothGrad / integrated gradients / occlusion / patches / features)
goes through `scan` below:

  * `loop="python"`: a Python loop over ONE jitted step function (compiled once per shape and static
    configuration, cached across calls);
  * `loop="scan"`: `jax.lax.scan` over the same step;
  * `loop="auto"` (default): `"scan"` when called under a JAX transformation (any argument is a
    tracer, e.g. inside the user's `jit` or `vmap`: a Python loop would unroll into the trace) or
    when the default backend is not the CPU, else `"python"`.

Both modes compute the same step on the same values; results agree to floating-point reassociation
(XLA may fuse a step differently inside a scan), and the tests check this for each user.

To compile once and hit the cache on later calls, the step is a function of
`(static, consts, carry, x)`:

  * `static`: hashable configuration (model, layer names, sizes); a static jit argument;
  * `consts`: arrays the step reads but does not change (model params, images, objectives) -
    passed as jit ARGUMENTS, never closed over, so that XLA does not constant-fold big weights
    (measured: 413 s instead of 16 s for VGG16 when params were closed over);
  * `carry`, `x`: as in `lax.scan`.

`fn` should be a module-level function (or another long-lived callable): the jitted version is
cached per `fn`, so a fresh lambda per call would recompile every call.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jaxviz._util import is_traced

try:  # JAX internals for `unroll_threefry_on_cpu` (not public API: absent or moved in other versions)
    from jax._src.interpreters import mlir as _mlir
    from jax._src.random import threefry2x32 as _threefry
except ImportError:
    _mlir = _threefry = None

LOOPS = ("auto", "python", "scan")

StepFn = Callable[[Any, Any, Any, Any], tuple[Any, Any]]

_jitted: "weakref.WeakKeyDictionary[Callable, Callable]" = weakref.WeakKeyDictionary()


def resolve(loop: str, *trees) -> str:
    """The concrete mode (`"python"` or `"scan"`) that `loop` selects for arguments `trees`."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}; got {loop!r}")
    if loop != "auto":
        if loop == "python" and is_traced(trees):
            # Under a transformation a Python loop still works (it unrolls into the trace); it is
            # the caller's explicit choice, so honour it.
            return "python"
        return loop
    if is_traced(trees) or jax.default_backend() != "cpu":
        return "scan"
    return "python"


def jitted(fn: StepFn) -> Callable:
    """`jax.jit(fn, static_argnums=0)`, cached per `fn`."""
    try:
        return _jitted[fn]
    except (KeyError, TypeError):
        pass
    out = jax.jit(fn, static_argnums=0)
    try:
        _jitted[fn] = out
    except TypeError:  # not weak-referenceable: do not cache
        pass
    return out


def _length(xs, length: Optional[int]) -> int:
    leaves = jax.tree_util.tree_leaves(xs)
    if leaves:
        n = leaves[0].shape[0]
        if length is not None and length != n:
            raise ValueError(f"length={length} but xs has leading axis {n}")
        return int(n)
    if length is None:
        raise ValueError("scan needs xs or length")
    return int(length)


def scan(
    fn: StepFn,
    static: Any,
    consts: Any,
    carry: Any,
    xs: Any = None,
    *,
    length: Optional[int] = None,
    loop: str = "auto",
) -> tuple[Any, Any]:
    """`lax.scan(lambda c, x: fn(static, consts, c, x), carry, xs, length)` under the loop policy.

    Args:
      fn: `fn(static, consts, carry, x) -> (carry, y)`; `x` is `None` when `xs` is `None`.
      static: hashable configuration (a static argument of the jitted step).
      consts: pytree of arrays read by every step (passed as arguments, not closed over).
      carry: initial carry pytree.
      xs: pytree with a leading axis to loop over, or `None` (then give `length`).
      length: number of steps when `xs` is `None`.
      loop: `"auto"`, `"python"` or `"scan"` (see the module docstring).

    Returns:
      `(final carry, ys stacked along a new leading axis)` as `lax.scan` returns them (`ys` is
      `None` when the step returns `None`).
    """
    n = _length(xs, length)
    mode = resolve(loop, consts, carry, xs)
    if mode == "scan":
        # One module-level jitted scan keyed on (fn, static, length): a second call with new
        # values of the same shapes reuses the compilation (a fresh lambda would retrace).
        return _scan_jit((fn, static, n), consts, carry, xs)
    step = jitted(fn)
    ys = []
    for i in range(n):
        x = None if xs is None else jax.tree_util.tree_map(lambda a, i=i: a[i], xs)
        carry, y = step(static, consts, carry, x)
        ys.append(y)
    if not ys or all(y is None for y in ys):
        return carry, None
    return carry, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ys)


def _scan_all(config, consts, carry, xs):
    fn, static, n = config
    return lax.scan(lambda c, x: fn(static, consts, c, x), carry, xs, length=n)


_scan_jit = jax.jit(_scan_all, static_argnums=0)


def map(fn: Callable[[Any, Any, Any], Any], static: Any, consts: Any, xs: Any, *, loop: str = "auto") -> Any:
    """`lax.map(lambda x: fn(static, consts, x), xs)` under the loop policy: one chunk per
    iteration, results stacked along a new leading axis."""
    return scan(_map_step, (fn, static), consts, None, xs, loop=loop)[1]


def _map_step(static, consts, carry, x):
    fn, inner = static
    return carry, fn(inner, consts, x)


def unroll_threefry_on_cpu(enable: bool = True) -> bool:
    """Lower JAX's threefry random-number hash on the CPU without a loop (`enable=True`), or restore
    JAX's own CPU lowering (`enable=False`); returns whether the change could be made.

    JAX 0.10 lowers threefry2x32 on the CPU as a rolled `fori_loop` of 5 iterations (on GPU/TPU as
    straight-line code), and XLA's CPU compiler spends much longer on a small while loop than on the
    same operations unrolled. Every `jax.random` draw inside a jitted function (transforms, noise,
    initialisers) pays it. Measured on the 2-core AMD EPYC of benchmarks/README.md (jax 0.10.2):
    compiling `jax.random.bits` 0.17 -> 0.10 s, `randint` 0.35 -> 0.22 s, drawing 16M normals
    (compile and run) 0.60 -> 0.25 s; test files that synthesise images with random transforms
    took 15-25% less CPU time. Both lowerings are jax's own functions and compute the same integer
    hash: the random numbers are bit-identical (`tests/test_loops.py`).

    This changes a process-wide JAX setting (a lowering rule in `jax._src`, not public API), so the
    library never calls it on import; the `jaxviz` command line and the test suite do. Programs
    already compiled keep their lowering. Returns `False`, changing nothing, if this JAX version
    does not have the functions it expects.
    """
    try:
        rule = _threefry._threefry2x32_lowering_rule if enable else _threefry._threefry2x32_cpu_lowering_rule
        _mlir.register_lowering(_threefry.threefry2x32_p, rule, platform="cpu")
    except AttributeError:  # also: the imports above failed (None)
        return False
    return True
