"""Nearest-neighbour texture synthesis: Efros & Leung 1999 (pixel by pixel) and a patch-based variant.

No network and no optimisation: the output grows from a seed by copying, for each new pixel, the
centre of a source window whose neighbourhood matches the already-filled part of the pixel's window
(SYNTHESIS.md section 11; the constants every implementation copies from the authors' pseudo-code):

  * window `w` (odd); SSD between the output window and every source window, over the *filled*
    pixels only, weighted by a Gaussian of `sigma = w / 6.4` and normalised by the total weight
    (averaged over colour channels, so the thresholds mean the same for grey and RGB);
  * candidates: every source window with `SSD <= min SSD * (1 + err_threshold)`, `err_threshold =
    0.1`; one is chosen uniformly at random;
  * the pixel is filled only if the chosen SSD is below `max_err_threshold` (0.3); when a whole pass
    over the unfilled pixels fills nothing, `max_err_threshold *= 1.1`.

jaxviz grows the output from a 3x3 seed (a random source patch) at the centre, in a fixed "onion"
order: rings of growing Chebyshev distance from the seed, raster order within a ring; a pass visits
the unfilled pixels that have a filled 8-neighbour in that order. (The pseudo-code sorts a pass by
number of filled neighbours; the onion order is the usual deterministic substitute and needs no
sort inside the loop.) Source windows are the valid ones (the whole window inside the source).

Loop policy (`jaxviz/loops.py`): the library's rule, a Python loop over one jitted step on CPU, is
for loops whose step is a network evaluation. Here a step is one pixel - a few hundred thousand
flops - and an output has thousands of them: one dispatch per pixel would cost more than the
arithmetic. So the whole synthesis is ONE compiled `lax.while_loop` (on every backend), and it
vmaps over keys.

Values: images `[H, W, C]` float (any C; RGB in [0, 1] for the usual use), output `[out_h, out_w, C]`
of any size, every output pixel a copy of a source pixel.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

ERR_THRESHOLD = 0.1
MAX_ERR_THRESHOLD = 0.3
SIGMA_DIVISOR = 6.4
SEED_SIZE = 3


class EfrosLeungResult(NamedTuple):
    """`texture [H, W, C]`; `source_index [H, W, 2]` the (row, col) of the source pixel each output
    pixel copies; `fill_step [H, W]` the step at which it was filled (-1 for the seed); `error
    [H, W]` the normalised weighted SSD of the chosen window when it was filled (0 for the seed);
    `passes` the number of passes made."""

    texture: Array
    source_index: Array
    fill_step: Array
    error: Array
    passes: Array


def _check_source(source, window, what="source"):
    shape = getattr(source, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"{what} must be one image [H, W, C]; got shape {shape}")
    if not jnp.issubdtype(jnp.asarray(source).dtype, jnp.floating):
        raise ValueError(f"{what} must be floating point; got dtype {source.dtype}")
    if shape[0] < window or shape[1] < window:
        raise ValueError(f"the {what} ({shape[0]}x{shape[1]}) is smaller than the window ({window}x{window}): use a smaller window or a larger {what}")
    if not bool(jnp.all(jnp.isfinite(jnp.asarray(source)))):
        raise ValueError(f"{what} contains non-finite values")


def _check_size(size, name="size"):
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, (int, np.integer)) and s > 0 for s in size)):
        raise ValueError(f"{name} must be (height, width) of positive ints; got {size!r}")
    return int(size[0]), int(size[1])


def gaussian_window(window: int, sigma: float) -> np.ndarray:
    r = np.arange(window) - window // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma**2))
    return g / g.sum()


def _windows(source, window):
    """All valid `window x window` source windows, `[P, window*window*C]`, and their centres `[P, 2]`."""
    hs, ws, c = source.shape
    ph, pw = hs - window + 1, ws - window + 1
    rows = np.arange(ph)[:, None] + np.arange(window)[None, :]
    cols = np.arange(pw)[:, None] + np.arange(window)[None, :]
    patches = source[rows[:, None, :, None], cols[None, :, None, :]]  # [ph, pw, w, w, C]
    centres = np.stack(np.meshgrid(np.arange(ph), np.arange(pw), indexing="ij"), -1).reshape(-1, 2) + window // 2
    return patches.reshape(ph * pw, window * window * c), jnp.asarray(centres, jnp.int32)


def _onion_order(out_h, out_w, top, left):
    """Output pixels ordered by Chebyshev distance from the seed's centre, raster within a ring."""
    cy, cx = top + SEED_SIZE // 2, left + SEED_SIZE // 2
    ii, jj = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing="ij")
    ring = np.maximum(np.abs(ii - cy), np.abs(jj - cx))
    order = np.lexsort((jj.ravel(), ii.ravel(), ring.ravel()))
    return np.stack([ii.ravel()[order], jj.ravel()[order]], -1).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("size", "window", "err_threshold", "max_err_threshold"))
