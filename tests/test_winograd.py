"""Winograd F(2x2, 3x3) convolutions (`layers.conv2d(algorithm=...)`): the same values and gradients as
the direct convolution, where `"auto"` uses them, and what they must not change (NaN isolation,
frozen params, vmap)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxviz import models
from jaxviz.models import layers

from conv_helpers import count_convs, he_normal_convs

DN = ("NHWC", "HWIO", "NHWC")


def _direct(x, w, b):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN) + b.reshape(1, 1, 1, -1)


@pytest.mark.parametrize(
    "shape, cout",
    [
        ((2, 8, 8, 3), 5),     # even sizes
        ((1, 7, 9, 4), 6),     # odd, non-square: one zero row / column added and cropped
        ((3, 1, 1, 2), 3),     # a 1x1 map (one tile, mostly padding)
        ((1, 2, 5, 6), 1),     # one output channel
    ],
)
def test_winograd_equals_direct_convolution_float64(shape, cout):
    """Values, input gradient and kernel gradient (which uses the direct convolution's) equal a plain
    `lax.conv_general_dilated` to float64 rounding; under `jit(vmap(grad))` as well."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=shape))
        w = jnp.asarray(rng.normal(size=(3, 3, shape[-1], cout)))
        b = jnp.asarray(rng.normal(size=(cout,)))

        def ours(x, w):
            return layers.conv2d(x, w, b, padding=(1, 1), algorithm="winograd")

        want, got = _direct(x, w, b), ours(x, w)
        assert got.shape == want.shape and got.dtype == want.dtype
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-13 * scale)
        cot = jnp.asarray(rng.normal(size=want.shape))
        for a, e in zip(jax.vjp(ours, x, w)[1](cot), jax.vjp(lambda x, w: _direct(x, w, b), x, w)[1](cot)):
            assert a.shape == e.shape
            np.testing.assert_allclose(a, e, rtol=0, atol=1e-13 * float(jnp.abs(e).max()))
        loss = lambda f: lambda xi: jnp.sum(jnp.sin(f(xi[None], w)))  # noqa: E731
        np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(loss(ours))))(x),
                                   jax.vmap(jax.grad(loss(lambda x, w: _direct(x, w, b))))(x), rtol=1e-10, atol=1e-12)


