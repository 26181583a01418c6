"""Gradients of the I-Con loss through every learned kernel, in float64.

``torch.autograd.gradcheck`` compares autograd with finite differences for each learned kernel
(plain, debiased, with separate candidates, with excluded pairs, degree-weighted), both
divergence directions, sparse supervisory input and every row of the periodic table. Two
classic closed-form gradients are checked as well: SNE's (Hinton & Roweis, 2002) and the joint
t-SNE gradient of van der Maaten & Hinton (2008).
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.autograd import gradcheck

from skicon import get_method, icon_loss, list_methods
from skicon.kernels import (
    ClusterKernel,
    Cosine,
    Debiased,
    DotProduct,
    Gaussian,
    Prototypes,
    StudentT,
    Symmetrized,
)

N, DIM = 6, 3


@pytest.fixture(autouse=True)
def _single_thread():
    """These tensors are tiny: torch's intra-op threads only add synchronisation cost (50x on a
    busy 2-core machine for the cluster kernel's 3-d logsumexp). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_conditional(rng, n, m, *, zero_diagonal, density=0.6):
    P = rng.rand(n, m) * (rng.rand(n, m) < density)
    P[np.arange(n), (np.arange(n) + 1) % m] += 0.5  # every row has mass off the diagonal
    if zero_diagonal:
        P[np.arange(n), np.arange(n)] = 0.0
    return torch.tensor(P / P.sum(axis=1, keepdims=True))


def representation(rng, n=N, d=DIM):
    return torch.tensor(rng.randn(n, d), dtype=torch.float64, requires_grad=True)


LEARNED = {
    "gaussian": (Gaussian(sigma=0.8), {}),
    "gaussian_self": (Gaussian(sigma=1.3, include_self=True), {}),
    "cauchy": (StudentT(dof=1.0), {}),
    "student_t_real_dof": (StudentT(dof=2.7), {}),
    "cosine": (Cosine(temperature=0.5), {}),
    "dot_product": (DotProduct(temperature=0.7), {}),
    "cluster": (ClusterKernel(), {}),
    "cluster_no_self": (ClusterKernel(include_self=False), {}),
    "cluster_degree": (
        ClusterKernel(degree_weighted=True),
        {"degrees": torch.linspace(0.5, 3.0, N, dtype=torch.float64)},
    ),
    "debiased_gaussian": (Debiased(Gaussian(), alpha=0.3), {}),
    "debiased_student_t": (Debiased(StudentT(dof=0.5), alpha=0.2), {}),
    "debiased_cosine": (Debiased(Cosine(temperature=0.3), alpha=0.4), {}),
    "debiased_cluster": (Debiased(ClusterKernel(), alpha=0.6), {}),
    "debiased_cluster_degree": (
        Debiased(ClusterKernel(degree_weighted=True), alpha=0.2),
        {"degrees": torch.linspace(1.0, 2.0, N, dtype=torch.float64)},
    ),
}


