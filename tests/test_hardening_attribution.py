"""Attribution under bad or hostile input: no silent wrong answers (issue 12).

Classes of problem, each over every technique:
  * traced indices out of range (under jit / vmap) give NaN for that image, never another class's map;
  * traced NaN / inf pixels, NaN noise or fill give NaN for that image, never a finite-looking map;
  * concrete bad input (empty batch, non-finite or out-of-range pixels, bad sizes, noise, fill, loop)
    is a ValueError naming the problem, raised before any work;
  * chunk loops: a Python loop and lax.scan give the same numbers, and a new class does not recompile.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import attribution as A
from jaxviz import loops
from jaxviz import objectives as O
from jaxviz.models import base, layers
from jaxviz.models.vgg import VGGConfig, make_vgg

TINY = VGGConfig(convs=(8, "M", 16, "M", 16), hidden=(32,), num_classes=10, pooled_size=(2, 2))
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def tiny():
    """A 10-class VGG-style network with random weights (drawn with numpy: no compilation), and two
    images."""
    model = make_vgg("tiny_hardening", TINY)
    rng = np.random.default_rng(0)
    params = {}
    for name, leaves in model.param_shapes().items():
        shape = leaves["kernel"].shape
        scale = np.sqrt(2.0 / np.prod(shape[:-1])) * (8.0 if name == "fc5" else 1.0)
        params[name] = {"kernel": jnp.asarray(rng.normal(0, scale, shape), jnp.float32),
                        "bias": jnp.asarray(rng.normal(0, 0.1, leaves["bias"].shape), jnp.float32)}
    images = jnp.asarray(rng.uniform(size=(2, 32, 32, 3)), jnp.float32)
    return model, params, images


# Each technique as `f(model, params, images, target) -> array`, small settings.
TECHNIQUES = {
    "input_gradients": A.input_gradients,
    "saliency": A.saliency,
    "guided_backprop": A.guided_backprop,
    "deconvnet": A.deconvnet,
    "activation_gradients": lambda m, p, x, t: A.activation_gradients(m, p, x, t, "relu2_1")[1],
    "gradcam": A.gradcam,
    "gradcam_normalized": functools.partial(A.gradcam, normalize=True),
    "guided_gradcam_nearest": functools.partial(A.guided_gradcam, upsample="nearest"),
    "smoothgrad": functools.partial(A.smoothgrad, key=KEY, num_samples=3, batch_size=2),
    "smoothgrad_variance": functools.partial(A.smoothgrad, key=KEY, num_samples=2, mode="variance", absolute=True),
    "integrated_gradients": lambda m, p, x, t: A.integrated_gradients(m, p, x, t, steps=3).attributions,
    "ig_delta": lambda m, p, x, t: A.integrated_gradients(m, p, x, t, steps=3, batch_size=2).delta,
    "occlusion": functools.partial(A.occlusion, size=16, stride=16, batch_size=3),
    "occlusion_logit": lambda m, p, x, t: A.occlusion(m, p, x, O.class_logit(t), size=16, stride=16),
}


def _per_image(out):
    out = np.asarray(out, np.float64)
    return out.reshape(out.shape[0], -1)


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_traced_bad_values_give_nan_for_that_image_only(tiny, name):
    """Under jit (one compilation): classes out of range (1000, -1, 50) and NaN / inf pixels make that
    image's result NaN everywhere; the other image's result is unchanged."""
    model, params, x = tiny
    f = jax.jit(lambda x, c: TECHNIQUES[name](model, params, x, c))
    ref = _per_image(f(x, jnp.asarray([3, 4])))
    assert np.isfinite(ref).all()
    nan_pixel = x.at[1, 5, 7, 0].set(jnp.nan)
    inf_pixel = x.at[0, 20, 3, 2].set(jnp.inf)
    for images, classes, bad in [
        (x, [3, 50], 1),
        (x, [1000, 4], 0),
        (x, [3, -1], 1),
        (nan_pixel, [3, 4], 1),
        (inf_pixel, [3, 4], 0),
    ]:
        out = _per_image(f(images, jnp.asarray(classes)))
        assert np.isnan(out[bad]).all(), (classes, bad)
        np.testing.assert_array_equal(out[1 - bad], ref[1 - bad])


def test_frozen_params_give_the_same_results(tiny):
    """`model.frozen(params)` (precomputed backward kernels, as the synthesis techniques use) may be
    passed to the attribution techniques: the same results as the plain params."""
    model, params, x = tiny
    frozen = model.frozen(params)
    assert all("kernel_t" in frozen[name] for name in ("conv1_1", "conv2_1", "conv3_1"))
    # One technique per way of taking gradients: plain, swapped ReLU (custom VJP), through a layer
    # perturbation, chunked with noise, chunked along a path.
    for name in ("input_gradients", "deconvnet", "gradcam", "smoothgrad", "ig_delta"):
        f = TECHNIQUES[name]
        np.testing.assert_allclose(np.asarray(f(model, frozen, x, jnp.asarray([3, 4]))),
                                   np.asarray(f(model, params, x, jnp.asarray([3, 4]))), rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("name", ["saliency", "occlusion", "smoothgrad"])
def test_vmap_over_classes_past_the_last(tiny, name):
    """`jit(vmap(technique))(arange(12))` on a 10-class network: rows 10 and 11 are NaN, not row 9."""
    model, params, x = tiny
    out = jax.jit(jax.vmap(lambda c: TECHNIQUES[name](model, params, x[:1], c)))(jnp.arange(12))
    out = np.asarray(out).reshape(12, -1)
    assert np.isfinite(out[:10]).all() and np.isnan(out[10:]).all()
    assert np.abs(out[9] - out[8]).max() > 0  # rows differ: the test can tell classes apart


def test_traced_objective_indices(tiny):
    """Channel and position indices of objectives: traced out of range gives NaN maps."""
    model, params, x = tiny
    gbp = jax.jit(lambda x, c, y: A.guided_backprop(model, params, x, O.channel("relu2_1", c) + O.neuron("relu3_1", 2, y=y)))
    ok = _per_image(gbp(x, jnp.asarray([3, 4]), jnp.asarray([1, 2])))
    assert np.isfinite(ok).all()
    for c, y, bad in [([3, 16], [1, 2], 1), ([-1, 4], [1, 2], 0), ([3, 4], [1, 100], 1), ([3, 4], [-5, 2], 0)]:
        out = _per_image(gbp(x, jnp.asarray(c), jnp.asarray(y)))
        assert np.isnan(out[bad]).all()
        np.testing.assert_array_equal(out[1 - bad], ok[1 - bad])
    cam = jax.jit(lambda x, c: A.gradcam(model, params, x, O.channel("relu3_1", c), layer="relu2_1"))
    assert np.isnan(np.asarray(cam(x, 99))).all() and np.isfinite(np.asarray(cam(x, 9))).all()


def test_traced_noise_and_fill(tiny):
    """NaN, infinite or negative noise and a non-finite fill, traced: NaN maps. Concrete: a ValueError
    (below)."""
    model, params, x = tiny
    sg = jax.jit(lambda s: A.smoothgrad(model, params, x, 3, key=KEY, num_samples=2, noise=s))
    assert np.isfinite(np.asarray(sg(0.1))).all()
    for s in (jnp.nan, jnp.inf, -0.1):
        assert np.isnan(np.asarray(sg(s))).all(), s
    occ = jax.jit(lambda v: A.occlusion(model, params, x, 3, size=16, stride=16, fill=v))
    assert np.isfinite(np.asarray(occ(0.5))).all()
    for v in (jnp.nan, jnp.inf, -jnp.inf):
        assert np.isnan(np.asarray(occ(v))).all(), v
    assert np.isnan(np.asarray(occ(jnp.asarray([0.5, jnp.nan, 0.5])))).all()


@pytest.mark.parametrize("window,stride", [((2, 2), (2, 2)), ((3, 3), (2, 2))])
def test_max_pool_propagates_nan(window, stride):
    """NaN inputs give NaN outputs and NaN derivatives (forward and reverse), never -inf, another
    value of the window, or a silent zero; other windows keep the first-maximum routing."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 6, 6, 2)), jnp.float32)
    x = x.at[0, 0, 0, 0].set(5.0).at[0, 0, 1, 0].set(5.0)  # a tie in window (0, 0): first maximum wins
    xn = x.at[0, 3, 3, 1].set(jnp.nan)
    y, yn = layers.max_pool(x, window, stride), layers.max_pool(xn, window, stride)
    nan_out = np.isnan(np.asarray(yn))
    assert nan_out[..., 1].any() and not nan_out[..., 0].any()
    np.testing.assert_array_equal(np.asarray(yn)[~nan_out], np.asarray(y)[~nan_out])
    for f in (jax.jit(layers.max_pool, static_argnums=(1, 2)),):  # jit: XLA's fused CPU reductions
        g = np.asarray(jax.grad(lambda v: jnp.sum(f(v, window, stride)))(xn))
        assert np.isnan(g[0, 3, 3, 1])
        np.testing.assert_array_equal(g[..., 0], np.asarray(jax.grad(lambda v: jnp.sum(f(v, window, stride)))(x))[..., 0])
        assert g[0, 0, 0, 0] == 1 and g[0, 0, 1, 0] == 0
        t = np.asarray(jax.jvp(lambda v: f(v, window, stride), (xn,), (jnp.ones_like(xn),))[1])
        np.testing.assert_array_equal(np.isnan(t), nan_out)


