"""Training classifiers that take the `Model` interface: one jit-compiled optax step, explicit keys.

    params, history = train_classifier(model, model.init(key), images, labels,
                                       key=key, epochs=6, batch_size=32)
    accuracy(model, params, test_images, test_labels)

Nothing is printed: progress goes to `callback(epoch, step, metrics)` (the CLI prints). There is no
mutable global state; the same key, data and settings give the same parameters (on one machine and
backend).
`make_step` is the reusable piece: any loss of `(params, *batch)` gets a jitted optax update.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.models.base import Model

Array = jax.Array
Params = Any
#: `callback(epoch, step, metrics)`: epoch (0-based), global step (0-based) and
#: `{"loss": float, "accuracy": float}` of that step's batch.
Callback = Callable[[int, int, dict], None]


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy of `logits [N, K]` against integer `labels [N]` in 0..K-1."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def classifier_loss(model: Model, params: Params, images: Array, labels: Array) -> tuple[Array, dict]:
    """Cross-entropy of `model.scores` on a batch, and the batch accuracy as auxiliary output.

    Args:
      model: a `Model` with a `logits` layer.
      params: its parameters.
      images: `[N, H, W, C]` in [0, 1].
      labels: int `[N]`.

    Returns:
      `(loss, {"accuracy": acc})`, scalars.
    """
    logits = model.scores(params, images)
    acc = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    return cross_entropy(logits, labels), {"accuracy": acc}


def make_step(loss_fn: Callable[..., tuple[Array, dict]], optimizer: optax.GradientTransformation) -> Callable:
    """A jitted optimisation step for `loss_fn(params, *batch) -> (loss, aux dict)`.

    Returns:
      `step(params, opt_state, *batch) -> (params, opt_state, metrics)` with
      `metrics = {"loss": loss, **aux}` (0-d arrays).
    """

    @jax.jit
    def step(params, opt_state, *batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, **aux}

    return step


#: `optax.adam(1e-3)`, one shared (stateless) object so that repeated training of a model reuses
#: the compiled step.
DEFAULT_OPTIMIZER = optax.adam(1e-3)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _classifier_step(model, optimizer, params, opt_state, images, labels, idx):
    """One optimizer step on the batch `images[idx]`. `model` and `optimizer` are static (hashed by
    identity), so a model trained again with the same optimizer object does not compile again."""
    def loss(p):
        # The data are arguments, not constants baked into the compiled step.
        return classifier_loss(model, p, images[idx], labels[idx])

    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": value, **aux}


def _check_data(model: Model, images, labels) -> None:
    if model.logits is None:
        raise ValueError(f"{model.name} has no class-score layer (Model.logits) to train")
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"images must be [N, H, W, C]; got shape {shape}")
    if shape[0] == 0:
        raise ValueError("no images to train on (N = 0)")
    lshape = getattr(labels, "shape", None)
    if lshape is None or tuple(lshape) != (shape[0],):
        raise ValueError(f"labels must be integers of shape [{shape[0]}] (one per image); got shape {lshape}")
    if not np.issubdtype(np.asarray(labels).dtype, np.integer):
        raise ValueError(f"labels must be integers; got dtype {np.asarray(labels).dtype}")
    k = model.num_classes
    lab = np.asarray(labels)
    if k is not None and (lab.min() < 0 or lab.max() >= k):
        raise ValueError(f"labels must lie in 0..{k - 1} for {model.name}; got {lab.min()}..{lab.max()}")


def train_classifier(
    model: Model,
    params: Params,
    images,
    labels,
    *,
    key: Array,
    epochs: int,
    batch_size: int = 32,
    optimizer: Optional[optax.GradientTransformation] = None,
    callback: Optional[Callback] = None,
) -> tuple[Params, dict]:
    """Train `model`'s class scores with softmax cross-entropy (mini-batch, shuffled every epoch).

    Each epoch visits a fresh permutation of the data drawn from `key`, in `N // batch_size` full
    batches (the remainder, different each epoch, is skipped so the step compiles once).

    Args:
      model: a `Model` with a `logits` layer.
      params: initial parameters (e.g. `model.init(key)`).
      images: `[N, H, W, C]` float in [0, 1] (numpy or JAX).
      labels: int `[N]` in `0..num_classes-1`.
      key: PRNG key for the shuffling; the same key gives the same parameters.
      epochs: number of passes over the data (>= 0).
      batch_size: images per step (clipped to N).
      optimizer: an optax transformation; default `DEFAULT_OPTIMIZER`, `optax.adam(1e-3)`.
      callback: `callback(epoch, step, metrics)` after every step (see `Callback`).

    Returns:
      `(params, history)`, `history = {"loss": float32 [steps], "accuracy": float32 [steps]}`,
      the per-step batch loss and accuracy.

    Raises:
      ValueError: malformed images or labels, labels out of range, `epochs < 0` or `batch_size < 1`.
    """
    _check_data(model, images, labels)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer; got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    n = int(images.shape[0])
    batch_size = min(int(batch_size), n)
    steps_per_epoch = n // batch_size
    # The whole dataset lives on the device once; each step gathers its batch by index, inside
    # the jitted step (no host round trip per batch).
    images = jnp.asarray(images)
    labels = jnp.asarray(labels, jnp.int32)
    try:
        hash(optimizer)
        step = functools.partial(_classifier_step, model, optimizer)
    except TypeError:  # an optimizer that cannot be a static argument: compile a step for this call
        step = make_step(lambda p, xs, ys, idx: classifier_loss(model, p, xs[idx], ys[idx]), optimizer)
    opt_state = optimizer.init(params)
    history: dict[str, list] = {"loss": [], "accuracy": []}
    global_step = 0
    for epoch in range(int(epochs)):
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
        order = perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
        for i in range(steps_per_epoch):
            params, opt_state, metrics = step(params, opt_state, images, labels, order[i])
            metrics = {k: float(v) for k, v in metrics.items()}
            for k in history:
                history[k].append(metrics[k])
            if callback is not None:
                callback(epoch, global_step, metrics)
            global_step += 1
    return params, {k: np.asarray(v, np.float32) for k, v in history.items()}


def _batched_scores(model: Model, params: Params, images, batch_size: int) -> np.ndarray:
    """`model.scores` over `images` in fixed-size batches (the last one zero-padded, so the
    forward pass compiles once for every batch)."""
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"images must be [N, H, W, C]; got shape {shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    n = int(shape[0])
    if n == 0:
        raise ValueError("no images (N = 0)")
    batch_size = min(int(batch_size), n)
    out = []
    for start in range(0, n, batch_size):
        x = jnp.asarray(images[start : start + batch_size])
        m = x.shape[0]
        if m < batch_size:
            x = jnp.concatenate([x, jnp.zeros((batch_size - m, *x.shape[1:]), x.dtype)], axis=0)
        out.append(np.asarray(_scores_jit(model, params, x))[:m])
    return np.concatenate(out, axis=0)


# `model` is static (hashable by identity), so each model compiles once per batch shape.
_scores_jit = jax.jit(lambda model, params, x: model.scores(params, x), static_argnums=0)


def predict(model: Model, params: Params, images, batch_size: int = 256) -> np.ndarray:
    """Predicted class of every image: int `[N]` (argmax of `model.scores`), computed in batches."""
    return np.argmax(_batched_scores(model, params, images, batch_size), axis=-1)


def accuracy(model: Model, params: Params, images, labels, batch_size: int = 256) -> float:
    """Fraction of `images [N, H, W, C]` whose predicted class equals `labels [N]`."""
    labels = np.asarray(labels)
    if labels.shape != (getattr(images, "shape", (None,))[0],):
        raise ValueError(f"labels must have shape [N] matching images; got {labels.shape}")
    return float(np.mean(predict(model, params, images, batch_size) == labels))
