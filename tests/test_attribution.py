"""Attribution: parity with independent torch implementations (float64, same random weights), and
properties (batch == loop, vmap over targets == loop, jit without recompilation, brute-force loops)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import attribution as A
from jaxviz import objectives as O
from jaxviz.models.sequential import apply_layers
from jaxviz.models.vgg import VGGConfig, make_vgg
from torch_ref import release_memory, shared_float64_model

TINY = VGGConfig(convs=(8, "M", 16, "M", 16), hidden=(32,), num_classes=10, pooled_size=(2, 2))


def _random_params(model, seed=0):
    """He-normal kernels and small random biases, drawn with numpy (no compilation); the classifier
    is scaled up so that class probabilities are far from uniform (occlusion maps are not flat)."""
    rng = np.random.default_rng(seed)
    shapes = model.param_shapes()
    params = {}
    for name, leaves in shapes.items():
        if "kernel" in leaves:
            shape = leaves["kernel"].shape
            std = np.sqrt(2.0 / np.prod(shape[:-1])) * (8.0 if name == "fc5" else 1.0)
            params[name] = {"kernel": rng.normal(0, std, shape).astype(np.float32),
                            "bias": rng.normal(0, 0.1, leaves["bias"].shape).astype(np.float32)}
        else:  # batch norm: random statistics and affine parameters, so that it is not the identity
            c = leaves["scale"].shape[0]
            params[name] = {k: v.astype(np.float32) for k, v in {
                "scale": rng.normal(1.0, 0.3, c), "bias": rng.normal(0.0, 0.3, c),
                "mean": rng.normal(0.0, 0.3, c), "var": rng.uniform(0.5, 2.0, c)}.items()}
    return jax.tree.map(jnp.asarray, params)


@pytest.fixture(scope="module")
def tiny():
    model = make_vgg("tiny", TINY)
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 32, 32, 3)), jnp.float32)
    return model, _random_params(model), images


def close(a, b, rtol=1e-4):
    """Equal up to `rtol` of the largest magnitude (float32 batch sizes change XLA's summation order)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(np.abs(b).max(), 1e-30))


# --------------------------------------------------------------------------- properties
KEY = jax.random.key(42)
TECHNIQUES = {
    "saliency": A.saliency,
    "guided_backprop": A.guided_backprop,
    "guided_channel": lambda m, p, x, t: A.guided_backprop(m, p, x, O.channel("relu2_1", t)),
    "gradcam": A.gradcam,
    "guided_gradcam": A.guided_gradcam,
    "smoothgrad": functools.partial(A.smoothgrad, key=KEY, num_samples=4, batch_size=3),
    "integrated_gradients": lambda m, p, x, t: A.integrated_gradients(m, p, x, t, steps=6, batch_size=4),
    "occlusion": functools.partial(A.occlusion, size=8, stride=8, batch_size=5),
}


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_batch_vmap_jit(tiny, name):
    model, params, x = tiny
    technique = TECHNIQUES[name]
    fn = jax.jit(technique, static_argnums=0)
    classes = np.array([3, 7, 1])
    batch = fn(model, params, x, jnp.asarray(classes))  # one class per image
    loop = [fn(model, params, x[i : i + 1], int(c)) for i, c in enumerate(classes)]
    jax.tree.map(lambda b, *l: close(b, np.concatenate(l)), batch, *loop)

    # A new class index reuses the compiled function.
    size = fn._cache_size()
    fn(model, params, x[:1], 5)
    fn(model, params, x, jnp.asarray([0, 2, 4]))
    assert fn._cache_size() == size

    # Many classes for one image under vmap == a loop over classes.
    mapped = jax.jit(jax.vmap(lambda c: technique(model, params, x[:1], c)))(jnp.asarray([2, 5]))
    jax.tree.map(lambda v, *l: close(v, np.stack(l)), mapped, *[fn(model, params, x[:1], c) for c in (2, 5)])


def test_guided_relu_rules():
    x = jnp.array([-1.0, 2.0, 3.0, -4.0])
    g = jnp.array([5.0, -6.0, 7.0, -8.0])
    for relu, expect in [(A.guided_relu, [0.0, 0.0, 7.0, 0.0]), (A.deconv_relu, [5.0, 0.0, 7.0, 0.0])]:
        y, pullback = jax.vjp(relu, x)
        np.testing.assert_array_equal(y, [0.0, 2.0, 3.0, 0.0])
        np.testing.assert_array_equal(pullback(g)[0], expect)


@pytest.mark.parametrize("layer", ["conv2_1", "bn2_1", "pool1", "relu2_1"])
def test_gradients_at_layer_match_tail_network(layer):
    """The gradient at any layer (read through a zero perturbation of its output) equals the
    gradient of the network's tail run from that layer's activation."""
    model = make_vgg("tiny_bn", dataclasses.replace(TINY, batch_norm=True))
    params = _random_params(model)
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 32, 32, 3)), jnp.float32)
    target = jnp.asarray([4, 6])
    act, grad = jax.jit(A.activation_gradients, static_argnums=(0, 4))(model, params, x, target, layer)

    @jax.jit
    def reference(x):
        a = model.apply(params, x, until=layer)[layer]
        tail = model.layers[model.index(layer) + 1 :]
        return a, jax.grad(lambda a: jnp.sum(O.class_logit(target, "fc5")(apply_layers(tail, params, a))))(a)

    ref_act, ref_grad = reference(x)
    close(act, ref_act, 1e-6)
    close(grad, ref_grad, 1e-5)


