"""Tests of the engine's sparse ``P`` (skicon.objectives._affinity): O(nnz) memory, lazy edge lists."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from skicon.kernels import DistanceKernel, Gaussian, StudentT
from skicon.objectives import _affinity
from skicon.objectives._pairwise import SparseAffinity, joint_from_conditional, objective_and_gradient


def _conditional(n, k=6, seed=0):
    """A kNN-like conditional P: k candidates per row, rows summing to one, sorted CSR."""
    rng = np.random.RandomState(seed)
    cols = np.stack([np.sort(rng.choice(np.delete(np.arange(n), i), k, replace=False)) for i in range(n)])
    w = rng.rand(n, k) + 0.1
    w /= w.sum(axis=1, keepdims=True)
    return sp.csr_matrix((w.ravel(), cols.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def _held_bytes(aff):
    """Bytes of every array and tensor the affinity holds (not the source matrix it was built from)."""
    buffers = {}  # start address -> bytes: a tensor and its numpy view count once
    for name, value in vars(aff).items():
        if name == "_source":
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, torch.Tensor):
                key, size = item.untyped_storage().data_ptr(), item.untyped_storage().nbytes()
            elif isinstance(item, np.ndarray):
                key, size = item.ctypes.data, item.nbytes
            else:
                continue
            buffers[key] = max(size, buffers.get(key, 0))
    return sum(buffers.values())


class _LogOnly(DistanceKernel):
    """A kernel with only ``log_weight`` (no compiled twin): the engine runs its torch code."""

    def log_weight(self, d2):
        return -torch.log1p(d2)


def test_cpu_affinity_holds_csr_only_until_edge_lists_are_asked_for():
    n = 300
    J = joint_from_conditional(_conditional(n))
    aff = SparseAffinity(J, "cpu", torch.float32)
    # int32 indices + float32 values per edge, and O(n) row data (indptr, lengths, row masses):
    # the int64 rows and cols (16 bytes per edge) would exceed this bound by far
    assert not aff.has_edge_lists
    assert _held_bytes(aff) <= J.nnz * (4 + 4) + (n + 1) * 8 * 3
    Y = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    # the compiled CPU loops (Student-t has a compiled twin) read the CSR arrays only
    grad, loss = objective_and_gradient(Y, aff, StudentT(), method="exact", want_loss=True)
    assert not aff.has_edge_lists
    assert torch.isfinite(grad).all() and np.isfinite(loss)
    # asked for: the int64 edge lists of the COO form, sorted by row then column, kept from then on
    coo = J.tocoo()
    order = np.lexsort((coo.col, coo.row))
    assert aff.rows.dtype == torch.int64 and aff.cols.dtype == torch.int64
    np.testing.assert_array_equal(aff.rows.numpy(), coo.row[order])
    np.testing.assert_array_equal(aff.cols.numpy(), coo.col[order])
    np.testing.assert_allclose(aff.values.numpy(), coo.data[order], rtol=1e-6)
    assert aff.has_edge_lists and aff.rows is aff.rows


def test_torch_path_builds_edge_lists_and_agrees_with_compiled_path():
    n = 200
    J = joint_from_conditional(_conditional(n, seed=1))
    Y = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    compiled = SparseAffinity(J, "cpu", torch.float64)
    g_c, l_c = objective_and_gradient(Y, compiled, StudentT(), method="exact", want_loss=True)
    assert not compiled.has_edge_lists
    torch_aff = SparseAffinity(J, "cpu", torch.float64)
    g_t, l_t = objective_and_gradient(Y, torch_aff, _LogOnly(), method="exact", want_loss=True)
    assert torch_aff.has_edge_lists  # the torch code gathers with them
    # the same Cauchy kernel by two code paths
    np.testing.assert_allclose(g_t.numpy(), g_c.numpy(), rtol=1e-9, atol=1e-12)
    assert l_t == pytest.approx(l_c, rel=1e-10)


def test_conditional_affinity_aligns_loss_weights_and_does_not_keep_the_sum():
    n = 120
    P = _conditional(n, seed=2)
    aff = SparseAffinity.conditional(P, "cpu", torch.float64)
    A = (P + P.T).tocsr()
    A.sort_indices()
    assert aff.values.numel() == A.nnz
    np.testing.assert_allclose(aff.values.numpy(), A.data)
    # loss weights are P on P + P^T's pattern (zero where only P^T has the edge)
    on_pattern = np.asarray(P[np.repeat(np.arange(n), np.diff(A.indptr)), A.indices]).ravel()
    np.testing.assert_array_equal(aff.loss_values.numpy(), on_pattern)
    np.testing.assert_allclose(aff.loss_row_mass.numpy(), 1.0)
    assert aff.entropy_term == pytest.approx(float((P.data * np.log(P.data)).sum()), rel=1e-12)
    assert aff.loss_mass == pytest.approx(n, rel=1e-12)
    assert aff._source[0] is None  # P + P^T is rebuilt from P by to(), not held
    aff32 = aff.to(torch.float32)
    np.testing.assert_allclose(aff32.loss_values.numpy(), on_pattern, rtol=1e-6)
    assert aff32.entropy_term == aff.entropy_term


def test_non_canonical_input_and_non_positive_entries():
    n = 50
    P = _conditional(n, seed=3)
    ref = SparseAffinity(P, "cpu", torch.float64)
    coo = P.tocoo()
    perm = np.random.RandomState(0).permutation(coo.nnz)
    # unsorted columns, one entry split into two duplicates, explicit zeros and a negative entry
    rows = np.concatenate([coo.row[perm], [coo.row[0], 3, 4]])
    cols = np.concatenate([coo.col[perm], [coo.col[0], 5, 6]])
    data = np.concatenate([coo.data[perm], [0.0, 0.0, -1.0]])
    data[np.flatnonzero(perm == 0)[0]] *= 0.5
    data[coo.nnz] = coo.data[0] * 0.5
    messy = sp.csr_matrix((data, (rows, cols)), shape=(n, n))
    messy.has_canonical_format = False  # as scipy leaves it after direct assembly
    aff = SparseAffinity(messy, "cpu", torch.float64)
    np.testing.assert_array_equal(aff.indptr, ref.indptr)
    np.testing.assert_array_equal(aff.indices, ref.indices)
    np.testing.assert_allclose(aff.values.numpy(), ref.values.numpy(), rtol=1e-15)
    assert aff.entropy_term == pytest.approx(ref.entropy_term, rel=1e-12)


def test_row_sums_and_alignment_with_empty_rows():
    # empty first, middle and last rows: each row's own sum, zero for the empty ones
    A = sp.csr_matrix(np.array([[0, 0, 0, 0], [1.0, 0, 2.0, 0], [0, 0, 0, 0], [0, 3.0, 0, 4.0], [0, 0, 0, 0]]))
    np.testing.assert_array_equal(_affinity._row_sums(A.data, A.indptr), [0, 3, 0, 7, 0])
    L = sp.csr_matrix(np.array([[0, 0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 0], [0, 6.0, 0, 0], [0, 0, 0, 0]]))
    np.testing.assert_array_equal(_affinity._aligned(L, A), [0, 5, 6, 0])
    with pytest.raises(ValueError, match="non-zero only on the edges"):
        _affinity._aligned(sp.csr_matrix(np.eye(5, 4)), A)


def test_alignment_over_several_row_blocks(monkeypatch):
    monkeypatch.setattr(_affinity, "_CHUNK", 7)  # many blocks of rows, a block boundary inside the data
    P = _conditional(40, k=5, seed=4)
    A = (P + P.T).tocsr()
    A.sort_indices()
    expected = np.asarray(P[np.repeat(np.arange(40), np.diff(A.indptr)), A.indices]).ravel()
    np.testing.assert_array_equal(_affinity._aligned(P, A), expected)
    plogp, mass = _affinity._plogp_and_mass(P.data)
    assert plogp == pytest.approx(float((P.data * np.log(P.data)).sum()), rel=1e-12)
    assert mass == pytest.approx(40.0, rel=1e-12)


def test_joint_from_conditional_unchanged():
    P = _conditional(60, seed=5)
    J = joint_from_conditional(P)
    dense = P.toarray()
    np.testing.assert_allclose(J.toarray(), (dense + dense.T) / (dense + dense.T).sum(), rtol=1e-14)
    assert J.has_canonical_format


def _line_graph(n, k=4, seed=0):
    """A shuffled kNN graph of points on a line: neighbours in space, scattered in the numbering."""
    perm = np.random.RandomState(seed).permutation(n)
    pos = np.empty(n, dtype=np.int64)
    pos[perm] = np.arange(n)  # point perm[t] sits at position t on the line
    rows, cols = [], []
    for shift in range(1, k + 1):
        a = perm[:-shift]
        b = perm[shift:]
        rows += [a, b]
        cols += [b, a]
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.full(len(rows), 1.0 / len(rows)), (rows, cols)), shape=(n, n))


def test_locality_order_puts_graph_neighbours_close_in_the_numbering():
    n = 2000
    J = _line_graph(n)
    coo = J.tocoo()
    order = _affinity.locality_order(J)
    assert np.array_equal(np.sort(order), np.arange(n))  # a permutation
    where = np.empty(n, dtype=np.int64)
    where[order] = np.arange(n)
    # shuffled, an edge spans about n / 3 positions; in the order, at most the graph's reach (k = 4)
    # on each side of a breadth-first level, i.e. a few positions
    assert np.abs(coo.row - coo.col).mean() > n / 5
    assert np.abs(where[coo.row] - where[coo.col]).max() <= 8


@pytest.mark.parametrize("form", ["joint", "conditional"])
@pytest.mark.parametrize("kernel", [StudentT(), _LogOnly()], ids=["compiled", "torch"])
def test_locality_ordered_storage_gives_the_same_gradient_and_loss(monkeypatch, form, kernel):
    n = 400
    P = _conditional(n, seed=4)
    build = (lambda: SparseAffinity.conditional(P, "cpu", torch.float64)) if form == "conditional" else (
        lambda: SparseAffinity(joint_from_conditional(P), "cpu", torch.float64))
    plain = build()
    monkeypatch.setattr(_affinity, "LOCALITY_MIN_N", 1)
    ordered = build()
    assert plain.order is None and ordered.order is not None
    assert not np.array_equal(ordered.order, np.arange(n))
    Y = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    g0, l0 = objective_and_gradient(Y, plain, kernel, method="exact", want_loss=True)
    g1, l1 = objective_and_gradient(Y, ordered, kernel, method="exact", want_loss=True)
    # each row's edges keep their order, so each point's force is summed in the same order: the
    # gradient agrees to rounding of the all-pairs part only; the loss sums rows in another order
    np.testing.assert_allclose(g1.numpy(), g0.numpy(), rtol=1e-12, atol=1e-15)
    assert l1 == pytest.approx(l0, rel=1e-12)
    # every per-point array is in the storage numbering
    np.testing.assert_array_equal(ordered.loss_row_mass.numpy(), plain.loss_row_mass.numpy()[ordered.order])
    assert ordered.to(torch.float32).order is not None


def _with_self_pairs_and_an_empty_row(J):
    """The joint ``J`` with two self pairs (no force, no loss) and one point without neighbours."""
    J = J.tolil()
    J[5, :] = 0.0
    J[:, 5] = 0.0
    J[3, 3] = J[7, 7] = 1e-3
    J = J.tocsr()
    J.data /= J.sum()
    return J


@pytest.mark.parametrize("kernel", [StudentT(), StudentT(dof=0.6), Gaussian()], ids=["cauchy", "student", "gauss"])
@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("dim", [1, 2])
def test_upper_triangle_attraction_equals_the_full_csr_pass(monkeypatch, kernel, ordered, dim):
    """Each pair once (the symmetric ``P``'s upper triangle) gives the full pass's force and loss.

    Several row blocks (the block size lowered so that 400 points make several), with and without the
    locality order, self pairs and an empty row included; float64, so the two sums in different
    orders agree to rounding.
    """
    n = 400
    J = _with_self_pairs_and_an_empty_row(joint_from_conditional(_conditional(n, seed=2)))
    monkeypatch.setattr(_affinity.UpperTriangle, "EDGES_PER_BLOCK", 300)
    if ordered:
        monkeypatch.setattr(_affinity, "LOCALITY_MIN_N", 1)
    full = SparseAffinity(J, "cpu", torch.float64)
    half = SparseAffinity(J, "cpu", torch.float64, symmetric=True)
    assert full.upper is None and half.upper is not None
    assert len(half.upper.bases) >= 3 and len(half.upper.indices) == (J.nnz - 2) // 2
    Y = torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for ex in (1.0, 12.0):
        g0, l0 = objective_and_gradient(Y, full, kernel, method="exact", exaggeration=ex, want_loss=True)
        g1, l1 = objective_and_gradient(Y, half, kernel, method="exact", exaggeration=ex, want_loss=True)
        np.testing.assert_allclose(g1.numpy(), g0.numpy(), rtol=1e-10, atol=1e-14)
        assert l1 == pytest.approx(l0, rel=1e-12)


def test_upper_triangle_attraction_does_not_depend_on_the_thread_count(monkeypatch):
    from skicon._threads import thread_limits
    from skicon.objectives import _compiled

    n = 3000
    J = joint_from_conditional(_conditional(n, k=20, seed=3))
    monkeypatch.setattr(_affinity.UpperTriangle, "EDGES_PER_BLOCK", 4000)
    aff = SparseAffinity(J, "cpu", torch.float32, symmetric=True)
    Y = np.random.RandomState(3).randn(n, 2).astype(np.float32)
    runs = []
    for threads in (1, 2, 3):
        with thread_limits(threads):
            runs.append(_compiled.attraction_upper(Y, aff.upper, _compiled.CAUCHY, want_loss=True))
    for force, loss in runs[1:]:
        np.testing.assert_array_equal(force, runs[0][0])
        assert loss == runs[0][1]


def test_upper_triangle_only_for_a_symmetric_p_that_weighs_the_loss():
    P = _conditional(50)
    assert SparseAffinity.conditional(P, "cpu", torch.float64).upper is None  # loss weights are P, not P + P^T
    aff = SparseAffinity(joint_from_conditional(P), "cpu", torch.float64, symmetric=True)
    assert aff.upper is aff.upper  # built once
    assert aff.to(torch.float32).upper is not None
    assert SparseAffinity(joint_from_conditional(P), "meta", torch.float64, symmetric=True).upper is None
