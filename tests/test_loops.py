"""The one loop policy (`jaxviz.loops`): both modes give the same result, `auto` picks scan under
a transformation, and the jitted step is compiled once across calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import loops

TRACES = []


def _step(static, consts, carry, x):
    TRACES.append(1)
    scale, = static
    w, b = consts
    new = jnp.tanh(carry @ w + b * x) * scale
    return new, jnp.sum(new)


def _args(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w = jax.random.normal(k1, (5, 5)) / 3
    b = jax.random.normal(k2, (5,))
    c0 = jax.random.normal(k3, (5,))
    return (w, b), c0, jnp.linspace(-1.0, 1.0, 7)


def test_python_and_scan_agree():
    consts, c0, xs = _args()
    c_py, y_py = loops.scan(_step, (1.5,), consts, c0, xs, loop="python")
    c_sc, y_sc = loops.scan(_step, (1.5,), consts, c0, xs, loop="scan")
    np.testing.assert_allclose(c_py, c_sc, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y_py, y_sc, rtol=1e-6, atol=1e-6)
    # Against a plain numpy reference.
    w, b = map(np.asarray, consts)
    c = np.asarray(c0, np.float64)
    for x in np.asarray(xs):
        c = np.tanh(c @ w + b * x) * 1.5
    np.testing.assert_allclose(c_py, c, rtol=1e-5, atol=1e-5)


def test_length_without_xs_and_map():
    consts, c0, _ = _args()
    step = lambda s, k, c, x: (c + k, c)  # noqa: E731
    c, ys = loops.scan(step, None, jnp.float32(2), jnp.float32(0), length=4, loop="python")
    assert float(c) == 8.0 and ys.tolist() == [0, 2, 4, 6]
    out = loops.map(lambda s, k, x: x * k + s, 1.0, jnp.float32(3), jnp.arange(4.0), loop="python")
    np.testing.assert_array_equal(out, [1, 4, 7, 10])
    out2 = loops.map(lambda s, k, x: x * k + s, 1.0, jnp.float32(3), jnp.arange(4.0), loop="scan")
    np.testing.assert_array_equal(out, out2)


def test_auto_policy():
    assert loops.resolve("auto", jnp.ones(3)) == ("python" if jax.default_backend() == "cpu" else "scan")
    seen = []
    jax.jit(lambda a: seen.append(loops.resolve("auto", a)) or a)(jnp.ones(3))
    assert seen == ["scan"]
    with pytest.raises(ValueError, match="loop must be one of"):
        loops.resolve("fori", 1)


def test_compiled_once_across_calls():
    consts, c0, xs = _args()
    loops.scan(_step, (2.0,), consts, c0, xs, loop="python")
    TRACES.clear()
    for seed in (1, 2, 3):
        consts, c0, xs = _args(seed)
        loops.scan(_step, (2.0,), consts, c0, xs, loop="python")
    assert TRACES == []  # same shapes and static config: no retrace


def test_under_jit_and_vmap():
    consts, c0, xs = _args()
    ref, _ = loops.scan(_step, (1.0,), consts, c0, xs, loop="python")
    out = jax.jit(lambda k, c: loops.scan(_step, (1.0,), k, c, xs)[0])(consts, c0)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    batch = jax.vmap(lambda c: loops.scan(_step, (1.0,), consts, c, xs)[0])(jnp.stack([c0, 2 * c0]))
    ref2, _ = loops.scan(_step, (1.0,), consts, 2 * c0, xs, loop="python")
    np.testing.assert_allclose(batch[1], ref2, rtol=1e-6, atol=1e-6)


def test_scan_mode_compiled_once_across_calls():
    consts, c0, xs = _args()
    loops.scan(_step, (3.0,), consts, c0, xs, loop="scan")
    TRACES.clear()
    for seed in (4, 5):
        consts, c0, xs = _args(seed)
        loops.scan(_step, (3.0,), consts, c0, xs, loop="scan")
    assert TRACES == []


def _draws(key):
    k1, k2 = jax.random.split(key)
    return (jax.random.bits(k1, (5, 3)), jax.random.normal(k2, (1001,)), jax.random.randint(key, (7,), -3, 9),
            jax.random.uniform(jax.random.fold_in(key, 3), (4, 2)), jax.random.choice(k1, 10, (3,), replace=False))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="changes the CPU lowering only")
def test_unrolled_threefry_gives_the_same_random_numbers():
    """`unroll_threefry_on_cpu` (which the test suite and the command line turn on) changes how the
    hash is compiled (no while loop left in the program) and not one bit of what it draws, for typed
    and raw keys; `enable=False` restores JAX's rolled loop."""
    results, texts = {}, {}
    try:
        for enable in (False, True):
            assert loops.unroll_threefry_on_cpu(enable)
            for name, key in (("typed", jax.random.key(7)), ("raw", jax.random.PRNGKey(7))):
                fresh = jax.jit(lambda k: _draws(k))  # a new function: traced and lowered again  # noqa: E731
                texts[enable, name] = fresh.lower(key).as_text()
                results[enable, name] = fresh(key)
    finally:
        loops.unroll_threefry_on_cpu(True)
    for name in ("typed", "raw"):
        assert "stablehlo.while" in texts[False, name] and "stablehlo.while" not in texts[True, name]
        for a, b in zip(jax.tree_util.tree_leaves(results[False, name]), jax.tree_util.tree_leaves(results[True, name])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
