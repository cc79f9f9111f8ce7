"""Objectives: per-image scalars of a network's activations that compose with `+`, `-` and `*`.

An `Objective` maps the activation dict `{layer: [N, ...]}` returned by `Model.apply` to scores
`[N]`, one per image. Attribution explains an objective (`saliency(model, params, x, target)`), and
image optimisation maximises one. Objectives are pytrees: their numbers (class indices, channel
indices, positions, direction vectors, weights) are leaves, their layer names and functions static,
so they pass through `jit` and `jax.vmap` - e.g. `vmap(lambda c: saliency(model, params, x,
class_logit(c)))(classes)` explains many classes in one call, and a fresh `class_logit(7)` does not
recompile a jitted function that has seen `class_logit(3)`.

    obj = class_logit(243) - 0.5 * channel("relu4_3", 17)
    scores = evaluate(model, params, images, obj)          # [N]

Indices (classes, channels, positions) are ints or `[N]` ints, one per image, so one batch can hold
different experiments (`channel("relu4_3", jnp.array([3, 17, 40]))`). A concrete index out of range is
a `ValueError` naming it; a traced one (under `jit` / `vmap`, where it cannot be checked) makes that
image's value NaN, and its gradient NaN too (`take_units`, `nan_unless`): never the value of a
clamped neighbouring index.

Primitives: `class_logit`, `class_log_prob`, `channel`, `neuron`, `layer_l2`; lucid's `direction`,
`direction_neuron`, `channel_interpolate` and `diversity`. The last two are batch-coupled (an image's
value depends on the rest of its batch); all others are per image.
"""

from __future__ import annotations

import functools
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
    first = next(iter(acts.values()))
    dtype = first.dtype if jnp.issubdtype(first.dtype, jnp.floating) else jnp.float32
    return jnp.broadcast_to(jnp.asarray(value, dtype), (first.shape[0],))


def _sum(acts, static, a, b):
    del static
    return a(acts) + b(acts)


def _product(acts, static, a, b):
    del static
    return a(acts) * b(acts)


def _scale(acts, static, a, w):
    del static
    return a(acts) * w


# --------------------------------------------------------------------------- indices
def check_index(index, size: int, what: str) -> None:
    """Refuse bad indices with a `ValueError` naming `what`.

    A concrete index (int, or an array of them) must be an integer in `[0, size)`. A traced index
    (under `jit` / `vmap`) cannot be checked; only its dtype is (it must be an integer type), and an
    out-of-range value then gives NaN (see `take_units`).
    """
    if isinstance(index, jax.core.Tracer):
        if not jnp.issubdtype(index.dtype, jnp.integer):
            raise ValueError(f"{what} must be integers; got dtype {index.dtype}")
        return
    try:
        values = np.asarray(index)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if values.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers; got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= size):
        raise ValueError(f"{what} {values.tolist()} out of range [0, {size})")


def _index_array(index, n: int, what: str) -> Array:
    """`index` as an integer array of shape `[]` (same for every image) or `[N]` (one per image)."""
    idx = jnp.asarray(index)
    if idx.ndim > 1 or (idx.ndim == 1 and idx.shape[0] != n):
        raise ValueError(f"{what}: per-image indices must have shape [N] = [{n}]; got shape {idx.shape}")
    return idx


def nan_unless(valid: Array, value: Array, support: Array) -> Array:
    """`value` `[N]` where `valid` `[N]`, NaN elsewhere, and with a NaN gradient there too.

    The NaN branch is `sum(support[n]) * NaN`, so the gradient with respect to `support` `[N, ...]` (the
    activations the value was read from) is NaN for invalid images and exactly zero for valid ones:
    gradient methods and image optimisation then return NaN, never another unit's answer or an
    unchanged image.
    """
    n = support.shape[0]
    total = jnp.sum(support.reshape(n, -1), axis=1)
    poison = total * jnp.where(valid, 0, jnp.nan).astype(total.dtype)
    return jnp.where(valid, value, poison)


