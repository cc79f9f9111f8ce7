"""jaxviz.synthesis.losses == independent torch implementations (float64), values and gradients.

The style and content losses are checked through the real network: a torchvision VGG19 (random
weights, its `features` up to relu5_1) in torch, and the same weights converted by the project's
converter in jaxviz, on the same 48x48 images; gradients are taken with respect to the input image
on both sides. Total variation is checked on images directly. The torch references are written
from the peers' formulas (SYNTHESIS.md sections 5-6), here and in tests/torch_ref.py, not with jaxviz code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxviz import models  # noqa: E402
from jaxviz.synthesis import losses  # noqa: E402
from torch_ref import features_float64, torch_gram, torch_taps  # noqa: E402

# torchvision vgg19.features indices of the layers used by neural-style.
TORCH_INDEX = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu4_2": 22, "relu5_1": 29}
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
SIZE = 48
RTOL = 1e-9  # float64 on both sides: |jax - torch| <= RTOL * max|torch|


@pytest.fixture(scope="module")
def vgg19_pair():
    """(torch vgg19.features[:30] in float64, jaxviz vgg19 params in float64 without fc layers)."""
    features, params = features_float64("vgg19", TORCH_INDEX["relu5_1"])
    yield features, params
    del features, params


def _images(seed, n=2):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, SIZE, SIZE, 3))


def _torch_feats(features, images_t):
    """images_t: [N, 3, H, W] float64 in [0, 1] -> {layer: [N, C, h, w]}."""
    return torch_taps(features, images_t, {i: name for name, i in TORCH_INDEX.items()})


def _t(images):
    return torch.tensor(images.transpose(0, 3, 1, 2).copy(), dtype=torch.float64)


# ---------------------------------------------------------------- torch references (the peers' formulas)
def t_gram_loss(f, target, convention):
    """[N]: neural-style StyleLoss / w, pystiche GramLoss, Gatys' paper E_l (unnormalised Grams)."""
    n, c, h, w = f.shape
    if convention == "neural-style":
        return ((torch_gram(f, "chw") - target) ** 2).mean(dim=(1, 2))
    if convention == "pystiche":
        return ((torch_gram(f, "hw") - target) ** 2).mean(dim=(1, 2))
    # Gatys' paper with unnormalised G and A of the same size: sum (G - A)^2 / (4 N^2 M^2)
    return ((torch_gram(f, "none") - target) ** 2).sum(dim=(1, 2)) / (4 * c**2 * (h * w) ** 2)


class TSqrtm(torch.autograd.Function):
    """Newton-Schulz square root with the Lyapunov-iteration backward (Lin & Maji), written from
    the algorithm: forward Y_{k+1} = Y_k T_k, Z_{k+1} = T_k Z_k, T_k = (3I - Z_k Y_k)/2 on A/||A||_F."""

    @staticmethod
    def forward(ctx, a, iters):
        nrm = torch.linalg.matrix_norm(a, keepdim=True)
        y, z = a / nrm, torch.eye(a.shape[-1], dtype=a.dtype).expand_as(a)
        for _ in range(iters):
            t = (3 * torch.eye(a.shape[-1], dtype=a.dtype) - z @ y) / 2
            y, z = y @ t, t @ z
        s = y * nrm.sqrt()
        ctx.save_for_backward(s)
        ctx.iters = iters
        return s

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        nrm = torch.linalg.matrix_norm(s, keepdim=True)
        b, c = s / nrm, g / nrm
        eye3 = 3 * torch.eye(s.shape[-1], dtype=s.dtype)
        for _ in range(ctx.iters):
            k = eye3 - b @ b
            c = 0.5 * (c @ k - b.mT @ (b.mT @ c - c @ b))
            b = 0.5 * b @ k
        return 0.5 * c, None