def test_default_relu_keeps_nan_and_has_relus_derivatives():
    """The models' ReLU: forward `max(x, 0)` with NaN kept (also inside a fused reduction under jit);
    first derivative 1 for x > 0 and for NaN, 0 for x <= 0 (what autodiff gives
    `where(isnan(x), x, relu(x))`, checked against that expression); second derivative 0."""
    relu = base._default_relu
    x = jnp.asarray([-2.0, -0.0, 0.0, 1e-30, 3.0, jnp.inf, -jnp.inf, jnp.nan], jnp.float32)
    reference = lambda v: jnp.where(jnp.isnan(v), v, jax.nn.relu(v))  # noqa: E731
    np.testing.assert_array_equal(relu(x), reference(x))
    assert np.isnan(jax.jit(lambda v: jnp.max(relu(v)))(x))  # XLA's fused max must not drop the NaN
    g = jnp.asarray([1.5, -2.0, 3.0, 4.0, -5.0, 6.0, 7.0, 8.0], jnp.float32)
    for f in (relu, jax.jit(relu)):
        pulled = jax.vjp(f, x)[1](g)[0]
        np.testing.assert_array_equal(pulled, jax.vjp(reference, x)[1](g)[0])
        np.testing.assert_array_equal(pulled, [0.0, 0.0, 0.0, 4.0, -5.0, 6.0, 0.0, 8.0])
        np.testing.assert_array_equal(jax.jvp(f, (x,), (g,))[1], jax.jvp(reference, (x,), (g,))[1])
    finite = x[:6]
    np.testing.assert_array_equal(jax.vmap(jax.grad(jax.grad(relu)))(finite), np.zeros(6))


