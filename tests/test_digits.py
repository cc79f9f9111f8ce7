"""The digits network trained offline (`jaxviz.pretrained`): accuracy, the params cache, its recipe
hash, and a cache folder that cannot be written."""

import dataclasses
import os
import resource
import signal

import jax
import numpy as np
import pytest

from jaxviz import data, io, models, pretrained, train
from jaxviz.models import digits


def test_held_out_accuracy(digits_params, digits_training):  # noqa: F811
    model = models.get("digits")
    ds = data.load_digits(digits.DIGITS_SIZE)
    acc = train.accuracy(model, digits_params, ds.test_images, ds.test_labels)
    # Reported in the test log (-rA / -s) for the record; the bar is 97% of 297 held-out images.
    print(f"\ndigits: trained in {digits_training['seconds']:.1f} s, held-out accuracy {acc:.4f}")
    assert acc >= 0.97
    # Every training step reported progress: epochs x full batches.
    r = pretrained.DIGITS_RECIPE
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
    path = pretrained.cache_path(cache_dir)
    assert os.path.exists(path)

    def no_training(*args, **kwargs):
        raise AssertionError("digits_params trained although a cached file exists")

    monkeypatch.setattr(pretrained, "train_digits", no_training)
    loaded = pretrained.digits_params(cache_dir=cache_dir)
    leaves_a, tree_a = jax.tree_util.tree_flatten(loaded)
    leaves_b, tree_b = jax.tree_util.tree_flatten(digits_params)
    assert tree_a == tree_b
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(leaves_a, leaves_b))
    # JAXVIZ_CACHE is the default folder.
    monkeypatch.setenv("JAXVIZ_CACHE", cache_dir)
    again = pretrained.digits_params()
    assert np.array_equal(np.asarray(again["fc5"]["kernel"]), np.asarray(digits_params["fc5"]["kernel"]))


def _fake_training(calls):
    def fake(recipe=pretrained.DIGITS_RECIPE, *, progress=None):
        calls.append(recipe)
        return digits.init_digits(len(calls)), {}

    return fake


def test_retrain_and_corrupt_cache(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pretrained, "train_digits", _fake_training(calls))
    first = pretrained.digits_params(cache_dir=str(tmp_path))
    second = pretrained.digits_params(cache_dir=str(tmp_path))
    assert len(calls) == 1
    assert np.array_equal(np.asarray(first["conv1_1"]["kernel"]), np.asarray(second["conv1_1"]["kernel"]))
    pretrained.digits_params(cache_dir=str(tmp_path), retrain=True)
    assert len(calls) == 2
    # A truncated file (a crash while copying) is not fatal: the params are trained again.
    path = pretrained.cache_path(str(tmp_path))
    with open(path, "r+b") as f:
        f.truncate(100)
    pretrained.digits_params(cache_dir=str(tmp_path))
    assert len(calls) == 3
    io.load_params(path)  # readable again


def test_recipe_schedule():
    # Cosine: the learning rate decays from the recipe's rate to 0 over all steps of the recipe.
    recipe = pretrained.DIGITS_RECIPE
    steps = recipe.epochs * (data.DIGITS_TRAIN // recipe.batch_size)
    opt = recipe.optimizer()
    p = {"w": np.zeros(2, np.float32)}
    g = {"w": np.ones(2, np.float32)}
    state = opt.init(p)
    first, state = opt.update(g, state, p)
    # Adam's first step moves each weight by about the learning rate.
    np.testing.assert_allclose(np.asarray(first["w"]), -recipe.learning_rate, rtol=1e-3)
    for _ in range(steps - 2):
        _, state = opt.update(g, state, p)
    last, _ = opt.update(g, state, p)
    assert 0 < -float(last["w"][0]) < 1e-3 * recipe.learning_rate
    constant = dataclasses.replace(recipe, schedule="constant").optimizer()
    step, _ = constant.update(g, constant.init(p), p)
    np.testing.assert_allclose(np.asarray(step["w"]), -recipe.learning_rate, rtol=1e-3)
    with pytest.raises(ValueError, match="schedule 'linear'"):
        dataclasses.replace(recipe, schedule="linear").optimizer()


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
    base = pretrained.DIGITS_RECIPE
    assert pretrained.recipe_hash(base) == pretrained.recipe_hash(pretrained.DigitsRecipe())
    changed = [dataclasses.replace(base, epochs=base.epochs + 1),
               dataclasses.replace(base, learning_rate=2e-3),
               dataclasses.replace(base, shuffle_seed=base.shuffle_seed + 1),
               dataclasses.replace(base, schedule="constant")]
    paths = {pretrained.cache_path(str(tmp_path), r) for r in [base, *changed]}
    assert len(paths) == 5
    # A changed recipe trains afresh, into its own file; the old file stays.
    calls = []
    monkeypatch.setattr(pretrained, "train_digits", _fake_training(calls))
    pretrained.digits_params(cache_dir=str(tmp_path))
    pretrained.digits_params(cache_dir=str(tmp_path), recipe=changed[0])
    assert calls == [base, changed[0]]
    assert os.path.exists(pretrained.cache_path(str(tmp_path), base))
    assert os.path.exists(pretrained.cache_path(str(tmp_path), changed[0]))
    # Cache folder precedence: $JAXVIZ_CACHE, then $XDG_CACHE_HOME/jaxviz, then ~/.cache/jaxviz.
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "a"))
    assert pretrained.default_cache_dir() == str(tmp_path / "a")
    monkeypatch.delenv("JAXVIZ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert pretrained.default_cache_dir() == os.path.join(str(tmp_path / "x"), "jaxviz")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pretrained.default_cache_dir() == os.path.join(str(tmp_path / "home"), ".cache", "jaxviz")



# --------------------------------------------------------------------------- a cache that cannot be written
def _never_train(recipe=pretrained.DIGITS_RECIPE, *, progress=None):
    raise AssertionError("trained although the cache folder is known to be unwritable")


def test_unwritable_cache_folder_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "train_digits", _never_train)
    # A cache folder that cannot exist: its parent is a regular file (fails for root too, where
    # permission bits do not stop writes).
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="not writable.*cache_dir=.*JAXVIZ_CACHE") as err:
        pretrained.digits_params(str(blocker / "cache"))
    assert str(blocker) in str(err.value)
    assert blocker.read_text() == "not a folder"
    # The same through $JAXVIZ_CACHE.
    monkeypatch.setenv("JAXVIZ_CACHE", str(blocker / "cache"))
    with pytest.raises(OSError, match="not writable"):
        pretrained.digits_params()


