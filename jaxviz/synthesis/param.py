"""Image parameterisations: what the optimiser changes, and how it becomes an image in [0, 1].

A parameterisation is a small frozen (hashable) dataclass with

  * `init(key, batch) -> raw`: a random start, `raw` a float32 array `[batch, *raw_shape]`;
  * `to_images(raw, consts=None) -> [batch, H, W, C]` in [0, 1] (differentiable);
  * `from_images(images) -> raw` with `to_images(from_images(images)) == images` (up to float
    rounding; for the sigmoid squash, up to clipping the images to `[eps, 1 - eps]`): the start of
    feature inversion, DeepDream, fooling images and multifaceted visualisation.

Being hashable and free of arrays, a parameterisation is part of the engine's static configuration
(`jaxviz.synthesis.optimize(..., param=)`): equal parameterisations share one compilation. The
`consts` argument of `to_images` is the engine's `consts` pytree; the built-in parameterisations
ignore it, a learned one (a generator prior: `images = G(consts["generator"], code)`) reads its
weights from it instead of closing over them.

Peers (SYNTHESIS.md sections 1.1-1.2):

  * `Pixels`: lucid/lucent `pixel_image` (`randn * sd`, sd 0.01), squashed by a sigmoid (lucid's
    `to_valid_rgb` default) or used directly and clipped (Simonyan, Yosinski, DeepDream, attacks);
  * `FFT`: lucid/lucent `fft_image`: a real-FFT spectrum scaled by `1 / max(|f|, 1 / max(H, W)) **
    decay_power`, inverse real FFT with `norm="ortho"`, divided by lucent's constant 4;
  * colour decorrelation (`decorrelate=True`, both): `rgb = M @ t` per pixel with lucid's
    `color_correlation_svd_sqrt` divided by its largest column norm (`COLOR_CORRELATION`), then the
    squash.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

#: lucid's `color_correlation_svd_sqrt` (lucid `optvis/param/color.py`, lucent the same), rows = RGB.
COLOR_CORRELATION_SVD_SQRT = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float64
)
#: The matrix lucid and lucent apply: `COLOR_CORRELATION_SVD_SQRT / max_j ||column_j||_2`
#: (0.461952), i.e. [[0.562829, 0.194825, 0.043295], [0.584476, 0, -0.108236],
#: [0.584476, -0.194825, 0.064942]].
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))
#: lucid's mean colour, added in its non-sigmoid decorrelated path (`to_valid_rgb(sigmoid=False)`).
COLOR_MEAN = np.array([0.48, 0.46, 0.41], dtype=np.float64)

SQUASHES = ("sigmoid", "clip", "none")


def _check_shape(shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image shape must be (H, W, C) with positive sizes; got {shape}")
    return shape


def _check_batch(batch) -> int:
    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1; got {batch}")
    return int(batch)


def _lead(a: Array, ndim: int) -> Array:
    """`a` with leading unit axes up to `ndim` (explicit broadcasting: rank promotion may be an error)."""
    return a.reshape((1,) * (ndim - a.ndim) + a.shape)


def _decorrelate(t: Array) -> Array:
    """`rgb = M @ t` per pixel (`t: [..., 3]`)."""
    m = jnp.asarray(COLOR_CORRELATION, t.dtype)
    return jnp.einsum("...j,ij->...i", t, m)


def _correlate_inverse(rgb: Array) -> Array:
    m_inv = jnp.asarray(np.linalg.inv(COLOR_CORRELATION), rgb.dtype)
    return jnp.einsum("...j,ij->...i", rgb, m_inv)


class _ColourSquash:
    """Shared colour handling (fields `squash`, `decorrelate`, `eps` declared by the subclasses):
    decorrelation, then squashing to [0, 1]."""

    def _check(self, channels: int):
        if self.squash not in SQUASHES:
            raise ValueError(f"squash must be one of {SQUASHES}; got {self.squash!r}")
        if self.decorrelate and channels != 3:
            raise ValueError(f"decorrelate=True needs 3 colour channels (lucid's RGB matrix); got {channels}")

    def _valid(self, t: Array) -> Array:
        """Pre-image `t: [..., C]` (after the spatial part) -> image in [0, 1]."""
        if self.decorrelate:
            t = _decorrelate(t)
            if self.squash != "sigmoid":
                t = t + _lead(jnp.asarray(COLOR_MEAN, t.dtype), t.ndim)
        if self.squash == "sigmoid":
            return jax.nn.sigmoid(t)
        if self.squash == "clip":
            return jnp.clip(t, 0.0, 1.0)
        return t

    def _invalid(self, images: Array) -> Array:
        """Inverse of `_valid` (images clipped into the squash's open range first)."""
        images = jnp.asarray(images)
        if self.squash == "sigmoid":
            x = jnp.clip(images, self.eps, 1.0 - self.eps)
            t = jnp.log(x) - jnp.log1p(-x)
        elif self.squash == "clip":
            t = jnp.clip(images, 0.0, 1.0)
        else:
            t = images
        if self.decorrelate:
            if self.squash != "sigmoid":
                t = t - _lead(jnp.asarray(COLOR_MEAN, t.dtype), t.ndim)
            t = _correlate_inverse(t)
        return t


def _check_images(images, shape, what) -> Array:
    images = jnp.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"{what} expects images [B, {shape[0]}, {shape[1]}, {shape[2]}]; got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"{what} expects floating-point images in [0, 1]; got dtype {images.dtype}")
    return images


@dataclasses.dataclass(frozen=True)
class Pixels(_ColourSquash):
    """Raw pixels: `raw [B, H, W, C]`.

    Attributes:
      shape: `(H, W, C)` of the images (any sizes, odd and non-square included).
      squash: `"sigmoid"` (lucid's default `to_valid_rgb`: image = sigmoid(raw), never leaves (0, 1),
        the random start is grey 0.5 + noise), `"clip"` (image = clip(raw, 0, 1); raw is the image
        itself while it stays in range: keep it there with
        `jaxviz.synthesis.regularizers.clip_to_range` chained after the optimiser, as Simonyan,
        Yosinski, DeepDream and the attacks do, because clipping has zero gradient outside), or
        `"none"` (image = raw, unbounded: for tests and losses that bound it themselves).
      decorrelate: apply lucid's colour matrix before the squash (3 channels only). With
        `squash="clip"`/`"none"` lucid's mean colour `COLOR_MEAN` is added after the matrix (lucid's
        `sigmoid=False` path, with a clip instead of its `constrain_L_inf`).
      sd: standard deviation of the random start (lucid/lucent `pixel_image`: 0.01).
      eps: `from_images` with the sigmoid clips images to `[eps, 1 - eps]` before the logit.

    `init`: sigmoid: `raw = sd * randn` (lucent `pixel_image`); clip/none: `raw = 0.5 + sd * randn`
    (a grey start in range; decorrelated: the pre-image of that grey).
    """

    shape: tuple = (224, 224, 3)
    squash: str = "sigmoid"
    decorrelate: bool = False
    sd: float = 0.01
    eps: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "shape", _check_shape(self.shape))
        self._check(self.shape[2])

    @property
    def raw_shape(self) -> tuple:
        return self.shape

    def init(self, key: Array, batch: int = 1) -> Array:
        """Random start `[batch, H, W, C]` (float32)."""
        batch = _check_batch(batch)
        noise = self.sd * jax.random.normal(key, (batch, *self.shape), jnp.float32)
        if self.squash == "sigmoid":
            return noise
        return self._invalid(jnp.full((batch, *self.shape), 0.5, jnp.float32)) + noise

    def to_images(self, raw: Array, consts: Any = None) -> Array:
        """`raw [B, H, W, C]` -> images `[B, H, W, C]` in [0, 1] (`"none"`: unbounded)."""
        del consts
        return self._valid(raw)

    def from_images(self, images: Array) -> Array:
        """Raw values whose `to_images` are `images` `[B, H, W, C]` in [0, 1]."""
        return self._invalid(_check_images(images, self.shape, "Pixels.from_images"))


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Spatial frequency magnitudes `sqrt(fy^2 + fx^2)`, `[h, w // 2 + 1]`, in cycles per pixel.

    `fy = fftfreq(h)`, `fx = fftfreq(w)[: w // 2 + 1]` (= numpy's `rfft` columns). lucid/lucent take
    one more column for odd `w` (the first negative frequency); lucent's inverse FFT discards that
    column (its parameters have zero gradient), so the images are the same without it: see `FFT`.
    """
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.abs(np.fft.fftfreq(w)[: w // 2 + 1])[None, :]
    return np.sqrt(fx * fx + fy * fy)


@dataclasses.dataclass(frozen=True)
class FFT(_ColourSquash):
    """lucid/lucent's Fourier ("spectral") parameterisation with 1/f scaling.

    `raw [B, C, H, W // 2 + 1, 2]` (last axis = real, imaginary part; lucent's layout). The image is

        spectrum = (raw[..., 0] + 1j * raw[..., 1]) * scale,
        scale    = 1 / max(rfft2d_freqs(H, W), 1 / max(H, W)) ** decay_power,
        t        = irfft2(spectrum, s=(H, W), norm="ortho") / 4        (lucent's "magic" 4)
        image    = squash(decorrelate(t))     (defaults: lucid's matrix, then sigmoid)

    Odd widths: lucid/lucent allocate `W // 2 + 2` columns for odd `W`; lucent's `irfftn(s=(H, W))`
    ignores the last one (dead parameters with zero gradient) and lucid transforms to width `W + 1`
    and crops (a slightly different normalisation). jaxviz allocates numpy's `W // 2 + 1` columns, so
    its images equal lucent's for every size and no parameter is dead; lucid's odd-width variant is
    not reproduced. Even sizes: lucid and lucent agree and so does this.

    Attributes:
      shape: `(H, W, C)`, any sizes.
      sd: standard deviation of the random spectrum (0.01, lucid/lucent).
      decay_power: exponent of the 1/f scaling (1.0, lucid/lucent).
      squash, decorrelate: as `Pixels` (defaults: sigmoid, decorrelated: lucid's `param.image`).
    """

    shape: tuple = (224, 224, 3)
    sd: float = 0.01
    decay_power: float = 1.0
    squash: str = "sigmoid"
    decorrelate: bool = True
    eps: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "shape", _check_shape(self.shape))
        self._check(self.shape[2])

    @property
    def raw_shape(self) -> tuple:
        h, w, c = self.shape
        return (c, h, w // 2 + 1, 2)

    def scale(self) -> np.ndarray:
        """The 1/f amplitude scaling `[H, W // 2 + 1]` (float64 numpy)."""
        h, w, _ = self.shape
        freqs = rfft2d_freqs(h, w)
        return 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** self.decay_power

    def init(self, key: Array, batch: int = 1) -> Array:
        """Random spectrum `[batch, C, H, W // 2 + 1, 2]`, N(0, sd^2) (lucent `fft_image`); with
        `squash="clip"`/`"none"` added to the spectrum of a grey 0.5 image."""
        batch = _check_batch(batch)
        noise = self.sd * jax.random.normal(key, (batch, *self.raw_shape), jnp.float32)
        if self.squash == "sigmoid":
            return noise
        # Unsquashed images: start from grey 0.5 (its spectrum) plus the noise.
        return self.from_images(jnp.full((batch, *self.shape), 0.5, jnp.float32)) + noise

    def spatial(self, raw: Array) -> Array:
        """The pre-colour image `t = irfft2(...) / 4` `[B, H, W, C]` (unbounded)."""
        h, w, _ = self.shape
        scale = _lead(jnp.asarray(self.scale(), raw.dtype), raw.ndim - 1)
        spectrum = jax.lax.complex(raw[..., 0] * scale, raw[..., 1] * scale)
        t = jnp.fft.irfft2(spectrum, s=(h, w), axes=(-2, -1), norm="ortho")  # [B, C, H, W]
        return jnp.moveaxis(t, -3, -1).astype(raw.dtype) / 4.0

    def to_images(self, raw: Array, consts: Any = None) -> Array:
        """`raw [B, C, H, W // 2 + 1, 2]` -> images `[B, H, W, C]` in [0, 1]."""
        del consts
        return self._valid(self.spatial(raw))

    def from_images(self, images: Array) -> Array:
        """The spectrum whose image is `images` `[B, H, W, C]` (exact inverse of `to_images`)."""
        h, w, _ = self.shape
        images = _check_images(images, self.shape, "FFT.from_images")
        t = jnp.moveaxis(self._invalid(images), -1, -3) * 4.0  # [B, C, H, W]
        spectrum = jnp.fft.rfft2(t, axes=(-2, -1), norm="ortho") / _lead(jnp.asarray(self.scale(), t.dtype), t.ndim)
        return jnp.stack([spectrum.real, spectrum.imag], axis=-1).astype(images.dtype)


def image(shape, *, fft: bool = True, decorrelate: bool = True, sd: Optional[float] = None, **kwargs):
    """lucid/lucent's `param.image` defaults: FFT + decorrelated colour + sigmoid.

    `image((128, 128, 3))` is lucid's and lucent's default render parameterisation;
    `image(shape, fft=False)` their `pixel_image` (decorrelated, sigmoid).
    """
    shape = _check_shape(shape)
    decorrelate = decorrelate and shape[2] == 3
    sd = 0.01 if sd is None else sd
    if fft:
        return FFT(shape=shape, sd=sd, decorrelate=decorrelate, **kwargs)
    return Pixels(shape=shape, sd=sd, decorrelate=decorrelate, **kwargs)


@dataclasses.dataclass(frozen=True)
class AffinePixels:
    """Pixels in another unit: `image = raw * scale + offset` per channel, no squash.

    `AffinePixels.normalized(model, shape)`: raw is the model's normalised input `(x - mean) / std`
    (CS231n's units); `AffinePixels.caffe(model, shape)`: raw is the image in 0-255 minus the mean
    pixel (Yosinski's Caffe units, RGB order). Keep the iterate inside the valid box with
    `jaxviz.synthesis.regularizers.clip_to_range(*p.bounds())` chained after the
    optimiser: the image is not clipped here (a clip would
    halve the gradient of pixels sitting exactly at 0 or 1, e.g. the digits' black background).

    Attributes:
      shape: `(H, W, C)`; scale, offset: `C` numbers each; sd: standard deviation of `init`'s noise
        in raw units around raw 0 (the image `offset`).
    """

    shape: tuple
    scale: tuple
    offset: tuple
    sd: float = 0.0

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image shape must be (H, W, C) with positive sizes; got {self.shape}")
        object.__setattr__(self, "shape", shape)
        for what in ("scale", "offset"):
            v = tuple(float(x) for x in np.broadcast_to(np.asarray(getattr(self, what), np.float64), (shape[2],)))
            object.__setattr__(self, what, v)
        if any(not s > 0 for s in self.scale):
            raise ValueError(f"scale must be positive; got {self.scale}")

    @classmethod
    def normalized(cls, model: Any, shape, sd: float = 0.0) -> "AffinePixels":
        return cls(shape, model.std, model.mean, sd)

    @classmethod
    def caffe(cls, model: Any, shape, sd: float = 0.0) -> "AffinePixels":
        return cls(shape, (1.0 / 255.0,) * len(model.mean), model.mean, sd)

    @property
    def raw_shape(self) -> tuple:
        return self.shape

    def _vec(self, v, dtype):
        return jnp.asarray(v, dtype).reshape(1, 1, 1, -1)

    def init(self, key: Array, batch: int = 1) -> Array:
        return self.sd * jax.random.normal(key, (int(batch), *self.shape), jnp.float32)

    def to_images(self, raw: Array, consts: Any = None) -> Array:
        del consts
        return raw * self._vec(self.scale, raw.dtype) + self._vec(self.offset, raw.dtype)

    def from_images(self, images: Array) -> Array:
        images = jnp.asarray(images)
        return (images - self._vec(self.offset, images.dtype)) / self._vec(self.scale, images.dtype)

    def bounds(self) -> tuple[tuple, tuple]:
        """Per-channel raw values of images 0 and 1: `(lower [C], upper [C])`."""
        lo = tuple((0.0 - o) / s for o, s in zip(self.offset, self.scale))
        hi = tuple((1.0 - o) / s for o, s in zip(self.offset, self.scale))
        return lo, hi


__all__ = [
    "AffinePixels",
    "COLOR_CORRELATION",
    "COLOR_CORRELATION_SVD_SQRT",
    "COLOR_MEAN",
    "FFT",
    "Pixels",
    "SQUASHES",
    "image",
    "rfft2d_freqs",
]
