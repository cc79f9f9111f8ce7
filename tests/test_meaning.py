"""Do the pictures mean something? Each technique on the TRAINED digits network against a criterion
fixed from what the picture claims to show, and the same criterion on RANDOM networks of the same
shape (`model.init(jax.random.key(k))`), which must fail it.

Training is deterministic on one machine but not across CPUs: elsewhere the session fixture trains
ANOTHER network of the same recipe. So every criterion here was chosen over five trainings of the
recipe (seed k: `init_seed=k`, `shuffle_seed=k+1`; k = 0 is the recipe), which simulate other
machines, and five random networks, and kept only where every training passes and every random
network fails with margin; thresholds sit between the worst training and the best random network.
`python benchmarks/meaning_seeds.py` reproduces the table (same `measure_*` functions as below).

Held-out digits (`jaxviz.data.load_digits`, 32x32, ink bright on black); the first `N_ATTR` = 16 for
the maps. "Ink" = pixels brighter than `STROKE` = 0.5 (about 31% of the image). Deletion (Samek et
al. 2017): erasing (to black) the `ERASE` = 10% of the pixels a map ranks first; "ink" column: as
many random ink pixels instead. Stroke ratio: the map's share of mass on ink / the ink's share of
the area (1 = ignores the ink).

Measured 2026-11-29 (digits recipe version 3: Adam 1e-3 with cosine decay, 6 epochs; x86_64, 2 CPUs,
jax 0.10.2 CPU); the random columns measured again on 2026-12-02 (AMD EPYC, 2 vCPUs), after
`model.init` began drawing its weights in chunks (2026-11-30: other random networks for the same
keys; the recipe's own training, seed 0, measured again that day, gave the numbers below to the
last digit); trained seeds 0-4 | random keys 0-4 | criterion:

  held-out accuracy            0.993 0.997 0.993 0.997 0.993 | 0.07-0.15
  deletion, drop of p(true):
    saliency                   0.164 0.075 0.351 0.387 0.392 | <= 0.0003 | >= 0.03
    guided backprop            0.405 0.105 0.709 0.633 0.644 | <= 0.0001 | >= 0.03
    SmoothGrad                 0.187 0.100 0.398 0.422 0.378 | <= 0.0001 | >= 0.03
    integrated gradients       0.886 0.931 0.878 0.976 0.941 | <= 0.0009 | >= 0.03, >= 2x ink
    Grad-CAM relu3_2 (default) 0.142 0.306 0.366 0.142 0.114 | <= 0.0001 | >= 0.03
    Grad-CAM relu1_2           0.311 0.523 0.508 0.331 0.322 | <= 0.0001 | >= 0.03, >= 2x ink
    random ink (trained)       0.037 0.055 0.009 0.098 0.036 |           |
    (top / ink: IG 10-96, Grad-CAM relu1_2 3.4-56; saliency 1.4-39, guided backprop 1.9-78,
    SmoothGrad 1.8-44, Grad-CAM relu3_2 1.5-40: the last four not asserted against ink)
  IG, positive share on ink    0.823 0.830 0.803 0.828 0.806 | 0.465-0.510 | >= 2/3
  occlusion 8x8, largest drop  0.349 0.399 0.412 0.387 0.362 | <= 0.0005 | >= 0.1
  5-NN in fc4, errors / pixels' (pixels: 0.970 of the neighbours share the label)
                               0.289 0.333 0.333 0.289 0.511 | 0.867-1.844 | <= 0.75
  t-SNE (300 steps), 5-NN label disagreement in 2-D / pixels' t-SNE's
                               0.312 0.328 0.360 0.312 0.416 | 0.888-1.704 | <= 0.66
  relu3_2 top-8 patches, label purity
                               0.648 0.674 0.677 0.704 0.668 | 0.551-0.598 | >= 0.62
  not separating, so not asserted:
    stroke ratio, saliency     1.180 0.875 1.525 1.373 1.269 | 0.974-1.416
    stroke ratio, SmoothGrad   1.197 0.871 1.529 1.392 1.294 | 0.956-1.363
    stroke ratio, guided bp    1.457 1.056 1.921 1.684 1.529 | 0.691-2.136
    stroke ratio, IG           2.329 2.167 2.593 2.541 2.415 | 2.097-2.473 (zero off the ink by
                                                               construction, black baseline)
    stroke ratio, Grad-CAM relu3_2  0.915 1.322 1.183 0.924 0.922 | 0.713-0.919
    stroke ratio, Grad-CAM relu1_2  1.158 1.584 2.080 1.317 1.401 | 0.299-1.139
    occlusion, top patch on the digit  0.94-1.00 | 0.44-1.00
    t-SNE 5-NN accuracy in 2-D   0.973-0.983 | 0.892-0.970 (pixels 0.946)
    top patches' mutual cosine vs random patches'  0.81-0.84 vs 0.30-0.31 | 0.74-0.81 vs 0.31

A sixth training (seed 5), made after the thresholds were fixed, passed every criterion: deletion
0.27-0.96 (relu1_2 Grad-CAM 4.5x ink, IG 16x), IG positive share 0.815, occlusion 0.347, 5-NN 0.444,
t-SNE 0.416, purity 0.662 (accuracy 0.997, trained in 76 s on the shared 2-CPU machine). With the
random networks of 2026-12-02 every criterion still separates; the narrowest is the patch purity
(best random 0.598, worst training 0.648, threshold 0.62); the 5-NN criterion's best random network
is key 2 (0.867; the test uses key 0, 1.356).

The earlier recipe (constant learning rate) gave, over the same five seeds, held-out accuracy 0.956
to 0.993 (seed 3 below the 97% the project promises: hence the decaying rate), and Grad-CAM at
relu1_2 a stroke ratio of 0.97-1.93 against 0.52-1.86 for random networks: the stroke-overlap test
that used to stand here (trained above random keys 0-2) failed on a fresh clone, 1.21 against 1.52.

Why Grad-CAM does not localise the ink at its default layer: the digits network's fc4 reads the 4x4
pool3 map position by position, so Grad-CAM's channel weights (the gradient averaged over positions)
do not say where a channel matters. A global-average-pooling head (so that relu3_2 carries position
as in CAM, Zhou et al. 2016) was tried: a GAP after pool3 or after relu3_2, with fc4 or without,
trained 6-10 epochs (Adam 1e-3 to 3e-3, constant or cosine). Held-out accuracy 0.926-0.983 (97% took
8 or more epochs, a third more training), and the default-layer stroke ratio 1.01-1.28 against
0.77-1.16 for random networks of the same heads: no threshold separates them either. A trained
network's evidence is not necessarily the ink: Grad-CAM of such networks showed the holes of a 0,
and the empty image border (where zero padding tells a GAP network where it is). So the
architecture was kept, and what holds is asserted: the map's top pixels carry the decision
(deletion), at relu1_2 more than ink as such.
"""