def take_units(
    rows: Array, index, what: str = "index", valid: Optional[Array] = None, support: Optional[Array] = None
) -> Array:
    """`rows[n, index[n]]` for `rows: [N, K]` and `index` a scalar (the same for every image) or `[N]`.

    The one gather behind every indexing objective (`class_logit`, `class_log_prob`, `channel`,
    `neuron`, `direction_neuron`, `channel_interpolate`). Concrete indices must be in `[0, K)`
    (`ValueError` otherwise). Traced indices outside `[0, K)`, and images where `valid` `[N]` is
    False, give NaN (value and gradient with respect to `support`, default `rows`: see `nan_unless`),
    never a clamped neighbour's value.
    """
    n, k = rows.shape
    check_index(index, k, what)
    idx = _index_array(index, n, what)
    ok = (idx >= 0) & (idx < k)
    safe = jnp.where(ok, idx, 0)
    if idx.ndim == 0:
        picked = jnp.take(rows, safe, axis=1)
    else:
        picked = jnp.take_along_axis(rows, safe[:, None], axis=1)[:, 0]
    ok = jnp.broadcast_to(ok, (n,))
    if valid is not None:
        ok = ok & valid
    return nan_unless(ok, picked, rows if support is None else support)


def _position(a: Array, y, x, layer: str) -> tuple[Array, Array]:
    """Activations `[N, C]` at position `(y, x)` of `a: [N, h, w, C]` (default: the centre unit,
    `(h // 2, w // 2)` as lucid), and whether the position is inside the map `[N]`.

    `y` and `x` are ints or `[N]` ints; concrete ones must lie in the map (`ValueError`), traced ones
    outside it make the result NaN through `take_units` / `nan_unless`.
    """
    n, h, w, _ = a.shape
    y = h // 2 if y is None else y
    x = w // 2 if x is None else x
    check_index(y, h, f"row y of layer {layer!r} ({h}x{w})")
    check_index(x, w, f"column x of layer {layer!r} ({h}x{w})")
    yi = _index_array(y, n, f"row y of layer {layer!r}")
    xi = _index_array(x, n, f"column x of layer {layer!r}")
    oky, okx = (yi >= 0) & (yi < h), (xi >= 0) & (xi < w)
    ys = jnp.broadcast_to(jnp.where(oky, yi, 0), (n,))
    xs = jnp.broadcast_to(jnp.where(okx, xi, 0), (n,))
    rows = a[jnp.arange(n), ys, xs]
    return rows, jnp.broadcast_to(oky & okx, (n,))


def _spatial_mean(a: Array) -> Array:
    return a.mean(axis=(1, 2)) if a.ndim == 4 else a


# --------------------------------------------------------------------------- primitives
def _class_logit(acts, static, index):
    (layer,) = static
    return take_units(acts[layer], index, f"class index for layer {layer!r}")


def class_logit(index, layer: Optional[str] = None) -> Objective:
    """Unnormalised class score (pre-softmax) of class `index` (int, or `[N]` ints, one per image).

    `layer` defaults to the model's class-score layer (bound by `as_objective`/`evaluate`).
    """
    return Objective(_class_logit, (index,), (layer,), (layer,) if layer else (), "class_logit")


def _log_softmax_class(acts, static, index):
    (layer,) = static
    scores = acts[layer]
    # float32 at least (bfloat16 / float16 scores), float64 kept under jax_enable_x64.
    logp = jax.nn.log_softmax(scores.astype(jnp.promote_types(scores.dtype, jnp.float32)), axis=-1)
    return take_units(logp, index, f"class index for layer {layer!r}")


def class_log_prob(index, layer: Optional[str] = None) -> Objective:
    """Log softmax probability of class `index` (per image if `[N]`), in the scores' precision (at
    least float32)."""
    return Objective(_log_softmax_class, (index,), (layer,), (layer,) if layer else (), "class_log_prob")


