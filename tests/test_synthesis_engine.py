"""The synthesis engine: batch == one by one, vmap == loop, scan == Python loop, keys, L-BFGS,
non-finite losses, early stop, no recompilation, callbacks, ReLU redirection."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxviz.models import digits
from jaxviz.synthesis import engine, optimize, redirected_relu, relu_for_step
from jaxviz.synthesis import param as P
from jaxviz.synthesis import regularizers as R
from jaxviz.synthesis import transforms as T

H = W = 16
FFT = P.FFT((H, W, 3))
PIX = P.Pixels((H, W, 3), squash="clip")
TRANSFORMS = T.Compose(T.Pad(2), T.Jitter(2), T.RandomRotate((-5.0, 0.0, 5.0)))
ADAM = optax.adam(0.05)
SGD = optax.sgd(0.5)
TRACES = {"tiny": 0}


def tiny_consts(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"k": jax.random.normal(k1, (3, 3, 3, 4)) * 0.5, "W": jax.random.normal(k2, (4, 5)), "w": jnp.float32(0.0)}


def tiny_loss(static, consts, targets, images, key, step):
    """-score[target] of a one-conv network (ReLU redirected for the first steps) + w * L2."""
    TRACES["tiny"] += 1
    h = jax.lax.conv_general_dilated(images, consts["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = relu_for_step(step, 3)(h - 0.5)
    scores = h.mean(axis=(1, 2)) @ consts["W"]
    score = jnp.take_along_axis(scores, targets[:, None], axis=1)[:, 0]
    return -score + consts["w"] * jnp.sum(jnp.square(images - 0.5), axis=(1, 2, 3)), scores


def run(raw0, keys, targets, *, opt=ADAM, param=FFT, transforms=TRANSFORMS, consts=None, steps=6, **kw):
    consts = tiny_consts() if consts is None else consts
    return optimize(tiny_loss, consts, raw0, opt, steps=steps, key=keys, param=param, targets=targets, transforms=transforms, **kw)


def setup(e=3, param=FFT, seed=0):
    raw0 = param.init(jax.random.key(seed), e)
    keys = jax.random.split(jax.random.key(seed + 100), e)
    return raw0, keys, jnp.arange(e, dtype=jnp.int32) % 5


def test_batch_equals_one_by_one_with_stochastic_transforms():
    raw0, keys, targets = setup()
    res = run(raw0, keys, targets)
    assert res.images.shape == (3, H, W, 3) and res.losses.shape == (6, 3)
    assert float(res.losses[-1].sum()) < float(res.losses[0].sum())
    for e in range(3):
        one = run(raw0[e : e + 1], keys[e : e + 1], targets[e : e + 1])
        np.testing.assert_allclose(np.asarray(one.images[0]), np.asarray(res.images[e]), atol=1e-5)
        np.testing.assert_allclose(np.asarray(one.losses[:, 0]), np.asarray(res.losses[:, e]), rtol=1e-4, atol=1e-6)


def test_scan_equals_python_loop_and_same_key_same_image():
    raw0, keys, targets = setup(2, PIX)
    a = run(raw0, keys, targets, opt=SGD, param=PIX, loop="python")
    b = run(raw0, keys, targets, opt=SGD, param=PIX, loop="scan")
    np.testing.assert_allclose(np.asarray(a.images), np.asarray(b.images), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.losses), np.asarray(b.losses), rtol=1e-5, atol=1e-6)
    again = run(raw0, keys, targets, opt=SGD, param=PIX, loop="python")
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(again.images))
    other = run(raw0, jax.random.split(jax.random.key(7), 2), targets, opt=SGD, param=PIX)
    assert float(jnp.abs(other.images - a.images).max()) > 1e-4


def test_vmap_over_hyperparameter_equals_loop():
    raw0, keys, targets = setup(2, PIX)
    base = tiny_consts()
    ws = jnp.array([0.0, 0.05, 0.5], jnp.float32)

    def one(w):
        return run(raw0, keys, targets, opt=SGD, param=PIX, consts={**base, "w": w}, loop="scan").images

    mapped = jax.vmap(one)(ws)
    for i, w in enumerate(ws):
        looped = run(raw0, keys, targets, opt=SGD, param=PIX, consts={**base, "w": w}, loop="python").images
        np.testing.assert_allclose(np.asarray(mapped[i]), np.asarray(looped), atol=1e-5)
    assert float(jnp.abs(mapped[0] - mapped[2]).max()) > 1e-3  # the weight matters


def test_no_recompilation_with_new_targets_and_values():
    for loop in ("python", "scan"):
        raw0, keys, targets = setup(2, seed=1)
        run(raw0, keys, targets, loop=loop)
        before = TRACES["tiny"]
        raw1, keys1, _ = setup(2, seed=2)
        run(raw1, keys1, jnp.array([4, 1], jnp.int32), consts=tiny_consts(5), loop=loop)
        assert TRACES["tiny"] == before, f"{loop}: a second call with new values traced the loss again"


def quadratic_loss(static, consts, targets, images, key, step):
    d = consts["d"][None]
    return 0.5 * jnp.sum(d * jnp.square(images - targets), axis=(1, 2, 3))


LBFGS = optax.lbfgs()


def test_lbfgs_reaches_the_minimum_of_a_convex_quadratic_per_experiment():
    p = P.Pixels((6, 5, 3), squash="none")
    d = jnp.asarray(np.random.default_rng(0).uniform(1.0, 10.0, (6, 5, 3)), jnp.float32)
    b = jax.random.uniform(jax.random.key(0), (2, 6, 5, 3))
    raw0 = jnp.zeros((2, 6, 5, 3))
    keys = jax.random.split(jax.random.key(1), 2)
    res = optimize(quadratic_loss, {"d": d}, raw0, LBFGS, steps=20, key=keys, param=p, targets=b)
    assert float(res.losses[0].min()) > 50.0
    assert float(res.losses[-1].max()) < 1e-6  # the known minimum is 0, at x = b
    np.testing.assert_allclose(np.asarray(res.images), np.asarray(b), atol=1e-3)
    one = optimize(quadratic_loss, {"d": d}, raw0[1:], LBFGS, steps=20, key=keys[1:], param=p, targets=b[1:])
    np.testing.assert_allclose(np.asarray(one.losses[:, 0]), np.asarray(res.losses[:, 1]), rtol=1e-4, atol=1e-7)


def nan_loss(static, consts, targets, images, key, step):
    bad = step >= targets  # experiment e turns NaN at step targets[e]
    return jnp.where(bad, jnp.nan, 1.0) * jnp.sum(jnp.square(images - 0.3), axis=(1, 2, 3))


@pytest.mark.parametrize("loop", ["python", "scan"])
def test_nonfinite_loss_is_caught_with_step_and_experiment(loop):
    p = P.Pixels((4, 4, 3), squash="none")
    raw0 = jnp.full((2, 4, 4, 3), 0.8)
    keys = jax.random.split(jax.random.key(0), 2)
    when = jnp.array([100, 3], jnp.int32)
    with pytest.raises(engine.NonFiniteLossError, match="experiment 1 at step 3") as err:
        optimize(nan_loss, None, raw0, optax.sgd(0.1), steps=6, key=keys, param=p, targets=when, loop=loop)
    assert err.value.step == 3 and err.value.experiments == [1]
    res = optimize(nan_loss, None, raw0, optax.sgd(0.1), steps=6, key=keys, param=p, targets=when, loop=loop, on_nonfinite="stop")
    np.testing.assert_array_equal(np.asarray(res.nonfinite_step), [-1, 3])
    np.testing.assert_array_equal(np.asarray(res.finished), [6, 3])
    assert np.isfinite(np.asarray(res.images)).all()
    # experiment 1 keeps its iterate after 3 updates: 0.3 + 0.5 * (1 - 0.2)^3
    np.testing.assert_allclose(np.asarray(res.images[1]), 0.3 + 0.5 * 0.8**3, rtol=1e-5)
    assert np.isnan(np.asarray(res.losses[4:, 1])).all() and np.isfinite(np.asarray(res.losses[:, 0])).all()


def stop_below(static, consts, targets, images, aux):
    return jnp.sum(jnp.square(images - 0.3)) < static


@pytest.mark.parametrize("loop", ["python", "scan"])
def test_early_stop_freezes_an_experiment(loop):
    p = P.Pixels((4, 4, 3), squash="none")
    raw0 = jnp.stack([jnp.full((4, 4, 3), 0.8), jnp.full((4, 4, 3), 5.0)])
    keys = jax.random.split(jax.random.key(0), 2)
    never = jnp.array([100, 100], jnp.int32)
    kw = dict(key=keys, param=p, targets=never, loop=loop)
    res = optimize(nan_loss, None, raw0, ADAM, steps=30, stop=stop_below, static=1.0, **kw)
    f = np.asarray(res.finished)
    assert np.asarray(res.stopped).tolist() == [True, False] and 0 < f[0] < 30 and f[1] == 30
    # the stopped experiment equals a run of exactly f[0] steps without stop (raw and Adam state)
    short = optimize(nan_loss, None, raw0, ADAM, steps=int(f[0]), **kw)
    np.testing.assert_allclose(np.asarray(res.raw[0]), np.asarray(short.raw[0]), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(res.opt_state), jax.tree_util.tree_leaves(short.opt_state)):
        np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[0], rtol=1e-6)
    assert float(jnp.sum(jnp.square(res.images[0] - 0.3))) < 1.0
    assert np.isnan(np.asarray(res.losses[f[0] + 1 :, 0])).all()


def test_continuing_with_opt_state_equals_one_run():
    raw0, keys, targets = setup(2)
    full = run(raw0, keys, targets, steps=6)
    first = run(raw0, keys, targets, steps=3)
    second = run(first.raw, keys, targets, steps=3, opt_state=first.opt_state, step0=3)
    np.testing.assert_allclose(np.asarray(second.images), np.asarray(full.images), atol=1e-6)
    np.testing.assert_allclose(np.asarray(second.losses), np.asarray(full.losses[3:]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loop", ["python", "scan"])
def test_callback_reports_steps_losses_and_images(loop):
    raw0, keys, targets = setup(2)
    seen = []
    res = run(raw0, keys, targets, loop=loop, callback=lambda s, l, im: seen.append((s, l, im)), callback_every=2, callback_images=True)
    assert [s for s, _, _ in seen] == [0, 2, 4]
    for s, losses, images in seen:
        np.testing.assert_allclose(losses, np.asarray(res.losses[s]), rtol=1e-5)
        assert images.shape == (2, H, W, 3)


def test_group_experiments_see_all_their_images():
    def spread(static, consts, targets, images, key, step):
        # couples the images of a group: pushes them apart (a stand-in for lucid's diversity)
        return -jnp.sum(jnp.square(images - images.mean(axis=0, keepdims=True)))

    p = P.Pixels((4, 4, 3))
    raw0 = p.init(jax.random.key(0), 6).reshape(2, 3, 4, 4, 3)
    res = optimize(spread, None, raw0, ADAM, steps=5, key=jax.random.key(1), param=p, group=True)
    assert res.images.shape == (2, 3, 4, 4, 3) and float(res.losses[-1, 0]) < float(res.losses[0, 0])


def test_redirected_relu_gradient_is_lucids():
    x = jnp.array([[-1.0, -2.0, 3.0], [-1.0, -2.0, -0.5]])  # element 0 alive, element 1 dead
    g = jnp.array([[0.7, -0.4, 0.2], [0.7, -0.4, -0.3]])
    _, vjp = jax.vjp(redirected_relu, x)
    (got,) = vjp(g)
    # alive: ordinary ReLU gradient; dead: incoming gradient except where x < 0 and g > 0
    np.testing.assert_allclose(np.asarray(got), [[0.0, 0.0, 0.2], [0.0, -0.4, -0.3]])
    _, vjp_late = jax.vjp(relu_for_step(jnp.int32(17)), x)
    np.testing.assert_allclose(np.asarray(vjp_late(g)[0]), np.asarray(jax.vjp(jax.nn.relu, x)[1](g)[0]))
    _, vjp_early = jax.vjp(relu_for_step(jnp.int32(16)), x)
    np.testing.assert_allclose(np.asarray(vjp_early(g)[0]), np.asarray(got))


def test_yosinski_clip_is_enforced_in_the_engine():
    # A between-step clip must actually act (a peer's clipping silently did nothing).
    raw0, keys, targets = setup(1, P.Pixels((H, W, 3), squash="none"))
    free = run(raw0, keys, targets, opt=optax.sgd(20.0), param=P.Pixels((H, W, 3), squash="none"), transforms=None)
    clipped = run(raw0, keys, targets, opt=optax.chain(optax.sgd(20.0), R.yosinski(clip=(0.0, 1.0))), param=P.Pixels((H, W, 3), squash="none"), transforms=None)
    assert float(free.images.max()) > 1.0 or float(free.images.min()) < 0.0
    assert float(clipped.images.min()) >= 0.0 and float(clipped.images.max()) <= 1.0


def digits_class_loss(model, consts, targets, images, key, step):
    acts = model.apply(consts, images, until="fc5", relu=relu_for_step(step))
    return -jnp.take_along_axis(acts["fc5"], targets[:, None], axis=1)[:, 0]


def test_digits_class_visualisation_raises_its_logit():
    model = digits.digits_model()
    params = digits.init_digits(0)
    p = P.FFT((32, 32, 3))
    targets = jnp.array([3, 7], jnp.int32)
    res = optimize(digits_class_loss, params, p.init(jax.random.key(0), 2), optax.adam(0.05), steps=8, key=jax.random.key(1), param=p, targets=targets, transforms=T.standard_transforms(), static=model)
    assert res.images.shape == (2, 32, 32, 3)
    scores = model.scores(params, res.images)
    start = model.scores(params, p.to_images(p.init(jax.random.key(0), 2)))
    gain = np.asarray(scores - start)[np.arange(2), np.asarray(targets)]
    assert (gain > 0).all()


def test_bad_arguments_are_clear_errors():
    raw0, keys, targets = setup(2)
    with pytest.raises(ValueError, match="steps"):
        run(raw0, keys, targets, steps=0)
    with pytest.raises(ValueError, match="targets have 3"):
        run(raw0, keys, jnp.arange(3))
    with pytest.raises(ValueError, match="one key or"):
        run(raw0, jax.random.split(jax.random.key(0), 3), targets)
    with pytest.raises(ValueError, match="on_nonfinite"):
        run(raw0, keys, targets, on_nonfinite="ignore")
