"""The periodic table, row by row: each I-Con row equals the original method's own formula.

For every row of :func:`skicon.list_methods` there is a test ``test_row_<name>`` that evaluates
the row's exact I-Con loss (``MethodSpec.loss``, small dense float64 inputs) and compares it with
an *independent* closed-form implementation of the original method written here with numpy or
torch.nn.functional -- never with skicon kernels or :func:`skicon.icon_loss`.

Conventions the comparisons make explicit:

* I-Con is a *mean* over anchors of KL divergences; methods written as sums are divided by the
  number of anchors.
* KL(p || q) = cross-entropy(p, q) - H(p). For one-hot p (InfoNCE, CLIP, cross-entropy) the two
  coincide; otherwise the entropy of p is computed and subtracted explicitly.
* The clustering rows use the reverse direction KL(q || p) and are compared through the exact
  identities of Theorems 8-11 (constants computed, not fitted).

Every equivalence is also checked to be *sensitive*: the same row with a perturbed
hyper-parameter (a wrong temperature, width, alpha, ...) must miss the expected value by far more
than the tolerance, so none of these tests can pass vacuously.

The end of the file tests the definitions the rows rely on: perplexity calibration, debiasing
(eq. 2 of the paper) and neighbour propagation, on hand-computed fixtures.
"""

import sys

import numpy as np
import pytest
import scipy.optimize
import torch
import torch.nn.functional as F

from skicon import get_method, icon_loss, list_methods
from skicon.kernels import (
    ClusterKernel,
    Cosine,
    Debiased,
    Gaussian,
    Graph,
    Propagated,
    Prototypes,
    StudentT,
    Symmetrized,
    UniformKNN,
    Views,
)

RTOL = 1e-9