def test_a_cached_file_loads_without_writing(tmp_path, monkeypatch):
    # A read-only cache that already holds the file (e.g. shared by an administrator) is only read:
    # the writability check stands on the training path only.
    calls = []
    monkeypatch.setattr(pretrained, "train_digits", _fake_training(calls))
    first = pretrained.digits_params(str(tmp_path))

    def unwritable(folder):
        raise PermissionError(f"{folder} is read-only")

    monkeypatch.setattr(pretrained, "check_writable_folder", unwritable)
    again = pretrained.digits_params(str(tmp_path))
    assert len(calls) == 1
    np.testing.assert_array_equal(np.asarray(again["fc5"]["kernel"]), np.asarray(first["fc5"]["kernel"]))
    with pytest.raises(PermissionError, match="read-only"):
        pretrained.digits_params(str(tmp_path), retrain=True)
    assert len(calls) == 1


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs /sys")
def test_read_only_cache_folder_fails_before_training(monkeypatch):
    # An existing folder on a read-only file system (sysfs refuses new files, root included).
    try:
        probe = os.path.join("/sys", ".jaxviz-probe")
        open(probe, "w").close()
    except OSError:
        pass
    else:  # pragma: no cover - /sys writable here: not the situation this test needs
        os.unlink(probe)
        pytest.skip("/sys is writable on this machine")
    monkeypatch.setattr(pretrained, "train_digits", _never_train)
    with pytest.raises(OSError, match="'/sys' is not writable"):
        pretrained.digits_params("/sys")


def test_cache_write_failing_after_training_warns_and_returns_the_params(tmp_path, monkeypatch):
    # The folder passes the check, then disappears during training (replaced by a file): the
    # write fails for real; the trained parameters come back with a warning, and nothing is left
    # behind.
    cache = tmp_path / "cache"
    trained = digits.init_digits(7)

    def training_that_loses_the_folder(recipe=pretrained.DIGITS_RECIPE, *, progress=None):
        assert cache.is_dir() and not os.listdir(cache)  # created by the check, probe removed
        cache.rmdir()
        cache.write_text("now a file")
        return trained, {}

    monkeypatch.setattr(pretrained, "train_digits", training_that_loses_the_folder)
    with pytest.warns(RuntimeWarning, match="could not be cached.*returning it uncached"):
        params = pretrained.digits_params(str(cache))
    assert params is trained
    assert cache.read_text() == "now a file"
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_failed_cache_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    # retrain=True over an existing cache file, and the write fails half-way (a file-size limit,
    # like a full disk, stops the archive after 100 kB; the params file is about 2.5 MB): the old
    # file is intact and no temporary file remains.
    calls = []
    monkeypatch.setattr(pretrained, "train_digits", _fake_training(calls))
    first = pretrained.digits_params(str(tmp_path))
    path = pretrained.cache_path(str(tmp_path))
    before = open(path, "rb").read()
    assert len(before) > 1_000_000
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limits[1]))
        with pytest.warns(RuntimeWarning, match="could not be cached.*File too large"):
            second = pretrained.digits_params(str(tmp_path), retrain=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert len(calls) == 2
    assert not np.array_equal(np.asarray(first["fc5"]["kernel"]), np.asarray(second["fc5"]["kernel"]))
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == [os.path.basename(path)]


def test_training_is_deterministic(tmp_path):
    # Two trainings of one recipe (one epoch, to keep the suite short) give identical parameters
    # on one machine; the cache files hold exactly them.
    recipe = dataclasses.replace(pretrained.DIGITS_RECIPE, epochs=1)
    a = pretrained.digits_params(str(tmp_path / "a"), recipe=recipe)
    b = pretrained.digits_params(str(tmp_path / "b"), recipe=recipe)
    for p in (a, b, io.load_params(pretrained.cache_path(str(tmp_path / "b"), recipe))[0]):
        jax.tree_util.tree_map(np.testing.assert_array_equal, p, jax.tree_util.tree_map(np.asarray, a))
    assert not np.array_equal(np.asarray(a["fc5"]["kernel"]), np.asarray(digits.init_digits(recipe.init_seed)["fc5"]["kernel"]))
