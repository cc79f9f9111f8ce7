"""Image utilities: loading, saving, resizing, normalising, tiling into grids, heat-map colouring.

Images are float NHWC (or HWC) in [0, 1]. Functions named `*_np` work on numpy arrays for I/O;
the rest are jit-able JAX functions. No matplotlib here (see `jaxviz.plot`).
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.io import atomic_write

Array = jax.Array


def load_image(path, size: Optional[Sequence[int]] = None) -> np.ndarray:
    """An image file as float32 `[H, W, 3]` RGB in [0, 1]; `size=(H, W)` resizes (bilinear, antialiased)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None:
            im = im.resize((int(size[1]), int(size[0])), Image.BILINEAR)
        return np.asarray(im, np.float32) / 255.0


def to_uint8(image) -> np.ndarray:
    """Float image(s) in [0, 1] -> uint8 (clipped)."""
    return (np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(path, image) -> str:
    """Save `[H, W, 3]`, `[H, W, 1]` or `[H, W]` float in [0, 1] as PNG/JPEG (by extension), atomically."""
    from PIL import Image

    path = os.fspath(path)
    arr = to_uint8(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format from the extension of {path!r} (use .png, .jpg ...)")
    with atomic_write(path) as f:  # a failed write leaves no partial image
        Image.fromarray(arr).save(f, format=fmt)
    return path


def resize(images: Array, size: Sequence[int], method: str = "bilinear", antialias: bool = True) -> Array:
    """Resize `[N, H, W, C]` (or `[H, W, C]`) to spatial `size = (h, w)` with `jax.image.resize`."""
    size = tuple(int(s) for s in size)
    if images.ndim == 3:
        shape = (*size, images.shape[-1])
    elif images.ndim == 4:
        shape = (images.shape[0], *size, images.shape[-1])
    else:
        raise ValueError(f"resize expects [N, H, W, C] or [H, W, C]; got shape {images.shape}")
    return jax.image.resize(images, shape, method=method, antialias=antialias)


def normalize(x: Array, axis=None, eps: float = 1e-12) -> Array:
    """Min-max scale to [0, 1] over `axis` (`None`: the whole array; e.g. `(1, 2, 3)` per image).

    A constant slice maps to 0.
    """
    lo = jnp.min(x, axis=axis, keepdims=True)
    hi = jnp.max(x, axis=axis, keepdims=True)
    return (x - lo) / jnp.maximum(hi - lo, eps)


def grid_shape(n: int, ncols: Optional[int] = None) -> tuple[int, int]:
    """`(rows, cols)` for `n` tiles: `ncols` given, else as square as possible."""
    if n <= 0:
        raise ValueError("cannot make a grid of zero images")
    cols = ncols or math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def tile(images, ncols: Optional[int] = None, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile `[N, h, w, C]` (or `[N, h, w]`) into one `[rows * (h + pad) - pad, ..., C]` mosaic.

    Tiles are laid out row by row; empty cells are `pad_value`.
    """
    images = np.asarray(images)
    squeeze = images.ndim == 3
    if squeeze:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"tile expects [N, h, w, C] or [N, h, w]; got shape {images.shape}")
    n, h, w, c = images.shape
    rows, cols = grid_shape(n, ncols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), pad_value, images.dtype)
    for k in range(n):
        r, q = divmod(k, cols)
        out[r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = images[k]
    return out[..., 0] if squeeze else out


# A perceptually ordered colour map (black - purple - orange - yellow, like matplotlib's "inferno"),
# as 10 anchors interpolated linearly, so that heat maps need no matplotlib.
_HEAT_ANCHORS = np.array(
    [
        [0.001, 0.000, 0.014],
        [0.087, 0.045, 0.224],
        [0.258, 0.039, 0.406],
        [0.416, 0.090, 0.433],
        [0.578, 0.148, 0.404],
        [0.735, 0.216, 0.330],
        [0.865, 0.317, 0.226],
        [0.954, 0.469, 0.098],
        [0.988, 0.645, 0.040],
        [0.988, 0.998, 0.645],
    ]
)


def colorize(heat: Array) -> Array:
    """Map values in [0, 1] (`[..., ]`) to RGB `[..., 3]` with an inferno-like colour map."""
    heat = jnp.clip(heat, 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    lo = jnp.floor(heat).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, len(_HEAT_ANCHORS) - 1)
    t = (heat - lo)[..., None]
    anchors = jnp.asarray(_HEAT_ANCHORS, jnp.float32)
    return anchors[lo] * (1 - t) + anchors[hi] * t


def overlay(image: Array, heat: Array, alpha: float = 0.5) -> Array:
    """Blend a heat map `[H', W']` in [0, 1] (resized bilinearly to the image) over `image` `[H, W, 3]`."""
    if heat.shape != image.shape[:2]:
        heat = jax.image.resize(heat, image.shape[:2], method="bilinear")
    return (1 - alpha) * image + alpha * colorize(heat)


def attribution_to_heat(attr: Array, sign: str = "absolute", clip_percentile: float = 98.0) -> Array:
    """Turn attributions into a displayable heat map in [0, 1], per image.

    Args:
      attr: `[N, H, W, C]` (reduced over channels by summing) or `[N, H, W]`.
      sign: `"absolute"` (|a|), `"positive"` (max(a, 0)) or `"negative"` (max(-a, 0)).
      clip_percentile: values above this per-image percentile saturate (captum clips the top 2%), so
        that a few extreme pixels do not wash out the map; 100 disables clipping.

    Returns:
      `[N, H, W]` in [0, 1].
    """
    if attr.ndim == 4:
        attr = attr.sum(axis=-1)
    if attr.ndim != 3:
        raise ValueError(f"attributions must be [N, H, W, C] or [N, H, W]; got shape {attr.shape}")
    if sign == "absolute":
        attr = jnp.abs(attr)
    elif sign == "positive":
        attr = jnp.maximum(attr, 0)
    elif sign == "negative":
        attr = jnp.maximum(-attr, 0)
    else:
        raise ValueError(f"sign must be 'absolute', 'positive' or 'negative'; got {sign!r}")
    flat = attr.reshape(attr.shape[0], -1)
    top = jnp.percentile(flat, clip_percentile, axis=1).reshape(-1, 1, 1)
    return jnp.clip(attr / jnp.maximum(top, 1e-12), 0.0, 1.0)


def signed_to_unit(x: Array, axis=None, clip_percentile: float = 99.0) -> Array:
    """Show a signed map in [0, 1] with 0 at 0.5 (mid-grey), symmetric about it.

    `x / (2 s) + 0.5`, clipped, where `s` is the `clip_percentile` percentile of `|x|` over `axis`
    (`None`: the whole array; `(1, 2)` per map of `[N, H, W]`). So 0 and 1 stand for `-s` and `+s`
    and the sign of every value is kept, unlike `gradient_image`, which centres on the mean.
    """
    x = jnp.asarray(x)
    s = jnp.percentile(jnp.abs(x), clip_percentile, axis=axis, keepdims=True)
    return jnp.clip(x / (2.0 * jnp.maximum(s, 1e-12)) + 0.5, 0.0, 1.0)


def gradient_image(grad: Array, scale: float = 0.15) -> Array:
    """Show a signed image-space gradient `[..., H, W, 3]` as an image in [0, 1] (per image).

    Centred at grey 0.5 and scaled by `scale / std`, as guided-backprop pictures are usually shown.
    """
    axes = tuple(range(grad.ndim - 3, grad.ndim))
    g = grad - grad.mean(axis=axes, keepdims=True)
    g = g / jnp.maximum(g.std(axis=axes, keepdims=True), 1e-12)
    return jnp.clip(0.5 + scale * g, 0.0, 1.0)
