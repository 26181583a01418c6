"""The compiled CPU kernels against dense float64 formulas and against the torch engine."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from skicon._threads import thread_limits
from skicon.objectives import _compiled as ck
from skicon.objectives import _pairwise as _tsne
from skicon.kernels import Gaussian, StudentT

pytestmark = pytest.mark.skipif(not ck.available(), reason="numba is not installed")


def _dense_kernel(d2, code, dof, inv2s2):
    """w and g = -dlog w / d(d^2) written out independently of the library."""
    if code == ck.GAUSSIAN:
        return np.exp(-d2 * inv2s2), np.full_like(d2, inv2s2)
    w = (1.0 + d2 / dof) ** (-(dof + 1.0) / 2.0)
    return w, (dof + 1.0) / (2.0 * dof) / (1.0 + d2 / dof)


KERNELS = [(ck.CAUCHY, 1.0, 0.0), (ck.STUDENT, 0.6, 0.0), (ck.GAUSSIAN, 1.0, 0.35)]


@pytest.mark.parametrize("code,dof,inv2s2", KERNELS)
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("n_threads", [1, 3])
def test_repulsion_field_matches_dense_formula(code, dof, inv2s2, dim, n_threads):
    rng = np.random.RandomState(0)
    n = 800  # large enough that three threads really split the rows
    Y = rng.randn(n, dim) * 2.0
    c = rng.rand(n) + 0.5
    diff = Y[:, None, :] - Y[None, :, :]
    d2 = (diff**2).sum(-1)
    w, g = _dense_kernel(d2, code, dof, inv2s2)
    np.fill_diagonal(w, 0.0)
    with thread_limits(n_threads):
        assert len(ck._blocks(np.arange(n + 1), ck._n_blocks(n * n))) == n_threads
        z, F, S, L = ck.repulsion_field(Y, code, dof, inv2s2, charges=c, want_slope=True, want_logw=True)
    np.testing.assert_allclose(z, w.sum(1), rtol=1e-10)
    logw = np.log(np.where(np.eye(n, dtype=bool), 1.0, w))
    np.testing.assert_allclose(L, logw.sum(1), rtol=1e-10)
    np.testing.assert_allclose(F, ((w * g * c[None, :])[:, :, None] * diff).sum(1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(S, (g[:, :, None] * diff).sum(1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("code,dof,inv2s2", KERNELS)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_attraction_csr_matches_dense_formula(code, dof, inv2s2, n_threads):
    rng = np.random.RandomState(1)
    n = 400
    P = sp.random(n, n, density=0.6, random_state=rng, format="csr")
    Y = rng.randn(n, 2)
    diff = Y[:, None, :] - Y[None, :, :]
    w, g = _dense_kernel((diff**2).sum(-1), code, dof, inv2s2)
    Pd = P.toarray()
    with thread_limits(n_threads):
        F, plogw = ck.attraction_csr(Y, P.indptr.astype(np.int64), P.indices.astype(np.int32), P.data, code, dof,
                                     inv2s2, scale=1.7, want_loss=True)
        # the loss may weigh the same edges differently (the conditional p inside P + P^T)
        L = P.copy()
        L.data = rng.rand(L.nnz)
        _, plogw_l = ck.attraction_csr(Y, P.indptr.astype(np.int64), P.indices.astype(np.int32), P.data, code,
                                       dof, inv2s2, want_loss=True, loss_values=L.data)
        F0, none = ck.attraction_csr(Y, P.indptr.astype(np.int64), P.indices.astype(np.int32), P.data, code, dof,
                                     inv2s2, scale=1.7, want_loss=False)
    np.testing.assert_allclose(F, 1.7 * ((Pd * g)[:, :, None] * diff).sum(1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(plogw, (Pd * np.log(w)).sum(), rtol=1e-9)
    np.testing.assert_allclose(plogw_l, (L.toarray() * np.log(w)).sum(), rtol=1e-9)
    # computing the loss leaves the force bit for bit unchanged (default results do not move)
    assert none is None and np.array_equal(F0, F)


def test_blocks_cover_every_row_once():
    work = np.concatenate([[0], np.cumsum(np.random.RandomState(0).randint(0, 50, size=1000))])
    for k in (1, 2, 3, 7):
        ranges = ck._blocks(work, k)
        assert ranges[0][0] == 0 and ranges[-1][1] == 1000
        assert all(a[1] == b[0] for a, b in zip(ranges[:-1], ranges[1:]))


def _affinity(n, rng, norm, dtype):
    P = sp.random(n, n, density=0.05, random_state=rng, format="csr")
    P.setdiag(0)
    P.eliminate_zeros()
    P = (sp.diags(1.0 / np.asarray(P.sum(1)).ravel()) @ P).tocsr()
    if norm == "joint":
        return _tsne.SparseAffinity(_tsne.joint_from_conditional(P), "cpu", dtype)
    return _tsne.SparseAffinity.conditional(P, "cpu", dtype)


@pytest.mark.parametrize("kind,dof", [("student", 1.0), ("student", 0.7), ("gaussian", 1.0)])
@pytest.mark.parametrize("norm", ["joint", "conditional"])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("dim", [1, 2])
def test_engine_gradient_and_loss_equal_torch_path(kind, dof, norm, alpha, dim, monkeypatch):
    rng = np.random.RandomState(2)
    n = 300
    aff = _affinity(n, rng, norm, torch.float64)
    Y = torch.as_tensor(rng.randn(n, dim) * 3, dtype=torch.float64)
    kernel = StudentT(dof=dof) if kind == "student" else Gaussian(sigma=0.5**0.5)
    kw = dict(normalization=norm, alpha=alpha, method="exact", want_loss=True, exaggeration=2.0)
    g_fast, l_fast = _tsne.objective_and_gradient(Y, aff, kernel, **kw)
    monkeypatch.setattr(_tsne, "_COMPILED", False)
    g_ref, l_ref = _tsne.objective_and_gradient(Y, aff, kernel, **kw)
    # the torch path forms sum_j w_ij (y_i - y_j) as y_i sum_j w_ij - sum_j w_ij y_j, which cancels
    # for isolated points (tiny Z_i under the Gaussian): compare on the scale of the whole gradient
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-7, atol=1e-9 * float(g_ref.abs().max()))
    assert l_fast == pytest.approx(l_ref, rel=1e-10)


@pytest.mark.parametrize("dim", [1, 2])
def test_fft_total_equals_sum_of_interpolated_row_sums(dim):
    rng = np.random.RandomState(3)
    n = 2000
    Y = torch.as_tensor(rng.randn(n, dim) * 15, dtype=torch.float64)
    one = torch.ones(n, 1, dtype=torch.float64)
    kernel = StudentT()
    plan = _tsne.grid_plan(Y)
    via_rows = plan.gather(plan.potentials(kernel.weight, one), plan.index, plan.weights).sum()
    total = plan.total(plan.charge_spectrum(one), kernel.weight)
    assert float(total) == pytest.approx(float(via_rows), rel=1e-10)
    exact = float(_tsne.exact_kernel_sums(Y, kernel.weight, one).sum()) - n
    approx = float(total + plan.self_error(kernel.weight).sum()) - n
    assert approx == pytest.approx(exact, rel=1e-4)