@pytest.mark.parametrize("name", sorted(LEARNED))
def test_gradcheck_forward_kl_through_kernel(name):
    rng = np.random.RandomState(0)
    kernel, kwargs = LEARNED[name]
    P = random_conditional(rng, N, N, zero_diagonal=not kernel.include_self)
    Z = representation(rng)
    assert gradcheck(lambda Z: icon_loss(P, kernel.log_prob(Z, **kwargs)), (Z,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "name",
    ["gaussian", "student_t_real_dof", "cosine", "dot_product", "cluster", "debiased_gaussian", "debiased_cluster"],
)
def test_gradcheck_with_separate_candidates(name):
    """Anchors against another candidate set (a teacher, a memory bank): both get gradients."""
    rng = np.random.RandomState(1)
    kernel, _ = LEARNED[name]
    P = random_conditional(rng, 4, 7, zero_diagonal=False)
    Z, C = representation(rng, 4), representation(rng, 7)
    assert gradcheck(lambda Z, C: icon_loss(P, kernel.log_prob(Z, C)), (Z, C), eps=1e-6, atol=1e-7)


def test_gradcheck_with_excluded_pairs():
    """Triplet-style candidate sets (one positive, one negative per anchor)."""
    rng = np.random.RandomState(2)
    keep = torch.zeros(N, N, dtype=torch.bool)
    keep[torch.arange(N), (torch.arange(N) + 1) % N] = True
    keep[torch.arange(N), (torch.arange(N) + 3) % N] = True
    P = torch.zeros(N, N, dtype=torch.float64)
    P[torch.arange(N), (torch.arange(N) + 1) % N] = 1.0
    Z = representation(rng)
    for kernel in (Gaussian(sigma=0.7), StudentT(), ClusterKernel(), Debiased(Gaussian(), 0.3)):
        assert gradcheck(lambda Z: icon_loss(P, kernel.log_prob(Z, exclude=~keep)), (Z,), eps=1e-6, atol=1e-7)


def test_gradcheck_prototypes_in_features_and_prototypes():
    rng = np.random.RandomState(3)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    P = torch.nn.functional.one_hot(y, 3).to(torch.float64)
    Z, W = representation(rng), representation(rng, 3)
    for kernel in (Prototypes(), Prototypes(temperature=0.4)):
        assert gradcheck(lambda Z, W: icon_loss(P, kernel.log_prob(Z, W)), (Z, W), eps=1e-6, atol=1e-7)
    smoothed = Debiased(Prototypes(), alpha=0.1).finalize_block(P)
    assert gradcheck(lambda Z, W: icon_loss(smoothed, Prototypes().log_prob(Z, W)), (Z, W), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "kernel",
    [ClusterKernel(), Debiased(ClusterKernel(), alpha=0.3), Gaussian(include_self=True)],
    ids=["cluster", "debiased_cluster", "gaussian_self"],
)
def test_gradcheck_reverse_kl(kernel):
    """KL(q || p) (the k-means row, Theorem 9) with p positive everywhere."""
    rng = np.random.RandomState(4)
    P = torch.tensor(rng.rand(N, N) + 0.1)
    P = P / P.sum(dim=1, keepdim=True)
    Z = representation(rng)
    assert gradcheck(lambda Z: icon_loss(P, kernel.log_prob(Z), direction="reverse"), (Z,), eps=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
def test_gradcheck_sparse_supervision():
    rng = np.random.RandomState(5)
    P = sp.csr_matrix(random_conditional(rng, N, N, zero_diagonal=True).numpy())
    Z = representation(rng)
    assert gradcheck(lambda Z: icon_loss(P, StudentT().log_prob(Z)), (Z,), eps=1e-6, atol=1e-7)


def row_inputs(name, rng, n=8):
    """Small inputs for ``MethodSpec.loss`` of each row (differentiable Z)."""
    X = rng.randn(n, 3)
    groups = np.r_[np.arange(n // 2), np.arange(n // 2)]
    kwargs, extra = {}, ()
    needs = get_method(name).needs
    if "groups" in needs:
        kwargs["groups"] = groups
    if "views" in needs:
        kwargs["views"] = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
    if "y" in needs:
        kwargs["y"] = np.arange(n) % 3
    if name in ("sne", "tsne"):
        kwargs["p"] = Gaussian(perplexity=3.0)
    if name == "pca":  # at the row's sigma = 1e3 the gradient is ~1e-6: check a finite width
        kwargs["q"] = Gaussian(sigma=2.0, include_self=True)
    if name == "mds":  # likewise (the loss itself is ~1e-12 at sigma = 1e3)
        kwargs["p"], kwargs["q"] = Gaussian(sigma=2.0, n_neighbors=None), Gaussian(sigma=2.0)
    if name == "triplet":
        keep = np.zeros((n, n), dtype=bool)
        keep[np.arange(n), (np.arange(n) + n // 2) % n] = True
        keep[np.arange(n), (np.arange(n) + 1) % n] = True
        kwargs["exclude"] = torch.tensor(~keep)
    if name == "ncut":
        X = np.exp(-((X[:, None] - X[None]) ** 2).sum(-1))
        np.fill_diagonal(X, 0.0)
    width = 3 if get_method(name).estimator == "ICONClustering" else 2
    Z = representation(rng, n, width)
    if "prototypes" in needs:
        extra = (representation(rng, 3, width),)
    return X, Z, kwargs, extra


@pytest.mark.parametrize("name", [m.name for m in list_methods()])
def test_gradcheck_every_row(name):
    rng = np.random.RandomState(6)
    row = get_method(name)
    X, Z, kwargs, extra = row_inputs(name, rng)
    if extra:
        fn = lambda Z, W: row.loss(X, Z, prototypes=W, **kwargs)  # noqa: E731
    else:
        fn = lambda Z: row.loss(X, Z, **kwargs)  # noqa: E731
    # The row recomputes p (neighbour search, calibration) on every call, so the finite
    # differences are taken along random directions (fast mode) rather than per coordinate; the
    # kernels themselves are checked coordinate by coordinate above.
    assert gradcheck(fn, (Z, *extra), eps=1e-6, atol=1e-7, fast_mode=True)


def test_sne_gradient_of_hinton_and_roweis():
    """dC/dy_i = 2 sum_j (p_j|i - q_j|i + p_i|j - q_i|j)(y_i - y_j), C = sum_i KL = n L."""
    rng = np.random.RandomState(7)
    n = 10
    X = rng.randn(n, 4)
    Y = representation(rng, n, 2)
    P = Gaussian(perplexity=4.0).dense(X)
    log_q = Gaussian(sigma=np.sqrt(0.5)).log_prob(Y)
    (n * icon_loss(P, log_q)).backward()
    Pn, Qn, Yn = P.numpy(), torch.exp(log_q).detach().numpy(), Y.detach().numpy()
    M = Pn - Qn + Pn.T - Qn.T
    expected = 2 * (M.sum(axis=1)[:, None] * Yn - M @ Yn)
    assert np.allclose(Y.grad.numpy(), expected, atol=1e-12)


def test_joint_tsne_gradient_of_van_der_maaten():
    """dC/dy_i = 4 sum_j (p_ij - q_ij)(y_i - y_j)(1 + ||y_i - y_j||^2)^-1 for the joint KL."""
    rng = np.random.RandomState(8)
    n = 10
    X = rng.randn(n, 4)
    Y = representation(rng, n, 2)
    Pj = torch.tensor(Symmetrized(Gaussian(perplexity=4.0), mode="joint").conditional(X).toarray())
    logw = StudentT(dof=1.0).log_weights(Y).masked_fill(torch.eye(n, dtype=torch.bool), float("-inf")).reshape(1, -1)
    log_qj = logw - torch.logsumexp(logw, dim=1, keepdim=True)
    icon_loss(Pj.reshape(1, -1), log_qj).backward()
    Yn = Y.detach().numpy()
    W = 1.0 / (1.0 + ((Yn[:, None] - Yn[None]) ** 2).sum(-1))
    np.fill_diagonal(W, 0.0)
    M = (Pj.numpy() - W / W.sum()) * W
    expected = 4 * (M.sum(axis=1)[:, None] * Yn - M @ Yn)
    assert np.allclose(Y.grad.numpy(), expected, atol=1e-12)
