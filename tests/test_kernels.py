import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone

from skicon.kernels import (
    ClusterKernel,
    Cosine,
    Debiased,
    DotProduct,
    Exaggerated,
    Gaussian,
    Graph,
    Identity,
    Labels,
    Propagated,
    Prototypes,
    StudentT,
    Symmetrized,
    UniformKNN,
    Views,
    restrict,
)

LINE = np.array([[0.0], [1.0], [3.0]])


def t64(a):
    return torch.tensor(a, dtype=torch.float64)


def test_gaussian_fixed_sigma_hand_computed():
    P = Gaussian(sigma=1.0, n_neighbors=None).conditional(LINE).toarray()
    w01, w02, w12 = np.exp(-0.5), np.exp(-4.5), np.exp(-2.0)
    expected = np.array(
        [[0, w01, w02], [w01, 0, w12], [w02, w12, 0]],
    )
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.allclose(P, expected, atol=1e-14)


def test_gaussian_include_self_puts_mass_on_diagonal():
    P = Gaussian(sigma=1.0, n_neighbors=None, include_self=True).conditional(LINE).toarray()
    assert np.allclose(P.sum(axis=1), 1)
    assert np.isclose(P[0, 0], 1 / (1 + np.exp(-0.5) + np.exp(-4.5)))


def test_gaussian_perplexity_rows_reach_target():
    X = np.random.RandomState(0).randn(200, 5)
    P = Gaussian(perplexity=10.0).conditional(X)
    assert P.shape == (200, 200) and P.nnz == 200 * 30
    rows = [P.getrow(i).data for i in range(200)]
    perp = np.array([np.exp(-(r * np.log(r)).sum()) for r in rows])
    assert np.allclose(perp, 10.0, atol=1e-5)


