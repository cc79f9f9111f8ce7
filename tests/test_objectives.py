"""Objectives: values equal hand-computed ones, algebra composes, pytrees pass through jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import models
from jaxviz import objectives as O


@pytest.fixture(scope="module")
def setup():
    model = models.get("digits")
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.1, s.dtype), model.param_shapes())
    x = jnp.asarray(rng.uniform(size=(3, 32, 32, 3)), jnp.float32)
    return model, params, x, model.apply(params, x)


def test_primitives_equal_hand_computed(setup):
    model, params, x, acts = setup
    logits = np.asarray(acts["fc5"])
    np.testing.assert_allclose(O.evaluate(model, params, x, 4), logits[:, 4], rtol=1e-6)
    np.testing.assert_allclose(O.evaluate(model, params, x, np.array([1, 2, 3])), logits[[0, 1, 2], [1, 2, 3]], rtol=1e-6)
    l64 = logits.astype(np.float64)
    logp = l64 - l64.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(O.evaluate(model, params, x, O.class_log_prob(6)), logp[:, 6], rtol=1e-4, atol=1e-5)
    r = np.asarray(acts["relu2_2"])
    np.testing.assert_allclose(O.evaluate(model, params, x, O.channel("relu2_2", 5)), r[..., 5].mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(O.evaluate(model, params, x, O.neuron("relu2_2", 5)), r[:, 8, 8, 5], rtol=1e-6)
    np.testing.assert_allclose(O.evaluate(model, params, x, O.neuron("relu2_2", 5, 2, 3)), r[:, 2, 3, 5], rtol=1e-6)
    np.testing.assert_allclose(O.evaluate(model, params, x, O.layer_l2("relu2_2")), (r**2).reshape(3, -1).mean(1), rtol=1e-5)
    np.testing.assert_allclose(O.evaluate(model, params, x, O.channel("fc4", 7)), np.asarray(acts["fc4"])[:, 7], rtol=1e-6)


def test_algebra(setup):
    model, params, x, acts = setup
    logits = np.asarray(acts["fc5"])
    ch = np.asarray(acts["relu3_1"])[..., 2].mean(axis=(1, 2))
    obj = 2.0 * O.class_logit(1) - O.channel("relu3_1", 2) * 0.5 + 1.0
    np.testing.assert_allclose(O.evaluate(model, params, x, obj), 2 * logits[:, 1] - 0.5 * ch + 1, rtol=1e-5)
    prod = O.class_logit(1) * O.class_logit(2) / 4
    np.testing.assert_allclose(O.evaluate(model, params, x, prod), logits[:, 1] * logits[:, 2] / 4, rtol=1e-5)
    assert set(O.as_objective(model, obj).layers) == {"fc5", "relu3_1"}
    assert O.last_layer(model, O.as_objective(model, O.channel("relu1_1", 0))) == "relu1_1"


def test_jit_does_not_recompile_for_new_values_and_vmap_maps(setup):
    model, params, x, acts = setup
    f = jax.jit(lambda p, im, obj: O.evaluate(model, p, im, obj))
    f(params, x, O.class_logit(3) + 0.5 * O.channel("relu3_1", 1))
    f(params, x, O.class_logit(7) + 0.25 * O.channel("relu3_1", 9))
    assert f._cache_size() == 1
    out = jax.vmap(lambda c: O.evaluate(model, params, x, O.class_logit(c)))(jnp.arange(10))
    np.testing.assert_allclose(out, np.asarray(acts["fc5"]).T, rtol=1e-5)
    objs = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[O.channel("relu3_1", i) for i in range(4)])
    out = jax.vmap(lambda o: O.evaluate(model, params, x, o))(objs)
    np.testing.assert_allclose(out, np.asarray(acts["relu3_1"])[..., :4].mean(axis=(1, 2)).T, rtol=1e-5)


def test_errors(setup):
    model, params, x, _ = setup
    with pytest.raises(ValueError, match="out of range"):
        O.evaluate(model, params, x, 10)
    with pytest.raises(ValueError, match="out of range"):
        O.evaluate(model, params, x, O.channel("relu1_1", 32))
    with pytest.raises(ValueError, match="integers"):
        O.evaluate(model, params, x, O.channel("relu1_1", 1.5))
    with pytest.raises(ValueError, match="no layer 'relu9'"):
        O.evaluate(model, params, x, O.channel("relu9", 0))
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        O.evaluate(model, params, x, np.array([1, 2]))
    with pytest.raises(TypeError):
        O.class_logit(1) / O.class_logit(2)


# --------------------------------------------------------------------------- indices: per image, out of range
def test_per_image_units(setup):
    """A batch of different experiments in one call: `[N]` channel / neuron indices and positions."""
    model, params, x, acts = setup
    r = np.asarray(acts["relu2_2"])
    chans, ys, xs = np.array([4, 0, 31]), np.array([0, 15, 7]), np.array([3, 9, 15])
    np.testing.assert_allclose(O.evaluate(model, params, x, O.channel("relu2_2", chans)),
                               r[np.arange(3), :, :, chans].mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(O.evaluate(model, params, x, O.neuron("relu2_2", chans, ys, xs)),
                               r[np.arange(3), ys, xs, chans], rtol=1e-6)
    # ... and one call equals one call per image with that image's unit.
    loop = [O.evaluate(model, params, x[i : i + 1], O.neuron("relu2_2", int(chans[i]), int(ys[i]), int(xs[i])))[0]
            for i in range(3)]
    np.testing.assert_allclose(O.evaluate(model, params, x, O.neuron("relu2_2", chans, ys, xs)), loop, rtol=1e-6)
    # evaluate computes only fc4's three requested units (objectives.restrict): a float32 product over
    # 3 columns rounds differently from the full layer's, so compare at 1e-5 of the largest value.
    fc4 = np.asarray(acts["fc4"])[np.arange(3), chans]
    np.testing.assert_allclose(O.evaluate(model, params, x, O.neuron("fc4", chans)), fc4, rtol=0,
                               atol=1e-5 * np.abs(fc4).max())


def _acts(seed=0, n=3):
    """Random activations `{a: [n, 5, 6, 8], b: [n, 3, 3, 4], fc: [n, 8]}` (float64 under x64)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 5, 6, 8))
    a[0, 1, 2] = 0.0  # a dead position (all channels zero, as after a ReLU)
    return {"a": a, "b": rng.normal(size=(n, 3, 3, 4)), "fc": rng.normal(size=(n, 8))}