def _efros_leung(source, key, *, size, window, err_threshold, max_err_threshold):
    out_h, out_w = size
    hs, ws, c = source.shape
    half = window // 2
    dtype = source.dtype
    patches, centres = _windows(source, window)
    patches_sq = patches * patches
    gauss = jnp.asarray(np.repeat(gaussian_window(window, window / SIGMA_DIVISOR)[:, :, None], c, axis=2), dtype)

    key_seed, key_loop = jax.random.split(key)
    # Seed: a random 3x3 source patch at the centre of the output (clipped to the output's size).
    sh, sw = min(SEED_SIZE, out_h), min(SEED_SIZE, out_w)
    top, left = (out_h - sh) // 2, (out_w - sw) // 2
    k1, k2 = jax.random.split(key_seed)
    sy = jax.random.randint(k1, (), 0, hs - sh + 1)
    sx = jax.random.randint(k2, (), 0, ws - sw + 1)
    seed = jax.lax.dynamic_slice(source, (sy, sx, 0), (sh, sw, c))
    canvas = jnp.zeros((out_h + 2 * half, out_w + 2 * half, c), dtype)
    canvas = jax.lax.dynamic_update_slice(canvas, seed, (top + half, left + half, 0))
    filled = jnp.zeros((out_h + 2 * half, out_w + 2 * half), bool)
    filled = filled.at[top + half : top + half + sh, left + half : left + half + sw].set(True)
    ii, jj = np.meshgrid(np.arange(sh), np.arange(sw), indexing="ij")
    src_index = jnp.full((out_h, out_w, 2), -1, jnp.int32)
    src_index = src_index.at[top : top + sh, left : left + sw].set(jnp.stack([sy + ii, sx + jj], -1).astype(jnp.int32))
    fill_step = jnp.full((out_h, out_w), -2, jnp.int32).at[top : top + sh, left : left + sw].set(-1)
    error = jnp.zeros((out_h, out_w), dtype)

    order = jnp.asarray(_onion_order(out_h, out_w, top, left))
    n = order.shape[0]
    total = out_h * out_w - sh * sw

    # state: (canvas, filled, src_index, fill_step, error, position in order, filled this pass,
    #         number filled, threshold, passes, step counter)
    def cond(s):
        return s[7] < total

    def body(s):
        canvas, filled, src_index, fill_step, error, pos, any_this_pass, count, thr, passes, step = s
        i, j = order[pos, 0], order[pos, 1]
        win_mask = jax.lax.dynamic_slice(filled, (i, j), (window, window))
        already = filled[i + half, j + half]
        neighbours = jnp.any(jax.lax.dynamic_slice(filled, (i + half - 1, j + half - 1), (3, 3)))
        visit = jnp.logical_and(~already, neighbours)

        def try_fill(args):
            canvas, filled, src_index, fill_step, error, count, any_this_pass = args
            win = jax.lax.dynamic_slice(canvas, (i, j, 0), (window, window, c))
            wts = gauss * win_mask[:, :, None].astype(dtype)
            wts = wts / jnp.sum(wts)
            wv = wts.reshape(-1)
            ssd = patches_sq @ wv - 2.0 * (patches @ (wv * win.reshape(-1))) + jnp.sum(wv * win.reshape(-1) ** 2)
            ssd = jnp.maximum(ssd, 0.0)
            best = jnp.min(ssd)
            cand = ssd <= best * (1.0 + err_threshold)
            u = jax.random.uniform(jax.random.fold_in(key_loop, step), ssd.shape)
            pick = jnp.argmax(jnp.where(cand, u, -1.0))
            err = ssd[pick]
            ok = err <= thr
            r, q = centres[pick, 0], centres[pick, 1]
            value = source[r, q]
            canvas = jnp.where(ok, canvas.at[i + half, j + half].set(value), canvas)
            filled = filled.at[i + half, j + half].set(ok)
            src_index = jnp.where(ok, src_index.at[i, j].set(jnp.stack([r, q])), src_index)
            fill_step = jnp.where(ok, fill_step.at[i, j].set(step), fill_step)
            error = jnp.where(ok, error.at[i, j].set(err), error)
            return canvas, filled, src_index, fill_step, error, count + ok, any_this_pass | ok

        canvas, filled, src_index, fill_step, error, count, any_this_pass = jax.lax.cond(
            visit, try_fill, lambda a: a, (canvas, filled, src_index, fill_step, error, count, any_this_pass)
        )
        end_of_pass = pos == n - 1
        thr = jnp.where(end_of_pass & ~any_this_pass, thr * 1.1, thr)
        passes = passes + end_of_pass
        any_this_pass = jnp.where(end_of_pass, False, any_this_pass)
        pos = jnp.where(end_of_pass, 0, pos + 1)
        return canvas, filled, src_index, fill_step, error, pos, any_this_pass, count, thr, passes, step + visit

    init = (canvas, filled, src_index, fill_step, error, jnp.int32(0), jnp.bool_(False), jnp.int32(0),
            jnp.asarray(max_err_threshold, dtype), jnp.int32(0), jnp.int32(0))
    canvas, _, src_index, fill_step, error, _, _, _, _, passes, _ = jax.lax.while_loop(cond, body, init)
    texture = canvas[half : half + out_h, half : half + out_w]
    return EfrosLeungResult(texture, src_index, fill_step, error, passes + 1)


