"""Stochastic transforms and regularisers (loss terms and Yosinski's between-step operations)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.ndimage

from jaxviz.synthesis import losses
from jaxviz.synthesis import regularizers as R
from jaxviz.synthesis import transforms as T


def _images(shape=(2, 13, 11, 3), seed=0, dtype=jnp.float32):
    return jax.random.uniform(jax.random.key(seed), shape, dtype)


# --------------------------------------------------------------------------- transforms
@pytest.mark.parametrize(
    "t,out",
    [
        (T.Pad(3), (2, 19, 17, 3)),
        (T.Pad(2, mode="reflect"), (2, 17, 15, 3)),
        (T.Jitter(4), (2, 9, 7, 3)),
        (T.Jitter(4, mode="roll"), (2, 13, 11, 3)),
        (T.Jitter(3, mode="translate"), (2, 13, 11, 3)),
        (T.RandomScale((0.9, 1.1)), (2, 13, 11, 3)),
        (T.RandomRotate((-10, 10)), (2, 13, 11, 3)),
        (T.standard_transforms(), (2, 25, 23, 3)),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, tuple) else "",
)
def test_shapes_dtype_determinism(t, out):
    x = _images()
    y = t(jax.random.key(1), x)
    assert y.shape == out and y.dtype == x.dtype
    assert T.output_shape(t, x.shape) == out
    np.testing.assert_array_equal(np.asarray(y), np.asarray(t(jax.random.key(1), x)))
    if not isinstance(t, T.Pad):
        outs = {np.asarray(t(jax.random.key(k), x)).tobytes() for k in range(8)}
        assert len(outs) > 1, "different keys must give different draws"


def test_jitter_modes_match_their_definitions():
    x = np.asarray(_images((1, 10, 12, 2)))
    d = 3
    crops = {x[:, i : i + 10 - d, j : j + 12 - d].tobytes() for i in range(d + 1) for j in range(d + 1)}
    rolls = {np.roll(x, (i, j), axis=(1, 2)).tobytes() for i in range(-d, d + 1) for j in range(-d, d + 1)}
    seen_crops, seen_rolls = set(), set()
    for k in range(40):
        c = np.asarray(T.Jitter(d)(jax.random.key(k), jnp.asarray(x))).tobytes()
        r = np.asarray(T.Jitter(d, mode="roll")(jax.random.key(k), jnp.asarray(x))).tobytes()
        assert c in crops and r in rolls
        seen_crops.add(c)
        seen_rolls.add(r)
    assert len(seen_crops) > 5 and len(seen_rolls) > 5
    tr = np.asarray(T.Jitter(d, mode="translate")(jax.random.key(0), jnp.asarray(x)))
    padded = np.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
    options = [padded[:, d - i : d - i + 10, d - j : d - j + 12] for i in range(d) for j in range(d)]
    assert any(np.array_equal(tr, o) for o in options)


def test_scale_and_rotate_match_scipy_bilinear():
    x = np.asarray(_images((1, 9, 12, 2), seed=3), np.float64)
    h, w = 9, 12
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    gy, gx = np.meshgrid(np.arange(h) - c[0], np.arange(w) - c[1], indexing="ij")

    def scipy_warp(m, fill):
        # "grid-constant": the fill is interpolated with the edge pixels, as kornia's zero padding.
        ys = c[0] + m[0, 0] * gy + m[0, 1] * gx
        xs = c[1] + m[1, 0] * gy + m[1, 1] * gx
        return np.stack(
            [scipy.ndimage.map_coordinates(x[0, ..., ch], [ys, xs], order=1, mode="grid-constant", cval=fill) for ch in range(2)], -1
        )

    for s in (1.3, 0.8):  # zoom in (border cut off) and out (margin filled, interpolated with the fill)
        got = np.asarray(T.RandomScale((s,), fill=0.25)(jax.random.key(0), jnp.asarray(x, jnp.float32)))[0]
        np.testing.assert_allclose(got, scipy_warp(np.eye(2) / s, 0.25), atol=1e-5)
    a = np.deg2rad(17.0)
    got = np.asarray(T.RandomRotate((17.0,))(jax.random.key(0), jnp.asarray(x, jnp.float32)))[0]
    want = scipy_warp(np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]), 0.0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # 90 degrees on a square image is np.rot90 (counter-clockwise), and scale 1 is the identity.
    sq = _images((1, 8, 8, 1))
    np.testing.assert_allclose(np.asarray(T.RandomRotate((90,))(jax.random.key(0), sq)), np.rot90(np.asarray(sq), 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(T.RandomScale((1.0,))(jax.random.key(0), sq)), np.asarray(sq), atol=1e-6)


def test_standard_transforms_numbers():
    t = T.standard_transforms()
    pad, j8, scale, rot, j4 = t.transforms
    assert (pad.width, pad.mode, pad.value) == (12, "constant", 0.5)
    assert (j8.d, j8.mode, j4.d) == (8, "crop", 4)
    np.testing.assert_allclose(scale.scales, [0.90, 0.92, 0.94, 0.96, 0.98, 1.0, 1.02, 1.04, 1.06, 1.08, 1.10])
    assert len(rot.degrees) == 26 and rot.degrees.count(0.0) == 6 and min(rot.degrees) == -10 and max(rot.degrees) == 10
    assert hash(t) == hash(T.standard_transforms())


def test_transform_errors():
    with pytest.raises(ValueError, match="images larger"):
        T.Jitter(8)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        T.Pad(2)(jax.random.key(0), jnp.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="positive"):
        T.RandomScale((0.0, 1.0))


# --------------------------------------------------------------------------- loss terms
def test_loss_terms_match_numpy():
    x = np.asarray(_images((2, 6, 5, 3), seed=4), np.float64)
    xj = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(R.l1(xj, 0.5), np.abs(x - 0.5).sum((1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(R.l2(xj), np.sqrt(1e-6 + (x**2).sum((1, 2, 3))), rtol=1e-5)
    np.testing.assert_allclose(R.alpha_norm(xj, 6.0, 0.5), (np.abs(x - 0.5) ** 6).sum((1, 2, 3)), rtol=1e-5)
    dy = x[:, 1:] - x[:, :-1]
    dx = x[:, :, 1:] - x[:, :, :-1]
    # One total variation in the library: the regularisers' is the losses' (its forms are tested
    # against torch in test_style_losses.py); lucid's form and Mahendran & Vedaldi's here.
    assert R.total_variation is losses.total_variation and R.TV_FORMS == losses.TV_FORMS
    np.testing.assert_allclose(R.total_variation(xj, form="lucid"), np.abs(dy).sum((1, 2, 3)) + np.abs(dx).sum((1, 2, 3)),
                               rtol=1e-5)
    sq = (dy[:, :, :-1] ** 2 + dx[:, :-1] ** 2).sum(-1)  # channels summed inside the power (the paper)
    np.testing.assert_allclose(R.total_variation(xj, form="beta"), sq.mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(R.total_variation(xj, form="beta", beta=1.5), (sq**0.75).mean((1, 2)), rtol=1e-5)
    g = jax.grad(lambda z: R.total_variation(z, form="beta", beta=1.0).sum())(jnp.zeros((1, 4, 4, 1)))
    assert np.isfinite(np.asarray(g)).all() and not np.asarray(g).any()
    with pytest.raises(ValueError, match="form"):
        R.total_variation(xj, form="l3")
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="beta must be"):
            R.total_variation(xj, form="beta", beta=bad)
    with pytest.raises(ValueError, match="'beta' total-variation form only"):
        R.total_variation(xj, form="l1", beta=1.0)


# --------------------------------------------------------------------------- between-step operations
@pytest.mark.parametrize("sigma,shape", [(1.0, (9, 7)), (0.5, (6, 6)), (2.0, (5, 11))])
def test_gaussian_filter_matches_scipy(sigma, shape):
    x = np.asarray(_images((1, *shape, 2), seed=5), np.float64)
    got = np.asarray(R.gaussian_filter(jnp.asarray(x, jnp.float32), sigma))
    want = np.stack([scipy.ndimage.gaussian_filter(x[0, ..., c], sigma) for c in range(2)], -1)[None]
    np.testing.assert_allclose(got, want, atol=1e-6)


def _apply(tx, params, updates, grad, steps=1):
    state = tx.init(params)
    out = []
    for _ in range(steps):
        u, state = tx.update(updates, state, params, grad=grad)
        params = optax.apply_updates(params, u)
        out.append(params)
    return out


@pytest.mark.parametrize(
    "tx",
    [
        R.decay(0.1, 0.5),
        R.gaussian_blur(1.0, every=2),
        R.zero_small_values(30),
        R.zero_small_norms(30),
        R.zero_small_contributions(30),
        R.zero_small_contributions(30, absolute=True),
        R.clip_to_range(0.2, 0.8),
    ],
)
def test_every_between_step_operation_changes_the_picture(tx):
    x = _images((1, 8, 8, 3), seed=6) * 1.2 - 0.1  # partly outside [0, 1]
    g = jax.random.normal(jax.random.key(7), x.shape)
    (y,) = _apply(tx, x, jnp.zeros_like(x), g)
    assert float(jnp.abs(y - x).max()) > 1e-3


def yosinski_numpy_step(x, g_loss, lr, ii, *, decay, blur_radius, blur_every, small_val, small_norm, benefit, abs_benefit, clip):
    """One iteration of Yosinski's `_optimize` (SYNTHESIS.md section 2) on an [H, W, C] image, in
    numpy/scipy, with the loss gradient `g_loss = -grad_objective`."""
    grad_obj = -g_loss
    x = x + lr * grad_obj
    x = x * (1 - decay)
    if blur_radius > 0 and ii % blur_every == 0:
        x = np.stack([scipy.ndimage.gaussian_filter(x[..., c], blur_radius) for c in range(x.shape[-1])], -1)
    if small_val:
        x[np.abs(x) < np.percentile(np.abs(x), small_val)] = 0
    if small_norm:
        norms = np.linalg.norm(x, axis=-1)
        x[norms < np.percentile(norms, small_norm)] = 0
    if benefit:
        b = (grad_obj * -x).sum(-1)
        x[b < np.percentile(b, benefit)] = 0
    if abs_benefit:
        b = np.abs((grad_obj * -x).sum(-1))
        x[b < np.percentile(b, abs_benefit)] = 0
    return np.clip(x, *clip)


def test_yosinski_order_matches_numpy_reference():
    settings = dict(decay=0.05, blur_radius=1.0, blur_every=2, small_val=10, small_norm=20, benefit=15, abs_benefit=25, clip=(-0.3, 0.9))
    tx = optax.chain(
        optax.sgd(0.3),
        R.yosinski(
            decay_rate=0.05,
            blur_radius=1.0,
            blur_every=2,
            small_val_percentile=10,
            small_norm_percentile=20,
            px_benefit_percentile=15,
            px_abs_benefit_percentile=25,
            clip=(-0.3, 0.9),
        ),
    )
    x = np.asarray(_images((9, 8, 3), seed=8), np.float64) - 0.4
    xj = jnp.asarray(x, jnp.float32)
    state = tx.init(xj)
    want = x
    for ii in range(3):  # blur at ii = 0 and 2, not 1
        g = np.asarray(jax.random.normal(jax.random.key(10 + ii), x.shape), np.float64)
        u, state = tx.update(jnp.asarray(g, jnp.float32), state, xj, grad=jnp.asarray(g, jnp.float32))
        xj = optax.apply_updates(xj, u)
        want = yosinski_numpy_step(want, g, 0.3, ii, **settings)
        np.testing.assert_allclose(np.asarray(xj), want, atol=2e-5)


def test_normalize_by_mean_abs_is_deepdreams_step():
    tx = optax.chain(R.normalize_by_mean_abs(), optax.sgd(1.5))
    x = _images((1, 5, 5, 3))
    g = jax.random.normal(jax.random.key(1), x.shape)
    u, _ = tx.update(g, tx.init(x), x)
    np.testing.assert_allclose(np.asarray(u), -1.5 * np.asarray(g) / np.abs(np.asarray(g)).mean(), rtol=1e-5)
