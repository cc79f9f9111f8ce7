"""Colour preservation: luminance-only transfer keeps the content's chroma; histogram matching gives
the source's colour mean and covariance; Gatys' match_color reproduced in numpy float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.synthesis import color


def _img(seed, shape=(2, 12, 10, 3), lo=0.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def _colourful(seed, shape=(2, 16, 14, 3)):
    """Images with correlated, non-trivial colour statistics, inside [0, 1]."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, shape[:-1] + (3,))
    mix = rng.uniform(0.1, 1.0, (3, 3))
    x = base @ mix.T
    x = (x - x.min()) / (x.max() - x.min())
    return (0.1 + 0.8 * x).astype(np.float32)


@pytest.mark.parametrize("space", color.COLOR_SPACES)
def test_transfer_luminance_keeps_content_chroma(space):
    gen, content = _img(0), _img(1)
    out = color.transfer_luminance(jnp.asarray(gen), jnp.asarray(content), space=space, clip=False)
    yuv_out = np.asarray(color.rgb_to(out, space))
    yuv_gen = np.asarray(color.rgb_to(jnp.asarray(gen), space))
    yuv_content = np.asarray(color.rgb_to(jnp.asarray(content), space))
    np.testing.assert_allclose(yuv_out[..., 1:], yuv_content[..., 1:], atol=2e-6)
    np.testing.assert_allclose(yuv_out[..., 0], yuv_gen[..., 0], atol=2e-6)
    # Clipped (the default): in [0, 1], and every pixel that needed no clipping is unchanged.
    clipped = np.asarray(color.transfer_luminance(jnp.asarray(gen), jnp.asarray(content), space=space))
    assert clipped.min() >= 0 and clipped.max() <= 1
    inside = np.all((np.asarray(out) >= 0) & (np.asarray(out) <= 1), axis=-1)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(clipped[inside], np.asarray(out)[inside], atol=0)


def test_color_matrices():
    # torch/image's printed yuv2rgb (neural-style Lua) is the 5-decimal rounding of the exact inverse.
    torch_image_inverse = np.array([[1, 0, 1.13983], [1, -0.39465, -0.58060], [1, 2.03211, 0]])
    np.testing.assert_allclose(color.color_matrix("yuv", inverse=True), torch_image_inverse, atol=1e-4)
    # Gatys' notebook inverse, likewise to its printed precision (3 decimals; 2.03 has two).
    gatys_inverse = np.array([[1, 0, 1.139], [1, -0.395, -0.580], [1, 2.03, 0]])
    np.testing.assert_allclose(color.color_matrix("yuv-gatys", inverse=True), gatys_inverse, atol=3e-3)
    for space in color.COLOR_SPACES:
        m = color.color_matrix(space)
        np.testing.assert_allclose(m[0], [0.299, 0.587, 0.114])
        # Grey has no chroma (up to the 3-decimal rounding of Gatys' U row, which sums to 0.001).
        np.testing.assert_allclose(m[1:] @ np.ones(3), 0, atol=1.5e-3 if space == "yuv-gatys" else 1e-4)
    x = jnp.asarray(_img(2))
    np.testing.assert_allclose(np.asarray(color.to_rgb(color.rgb_to(x, "yiq"), "yiq")), np.asarray(x), atol=2e-6)


def test_luminance_only_inputs():
    style, content = _colourful(3), _colourful(4)
    s_lum, c_lum = color.luminance_only(jnp.asarray(style), jnp.asarray(content))
    s_lum, c_lum = np.asarray(s_lum), np.asarray(c_lum)
    assert s_lum.shape == style.shape and c_lum.shape == content.shape
    np.testing.assert_allclose(s_lum[..., 0], s_lum[..., 2])
    y_c = 0.299 * content[..., 0] + 0.587 * content[..., 1] + 0.114 * content[..., 2]
    np.testing.assert_allclose(c_lum[..., 1], y_c, atol=1e-6)
    if 0 < s_lum.min() and s_lum.max() < 1:  # no clipping happened: the means agree exactly
        np.testing.assert_allclose(s_lum[..., 0].mean(axis=(1, 2)), y_c.mean(axis=(1, 2)), atol=1e-5)


