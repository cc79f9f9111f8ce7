"""PCA, t-SNE and embedding quality against scikit-learn / numpy; grid layouts by their properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import embedding as E

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.manifold import trustworthiness as sk_trustworthiness  # noqa: E402


@pytest.fixture(scope="module")
def digits500():
    """500 of scikit-learn's 8x8 handwritten digits (real images), pixels scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(x))[:500]
    return (x[idx] / 16.0).astype(np.float32), y[idx]


# --------------------------------------------------------------------------- PCA
def test_pca_matches_numpy_svd_and_sklearn():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(120, 12)) * np.linspace(3.0, 0.2, 12)[None, :] @ rng.normal(size=(12, 12))).astype(np.float32)
    proj, comp, var = E.pca(x, 4)
    proj, comp, var = np.asarray(proj), np.asarray(comp), np.asarray(var)
    xc = x.astype(np.float64) - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    signs = np.sign(comp @ vt[:4].T).diagonal()  # compare up to sign
    np.testing.assert_allclose(comp, vt[:4] * signs[:, None], atol=2e-4)
    np.testing.assert_allclose(var, s[:4] ** 2 / 119, rtol=1e-4)
    np.testing.assert_allclose(proj, xc @ comp.T, rtol=1e-4, atol=1e-3)
    # scikit-learn uses the same sign convention (largest |loading| positive): equal outright.
    sk = PCA(4, svd_solver="full").fit(x)
    np.testing.assert_allclose(comp, sk.components_, atol=2e-4)
    np.testing.assert_allclose(var, sk.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(proj, sk.transform(x), atol=1e-3)
    assert np.all(np.take_along_axis(comp, np.abs(comp).argmax(axis=1)[:, None], axis=1) > 0)
    with pytest.raises(ValueError, match="k must be"):
        E.pca(x, 13)
    with pytest.raises(ValueError, match=r"\[M, D\]"):
        E.pca(x[0], 1)


# --------------------------------------------------------------------------- t-SNE
def test_perplexity_calibration(digits500):
    from scipy.spatial.distance import squareform
    from sklearn.manifold._t_sne import _joint_probabilities

    x = digits500[0][:300]
    d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    cond, beta = E.conditional_probabilities(jnp.asarray(d, jnp.float32), 30.0)
    cond = np.asarray(cond, np.float64)
    np.testing.assert_allclose(cond.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.diag(cond) == 0)
    entropy = -np.sum(np.where(cond > 0, cond * np.log(np.where(cond > 0, cond, 1.0)), 0.0), axis=1)
    assert np.max(np.abs(entropy - np.log(30.0))) < 1e-3, np.max(np.abs(entropy - np.log(30.0)))
    # The symmetric P equals scikit-learn's (its own bisection, float64).
    p = np.asarray(E.joint_probabilities(x, 30.0))
    ref = squareform(_joint_probabilities(d.astype(np.float32), 30.0, 0))
    np.testing.assert_allclose(p, ref, rtol=2e-3, atol=1e-9)
    assert abs(p.sum() - 1.0) < 1e-4


def test_kl_gradient_equals_autodiff():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=(40, 40))
    p = p + p.T
    np.fill_diagonal(p, 0.0)
    p = jnp.asarray(p / p.sum(), jnp.float32)
    y = jnp.asarray(rng.normal(size=(40, 2)), jnp.float32)
    for dof in (1.0, 2.0):
        auto = jax.grad(lambda y: E.kl_divergence(p, y, dof))(y)
        np.testing.assert_allclose(np.asarray(E.kl_gradient(p, y, dof)), np.asarray(auto), rtol=1e-4, atol=1e-6)