@pytest.fixture(autouse=True)
def _single_thread():
    """These tensors are tiny: torch's intra-op threads only add synchronisation cost (50x on a
    busy 2-core machine for the cluster kernel's 3-d logsumexp). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# independent reference maths (numpy only)
# --------------------------------------------------------------------------------------------
def sqdist(A, B=None):
    """Squared Euclidean distances by explicit differences (no Gram trick, unlike skicon)."""
    B = A if B is None else B
    return ((A[:, None, :] - B[None, :, :]) ** 2).sum(axis=-1)


def logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def log_softmax_masked(logits, keep):
    """Row-wise log-softmax over the entries where ``keep`` is True (others -inf)."""
    a = np.where(keep, logits, -np.inf)
    return a - logsumexp(a, axis=1)[:, None]


def off_diagonal(n):
    return ~np.eye(n, dtype=bool)


def kl_rows(p, log_q):
    """KL(p_i || q_i) per row, summing only where p > 0."""
    out = np.zeros(p.shape[0])
    for i in range(p.shape[0]):
        m = p[i] > 0
        out[i] = np.sum(p[i, m] * (np.log(p[i, m]) - log_q[i, m]))
    return out


def entropy_rows(p):
    out = np.zeros(p.shape[0])
    for i in range(p.shape[0]):
        m = p[i] > 0
        out[i] = -np.sum(p[i, m] * np.log(p[i, m]))
    return out


def sne_betas(D, perplexity):
    """Per-row precisions beta_i = 1/(2 sigma_i^2) by Brent's method on log beta (self excluded).

    Written independently of skicon's vectorised bisection: scalar root finding on
    H_i(beta) - log(perplexity), H in nats (perplexity = 2^H_bits = e^H_nats).
    """
    n = D.shape[0]
    betas = np.empty(n)
    for i in range(n):
        d = np.delete(D[i], i)
        d = d - d.min()

        def excess_entropy(log_beta, d=d):
            w = np.exp(-np.exp(log_beta) * d)
            pr = w / w.sum()
            nz = pr > 0
            return -np.sum(pr[nz] * np.log(pr[nz])) - np.log(perplexity)

        betas[i] = np.exp(scipy.optimize.brentq(excess_entropy, -30.0, 30.0, xtol=1e-14, rtol=1e-14))
    return betas


def sne_p(X, perplexity):
    D = sqdist(X)
    betas = sne_betas(D, perplexity)
    return np.exp(log_softmax_masked(-betas[:, None] * D, off_diagonal(len(X))))


def softmax_rows(a):
    return np.exp(a - logsumexp(a, axis=1)[:, None])


def cluster_q(logits):
    """q(j|i) = sum_c phi_ic phi_jc / sum_k phi_kc (Definition 2), self included."""
    phi = softmax_rows(logits)
    return (phi / phi.sum(axis=0)) @ phi.T


def prob_kmeans_objective(X, logits):
    """Proposition 2 with the optimal centres mu_c = sum_i phi_ic x_i / sum_i phi_ic."""
    phi = softmax_rows(logits)
    mu = (phi.T @ X) / phi.sum(axis=0)[:, None]
    return float(np.sum(phi * sqdist(X, mu)))


def assert_row_equivalence(actual, expected, perturbed, rtol=RTOL, atol=0.0):
    """``actual`` matches ``expected``; ``perturbed`` (a wrong hyper-parameter) clearly does not."""
    actual, expected, perturbed = float(actual), float(expected), float(perturbed)
    tol = atol + rtol * abs(expected)
    assert abs(actual - expected) <= tol, (actual, expected)
    assert abs(perturbed - expected) > 100 * tol, (
        "the comparison is insensitive to the perturbation",
        perturbed,
        expected,
    )


@pytest.fixture
def rng():
    return np.random.RandomState(0)


def two_view_batch(rng, n_pairs, dim):
    Z = rng.randn(2 * n_pairs, dim)
    groups = np.r_[np.arange(n_pairs), np.arange(n_pairs)]
    return Z, groups


def positive_partner(groups):
    return np.array([np.nonzero((groups == g) & (np.arange(len(groups)) != i))[0][0] for i, g in enumerate(groups)])


# --------------------------------------------------------------------------------------------
# dimensionality reduction rows
# --------------------------------------------------------------------------------------------
def test_row_sne(rng):
    """SNE (Theorem 1): KL with per-point perplexity-calibrated sigmas and q = exp(-d^2)."""
    X, Z = rng.randn(40, 5), rng.randn(40, 2)
    row = get_method("sne")
    P = sne_p(X, perplexity=30.0)  # n - 1 = 39 candidates: the row's k-NN set is every pair
    log_q = log_softmax_masked(-sqdist(Z), off_diagonal(40))
    expected = kl_rows(P, log_q).mean()
    assert_row_equivalence(
        row.loss(X, Z), expected, row.loss(X, Z, q=Gaussian(sigma=0.75)), rtol=1e-8
    )


def test_row_sne_fixed_sigma(rng):
    """SNE with one given bandwidth: p_ij ∝ exp(-||x_i - x_j||^2 / (2 sigma^2))."""
    X, Z = rng.randn(15, 3), rng.randn(15, 2)
    sigma = 0.9
    P = np.exp(log_softmax_masked(-sqdist(X) / (2 * sigma**2), off_diagonal(15)))
    log_q = log_softmax_masked(-sqdist(Z), off_diagonal(15))
    row = get_method("sne")
    got = row.loss(X, Z, p=Gaussian(sigma=sigma, n_neighbors=None))
    wrong = row.loss(X, Z, p=Gaussian(sigma=0.85, n_neighbors=None))
    assert_row_equivalence(got, kl_rows(P, log_q).mean(), wrong)


def test_row_tsne(rng):
    """t-SNE, conditional form of Table 1 / Theorem 2: Cauchy q(j|i) normalised per anchor."""
    X, Z = rng.randn(40, 5), rng.randn(40, 2)
    P = sne_p(X, perplexity=30.0)
    log_q = log_softmax_masked(-np.log1p(sqdist(Z)), off_diagonal(40))
    row = get_method("tsne")
    assert_row_equivalence(
        row.loss(X, Z), kl_rows(P, log_q).mean(), row.loss(X, Z, q=StudentT(dof=1.2)), rtol=1e-8
    )


def test_tsne_joint_form_of_van_der_maaten(rng):
    """The joint t-SNE objective KL(P || Q), P = (P_c + P_c^T) / 2n, Q ∝ Cauchy over all pairs.

    Expressed in skicon as a single-row I-Con loss over all n^2 pairs, with p from
    ``Symmetrized(mode="joint")`` and q from the Student-t kernel normalised over every pair.
    """
    n = 30
    X, Z = rng.randn(n, 4), rng.randn(n, 2)
    Pc = sne_p(X, perplexity=8.0)
    Pj = (Pc + Pc.T) / (2 * n)
    W = 1.0 / (1.0 + sqdist(Z))
    np.fill_diagonal(W, 0.0)
    Qj = W / W.sum()
    off = off_diagonal(n)
    expected = np.sum(Pj[off] * np.log(Pj[off] / Qj[off]))

    def joint_loss(dof):
        P = Symmetrized(Gaussian(perplexity=8.0, n_neighbors=None), mode="joint").conditional(X).toarray()
        logw = StudentT(dof=dof).log_weights(torch.tensor(Z))
        logw = logw.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf")).reshape(1, -1)
        return icon_loss(torch.tensor(P).reshape(1, -1), logw - torch.logsumexp(logw, dim=1, keepdim=True))

    assert np.isclose(Pj.sum(), 1.0) and np.allclose(Pj, Pj.T)
    assert_row_equivalence(joint_loss(1.0), expected, joint_loss(1.3), rtol=1e-8)


def test_row_pca(rng):
    """PCA (Corollary 1): with p = 1[i = j] and a wide Gaussian q on a linear map Z = X W,
    sigma^2 (log n - L) -> tr(W^T C W), the variance PCA maximises (C biased covariance).

    So the row's loss ranks projections exactly as PCA does; the top principal subspace
    (numpy eigh) minimises it among orthonormal projections.
    """
    n = 40
    X = rng.randn(n, 4) @ np.diag([3.0, 2.0, 1.0, 0.5]) @ np.linalg.qr(rng.randn(4, 4))[0]
    row = get_method("pca")
    sigma = row.make_q().sigma
    C = np.cov(X.T, bias=True)
    evals, evecs = np.linalg.eigh(C)
    W_pca = evecs[:, ::-1][:, :2]

    def scaled(loss, s=sigma):
        return s**2 * (np.log(n) - float(loss))

    expected = evals[::-1][:2].sum()
    got = scaled(row.loss(X, X @ W_pca))
    wrong = scaled(row.loss(X, X @ W_pca, q=Gaussian(sigma=900.0, include_self=True)))
    assert_row_equivalence(got, expected, wrong, rtol=1e-5)
    for _ in range(20):
        W = np.linalg.qr(rng.randn(4, 2))[0]
        assert float(row.loss(X, X @ W_pca)) < float(row.loss(X, X @ W))
        assert np.isclose(scaled(row.loss(X, X @ W)), np.trace(W.T @ C @ W), rtol=1e-5)


def mds_limit(X, Z):
    """lim sigma->inf of 8 sigma^4 L_MDS-row: (1/n) sum_i Var_{j != i}(D_ij - d_ij).

    D, d are squared distances in data and embedding. This is the squared-distance stress of
    classical MDS with each anchor's mean offset removed (KL between nearby exponential tilts
    of the uniform distribution is half the variance of the log-ratio).
    """
    n = len(X)
    E = sqdist(X) - sqdist(Z)
    off = off_diagonal(n)
    return np.mean([np.var(E[i, off[i]]) for i in range(n)])


def test_row_mds(rng):
    """MDS (Theorem 3) at the row's wide sigma equals the limiting centred stress."""
    n = 12
    X = 3.0 * rng.randn(n, 4)
    Z = 3.0 * rng.randn(n, 2)
    row = get_method("mds")
    sigma = row.make_q().sigma
    got = 8 * sigma**4 * float(row.loss(X, Z))
    wrong = 8 * sigma**4 * float(row.loss(X, Z, q=Gaussian(sigma=800.0)))
    assert_row_equivalence(got, mds_limit(X, Z), wrong, rtol=1e-4)
    # an isometric embedding preserves every distance: zero loss at any width
    R = np.linalg.qr(rng.randn(4, 4))[0]
    assert abs(float(row.loss(X, X @ R + 1.5))) < 1e-12


