"""The techniques on a user's own `flax.linen` network (`jaxviz.models.from_flax`), each checked
against an independent reference written directly with `module.apply` and `jax.grad`; and, since the
network is trained here on the digits for a few seconds, that its pictures mean something.

References: saliency = max over colours of |grad of module.apply|; guided backprop = the gradient of
a module instance whose `act` is a guided ReLU written here; Grad-CAM = the conv's captured output and
the gradient of the rest of the network written out by hand; occlusion = a loop over patch
positions; features = the value the module sows; nearest neighbours = brute force in numpy.
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxviz import attribution, data, inspection, train
from jaxviz.models import from_flax

MEAN, STD = (0.3, 0.3, 0.3), (0.3, 0.3, 0.3)  # the digits' statistics; the model normalises inside
OPTIMIZER = optax.adam(3e-3)  # one object: a second training would reuse the compiled step


class DigitNet(nn.Module):
    """A user's CNN; its activation is a dataclass field, so `relu_attr="act"` can swap it."""

    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x):
        x = self.act(nn.Conv(16, (3, 3), padding=1, name="conv1")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = self.act(nn.Conv(32, (3, 3), padding=1, name="conv2")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Conv(32, (3, 3), padding=1, name="conv3")(x)  # [N, 8, 8, 32]
        return _tail(self, x)


def _tail(module, x):
    """Everything after conv3's output (inside the module: Flax layers)."""
    x = module.act(x)
    x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
    x = module.act(nn.Dense(64, name="fc")(x))
    module.sow("intermediates", "embedding", x)
    return nn.Dense(10, name="head")(x)


def tail_by_hand(params, a, *, act):
    """The same tail written out with the weights: the hand-split network for the Grad-CAM reference."""
    h = act(a)
    n, hh, ww, c = h.shape
    h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4)).reshape(n, -1)
    h = act(h @ params["fc"]["kernel"] + params["fc"]["bias"][None, :])
    return h @ params["head"]["kernel"] + params["head"]["bias"][None, :]


class PlainNet(nn.Module):
    """Calls `nn.relu` directly: its ReLU cannot be swapped."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding=1, name="conv")(x))
        x = nn.max_pool(x, (4, 4), (4, 4))
        return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


@jax.custom_vjp
def ref_guided_relu(x):
    """Guided backprop's ReLU, written here independently of jaxviz."""
    return jnp.maximum(x, 0.0)


def _ref_fwd(x):
    return jnp.maximum(x, 0.0), x


def _ref_bwd(x, g):
    return (g * ((x > 0) & (g > 0)).astype(g.dtype),)


ref_guided_relu.defvjp(_ref_fwd, _ref_bwd)


def normalise(x):
    return (x - jnp.asarray(MEAN).reshape(1, 1, 1, 3)) / jnp.asarray(STD).reshape(1, 1, 1, 3)


