"""The training loop on a tiny problem: the loss falls, keys decide everything, batching is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxviz import train
from jaxviz.models.vgg import VGGConfig, make_vgg

TINY = make_vgg("tiny", VGGConfig(convs=(4, "M"), hidden=(8,), num_classes=3, pooled_size=(2, 2)),
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(8, 8))


def _np_init(seed=0):
    """VGG-scheme weights drawn by numpy (JAX's random generator compiles slowly on a small CPU)."""
    rng = np.random.default_rng(seed)
    shapes = TINY.param_shapes()
    return {name: {"kernel": jnp.asarray(rng.normal(0, 0.3, p["kernel"].shape), jnp.float32),
                   "bias": jnp.zeros(p["bias"].shape, jnp.float32)} for name, p in shapes.items()}


def _quadrant_data(n=96, seed=0):
    """8x8 images with one bright 4x4 quadrant among the top-left, top-right, bottom-left (the class)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int32)
    images = rng.uniform(0.0, 0.3, (n, 8, 8, 3)).astype(np.float32)
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 2)
        images[i, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4, :] += 0.6
    return images, labels


def _train(key, epochs=6, **kwargs):
    images, labels = _quadrant_data()
    params = _np_init(0)
    return train.train_classifier(TINY, params, images, labels, key=key, epochs=epochs, batch_size=16, **kwargs)


def _leaves(params):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def test_loss_falls_and_callback():
    seen = []
    params, history = _train(jax.random.key(1), optimizer=optax.adam(1e-2),
                             callback=lambda epoch, step, m: seen.append((epoch, step, m["loss"])))
    steps = 6 * (96 // 16)
    assert history["loss"].shape == (steps,) and history["accuracy"].shape == (steps,)
    assert [s[1] for s in seen] == list(range(steps))
    assert [s[0] for s in seen] == [e for e in range(6) for _ in range(96 // 16)]
    np.testing.assert_allclose([s[2] for s in seen], history["loss"], rtol=0, atol=0)
    assert history["loss"][-6:].mean() < 0.5 * history["loss"][:6].mean()
    images, labels = _quadrant_data(60, seed=1)  # fresh data from the same distribution
    assert train.accuracy(TINY, params, images, labels) > 0.9


def test_same_key_same_params_different_key_different():
    a, ha = _train(jax.random.key(3), epochs=2)
    b, hb = _train(jax.random.key(3), epochs=2)
    c, _ = _train(jax.random.key(4), epochs=2)
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))
    np.testing.assert_array_equal(ha["loss"], hb["loss"])
    assert not all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(c)))


def test_zero_epochs_is_identity():
    params = _np_init(0)
    images, labels = _quadrant_data(16)
    out, history = train.train_classifier(TINY, params, images, labels, key=jax.random.key(0), epochs=0)
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(out), _leaves(params)))
    assert history["loss"].shape == (0,)


def test_predict_and_accuracy_match_full_batch():
    params = _np_init(5)
    images, labels = _quadrant_data(37, seed=2)
    full = np.asarray(TINY.scores(params, jnp.asarray(images)))
    # 37 images in batches of 8: four full batches and a zero-padded one.
    pred = train.predict(TINY, params, images, batch_size=8)
    np.testing.assert_array_equal(pred, full.argmax(-1))
    assert train.accuracy(TINY, params, images, labels, batch_size=8) == pytest.approx(
        np.mean(full.argmax(-1) == labels))


def test_make_step_is_plain_optax():
    # One SGD step on f(p) = sum((p - t)^2) is p - lr * 2 (p - t).
    target = jnp.array([1.0, -2.0, 3.0])

    def loss(p, t):
        return jnp.sum((p["w"] - t) ** 2), {"norm": jnp.linalg.norm(p["w"])}

    opt = optax.sgd(0.1)
    step = train.make_step(loss, opt)
    p = {"w": jnp.zeros(3)}
    p2, _, metrics = step(p, opt.init(p), target)
    np.testing.assert_allclose(p2["w"], 0.2 * np.asarray(target), rtol=1e-6)
    assert float(metrics["loss"]) == pytest.approx(14.0)
    assert float(metrics["norm"]) == 0.0


def test_cross_entropy_reference():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], np.float32)
    labels = np.array([0, 1])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ref = -np.mean(np.log(p[np.arange(2), labels]))
    assert float(train.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"labels": np.array([0, 1, 5, 0])}, "0..2"),
        ({"labels": np.zeros((4, 1), np.int32)}, "shape"),
        ({"labels": np.zeros(4, np.float32)}, "integers"),
        ({"images": np.zeros((4, 8, 8), np.float32)}, "N, H, W, C"),
    ],
)
def test_bad_input(change, match):
    args = {"images": np.zeros((4, 8, 8, 3), np.float32), "labels": np.zeros(4, np.int32), "epochs": 1,
            "batch_size": 2, **change}
    with pytest.raises(ValueError, match=match):
        train.train_classifier(TINY, TINY.param_shapes(), args.pop("images"), args.pop("labels"),
                               key=jax.random.key(0), **args)


class _Unhashable:
    """An optimizer object that cannot be a static jit argument (e.g. holding a list)."""

    __hash__ = None

    def __init__(self, opt):
        self.opt = opt

    def init(self, params):
        return self.opt.init(params)

    def update(self, grads, state, params=None):
        return self.opt.update(grads, state, params)


def test_unhashable_optimizer_gives_the_same_training():
    a, ha = _train(jax.random.key(3), epochs=1)
    b, hb = _train(jax.random.key(3), epochs=1, optimizer=_Unhashable(train.DEFAULT_OPTIMIZER))
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-6)