# --------------------------------------------------------------------------------------------
# contrastive rows
# --------------------------------------------------------------------------------------------
def nt_xent(Z, partner, tau):
    """SimCLR's NT-Xent: 2N anchors, the positive is the other view, cosine similarity / tau,
    denominator over all k != i, mean over the 2N anchors."""
    Zn = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    S = Zn @ Zn.T / tau
    n = len(Z)
    losses = [-(S[i, partner[i]] - logsumexp(np.delete(S[i], i), axis=0)) for i in range(n)]
    return np.mean(losses)


def test_row_infonce(rng):
    """InfoNCE / NT-Xent (Theorem 4); p is one-hot so KL equals the cross-entropy."""
    Z, groups = two_view_batch(rng, 6, 4)
    X = np.zeros((len(Z), 1))
    row = get_method("infonce")
    tau = row.make_q().temperature
    expected = nt_xent(Z, positive_partner(groups), tau)
    assert_row_equivalence(
        row.loss(X, Z, groups=groups), expected, row.loss(X, Z, groups=groups, q=Cosine(temperature=0.45))
    )


def test_row_infonce_matches_pytorch_metric_learning(rng):
    """Cross-check against the NT-Xent of pytorch-metric-learning (a peer implementation)."""
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    Z, groups = two_view_batch(rng, 6, 4)
    for tau in (0.5, 0.1):
        ref = losses.NTXentLoss(temperature=tau)(torch.tensor(Z), torch.tensor(groups))
        got = get_method("infonce").loss(np.zeros((12, 1)), Z, groups=groups, q=Cosine(temperature=tau))
        assert np.isclose(float(got), float(ref), rtol=1e-9)