def test_learned_kernels_match_formulas():
    Z = t64([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    d2 = torch.cdist(Z, Z) ** 2
    for kernel, w in [
        (Gaussian(sigma=0.7), torch.exp(-d2 / (2 * 0.49))),
        (StudentT(dof=1.0), 1 / (1 + d2)),
        (StudentT(dof=3.0), (1 + d2 / 3) ** -2),
    ]:
        w = w.clone()
        w.fill_diagonal_(0)
        assert torch.allclose(kernel.prob(Z), w / w.sum(1, keepdim=True), atol=1e-12), kernel


def test_cosine_and_dot_product():
    Z = t64([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    Zn = Z / Z.norm(dim=1, keepdim=True)
    w = torch.exp(Zn @ Zn.T / 0.2)
    w.fill_diagonal_(0)
    assert torch.allclose(Cosine(temperature=0.2).prob(Z), w / w.sum(1, keepdim=True))
    w = torch.exp(Z @ Z.T / 2.0)
    w.fill_diagonal_(0)
    assert torch.allclose(DotProduct(temperature=2.0).prob(Z), w / w.sum(1, keepdim=True))


def test_same_class_works_for_p_and_q():
    # StudentT as supervisory p on data equals StudentT as learned q on the same points.
    X = np.random.RandomState(3).randn(8, 2)
    k = StudentT(dof=2.0, n_neighbors=None)
    assert np.allclose(k.conditional(X).toarray(), k.prob(X).numpy(), atol=1e-12)


def test_candidates_in_another_set_are_not_self_masked():
    Z = t64([[0.0], [1.0]])
    q = Gaussian().prob(Z, Z)
    assert (q > 0).all()


def test_uniform_knn_and_labels_and_views():
    P = UniformKNN(n_neighbors=2).conditional(np.arange(5.0)[:, None]).toarray()
    assert np.allclose(P[2], [0, 0.5, 0, 0.5, 0])
    L = Labels().conditional(np.zeros((4, 1)), y=[1, 1, 1, 2]).toarray()
    assert np.allclose(L[0], [0, 0.5, 0.5, 0]) and np.allclose(L[3], 0)
    V = Views(cross_view=True).conditional(np.zeros((4, 1)), groups=[0, 0, 0, 1], views=[0, 1, 0, 1]).toarray()
    assert np.allclose(V[0], [0, 1, 0, 0]) and np.allclose(V[1], [0.5, 0, 0.5, 0])
    with pytest.raises(ValueError, match="y"):
        Labels().conditional(np.zeros((4, 1)))
    with pytest.raises(ValueError, match="views"):
        Views(cross_view=True).conditional(np.zeros((2, 1)), groups=[0, 0])


def test_graph_and_degree_weighting():
    A = np.array([[0, 1.0, 3.0], [1.0, 0, 0], [3.0, 0, 0]])
    assert np.allclose(Graph().conditional(A).toarray()[0], [0, 0.25, 0.75])
    d = A.sum(1)  # 4, 1, 3 -> weights 1/1, 3/3
    assert np.allclose(Graph(degree_weighted=True).conditional(A).toarray()[0], [0, 0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        Graph().conditional(-A)
    assert d.shape == (3,)


def test_identity():
    assert (Identity().conditional(np.zeros((3, 2))).toarray() == np.eye(3)).all()


def test_supervisory_kernels_refuse_learned_use_with_clear_message():
    with pytest.raises(TypeError, match="cannot be used as the learned distribution q"):
        Labels().log_prob(torch.zeros(2, 2))
    with pytest.raises(TypeError, match="cannot be used as the supervisory distribution p"):
        ClusterKernel().conditional(np.zeros((2, 2)))


def test_cluster_kernel_definition_and_normalisation():
    rng = np.random.RandomState(0)
    logits = t64(rng.randn(6, 3))
    phi = torch.softmax(logits, dim=1)
    expected = (phi / phi.sum(0)) @ phi.T
    expected = phi @ (phi / phi.sum(0)).T
    got = ClusterKernel().prob(logits)
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.allclose(got.sum(1), torch.ones(6, dtype=torch.float64))
    d = t64(rng.rand(6) + 0.5)
    expected_d = phi @ ((phi * d[:, None]) / (phi * d[:, None]).sum(0)).T
    got_d = torch.exp(ClusterKernel(degree_weighted=True).log_prob(logits, degrees=d))
    assert torch.allclose(got_d, expected_d, atol=1e-12)


def test_cluster_kernel_large_block_path_agrees():
    logits = torch.randn(200, 40, dtype=torch.float64)
    small = ClusterKernel().log_prob(logits[:40])
    big = ClusterKernel().log_prob(logits)  # 200*200*40 > 2**20 -> matmul path
    phi = torch.softmax(logits, 1)
    expected = torch.log(phi @ (phi / phi.sum(0)).T)
    assert torch.allclose(big, expected, atol=1e-10)
    assert small.shape == (40, 40)


def test_prototypes_as_cross_entropy():
    Z = t64([[1.0, 0.0], [0.0, 1.0]])
    W = t64([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    q = Prototypes(temperature=1.0).prob(Z, W)
    assert torch.allclose(q, torch.softmax(Z @ W.T, dim=1))
    P = Prototypes().conditional(np.zeros((3, 1)), y=["b", "a", "b"]).toarray()
    assert (P == [[0, 1], [1, 0], [0, 1]]).all()


def test_debiased_p_block_and_q():
    P = sp.csr_matrix(np.array([[0, 1.0, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1.0], [1.0, 0, 0, 0]]))
    idx = np.arange(4)
    block = restrict(Debiased(UniformKNN(), alpha=0.3), P, idx, idx, dtype=torch.float64)
    expected = 0.7 * P.toarray() + 0.3 / 3 * (1 - np.eye(4))
    assert np.allclose(block.numpy(), expected)
    assert np.allclose(block.sum(1).numpy(), 1)
    Z = t64(np.random.RandomState(0).randn(4, 2))
    q = Gaussian().prob(Z)
    qd = Debiased(Gaussian(), alpha=0.3).prob(Z)
    expected_q = 0.7 * q + 0.3 / 3 * (1 - torch.eye(4, dtype=torch.float64))
    assert torch.allclose(qd, expected_q, atol=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        Debiased(Gaussian(), alpha=1.5).prob(Z)


def test_debiased_q_is_finite_when_q_underflows():
    Z = t64([[0.0], [100.0], [200.0]])
    log_q = Debiased(Gaussian(sigma=0.01), alpha=0.1).log_prob(Z)
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.isfinite(log_q[off]).all()


def test_propagated_walks_match_definition():
    # a path graph 0-1-2-3 with uniform neighbours
    A = np.diag(np.ones(3), 1)
    A = A + A.T
    P = A / A.sum(1, keepdims=True)
    got = Propagated(Graph(), walk_length=2).conditional(A).toarray()
    S = P + P @ P
    np.fill_diagonal(S, 0)
    S /= S.sum(1, keepdims=True)
    assert np.allclose(got, S)
    got_u = Propagated(Graph(), walk_length=2, weighting="uniform").conditional(A).toarray()
    U = (S > 0).astype(float)
    assert np.allclose(got_u, U / U.sum(1, keepdims=True))
    assert np.allclose(Propagated(Graph(), walk_length=1).conditional(A).toarray(), P)


def test_symmetrized_and_exaggerated():
    X = np.arange(4.0)[:, None] ** 2
    P = UniformKNN(n_neighbors=1).conditional(X).toarray()
    J = Symmetrized(UniformKNN(n_neighbors=1), mode="joint").conditional(X).toarray()
    assert np.allclose(J, (P + P.T) / 8) and np.isclose(J.sum(), 1)
    C = Symmetrized(UniformKNN(n_neighbors=1)).conditional(X).toarray()
    assert np.allclose(C.sum(1), 1)
    E = Exaggerated(UniformKNN(n_neighbors=1), factor=12.0).conditional(X)
    assert np.isclose(E.sum(), 48.0)


def test_kernels_are_sklearn_params_and_clone():
    k = Debiased(Propagated(UniformKNN(n_neighbors=5), walk_length=3), alpha=0.4)
    params = k.get_params()
    assert params["kernel__walk_length"] == 3 and params["kernel__kernel__n_neighbors"] == 5
    k2 = clone(k).set_params(kernel__kernel__n_neighbors=7)
    assert k2.kernel.kernel.n_neighbors == 7 and k.kernel.kernel.n_neighbors == 5
    assert "alpha=0.4" in repr(k)


@pytest.mark.parametrize("bad", [Gaussian(sigma=-1.0), StudentT(dof=0.0), Cosine(temperature=0.0)])
def test_bad_kernel_parameters_raise_value_error(bad):
    with pytest.raises(ValueError):
        bad.prob(torch.zeros(3, 2))


def test_transform_wrapping_a_non_kernel_is_a_type_error():
    with pytest.raises(TypeError, match="skicon kernel"):
        Debiased("gaussian").prob(torch.zeros(3, 2))