def t_w2(f, mean_t, srm_t, eps=1e-4, iters=12):
    n, c, h, w = f.shape
    m = f.reshape(n, c, h * w)
    mean = m.mean(-1)
    eye = torch.eye(c, dtype=f.dtype)
    cov = m @ m.mT / (h * w) - mean[:, :, None] * mean[:, None, :] + eps * eye
    cov_t = srm_t - mean_t[:, :, None] * mean_t[:, None, :] + eps * eye
    rt = TSqrtm.apply(cov_t, iters)
    cross = TSqrtm.apply(rt @ cov @ rt, iters)
    return ((mean - mean_t) ** 2).mean(-1) + torch.diagonal(cov_t + cov - 2 * cross, dim1=-2, dim2=-1).mean(-1)


def t_tv(x, form):
    """x: [N, C, H, W]."""
    if form == "squared":
        dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
        dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
        return (dy**2 + dx**2).mean(dim=(1, 2, 3))
    if form == "half-sum-squared":
        dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
        dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
        return 0.5 * (dy**2 + dx**2).sum(dim=(1, 2, 3))
    if form == "l1":
        return (x[:, :, 1:] - x[:, :, :-1]).abs().sum(dim=(1, 2, 3)) + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().sum(dim=(1, 2, 3))
    if form == "magenta":
        _, c, h, w = x.shape
        dy, dx = x[:, :, 1:] - x[:, :, :-1], x[:, :, :, 1:] - x[:, :, :, :-1]
        return (dy**2).sum(dim=(1, 2, 3)) / 2 / ((h - 1) * w * c) + (dx**2).sum(dim=(1, 2, 3)) / 2 / (h * (w - 1) * c)
    if form == "replicate-squared":
        p = torch.nn.functional.pad(x, (0, 1, 0, 1), "replicate")
        dx = p[..., :-1, 1:] - p[..., :-1, :-1]
        dy = p[..., 1:, :-1] - p[..., :-1, :-1]
        return (dx**2 + dy**2).mean(dim=(1, 2, 3))
    if form == "beta":  # Mahendran & Vedaldi, beta = 2 (test_synthesis_transforms.py checks other exponents)
        dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
        dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
        return (dy**2 + dx**2).sum(dim=1).mean(dim=(1, 2))
    p = torch.nn.functional.pad(x, (1, 1, 1, 1), "replicate")
    s1, s2, s3, s4 = slice(1, -1), slice(2, None), slice(None, -1), slice(1, None)
    mean = lambda d: (d**2).mean(dim=(1, 2, 3))  # noqa: E731
    return 2 * (
        mean(p[..., s1, s2] - p[..., s1, s1]) / 3
        + mean(p[..., s2, s1] - p[..., s1, s1]) / 3
        + mean(p[..., s4, s4] - p[..., s3, s3]) / 12
        + mean(p[..., s4, s3] - p[..., s3, s4]) / 12
    )


def _close(a, b, rtol=RTOL):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.max(np.abs(b)), 1e-300)
    err = np.max(np.abs(a - b)) / scale
    assert err <= rtol, f"relative difference {err:.3g} > {rtol:g}"


def _jax_grad(fn, images):
    return jax.grad(lambda x: jnp.sum(fn(x)))(images)


def _torch_value_grad(fn, images):
    x = _t(images).requires_grad_(True)
    v = fn(x)
    v.sum().backward()
    return v.detach().numpy(), x.grad.numpy().transpose(0, 2, 3, 1)


# ---------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def forward(vgg19_pair):
    """Both networks run ONCE on the same images; each test pulls its own loss back through them.

    Returns a dict: jax `acts` of the generated images and `pullback` (from `jax.vjp`, float64),
    style / content activations on both sides, and torch's generated-image leaf `x` with its
    activations `t_acts` (graph kept for repeated `torch.autograd.grad`)."""
    features, params = vgg19_pair
    model = models.get("vgg19")
    gen, style, content = _images(1), _images(2), _images(3, n=1)
    out = {}
    with jax.enable_x64(True):
        p = jax.device_put(params)
        run = jax.jit(lambda p, x: model.apply(p, x, until="relu5_1"))
        acts, pullback = jax.vjp(lambda x: run(p, x), jnp.asarray(gen))
        out.update(acts=acts, pullback=pullback, style=run(p, jnp.asarray(style)), content=run(p, jnp.asarray(content)))
    x = _t(gen).requires_grad_(True)
    out.update(x=x, t_acts=_torch_feats(features, x))
    with torch.no_grad():
        out.update(t_style=_torch_feats(features, _t(style)), t_content=_torch_feats(features, _t(content)))
    yield out
    out.clear()