def efros_leung(
    source: Array,
    size: tuple[int, int],
    *,
    key: Array,
    window: int = 11,
    err_threshold: float = ERR_THRESHOLD,
    max_err_threshold: float = MAX_ERR_THRESHOLD,
) -> EfrosLeungResult:
    """Grow a texture pixel by pixel from `source` (Efros & Leung 1999; module docstring).

    Args:
      source: `[H, W, C]` float image, at least `window x window`.
      size: `(height, width)` of the output, any positive size.
      key: PRNG key (keyword-only): the seed patch and every random choice. Same key, same texture.
      window: odd window side (Efros & Leung used 5-25 depending on the texture's scale).
      err_threshold: candidates within `(1 + err_threshold)` of the best SSD (0.1); 0 keeps only
        the best match(es).
      max_err_threshold: initial acceptance threshold on the normalised SSD (0.3), grown by 1.1
        after a pass that fills nothing.

    Returns:
      `EfrosLeungResult` (texture `[*size, C]`, source indices, fill steps, errors, passes).

    Cost: one step per output pixel and pass, each an SSD against all `(H - w + 1)(W - w + 1)`
    source windows: a 24x24 texture from a 32x32 source with w = 11 takes ~1 s on a CPU core.
    """
    if not (isinstance(window, (int, np.integer)) and window >= 3 and window % 2 == 1):
        raise ValueError(f"window must be an odd int >= 3; got {window!r}")
    size = _check_size(size)
    _check_source(source, window)
    if not err_threshold >= 0 or not max_err_threshold > 0:
        raise ValueError(f"err_threshold must be >= 0 and max_err_threshold > 0; got {err_threshold}, {max_err_threshold}")
    return _efros_leung(jnp.asarray(source), key, size=size, window=int(window), err_threshold=float(err_threshold), max_err_threshold=float(max_err_threshold))


