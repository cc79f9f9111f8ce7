"""Real data that ships inside installed packages: handwritten digits, photos and textures.

Nothing here downloads anything. The optional packages (scikit-learn for the digits,
scikit-image for photos and textures) are imported only when a loader needs them; install them
with `pip install 'jaxviz[demo]'`. Everything is numpy: images are float32 `[H, W, 3]` (or
`[N, H, W, 3]`) RGB in [0, 1], the convention of the whole library.
"""

from __future__ import annotations

import functools
import os
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np

#: Names returned by `sample_photos` and `sample_textures`, in order.
PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "grace_hopper")
TEXTURE_NAMES = ("brick", "gravel", "grass")
STYLE_NAMES = ("immunohistochemistry", "hubble_deep_field", "colorwheel")

#: The fixed digits split: a permutation of the 1797 images drawn from this seed, the first
#: `DIGITS_TRAIN` of them for training and the rest held out.
DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN = 1500


def _require(module: str, package: str, what: str):
    """Import an optional dependency or raise an ImportError that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{what} needs {package}, an optional dependency of jaxviz: "
            f"pip install 'jaxviz[demo]' (or pip install {package})"
        ) from e


class Digits(NamedTuple):
    """A fixed train / held-out split of scikit-learn's handwritten digits.

    Attributes:
      train_images: float32 `[n_train, size, size, 3]` in [0, 1], ink bright on black.
      train_labels: int32 `[n_train]` in 0..9.
      test_images: float32 `[n_test, size, size, 3]`.
      test_labels: int32 `[n_test]`.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]` linear-interpolation weights with half-pixel centres and clamped edges
    (bilinear resizing as in PIL / `jax.image.resize` for upsampling)."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    datasets = _require("sklearn.datasets", "scikit-learn", "jaxviz.data.load_digits")
    bunch = datasets.load_digits()
    images = np.asarray(bunch.images, np.float64) / 16.0  # 0..16 -> [0, 1]
    labels = np.asarray(bunch.target, np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits(size: int = 32) -> Digits:
    """scikit-learn's 1797 handwritten 8x8 digits as RGB images with a fixed held-out split.

    The images are upsampled bilinearly (smoothly, so a CNN with 3x3 kernels sees strokes rather
    than blocks) to `size` x `size` and repeated over 3 channels; ink is bright. The split is a
    fixed permutation (seed `DIGITS_SPLIT_SEED`): the same `DIGITS_TRAIN` = 1500 training and 297
    held-out images on every call and machine.

    Args:
      size: output height and width in pixels (>= 8; 32 for the `digits` model).

    Returns:
      `Digits(train_images, train_labels, test_images, test_labels)`, float32 images in [0, 1]
      `[N, size, size, 3]` and int32 labels `[N]`.

    Raises:
      ImportError: scikit-learn is not installed.
      ValueError: `size` is not an integer >= 8.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8 (the digits are 8x8); got {size!r}")
    raw, labels = _raw_digits()
    m = _interp_matrix(raw.shape[1], int(size))
    # Separable bilinear resize: rows then columns, [N, 8, 8] -> [N, size, size]. A convex
    # combination of values in [0, 1] stays in [0, 1].
    up = np.einsum("ph,nhw,qw->npq", m, raw, m)
    images = np.repeat(up[..., None], 3, axis=-1).astype(np.float32)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    train, test = order[:DIGITS_TRAIN], order[DIGITS_TRAIN:]
    return Digits(images[train], labels[train].copy(), images[test], labels[test].copy())


def _size_tuple(size) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or (height, width); got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive; got {size!r}")
    return h, w


def center_crop_resize(image: np.ndarray, size) -> np.ndarray:
    """Crop the largest centred window of `size`'s aspect ratio from `image` and resize it.

    Args:
      image: `[H, W, C]` uint8 or float in [0, 1].
      size: int (square) or `(h, w)`.

    Returns:
      float32 `[h, w, C]` in [0, 1] (bilinear, antialiased when shrinking).
    """
    from PIL import Image

    h, w = _size_tuple(size)
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"center_crop_resize expects [H, W, C]; got shape {image.shape}")
    H, W = image.shape[:2]
    # Largest window with aspect ratio w / h inside H x W.
    if W * h >= H * w:
        ch, cw = H, max(1, round(H * w / h))
    else:
        ch, cw = max(1, round(W * h / w)), W
    top, left = (H - ch) // 2, (W - cw) // 2
    crop = image[top : top + ch, left : left + cw]
    if crop.dtype == np.uint8:
        chans = [crop[..., c].astype(np.float32) / 255.0 for c in range(crop.shape[-1])]
    else:
        chans = [crop[..., c].astype(np.float32) for c in range(crop.shape[-1])]
    # Per channel in PIL's float mode "F": no uint8 round trip; PIL's bilinear filter widens its
    # support when shrinking, which antialiases.
    out = [np.asarray(Image.fromarray(c, mode="F").resize((w, h), Image.BILINEAR)) for c in chans]
    return np.clip(np.stack(out, axis=-1), 0.0, 1.0).astype(np.float32)


def _to_rgb_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def _finish(images: dict, size) -> dict[str, np.ndarray]:
    if size is None:
        return {k: _to_rgb_float(v) for k, v in images.items()}
    size = _size_tuple(size)
    return {k: center_crop_resize(_to_rgb_float(v), size) for k, v in images.items()}


def _skimage_images(names, size, caller: str) -> dict[str, np.ndarray]:
    skdata = _require("skimage.data", "scikit-image", caller)
    return _finish({name: getattr(skdata, name)() for name in names}, size)


def sample_photos(size: Union[int, Sequence[int], None] = None) -> dict[str, np.ndarray]:
    """Real photos shipped inside installed packages (no download).

    scikit-image's `chelsea` (a cat), `coffee` (a cup), `astronaut` (Eileen Collins), `rocket`
    and matplotlib's `grace_hopper` portrait.

    Args:
      size: `None` for the original sizes, or an int / `(h, w)`: centre crop to that aspect ratio
        and resize (bilinear, antialiased).

    Returns:
      `{name: float32 [H, W, 3] in [0, 1]}` in the order of `PHOTO_NAMES`.

    Raises:
      ImportError: scikit-image is not installed.
    """
    skdata = _require("skimage.data", "scikit-image", "jaxviz.data.sample_photos")
    import matplotlib
    from PIL import Image

    photos = {name: getattr(skdata, name)() for name in PHOTO_NAMES[:4]}
    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    with Image.open(path) as im:
        photos["grace_hopper"] = np.asarray(im.convert("RGB"))
    return _finish(photos, size)


def sample_textures(size: Union[int, Sequence[int], None] = None) -> dict[str, np.ndarray]:
    """scikit-image's grayscale textures `brick`, `gravel`, `grass` as RGB (channels repeated).

    Args:
      size: `None` (originals, 512 x 512) or an int / `(h, w)` for a centre crop and resize.

    Returns:
      `{name: float32 [H, W, 3] in [0, 1]}` in the order of `TEXTURE_NAMES`.

    Raises:
      ImportError: scikit-image is not installed.
    """
    return _skimage_images(TEXTURE_NAMES, size, "jaxviz.data.sample_textures")


def sample_styles(size: Union[int, Sequence[int], None] = None) -> dict[str, np.ndarray]:
    """Colour images with strong texture or palette that scikit-image ships, for style demos:
    `immunohistochemistry` (stained tissue), `hubble_deep_field` (stars and galaxies) and `colorwheel`.

    Args:
      size: `None` (originals) or an int / `(h, w)` for a centre crop and resize.

    Returns:
      `{name: float32 [H, W, 3] in [0, 1]}` in the order of `STYLE_NAMES`.

    Raises:
      ImportError: scikit-image is not installed.
    """
    return _skimage_images(STYLE_NAMES, size, "jaxviz.data.sample_styles")


def batches(images, batch_size: int, labels=None) -> Iterator:
    """Consecutive batches of a dataset, in order; the last one may be smaller.

    Args:
      images: array `[N, ...]` (numpy or JAX; sliced, not copied).
      batch_size: positive int.
      labels: optional array `[N, ...]` sliced alongside.

    Yields:
      `images[i:i + batch_size]`, or `(images[i:i + batch_size], labels[i:i + batch_size])` when
      `labels` is given.

    Raises:
      ValueError: `batch_size` is not a positive int, or `labels` has a different length.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    n = len(images)
    if labels is not None and len(labels) != n:
        raise ValueError(f"images and labels differ in length: {n} vs {len(labels)}")
    return _batches(images, int(batch_size), labels, n)


def _batches(images, batch_size, labels, n):
    # A separate generator so that `batches` checks its arguments when called, not when iterated.
    for start in range(0, n, batch_size):
        stop = start + batch_size
        if labels is None:
            yield images[start:stop]
        else:
            yield images[start:stop], labels[start:stop]
