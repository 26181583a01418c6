"""Rows of the periodic table that hold as limits, bounds or identities up to a constant.

* PCA (Corollary 1) and MDS (Theorem 3) are limits of Gaussian rows as the width sigma grows:
  the rescaled loss converges to the classical objective at rate O(1 / sigma^2).
* Triplet loss (Theorem 5): L - log 2 <= L_triplet <= L, and sigma^2-scaled for any width.
* Probabilistic k-means: Theorem 8 (contrastive form = Proposition 2's objective with optimal
  centres, up to sum_i ||x_i||^2) and Theorem 9 (sum_i KL(q_i || p_i) = L_prob-kmeans / sigma^2
  - sum_i H(q_i) + const), checked across several random assignments.

The reference quantities are computed with numpy here, independently of skicon's kernels.
"""

import itertools

import numpy as np
import pytest
import scipy.optimize
import torch

from skicon import get_method
from skicon.kernels import ClusterKernel, Gaussian


@pytest.fixture(autouse=True)
def _single_thread():
    """These tensors are tiny: torch's intra-op threads only add synchronisation cost (50x on a
    busy 2-core machine for the cluster kernel's 3-d logsumexp). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sqdist(A, B=None):
    B = A if B is None else B
    return ((A[:, None, :] - B[None, :, :]) ** 2).sum(axis=-1)


def softmax_rows(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def logsumexp_rows(a):
    m = a.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True))).ravel()


def prob_kmeans(X, phi, centres=None):
    """Proposition 2: sum_ic phi_ic ||x_i - mu_c||^2, optimal centres unless given."""
    if centres is None:
        centres = (phi.T @ X) / phi.sum(axis=0)[:, None]
    return float(np.sum(phi * sqdist(X, centres)))


def entropies(q):
    return -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0), axis=1)


@pytest.fixture
def rng():
    return np.random.RandomState(1)


# --------------------------------------------------------------------------------------------
# PCA and MDS as sigma -> infinity
# --------------------------------------------------------------------------------------------
SIGMAS = [3.0, 10.0, 30.0, 100.0, 300.0]


def test_pca_limit_converges_to_projected_variance(rng):
    """sigma^2 (log n - L_sigma) -> tr(Cov(Z)): the error shrinks like 1 / sigma^2."""
    n = 30
    X = rng.randn(n, 3) @ np.diag([2.0, 1.0, 0.3])
    Z = X @ np.linalg.qr(rng.randn(3, 2))[0]
    target = np.trace(np.cov(Z.T, bias=True))
    row = get_method("pca")
    errors = []
    for s in SIGMAS:
        loss = float(row.loss(X, Z, q=Gaussian(sigma=s, include_self=True)))
        errors.append(abs(s**2 * (np.log(n) - loss) - target))
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < coarse / 5  # sigma x ~3.3 -> error / ~11
    assert errors[-1] < 1e-4 * target
    assert errors[0] > 1e-2 * target  # at small width the limit is visibly not reached


def test_pca_limit_is_minimised_by_the_principal_axis(rng):
    """Over unit directions w(theta) in 2-d, the wide-sigma row is minimised at the top
    eigenvector of the covariance (to the 0.5 degree grid)."""
    n = 40
    angle = 0.7
    R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    X = (rng.randn(n, 2) * [2.0, 0.7]) @ R.T
    evals, evecs = np.linalg.eigh(np.cov(X.T, bias=True))
    top = evecs[:, -1]
    row = get_method("pca")

    def loss(theta):
        w = np.array([[np.cos(theta)], [np.sin(theta)]])
        return float(row.loss(X, X @ w, q=Gaussian(sigma=50.0, include_self=True)))

    thetas = np.deg2rad(np.arange(0.0, 180.0, 6.0))
    start = thetas[int(np.argmin([loss(t) for t in thetas]))]
    step = np.deg2rad(6.0)
    best = scipy.optimize.minimize_scalar(loss, bounds=(start - step, start + step), method="bounded",
                                          options={"xatol": 1e-5}).x
    cosine = abs(np.cos(best) * top[0] + np.sin(best) * top[1])
    assert cosine > np.cos(np.deg2rad(0.05))


def centred_sstress(X, Z):
    """(1/n) sum_i Var_{j != i}(D_ij - d_ij) on squared distances D (data) and d (embedding)."""
    n = len(X)
    E = sqdist(X) - sqdist(Z)
    off = ~np.eye(n, dtype=bool)
    return float(np.mean([np.var(E[i, off[i]]) for i in range(n)]))


def test_mds_limit_converges_to_centred_squared_distance_stress(rng):
    """8 sigma^4 L_sigma -> (1/n) sum_i Var_j(D_ij - d_ij), at rate O(1 / sigma^2).

    This is classical MDS's squared-distance stress sum_ij (d_ij - D_ij)^2 with each anchor's
    mean offset removed, and never exceeds the raw stress per pair."""
    n = 12
    X, Z = rng.randn(n, 4), rng.randn(n, 2)
    target = centred_sstress(X, Z)
    off = ~np.eye(n, dtype=bool)
    raw = np.mean((sqdist(X) - sqdist(Z))[off] ** 2)
    assert target <= raw
    row = get_method("mds")
    errors = []
    for s in SIGMAS:
        loss = float(row.loss(X, Z, p=Gaussian(sigma=s, n_neighbors=None), q=Gaussian(sigma=s)))
        errors.append(abs(8 * s**4 * loss - target))
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < coarse / 5
    assert errors[-1] < 1e-4 * target
    assert errors[0] > 1e-2 * target


# --------------------------------------------------------------------------------------------
# triplet bounds (Theorem 5)
# --------------------------------------------------------------------------------------------
def triplet_setup(rng, n_pairs=6, dim=3):
    n = 2 * n_pairs
    first = rng.randn(n_pairs, dim)
    Z = np.vstack([first, first + 1.2 * rng.randn(n_pairs, dim)])  # the hinge is active for some
    groups = np.r_[np.arange(n_pairs), np.arange(n_pairs)]
    pos = (np.arange(n) + n_pairs) % n
    neg = np.array([rng.choice([j for j in range(n) if j not in (i, pos[i])]) for i in range(n)])
    keep = np.zeros((n, n), dtype=bool)
    keep[np.arange(n), pos] = True
    keep[np.arange(n), neg] = True
    D = sqdist(Z)
    triplet = np.mean(np.maximum(D[np.arange(n), pos] - D[np.arange(n), neg], 0.0))
    return Z, groups, torch.tensor(~keep), triplet


def l_sigma(Z, groups, exclude, sigma):
    """sigma^2 times the row's loss with q ∝ exp(-d^2 / sigma^2) (Gaussian width sigma / sqrt 2)."""
    row = get_method("triplet")
    X = np.zeros((len(Z), 1))
    return sigma**2 * float(row.loss(X, Z, groups=groups, exclude=exclude, q=Gaussian(sigma=sigma / np.sqrt(2))))


