"""Image synthesis: one optimisation engine and its pieces.

    from jaxviz import synthesis
    from jaxviz.synthesis import param, transforms, regularizers

  * `synthesis.optimize` (`engine.py`): the one loop (optax, per-experiment state, early stop,
    non-finite checks, progress callback, Python loop or `lax.scan`);
  * `param`: image parameterisations (`Pixels`, `FFT`, lucid's colour decorrelation);
  * `transforms`: stochastic `(key, images) -> images` (pad, jitter, scale, rotate,
    `standard_transforms()`);
  * `regularizers`: loss terms on images (L1, L2, total variation, alpha-norm) and between-step
    operations as optax transformations (decay, blur, percentile zeroing, clipping, Yosinski's
    order, DeepDream's gradient normalisation);
  * `redirected_relu` / `relu_for_step`: lucid's ReLU gradient redirection for the first steps.

Layering: models <- objectives <- param, transforms, regularizers <- engine <- techniques.
"""

from jaxviz.synthesis import engine, param, regularizers, transforms
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
