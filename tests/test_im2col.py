"""Convolutions on tiny maps as one matrix product (`layers.conv2d(algorithm="im2col")`): the same values
and gradients as XLA's convolution (float64), where `"auto"` uses them, and what frozen params keep."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxviz import models
from jaxviz.models import layers

from conv_helpers import count_convs, he_normal_convs

DN = ("NHWC", "HWIO", "NHWC")


def _direct(x, w, b, pad):
    return lax.conv_general_dilated(x, w, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=DN) + b.reshape(1, 1, 1, -1)


@pytest.mark.parametrize(
    "shape, k, cout",
    [
        ((2, 1, 1, 5), 3, 4),  # one tap reads the map
        ((3, 2, 1, 5), 3, 4),
        ((2, 2, 2, 5), 3, 4),  # every tap
        ((2, 5, 4, 3), 3, 6),  # a larger map (forced; "auto" keeps it direct)
        ((1, 2, 3, 3), 5, 2),  # 5x5 kernel, padding 2
    ],
)
def test_im2col_equals_direct_convolution_float64(shape, k, cout):
    """Values, and input and kernel gradients, of `algorithm="im2col"` equal XLA's convolution to
    float64 rounding; on the 2x2 map also each gradient alone (the backward pass computes only what is
    asked for)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(shape[1] * 10 + shape[2] + k)
        x = jnp.asarray(rng.normal(size=shape))
        w = jnp.asarray(rng.normal(size=(k, k, shape[-1], cout)))
        b = jnp.asarray(rng.normal(size=(cout,)))
        pad = (k - 1) // 2

        def ours(v, q):
            return layers.conv2d(v, q, b, padding=(pad, pad), algorithm="im2col")

        def ref(v, q):
            return _direct(v, q, b, pad)

        np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-12, atol=1e-12)
        loss = lambda f: lambda v, q: jnp.sum(jnp.sin(f(v, q)))  # noqa: E731
        (gx, gk), (rx, rk) = jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)
        np.testing.assert_allclose(gx, rx, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(gk, rk, rtol=1e-11, atol=1e-11)
        if shape[1:3] == (2, 2):
            np.testing.assert_allclose(jax.grad(loss(ours))(x, w), rx, rtol=1e-11, atol=1e-11)
            np.testing.assert_allclose(jax.grad(loss(ours), 1)(x, w), rk, rtol=1e-11, atol=1e-11)


def test_auto_uses_im2col_on_maps_of_at_most_2x2_on_cpu(monkeypatch):
    """`algorithm="auto"` computes a float32 3x3 "same" convolution on a map of at most 2x2 on the CPU
    as a matrix product (no convolution in the program, forward, input or kernel gradient), any
    channel count; larger maps, float64, other kernels, strides and paddings stay on their paths, and
    JAXVIZ_IM2COL=0 (`IM2COL_AUTO = False`) turns it off. Float32 values and gradients agree with
    float64 to float32 rounding."""
    assert jax.default_backend() == "cpu"
    applies = layers.im2col_applies
    for size in ((1, 1), (1, 2), (2, 1), (2, 2)):
        assert applies((3, 3, 64, 64), (1, 1), (1, 1), jnp.float32, size)
        assert applies((3, 3, 512, 512), (1, 1), (1, 1), jnp.float32, size)
    assert not applies((3, 3, 64, 64), (1, 1), (1, 1), jnp.float32, (2, 3))
    assert not applies((3, 3, 64, 64), (1, 1), (1, 1), jnp.float32, (3, 3))
    assert not applies((3, 3, 64, 64), (1, 1), (1, 1), jnp.float64, (2, 2))
    assert not applies((3, 3, 64, 64), (2, 2), (1, 1), jnp.float32, (2, 2))
    assert not applies((3, 3, 64, 64), (1, 1), (0, 0), jnp.float32, (2, 2))
    assert not applies((5, 5, 64, 64), (1, 1), (2, 2), jnp.float32, (2, 2))

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((3, 2, 2, 64), np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 64, 32)).astype(np.float32) * 0.05)
    b = jnp.asarray(rng.normal(size=(32,)).astype(np.float32))
    auto = lambda v, q: layers.conv2d(v, q, b, padding=(1, 1))  # noqa: E731
    loss = lambda v, q: jnp.sum(jnp.sin(auto(v, q)))  # noqa: E731
    assert count_convs(auto, x, w) == 0 and count_convs(jax.grad(loss, (0, 1)), x, w) == 0
    assert count_convs(auto, jnp.zeros((3, 3, 3, 64)), w) == 1  # 3x3 map, 64 channels: direct
    with jax.enable_x64(True):
        x64, w64, b64 = (jnp.asarray(a, jnp.float64) for a in (x, w, b))
        ref = np.asarray(_direct(x64, w64, b64, 1))
        ref_gx, ref_gk = (np.asarray(g) for g in jax.grad(lambda v, q: jnp.sum(jnp.sin(_direct(v, q, b64, 1))), (0, 1))(x64, w64))
    np.testing.assert_allclose(auto(x, w), ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    gx, gk = jax.grad(loss, (0, 1))(x, w)
    np.testing.assert_allclose(gx, ref_gx, rtol=0, atol=2e-6 * np.abs(ref_gx).max())
    np.testing.assert_allclose(gk, ref_gk, rtol=0, atol=2e-6 * np.abs(ref_gk).max())
    # A batch and its images one by one agree to float32 rounding (matrix products of other heights).
    alone = np.concatenate([np.asarray(auto(x[i:i + 1], w)) for i in range(3)])
    np.testing.assert_allclose(np.asarray(auto(x, w)), alone, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(layers, "IM2COL_AUTO", False)
    assert not applies((3, 3, 64, 64), (1, 1), (1, 1), jnp.float32, (2, 2))
    # (read when a function is traced: a fresh function, since traces are cached per function)
    assert count_convs(lambda v, q: layers.conv2d(v, q, b, padding=(1, 1)), x, w) == 1


def test_im2col_with_frozen_params_refuses_kernel_gradients():
    """With `kernel_t` or `kernel_w` (Model.frozen) a kernel gradient is refused on the im2col path as
    on the others, and the input gradient is the plain params' one."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.random((2, 2, 2, 256), np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 256, 256)).astype(np.float32) * 0.03)
    b = jnp.zeros(256, jnp.float32)
    plain = lambda v: jnp.sum(jnp.sin(layers.conv2d(v, w, b, padding=(1, 1))))  # noqa: E731
    for extra in ({"kernel_t": layers.backward_kernel(w)}, {"kernel_w": layers.winograd_kernel(w)}):
        frozen = lambda v: jnp.sum(jnp.sin(layers.conv2d(v, w, b, padding=(1, 1), **extra)))  # noqa: E731,B023
        assert count_convs(jax.grad(frozen), x) == 0
        np.testing.assert_array_equal(jax.grad(frozen)(x), jax.grad(plain)(x))
        with pytest.raises(ValueError, match="precomputed backward kernels"):
            jax.grad(lambda k: jnp.sum(layers.conv2d(x, k, b, padding=(1, 1), **extra)))(w)  # noqa: B023


def test_im2col_option_is_checked():
    x, b = jnp.zeros((1, 4, 4, 2)), jnp.zeros(2)
    with pytest.raises(ValueError, match="odd kernel, stride 1 and padding"):
        layers.conv2d(x, jnp.zeros((2, 2, 2, 2)), b, padding=(1, 1), algorithm="im2col")
    with pytest.raises(ValueError, match="odd kernel, stride 1 and padding"):
        layers.conv2d(x, jnp.zeros((3, 3, 2, 2)), b, padding=(0, 0), algorithm="im2col")
    with pytest.raises(ValueError, match="odd kernel, stride 1 and padding"):
        layers.conv2d(x, jnp.zeros((3, 3, 2, 2)), b, stride=(2, 2), padding=(1, 1), algorithm="im2col")


def test_vgg16_on_tiny_maps_matches_float64(monkeypatch):
    """VGG16's trunk at 32 px (conv5_1 to conv5_3 on 2x2 maps: im2col) in float32 against float64
    (XLA's convolutions): relu5_3 to 1e-5 of its largest value, and the input gradient of a random
    projection of relu5_3 through average pooling and softplus (nothing for float32 rounding to
    re-route) to 1e-4 of its largest value."""
    model = models.get("vgg16")
    rng = np.random.default_rng(5)
    # The trunk's convolutions only (He-normal kernels, biases 0.01): no classifier to draw.
    params = jax.tree.map(jnp.asarray, he_normal_convs(model, rng))
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), jnp.float32)
    trunk = lambda p, v: model.apply(p, v, until="relu5_3")["relu5_3"]  # noqa: E731
    # 13 convolutions: conv3_2 to conv4_3 by Winograd, conv5_1 to conv5_3 (2x2 maps) by im2col.
    assert count_convs(trunk, params, x) == 5
    with monkeypatch.context() as mp:
        mp.setattr(layers, "IM2COL_AUTO", False)
        assert count_convs(lambda p, v: model.apply(p, v, until="relu5_3")["relu5_3"], params, x) == 8
    r = rng.normal(size=(2, 2, 2, 512))

    def smooth(p, v):
        out = model.apply(p, v, until="relu5_3", pool="avg", relu=jax.nn.softplus)["relu5_3"]
        return jnp.sum(out * jnp.asarray(r, v.dtype))

    got = np.asarray(jax.jit(trunk)(params, x))
    got_g = np.asarray(jax.jit(jax.grad(smooth, 1))(params, x))
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x64 = jnp.asarray(x, jnp.float64)
        want = np.asarray(jax.jit(trunk)(p64, x64))
        want_g = np.asarray(jax.jit(jax.grad(smooth, 1))(p64, x64))
    assert np.abs(want).max() > 0 and np.abs(want_g).max() > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(got_g, want_g, rtol=0, atol=1e-4 * np.abs(want_g).max())
