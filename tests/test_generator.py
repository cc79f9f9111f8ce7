"""Generator prior (DGN-AM): feature-inversion training, caching, resuming, and activation maximisation
in code space on the trained digits network."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import data, models
from jaxviz.models import base
from jaxviz.synthesis import features
from jaxviz.synthesis import generator as G

#: CI recipe (`digits_generator_training` in conftest.py): the default recipe with 3 epochs instead of 15
#: (measured held-out error factor 11.3x on this machine; the criterion below asks for 5x).
CI_RECIPE = dataclasses.replace(G.DEFAULT_RECIPE, epochs=3)
HELD_OUT_FACTOR = 5.0
STEPS = 50


@pytest.fixture(scope="module")
def digits():
    return data.load_digits(32)


@pytest.fixture(scope="module")
def gen_run(digits_generator_training):
    assert digits_generator_training["recipe"] == CI_RECIPE
    return digits_generator_training


@pytest.fixture(scope="module")
def gen(gen_run):
    return gen_run["gen"]


def test_held_out_reconstruction_error_falls(gen_run):
    held = gen_run["history"]["held_out"]
    assert len(held) == CI_RECIPE.epochs + 1
    assert held[0] / held[-1] > HELD_OUT_FACTOR, held
    assert np.all(np.diff(held) < 0), held


def test_trains_once_then_cached(gen_run, digits_params, monkeypatch):
    assert gen_run["calls"] > 0
    calls, concrete_init = [], []
    real_init = G._init_gen

    def spy_init(module, key, codes):
        concrete_init.append(not isinstance(codes, jax.core.Tracer))
        return real_init(module, key, codes)

    monkeypatch.setattr(G, "_init_gen", spy_init)
    again = G.digits_generator(digits_params, cache_dir=gen_run["cache"], recipe=CI_RECIPE, progress=lambda e, s, m: calls.append(s))
    assert calls == []
    # A finished cache is restored into the state's traced shapes: no initialisation is computed.
    assert concrete_init and not any(concrete_init)
    for a, b in zip(jax.tree_util.tree_leaves(again.params), jax.tree_util.tree_leaves(gen_run["gen"].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # another classifier (or recipe) is another cache entry
    other = jax.tree_util.tree_map(lambda x: x * 1.0001, digits_params)
    model = models.get("digits")
    ds = data.load_digits(32)
    assert G.cache_key(model, other, ds.train_images, CI_RECIPE) != G.cache_key(model, digits_params, ds.train_images, CI_RECIPE)


def test_resume_is_bit_identical(digits_params, digits, tmp_path):
    model = models.get("digits")
    images = digits.train_images[:96]
    recipe = dataclasses.replace(CI_RECIPE, epochs=2, batch_size=32)
    full, hist = G.train_generator(model, digits_params, images, recipe)

    class Interrupt(Exception):
        pass

    def stop_in_epoch_1(epoch, step, m):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        G.train_generator(model, digits_params, images, recipe, checkpoint_dir=str(tmp_path), progress=stop_in_epoch_1)
    resumed, hist2 = G.train_generator(model, digits_params, images, recipe, checkpoint_dir=str(tmp_path))
    assert len(hist2["loss"]) == len(hist["loss"]) // 2  # only epoch 1 ran again
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(hist["loss"][len(hist["loss"]) // 2 :], hist2["loss"])


def _probs(model, params, images, classes):
    return np.asarray(jax.nn.softmax(model.scores(params, images), -1))[np.arange(len(classes)), classes]


def test_generator_images_are_confident_and_digit_like(gen, digits_params, digits):
    """Every digit is classified as its target with probability > 0.9, and the images correlate more
    with the target's class-mean training image than Simonyan's pixel-space ascent with the same
    number of steps (margin 0.2 in mean Pearson correlation; measured 0.86 vs 0.42)."""
    model = models.get("digits")
    classes = np.arange(10)
    means = np.stack([digits.train_images[digits.train_labels == c].mean(0) for c in classes])
    vis = G.visualize(model, digits_params, gen, jnp.asarray(classes), key=jax.random.key(0), steps=STEPS)
    assert vis.images.shape == (10, 32, 32, 3)
    assert float(vis.images.min()) >= 0.0 and float(vis.images.max()) <= 1.0
    p = _probs(model, digits_params, vis.images, classes)
    assert np.all(p > 0.9), p
    pix = features.simonyan(model, digits_params, jnp.asarray(classes), key=jax.random.key(0), steps=STEPS)
    c_gen = G.class_mean_correlation(vis.images, means, classes)
    c_pix = G.class_mean_correlation(pix.images, means, classes)
    assert c_gen.mean() > c_pix.mean() + 0.2, (c_gen, c_pix)
    # ... and it is the TARGET digit they look like, not just any digit (the generator alone makes
    # digit-like images even for a random network: measured there, class-mean correlation 0.48 but
    # the target is the best-matching class for 1 of 10 and the specificity is -0.01; trained: 10 of
    # 10, specificity 0.34).
    every = np.stack([G.class_mean_correlation(vis.images, means, np.full(10, k)) for k in classes], 1)  # [E, K]
    assert np.sum(every.argmax(1) == classes) >= 9, every
    specificity = np.mean(c_gen - (every.sum(1) - c_gen) / 9)
    assert specificity > 0.15, specificity
    # codes stay inside the bounds
    codes = np.asarray(vis.result.raw)
    assert np.all(codes >= gen.stats.lower - 1e-6) and np.all(codes <= gen.stats.upper * G.DGN_DECAY + 1e-4)


def test_batch_equals_one_by_one_and_same_key(gen, digits_params):
    model = models.get("digits")
    keys = jax.random.split(jax.random.key(3), 2)
    batch = G.visualize(model, digits_params, gen, jnp.array([2, 7]), key=keys, steps=8)
    for i, c in enumerate((2, 7)):
        one = G.visualize(model, digits_params, gen, jnp.array([c]), key=keys[i : i + 1], steps=8)
        np.testing.assert_allclose(np.asarray(one.images[0]), np.asarray(batch.images[i]), atol=1e-5)
    again = G.visualize(model, digits_params, gen, jnp.array([2, 7]), key=keys, steps=8)
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(batch.images))
    other = G.visualize(model, digits_params, gen, jnp.array([2, 7]), key=jax.random.split(jax.random.key(4), 2), steps=8)
    assert not np.allclose(np.asarray(other.images), np.asarray(batch.images))


def test_adam_and_start_from_real_code(gen, digits_params, digits):
    model = models.get("digits")
    x = jnp.asarray(digits.test_images[:2])
    codes = G.encode(model, digits_params, x, gen.layer)
    codes = jnp.clip(codes, jnp.asarray(gen.stats.lower)[None], jnp.asarray(gen.stats.upper)[None])
    # a vanishing rate keeps the start: the image is G(code of the real image), a reconstruction
    still = G.visualize(model, digits_params, gen, jnp.array([0, 0]), key=jax.random.key(0), steps=1,
                        start_lr=1e-9, end_lr=1e-9, decay=1.0, init=codes)
    np.testing.assert_allclose(np.asarray(still.result.raw), np.asarray(codes), rtol=1e-5, atol=1e-5)
    assert float(jnp.mean(jnp.square(still.images - x))) < 0.05
    target = (int(digits.test_labels[0]) + 1) % 10
    ad = G.visualize(model, digits_params, gen, jnp.array([target]), key=jax.random.key(0), steps=STEPS, method="adam",
                     init=codes[:1])
    assert _probs(model, digits_params, ad.images, [target])[0] > 0.9


def test_bad_input(gen, digits_params, digits):
    model = models.get("digits")
    with pytest.raises(base.UnknownLayerError, match="no layer 'fc9'"):
        G.generator_for(model, digits_params, digits.train_images[:8], dataclasses.replace(CI_RECIPE, layer="fc9"), cache_dir="/nonexistent-not-used")
    small = gen._replace(prior=dataclasses.replace(gen.prior, module=G.make_generator((16, 16, 3))))
    with pytest.raises(ValueError, match=r"makes images \(16, 16, 3\) but digits takes \(32, 32, 3\)"):
        G.visualize(model, digits_params, small, 3, key=jax.random.key(0), steps=2)
    with pytest.raises(ValueError, match="multiple of 8"):
        G.make_generator((30, 30, 3))
    with pytest.raises(ValueError, match="upper code bounds must have the code's shape"):
        G.visualize(model, digits_params, gen, 3, key=jax.random.key(0), steps=2, upper=np.ones(7))
    with pytest.raises(ValueError, match="init must be start codes"):
        G.visualize(model, digits_params, gen, 3, key=jax.random.key(0), steps=2, init=jnp.zeros((1, 5)))
    with pytest.raises(ValueError, match="method"):
        G.visualize(model, digits_params, gen, 3, key=jax.random.key(0), steps=2, method="lbfgs")