def test_row_tsimclr(rng):
    """t-SimCLR (Boehm et al.): InfoNCE with the Cauchy kernel 1 / (1 + ||z_i - z_j||^2) on raw
    features; with real dof the Student-t (1 + d^2 / nu)^(-(nu + 1) / 2)."""
    Z, groups = two_view_batch(rng, 5, 3)
    X = np.zeros((len(Z), 1))
    partner = positive_partner(groups)
    row = get_method("tsimclr")
    for dof in (1.0, 3.5):
        logw = -(dof + 1) / 2 * np.log1p(sqdist(Z) / dof)
        log_q = log_softmax_masked(logw, off_diagonal(len(Z)))
        expected = -np.mean(log_q[np.arange(len(Z)), partner])
        got = row.loss(X, Z, groups=groups) if dof == 1.0 else row.loss(X, Z, groups=groups, q=StudentT(dof=dof))
        assert_row_equivalence(got, expected, row.loss(X, Z, groups=groups, q=StudentT(dof=dof * 1.2)))


def test_row_triplet(rng):
    """Triplet (Theorem 5): with one positive and one negative candidate per anchor the row is
    the soft triplet loss mean_i softplus(d_i^+ - d_i^-), d squared distances."""
    Z, groups = two_view_batch(rng, 5, 3)
    n = len(Z)
    X = np.zeros((n, 1))
    pos = positive_partner(groups)
    neg = np.array([rng.choice([j for j in range(n) if j not in (i, pos[i])]) for i in range(n)])
    keep = np.zeros((n, n), dtype=bool)
    keep[np.arange(n), pos] = True
    keep[np.arange(n), neg] = True
    exclude = torch.tensor(~keep)
    D = sqdist(Z)
    d_pos, d_neg = D[np.arange(n), pos], D[np.arange(n), neg]
    expected = np.mean(np.logaddexp(0.0, d_pos - d_neg))
    row = get_method("triplet")
    got = row.loss(X, Z, groups=groups, exclude=exclude)
    wrong = row.loss(X, Z, groups=groups, exclude=exclude, q=Gaussian(sigma=0.8))
    assert_row_equivalence(got, expected, wrong)


def supcon_l_out(Z, y, tau):
    """Khosla et al. (2020), L_out: for each anchor with positives, the mean over its positives
    of -log softmax_{a != i}(z_i . z_a / tau)[p]; averaged over those anchors."""
    Zn = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    S = Zn @ Zn.T / tau
    per_anchor, log_sizes = [], []
    for i in range(len(Z)):
        positives = [p for p in range(len(Z)) if p != i and y[p] == y[i]]
        if not positives:
            continue  # SupCon has no term for an anchor without positives
        log_den = logsumexp(np.delete(S[i], i), axis=0)
        per_anchor.append(-np.mean([S[i, p] - log_den for p in positives]))
        log_sizes.append(np.log(len(positives)))
    return np.mean(per_anchor), np.mean(log_sizes)


def test_row_supcon(rng):
    """SupCon (Corollary 2): I-Con = L_out - mean_i log|P(i)| (KL = CE - H(p), p uniform on P(i)).

    Unequal classes make the entropy term vary per anchor; the singleton class has no positive
    and is left out by both sides."""
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3])
    Z = rng.randn(len(y), 4)
    X = np.zeros((len(y), 1))
    row = get_method("supcon")
    tau = row.make_q().temperature
    l_out, mean_log_size = supcon_l_out(Z, y, tau)
    assert mean_log_size > 0.5  # the entropy correction is not negligible here
    assert_row_equivalence(row.loss(X, Z, y=y), l_out - mean_log_size, row.loss(X, Z, y=y, q=Cosine(temperature=0.12)))


def test_row_supcon_matches_pytorch_metric_learning(rng):
    """Cross-check of the same identity against pytorch-metric-learning's SupConLoss."""
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3])
    Z = rng.randn(len(y), 4)
    ref = float(losses.SupConLoss(temperature=0.1)(torch.tensor(Z), torch.tensor(y)))
    _, mean_log_size = supcon_l_out(Z, y, 0.1)
    got = float(get_method("supcon").loss(np.zeros((len(y), 1)), Z, y=y))
    assert np.isclose(got, ref - mean_log_size, rtol=1e-9)


