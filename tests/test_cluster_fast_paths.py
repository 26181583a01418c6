"""The fast paths of ICONClustering's loss: each equals the plain formula it replaces (float64)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from skicon._cluster_train import whole_row_loss
from skicon.kernels import normalize_rows
from skicon.objectives._cluster import _UniformLogSum, cluster_kernel_loss


def _plain_uniform_log_sum(phi_s, w_u, cols_u, offset):
    """The uniform part as autograd sees it: log(phi_s w_u^T + offset) summed over j, self pairs out."""
    log_q = torch.log(torch.bmm(phi_s, w_u.transpose(1, 2)) + offset)
    j = torch.arange(cols_u.shape[0])
    return log_q.sum(dim=2).index_add(1, cols_u, -log_q[:, cols_u, j])


@pytest.mark.parametrize("m, n_u", [(30, 7), (12, 12)])
def test_uniform_log_sum_matches_autograd(m, n_u):
    gen = torch.Generator().manual_seed(m)
    phi_s = torch.rand(3, m, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w_u = torch.rand(3, n_u, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    cols_u = torch.randperm(m, generator=gen)[:n_u]
    weights = torch.randn(3, m, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (_UniformLogSum.apply, _plain_uniform_log_sum):
        out = fn(phi_s, w_u, cols_u, 0.05)
        grads.append((out.detach(), *torch.autograd.grad((out * weights).sum(), (phi_s, w_u))))
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda a, b: _UniformLogSum.apply(a, b, cols_u, 0.05), (phi_s, w_u))


def _dense_row_kl(P, logits, *, alpha=0.0, alpha_q=0.0, degrees=None, include_self=False):
    """The forward row's KL over all samples written densely in numpy (an independent formula)."""
    P = P.toarray()
    n = P.shape[0]
    z = logits - logits.max(1, keepdims=True)
    phi = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    psi = phi * (np.ones(n) if degrees is None else degrees)[:, None]
    q = phi @ (psi / psi.sum(0)).T
    if not include_self:
        q = q / (1 - np.diag(q))[:, None]
        np.fill_diagonal(q, 0.0)
    q = (1 - alpha_q) * q + alpha_q / (n if include_self else n - 1)
    p = (1 - alpha) * P + alpha / (n - 1)
    np.fill_diagonal(p, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return terms.sum(1).mean()


@pytest.mark.parametrize("n", [40, 97])
@pytest.mark.parametrize("kw", [dict(alpha=0.3, alpha_q=0.3), dict(alpha=0.0, alpha_q=0.0),
                                dict(alpha=0.5, alpha_q=0.1, include_self=True, degrees=True),
                                dict(alpha=0.2, alpha_q=0.4, degrees=True)])
def test_whole_row_loss_is_the_dense_row_kl(n, kw):
    # n below SELECT_CANDIDATES: every sample is a candidate, so loss_ is exactly the row's KL;
    # chunks of 7 anchors give the same figure as one pass
    rng = np.random.RandomState(n)
    P = sp.random(n, n, density=0.08, random_state=rng, format="csr") + sp.eye(n, k=1, format="csr")
    P.setdiag(0)
    P.eliminate_zeros()
    P = normalize_rows(P)
    logits = rng.randn(n, 5) * 3
    if kw.get("degrees"):
        kw = {**kw, "degrees": rng.rand(n) + 0.5}
    expected = _dense_row_kl(P, logits, **kw)
    assert whole_row_loss(P, logits, **{"alpha": 0, "alpha_q": 0, **kw}) == pytest.approx(expected, rel=1e-10)
    assert whole_row_loss(P, logits, chunk=7, **{"alpha": 0, "alpha_q": 0, **kw}) == pytest.approx(expected, rel=1e-10)


def test_whole_row_loss_is_the_training_loss_on_one_batch_of_all_samples():
    # cluster_kernel_loss (the training step's loss) with every sample in one batch, exact
    # negatives, and every positive of p: the same KL
    rng = np.random.RandomState(3)
    n = 50
    P = normalize_rows(sp.csr_matrix(rng.rand(n, n) * (rng.rand(n, n) < 0.2) + np.eye(n, k=-1)))
    P.setdiag(0)
    P.eliminate_zeros()
    P = normalize_rows(P)
    logits = rng.randn(n, 4)
    coo = P.tocoo()
    batch = cluster_kernel_loss(torch.as_tensor(logits)[None], torch.as_tensor(coo.row, dtype=torch.long),
                                torch.as_tensor(coo.col, dtype=torch.long), torch.as_tensor(coo.data),
                                alpha=0.3, alpha_q=0.2)
    assert whole_row_loss(P, logits, alpha=0.3, alpha_q=0.2) == pytest.approx(float(batch[0]), rel=1e-10)


def _sparse_rows_and_logits(seed, n=400):
    """A random row-stochastic p (5 % density, a chain so no row is empty) and logits of 6 clusters."""
    rng = np.random.RandomState(seed)
    P = normalize_rows(sp.random(n, n, density=0.05, random_state=rng, format="csr") + sp.eye(n, k=1, format="csr"))
    return P, rng.randn(n, 6) * 2


def test_whole_row_loss_estimates_the_uniform_part_on_a_candidate_sample(monkeypatch):
    # above SELECT_CANDIDATES the uniform part and the masses come from a sample: close to the
    # exact figure (a mean over many anchors), not equal
    import skicon._cluster_train as ct

    P, logits = _sparse_rows_and_logits(0)
    exact = whole_row_loss(P, logits, alpha=0.3, alpha_q=0.3)
    monkeypatch.setattr(ct, "SELECT_CANDIDATES", 100)
    sampled = whole_row_loss(P, logits, alpha=0.3, alpha_q=0.3)
    assert sampled != exact and sampled == pytest.approx(exact, rel=0.02)


def test_whole_row_loss_above_loss_anchors_is_the_mean_over_a_fixed_sample(monkeypatch):
    # above LOSS_ANCHORS samples the mean is over a fixed sample of anchors: the same figure on
    # every call, close to the mean over all anchors
    import skicon._cluster_train as ct

    P, logits = _sparse_rows_and_logits(1)
    every = whole_row_loss(P, logits, alpha=0.3, alpha_q=0.3)
    monkeypatch.setattr(ct, "LOSS_ANCHORS", 200)
    sampled = whole_row_loss(P, logits, alpha=0.3, alpha_q=0.3, chunk=64)
    assert sampled == whole_row_loss(P, logits, alpha=0.3, alpha_q=0.3, chunk=64)
    assert sampled != every and sampled == pytest.approx(every, rel=0.05)