# --------------------------------------------------------------------------- concrete bad input
ALL = {
    "saliency": A.saliency,
    "input_gradients": A.input_gradients,
    "guided_backprop": A.guided_backprop,
    "deconvnet": A.deconvnet,
    "activation_gradients": lambda m, p, x, t: A.activation_gradients(m, p, x, t, "relu2_1"),
    "gradcam": A.gradcam,
    "guided_gradcam": A.guided_gradcam,
    "smoothgrad": functools.partial(A.smoothgrad, key=KEY),
    "integrated_gradients": A.integrated_gradients,
    "occlusion": A.occlusion,
}


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize(
    "bad,match",
    [
        (lambda x: x[:0], "empty batch"),
        (lambda x: x.at[1, 2, 3, 0].set(jnp.nan), "non-finite"),
        (lambda x: x.at[0, 0, 0, 0].set(-jnp.inf), "non-finite"),
        (lambda x: x * 255, r"\[0, 1\].*divide by 255"),
        (lambda x: x - 0.5, r"\[0, 1\].*normalised"),
    ],
    ids=["empty", "nan", "inf", "0-255", "normalised"],
)
def test_concrete_bad_images_are_refused(tiny, name, bad, match):
    model, params, x = tiny
    with pytest.raises(ValueError, match=match):
        ALL[name](model, params, bad(x), 3)


@pytest.mark.parametrize("low, high, ok", [(0.0, 1.04, True), (-0.04, 1.0, True), (0.0, 1.06, False), (-0.06, 1.0, False),
                                           (0.0, 1.0 + base.RANGE_TOLERANCE, True)])