def test_row_cmc(rng):
    """Two-view CMC / CLIP (Theorem 6): the symmetric CLIP loss, the mean of the image->text and
    text->image cross-entropies (torch.nn.functional.cross_entropy), candidates in the other
    view only."""
    n = 6
    img, txt = rng.randn(n, 4), rng.randn(n, 4)
    Z = np.vstack([img, txt])
    groups = np.r_[np.arange(n), np.arange(n)]
    views = np.r_[np.zeros(n, int), np.ones(n, int)]
    X = np.zeros((2 * n, 1))
    row = get_method("cmc")
    tau = row.make_q().temperature
    it, tt = F.normalize(torch.tensor(img), dim=1), F.normalize(torch.tensor(txt), dim=1)
    logits = it @ tt.T / tau
    target = torch.arange(n)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    got = row.loss(X, Z, groups=groups, views=views)
    wrong = row.loss(X, Z, groups=groups, views=views, q=Cosine(temperature=0.12))
    assert_row_equivalence(got, expected, wrong)


def test_row_cross_entropy(rng):
    """Cross-entropy (Corollary 3) against torch.nn.functional.cross_entropy."""
    n, C = 10, 3
    Z, W = rng.randn(n, 4), rng.randn(C, 4)
    y = rng.randint(0, C, size=n)
    y[:C] = np.arange(C)
    X = np.zeros((n, 1))
    row = get_method("cross_entropy")
    expected = F.cross_entropy(torch.tensor(Z @ W.T), torch.tensor(y))
    got = row.loss(X, Z, y=y, prototypes=W)
    wrong = row.loss(X, Z, y=y, prototypes=W, q=Prototypes(temperature=1.1))
    assert_row_equivalence(got, expected, wrong)


def test_row_cross_entropy_label_smoothing_is_debiasing(rng):
    """Label smoothing is debiasing of p (eq. 2) with the *same* alpha.

    F.cross_entropy(label_smoothing=eps) uses the target (1 - eps) onehot + eps / C over all C
    classes, the true one included. Debiased spreads alpha / N over the N candidates of the
    row; for classes every one of the C classes is a candidate (Prototypes includes "self"), so
    N = C and alpha = eps exactly. KL differs from the smoothed cross-entropy by H(p~):
    I-Con = CE_eps - H(p~), H(p~) = -(1 - eps + eps/C) log(1 - eps + eps/C)
    - (C - 1) (eps/C) log(eps/C).
    """
    n, C, eps = 10, 4, 0.2
    Z, W = rng.randn(n, 3), rng.randn(C, 3)
    y = np.r_[np.arange(C), rng.randint(0, C, size=n - C)]
    X = np.zeros((n, 1))
    ce = F.cross_entropy(torch.tensor(Z @ W.T), torch.tensor(y), label_smoothing=eps)
    top, rest = 1 - eps + eps / C, eps / C
    entropy = -(top * np.log(top) + (C - 1) * rest * np.log(rest))
    row = get_method("cross_entropy")
    got = row.loss(X, Z, y=y, prototypes=W, p=Debiased(Prototypes(), alpha=eps))
    wrong = row.loss(X, Z, y=y, prototypes=W, p=Debiased(Prototypes(), alpha=0.25))
    assert_row_equivalence(got, float(ce) - entropy, wrong)


# --------------------------------------------------------------------------------------------
# clustering rows
# --------------------------------------------------------------------------------------------
def theorem9_rhs(X, logits, sigma):
    """n * I-Con for k-means: L_prob-kmeans / sigma^2 - sum_i H(q_i) + sum_i log Z_i.

    (The paper's 1 / (2 sigma^2) multiplies Corollary 4's sum_ij q_ij ||x_i - x_j||^2, which is
    twice Proposition 2's objective.) Z_i = sum_k exp(-||x_i - x_k||^2 / 2 sigma^2), k = i
    included, is the constant the theorem leaves implicit.
    """
    log_Z = logsumexp(-sqdist(X) / (2 * sigma**2), axis=1)
    return prob_kmeans_objective(X, logits) / sigma**2 - entropy_rows(cluster_q(logits)).sum() + log_Z.sum()


@pytest.mark.parametrize("sigma", [None, 0.7])
def test_row_kmeans(rng, sigma):
    """Probabilistic k-means (Theorem 9), reverse KL(q || p), against Proposition 2's objective."""
    n = 15
    X = rng.randn(n, 2) + np.repeat(np.array([[0, 0], [3, 0], [0, 3]]), 5, axis=0)
    logits = 2.0 * rng.randn(n, 3)
    row = get_method("kmeans")
    p = row.make_p() if sigma is None else row.make_p(sigma=sigma)
    s = p.sigma
    got = n * float(row.loss(X, logits, p=p))
    wrong = n * float(row.loss(X, logits, p=row.make_p(sigma=s * 1.1)))
    assert_row_equivalence(got, theorem9_rhs(X, logits, s), wrong)