def _compare(fw, jax_loss, torch_loss, rtol=RTOL):
    """jax_loss(acts) -> [B] and torch_loss(t_acts) -> [B]: values and input gradients agree."""
    with jax.enable_x64(True):
        value, dacts = jax.jit(lambda a: (jax_loss(a), jax.grad(lambda b: jnp.sum(jax_loss(b)))(a)))(fw["acts"])
        (grad,) = fw["pullback"](dacts)
    t_value = torch_loss(fw["t_acts"])
    (t_grad,) = torch.autograd.grad(t_value.sum(), fw["x"], retain_graph=True)
    assert value.shape == (2,)
    _close(value, t_value.detach().numpy(), rtol)
    _close(grad, t_grad.numpy().transpose(0, 2, 3, 1), rtol)


@pytest.mark.parametrize("convention", ["neural-style", "pystiche", "gatys"])
def test_gram_style_loss_matches_torch(forward, convention):
    """Five layers with their own weights; each experiment has its own style image."""
    fw = forward
    weights = {"relu1_1": 0.5, "relu2_1": 1.0, "relu3_1": 2.0, "relu4_1": 0.25, "relu5_1": 3.0}
    with jax.enable_x64(True):
        targets = {l: losses.style_target(fw["style"][l], convention=convention) for l in STYLE_LAYERS}
    norm = {"neural-style": "chw", "pystiche": "hw", "gatys": "none"}[convention]
    t_targets = {l: torch_gram(fw["t_style"][l], norm) for l in STYLE_LAYERS}
    _compare(
        fw,
        lambda a: losses.style_loss(a, targets, convention=convention, layer_weights=weights),
        lambda f: sum(weights[l] * t_gram_loss(f[l], t_targets[l], convention) for l in STYLE_LAYERS),
    )


@pytest.mark.parametrize("form", losses.CONTENT_FORMS)
def test_content_loss_matches_torch(forward, form):
    fw = forward
    target, t_target = fw["content"]["relu4_2"], fw["t_content"]["relu4_2"]
    refs = {
        "mean": lambda f: ((f["relu4_2"] - t_target) ** 2).mean(dim=(1, 2, 3)),
        "half-sum": lambda f: 0.5 * ((f["relu4_2"] - t_target) ** 2).sum(dim=(1, 2, 3)),
    }
    _compare(fw, lambda a: losses.content_loss(a["relu4_2"], target, form=form), refs[form])


@pytest.mark.parametrize("layer", ["relu1_1", "relu2_1"])  # C = 64, 128: torch float64 is slow at 512
def test_wasserstein_style_loss_matches_torch(forward, layer):
    """style-transfer-pytorch HEAD's StyleLossW2 (12 Newton-Schulz iterations, eps 1e-4) and its
    Lyapunov backward, on two experiments with their own style targets."""
    fw = forward
    with jax.enable_x64(True):
        target = losses.style_target(fw["style"][layer], convention="wasserstein")
    sf = fw["t_style"][layer]
    n, c, h, w = sf.shape
    mean_t = sf.mean(dim=(2, 3))
    srm_t = sf.reshape(n, c, h * w) @ sf.reshape(n, c, h * w).mT / (h * w)
    with jax.enable_x64(True):
        assert np.all(np.asarray(losses.style_distance(fw["acts"][layer], target, convention="wasserstein")) > 0)
    _compare(
        fw,
        lambda a: losses.style_distance(a[layer], target, convention="wasserstein"),
        lambda f: t_w2(f[layer], mean_t, srm_t),
        1e-8,
    )


