"""jaxviz.synthesis.optimizers.lbfgs against torch.optim.LBFGS (line_search_fn=None, tolerances -1,
as neural-style calls it) on the same non-convex function in float64: the same iterates, with pairs of
negative curvature refused and the history wrapping around."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxviz.synthesis import optimizers, style

N, STEPS, HISTORY = 40, 30, 10


def _double_well(x, lib, scale=1.0):
    """Non-convex (a double well per coordinate, coupled neighbours): L-BFGS meets negative curvature."""
    return scale * (lib.sum((x**2 - 1) ** 2) + 0.8 * lib.sum(x[:-1] * x[1:]) + 0.3 * lib.sum(lib.sin(3 * x)))


def _bowl(x, lib, scale=1.0):
    """Convex: every curvature pair has s.y > 0."""
    return scale * (lib.sum(lib.linspace(0.5, 3.0, N, dtype=x.dtype) * (x - 1) ** 2) + 0.25 * lib.sum(x**4))


def _x0():
    return np.random.default_rng(0).normal(0.0, 0.3, N)


def _torch_run(scale, f=_double_well):
    x = torch.tensor(_x0(), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=STEPS, history_size=HISTORY, tolerance_change=-1, tolerance_grad=-1)
    iterates = []

    def closure():
        opt.zero_grad()
        loss = f(x, torch, scale)
        loss.backward()
        iterates.append(x.detach().numpy().copy())
        return loss

    opt.step(closure)
    return np.stack(iterates), len(opt.state[x]["old_dirs"])


def _jax_run(scale, relative, f=_double_well):
    tx = optimizers.lbfgs(1.0, HISTORY, relative=relative)
    grad = jax.jit(jax.grad(lambda x: f(x, jnp, scale)))
    update = jax.jit(tx.update)
    x = jnp.asarray(_x0())
    state = tx.init(x)
    iterates = []
    for _ in range(STEPS):
        iterates.append(np.asarray(x))
        u, state = update(grad(x), state, x)
        x = x + u
    return np.stack(iterates), state


@pytest.mark.parametrize("relative", [False, True])
def test_lbfgs_equals_torch_lbfgs(relative):
    with jax.enable_x64(True):
        ref, stored = _torch_run(1.0)
        ours, state = _jax_run(1.0, relative)
    assert ref.shape == ours.shape == (STEPS, N)
    # The run refuses pairs of negative curvature (3 here) and stores more pairs than the history holds.
    assert int(state.skipped) >= 1, int(state.skipped)
    assert STEPS - 1 - int(state.skipped) > HISTORY and stored == HISTORY
    # float64 rounding differs between the two (sums in another order); measured up to 7e-12 here.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)


def test_absolute_rule_refuses_every_pair_of_a_small_loss():
    """torch's `s.y > 1e-10` is absolute: on a convex loss scaled by 1e-12 it stores no pair (plain
    gradient steps, which barely move); relative=False does the same, relative=True (the default)
    stores every pair and converges."""
    with jax.enable_x64(True):
        ref, stored = _torch_run(1e-12, _bowl)
        same, state = _jax_run(1e-12, False, _bowl)
        rel_path, rel = _jax_run(1e-12, True, _bowl)
    assert stored == 0 and int(state.skipped) == STEPS - 1
    np.testing.assert_allclose(same, ref, rtol=0, atol=1e-12)
    assert int(rel.skipped) == 0
    assert np.abs(rel_path[-1] - 1).max() < 0.5 * np.abs(same[-1] - 1).max()


def test_style_transfer_lbfgs_is_this_optimiser():
    tx = style.make_optimizer("lbfgs")
    state = tx.init(jnp.zeros((4, 4, 3)))
    assert isinstance(state, optimizers.LBFGSState) and state.s.shape == (100, 4, 4, 3)


@pytest.mark.parametrize("kw", [{"learning_rate": 0.0}, {"learning_rate": float("nan")}, {"history_size": 0},
                                {"history_size": 2.5}])
def test_bad_settings_are_clear_errors(kw):
    with pytest.raises(ValueError, match="learning_rate|history_size"):
        optimizers.lbfgs(**kw)


def test_update_needs_params():
    tx = optimizers.lbfgs()
    with pytest.raises(ValueError, match="params"):
        tx.update(jnp.ones(3), tx.init(jnp.ones(3)))


def test_a_batch_of_experiments_equals_one_by_one():
    """The engine vmaps the optimiser over experiments: each keeps its own history (a different loss
    scale and start per experiment), as when run alone."""
    tx = optimizers.lbfgs()
    scales = jnp.asarray([1.0, 1e-3, 30.0], jnp.float32)
    starts = jnp.asarray(np.random.default_rng(1).normal(0.0, 0.5, (3, N)), jnp.float32)

    def run(x, scale):
        grad = jax.grad(lambda x: _bowl(x, jnp, scale))
        state = tx.init(x)
        for _ in range(12):
            u, state = tx.update(grad(x), state, x)
            x = x + u
        return x, state.skipped

    batch, skipped = jax.jit(jax.vmap(run))(starts, scales)
    for e in range(3):
        one, sk = jax.jit(run)(starts[e], scales[e])
        assert int(sk) == int(skipped[e])
        np.testing.assert_allclose(np.asarray(batch[e]), np.asarray(one), rtol=1e-5, atol=1e-6)