@pytest.mark.parametrize(
    "make,bad_image",
    [
        (lambda bad: O.class_logit(jnp.asarray([3, bad, 5]), "fc"), 1),
        (lambda bad: O.class_log_prob(jnp.asarray([bad, 2, 5]), "fc"), 0),
        (lambda bad: O.channel("a", jnp.asarray([1, 2, bad])), 2),
        (lambda bad: O.channel("fc", jnp.asarray([1, 2, bad])), 2),
        (lambda bad: O.neuron("a", jnp.asarray([1, bad, 2])), 1),
        (lambda bad: O.neuron("a", 3, y=jnp.asarray([0, bad, 4]), x=4), 1),
        (lambda bad: O.neuron("a", 3, y=4, x=jnp.asarray([bad, 1, 2])), 0),
        (lambda bad: O.direction_neuron("a", jnp.ones(8), y=jnp.asarray([2, 3, bad])), 2),
        (lambda bad: O.channel_interpolate("a", 1, "b", jnp.asarray([0, 0, bad])), 2),
    ],
    ids=["class_logit", "class_log_prob", "channel", "channel_fc", "neuron", "neuron_y", "neuron_x",
         "direction_neuron", "channel_interpolate"],
)
@pytest.mark.parametrize("bad", [1000, -1])
def test_traced_index_out_of_range_gives_nan(make, bad_image, bad):
    """An index that cannot be checked (traced) gives NaN for its image, value AND gradient (over the
    whole layer it reads), never the clamped neighbour's value; the other images keep their values
    and gradients. A concrete one is a ValueError."""
    acts = {k: jnp.asarray(v, jnp.float32) for k, v in _acts().items()}
    obj = make(bad)
    good = jax.tree_util.tree_map(lambda a: jnp.where(a == bad, 0, a) if jnp.ndim(a) else a, obj)
    f = jax.jit(lambda acts, o: o(acts))
    value, ref = np.asarray(f(acts, obj)), np.asarray(f(acts, good))
    others = np.arange(3) != bad_image
    assert np.isnan(value[bad_image]) and np.isfinite(value[others]).all()
    np.testing.assert_array_equal(value[others], ref[others])
    grads = jax.jit(jax.grad(lambda acts, o: jnp.nansum(o(acts))))(acts, obj)
    ref_grads = jax.jit(jax.grad(lambda acts, o: jnp.sum(o(acts))))(acts, good)
    # NaN over the whole layer the bad index reads (channel_interpolate's other layer keeps its part).
    assert any(np.isnan(np.asarray(grads[layer][bad_image])).all() for layer in obj.layers)
    for layer in obj.layers:
        np.testing.assert_array_equal(grads[layer][others], ref_grads[layer][others])
    with pytest.raises(ValueError, match="out of range"):
        make(bad)({k: np.asarray(v) for k, v in acts.items()})


