"""One conformance suite over every synthesis technique (STYLE.md habit 7).

For each technique, on the (untrained) digits architecture at 32 px with a few steps:
  * the output is finite, in [0, 1] and of the input's floating dtype;
  * a batch of experiments equals the same experiments run one by one (given the same
    per-experiment keys), to float rounding (`batch_check.assert_batch_matches_single`);
  * a second call with NEW targets or images of the same shapes compiles nothing (XLA's backend
    compile events, counted with `jax.monitoring`);
  * the technique's own objective improved (its first loss > last loss).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from jaxviz import models
from jaxviz.synthesis import adversarial, dream, features, inversion, style, texture
from batch_check import assert_batch_matches_single

_COMPILES = []
monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: _COMPILES.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
)


@pytest.fixture(scope="module")
def setup():
    model = models.get("digits")
    params = model.init(jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (3, 32, 32, 3), jnp.float32) * 0.8 + 0.1
    return model, params, images


def _feature_vis(model, params, images, variant, keys, exp):
    classes = exp + variant
    r = features.visualize(model, params, classes, key=keys, size=(32, 32), steps=6, transforms=None)
    return r.images, r.result.losses


def _simonyan(model, params, images, variant, keys, exp):
    r = features.simonyan(model, params, exp + variant, key=keys, size=(32, 32), steps=6, sd=0.1, learning_rate=2.0)
    return r.images, r.result.losses


def _fooling(model, params, images, variant, keys, exp):
    r = adversarial.fooling_images(model, params, images[exp], (exp + 3 + variant) % 10, steps=5, key=keys)
    return r.images, r.result.losses


def _pgd(model, params, images, variant, keys, exp):
    r = adversarial.pgd(model, params, images[exp], (exp + variant) % 10, radius=8 / 255, step_size=2 / 255,
                        steps=3, random_start=True, key=keys)
    return r.images, None


def _dream(model, params, images, variant, keys, exp):
    x = images[(exp + variant) % 3]
    r = dream.deepdream(model, params, x, layer="relu2_2", key=keys, octaves=2, steps=3, jitter=4)
    return r.images, None


def _inversion(model, params, images, variant, keys, exp):
    x = images[(exp + variant) % 3]
    r = inversion.invert(model, params, x, layer="relu2_2", key=keys, steps=6)
    return r.images, r.losses


def _texture(model, params, images, variant, keys, exp):
    e = keys.shape[0]
    src = images[variant : variant + 1]
    r = texture.synthesize(model, params, src, (32, 32), key=keys, n=e, steps=6, layers=("relu1_2", "relu2_2"))
    return r.images, r.losses


def _style(model, params, images, variant, keys, exp):
    # A sweep, one experiment per style weight. The untrained digits network's Gram matrices are tiny
    # (the style term is about 1.3e-5 per unit of weight here), so the weights are large enough for the
    # style term to matter: 1e10 against 2e10 changes the first loss by 0.6% and the picture by a mean
    # 0.019 (at 1e4 the two experiments differed by 1e-5, and a mix-up would have gone unnoticed).
    weights = tuple(float(w) for w in 1e10 * (1.0 + np.asarray(exp)))
    r = style.transfer(model, params, images[variant], images[2 - variant][None], key=keys, steps=4, optimizer="adam",
                       content_layers=("relu2_2",), style_layers=("relu1_2", "relu2_2"), init="content",
                       style_weight=weights if len(weights) > 1 else weights[0])
    (losses,) = r.losses  # one scale: [steps, experiments]
    return r.images, losses


TECHNIQUES = {
    "feature_visualisation": _feature_vis,
    "simonyan": _simonyan,
    "fooling": _fooling,
    "pgd": _pgd,
    "deepdream": _dream,
    "inversion": _inversion,
    "texture": _texture,
    "style": _style,
}


@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_conformance(setup, name):
    model, params, images = setup
    run = TECHNIQUES[name]
    keys = jax.random.split(jax.random.key(7), 2)
    out, losses = run(model, params, images, 0, keys, jnp.arange(2))
    out = np.asarray(out)
    assert out.dtype == np.float32, out.dtype
    assert out.shape[0] == 2 and out.shape[-1] == 3
    assert np.all(np.isfinite(out)), name
    assert out.min() >= 0.0 and out.max() <= 1.0, (out.min(), out.max())
    if losses is not None:
        losses = np.asarray(losses)
        for column in losses.T:  # last finite loss (early-stopped experiments end in NaN) < first
            finite = column[np.isfinite(column)]
            if len(finite) > 1:
                assert finite[-1] < finite[0], column
    # Batch == one by one (same per-experiment key), to float rounding (tests/batch_check.py).
    one, one_losses = run(model, params, images, 0, keys[1:], jnp.arange(1, 2))
    first = (losses[0, 1], np.asarray(one_losses)[0, 0]) if losses is not None and losses.ndim == 2 else None
    assert_batch_matches_single(out[1], np.asarray(one)[0], first_losses=first)
    # New targets / images of the same shapes: nothing compiles.
    _COMPILES.clear()
    run(model, params, images, 1, keys, jnp.arange(2))
    assert _COMPILES == [], f"{name} compiled {len(_COMPILES)} programs on a second call with new targets"