def test_tsne_trustworthiness_close_to_sklearn(digits500):
    x, labels = digits500
    ours = np.asarray(E.tsne(x, key=jax.random.key(0), perplexity=30.0))
    assert ours.shape == (500, 2) and np.isfinite(ours).all()
    # method="exact" optimises the same objective as ours, and on this 2-core machine runs in about
    # half the time of the default Barnes-Hut approximation (whose trustworthiness is the same here).
    ref = TSNE(n_components=2, init="pca", perplexity=30.0, method="exact", random_state=0).fit_transform(x)
    t_ours = sk_trustworthiness(x, ours, n_neighbors=5)
    t_ref = sk_trustworthiness(x, ref, n_neighbors=5)
    assert abs(t_ours - t_ref) <= 0.02, f"trustworthiness: jaxviz t-SNE {t_ours:.4f}, scikit-learn TSNE {t_ref:.4f}"
    assert t_ours > 0.95, f"jaxviz t-SNE trustworthiness {t_ours:.4f}, scikit-learn {t_ref:.4f}"
    acc_ours, acc_ref = float(E.knn_accuracy(ours, labels, 5)), float(E.knn_accuracy(ref, labels, 5))
    msg = f"5-NN accuracy: jaxviz {acc_ours:.3f}, scikit-learn {acc_ref:.3f}"
    assert acc_ours > 0.9 and acc_ours > acc_ref - 0.03, msg
    # PCA initialisation is deterministic: another key gives the same embedding.
    again = np.asarray(E.tsne(x, key=jax.random.key(7), perplexity=30.0))
    np.testing.assert_array_equal(again, ours)


def test_tsne_vmap_over_keys_equals_loop(digits500):
    x = digits500[0][:60]
    keys = jax.random.split(jax.random.key(3), 2)
    # Few steps: t-SNE amplifies rounding differences (batched vs single matmuls) exponentially.
    run = lambda k: E.tsne(x, key=k, perplexity=10.0, steps=10, exaggeration_steps=5, init="random")  # noqa: E731
    batched = np.asarray(jax.vmap(run)(keys))
    looped = np.stack([np.asarray(run(k)) for k in keys])
    np.testing.assert_allclose(batched, looped, rtol=1e-4, atol=1e-3)
    assert not np.allclose(looped[0], looped[1])  # the key matters for random init
    with pytest.raises(ValueError, match="perplexity"):
        E.tsne(x, key=keys[0], perplexity=60.0)
    with pytest.raises(ValueError, match="learning_rate"):
        E.tsne(x, key=keys[0], learning_rate="fast")


# --------------------------------------------------------------------------- quality measures
@pytest.mark.parametrize("k", [1, 5, 12])
def test_trustworthiness_equals_sklearn(k):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 10)).astype(np.float32)
    emb = (x @ rng.normal(size=(10, 2)) + 0.5 * rng.normal(size=(200, 2))).astype(np.float32)
    ours = float(E.trustworthiness(x, emb, k))
    ref = sk_trustworthiness(x, emb, n_neighbors=k)
    assert abs(ours - ref) < 1e-5, (ours, ref)
    noise = rng.normal(size=(200, 2)).astype(np.float32)
    assert float(E.trustworthiness(x, noise, k)) < ours  # an unrelated embedding is less trustworthy
    assert float(E.trustworthiness(x, x, k)) == pytest.approx(1.0)


def test_trustworthiness_on_digits(digits500):
    """Real (integer-valued) data with tied distances: equal up to how ties are ranked."""
    x = digits500[0][:300]
    emb = np.asarray(E.pca(x, 2)[0])
    assert abs(float(E.trustworthiness(x, emb, 5)) - sk_trustworthiness(x, emb, n_neighbors=5)) < 1e-3


def _np_knn_accuracy(emb, labels, k):
    d = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    correct = 0
    for i in range(len(emb)):
        nn = np.argsort(d[i], kind="stable")[:k]
        votes = np.bincount(labels[nn], minlength=labels.max() + 1)
        tied = np.flatnonzero(votes == votes.max())
        pred = next(labels[j] for j in nn if labels[j] in tied)  # the nearest among tied classes
        correct += pred == labels[i]
    return correct / len(emb)


@pytest.mark.parametrize("k", [1, 4, 5])
def test_knn_accuracy_brute_force(k):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=150)
    emb = (rng.normal(size=(150, 2)) + 1.5 * labels[:, None] * np.array([[1.0, 0.5]])).astype(np.float32)
    ours = float(E.knn_accuracy(emb, labels, k))
    assert ours == pytest.approx(_np_knn_accuracy(emb.astype(np.float64), labels, k), abs=1e-6)
    assert 0.3 < ours < 1.0
    with pytest.raises(ValueError, match="labels"):
        E.knn_accuracy(emb, labels[:-1], k)


