"""Objectives: per-image scalars of a network's activations that compose with `+`, `-` and `*`.

An `Objective` maps the activation dict `{layer: [N, ...]}` returned by `Model.apply` to scores
`[N]`, one per image. Attribution explains an objective (`saliency(model, params, x, target)`), and
image optimisation maximises one. Objectives are pytrees: their numbers (class indices, channel
indices, weights) are leaves, their layer names and functions static, so they pass through `jit`
and `jax.vmap` - e.g. `vmap(lambda c: saliency(model, params, x, class_logit(c)))(classes)` explains
many classes in one call, and a fresh `class_logit(7)` does not recompile a jitted function that
has seen `class_logit(3)`.

    obj = class_logit(243) - 0.5 * channel("relu4_3", 17)
    scores = evaluate(model, params, images, obj)          # [N]
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@jax.tree_util.register_pytree_node_class
class Objective:
    """`fn(acts, static, *args) -> [N]`; `args` are pytree leaves (traced), the rest is static.

    Attributes:
      fn: module-level function (so that equal objectives hash equal and `jit` caches hit).
      args: tuple of arrays / numbers / objectives, traced under `jit` and mapped under `vmap`.
      static: hashable configuration (layer names, reductions).
      layers: names of the layers `fn` reads; `evaluate` runs the model only as far as needed.
      name: readable description (static, so it holds no numbers: those are in `args`).
    """

    def __init__(self, fn: Callable, args: Sequence[Any] = (), static: tuple = (), layers: Sequence[str] = (), name: str = ""):
        self.fn = fn
        self.args = tuple(args)
        self.static = static
        self.layers = tuple(layers)
        self.name = name or fn.__name__

    def __call__(self, acts: dict) -> Array:
        return self.fn(acts, self.static, *self.args)

    def tree_flatten(self):
        return self.args, (self.fn, self.static, self.layers, self.name)

    @classmethod
    def tree_unflatten(cls, aux, children):
        fn, static, layers, name = aux
        return cls(fn, children, static, layers, name)

    def __repr__(self):
        return f"Objective({self.name})"

    # ---------------------------------------------------------------- algebra
    def __add__(self, other):
        other = _lift(other)
        return Objective(_sum, (self, other), (), _union(self.layers, other.layers), f"({self.name} + {other.name})")

    __radd__ = __add__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-_lift(other))

    def __rsub__(self, other):
        return _lift(other) + (-self)

    def __mul__(self, other):
        if isinstance(other, Objective):
            return Objective(_product, (self, other), (), _union(self.layers, other.layers), f"{self.name} * {other.name}")
        return Objective(_scale, (self, other), (), self.layers, f"w * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, Objective):
            raise TypeError("dividing by an objective is not supported")
        return self * (1.0 / other)


def _union(a, b):
    return tuple(dict.fromkeys((*a, *b)))


def _lift(x) -> Objective:
    if isinstance(x, Objective):
        return x
    return Objective(_constant, (x,), (), (), "constant")


def _constant(acts, static, value):
    del static
    n = next(iter(acts.values())).shape[0]
    return jnp.broadcast_to(jnp.asarray(value, jnp.float32), (n,))


def _sum(acts, static, a, b):
    del static
    return a(acts) + b(acts)


def _product(acts, static, a, b):
    del static
    return a(acts) * b(acts)


def _scale(acts, static, a, w):
    del static
    return a(acts) * w


# --------------------------------------------------------------------------- primitives
def _take_per_image(x, index):
    """`x[n, index[n]]` for `x: [N, K]`; `index` a scalar (same for all) or `[N]`."""
    index = jnp.asarray(index, jnp.int32)
    if index.ndim == 0:
        return x[:, index]
    if index.shape != (x.shape[0],):
        raise ValueError(f"per-image indices must have shape [N] = [{x.shape[0]}]; got {index.shape}")
    return jnp.take_along_axis(x, index[:, None], axis=1)[:, 0]


def check_index(index, size: int, what: str) -> None:
    """Raise a `ValueError` naming `what` if a concrete index (or array of them) is not an integer in
    `[0, size)`; traced indices (under `jit`/`vmap`) cannot be checked and pass."""
    try:
        values = np.asarray(index)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if values.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers; got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= size):
        raise ValueError(f"{what} {values.tolist()} out of range [0, {size})")


def _class_logit(acts, static, index):
    (layer,) = static
    scores = acts[layer]
    check_index(index, scores.shape[-1], f"class index for layer {layer!r}")
    return _take_per_image(scores, index)


def class_logit(index, layer: Optional[str] = None) -> Objective:
    """Unnormalised class score (pre-softmax) of class `index` (int, or `[N]` ints, one per image).

    `layer` defaults to the model's class-score layer (bound by `as_objective`/`evaluate`).
    """
    return Objective(_class_logit, (index,), (layer,), (layer,) if layer else (), "class_logit")


def _log_softmax_class(acts, static, index):
    (layer,) = static
    scores = acts[layer]
    check_index(index, scores.shape[-1], f"class index for layer {layer!r}")
    return _take_per_image(jax.nn.log_softmax(scores.astype(jnp.float32), axis=-1), index)


def class_log_prob(index, layer: Optional[str] = None) -> Objective:
    """Log softmax probability of class `index` (per image if `[N]`)."""
    return Objective(_log_softmax_class, (index,), (layer,), (layer,) if layer else (), "class_log_prob")


def _channel(acts, static, index):
    (layer,) = static
    a = acts[layer]
    check_index(index, a.shape[-1], f"channel of layer {layer!r}")
    if a.ndim == 4:
        a = a.mean(axis=(1, 2))
    return _take_per_image(a, index)


def channel(layer: str, index) -> Objective:
    """Mean activation of channel `index` of `layer` over all positions (a unit of an fc layer)."""
    return Objective(_channel, (index,), (layer,), (layer,), f"channel({layer})")


def _neuron(acts, static, index, y, x):
    (layer,) = static
    a = acts[layer]
    check_index(index, a.shape[-1], f"channel of layer {layer!r}")
    if a.ndim == 4:
        y = a.shape[1] // 2 if y is None else y
        x = a.shape[2] // 2 if x is None else x
        a = a[:, y, x, :]
    return _take_per_image(a, index)


def neuron(layer: str, index, y=None, x=None) -> Objective:
    """Activation of one unit: channel `index` at position `(y, x)` (default: the centre)."""
    return Objective(_neuron, (index, y, x), (layer,), (layer,), f"neuron({layer})")


def _layer_l2(acts, static):
    (layer,) = static
    a = acts[layer]
    return jnp.mean(jnp.square(a).reshape(a.shape[0], -1), axis=1)


def layer_l2(layer: str) -> Objective:
    """Mean squared activation of a whole layer (DeepDream's objective)."""
    return Objective(_layer_l2, (), (layer,), (layer,), f"layer_l2({layer})")


# --------------------------------------------------------------------------- binding and evaluation
def _bind(obj: Objective, logits_layer: Optional[str]) -> Objective:
    """Fill in the model's class-score layer where an objective left it open."""
    args = tuple(_bind(a, logits_layer) if isinstance(a, Objective) else a for a in obj.args)
    static, layers = obj.static, obj.layers
    if obj.fn in (_class_logit, _log_softmax_class) and static == (None,):
        if logits_layer is None:
            raise ValueError("this model has no class-score layer; name the layer of class_logit(..., layer=)")
        static, layers = (logits_layer,), (logits_layer,)
    elif any(a is not b for a, b in zip(args, obj.args)):
        layers = ()
        for a in args:
            if isinstance(a, Objective):
                layers = _union(layers, a.layers)
    return Objective(obj.fn, args, static, layers, obj.name)


def as_objective(model, target: Union[Objective, int, Array]) -> Objective:
    """`target` as an `Objective` bound to `model`: an int or `[N]` ints mean `class_logit`."""
    if not isinstance(target, Objective):
        if model.logits is None:
            raise ValueError(f"{model.name} has no class-score layer; pass an Objective as the target")
        target = class_logit(target)
    obj = _bind(target, model.logits)
    for layer in obj.layers:
        model.layer(layer)  # KeyError naming the valid layers
    return obj


def last_layer(model, obj: Objective) -> Optional[str]:
    """The deepest layer `obj` reads (the `until` for `Model.apply`)."""
    if not obj.layers:
        return None
    return max(obj.layers, key=model.index)


def evaluate(model, params, images: Array, target, **apply_kwargs) -> Array:
    """Scores `[N]` of `target` (objective or class index) for `images` `[N, H, W, C]` in [0, 1].

    `apply_kwargs` go to `Model.apply` (e.g. `relu=` for guided backprop, `pool="avg"`).
    """
    obj = as_objective(model, target)
    acts = model.apply(params, images, until=last_layer(model, obj), **apply_kwargs)
    return obj(acts)


__all__ = [
    "Objective",
    "as_objective",
    "channel",
    "check_index",
    "class_log_prob",
    "class_logit",
    "evaluate",
    "last_layer",
    "layer_l2",
    "neuron",
]
