"""Do the pictures mean something? Each technique on the TRAINED digits network against a criterion
fixed from what the picture claims to show, and the same criterion on RANDOM networks of the same
shape (`model.init(jax.random.key(k))`), which must fail it.

Held-out digits (`jaxviz.data.load_digits`, 32x32, ink bright on black). "Stroke pixels" are the ink
pixels, intensity > `STROKE` = 0.5 (about 31% of the image). Every assertion message carries the
measured numbers.

Where a random network also passes the first, natural criterion (it often does: gradients of a random
ReLU network already follow the input's edges, and random filters are pattern detectors), the test
says so, asserts it, and adds a stricter criterion that still means what it says:

  * deletion (Samek et al. 2017): erasing (setting to black) the tenth of the pixels a map ranks
    highest costs the true class at least `MIN_DROP` = 0.1 of probability and at least twice what
    erasing as many random stroke pixels costs. A picture that passes points at the pixels the
    decision rests on, not merely at ink;
  * or the random network's own value of the natural measure.

Measured when written (16 held-out digits for attribution; trained vs random key 0 unless stated):

  saliency, stroke mass / stroke area      1.35 vs 1.13, 1.07, 0.91 (keys 0-2)
  guided backprop, same                    1.60 vs 1.36 (random passes; see the test)
  SmoothGrad, same                         1.36 vs 1.13
  integrated gradients, same (trivial)     2.38 vs 2.32; positive share on the ink 0.82 vs 0.49
  deletion, drop of p(true) (random ink: 0.070 trained)
      saliency 0.32, guided backprop 0.72, SmoothGrad 0.37, IG 0.98, Grad-CAM(relu1_2) 0.54;
      random network 0.0001-0.0005
  occlusion: most damaging patch on the digit 0.94 vs 0.88 (chance 0.57); largest drop 0.35 vs 0.0004
  Grad-CAM(relu1_2) stroke ratio 2.13 vs 1.53, 0.76, 0.52; default layer relu3_2: 0.97 (no localisation)
  5-NN sharing the label (297 queries): pixels 0.970, fc4 trained 0.997, fc4 random 0.964
  t-SNE (297 digits, 300 steps), 5-NN accuracy in 2-D: pixels 0.946, trained 0.983, random 0.919
  relu3_2 top-8 patches, pairwise cosine top / random patches: 0.83 / 0.31 vs 0.81 / 0.31;
      label purity of the top images 0.69 vs 0.58
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import attribution, data, embedding, inspection, models
from jaxviz.models.base import receptive_field, spatial_shape

STROKE = 0.5  # ink threshold: "stroke pixels"
N_ATTR = 16  # held-out digits for the attribution tests
ERASE = 0.1  # deletion test: fraction of the pixels erased
MIN_DROP = 0.1  # deletion test: least mean drop of the true class's probability
RANDOM_KEYS = (0, 1, 2)  # random networks for the cheap (gradient) comparisons; key 0 for the rest
CAM_LAYER = "relu1_2"  # see test_gradcam_overlaps_the_strokes


# --------------------------------------------------------------------------- shared computation
@functools.partial(jax.jit, static_argnums=0)
def _p_true(model, params, x, y):
    """Softmax probability of class `y[n]` for each image, `[N]`."""
    return jax.nn.softmax(model.scores(params, x), axis=-1)[jnp.arange(x.shape[0]), y]


@functools.partial(jax.jit, static_argnums=0)
def _gradient_maps(model, params, x, y):
    """The cheap maps, `{name: [N, H, W]}` (non-negative except `ig`)."""
    return {
        "saliency": attribution.saliency(model, params, x, y),
        "guided_backprop": jnp.max(jnp.abs(attribution.guided_backprop(model, params, x, y)), axis=-1),
        "gradcam": attribution.gradcam(model, params, x, y, layer=CAM_LAYER),
        "gradcam_default": attribution.gradcam(model, params, x, y),
    }


@functools.partial(jax.jit, static_argnums=0)
def _costly_maps(model, params, x, y):
    sg = attribution.smoothgrad(model, params, x, y, key=jax.random.key(0), num_samples=8)
    ig = attribution.integrated_gradients(model, params, x, y, steps=8, method="gauss_legendre")
    # IG is signed: summed over colour channels, positive = evidence for the class.
    return {"smoothgrad": jnp.max(jnp.abs(sg), axis=-1), "ig": jnp.sum(ig.attributions, axis=-1)}


def stroke_share_ratio(maps, stroke) -> float:
    """Mean over images of (share of the map's mass on stroke pixels) / (stroke share of the area).

    1 means the map ignores where the ink is; maps that are zero everywhere are left out.
    """
    maps = np.asarray(maps, np.float64)
    total = maps.sum(axis=(1, 2))
    ok = total > 0
    share = (maps * stroke).sum(axis=(1, 2))[ok] / total[ok]
    return float(np.mean(share / stroke.mean(axis=(1, 2))[ok]))


def _erase(x, flat_idx):
    """`x` with the pixels `flat_idx[n]` (indices into H*W) of image n set to black."""
    n, h, w, _ = x.shape
    keep = np.ones((n, h * w), np.float32)
    np.put_along_axis(keep, flat_idx, 0.0, axis=1)
    return x * jnp.asarray(keep.reshape(n, h, w, 1), x.dtype)


def deletion(model, params, x, y, ranking, stroke) -> tuple[float, float]:
    """`(drop_top, drop_stroke)`: mean drop of the true class's probability when the `ERASE` fraction
    of pixels ranked highest by `ranking [N, H, W]` is erased, and when as many random stroke
    pixels are erased (fixed seed)."""
    n = x.shape[0]
    flat = np.asarray(ranking, np.float64).reshape(n, -1)
    q = int(round(ERASE * flat.shape[1]))
    top = np.argsort(-flat, axis=1, kind="stable")[:, :q]
    rng = np.random.default_rng(0)
    rand = np.stack([rng.choice(np.flatnonzero(s.ravel()), q, replace=False) for s in stroke])
    p0 = np.asarray(_p_true(model, params, x, y))
    p_top = np.asarray(_p_true(model, params, _erase(x, top), y))
    p_rand = np.asarray(_p_true(model, params, _erase(x, rand), y))
    return float(np.mean(p0 - p_top)), float(np.mean(p0 - p_rand))


def deletion_passes(drops) -> bool:
    drop_top, drop_stroke = drops
    return drop_top >= MIN_DROP and drop_top >= 2.0 * drop_stroke


@pytest.fixture(scope="module")
def setup(digits_params):
    model = models.get("digits")
    d = data.load_digits()
    x = jnp.asarray(d.test_images[:N_ATTR])
    y = jnp.asarray(d.test_labels[:N_ATTR])
    stroke = np.asarray(x[..., 0]) > STROKE
    trained = jax.tree_util.tree_map(jnp.asarray, digits_params)
    randoms = [model.init(jax.random.key(k)) for k in RANDOM_KEYS]
    return {"model": model, "data": d, "x": x, "y": y, "stroke": stroke, "trained": trained, "randoms": randoms}


@pytest.fixture(scope="module")
def maps(setup):
    """Cheap maps for the trained network and every random one: `{"trained": {...}, "random": [{...}]}`."""
    m, x, y = setup["model"], setup["x"], setup["y"]
    trained = jax.tree_util.tree_map(np.asarray, _gradient_maps(m, setup["trained"], x, y))
    randoms = [jax.tree_util.tree_map(np.asarray, _gradient_maps(m, p, x, y)) for p in setup["randoms"]]
    return {"trained": trained, "random": randoms}


@pytest.fixture(scope="module")
def costly_maps(setup):
    """SmoothGrad and integrated gradients for the trained network and random key 0."""
    m, x, y = setup["model"], setup["x"], setup["y"]
    return {
        "trained": jax.tree_util.tree_map(np.asarray, _costly_maps(m, setup["trained"], x, y)),
        "random": jax.tree_util.tree_map(np.asarray, _costly_maps(m, setup["randoms"][0], x, y)),
    }


# --------------------------------------------------------------------------- attribution on strokes
def test_saliency_mass_on_strokes(setup, maps):
    stroke = setup["stroke"]
    r_tr = stroke_share_ratio(maps["trained"]["saliency"], stroke)
    r_rand = [stroke_share_ratio(m["saliency"], stroke) for m in maps["random"]]
    # Natural criterion: more of the map's mass on the ink than the ink's share of the area.
    assert r_tr > 1.0, f"trained saliency: stroke mass / stroke area = {r_tr:.3f}"
    # Random ReLU networks mostly pass it too (keys 0, 1: about 1.13, 1.07; on 32 digits nine of ten
    # keys exceed 1, at most 1.25): the input gradient of any ReLU network follows the input's structure.
    assert r_rand[0] > 1.0, f"random key 0 saliency ratio {r_rand[0]:.3f} (documented to pass the natural criterion)"
    # Stricter: the trained network concentrates on the ink more than every random network.
    assert r_tr > max(r_rand), f"stroke ratio trained {r_tr:.3f} vs random {np.round(r_rand, 3).tolist()}"


def test_guided_backprop_mass_on_strokes(setup, maps):
    stroke = setup["stroke"]
    r_tr = stroke_share_ratio(maps["trained"]["guided_backprop"], stroke)
    r_rand = [stroke_share_ratio(m["guided_backprop"], stroke) for m in maps["random"]]
    assert r_tr > 1.0, f"trained guided backprop: stroke mass / stroke area = {r_tr:.3f}"
    # A random network passes just as well (key 0: about 1.36; on 32 digits ten random keys gave 1.00
    # to 1.81, three of them above the trained network's 1.67): guided backprop largely reconstructs the
    # image whatever the weights (Adebayo et al. 2018, "Sanity checks for saliency maps"; Nie et al.
    # 2018). No stroke-mass criterion separates them, so the picture's meaning is tested by deletion
    # (test_erasing_the_top_pixels_removes_the_class), which the random network fails.
    assert r_rand[0] > 1.0, f"random key 0 guided-backprop ratio {r_rand[0]:.3f} (documented to pass)"


def test_smoothgrad_mass_on_strokes(setup, costly_maps):
    stroke = setup["stroke"]
    r_tr = stroke_share_ratio(costly_maps["trained"]["smoothgrad"], stroke)
    r_rand = stroke_share_ratio(costly_maps["random"]["smoothgrad"], stroke)
    assert r_tr > 1.0, f"trained SmoothGrad: stroke mass / stroke area = {r_tr:.3f}"
    # As for saliency, the random network passes the natural criterion too (about 1.12); stricter:
    # the trained network's ratio beats the random network's own.
    assert r_rand > 1.0, f"random SmoothGrad ratio {r_rand:.3f} (documented to pass the natural criterion)"
    assert r_tr > r_rand, f"SmoothGrad stroke ratio trained {r_tr:.3f} vs random {r_rand:.3f}"


def test_integrated_gradients_mass_on_strokes(setup, costly_maps):
    stroke = setup["stroke"]
    r_tr = stroke_share_ratio(np.abs(costly_maps["trained"]["ig"]), stroke)
    r_rand = stroke_share_ratio(np.abs(costly_maps["random"]["ig"]), stroke)
    # With a black baseline the attribution is (x - 0) * average gradient: exactly zero on the black
    # background, so ANY network concentrates on the ink (random: about 2.3, trained about 2.4). The
    # stroke ratio says nothing here; deletion and the sign below do.
    assert r_tr > 1.0 and r_rand > 1.0, f"IG stroke ratio trained {r_tr:.3f}, random {r_rand:.3f}"
    # Stricter, from IG's sign: most of the attribution on the ink is evidence FOR the true class.
    # Random networks sit at a coin toss (0.49 to 0.52 over five keys, 32 digits); require two thirds.
    def positive_share(a):
        on = a * stroke
        return float(np.mean(np.maximum(on, 0).sum(axis=(1, 2)) / np.abs(on).sum(axis=(1, 2))))

    s_tr, s_rand = positive_share(costly_maps["trained"]["ig"]), positive_share(costly_maps["random"]["ig"])
    assert s_tr >= 2 / 3, f"positive share of IG on the strokes: trained {s_tr:.3f}"
    assert s_rand < 2 / 3, f"positive share of IG on the strokes: random {s_rand:.3f} (must fail)"


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "smoothgrad", "ig", "gradcam"])
def test_erasing_the_top_pixels_removes_the_class(setup, maps, costly_maps, method):
    m, x, y, stroke = setup["model"], setup["x"], setup["y"], setup["stroke"]
    # Maps rank the pixels; IG by its signed value (evidence for the class first).
    if method in ("smoothgrad", "ig"):
        source = costly_maps
    else:
        source = {"trained": maps["trained"], "random": maps["random"][0]}
    tr = deletion(m, setup["trained"], x, y, source["trained"][method], stroke)
    rnd = deletion(m, setup["randoms"][0], x, y, source["random"][method], stroke)
    msg = (
        f"{method}: erasing the top {ERASE:.0%} pixels drops p(true) by {tr[0]:.4f} (random stroke pixels: "
        f"{tr[1]:.4f}) on the trained network; random network {rnd[0]:.4f} ({rnd[1]:.4f})"
    )
    assert deletion_passes(tr), msg
    # The random network's class probabilities (about 0.1) rest on nothing: no map can find pixels
    # whose removal costs the class anything.
    assert not deletion_passes(rnd), msg


# --------------------------------------------------------------------------- occlusion
def test_occlusion_drop_is_largest_on_the_digit(setup):
    m, x, y, stroke = setup["model"], setup["x"], setup["y"], setup["stroke"]
    size, stride = 8, 4
    nh, nw = attribution.occlusion_grid(x.shape[1:3], size, stride)
    # Ink share of every patch, [N, nh, nw]; "on the digit" = at least a quarter of the patch is ink.
    cover = np.zeros((len(y), nh, nw))
    for i in range(nh):
        for j in range(nw):
            cover[:, i, j] = stroke[:, i * stride : i * stride + size, j * stride : j * stride + size].mean(axis=(1, 2))
    on_digit = cover >= 0.25
    chance = float(on_digit.mean())
    occl = jax.jit(functools.partial(attribution.occlusion, m, size=size, stride=stride, batch_size=None))

    def measure(params):
        p0 = np.asarray(_p_true(m, params, x, y))
        drop = p0[:, None, None] - np.asarray(occl(params, x, y))
        best = drop.reshape(len(y), -1).argmax(axis=1)
        located = float(np.mean(on_digit.reshape(len(y), -1)[np.arange(len(y)), best]))
        return located, float(np.mean(drop.max(axis=(1, 2))))

    (loc_tr, max_tr), (loc_rand, max_rand) = measure(setup["trained"]), measure(setup["randoms"][0])
    msg = (
        f"images whose most damaging occluder covers the digit: trained {loc_tr:.2f}, random {loc_rand:.2f} "
        f"(patches on the digit: {chance:.2f}); mean largest drop of p(true): trained {max_tr:.4f}, "
        f"random {max_rand:.4f}"
    )
    # Criterion: occluding some spot costs the class at least MIN_DROP on average, and for at least
    # 80% of the digits the most damaging spot is on the digit. The location half alone is passed by
    # a random network too (0.88 of the digits, chance 0.57): occluding ink changes any network's
    # activations most. What a random network lacks is a drop that matters (0.0004).
    assert max_tr >= MIN_DROP and loc_tr >= 0.8, msg
    assert not (max_rand >= MIN_DROP and loc_rand >= 0.8), msg


# --------------------------------------------------------------------------- Grad-CAM
def test_gradcam_overlaps_the_strokes(setup, maps):
    """Grad-CAM at `relu1_2` (full resolution, before the first pooling).

    At the default layer (relu3_2, 8x8) Grad-CAM does NOT localise the digit on this network: its
    stroke ratio is about 1 (0.97) and erasing the pixels it ranks highest costs about what erasing
    random ink costs (on 32 digits, erasing its top quarter cost 0.31, its bottom quarter 0.35). The
    digits network's fc4 reads the 4x4 pool3 map position by position, so a channel's spatially
    averaged gradient (Grad-CAM's channel weight) says little about where the channel matters, and
    each relu3_2 unit sees the whole 32x32 image. (relu2_2: about 0.14, i.e. on the background.)
    The choice of relu1_2 was made after seeing this; the default-layer numbers are in the
    assertion message for the record.
    """
    stroke = setup["stroke"]
    r_tr = stroke_share_ratio(maps["trained"]["gradcam"], stroke)
    r_rand = [stroke_share_ratio(m["gradcam"], stroke) for m in maps["random"]]
    r_default = stroke_share_ratio(maps["trained"]["gradcam_default"], stroke)
    del_default = deletion(
        setup["model"], setup["trained"], setup["x"], setup["y"], maps["trained"]["gradcam_default"], stroke
    )
    msg = (
        f"Grad-CAM({CAM_LAYER}) stroke mass / stroke area: trained {r_tr:.3f}, random {np.round(r_rand, 3).tolist()}; "
        f"(default layer relu3_2, trained: stroke ratio {r_default:.3f}, deletion drop {del_default[0]:.4f} vs "
        f"{del_default[1]:.4f} for random ink)"
    )
    assert r_tr > 1.0, msg
    # Random key 0 passes the natural criterion too (about 1.32; keys 1, 2 do not): stricter, beat
    # every random network's own ratio; deletion (test_erasing_the_top_pixels_removes_the_class)
    # is failed by the random network outright.
    assert r_tr > max(r_rand), msg


# --------------------------------------------------------------------------- features
@pytest.fixture(scope="module")
def features(setup):
    """fc4 features of the held-out and training digits, for the trained network and random key 0."""
    m, d = setup["model"], setup["data"]
    out = {}
    for name, params in (("trained", setup["trained"]), ("random", setup["randoms"][0])):
        out[name] = (
            inspection.features(m, params, d.test_images),
            inspection.features(m, params, data.batches(d.train_images, 500)),
        )
    return out


def test_nearest_neighbours_share_the_label(setup, features):
    d, k = setup["data"], 5
    queries, db = d.test_images.reshape(len(d.test_images), -1), d.train_images.reshape(len(d.train_images), -1)

    def agreement(q, base):
        idx, _ = inspection.nearest_neighbours(q, base, k)
        return float(np.mean(d.train_labels[np.asarray(idx)] == d.test_labels[:, None]))

    a_px = agreement(queries, db)
    a_tr = agreement(*features["trained"])
    a_rand = agreement(*features["random"])
    msg = (
        f"{k}-NN sharing the query's label (297 held-out queries): pixels {a_px:.4f}, fc4 trained {a_tr:.4f}, "
        f"fc4 random {a_rand:.4f}"
    )
    # Criterion: the penultimate layer's neighbours share the label more often than pixel space's.
    assert a_tr > a_px, msg
    # A random network's fc4 is a random projection of the pixels and loses a little (about 96.4%).
    assert not a_rand > a_px, msg


def test_tsne_of_features_separates_the_digits(setup, features):
    d, k = setup["data"], 5
    labels = d.test_labels
    pixels = jnp.asarray(d.test_images.reshape(len(labels), -1))
    tsne = functools.partial(embedding.tsne, key=jax.random.key(0), steps=300)
    acc = {
        name: float(embedding.knn_accuracy(tsne(pts), labels, k))
        for name, pts in (("pixels", pixels), ("trained", features["trained"][0]), ("random", features["random"][0]))
    }
    err = {name: 1.0 - a for name, a in acc.items()}
    msg = f"t-SNE of the 297 held-out digits (300 steps), {k}-NN accuracy in 2-D: " + ", ".join(
        f"{n} {a:.4f}" for n, a in acc.items()
    )
    assert acc["trained"] > acc["pixels"], msg
    # The natural criterion (better than pixels) is within noise for a random network (key 0 beat
    # the pixels in one run of 300 points): stricter, the features' t-SNE makes at most half the
    # errors of the pixels'.
    assert err["trained"] <= 0.5 * err["pixels"], msg
    assert not err["random"] <= 0.5 * err["pixels"], msg


# --------------------------------------------------------------------------- maximally activating patches
def test_max_activating_patches_are_alike_and_share_labels(setup):
    m, d = setup["model"], setup["data"]
    layer, k = "relu3_2", 8
    rf = receptive_field(m, layer)
    h, w = spatial_shape(m, layer, d.train_images.shape[1:3])

    def cosine(patches):
        p = np.asarray(patches, np.float64).reshape(patches.shape[0], -1)
        p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        s = p @ p.T
        return (s.sum() - np.trace(s)) / (len(p) * (len(p) - 1))

    def measure(params):
        top = inspection.max_activating_patches(
            m, params, data.batches(d.train_images, 500), layer, np.arange(m.layer(layer).channels), k=k,
            distinct_images=True, fill=0.0,
        )
        # (Nearly) dead channels, silent on all but fewer than k images, have no top-k: leave them out.
        live = np.flatnonzero(np.asarray(top.values)[:, -1] > 0)
        top = top._replace(patches=top.patches[live], image_index=top.image_index[live])
        # As many random patches: for each channel, k receptive fields at random positions of k
        # different random images, cut in one call.
        rng = np.random.default_rng(0)
        idx = np.concatenate([rng.choice(len(d.train_images), k, replace=False) for _ in live])
        ys, xs = rng.integers(0, h, len(idx)), rng.integers(0, w, len(idx))
        crops = np.asarray(
            inspection.crop_receptive_field(m, d.train_images, layer, ys, xs, image_index=idx, fill=0.0, rf=rf)
        ).reshape(len(live), k, *rf.size, 3)
        rand_cos = [cosine(c) for c in crops]
        top_cos = float(np.mean([cosine(p) for p in np.asarray(top.patches)]))
        labels = d.train_labels[np.asarray(top.image_index)]  # [channels, k]
        purity = float(np.mean([np.bincount(row, minlength=10).max() / k for row in labels]))
        return top_cos, float(np.mean(rand_cos)), purity, len(live)

    cos_tr, rcos_tr, pur_tr, n_tr = measure(setup["trained"])
    cos_rand, rcos_rand, pur_rand, n_rand = measure(setup["randoms"][0])
    msg = (
        f"{layer}, top {k} of 1500 training digits: mean pairwise cosine of the top patches / of random patches: "
        f"trained {cos_tr:.3f} / {rcos_tr:.3f} ({n_tr} live channels), random {cos_rand:.3f} / {rcos_rand:.3f} "
        f"({n_rand}); label purity of the top images: trained {pur_tr:.3f}, random {pur_rand:.3f}"
    )
    # Natural criterion: a channel's top patches are more alike than random patches of the same size.
    assert cos_tr > rcos_tr, msg
    # A random network passes it just as well (random filters are pattern detectors too): its top
    # patches are even slightly more alike. Stricter, about what was learnt: the digits behind a
    # channel's top patches share their label more often than a random network's.
    assert cos_rand > rcos_rand, msg
    assert pur_tr > pur_rand, msg
