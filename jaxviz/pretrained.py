"""Trained parameters: provision, train, cache. No weights are shipped; they are trained here, offline.

    from jaxviz import models, pretrained
    model = models.get("digits")
    params = pretrained.digits_params()     # trains once (32-65 s on 2 idle CPU cores), then cached

`digits_params` trains the digits network (`jaxviz.models.digits`) with the fixed recipe
`DIGITS_RECIPE` on scikit-learn's digits (`jaxviz.data.load_digits`) and caches the params file in
the user cache folder (`$JAXVIZ_CACHE`, else `$XDG_CACHE_HOME/jaxviz`, else `~/.cache/jaxviz`) under
a name that hashes the architecture and the recipe (`recipe_hash`), so a changed recipe trains
afresh. Training is deterministic on one machine and backend, not across CPUs: what a test or a
user relies on must hold for any network the recipe produces (see tests/test_meaning.py and
benchmarks/meaning_seeds.py, which train it with several seeds).

Layering: this module sits above `models`, `data`, `train` and `io` and imports them; none of them
imports it. Nothing is printed: progress goes to a callback, and a cache that cannot be written
after training gives a warning (the trained parameters are returned, not lost).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import warnings
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from jaxviz import data, io, train
from jaxviz.models import digits as digits_arch
from jaxviz.models.vgg import vgg_layers

#: `progress(epoch, step, metrics)`, as `jaxviz.train.Callback`.
Progress = Callable[[int, int, dict], None]


@dataclasses.dataclass(frozen=True)
class DigitsRecipe:
    """How `digits_params` trains the digits network (all of it goes into the cache key).

    Attributes:
      epochs, batch_size, learning_rate: Adam on softmax cross-entropy (`jaxviz.train`).
      schedule: `"cosine"`: the learning rate decays from `learning_rate` to 0 along a half cosine
        over all steps (`optax.cosine_decay_schedule`); `"constant"`: it stays at `learning_rate`.
      init_seed: seed of the initial weights (`jaxviz.models.digits.init_digits`).
      shuffle_seed: `jax.random.key(shuffle_seed)` draws the batch order.
    """

    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    init_seed: int = 0
    shuffle_seed: int = 1

    def optimizer(self) -> optax.GradientTransformation:
        """The optax optimizer of this recipe (one shared object per learning rate, schedule and number
        of steps, so that training again, e.g. with other seeds, reuses the compiled step)."""
        steps = self.epochs * (data.DIGITS_TRAIN // max(1, min(self.batch_size, data.DIGITS_TRAIN)))
        return _adam(float(self.learning_rate), self.schedule, max(int(steps), 1))


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float, schedule: str, steps: int) -> optax.GradientTransformation:
    if schedule == "constant":
        return optax.adam(learning_rate)
    if schedule == "cosine":
        return optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; use 'cosine' or 'constant'")


DIGITS_RECIPE = DigitsRecipe()

#: Bump when the training code changes what a recipe produces (2: max-pool ties go to the first
#: maximum; 3: the recipe decays the learning rate, as held-out accuracy after a constant rate
#: varied from 95.6% to 99.3% over five seeds).
RECIPE_VERSION = 3


#: The user cache folder (`jaxviz.io.default_cache_dir`): `$JAXVIZ_CACHE`, else `$XDG_CACHE_HOME/jaxviz`, else
#: `~/.cache/jaxviz`.
default_cache_dir = io.default_cache_dir


def recipe_hash(recipe: DigitsRecipe = DIGITS_RECIPE) -> str:
    """Hex digest (16 characters) of everything that determines the trained weights: the layer
    descriptions, normalisation, input size, data split, `recipe` and `RECIPE_VERSION`."""
    desc = {
        "layers": [dataclasses.asdict(s) for s in vgg_layers(digits_arch.DIGITS_CONFIG)],
        "config": dataclasses.asdict(digits_arch.DIGITS_CONFIG),
        "mean": digits_arch.DIGITS_MEAN,
        "std": digits_arch.DIGITS_STD,
        "size": digits_arch.DIGITS_SIZE,
        "split": [data.DIGITS_SPLIT_SEED, data.DIGITS_TRAIN],
        "recipe": dataclasses.asdict(recipe),
        "version": RECIPE_VERSION,
    }
    text = json.dumps(desc, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(cache_dir: Optional[str] = None, recipe: DigitsRecipe = DIGITS_RECIPE) -> str:
    """Where `digits_params` keeps the params trained with `recipe`."""
    return os.path.join(cache_dir or default_cache_dir(), f"digits-{recipe_hash(recipe)}.npz")


def train_digits(recipe: DigitsRecipe = DIGITS_RECIPE, *, progress: Optional[Progress] = None):
    """Train the digits network from scratch with `recipe` (no cache, no files).

    Args:
      recipe: the training settings.
      progress: optional `progress(epoch, step, metrics)` (see `jaxviz.train.train_classifier`).

    Returns:
      `(params, history)` as returned by `jaxviz.train.train_classifier`.
    """
    ds = data.load_digits(digits_arch.DIGITS_SIZE)
    return train.train_classifier(
        digits_arch.digits_model(),
        digits_arch.init_digits(recipe.init_seed),
        ds.train_images,
        ds.train_labels,
        key=jax.random.key(recipe.shuffle_seed),
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        optimizer=recipe.optimizer(),
        callback=progress,
    )


def check_writable_folder(folder: str) -> None:
    """Create `folder` if needed and check that a file can be created in it (by creating and removing
    an empty temporary file: permission bits say nothing for root, read-only mounts or full quotas).

    Raises:
      OSError (the original subclass, e.g. `PermissionError`, `NotADirectoryError`): with a message
        naming the folder and how to choose another.
    """
    try:
        io.ensure_writable_folder(folder)
    except OSError as e:
        raise type(e)(
            f"the jaxviz cache folder {folder!r} is not writable ({e.strerror or e}), so a trained digits "
            "network cannot be cached there. Pass cache_dir= a writable folder or set $JAXVIZ_CACHE."
        ) from e


def digits_params(
    cache_dir: Optional[str] = None,
    *,
    retrain: bool = False,
    progress: Optional[Progress] = None,
    recipe: DigitsRecipe = DIGITS_RECIPE,
) -> dict:
    """Trained parameters of the digits network: loaded from the cache, or trained and cached.

    Before training, the cache folder is created if needed and checked to be writable (an error
    then, not after a minute of training). If writing the trained file still fails (the folder
    removed or made read-only meanwhile, a full disk), a `RuntimeWarning` says so and the trained
    parameters are returned uncached. The file is written atomically (`jaxviz.io.save_params`, through
    `jaxviz.io.atomic_write`: a temporary file in the same folder, then renamed), so a crash never
    leaves a partial cache file; an unreadable cache file is trained again.

    Args:
      cache_dir: folder of the params file; default `default_cache_dir()`.
      retrain: train even if a cached file exists (and replace it).
      progress: `progress(epoch, step, metrics)` called during training (not when loading).
      recipe: training settings; each recipe has its own cache file.

    Returns:
      `{layer: {"kernel", "bias"}}` of float32 JAX arrays for `models.get("digits")`.

    Raises:
      OSError: the cache folder cannot be created or written (checked before training).
    """
    path = cache_path(cache_dir, recipe)
    if not retrain and os.path.exists(path):
        try:
            params, arch = io.load_params(path)
        except ValueError:
            params, arch = None, None  # unreadable (e.g. truncated by a crash): train again
        if arch == "digits":
            return jax.tree_util.tree_map(jnp.asarray, params)
    check_writable_folder(os.path.dirname(path))
    params, _ = train_digits(recipe, progress=progress)
    try:
        io.save_params(path, params, "digits")
    except (OSError, ValueError) as e:  # ValueError: the path turned into something unwritable
        warnings.warn(
            f"the trained digits network could not be cached at {path} ({type(e).__name__}: {e}); "
            "returning it uncached, so the next call trains again",
            RuntimeWarning,
            stacklevel=2,
        )
    return params
