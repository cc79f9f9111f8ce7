"""Low-dimensional embeddings of feature vectors: PCA, exact t-SNE, their quality, and image grids.

t-SNE (van der Maaten & Hinton, 2008) is implemented exactly (all pairs, O(M^2) memory and time per
step: fine for a few thousand points) and follows scikit-learn's optimisation schedule, so the
results are comparable with `sklearn.manifold.TSNE`:

  * input similarities from squared Euclidean distances, each point's Gaussian precision found by
    bisection so that its conditional distribution has entropy `log(perplexity)` (all rows at once);
  * `P` symmetrised, `(P + P^T) / sum`, and multiplied by `early_exaggeration` (12) for the first
    `exaggeration_steps` (250) iterations;
  * gradient descent with momentum 0.5 during exaggeration and 0.8 after, and per-coordinate gains
    (delta-bar-delta: +0.2 where the gradient's sign opposes the last update, x0.8 otherwise, at
    least 0.01) as in van der Maaten's reference implementation; the update and the gains restart
    when the exaggeration ends (as scikit-learn does);
  * learning rate `"auto"` = `max(M / early_exaggeration / 4, 50)`;
  * initialisation by PCA scaled so that the first coordinate has standard deviation 1e-4;
  * a fixed number of steps (scikit-learn also stops early on a tiny gradient norm or 300 steps
    without progress, which rarely happens before 1000 steps on real data).

Loops (`jaxviz.loops`): by default (`loop="scan"`) the whole optimisation is one jit-compiled
program (a `lax.scan` per phase); `loop="python"` runs the same jitted step from a Python loop, with
identical results (difference 0 at M = 500 and 1500). Unlike the library's other loops, scan is the
default on CPU too, because it measured faster for t-SNE's small steps, where per-step dispatch
weighs most (1000 steps, scikit-learn digits):
  * idle 2-core CPU (earlier measurement, the same programs as a `fori_loop`): M = 500: 0.41 s
    scan against 0.69 s Python loop; M = 1500: 5.6 s against 7.9 s;
  * re-measured on the shared 2-core CPU under load (load average 13-17, so wall times vary 3x and
    process CPU time, min / median of 7 runs, is the fairer number): M = 500: scan 0.49 / 1.12 s,
    Python loop 0.78 / 1.37 s; M = 1500: scan 4.11 / 4.43 s, Python loop 3.93 / 5.37 s.

Validation: concrete inputs with NaN or inf are refused with a `ValueError` naming the rows; traced
ones give NaN results. Duplicated points are legal data: their distances are 0, the perplexity
search keeps finite precisions, and data without variance start (and stay) at one point.

Image grids (`image_grid`): a one-to-one assignment of points to grid cells (linear assignment on
the min-max scaled embedding, oriented like a scatter plot: larger `y` higher up), every image
whole in its own cell, gaps and empty cells in mid grey.

    emb = tsne(feats, key=jax.random.key(0))                  # [M, 2]
    trustworthiness(feats, emb, k=5), knn_accuracy(emb, labels, k=5)
    mosaic = image_grid(images, emb, thumbnail=20)            # [rows * 21 - 1, cols * 21 - 1, 3]
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxviz import imaging, loops
from jaxviz._util import is_traced
from jaxviz.models.base import check_pixel_values

Array = jax.Array


def _check_finite(x, name: str) -> None:
    """Concrete arrays must be finite (a `ValueError` naming the rows); traced ones pass and
    propagate NaN."""
    if is_traced(x) or x.size == 0:
        return
    with jax.ensure_compile_time_eval():  # eager even inside a user's jit (x is concrete)
        finite = np.asarray(jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1))
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} contains non-finite values (NaN or inf) in {rows.size} of {x.shape[0]} rows, e.g. "
            f"{rows[:5].tolist()}: an embedding of them would mean nothing. Drop or repair those points."
        )


def _check_points(x, name: str = "x", min_points: int = 2) -> Array:
    """`x` as a floating `[M, D]` array with `M >= min_points`, `D >= 1` and (when concrete) finite
    values; otherwise a `ValueError` saying what is wrong."""
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [M, D] (one row per point); got shape {x.shape}")
    if x.shape[0] < min_points:
        raise ValueError(f"{name} needs at least {min_points} points; got {x.shape[0]} (shape {x.shape})")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has no coordinates (shape {x.shape}): each point needs D >= 1 numbers")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    _check_finite(x, name)
    return x


def _centre(x: Array) -> Array:
    """`x` minus its mean, computed as `(x - x[0]) - mean(x - x[0])`: identical points become exact
    zeros, and distances lose less to cancellation than on uncentred data."""
    x = x - x[:1]
    return x - jnp.mean(x, axis=0, keepdims=True)


def _sq_distances(x: Array) -> Array:
    """`[M, M]` squared Euclidean distances, clipped at 0, exact 0 on the diagonal."""
    sq = jnp.sum(x * x, axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    d = jnp.maximum(d, 0.0)
    return jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d)


# --------------------------------------------------------------------------- PCA
@functools.partial(jax.jit, static_argnames=("k",))
def _pca(x, k):
    xc = _centre(x)
    _, s, vt = jnp.linalg.svd(xc, full_matrices=False)
    vt = vt[:k]
    # Fix the sign: the largest-magnitude loading of each component is positive (sklearn's svd_flip).
    pivot = jnp.take_along_axis(vt, jnp.argmax(jnp.abs(vt), axis=1)[:, None], axis=1)
    vt = vt * jnp.where(pivot < 0, -1.0, 1.0).astype(vt.dtype)
    var = s[:k] ** 2 / (x.shape[0] - 1)
    return xc @ vt.T, vt, var


def pca(x, k: int) -> tuple[Array, Array, Array]:
    """Principal component analysis by SVD of the centred data.

    Args:
      x: `[M, D]` finite points, `M >= 2`.
      k: number of components, `1 <= k <= min(M, D)`.

    Returns:
      `(projected [M, k], components [k, D], explained_variance [k])`: coordinates of the centred
      points on the orthonormal components (largest variance first), and each component's variance
      (`s^2 / (M - 1)`, as scikit-learn). Signs: each component's largest-magnitude loading is
      positive. Identical points project to exact zeros (variance 0; the components are then an
      arbitrary orthonormal set).
    """
    x = _check_points(x)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= min(x.shape):
        raise ValueError(f"k must be an integer in [1, {min(x.shape)}] (= min(M, D)) for data of shape {x.shape}; got {k!r}")
    return _pca(x, int(k))


# --------------------------------------------------------------------------- t-SNE: input similarities
def conditional_probabilities(
    sq_distances, perplexity: float = 30.0, *, tol: float = 1e-5, steps: int = 100
) -> tuple[Array, Array]:
    """Row-wise Gaussian conditionals `p_{j|i}` with entropy `log(perplexity)` (nats), by bisection.

    Each row's precision `beta_i` (= `1 / (2 sigma_i^2)`) is searched like scikit-learn's
    `_binary_search_perplexity` (start at 1, double/halve until bracketed, then bisect), for all rows
    at once. Distances are shifted by each row's smallest one before exponentiating (the entropy
    does not change), which avoids underflow of all `exp(-beta d)` for far-apart data.

    Rows whose distances are all equal (e.g. identical points) cannot reach the target: their
    entropy is `log(M - 1)` whatever `beta`, and they come out uniform. `beta` stays finite (it is
    capped at the dtype's largest number), so zero distances never meet an infinite precision.

    Args:
      sq_distances: `[M, M]` squared distances, finite and `>= 0` (the diagonal is ignored), `M >= 2`.
      perplexity: effective number of neighbours, `0 < perplexity < M`.
      tol: stop when every row's entropy is within `tol` of the target.
      steps: at most this many bisection steps.

    Returns:
      `(P [M, M], beta [M])`: rows sum to 1, `P[i, i] = 0`.
    """
    d = jnp.asarray(sq_distances)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] < 2:
        raise ValueError(f"sq_distances must be square [M, M] with M >= 2; got shape {d.shape}")
    if not jnp.issubdtype(d.dtype, jnp.floating):
        d = d.astype(jnp.float32)
    _check_finite(d, "sq_distances")
    if not is_traced(d) and bool(np.any(np.asarray(d) < 0)):
        raise ValueError("sq_distances must be >= 0 (squared distances)")
    if not 0 < perplexity < d.shape[0]:
        raise ValueError(f"perplexity must be in (0, {d.shape[0]}) (the number of points); got {perplexity}")
    return _conditional_probabilities(d, jnp.asarray(perplexity, d.dtype), tol, int(steps))


def _row_entropy(d, beta, off):
    """Entropy (nats) and normalised conditionals of rows with shifted distances `d >= 0`."""
    logits = jnp.where(off, -d * beta[:, None], -jnp.inf)
    p = jax.nn.softmax(logits, axis=1)
    p = jnp.where(off, p, 0.0)
    # H = log(sum exp(-beta d)) + beta <d>_p, with the shift making the largest term exp(0) = 1.
    z = jnp.sum(jnp.where(off, jnp.exp(-d * beta[:, None]), 0.0), axis=1)
    h = jnp.log(z) + beta * jnp.sum(p * d, axis=1)
    return h, p


@functools.partial(jax.jit, static_argnames=("steps",))
def _conditional_probabilities(d, perplexity, tol, steps):
    m = d.shape[0]
    off = ~jnp.eye(m, dtype=bool)
    d = d - jnp.min(jnp.where(off, d, jnp.inf), axis=1, keepdims=True)
    d = jnp.where(off, d, 0.0)
    target = jnp.log(perplexity)

    def cond(state):
        i, _, _, _, h = state
        return (i < steps) & jnp.any(jnp.abs(h - target) > tol)

    def body(state):
        i, beta, lo, hi, h = state
        active = jnp.abs(h - target) > tol  # converged rows stay put, as in the per-row search
        too_flat = h > target  # entropy too high: sharpen (raise beta)
        lo = jnp.where(active & too_flat, beta, lo)
        hi = jnp.where(active & ~too_flat, beta, hi)
        # Capped: beta = inf would meet the zero distances of duplicates as 0 * inf = NaN.
        up = jnp.minimum(jnp.where(jnp.isinf(hi), beta * 2.0, (beta + hi) / 2.0), jnp.finfo(d.dtype).max)
        down = jnp.where(jnp.isinf(lo), beta / 2.0, (beta + lo) / 2.0)
        beta = jnp.where(active, jnp.where(too_flat, up, down), beta)
        h, _ = _row_entropy(d, beta, off)
        return i + 1, beta, lo, hi, h

    beta0 = jnp.ones((m,), d.dtype)
    h0, _ = _row_entropy(d, beta0, off)
    inf = jnp.full((m,), jnp.inf, d.dtype)
    _, beta, _, _, _ = lax.while_loop(cond, body, (0, beta0, -inf, inf, h0))
    _, p = _row_entropy(d, beta, off)
    return p, beta


def joint_probabilities(x, perplexity: float = 30.0) -> Array:
    """t-SNE's symmetric input affinities `P = (P_cond + P_cond^T) / sum`, `[M, M]`, summing to 1.

    Off-diagonal entries are at least 1e-12 (a floor that keeps `log P` finite, like scikit-learn's).
    """
    x = _check_points(x)
    if not 0 < perplexity < x.shape[0]:
        raise ValueError(f"perplexity must be in (0, {x.shape[0]}) (the number of points); got {perplexity}")
    return _joint_from_points(x, jnp.asarray(perplexity, x.dtype))


@jax.jit
def _joint_from_points(x, perplexity):
    cond, _ = _conditional_probabilities(_sq_distances(_centre(x)), perplexity, 1e-5, 100)
    p = cond + cond.T
    p = p / jnp.sum(p)
    off = ~jnp.eye(x.shape[0], dtype=bool)
    return jnp.where(off, jnp.maximum(p, 1e-12), 0.0)


# --------------------------------------------------------------------------- t-SNE: optimisation
def _student_t(y, dof):
    """Embedding kernel `w_ij = (1 + |y_i - y_j|^2 / dof)^-1` and `Q` (diagonal 0)."""
    m = y.shape[0]
    off = ~jnp.eye(m, dtype=bool)
    w = 1.0 / (1.0 + _sq_distances(y) / dof)
    power = (dof + 1.0) / 2.0
    num = jnp.where(off, w if isinstance(power, float) and power == 1.0 else w**power, 0.0)
    q = jnp.maximum(num / jnp.sum(num), 1e-12)
    return jnp.where(off, w, 0.0), jnp.where(off, q, 0.0)


def _check_p_y(p, y):
    y = _check_points(y, "y")
    p = jnp.asarray(p)
    if p.shape != (y.shape[0], y.shape[0]):
        raise ValueError(f"p must be [M, M] = [{y.shape[0]}, {y.shape[0]}] for y of shape {y.shape}; got {p.shape}")
    _check_finite(p, "p")
    return p, y


def kl_divergence(p, y, dof: float = 1.0) -> Array:
    """`KL(P || Q)` of an embedding `y [M, dim]` for affinities `p [M, M]` (scalar).

    Concrete non-finite `p` or `y` are a `ValueError`; traced ones give NaN."""
    p, y = _check_p_y(p, y)
    return _kl_divergence(p, y, float(dof))


def kl_gradient(p, y, dof: float = 1.0) -> Array:
    """Analytic gradient of `kl_divergence` w.r.t. `y`:
    `(2 (dof + 1) / dof) sum_j (p_ij - q_ij) w_ij (y_i - y_j)`, `[M, dim]`."""
    p, y = _check_p_y(p, y)
    return _kl_gradient(p, y, float(dof))


@functools.partial(jax.jit, static_argnames=("dof",))
def _kl_divergence(p, y, dof: float = 1.0) -> Array:
    _, q = _student_t(y, dof)
    off = ~jnp.eye(y.shape[0], dtype=bool)
    return jnp.sum(jnp.where(off, p * jnp.log(jnp.maximum(p, 1e-12) / jnp.where(off, q, 1.0)), 0.0))


@functools.partial(jax.jit, static_argnames=("dof",))
def _kl_gradient(p, y, dof: float = 1.0) -> Array:
    w, q = _student_t(y, dof)
    pq = (p - q) * w
    return (2.0 * (dof + 1.0) / dof) * (jnp.sum(pq, axis=1)[:, None] * y - pq @ y)


def _gd_step(y, update, gains, p, lr, momentum, min_gain, dof):
    """One step of gradient descent with momentum and delta-bar-delta gains."""
    grad = _kl_gradient(p, y, dof)
    # Delta-bar-delta: a coordinate whose gradient opposes its last update (the update keeps
    # going downhill) speeds up additively; one whose gradient agrees (it overshot) slows down.
    keeps_going = (update * grad) < 0.0
    gains = jnp.maximum(jnp.where(keeps_going, gains + 0.2, gains * 0.8), min_gain)
    update = momentum * update - lr * gains * grad
    return y + update, update, gains


def _tsne_step(static, consts, carry, _):
    """One t-SNE gradient step (a `loops.scan` step). static: `(dof,)`, a Python float (for dof = 1
    the kernel's power (dof + 1) / 2 = 1 then costs nothing, where a traced exponent would be a
    general pow: exp and log of M^2 numbers per step); consts: `(P, lr, momentum, min_gain)`;
    carry: `(y, update, gains)`."""
    (dof,) = static
    p, lr, momentum, min_gain = consts
    return _gd_step(*carry, p, lr, momentum, min_gain, dof), None


def _optimise(p, y0, lr, exaggeration, momenta, min_gain, *, dof, steps, exaggeration_steps, loop):
    n1 = min(steps, exaggeration_steps)
    y = y0
    for n, p_phase, momentum in ((n1, p * exaggeration, momenta[0]), (steps - n1, p, momenta[1])):
        if n > 0:
            # Update and gains restart at each phase, as scikit-learn's `_gradient_descent` does.
            carry = (y, jnp.zeros_like(y), jnp.ones_like(y))
            (y, _, _), _ = loops.scan(_tsne_step, (dof,), (p_phase, lr, momentum, min_gain), carry, length=n, loop=loop)
    return y


# loop="scan": the whole optimisation is one compiled program (both phases, one dispatch).
_optimise_scan = jax.jit(
    functools.partial(_optimise, loop="scan"), static_argnames=("dof", "steps", "exaggeration_steps")
)


def tsne(
    x,
    *,
    key: Array,
    dim: int = 2,
    perplexity: float = 30.0,
    steps: int = 1000,
    early_exaggeration: float = 12.0,
    exaggeration_steps: int = 250,
    learning_rate: Union[float, str] = "auto",
    momentum: tuple[float, float] = (0.5, 0.8),
    min_gain: float = 0.01,
    init: Union[str, Array] = "pca",
    loop: str = "scan",
) -> Array:
    """Exact t-SNE embedding.

    Pure and jit-compiled; works under `jax.jit` and `jax.vmap` over keys or data of equal shape.

    Args:
      x: `[M, D]` finite points (e.g. `jaxviz.inspection.features`), `M >= 2`, up to a few
        thousand. Duplicates are legal: identical points get identical affinities.
      key: randomness for `init="random"` (PCA initialisation uses none).
      dim: embedding dimension.
      perplexity: effective number of neighbours, `0 < perplexity < M`.
      steps: total gradient steps, including the exaggeration phase (scikit-learn's `max_iter`).
      early_exaggeration: factor on `P` during the first `exaggeration_steps` steps.
      learning_rate: a number, or `"auto"` = `max(M / early_exaggeration / 4, 50)`.
      momentum: `(during exaggeration, after)`.
      min_gain: lower bound of the per-coordinate gains.
      init: `"pca"` (first `dim` principal components scaled to standard deviation 1e-4 in the first
        coordinate, like scikit-learn's `init="pca"`), `"random"` (normal, standard deviation 1e-4),
        or an explicit `[M, dim]` array. With `"pca"`, data without variance (all points equal
        up to 100 float epsilons of their norm) start, and stay, at the origin: the gradient
        between coincident points is zero.
      loop: the step loop under `jaxviz.loops`: `"scan"` (default: the whole optimisation is one
        compiled program, measured faster than a Python loop on CPU, see the module docstring),
        `"python"` (a Python loop over one jitted step) or `"auto"` (the library's policy:
        Python on CPU, scan on accelerators and under a transformation). Same results.

    Returns:
      `[M, dim]` embedding. Traced non-finite points give NaN (concrete ones are a `ValueError`).
    """
    x = _check_points(x)
    m = x.shape[0]
    if not 0 < perplexity < m:
        raise ValueError(f"perplexity must be in (0, {m}) (the number of points); got {perplexity}")
    if dim < 1 or steps < 0 or exaggeration_steps < 0:
        raise ValueError(
            f"need dim >= 1, steps >= 0, exaggeration_steps >= 0; got {dim}, {steps}, {exaggeration_steps}"
        )
    if isinstance(learning_rate, str):
        if learning_rate != "auto":
            raise ValueError(f"learning_rate must be a number or 'auto'; got {learning_rate!r}")
        learning_rate = max(m / early_exaggeration / 4.0, 50.0)
    dtype = x.dtype
    if isinstance(init, str):
        if init == "pca":
            if dim > min(x.shape):
                raise ValueError(f"init='pca' needs dim <= min(M, D) = {min(x.shape)}; got dim={dim}")
            y0 = _pca_init(x, int(dim))
        elif init == "random":
            y0 = 1e-4 * jax.random.normal(key, (m, dim), dtype)
        else:
            raise ValueError(f"init must be 'pca', 'random' or an [M, dim] array; got {init!r}")
    else:
        y0 = jnp.asarray(init, dtype)
        if y0.shape != (m, dim):
            raise ValueError(f"an init array must be [{m}, {dim}]; got {y0.shape}")
        _check_finite(y0, "init")
    p = _joint_from_points(x, jnp.asarray(perplexity, dtype))
    dof = max(dim - 1, 1)  # degrees of freedom of the Student t kernel, as in scikit-learn
    args = (
        p,
        y0.astype(dtype),
        jnp.asarray(learning_rate, dtype),
        jnp.asarray(early_exaggeration, dtype),
        jnp.asarray(momentum, dtype),
        jnp.asarray(min_gain, dtype),
    )
    kwargs = dict(dof=float(dof), steps=int(steps), exaggeration_steps=int(exaggeration_steps))
    if loops.resolve(loop, *args) == "scan":
        return _optimise_scan(*args, **kwargs)
    return _optimise(*args, **kwargs, loop="python")


@functools.partial(jax.jit, static_argnames=("dim",))
def _pca_init(x, dim):
    """scikit-learn's PCA initialisation (std 1e-4 in the first coordinate); all zeros for data
    without variance (relative to their norm), where dividing by the std would give NaN or
    amplified rounding noise."""
    y0 = _pca(x, dim)[0]
    std = jnp.std(y0[:, 0])
    scale = jnp.sqrt(jnp.mean(jnp.sum(x * x, axis=1)))
    flat = std <= 100.0 * jnp.finfo(x.dtype).eps * scale
    return jnp.where(flat, 0.0, y0 / jnp.where(flat, 1.0, std) * 1e-4).astype(x.dtype)


# --------------------------------------------------------------------------- quality measures
def _ranks(sq_d):
    """`rank[i, j]` = 1-based position of `j` among `i`'s neighbours (self last), ties by index."""
    m = sq_d.shape[0]
    sq_d = jnp.where(jnp.eye(m, dtype=bool), jnp.inf, sq_d)
    order = jnp.argsort(sq_d, axis=1, stable=True)
    rows = jnp.arange(m)[:, None]
    return jnp.zeros((m, m), jnp.int32).at[rows, order].set(jnp.arange(1, m + 1, dtype=jnp.int32)[None, :])


def _knn(sq_d, k):
    """Indices `[M, k]` of each point's `k` nearest others (ties by lower index)."""
    m = sq_d.shape[0]
    sq_d = jnp.where(jnp.eye(m, dtype=bool), jnp.inf, sq_d)
    return lax.top_k(-sq_d, k)[1]


@functools.partial(jax.jit, static_argnames=("k",))
def _trustworthiness(x, emb, k):
    m = x.shape[0]
    ranks = _ranks(_sq_distances(_centre(x)))
    nn = _knn(_sq_distances(_centre(emb)), k)
    excess = jnp.maximum(jnp.take_along_axis(ranks, nn, axis=1) - k, 0)
    t = 1.0 - jnp.sum(excess) * (2.0 / (m * k * (2.0 * m - 3.0 * k - 1.0)))
    # Ranks of NaN distances mean nothing: NaN in, NaN out (traced inputs; concrete ones are refused).
    return jnp.where(jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(emb)), t, jnp.nan)


def trustworthiness(x, embedding, k: int = 5) -> Array:
    """How far the embedding's neighbourhoods are true ones (Venna & Kaski), in [0, 1].

    `T = 1 - 2 / (M k (2M - 3k - 1)) * sum_i sum_{j in U_k(i)} (r(i, j) - k)`, where `U_k(i)` are the
    `k` nearest neighbours of `i` in the embedding that are not among its `k` nearest in `x`, and
    `r(i, j)` is `j`'s rank among `i`'s neighbours in `x` (Euclidean). Same definition as
    `sklearn.manifold.trustworthiness`.

    Args:
      x: `[M, D]` original points; embedding: `[M, d]`; k: `1 <= k < M / 2`. Concrete non-finite
        values are a `ValueError`; traced ones give NaN.
    """
    x, emb = _check_points(x), _check_points(embedding, "embedding")
    if emb.shape[0] != x.shape[0]:
        raise ValueError(f"x and embedding must have the same number of points; got {x.shape[0]} and {emb.shape[0]}")
    if not 1 <= k < x.shape[0] / 2:
        raise ValueError(f"k must be in [1, M/2) = [1, {x.shape[0] / 2}); got {k}")
    return _trustworthiness(x, emb, int(k))


@functools.partial(jax.jit, static_argnames=("k", "n_classes"))
def _knn_accuracy(emb, labels, k, n_classes):
    nn = _knn(_sq_distances(emb), k)  # [M, k], nearest first
    nl = labels[nn]
    votes = jnp.sum(jax.nn.one_hot(nl, n_classes, dtype=jnp.int32), axis=1)  # [M, C]
    # Ties in the vote go to the class of the nearer neighbour: score = votes * (k + 1) + (k - first rank).
    rank = jnp.arange(k)[None, :]
    first = jnp.min(jnp.where(nl[:, :, None] == jnp.arange(n_classes)[None, None, :], rank[:, :, None], k), axis=1)
    pred = jnp.argmax(votes * (k + 1) + (k - first), axis=1)
    acc = jnp.mean((pred == labels).astype(jnp.float32))
    return jnp.where(jnp.all(jnp.isfinite(emb)), acc, jnp.nan)


def knn_accuracy(embedding, labels, k: int = 5) -> Array:
    """Leave-one-out k-nearest-neighbour classification accuracy in the embedding.

    Each point is classified by the majority label of its `k` nearest other points (Euclidean);
    a tied vote goes to the class of the nearest neighbour among the tied classes.

    Args:
      embedding: `[M, d]`, `M >= 2`; labels: `[M]` integers in `[0, C)`; k: `1 <= k < M`.

    Returns:
      scalar accuracy in [0, 1] (NaN for a traced embedding with non-finite values; concrete
      ones are a `ValueError`).
    """
    emb = _check_points(embedding, "embedding")
    labels = np.asarray(labels)
    if labels.shape != (emb.shape[0],) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(
            f"labels must be [M] = [{emb.shape[0]}] non-negative integers; got {labels.shape} {labels.dtype}"
        )
    if not 1 <= k < emb.shape[0]:
        raise ValueError(f"k must be in [1, {emb.shape[0]}); got {k}")
    return _knn_accuracy(emb, jnp.asarray(labels, jnp.int32), int(k), int(labels.max()) + 1)


# --------------------------------------------------------------------------- grid layout
def grid_shape(m: int) -> tuple[int, int]:
    """`(rows, cols)` of the smallest near-square grid with at least `m` cells: `cols =
    ceil(sqrt(m))`, `rows = ceil(m / cols)` (600 points: 24 x 25, no empty cell)."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"need at least one point for a grid; got {m!r}")
    cols = math.ceil(math.sqrt(m))
    return math.ceil(m / cols), cols


def _grid_dims(m: int, rows, cols) -> tuple[int, int]:
    for name, v in (("rows", rows), ("cols", cols)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    if rows is None and cols is None:
        return grid_shape(m)
    if rows is None:
        rows = math.ceil(m / cols)
    elif cols is None:
        cols = math.ceil(m / rows)
    if m > rows * cols:
        raise ValueError(f"{m} points do not fit a {rows} x {cols} grid ({rows * cols} cells)")
    return int(rows), int(cols)


def grid_layout(embedding, rows: Optional[int] = None, cols: Optional[int] = None, *, method: str = "auto") -> np.ndarray:
    """Give each embedded point its own cell of a `rows x cols` grid, keeping neighbours together.

    The embedding is scaled (per axis, min-max) onto the grid's cell centres, `x` (column 0 of the
    embedding) across the columns left to right and `y` up the rows (the largest `y` in row 0, at
    the top, so the grid has the orientation of a scatter plot of the embedding); then the points
    are assigned one-to-one to cells, minimising the total squared distance between each point and
    its cell's centre. No two points share a cell; nearby points land in nearby cells; empty cells
    (when `M < rows * cols`) fall where the embedding is sparse.

    Args:
      embedding: `[M, 2]` finite, `M >= 1`.
      rows, cols: grid size with `rows * cols >= M`; either may be left out (then the other fixes
        it); both left out: `grid_shape(M)`, the smallest near-square grid.
      method: `"optimal"` (minimum total squared distance, `scipy.optimize.linear_sum_assignment`),
        `"greedy"` (repeatedly the closest free (point, cell) pair, then single moves and pairwise
        swaps while they lower the total; numpy only), or `"auto"` (optimal when scipy is
        installed, else greedy).

    Returns:
      `[M]` int cell indices `row * cols + col`, all distinct, in `[0, rows * cols)`.
    """
    emb = np.asarray(embedding, np.float64)
    if emb.ndim != 2 or emb.shape[1] != 2:
        raise ValueError(f"embedding must be [M, 2]; got shape {emb.shape}")
    m = emb.shape[0]
    if m == 0:
        raise ValueError("the embedding is empty: no points to lay out")
    if not np.all(np.isfinite(emb)):
        bad = np.flatnonzero(~np.all(np.isfinite(emb), axis=1))
        raise ValueError(f"the embedding has non-finite coordinates in {bad.size} rows, e.g. {bad[:5].tolist()}")
    rows, cols = _grid_dims(m, rows, cols)
    if method not in ("auto", "optimal", "greedy"):
        raise ValueError(f"method must be 'auto', 'optimal' or 'greedy'; got {method!r}")
    lo, hi = emb.min(axis=0), emb.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    gx = (emb[:, 0] - lo[0]) / span[0] * (cols - 1)
    gy = (hi[1] - emb[:, 1]) / span[1] * (rows - 1)  # largest y in row 0 (the top)
    cy, cx = np.divmod(np.arange(rows * cols), cols)
    cost = (gx[:, None] - cx[None, :]) ** 2 + (gy[:, None] - cy[None, :]) ** 2  # [M, cells]
    if method == "auto":
        try:
            import scipy.optimize  # noqa: F401

            method = "optimal"
        except ImportError:
            method = "greedy"
    if method == "optimal":
        from scipy.optimize import linear_sum_assignment

        r, c = linear_sum_assignment(cost)
        cells = np.empty(m, np.int64)
        cells[r] = c
        return cells
    return _swap_refine(cost, _greedy_assign(cost))


def _greedy_assign(cost: np.ndarray) -> np.ndarray:
    """Repeatedly give the closest free (point, cell) pair to each other."""
    m, n_cells = cost.shape
    order = np.argsort(cost, axis=None, kind="stable")
    cells = np.full(m, -1, np.int64)
    taken = np.zeros(n_cells, bool)
    left = m
    for flat in order:
        i, c = divmod(int(flat), n_cells)
        if cells[i] < 0 and not taken[c]:
            cells[i], taken[c] = c, True
            left -= 1
            if left == 0:
                break
    return cells


def _swap_refine(cost: np.ndarray, cells: np.ndarray, max_passes: int = 50) -> np.ndarray:
    """Improve an assignment by single moves to free cells and pairwise swaps until none helps.

    Greedy assignment leaves its last points in whatever cells remain, often far away; each
    accepted move lowers the total cost, so this terminates (at a 2-swap local optimum).
    """
    m, n_cells = cost.shape
    cells = cells.copy()
    owner = np.full(n_cells, -1, np.int64)
    owner[cells] = np.arange(m)
    for _ in range(max_passes):
        improved = False
        for i in range(m):
            ci = cells[i]
            gain = cost[i, ci] - cost[i]  # moving i to each cell
            occupied = owner >= 0
            j = owner[occupied]
            gain[occupied] += cost[j, cells[j]] - cost[j, ci]  # ... and its owner j to i's cell
            c = int(np.argmax(gain))
            if gain[c] > 1e-9:
                j = owner[c]
                if j >= 0:
                    cells[j], owner[ci] = ci, j
                else:
                    owner[ci] = -1
                cells[i], owner[c] = c, i
                improved = True
        if not improved:
            break
    return cells


def image_grid(
    images,
    embedding,
    rows: Optional[int] = None,
    cols: Optional[int] = None,
    *,
    pad: int = 1,
    background: Union[float, Sequence[float]] = 0.5,
    thumbnail: Union[int, Sequence[int], None] = None,
    method: str = "auto",
) -> np.ndarray:
    """Images laid out on a grid by their 2-D embedding (the "t-SNE grid" of CNN codes).

    Each image goes whole into its own cell (`grid_layout`: one point per cell, neighbours in
    nearby cells, the largest `y` at the top as in a scatter plot); cells are separated by `pad`
    pixels of `background`, and cells no point took are filled with `background` too. The default
    mid grey is neither black nor white, so empty cells and gaps are not mistaken for images
    with dark or bright backgrounds (digits are bright ink on black).

    Args:
      images: `[M, h, w, C]` (C = 1 or 3) in [0, 1].
      embedding: `[M, 2]`.
      rows, cols: grid size (see `grid_layout`; default the smallest near-square grid).
      pad: pixels between cells (`>= 0`).
      background: grey level or RGB in [0, 1] of the gaps and empty cells.
      thumbnail: resize every image to `(th, tw)` (or `th x th`) first, with antialiasing (a
        mosaic of hundreds of full-size images is larger than a figure shows; downsampling it
        with nearest-neighbour interpolation drops whole pixel columns and looks striped).
      method: assignment method of `grid_layout`.

    Returns:
      `[rows * (th + pad) - pad, cols * (tw + pad) - pad, 3]` float32 in [0, 1]; the image of cell
      `r * cols + c` occupies rows `r * (th + pad) ...` and columns `c * (tw + pad) ...`.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape[1:3]:
        raise ValueError(f"images must be [M, h, w, 1 or 3]; got shape {images.shape}")
    if images.shape[0] != np.shape(embedding)[0]:
        raise ValueError(f"{images.shape[0]} images but {np.shape(embedding)[0]} embedded points")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floating point in [0, 1]; got dtype {images.dtype}")
    check_pixel_values(images, "images for the grid")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be a non-negative integer; got {pad!r}")
    bg = np.broadcast_to(np.asarray(background, np.float32).reshape(-1), (3,)) if np.size(background) in (1, 3) else None
    if bg is None or not np.all((bg >= 0) & (bg <= 1)):
        raise ValueError(f"background must be a grey level or an RGB triple in [0, 1]; got {background!r}")
    cells = grid_layout(embedding, rows, cols, method=method)
    rows, cols = _grid_dims(images.shape[0], rows, cols)
    if thumbnail is not None:
        size = (thumbnail, thumbnail) if np.ndim(thumbnail) == 0 else tuple(thumbnail)
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in size):
            raise ValueError(f"thumbnail must be a positive integer or (height, width); got {thumbnail!r}")
        if tuple(images.shape[1:3]) != size:
            images = np.clip(np.asarray(imaging.resize(jnp.asarray(images, jnp.float32), size, "linear")), 0.0, 1.0)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    _, h, w, _ = images.shape
    out = np.empty((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), np.float32)
    out[...] = bg
    for img, cell in zip(images, cells):
        r, c = divmod(int(cell), cols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = img
    return out


__all__ = [
    "conditional_probabilities",
    "grid_layout",
    "grid_shape",
    "image_grid",
    "joint_probabilities",
    "kl_divergence",
    "kl_gradient",
    "knn_accuracy",
    "pca",
    "trustworthiness",
    "tsne",
]