def test_sqrtm_newton_schulz_is_a_square_root():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        a = rng.normal(size=(3, 6, 20))
        spd = jnp.asarray(a @ a.transpose(0, 2, 1) / 20 + 0.5 * np.eye(6)[None])
        s = losses.sqrtm_newton_schulz(spd, 20)
        np.testing.assert_allclose(np.asarray(s @ s), np.asarray(spd), atol=1e-10)
        # Its backward approximates the exact derivative (eigendecomposition-based) on a well-conditioned matrix.
        probe = jnp.asarray(rng.normal(size=(3, 6, 6)))
        g_ns = jax.grad(lambda m: jnp.sum(probe * losses.sqrtm_newton_schulz(m, 20)))(spd)

        def exact(m):
            w, v = jnp.linalg.eigh(m)
            return v @ (jnp.sqrt(w)[..., None] * jnp.swapaxes(v, -1, -2))

        with jax.numpy_rank_promotion("allow"):  # jax 0.4.30's own eigh derivative broadcasts implicitly
            g_exact = jax.grad(lambda m: jnp.sum(probe * exact(m)))(spd)
        sym = lambda g: 0.5 * (g + jnp.swapaxes(g, -1, -2))  # noqa: E731
        np.testing.assert_allclose(np.asarray(sym(g_ns)), np.asarray(sym(g_exact)), atol=1e-8)
    with pytest.raises(ValueError, match="num_iters"):
        losses.sqrtm_newton_schulz(spd, -1)


@pytest.mark.parametrize("form", losses.TV_FORMS)
def test_total_variation_matches_torch(form):
    x = np.random.default_rng(7).uniform(0, 1, (2, 9, 13, 3))
    with jax.enable_x64(True):
        value = losses.total_variation(jnp.asarray(x), form=form)
        grad = _jax_grad(lambda y: losses.total_variation(y, form=form), jnp.asarray(x))
    t_value, t_grad = _torch_value_grad(lambda y: t_tv(y, form), x)
    _close(value, t_value)
    _close(grad, t_grad)


def test_neural_style_lua_tv_gradient_is_the_coded_one():
    """neural-style Lua codes only TVLoss's gradient: grad[i,j] += xd + yd, grad[i,j+1] -= xd,
    grad[i+1,j] -= yd with xd = x[i,j] - x[i,j+1], yd = x[i,j] - x[i+1,j] over (H-1)x(W-1)."""
    x = np.random.default_rng(8).uniform(0, 1, (1, 7, 6, 3))
    with jax.enable_x64(True):
        grad = np.asarray(_jax_grad(lambda y: losses.total_variation(y, form="neural-style-lua"), jnp.asarray(x)))[0]
    img = x[0]
    ref = np.zeros_like(img)
    xd = img[:-1, :-1] - img[:-1, 1:]
    yd = img[:-1, :-1] - img[1:, :-1]
    ref[:-1, :-1] += xd + yd
    ref[:-1, 1:] -= xd
    ref[1:, :-1] -= yd
    np.testing.assert_allclose(grad, ref, atol=1e-12)


def test_normalization_conversion_factors(forward):
    """SYNTHESIS.md section 6: pystiche = C^2 x neural-style; Gatys' E_l = C^2/4 x neural-style;
    and the "gatys" convention equals the paper's formula with unnormalised Grams."""
    with jax.enable_x64(True):
        g = forward["acts"]["relu4_1"][:1]
        s = forward["style"]["relu4_1"][:1]
        c = g.shape[-1]
        val = {conv: float(losses.gram_loss(g, losses.style_target(s, convention=conv), convention=conv)[0]) for conv in ("neural-style", "pystiche", "gatys")}
        m = g.shape[1] * g.shape[2]
        paper = float(jnp.sum((losses.gram(g, normalize="none") - losses.gram(s, normalize="none")) ** 2) / (4 * c**2 * m**2))
    assert c == 512
    assert val["pystiche"] == pytest.approx(c**2 * val["neural-style"], rel=1e-12)
    assert val["gatys"] == pytest.approx(c**2 / 4 * val["neural-style"], rel=1e-12)
    assert val["gatys"] == pytest.approx(paper, rel=1e-12)