def test_traced_out_of_range_through_the_network(setup):
    """Through a real network: the image of an out-of-range unit gets NaN input gradients everywhere."""
    model, params, x, acts = setup
    r = np.asarray(acts["relu2_2"])
    active = jnp.asarray([np.argmax(r[0, 4, 8]), 0, np.argmax(r[2, 8, 8])])  # units with a gradient
    obj = O.neuron("relu2_2", active, y=jnp.asarray([4, 99, 8]))
    grad = jax.jit(jax.grad(lambda p, im, o: jnp.nansum(O.evaluate(model, p, im, o)), argnums=1))(params, x, obj)
    grad = np.asarray(grad)
    assert np.isnan(grad[1]).all()
    assert np.isfinite(grad[[0, 2]]).all() and np.abs(grad[[0, 2]]).max() > 0


def test_concrete_positions_and_shapes_are_checked(setup):
    model, params, x, _ = setup
    with pytest.raises(ValueError, match=r"row y of layer 'relu2_2' \(16x16\).*out of range"):
        O.evaluate(model, params, x, O.neuron("relu2_2", 0, y=100, x=100))
    with pytest.raises(ValueError, match="column x.*out of range"):
        O.evaluate(model, params, x, O.neuron("relu2_2", 0, y=3, x=-1))
    with pytest.raises(ValueError, match="not spatial"):
        O.evaluate(model, params, x, O.neuron("fc4", 0, y=3, x=1))
    with pytest.raises(ValueError, match=r"shape \[N\] = \[3\]"):
        O.evaluate(model, params, x, O.neuron("relu2_2", jnp.asarray([0, 1])))
    with pytest.raises(ValueError, match=r"\[C\] = \[64\]"):
        O.evaluate(model, params, x, O.direction("relu2_2", jnp.ones(31)))
    with pytest.raises(ValueError, match="integers"):
        jax.jit(lambda p, im, c: O.evaluate(model, p, im, O.channel("relu2_2", c)))(params, x, 1.0)


def test_class_log_prob_keeps_float64():
    """Under jax_enable_x64 the log-probabilities are computed in float64 (no cast to float32)."""
    with jax.enable_x64(True):
        logits = jnp.asarray(np.random.default_rng(3).normal(size=(2, 7)) * 30, jnp.float64)
        value = O.class_log_prob(jnp.asarray([3, 6]), "fc")({"fc": logits})
        assert value.dtype == jnp.float64
        l64 = np.asarray(logits)
        ref = l64 - l64.max(1, keepdims=True)
        ref = (ref - np.log(np.exp(ref).sum(1, keepdims=True)))[[0, 1], [3, 6]]
        np.testing.assert_allclose(value, ref, rtol=1e-13)
        assert (O.class_logit(1, "fc") + 0.5)({"fc": logits}).dtype == jnp.float64


# --------------------------------------------------------------------------- lucid's objectives
def _lucid_dot_cossim(x, v, p):
    """lucid's `_dot_cossim` per position (eps 1e-4, floor 0.1)."""
    dot = (x * v).sum(-1)
    if p == 0:
        return dot
    cos = dot / (1e-4 + np.sqrt((x * x).sum(-1))) / (1e-4 + np.sqrt((v * v).sum(-1)))
    return dot * np.maximum(0.1, cos) ** p