def spectral_embedding(A, n_components):
    """Ng-Jordan-Weiss: top eigenvectors of D^-1/2 A D^-1/2, rows scaled to unit norm."""
    d = A.sum(axis=1)
    M = A / np.sqrt(np.outer(d, d))
    _, vecs = np.linalg.eigh(M)
    U = vecs[:, ::-1][:, :n_components]
    return U / np.linalg.norm(U, axis=1, keepdims=True)


def test_row_spectral(rng):
    """Spectral clustering (Corollary 5) is k-means on the spectral embedding: with the hard
    assignment that scikit-learn's KMeans finds there, n L = inertia / sigma^2
    - sum_i log|C(i)| + sum_i log Z_i (q(.|i) is uniform over i's cluster)."""
    from sklearn.cluster import KMeans

    n = 18
    pts = rng.randn(n, 2) * 0.3 + np.repeat(np.array([[0, 0], [4, 0], [0, 4]]), 6, axis=0)
    A = np.exp(-sqdist(pts) / 2.0)
    np.fill_diagonal(A, 0.0)
    U = spectral_embedding(A, 3)
    km = KMeans(n_clusters=3, n_init=10, random_state=0).fit(U)
    logits = 60.0 * (np.eye(3)[km.labels_] - 0.5)  # hard to float64 precision
    sizes = np.bincount(km.labels_)[km.labels_]
    log_Z = logsumexp(-sqdist(U) / 2.0, axis=1)
    expected = km.inertia_ - np.log(sizes).sum() + log_Z.sum()
    row = get_method("spectral")
    got = n * float(row.loss(U, logits))
    wrong = n * float(row.loss(U, logits, p=row.make_p(sigma=1.1)))
    assert_row_equivalence(got, expected, wrong, rtol=1e-7)
    # the soft identity holds on the embedding as well
    soft = 1.5 * rng.randn(n, 3)
    assert np.isclose(n * float(row.loss(U, soft)), theorem9_rhs(U, soft, 1.0), rtol=1e-9)


def soft_ncut(A, logits):
    """Shi & Malik's normalized cut, sum_c cut(c, not c) / vol(c), with soft memberships phi."""
    phi = softmax_rows(logits)
    d = A.sum(axis=1)
    vol = phi.T @ d
    assoc = np.einsum("ic,ij,jc->c", phi, A, phi)
    return float(np.sum((vol - assoc) / vol))


def test_row_ncut(rng):
    """Normalized cuts (Theorem 11), reverse KL with p(j|i) ∝ exp(w_ij / d_j) (Table 1) and the
    degree-weighted cluster kernel: n L = Ncut - m - sum_i H(q_i) + sum_i log Z_i, where
    sum_ij q_ij w_ij / d_j = sum_c assoc(c) / vol(c) = m - Ncut. The graph is a sparse k-NN
    graph, where the loss must stay finite."""
    n, m = 16, 3
    pts = rng.randn(n, 2) * 0.4 + np.repeat(np.array([[0, 0], [3, 0], [0, 3], [3, 3]]), 4, axis=0)
    D = sqdist(pts)
    np.fill_diagonal(D, np.inf)
    A = np.zeros((n, n))
    nearest = np.argsort(D, axis=1)[:, :3]
    A[np.repeat(np.arange(n), 3), nearest.ravel()] = rng.uniform(0.5, 2.0, size=3 * n)
    A = np.maximum(A, A.T)
    d = A.sum(axis=1)
    logits = 2.0 * rng.randn(n, m)
    phi = softmax_rows(logits)
    q = (phi / (phi.T @ d)) @ (phi * d[:, None]).T  # q_ij = sum_c phi_ic phi_jc d_j / vol_c
    assert np.allclose(q.sum(axis=1), 1.0)
    log_Z = logsumexp(A / d[None, :], axis=1)
    expected = soft_ncut(A, logits) - m - entropy_rows(q).sum() + log_Z.sum()
    row = get_method("ncut")
    got = n * float(row.loss(A, logits))
    wrong = n * float(row.loss(A, logits, p=Graph(exponential=True)))
    assert np.isfinite(got)
    assert_row_equivalence(got, expected, wrong)

    # hard partition into the four groups: Ncut from explicit cut and volume sums
    labels = np.repeat(np.arange(4), 4)
    hard = 60.0 * (np.eye(4)[labels] - 0.5)
    ncut = sum(A[labels == c][:, labels != c].sum() / A[labels == c].sum() for c in range(4))
    sizes_entropy = 0.0
    for c in range(4):  # q(.|i) ∝ d_j on i's cluster
        dc = d[labels == c] / d[labels == c].sum()
        sizes_entropy += 4 * -(dc * np.log(dc)).sum()
    assert np.isclose(n * float(row.loss(A, hard)), ncut - 4 - sizes_entropy + log_Z.sum(), rtol=1e-9)


