"""Model descriptions, layer names and receptive fields (no torch needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxviz import models
from jaxviz.models import base, layers


def test_vgg16_layer_names():
    names = models.get("vgg16").layer_names
    assert names[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert names[-6:] == ("avgpool", "fc6", "relu6", "fc7", "relu7", "fc8")
    assert "conv5_3" in names and "pool5" in names
    bn = models.get("vgg16_bn").layer_names
    assert bn[:3] == ("conv1_1", "bn1_1", "relu1_1")


def test_receptive_fields():
    # The often-quoted 212 px (VGG16) and 195 px (AlexNet) are the receptive fields of the last
    # pooling layers; the last convolutions see 196 px and 163 px. The gradient-support test in
    # test_inspection checks these numbers empirically.
    vgg, alex = models.get("vgg16"), models.get("alexnet")
    assert models.receptive_field(vgg, "conv5_3").size == (196, 196)
    assert models.receptive_field(vgg, "pool5").size == (212, 212)
    assert models.receptive_field(vgg, "pool5").stride == (32, 32)
    assert models.receptive_field(alex, "conv5").size == (163, 163)
    assert models.receptive_field(alex, "pool5").size == (195, 195)
    assert models.receptive_field(alex, "conv1").offset == (2, 2)
    with pytest.raises(ValueError, match="whole image"):
        models.receptive_field(models.get("vgg16"), "fc6")


def test_until_and_trunk_any_size():
    model = models.get("vgg11")
    params = model.init(jax.random.key(0))
    x = jnp.zeros((1, 45, 77, 3))
    acts = model.apply(params, x, until=model.trunk[-1])  # one compiled program (see the next test)
    assert list(acts)[-1] == "pool5" and acts["pool5"].shape == (1, 1, 2, 512)
    assert models.spatial_shape(model, "pool5", (45, 77)) == (1, 2)


def test_concrete_apply_is_one_compiled_program_in_forward_order():
    """`apply` on concrete arrays runs one cached jit-compiled program (not op by op), returns the
    layers in forward order and the values of the same network traced inside the caller's jit; an
    unhashable `relu=` still works (op by op)."""
    model = models.get("digits")
    params = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    before = base._run_jit._cache_size()
    acts = model.apply(params, x, until="relu4")
    assert list(acts) == list(model.layer_names[: model.index("relu4") + 1])
    assert base._run_jit._cache_size() == before + 1
    model.apply(params, 0.5 * x, until="relu4")  # new values, same shapes: no new program
    assert base._run_jit._cache_size() == before + 1
    inline = jax.jit(lambda p, im: model.apply(p, im, until="relu4"))(params, x)
    for name in acts:
        np.testing.assert_allclose(acts[name], inline[name], rtol=1e-5, atol=1e-6, err_msg=name)

    class Unhashable:
        __hash__ = None

        def __call__(self, v):
            return jnp.maximum(v, 0)

    plain = model.apply(params, x, until="relu4", relu=Unhashable())
    np.testing.assert_allclose(plain["relu4"], acts["relu4"], rtol=1e-5, atol=1e-6)
    assert base._run_jit._cache_size() == before + 1

@pytest.mark.parametrize(
    "shape,match",
    [((32, 32, 3), "batch of images"), ((1, 3, 32, 32), "NCHW"), ((1, 16, 16, 3), "at least 32x32")],
)
def test_bad_images(shape, match):
    model = models.get("vgg11")
    with pytest.raises(ValueError, match=match):
        model.apply(model.param_shapes(), np.zeros(shape, np.float32))


def test_unknown_layer_and_arch():
    with pytest.raises(KeyError, match="no layer"):
        models.get("alexnet").layer("conv9")
    with pytest.raises(ValueError, match="unknown architecture"):
        models.get("resnet50")


@pytest.mark.parametrize("window,stride,shape", [((2, 2), (2, 2), (2, 9, 7, 3)), ((3, 3), (3, 3), (2, 10, 11, 2)),
                                                 ((3, 3), (2, 2), (2, 11, 9, 3))])
def test_max_pool_ties_route_to_first_maximum_like_torch(window, stride, shape):
    """Integer inputs make many exact ties; forward, reverse- and forward-mode derivatives equal torch's."""
    torch = pytest.importorskip("torch")
    from jaxviz.models import layers as L

    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=shape).astype(np.float64)
    with jax.enable_x64(True):
        y, vjp = jax.vjp(lambda a: L.max_pool(a, window, stride), jnp.asarray(x))
        g = rng.normal(size=y.shape)
        (gx,) = vjp(jnp.asarray(g))
        t = rng.normal(size=shape)
        _, ty = jax.jvp(lambda a: L.max_pool(a, window, stride), (jnp.asarray(x),), (jnp.asarray(t),))
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, window, stride)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(gx), xt.grad.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-12)
    # Forward mode is the transpose of reverse mode: <jvp(t), g> == <t, vjp(g)>.
    np.testing.assert_allclose(np.vdot(np.asarray(ty), g), np.vdot(t, np.asarray(gx)), rtol=1e-10)


