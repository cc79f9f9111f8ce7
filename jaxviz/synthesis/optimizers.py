"""Optimisers the engine's techniques use that optax does not offer as such.

`lbfgs`: torch's L-BFGS without line search (`torch.optim.LBFGS(lr, history_size,
line_search_fn=None)`, the optimiser of neural-style, neural-style-pt and pystiche) as an optax
transformation: one gradient per step, step `lr` (the first `min(1, 1/||g||_1) * lr`), and a
curvature pair (s, y) stored only when `s . y > 1e-10` (torch; here by default relative to
`||s|| ||y||`, see `lbfgs`). optax's `scale_by_lbfgs` (0.2.8) stores every pair unless
`s . y == 0`: on a non-convex loss (style, texture) a pair of negative curvature makes its
inverse-Hessian estimate indefinite, and without a line search the next steps can climb. Measured on
a VGG11 average-pooling style loss (`tests/test_style.py::test_lbfgs_average_pooling`, compiled at
LLVM -O0): optax's first three stored pairs had `s . y < 0`, the loss jumped from 0.006 to 1.8e3 in
one step, and after 30 steps 27 of 29 stored pairs were negative and the loss had not fallen; with
torch's rule the estimate stays positive definite.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["LBFGSState", "lbfgs"]

#: torch.optim.LBFGS stores a curvature pair only when s . y exceeds this (`lbfgs.py`, `ys > 1e-10`).
CURVATURE_EPS = 1e-10


class LBFGSState(NamedTuple):
    """`count` steps taken; the previous iterate and gradient; `s`, `y` the stored pairs (leaves
    `[history, ...]`, a ring buffer written at `head`), `rho` their 1 / (s . y) (0: empty slot);
    `h_diag` the initial inverse-Hessian scale (s . y / y . y of the newest stored pair, 1 before);
    `skipped` the pairs refused for their curvature."""

    count: jax.Array
    prev_params: Any
    prev_grads: Any
    s: Any
    y: Any
    rho: jax.Array
    head: jax.Array
    h_diag: jax.Array
    skipped: jax.Array


def _vdot(a, b):
    return jnp.real(optax.tree_utils.tree_vdot(a, b))


def _axpy(alpha, x, y):
    # y + alpha x in y's dtype (optax's tree_add_scale, named tree_add_scalar_mul in optax 0.2.4, keeps
    # the wider dtype of alpha).
    return jax.tree.map(lambda xi, yi: yi + alpha.astype(yi.dtype) * xi, x, y)


def lbfgs(learning_rate: float = 1.0, history_size: int = 100, *, relative: bool = True) -> optax.GradientTransformationExtraArgs:
    """torch's L-BFGS without line search as an optax transformation (see the module docstring).

    Follows `torch.optim.LBFGS(lr=learning_rate, history_size=history_size, line_search_fn=None)`
    called with `max_iter` = the number of steps and tolerances -1, as neural-style does: direction
    by the two-loop recursion over the stored pairs, the oldest dropped when `history_size` are
    stored, first step `min(1, 1/||g||_1) * learning_rate` along `-g`. Two differences: `s` is the
    change of the iterate between calls (torch: its own step `t d`), so a transformation chained
    after this one (e.g. clipping to the image range) is seen; and torch ends the whole run when the
    directional derivative g . d exceeds -tolerance_change, which with a positive definite estimate
    and tolerance -1 does not happen. `update` needs `params`; extra arguments (`value`, `grad`,
    `value_fn` from the engine) are ignored.

    `relative`: store a pair when `s . y > 1e-10 * ||s|| ||y||` (default), or, with False, when
    `s . y > 1e-10` as torch does. torch's absolute bound depends on the loss's scale: on a loss of
    small scale (a style loss on randomly initialised features is about 1e-2) every pair is
    refused and the run takes plain gradient steps of size |g|, which barely move; the relative
    bound refuses the same pairs of negative or vanishing curvature at any scale, and makes the same
    decisions as torch wherever `s . y` is far from both bounds (neural-style's losses in its 0-256
    pixel scale). `tests/test_optimizers.py` checks both against torch.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive; got {learning_rate}")
    if int(history_size) != history_size or history_size < 1:
        raise ValueError(f"history_size must be a positive integer; got {history_size}")
    m = int(history_size)

    def init(params):
        leaves = jax.tree.leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        zeros = jax.tree.map(jnp.zeros_like, params)
        memory = jax.tree.map(lambda p: jnp.zeros((m,) + p.shape, p.dtype), params)
        return LBFGSState(count=jnp.zeros((), jnp.int32), prev_params=zeros, prev_grads=zeros, s=memory, y=memory,
                          rho=jnp.zeros((m,), dtype), head=jnp.zeros((), jnp.int32), h_diag=jnp.ones((), dtype),
                          skipped=jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, **extra):
        if params is None:
            raise ValueError("lbfgs needs params in update(grads, state, params)")
        # 1. The newest curvature pair, kept only where s . y > 1e-10 (torch's rule).
        s = jax.tree.map(jnp.subtract, params, state.prev_params)
        y = jax.tree.map(jnp.subtract, grads, state.prev_grads)
        ys = _vdot(y, s).astype(state.rho.dtype)
        started = state.count > 0
        ss = _vdot(s, s).astype(state.rho.dtype)
        yy = _vdot(y, y).astype(state.rho.dtype)
        bound = CURVATURE_EPS * jnp.sqrt(ss * yy) if relative else CURVATURE_EPS
        keep = started & (ys > bound)
        head = state.head

        def put(memory, new):
            return jax.tree.map(lambda mem, v: mem.at[head].set(jnp.where(keep, v, mem[head])), memory, new)

        s_mem, y_mem = put(state.s, s), put(state.y, y)
        rho = state.rho.at[head].set(jnp.where(keep, 1 / jnp.where(keep, ys, 1), state.rho[head]))
        h_diag = jnp.where(keep, ys / jnp.where(keep, yy, 1), state.h_diag)
        head = jnp.where(keep, (head + 1) % m, head)
        skipped = state.skipped + (started & ~keep).astype(jnp.int32)

        # 2. Two-loop recursion, newest pair first; empty slots have rho = 0 and change nothing.
        def pick(memory, i):
            return jax.tree.map(lambda mem: mem[i], memory)

        def backward(j, carry):
            q, al = carry
            i = (head - 1 - j) % m
            a = rho[i] * _vdot(pick(s_mem, i), q)
            return _axpy(-a, pick(y_mem, i), q), al.at[i].set(a)

        q, al = jax.lax.fori_loop(0, m, backward, (jax.tree.map(jnp.negative, grads), jnp.zeros_like(rho)))
        r = jax.tree.map(lambda v: h_diag.astype(v.dtype) * v, q)

        def forward(j, r):
            i = (head + j) % m
            b = rho[i] * _vdot(pick(y_mem, i), r)
            return _axpy(al[i] - b, pick(s_mem, i), r)

        d = jax.lax.fori_loop(0, m, forward, r)
        # 3. Step: lr, the first one min(1, 1/||g||_1) * lr (d = -g then).
        g1 = sum(jnp.sum(jnp.abs(v)) for v in jax.tree.leaves(grads)).astype(state.rho.dtype)
        t = jnp.where(started, learning_rate, jnp.minimum(1.0, 1.0 / g1) * learning_rate)
        updates = jax.tree.map(lambda v: t.astype(v.dtype) * v, d)
        return updates, LBFGSState(count=state.count + 1, prev_params=params, prev_grads=grads, s=s_mem, y=y_mem,
                                   rho=rho, head=head, h_diag=h_diag, skipped=skipped)

    return optax.GradientTransformationExtraArgs(init, update)