# --------------------------------------------------------------------------- grid layout
@pytest.mark.parametrize("method", ["greedy", "optimal"])
def test_grid_layout_distinct_and_neighbourhood_preserving(method):
    rng = np.random.default_rng(4)
    emb = np.concatenate([rng.normal(size=(45, 2)), rng.normal(size=(45, 2)) + [4.0, 1.0]]).astype(np.float32)
    cells = E.grid_layout(emb, 10, 10, method=method)
    assert cells.shape == (90,) and len(set(cells.tolist())) == 90
    assert cells.min() >= 0 and cells.max() < 100
    grid_xy = np.stack([cells % 10, cells // 10], axis=1).astype(np.float64)
    # Each point's nearest neighbour in 2-D sits close on the grid: far closer than for a random layout.
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = d.argmin(axis=1)
    grid_nn = np.abs(grid_xy - grid_xy[nn]).sum(axis=1).mean()
    perm = rng.permutation(100)[:90]
    rand_xy = np.stack([perm % 10, perm // 10], axis=1)
    rand_nn = np.abs(rand_xy - rand_xy[nn]).sum(axis=1).mean()
    assert grid_nn < 0.4 * rand_nn, (grid_nn, rand_nn)
    # Distances on the grid and in the embedding (scaled per axis onto the grid, as the layout
    # does) are strongly correlated; a random layout's are not.
    iu = np.triu_indices(90, 1)
    scaled = (emb - emb.min(0)) / (emb.max(0) - emb.min(0))
    de = np.sqrt(((scaled[:, None] - scaled[None]) ** 2).sum(-1))[iu]
    dg = np.sqrt(((grid_xy[:, None] - grid_xy[None]) ** 2).sum(-1))[iu]
    dr = np.sqrt(((rand_xy[:, None] - rand_xy[None]) ** 2).sum(-1))[iu]
    corr, corr_random = np.corrcoef(dg, de)[0, 1], np.corrcoef(dr, de)[0, 1]
    assert corr > 0.85 and abs(corr_random) < 0.2, (corr, corr_random)
    with pytest.raises(ValueError, match="do not fit"):
        E.grid_layout(emb, 9, 9, method=method)


def test_optimal_layout_no_worse_than_greedy():
    emb = np.random.default_rng(5).uniform(size=(60, 2))
    cost = {}
    for method in ("greedy", "optimal"):
        cells = E.grid_layout(emb, 8, 8, method=method)
        cx, cy = cells % 8, cells // 8
        lo, hi = emb.min(0), emb.max(0)
        gx = (emb[:, 0] - lo[0]) / (hi[0] - lo[0]) * 7
        gy = (hi[1] - emb[:, 1]) / (hi[1] - lo[1]) * 7  # the largest y in row 0 (the top)
        cost[method] = ((gx - cx) ** 2 + (gy - cy) ** 2).sum()
    assert cost["optimal"] <= cost["greedy"] + 1e-9


def test_image_grid_places_images_in_their_cells():
    rng = np.random.default_rng(6)
    images = rng.uniform(size=(7, 5, 4, 1)).astype(np.float32)
    emb = rng.normal(size=(7, 2))
    cells = E.grid_layout(emb, 3, 3)
    mosaic = E.image_grid(images, emb, 3, 3, pad=1, background=0.0)
    assert mosaic.shape == (3 * 6 - 1, 3 * 5 - 1, 3)
    for i, c in enumerate(cells):
        r, q = divmod(int(c), 3)
        np.testing.assert_array_equal(mosaic[r * 6 : r * 6 + 5, q * 5 : q * 5 + 4], np.repeat(images[i], 3, axis=-1))
    empty = sorted(set(range(9)) - set(cells.tolist()))
    for c in empty:
        r, q = divmod(c, 3)
        assert np.all(mosaic[r * 6 : r * 6 + 5, q * 5 : q * 5 + 4] == 0.0)