def test_perturb_adds_to_layer_and_flows_on():
    model = models.get("digits")
    params = model.param_shapes()
    params = jax.tree_util.tree_map(lambda s: jnp.asarray(np.random.default_rng(0).normal(size=s.shape) * 0.05, s.dtype), params)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 32, 32, 3)), jnp.float32)
    base = model.apply(params, x, until="relu2_1")
    delta = jnp.ones_like(base["conv2_1"])
    out = model.apply(params, x, until="relu2_1", perturb={"conv2_1": delta})
    np.testing.assert_allclose(out["conv2_1"], base["conv2_1"] + 1, rtol=1e-6)
    np.testing.assert_allclose(out["relu2_1"], jax.nn.relu(base["conv2_1"] + 1), rtol=1e-6)
    np.testing.assert_array_equal(out["pool1"], base["pool1"])
    with pytest.raises(ValueError, match="no layer 'conv9'"):
        model.apply(params, x, perturb={"conv9": delta})
    with pytest.raises(ValueError, match="after until"):
        model.apply(params, x, until="pool1", perturb={"conv2_1": delta})


def test_imagenet_classes_and_decode_predictions():
    names = models.imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[281] == "tabby" and names[999] == "toilet tissue"
    logits = np.zeros((2, 1000), np.float32)
    logits[0, [281, 285, 3]] = [5.0, 4.0, 3.0]
    logits[1, 7] = 9.0
    top = models.decode_predictions(logits, top=3)
    assert [i for i, _, _ in top[0]] == [281, 285, 3]
    assert top[0][0][1] == "tabby"
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose([q for _, _, q in top[0]], p[[281, 285, 3]], rtol=1e-6)
    assert top[1][0][:2] == (7, "cock")
    digits = models.decode_predictions(np.eye(10)[[4]] * 3, top=2, class_names=models.get("digits").class_names)
    assert digits[0][0][:2] == (4, "4")
    with pytest.raises(ValueError, match="num_classes"):
        models.decode_predictions(np.zeros(1000))


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((2, 13, 11, 3), (9, 9), (1, 1), (0, 0)),  # the channel-padding rewrite (3 -> 4) and the VALID one
        ((1, 12, 17, 1), (7, 7), (1, 1), (3, 3)),  # channel padding with zero padding kept
        ((2, 15, 10, 5), (3, 3), (2, 2), (0, 0)),  # VALID, strided, odd sizes
        ((1, 9, 9, 2), (3, 5), (1, 2), (0, 0)),    # VALID, non-square kernel and stride
        ((2, 8, 8, 3), (3, 3), (1, 1), (1, 1)),    # neither rewrite (VGG's first layer)
    ],
)
def test_conv2d_fast_path_rewrites_equal_a_plain_convolution(shape, kernel, stride, padding):
    """`layers.conv2d` rewrites VALID convolutions and few-channel large kernels for XLA's CPU fast path;
    values and both gradients must equal a plain `lax.conv_general_dilated` (float64)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=shape))
        w = jnp.asarray(rng.normal(size=kernel + (shape[-1], 6)))
        b = jnp.asarray(rng.normal(size=(6,)))

        def plain(x, w):
            y = lax.conv_general_dilated(x, w, stride, [(padding[0],) * 2, (padding[1],) * 2],
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return y + b.reshape(1, 1, 1, -1)

        def ours(x, w):
            return layers.conv2d(x, w, b, stride=stride, padding=padding)

        want, got = plain(x, w), ours(x, w)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        cot = jnp.asarray(rng.normal(size=want.shape))
        gw = jax.vjp(plain, x, w)[1](cot)
        gg = jax.vjp(ours, x, w)[1](cot)
        for a, e in zip(gg, gw):
            assert a.shape == e.shape
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "shape, kernel, padding",
    [
        ((2, 8, 8, 3), (3, 3), (1, 1)),     # VGG's layers
        ((1, 9, 12, 4), (5, 3), (2, 1)),    # non-square kernel and padding (AlexNet's conv2 is 5x5, pad 2)
        ((2, 11, 10, 5), (3, 3), (0, 0)),   # VALID (the cropped rewrite)
        ((1, 7, 9, 2), (4, 2), (1, 0)),     # even kernel: the gradient's padding is asymmetric
    ],
)
def test_conv2d_precomputed_backward_kernel_equals_autodiff(shape, kernel, padding):
    """`conv2d(kernel_t=backward_kernel(w))` (what `Model.frozen` adds) gives the same values and input
    gradient as the plain convolution (float64), and refuses a kernel gradient (the two copies would
    drift apart in training)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.normal(size=shape))
        w = jnp.asarray(rng.normal(size=kernel + (shape[-1], 6)))
        b = jnp.asarray(rng.normal(size=(6,)))
        assert layers.frozen_kernel_applies(w.shape, (1, 1))
        w_t = layers.backward_kernel(w)
        assert w_t.shape == kernel + (6, shape[-1])

        def plain(x):
            return layers.conv2d(x, w, b, padding=padding)

        def frozen(x):
            return layers.conv2d(x, w, b, padding=padding, kernel_t=w_t)

        want, vjp_want = jax.vjp(plain, x)
        got, vjp_got = jax.vjp(frozen, x)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        cot = jnp.asarray(rng.normal(size=want.shape))
        np.testing.assert_allclose(vjp_got(cot)[0], vjp_want(cot)[0], rtol=1e-12, atol=1e-12)
        # Under jit and vmap too (the engine maps one experiment's step over experiments).
        g = jax.jit(jax.vmap(jax.grad(lambda xi: jnp.sum(frozen(xi[None]) ** 2))))(x)
        np.testing.assert_allclose(g, jax.vmap(jax.grad(lambda xi: jnp.sum(plain(xi[None]) ** 2)))(x), rtol=1e-10, atol=1e-12)
        with pytest.raises(ValueError, match="precomputed backward kernels"):
            jax.grad(lambda k: jnp.sum(layers.conv2d(x, k, b, padding=padding, kernel_t=w_t)))(w)