def test_occlusion_equals_naive_loop(tiny):
    model, params, x = tiny
    x = x[:2]
    classes = np.array([1, 8])
    scores = jax.jit(lambda im: jax.nn.softmax(model.scores(params, im), axis=-1))
    size, stride = (8, 10), (6, 5)
    for fill in ("mean", "zeros", 0.5, np.array([0.1, 0.9, 0.4], np.float32)):
        omap = A.occlusion(model, params, x, jnp.asarray(classes), size=size, stride=stride, fill=fill, batch_size=7)
        nh, nw = (32 - 8) // 6 + 1, (32 - 10) // 5 + 1
        assert omap.shape == (2, nh, nw)
        ref = np.zeros((2, nh, nw))
        xn = np.asarray(x)
        for i in range(nh):
            for j in range(nw):
                occluded = xn.copy()
                for n in range(2):
                    value = {"mean": xn[n].mean(axis=(0, 1)), "zeros": 0.0}.get(fill, fill) if isinstance(fill, str) else fill
                    occluded[n, 6 * i : 6 * i + 8, 5 * j : 5 * j + 10, :] = value
                ref[:, i, j] = np.asarray(scores(occluded))[np.arange(2), classes]
        close(omap, ref, 1e-5)
    assert np.ptp(ref) > 1e-3  # the map is not flat: the test can tell positions apart

    # Painting: each pixel is the mean over the patches covering it (edge pixels: the last covered).
    painted = np.asarray(A.occlusion_image(omap, (32, 32), size=size, stride=stride))
    for n, y, xx in [(0, 0, 0), (1, 7, 12), (0, 31, 31), (1, 20, 3), (0, 13, 29)]:
        yc, xc = min(y, 6 * (nh - 1) + 7), min(xx, 5 * (nw - 1) + 9)
        cover = [(i, j) for i in range(nh) for j in range(nw) if 6 * i <= yc < 6 * i + 8 and 5 * j <= xc < 5 * j + 10]
        np.testing.assert_allclose(painted[n, y, xx], np.mean([omap[n, i, j] for i, j in cover]), rtol=1e-5)


def test_occlusion_objective_target(tiny):
    model, params, x = tiny
    logit = A.occlusion(model, params, x[:1], O.class_logit(2), size=16, stride=16)
    occluded = np.asarray(x[:1]).copy()
    occluded[:, 16:, :16] = np.asarray(x[0]).mean(axis=(0, 1))
    np.testing.assert_allclose(logit[0, 1, 0], model.scores(params, occluded)[0, 2], rtol=1e-5)