# ------------------------------------------------------------------------------ patch-based variant
@functools.partial(jax.jit, static_argnames=("size", "patch", "overlap", "tolerance"))
def _quilt(source, key, *, size, patch, overlap, tolerance):
    out_h, out_w = size
    c = source.shape[-1]
    stride = patch - overlap
    ny = max(1, -(-(out_h - overlap) // stride))
    nx = max(1, -(-(out_w - overlap) // stride))
    big_h, big_w = ny * stride + overlap, nx * stride + overlap
    patches, centres = _windows(source, patch)
    corners = centres - patch // 2
    patches_sq = patches * patches
    dtype = source.dtype
    rows = np.arange(patch)[:, None]
    cols = np.arange(patch)[None, :]

    def body(t, state):
        canvas, idx = state
        ty, tx = t // nx, t % nx
        y, x = ty * stride, tx * stride
        mask = ((rows < overlap) & (ty > 0)) | ((cols < overlap) & (tx > 0))
        mv = jnp.repeat(mask[..., None], c, -1).astype(dtype).reshape(-1)
        win = jax.lax.dynamic_slice(canvas, (y, x, 0), (patch, patch, c)).reshape(-1)
        ssd = patches_sq @ mv - 2.0 * (patches @ (mv * win)) + jnp.sum(mv * win * win)
        ssd = jnp.maximum(ssd, 0.0)
        cand = ssd <= jnp.min(ssd) * (1.0 + tolerance)
        u = jax.random.uniform(jax.random.fold_in(key, t), ssd.shape)
        pick = jnp.argmax(jnp.where(cand, u, -1.0))
        block = patches[pick].reshape(patch, patch, c)
        canvas = jax.lax.dynamic_update_slice(canvas, block, (y, x, 0))
        idx = idx.at[t].set(corners[pick])
        return canvas, idx

    canvas = jnp.zeros((big_h, big_w, c), dtype)
    idx = jnp.zeros((ny * nx, 2), jnp.int32)
    canvas, idx = jax.lax.fori_loop(0, ny * nx, body, (canvas, idx))
    return canvas[:out_h, :out_w], idx.reshape(ny, nx, 2)


def quilt(
    source: Array,
    size: tuple[int, int],
    *,
    key: Array,
    patch: int = 16,
    overlap: int = 4,
    tolerance: float = ERR_THRESHOLD,
) -> tuple[Array, Array]:
    """Patch-based nearest-neighbour synthesis ("image quilting" without the minimum-error boundary
    cut, Efros & Freeman 2001): tiles of `patch x patch` source pixels placed in raster order with
    `overlap` pixels shared with the left and upper neighbours, each chosen uniformly among the
    source patches whose SSD on the overlap is within `(1 + tolerance)` of the best; later tiles
    overwrite the overlap. Much faster than `efros_leung` (one step per tile). One compiled
    `fori_loop` over the tiles.

    Returns `(texture [*size, C], corners [ny, nx, 2])`: the source (row, col) of each tile's
    top-left corner.
    """
    size = _check_size(size)
    if not (isinstance(patch, (int, np.integer)) and patch >= 2):
        raise ValueError(f"patch must be an int >= 2; got {patch!r}")
    if not (isinstance(overlap, (int, np.integer)) and 0 <= overlap < patch):
        raise ValueError(f"overlap must be an int in [0, patch); got {overlap!r}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0; got {tolerance}")
    _check_source(source, patch)
    return _quilt(jnp.asarray(source), key, size=size, patch=int(patch), overlap=int(overlap), tolerance=float(tolerance))