def test_auto_uses_winograd_for_wide_float32_layers_on_cpu(monkeypatch):
    """`algorithm="auto"` computes a 256 -> 256 channel 3x3 float32 layer on the CPU with Winograd (no
    convolution in the program, forward or input gradient) and agrees with the direct convolution to
    float32 rounding; narrower layers, float64, other kernels, strides and paddings, maps of one 2x2
    tile and maps under `WINOGRAD_MIN_PIXELS` pixels stay direct, and JAXVIZ_WINOGRAD=0
    (`WINOGRAD_AUTO = False`) turns it off."""
    assert jax.default_backend() == "cpu"
    applies = layers.winograd_applies
    assert applies((3, 3, 256, 256), (1, 1), (1, 1), jnp.float32)
    assert applies((3, 3, 512, 384), (1, 1), (1, 1), jnp.float32)
    assert not applies((3, 3, 128, 256), (1, 1), (1, 1), jnp.float32)
    assert not applies((3, 3, 512, 3), (1, 1), (1, 1), jnp.float32)  # a restricted layer (few channels)
    assert not applies((3, 3, 256, 256), (1, 1), (1, 1), jnp.float64)
    assert not applies((3, 3, 256, 256), (1, 1), (1, 1), jnp.bfloat16)
    assert not applies((3, 3, 256, 256), (2, 2), (1, 1), jnp.float32)
    assert not applies((3, 3, 256, 256), (1, 1), (0, 0), jnp.float32)
    assert not applies((5, 5, 256, 256), (1, 1), (1, 1), jnp.float32)
    assert applies((3, 3, 256, 256), (1, 1), (1, 1), jnp.float32, (3, 2))  # two tiles per image
    assert not applies((3, 3, 256, 256), (1, 1), (1, 1), jnp.float32, (2, 2))  # one tile: matrix-vector products

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((2, 6, 5, 256), np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 256, 256)).astype(np.float32) * 0.03)
    b = jnp.asarray(rng.normal(size=(256,)).astype(np.float32))
    auto = lambda x: layers.conv2d(x, w, b, padding=(1, 1))  # noqa: E731
    direct = lambda x: layers.conv2d(x, w, b, padding=(1, 1), algorithm="direct")  # noqa: E731
    input_grad = lambda f: lambda x: jax.grad(lambda v: jnp.sum(jnp.sin(f(v))))(x)  # noqa: E731
    assert count_convs(auto, x) == 0 and count_convs(input_grad(auto), x) == 0
    assert count_convs(direct, x) == 1 and count_convs(input_grad(direct), x) == 2
    with jax.enable_x64(True):  # float64 reference
        ref = np.asarray(_direct(jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64), jnp.asarray(b, jnp.float64)))
        ref_g = np.asarray(input_grad(lambda v: _direct(v, jnp.asarray(w, jnp.float64), jnp.asarray(b, jnp.float64)))(
            jnp.asarray(x, jnp.float64)))
    for f in (auto, direct):
        np.testing.assert_allclose(f(x), ref, rtol=0, atol=2e-5 * np.abs(ref).max())
        np.testing.assert_allclose(input_grad(f)(x), ref_g, rtol=0, atol=2e-5 * np.abs(ref_g).max())
    # WINOGRAD_MIN_PIXELS (0 by default) keeps smaller maps direct, read when a function is traced
    # (a fresh function each time, since traces are cached per function).
    monkeypatch.setattr(layers, "WINOGRAD_MIN_PIXELS", 30)
    assert applies((3, 3, 256, 256), (1, 1), (1, 1), jnp.float32, (6, 5))
    assert not applies((3, 3, 256, 256), (1, 1), (1, 1), jnp.float32, (5, 5))
    assert applies((3, 3, 256, 256), (1, 1), (1, 1), jnp.float32)  # no map size: may apply
    assert count_convs(lambda x: layers.conv2d(x, w, b, padding=(1, 1)), x) == 0
    assert count_convs(lambda x: layers.conv2d(x, w, b, padding=(1, 1)), x[:, :5]) == 1
    monkeypatch.setattr(layers, "WINOGRAD_MIN_PIXELS", 0)
    monkeypatch.setattr(layers, "WINOGRAD_AUTO", False)
    assert not applies((3, 3, 256, 256), (1, 1), (1, 1), jnp.float32)
    assert count_convs(lambda x: layers.conv2d(x, w, b, padding=(1, 1)), x) == 1


def test_winograd_keeps_nan_in_its_image_and_frozen_params_refuse_training():
    """A NaN pixel makes outputs near it NaN (within its 4x4 tiles) and leaves every other image of
    the batch exactly as it is alone; with `kernel_t` (Model.frozen) a kernel gradient is refused as
    on the direct path, while the input gradient is the same."""
    rng = np.random.default_rng(2)
    x = rng.random((3, 8, 8, 256), np.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 256, 256)).astype(np.float32) * 0.03)
    b = jnp.zeros(256, jnp.float32)
    bad = x.copy()
    bad[1, 3, 4, 7] = np.nan
    f = jax.jit(lambda v: layers.conv2d(v, w, b, padding=(1, 1)))
    y, y_bad = np.asarray(f(jnp.asarray(x))), np.asarray(f(jnp.asarray(bad)))
    np.testing.assert_array_equal(y_bad[[0, 2]], y[[0, 2]])
    nan_rows, nan_cols = np.nonzero(np.isnan(y_bad[1]).any(-1))
    assert np.isnan(y_bad[1, 2:5, 3:6]).all()  # every output whose window holds the pixel
    assert nan_rows.min() >= 1 and nan_rows.max() <= 5 and nan_cols.min() >= 2 and nan_cols.max() <= 6
    assert np.isfinite(y_bad[1, 6:]).all() and np.isfinite(y_bad[1, :, :2]).all()

    w_t = layers.backward_kernel(w)
    frozen = lambda v: jnp.sum(jnp.sin(layers.conv2d(v, w, b, padding=(1, 1), kernel_t=w_t)))  # noqa: E731
    plain = lambda v: jnp.sum(jnp.sin(layers.conv2d(v, w, b, padding=(1, 1))))  # noqa: E731
    np.testing.assert_array_equal(jax.grad(frozen)(jnp.asarray(x)), jax.grad(plain)(jnp.asarray(x)))
    with pytest.raises(ValueError, match="precomputed backward kernels"):
        jax.grad(lambda k: jnp.sum(layers.conv2d(jnp.asarray(x), k, b, padding=(1, 1), kernel_t=w_t)))(w)
    # Training the plain kernel works and equals the direct convolution's kernel gradient.
    kg = lambda a: jax.grad(lambda k: jnp.sum(jnp.sin(layers.conv2d(jnp.asarray(x), k, b, padding=(1, 1), algorithm=a))))(w)  # noqa: E731
    np.testing.assert_allclose(kg("auto"), kg("direct"), rtol=1e-5, atol=1e-5 * float(jnp.abs(kg("direct")).max()))