def test_smoothgrad_noise_and_modes(tiny):
    model, params, x = tiny
    target = jnp.asarray([2, 9, 4])
    sg = jax.jit(A.smoothgrad, static_argnums=0, static_argnames=("num_samples", "mode", "batch_size"))
    key, num = jax.random.key(7), 5
    # The documented noise: sample s adds sigma_n * normal(keys[s], (H, W, C)) to image n.
    grad = jax.jit(A.input_gradients, static_argnums=0)
    sigma = 0.15 * (np.asarray(x).max(axis=(1, 2, 3)) - np.asarray(x).min(axis=(1, 2, 3)))
    grads = np.stack([
        grad(model, params, x + jnp.asarray(sigma).reshape(-1, 1, 1, 1) * jax.random.normal(k, x.shape[1:])[None], target)
        for k in jax.random.split(key, num)
    ]).astype(np.float64)
    # Chunks of 2 (the last one padded) and a single chunk give the same statistics.
    for mode, batch_size, ref in [("mean", 2, grads.mean(0)), ("squared", None, (grads**2).mean(0)),
                                  ("variance", 2, grads.var(0))]:
        close(sg(model, params, x, target, key=key, num_samples=num, mode=mode, batch_size=batch_size), ref, 1e-4)
    assert np.abs(grads.std(0)).max() > 0.1 * np.abs(grads.mean(0)).max()  # the noise changes the gradients

    first = sg(model, params, x, target, key=key, num_samples=num, batch_size=2)
    np.testing.assert_array_equal(first, sg(model, params, x, target, key=key, num_samples=num, batch_size=2))
    other = sg(model, params, x, target, key=jax.random.key(8), num_samples=num, batch_size=2)
    assert np.abs(np.asarray(other) - np.asarray(first)).max() > 1e-2 * np.abs(np.asarray(first)).max()
    # vmap over seeds == a loop over seeds.
    keys = jax.random.split(jax.random.key(3), 2)
    mapped = jax.jit(jax.vmap(lambda k: A.smoothgrad(model, params, x, target, key=k, num_samples=num, batch_size=2)))(keys)
    close(mapped, np.stack([sg(model, params, x, target, key=k, num_samples=num, batch_size=2) for k in keys]))


def test_integrated_gradients_completeness_and_manual_loop(tiny):
    model, params, x = tiny
    target = jnp.asarray([0, 5, 3])
    ig = jax.jit(A.integrated_gradients, static_argnums=0, static_argnames=("steps", "method", "batch_size"))
    grad = jax.jit(A.input_gradients, static_argnums=0)
    baseline = jnp.full(x.shape[1:], 0.5)
    steps = 9
    for method, (alphas, weights) in {
        "trapezoid": (np.linspace(0, 1, steps), np.r_[0.5, np.ones(steps - 2), 0.5] / (steps - 1)),
        "gauss_legendre": ((np.polynomial.legendre.leggauss(steps)[0] + 1) / 2, np.polynomial.legendre.leggauss(steps)[1] / 2),
    }.items():
        manual = sum(w * np.asarray(grad(model, params, baseline[None] + a * (x - baseline[None]), target), np.float64)
                     for a, w in zip(alphas, weights)) * np.asarray(x - baseline[None])
        out = ig(model, params, x, target, baseline=baseline, steps=steps, method=method, batch_size=4)
        close(out.attributions, manual, 1e-4)

    # Completeness: attributions sum to f(x) - f(0) within 1%, and `delta` reports the gap. A random
    # ReLU network's path integrand has many kinks, so this takes a few hundred points; the classes
    # with the largest score change make the relative error meaningful.
    change = model.scores(params, x) - model.scores(params, jnp.zeros_like(x))
    target = jnp.argmax(jnp.abs(change), axis=-1)
    scores = np.asarray(change)[np.arange(3), np.asarray(target)]
    out = ig(model, params, x, target, steps=256, batch_size=64)
    total = np.asarray(out.attributions, np.float64).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(total, scores, rtol=0.01)
    np.testing.assert_allclose(out.delta, total - scores, atol=1e-4 * np.abs(scores).max())