import dataclasses
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
MIN_DROP = 0.03  # deletion test: least mean drop of the true class's probability
INK_FACTOR = 2.0  # deletion test, sharper maps: and at least this many times the drop from erasing random ink
OCCLUSION_MIN_DROP = 0.1  # occlusion test: least mean drop of p(true) at the most damaging patch
RANDOM_KEYS = (0, 1, 2)  # random networks for the cheap (gradient) comparisons; key 0 for the costly ones
CAM_FINE = "relu1_2"  # Grad-CAM at full resolution, besides the default layer
PATCH_LAYER, PATCH_K = "relu3_2", 8
KNN_K = 5


# --------------------------------------------------------------------------- shared computation
@functools.partial(jax.jit, static_argnums=0)
def _p_true(model, params, x, y):
    """Softmax probability of class `y[n]` for each image, `[N]`."""
    return jax.nn.softmax(model.scores(params, x), axis=-1)[jnp.arange(x.shape[0]), y]


@functools.partial(jax.jit, static_argnums=0)
def _gradient_maps(model, params, x, y):
    """The cheap maps, `{name: [N, H, W]}`, non-negative."""
    return {
        "saliency": attribution.saliency(model, params, x, y),
        "guided_backprop": jnp.max(jnp.abs(attribution.guided_backprop(model, params, x, y)), axis=-1),
        "gradcam": attribution.gradcam(model, params, x, y),
        "gradcam_fine": attribution.gradcam(model, params, x, y, layer=CAM_FINE),
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


#: Maps tested by deletion; those that also beat erasing random ink by `INK_FACTOR` on every training.
DELETION_METHODS = ("saliency", "guided_backprop", "smoothgrad", "ig", "gradcam", "gradcam_fine")
SHARP_METHODS = ("ig", "gradcam_fine")


def positive_share(ig, stroke) -> float:
    """Mean over images of the share of IG's attribution on the ink that is positive."""
    on = ig * stroke
    return float(np.mean(np.maximum(on, 0).sum(axis=(1, 2)) / np.abs(on).sum(axis=(1, 2))))


# --------------------------------------------------------------------------- measures of one network
# Each `measure_*(model, params, ctx)` returns `{name: float}`; the tests below and
# benchmarks/meaning_seeds.py (trained networks of several seeds, random networks of several keys)
# read the same numbers.
def context() -> dict:
    """The held-out digits and what the measures share: `x [N_ATTR, 32, 32, 3]`, `y`, `stroke`."""
    d = data.load_digits()
    x = jnp.asarray(d.test_images[:N_ATTR])
    y = jnp.asarray(d.test_labels[:N_ATTR])
    return {"data": d, "x": x, "y": y, "stroke": np.asarray(x[..., 0]) > STROKE}


def _deletion(out: dict, name: str, drops: tuple[float, float]) -> None:
    """Record `deletion_<name>` (drop of p(true) erasing the map's top pixels), `..._ink` (erasing as
    many random ink pixels) and `..._vs_ink` (their ratio; 0 when erasing ink costs nothing or less)."""
    top, ink = drops
    out[f"deletion_{name}"], out[f"deletion_{name}_ink"] = top, ink
    out[f"deletion_{name}_vs_ink"] = top / ink if ink > 1e-3 else (np.inf if top >= MIN_DROP else 0.0)


def measure_gradient_maps(model, params, ctx) -> dict:
    x, y, stroke = ctx["x"], ctx["y"], ctx["stroke"]
    maps = jax.tree_util.tree_map(np.asarray, _gradient_maps(model, params, x, y))
    out = {f"ratio_{k}": stroke_share_ratio(v, stroke) for k, v in maps.items()}
    for k in ("saliency", "guided_backprop", "gradcam", "gradcam_fine"):
        _deletion(out, k, deletion(model, params, x, y, maps[k], stroke))
    return out


def measure_costly_maps(model, params, ctx) -> dict:
    x, y, stroke = ctx["x"], ctx["y"], ctx["stroke"]
    maps = jax.tree_util.tree_map(np.asarray, _costly_maps(model, params, x, y))
    out = {
        "ratio_smoothgrad": stroke_share_ratio(maps["smoothgrad"], stroke),
        "ratio_ig": stroke_share_ratio(np.abs(maps["ig"]), stroke),
        "ig_positive_share": positive_share(maps["ig"], stroke),
    }
    # Maps rank the pixels; IG by its signed value (evidence for the class first).
    for k in ("smoothgrad", "ig"):
        _deletion(out, k, deletion(model, params, x, y, maps[k], stroke))
    return out


OCCLUSION_SIZE, OCCLUSION_STRIDE = 8, 4


def _on_digit(ctx):
    """`[N, nh, nw]` bool: occlusion patches at least a quarter ink ("on the digit")."""
    stroke, size, stride = ctx["stroke"], OCCLUSION_SIZE, OCCLUSION_STRIDE
    nh, nw = attribution.occlusion_grid(ctx["x"].shape[1:3], size, stride)
    cover = np.zeros((len(stroke), nh, nw))
    for i in range(nh):
        for j in range(nw):
            cover[:, i, j] = stroke[:, i * stride : i * stride + size, j * stride : j * stride + size].mean(axis=(1, 2))
    return cover >= 0.25


def measure_occlusion(model, params, ctx) -> dict:
    x, y = ctx["x"], ctx["y"]
    on_digit = _on_digit(ctx)
    occl = attribution.occlusion(model, params, x, y, size=OCCLUSION_SIZE, stride=OCCLUSION_STRIDE, batch_size=None)
    drop = np.asarray(_p_true(model, params, x, y))[:, None, None] - np.asarray(occl)
    best = drop.reshape(len(y), -1).argmax(axis=1)
    return {
        "occlusion_located": float(np.mean(on_digit.reshape(len(y), -1)[np.arange(len(y)), best])),
        "occlusion_max_drop": float(np.mean(drop.max(axis=(1, 2)))),
    }


def _knn_agreement(d, queries, db) -> float:
    """Fraction of the `KNN_K` nearest training digits sharing each held-out query's label."""
    idx, _ = inspection.nearest_neighbours(queries, db, KNN_K)
    return float(np.mean(d.train_labels[np.asarray(idx)] == d.test_labels[:, None]))


def _tsne(points, labels) -> dict:
    """t-SNE (300 steps, key 0) of `points [M, D]`: `{"accuracy"}` of the leave-one-out 5-NN
    classifier in 2-D (`embedding.knn_accuracy`, a majority vote: a count of 297 right or wrong), and
    `{"agreement"}`, the share of the 5 nearest other points in 2-D sharing each point's label
    (5 x 297 votes, a smoother measure of the same separation)."""
    emb = embedding.tsne(jnp.asarray(points), key=jax.random.key(0), steps=300)
    e = np.asarray(emb, np.float64)
    dist = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    near = np.argsort(dist, axis=1, kind="stable")[:, :KNN_K]
    return {
        "accuracy": float(embedding.knn_accuracy(emb, labels, KNN_K)),
        "agreement": float(np.mean(labels[near] == labels[:, None])),
    }


def pixel_references(ctx) -> dict:
    """The same measures in pixel space (no network): the bar features must beat."""
    d = ctx["data"]
    q, db = d.test_images.reshape(len(d.test_images), -1), d.train_images.reshape(len(d.train_images), -1)
    t = _tsne(q, d.test_labels)
    return {"knn": _knn_agreement(d, q, db), "tsne": t["accuracy"], "tsne_agreement": t["agreement"]}


def measure_features(model, params, ctx) -> dict:
    """5-NN label agreement of the held-out digits' fc4 features among the training digits', and the
    separation of their t-SNE (297 digits, 300 steps): each also as a fraction of the errors made in
    pixel space (`ctx["pixels"]`, from `pixel_references`); < 1 is better than pixels."""
    d, ref = ctx["data"], ctx["pixels"]
    q = inspection.features(model, params, d.test_images)
    db = inspection.features(model, params, data.batches(d.train_images, 500))
    knn, t = _knn_agreement(d, q, db), _tsne(q, d.test_labels)
    return {
        "knn_agreement": knn,
        "knn_error_vs_pixels": (1 - knn) / (1 - ref["knn"]),
        "tsne_accuracy": t["accuracy"],
        "tsne_error_vs_pixels": (1 - t["accuracy"]) / (1 - ref["tsne"]),
        "tsne_agreement": t["agreement"],
        "tsne_agreement_error_vs_pixels": (1 - t["agreement"]) / (1 - ref["tsne_agreement"]),
    }


def _cosine(patches) -> float:
    """Mean pairwise cosine similarity of `[k, ...]` patches."""
    p = np.asarray(patches, np.float64).reshape(patches.shape[0], -1)
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    s = p @ p.T
    return float((s.sum() - np.trace(s)) / (len(p) * (len(p) - 1)))


def measure_patches(model, params, ctx) -> dict:
    """Top-`PATCH_K` patches of every live `PATCH_LAYER` channel over the 1500 training digits: mean
    pairwise cosine of the top patches and of as many random patches, and the label purity of the
    top images (share of the most common label)."""
    d, layer, k = ctx["data"], PATCH_LAYER, PATCH_K
    rf = receptive_field(model, layer)
    h, w = spatial_shape(model, layer, d.train_images.shape[1:3])
    top = inspection.max_activating_patches(
        model, params, data.batches(d.train_images, 500), layer, np.arange(model.layer(layer).channels), k=k,
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
        inspection.crop_receptive_field(model, d.train_images, layer, ys, xs, image_index=idx, fill=0.0, rf=rf)
    ).reshape(len(live), k, *rf.size, 3)
    labels = d.train_labels[np.asarray(top.image_index)]  # [channels, k]
    return {
        "patch_cosine_top": float(np.mean([_cosine(p) for p in np.asarray(top.patches)])),
        "patch_cosine_random": float(np.mean([_cosine(c) for c in crops])),
        "patch_purity": float(np.mean([np.bincount(row, minlength=10).max() / k for row in labels])),
        "patch_live_channels": float(len(live)),
    }


MEASURES = (measure_gradient_maps, measure_costly_maps, measure_occlusion, measure_features, measure_patches)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def setup(digits_params):
    model = models.get("digits")
    ctx = context()
    trained = jax.tree_util.tree_map(jnp.asarray, digits_params)
    randoms = [model.init(jax.random.key(k)) for k in RANDOM_KEYS]
    return {"model": model, "ctx": ctx, "trained": trained, "randoms": randoms}


def _measured(setup, fn, random_keys):
    m, ctx = setup["model"], setup["ctx"]
    return {
        "trained": fn(m, setup["trained"], ctx),
        "random": [fn(m, setup["randoms"][RANDOM_KEYS.index(k)], ctx) for k in random_keys],
    }


@pytest.fixture(scope="module")
def grads(setup):
    return _measured(setup, measure_gradient_maps, RANDOM_KEYS)


@pytest.fixture(scope="module")
def costly(setup):
    return _measured(setup, measure_costly_maps, RANDOM_KEYS[:1])


def _msg(name, res, fmt=".3f"):
    rnd = ", ".join(f"{r[name]:{fmt}}" for r in res["random"])
    return f"{name}: trained {res['trained'][name]:{fmt}}, random {rnd}"


# --------------------------------------------------------------------------- criteria
@dataclasses.dataclass(frozen=True)
class Criterion:
    """A trained network passes when `measure >= threshold` (`above`) or `<= threshold`; every
    random network must fail. Thresholds sit between the worst trained seed and the best random key
    of the table above, with margin."""

    key: str
    threshold: float
    above: bool = True

    def passes_value(self, value: float) -> bool:
        return value >= self.threshold if self.above else value <= self.threshold

    def passes(self, measures: dict) -> bool:
        return self.passes_value(measures[self.key])

    def describe(self) -> str:
        return f"{'>=' if self.above else '<='} {self.threshold:g}"


CRITERIA = (
    *(Criterion(f"deletion_{m}", MIN_DROP) for m in DELETION_METHODS),
    *(Criterion(f"deletion_{m}_vs_ink", INK_FACTOR) for m in SHARP_METHODS),
    Criterion("ig_positive_share", 2 / 3),
    Criterion("occlusion_max_drop", OCCLUSION_MIN_DROP),
    Criterion("knn_error_vs_pixels", 0.75, above=False),
    Criterion("tsne_agreement_error_vs_pixels", 0.66, above=False),
    Criterion("patch_purity", 0.62),
)
CRITERION = {c.key: c for c in CRITERIA}


def _check(key, res, msg=None):
    """Every trained network passes `CRITERION[key]` and every random one fails it."""
    c = CRITERION[key]
    msg = f"{msg or _msg(key, res)} (criterion: {key} {c.describe()})"
    assert c.passes(res["trained"]), msg
    for r in res["random"]:
        assert not c.passes(r), msg


# --------------------------------------------------------------------------- attribution
@pytest.mark.parametrize("method", DELETION_METHODS)
def test_erasing_the_top_pixels_removes_the_class(grads, costly, method):
    """Deletion (Samek et al. 2017): erasing (to black) the `ERASE` share of the pixels a map ranks
    first costs the true class at least `MIN_DROP` of probability. A random network's class
    probabilities (about 0.1) rest on nothing: no map finds pixels that matter (at most 0.0005).
    For integrated gradients and Grad-CAM at relu1_2 the drop is also at least `INK_FACTOR` times
    what erasing as many random ink pixels costs: these maps point at what the decision rests on,
    not merely at ink. (Saliency, guided backprop, SmoothGrad and Grad-CAM at the default layer
    beat random ink by as little as 1.4x on some trainings: not asserted.)"""
    res = costly if method in ("smoothgrad", "ig") else grads
    key = f"deletion_{method}"
    ink = ", ".join(f"{r[key + '_ink']:.4f}" for r in (res["trained"], *res["random"]))
    msg = f"{_msg(key, res, '.4f')}; erasing as many random ink pixels: {ink} (trained first)"
    _check(key, res, msg)
    if method in SHARP_METHODS:
        _check(f"{key}_vs_ink", res, msg)


def test_integrated_gradients_on_the_strokes_is_evidence_for_the_class(costly):
    """With a black baseline IG is (x - 0) * average gradient: zero on the black background, so ANY
    network's attribution lies on the ink (stroke ratio about 2.2-2.5, trained or random). Its sign
    says more: most of the attribution on the ink is evidence FOR the true class; random networks
    sit at a coin toss."""
    _check("ig_positive_share", costly)


# --------------------------------------------------------------------------- occlusion
@pytest.fixture(scope="module")
def occlusion(setup):
    return _measured(setup, measure_occlusion, RANDOM_KEYS[:1])


def test_occluding_the_digit_costs_the_class(occlusion):
    """Occluding some 8x8 patch costs the true class at least `MIN_DROP` on average; a random
    network's probabilities do not move (about 0.0003). Where the most damaging patch lies is not
    asserted: a random network's is on the digit about as often (0.50-0.94 of the digits over five
    keys; trained 0.75-1.0), occluding ink changes any network's activations most."""
    _check("occlusion_max_drop", occlusion)


# --------------------------------------------------------------------------- features
@pytest.fixture(scope="module")
def features(setup):
    ctx = setup["ctx"]
    ctx.setdefault("pixels", pixel_references(ctx))
    return _measured(setup, measure_features, RANDOM_KEYS[:1])


def test_nearest_neighbours_share_the_label(features):
    """The 5 nearest training digits of each held-out digit in fc4 space share its label more
    often than in pixel space (errors relative to pixels' < 1); a random network's fc4, a random
    projection of the pixels, loses a little instead."""
    _check("knn_error_vs_pixels", features)


def test_tsne_of_features_separates_the_digits(features):
    """t-SNE of the held-out digits' fc4 features (300 steps): the 5 nearest other digits in 2-D
    disagree with a digit's label at most 0.66 times as often as in the pixels' t-SNE; random
    features disagree more often than pixels. (The majority-vote 5-NN accuracy in 2-D counts 297
    right or wrong answers: trained 0.973-0.983, random 0.919-0.953, pixels 0.946 - too coarse to
    separate with margin; recorded in the table, not asserted.)"""
    _check("tsne_agreement_error_vs_pixels", features)


# --------------------------------------------------------------------------- maximally activating patches
def test_max_activating_patches_share_labels(setup):
    """A relu3_2 channel's top-8 patches come from digits that share their label more often than a
    random network's. (That the top patches are more alike than random patches is true of random
    networks just as much: random filters are pattern detectors too; recorded, not a criterion.)"""
    res = _measured(setup, measure_patches, RANDOM_KEYS[:1])
    for r in (res["trained"], *res["random"]):
        assert r["patch_cosine_top"] > r["patch_cosine_random"], _msg("patch_cosine_top", res)
    _check("patch_purity", res)