@pytest.mark.parametrize("seed", range(5))
def test_triplet_bounds_theorem5(seed):
    """L - log 2 <= L_triplet <= L with the row's own q (sigma = 1 in the theorem's units)."""
    Z, groups, exclude, triplet = triplet_setup(np.random.RandomState(seed))
    loss = float(get_method("triplet").loss(np.zeros((len(Z), 1)), Z, groups=groups, exclude=exclude))
    assert np.isclose(loss, l_sigma(Z, groups, exclude, 1.0), rtol=1e-12)
    assert loss - np.log(2) <= triplet <= loss
    assert triplet > 0  # the hinge is active for some anchors: a non-trivial check


@pytest.mark.parametrize("seed", range(3))
def test_triplet_bounds_for_any_sigma_and_the_small_sigma_limit(seed):
    """L_sigma - sigma^2 log 2 <= L_triplet <= L_sigma, and L_sigma -> L_triplet as sigma -> 0."""
    Z, groups, exclude, triplet = triplet_setup(np.random.RandomState(10 + seed))
    gaps = []
    for sigma in [3.0, 1.0, 0.3, 0.1, 0.03]:
        ls = l_sigma(Z, groups, exclude, sigma)
        assert ls - sigma**2 * np.log(2) - 1e-12 <= triplet <= ls + 1e-12
        gaps.append(ls - triplet)
    assert all(b <= a + 1e-12 for a, b in zip(gaps, gaps[1:]))  # monotone up to rounding
    assert gaps[0] > 1.0 and gaps[-1] < 1e-12


