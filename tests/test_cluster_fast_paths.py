"""The fast paths of ICONClustering's loss: each equals the plain formula it replaces (float64)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from skicon._cluster_train import diagonal_blocks, forward_block_loss
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


def _per_block_reference(P, logits, block, **kw):
    """``loss_``'s definition written out: each block's P[idx][:, idx], renormalised, on its own."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    n, total, count = logits.shape[0], 0.0, 0
    for s in range(0, n, block):
        idx = np.arange(s, min(n, s + block))
        coo = normalize_rows(P[idx][:, idx]).tocoo()
        if len(idx) < 2 or coo.nnz == 0:
            continue
        d = kw.get("degrees")
        loss = cluster_kernel_loss(logits[idx][None], torch.as_tensor(coo.row, dtype=torch.long),
                                   torch.as_tensor(coo.col, dtype=torch.long), torch.as_tensor(coo.data),
                                   **{**kw, "degrees": None if d is None else torch.as_tensor(d[idx])})
        rows = len(np.unique(coo.row))
        total, count = total + float(loss[0]) * rows, count + rows
    return total / max(count, 1)


@pytest.mark.parametrize("n, block", [(257, 64), (129, 2), (100, 1000), (96, 32)])
@pytest.mark.parametrize("kw", [dict(alpha=0.3, alpha_q=0.3), dict(alpha=0.0, alpha_q=0.0),
                                dict(alpha=0.5, alpha_q=0.1, include_self=True, degrees=True)])
def test_forward_block_loss_equals_the_per_block_definition(n, block, kw):
    # 257 = 4 blocks and a last block of one sample (skipped); sparse rows leave some anchors
    # without a positive inside their block (they do not count).
    rng = np.random.RandomState(n)
    P = sp.random(n, n, density=0.04, random_state=rng, format="csr")
    P.setdiag(0)
    P.eliminate_zeros()
    P = normalize_rows(P)
    logits = rng.randn(n, 5) * 3
    if kw.get("degrees"):
        kw = {**kw, "degrees": rng.rand(n) + 0.5}
    got = forward_block_loss(P, logits, block, **kw)
    assert got == pytest.approx(_per_block_reference(P, logits, block, **kw), rel=1e-10, abs=1e-12)


def test_diagonal_blocks_keeps_only_each_blocks_renormalised_entries():
    P = normalize_rows(sp.csr_matrix(np.array([[0, 1, 3, 0], [2, 0, 0, 2], [0, 0, 0, 1], [5, 0, 0, 0]], float)))
    rows, cols, vals, bounds = diagonal_blocks(P, 2)
    # block 0 = samples {0, 1}, block 1 = {2, 3}; row 3's only entry (column 0) is outside its block
    assert list(zip(rows.tolist(), cols.tolist(), vals.tolist())) == [(0, 1, 1.0), (1, 0, 1.0), (2, 3, 1.0)]
    assert bounds[:3].tolist() == [0, 2, 3]
