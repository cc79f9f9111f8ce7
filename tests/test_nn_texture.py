"""Efros-Leung and the patch-based variant, checked by brute force: every output pixel copies the
source pixel it names; each choice is the best-matching source window for the neighbourhood filled
at that time (replayed in numpy); on a periodic source the filled neighbourhoods occur exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.synthesis import nn_texture as nt

WINDOW = 7


def _noise(seed, shape=(20, 20, 3)):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def _periodic(seed, period=(4, 5), shape=(24, 26, 3)):
    tile = np.random.default_rng(seed).uniform(0, 1, period + (shape[2],)).astype(np.float32)
    reps = (-(-shape[0] // period[0]), -(-shape[1] // period[1]), 1)
    return np.tile(tile, reps)[: shape[0], : shape[1]]


def _replay(source, result, window, check_best=True):
    """For every non-seed pixel, in fill order: the weighted SSD (numpy float64) between the output
    window as filled at that time and every valid source window. Returns (recorded SSD, SSD at the
    chosen window, min SSD) per pixel and the filled masks."""
    tex = np.asarray(result.texture, np.float64)
    step = np.asarray(result.fill_step)
    idx = np.asarray(result.source_index)
    half = window // 2
    h, w, c = tex.shape
    src = source.astype(np.float64)
    r = np.arange(window) - half
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (window / 6.4) ** 2))
    pad_t = np.pad(tex, ((half, half), (half, half), (0, 0)))
    out = []
    hs, ws = src.shape[:2]
    wins = np.stack([src[y : y + window, x : x + window] for y in range(hs - window + 1) for x in range(ws - window + 1)])
    centres = np.array([(y + half, x + half) for y in range(hs - window + 1) for x in range(ws - window + 1)])
    for i, j in zip(*np.nonzero(step >= 0)):
        filled = np.pad((step >= -1) & (step < step[i, j]), half)[i : i + window, j : j + window]
        wts = g * filled
        wts = wts / wts.sum()
        win = pad_t[i : i + window, j : j + window]
        ssd = np.einsum("pyxc,yx->p", (wins - win[None]) ** 2, wts) / c  # averaged over channels
        chosen = np.nonzero((centres == idx[i, j]).all(1))[0][0]
        out.append((float(result.error[i, j]), ssd[chosen], ssd.min(), filled, win, wins[chosen]))
    return out


def test_every_pixel_is_a_copy_and_each_choice_is_the_best_match():
    source = _noise(0)
    res = nt.efros_leung(jnp.asarray(source), (14, 13), key=jax.random.key(0), window=WINDOW, err_threshold=0.0)
    tex, idx = np.asarray(res.texture), np.asarray(res.source_index)
    assert tex.shape == (14, 13, 3)
    assert np.all(idx >= 0)
    np.testing.assert_array_equal(tex, source[idx[..., 0], idx[..., 1]])
    assert np.sum(np.asarray(res.fill_step) == -1) == 9  # the 3x3 seed
    for recorded, at_chosen, best, *_ in _replay(source, res, WINDOW):
        assert at_chosen == pytest.approx(recorded, abs=1e-5)
        assert at_chosen <= best + 1e-5  # err_threshold 0: the best window (up to float32 ties)


def test_near_best_candidates_with_default_threshold():
    source = _noise(1)
    res = nt.efros_leung(jnp.asarray(source), (12, 12), key=jax.random.key(3), window=WINDOW)
    chose_other = 0
    for recorded, at_chosen, best, *_ in _replay(source, res, WINDOW):
        assert at_chosen <= best * 1.1 + 1e-5
        chose_other += at_chosen > best + 1e-6
    assert chose_other > 0  # the random choice among near-best windows is exercised


def test_periodic_source_neighbourhoods_occur_in_the_source():
    """On an exactly periodic source with err_threshold 0, each filled pixel's neighbourhood (the
    part filled when it was chosen) equals the source's around the chosen pixel."""
    source = _periodic(2)
    res = nt.efros_leung(jnp.asarray(source), (16, 18), key=jax.random.key(4), window=WINDOW, err_threshold=0.0)
    for recorded, at_chosen, best, filled, win, src_win in _replay(source, res, WINDOW):
        np.testing.assert_array_equal(win[filled], src_win[filled])
    # Hence the output is periodic with the source's period.
    tex = np.asarray(res.texture)
    np.testing.assert_array_equal(tex[4:], tex[:-4])
    np.testing.assert_array_equal(tex[:, 5:], tex[:, :-5])