# --------------------------------------------------------------------------------------------
# probabilistic k-means: Theorems 8 and 9
# --------------------------------------------------------------------------------------------
def test_theorem8_contrastive_form_equals_prob_kmeans(rng):
    """-sum_ij x_i . x_j q(j|i) = L_prob-kmeans(optimal centres) - sum_i ||x_i||^2, with q the
    skicon cluster kernel; and Corollary 4: sum_ij ||x_i - x_j||^2 q(j|i) = 2 L_prob-kmeans."""
    X = rng.randn(12, 3)
    for _ in range(5):
        logits = 2.0 * rng.randn(12, 4)
        q = ClusterKernel().prob(logits).numpy()
        phi = softmax_rows(logits)
        objective = prob_kmeans(X, phi)
        assert np.isclose(-np.sum((X @ X.T) * q), objective - np.sum(X**2), rtol=1e-10)
        assert np.isclose(np.sum(sqdist(X) * q), 2 * objective, rtol=1e-10)
        # the centres used are optimal: moving them raises the objective
        centres = (phi.T @ X) / phi.sum(axis=0)[:, None]
        assert prob_kmeans(X, phi, centres + 0.05 * rng.randn(*centres.shape)) > objective


def test_theorem8_same_minimiser_as_kmeans(rng):
    """Over every hard 2-partition of 7 points, the contrastive form and the classical k-means
    objective are minimised by the same partition."""
    X = np.vstack([rng.randn(4, 2), rng.randn(3, 2) + [2.5, 0.0]])
    best_contrastive, best_kmeans = None, None
    for bits in itertools.product([0, 1], repeat=7):
        labels = np.array(bits)
        if labels.min() == labels.max():
            continue
        logits = 60.0 * (np.eye(2)[labels] - 0.5)
        contrastive = -np.sum((X @ X.T) * ClusterKernel().prob(logits).numpy())
        inertia = sum(((X[labels == c] - X[labels == c].mean(axis=0)) ** 2).sum() for c in (0, 1))
        best_contrastive = min(best_contrastive or (np.inf,), (contrastive, bits))
        best_kmeans = min(best_kmeans or (np.inf,), (inertia, bits))
    assert best_contrastive[1] == best_kmeans[1]


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_theorem9_difference_is_constant_across_assignments(rng, sigma):
    """n L_kmeans-row - (L_prob-kmeans / sigma^2 - sum_i H(q_i)) does not depend on the
    assignment: across random soft assignments it is one constant, sum_i log Z_i."""
    n = 15
    X = rng.randn(n, 2) * 1.5
    row = get_method("kmeans")
    p = row.make_p(sigma=sigma)
    log_Z = logsumexp_rows(-sqdist(X) / (2 * sigma**2)).sum()
    diffs, wrong_scale = [], []
    for scale in [0.3, 1.0, 3.0, 10.0]:
        for _ in range(3):
            logits = scale * rng.randn(n, 3)
            q = ClusterKernel().prob(logits).numpy()
            objective = prob_kmeans(X, softmax_rows(logits))
            n_loss = n * float(row.loss(X, logits, p=p))
            diffs.append(n_loss - (objective / sigma**2 - entropies(q).sum()))
            wrong_scale.append(n_loss - (objective / (2 * sigma**2) - entropies(q).sum()))
    diffs = np.array(diffs)
    assert np.ptp(diffs) < 1e-9 * abs(log_Z)
    assert np.allclose(diffs, log_Z, rtol=1e-10)
    # the constant really pins the scale: half the weight leaves an assignment-dependent gap
    assert np.ptp(wrong_scale) > 1e-2