def knn_indices(X, k):
    D = sqdist(X)
    np.fill_diagonal(D, np.inf)
    return np.argsort(D, axis=1, kind="stable")[:, :k]


def test_row_mi(rng):
    """Mutual-information clustering (Theorem 10) against TEMI's pointwise-MI loss (beta = 1,
    one head, student = teacher): L_PMI = -mean_{i, j in kNN(i)} log sum_c phi_ic phi_jc / pi_c,
    pi_c the cluster marginal. Since q_ij = sum_c phi_ic phi_jc / (n pi_c) and p = 1/k on the
    k-NN, I-Con = L_PMI + log(n / k)."""
    n, k = 20, 10
    X, logits = rng.randn(n, 3), 1.5 * rng.randn(n, 4)
    phi = softmax_rows(logits)
    pi = phi.mean(axis=0)
    nn = knn_indices(X, k)
    pmi = [np.log(np.sum(phi[i] * phi[j] / pi)) for i in range(n) for j in nn[i]]
    expected = -np.mean(pmi) + np.log(n / k)
    row = get_method("mi")
    assert row.make_p().n_neighbors == k
    assert_row_equivalence(row.loss(X, logits), expected, row.loss(X, logits, p=UniformKNN(n_neighbors=9)))


def test_row_infonce_clustering(rng):
    """InfoNCE clustering (Section 3.3), rebuilt from the paper's definitions:
    P = uniform 5-NN; propagation P~ ∝ P + P^2 (walks of length <= 2, self not a candidate);
    debiasing (eq. 2) p~ = (1 - a) P~ + a / (n - 1) over j != i; q~ = (1 - a) q + a / n with the
    cluster kernel q (self included, so n candidates)."""
    n, k, a = 14, 5, 0.6
    X, logits = rng.randn(n, 3), 1.5 * rng.randn(n, 3)
    P = np.zeros((n, n))
    P[np.repeat(np.arange(n), k), knn_indices(X, k).ravel()] = 1.0 / k
    walks = P + P @ P
    np.fill_diagonal(walks, 0.0)
    p = (1 - a) * walks / walks.sum(axis=1, keepdims=True) + a / (n - 1) * off_diagonal(n)
    q = (1 - a) * cluster_q(logits) + a / n
    expected = kl_rows(p, np.log(q)).mean()
    row = get_method("infonce_clustering")
    wrong = row.loss(X, logits, q=Debiased(ClusterKernel(), alpha=0.5))
    assert_row_equivalence(row.loss(X, logits), expected, wrong)


def test_every_row_has_an_equivalence_test():
    names = [m.name for m in list_methods()]
    assert len(names) >= 14
    module = sys.modules[__name__]
    missing = [name for name in names if not callable(getattr(module, f"test_row_{name}", None))]
    assert not missing, f"rows without an equivalence test: {missing}"


