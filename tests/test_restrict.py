"""Computing only the channels an objective reads (`Model.restricted`, `objectives.restrict`): the
restricted network gives the full layer's values at those channels and the same input gradients
(float64), traced indices out of range still give NaN for their image only, and objectives that read
anything else are left alone."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import models
from jaxviz import objectives as O
from jaxviz.synthesis import features
from conv_helpers import conv_equations


def _random_params(model, names, seed=0):
    """Float64 random weights for the layers `names` (batch norm's scales and variances positive)."""
    rng = np.random.default_rng(seed)
    return {name: {leaf: jnp.asarray(np.abs(rng.normal(size=a.shape)) + 0.5 if model.layer(name).kind == "bn"
                                     else 0.1 * rng.normal(size=a.shape))
                   for leaf, a in entry.items()}
            for name, entry in model.param_shapes().items() if name in names}


def _producer(model, layer, kinds=("conv", "fc")):
    """The convolution or dense layer whose channels `layer` carries (`layer` itself or before it)."""
    return next(s.name for s in reversed(model.layers[: model.index(layer) + 1]) if s.kind in kinds)


def _images(model, n=2, seed=1):
    h = max(model.min_size[0], 28) + 3
    return jax.random.uniform(jax.random.key(seed), (n, h, h + 2, model.in_channels), jnp.float64)


def _sin_loss(model, layer, params, images, w, channels):
    """`sum(sin(layer * w))` over `channels` of `layer` (all of them when None)."""
    out = model.apply(params, images, until=layer)[layer]
    return jnp.sum(jnp.sin((out if channels is None else out[..., channels]) * w))


# The parameters are an argument, not closed over: closed-over weights are constants that XLA folds
# (measured: compiling the float64 VGG11_bn gradients took 36 s per case instead of a few).
_sin_loss_grad = jax.jit(jax.grad(_sin_loss, argnums=3), static_argnums=(0, 1))


# (architecture, layers whose channels are restricted, frozen params): every kind of layer (a
# convolution; batch norm, ReLU, max pool and the adaptive pool after one; dense layers and a ReLU after
# one), first and deep; `Model.frozen`'s backward kernels on the network with batch norm.
CASES = [
    ("vgg11_bn", ("bn1_1", "relu4_2", "avgpool"), False),
    ("vgg11_bn", ("bn1_1", "relu4_2", "avgpool"), True),
    ("alexnet", ("pool1", "conv5"), False),
    ("digits", ("pool2", "fc4", "relu4", "fc5"), False),
]


@pytest.mark.parametrize("arch,names,frozen", CASES, ids=[c[0] + ("-frozen" if c[2] else "") for c in CASES])
def test_restricted_layer_equals_full_layer_at_those_channels(arch, names, frozen):
    """`apply(restricted(params, layer, channels))[layer]` is the full layer's `[..., channels]`
    (duplicates and any order), the layers before the producing one are untouched, and the input
    gradient through the restricted channels equals the one through the full layer's (float64)."""
    model = models.get(arch)
    with jax.enable_x64(True):
        last = max(names, key=model.index)
        params = _random_params(model, model.layer_names[: model.index(last) + 1])
        if frozen:
            params = model.frozen(params)
        x = _images(model)
        apply = jax.jit(model.apply, static_argnames="until")
        full = apply(params, x, until=last)
        rng = np.random.default_rng(3)
        for layer in names:
            c = full[layer].shape[-1]
            channels = jnp.asarray(rng.integers(0, c, size=min(5, c - 1)), jnp.int32)
            channels = channels.at[-1].set(channels[0])  # a duplicate
            sub = model.restricted(params, layer, channels)
            assert sub is not None, layer
            got = apply(sub, x, until=layer)
            np.testing.assert_allclose(got[layer], full[layer][..., channels], rtol=1e-12, atol=1e-13, err_msg=layer)
            producer = _producer(model, layer)
            for before in model.layer_names[: model.index(producer)]:
                np.testing.assert_array_equal(got[before], full[before], err_msg=before)
            w = jnp.asarray(rng.normal(size=got[layer].shape))
            g_want = _sin_loss_grad(model, layer, params, x, w, channels)
            # Relative to the largest entry: float64 convolutions sum in another order when fewer output
            # channels are computed (entries that cancel to ~1e-3 of the largest then differ at ~1e-9).
            np.testing.assert_allclose(_sin_loss_grad(model, layer, sub, x, w, None), g_want, rtol=0,
                                       atol=1e-10 * float(jnp.max(jnp.abs(g_want))), err_msg=layer)


def test_restricted_is_none_without_support():
    """A model without `restrict_fn` (e.g. a user's Flax module) cannot restrict; `restrict` then returns
    its arguments unchanged."""
    base = models.get("digits")
    plain = models.Model("plain", base.layers, base.apply_fn, logits=base.logits)
    params = {"x": jnp.zeros(3)}
    assert plain.restricted(params, "conv1_1", jnp.arange(2)) is None
    obj = O.as_objective(plain, O.channel("conv1_1", 1))
    p, o = O.restrict(plain, params, obj)
    assert p is params and o is obj


@functools.lru_cache(maxsize=1)
def _digits():
    model = models.get("digits")
    with jax.enable_x64(True):
        params = _random_params(model, model.layer_names, seed=5)
    return model, params


def _unrestricted(model, params, images, obj):
    return obj(model.apply(params, images, until=O.last_layer(model, obj)))


def _objectives(model):
    conv = model.trunk[-1]  # the last spatial layer
    fc = model.logits
    n = 3
    return {
        "channel": O.channel(conv, 2),
        "channel per image": O.channel(conv, jnp.array([0, 5, 5])),
        "neuron": O.neuron(conv, 1, y=0, x=1),
        "neuron per image": O.neuron(conv, jnp.array([3, 1, 0]), y=jnp.array([0, 1, 0]), x=jnp.array([1, 0, 0])),
        "class": O.class_logit(7),
        "classes per image": O.class_logit(jnp.arange(n) + 2),
        "algebra": 2.0 * O.channel(conv, 4) - O.neuron(conv, 6) + 0.5,
        "product": O.channel(conv, 1) * O.channel(conv, jnp.array([2, 3, 4])),
        "fc unit": O.neuron(fc, 3),
    }


@pytest.mark.parametrize("name", list(_objectives(models.get("digits"))))
def test_restrict_objective_same_scores_and_input_gradients(name):
    """`restrict` gathers fewer channels than the layer has and renumbers the objective's indices:
    `evaluate` (which restricts) gives the unrestricted scores and input gradients (float64)."""
    model, params = _digits()
    with jax.enable_x64(True):
        obj = O.as_objective(model, _objectives(model)[name])
        x = _images(model, n=3)
        layer = obj.layers[0]
        sub, renumbered = O.restrict(model, params, obj)
        assert sub is not params and renumbered is not obj
        producer = _producer(model, layer)
        assert sub[producer]["kernel"].shape[-1] < params[producer]["kernel"].shape[-1]
        want = jax.jit(lambda p, im: _unrestricted(model, p, im, obj))(params, x)
        np.testing.assert_allclose(jax.jit(lambda p, im: O.evaluate(model, p, im, obj))(params, x), want, rtol=1e-12)
        g_want = jax.jit(jax.grad(lambda p, im: jnp.sum(jnp.cos(_unrestricted(model, p, im, obj))), argnums=1))(params, x)
        g_got = jax.jit(jax.grad(lambda p, im: jnp.sum(jnp.cos(O.evaluate(model, p, im, obj))), argnums=1))(params, x)
        np.testing.assert_allclose(g_got, g_want, rtol=1e-10, atol=1e-14)


def test_restrict_leaves_other_objectives_alone():
    """Objectives that read more than a few channels of one layer, several layers, or with `perturb=`,
    are returned as they are (the same objects)."""
    model, params = _digits()
    conv, first = model.trunk[-1], model.trunk[0]
    c = model.layer(conv).channels
    others = [
        O.class_log_prob(3),
        O.layer_l2(conv),
        O.direction(conv, jnp.ones(c)),
        O.channel(conv, 1) - O.diversity(conv),
        O.channel(conv, 1) + O.channel(first, 0),
        O.channel_interpolate(conv, 0, conv, 1),
        O.channel(conv, jnp.arange(c)),  # as many channels as the layer has
    ]
    for obj in others:
        obj = O.as_objective(model, obj)
        p, o = O.restrict(model, params, obj)
        assert p is params and o is obj, obj
    obj = O.as_objective(model, O.channel(conv, 1))
    p, o = O.restrict(model, params, obj, perturb={conv: jnp.zeros(1)})
    assert p is params and o is obj


def test_restrict_traced_index_out_of_range_is_nan_for_its_image_only():
    """Under `jit`, an index out of range makes its image's score and gradient NaN, and leaves the
    other images' exactly as without it (its slot gathers a valid channel: nothing is poisoned); a
    concrete one is still refused with the objective's own message."""
    model, params = _digits()
    conv = model.trunk[-1]
    c = model.layer(conv).channels
    with jax.enable_x64(True):
        x = _images(model, n=3)

        @jax.jit
        def scores_and_grads(idx):
            f = lambda im: O.evaluate(model, params, im, O.channel(conv, idx))  # noqa: E731
            s, pullback = jax.vjp(f, x)
            return s, pullback(jnp.ones_like(s))[0]

        for bad in (c, -1):
            s, g = scores_and_grads(jnp.array([2, bad, 4]))
            s_ok, g_ok = scores_and_grads(jnp.array([2, 0, 4]))
            assert np.isnan(s[1]) and np.all(np.isnan(g[1]))
            keep = np.array([0, 2])
            np.testing.assert_array_equal(s[keep], s_ok[keep])
            np.testing.assert_array_equal(g[keep], g_ok[keep])
        with pytest.raises(ValueError, match=rf"channel of layer '{conv}' \[2, {c}, 4\] out of range"):
            O.evaluate(model, params, x, O.channel(conv, jnp.array([2, c, 4])))


def _conv_output_channels(fn, *args):
    """Output channel counts of every convolution in `fn`'s jaxpr (nested jaxprs included)."""
    return [eqn.outvars[0].aval.shape[-1] for eqn in conv_equations(fn, *args)]


def test_feature_visualisation_loss_restricts_and_matches():
    """The synthesis loss (`features.score_loss`) restricts a channel objective, mapped over
    experiments as the engine maps it: the last convolution computes one channel per experiment, and
    the losses and image gradients equal the unrestricted loss's (float64)."""
    model, params = _digits()
    conv = model.trunk[-1]
    producer = _producer(model, conv, kinds=("conv",))
    full_c = model.layer(producer).channels
    with jax.enable_x64(True):
        frozen = model.frozen(params)
        x = _images(model, n=4)[:, None]  # 4 experiments of 1 image
        obj = O.as_objective(model, O.channel(conv, jnp.array([0, 3, 3, 7])))

        def losses(restrict):
            static = features.ScoreLoss(model, restrict=restrict)

            def one(o, im):
                return features.score_loss(static, frozen, o, im, jax.random.key(0), 0)[0]

            return jax.vmap(jax.value_and_grad(one, 1))

        got, want = jax.jit(losses(True))(obj, x), jax.jit(losses(False))(obj, x)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-14)
        restricted_counts = _conv_output_channels(losses(True), obj, x)
        full_counts = _conv_output_channels(losses(False), obj, x)
    # The same convolutions, but the last one's (forward and input gradient) make 4 channels (one per
    # experiment, a grouped convolution under vmap) instead of all of them.
    assert len(restricted_counts) == len(full_counts)
    assert restricted_counts.count(full_c) < full_counts.count(full_c) and 4 in restricted_counts, (
        restricted_counts, full_counts)
