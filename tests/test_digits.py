"""The digits network trained offline: accuracy, the params cache and its recipe hash."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from jaxviz import data, io, models, train
from jaxviz.models import digits


def test_held_out_accuracy(digits_params, digits_training):  # noqa: F811
    model = models.get("digits")
    ds = data.load_digits(digits.DIGITS_SIZE)
    acc = train.accuracy(model, digits_params, ds.test_images, ds.test_labels)
    # Reported in the test log (-rA / -s) for the record; the bar is 97% of 297 held-out images.
    print(f"\ndigits: trained in {digits_training['seconds']:.1f} s, held-out accuracy {acc:.4f}")
    assert acc >= 0.97
    # Every training step reported progress: epochs x full batches.
    r = digits.DIGITS_RECIPE
    assert digits_training["steps"] == r.epochs * (data.DIGITS_TRAIN // r.batch_size)


def test_layer_names_and_shapes(digits_params):  # noqa: F811
    model = models.get("digits")
    assert model.layer_names[:3] == ("conv1_1", "relu1_1", "conv1_2")
    assert model.layer_names[-5:] == ("pool3", "avgpool", "fc4", "relu4", "fc5")
    io.check_params(model, digits_params)
    acts = model.apply(digits_params, np.zeros((2, 32, 32, 3), np.float32))
    assert acts["pool3"].shape == (2, 4, 4, 128) and acts["fc5"].shape == (2, 10)


def test_second_call_loads_from_cache(digits_params, digits_training, monkeypatch):  # noqa: F811
    cache_dir = digits_training["cache_dir"]
    path = digits.cache_path(cache_dir)
    assert os.path.exists(path)

    def no_training(*args, **kwargs):
        raise AssertionError("digits_params trained although a cached file exists")

    monkeypatch.setattr(digits, "train_digits", no_training)
    loaded = digits.digits_params(cache_dir=cache_dir)
    leaves_a, tree_a = jax.tree_util.tree_flatten(loaded)
    leaves_b, tree_b = jax.tree_util.tree_flatten(digits_params)
    assert tree_a == tree_b
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(leaves_a, leaves_b))
    # JAXVIZ_CACHE is the default folder.
    monkeypatch.setenv("JAXVIZ_CACHE", cache_dir)
    again = digits.digits_params()
    assert np.array_equal(np.asarray(again["fc5"]["kernel"]), np.asarray(digits_params["fc5"]["kernel"]))


def _fake_training(calls):
    def fake(recipe=digits.DIGITS_RECIPE, *, progress=None):
        calls.append(recipe)
        return digits.init_digits(len(calls)), {}

    return fake


def test_retrain_and_corrupt_cache(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(digits, "train_digits", _fake_training(calls))
    first = digits.digits_params(cache_dir=str(tmp_path))
    second = digits.digits_params(cache_dir=str(tmp_path))
    assert len(calls) == 1
    assert np.array_equal(np.asarray(first["conv1_1"]["kernel"]), np.asarray(second["conv1_1"]["kernel"]))
    digits.digits_params(cache_dir=str(tmp_path), retrain=True)
    assert len(calls) == 2
    # A truncated file (a crash while copying) is not fatal: the params are trained again.
    path = digits.cache_path(str(tmp_path))
    with open(path, "r+b") as f:
        f.truncate(100)
    digits.digits_params(cache_dir=str(tmp_path))
    assert len(calls) == 3
    io.load_params(path)  # readable again


def test_init_digits_matches_the_vgg_scheme():
    model = models.get("digits")
    params = digits.init_digits(0)
    shapes = jax.tree_util.tree_map(lambda s: s.shape, model.param_shapes())
    assert jax.tree_util.tree_map(lambda a: a.shape, params) == shapes
    # Kaiming-normal (fan_out) convs, N(0, 0.01) fully connected weights, zero biases.
    w = np.asarray(params["conv3_2"]["kernel"])
    assert np.std(w) == pytest.approx(np.sqrt(2.0 / (9 * 128)), rel=0.02) and abs(np.mean(w)) < 1e-3
    assert np.std(np.asarray(params["fc4"]["kernel"])) == pytest.approx(0.01, rel=0.02)
    assert all(not np.any(np.asarray(p["bias"])) for p in params.values())
    np.testing.assert_array_equal(digits.init_digits(0)["fc5"]["kernel"], params["fc5"]["kernel"])
    assert not np.array_equal(digits.init_digits(1)["fc5"]["kernel"], params["fc5"]["kernel"])


def test_recipe_hash_and_cache_location(tmp_path, monkeypatch):
    base = digits.DIGITS_RECIPE
    assert digits.recipe_hash(base) == digits.recipe_hash(digits.DigitsRecipe())
    changed = [dataclasses.replace(base, epochs=base.epochs + 1),
               dataclasses.replace(base, learning_rate=2e-3),
               dataclasses.replace(base, shuffle_seed=base.shuffle_seed + 1)]
    paths = {digits.cache_path(str(tmp_path), r) for r in [base, *changed]}
    assert len(paths) == 4
    # A changed recipe trains afresh, into its own file; the old file stays.
    calls = []
    monkeypatch.setattr(digits, "train_digits", _fake_training(calls))
    digits.digits_params(cache_dir=str(tmp_path))
    digits.digits_params(cache_dir=str(tmp_path), recipe=changed[0])
    assert calls == [base, changed[0]]
    assert os.path.exists(digits.cache_path(str(tmp_path), base))
    assert os.path.exists(digits.cache_path(str(tmp_path), changed[0]))
    # Cache folder precedence: $JAXVIZ_CACHE, then $XDG_CACHE_HOME/jaxviz, then ~/.cache/jaxviz.
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "a"))
    assert digits.default_cache_dir() == str(tmp_path / "a")
    monkeypatch.delenv("JAXVIZ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert digits.default_cache_dir() == os.path.join(str(tmp_path / "x"), "jaxviz")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert digits.default_cache_dir() == os.path.join(str(tmp_path / "home"), ".cache", "jaxviz")

