"""Inspection: filters, activation maps, maximally activating patches, receptive fields, nearest neighbours.

References are independent of the code under test: numpy brute force over the whole (small) dataset,
numpy crops with explicit padding, and the input-gradient support of a unit for receptive fields.
"""

import jax
import numpy as np
import pytest

from jaxviz import inspection, models
from jaxviz.models.base import LayerSpec, Model, ReceptiveField


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def digits():
    model = models.get("digits")
    return model, _random_params(model, model.logits)


@pytest.fixture(scope="module")
def photos():
    """32x32 crops of scikit-image's bundled photos (real image statistics), float32 in [0, 1]."""
    skd = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    crops = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = getattr(skd, name)().astype(np.float32) / 255.0
        h, w = img.shape[:2]
        s = min(h, w) // 2
        for top, left in ((0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)):
            crops.append(resize(img[top : top + s, left : left + s], (32, 32), anti_aliasing=True))
    return np.clip(np.stack(crops), 0.0, 1.0).astype(np.float32)  # [20, 32, 32, 3]


def _random_params(model, upto, seed=0):
    """He-scaled random parameters for the layers up to `upto` only: initialising all of VGG16
    (138M numbers, mostly fc6) would dominate these tests' run time."""
    names = model.layer_names[: model.index(upto) + 1]
    rng = np.random.default_rng(seed)
    params = {}
    for name, shapes in model.param_shapes().items():
        if name in names:
            kshape = shapes["kernel"].shape
            fan_in = int(np.prod(kshape[:-1]))
            params[name] = {
                "kernel": (rng.normal(size=kshape) * np.sqrt(2.0 / fan_in)).astype(np.float32),
                "bias": rng.normal(size=shapes["bias"].shape).astype(np.float32) * 0.1,
            }
    return params


def _batches(x, sizes):
    out, start = [], 0
    for s in sizes:
        out.append(x[start : start + s])
        start += s
    assert start == len(x)
    return out


def _np_crop(image, box, fill):
    """Reference crop: pad the image by the box's overhang with `fill`, then slice."""
    top, left, bottom, right = box
    h, w, _ = image.shape
    pt, pl = max(0, -top), max(0, -left)
    pb, pr = max(0, bottom - h), max(0, right - w)
    padded = np.pad(image, ((pt, pb), (pl, pr), (0, 0)), constant_values=fill)
    return padded[top + pt : bottom + pt, left + pl : right + pl]