def test_conv2d_backward_kernel_ignored_where_it_does_not_apply():
    """Strided convolutions and the channel-padded large kernels keep autodiff's gradient."""
    assert not layers.frozen_kernel_applies((3, 3, 8, 8), (2, 2))
    assert not layers.frozen_kernel_applies((9, 9, 3, 32), (1, 1))
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.normal(size=(1, 13, 13, 3)))
        w = jnp.asarray(rng.normal(size=(9, 9, 3, 4)))
        b = jnp.zeros(4)
        bogus = jnp.zeros((9, 9, 4, 3))  # would give a zero gradient if it were used
        f = lambda k, kt: jnp.sum(layers.conv2d(x, k, b, padding=(4, 4), kernel_t=kt) ** 2)  # noqa: E731
        np.testing.assert_allclose(jax.grad(f)(w, bogus), jax.grad(f)(w, None), rtol=1e-12)


@pytest.mark.parametrize("arch", ["alexnet", "digits"])
def test_model_frozen_params_same_activations_and_input_gradients(arch):
    """`Model.frozen(params)` adds the backward kernels to every stride-1 convolution; the network's
    activations and its input gradient are unchanged (float64), and training the frozen params is
    refused. A model without `frozen_fn` returns its params unchanged."""
    model = models.get(arch)
    with jax.enable_x64(True):
        layer = model.trunk[-1]  # the trunk holds every convolution; its weights are all apply reads
        rng = np.random.default_rng(0)
        # Random trunk weights in float64 (batch norm's statistics and scales positive).
        params = {name: {leaf: jnp.asarray(np.abs(rng.normal(size=a.shape)) + 0.5 if name.startswith("bn")
                                           else 0.1 * rng.normal(size=a.shape))
                         for leaf, a in entry.items()}
                  for name, entry in model.param_shapes().items() if name in model.trunk}
        frozen = model.frozen(params)
        convs = [s for s in model.layers if s.kind == "conv"]
        with_t = [s.name for s in convs if "kernel_t" in frozen[s.name]]
        assert with_t == [s.name for s in convs if s.stride == (1, 1)] and with_t
        for name in with_t:
            np.testing.assert_array_equal(frozen[name]["kernel_t"], layers.backward_kernel(params[name]["kernel"]))
        h = max(model.min_size[0], 28) + 3
        x = jax.random.uniform(jax.random.key(1), (2, h, h + 2, model.in_channels), jnp.float64)

        def loss(p, images):
            return jnp.sum(jnp.sin(model.apply(p, images, until=layer)[layer]))

        value_and_input_grad = jax.jit(jax.value_and_grad(loss, 1))
        (v_frozen, g_frozen), (v, g) = value_and_input_grad(frozen, x), value_and_input_grad(params, x)
        np.testing.assert_allclose(v_frozen, v, rtol=1e-12)
        np.testing.assert_allclose(g_frozen, g, rtol=1e-10, atol=1e-14)
        with pytest.raises(ValueError, match="precomputed backward kernels"):
            jax.grad(loss)(frozen, x)
    plain = models.Model("plain", model.layers, model.apply_fn)
    assert plain.frozen(params) is params


