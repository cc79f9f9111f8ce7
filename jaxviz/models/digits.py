"""The small VGG-style network for scikit-learn's handwritten digits, trained here, offline.

    from jaxviz import models
    from jaxviz.models.digits import digits_params
    model = models.get("digits")
    params = digits_params()        # trains once (a minute or two on a small CPU), then cached

Architecture: the VGG builder (`jaxviz.models.vgg`) with convs 32-32-M-64-64-M-128-128-M (3x3,
padding 1), `avgpool` (4x4, the identity at 32x32 input), `fc4` (256) + `relu4`, `fc5` (10 class
scores). Inputs are 32x32 RGB digits from `jaxviz.data.load_digits` (ink bright, in [0, 1]).

No weights are shipped: `digits_params` trains with the fixed recipe `DIGITS_RECIPE` (Adam 1e-3,
6 epochs of the 1500 training images, batch 32, fixed keys) and caches the params file in the user
cache folder (`$JAXVIZ_CACHE`, else `$XDG_CACHE_HOME/jaxviz`, else `~/.cache/jaxviz`) under a name
that hashes the architecture and the recipe, so a changed recipe trains afresh. Training is
deterministic on a given machine and backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Optional

import jax

from jaxviz.models import register
from jaxviz.models.vgg import VGGConfig, make_vgg, vgg_layers

DIGITS_CONFIG = VGGConfig(
    convs=(32, 32, "M", 64, 64, "M", 128, 128, "M"),
    hidden=(256,),
    num_classes=10,
    pooled_size=(4, 4),
)
# Statistics of the upsampled digits (pixel mean 0.31, std 0.32): centred, unit-scale inputs train
# faster than with (0.5, 0.5).
DIGITS_MEAN = (0.3, 0.3, 0.3)
DIGITS_STD = (0.3, 0.3, 0.3)
DIGITS_SIZE = 32


@dataclasses.dataclass(frozen=True)
class DigitsRecipe:
    """How `digits_params` trains (all of it goes into the cache key).

    Attributes:
      epochs, batch_size, learning_rate: Adam on softmax cross-entropy (`jaxviz.train`).
      init_seed: seed of the initial weights (`init_digits`).
      shuffle_seed: `jax.random.key(shuffle_seed)` draws the batch order.
    """

    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-3
    init_seed: int = 0
    shuffle_seed: int = 1


DIGITS_RECIPE = DigitsRecipe()


def digits_model():
    """The digits `Model` (random weights until given `digits_params()`)."""
    return make_vgg(
        "digits",
        DIGITS_CONFIG,
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        input_size=(DIGITS_SIZE, DIGITS_SIZE),
        class_names=tuple(str(i) for i in range(10)),
    )


register("digits", digits_model)


def default_cache_dir() -> str:
    """The user cache folder: `$JAXVIZ_CACHE`, else `$XDG_CACHE_HOME/jaxviz`, else `~/.cache/jaxviz`."""
    if os.environ.get("JAXVIZ_CACHE"):
        return os.environ["JAXVIZ_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxviz")


def recipe_hash(recipe: DigitsRecipe = DIGITS_RECIPE) -> str:
    """Hex digest (16 characters) of everything that determines the trained weights: the layer
    descriptions, normalisation, input size, data split and `recipe`."""
    from jaxviz import data

    desc = {
        "layers": [dataclasses.asdict(s) for s in vgg_layers(DIGITS_CONFIG)],
        "config": dataclasses.asdict(DIGITS_CONFIG),
        "mean": DIGITS_MEAN,
        "std": DIGITS_STD,
        "size": DIGITS_SIZE,
        "split": [data.DIGITS_SPLIT_SEED, data.DIGITS_TRAIN],
        "recipe": dataclasses.asdict(recipe),
        "version": 2,  # bump when the training code changes what a recipe produces (2: max-pool ties go to the first maximum)
    }
    text = json.dumps(desc, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(cache_dir_: Optional[str] = None, recipe: DigitsRecipe = DIGITS_RECIPE) -> str:
    """Where `digits_params` keeps the params trained with `recipe`."""
    return os.path.join(cache_dir_ or default_cache_dir(), f"digits-{recipe_hash(recipe)}.npz")


def init_digits(seed: int) -> dict:
    """Initial weights of the digits network, drawn with numpy from `seed`.

    The same distributions as `models.get("digits").init` (torchvision's VGG scheme: conv kernels
    Kaiming-normal with fan_out, fully connected weights N(0, 0.01), biases 0), but drawn by numpy:
    compiling JAX's threefry generator for every weight shape takes 10-25 s on a small CPU, longer
    than a third of the training itself.
    """
    import jax.numpy as jnp
    import numpy as np

    from jaxviz import models

    model = models.get("digits")
    rng = np.random.default_rng(seed)
    shapes = model.param_shapes()
    params = {}
    for spec in model.layers:
        if spec.name not in shapes:
            continue
        kshape = tuple(shapes[spec.name]["kernel"].shape)
        if spec.kind == "conv":
            scale = np.sqrt(2.0 / (kshape[0] * kshape[1] * kshape[3]))
        else:
            scale = 0.01
        params[spec.name] = {
            "kernel": jnp.asarray((rng.standard_normal(kshape) * scale).astype(np.float32)),
            "bias": jnp.zeros(tuple(shapes[spec.name]["bias"].shape), jnp.float32),
        }
    return params


def train_digits(recipe: DigitsRecipe = DIGITS_RECIPE, *, progress=None):
    """Train the digits network from scratch with `recipe` (no cache).

    Args:
      recipe: the training settings.
      progress: optional `callback(epoch, step, metrics)` (see `jaxviz.train.train_classifier`).

    Returns:
      `(params, history)` as returned by `jaxviz.train.train_classifier`.
    """
    import optax

    from jaxviz import data, models, train

    model = models.get("digits")
    ds = data.load_digits(DIGITS_SIZE)
    params = init_digits(recipe.init_seed)
    return train.train_classifier(
        model,
        params,
        ds.train_images,
        ds.train_labels,
        key=jax.random.key(recipe.shuffle_seed),
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        optimizer=optax.adam(recipe.learning_rate),
        callback=progress,
    )


def digits_params(
    *,
    cache_dir: Optional[str] = None,
    retrain: bool = False,
    progress=None,
    recipe: DigitsRecipe = DIGITS_RECIPE,
) -> dict:
    """Trained parameters of the digits network: loaded from the cache, or trained and cached.

    Args:
      cache_dir: folder of the params file; default `jaxviz.models.digits.default_cache_dir()`.
      retrain: train even if a cached file exists (and overwrite it).
      progress: `callback(epoch, step, metrics)` called during training (not when loading).
      recipe: training settings; each recipe has its own cache file.

    Returns:
      `{layer: {"kernel", "bias"}}` of JAX arrays for `models.get("digits")`.
    """
    import jax.numpy as jnp

    from jaxviz import io

    path = cache_path(cache_dir, recipe)
    if not retrain and os.path.exists(path):
        try:
            params, arch = io.load_params(path)
        except ValueError:
            params, arch = None, None  # unreadable (e.g. truncated by a crash): train again
        if arch == "digits":
            return jax.tree_util.tree_map(jnp.asarray, params)
    params, _ = train_digits(recipe, progress=progress)
    io.save_params(path, params, "digits")
    return params