# --------------------------------------------------------------------------- filters
@pytest.mark.parametrize(
    "arch,layer,shape", [("alexnet", "conv1", (64, 11, 11, 3)), ("vgg16", "conv1_1", (64, 3, 3, 3))]
)
def test_first_layer_filters(arch, layer, shape):
    model = models.get(arch)
    params = _random_params(model, layer, seed=1)  # only the first layer is read
    assert inspection.first_conv_layer(model) == layer
    f = np.asarray(inspection.first_layer_filters(model, params))
    assert f.shape == shape
    k = np.asarray(params[layer]["kernel"]).transpose(3, 0, 1, 2)
    lo = k.min(axis=(1, 2, 3), keepdims=True)
    hi = k.max(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(f, (k - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(f.min(axis=(1, 2, 3)), 0.0, atol=1e-7)
    np.testing.assert_allclose(f.max(axis=(1, 2, 3)), 1.0, atol=1e-6)
    shared = np.asarray(inspection.first_layer_filters(model, params, shared_scale=True))
    np.testing.assert_allclose(shared, (k - k.min()) / (k.max() - k.min()), atol=1e-6)
    # An explicit kernel (any parameter layout) gives the same.
    f2 = inspection.first_layer_filters(None, kernel=params[layer]["kernel"])
    np.testing.assert_allclose(np.asarray(f2), f, atol=0)


def test_filter_grid_and_errors():
    model = models.get("vgg16")
    params = _random_params(model, "conv1_1", seed=2)
    grid = inspection.filter_grid(model, params)  # 3x3 filters upscaled 10x, 8x8 grid, 1 px gaps
    assert grid.shape == (8 * 31 - 1, 8 * 31 - 1, 3)
    f = np.asarray(inspection.first_layer_filters(model, params))
    tile_9 = grid[31 : 31 + 30, 31 : 31 + 30]  # filter 9 = row 1, column 1
    np.testing.assert_allclose(tile_9, np.repeat(np.repeat(f[9], 10, axis=0), 10, axis=1))
    assert np.all(grid[30, :] == 1.0)  # the gap between tile rows
    with pytest.raises(ValueError, match="not a convolution"):
        inspection.first_layer_filters(model, params, "relu1_1")
    with pytest.raises(ValueError, match="kernel"):
        inspection.first_layer_filters(model, {}, "conv1_1")
    with pytest.raises(ValueError, match="in_channel"):
        inspection.filter_grid(None, kernel=np.zeros((3, 3, 5, 4), np.float32))


# --------------------------------------------------------------------------- activations
def test_activation_maps_and_top_channels(digits, photos):
    model, params = digits
    x = photos[:5]
    acts = model.apply(params, x)
    maps = inspection.activation_maps(model, params, x, "relu2_2")
    assert maps.shape == (5, 64, 8 * 2, 8 * 2)
    ref = np.asarray(acts["relu2_2"]).transpose(0, 3, 1, 2)
    # Two float32 programs: equal up to rounding (1e-5 of the largest activation; jax 0.4.30 differs
    # by 3e-6 at small values, jax 0.10 by less).
    np.testing.assert_allclose(np.asarray(maps), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # batch == loop
    one = np.concatenate([inspection.activation_maps(model, params, x[i : i + 1], "relu2_2") for i in range(5)])
    np.testing.assert_allclose(np.asarray(maps), one, rtol=1e-5, atol=1e-5)

    idx, vals = inspection.top_channels(model, params, x, "conv3_2", k=6)
    means = np.asarray(acts["conv3_2"]).mean(axis=(1, 2))
    ref = np.argsort(-means, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(np.asarray(idx), ref)
    np.testing.assert_allclose(np.asarray(vals), np.take_along_axis(means, ref, axis=1), rtol=1e-5, atol=1e-6)
    # fc layers rank their features directly
    idx_fc, _ = inspection.top_channels(model, params, x, "fc4", k=3)
    ref_fc = np.argsort(-np.asarray(acts["fc4"]), axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(np.asarray(idx_fc), ref_fc)

    grid = inspection.activation_grid(model, params, x[:2], "conv1_1", channels=[0, 5, 7, 9])
    assert grid.shape == (2, 2 * 33 - 1, 2 * 33 - 1) and grid.min() >= 0 and grid.max() <= 1
    with pytest.raises(ValueError, match="not spatial"):
        inspection.activation_maps(model, params, x, "fc4")
    with pytest.raises(ValueError, match="k must be"):
        inspection.top_channels(model, params, x, "conv1_1", k=33)
    with pytest.raises(ValueError, match="batch"):
        inspection.activation_maps(model, params, x[0], "conv1_1")


# --------------------------------------------------------------------------- receptive-field crops
def test_crop_equals_box_region_including_border(digits, photos):
    model, _ = digits
    rf = models.receptive_field(model, "conv3_1")
    assert rf == ReceptiveField((24, 24), (4, 4), (10, 10))  # 3,5 | pool 6 | 10,14 | pool 16 | 24
    x = photos[:4]
    ys = np.array([0, 7, 3, 0])
    xs = np.array([0, 7, 5, 7])  # corners (padding on two sides), interior, mixed
    crops = np.asarray(inspection.crop_receptive_field(model, x, "conv3_1", ys, xs, fill=0.25))
    boxes = np.asarray(inspection.receptive_field_boxes(model, "conv3_1", ys, xs))
    assert crops.shape == (4, 24, 24, 3)
    np.testing.assert_array_equal(boxes[0], [-10, -10, 14, 14])
    np.testing.assert_array_equal(boxes[1], [18, 18, 42, 42])
    for i in range(4):
        np.testing.assert_array_equal(crops[i], _np_crop(x[i], boxes[i], 0.25))
    assert np.all(crops[0, :10] == 0.25) and np.all(crops[1, 14:] == 0.25)
    # explicit image_index: several positions from one image
    c2 = np.asarray(inspection.crop_receptive_field(model, x, "conv3_1", [1, 2], [3, 4], image_index=[2, 2]))
    np.testing.assert_array_equal(c2[1], _np_crop(x[2], np.asarray(rf.box(2, 4)), 0.5))


# --------------------------------------------------------------------------- maximally activating patches
def _brute_force_top(acts, channels, k, distinct):
    """Top-k over the whole dataset in (image, y, x) order, ties to the earlier entry."""
    n, h, w, _ = acts.shape
    out = []
    for c in channels:
        a = acts[..., c]
        if distinct:
            flat = a.reshape(n, h * w)
            pos = flat.argmax(axis=1)
            order = np.argsort(-flat.max(axis=1), kind="stable")[:k]
            out.append((flat.max(axis=1)[order], order, pos[order] // w, pos[order] % w))
        else:
            flat = a.reshape(-1)
            order = np.argsort(-flat, kind="stable")[:k]
            img, p = order // (h * w), order % (h * w)
            out.append((flat[order], img, p // w, p % w))
    return [np.stack(z) for z in zip(*out)]


@pytest.mark.parametrize("distinct", [False, True])
def test_max_activating_patches_equal_brute_force(digits, photos, distinct):
    model, params = digits
    layer, channels, k = "conv3_1", [3, 40, 101], 5
    res = inspection.max_activating_patches(
        model, params, iter(_batches(photos, [7, 7, 6])), layer, channels, k=k, distinct_images=distinct, fill=0.0
    )
    acts = np.asarray(model.apply(params, photos, until=layer)[layer])
    values, img, ys, xs = _brute_force_top(acts, channels, k, distinct)
    np.testing.assert_allclose(np.asarray(res.values), values, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(res.image_index), img)
    np.testing.assert_array_equal(np.asarray(res.y), ys)
    np.testing.assert_array_equal(np.asarray(res.x), xs)
    np.testing.assert_array_equal(np.asarray(res.channels), channels)
    assert res.patches.shape == (3, k, 24, 24, 3)
    if distinct:
        assert all(len(set(row)) == k for row in img.tolist())
    rf = models.receptive_field(model, layer)
    for c in range(3):
        for j in range(k):
            box = rf.box(ys[c, j], xs[c, j])
            np.testing.assert_array_equal(np.asarray(res.boxes[c, j]), box)
            np.testing.assert_array_equal(np.asarray(res.patches[c, j]), _np_crop(photos[img[c, j]], box, 0.0))


def test_max_activating_patches_ties_and_errors(digits, photos):
    model, params = digits
    # Six identical images: every candidate ties across images; the earliest images must win.
    same = np.repeat(photos[3:4], 6, axis=0)
    res = inspection.max_activating_patches(
        model, params, _batches(same, [2, 2, 2]), "relu2_1", 7, k=4, distinct_images=True
    )
    np.testing.assert_array_equal(np.asarray(res.image_index)[0], [0, 1, 2, 3])
    assert len(set(np.asarray(res.values)[0].tolist())) == 1
    with pytest.raises(ValueError, match="empty"):
        inspection.max_activating_patches(model, params, iter([]), "conv1_1", 0)
    with pytest.raises(ValueError, match="channel indices"):
        inspection.max_activating_patches(model, params, [photos[:2]], "conv1_1", [32])
    with pytest.raises(ValueError, match="whole image"):
        inspection.max_activating_patches(model, params, [photos[:2]], "fc4", [0])
    with pytest.raises(ValueError, match="only 2 candidate"):
        inspection.max_activating_patches(model, params, [photos[:2]], "conv1_1", [0], k=3, distinct_images=True)


# --------------------------------------------------------------------------- receptive fields, measured
@pytest.mark.parametrize(
    "arch,layer,image_size,expected",
    [
        ("vgg16", "conv5_3", 208, 196),
        ("vgg16", "pool5", 224, 212),
        ("alexnet", "conv5", 224, 163),
        ("alexnet", "pool5", 240, 195),
    ],
)
def test_empirical_receptive_field_matches_architecture(arch, layer, image_size, expected):
    model = models.get(arch)
    params = _random_params(model, layer, seed=3)
    emp = inspection.empirical_receptive_field(model, params, layer, (image_size, image_size))
    rf = models.receptive_field(model, layer)
    assert rf.size == (expected, expected)
    assert not emp.clipped
    assert emp.size == rf.size, (emp, rf)
    assert emp.box == rf.box(*emp.position)
    # Linear probe: the support is dense (a full rectangle), not the sparse set max-pool routing gives.
    top, left, bottom, right = emp.box
    assert emp.support[top:bottom, left:right].all()


def test_empirical_receptive_field_unknown_geometry():
    """A model whose layers are opaque ("map"): no computed field, but a measured one, usable for crops."""
    rng = np.random.default_rng(4)
    k1 = rng.normal(size=(5, 5, 3, 4)).astype(np.float32)
    k2 = rng.normal(size=(3, 3, 4, 2)).astype(np.float32)

    def apply_fn(params, x, *, until=None, relu=jax.nn.relu, pool="max"):
        dn = ("NHWC", "HWIO", "NHWC")
        h = relu(jax.lax.conv_general_dilated(x, params["a"], (1, 1), "VALID", dimension_numbers=dn))
        return {"feat": jax.lax.conv_general_dilated(h, params["b"], (2, 2), "VALID", dimension_numbers=dn)}

    model = Model(name="opaque", layers=(LayerSpec("feat", "map", 2),), apply_fn=apply_fn)
    params = {"a": k1, "b": k2}
    with pytest.raises(ValueError, match="empirical_receptive_field"):
        models.receptive_field(model, "feat")
    emp = inspection.empirical_receptive_field(model, params, "feat", (33, 33), position=(5, 6))
    assert emp.size == (7, 7) and emp.box == (10, 12, 17, 19)  # 5 + (3 - 1) * 1; stride 2, no padding
    rf = ReceptiveField(emp.size, (2, 2), (0, 0))
    x = np.random.default_rng(0).uniform(size=(1, 33, 33, 3)).astype(np.float32)
    crop = np.asarray(inspection.crop_receptive_field(model, x, "feat", [5], [6], rf=rf))
    np.testing.assert_array_equal(crop[0], x[0, 10:17, 12:19])


# --------------------------------------------------------------------------- features and nearest neighbours
def _np_knn(q, db, k, metric):
    q, db = q.astype(np.float64), db.astype(np.float64)
    if metric == "l2":
        d = np.sqrt(((q[:, None, :] - db[None, :, :]) ** 2).sum(-1))
    else:
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        dn = db / np.linalg.norm(db, axis=1, keepdims=True)
        d = 1.0 - qn @ dn.T
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, axis=1)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_neighbours_equal_brute_force(metric):
    rng = np.random.default_rng(1)
    db = rng.normal(size=(300, 16)).astype(np.float32)
    db[250] = db[5]  # an exact duplicate in another chunk: the tie goes to the lower index
    q = rng.normal(size=(9, 16)).astype(np.float32)
    q[0] = db[5]
    ref_i, ref_d = _np_knn(q, db, 6, metric)
    assert ref_i[0, 0] == 5 and ref_i[0, 1] == 250
    whole_i, whole_d = inspection.nearest_neighbours(q, db, 6, metric, chunk_size=1000)
    chunk_i, chunk_d = inspection.nearest_neighbours(q, db, 6, metric, chunk_size=64)
    it_i, it_d = inspection.nearest_neighbours(q, iter(_batches(db, [50, 120, 3, 127])), 6, metric)
    for i, d in ((whole_i, whole_d), (chunk_i, chunk_d), (it_i, it_d)):
        np.testing.assert_array_equal(np.asarray(i), ref_i)
        np.testing.assert_allclose(np.asarray(d), ref_d, atol=2e-3 if metric == "l2" else 2e-6)
    np.testing.assert_array_equal(np.asarray(chunk_i), np.asarray(whole_i))
    with pytest.raises(ValueError, match="only 300 rows"):
        inspection.nearest_neighbours(q, db, 301)
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        inspection.nearest_neighbours(q, [db[:, :8]], 2)
    with pytest.raises(ValueError, match="metric"):
        inspection.nearest_neighbours(q, db, 2, "l1")


def test_features_streamed_and_image_retrieval(digits, photos):
    model, params = digits
    assert model.features == "fc4"
    feats = inspection.features(model, params, _batches(photos, [8, 8, 4]))
    full = np.asarray(model.apply(params, photos)["fc4"])
    assert feats.shape == (20, 256)
    np.testing.assert_allclose(np.asarray(feats), full, rtol=1e-5, atol=1e-5)
    conv = inspection.features(model, params, photos, "pool3")
    assert conv.shape == (20, 4 * 4 * 128)
    pix = inspection.features(model, params, _batches(photos, [10, 10]), inspection.PIXELS)
    np.testing.assert_array_equal(np.asarray(pix), photos.reshape(20, -1))
    # Retrieval with streamed database features: every query finds itself first.
    stream = inspection.iter_features(model, params, _batches(photos, [6, 6, 8]))
    queries = np.asarray(feats)[[2, 11, 19]]
    idx, dist = inspection.nearest_neighbours(queries, stream, k=3)
    np.testing.assert_array_equal(np.asarray(idx)[:, 0], [2, 11, 19])
    np.testing.assert_array_equal(np.asarray(dist)[:, 0], 0.0)
    ref_i, _ = _np_knn(queries, full, 3, "l2")
    np.testing.assert_array_equal(np.asarray(idx), ref_i)
    with pytest.raises(ValueError, match="empty"):
        inspection.features(model, params, [])
