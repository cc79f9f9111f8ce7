"""Looking at what a trained CNN has learned: first-layer filters, activation maps, maximally
activating patches, receptive fields and nearest neighbours in feature space.

Every function takes any `jaxviz.models.Model`. The array math is jit-compiled (the model and the
layer name are static, the parameters and images traced, so one compilation serves all images of a
shape). Datasets are streamed: `batches` is any iterable of image batches `[B, H, W, C]` in [0, 1],
consumed once, and only small running summaries (top-k tables, one batch's activations) are held.

    filters = first_layer_filters(model, params)                    # [64, 11, 11, 3] in [0, 1]
    top = max_activating_patches(model, params, batches, "conv5", channels=[3, 17], k=9, distinct_images=True)
    top.patches                                                     # [2, 9, 163, 163, 3]
    idx, dist = nearest_neighbours(features(model, params, queries), iter_features(model, params, db), k=5)

Validation (the library's rule): concrete bad input is refused with a `ValueError` naming the
problem before any work is done: images that are empty, non-finite or outside [0, 1]
(`Model.check_images`), unknown layers, channel indices, positions or image indices out of range,
`k` larger than what the data hold, non-finite feature vectors. Traced values (under `jit`, `vmap`)
cannot be inspected: then NaN propagates to the result (a NaN image gives NaN activations and
features; an out-of-range traced channel gives NaN values and patches; a non-finite traced query or
database row gives NaN distances with index -1), never another index's answer.

Loops: the chunked loops (patches and features over the chunks of one array, nearest neighbours
over database chunks) follow `jaxviz.loops` (`loop="auto"`: a Python loop over one jitted,
cached step on CPU, `lax.scan` on accelerators and under a transformation; `"python"` and `"scan"`
force one). An iterable of batches is always read by a Python loop over the same cached step.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxviz import imaging, loops
from jaxviz._util import is_traced
from jaxviz.models.base import Model, ReceptiveField, check_pixel_values, receptive_field, spatial_shape

Array = jax.Array

#: `features(..., layer=PIXELS)` gives the flattened images themselves (nearest neighbours in pixel space).
PIXELS = "pixels"


# --------------------------------------------------------------------------- helpers
def _check_batch(model: Model, images, what: str = "images"):
    """`images` as an array, or a `ValueError` saying what is wrong (rank, channels, dtype, size,
    empty batch, non-finite values, values outside [0, 1]; see `Model.check_images`)."""
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            f"{what} must be a batch [B, H, W, {model.in_channels}] of images in [0, 1]; "
            f"got shape {tuple(images.shape)}"
        )
    # Concrete images closed over by a user's jit are still checked: evaluated eagerly, not
    # staged into the trace (where a value check could not run).
    with jax.ensure_compile_time_eval():
        model.check_images(images)
    return jnp.asarray(images)


def _check_k(k, what: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{what} must be a positive integer; got {k!r}")
    return int(k)


def _check_loop(loop: str) -> str:
    if loop not in loops.LOOPS:
        raise ValueError(f"loop must be one of {loops.LOOPS}; got {loop!r}")
    return loop


def _check_batch_size(batch_size) -> Optional[int]:
    if batch_size is None:
        return None
    return _check_k(batch_size, "batch_size")


def _layer_shape(model: Model, params, images, layer: str, relu=None, pool=None) -> tuple[int, ...]:
    """Shape of `layer`'s activation for `images`, without computing it: from the layer
    descriptions where they determine it (no tracing at all, so arguments are validated before the
    model runs in any form), else by `eval_shape` (traced once, cached with `_activation`)."""
    if layer != PIXELS:
        spec = model.layer(layer)  # an unknown layer: a clear error before any tracing
        if spec.spatial and spec.channels is not None:
            try:
                return (images.shape[0], *spatial_shape(model, layer, images.shape[1:3]), spec.channels)
            except ValueError:  # geometry unknown ("map" layers)
                pass
    return tuple(_activation.eval_shape(model, params, images, layer, relu, pool).shape)


def _require_spatial(model: Model, layer: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 4:
        raise ValueError(
            f"layer {layer!r} of {model.name} is not spatial (activation shape {shape}); "
            f"spatial layers are: {', '.join(model.trunk)}"
        )


def _channel_indices(channels, n: int, layer: str):
    """Concrete channels as int32 after a range check; traced ones pass (they give NaN results
    where out of range, see `_take_channels`)."""
    if is_traced(channels):
        ch = jnp.atleast_1d(jnp.asarray(channels))
        if ch.ndim != 1 or ch.size == 0 or not jnp.issubdtype(ch.dtype, jnp.integer):
            raise ValueError(f"channels must be a non-empty sequence of integers; got {channels!r}")
        return ch.astype(jnp.int32)
    ch = np.atleast_1d(np.asarray(channels))
    if ch.ndim != 1 or ch.size == 0 or not np.issubdtype(ch.dtype, np.integer):
        raise ValueError(f"channels must be a non-empty sequence of integers; got {channels!r}")
    if ch.min() < 0 or ch.max() >= n:
        raise ValueError(f"channel indices must be in [0, {n}) for layer {layer!r}; got {ch.tolist()}")
    return ch.astype(np.int32)


def _take_channels(act, channels):
    """`act[..., channels]` with NaN for out-of-range (also negative) channels, which can only be
    traced ones: a wrapped or clamped index would be another channel's answer."""
    n = act.shape[-1]
    valid = (channels >= 0) & (channels < n)
    out = jnp.take(act, jnp.clip(channels, 0, n - 1), axis=-1)
    return jnp.where(valid, out, jnp.asarray(jnp.nan, out.dtype))