def _gatys_match_color_numpy(t_img, s_img, mode, eps):
    """Gatys' match_color (ColourControl notebook), float64 numpy, one image, written from the formulas."""
    mu_t = t_img.reshape(-1, 3).mean(0)
    t = (t_img.reshape(-1, 3) - mu_t).T
    ct = t @ t.T / t.shape[1] + eps * np.eye(3)
    mu_s = s_img.reshape(-1, 3).mean(0)
    s = (s_img.reshape(-1, 3) - mu_s).T
    cs = s @ s.T / s.shape[1] + eps * np.eye(3)

    def root(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(np.sqrt(w)) @ v.T

    if mode == "chol":
        ts = np.linalg.cholesky(cs) @ np.linalg.inv(np.linalg.cholesky(ct)) @ t
    elif mode == "pca":
        ts = root(cs) @ np.linalg.inv(root(ct)) @ t
    else:
        qt = root(ct)
        ts = np.linalg.inv(qt) @ root(qt @ cs @ qt) @ np.linalg.inv(qt) @ t
    return np.clip(ts.T.reshape(t_img.shape) + mu_s, 0, 1)


@pytest.mark.parametrize("mode", color.MATCH_MODES)
def test_match_color_gives_source_statistics(mode):
    target, source = _colourful(5), _colourful(6, (2, 20, 9, 3))
    for eps, rtol in ((0.0, 1e-4), (1e-5, 1e-2)):
        # eps = 0: exact up to float32 rounding; Gatys' eps = 1e-5 on both diagonals moves the
        # covariance by up to ~eps / (smallest colour variance) relatively (here ~0.3%).
        out = np.asarray(color.match_color(jnp.asarray(target), jnp.asarray(source), mode=mode, eps=eps, clip=False), np.float64)
        for b in range(2):
            o, s = out[b].reshape(-1, 3), source[b].reshape(-1, 3).astype(np.float64)
            np.testing.assert_allclose(o.mean(0), s.mean(0), atol=1e-5)
            cs = np.cov(s.T, bias=True)
            np.testing.assert_allclose(np.cov(o.T, bias=True), cs, atol=rtol * np.abs(cs).max())
    # Gatys' code (clipped), both in float64.
    with jax.enable_x64(True):
        t64, s64 = target.astype(np.float64), source.astype(np.float64)
        clipped = np.asarray(color.match_color(jnp.asarray(t64), jnp.asarray(s64), mode=mode))
    for b in range(2):
        ref = _gatys_match_color_numpy(t64[b], s64[b], mode, 1e-5)
        np.testing.assert_allclose(clipped[b], ref, atol=1e-9)
    assert clipped.min() >= 0 and clipped.max() <= 1
    # Batch == loop; a source of batch 1 serves every target.
    one = np.concatenate([np.asarray(color.match_color(jnp.asarray(target[b : b + 1]), jnp.asarray(source[:1]), mode=mode)) for b in range(2)])
    np.testing.assert_allclose(np.asarray(color.match_color(jnp.asarray(target), jnp.asarray(source[:1]), mode=mode)), one, atol=1e-6)


def test_match_color_is_jittable_and_flat_images_work():
    target = np.full((1, 8, 8, 3), 0.5, np.float32)  # zero covariance: eps keeps it invertible
    source = _colourful(7, (1, 8, 8, 3))
    out = jax.jit(lambda t, s: color.match_color(t, s, mode="pca"))(jnp.asarray(target), jnp.asarray(source))
    assert np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_allclose(np.asarray(out).reshape(-1, 3).mean(0), source.reshape(-1, 3).mean(0), atol=1e-5)


def test_bad_input_is_a_clear_error():
    x = jnp.asarray(_img(8))
    with pytest.raises(ValueError, match="colour space"):
        color.rgb_to(x, "lab")
    with pytest.raises(ValueError, match="3 channels"):
        color.transfer_luminance(x[..., :2], x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        color.match_color(x * 255, x)
    with pytest.raises(ValueError, match="mode"):
        color.match_color(x, x, mode="lab")
    with pytest.raises(ValueError, match="resize"):
        color.transfer_luminance(x, x[:, :5])
    with pytest.raises(ValueError, match="non-finite"):
        color.match_color(x.at[0, 0, 0, 0].set(jnp.nan), x)
    with pytest.raises(ValueError, match="floating"):
        color.match_color(np.zeros((1, 4, 4, 3), np.uint8), x)