def test_gradcam_options(tiny):
    model, params, x = tiny
    assert A.default_cam_layer(model) == "relu3_1"
    raw = A.gradcam(model, params, x, 3, upsample=False, relu=False)
    low = A.gradcam(model, params, x, 3, upsample=False)
    np.testing.assert_allclose(low, np.maximum(raw, 0))
    assert raw.min() < 0  # otherwise the relu option is untested
    up = A.gradcam(model, params, x, 3)
    close(up, jax.image.resize(low, (3, 32, 32), "bilinear"), 1e-6)
    norm = A.gradcam(model, params, x, 3, normalize=True)
    np.testing.assert_allclose(norm.min(axis=(1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(norm.max(axis=(1, 2)), 1, atol=1e-6)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda m, p, x: A.saliency(m, p, x[0], 1), ValueError, "batch of images"),
        (lambda m, p, x: A.saliency(m, p, x.transpose(0, 3, 1, 2), 1), ValueError, "channels"),
        (lambda m, p, x: A.guided_backprop(m, p, x, 10), ValueError, "out of range"),
        (lambda m, p, x: A.integrated_gradients(m, p, x, -1), ValueError, "out of range"),
        (lambda m, p, x: A.occlusion(m, p, x, 12), ValueError, "out of range"),
        (lambda m, p, x: A.saliency(m, p, x, jnp.asarray([1, 2])), ValueError, r"\[N\] = \[3\]"),
        (lambda m, p, x: A.saliency(m, p, x, 1.5), ValueError, "integers"),
        (lambda m, p, x: A.gradcam(m, p, x, 1, layer="conv9_9"), ValueError, "no layer 'conv9_9'"),
        (lambda m, p, x: A.guided_backprop(m, p, x, O.channel("relu7", 0)), ValueError, "no layer 'relu7'"),
        (lambda m, p, x: A.guided_backprop(m, p, x, O.channel("relu2_1", 16)), ValueError, "out of range"),
        (lambda m, p, x: A.gradcam(m, p, x, 1, layer="fc4"), ValueError, "spatial layer"),
        (lambda m, p, x: A.gradcam(m, p, x, O.channel("relu1_1", 0), layer="relu2_1"), ValueError, "does not depend"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, size=40), ValueError, "larger than the image"),
        (lambda m, p, x: A.smoothgrad(m, p, x, 1, key=KEY, mode="max"), ValueError, "mode"),
        (lambda m, p, x: A.integrated_gradients(m, p, x, 1, baseline=jnp.zeros((5, 5, 3))), ValueError, "baseline"),
        (lambda m, p, x: A.integrated_gradients(m, p, x, 1, steps=1), ValueError, "steps >= 2"),
    ],
)
def test_bad_input(tiny, call, error, match):
    model, params, x = tiny
    with pytest.raises(error, match=match):
        call(model, params, x)


# --------------------------------------------------------------------------- torch parity (float64)
def _torch_setup(arch, size):
    """`(torch, module, model, params, images)`."""
    torch = pytest.importorskip("torch")
    from jaxviz import models

    # torchvision's module in float64 whose weights are views of the jaxviz float64 params (one copy).
    module, params = shared_float64_model(arch)
    model = models.get(arch)
    images = np.random.default_rng(0).uniform(size=(2, size, size, 3))
    return torch, module, model, params, images


def _torch_grad(torch, module, model, images, score, hooks=()):
    """d score / d images (NHWC, [0, 1]) in torch; `score(module, normalised NCHW) -> [N]`."""
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    mean = torch.tensor(model.mean, dtype=torch.float64).reshape(1, 3, 1, 1)
    std = torch.tensor(model.std, dtype=torch.float64).reshape(1, 3, 1, 1)
    handles = [m.register_full_backward_hook(h) for m, h in hooks]
    try:
        score(module, (x - mean) / std).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    return x.grad.numpy().transpose(0, 2, 3, 1)


def _relu_hooks(torch, module, rule):
    if rule == "guided":  # the ReLU's own gradient (x > 0) * g, then keep the positive part
        hook = lambda m, gin, gout: (gin[0].clamp(min=0),)  # noqa: E731
    else:  # deconvnet: rectify the incoming gradient, ignoring the forward pass
        hook = lambda m, gin, gout: (gout[0].clamp(min=0),)  # noqa: E731
    return [(m, hook) for m in module.modules() if isinstance(m, torch.nn.ReLU)]


