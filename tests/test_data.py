"""Digits, photos and textures loaded offline from installed packages; the batch iterator."""

import sys

import numpy as np
import pytest

from jaxviz import data


@pytest.fixture(scope="module")
def digits():
    return data.load_digits(32)


def test_digits_shapes_ranges(digits):
    assert digits.train_images.shape == (1500, 32, 32, 3) and digits.test_images.shape == (297, 32, 32, 3)
    assert digits.train_images.dtype == np.float32 and digits.train_labels.dtype == np.int32
    for x in (digits.train_images, digits.test_images):
        assert x.min() == 0.0 and 0.99 < x.max() <= 1.0
        np.testing.assert_array_equal(x[..., 0], x[..., 2])  # gray as RGB
    assert set(digits.train_labels) == set(range(10)) and set(digits.test_labels) == set(range(10))


def test_digits_split_is_fixed_and_a_partition(digits):
    again = data.load_digits(32)
    for a, b in zip(digits, again):
        np.testing.assert_array_equal(a, b)
    # Independent reference: scikit-learn's raw digits resized by scikit-image (bilinear, no
    # antialiasing, edge clamping). Train + test together are exactly the 1797 images, once each.
    from sklearn.datasets import load_digits
    from skimage.transform import resize

    raw = load_digits()
    ref = resize(raw.images / 16.0, (len(raw.images), 32, 32), order=1, mode="edge", anti_aliasing=False)
    ours = np.concatenate([digits.train_images, digits.test_images])[..., 0]
    labels = np.concatenate([digits.train_labels, digits.test_labels])

    # Nearest reference image of each of ours: a bijection, same label, equal up to float32 rounding.
    a = ours.reshape(len(ours), -1).astype(np.float64)
    b = ref.reshape(len(ref), -1)
    dist = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    match = dist.argmin(axis=1)
    assert len(set(match.tolist())) == len(raw.images) == len(ours)
    np.testing.assert_array_equal(labels, raw.target[match])
    np.testing.assert_allclose(a, b[match], atol=1e-6)

def test_digits_size_and_errors():
    small = data.load_digits(16)
    assert small.train_images.shape == (1500, 16, 16, 3)
    with pytest.raises(ValueError, match="size"):
        data.load_digits(4)
    with pytest.raises(ValueError, match="size"):
        data.load_digits(32.0)


def test_missing_optional_dependency(monkeypatch):
    data._raw_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now fails
    with pytest.raises(ImportError, match=r"jaxviz\[demo\]"):
        data.load_digits()
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(ImportError, match="scikit-image"):
        data.sample_photos()
    monkeypatch.undo()
    data._raw_digits.cache_clear()


def test_photos_offline():
    photos = data.sample_photos()
    assert tuple(photos) == data.PHOTO_NAMES
    assert photos["chelsea"].shape == (300, 451, 3) and photos["grace_hopper"].shape == (600, 512, 3)
    for img in photos.values():
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[-1] == 3
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05
    from skimage import data as skdata

    np.testing.assert_array_equal(photos["coffee"], skdata.coffee().astype(np.float32) / 255.0)
    sized = data.sample_photos(64)
    assert all(v.shape == (64, 64, 3) for v in sized.values())
    rect = data.sample_photos((32, 48))
    assert all(v.shape == (32, 48, 3) for v in rect.values())


def test_center_crop_resize():
    # Dark | bright | dark columns: a square centre crop sees only the bright band.
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255
    out = data.center_crop_resize(img, 50)
    assert out.shape == (50, 50, 3)
    np.testing.assert_allclose(out, 1.0, atol=1e-5)
    # Same size: unchanged.
    x = np.random.default_rng(0).uniform(size=(20, 30, 3)).astype(np.float32)
    np.testing.assert_allclose(data.center_crop_resize(x, (20, 30)), x, atol=1e-6)
    with pytest.raises(ValueError, match="size"):
        data.center_crop_resize(x, (0, 5))


def test_textures_offline():
    tex = data.sample_textures()
    assert tuple(tex) == data.TEXTURE_NAMES
    for img in tex.values():
        assert img.shape == (512, 512, 3) and img.dtype == np.float32
        np.testing.assert_array_equal(img[..., 0], img[..., 1])
        assert 0.0 <= img.min() and img.max() <= 1.0
    assert data.sample_textures(40)["gravel"].shape == (40, 40, 3)


def test_styles_offline_in_colour():
    styles = data.sample_styles(48)
    assert tuple(styles) == data.STYLE_NAMES
    for name, img in styles.items():
        assert img.shape == (48, 48, 3) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
        # Colour images: somewhere the channels differ clearly (unlike the grey textures).
        assert np.abs(img[..., 0] - img[..., 2]).max() > 0.2, name


def test_batches():
    x = np.arange(10 * 2).reshape(10, 2)
    y = np.arange(10)
    got = list(data.batches(x, 4))
    assert [len(b) for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(got), x)
    pairs = list(data.batches(x, 3, labels=y))
    assert [len(b) for b, _ in pairs] == [3, 3, 3, 1]
    for bx, by in pairs:
        np.testing.assert_array_equal(bx[:, 0] // 2, by)
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(x, 0)  # raised when called, not when iterated
    with pytest.raises(ValueError, match="length"):
        data.batches(x, 2, labels=y[:3])
