"""Losses of texture synthesis and style transfer as pure functions, with each peer's convention named.

Every function takes features NHWC `[B, H, W, C]` (a batch of *experiments*: each row its own image
and target) and returns one value per experiment, `[B]`. Targets broadcast: a target with a leading
axis of 1 serves every experiment. Nothing here is averaged over the batch: sum or average `[B]`
yourself (pytorch/examples and pystiche average over the batch; with one image per run as in
neural-style the two agree).

Gram matrices and style losses (SYNTHESIS.md section 6; C channels, M = H*W):

  ================  ====================  ==========================  =================================
  convention        Gram divided by       reduction of (G - A)^2      peers
  ================  ====================  ==========================  =================================
  "neural-style"    C*H*W                 mean over C^2               neural-style (Lua, pt),
                                                                      fast-neural-style, pytorch/examples
  "pystiche"        H*W                   mean over C^2               pystiche GramLoss(normalize=True),
                                                                      magenta, Gatys' NeuralImageSynthesis
                                                                      (GramMSE; it weights layers by 1/N^2)
  "gatys"           H*W                   mean over C^2, times 1/4    Gatys et al. 2015/2016, the paper's
                                                                      E_l = sum (G - A)^2 / (4 N^2 M^2)
                                                                      with unnormalised G, A
  "wasserstein"     (mean, covariance)    W2 between Gaussians        style-transfer-pytorch HEAD (2023)
  ================  ====================  ==========================  =================================

Conversion factors (same features, same target image size): pystiche = C^2 x neural-style,
gatys = C^2 / 4 x neural-style (65536 x at C = 512). The "gatys" convention normalises both Grams by
their own H*W before comparing, which equals the paper's formula when the style and the generated
image have the same size, and stays meaningful when they do not (the paper never compares sizes).

A style *target* is what `style_target` returns: the Gram matrix `[B, C, C]` in the convention's
normalisation, or for "wasserstein" a `Moments(mean [B, C], second raw moment [B, C, C])` (both
divided by H*W). Targets of several style images blend linearly (`blend_targets`), as neural-style
and style-transfer-pytorch blend theirs.

Total variation (SYNTHESIS.md section 5), `x` an image, forward differences
`dy = x[i+1, j] - x[i, j]`, `dx = x[i, j+1] - x[i, j]`:

  ===================  ========================================================  =====================
  form                 value per experiment                                       peers
  ===================  ========================================================  =====================
  "squared"            mean over C x (H-1) x (W-1) of (dy^2 + dx^2)               pystiche (exponent 2)
  "half-sum-squared"   1/2 sum over C x (H-1) x (W-1) of (dy^2 + dx^2)            neural-style Lua,
                                                                                  fast-neural-style Lua
                                                                                  (they code only its
                                                                                  gradient)
  "l1"                 sum |dy| (all (H-1) x W) + sum |dx| (all H x (W-1))        neural-style-pt, lucid
                                                                                  (tf.image.total_variation)
  "magenta"            sum dy^2 / (2 (H-1) W C) + sum dx^2 / (2 H (W-1) C)        magenta learning.py
  "replicate-squared"  replicate-pad right/bottom, mean over C H W of dy^2+dx^2   style-transfer-pytorch
                                                                                  <= 2021
  "nine-point"         replicate-pad 1, 2 (mean d1^2/3 + mean d2^2/3              style-transfer-pytorch
                       + mean d3^2/12 + mean d4^2/12), two axes + two diagonals   HEAD
  "beta"               mean over (H-1) x (W-1) of (sum over C of dy^2 + dx^2)     Mahendran & Vedaldi
                       to the power beta / 2 (`beta=2`: C x "squared")            2015 (R_V^beta)
  ===================  ========================================================  =====================

This is the library's one total variation: `jaxviz.synthesis.regularizers.total_variation` is this
function, and feature inversion's `tv_prior` is the "beta" form of the image divided by its range.

Content loss: "mean" = mean over H W C of (F - P)^2 (neural-style, pystiche, pytorch/examples);
"half-sum" = 1/2 sum (F - P)^2 (Gatys et al.'s paper).

The scale of the image these losses see is the caller's: neural-style computes TV on its
preprocessed image (RGB->BGR, x 256, minus the mean pixel), jaxviz images are in [0, 1]; the style
module converts weights where it states so.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

GRAM_NORMALIZATIONS = ("chw", "hw", "none")
STYLE_CONVENTIONS = ("neural-style", "pystiche", "gatys", "wasserstein")
CONTENT_FORMS = ("mean", "half-sum")
TV_FORMS = ("squared", "half-sum-squared", "l1", "magenta", "replicate-squared", "nine-point", "beta")

#: Peer names accepted wherever a convention or a TV form is asked for.
STYLE_ALIASES = {
    "neural-style-pt": "neural-style",
    "fast-neural-style": "neural-style",
    "pytorch-examples": "neural-style",
    "magenta": "pystiche",
    "gatys-code": "pystiche",
    "style-transfer-pytorch": "wasserstein",
    "w2": "wasserstein",
}
TV_ALIASES = {
    "pystiche": "squared",
    "neural-style-lua": "half-sum-squared",
    "fast-neural-style": "half-sum-squared",
    "neural-style-pt": "l1",
    "lucid": "l1",
    "style-transfer-pytorch-2021": "replicate-squared",
    "style-transfer-pytorch": "nine-point",
    "mahendran-vedaldi": "beta",
}

#: Newton-Schulz iterations and the diagonal regulariser of the Wasserstein-2 style distance
#: (style-transfer-pytorch HEAD: `sqrtm_ns_lyap(num_iters=12)`, `eps=1e-4`).
W2_ITERATIONS = 12
W2_EPS = 1e-4


class Moments(NamedTuple):
    """Target of the "wasserstein" convention: channel means `[B, C]` and second raw moments
    `E[f f^T]` `[B, C, C]` (divided by H*W). Raw moments, not covariances, so that targets of
    several images blend linearly (as style-transfer-pytorch blends them)."""

    mean: Array
    srm: Array


# ------------------------------------------------------------------------------------------ checks
def _check_features(features, what="features") -> None:
    shape = getattr(features, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"{what} must be NHWC [B, H, W, C]; got shape {shape}")
    if shape[1] * shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"{what} are empty (shape {tuple(shape)})")


def style_convention(name: str) -> str:
    """The canonical convention name for `name` (a convention or a peer's name)."""
    canon = STYLE_ALIASES.get(name, name)
    if canon not in STYLE_CONVENTIONS:
        raise ValueError(
            f"unknown style convention {name!r}; choose one of {STYLE_CONVENTIONS} "
            f"(or a peer's name: {sorted(STYLE_ALIASES)})"
        )
    return canon


def tv_form(name: str) -> str:
    """The canonical total-variation form for `name` (a form or a peer's name)."""
    canon = TV_ALIASES.get(name, name)
    if canon not in TV_FORMS:
        raise ValueError(f"unknown total-variation form {name!r}; choose one of {TV_FORMS} (or a peer's name: {sorted(TV_ALIASES)})")
    return canon


# ------------------------------------------------------------------------------------------ Gram
def gram(features: Array, *, normalize: str = "chw") -> Array:
    """Gram matrices `G[b] = F_b^T F_b` of NHWC features, `[B, H, W, C] -> [B, C, C]`.

    Args:
      features: `[B, H, W, C]`.
      normalize: `"chw"` divides by C*H*W (neural-style, fast-neural-style, pytorch/examples),
        `"hw"` by H*W (pystiche with normalize=True, magenta, Gatys' code), `"none"` leaves
        `F F^T` (Gatys' paper, pystiche's `gram_matrix` default).
    """
    _check_features(features)
    if normalize not in GRAM_NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {GRAM_NORMALIZATIONS}; got {normalize!r}")
    _, h, w, c = features.shape
    g = jnp.einsum("bhwc,bhwd->bcd", features, features)
    if normalize == "chw":
        g = g / (c * h * w)
    elif normalize == "hw":
        g = g / (h * w)
    return g


def moments(features: Array) -> Moments:
    """Channel means `[B, C]` and second raw moments `[B, C, C]` (the "wasserstein" target)."""
    _check_features(features)
    _, h, w, _ = features.shape
    return Moments(jnp.mean(features, axis=(1, 2)), gram(features, normalize="hw"))


def style_target(features: Array, *, convention: str = "neural-style"):
    """What a style image's features are compared through, in `convention` (module docstring):
    the Gram matrix `[B, C, C]` (normalised by C*H*W for "neural-style", by H*W for "pystiche" and
    "gatys") or `Moments` for "wasserstein"."""
    convention = style_convention(convention)
    if convention == "wasserstein":
        return moments(features)
    return gram(features, normalize="chw" if convention == "neural-style" else "hw")


def blend_targets(targets: Sequence, weights: Optional[Sequence[float]] = None):
    """Weighted sum of style targets, weights normalised to sum 1 (neural-style's `-style_blend_weights`,
    style-transfer-pytorch's `style_weights`). Equal weights by default. Weights must be >= 0 with a
    positive sum (concrete numbers)."""
    targets = list(targets)
    if not targets:
        raise ValueError("blend_targets needs at least one target")
    if weights is None:
        weights = [1.0] * len(targets)
    weights = [float(w) for w in weights]
    if len(weights) != len(targets):
        raise ValueError(f"{len(targets)} targets but {len(weights)} weights")
    if any(w < 0 for w in weights) or not sum(weights) > 0:
        raise ValueError(f"blend weights must be >= 0 with a positive sum; got {weights}")
    total = sum(weights)
    scaled = [jax.tree_util.tree_map(lambda t, w=w: t * (w / total), t) for t, w in zip(targets, weights)]
    return jax.tree_util.tree_map(lambda *ts: sum(ts[1:], ts[0]), *scaled)


def gram_loss(features: Array, target: Array, *, convention: str = "neural-style") -> Array:
    """Gram-matrix style loss of one layer, `[B]`, in a named convention (module docstring).

    Args:
      features: generated image's features `[B, H, W, C]`.
      target: Gram matrices `[B or 1, C, C]` from `style_target(style_features, convention=...)`.
      convention: "neural-style" (`mean((G/CHW - A)^2)`, neural-style's StyleLoss without its
        weight), "pystiche" (`mean((G/HW - A)^2)`), "gatys" (pystiche's / 4: the paper's E_l).
    """
    convention = style_convention(convention)
    if convention == "wasserstein":
        raise ValueError("gram_loss compares Gram matrices; use wasserstein_style_loss (or style_loss) for 'wasserstein'")
    g = style_target(features, convention=convention)
    target = jnp.asarray(target)
    if target.ndim != 3 or target.shape[-2:] != g.shape[-2:]:
        raise ValueError(f"target must be a Gram matrix [B or 1, {g.shape[-1]}, {g.shape[-1]}]; got shape {target.shape}")
    loss = jnp.mean(jnp.square(g - target.astype(g.dtype)), axis=(1, 2))
    return loss / 4 if convention == "gatys" else loss


# ------------------------------------------------------------------------------ Wasserstein-2
def _newton_schulz(a: Array, num_iters: int) -> Array:
    # Coupled Newton-Schulz iteration on a / ||a||_F: y -> a^{1/2} / sqrt||a||, z -> a^{-1/2} sqrt||a||.
    norm = jnp.sqrt(jnp.sum(jnp.square(a), axis=(-2, -1), keepdims=True))
    eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
    y = a / norm
    z = eye

    def body(_, yz):
        y, z = yz
        t = 0.5 * (3.0 * eye - z @ y)
        return y @ t, t @ z

    y, _ = jax.lax.fori_loop(0, num_iters, body, (y, z))
    return y * jnp.sqrt(norm)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _sqrtm(a, num_iters):
    return _newton_schulz(a, num_iters)


def _sqrtm_fwd(a, num_iters):
    s = _newton_schulz(a, num_iters)
    return s, s


def _sqrtm_bwd(num_iters, s, g):
    # The gradient of the exact square root solves the Lyapunov equation S X + X S = g; it is
    # approximated by the same number of Newton-Schulz-type iterations on [[S, g], [0, -S]]
    # (Lin & Maji's "Lyapunov" backward, which style-transfer-pytorch uses).
    norm = jnp.sqrt(jnp.sum(jnp.square(s), axis=(-2, -1), keepdims=True))
    eye3 = 3.0 * jnp.broadcast_to(jnp.eye(s.shape[-1], dtype=s.dtype), s.shape)
    a = s / norm
    q = g / norm
    at = lambda m: jnp.swapaxes(m, -1, -2)  # noqa: E731

    def body(_, aq):
        a, q = aq
        k = eye3 - a @ a
        q = 0.5 * (q @ k - at(a) @ (at(a) @ q - q @ a))
        return 0.5 * (a @ k), q

    _, q = jax.lax.fori_loop(0, num_iters, body, (a, q))
    return (0.5 * q,)


_sqrtm.defvjp(_sqrtm_fwd, _sqrtm_bwd)


def sqrtm_newton_schulz(a: Array, num_iters: int = W2_ITERATIONS) -> Array:
    """Square roots of symmetric positive definite matrices `[..., C, C]` by `num_iters` coupled
    Newton-Schulz iterations (matmuls only: fast on accelerators, no eigendecomposition), with the
    matching Lyapunov-iteration backward pass, as style-transfer-pytorch's `sqrtm_ns_lyap`.
    Converges when the matrix is well conditioned; 12 iterations is style-transfer-pytorch's choice."""
    if num_iters < 0:
        raise ValueError(f"num_iters must be >= 0; got {num_iters}")
    return _sqrtm(a, int(num_iters))


def _covariance(m: Moments, eps: float) -> Array:
    cov = m.srm - jnp.einsum("bc,bd->bcd", m.mean, m.mean)
    return cov + eps * jnp.eye(cov.shape[-1], dtype=cov.dtype)[None]


def wasserstein_style_loss(
    features: Array, target: Moments, *, eps: float = W2_EPS, num_iters: int = W2_ITERATIONS
) -> Array:
    """Squared Wasserstein-2 distance between Gaussians fitted to the features and to the target, `[B]`,
    per channel, as style-transfer-pytorch HEAD's `StyleLossW2`:

        mean_c (mu - mu_t)^2 + (1/C) tr(S_t + S - 2 (S_t^{1/2} S S_t^{1/2})^{1/2}),

    covariances `S = E[f f^T] - mu mu^T + eps I` of the H*W positions, square roots by
    `sqrtm_newton_schulz(num_iters)`. `target` is `moments(style_features)` (or a blend).
    """
    if not isinstance(target, Moments):
        raise ValueError("the 'wasserstein' target is losses.Moments(mean, srm): build it with style_target(..., convention='wasserstein')")
    m = moments(features)
    dtype = m.mean.dtype
    target = Moments(jnp.asarray(target.mean, dtype), jnp.asarray(target.srm, dtype))
    if target.srm.shape[-2:] != m.srm.shape[-2:]:
        raise ValueError(f"target has {target.srm.shape[-1]} channels, features have {m.srm.shape[-1]}")
    cov = _covariance(m, eps)
    cov_t = _covariance(target, eps)
    root_t = sqrtm_newton_schulz(cov_t, num_iters)
    cross = sqrtm_newton_schulz(root_t @ cov @ root_t, num_iters)
    mean_term = jnp.mean(jnp.square(m.mean - target.mean), axis=-1)
    cov_term = jnp.mean(jnp.diagonal(cov_t + cov - 2.0 * cross, axis1=-2, axis2=-1), axis=-1)
    return mean_term + cov_term


def style_distance(features: Array, target, *, convention: str = "neural-style") -> Array:
    """One layer's style loss `[B]` in `convention`: `gram_loss` or `wasserstein_style_loss`."""
    if style_convention(convention) == "wasserstein":
        return wasserstein_style_loss(features, target)
    return gram_loss(features, target, convention=convention)


# ------------------------------------------------------------------------------ content and sums
def content_loss(features: Array, target: Array, *, form: str = "mean") -> Array:
    """Feature reconstruction loss `[B]`: "mean" = mean over H W C of (F - P)^2 (neural-style's
    ContentLoss without its weight, pystiche's FeatureReconstructionLoss, pytorch/examples' MSE);
    "half-sum" = 1/2 sum (F - P)^2 (Gatys et al.). `target` `[B or 1, H, W, C]`, same H, W, C."""
    _check_features(features)
    if form not in CONTENT_FORMS:
        raise ValueError(f"content loss form must be one of {CONTENT_FORMS}; got {form!r}")
    target = jnp.asarray(target)
    if target.ndim != 4 or target.shape[1:] != features.shape[1:]:
        raise ValueError(f"content target shape {target.shape} does not match features {features.shape}")
    sq = jnp.square(features - target.astype(features.dtype))
    return jnp.mean(sq, axis=(1, 2, 3)) if form == "mean" else 0.5 * jnp.sum(sq, axis=(1, 2, 3))


def weighted_sum(losses: Mapping[str, Array], weights: Union[None, float, Mapping[str, float]] = None) -> Array:
    """`sum_l w_l * losses[l]` over layers, `[B]`. `weights`: one number for every layer, a mapping
    layer -> weight (a layer missing from it is an error), or `None` (all 1)."""
    if not losses:
        raise ValueError("weighted_sum needs at least one loss")
    total = None
    for name, value in losses.items():
        if weights is None:
            w = 1.0
        elif isinstance(weights, Mapping):
            if name not in weights:
                raise ValueError(f"no weight for layer {name!r}; weights are given for {sorted(weights)}")
            w = weights[name]
        else:
            w = weights
        term = w * value
        total = term if total is None else total + term
    return total


def style_loss(
    features: Mapping[str, Array],
    targets: Mapping[str, object],
    *,
    convention: str = "neural-style",
    layer_weights: Union[None, float, Mapping[str, float]] = None,
) -> Array:
    """`sum_l w_l * style_distance(features[l], targets[l])` over the target layers, `[B]`.

    neural-style gives every style layer the same weight (its `-style_weight`); Gatys' code uses
    `w_l = sw / N_l^2` with "pystiche"-normalised Grams; style-transfer-pytorch 256/64/16/4/1 over
    relu1_1..relu5_1, normalised to sum 1.
    """
    missing = [name for name in targets if name not in features]
    if missing:
        raise ValueError(f"no features for style layer(s) {missing}; features have {sorted(features)}")
    return weighted_sum({name: style_distance(features[name], t, convention=convention) for name, t in targets.items()}, layer_weights)


# ------------------------------------------------------------------------------ total variation
def total_variation(images: Array, *, form: str = "squared", beta: float = 2.0) -> Array:
    """Total variation of NHWC images `[B, H, W, C]`, `[B]`, in a named form (module docstring):
    "squared" (pystiche), "half-sum-squared" (neural-style Lua: its coded gradient is this loss's),
    "l1" (neural-style-pt, lucid), "magenta", "replicate-squared" (style-transfer-pytorch <= 2021),
    "nine-point" (style-transfer-pytorch HEAD), "beta" (Mahendran & Vedaldi's `R_V^beta`, exponent
    `beta` > 0; for `beta` < 2 the derivative where a pixel's differences are all zero is taken as 0,
    not infinite). Peer names are accepted too (`TV_ALIASES`). `beta` is for the "beta" form only."""
    _check_features(images, "images")
    form = tv_form(form)
    if form != "beta" and beta != 2.0:
        raise ValueError(f"beta applies to the 'beta' total-variation form only; got form {form!r} with beta={beta}")
    x = images
    _, h, w, c = x.shape
    if form == "beta":
        if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)) \
                or not math.isfinite(beta) or beta <= 0:
            raise ValueError(f"beta must be a finite number > 0; got {beta!r}")
        if h < 2 or w < 2:
            raise ValueError(f"total variation form 'beta' needs at least 2x2 pixels; got {h}x{w}")
        dy = x[:, 1:, :-1] - x[:, :-1, :-1]
        dx = x[:, :-1, 1:] - x[:, :-1, :-1]
        sq = jnp.sum(jnp.square(dy) + jnp.square(dx), axis=-1)
        if beta == 2.0:
            return jnp.mean(sq, axis=(1, 2))
        safe = jnp.where(sq > 0, sq, 1.0)  # sq^(beta/2) has an infinite derivative at 0 for beta < 2
        return jnp.mean(jnp.where(sq > 0, safe ** (beta / 2.0), 0.0), axis=(1, 2))
    if form in ("squared", "half-sum-squared"):
        if h < 2 or w < 2:
            raise ValueError(f"total variation form {form!r} needs at least 2x2 pixels; got {h}x{w}")
        dy = x[:, 1:, :-1] - x[:, :-1, :-1]
        dx = x[:, :-1, 1:] - x[:, :-1, :-1]
        s = jnp.square(dy) + jnp.square(dx)
        return jnp.mean(s, axis=(1, 2, 3)) if form == "squared" else 0.5 * jnp.sum(s, axis=(1, 2, 3))
    if form == "l1":
        dy = x[:, 1:] - x[:, :-1]
        dx = x[:, :, 1:] - x[:, :, :-1]
        return jnp.sum(jnp.abs(dy), axis=(1, 2, 3)) + jnp.sum(jnp.abs(dx), axis=(1, 2, 3))
    if form == "magenta":
        if h < 2 or w < 2:
            raise ValueError(f"total variation form 'magenta' needs at least 2x2 pixels; got {h}x{w}")
        dy = x[:, 1:] - x[:, :-1]
        dx = x[:, :, 1:] - x[:, :, :-1]
        return (
            jnp.sum(jnp.square(dy), axis=(1, 2, 3)) / (2 * (h - 1) * w * c)
            + jnp.sum(jnp.square(dx), axis=(1, 2, 3)) / (2 * h * (w - 1) * c)
        )
    if form == "replicate-squared":
        p = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
        dx = p[:, :-1, 1:] - p[:, :-1, :-1]
        dy = p[:, 1:, :-1] - p[:, :-1, :-1]
        return jnp.mean(jnp.square(dx) + jnp.square(dy), axis=(1, 2, 3))
    # "nine-point"
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    mid = p[:, 1:-1, 1:-1]
    d1 = p[:, 1:-1, 2:] - mid
    d2 = p[:, 2:, 1:-1] - mid
    d3 = p[:, 1:, 1:] - p[:, :-1, :-1]
    d4 = p[:, 1:, :-1] - p[:, :-1, 1:]
    msq = lambda d: jnp.mean(jnp.square(d), axis=(1, 2, 3))  # noqa: E731
    return 2.0 * (msq(d1) / 3 + msq(d2) / 3 + msq(d3) / 12 + msq(d4) / 12)


# ------------------------------------------------------------------------------ gradient scaling
@jax.custom_vjp
def normalize_gradient(x: Array, weight: Array) -> Array:
    """Identity on `x` `[B, ...]` whose backward pass rescales each experiment's incoming gradient
    to L1 norm `weight`: `g -> weight * g / (sum |g| + 1e-8)` per row. neural-style's
    `-normalize_gradients` (Lua L478, L556) does this to each loss module's gradient; use it as
    `loss_fn(normalize_gradient(features, w))` with the loss *unweighted* (the weight is applied
    here, to the gradient)."""
    return x


def _ng_fwd(x, weight):
    return x, weight


def _ng_bwd(weight, g):
    axes = tuple(range(1, g.ndim))
    norm = jnp.sum(jnp.abs(g), axis=axes, keepdims=True)
    w = jnp.asarray(weight, g.dtype)
    if w.ndim == 1:  # one weight per experiment
        w = w.reshape(w.shape + (1,) * (g.ndim - 1))
    return g * (w / (norm + 1e-8)), jnp.zeros_like(weight)


normalize_gradient.defvjp(_ng_fwd, _ng_bwd)