def test_batch_targets_and_blend():
    rng = np.random.default_rng(11)
    f = jnp.asarray(rng.normal(size=(3, 5, 4, 6)), jnp.float32)
    s1, s2 = (jnp.asarray(rng.normal(size=(1, 7, 3, 6)), jnp.float32) for _ in range(2))
    for conv in ("neural-style", "pystiche", "gatys", "wasserstein"):
        t1, t2 = losses.style_target(s1, convention=conv), losses.style_target(s2, convention=conv)
        batched = losses.style_distance(f, t1, convention=conv)
        one = [float(losses.style_distance(f[i : i + 1], t1, convention=conv)[0]) for i in range(3)]
        np.testing.assert_allclose(np.asarray(batched), one, rtol=1e-5)
        blend = losses.blend_targets([t1, t2], [1.0, 3.0])
        expect = jax.tree_util.tree_map(lambda a, b: 0.25 * a + 0.75 * b, t1, t2)
        for a, b in zip(jax.tree_util.tree_leaves(blend), jax.tree_util.tree_leaves(expect)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    # The style distance of a style image to its own target is zero (Gram conventions).
    for conv in ("neural-style", "pystiche", "gatys"):
        assert float(losses.style_distance(s1, losses.style_target(s1, convention=conv), convention=conv)[0]) == 0.0


def test_normalize_gradient_scales_each_experiment():
    rng = np.random.default_rng(12)
    f = jnp.asarray(rng.normal(size=(2, 4, 4, 3)))
    target = jnp.asarray(rng.normal(size=(1, 4, 4, 3)))
    fn = lambda x, w: jnp.sum(losses.content_loss(losses.normalize_gradient(x, w), target))  # noqa: E731
    assert float(fn(f, 5.0)) == pytest.approx(float(jnp.sum(losses.content_loss(f, target))))
    g = jax.grad(fn)(f, 5.0)
    np.testing.assert_allclose(np.asarray(jnp.sum(jnp.abs(g), axis=(1, 2, 3))), [5.0, 5.0], rtol=1e-5)
    raw = jax.grad(lambda x: jnp.sum(losses.content_loss(x, target)))(f)
    cos = jnp.sum(g * raw, axis=(1, 2, 3)) / jnp.sqrt(jnp.sum(g * g, axis=(1, 2, 3)) * jnp.sum(raw * raw, axis=(1, 2, 3)))
    np.testing.assert_allclose(np.asarray(cos), [1.0, 1.0], atol=1e-6)
    g2 = jax.grad(fn)(f, jnp.asarray([1.0, 2.0]))
    np.testing.assert_allclose(np.asarray(jnp.sum(jnp.abs(g2), axis=(1, 2, 3))), [1.0, 2.0], rtol=1e-5)


def test_bad_input_is_a_clear_error():
    f = jnp.ones((1, 4, 4, 3))
    with pytest.raises(ValueError, match="convention"):
        losses.style_target(f, convention="johnson")
    with pytest.raises(ValueError, match="total-variation form"):
        losses.total_variation(f, form="l3")
    with pytest.raises(ValueError, match="normalize"):
        losses.gram(f, normalize="c")
    with pytest.raises(ValueError, match="NHWC"):
        losses.gram(jnp.ones((4, 4, 3)))
    with pytest.raises(ValueError, match="Gram matrix"):
        losses.gram_loss(f, jnp.ones((1, 4, 4)))
    with pytest.raises(ValueError, match="does not match"):
        losses.content_loss(f, jnp.ones((1, 4, 5, 3)))
    with pytest.raises(ValueError, match="no weight"):
        losses.weighted_sum({"a": jnp.ones(1), "b": jnp.ones(1)}, {"a": 1.0})
    with pytest.raises(ValueError, match="no features"):
        losses.style_loss({"relu1_1": f}, {"relu2_1": losses.gram(f)})
    with pytest.raises(ValueError, match="blend weights"):
        losses.blend_targets([losses.gram(f)], [-1.0])
    with pytest.raises(ValueError, match="Moments"):
        losses.wasserstein_style_loss(f, losses.gram(f))