def _channel(acts, static, index):
    (layer,) = static
    return take_units(_spatial_mean(acts[layer]), index, f"channel of layer {layer!r}")


def channel(layer: str, index) -> Objective:
    """Mean activation of channel `index` of `layer` over all positions (a unit of an fc layer).

    `index` is an int or `[N]` ints: a batch of images can ask for a different channel each (a batch
    of experiments in one call), as lucid's `channel(layer, n, batch=i)` summed over `i`.
    """
    return Objective(_channel, (index,), (layer,), (layer,), f"channel({layer})")


def _neuron(acts, static, index, y, x):
    (layer,) = static
    a = acts[layer]
    what = f"channel of layer {layer!r}"
    if a.ndim == 2:
        if y is not None or x is not None:
            raise ValueError(f"layer {layer!r} is not spatial (shape {a.shape}): neuron takes no y, x there")
        return take_units(a, index, what)
    rows, ok = _position(a, y, x, layer)
    return take_units(rows, index, what, valid=ok, support=a)


def neuron(layer: str, index, y=None, x=None) -> Objective:
    """Activation of one unit: channel `index` at position `(y, x)` (default: the centre,
    `(h // 2, w // 2)`, lucid's choice: the bottom-right of the centre 2x2 for even sizes).

    `index`, `y`, `x` are ints or `[N]` ints (one unit per image). A concrete position outside the map
    is a `ValueError`; a traced one gives NaN (never the clamped edge unit).
    """
    return Objective(_neuron, (index, y, x), (layer,), (layer,), f"neuron({layer})")


def _layer_l2(acts, static):
    (layer,) = static
    a = acts[layer]
    return jnp.mean(jnp.square(a).reshape(a.shape[0], -1), axis=1)


def layer_l2(layer: str) -> Objective:
    """Mean squared activation of a whole layer (DeepDream's objective)."""
    return Objective(_layer_l2, (), (layer,), (layer,), f"layer_l2({layer})")


# --------------------------------------------------------------------------- lucid's objectives
_COSSIM_EPS = 1e-4  # lucid's `_dot_cossim`: cos = x.v / (eps + |x|) / (eps + |v|)
_COSSIM_FLOOR = 0.1  # ... floored at 0.1 before the power


def _safe_norm(v: Array) -> Array:
    """`|v|` over the last axis with a zero (not NaN) gradient at `v = 0` (dead ReLU positions)."""
    sq = jnp.sum(jnp.square(v), axis=-1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)


def _direction_vector(vec, a: Array, layer: str) -> Array:
    """`vec` `[C]` or `[N, C]` checked against `a: [N, ..., C]` and shaped to broadcast with it."""
    v = jnp.asarray(vec)
    n, c = a.shape[0], a.shape[-1]
    if not (v.shape == (c,) or v.shape == (n, c)):
        raise ValueError(f"direction for layer {layer!r} must have shape [C] = [{c}] or [N, C] = [{n}, {c}]; got {v.shape}")
    v = v.astype(a.dtype)
    if v.ndim == 1:
        v = v[None]
    return v.reshape((v.shape[0],) + (1,) * (a.ndim - 2) + (c,))


def _dot_cossim(a: Array, v: Array, cossim_pow: float) -> Array:
    """lucid's `_dot_cossim` at every position: `a.v * max(0.1, cos(a, v)) ** cossim_pow`."""
    dot = jnp.sum(a * v, axis=-1)
    if cossim_pow == 0:
        return dot
    cos = dot / (_COSSIM_EPS + _safe_norm(a)) / (_COSSIM_EPS + _safe_norm(v))
    return dot * jnp.maximum(_COSSIM_FLOOR, cos) ** cossim_pow


