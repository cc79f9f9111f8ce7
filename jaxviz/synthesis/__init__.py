"""Image synthesis: one optimisation engine and its pieces.

    from jaxviz import synthesis
    from jaxviz.synthesis import param, transforms, regularizers

  * `synthesis.optimize` (`engine.py`): the one loop (optax, per-experiment state, early stop,
    non-finite checks, progress callback, Python loop or `lax.scan`);
  * `param`: image parameterisations (`Pixels`, `FFT`, lucid's colour decorrelation);
  * `transforms`: stochastic `(key, images) -> images` (pad, jitter, scale, rotate,
    `standard_transforms()`);
  * `optimizers`: torch's L-BFGS without line search (neural-style's optimiser) as an optax
    transformation;
  * `regularizers`: loss terms on images (L1, L2, total variation, alpha-norm) and between-step
    operations as optax transformations (decay, blur, percentile zeroing, clipping, Yosinski's
    order, DeepDream's gradient normalisation);
  * `redirected_relu` / `relu_for_step`: lucid's ReLU gradient redirection for the first steps.

Techniques, each a configuration of the engine: `features` (lucid, Simonyan and Yosinski class and
unit visualisation), `adversarial` (fooling images, FGSM, PGD), `dream` (DeepDream), `inversion`
(Mahendran & Vedaldi), `texture` (Gatys' Gram textures), `style` (neural style transfer), with the
losses of `losses` and the colour tools of `color`; `nn_texture` (Efros & Leung, quilting) needs no
network.

Layering: models <- objectives <- param, transforms, regularizers, losses <- engine <- techniques.
"""

from jaxviz.synthesis import engine, param, regularizers, transforms  # noqa: I001 (pieces first)
from jaxviz.synthesis import (
    adversarial,
    color,
    dream,
    features,
    generator,
    inversion,
    losses,
    nn_texture,
    optimizers,
    style,
    texture,
)
from jaxviz.synthesis.engine import (
    NonFiniteLossError,
    Result,
    optimize,
    redirected_relu,
    relu_for_step,
    vmap_optimizer_state,
)

__all__ = [
    "NonFiniteLossError",
    "adversarial",
    "color",
    "dream",
    "features",
    "generator",
    "inversion",
    "losses",
    "nn_texture",
    "optimizers",
    "style",
    "texture",
    "Result",
    "engine",
    "optimize",
    "param",
    "redirected_relu",
    "regularizers",
    "relu_for_step",
    "transforms",
    "vmap_optimizer_state",
]
