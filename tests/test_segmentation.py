"""Saliency-seeded GrabCut segmentation on synthetic images with a known object."""

import sys

import jax
import numpy as np
import pytest

from jaxviz import segmentation as S


def _scene(seed, centre, radius=14, size=64):
    """A bright disc on a textured background, and a saliency map peaked on the disc (plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    texture = 0.25 + 0.15 * np.sin(0.8 * xx[..., None] + np.arange(3)) * np.cos(0.5 * yy[..., None])
    background = texture + 0.05 * rng.standard_normal((size, size, 3))
    obj = np.array([0.95, 0.85, 0.3]) + 0.03 * rng.standard_normal((size, size, 3))
    image = np.clip(np.where(disc[..., None], obj, background), 0, 1).astype(np.float32)
    dist = np.sqrt((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2)
    saliency = np.exp(-((dist / radius) ** 2)) + 0.15 * rng.uniform(size=(size, size))
    return image, saliency.astype(np.float32), disc


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_grabcut_recovers_disc():
    pytest.importorskip("cv2")
    scenes = [_scene(0, (30, 36)), _scene(1, (22, 40), radius=12)]
    images = np.stack([s[0] for s in scenes])
    saliency = np.stack([s[1] for s in scenes])
    discs = np.stack([s[2] for s in scenes])
    masks, seeds = S.grabcut(images, saliency, return_seeds=True)
    assert masks.shape == discs.shape and masks.dtype == bool
    for mask, seed, disc in zip(masks, seeds, discs):
        seeded = np.isin(seed, (S.FOREGROUND, S.PROBABLE_FOREGROUND))
        assert _iou(mask, disc) > 0.9
        assert _iou(mask, disc) > _iou(seeded, disc) + 0.2  # GrabCut, not the thresholds, finds the edge
    # A single image gives the same answer as its slot in the batch.
    np.testing.assert_array_equal(S.grabcut(images[1], saliency[1]), masks[1])


def test_seed_mask_quantiles_and_jit():
    rng = np.random.default_rng(0)
    sal = rng.uniform(size=(2, 40, 50))
    seeds = np.asarray(S.seed_mask(sal, foreground=0.9, background=0.2, probable=0.6))
    for n in range(2):
        counts = np.bincount(seeds[n].ravel(), minlength=4) / sal[n].size
        np.testing.assert_allclose(counts, [0.2, 0.1, 0.4, 0.3], atol=0.01)
        # Labels are ordered by saliency: every sure-foreground pixel beats every probable one, etc.
        order = [S.BACKGROUND, S.PROBABLE_BACKGROUND, S.PROBABLE_FOREGROUND, S.FOREGROUND]
        for lo, hi in zip(order, order[1:]):
            assert sal[n][seeds[n] == lo].max() <= sal[n][seeds[n] == hi].min()
    np.testing.assert_array_equal(jax.jit(S.seed_mask)(sal), S.seed_mask(sal))
    with pytest.raises(ValueError, match="non-finite"):
        S.seed_mask(np.where(sal > 0.99, np.nan, sal))


def test_missing_opencv_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    image, saliency, _ = _scene(0, (30, 30))
    with pytest.raises(ImportError, match="opencv-python-headless"):
        S.grabcut(image, saliency)


def _nan_pixel(array):
    array = array.copy()
    array[3, 4] = np.nan
    return array


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(saliency=np.ones((64, 64))), "constant"),
        (dict(saliency=np.ones((32, 64))), "saliency must be"),
        (dict(image=np.ones((64, 64))), "RGB"),
        (dict(foreground=0.2, background=0.5), "quantiles"),
        (dict(iterations=-3), "iterations must be a positive integer"),
        (dict(iterations=0), "iterations must be a positive integer"),
        (dict(iterations=2.5), "iterations must be a positive integer"),
        (dict(image=np.zeros((0, 64, 64, 3), np.float32), saliency=np.zeros((0, 64, 64))), "empty batch"),
        # One NaN pixel: refused as non-finite, not reported as a "(nearly) constant" saliency map.
        (dict(image=_nan_pixel(_scene(0, (30, 30))[0])), "non-finite"),
        (dict(saliency=_nan_pixel(_scene(0, (30, 30))[1])), "non-finite"),
        # Images outside [0, 1] are refused (with how to convert), not clipped to white.
        (dict(image=_scene(0, (30, 30))[0] * 255), "divide by 255"),
        (dict(image=_scene(0, (30, 30))[0] - 0.5), r"\[0, 1\]"),
        (dict(image=(_scene(0, (30, 30))[0] * 255).astype(np.uint8)), "floating point"),
    ],
)
def test_bad_input(kwargs, match):
    pytest.importorskip("cv2")
    image, saliency, _ = _scene(0, (30, 30))
    image = kwargs.pop("image", image)
    saliency = kwargs.pop("saliency", saliency)
    with pytest.raises(ValueError, match=match):
        S.grabcut(image, saliency, **kwargs)