def _direction(acts, static, vec):
    layer, cossim_pow = static
    a = acts[layer]
    d = _dot_cossim(a, _direction_vector(vec, a, layer), cossim_pow)
    return d.reshape(a.shape[0], -1).mean(axis=1)


def direction(layer: str, vec, *, cossim_pow: float = 0.0) -> Objective:
    """lucid's `direction`: how far `layer`'s activation vectors point along `vec`, averaged over
    positions: `mean_{y,x} (a[y, x] . vec) * max(0.1, cos(a[y, x], vec)) ** cossim_pow`.

    With `cossim_pow=0` (lucid's default) this is the mean dot product; a positive power (lucid's
    notebooks use 1 to 4) rewards the angle as well as the length. lucent's `direction` differs: it is
    the plain cosine similarity (no length), which this does not reproduce.

    Args:
      layer: any layer; for spatial layers the mean runs over positions.
      vec: `[C]` (the same direction for every image) or `[N, C]` (one per image), traced.
      cossim_pow: the power of the floored cosine (static; lucid's eps 1e-4 and floor 0.1).
    """
    return Objective(_direction, (vec,), (layer, float(cossim_pow)), (layer,), f"direction({layer})")


def _direction_neuron(acts, static, vec, y, x):
    layer, cossim_pow = static
    a = acts[layer]
    if a.ndim != 4:
        raise ValueError(f"direction_neuron needs a spatial layer; {layer!r} has shape {a.shape}")
    rows, ok = _position(a, y, x, layer)
    value = _dot_cossim(rows, _direction_vector(vec, rows, layer), cossim_pow)
    return nan_unless(ok, value, a)


def direction_neuron(layer: str, vec, y=None, x=None, *, cossim_pow: float = 0.0) -> Objective:
    """lucid's `direction_neuron`: `direction` at one position `(y, x)` (default: the centre, as
    `neuron`). `vec` is `[C]` or `[N, C]`; `y`, `x` ints or `[N]` ints; traced positions outside the map
    give NaN."""
    return Objective(_direction_neuron, (vec, y, x), (layer, float(cossim_pow)), (layer,), f"direction_neuron({layer})")


def _channel_interpolate(acts, static, index1, index2):
    layer1, layer2 = static
    c1 = take_units(_spatial_mean(acts[layer1]), index1, f"channel of layer {layer1!r}")
    c2 = take_units(_spatial_mean(acts[layer2]), index2, f"channel of layer {layer2!r}")
    n = c1.shape[0]
    w = (jnp.arange(n) / max(n - 1, 1)).astype(c1.dtype)
    return (1 - w) * c1 + w * c2


def channel_interpolate(layer1: str, index1, layer2: str, index2) -> Objective:
    """lucid's `channel_interpolate`: image `n` of a batch of `N` maximises
    `(1 - w_n) * channel(layer1, index1) + w_n * channel(layer2, index2)` with `w_n = n / (N - 1)`,
    so the batch morphs from the first channel (image 0) to the second (image N-1). For `N = 1`,
    `w_0 = 0` (lucid divides by zero).

    Batch-coupled: an image's weight depends on its position in the batch and on `N`, so it is not the
    same objective under `vmap` over single images.
    """
    return Objective(
        _channel_interpolate, (index1, index2), (layer1, layer2), _union((layer1,), (layer2,)), "channel_interpolate"
    )


def _diversity(acts, static):
    (layer,) = static
    a = acts[layer]
    if a.ndim != 4:
        raise ValueError(f"diversity needs a spatial layer [N, h, w, C]; {layer!r} has shape {a.shape}")
    n, c = a.shape[0], a.shape[-1]
    f = a.reshape(n, -1, c)
    gram = jnp.einsum("npc,npd->ncd", f, f)
    # tf.nn.l2_normalize over both Gram axes: g / sqrt(max(sum g^2, 1e-10)).
    sq = jnp.sum(jnp.square(gram), axis=(1, 2), keepdims=True)
    gram = gram / jnp.sqrt(jnp.maximum(sq, 1e-10))
    sim = jnp.einsum("icd,jcd->ij", gram, gram)
    others = jnp.where(jnp.eye(n, dtype=bool), 0, sim)
    return jnp.sum(others, axis=1) / n