def _chunks(x, batch_size: Optional[int]):
    """Split `[N, ...]` into `[n_chunks, B, ...]` (the last chunk padded with zeros) and a validity
    mask `[n_chunks, B]`; `batch_size=None`: one chunk of everything."""
    n = x.shape[0]
    b = n if batch_size is None else min(batch_size, n)
    n_chunks = -(-n // b)
    pad = n_chunks * b - n
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    valid = jnp.arange(n_chunks * b) < n
    return x.reshape(n_chunks, b, *x.shape[1:]), valid.reshape(n_chunks, b)


def _scan(fn, static, consts, carry, xs, loop: str):
    """`loops.scan(fn, static, consts, carry, xs, loop=loop)`, except that an eager call in scan
    mode runs one jitted program cached per `(fn, static)` and shapes: an eager `lax.scan`
    re-traces and re-compiles its body on every call."""
    if loops.resolve(loop, consts, carry, xs) == "scan" and not is_traced((consts, carry, xs)):
        return _scan_compiled(fn, static, consts, carry, xs)
    return loops.scan(fn, static, consts, carry, xs, loop=loop)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _scan_compiled(fn, static, consts, carry, xs):
    return loops.scan(fn, static, consts, carry, xs, loop="scan")


def _map_as_scan(static, consts, carry, x):
    fn, inner = static
    return carry, fn(inner, consts, x)


def _map(fn, static, consts, xs, loop: str):
    """`loops.map` through `_scan` (compiled once in scan mode)."""
    return _scan(_map_as_scan, (fn, static), consts, None, xs, loop)[1]


@functools.partial(jax.jit, static_argnames=("model", "layer", "relu", "pool"))
def _activation(model: Model, params, images, layer: str, relu=None, pool=None):
    # Params and images are arguments, never closed over: closed-over arrays become constants
    # that XLA would constant-fold (a whole forward pass at compile time).
    if layer == PIXELS:
        return images
    return model.apply(params, images, until=layer, relu=relu, pool=pool)[layer]


# --------------------------------------------------------------------------- first-layer filters
def first_conv_layer(model: Model) -> str:
    """Name of the model's first convolution (AlexNet `conv1`, VGG `conv1_1`)."""
    for spec in model.layers:
        if spec.kind == "conv":
            return spec.name
    raise ValueError(f"{model.name} has no layer of kind 'conv'; pass the kernel explicitly (kernel=...)")


def first_layer_filters(
    model: Optional[Model],
    params=None,
    layer: Optional[str] = None,
    *,
    kernel=None,
    shared_scale: bool = False,
) -> Array:
    """The filters of a convolution, as small images in [0, 1].

    Args:
      model: the network (only used to find `layer`; may be `None` when `kernel` is given).
      params: its parameters; the built-in models keep `params[layer]["kernel"]` as `[kh, kw, C_in, C_out]`.
      layer: conv layer name; default the model's first conv (`first_conv_layer`).
      kernel: an explicit `[kh, kw, C_in, C_out]` (HWIO) kernel, for parameter layouts other than
        `{layer: {"kernel": ...}}` (e.g. a Flax module's); overrides `model`/`params`/`layer`.
      shared_scale: `False` (default): each filter min-max scaled on its own, which shows every
        filter's pattern; `True`: one scale for all, which also shows their relative strengths.

    Returns:
      `[C_out, kh, kw, C_in]` in [0, 1] (a constant filter maps to 0).
    """
    if kernel is None:
        if model is None or params is None:
            raise ValueError("give model and params, or an explicit kernel=[kh, kw, C_in, C_out]")
        layer = layer or first_conv_layer(model)
        spec = model.layer(layer)
        if spec.kind != "conv":
            raise ValueError(f"layer {layer!r} of {model.name} is a {spec.kind!r} layer, not a convolution")
        try:
            kernel = params[layer]["kernel"]
        except (KeyError, TypeError, IndexError):
            raise ValueError(
                f"params have no [{layer!r}]['kernel']; for other parameter layouts pass kernel=[kh, kw, C_in, C_out]"
            ) from None
    kernel = jnp.asarray(kernel)
    if kernel.ndim != 4:
        raise ValueError(f"a conv kernel must be [kh, kw, C_in, C_out] (HWIO); got shape {kernel.shape}")
    if 0 in kernel.shape:
        raise ValueError(f"the conv kernel is empty (shape {kernel.shape})")
    if not is_traced(kernel):
        with jax.ensure_compile_time_eval():
            n_bad = int(jnp.size(kernel) - jnp.sum(jnp.isfinite(kernel)))
        if n_bad:
            raise ValueError(
                f"the conv kernel contains {n_bad} non-finite value(s) (NaN or inf) of {kernel.size}: "
                "the parameters are broken (diverged training or a damaged file)"
            )
    filters = jnp.transpose(kernel, (3, 0, 1, 2))
    return imaging.normalize(filters, axis=None if shared_scale else (1, 2, 3))


def filter_grid(
    model: Optional[Model],
    params=None,
    layer: Optional[str] = None,
    *,
    kernel=None,
    shared_scale: bool = False,
    upscale: Optional[int] = None,
    ncols: Optional[int] = None,
    pad: int = 1,
    pad_value: float = 1.0,
    in_channel: Optional[int] = None,
) -> np.ndarray:
    """All filters of a conv layer tiled into one RGB mosaic (see `first_layer_filters`).

    Args:
      upscale: integer nearest-neighbour magnification of each filter, so that 3x3 filters are
        visible; default: enough to make each filter about 32 px (11x11 -> 2x, 3x3 -> 10x).
      ncols: filters per row (default: as square as possible).
      pad, pad_value: gap between filters (in output pixels) and its value.
      in_channel: for kernels whose input is not RGB (`C_in` not 1 or 3), which input channel to
        show (as grey).

    Returns:
      `[H, W, 3]` float in [0, 1].
    """
    filters = first_layer_filters(model, params, layer, kernel=kernel, shared_scale=shared_scale)
    return tile_filters(filters, upscale=upscale, ncols=ncols, pad=pad, pad_value=pad_value, in_channel=in_channel)


def tile_filters(
    filters,
    *,
    upscale: Optional[int] = None,
    ncols: Optional[int] = None,
    pad: int = 1,
    pad_value: float = 1.0,
    in_channel: Optional[int] = None,
) -> np.ndarray:
    """Filters `[C_out, kh, kw, C_in]` in [0, 1] (from `first_layer_filters`) tiled into one RGB
    mosaic `[H, W, 3]`; the arguments are those of `filter_grid`."""
    f = np.asarray(filters)
    if f.ndim != 4 or 0 in f.shape:
        raise ValueError(f"filters must be a non-empty [C_out, kh, kw, C_in]; got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"filters contain {int(np.sum(~np.isfinite(f)))} non-finite value(s) (NaN or inf)")
    c_in = f.shape[-1]
    if in_channel is not None:
        if not 0 <= in_channel < c_in:
            raise ValueError(f"in_channel must be in [0, {c_in}); got {in_channel}")
        f = np.repeat(f[..., in_channel : in_channel + 1], 3, axis=-1)
    elif c_in == 1:
        f = np.repeat(f, 3, axis=-1)
    elif c_in != 3:
        raise ValueError(f"filters have {c_in} input channels, not an RGB image: choose one with in_channel=")
    if upscale is None:
        upscale = max(1, 32 // max(f.shape[1], f.shape[2]))
    if upscale < 1:
        raise ValueError(f"upscale must be a positive integer; got {upscale}")
    f = np.repeat(np.repeat(f, upscale, axis=1), upscale, axis=2)
    return imaging.tile(f, ncols=ncols, pad=pad, pad_value=pad_value)


# --------------------------------------------------------------------------- activations
def activation_maps(model: Model, params, images, layer: str, *, relu=None, pool=None) -> Array:
    """Every channel's activation map at a spatial layer.

    Args:
      images: `[N, H, W, C]` in [0, 1], `N >= 1` (concrete images are checked: finite, in range).
      layer: a spatial layer (conv, relu, pool, ...).
      relu, pool: passed to `model.apply`.

    Returns:
      `[N, C_layer, h, w]`, raw activations (channel-first, so that `maps[n, c]` is one map).
      Under `jit`, maps that depend on a NaN pixel are NaN.
    """
    images = _check_batch(model, images)
    _require_spatial(model, layer, _layer_shape(model, params, images, layer, relu, pool))
    act = _activation(model, params, images, layer, relu, pool)
    return jnp.transpose(act, (0, 3, 1, 2))


def activation_grid(
    model: Model,
    params,
    images,
    layer: str,
    *,
    channels: Optional[Sequence[int]] = None,
    ncols: Optional[int] = None,
    pad: int = 1,
    pad_value: float = 1.0,
) -> np.ndarray:
    """One mosaic of a layer's activation maps per image, each map min-max scaled on its own.

    Args:
      images: `[N, H, W, C]` in [0, 1] (concrete).
      channels: which channels, in `[0, C_layer)` (default all).

    Returns:
      `[N, Hg, Wg]` float in [0, 1] (grey; colour with `jaxviz.imaging.colorize`).
    """
    images = _check_batch(model, images)
    shape = _layer_shape(model, params, images, layer)
    _require_spatial(model, layer, shape)
    ch = None if channels is None else _channel_indices(channels, shape[-1], layer)
    maps = activation_maps(model, params, images, layer)
    if ch is not None:
        maps = maps[:, ch]
    maps = np.asarray(imaging.normalize(maps, axis=(2, 3)))
    return np.stack([imaging.tile(m, ncols=ncols, pad=pad, pad_value=pad_value) for m in maps])


@functools.partial(jax.jit, static_argnames=("model", "layer", "k"))
def _top_channels(model, params, images, layer, k):
    act = model.apply(params, images, until=layer)[layer]
    flat = act.reshape(act.shape[0], -1, act.shape[-1])
    values, indices = lax.top_k(flat.mean(axis=1), k)
    # NaN must show: however top_k orders NaN, an image with a NaN activation gets NaN values.
    # (Tested on the activations, not the means: XLA on CPU may fuse a ReLU into the mean with a
    # max that drops NaN, so a mean over NaN activations can come out finite.)
    has_nan = jnp.isnan(flat).any(axis=(1, 2))[:, None]
    return jnp.where(has_nan, jnp.nan, values), indices


def top_channels(model: Model, params, images, layer: str, k: int = 8) -> tuple[Array, Array]:
    """The `k` channels of `layer` with the largest mean activation, per image.

    Args:
      images: `[N, H, W, C]` in [0, 1].
      layer: any layer; spatial maps are averaged over positions, vectors used as they are.
      k: `1 <= k <= C_layer`.

    Returns:
      `(indices [N, k] int32, mean activations [N, k])`, largest first; ties go to the lower channel.
      Under `jit`, an image with a NaN pixel gets NaN values (its indices then mean nothing).
    """
    images = _check_batch(model, images)
    n_ch = _layer_shape(model, params, images, layer)[-1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_ch:
        raise ValueError(f"k must be an integer in [1, {n_ch}] (channels of {layer!r}); got {k!r}")
    values, indices = _top_channels(model, params, images, layer, int(k))
    return indices, values


# --------------------------------------------------------------------------- receptive-field crops
def receptive_field_boxes(model: Model, layer: str, ys, xs, *, rf: Optional[ReceptiveField] = None) -> Array:
    """Image boxes seen by units at positions `(ys, xs)` of `layer`.

    Returns:
      `[..., 4]` int32 `(top, left, bottom, right)`, bottom/right exclusive, in image pixels;
      may extend outside the image (the network's padding).
    """
    rf = rf or receptive_field(model, layer)
    return _boxes(jnp.asarray(ys, jnp.int32), jnp.asarray(xs, jnp.int32), rf)


def _boxes(ys, xs, rf: ReceptiveField):
    top = ys * rf.stride[0] - rf.offset[0]
    left = xs * rf.stride[1] - rf.offset[1]
    return jnp.stack([top, left, top + rf.size[0], left + rf.size[1]], axis=-1)


def _gather_crops(images, index, top, left, size, fill):
    """Crops `images[index, top:top+size[0], left:left+size[1]]` with out-of-image pixels `fill`.

    Pixels are gathered by clipped index and masked, so any position works without padding the
    images (which for large receptive fields would cost several image sizes of memory).
    """
    _, h, w, _ = images.shape
    lead = (1,) * top.ndim
    rows = top[..., None] + jnp.arange(size[0]).reshape(lead + (-1,))  # [..., Rh]
    cols = left[..., None] + jnp.arange(size[1]).reshape(lead + (-1,))  # [..., Rw]
    inside = ((rows >= 0) & (rows < h))[..., :, None] & ((cols >= 0) & (cols < w))[..., None, :]
    crops = images[
        index[..., None, None],
        jnp.clip(rows, 0, h - 1)[..., :, None],
        jnp.clip(cols, 0, w - 1)[..., None, :],
    ]  # [P, Rh, Rw, C]
    return jnp.where(inside[..., None], crops, jnp.asarray(fill, images.dtype))


def crop_receptive_field(
    model: Model,
    images,
    layer: str,
    ys,
    xs,
    *,
    image_index=None,
    fill: float = 0.5,
    rf: Optional[ReceptiveField] = None,
) -> Array:
    """Crop the exact receptive field of units `(ys[p], xs[p])` of `layer` from the images.

    Args:
      images: `[N, H, W, C]` in [0, 1].
      ys, xs: `[P]` integer positions in `layer`'s activation map, `0 <= ys < h`, `0 <= xs < w`
        (checked when the map size follows from the layer descriptions).
      image_index: `[P]` image of each crop in `[0, N)`; default `arange(N)` (one position per
        image, `P == N`).
      fill: value of pixels outside the image (the region the network sees as padding).
      rf: receptive field to use instead of `receptive_field(model, layer)` (e.g. for a model
        whose layer geometry is unknown, measured with `empirical_receptive_field`).

    Returns:
      `[P, Rh, Rw, C]` with `(Rh, Rw) = rf.size`; crop `p` is the box `receptive_field_boxes(...)[p]`.
      Concrete out-of-range positions or image indices are a `ValueError`; traced ones give an
      all-NaN crop.
    """
    rf = rf or receptive_field(model, layer)
    images = _check_batch(model, images)
    n = images.shape[0]
    ys, xs = jnp.atleast_1d(jnp.asarray(ys)), jnp.atleast_1d(jnp.asarray(xs))
    if ys.shape != xs.shape or ys.ndim != 1:
        raise ValueError(f"ys and xs must be [P] of equal length; got {ys.shape} and {xs.shape}")
    if image_index is None:
        if ys.shape[0] != n:
            raise ValueError(f"without image_index there is one position per image: {n} images but {ys.shape[0]} positions")
        image_index = jnp.arange(n)
    image_index = jnp.atleast_1d(jnp.asarray(image_index))
    if image_index.shape != ys.shape:
        raise ValueError(f"image_index must be [P] = {ys.shape}; got {image_index.shape}")
    try:
        map_hw = spatial_shape(model, layer, images.shape[1:3])
    except ValueError:  # geometry unknown (e.g. a measured rf): positions cannot be checked
        map_hw = None
    limits = [("image_index", image_index, n, f"the {n} images")]
    if map_hw is not None:
        where = f"{layer!r} is {map_hw[0]}x{map_hw[1]} for {images.shape[1]}x{images.shape[2]} images"
        limits += [("ys", ys, map_hw[0], where), ("xs", xs, map_hw[1], where)]
    for name, v, limit, where in limits:
        if not jnp.issubdtype(v.dtype, jnp.integer):
            raise ValueError(f"{name} must be integers; got dtype {v.dtype}")
        if not is_traced(v):
            a = np.asarray(v)
            if a.size and (a.min() < 0 or a.max() >= limit):
                raise ValueError(f"{name} must be in [0, {limit}) ({where}); got {a.tolist()}")
    return _crop_positions(
        images, image_index.astype(jnp.int32), ys.astype(jnp.int32), xs.astype(jnp.int32), rf=rf, fill=float(fill), map_hw=map_hw
    )


@functools.partial(jax.jit, static_argnames=("rf", "fill", "map_hw"))
def _crop_positions(images, image_index, ys, xs, *, rf, fill, map_hw):
    top = ys * rf.stride[0] - rf.offset[0]
    left = xs * rf.stride[1] - rf.offset[1]
    valid = (image_index >= 0) & (image_index < images.shape[0])
    if map_hw is not None:
        valid &= (ys >= 0) & (ys < map_hw[0]) & (xs >= 0) & (xs < map_hw[1])
    crops = _gather_crops(images, jnp.clip(image_index, 0, images.shape[0] - 1), top, left, rf.size, fill)
    return jnp.where(valid[:, None, None, None], crops, jnp.asarray(jnp.nan, crops.dtype))


# --------------------------------------------------------------------------- maximally activating patches
class TopPatches(NamedTuple):
    """Running top-k of one layer's units over a dataset, per chosen channel.

    Attributes:
      values: `[n_channels, k]` activations, largest first.
      image_index: `[n_channels, k]` int32 index of the image in the stream (0-based over all batches).
      y, x: `[n_channels, k]` int32 position in the layer's activation map.
      patches: `[n_channels, k, Rh, Rw, C]` the receptive field of each unit cut from its image,
        out-of-image pixels set to `fill`.
      boxes: `[n_channels, k, 4]` int32 `(top, left, bottom, right)` of each patch in its image
        (bottom/right exclusive; may extend outside the image).
      channels: `[n_channels]` the channels, in the order of the rows above.
    """

    values: Array
    image_index: Array
    y: Array
    x: Array
    patches: Array
    boxes: Array
    channels: Array


class _PatchesStatic(NamedTuple):
    """Static configuration of one patches step (hashable: a static jit argument)."""

    model: Model
    layer: str
    k: int
    distinct_images: bool
    rf: ReceptiveField
    fill: float
    relu: Optional[Callable]
    pool: Optional[str]


def _patches_step(static: _PatchesStatic, consts, carry, x):
    """Merge one batch's best units into the running top-k (a `loops.scan` step).

    consts: `(params, channels [n])`; carry: `(TopPatches, offset, nan_seen [n])`;
    x: `(images [B, H, W, C], valid [B])`, `valid` False for the padding of the last chunk.
    """
    model, layer, k, distinct_images, rf, fill, relu, pool = static
    params, channels = consts
    state, offset, nan_seen = carry
    images, valid = x
    act = model.apply(params, images, until=layer, relu=relu, pool=pool)[layer]
    act = _take_channels(act, channels)  # [B, h, w, n]; NaN for out-of-range traced channels
    b, h, w, n = act.shape
    # NaN anywhere in a channel (a traced NaN image, NaN parameters, a bad traced channel) makes the
    # channel's whole answer NaN: however top_k ranks NaN, a top-k without it would be wrong.
    nan_seen = nan_seen | jnp.any(jnp.isnan(act) & valid[:, None, None, None], axis=(0, 1, 2))
    act = jnp.where(valid[:, None, None, None], act, -jnp.inf)  # padding never wins
    if distinct_images:
        # Each image's best position per channel; then the best images.
        flat = act.reshape(b, h * w, n)
        pos = jnp.argmax(flat, axis=1)  # first (lowest y, x) maximum
        cand = jnp.max(flat, axis=1).T  # [n, B]
        kk = min(k, b)
        values, img = lax.top_k(cand, kk)  # [n, kk]
        flat_pos = jnp.take_along_axis(pos.T, img, axis=1)
    else:
        # Flattened in (image, y, x) order, so that lax.top_k's lower-index-first tie rule makes the
        # result equal to a brute-force top-k over the whole dataset in that order.
        cand = act.reshape(b * h * w, n).T  # [n, B*h*w]
        kk = min(k, b * h * w)
        values, idx = lax.top_k(cand, kk)
        img, flat_pos = idx // (h * w), idx % (h * w)
    ys, xs = (flat_pos // w).astype(jnp.int32), (flat_pos % w).astype(jnp.int32)
    boxes = _boxes(ys, xs, rf)
    patches = _gather_crops(images, img, boxes[..., 0], boxes[..., 1], rf.size, fill).astype(state.patches.dtype)
    # Running entries first: on ties the earlier image (lower stream index) wins, as in brute force.
    merged = TopPatches(
        values=jnp.concatenate([state.values, values.astype(state.values.dtype)], axis=1),
        image_index=jnp.concatenate([state.image_index, (img + offset).astype(jnp.int32)], axis=1),
        y=jnp.concatenate([state.y, ys], axis=1),
        x=jnp.concatenate([state.x, xs], axis=1),
        patches=jnp.concatenate([state.patches, patches], axis=1),
        boxes=jnp.concatenate([state.boxes, boxes.astype(jnp.int32)], axis=1),
        channels=state.channels,
    )
    best_values, best = lax.top_k(merged.values, k)

    def pick(a):
        return jnp.take_along_axis(a, best.reshape(best.shape + (1,) * (a.ndim - 2)), axis=1)

    state = TopPatches(
        best_values,
        pick(merged.image_index),
        pick(merged.y),
        pick(merged.x),
        pick(merged.patches),
        pick(merged.boxes),
        state.channels,
    )
    return (state, offset + b, nan_seen), None


@jax.jit
def _patches_finish(state: TopPatches, nan_seen):
    """Channels that met a NaN: NaN values and patches, -1 indices and positions."""
    bad = nan_seen[:, None]

    def nan(a):
        return jnp.where(bad.reshape(bad.shape + (1,) * (a.ndim - 2)), jnp.asarray(jnp.nan, a.dtype), a)

    def minus(a):
        return jnp.where(bad.reshape(bad.shape + (1,) * (a.ndim - 2)), -1, a)

    return TopPatches(
        nan(state.values), minus(state.image_index), minus(state.y), minus(state.x),
        nan(state.patches), minus(state.boxes), state.channels,
    )


def max_activating_patches(
    model: Model,
    params,
    batches: Iterable,
    layer: str,
    channels: Union[int, Sequence[int]],
    k: int = 9,
    *,
    distinct_images: bool = False,
    fill: float = 0.5,
    rf: Optional[ReceptiveField] = None,
    relu: Optional[Callable] = None,
    pool: Optional[str] = None,
    batch_size: Optional[int] = None,
    loop: str = "auto",
) -> TopPatches:
    """The `k` units of each chosen channel that respond most over a dataset, with their image patches.

    The dataset is read once; per batch a jitted step computes `layer`, takes the batch's best `k`
    units per channel, cuts their exact receptive fields from the batch's images and merges them
    with the running top-k. Memory: one batch's activations plus `n_channels * 2k` patches.

    Args:
      batches: iterable of `[B, H, W, C]` image batches in [0, 1] (batch sizes may differ; each new
        shape compiles once), or one `[N, H, W, C]` array (split into chunks of `batch_size`).
      layer: a spatial layer with known geometry (or pass `rf`).
      channels: channel index or indices of `layer`, in `[0, C_layer)`.
      k: units kept per channel.
      distinct_images: `False`: the top-k over all (image, y, x), so one image may contribute
        several overlapping, near-identical patches (neighbouring positions of one strong
        response); `True`: each image contributes at most its best position per channel, which
        gives `k` different images - what a figure of "what this channel responds to" wants
        (Zeiler & Fergus show one patch per image).
      fill: pixel value outside the image (where the network's zero padding is), default 0.5 grey.
      rf: receptive field overriding `receptive_field(model, layer)`.
      relu, pool: passed to `model.apply`.
      batch_size: for an array input, images per step (default: all at once); the last chunk is
        padded (padding never enters the result).
      loop: `"auto"`, `"python"` or `"scan"`: how the chunks of an array input are looped over
        (`jaxviz.loops`); the results are the same. An iterable is read by a Python loop.

    Returns:
      `TopPatches`; ties between equal activations go to the earlier (image, y, x). Under `jit`, a
      channel whose activations contain NaN (a NaN pixel, NaN parameters, or a traced channel index
      out of range) gets NaN `values` and `patches` and -1 indices, positions and boxes.

    Raises:
      ValueError: empty dataset or batch, non-finite pixels or pixels outside [0, 1], unknown or
        non-spatial layer, channel out of range, or fewer than `k` candidates.
    """
    k = _check_k(k)
    _check_loop(loop)
    batch_size = _check_batch_size(batch_size)
    rf = rf or receptive_field(model, layer)
    array_input = hasattr(batches, "ndim")
    if array_input:  # one [N, H, W, C] array: split into chunks below
        batches = [batches]
    static = None
    carry = None
    candidates = 0
    for batch in batches:
        batch = _check_batch(model, batch, "each batch")
        shape = _layer_shape(model, params, batch, layer, relu, pool)
        _require_spatial(model, layer, shape)
        per_image = 1 if distinct_images else shape[1] * shape[2]
        if carry is None:
            ch = _channel_indices(channels, shape[-1], layer)
            if array_input and batch.shape[0] * per_image < k:
                raise ValueError(f"k={k} but the dataset has only {batch.shape[0] * per_image} candidate units per channel")
            n = ch.shape[0]
            dtype = jnp.result_type(batch.dtype, jnp.float32)
            state = TopPatches(
                values=jnp.full((n, k), -jnp.inf, dtype),
                image_index=jnp.full((n, k), -1, jnp.int32),
                y=jnp.zeros((n, k), jnp.int32),
                x=jnp.zeros((n, k), jnp.int32),
                patches=jnp.full((n, k, *rf.size, batch.shape[-1]), fill, batch.dtype),
                boxes=jnp.zeros((n, k, 4), jnp.int32),
                channels=jnp.asarray(ch),
            )
            carry = (state, jnp.zeros((), jnp.int32), jnp.zeros((n,), bool))
            static = _PatchesStatic(model, layer, k, bool(distinct_images), rf, float(fill), relu, pool)
            consts = (params, state.channels)
        if array_input:
            xs = _chunks(batch, batch_size)
            carry, _ = _scan(_patches_step, static, consts, carry, xs, loop)
        else:
            carry, _ = loops.jitted(_patches_step)(static, consts, carry, (batch, jnp.ones(batch.shape[0], bool)))
        candidates += batch.shape[0] * per_image
    if carry is None:
        raise ValueError("the dataset is empty: batches yielded no image batch")
    if candidates < k:
        raise ValueError(f"k={k} but the dataset has only {candidates} candidate units per channel")
    state, _, nan_seen = carry
    return _patches_finish(state, nan_seen)


# --------------------------------------------------------------------------- empirical receptive field
class EmpiricalReceptiveField(NamedTuple):
    """Measured support of one unit's input gradient.

    Attributes:
      size: `(h, w)` of the support's bounding box.
      box: `(top, left, bottom, right)` of the bounding box in image pixels, bottom/right exclusive.
      position: `(y, x)` of the unit in the layer's map.
      support: `[H, W]` bool, pixels with a nonzero gradient.
      clipped: whether the box touches the image border (the true field may be larger).
    """

    size: tuple[int, int]
    box: tuple[int, int, int, int]
    position: tuple[int, int]
    support: np.ndarray
    clipped: bool


@functools.partial(jax.jit, static_argnames=("model", "layer", "relu", "pool"))
def _unit_gradient(model, params, image, y, x, channel, *, layer, relu, pool):
    def unit(img):
        act = model.apply(params, img[None], until=layer, relu=relu, pool=pool)[layer]
        return act[0, y, x, channel]

    return jax.grad(unit)(image)


def _identity(x):
    return x


def empirical_receptive_field(
    model: Model,
    params,
    layer: str,
    image_size: Sequence[int],
    *,
    position: Optional[Sequence[int]] = None,
    channel: int = 0,
    linear: bool = True,
    image=None,
    dtype=jnp.float32,
    threshold: float = 0.0,
) -> EmpiricalReceptiveField:
    """Measure which input pixels a unit of `layer` depends on: the support of its input gradient.

    Works for any model, including ones whose layer geometry is unknown, and checks
    `receptive_field` independently of the layer descriptions.

    Args:
      image_size: `(H, W)` of the probe image; large enough that the field fits inside it.
      position: `(y, x)` of the unit in the layer's map; default its centre `(h // 2, w // 2)`.
      channel: the unit's channel.
      linear: replace ReLUs by the identity and max pooling by average pooling (where the model
        allows), which makes the network linear so every pixel in the field gets a nonzero gradient;
        max-pool routing and dead ReLUs would otherwise leave holes and shrink the support.
      image: probe image `[H, W, C]` (default mid grey); irrelevant when `linear` (a linear map's
        gradient does not depend on the input).
      dtype: computation dtype (float32 suffices: products of weights along the deepest paths stay far
        above float32's smallest normal number for the built-in networks).
      threshold: pixels with `max |grad| > threshold * max_all |grad|` count as support (0: any nonzero).

    Returns:
      `EmpiricalReceptiveField`.
    """
    if len(tuple(image_size)) != 2:
        raise ValueError(f"image_size must be (H, W); got {image_size!r}")
    h_img, w_img = (int(s) for s in image_size)
    if image is None:
        image = jnp.full((h_img, w_img, model.in_channels), 0.5, dtype)
    else:
        image = jnp.asarray(image, dtype)
        if image.shape != (h_img, w_img, model.in_channels):
            raise ValueError(f"image must be [{h_img}, {w_img}, {model.in_channels}]; got {image.shape}")
        check_pixel_values(image, "the probe image")
    relu = _identity if (linear and model.swappable_relu) else None
    pool = "avg" if (linear and "avg" in model.pool_modes) else None
    shape = _layer_shape(model, params, image[None], layer, relu, pool)
    _require_spatial(model, layer, shape)
    if position is None:
        position = (shape[1] // 2, shape[2] // 2)
    y, x = (int(p) for p in position)
    if not (0 <= y < shape[1] and 0 <= x < shape[2]):
        raise ValueError(f"position {(y, x)} is outside {layer!r}'s {shape[1]}x{shape[2]} map")
    if not 0 <= channel < shape[3]:
        raise ValueError(f"channel must be in [0, {shape[3]}); got {channel}")
    params = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, params
    )
    grad = np.asarray(_unit_gradient(model, params, image, y, x, channel, layer=layer, relu=relu, pool=pool))
    mag = np.abs(grad).max(axis=-1)
    support = mag > threshold * mag.max() if threshold > 0 else mag > 0
    if not support.any():
        raise ValueError(
            f"the gradient of {layer!r}[{y}, {x}, {channel}] is zero everywhere (a dead unit?): try linear=True "
            "or another channel"
        )
    rows, cols = np.nonzero(support.any(axis=1))[0], np.nonzero(support.any(axis=0))[0]
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    clipped = box[0] == 0 or box[1] == 0 or box[2] == h_img or box[3] == w_img
    return EmpiricalReceptiveField((box[2] - box[0], box[3] - box[1]), box, (y, x), support, bool(clipped))


# --------------------------------------------------------------------------- features and nearest neighbours
def _features_step(static, consts, carry, x):
    """Flattened `[B, D]` features of one chunk (a `loops.map` step); static: `(model, layer)`."""
    model, layer = static
    (params,) = consts
    act = _activation(model, params, x, layer)
    return carry, act.reshape(act.shape[0], -1)


def _features_map_step(static, consts, x):
    return _features_step(static, consts, None, x)[1]


def _feature_layer(model: Model, layer: Optional[str]) -> str:
    layer = layer or model.features
    if layer is None:
        raise ValueError(f"{model.name} has no default feature layer (model.features); pass layer=")
    if layer != PIXELS:
        model.layer(layer)
    return layer


def iter_features(model: Model, params, batches: Iterable, layer: Optional[str] = None):
    """Yield `[B, D]` flattened activations of `layer` per image batch (see `features`), lazily:
    pass it to `nearest_neighbours` as the database to never hold all features at once. Each
    batch is checked (`Model.check_images`) before its forward pass; the step is one cached jitted
    function, compiled once per batch shape."""
    layer = _feature_layer(model, layer)
    if hasattr(batches, "ndim"):  # one [N, H, W, C] array: a single batch
        batches = [batches]
    step = loops.jitted(_features_step)
    for batch in batches:
        batch = _check_batch(model, batch, "each batch")
        yield step((model, layer), (params,), None, batch)[1]


def features(
    model: Model,
    params,
    batches: Iterable,
    layer: Optional[str] = None,
    *,
    batch_size: Optional[int] = None,
    loop: str = "auto",
) -> Array:
    """Flattened activations of `layer` for a dataset, one jitted forward pass per batch.

    Args:
      batches: iterable of `[B, H, W, C]` image batches in [0, 1], or one `[N, H, W, C]` array
        (split into chunks of `batch_size`; default one chunk).
      layer: any layer (default `model.features`, e.g. `fc7`); `PIXELS` (`"pixels"`) gives the
        flattened images (nearest neighbours in pixel space).
      batch_size: images per forward pass for an array input (the last chunk is padded).
      loop: `"auto"`, `"python"` or `"scan"` over the chunks of an array input (`jaxviz.loops`);
        same results. An iterable is read by a Python loop.

    Returns:
      `[M, D]`, `D` the layer's size (spatial maps flattened in (h, w, C) order). Under `jit`, the
      features of an image with a NaN pixel are NaN where they depend on it. For datasets whose
      features do not fit in memory, pass `iter_features(...)` to `nearest_neighbours` instead.
    """
    _check_loop(loop)
    batch_size = _check_batch_size(batch_size)
    if hasattr(batches, "ndim"):
        layer = _feature_layer(model, layer)
        images = _check_batch(model, batches)
        n = images.shape[0]
        chunks, _ = _chunks(images, batch_size)
        out = _map(_features_map_step, (model, layer), (params,), chunks, loop)
        return out.reshape(-1, out.shape[-1])[:n]
    chunks = list(iter_features(model, params, batches, layer))
    if not chunks:
        raise ValueError("the dataset is empty: batches yielded no image batch")
    return jnp.concatenate(chunks, axis=0)


def _check_vectors(x, what: str, offset: int = 0):
    """Concrete `[R, D]` vectors must be finite (NaN or inf rows named, counted from `offset`);
    traced ones pass."""
    if is_traced(x) or x.size == 0:
        return
    with jax.ensure_compile_time_eval():  # eager even inside a user's jit (x is concrete)
        finite = jnp.all(jnp.isfinite(x), axis=1)
        ok = bool(jnp.all(finite))
    if not ok:
        rows = np.flatnonzero(~np.asarray(finite)) + offset
        raise ValueError(
            f"{what} contain non-finite values (NaN or inf) in {rows.size} row(s), e.g. row(s) "
            f"{rows[:5].tolist()}: distances to them mean nothing. Check the images or parameters they came from."
        )


def _exact_distance(q, rows, metric):
    """Distances of one query `[D]` to candidate rows `[K, D]`, elementwise (no cancellation)."""
    if metric == "l2":
        return jnp.sqrt(jnp.sum(jnp.square(q[None, :] - rows), axis=1))
    return 1.0 - jnp.sum(q[None, :] * rows, axis=1)


def _exact_block(metric, consts, x):
    """Exact distances of a block of queries `[b, D]` to their candidates `[b, n_cand]` (a
    `loops.map` step; bounds memory to `b * n_cand * D` numbers)."""
    (c,) = consts
    q, cand = x
    return jax.vmap(lambda a, i: _exact_distance(a, c[i], metric))(q, cand)


class _NNStatic(NamedTuple):
    k: int
    metric: str
    query_block: int


def _normalise(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _nn_step(static: _NNStatic, consts, carry, x):
    """Merge one database chunk into the running `(distances, indices)` top-k (a `loops.scan`
    step). consts: `(queries [Q, D],)`; carry: `(best_d [Q, k], best_i [Q, k], db_bad)`;
    x: `(chunk [B, D], offset, n_valid)` (rows from `n_valid` on are padding)."""
    k, metric, query_block = static
    (queries,) = consts
    best_d, best_i, db_bad = carry
    chunk, offset, n_valid = x
    q = queries.astype(jnp.result_type(queries.dtype, chunk.dtype))
    c = chunk.astype(q.dtype)
    valid = jnp.arange(c.shape[0]) < n_valid
    db_bad = db_bad | jnp.any(~jnp.isfinite(c) & valid[:, None])
    if metric == "cosine":  # cosine distance 1 - cos; a zero vector is at distance 1 from everything
        q, c = _normalise(q), _normalise(c)
    # 1. Candidates by one matrix product: |q - c|^2 = |q|^2 + |c|^2 - 2 q.c (or 1 - q.c). This
    # suffers cancellation (float32 noise ~1e-7 |q|^2, so a distance of 0 can come out as 1e-3 |q|)
    # and its rounding depends on a row's position in the product, so identical rows need not tie.
    dots = q @ c.T
    if metric == "l2":
        approx = (q * q).sum(axis=1)[:, None] + (c * c).sum(axis=1)[None, :] - 2.0 * dots
    else:
        approx = 1.0 - dots
    approx = jnp.where(valid[None, :], approx, jnp.inf)
    n_cand = min(c.shape[0], k + max(k, 16))  # a margin for candidates reordered by rounding
    _, cand = lax.top_k(-approx, n_cand)  # [Q, n_cand]
    # 2. Exact distances of the candidates, elementwise, in blocks of queries (memory
    # query_block * n_cand * D), then sorted by (distance, index): ties go to the lower index.
    n_q = q.shape[0]
    n_blocks = -(-n_q // query_block)
    pad = n_blocks * query_block - n_q
    qb = jnp.pad(q, ((0, pad), (0, 0))).reshape(n_blocks, query_block, -1)
    cb = jnp.pad(cand, ((0, pad), (0, 0))).reshape(n_blocks, query_block, n_cand)
    exact = loops.map(_exact_block, metric, (c,), (qb, cb)).reshape(n_blocks * query_block, n_cand)[:n_q]
    exact = jnp.where(valid[cand], exact, jnp.inf)
    all_d = jnp.concatenate([best_d, exact.astype(best_d.dtype)], axis=1)
    all_i = jnp.concatenate([best_i, (cand + offset).astype(jnp.int32)], axis=1)
    all_d, all_i = lax.sort((all_d, all_i), dimension=1, num_keys=2)
    return (all_d[:, :k], all_i[:, :k], db_bad), None


@jax.jit
def _nn_finish(queries, best_d, best_i, db_bad):
    """NaN distances and index -1 for non-finite queries, and for all queries if a database row
    was non-finite (the true top-k is then unknown)."""
    bad = ~jnp.all(jnp.isfinite(queries), axis=1, keepdims=True) | db_bad
    return jnp.where(bad, -1, best_i), jnp.where(bad, jnp.asarray(jnp.nan, best_d.dtype), best_d)


def nearest_neighbours(
    queries,
    database,
    k: int = 5,
    metric: str = "l2",
    *,
    chunk_size: int = 1024,
    query_block: int = 64,
    loop: str = "auto",
) -> tuple[Array, Array]:
    """The `k` nearest database rows of each query, by a running top-k over database chunks.

    Args:
      queries: `[Q, D]`, `Q, D >= 1` (e.g. `features(...)` of query images, or flattened pixels).
      database: `[N, D]` array (processed `chunk_size` rows at a time, padded to one compiled shape),
        or an iterable of `[B, D]` chunks (e.g. `iter_features(...)`), read once.
      k: neighbours per query, `1 <= k <= N`.
      metric: `"l2"` (Euclidean distance) or `"cosine"` (`1 - cosine similarity`).
      chunk_size: rows per step for an array database.
      query_block: queries whose candidates are re-measured at once (memory
        `query_block * (2k + 16) * D` numbers).
      loop: `"auto"`, `"python"` or `"scan"` over the chunks of an array database
        (`jaxviz.loops`); same results. An iterable is read by a Python loop over the same step.

    Candidates are found with one matrix product per chunk, then their distances recomputed
    elementwise (exact up to float rounding, so duplicates tie exactly and a point's distance to
    itself is 0).

    Returns:
      `(indices [Q, k] int32, distances [Q, k])`, nearest first; indices count database rows from 0
      across chunks; among equal distances the lower index comes first.

    Non-finite values: concrete queries or database rows with NaN or inf are a `ValueError` naming
    the rows. Traced ones (under `jit`/`vmap`) give NaN distances and index -1 for each non-finite
    query, and for every query when any database row is non-finite (faiss's "no result" index; it is
    not a row, but `database[-1]`, and even `jnp.take(..., mode="fill")`, would silently read the
    last one: check `isnan(distances)` before using the indices).
    """
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric must be 'l2' or 'cosine'; got {metric!r}")
    k = _check_k(k)
    chunk_size = _check_k(chunk_size, "chunk_size")
    query_block = _check_k(query_block, "query_block")
    _check_loop(loop)
    queries = jnp.asarray(queries)
    if queries.ndim != 2:
        raise ValueError(f"queries must be [Q, D]; got shape {queries.shape}")
    if 0 in queries.shape:
        raise ValueError(f"queries must hold at least one vector of at least one number; got shape {queries.shape}")
    if not jnp.issubdtype(queries.dtype, jnp.floating):
        queries = queries.astype(jnp.float32)
    _check_vectors(queries, "queries")
    n_q, dim = queries.shape
    dtype = jnp.result_type(queries.dtype, jnp.float32)
    carry = (jnp.full((n_q, k), jnp.inf, dtype), jnp.full((n_q, k), -1, jnp.int32), jnp.zeros((), bool))
    static = _NNStatic(k, metric, min(query_block, n_q))

    if hasattr(database, "ndim"):
        db = jnp.asarray(database)
        if db.ndim != 2 or db.shape[1] != dim:
            raise ValueError(
                f"database must be [N, {dim}] (the queries' D) or an iterable of [B, {dim}] chunks; got shape {db.shape}"
            )
        if db.shape[0] == 0:
            raise ValueError("the database is empty")
        if db.shape[0] < k:
            raise ValueError(f"k={k} neighbours requested but the database has only {db.shape[0]} rows")
        _check_vectors(db, "database rows")
        chunks, valid = _chunks(db, chunk_size)
        size = chunks.shape[1]
        xs = (chunks, jnp.arange(chunks.shape[0], dtype=jnp.int32) * size, valid.sum(axis=1, dtype=jnp.int32))
        carry, _ = _scan(_nn_step, static, (queries,), carry, xs, loop)
        seen = db.shape[0]
    else:
        step = loops.jitted(_nn_step)
        seen = 0
        for chunk in database:
            chunk = jnp.asarray(chunk)
            if chunk.ndim != 2 or chunk.shape[1] != dim:
                raise ValueError(f"database chunks must be [B, {dim}] (the queries' D); got shape {chunk.shape}")
            if chunk.shape[0] == 0:
                continue
            _check_vectors(chunk, "database rows", offset=seen)
            x = (chunk, jnp.asarray(seen, jnp.int32), jnp.asarray(chunk.shape[0], jnp.int32))
            carry, _ = step(static, (queries,), carry, x)
            seen += chunk.shape[0]
        if seen == 0:
            raise ValueError("the database is empty")
        if seen < k:
            raise ValueError(f"k={k} neighbours requested but the database has only {seen} rows")
    best_d, best_i, db_bad = carry
    return _nn_finish(queries, best_d, best_i, db_bad)


__all__ = [
    "PIXELS",
    "EmpiricalReceptiveField",
    "TopPatches",
    "activation_grid",
    "activation_maps",
    "crop_receptive_field",
    "empirical_receptive_field",
    "features",
    "filter_grid",
    "first_conv_layer",
    "first_layer_filters",
    "iter_features",
    "max_activating_patches",
    "nearest_neighbours",
    "receptive_field_boxes",
    "tile_filters",
    "top_channels",
]
