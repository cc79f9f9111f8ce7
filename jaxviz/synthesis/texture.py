"""Gram-matrix texture synthesis (Gatys, Ecker & Bethge 2015) as a configuration of the one engine.

From noise, optimise images whose Gram matrices at several layers match those of the source
texture(s). The output may have any size (Gram matrices do not depend on it); several sources
blend their Grams with weights (normalised to sum 1, as neural-style blends styles); `pool="avg"`
swaps max for average pooling (the paper's recommendation for nicer gradients).

Defaults: the paper's layers conv1_1, pool1, pool2, pool3, pool4 with equal weights, its loss E_l
(`losses` convention "gatys": Gram by H*W, mean over C^2, / 4), Adam (lr 0.02) on pixels clipped to
[0, 1] after every step. The paper used L-BFGS: pass `optimizer=optax.lbfgs()` (zoom line search)
or `synthesis.optimizers.lbfgs()` (torch's, no line search, as neural-style), or any optax
transformation; the images are clipped to [0, 1] on output either way.

    res = texture.synthesize(model, params, sources, (128, 128), key=jax.random.key(0), steps=500)
    res.images            # [n, 128, 128, 3] in [0, 1]
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxviz.models import base
from jaxviz.synthesis import engine, losses, param, regularizers

Array = jax.Array

GATYS_LAYERS = ("conv1_1", "pool1", "pool2", "pool3", "pool4")


@functools.lru_cache(maxsize=None)
def default_optimizer(learning_rate: float = 0.02) -> optax.GradientTransformation:
    """Adam followed by clipping to [0, 1] (cached: the same object reuses the compilation)."""
    return optax.chain(optax.adam(learning_rate), regularizers.clip_to_range(0.0, 1.0))


def _texture_loss(static, consts, targets, images, key, step):
    model, layers, convention, pool, weights = static
    acts = model.apply(consts, images, until=_last(model, layers), pool=pool)
    return losses.style_loss(acts, targets, convention=convention, layer_weights=dict(zip(layers, weights)))


def _last(model, layers):
    return max(layers, key=model.index)


def _experiment_keys(key, n: int) -> Array:
    if jnp.ndim(key) == 0:
        return jax.random.split(key, n)
    if jnp.shape(key) != (n,):
        raise ValueError(f"key must be one key or [n] = [{n}] keys; got shape {jnp.shape(key)}")
    return key


def check_layers(model: base.Model, layers: Sequence[str], what: str = "layer") -> tuple[str, ...]:
    """Every name must be a spatial layer of `model` (clear error otherwise)."""
    layers = tuple(layers)
    if not layers:
        raise ValueError(f"give at least one {what}")
    for name in layers:
        spec = model.layer(name)  # UnknownLayerError naming the valid layers
        if not spec.spatial:
            raise ValueError(f"{what} {name!r} of {model.name} is not a spatial layer (Gram matrices need [N, h, w, C] maps)")
    return layers


def targets_for(model, params, sources, *, layers, convention="gatys", weights=None, pool="max"):
    """Blended style targets `{layer: target [1, ...]}` of `sources` `[S, H, W, 3]` in [0, 1]."""
    sources = jnp.asarray(sources)
    model.check_images(sources)
    acts = model.apply(params, sources, until=_last(model, layers), pool=pool)
    per_source = [{l: losses.style_target(acts[l][s : s + 1], convention=convention) for l in layers} for s in range(sources.shape[0])]
    return losses.blend_targets(per_source, weights)


def synthesize(
    model: base.Model,
    params,
    sources: Array,
    size: tuple[int, int],
    *,
    key: Array,
    n: int = 1,
    steps: int = 500,
    layers: Sequence[str] = GATYS_LAYERS,
    layer_weights: Optional[Sequence[float]] = None,
    source_weights: Optional[Sequence[float]] = None,
    convention: str = "gatys",
    pool: str = "max",
    optimizer: Optional[optax.GradientTransformation] = None,
    init_sd: float = 0.1,
    callback=None,
    loop: str = "auto",
) -> engine.Result:
    """`n` textures of `size` matching the (blended) Gram matrices of `sources`.

    Args:
      model, params: any jaxviz `Model` and its params (passed as jit arguments).
      sources: `[S, H, W, 3]` in [0, 1], at least the model's minimum size.
      size: `(height, width)` of the outputs (any size >= the model's minimum).
      key: one PRNG key (split into n) or `[n]` keys; experiment i starts from its own noise
        (`init_sd` around grey 0.5) and depends only on its key.
      n: number of textures (experiments, batched; each equals a one-by-one run given its key).
      layers, layer_weights: matched layers and their weights (default equal, 1 each).
      source_weights: blend weights of the sources (normalised to sum 1; default equal).
      convention: Gram convention (`jaxviz.synthesis.losses`; default "gatys", the paper's E_l).
      pool: "max" or "avg" (the network's pooling, as the paper's average-pooling option).
      optimizer: any optax transformation (default Adam 0.02 + clip to [0, 1]).

    Returns:
      the engine's `Result` (`images [n, *size, 3]`, `losses [steps, n]`, ...).
    """
    layers = check_layers(model, layers)
    if pool not in model.pool_modes:
        raise ValueError(f"pool must be one of {model.pool_modes} for {model.name}; got {pool!r}")
    if layer_weights is None:
        layer_weights = (1.0,) * len(layers)
    layer_weights = tuple(float(w) for w in layer_weights)
    if len(layer_weights) != len(layers) or any(not w > 0 for w in layer_weights):
        raise ValueError(f"layer_weights must be {len(layers)} positive numbers; got {layer_weights}")
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(int(s) == s and s >= m for s, m in zip(size, model.min_size))):
        raise ValueError(f"size must be (height, width) of at least {model.min_size}; got {size!r}")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive int; got {n}")
    convention = losses.style_convention(convention)
    target = targets_for(model, params, sources, layers=layers, convention=convention, weights=source_weights, pool=pool)
    targets = jax.tree_util.tree_map(lambda t: jnp.repeat(t, n, axis=0), target)
    pix = param.Pixels((int(size[0]), int(size[1]), 3), squash="clip", sd=float(init_sd))
    keys = _experiment_keys(key, int(n))
    # Experiment i's start and steps depend only on keys[i]: a batch equals one-by-one runs.
    raw0 = jax.vmap(lambda k: pix.init(jax.random.fold_in(k, 0), 1)[0])(keys)
    static = (model, layers, convention, pool, layer_weights)
    return engine.optimize(
        _texture_loss,
        model.frozen(params),
        raw0,
        default_optimizer() if optimizer is None else optimizer,
        steps=steps,
        key=keys,
        param=pix,
        targets=targets,
        static=static,
        callback=callback,
        loop=loop,
    )