def diversity(layer: str) -> Objective:
    """lucid's `diversity`: how alike the images of a batch are at `layer` (a similarity, to be
    SUBTRACTED): image `i` gets `sum_{j != i} <G_i, G_j> / N`, where `G_i` is image `i`'s Gram matrix
    `F^T F` over positions, L2-normalised over both axes (eps 1e-10). The sum over the batch is
    lucid's value. Use it as lucid does: `channel(layer, c) - 1e2 * diversity(layer)` over a batch of
    about 4 images (lucent's `diversity` returns the negative of this).

    Batch-coupled: each image's value depends on every other image of the batch (it is 0 for a batch
    of one), so `vmap` over single images does not reproduce it.
    """
    return Objective(_diversity, (), (layer,), (layer,), f"diversity({layer})")


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


# Primitives that read channels of their one layer through `take_units`, with the channel index as
# their first argument.
_CHANNEL_READERS = (_channel, _neuron, _class_logit)
# Combinators that read no layer themselves.
_COMBINATORS = (_sum, _product, _scale, _constant)


def _channel_readers(obj: Objective, found: list) -> bool:
    """Append `obj`'s channel-reading primitives to `found`; False if it holds any other reader."""
    if obj.fn in _CHANNEL_READERS:
        found.append(obj)
        return True
    if obj.fn in _COMBINATORS:
        return all(_channel_readers(a, found) for a in obj.args if isinstance(a, Objective))
    return False


def _index_ok(index, size: int) -> bool:
    """Whether `check_index` accepts `index` (a concrete integer index in `[0, size)`, or a traced
    integer one), without raising."""
    try:
        check_index(index, size, "index")
    except ValueError:
        return False
    return True


def restrict(model, params, obj: Objective, **apply_kwargs):
    """`(params, obj)` rewritten so that the network computes only the channels `obj` reads.

    An objective that reads ONE layer through `channel`, `neuron` and `class_logit` (with any `+`,
    `-`, `*` between them) needs a few of that layer's channels; `Model.restricted` gathers the
    producing convolution's (or dense layer's) kernel at those channels, and each index of the
    objective is renumbered to its position among them. Same values and gradients up to float
    rounding; a channel objective at VGG16's relu4_3 then costs conv4_3 one output channel instead
    of 512 (128 px forward and input gradient: 146 -> 123 ms on a 2-core CPU). A traced index out of
    range still gives NaN for its image only (its slot gathers channel 0 and its renumbered index is
    out of range); concrete indices out of range are left for `take_units` to refuse.

    Unchanged `(params, obj)` where nothing is gained or it would not be the same objective: an
    objective reading other quantities (`class_log_prob`, `layer_l2`, `direction`, `diversity`, ...)
    or several layers, indices that would need as many channels as the layer has, `perturb=` in
    `apply_kwargs` (the layers in between would change shape), a layer of unknown channel count, or a
    model without `Model.restricted` support.
    """
    if apply_kwargs.get("perturb") or len(obj.layers) != 1:
        return params, obj
    layer = obj.layers[0]
    size = model.layer(layer).channels
    readers: list = []
    if size is None or not _channel_readers(obj, readers):
        return params, obj
    indices = [r.args[0] for r in readers]
    if not all(_index_ok(i, size) for i in indices):
        return params, obj
    indices = [jnp.asarray(i) for i in indices]
    if any(i.ndim > 1 for i in indices):
        return params, obj
    valid = [(i >= 0) & (i < size) for i in indices]
    channels = jnp.concatenate([jnp.where(ok, i, 0).reshape(-1) for i, ok in zip(indices, valid)]).astype(jnp.int32)
    if channels.shape[0] >= size:
        return params, obj  # as many channels as the layer has (e.g. one per image of a large batch)
    new_params = model.restricted(params, layer, channels)
    if new_params is None:
        return params, obj
    renumbered, offset = {}, 0
    for r, i, ok in zip(readers, indices, valid):
        position = (offset + jnp.arange(i.size, dtype=jnp.int32)).reshape(i.shape)
        renumbered[id(r)] = jnp.where(ok, position, -1)
        offset += i.size
    return new_params, _renumber(obj, renumbered)


