"""Stochastic image transforms `(key, images) -> images` for transformation robustness.

Every transform is a small frozen (hashable) dataclass called as `t(key, images)` on images
`[B, H, W, C]` (any float dtype, kept); the same key gives the same output, and the output shape
depends only on the input shape (static, as JAX needs). One random draw per call is shared by the
whole batch, as in lucid (`tf.random_crop` over the batch): the optimisation engine calls the
transforms once per experiment with that experiment's own key, so experiments get independent
draws and a batch of experiments equals the same experiments run one by one.

Peers (SYNTHESIS.md section 1.3): lucid `optvis/transform.py`, lucent `optvis/transform.py`.
`standard_transforms()` has their numbers: pad 12 (constant 0.5), jitter 8, scale 0.90..1.10 in
steps of 0.02, rotate -10..10 degrees (0 six times as likely), jitter 4.

Deviations, all forced by static shapes or chosen for exactness, and documented per class:

  * `Jitter(d)` (`mode="crop"`) is lucid's random crop to `(H - d, W - d)` (offsets 0..d
    inclusive); lucent's translation is `Jitter(d, mode="translate")`; DeepDream's circular roll is
    `Jitter(d, mode="roll")`.
  * `RandomScale` keeps the image size (lucid's output size varies with the draw; lucent pads back
    up when shrinking but not down when growing): the image is zoomed about its centre, bilinear,
    and out-of-range pixels get `fill` (0, lucent's zero padding). Content zoomed beyond the border
    is cut off.
  * `RandomRotate` rotates about `((H - 1) / 2, (W - 1) / 2)` (kornia's centre, lucent), bilinear,
    zero fill, with radians computed with pi (lucid converts degrees with 3.14).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Transform = Callable[[Array, Array], Array]


def _check(images) -> Array:
    if getattr(images, "ndim", None) != 4:
        raise ValueError(f"transforms expect images [B, H, W, C]; got shape {getattr(images, 'shape', None)}")
    return images


def _tuple(values, what) -> tuple:
    values = tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))
    if not values:
        raise ValueError(f"{what} needs at least one value")
    return values


@dataclasses.dataclass(frozen=True)
class Pad:
    """Pad `width` pixels on every side: `[B, H, W, C] -> [B, H + 2w, W + 2w, C]`.

    `mode`: `"constant"` (with `value`; lucid/lucent standard transforms: 0.5), `"reflect"` (lucid's
    and lucent's default `pad` mode; numpy "reflect", edge not repeated) or `"edge"`.
    """

    width: int
    mode: str = "constant"
    value: float = 0.5

    def __post_init__(self):
        if int(self.width) < 0:
            raise ValueError(f"pad width must be >= 0; got {self.width}")
        if self.mode not in ("constant", "reflect", "edge"):
            raise ValueError(f"pad mode must be 'constant', 'reflect' or 'edge'; got {self.mode!r}")

    def __call__(self, key: Array, images: Array) -> Array:
        del key
        images = _check(images)
        w = int(self.width)
        pads = ((0, 0), (w, w), (w, w), (0, 0))
        if self.mode == "constant":
            return jnp.pad(images, pads, mode="constant", constant_values=jnp.asarray(self.value, images.dtype))
        return jnp.pad(images, pads, mode=self.mode)


@dataclasses.dataclass(frozen=True)
class Jitter:
    """Random translation by up to `d` pixels.

    Modes:
      * `"crop"` (lucid `jitter(d)`): a random `(H - d) x (W - d)` crop, top-left offset uniform in
        `0..d` for each axis: `[B, H, W, C] -> [B, H - d, W - d, C]`;
      * `"roll"` (google/deepdream `make_step`): circular shift by `dy, dx` uniform in `-d..d`,
        size kept (differentiable, so the gradient is rolled back as DeepDream does by hand);
      * `"translate"` (lucent `jitter(d)`): shift by `dy, dx` uniform in `0..d-1` (lucent's
        `np.random.choice(d)`), zero fill, size kept.
    """

    d: int
    mode: str = "crop"

    def __post_init__(self):
        if int(self.d) < 0:
            raise ValueError(f"jitter must be >= 0 pixels; got {self.d}")
        if self.mode not in ("crop", "roll", "translate"):
            raise ValueError(f"jitter mode must be 'crop', 'roll' or 'translate'; got {self.mode!r}")

    def __call__(self, key: Array, images: Array) -> Array:
        images = _check(images)
        d = int(self.d)
        b, h, w, c = images.shape
        if self.mode == "crop":
            if d >= min(h, w):
                raise ValueError(f"jitter crop of {d} pixels needs images larger than {d}; got {h}x{w}")
            oy, ox = jax.random.randint(key, (2,), 0, d + 1)
            return jax.lax.dynamic_slice(images, (0, oy, ox, 0), (b, h - d, w - d, c))
        if self.mode == "roll":
            dy, dx = jax.random.randint(key, (2,), -d, d + 1)
            return jnp.roll(images, (dy, dx), axis=(1, 2))
        if d == 0:
            return images
        dy, dx = jax.random.randint(key, (2,), 0, d)
        padded = jnp.pad(images, ((0, 0), (d, d), (d, d), (0, 0)))
        return jax.lax.dynamic_slice(padded, (0, d - dy, d - dx, 0), (b, h, w, c))


def _bilinear_sample(images: Array, ys: Array, xs: Array, fill: float) -> Array:
    """Bilinear interpolation of `images [B, H, W, C]` at source coordinates `ys, xs [H', W']`
    (pixel centres at integers); points outside the image take `fill`."""
    _, h, w, _ = images.shape
    y0 = jnp.floor(ys)
    x0 = jnp.floor(xs)
    wy = (ys - y0).astype(images.dtype)[None, :, :, None]
    wx = (xs - x0).astype(images.dtype)[None, :, :, None]
    y0 = y0.astype(jnp.int32)
    x0 = x0.astype(jnp.int32)
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=jnp.asarray(fill, images.dtype))

    def at(yy, xx):
        # Indices into the padded image; anything beyond one pixel outside reads the fill border.
        yy = jnp.clip(yy + 1, 0, h + 1)
        xx = jnp.clip(xx + 1, 0, w + 1)
        return padded[:, yy, xx, :]

    top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
    bottom = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy


def affine_sample(images: Array, matrix: Array, *, fill: float = 0.0) -> Array:
    """Warp `images [B, H, W, C]` with the 2x2 `matrix` about the image centre, same size.

    Output pixel `p` (row, column), centre `c = ((H - 1) / 2, (W - 1) / 2)`, reads the input at
    `c + matrix @ (p - c)` with bilinear interpolation; outside the image: `fill`. `matrix` may be
    traced (the output shape is static).
    """
    images = _check(images)
    _, h, w, _ = images.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    gy, gx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
    m = jnp.asarray(matrix, jnp.float32)
    ys = cy + m[0, 0] * gy + m[0, 1] * gx
    xs = cx + m[1, 0] * gy + m[1, 1] * gx
    return _bilinear_sample(images, ys, xs, fill)


@dataclasses.dataclass(frozen=True)
class RandomScale:
    """Zoom by a factor drawn uniformly from `scales`, about the centre, size kept.

    Output pixel `p` reads the input at `c + (p - c) / s` (bilinear): `s > 1` enlarges the content
    (the border is cut off), `s < 1` shrinks it and fills the margin with `fill` (0: lucent's zero
    padding). lucid resizes to `floor(s * size)` instead (the output size varies with the draw,
    impossible with static shapes); the content scale is the same.
    """

    scales: Sequence[float]
    fill: float = 0.0

    def __post_init__(self):
        scales = _tuple(self.scales, "RandomScale")
        if min(scales) <= 0:
            raise ValueError(f"scales must be positive; got {scales}")
        object.__setattr__(self, "scales", scales)

    def __call__(self, key: Array, images: Array) -> Array:
        s = jax.random.choice(key, jnp.asarray(self.scales, jnp.float32))
        return affine_sample(images, jnp.eye(2, dtype=jnp.float32) / s, fill=self.fill)


@dataclasses.dataclass(frozen=True)
class RandomRotate:
    """Rotate by an angle drawn uniformly from `degrees` (a list: repeat a value to weight it),
    about `((H - 1) / 2, (W - 1) / 2)`, bilinear, `fill` (0, kornia's zeros) outside, size kept.
    Positive angles turn the content counter-clockwise on screen (kornia's convention)."""

    degrees: Sequence[float]
    fill: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "degrees", _tuple(self.degrees, "RandomRotate"))

    def __call__(self, key: Array, images: Array) -> Array:
        angle = jax.random.choice(key, jnp.asarray(self.degrees, jnp.float32)) * (math.pi / 180.0)
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        # Inverse map (output -> input) of a counter-clockwise rotation on screen, in (row, column)
        # coordinates with rows pointing down: output (r, c) reads input (cos r + sin c, -sin r + cos c)
        # about the centre (90 degrees = np.rot90).
        matrix = jnp.stack([jnp.stack([cos, sin]), jnp.stack([-sin, cos])])
        return affine_sample(images, matrix, fill=self.fill)


@dataclasses.dataclass(frozen=True)
class Compose:
    """Apply `transforms` in order; transform `i` gets `jax.random.fold_in(key, i)`."""

    transforms: tuple

    def __init__(self, *transforms):
        if len(transforms) == 1 and isinstance(transforms[0], (list, tuple)):
            transforms = tuple(transforms[0])
        object.__setattr__(self, "transforms", tuple(transforms))

    def __call__(self, key: Array, images: Array) -> Array:
        for i, t in enumerate(self.transforms):
            images = t(jax.random.fold_in(key, i), images)
        return images


def compose(*transforms) -> Compose:
    """`Compose(*transforms)`."""
    return Compose(*transforms)


#: lucid/lucent `standard_transforms` scales: 1 + (i - 5) / 50 for i in 0..10 (0.90 ... 1.10).
STANDARD_SCALES = tuple(1 + (i - 5) / 50 for i in range(11))
#: lucid/lucent `standard_transforms` angles: -10..10 degrees plus five more zeros (26 entries).
STANDARD_DEGREES = tuple(float(a) for a in (*range(-10, 11), 0, 0, 0, 0, 0))


def standard_transforms() -> Compose:
    """lucid/lucent's `standard_transforms` (numbers as theirs; deviations: module docstring).

    `[B, H, W, C] -> [B, H + 12, W + 12, C]`: pad 12 (constant 0.5) -> jitter 8 (crop) ->
    random scale 0.90..1.10 (size kept) -> random rotation -10..10 degrees -> jitter 4 (crop).
    """
    return Compose(
        Pad(12, mode="constant", value=0.5),
        Jitter(8),
        RandomScale(STANDARD_SCALES),
        RandomRotate(STANDARD_DEGREES),
        Jitter(4),
    )


def output_shape(transform: Transform, shape) -> tuple:
    """The output shape of `transform` for input `shape` `[B, H, W, C]` (no computation)."""
    out = jax.eval_shape(transform, jax.random.key(0), jax.ShapeDtypeStruct(tuple(shape), jnp.float32))
    return tuple(out.shape)


__all__ = [
    "Compose",
    "Jitter",
    "Pad",
    "RandomRotate",
    "RandomScale",
    "STANDARD_DEGREES",
    "STANDARD_SCALES",
    "affine_sample",
    "compose",
    "output_shape",
    "standard_transforms",
]