def np_init(model, seed):
    """LeCun-normal kernels (Flax's default) and zero biases drawn by numpy: compiling JAX's random
    generator for every weight shape (`model.init`) costs seconds on a small CPU."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        if path[-1].key == "kernel":
            fan_in = int(np.prod(s.shape[:-1]))
            return jnp.asarray(rng.standard_normal(s.shape).astype(np.float32) / np.sqrt(fan_in))
        return jnp.zeros(s.shape, s.dtype)

    return jax.tree_util.tree_map_with_path(draw, model.param_shapes())


@pytest.fixture(scope="module")
def net():
    """The wrapped network trained briefly on the digits (2 epochs, a few seconds), its random
    initialisation, and held-out digits."""
    model = from_flax(DigitNet(), input_shape=(32, 32, 3), relu_attr="act", mean=MEAN, std=STD)
    d = data.load_digits()
    init = np_init(model, 0)
    trained, _ = train.train_classifier(
        model, init, d.train_images, d.train_labels, key=jax.random.key(1), epochs=2, batch_size=32, optimizer=OPTIMIZER
    )
    x = jnp.asarray(d.test_images[:8])
    y = jnp.asarray(d.test_labels[:8])
    return {"model": model, "trained": trained, "random": init, "data": d, "x": x, "y": y}


@functools.partial(jax.jit, static_argnums=0)
def class_scores(module, variables, x):
    return module.apply(variables, normalise(x))


@functools.partial(jax.jit, static_argnums=0)
def module_grad(module, variables, x, y):
    """`d scores[n, y[n]] / d x[n]` of the bare module (the reference gradient), `[N, H, W, C]`."""
    return jax.grad(lambda z: jnp.sum(class_scores(module, variables, z)[jnp.arange(z.shape[0]), y]))(x)


def test_wrapped_network_trained(net):
    acc = train.accuracy(net["model"], net["trained"], net["data"].test_images, net["data"].test_labels)
    assert acc >= 0.9, f"held-out accuracy of the Flax network after 2 epochs: {acc:.4f}"
    assert net["model"].features == "embedding" and net["model"].logits == "logits"


def test_saliency_matches_module_gradient(net):
    x, y, v = net["x"], net["y"], net["trained"]
    got = jax.jit(functools.partial(attribution.saliency, net["model"]))(v, x, y)
    ref = jnp.max(jnp.abs(module_grad(DigitNet(), v, x, y)), axis=-1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6 * float(jnp.max(ref)))


def test_guided_backprop_matches_module_with_guided_relu(net):
    x, y, v = net["x"], net["y"], net["trained"]
    got = jax.jit(functools.partial(attribution.guided_backprop, net["model"]))(v, x, y)
    ref = module_grad(DigitNet(act=ref_guided_relu), v, x, y)
    plain = module_grad(DigitNet(), v, x, y)
    scale = float(jnp.max(jnp.abs(ref)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6 * scale)
    # ... and the swap did something: guided backprop is not the plain gradient.
    assert float(jnp.max(jnp.abs(ref - plain))) > 0.1 * scale


def test_gradcam_at_a_conv_submodule_matches_hand_split(net):
    x, y, v = net["x"], net["y"], net["trained"]

    @jax.jit
    def reference(v, x, y):
        _, state = DigitNet().apply(v, normalise(x), capture_intermediates=True, mutable=["intermediates"])
        a = state["intermediates"]["conv3"]["__call__"][0]  # conv3's output, [N, 8, 8, 32]
        tail = functools.partial(tail_by_hand, v["params"], act=nn.relu)
        g = jax.grad(lambda t: jnp.sum(tail(t)[jnp.arange(x.shape[0]), y]))(a)
        weights = jnp.mean(g, axis=(1, 2))  # [N, 32]
        cam8 = jnp.maximum(jnp.einsum("nhwc,nc->nhw", a, weights), 0.0)
        return tail(a), cam8, jax.image.resize(cam8, (x.shape[0], 32, 32), method="bilinear")

    by_hand, ref8, ref = reference(v, x, y)
    # The hand split is the same network: it reproduces the module's class scores.
    np.testing.assert_allclose(np.asarray(by_hand), np.asarray(class_scores(DigitNet(), v, x)), rtol=1e-5, atol=1e-5)
    cam = functools.partial(attribution.gradcam, net["model"], layer="conv3")
    got8 = jax.jit(functools.partial(cam, upsample=False))(v, x, y)
    got = jax.jit(cam)(v, x, y)
    scale = float(jnp.max(ref8))
    assert scale > 0
    np.testing.assert_allclose(np.asarray(got8), np.asarray(ref8), rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-5 * scale)


def test_occlusion_matches_naive_loop(net):
    x, y, v = net["x"][:4], net["y"][:4], net["trained"]
    size, stride = 8, 8
    got = np.asarray(jax.jit(functools.partial(attribution.occlusion, net["model"], size=size, stride=stride))(v, x, y))
    xs = np.asarray(x)
    fill = xs.mean(axis=(1, 2))  # each image's mean colour ("mean", the default fill)
    ref = np.zeros((len(y), 4, 4), np.float32)
    for i in range(4):
        for j in range(4):
            occluded = xs.copy()
            occluded[:, i * stride : i * stride + size, j * stride : j * stride + size, :] = fill[:, None, None, :]
            probs = jax.nn.softmax(class_scores(DigitNet(), v, jnp.asarray(occluded)), axis=-1)
            ref[:, i, j] = np.asarray(probs)[np.arange(len(y)), np.asarray(y)]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_features_and_nearest_neighbours_match_sown_embedding(net):
    d, v, k = net["data"], net["trained"], 5
    queries, db = d.test_images[:40], d.train_images[:600]
    got_q = inspection.features(net["model"], v, queries)  # default layer: the sown "embedding"
    got_db = inspection.features(net["model"], v, data.batches(db, 256))

    @jax.jit
    def sown_embedding(images):
        _, state = DigitNet().apply(v, normalise(images), mutable=["intermediates"])
        return state["intermediates"]["embedding"][0]

    def sown(images):
        return np.asarray(sown_embedding(jnp.asarray(images)))

    ref_q, ref_db = sown(queries), sown(db)
    np.testing.assert_allclose(np.asarray(got_q), ref_q, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_db), ref_db, rtol=1e-5, atol=1e-5)
    idx, dist = inspection.nearest_neighbours(got_q, got_db, k)
    d2 = ((ref_q[:, None, :].astype(np.float64) - ref_db[None, :, :]) ** 2).sum(-1)
    ref_idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.asarray(idx), ref_idx)
    np.testing.assert_allclose(np.asarray(dist), np.sqrt(np.take_along_axis(d2, ref_idx, axis=1)), rtol=1e-4)
    # Meaning: the trained embedding's neighbours share the query's label more often than the random
    # initialisation's (a random projection of the pixels).
    rand_q, rand_db = (inspection.features(net["model"], net["random"], a) for a in (queries, db))
    agree = {}
    for name, (q, base) in (("trained", (got_q, got_db)), ("random", (rand_q, rand_db))):
        nn_idx, _ = inspection.nearest_neighbours(q, base, k)
        agree[name] = float(np.mean(d.train_labels[:600][np.asarray(nn_idx)] == d.test_labels[:40, None]))
    assert agree["trained"] > agree["random"], f"{k}-NN sharing the query's label: {agree}"


def test_saliency_points_at_the_evidence(net):
    """The trained network's pictures mean something: erasing (to black) the tenth of the pixels its
    saliency ranks highest costs the true class at least 0.1 of probability, and more than erasing
    as many random stroke pixels (ink > 0.5) does; the random initialisation fails.

    Measured when written: 0.26 vs 0.09 for random ink (random initialisation: 0.001 vs -0.002).
    This small network is less robust than the digits network: erasing random ink costs it more, and
    test_meaning.py's stricter "twice the random-ink cost" held after 2 epochs (2.8x) but not after 3
    (0.29 vs 0.15, 1.9x), so it is not required here. Its saliency mass on the strokes is about their
    area share (ratio 0.98 to 1.08 in trial runs), so that is not tested either."""
    model, d = net["model"], net["data"]
    x, y = jnp.asarray(d.test_images[:16]), jnp.asarray(d.test_labels[:16])
    stroke = np.asarray(x[..., 0]) > 0.5
    n, q = len(y), int(round(0.1 * 32 * 32))
    rng = np.random.default_rng(0)
    rand_idx = np.stack([rng.choice(np.flatnonzero(s.ravel()), q, replace=False) for s in stroke])
    saliency = jax.jit(functools.partial(attribution.saliency, model))
    probs = jax.jit(lambda v, images: jax.nn.softmax(model.scores(v, images), axis=-1))

    def p_true(v, images):
        return np.asarray(probs(v, images))[np.arange(n), np.asarray(y)]

    def erase(idx):
        keep = np.ones((n, 32 * 32), np.float32)
        np.put_along_axis(keep, idx, 0.0, axis=1)
        return x * jnp.asarray(keep.reshape(n, 32, 32, 1))

    drops = {}
    for name in ("trained", "random"):
        v = net[name]
        top = np.argsort(-np.asarray(saliency(v, x, y)).reshape(n, -1), axis=1, kind="stable")[:, :q]
        p0 = p_true(v, x)
        drops[name] = (float(np.mean(p0 - p_true(v, erase(top)))), float(np.mean(p0 - p_true(v, erase(rand_idx)))))
    msg = f"mean drop of p(true), erasing top-saliency / random stroke pixels: {drops}"
    top_tr, ref_tr = drops["trained"]
    top_rand, ref_rand = drops["random"]
    assert top_tr >= 0.1 and top_tr > ref_tr, msg
    assert not (top_rand >= 0.1 and top_rand > ref_rand), msg


def test_unswappable_relu_guided_backprop_errors_but_saliency_works(net):
    model = from_flax(PlainNet(), input_shape=(32, 32, 3))
    assert not model.swappable_relu
    v = np_init(model, 1)
    x, y = net["x"][:4], net["y"][:4]
    for technique in (attribution.guided_backprop, attribution.deconvnet, attribution.guided_gradcam):
        with pytest.raises(ValueError, match="cannot be swapped.*relu_attr"):
            technique(model, v, x, y)
    got = jax.jit(functools.partial(attribution.saliency, model))(v, x, y)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(PlainNet().apply(v, z)[jnp.arange(4), y])))(x)
    ref = jnp.max(jnp.abs(grad), axis=-1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6 * float(jnp.max(ref)))
    # Grad-CAM needs no swapped ReLU: it works at the conv submodule.
    assert jax.jit(functools.partial(attribution.gradcam, model, layer="conv"))(v, x, y).shape == (4, 32, 32)
