"""A user's own Flax linen network as a jaxviz `Model` (`jaxviz.models.from_flax`)."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxviz import models
from jaxviz.models.linen import from_flax


class SmallCNN(nn.Module):
    """A user's network: activation held as an attribute so that it can be swapped."""

    act: Callable = nn.relu
    num_classes: int = 5

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (3, 3), padding="SAME")(x)
        x = self.act(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Conv(8, (3, 3), padding=1)(x)
        x = self.act(x)
        self.sow("intermediates", "features", x)
        x = x.mean(axis=(1, 2))
        x = self.act(nn.Dense(12)(x))
        return nn.Dense(self.num_classes)(x)


class PlainCNN(nn.Module):
    """Calls nn.relu directly: its ReLU cannot be swapped."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


class Block(nn.Module):
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x):
        return self.act(nn.Conv(4, (3, 3), padding=1)(x))


class Outer(nn.Module):
    """A submodule held in a field: swapping reaches it too."""

    block: nn.Module
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x):
        x = self.block(x)
        return nn.Dense(2)(self.act(x).mean(axis=(1, 2)))


class Geometry(nn.Module):
    """Convs only (no hidden pooling): every receptive field is known."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=2, padding=1)(x)
        x = jnp.tanh(x)
        x = nn.Conv(4, (3, 3), padding="VALID")(x)
        x = nn.Conv(4, (3, 3), kernel_dilation=2, padding=2)(x)
        return nn.Dense(3)(x.mean(axis=(1, 2)))


def np_params(model, seed=0, scale=0.5):
    """Random variables of the right shapes drawn by numpy (compiling JAX's random generator for
    every shape costs seconds on a small CPU; `model.init` itself is tested once)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape) if s.ndim == 1 else rng.normal(0, scale, s.shape),
                              jnp.float32),
        model.param_shapes())


def np_images(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


@pytest.fixture(scope="module")
def wrapped():
    model = from_flax(SmallCNN(), input_shape=(16, 16, 3), relu_attr="act", mean=(0.4, 0.5, 0.6),
                      std=(0.2, 0.25, 0.3))
    variables = np_params(model)
    images = np_images((3, 16, 16, 3))
    return model, variables, images


def _pre(model, images):
    mean = jnp.asarray(model.mean).reshape(1, 1, 1, 3)
    std = jnp.asarray(model.std).reshape(1, 1, 1, 3)
    return (images - mean) / std


def test_names_order_and_specs(wrapped):
    model, variables, _ = wrapped
    assert model.layer_names == ("Conv_0", "Conv_1", "features", "Dense_0", "Dense_1", "logits")
    assert model.logits == "logits" and model.num_classes == 5 and model.features == "Dense_0"
    assert model.trunk == ("Conv_0", "Conv_1", "features")  # trunk[-1]: the last spatial layer (Grad-CAM)
    conv0 = model.layer("Conv_0")
    geometry = (conv0.kind, conv0.kernel, conv0.stride, conv0.padding, conv0.channels)
    assert geometry == ("conv", (3, 3), (1, 1), (1, 1), 6)
    # The max pool is a function, not a module: Conv_1's geometry relative to the image is unknown.
    assert model.layer("Conv_1").kind == "map"
    assert models.receptive_field(model, "Conv_0").size == (3, 3)
    with pytest.raises(ValueError, match="unknown"):
        models.receptive_field(model, "features")
    assert set(variables) == {"params"}
    rows = models.describe(model)  # shapes by eval_shape, receptive fields where known
    assert [r["name"] for r in rows] == list(model.layer_names)
    assert rows[0]["shape"] == (16, 16, 6) and rows[0]["receptive_field"] == (3, 3)
    assert "receptive_field" not in rows[1] and rows[-1]["shape"] == (5,)


def test_init_is_the_modules_own():
    # model.init is module.init (jitted), without an "intermediates" collection. (Non-partitionable
    # threefry compiles several times faster on CPU; the equality holds either way.)
    with jax.threefry_partitionable(False):
        model = from_flax(PlainCNN(), input_shape=(5, 5, 3))
        init = model.init(jax.random.key(0))
        ref = jax.jit(PlainCNN().init)(jax.random.key(0), jnp.zeros((1, 5, 5, 3)))
    assert set(init) == {"params"}
    assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(dict(ref))
    for a, b in zip(jax.tree_util.tree_leaves(init), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(a, b)


def test_activations_equal_direct_apply(wrapped):
    model, variables, images = wrapped
    acts = jax.jit(model.apply)(variables, images)
    x = _pre(model, images)
    np.testing.assert_allclose(acts["logits"], jax.jit(SmallCNN().apply)(variables, x), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(acts["logits"], acts["Dense_1"])
    # Independent reference for the layers: the same arithmetic written with lax by hand.
    p = variables["params"]

    def conv(t, layer):
        y = lax.conv_general_dilated(t, p[layer]["kernel"], (1, 1), [(1, 1), (1, 1)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + p[layer]["bias"][None, None, None, :]

    conv0 = conv(x, "Conv_0")
    np.testing.assert_allclose(acts["Conv_0"], conv0, rtol=1e-5, atol=1e-5)
    pooled = jax.nn.relu(conv0).reshape(3, 8, 2, 8, 2, 6).max(axis=(2, 4))
    conv1 = conv(pooled, "Conv_1")
    np.testing.assert_allclose(acts["Conv_1"], conv1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acts["features"], jax.nn.relu(conv1), rtol=1e-5, atol=1e-5)
    dense0 = jax.nn.relu(conv1).mean(axis=(1, 2)) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None, :]
    np.testing.assert_allclose(acts["Dense_0"], dense0, rtol=1e-5, atol=1e-5)
    # until: the same values, trimmed.
    part = jax.jit(lambda v, x: model.apply(v, x, until="Conv_1"))(variables, images)
    assert list(part) == ["Conv_0", "Conv_1"]
    np.testing.assert_array_equal(part["Conv_1"], acts["Conv_1"])


def test_jit_and_vmap(wrapped):
    model, variables, images = wrapped
    eager = model.apply(variables, images)
    jitted = jax.jit(model.apply)(variables, images)
    for k in eager:  # equal up to float32 rounding (1e-5 of the layer's largest value)
        np.testing.assert_allclose(jitted[k], eager[k], rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(eager[k]))))
    # vmap over experiments: a stack of batches [E, N, H, W, C] equals a loop.
    stack = jnp.stack([images, images[::-1] * 0.5])
    mapped = jax.jit(jax.vmap(lambda x: model.scores(variables, x)))(stack)
    for e in range(2):
        np.testing.assert_allclose(mapped[e], jax.jit(model.scores)(variables, stack[e]), rtol=1e-5, atol=1e-6)
    # vmap over parameters (e.g. several trained copies).
    vs = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), variables, np_params(model, seed=2))
    per = jax.jit(jax.vmap(lambda v: model.scores(v, images)))(vs)
    np.testing.assert_allclose(per[1], jax.jit(model.scores)(jax.tree_util.tree_map(lambda a: a[1], vs), images),
                               rtol=1e-5, atol=1e-6)


@jax.custom_vjp
def guided_relu(x):
    return jax.nn.relu(x)


def _guided_fwd(x):
    return jax.nn.relu(x), x


def _guided_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, 0.0),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


def test_swapped_relu_changes_forward_and_backward(wrapped):
    model, variables, images = wrapped
    x = _pre(model, images)
    double = lambda v: 2.0 * jax.nn.relu(v)  # noqa: E731
    plain = jax.jit(model.apply)(variables, images)
    acts = jax.jit(lambda v, im: model.apply(v, im, relu=double))(variables, images)
    ref = jax.jit(SmallCNN(act=double).apply)(variables, x)
    np.testing.assert_allclose(acts["logits"], ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(acts["logits"], plain["logits"], atol=1e-3)
    np.testing.assert_array_equal(acts["Conv_0"], plain["Conv_0"])  # before any ReLU

    def score(img, relu=None):
        return model.scores(variables, img, relu=relu)[:, 2].sum()

    g_plain = jax.jit(jax.grad(score))(images)
    g_guided, guided_fwd = jax.jit(lambda im: (jax.grad(lambda a: score(a, guided_relu))(im),
                                               model.scores(variables, im, relu=guided_relu)))(images)
    direct = SmallCNN(act=guided_relu)
    g_ref = jax.jit(jax.grad(lambda im: direct.apply(variables, _pre(model, im))[:, 2].sum()))(images)
    np.testing.assert_allclose(g_guided, g_ref, rtol=1e-5, atol=1e-7)
    assert not np.allclose(g_guided, g_plain, atol=1e-6)
    # Forward unchanged by the guided ReLU (it only changes the backward pass).
    np.testing.assert_allclose(guided_fwd, plain["logits"], rtol=1e-6, atol=1e-6)


def test_swap_reaches_submodule_fields():
    outer = Outer(block=Block())
    model = from_flax(outer, input_shape=(6, 6, 3), relu_attr="act")
    v = np_params(model)
    x = np_images((2, 6, 6, 3))
    neg = lambda t: -jax.nn.relu(t)  # noqa: E731
    got = jax.jit(lambda v, x: model.apply(v, x, relu=neg))(v, x)
    ref = jax.jit(Outer(block=Block(act=neg), act=neg).apply)(v, x)
    np.testing.assert_allclose(got["logits"], ref, rtol=1e-6, atol=1e-6)
    only_top = jax.jit(Outer(block=Block(), act=neg).apply)(v, x)
    assert not np.allclose(got["logits"], only_top, atol=1e-4)
    assert model.layer_names == ("block/Conv_0", "block", "Dense_0", "logits")


def test_unswappable_relu_is_a_clear_error():
    model = from_flax(PlainCNN(), input_shape=(5, 5, 3))
    assert not model.swappable_relu
    v = np_params(model)
    x = jnp.zeros((1, 5, 5, 3))
    with pytest.raises(ValueError, match="relu_attr"):
        model.apply(v, x, relu=guided_relu)
    with pytest.raises(ValueError, match="no attribute 'act'"):
        from_flax(PlainCNN(), input_shape=(5, 5, 3), relu_attr="act")

    class Ignores(nn.Module):
        act: Callable = nn.relu

        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.relu(x).mean(axis=(1, 2)))

    with pytest.raises(ValueError, match="never calls self.act"):
        from_flax(Ignores(), input_shape=(5, 5, 3), relu_attr="act")


def test_bad_construction():
    with pytest.raises(ValueError, match="exactly one"):
        from_flax(SmallCNN())
    with pytest.raises(ValueError, match="logits"):
        class SowsLogits(nn.Module):
            @nn.compact
            def __call__(self, x):
                y = nn.Dense(2)(x.mean(axis=(1, 2)))
                self.sow("intermediates", "logits", y)
                return y

        from_flax(SowsLogits(), input_shape=(4, 4, 3))
    with pytest.raises(ValueError, match="one array"):
        class Pair(nn.Module):
            @nn.compact
            def __call__(self, x):
                return x, x

        from_flax(Pair(), example=np.zeros((2, 4, 4, 3), np.float32))


def test_class_score_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        model = from_flax(SmallCNN(num_classes=3), input_shape=(8, 8, 3), relu_attr="act")
        v = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), np_params(model, seed=3))
        rng = np.random.default_rng(4)
        x = jnp.asarray(rng.uniform(size=(1, 8, 8, 3)), jnp.float64)
        direction = jnp.asarray(rng.normal(size=x.shape), jnp.float64)

        f = jax.jit(lambda img: model.scores(v, img)[0, 1])
        g = jax.jit(jax.grad(f))(x)
        assert g.dtype == jnp.float64
        eps = 1e-6
        fd = (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.vdot(g, direction)), float(fd), rtol=1e-6, atol=1e-9)


def test_receptive_fields_match_gradient_support():
    model = from_flax(Geometry(), input_shape=(24, 24, 3))
    assert [s.kind for s in model.layers] == ["conv", "conv", "conv", "fc", "fc"]
    assert model.layer("Conv_2").kernel == (5, 5) and model.layer("Conv_2").padding == (2, 2)
    v = np_params(model)
    x = np_images((1, 24, 24, 3))
    for layer in ("Conv_0", "Conv_1", "Conv_2"):
        rf = models.receptive_field(model, layer)
        shape = models.spatial_shape(model, layer, (24, 24))
        i, j = shape[0] // 2, shape[1] // 2
        act, g = jax.jit(jax.value_and_grad(lambda im: model.apply(v, im, until=layer)[layer][0, i, j, 0]))(x)
        rows, cols = np.nonzero(np.abs(np.asarray(g[0])).sum(-1))
        top, left, bottom, right = rf.box(i, j)
        assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (
            max(top, 0), max(left, 0), min(bottom, 24), min(right, 24)), layer
        assert jax.eval_shape(lambda im: model.apply(v, im)[layer], x).shape[1:3] == shape


def test_batchnorm_dropout_with_apply_kwargs():
    class Trainable(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.Conv(4, (3, 3), padding=1)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
            return nn.Dense(2)(x.mean(axis=(1, 2)))

    model = from_flax(Trainable(), input_shape=(6, 6, 3), apply_kwargs={"train": False})
    assert [s.kind for s in model.layers] == ["conv", "bn", "act", "fc", "fc"]
    assert models.receptive_field(model, "Dropout_0").size == (3, 3)
    v = np_params(model)
    assert set(v) == {"params", "batch_stats"}
    x = np_images((2, 6, 6, 3))
    direct = jax.jit(lambda v, x: Trainable().apply(v, x, train=False))(v, x)
    np.testing.assert_allclose(jax.jit(model.scores)(v, x), direct, rtol=1e-6, atol=1e-6)


class SharedFCN(nn.Module):
    """Fully convolutional (a map as output), one conv module called twice."""

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(3, (3, 3), padding=1)
        return nn.relu(conv(nn.relu(conv(x))))


def test_shared_module_and_map_output():
    model = from_flax(SharedFCN(), input_shape=(8, 8, 3), logits="heat")
    assert model.layer_names == ("Conv_0", "Conv_0.1", "heat")
    assert [s.kind for s in model.layers] == ["conv", "conv", "act"]
    assert model.logits is None and model.features is None
    assert models.receptive_field(model, "heat").size == (5, 5)
    v = np_params(model)
    x = np_images((2, 8, 8, 3))
    acts = jax.jit(model.apply)(v, x)
    p = v["params"]["Conv_0"]

    def conv(t):
        return lax.conv_general_dilated(t, p["kernel"], (1, 1), [(1, 1), (1, 1)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"][None, None, None, :]

    np.testing.assert_allclose(acts["Conv_0"], conv(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acts["Conv_0.1"], conv(jax.nn.relu(conv(x))), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acts["heat"], jax.nn.relu(acts["Conv_0.1"]), rtol=1e-6, atol=1e-6)


def test_layer_specs_describe_hidden_pooling():
    # Conv_1 follows a 2x2/2 max pool written as a function; pool + 3x3/1 pad 1 conv compose to a
    # 6x6 window, stride 2, padding 2 relative to Conv_0's output.
    spec = models.LayerSpec("Conv_1", "conv", 8, (6, 6), (2, 2), (2, 2))
    model = from_flax(SmallCNN(), input_shape=(16, 16, 3), relu_attr="act", layer_specs={"Conv_1": spec})
    assert model.layer("Conv_1").kind == "conv"
    rf = models.receptive_field(model, "features")
    assert (rf.size, rf.stride, rf.offset) == ((8, 8), (2, 2), (3, 3))
    assert models.spatial_shape(model, "Conv_1", (16, 16)) == (8, 8)
    # The gradient of a unit lies inside its receptive field (max pooling makes it sparse in there).
    v = np_params(model)
    x = np_images((1, 16, 16, 3))
    g = jax.jit(jax.grad(lambda im: model.apply(v, im, until="Conv_1")["Conv_1"][0, 4, 4].sum()))(x)
    rows, cols = np.nonzero(np.abs(np.asarray(g[0])).sum(-1))
    top, left, bottom, right = rf.box(4, 4)
    assert rows.size and top <= rows.min() and rows.max() < bottom and left <= cols.min() and cols.max() < right
    with pytest.raises(ValueError, match="not a layer"):
        from_flax(SmallCNN(), input_shape=(16, 16, 3), layer_specs={"conv9": spec})
