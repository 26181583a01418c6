import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from skicon import icon_loss


def _kl_rows(p, q):
    out = []
    for pi, qi in zip(p, q):
        m = pi > 0
        out.append(np.sum(pi[m] * np.log(pi[m] / qi[m])))
    return np.array(out)


@pytest.fixture
def pq():
    rng = np.random.RandomState(0)
    p = rng.rand(5, 7) * (rng.rand(5, 7) > 0.5)
    p[:, 0] += 0.1
    p /= p.sum(axis=1, keepdims=True)
    q = rng.rand(5, 7) + 0.01
    q /= q.sum(axis=1, keepdims=True)
    return p, q


def test_forward_matches_hand_kl(pq):
    p, q = pq
    got = icon_loss(torch.tensor(p), torch.log(torch.tensor(q)))
    assert np.isclose(float(got), _kl_rows(p, q).mean(), rtol=1e-12)


def test_two_point_fixture_is_log2():
    p = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    log_q = torch.log(torch.full((2, 2), 0.5, dtype=torch.float64))
    assert np.isclose(float(icon_loss(p, log_q)), np.log(2.0))


def _read_only_coo(p):
    coo = sp.coo_matrix(p)
    coo.data.setflags(write=False)  # tocoo() hands back this very array
    return coo


@pytest.mark.filterwarnings("error")  # no torch warning reaches the user (sparse invariants, read-only arrays)
@pytest.mark.parametrize("kind", ["scipy", "scipy_coo_read_only", "torch_coo", "torch_csr", "numpy", "numpy_read_only"])
def test_sparse_and_dense_inputs_agree(pq, kind):
    p, q = pq
    read_only = p.copy()
    read_only.setflags(write=False)
    with warnings.catch_warnings():  # the test's own CSR tensor: torch says its support is in beta
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        conv = {
            "scipy": lambda: sp.csr_matrix(p),
            "scipy_coo_read_only": lambda: _read_only_coo(p),
            "torch_coo": lambda: torch.tensor(p).to_sparse(),
            "torch_csr": lambda: torch.tensor(p).to_sparse_csr(),
            "numpy": lambda: p,
            "numpy_read_only": lambda: read_only,
        }[kind]()
    got = icon_loss(conv, torch.log(torch.tensor(q)))
    assert np.isclose(float(got), _kl_rows(p, q).mean(), rtol=1e-12)


def test_finite_when_q_underflows_off_support():
    p = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    log_q = torch.tensor([[-1e-3, -2000.0, float("-inf")]], dtype=torch.float64, requires_grad=True)
    loss = icon_loss(p, log_q)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(log_q.grad).all()
    assert np.isclose(float(loss.detach()), 1e-3)


def test_infinite_when_q_is_zero_on_support():
    p = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    log_q = torch.tensor([[0.0, float("-inf")]], dtype=torch.float64)
    assert torch.isinf(icon_loss(p, log_q))


def test_reverse_direction(pq):
    p, q = pq
    p = p + 0.01
    p /= p.sum(axis=1, keepdims=True)
    got = icon_loss(torch.tensor(p), torch.log(torch.tensor(q)), direction="reverse")
    assert np.isclose(float(got), _kl_rows(q, p).mean(), rtol=1e-12)


def test_empty_rows_are_ignored_by_mean(pq):
    p, q = pq
    p2 = np.vstack([p, np.zeros((1, 7))])
    q2 = np.vstack([q, np.full((1, 7), 1 / 7)])
    got = icon_loss(torch.tensor(p2), torch.log(torch.tensor(q2)))
    assert np.isclose(float(got), _kl_rows(p, q).mean())
    per_row = icon_loss(torch.tensor(p2), torch.log(torch.tensor(q2)), reduction="none")
    assert per_row.shape == (6,) and float(per_row[-1]) == 0.0


def test_bad_arguments():
    p = torch.ones(2, 2) / 2
    with pytest.raises(ValueError, match="direction"):
        icon_loss(p, torch.log(p), direction="sideways")
    with pytest.raises(ValueError, match="shape"):
        icon_loss(p, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="log_q"):
        icon_loss(p, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        icon_loss(p, torch.full((2, 2), float("nan")))