def _class_score(classes):
    return lambda module, x: module(x)[np.arange(len(classes)), classes]


def _torch_gradcam(torch, module, model, images, classes, feature_index):
    """Grad-CAM with a forward hook on `module.features[feature_index]` and its retained gradient."""
    store = {}

    def keep(m, inputs, output):
        output.retain_grad()
        store["a"] = output

    handle = module.features[feature_index].register_forward_hook(keep)
    try:
        _torch_grad(torch, module, model, images, _class_score(classes))
    finally:
        handle.remove()
    a = store["a"]
    w = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((w * a).sum(dim=1, keepdim=True))
    up = torch.nn.functional.interpolate(cam, size=images.shape[1:3], mode="bilinear", align_corners=False)
    return cam[:, 0].detach().numpy(), up[:, 0].detach().numpy()


@pytest.fixture
def drop_compiled():
    """After each float64 torch-parity test: drop its compiled float64 programs (each test compiles its
    own; kept, they added 0.4 GB over the VGG11 class on top of its 1 GB of weights)."""
    yield
    jax.clear_caches()
    release_memory()


@pytest.mark.usefixtures("drop_compiled")
class TestTorchVGG11:
    @pytest.fixture(scope="class")
    @classmethod
    def setup(cls):
        held = list(_torch_setup("vgg11", 32))
        yield held
        held.clear()  # drop the 1 GB of float64 weights before the next class builds its own
        release_memory()

    def test_saliency_and_guided_backprop(self, setup):
        torch, module, model, params, x = setup
        classes = np.array([3, 811])
        with jax.enable_x64(True):
            sal = jax.jit(A.saliency, static_argnums=0)(model, params, x, jnp.asarray(classes))
            gbp = jax.jit(A.guided_backprop, static_argnums=0)(model, params, x, jnp.asarray(classes))
            # An intermediate channel: mean of channel 7 of relu4_2 (torch: features[14]).
            gbp_ch = jax.jit(A.guided_backprop, static_argnums=0)(model, params, x, O.channel("relu4_2", 7))
        g = _torch_grad(torch, module, model, x, _class_score(classes))
        close(sal, np.abs(g).max(axis=-1), 1e-9)
        ref = _torch_grad(torch, module, model, x, _class_score(classes), _relu_hooks(torch, module, "guided"))
        close(gbp, ref, 1e-9)
        assert np.abs(ref - g).max() > 0.1 * np.abs(g).max()  # guided differs from the plain gradient
        ref_ch = _torch_grad(torch, module, model, x, lambda m, xx: m.features[:15](xx)[:, 7].mean(dim=(1, 2)),
                             _relu_hooks(torch, module, "guided"))
        close(gbp_ch, ref_ch, 1e-9)

    def test_gradcam(self, setup):
        torch, module, model, params, x = setup
        classes = np.array([5, 200])
        cam_fn = jax.jit(A.gradcam, static_argnums=0, static_argnames=("layer", "upsample"))
        # Default layer relu5_2 (features[19], the last ReLU, not the pool), and conv5_2 (features[18]).
        for layer, index in ((None, 19), ("conv5_2", 18)):
            with jax.enable_x64(True):
                low = cam_fn(model, params, x, jnp.asarray(classes), layer=layer, upsample=False)
                up = cam_fn(model, params, x, jnp.asarray(classes), layer=layer)
            ref_low, ref_up = _torch_gradcam(torch, module, model, x, classes, index)
            assert low.shape == (2, 2, 2) and up.shape == (2, 32, 32)
            close(low, ref_low, 1e-9)
            close(up, ref_up, 1e-9)

    def test_integrated_gradients(self, setup):
        torch, module, model, params, x = setup
        classes = np.array([9, 17])
        # A textured baseline: on a constant image (e.g. black) every max-pool window holds values that
        # are equal but for rounding, and torch's and XLA's convolutions round differently, so the two
        # pick different maxima there (jaxviz's ties, like torch's, go to the first maximum).
        baseline = 0.3 * np.random.default_rng(1).uniform(size=x.shape[1:])
        self._check_ig(torch, module, model, params, x, classes, baseline)

    @staticmethod
    def _check_ig(torch, module, model, params, x, classes, baseline):
        steps = 6
        with jax.enable_x64(True):
            out = jax.jit(A.integrated_gradients, static_argnums=0, static_argnames=("steps", "batch_size"))(
                model, params, x, jnp.asarray(classes), baseline=baseline, steps=steps, batch_size=4)
        weights = np.r_[0.5, np.ones(steps - 2), 0.5] / (steps - 1)
        path = [baseline[None] + a * (x - baseline[None]) for a in np.linspace(0, 1, steps)]
        avg = sum(w * _torch_grad(torch, module, model, p, _class_score(classes)) for p, w in zip(path, weights))
        attributions = (x - baseline[None]) * avg
        close(out.attributions, attributions, 1e-9)
        with torch.no_grad():
            mean = torch.tensor(model.mean, dtype=torch.float64).reshape(1, 3, 1, 1)
            std = torch.tensor(model.std, dtype=torch.float64).reshape(1, 3, 1, 1)
            f = [_class_score(classes)(module, (torch.from_numpy(p.transpose(0, 3, 1, 2).copy()) - mean) / std).numpy()
                 for p in (path[-1], path[0])]
        diff = f[0] - f[1]
        np.testing.assert_allclose(out.delta, attributions.sum(axis=(1, 2, 3)) - diff, rtol=0, atol=1e-9 * np.abs(diff).max())

    # ------------------------------------------------------------------ captum 0.9.0, same weights
    @staticmethod
    def _captum(setup):
        """`(torch, net, model, params, x)` with `net` taking images in [0, 1], as jaxviz does."""
        pytest.importorskip("captum")
        torch, module, model, params, x = setup
        mean = torch.tensor(model.mean, dtype=torch.float64).reshape(1, 3, 1, 1)
        std = torch.tensor(model.std, dtype=torch.float64).reshape(1, 3, 1, 1)

        class Normalized(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = module

            def forward(self, images):
                return self.net((images - mean) / std)

        return torch, Normalized(), model, params, x

    @staticmethod
    def _nchw(torch, images):
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).requires_grad_(True)

    def test_noise_tunnel(self, setup, monkeypatch):
        """SmoothGrad with the same noise as captum's NoiseTunnel(Saliency): `absolute=True` is
        captum's default (mean |gradient|), `absolute=False` its `abs=False`; SmoothGrad^2 and VarGrad."""
        from captum.attr import NoiseTunnel, Saliency

        torch, net, model, params, x = self._captum(setup)
        classes, num, key = [5, 200], 3, jax.random.key(11)
        with jax.enable_x64(True):
            eps = np.stack([np.asarray(jax.random.normal(k, x.shape[1:], jnp.float64)) for k in jax.random.split(key, num)])
            sigma = 0.15 * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
            sg = functools.partial(A.smoothgrad, model, params, x, jnp.asarray(classes), key=key, num_samples=num, batch_size=2)
            ours = {(mode, absolute): np.asarray(sg(mode=mode, absolute=absolute))
                    for mode, absolute in [("mean", True), ("mean", False), ("squared", False), ("variance", True)]}
        # captum draws `torch.normal(0, stdev)` for images repeated `nt_samples` times each (image-major):
        # give it jaxviz's noise, sigma_n * eps_s, in that order.
        noise = (sigma[:, None, None, None, None] * eps[None]).reshape(-1, *x.shape[1:]).transpose(0, 3, 1, 2)
        real_normal = torch.normal

        def fake_normal(mean, std, *args, **kwargs):
            if isinstance(std, torch.Tensor) and tuple(std.shape) == noise.shape:
                return torch.from_numpy(noise.copy())
            return real_normal(mean, std, *args, **kwargs)

        monkeypatch.setattr(torch, "normal", fake_normal)
        tunnel = NoiseTunnel(Saliency(net))
        names = {"mean": "smoothgrad", "squared": "smoothgrad_sq", "variance": "vargrad"}
        for (mode, absolute), got in ours.items():
            ref = tunnel.attribute(self._nchw(torch, x), nt_type=names[mode], nt_samples=num, stdevs=1.0,
                                   target=classes, abs=absolute).detach().numpy().transpose(0, 2, 3, 1)
            close(got, ref, 1e-9)
        assert np.abs(ours["mean", True] - np.abs(ours["mean", False])).max() > 1e-3 * np.abs(ours["mean", True]).max()

    def test_guided_gradcam_upsampling(self, setup):
        """guided_gradcam(upsample="nearest") is captum's GuidedGradCam default; "bilinear" its
        interpolate_mode="bilinear"; gradcam(upsample="nearest") is torch's legacy nearest."""
        from captum.attr import GuidedGradCam

        torch, net, model, params, x = self._captum(setup)
        classes = [5, 200]
        ggc = jax.jit(A.guided_gradcam, static_argnums=0, static_argnames=("upsample",))
        layer = net.net.features[19]  # relu5_2, jaxviz's default Grad-CAM layer for VGG11
        with jax.enable_x64(True):
            ours = {mode: ggc(model, params, x, jnp.asarray(classes), upsample=mode) for mode in ("nearest", "bilinear")}
            low = A.gradcam(model, params, x, jnp.asarray(classes), upsample=False)
            near = A.gradcam(model, params, x, jnp.asarray(classes), upsample="nearest")
        for mode, got in ours.items():
            ref = GuidedGradCam(net, layer).attribute(self._nchw(torch, x), target=classes, interpolate_mode=mode)
            close(got, ref.detach().numpy().transpose(0, 2, 3, 1), 1e-9)
        assert np.abs(np.asarray(ours["nearest"] - ours["bilinear"])).max() > 1e-3 * np.abs(np.asarray(ours["bilinear"])).max()
        with jax.enable_x64(True):  # the float64 maps stay float64 (older jax casts them outside)
            for size in ((32, 32), (13, 7)):  # integer and fractional scale factors
                ref = torch.nn.functional.interpolate(torch.from_numpy(np.array(low))[:, None], size=size, mode="nearest")
                got = A._upsample(jnp.asarray(low), size, "nearest")
                np.testing.assert_array_equal(got, ref[:, 0].numpy())  # nearest only copies values
            np.testing.assert_array_equal(near, A._upsample(low, (32, 32), "nearest"))