@pytest.mark.parametrize("map_size", [(1, 1), (2, 2), (3, 5), (4, 7), (7, 7), (8, 8), (3, 9)])
def test_pooled_linear_equals_pooling_then_linear(map_size):
    """The classifier's first product with the adaptive pooling folded into its kernel (maps smaller
    than the pooled grid) equals pooling then the product: values, input and kernel gradients, float64;
    maps at or above the grid size in either axis are pooled first (`pooling_folds`)."""
    out = (7, 6)
    rng = np.random.default_rng(sum(map_size))
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(3, *map_size, 4)))
        kernel = jnp.asarray(rng.normal(size=(out[0] * out[1] * 4, 5)))
        bias = jnp.asarray(rng.normal(size=5))
        cot = jnp.asarray(rng.normal(size=(3, 5)))

        def reference(x, kernel):
            return layers.linear(layers.adaptive_avg_pool(x, out).reshape(3, -1), kernel, bias)

        def folded(x, kernel):
            return layers.pooled_linear(x, kernel, bias, out)

        np.testing.assert_allclose(folded(x, kernel), reference(x, kernel), rtol=1e-12, atol=1e-12)
        grads = [jax.grad(lambda *a: jnp.sum(f(*a) * cot), argnums=(0, 1))(x, kernel) for f in (folded, reference)]
        for ours, ref in zip(*grads):
            np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    folds = map_size[0] <= out[0] and map_size[1] <= out[1] and map_size != out
    assert layers.pooling_folds(map_size, out) == folds


