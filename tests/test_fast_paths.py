"""The fast PCA, MDS, Gaussian-q and 3-D paths of ICONEmbedding: the same objectives, solved fast.

Correctness properties only (no timings: those are in benchmarks/bench_paths.py): the new
compiled loops against dense float64 formulas, the engine's closed-form gradients against
autograd of the dense I-Con loss, and the PCA / MDS rows reaching their optimum by LBFGS.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.linalg import subspace_angles
from sklearn.datasets import load_digits, make_blobs
from sklearn.decomposition import PCA

import skicon._embedding_limits as limits
from skicon import get_method, icon_loss
from skicon._embedding import ICONEmbedding
from skicon.kernels import Gaussian, StudentT
from skicon.objectives import _compiled as ck
from skicon.objectives import _compiled3d as c3
from skicon.objectives import _compiled_cond as cc
from skicon.objectives import _pairwise as engine
from skicon.objectives._limits import LimitObjective, self_included_identity_loss
from skicon._threads import thread_limits

pytestmark = pytest.mark.skipif(not ck.available(), reason="numba is not installed")


def _dense_kernel(d2, code, dof, inv2s2):
    """w and g = -dlog w / d(d^2), written out independently of the library."""
    if code == ck.GAUSSIAN:
        return np.exp(-d2 * inv2s2), np.full_like(d2, inv2s2)
    w = (1.0 + d2 / dof) ** (-(dof + 1.0) / 2.0)
    return w, (dof + 1.0) / (2.0 * dof) / (1.0 + d2 / dof)


def _random_conditional(n, density=0.2, seed=0):
    P = sp.random(n, n, density=density, random_state=seed).tocsr()
    P.setdiag(0)
    P.eliminate_zeros()
    return sp.csr_matrix(sp.diags(1.0 / np.asarray(P.sum(axis=1)).ravel()) @ P)


# ------------------------------------------------------------------------------------------------
# the compiled loops
# ------------------------------------------------------------------------------------------------
def test_vectorised_exponential_is_accurate_and_underflows_to_zero():
    a = -np.concatenate([np.linspace(0.0, 707.99, 100_001), np.logspace(-14, np.log10(707.99), 2_001)])
    rel = np.abs(c3.exp_neg(a) / np.exp(a) - 1.0)
    assert rel.max() < 1e-11
    assert np.all(c3.exp_neg(np.array([-708.5, -1e4, -np.inf])) == 0.0)
    # the wide-Gaussian regime's polynomial on [-1, 0]: exp to a few units of rounding
    u = -np.linspace(0.0, 1.0, 100_001)
    assert np.abs(c3.exp_neg(u, unit=True) / np.exp(u) - 1.0).max() < 4 * np.finfo(np.float64).eps


KERNELS = [(ck.CAUCHY, 1.0, 0.0), (ck.STUDENT, 0.6, 0.0), (ck.GAUSSIAN, 1.0, 0.35), (ck.GAUSSIAN, 1.0, 1e-4)]


@pytest.mark.parametrize("code,dof,inv2s2", KERNELS, ids=["cauchy", "student", "gauss", "wide-gauss"])
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("n_threads", [1, 3])
def test_repulsion_field_3d_matches_dense_formula(code, dof, inv2s2, dim, n_threads):
    rng = np.random.RandomState(0)
    n = 700
    Y = rng.randn(n, dim) * 2.0
    c = rng.rand(n) + 0.5
    diff = Y[:, None, :] - Y[None, :, :]
    d2 = (diff**2).sum(-1)
    w, g = _dense_kernel(d2, code, dof, inv2s2)
    np.fill_diagonal(w, 0.0)
    with thread_limits(n_threads):
        z, F, S, L = c3.repulsion_field(Y, code, dof, inv2s2, charges=c, want_slope=True, want_logw=True)
    # the vectorised exponential is within 1e-11 of exp; the wide Gaussian uses the library one
    rtol = 1e-13 if (code == ck.GAUSSIAN and inv2s2 < 1e-3) else 1e-10
    np.testing.assert_allclose(z, w.sum(1), rtol=rtol)
    logw = np.log(np.where(np.eye(n, dtype=bool), 1.0, w))
    np.testing.assert_allclose(L, logw.sum(1), rtol=1e-10)
    F_ref = ((w * g * c[None, :])[:, :, None] * diff).sum(1)
    np.testing.assert_allclose(F, F_ref, rtol=1e-9, atol=1e-12 * np.abs(F_ref).max())
    np.testing.assert_allclose(S, (g[:, :, None] * diff).sum(1), rtol=1e-9, atol=1e-12)


def test_the_wide_gaussian_switches_to_the_exact_exponential():
    Y = np.random.RandomState(1).randn(300, 2)
    z_auto = c3.repulsion_field(Y, ck.GAUSSIAN, inv2s2=1e-4)[0]
    z_lib = c3.repulsion_field(Y, ck.GAUSSIAN, inv2s2=1e-4, precise=True)[0]
    z_poly = c3.repulsion_field(Y, ck.GAUSSIAN, inv2s2=1e-4, precise=False)[0]
    np.testing.assert_array_equal(z_auto, z_lib)
    # both are sums of weights near 1; they differ by the polynomial's rounding only
    np.testing.assert_allclose(z_poly, z_lib, rtol=1e-10)


@pytest.mark.parametrize("code,dof,inv2s2", KERNELS, ids=["cauchy", "student", "gauss", "wide-gauss"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_one_pass_conditional_field_matches_dense_formula_whatever_the_threads(code, dof, inv2s2, dim):
    rng = np.random.RandomState(2)
    n = 500
    Y = rng.randn(n, dim) * 2.0
    diff = Y[:, None, :] - Y[None, :, :]
    w, g = _dense_kernel((diff**2).sum(-1), code, dof, inv2s2)
    np.fill_diagonal(w, 0.0)
    Z = w.sum(1)
    outs = []
    for n_threads in (1, 3):
        with thread_limits(n_threads):
            outs.append(cc.conditional_field(Y, code, dof, inv2s2))
    z, own, other = outs[0]
    np.testing.assert_allclose(z, Z, rtol=1e-10)
    own_ref = ((w * g)[:, :, None] * diff).sum(1) / Z[:, None]
    other_ref = ((w * g / Z[None, :])[:, :, None] * diff).sum(1)
    np.testing.assert_allclose(own, own_ref, rtol=1e-9, atol=1e-12 * np.abs(own_ref).max())
    np.testing.assert_allclose(other, other_ref, rtol=1e-9, atol=1e-12 * np.abs(other_ref).max())
    for a, b in zip(outs[0], outs[1]):  # fixed row blocks: bit-identical on any thread count
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("code,dof,inv2s2", KERNELS[:3], ids=["cauchy", "student", "gauss"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_attraction_csr_3d_matches_dense_formula(code, dof, inv2s2, n_threads):
    rng = np.random.RandomState(1)
    n = 300
    P = sp.random(n, n, density=0.5, random_state=rng, format="csr")
    Y = rng.randn(n, 3)
    diff = Y[:, None, :] - Y[None, :, :]
    w, g = _dense_kernel((diff**2).sum(-1), code, dof, inv2s2)
    Pd = P.toarray()
    with thread_limits(n_threads):
        F, plogw = c3.attraction_csr(Y, P.indptr.astype(np.int64), P.indices.astype(np.int32), P.data, code, dof,
                                     inv2s2, scale=1.7, want_loss=True)
    np.testing.assert_allclose(F, 1.7 * ((Pd * g)[:, :, None] * diff).sum(1), rtol=1e-9, atol=1e-12)
    assert plogw == pytest.approx(float((Pd * np.log(w)).sum()), rel=1e-10)


# ------------------------------------------------------------------------------------------------
# the engine on the new loops: exact against autograd of the dense I-Con loss (200 points)
# ------------------------------------------------------------------------------------------------
GAUSS_KERNELS = [StudentT(dof=1.0), StudentT(dof=0.6), Gaussian(sigma=0.5**0.5), Gaussian(sigma=1.3)]
IDS = ["cauchy", "dof0.6", "sne-gauss", "gauss1.3"]


@pytest.mark.parametrize("kernel", GAUSS_KERNELS, ids=IDS)
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_conditional_engine_matches_autograd_of_icon_loss(kernel, dim, alpha):
    n = 200
    Pc = _random_conditional(n, density=0.1, seed=3)
    aff = engine.SparseAffinity.conditional(Pc, "cpu", torch.float64)
    Y = torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    Yr = Y.clone().requires_grad_()
    P = torch.tensor(Pc.toarray())
    P = (1 - alpha) * P + alpha / (n - 1) * (~torch.eye(n, dtype=torch.bool))
    ref = icon_loss(P, kernel.log_prob(Yr))
    ref.backward()
    assert engine._use_compiled(Y, kernel) is not None  # the compiled loops serve it, 3-D included
    grad, loss = engine.objective_and_gradient(Y, aff, kernel, normalization="conditional", alpha=alpha,
                                               method="exact", want_loss=True)
    scale = float(Yr.grad.abs().max())
    np.testing.assert_allclose(grad.numpy(), Yr.grad.numpy(), rtol=1e-6, atol=1e-9 * scale)
    assert loss == pytest.approx(float(ref.detach()), rel=1e-6)


@pytest.mark.parametrize("kernel", GAUSS_KERNELS, ids=IDS)
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_joint_engine_in_3d_matches_autograd(kernel, alpha):
    n = 200
    J = engine.joint_from_conditional(_random_conditional(n, density=0.1, seed=4))
    aff = engine.SparseAffinity(J, "cpu", torch.float64)
    Y = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    Yr = Y.clone().requires_grad_()
    off = ~torch.eye(n, dtype=torch.bool)
    logw = kernel.log_weight(((Yr[:, None] - Yr[None]) ** 2).sum(-1))
    logQ = (logw - torch.logsumexp(logw[off], 0))[off]
    Pt = torch.tensor(J.toarray())[off] * (1 - alpha) + alpha / (n * (n - 1))
    ref = icon_loss(Pt[None], logQ[None])
    ref.backward()
    grad, loss = engine.objective_and_gradient(Y, aff, kernel, alpha=alpha, method="exact", want_loss=True)
    scale = float(Yr.grad.abs().max())
    np.testing.assert_allclose(grad.numpy(), Yr.grad.numpy(), rtol=1e-6, atol=1e-9 * scale)
    assert loss == pytest.approx(float(ref.detach()), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# the PCA and MDS rows
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dim", [2, 3])
def test_pca_row_loss_and_gradient_match_autograd(compiled, dim, monkeypatch):
    monkeypatch.setattr(engine, "_COMPILED", compiled)
    kernel = Gaussian(sigma=3.0, include_self=True)
    Y = torch.randn(200, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Yr = Y.clone().requires_grad_()
    ref = icon_loss(torch.eye(200, dtype=torch.float64), kernel.log_prob(Yr))
    ref.backward()
    grad, loss = self_included_identity_loss(Y, kernel)
    np.testing.assert_allclose(grad.numpy(), Yr.grad.numpy(), rtol=1e-6, atol=1e-9 * float(Yr.grad.abs().max()))
    assert loss == pytest.approx(float(ref.detach()), rel=1e-10)


def _angle(est, X):
    W = est.module_.weight().detach().numpy()
    return float(np.degrees(subspace_angles(W, PCA(2).fit(X).components_.T)).max())


def test_pca_row_reaches_the_principal_subspace_by_lbfgs_from_a_random_start(monkeypatch):
    X = load_digits().data[:400]
    est = ICONEmbedding(method="pca", random_state=0).fit(X)
    assert est.mode_ == "exact" and _angle(est, X) < 1.0
    # the start is only a start: from a random orthonormal map, LBFGS on the exact loss gets there
    rng = np.random.RandomState(1)
    monkeypatch.setattr(limits, "principal_directions",
                        lambda X, d, random_state, n_iter=4: np.linalg.qr(rng.randn(X.shape[1], d))[0])
    far = ICONEmbedding(method="pca", random_state=0).fit(X)
    assert far.n_iter_ > 5 and _angle(far, X) < 1.0
    assert far.loss_ == pytest.approx(est.loss_, rel=1e-9)
    ref = get_method("pca").loss(X, torch.tensor(far.embedding_), p=far.p_, q=far.q_)
    assert far.loss_ == pytest.approx(float(ref), rel=1e-8)


def test_mds_row_lbfgs_moves_from_its_start_to_a_stationary_point():
    X = load_digits().data[:300]
    est = ICONEmbedding(method="mds", random_state=0).fit(X)
    assert est.mode_ == "exact"
    # the wide limit's gradients are ~1e-9 of the embedding: without the rescaled first step
    # LBFGS never left the start. Here the loss falls and the gradient shrinks by 100x.
    Xc = X - X.mean(0)
    start = torch.as_tensor(Xc @ limits.principal_directions(X, 2, 0))
    obj = LimitObjective(est.q_, engine.SparseAffinity.conditional(est.affinities_, "cpu", torch.float64))
    g0, l0 = obj.loss_and_gradient(start)
    g1, l1 = obj.loss_and_gradient(torch.as_tensor(est.embedding_))
    assert l1 < l0 * (1 - 1e-3) and float(g1.norm()) < 1e-2 * float(g0.norm())
    ref = get_method("mds").loss(X, torch.tensor(est.embedding_), p=est.p_, q=est.q_)
    assert est.loss_ == pytest.approx(float(ref), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# the estimator on the new loops
# ------------------------------------------------------------------------------------------------
def test_gaussian_q_and_3d_tsne_run_the_compiled_loops(monkeypatch):
    X, y = make_blobs(n_samples=150, centers=3, n_features=6, cluster_std=0.5, random_state=0)
    calls = []
    for module, name in ((c3, "repulsion_field"), (cc, "conditional_field")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, **k: calls.append(a[0].shape) or _f(*a, **k))
    for kw in ({"q": Gaussian()}, {"method": "sne"}, {"n_components": 3}):
        calls.clear()
        est = ICONEmbedding(perplexity=10, max_iter=100, early_exaggeration_iter=30, random_state=0, **kw).fit(X)
        assert est.mode_ == "exact" and calls and calls[-1] == (150, est.n_components)
        # blobs stay apart: each point's nearest embedded neighbour is in its own blob
        d = ((est.embedding_[:, None] - est.embedding_[None]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        assert np.mean(y[d.argmin(1)] == y) > 0.95
        ref = get_method(est._plan.row).loss(X, torch.tensor(est.embedding_), p=est.p_, q=est.q_,
                                             normalization=est.normalization_)
        assert est.loss_ == pytest.approx(float(ref), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# the float32 Gaussian loops (a float32 embedding of the engine) and the stop at rest
# ------------------------------------------------------------------------------------------------
def test_float32_exponential_is_accurate_and_underflows_to_zero():
    a = -np.concatenate([np.linspace(0.0, 86.99, 100_001), np.logspace(-7, np.log10(86.99), 2_001)])
    a = a.astype(np.float32)
    out = c3.exp_neg32(a)
    assert out.dtype == np.float32
    # six squarings amplify float32 rounding about 64 times: ~1e-5, far below the float32 sums' own error
    assert np.abs(out / np.exp(a.astype(np.float64)) - 1.0).max() < 2e-5
    assert np.all(c3.exp_neg32(np.array([-87.01, -1e4, -np.inf])) == 0.0)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("n_threads", [1, 3])
def test_float32_gaussian_loops_agree_with_float64(dim, n_threads):
    rng = np.random.RandomState(3)
    Y = rng.randn(600, dim) * 3.0  # many pairs beyond float32's exp range (d^2 * 0.35 > 87)
    c = rng.rand(600) + 0.5
    with thread_limits(n_threads):
        r64 = c3.repulsion_field(Y, ck.GAUSSIAN, 1.0, 0.35, charges=c, want_slope=True, want_logw=True)
        r32 = c3.repulsion_field(Y.astype(np.float32), ck.GAUSSIAN, 1.0, 0.35, charges=c, want_slope=True,
                                 want_logw=True)
        c64 = cc.conditional_field(Y, ck.GAUSSIAN, 1.0, 0.35)
        c32 = cc.conditional_field(Y.astype(np.float32), ck.GAUSSIAN, 1.0, 0.35)
    assert all(a.dtype == np.float32 for a in r32[:3] + c32)
    for a, b in zip(r64[:3] + c64, r32[:3] + c32):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    np.testing.assert_allclose(r32[3], r64[3], rtol=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
def test_float32_gaussian_redoes_in_float64_a_row_near_underflow(dim):
    rng = np.random.RandomState(4)
    Y = rng.randn(200, dim)
    Y[0] = 0.0
    Y[0, 0] = Y[1:, 0].max() + 13.6  # d^2 * 0.5 >= 92 to every other point: float32's exp gives 0
    for field in (lambda A: c3.repulsion_field(A, ck.GAUSSIAN, 1.0, 0.5)[:2],
                  lambda A: cc.conditional_field(A, ck.GAUSSIAN, 1.0, 0.5)):
        ref = field(Y.astype(np.float32).astype(np.float64))
        out = field(Y.astype(np.float32))
        assert ref[0][0] > 0 and all(a.dtype == np.float32 for a in out)
        # the pass redone in float64, then cast: the isolated row keeps its (subnormal) weights,
        # and the conditional form its own-row force, which float32's zero weights would lose
        for a, b in zip(ref, out):
            np.testing.assert_array_equal(b, a.astype(np.float32))
        assert out[0][0] > 0 and np.all(out[1][0] != 0)


def test_engine_trains_the_compiled_gaussian_in_float32_only():
    g = Gaussian(sigma=np.sqrt(0.5))
    assert engine.engine_dtype(g, "cpu", 2, "exact") == torch.float32
    assert engine.engine_dtype(g, "cpu", 3, "exact") == torch.float32
    assert engine.engine_dtype(g, "cpu", 4, "exact") == torch.float64  # torch code: float32 underflows
    assert engine.engine_dtype(g, "cpu", 2, "fft") == torch.float64
    assert engine.engine_dtype(StudentT(), "cpu", 4, "fft") == torch.float32


def test_sne_stops_once_its_gradient_vanishes_at_the_loss_of_a_full_run(monkeypatch):
    import skicon._embedding as emb

    X = load_digits().data[:400]
    kw = dict(method="sne", perplexity=20, max_iter=1000, early_exaggeration_iter=100, random_state=0)
    stopped = ICONEmbedding(**kw).fit(X)
    assert stopped.n_iter_ < 1000 and stopped.n_iter_ % 50 == 0
    assert stopped.loss_curve_iterations_[-1] == stopped.n_iter_
    monkeypatch.setattr(emb, "GradientAtRest", lambda: (lambda trainer, loss: False))
    full = ICONEmbedding(**kw).fit(X)
    assert full.n_iter_ == 1000
    # the same objective solved as well: the remaining iterations do not move the loss
    assert stopped.loss_ == pytest.approx(full.loss_, rel=1e-5)
    # a heavy-tailed q keeps its max_iter
    assert ICONEmbedding(perplexity=20, max_iter=300, early_exaggeration_iter=100).fit(X).n_iter_ == 300