def test_conv2d_algorithm_option_is_checked():
    x, w, b = jnp.zeros((1, 4, 4, 2)), jnp.zeros((5, 5, 2, 2)), jnp.zeros(2)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        layers.conv2d(x, w, b, padding=(2, 2), algorithm="fft")
    with pytest.raises(ValueError, match="3x3 kernel, stride 1 and padding 1"):
        layers.conv2d(x, w, b, padding=(2, 2), algorithm="winograd")


def test_vgg16_float32_activations_with_winograd_match_float64(monkeypatch):
    """VGG16's trunk in float32 on the CPU (conv3_2 to conv5_3 by Winograd) against float64 (direct):
    activations agree to 1e-5 of each layer's largest value, and within 4x of the direct float32
    trunk's own error."""
    model = models.get("vgg16")
    rng = np.random.default_rng(3)
    params = he_normal_convs(model, rng)
    x = rng.random((2, 72, 68, 3)).astype(np.float32)  # conv5 at 4x4: two or more tiles
    conv = lambda p: jax.tree.map(jnp.asarray, p)  # noqa: E731
    got = jax.jit(lambda p, v: model.apply(p, v, until="relu5_3"))(conv(params), jnp.asarray(x))
    # 13 convolutions; the 8 with 256 or more channels in and out (conv3_2 to conv5_3, not conv3_1) by Winograd.
    assert count_convs(lambda p, v: model.apply(p, v, until="relu5_3"), conv(params), jnp.asarray(x)) == 5
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        want = jax.jit(lambda p, v: model.apply(p, v, until="relu5_3"))(p64, jnp.asarray(x, jnp.float64))
        want = {k: np.asarray(v) for k, v in want.items()}
    monkeypatch.setattr(layers, "WINOGRAD_AUTO", False)
    direct = jax.jit(lambda p, v: model.apply(p, v, until="relu5_3"))(conv(params), jnp.asarray(x))
    for name in ("relu3_3", "relu4_3", "relu5_3"):
        scale = np.abs(want[name]).max()
        assert scale > 0
        np.testing.assert_allclose(np.asarray(got[name]), want[name], rtol=0, atol=1e-5 * scale, err_msg=name)
        err, err_direct = (np.abs(np.asarray(a[name]) - want[name]).max() for a in (got, direct))
        assert err <= 4 * err_direct, (name, err, err_direct)


def test_flipped_kernel_transform_is_a_tile_permutation():
    """The input gradient reuses the forward transform: the flipped kernel's transform equals the
    kernel's with tile rows and columns 0 and 3 swapped (float64 rounding)."""
    with jax.enable_x64(True):
        k = jnp.asarray(np.random.default_rng(3).normal(size=(3, 3, 4, 5)))
        perm = np.array([3, 1, 2, 0])
        np.testing.assert_allclose(layers.winograd_kernel(k[::-1, ::-1]), layers.winograd_kernel(k)[perm][:, perm],
                                   rtol=1e-14, atol=1e-14)
        # ... and is not a trivial identity: the unpermuted transform differs.
        assert float(jnp.abs(layers.winograd_kernel(k[::-1, ::-1]) - layers.winograd_kernel(k)).max()) > 0.1


