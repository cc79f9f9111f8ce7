"""Saliency-seeded segmentation (Simonyan et al. 2014, section 3.1): threshold a saliency map into
sure / probable foreground and background seeds, then let OpenCV's GrabCut fit colour models and cut.

    sal = attribution.saliency(model, params, images, classes)          # [N, H, W]
    masks = segmentation.grabcut(images, sal)                             # [N, H, W] bool

Thresholding (`seed_mask`) is JAX and jit-able; `grabcut` itself runs OpenCV on the host, image by
image, so it is NOT jit-able or differentiable. OpenCV is an optional dependency
(`pip install opencv-python-headless`, or the `demo` extra).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.models.base import check_pixel_values

Array = jax.Array

# OpenCV's GrabCut labels (cv2.GC_BGD, GC_FGD, GC_PR_BGD, GC_PR_FGD), fixed by its API.
BACKGROUND, FOREGROUND, PROBABLE_BACKGROUND, PROBABLE_FOREGROUND = 0, 1, 2, 3


def _import_cv2():
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            "saliency-seeded segmentation needs OpenCV's GrabCut: install it with "
            "`pip install opencv-python-headless` (or `pip install jaxviz[demo]`)"
        ) from err
    return cv2


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def seed_mask(
    saliency: Array,
    *,
    foreground: float = 0.95,
    background: float = 0.30,
    probable: Optional[float] = None,
) -> Array:
    """GrabCut seed labels from saliency quantiles, per image.

    Pixels with saliency at or above the `foreground` quantile are sure foreground, at or below the
    `background` quantile sure background (Simonyan et al.'s 95% / 30%); the rest are probable
    foreground if at or above the `probable` quantile, probable background otherwise (default: the
    midpoint of the two quantiles).

    Args:
      saliency: `[N, H, W]` or `[H, W]`, finite real values (larger = more salient); concrete NaN or inf
        is a `ValueError` (traced, where it cannot be checked, NaN gives meaningless labels: integer
        labels cannot hold NaN).
      foreground, background, probable: quantiles in [0, 1], `background < probable <= foreground`.

    Returns:
      int32 labels of the same shape: 0 background, 1 foreground, 2 probable background,
      3 probable foreground (OpenCV's `GC_BGD`, `GC_FGD`, `GC_PR_BGD`, `GC_PR_FGD`).
    """
    probable = 0.5 * (foreground + background) if probable is None else probable
    if not 0.0 <= background < probable <= foreground <= 1.0:
        raise ValueError(
            "quantiles must satisfy 0 <= background < probable <= foreground <= 1; got "
            f"background={background}, probable={probable}, foreground={foreground}"
        )
    if not isinstance(saliency, jax.core.Tracer) and not np.isfinite(np.asarray(saliency)).all():
        raise ValueError("saliency contains non-finite values (NaN or inf): quantile seeds would be meaningless")
    saliency = jnp.asarray(saliency)
    if saliency.ndim not in (2, 3):
        raise ValueError(f"saliency must be [N, H, W] or [H, W]; got shape {saliency.shape}")
    single = saliency.ndim == 2
    s = saliency[None] if single else saliency
    flat = s.reshape(s.shape[0], -1)
    q = jnp.quantile(flat, jnp.asarray([background, probable, foreground]), axis=1)  # [3, N]
    lo, mid, hi = (q[i].reshape(-1, 1, 1) for i in range(3))
    labels = jnp.where(
        s >= hi,
        FOREGROUND,
        jnp.where(s <= lo, BACKGROUND, jnp.where(s >= mid, PROBABLE_FOREGROUND, PROBABLE_BACKGROUND)),
    ).astype(jnp.int32)
    return labels[0] if single else labels


def grabcut(
    images,
    saliency,
    *,
    foreground: float = 0.95,
    background: float = 0.30,
    probable: Optional[float] = None,
    iterations: int = 5,
    return_seeds: bool = False,
):
    """Segment the salient object: saliency quantile seeds (`seed_mask`) refined by GrabCut.

    Not jit-able: OpenCV runs on the host, one image at a time.

    Args:
      images: `[N, H, W, 3]` or `[H, W, 3]` floating-point RGB in [0, 1] (values up to
        `RANGE_TOLERANCE` = 0.05 outside are accepted and clipped; anything further out, NaN or inf is
        refused: 0-255 images must be divided by 255, not clipped to white).
      saliency: `[N, H, W]` or `[H, W]` finite values (e.g. from `jaxviz.attribution.saliency`), same
        size.
      foreground, background, probable: seed quantiles, see `seed_mask`.
      iterations: GrabCut iterations (a positive integer).
      return_seeds: also return the seed labels.

    Returns:
      numpy bool mask `[N, H, W]` (or `[H, W]`), True on the foreground; with `return_seeds`,
      `(mask, seeds)`.

    Raises:
      ImportError: OpenCV is not installed.
      ValueError: an empty batch, mismatched shapes, non-finite or out-of-range pixels, non-finite
        saliency, a non-positive `iterations`, or a saliency map with too few distinct values to seed
        both a foreground and a background. Every input is checked before any work.
    """
    images = np.asarray(images)
    saliency = np.asarray(saliency)
    single = images.ndim == 3
    if single:
        images, saliency = images[None], saliency[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] or [H, W, 3] RGB; got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"grabcut got an empty batch (shape {images.shape}): pass at least one image.")
    if images.dtype.kind != "f":
        raise ValueError(
            f"images must be floating point RGB in [0, 1]; got dtype {images.dtype}. "
            "Convert uint8 images with images.astype('float32') / 255."
        )
    if saliency.shape != images.shape[:3]:
        raise ValueError(f"saliency must be [N, H, W] = {images.shape[:3]}; got shape {saliency.shape}")
    if not _is_int(iterations) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer; got {iterations!r}")
    check_pixel_values(images, "images for grabcut")  # finite, in [0, 1] up to RANGE_TOLERANCE
    if saliency.dtype.kind not in "iuf" or saliency.dtype == bool:
        raise ValueError(f"saliency must be real numbers; got dtype {saliency.dtype}")
    bad = ~np.isfinite(saliency).reshape(saliency.shape[0], -1).all(axis=1)
    if bad.any():
        raise ValueError(
            f"saliency map(s) {np.flatnonzero(bad).tolist()} contain non-finite values (NaN or inf): "
            "was the saliency computed on an image with NaN pixels or an out-of-range class?"
        )
    seeds = np.asarray(seed_mask(saliency, foreground=foreground, background=background, probable=probable))
    flat = seeds.reshape(seeds.shape[0], -1)
    fg = np.isin(flat, (FOREGROUND, PROBABLE_FOREGROUND)).any(axis=1)
    bg = np.isin(flat, (BACKGROUND, PROBABLE_BACKGROUND)).any(axis=1)
    if not (fg & bg).all():
        n = int(np.flatnonzero(~(fg & bg))[0])
        raise ValueError(f"saliency map {n} is (nearly) constant: it seeds no foreground or no background")
    cv2 = _import_cv2()
    masks = np.zeros(images.shape[:3], bool)
    for n in range(images.shape[0]):
        labels = seeds[n].astype(np.uint8)  # GrabCut edits its mask in place
        # OpenCV wants 8-bit BGR; the colour models do not care about the channel order, but keep it right.
        # Values are in [0, 1] up to RANGE_TOLERANCE (checked above); the clip only removes that overshoot.
        image = np.ascontiguousarray((np.clip(images[n], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[..., ::-1])
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(image, labels, None, bgd, fgd, int(iterations), cv2.GC_INIT_WITH_MASK)
        masks[n] = np.isin(labels, (FOREGROUND, PROBABLE_FOREGROUND))
    if single:
        masks, seeds = masks[0], seeds[0]
    return (masks, seeds) if return_seeds else masks


__all__ = [
    "BACKGROUND",
    "FOREGROUND",
    "PROBABLE_BACKGROUND",
    "PROBABLE_FOREGROUND",
    "grabcut",
    "seed_mask",
]
