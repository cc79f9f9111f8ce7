"""Colour preservation for style transfer (Gatys et al. 2016, "Preserving color in neural artistic
style transfer"), both ways: keep the content's colours and transfer only luminance, or recolour the
style image to the content's colour statistics before synthesis.

Images are float NHWC RGB in [0, 1], `[B, H, W, 3]` (any leading axes for the colour-space maps);
every function is batched per image and jit-able.

Colour spaces (`space=`), 3x3 linear maps of RGB (SYNTHESIS.md section 7.2):
  * `"yuv"` (default): torch/image's `rgb2yuv`, which neural-style Lua's `-original_colors 1` uses:
    Y = .299R + .587G + .114B, U = -.14713R - .28886G + .436B, V = .615R - .51499G - .10001B.
    The inverse is the exact matrix inverse (torch/image prints it rounded to 5 decimals:
    R = Y + 1.13983V ...; the two differ by < 1e-4), so that chroma round-trips exactly.
  * `"yuv-gatys"`: the 3-decimal YUV matrix of Gatys' ColourControl notebook
    `[[.299, .587, .114], [-.147, -.288, .436], [.615, -.515, -.1]]`, exact inverse (the notebook's
    inverse is rounded to 3 decimals).
  * `"yiq"`: NTSC YIQ (the space the paper names): I = .595716R - .274453G - .321263B,
    Q = .211456R - .522591G + .311135B.
All three share the luminance row (.299, .587, .114).

Clipping: results are clipped to [0, 1] by default (`clip=True`), as neural-style and Gatys' code
do. A luminance from one image with the chroma of another can leave the RGB gamut; clipped pixels
then no longer keep the content's chroma exactly. With `clip=False` nothing is clipped and the
claims hold exactly (up to float rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.models import base

Array = jax.Array

_FORWARD = {
    "yuv": np.array([[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]]),
    "yuv-gatys": np.array([[0.299, 0.587, 0.114], [-0.147, -0.288, 0.436], [0.615, -0.515, -0.1]]),
    "yiq": np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]),
}
COLOR_SPACES = tuple(_FORWARD)
MATCH_MODES = ("pca", "chol", "sym")


def color_matrix(space: str = "yuv", *, inverse: bool = False) -> np.ndarray:
    """The 3x3 RGB -> `space` matrix (rows Y, U/I, V/Q), or its exact inverse (float64 numpy)."""
    if space not in _FORWARD:
        raise ValueError(f"unknown colour space {space!r}; choose one of {COLOR_SPACES}")
    m = _FORWARD[space]
    return np.linalg.inv(m) if inverse else m.copy()


def _check_rgb(images, what):
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) < 1 or shape[-1] != 3:
        raise ValueError(f"{what} must be RGB with 3 channels in the last axis; got shape {shape}")
    if not jnp.issubdtype(jnp.asarray(images).dtype, jnp.floating):
        raise ValueError(f"{what} must be floating point in [0, 1]; got dtype {images.dtype}")


def _apply(m: np.ndarray, x: Array) -> Array:
    return jnp.einsum("...c,dc->...d", x, jnp.asarray(m, x.dtype))


def rgb_to(images: Array, space: str = "yuv") -> Array:
    """RGB `[..., 3]` -> `space` `[..., 3]` (Y first). No range check: values may be any floats."""
    _check_rgb(images, "images")
    return _apply(color_matrix(space), jnp.asarray(images))


def to_rgb(images: Array, space: str = "yuv") -> Array:
    """`space` `[..., 3]` -> RGB `[..., 3]` by the exact inverse matrix (not clipped)."""
    _check_rgb(images, "images")
    return _apply(color_matrix(space, inverse=True), jnp.asarray(images))


def luminance(images: Array) -> Array:
    """Y = .299R + .587G + .114B, `[..., 3] -> [...]` (the same in every space here)."""
    _check_rgb(images, "images")
    return rgb_to(images, "yuv")[..., 0]


def transfer_luminance(generated: Array, content: Array, *, space: str = "yuv", clip: bool = True) -> Array:
    """The luminance of `generated` with the chroma of `content`, `[B, H, W, 3]` in [0, 1].

    neural-style's `-original_colors 1` (Lua L442-446, `space="yuv"`) and the last step of Gatys'
    luminance-only transfer (`space="yuv-gatys"`: Gatys takes the output's channel mean as Y, which
    equals this Y for the grey images luminance-only synthesis produces). `content` must have the
    same shape (resize it first) or a leading axis of 1. Clipped to [0, 1] unless `clip=False`
    (module docstring)."""
    _check_rgb(generated, "generated")
    _check_rgb(content, "content")
    generated, content = jnp.asarray(generated), jnp.asarray(content)
    if content.ndim != generated.ndim or content.shape[1:] != generated.shape[1:] or content.shape[0] not in (1, generated.shape[0]):
        raise ValueError(f"content {content.shape} must match generated {generated.shape} (or have batch 1): resize it first")
    base.check_pixel_values(content, "content images")
    y = rgb_to(generated, space)[..., :1]
    uv = rgb_to(content.astype(generated.dtype), space)[..., 1:]
    uv = jnp.broadcast_to(uv, y.shape[:-1] + (2,))
    out = to_rgb(jnp.concatenate([y, uv], axis=-1), space)
    return jnp.clip(out, 0.0, 1.0) if clip else out


def luminance_only(style: Array, content: Array) -> tuple[Array, Array]:
    """Gatys' luminance-only inputs (ColourControl `cp_mode='lum'`): both images become their
    luminance replicated x3, and the style's luminance is shifted to the content's mean luminance
    (per image) and clipped to [0, 1]. Returns `(style_lum, content_lum)`; synthesise with them,
    then `transfer_luminance(result, content, space="yuv-gatys")`."""
    _check_rgb(style, "style")
    _check_rgb(content, "content")
    style, content = jnp.asarray(style), jnp.asarray(content)
    ys, yc = luminance(style), luminance(content)
    ys = ys - jnp.mean(ys, axis=(-2, -1), keepdims=True) + jnp.mean(yc, axis=(-2, -1), keepdims=True)
    rep = lambda y: jnp.repeat(y[..., None], 3, axis=-1)  # noqa: E731
    return rep(jnp.clip(ys, 0.0, 1.0)), rep(yc)


def _sqrtm_sym(c: Array) -> Array:
    w, v = jnp.linalg.eigh(c)
    return jnp.einsum("...ij,...j,...kj->...ik", v, jnp.sqrt(jnp.maximum(w, 0.0)), v)


def _stats(x: Array, eps: float):
    flat = x.reshape(x.shape[0], -1, 3)
    mu = jnp.mean(flat, axis=1)
    centred = flat - mu[:, None, :]
    cov = jnp.einsum("bnc,bnd->bcd", centred, centred) / flat.shape[1] + eps * jnp.eye(3, dtype=x.dtype)[None]
    return mu, centred, cov


def match_color(target: Array, source: Array, *, mode: str = "pca", eps: float = 1e-5, clip: bool = True) -> Array:
    """Recolour `target` so its colour mean and covariance are `source`'s (a linear map of RGB),
    Gatys et al.'s `match_color` (ColourControl / ScaleControl notebooks). For style transfer with
    colour preservation, call it as `match_color(style, content)` before synthesis.

    Args:
      target: `[B, H, W, 3]` in [0, 1], the images to recolour.
      source: `[B or 1, H', W', 3]` in [0, 1], whose colour statistics are taken (any size).
      mode: the square-root factor of the covariances: `"pca"` (symmetric square roots,
        `x -> Q_s Q_t^{-1} x`, Gatys' default), `"chol"` (Cholesky factors `L_s L_t^{-1} x`),
        `"sym"` (the symmetric map `Q_t^{-1} (Q_t C_s Q_t)^{1/2} Q_t^{-1} x`, the optimal-transport
        map between the two Gaussians).
      eps: added to both covariances' diagonals (Gatys: 1e-5), so flat images work.
      clip: clip the result to [0, 1] (Gatys does). Unclipped, the result has the source's mean
        exactly and its covariance up to the `eps` regularisation: `C_s + O(eps)`.

    Returns:
      `[B, H, W, 3]`.
    """
    _check_rgb(target, "target")
    _check_rgb(source, "source")
    target, source = jnp.asarray(target), jnp.asarray(source)
    if target.ndim != 4 or source.ndim != 4:
        raise ValueError(f"target and source must be [B, H, W, 3]; got {target.shape} and {source.shape}")
    if source.shape[0] not in (1, target.shape[0]):
        raise ValueError(f"source batch {source.shape[0]} must be 1 or the target's {target.shape[0]}")
    if mode not in MATCH_MODES:
        raise ValueError(f"mode must be one of {MATCH_MODES}; got {mode!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0; got {eps}")
    base.check_pixel_values(target, "target images")
    base.check_pixel_values(source, "source images")
    source = source.astype(target.dtype)
    mu_t, t, ct = _stats(target, eps)
    mu_s, _, cs = _stats(source, eps)
    cs = jnp.broadcast_to(cs, ct.shape)
    mu_s = jnp.broadcast_to(mu_s, mu_t.shape)
    if mode == "chol":
        lt, ls = jnp.linalg.cholesky(ct), jnp.linalg.cholesky(cs)
        m = ls @ jnp.linalg.inv(lt)
    elif mode == "pca":
        m = _sqrtm_sym(cs) @ jnp.linalg.inv(_sqrtm_sym(ct))
    else:
        qt = _sqrtm_sym(ct)
        qt_inv = jnp.linalg.inv(qt)
        m = qt_inv @ _sqrtm_sym(qt @ cs @ qt) @ qt_inv
    out = jnp.einsum("bij,bnj->bni", m, t) + mu_s[:, None, :]
    out = out.reshape(target.shape)
    return jnp.clip(out, 0.0, 1.0) if clip else out