def test_keys_sizes_and_errors():
    source = jnp.asarray(_noise(5))
    small = source[:9, :9]
    run = lambda k: nt.efros_leung(small, (12, 12), key=k, window=5)  # noqa: E731
    keys = jax.random.split(jax.random.key(10), 2)
    a, b, c = run(keys[0]), run(keys[0]), run(keys[1])
    np.testing.assert_array_equal(np.asarray(a.texture), np.asarray(b.texture))
    assert not np.array_equal(np.asarray(a.texture), np.asarray(c.texture))
    # Larger than the source; vmapped over keys == one by one.
    assert a.texture.shape == (12, 12, 3) and np.all(np.asarray(a.source_index) < 9)
    batched = jax.vmap(lambda k: run(k).texture)(keys)
    np.testing.assert_array_equal(np.asarray(batched[0]), np.asarray(a.texture))
    np.testing.assert_array_equal(np.asarray(batched[1]), np.asarray(c.texture))
    with pytest.raises(ValueError, match="smaller than the window"):
        nt.efros_leung(source[:6], (8, 8), key=jax.random.key(0), window=WINDOW)
    with pytest.raises(ValueError, match="odd"):
        nt.efros_leung(source, (8, 8), key=jax.random.key(0), window=6)
    with pytest.raises(ValueError, match="height, width"):
        nt.efros_leung(source, (0, 8), key=jax.random.key(0))
    with pytest.raises(ValueError, match="height, width"):
        nt.efros_leung(source, 8, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        nt.efros_leung(source[None], (8, 8), key=jax.random.key(0))
    with pytest.raises(ValueError, match="floating"):
        nt.efros_leung(np.zeros((20, 20, 3), np.uint8), (8, 8), key=jax.random.key(0))


def test_quilt_tiles_are_source_patches():
    source = _noise(6, (24, 24, 3))
    patch, overlap = 8, 3
    tex, corners = nt.quilt(jnp.asarray(source), (20, 27), key=jax.random.key(0), patch=patch, overlap=overlap)
    tex, corners = np.asarray(tex), np.asarray(corners)
    assert tex.shape == (20, 27, 3)
    stride = patch - overlap
    ny, nx = corners.shape[:2]
    for ty in range(ny):
        for tx in range(nx):
            # The part of each tile not overwritten by later tiles is its source patch.
            y, x = ty * stride, tx * stride
            h = min(stride if ty < ny - 1 else patch, 20 - y)
            w = min(stride if tx < nx - 1 else patch, 27 - x)
            r, c = corners[ty, tx]
            np.testing.assert_array_equal(tex[y : y + h, x : x + w], source[r : r + h, c : c + w])
    # The overlap choice is the best match when tolerance is 0: on a periodic source the seams vanish.
    per = _periodic(7, (4, 4), (24, 24, 3))
    t2, _ = nt.quilt(jnp.asarray(per), (22, 22), key=jax.random.key(1), patch=8, overlap=4, tolerance=0.0)
    t2 = np.asarray(t2)
    np.testing.assert_array_equal(t2[4:], t2[:-4])
    np.testing.assert_array_equal(t2[:, 4:], t2[:, :-4])
    again, _ = nt.quilt(jnp.asarray(source), (20, 27), key=jax.random.key(0), patch=patch, overlap=overlap)
    np.testing.assert_array_equal(np.asarray(again), tex)
    with pytest.raises(ValueError, match="overlap"):
        nt.quilt(jnp.asarray(source), (20, 20), key=jax.random.key(0), patch=8, overlap=8)
    with pytest.raises(ValueError, match="smaller than the window"):
        nt.quilt(jnp.asarray(source[:6]), (20, 20), key=jax.random.key(0), patch=8)
