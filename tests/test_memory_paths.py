"""The memory-lean forms of p's construction give what the direct definitions give.

At a million points the supervisory matrices hold 10^7 - 10^8 entries, so their construction
works in place or in blocks of rows (``drop_diagonal`` with int32 row ids, the perplexity
calibration in blocks of rows; ICONClustering's ``whole_row_loss`` takes chunks of anchors, see
``test_cluster_fast_paths.py``). These tests check each
against its definition, with inputs large enough to cross the block boundaries.
"""

import numpy as np
import scipy.sparse as sp

from skicon.kernels import Gaussian
from skicon.kernels import _distance
from skicon.kernels._base import drop_diagonal, normalize_rows
from skicon.neighbors import knn_graph, perplexity_betas


def test_drop_diagonal_matches_its_definition():
    rng = np.random.RandomState(0)
    n = 300
    M = sp.random(n, n, density=0.05, random_state=rng, format="csr")
    M.setdiag(rng.rand(n) + 0.5)  # every row has its diagonal entry ...
    M = M.tolil()
    M[5, :] = 0.0  # ... but an empty row, and rows holding only the diagonal
    M[7, :] = 0.0
    M[7, 7] = 2.0
    M = M.tocsr()
    M.eliminate_zeros()
    out = drop_diagonal(M)
    dense = M.toarray()
    np.fill_diagonal(dense, 0.0)
    np.testing.assert_array_equal(out.toarray(), dense)
    assert out.nnz == np.count_nonzero(dense) and out.has_sorted_indices
    assert out.indptr[5] == out.indptr[6] and out.indptr[7] == out.indptr[8]


def test_blockwise_perplexity_calibration_is_the_all_rows_calibration(monkeypatch):
    X = np.random.RandomState(2).randn(400, 5)
    full = Gaussian(perplexity=10.0).conditional(X, random_state=0)
    monkeypatch.setattr(_distance, "_CALIBRATION_BLOCK", 64)  # blocks of 2 rows of 30 candidates
    blocks = Gaussian(perplexity=10.0).conditional(X, random_state=0)
    np.testing.assert_array_equal(blocks.indices, full.indices)
    np.testing.assert_array_equal(blocks.data, full.data)  # each row's beta depends on that row alone
    # and the rows are those of the definition: exp(-beta d^2) over the 30 nearest, normalised
    g = knn_graph(X, 30, random_state=0)
    sq = g.distances**2
    w = np.exp(-perplexity_betas(sq, 10.0)[:, None] * (sq - sq.min(axis=1, keepdims=True)))
    ref = sp.csr_matrix(((w / w.sum(axis=1, keepdims=True)).ravel(), g.indices.ravel(),
                         np.arange(0, w.size + 1, 30)), shape=(400, 400))
    np.testing.assert_allclose(blocks.toarray(), ref.toarray(), rtol=1e-12, atol=1e-15)