def test_range_tolerance_boundary_and_message(tiny, low, high, ok):
    """Images may stray RANGE_TOLERANCE (0.05) outside [0, 1] (resampling overshoot), no further; the
    message states the tolerance and the values found."""
    model, params, x = tiny
    y = x.at[0, 0, 0, 0].set(low).at[1, 0, 0, 0].set(high)
    if ok:
        assert np.isfinite(np.asarray(A.saliency(model, params, y, 3))).all()
        return
    for call in (lambda: A.saliency(model, params, y, 3), lambda: base.check_pixel_values(y)):
        with pytest.raises(ValueError, match=r"\[0, 1\] \(tolerance 0\.05\); got min (-0\.06|0), max (1\.06|1)\b"):
            call()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda m, p, x: A.smoothgrad(m, p, x, 1, key=KEY, noise=float("nan")), "noise must be a finite number >= 0"),
        (lambda m, p, x: A.smoothgrad(m, p, x, 1, key=KEY, noise=float("inf")), "noise must be a finite number >= 0"),
        (lambda m, p, x: A.smoothgrad(m, p, x, 1, key=KEY, noise=-0.1), "noise must be a finite number >= 0"),
        (lambda m, p, x: A.smoothgrad(m, p, x, 1, key=KEY, noise="big"), "noise must be a real number"),
        (lambda m, p, x: A.smoothgrad(m, p, x, 1, key=KEY, num_samples=0), "num_samples"),
        (lambda m, p, x: A.smoothgrad(m, p, x, 1, key=KEY, batch_size=2.0), "batch_size"),
        (lambda m, p, x: A.smoothgrad(m, p, x, 1, key=KEY, loop="fast"), "loop must be one of"),
        (lambda m, p, x: A.integrated_gradients(m, p, x, 1, loop="fori"), "loop must be one of"),
        (lambda m, p, x: A.integrated_gradients(m, p, x, 1, baseline=jnp.full((32, 32, 3), jnp.nan)), "baseline.*non-finite"),
        (lambda m, p, x: A.integrated_gradients(m, p, x, 1, steps=True), "steps"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, fill=float("nan")), "fill must be finite"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, fill=float("-inf")), "fill must be finite"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, fill=np.array([0.2, np.inf, 0.1])), "fill must be finite"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, fill=255.0), r"fill must be finite and in \[0, 1\]"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, fill="grey"), "fill must be 'mean'"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, size=8.0), "size must be a positive integer"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, size=True), "size must be a positive integer"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, size=0), "size must be a positive integer"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, size=-4), "size must be a positive integer"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, size=(8, 2.5)), "size must be a positive integer"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, size=(8, 8, 8)), "size must be a positive integer"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, size=33), "larger than the image"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, size=8, stride=0), "stride must be a positive integer"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, batch_size=0), "batch_size"),
        (lambda m, p, x: A.occlusion(m, p, x, 1, loop="map"), "loop must be one of"),
        (lambda m, p, x: A.occlusion(m, p, x, O.neuron("relu2_1", 0, y=100, x=100)), "row y.*out of range"),
        (lambda m, p, x: A.gradcam(m, p, x, 1, upsample="cubic"), "upsample must be"),
        (lambda m, p, x: A.guided_gradcam(m, p, x, 1, upsample=False), "upsample must be 'bilinear' or 'nearest'"),
        (lambda m, p, x: A.saliency(m, p, x, O.neuron("relu2_1", 0, y=100, x=100)), "row y.*out of range"),
        (lambda m, p, x: A.saliency(m, p, x, True), "integers"),
    ],
)
def test_concrete_bad_arguments_are_refused(tiny, call, match):
    model, params, x = tiny
    with pytest.raises(ValueError, match=match):
        call(model, params, x)


# --------------------------------------------------------------------------- chunk loops
CHUNKED = {
    "smoothgrad": (A._smoothgrad_step, lambda m, p, x, t, loop: A.smoothgrad(
        m, p, x, t, key=KEY, num_samples=5, batch_size=2, mode="variance", loop=loop)),
    "integrated_gradients": (A._integrated_gradients_step, lambda m, p, x, t, loop: A.integrated_gradients(
        m, p, x, t, steps=7, batch_size=3, method="gauss_legendre", loop=loop)),
    "occlusion": (loops._map_step, lambda m, p, x, t, loop: A.occlusion(
        m, p, x, t, size=12, stride=5, batch_size=4, loop=loop)),
}


@pytest.mark.parametrize("name", list(CHUNKED))
def test_python_loop_equals_scan_and_does_not_recompile(tiny, name):
    """`loop="python"` (one jitted chunk called in a Python loop) equals `loop="scan"` to float32
    rounding (1e-5 of the largest value), and a second call with new classes reuses the compiled
    chunk."""
    model, params, x = tiny
    step, technique = CHUNKED[name]
    python = technique(model, params, x, jnp.asarray([3, 7]), "python")
    scan = technique(model, params, x, jnp.asarray([3, 7]), "scan")
    for a, b in zip(jax.tree_util.tree_leaves(python), jax.tree_util.tree_leaves(scan)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    assert loops.resolve("auto", x) == ("python" if jax.default_backend() == "cpu" else "scan")
    compiled = loops.jitted(step)._cache_size()
    again = technique(model, params, x, jnp.asarray([5, 1]), "auto")
    assert loops.jitted(step)._cache_size() == compiled or jax.default_backend() != "cpu"
    other = technique(model, params, x, jnp.asarray([3, 7]), "auto")
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b), other, python)
    assert not np.allclose(np.asarray(jax.tree_util.tree_leaves(again)[0]), np.asarray(jax.tree_util.tree_leaves(other)[0]))
