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