def _renumber(obj: Objective, renumbered: dict) -> Objective:
    if id(obj) in renumbered:
        return Objective(obj.fn, (renumbered[id(obj)], *obj.args[1:]), obj.static, obj.layers, obj.name)
    args = tuple(_renumber(a, renumbered) if isinstance(a, Objective) else a for a in obj.args)
    return Objective(obj.fn, args, obj.static, obj.layers, obj.name)


def evaluate(model, params, images: Array, target, **apply_kwargs) -> Array:
    """Scores `[N]` of `target` (objective or class index) for `images` `[N, H, W, C]` in [0, 1].

    `apply_kwargs` go to `Model.apply` (e.g. `relu=` for guided backprop, `pool="avg"`). Only the
    channels the objective reads are computed at its layer where `restrict` applies.
    """
    obj = as_objective(model, target)
    params, obj = restrict(model, params, obj, **apply_kwargs)
    acts = model.apply(params, images, until=last_layer(model, obj), **apply_kwargs)
    return obj(acts)


def _hashable(items) -> bool:
    try:
        hash(items)
    except TypeError:
        return False
    return True


@functools.lru_cache(maxsize=64)
def _cached_shapes(model, image, until, params_def, params_leaves, kwargs):
    params = jax.tree_util.tree_unflatten(params_def, params_leaves)
    return jax.eval_shape(lambda p, x: model.apply(p, x, until=until, **dict(kwargs)), params, image)


def activation_shapes(model, params, images, until: Optional[str] = None, **apply_kwargs) -> dict:
    """`{layer: jax.ShapeDtypeStruct}` of `model.apply(params, images, until=until, **apply_kwargs)`,
    computed abstractly (nothing runs) and cached per model, image shape, parameter shapes and options."""
    image = jax.ShapeDtypeStruct(jnp.shape(images), jnp.result_type(images))
    leaves, params_def = jax.tree_util.tree_flatten(params)
    leaves = tuple(jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in leaves)
    kwargs = tuple(sorted(apply_kwargs.items()))
    if _hashable(kwargs):
        return _cached_shapes(model, image, until, params_def, leaves, kwargs)
    return _cached_shapes.__wrapped__(model, image, until, params_def, leaves, kwargs)


def check_objective(model, params, images, obj: Objective, **apply_kwargs) -> None:
    """Raise the objective's `ValueError`s (indices out of range, wrong shapes) now, before any work.

    The objective is traced on abstract activations of the right shapes (`activation_shapes`), so
    nothing runs; its concrete numbers (class, channel, position indices) are checked as they would be
    by `evaluate`. Traced numbers cannot be checked: out-of-range ones give NaN.
    """
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(obj)):
        return  # checked (shapes, dtypes) when the computation itself is traced
    shapes = activation_shapes(model, params, images, last_layer(model, obj), **apply_kwargs)
    jax.eval_shape(lambda acts: obj(acts), shapes)


__all__ = [
    "Objective",
    "activation_shapes",
    "as_objective",
    "channel",
    "channel_interpolate",
    "check_index",
    "check_objective",
    "class_log_prob",
    "class_logit",
    "direction",
    "direction_neuron",
    "diversity",
    "evaluate",
    "last_layer",
    "layer_l2",
    "nan_unless",
    "neuron",
    "restrict",
    "take_units",
]