@pytest.mark.usefixtures("drop_compiled")
class TestTorchAlexNet:
    @pytest.fixture(scope="class")
    @classmethod
    def setup(cls):
        held = list(_torch_setup("alexnet", 64))
        yield held
        held.clear()  # drop the 1 GB of float64 weights before the next class builds its own
        release_memory()

    def test_deconvnet_guided_and_gradcam(self, setup):
        torch, module, model, params, x = setup
        classes = np.array([42, 7])
        fns = {name: jax.jit(getattr(A, name), static_argnums=0) for name in ("deconvnet", "guided_backprop")}
        with jax.enable_x64(True):
            # The deconvnet rule lets gradients through inactive units, so it reaches max-pool windows
            # that the ReLU zeroed entirely (exact ties): jaxviz, like torch, routes them to the first.
            dec = fns["deconvnet"](model, params, x, jnp.asarray(classes))
            gbp = fns["guided_backprop"](model, params, x, jnp.asarray(classes))
            cam = jax.jit(functools.partial(A.gradcam, upsample=False), static_argnums=0)(model, params, x, jnp.asarray(classes))
            cam_pool = jax.jit(functools.partial(A.gradcam, upsample=False, layer="pool2"), static_argnums=0)(
                model, params, x, jnp.asarray(classes))
        assert A.default_cam_layer(model) == "relu5"
        close(gbp, _torch_grad(torch, module, model, x, _class_score(classes), _relu_hooks(torch, module, "guided")), 1e-9)
        ref_low, _ = _torch_gradcam(torch, module, model, x, classes, 11)  # features[11]: relu5
        close(cam, ref_low, 1e-9)
        ref_pool, _ = _torch_gradcam(torch, module, model, x, classes, 5)  # features[5]: pool2
        close(cam_pool, ref_pool, 1e-9)
        ref = _torch_grad(torch, module, model, x, _class_score(classes), _relu_hooks(torch, module, "deconv"))
        close(dec, ref, 1e-9)
