"""Hardening of inspection and embedding (issue 12).

Each test covers a class of problem across every public function it applies to:
  * bad concrete input (non-finite, out of [0, 1], empty, out-of-range indices, unknown layers) is a
    clear error raised before any work (checked with a model that counts its traces);
  * traced bad input (under `jit`) gives NaN, never another index's answer;
  * the chunked loops give the same results with `loop="python"` and `loop="scan"` and do not
    re-trace on a second call;
  * t-SNE of legal degenerate data (duplicates) is finite;
  * the t-SNE image grid puts each whole image in its own cell, neighbours in nearby cells.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import embedding as E
from jaxviz import imaging, inspection, models
from jaxviz.models.base import UnknownLayerError


# --------------------------------------------------------------------------- fixtures and helpers
def _counting(model):
    """A copy of `model` whose apply function records every call: under `jit` it runs only while
    tracing, so the list counts traces (and is empty when no work was done)."""
    calls = []

    def apply_fn(params, x, **kwargs):
        calls.append(x.shape)
        return model.apply_fn(params, x, **kwargs)

    return dataclasses.replace(model, apply_fn=apply_fn), calls


@pytest.fixture(scope="module")
def digits():
    model = models.get("digits")
    return model, model.init(jax.random.key(0))


@pytest.fixture(scope="module")
def images():
    """12 real handwritten digits, 32x32 RGB in [0, 1]."""
    from jaxviz import data

    pytest.importorskip("sklearn")
    return jnp.asarray(data.load_digits().test_images[:12])


def _bad(x, kind):
    x = np.array(x)
    if kind == "nan":
        x[1, 3, 4, 0] = np.nan
    elif kind == "inf":
        x[1, 0, 0, 2] = np.inf
    elif kind == "0-255":
        x = x * 255.0
    elif kind == "empty":
        x = x[:0]
    return jnp.asarray(x)


BAD_IMAGE_MESSAGES = {"nan": "non-finite", "inf": "non-finite", "0-255": "divide by 255", "empty": "empty"}

# Every public inspection function that takes images, as f(model, params, images).
IMAGE_FUNCTIONS = {
    "activation_maps": lambda m, p, x: inspection.activation_maps(m, p, x, "relu2_1"),
    "activation_grid": lambda m, p, x: inspection.activation_grid(m, p, x, "relu2_1", channels=[0, 1]),
    "top_channels": lambda m, p, x: inspection.top_channels(m, p, x, "relu2_1", k=2),
    "patches(array)": lambda m, p, x: inspection.max_activating_patches(m, p, x, "relu2_1", [0], k=1),
    "patches(batches)": lambda m, p, x: inspection.max_activating_patches(m, p, [x], "relu2_1", [0], k=1),
    "features(array)": lambda m, p, x: inspection.features(m, p, x, batch_size=4),
    "features(batches)": lambda m, p, x: inspection.features(m, p, [x]),
    "iter_features": lambda m, p, x: list(inspection.iter_features(m, p, [x])),
    "crop_receptive_field": lambda m, p, x: inspection.crop_receptive_field(
        m, x, "conv2_1", jnp.zeros(x.shape[0], jnp.int32), jnp.zeros(x.shape[0], jnp.int32)
    ),
    "empirical_receptive_field": lambda m, p, x: inspection.empirical_receptive_field(m, p, "conv2_1", (32, 32), image=x[1]),
}


# --------------------------------------------------------------------------- 1. bad concrete images
@pytest.mark.parametrize("kind", list(BAD_IMAGE_MESSAGES))
@pytest.mark.parametrize("name", list(IMAGE_FUNCTIONS))
def test_bad_images_refused_before_any_work(digits, images, name, kind):
    model, params = digits
    counted, calls = _counting(model)
    x = _bad(images[:3], kind)
    if name == "empirical_receptive_field" and kind == "empty":
        pytest.skip("takes one probe image [H, W, C], not a batch")
    with pytest.raises(ValueError, match=BAD_IMAGE_MESSAGES[kind]):
        IMAGE_FUNCTIONS[name](counted, params, x)
    assert calls == [], f"{name} ran the model before refusing {kind} images"


def test_bad_parameters_and_filters_refused(digits):
    model, params = digits
    broken = jax.tree_util.tree_map(lambda a: a, params)
    broken["conv1_1"] = dict(broken["conv1_1"], kernel=params["conv1_1"]["kernel"].at[0, 0, 0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="non-finite"):
        inspection.first_layer_filters(model, broken)
    with pytest.raises(ValueError, match="non-finite"):
        inspection.tile_filters(np.full((2, 3, 3, 3), np.nan))
    with pytest.raises(ValueError, match="empty"):
        inspection.first_layer_filters(None, kernel=np.zeros((3, 3, 3, 0)))


# --------------------------------------------------------------------------- 1. traced NaN propagates
def test_traced_nan_images_give_nan_not_finite_answers(digits, images):
    """Under jit nothing can be checked: a NaN or infinite pixel must give non-finite values in every
    activation that depends on it (through convolutions, ReLUs and max pooling; an inf pixel stays
    +-inf in the first convolution, which multiplies it by one weight at a time, and is NaN from the
    first pooling on), and NaN features and rankings."""
    model, params = digits
    clean = images[1:2]
    bad = [images[:2].at[0, 5, 6, 1].set(v) for v in (jnp.nan, jnp.inf, -jnp.inf)]
    # One layer of each kind behind each pooling stage (every trunk layer costs a compilation). The
    # parameters are arguments: closed over, XLA folds them as constants (twice the compile time).
    for layer in ("relu1_1", "pool1", "conv2_1", "relu2_2", "pool2", "relu3_2", "pool3"):
        fn = jax.jit(lambda p, x, layer=layer: inspection.activation_maps(model, p, x, layer))
        for x in bad:
            maps = fn(params, x)
            assert not bool(jnp.isfinite(maps[0]).all()), f"{layer}: the bad pixel vanished"
            assert bool(jnp.isfinite(maps[1]).all()), f"{layer}: it leaked into another image"
            np.testing.assert_allclose(maps[1:], inspection.activation_maps(model, params, clean, layer), rtol=1e-5, atol=1e-6)
    features = jax.jit(lambda p, x: inspection.features(model, p, x))
    top_channels = jax.jit(lambda p, x: inspection.top_channels(model, p, x, "relu3_2", k=3))
    patches = jax.jit(lambda p, x: inspection.max_activating_patches(model, p, x, "relu2_1", [0, 5], k=2))
    for x in bad:
        feats = features(params, x)
        assert bool(jnp.isnan(feats[0]).all()), "fc features of a NaN image must be NaN"
        assert bool(jnp.isfinite(feats[1]).all())
        _, values = top_channels(params, x)
        assert bool(jnp.isnan(values[0]).all()) and bool(jnp.isfinite(values[1]).all())
        top = patches(params, x)
        assert bool(jnp.isnan(top.values).all()) and bool(jnp.isnan(top.patches).all())
        assert bool((top.image_index == -1).all())


# --------------------------------------------------------------------------- 2. empty input
def test_empty_inputs_are_clear_errors(digits, images):
    model, params = digits
    q = jnp.ones((3, 4))
    cases = [
        (lambda: inspection.features(model, params, []), "empty"),
        (lambda: inspection.max_activating_patches(model, params, iter([]), "relu2_1", [0]), "empty"),
        (lambda: inspection.nearest_neighbours(jnp.ones((0, 4)), q, 1), "at least one"),
        (lambda: inspection.nearest_neighbours(jnp.ones((3, 0)), jnp.ones((5, 0)), 1), "at least one"),
        (lambda: inspection.nearest_neighbours(q, jnp.ones((0, 4)), 1), "empty"),
        (lambda: inspection.nearest_neighbours(q, iter([]), 1), "empty"),
        (lambda: inspection.nearest_neighbours(q, [jnp.ones((0, 4))], 1), "empty"),
        (lambda: E.pca(jnp.ones((1, 4)), 1), "at least 2 points"),
        (lambda: E.pca(jnp.ones((5, 0)), 1), "no coordinates"),
        (lambda: E.tsne(jnp.ones((1, 4)), key=jax.random.key(0)), "at least 2 points"),
        (lambda: E.tsne(jnp.eye(5), key=jax.random.key(0)), "perplexity"),
        (lambda: E.joint_probabilities(jnp.ones((0, 3))), "at least 2 points"),
        (lambda: E.trustworthiness(jnp.eye(4), jnp.eye(4)[:, :2], k=2), "k must be"),
        (lambda: E.knn_accuracy(jnp.ones((1, 2)), [0]), "at least 2 points"),
        (lambda: E.grid_layout(np.zeros((0, 2))), "empty"),
        (lambda: E.image_grid(np.zeros((2, 4, 4, 1)), np.zeros((3, 2))), "2 images but 3"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


# --------------------------------------------------------------------------- 3. indices and layer names
def test_concrete_out_of_range_indices_and_unknown_layers(digits, images):
    model, params = digits
    counted, calls = _counting(model)
    x = images[:3]
    for channels in ([64], [-1], [0, 64]):
        with pytest.raises(ValueError, match=r"channel indices must be in \[0, 64\)"):
            inspection.max_activating_patches(counted, params, x, "relu2_1", channels)
        with pytest.raises(ValueError, match=r"channel indices must be in \[0, 64\)"):
            inspection.activation_grid(counted, params, x, "relu2_1", channels=channels)
    with pytest.raises(ValueError, match="integers"):
        inspection.max_activating_patches(counted, params, x, "relu2_1", [1.5])
    for k in (0, 65, True, 2.0):
        with pytest.raises(ValueError, match="k must be"):
            inspection.top_channels(counted, params, x, "relu2_1", k=k)
    with pytest.raises(ValueError, match="only 3 candidate"):
        inspection.max_activating_patches(counted, params, x, "relu2_1", [0], k=4, distinct_images=True)
    # Unknown layer names: the error names the valid ones, for every function taking a layer.
    for fn in (
        lambda: inspection.activation_maps(counted, params, x, "conv9"),
        lambda: inspection.activation_grid(counted, params, x, "conv9"),
        lambda: inspection.top_channels(counted, params, x, "conv9"),
        lambda: inspection.features(counted, params, x, "conv9"),
        lambda: list(inspection.iter_features(counted, params, [x], "conv9")),
        lambda: inspection.max_activating_patches(counted, params, x, "conv9", [0]),
        lambda: inspection.empirical_receptive_field(counted, params, "conv9", (32, 32)),
    ):
        with pytest.raises(UnknownLayerError, match="conv1_1"):
            fn()
    assert calls == [], "the model ran before a bad index or layer was refused"
    # Crops: positions outside the layer's map and image indices outside the batch.
    h = models.spatial_shape(model, "conv2_1", (32, 32))[0]
    with pytest.raises(ValueError, match=rf"ys must be in \[0, {h}\)"):
        inspection.crop_receptive_field(model, x, "conv2_1", [0, h, 0], [0, 0, 0])
    with pytest.raises(ValueError, match=r"image_index must be in \[0, 3\)"):
        inspection.crop_receptive_field(model, x, "conv2_1", [0], [0], image_index=[3])
    with pytest.raises(ValueError, match=r"image_index must be in \[0, 3\)"):
        inspection.crop_receptive_field(model, x, "conv2_1", [0], [0], image_index=[-1])
    # Nearest neighbours: k beyond the database is refused before any chunk is processed.
    with pytest.raises(ValueError, match="only 4 rows"):
        inspection.nearest_neighbours(jnp.ones((2, 3)), jnp.ones((4, 3)), 5)


def test_traced_out_of_range_indices_give_nan(digits, images):
    model, params = digits
    x = images[:4]
    ref = inspection.max_activating_patches(model, params, x, "relu2_1", [3], k=3)
    top = jax.jit(lambda p, ch: inspection.max_activating_patches(model, p, x, "relu2_1", ch, k=3))(
        params, jnp.array([3, 64, -1, 1000])
    )
    np.testing.assert_allclose(top.values[0], ref.values[0], rtol=1e-6)
    np.testing.assert_array_equal(top.image_index[0], ref.image_index[0])
    np.testing.assert_array_equal(top.patches[0], ref.patches[0])
    for row in (1, 2, 3):  # 64 = C, -1 (would wrap to 63), 1000 (would clamp to 63)
        assert bool(jnp.isnan(top.values[row]).all()) and bool(jnp.isnan(top.patches[row]).all())
        assert bool((top.image_index[row] == -1).all()) and bool((top.y[row] == -1).all())
    # vmap over channels: the same.
    vals = jax.vmap(lambda c: inspection.max_activating_patches(model, params, x, "relu2_1", c, k=1).values)(
        jnp.array([3, 64])
    )
    assert float(vals[0, 0, 0]) == pytest.approx(float(ref.values[0, 0]), rel=1e-6) and bool(jnp.isnan(vals[1]).all())
    # Crops with traced image indices / positions: out of range -> NaN crop, never another image's.
    crop = jax.jit(lambda i, y: inspection.crop_receptive_field(model, x, "conv2_1", y, y, image_index=i))
    out = crop(jnp.array([2, 4, -1, 1]), jnp.array([1, 1, 1, 16]))
    np.testing.assert_array_equal(out[0], inspection.crop_receptive_field(model, x, "conv2_1", [1], [1], image_index=[2])[0])
    assert all(bool(jnp.isnan(out[i]).all()) for i in (1, 2, 3))


# --------------------------------------------------------------------------- nearest neighbours: non-finite
def test_nearest_neighbours_non_finite_rows():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(40, 6)).astype(np.float32)
    q = rng.normal(size=(5, 6)).astype(np.float32)
    ref_i, ref_d = inspection.nearest_neighbours(q, db, 3)
    bad_q = q.copy()
    bad_q[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"queries contain non-finite.*\[1\]"):
        inspection.nearest_neighbours(bad_q, db, 3)
    bad_db = db.copy()
    bad_db[27, 0] = np.inf
    with pytest.raises(ValueError, match=r"database rows contain non-finite.*\[27\]"):
        inspection.nearest_neighbours(q, bad_db, 3)
    with pytest.raises(ValueError, match=r"database rows contain non-finite.*\[27\]"):  # numbered across chunks
        inspection.nearest_neighbours(q, [bad_db[:20], bad_db[20:]], 3)
    for metric in ("l2", "cosine"):
        ref_i, ref_d = inspection.nearest_neighbours(q, db, 3, metric)
        # Traced NaN query: NaN distances and index -1 for it; the other queries unchanged.
        i, d = jax.jit(lambda q: inspection.nearest_neighbours(q, db, 3, metric, chunk_size=16))(bad_q)
        assert bool(jnp.isnan(d[1]).all()) and bool((i[1] == -1).all())
        keep = np.array([0, 2, 3, 4])
        np.testing.assert_array_equal(i[keep], ref_i[keep])
        np.testing.assert_allclose(d[keep], ref_d[keep], rtol=1e-6, atol=1e-6)
        # Traced non-finite database row: every answer is unknown.
        i, d = jax.jit(lambda db: inspection.nearest_neighbours(q, db, 3, metric, chunk_size=16))(bad_db)
        assert bool(jnp.isnan(d).all()) and bool((i == -1).all())


# --------------------------------------------------------------------------- 4. loops: equal results, no re-tracing
def test_features_loops_agree_and_compile_once(digits, images):
    model, params = digits
    counted, calls = _counting(model)
    whole = inspection.features(model, params, images)
    for layer in (None, "pool2", inspection.PIXELS):
        ref = inspection.features(model, params, images, layer)
        py = inspection.features(counted, params, images, layer, batch_size=5, loop="python")  # 5 + 5 + 2 (padded)
        sc = inspection.features(counted, params, images, layer, batch_size=5, loop="scan")
        assert py.shape == ref.shape == sc.shape
        np.testing.assert_allclose(py, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sc, py, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole, inspection.features(model, params, images, None), rtol=0, atol=0)
    for loop in ("python", "scan"):
        inspection.features(counted, params, images, "fc4", batch_size=3, loop=loop)
        n = len(calls)
        inspection.features(counted, params, images + 0.0, "fc4", batch_size=3, loop=loop)
        assert len(calls) == n, f"loop={loop}: the second call re-traced the model"


@pytest.mark.parametrize("distinct", [False, True])
def test_patches_loops_agree_and_compile_once(digits, images, distinct):
    model, params = digits
    counted, calls = _counting(model)
    ref = inspection.max_activating_patches(model, params, images, "relu2_1", [0, 7, 33], k=4, distinct_images=distinct)
    stream = inspection.max_activating_patches(
        model, params, [images[:5], images[5:]], "relu2_1", [0, 7, 33], k=4, distinct_images=distinct
    )
    runs = {
        loop: inspection.max_activating_patches(
            counted, params, images, "relu2_1", [0, 7, 33], k=4, distinct_images=distinct, batch_size=5, loop=loop
        )
        for loop in ("python", "scan")
    }
    for res in (stream, *runs.values()):
        np.testing.assert_allclose(res.values, ref.values, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(res.image_index, ref.image_index)
        np.testing.assert_array_equal(res.y, ref.y)
        np.testing.assert_array_equal(res.x, ref.x)
        np.testing.assert_array_equal(res.patches, ref.patches)
    assert int(ref.image_index.max()) < 12  # the padding of the last chunk (images 12..14) never wins
    if distinct:
        assert all(len(set(row)) == 4 for row in np.asarray(ref.image_index).tolist())
    for loop in ("python", "scan"):
        n = len(calls)
        inspection.max_activating_patches(
            counted, params, images * 0.5, "relu2_1", [1, 2, 3], k=4, distinct_images=distinct, batch_size=5, loop=loop
        )
        assert len(calls) == n, f"loop={loop}: the second call re-traced the model"


def test_distinct_images_gives_one_patch_per_image(digits):
    """Where one image holds the strongest responses, the plain top-k is near-duplicate crops of
    it; `distinct_images=True` gives k different images, each at its own best position."""
    model, params = digits
    rng = np.random.default_rng(1)
    x = rng.uniform(0.4, 0.6, size=(6, 32, 32, 3)).astype(np.float32) * np.linspace(0.2, 1.0, 6)[:, None, None, None]
    x = jnp.asarray(x)
    layer, ch = "conv1_1", list(range(8))
    plain = inspection.max_activating_patches(model, params, x, layer, ch, k=4)
    dist = inspection.max_activating_patches(model, params, x, layer, ch, k=4, distinct_images=True)
    acts = np.asarray(model.apply(params, x, until=layer)[layer])[..., ch]  # [6, h, w, 8]
    per_image = acts.reshape(6, -1, len(ch)).max(axis=1)  # [6, 8]
    for c in range(len(ch)):
        imgs = np.asarray(dist.image_index[c])
        assert len(set(imgs.tolist())) == 4
        np.testing.assert_allclose(np.asarray(dist.values[c]), np.sort(per_image[:, c])[::-1][:4], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(dist.values[c]), per_image[imgs, c], rtol=1e-5)
        assert float(plain.values[c, 0]) == float(dist.values[c, 0])
    # In this data (contrast rising image by image) the plain top-4 repeats images for most channels.
    repeats = sum(len(set(np.asarray(plain.image_index[c]).tolist())) < 4 for c in range(len(ch)))
    assert repeats >= 1


def test_nearest_neighbours_loops_agree_and_compile_once(monkeypatch):
    rng = np.random.default_rng(2)
    db = rng.normal(size=(53, 7)).astype(np.float32)
    q = rng.normal(size=(11, 7)).astype(np.float32)
    for metric in ("l2", "cosine"):
        ref_i, ref_d = inspection.nearest_neighbours(q, db, 4, metric)
        for loop in ("python", "scan"):
            i, d = inspection.nearest_neighbours(q, db, 4, metric, chunk_size=8, query_block=4, loop=loop)
            np.testing.assert_array_equal(i, ref_i)
            np.testing.assert_allclose(d, ref_d, rtol=1e-6, atol=1e-6)
    # Count traces of the chunk step (looked up as a module global at each call, like the real one).
    traces = []
    original = inspection._nn_step

    def counted(*args):
        traces.append(1)
        return original(*args)

    monkeypatch.setattr(inspection, "_nn_step", counted)
    for loop in ("python", "scan"):
        q2 = rng.normal(size=(13, 9)).astype(np.float32)
        db2 = rng.normal(size=(31, 9)).astype(np.float32)
        before = len(traces)
        i1, _ = inspection.nearest_neighbours(q2, db2, 3, chunk_size=10, loop=loop)
        n = len(traces)
        assert n > before
        i2, _ = inspection.nearest_neighbours(q2 + 1.0, db2 + 1.0, 3, chunk_size=10, loop=loop)
        assert len(traces) == n, f"loop={loop}: the second call re-traced"
        np.testing.assert_array_equal(i1, i2)  # a shifted problem has the same neighbours
    with pytest.raises(ValueError, match="loop must be one of"):
        inspection.nearest_neighbours(q, db, 2, loop="fast")


def test_tsne_loops_agree_and_compile_once(monkeypatch):
    x = np.random.default_rng(3).normal(size=(23, 5)).astype(np.float32)
    kw = dict(key=jax.random.key(0), perplexity=5.0, steps=30, exaggeration_steps=10)
    py = E.tsne(x, loop="python", **kw)
    sc = E.tsne(x, loop="scan", **kw)
    np.testing.assert_allclose(py, sc, rtol=1e-5, atol=1e-5 * float(jnp.abs(sc).max()))
    traces = []
    original = E._gd_step

    def counted(*args):
        traces.append(1)
        return original(*args)

    monkeypatch.setattr(E, "_gd_step", counted)
    for loop in ("python", "scan"):
        x2 = np.random.default_rng(4).normal(size=(19 if loop == "python" else 17, 4)).astype(np.float32)
        before = len(traces)
        E.tsne(x2, loop=loop, **kw)
        n = len(traces)
        assert n > before
        E.tsne(x2 * 2.0, loop=loop, **kw)
        assert len(traces) == n, f"loop={loop}: the second call re-traced"


# --------------------------------------------------------------------------- t-SNE and embeddings: degenerate data
def test_tsne_of_duplicates_is_finite():
    rng = np.random.default_rng(5)
    v = rng.uniform(size=(1, 10)).astype(np.float32)
    same = np.repeat(v, 20, axis=0)
    for init in ("pca", "random"):
        emb = np.asarray(E.tsne(same, key=jax.random.key(0), perplexity=5.0, steps=120, init=init))
        assert np.isfinite(emb).all(), init
    emb = np.asarray(E.tsne(same, key=jax.random.key(0), perplexity=5.0, steps=120))
    assert np.all(emb == emb[0]), "identical points must coincide"
    # Identical up to rounding (as features of one image computed at different batch positions).
    noisy = same * (1 + 1e-7 * rng.standard_normal(same.shape).astype(np.float32))
    assert np.isfinite(np.asarray(E.tsne(noisy, key=jax.random.key(0), perplexity=5.0, steps=120))).all()
    # Duplicated clusters: finite. From the PCA start (the default) the groups lie apart (seeds 0-5:
    # each group stays (nearly) one point). From a random start duplicates are spread by the start
    # itself and t-SNE has nothing to pull them together exactly: only finite.
    labels = np.repeat(np.arange(3), 8)
    for seed in (0, 1):
        dup = np.random.default_rng(seed).uniform(size=(3, 10)).astype(np.float32)[labels]
        emb = np.asarray(E.tsne(dup, key=jax.random.key(1), perplexity=5.0, steps=120))
        assert np.isfinite(emb).all()
        d = np.sqrt(((emb[:, None] - emb[None]) ** 2).sum(-1))
        same_c = labels[:, None] == labels[None]
        assert d[same_c].max() < d[~same_c].min(), "clusters of duplicates overlap"
        assert float(E.knn_accuracy(emb, labels, 3)) == 1.0
        emb = np.asarray(E.tsne(dup, key=jax.random.key(1), perplexity=5.0, steps=120, init="random"))
        assert np.isfinite(emb).all()
    # The calibration of zero distances: uniform rows, finite precisions.
    p, beta = E.conditional_probabilities(jnp.zeros((6, 6)), 3.0)
    np.testing.assert_allclose(p, (1 - np.eye(6)) / 5, atol=1e-6)
    assert bool(jnp.isfinite(beta).all())
    proj, _, var = E.pca(same, 2)
    assert np.all(np.asarray(proj) == 0) and np.all(np.asarray(var) == 0)


def test_embeddings_refuse_or_propagate_non_finite():
    x = np.random.default_rng(6).normal(size=(12, 4)).astype(np.float32)
    bad = x.copy()
    bad[4, 1] = np.nan
    emb = x[:, :2]
    for fn in (
        lambda a: E.pca(a, 2),
        lambda a: E.tsne(a, key=jax.random.key(0), perplexity=3.0, steps=5),
        lambda a: E.joint_probabilities(a, 3.0),
        lambda a: E.trustworthiness(a, emb, 2),
        lambda a: E.trustworthiness(x, a[:, :2], 2),
        lambda a: E.knn_accuracy(a, np.arange(12) % 2, 2),
        lambda a: E.kl_divergence(jnp.full((12, 12), 1 / 132.0), a[:, :2]),
        lambda a: E.grid_layout(a[:, :2]),
    ):
        with pytest.raises(ValueError, match=r"non-finite.*\[4\]"):
            fn(bad)
    # Traced: NaN out, not a number that looks like an answer.
    out = jax.jit(lambda a: E.tsne(a, key=jax.random.key(0), perplexity=3.0, steps=5))(bad)
    assert bool(jnp.isnan(out).all())
    assert bool(jnp.isnan(jax.jit(lambda a: E.trustworthiness(a, emb, 2))(bad)))
    assert bool(jnp.isnan(jax.jit(lambda a: E.knn_accuracy(a, np.arange(12) % 2, 2))(bad[:, :2])))


# --------------------------------------------------------------------------- 5. the t-SNE image grid
def _clustered(seed, n_clusters=5, per=20):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(n_clusters, 2))
    labels = np.repeat(np.arange(n_clusters), per)
    return (centres[labels] + rng.normal(size=(len(labels), 2))).astype(np.float32), labels


def _adjacent_same_label(cells, labels, rows, cols):
    """Fraction of 4-adjacent pairs of occupied cells whose points share a label."""
    grid = np.full(rows * cols, -1)
    grid[cells] = labels
    grid = grid.reshape(rows, cols)
    pairs = [(grid[:, :-1], grid[:, 1:]), (grid[:-1, :], grid[1:, :])]
    same = total = 0
    for a, b in pairs:
        both = (a >= 0) & (b >= 0)
        same += int(np.sum((a == b) & both))
        total += int(np.sum(both))
    return same / total


@pytest.mark.parametrize("method", ["optimal", "greedy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_grid_whole_distinct_thumbnails_neighbours_together(method, seed):
    emb, labels = _clustered(seed)
    m = len(emb)
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 1.0, size=(m, 6, 5, 3)).astype(np.float32)
    for rows, cols in ((10, 10), (11, 12)):  # full, and with empty cells
        cells = E.grid_layout(emb, rows, cols, method=method)
        assert len(set(cells.tolist())) == m and cells.min() >= 0 and cells.max() < rows * cols
        mosaic = E.image_grid(images, emb, rows, cols, pad=1, background=(0.2, 0.3, 0.4), method=method)
        assert mosaic.shape == (rows * 7 - 1, cols * 6 - 1, 3)
        seen = np.zeros(mosaic.shape[:2], bool)
        for i, c in enumerate(cells):  # every thumbnail intact, where its cell is
            r, q = divmod(int(c), cols)
            np.testing.assert_array_equal(mosaic[r * 7 : r * 7 + 6, q * 6 : q * 6 + 5], images[i])
            seen[r * 7 : r * 7 + 6, q * 6 : q * 6 + 5] = True
        np.testing.assert_array_equal(mosaic[~seen], np.broadcast_to(np.float32([0.2, 0.3, 0.4]), mosaic[~seen].shape))
        # Neighbours together: adjacent cells mostly share a cluster; a random layout does not.
        # (Over seeds 0-9 and both methods: at least 0.70 here, at most 0.31 for random layouts.)
        together = _adjacent_same_label(cells, labels, rows, cols)
        shuffled = _adjacent_same_label(rng.permutation(rows * cols)[:m], labels, rows, cols)
        assert together > 0.6 and shuffled < 0.45, (together, shuffled)
        # Each cluster's cells form one patch: its grid centroid is nearest to its own points.
        gy, gx = np.divmod(cells, cols)
        cent = np.stack([[gx[labels == c].mean(), gy[labels == c].mean()] for c in range(5)])
        own = np.argmin(((np.stack([gx, gy], 1)[:, None] - cent[None]) ** 2).sum(-1), axis=1)
        assert np.mean(own == labels) > 0.7  # seeds 0-9: at least 0.79
        # Orientation of a scatter plot: x grows to the right, y grows upwards (row 0 at the top).
        # (seeds 0-9: correlations at least 0.78 and at most -0.82)
        assert np.corrcoef(gx, emb[:, 0])[0, 1] > 0.65 and np.corrcoef(gy, emb[:, 1])[0, 1] < -0.65


def test_image_grid_defaults_thumbnails_and_errors():
    emb, labels = _clustered(3, per=6)  # 30 points: 5 x 6 grid by default
    assert E.grid_shape(30) == (5, 6) and E.grid_shape(600) == (24, 25) and E.grid_shape(1) == (1, 1)
    digits = np.zeros((30, 8, 8, 1), np.float32)
    digits[:, 2:6, 3:5] = 1.0  # bright ink on black, like the digits data
    mosaic = E.image_grid(digits, emb)
    assert mosaic.shape == (5 * 9 - 1, 6 * 9 - 1, 3)
    gaps = mosaic[8::9]
    assert np.all(gaps == 0.5), "gaps are mid grey: neither the black background nor white ink"
    small = E.image_grid(digits, emb, thumbnail=4, pad=0)
    assert small.shape == (20, 24, 3) and small.min() >= 0 and small.max() <= 1
    cells = E.grid_layout(emb)
    thumbs = np.asarray(imaging.resize(jnp.asarray(digits), (4, 4), "linear"))
    r, q = divmod(int(cells[0]), 6)
    np.testing.assert_allclose(small[r * 4 : r * 4 + 4, q * 4 : q * 4 + 4], np.repeat(thumbs[0], 3, -1), atol=1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        E.image_grid(digits, emb, 4, 7)
    with pytest.raises(ValueError, match="background"):
        E.image_grid(digits, emb, background=(1.0, 0.0))
    with pytest.raises(ValueError, match="thumbnail"):
        E.image_grid(digits, emb, thumbnail=0)
    with pytest.raises(ValueError, match="divide by 255"):
        E.image_grid(digits * 255, emb)


@pytest.mark.parametrize("arch", ["digits", "vgg16", "alexnet"])
def test_layer_shapes_from_descriptions_equal_traced_shapes(arch):
    """Arguments are validated from the layer descriptions, without tracing the model: those
    shapes must be the real ones."""
    model = models.get(arch)
    params = model.param_shapes()
    for size in ((67, 75), model.input_size):
        x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
        for layer in model.trunk:
            real = inspection._activation.eval_shape(model, params, x, layer, None, None).shape
            assert inspection._layer_shape(model, params, x, layer) == tuple(real), (arch, size, layer)
