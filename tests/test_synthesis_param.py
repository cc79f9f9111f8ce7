"""Image parameterisations against independent numpy constructions of lucid/lucent's formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.synthesis import param as P


def lucent_fft_numpy(raw, h, w, decay_power=1.0):
    """lucent `fft_image` written from SYNTHESIS.md 1.1 in numpy: freqs with lucent's odd-width
    extra column, scale, complex spectrum, `irfft2(s=(h, w), norm="ortho") / 4`, NHWC."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 2] if w % 2 == 1 else np.fft.fftfreq(w)[: w // 2 + 1]
    freqs = np.sqrt(fx * fx + fy * fy)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay_power
    wf = freqs.shape[1]
    # lucent's parameter has wf columns; jaxviz's has w // 2 + 1: the extra odd-width column is
    # trimmed by irfftn(s=(h, w)) in lucent, so pad it with arbitrary values to show it is ignored.
    extra = wf - raw.shape[3]
    raw = np.concatenate([raw, np.full(raw.shape[:3] + (extra, 2), 7.0)], axis=3) if extra else raw
    z = (raw[..., 0] + 1j * raw[..., 1]) * scale
    t = np.fft.irfft2(z[..., : w // 2 + 1], s=(h, w), norm="ortho") / 4.0  # [B, C, H, W]
    return np.moveaxis(t, 1, -1)


@pytest.mark.parametrize("h,w,decay_power", [(8, 8, 1.0), (7, 9, 1.0), (9, 6, 1.5), (16, 11, 1.0)])
def test_fft_equals_numpy_lucent_formula(h, w, decay_power):
    p = P.FFT((h, w, 3), decay_power=decay_power, decorrelate=False, squash="none")
    raw = p.init(jax.random.key(h * 100 + w), 2) * 50.0
    assert raw.shape == (2, 3, h, w // 2 + 1, 2)
    want = lucent_fft_numpy(np.asarray(raw, np.float64), h, w, decay_power)
    got = np.asarray(p.to_images(raw))
    assert got.shape == (2, h, w, 3)
    np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max())


def test_fft_default_is_sigmoid_of_decorrelated():
    h, w = 10, 7
    p = P.image((h, w, 3))  # lucid defaults: FFT + decorrelate + sigmoid
    assert isinstance(p, P.FFT) and p.decorrelate and p.squash == "sigmoid"
    raw = p.init(jax.random.key(3), 2) * 30.0
    t = lucent_fft_numpy(np.asarray(raw, np.float64), h, w)
    m = P.COLOR_CORRELATION
    want = 1.0 / (1.0 + np.exp(-np.einsum("bhwj,ij->bhwi", t, m)))
    np.testing.assert_allclose(np.asarray(p.to_images(raw)), want, atol=2e-6)


def test_color_matrix_is_lucids_normalised_matrix():
    # Values from SYNTHESIS.md 1.2 (lucid/lucent color.py, measured by running lucent).
    want = np.array([[0.562829, 0.194825, 0.043295], [0.584476, 0.0, -0.108236], [0.584476, -0.194825, 0.064942]])
    np.testing.assert_allclose(P.COLOR_CORRELATION, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(P.COLOR_CORRELATION, axis=0).max(), 1.0, atol=1e-12)


def test_pixels_decorrelated_sigmoid_formula():
    p = P.Pixels((5, 6, 3), decorrelate=True)
    raw = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
    want = 1.0 / (1.0 + np.exp(-np.einsum("bhwj,ij->bhwi", np.asarray(raw, np.float64), P.COLOR_CORRELATION)))
    np.testing.assert_allclose(np.asarray(p.to_images(raw)), want, atol=1e-6)


@pytest.mark.parametrize(
    "p",
    [
        P.Pixels((9, 7, 3)),
        P.Pixels((9, 7, 3), squash="clip", decorrelate=True),
        P.Pixels((9, 7, 1), squash="none"),
        P.FFT((9, 7, 3)),
        P.FFT((11, 6, 1), squash="clip", decorrelate=False),
    ],
    ids=lambda p: repr(p)[:60],
)
def test_from_images_round_trip_and_init(p):
    images = jax.random.uniform(jax.random.key(1), (3, *p.shape), minval=0.02, maxval=0.98)
    raw = p.from_images(images)
    assert raw.shape == (3, *p.raw_shape)
    np.testing.assert_allclose(np.asarray(p.to_images(raw)), np.asarray(images), atol=2e-5)
    start = p.to_images(p.init(jax.random.key(2), 4))
    assert start.shape == (4, *p.shape) and start.dtype == jnp.float32
    assert float(start.min()) >= 0.0 and float(start.max()) <= 1.0
    assert abs(float(start.mean()) - 0.5) < 0.15  # a grey start, as lucid's


def test_fft_init_statistics_follow_lucent():
    # lucent, 128x128, sd 0.01: pixel std of the spatial image ~0.0188 (SYNTHESIS.md 1.1, one draw).
    p = P.FFT((128, 128, 3))
    t = p.spatial(p.init(jax.random.key(0), 2))
    assert 0.014 < float(jnp.std(t)) < 0.024


def test_params_hashable_and_validated():
    assert hash(P.FFT((8, 8, 3))) == hash(P.FFT((8, 8, 3))) and P.FFT((8, 8, 3)) == P.FFT([8, 8, 3])
    with pytest.raises(ValueError, match="3 colour channels"):
        P.Pixels((8, 8, 1), decorrelate=True)
    with pytest.raises(ValueError, match="squash"):
        P.FFT((8, 8, 3), squash="tanh")
    with pytest.raises(ValueError, match="shape"):
        P.Pixels((8, 8))
    with pytest.raises(ValueError, match="expects images"):
        P.FFT((8, 8, 3)).from_images(jnp.zeros((1, 8, 9, 3)))
    with pytest.raises(ValueError, match="batch"):
        P.Pixels((8, 8, 3)).init(jax.random.key(0), 0)