def _lucid_diversity(a):
    """lucid's `diversity`, split per image (the batch sum is lucid's value)."""
    n, c = a.shape[0], a.shape[-1]
    f = a.reshape(n, -1, c)
    grams = np.einsum("npc,npd->ncd", f, f)
    grams = grams / np.sqrt(np.maximum((grams**2).sum(axis=(1, 2), keepdims=True), 1e-10))
    return np.array([sum((grams[i] * grams[j]).sum() for j in range(n) if j != i) for i in range(n)]) / n


def _value(obj, acts):
    return np.asarray(jax.jit(lambda acts, o: o(acts))(acts, obj))


def test_lucid_objectives_equal_reference_formulas():
    with jax.enable_x64(True):
        acts = _acts()
        a = acts["a"]
        vec = np.random.default_rng(1).normal(size=8)
        vecs = np.random.default_rng(2).normal(size=(3, 8))
        for p in (0, 1, 3):
            ref = _lucid_dot_cossim(a, vec, p).reshape(3, -1).mean(1)
            np.testing.assert_allclose(_value(O.direction("a", vec, cossim_pow=p), acts), ref, rtol=1e-12)
            ref = np.array([_lucid_dot_cossim(a[i], vecs[i], p).mean() for i in range(3)])
            np.testing.assert_allclose(_value(O.direction("a", vecs, cossim_pow=p), acts), ref, rtol=1e-12)
            ref = _lucid_dot_cossim(a[:, 2, 3], vec, p)  # centre of 5x6: (5 // 2, 6 // 2)
            np.testing.assert_allclose(_value(O.direction_neuron("a", vec, cossim_pow=p), acts), ref, rtol=1e-12)
        np.testing.assert_allclose(_value(O.direction("fc", vec), acts), acts["fc"] @ vec, rtol=1e-12)
        w = np.array([0.0, 0.5, 1.0])
        ref = (1 - w) * a[..., 4].mean(axis=(1, 2)) + w * acts["b"][..., 1].mean(axis=(1, 2))
        np.testing.assert_allclose(_value(O.channel_interpolate("a", 4, "b", 1), acts), ref, rtol=1e-12)
        single = {k: v[:1] for k, v in acts.items()}
        np.testing.assert_allclose(_value(O.channel_interpolate("a", 4, "b", 1), single), a[:1, ..., 4].mean(axis=(1, 2)), rtol=1e-12)
        np.testing.assert_allclose(_value(O.diversity("a"), acts), _lucid_diversity(a), rtol=1e-12)
        np.testing.assert_allclose(_value(O.diversity("a"), single), [0.0])


@pytest.mark.parametrize(
    "obj",
    [
        O.direction("a", np.linspace(-1, 1, 8)),
        O.direction("a", np.linspace(-1, 1, 8), cossim_pow=2),
        O.direction_neuron("a", np.linspace(-1, 1, 8), y=1, x=2, cossim_pow=1),  # the dead position
        O.channel_interpolate("a", 4, "b", jnp.asarray([0, 3, 2])),
        O.diversity("a"),
        O.diversity("a") * O.channel("b", 1) - 2.0 * O.neuron("a", 3, y=jnp.asarray([0, 4, 2]), x=5),
    ],
    ids=["direction", "direction_cossim", "direction_neuron_dead", "channel_interpolate", "diversity", "algebra"],
)
def test_gradients_match_finite_differences(obj):
    """d sum(objective) / d activations against central differences along random directions (float64)."""
    with jax.enable_x64(True):
        acts = {k: jnp.asarray(v) for k, v in _acts(5).items()}
        f = jax.jit(lambda acts: jnp.sum(obj(acts)))
        grad = jax.grad(lambda acts: jnp.sum(obj(acts)))(acts)
        assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grad))
        rng = np.random.default_rng(0)
        for _ in range(3):
            d = {k: jnp.asarray(rng.normal(size=v.shape)) for k, v in acts.items()}
            h = 1e-6
            plus = {k: acts[k] + h * d[k] for k in acts}
            minus = {k: acts[k] - h * d[k] for k in acts}
            fd = (f(plus) - f(minus)) / (2 * h)
            analytic = sum(jnp.vdot(grad[k], d[k]) for k in acts)
            np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-9)