# --------------------------------------------------------------------------------------------
# the definitions the rows rely on
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("perplexity", [2.0, 7.5, 20.0])
@pytest.mark.parametrize("n_neighbors", ["auto", None])
def test_perplexity_calibration_reaches_target(rng, perplexity, n_neighbors):
    """Each row's perplexity exp(H_i) (H in nats, = 2^H_bits) is the target within 1e-5,
    on data with very unequal local densities."""
    X = np.vstack([0.01 * rng.randn(30, 4), 10.0 * rng.randn(30, 4)])
    P = Gaussian(perplexity=perplexity, n_neighbors=n_neighbors).conditional(X)
    assert np.allclose(np.asarray(P.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    achieved = np.exp(entropy_rows(P.toarray()))
    assert np.max(np.abs(achieved - perplexity)) < 1e-5
    assert P.diagonal().max() == 0.0


def test_debiased_supervisory_fixture():
    """eq. 2 on a hand-computed fixture: groups [0, 0, 1, 1, 1], alpha = 0.3, 4 candidates per
    row (self excluded): p~ = 0.7 p + 0.3 / 4."""
    X = np.zeros((5, 1))
    P = Debiased(Views(), alpha=0.3).dense(X, groups=[0, 0, 1, 1, 1]).numpy()
    expected = np.array(
        [
            [0.0, 0.775, 0.075, 0.075, 0.075],
            [0.775, 0.0, 0.075, 0.075, 0.075],
            [0.075, 0.075, 0.0, 0.425, 0.425],
            [0.075, 0.075, 0.425, 0.0, 0.425],
            [0.075, 0.075, 0.425, 0.425, 0.0],
        ]
    )
    assert np.allclose(P, expected, atol=1e-15)


def test_debiased_learned_kernels_stay_normalised(rng):
    """On q, in log space: q~ = (1 - a) q + a / N, N the candidates of the row (n - 1 when the
    self pair is excluded, n for the cluster kernel, which includes it)."""
    Z = rng.randn(6, 2)
    a = 0.35
    q = np.exp(log_softmax_masked(-sqdist(Z) / 2.0, off_diagonal(6)))
    got = Debiased(Gaussian(sigma=1.0), alpha=a).prob(Z).numpy()
    assert np.allclose(got, ((1 - a) * q + a / 5) * off_diagonal(6), atol=1e-15)
    logits = rng.randn(6, 3)
    got = Debiased(ClusterKernel(), alpha=a).prob(logits).numpy()
    assert np.allclose(got, (1 - a) * cluster_q(logits) + a / 6, atol=1e-15)
    for kernel in (Debiased(StudentT(), alpha=a), Debiased(Cosine(), alpha=0.9), Debiased(ClusterKernel(), 0.1)):
        assert np.allclose(kernel.prob(logits).sum(dim=1).numpy(), 1.0, atol=1e-12)


def test_debiased_rows_normalised_on_knn_graph(rng):
    X = rng.randn(25, 3)
    P = Debiased(Propagated(UniformKNN(n_neighbors=4), walk_length=3), alpha=0.2).dense(X).numpy()
    assert np.allclose(P.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.diag(P) == 0.0) and P[off_diagonal(25)].min() >= 0.2 / 24 - 1e-15


def test_propagated_fixture():
    """Points 0, 1, 3, 6 on a line, 1-NN graph 0->1, 1->0, 3->1, 6->3. Hand-computed walks:

    P + P^2 rows (self removed, normalised): [0,1,0,0] [1,0,0,0] [.5,.5,0,0] [0,.5,.5,0]
    P + P^2 + P^3: row of 3 is [1, 2, 0, 0] -> [1/3, 2/3, 0, 0]; row of 6 is [1, 1, 1, 0].
    Uniform weighting: uniform over the reachable set.
    """
    X = np.array([[0.0], [1.0], [3.0], [6.0]])
    P2 = Propagated(UniformKNN(n_neighbors=1), walk_length=2).conditional(X).toarray()
    assert np.allclose(P2, [[0, 1, 0, 0], [1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0]])
    P3 = Propagated(UniformKNN(n_neighbors=1), walk_length=3).conditional(X).toarray()
    assert np.allclose(P3, [[0, 1, 0, 0], [1, 0, 0, 0], [1 / 3, 2 / 3, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0]])
    U3 = Propagated(UniformKNN(n_neighbors=1), walk_length=3, weighting="uniform").conditional(X).toarray()
    assert np.allclose(U3, [[0, 1, 0, 0], [1, 0, 0, 0], [0.5, 0.5, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0]])
    P1 = Propagated(UniformKNN(n_neighbors=1), walk_length=1).conditional(X).toarray()
    assert np.allclose(P1, UniformKNN(n_neighbors=1).conditional(X).toarray())


def test_propagated_matches_matrix_powers(rng):
    """P~ ∝ P + ... + P^s (diagonal removed) against dense numpy powers; rows sum to one."""
    X = rng.randn(20, 2)
    k, s = 3, 4
    P = np.zeros((20, 20))
    P[np.repeat(np.arange(20), k), knn_indices(X, k).ravel()] = 1.0 / k
    walks = sum(np.linalg.matrix_power(P, t) for t in range(1, s + 1))
    np.fill_diagonal(walks, 0.0)
    got = Propagated(UniformKNN(n_neighbors=k), walk_length=s).conditional(X).toarray()
    assert np.allclose(got, walks / walks.sum(axis=1, keepdims=True), atol=1e-14)
    uniform = Propagated(UniformKNN(n_neighbors=k), walk_length=s, weighting="uniform").conditional(X).toarray()
    reach = (walks > 0).astype(float)
    assert np.allclose(uniform, reach / reach.sum(axis=1, keepdims=True), atol=1e-14)