@pytest.mark.parametrize("shape, cout", [((2, 8, 8, 3), 5), ((1, 7, 9, 4), 6), ((3, 1, 1, 2), 3)])
def test_precomputed_winograd_kernel_equals_direct_float64(shape, cout):
    """`conv2d(kernel_w=winograd_kernel(w))` (what `Model.frozen` adds): values and input gradients of
    the direct convolution to float64 rounding; a kernel gradient is refused (the kernel is not read,
    its derivative would silently be zero); a `kernel_w` of another shape is ignored."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        x = jnp.asarray(rng.normal(size=shape))
        w = jnp.asarray(rng.normal(size=(3, 3, shape[-1], cout)))
        b = jnp.asarray(rng.normal(size=(cout,)))
        w_w = layers.winograd_kernel(w)

        def ours(x):
            return jnp.sum(jnp.sin(layers.conv2d(x, w, b, padding=(1, 1), algorithm="winograd", kernel_w=w_w)))

        def direct(x):
            return jnp.sum(jnp.sin(_direct(x, w, b)))

        np.testing.assert_allclose(ours(x), direct(x), rtol=1e-12)
        np.testing.assert_allclose(jax.jit(jax.grad(ours))(x), jax.grad(direct)(x), rtol=1e-10, atol=1e-12)
        with pytest.raises(ValueError, match="precomputed backward kernels"):
            jax.grad(lambda k: jnp.sum(layers.conv2d(x, k, b, padding=(1, 1), algorithm="winograd", kernel_w=w_w)))(w)
        with pytest.raises(ValueError, match="precomputed backward kernels"):
            jax.grad(lambda u: jnp.sum(layers.conv2d(x, w, b, padding=(1, 1), algorithm="winograd", kernel_w=u)))(w_w)
        other = jnp.zeros((4, 4, shape[-1], cout + 1))
        np.testing.assert_array_equal(layers.conv2d(x, w, b, padding=(1, 1), algorithm="winograd", kernel_w=other),
                                      layers.conv2d(x, w, b, padding=(1, 1), algorithm="winograd"))


def test_frozen_vgg_carries_winograd_kernels_and_gives_the_same_gradients():
    """`Model.frozen` on float32 VGG11 weights adds `kernel_w = winograd_kernel(kernel)` exactly to the
    layers `winograd_applies` to (256+ channels in and out), and the network's activations and input
    gradient at 32 and 64 px (conv5 maps of 2x2, im2col, and 4x4, Winograd) equal the plain params'
    to float32 rounding; training the frozen params is refused on both paths."""
    model = models.get("vgg11")
    # The trunk's convolutions only (drawing the classifier too, 124M numbers, only to drop them raised
    # this test's peak memory by about 0.5 GB).
    params = jax.tree.map(jnp.asarray, he_normal_convs(model, np.random.default_rng(0)))
    frozen = model.frozen(params)
    convs = [s for s in model.layers if s.kind == "conv"]
    with_w = [s.name for s in convs if "kernel_w" in frozen[s.name]]
    assert with_w == [s.name for s in convs if min(params[s.name]["kernel"].shape[2:]) >= 256] and with_w
    # One precomputed kernel per layer: the others' backward kernels, none beside a `kernel_w`.
    assert [s.name for s in convs if "kernel_t" in frozen[s.name]] == [s.name for s in convs if s.name not in with_w]
    for name in with_w:
        np.testing.assert_array_equal(frozen[name]["kernel_w"], layers.winograd_kernel(params[name]["kernel"]))
    layer = model.trunk[-1]

    def loss(p, images):
        return jnp.sum(jnp.sin(model.apply(p, images, until=layer)[layer]))

    value_and_input_grad = jax.jit(jax.value_and_grad(loss, 1))
    for size in (32, 64):
        x = jax.random.uniform(jax.random.key(size), (2, size, size, 3), jnp.float32)
        (v_frozen, g_frozen), (v, g) = value_and_input_grad(frozen, x), value_and_input_grad(params, x)
        np.testing.assert_allclose(v_frozen, v, rtol=1e-5)
        np.testing.assert_allclose(g_frozen, g, rtol=1e-4, atol=1e-5 * float(jnp.abs(g).max()))
        # Training the frozen params is refused on both paths (at 32 px conv5 takes im2col and
        # reads its kernel as it is).
        with pytest.raises(ValueError, match="precomputed backward kernels"):
            jax.grad(loss)(frozen, x)