def test_classifier_folds_pooling_unless_the_pooled_map_is_perturbed():
    """VGG below 224 px folds its adaptive pooling into fc6 (logits equal the pooled computation);
    a perturbation of the pooled map is still added before fc6."""
    model = models.get("vgg11")
    params = model.init(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 64, 64, 3)), jnp.float32)
    acts = model.apply(params, x)
    manual = layers.linear(acts["avgpool"].reshape(2, -1), **params["fc6"])
    np.testing.assert_allclose(acts["fc6"], manual, rtol=1e-4, atol=1e-4 * float(jnp.abs(manual).max()))
    delta = jnp.asarray(np.random.default_rng(1).normal(size=acts["avgpool"].shape), jnp.float32)
    perturbed = model.apply(params, x, perturb={"avgpool": delta}, until="fc6")
    manual = layers.linear((acts["avgpool"] + delta).reshape(2, -1), **params["fc6"])
    np.testing.assert_allclose(perturbed["fc6"], manual, rtol=1e-4, atol=1e-4 * float(jnp.abs(manual).max()))


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [((2, 9, 11, 16), (3, 3, 16, 24), (1, 1), (1, 1)),  # SAME-like, odd non-square
     ((2, 10, 9, 16), (3, 3, 16, 16), (2, 2), (0, 0)),  # strided VALID (the extra zero row/column path)
     ((1, 8, 8, 32), (3, 3, 32, 16), (1, 1), (0, 0)),
     ((2, 7, 6, 16), (1, 3, 16, 20), (1, 2), (0, 1)),  # rectangular kernel, mixed stride
     ((1, 12, 12, 3), (9, 9, 3, 16), (1, 1), (0, 0))],  # not applicable: XLA's derivative is kept
)
def test_conv2d_shifted_kernel_gradient_equals_autodiff(shape, kernel, stride, padding):
    """`kernel_grad="shifts"` (one product per kernel tap) against autodiff's convolution in float64:
    values, input gradient and kernel gradient, also under jit and vmap."""
    rng = np.random.default_rng(sum(shape) + sum(kernel))
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=shape))
        k = jnp.asarray(rng.normal(size=kernel))
        b = jnp.asarray(rng.normal(size=kernel[-1]))

        def loss(mode):
            return lambda x, k: jnp.sum(jnp.sin(layers.conv2d(x, k, b, stride=stride, padding=padding, kernel_grad=mode)))

        ref = jax.value_and_grad(loss("xla"), argnums=(0, 1))(x, k)
        ours = jax.jit(jax.value_and_grad(loss("shifts"), argnums=(0, 1)))(x, k)
        np.testing.assert_allclose(ours[0], ref[0], rtol=1e-12)
        for a, r in zip(ours[1], ref[1]):
            np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-10 * float(jnp.abs(r).max()))
        ks = jnp.stack([k, 2 * k])
        batched = jax.vmap(jax.grad(loss("shifts"), argnums=1), in_axes=(None, 0))(x, ks)
        for i in range(2):
            r = jax.grad(loss("xla"), argnums=1)(x, ks[i])
            np.testing.assert_allclose(batched[i], r, rtol=1e-10, atol=1e-10 * float(jnp.abs(r).max()))
        applies = layers.shifted_kernel_grad_applies(kernel)
        jaxpr = str(jax.make_jaxpr(loss("shifts"))(x, k))
        assert ("custom_vjp_call" in jaxpr) == applies
        # "auto" is "shifts" on the CPU backend and XLA's own derivative elsewhere.
        auto = str(jax.make_jaxpr(loss("auto"))(x, k))
        assert ("custom_vjp_call" in auto) == (applies and jax.default_backend() == "cpu")


def test_conv2d_kernel_grad_option_is_checked():
    x, k, b = jnp.zeros((1, 4, 4, 16)), jnp.zeros((3, 3, 16, 16)), jnp.zeros(16)
    with pytest.raises(ValueError, match="kernel_grad must be one of"):
        layers.conv2d(x, k, b, kernel_grad="cudnn")
