import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import entr

from skicon.neighbors import knn_graph, perplexity_betas


def test_exact_graph_on_a_line():
    X = np.array([[0.0], [1.0], [3.0], [7.0]])
    g = knn_graph(X, 2)
    assert g.indices.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    assert np.allclose(g.distances, [[1, 3], [1, 2], [2, 3], [4, 6]])


def test_k_is_clamped_and_self_is_never_a_neighbour():
    X = np.random.RandomState(0).randn(5, 2)
    g = knn_graph(X, 50)
    assert g.indices.shape == (5, 4)
    assert not (g.indices == np.arange(5)[:, None]).any()


def test_duplicates_do_not_leave_self_in_graph():
    X = np.zeros((6, 3))
    g = knn_graph(X, 3)
    assert not (g.indices == np.arange(6)[:, None]).any()
    assert (g.distances == 0).all()


def test_pynndescent_matches_exact_and_is_deterministic():
    X = np.random.RandomState(0).randn(400, 5)
    exact = knn_graph(X, 5, method="exact")
    a = knn_graph(X, 5, method="pynndescent", random_state=0)
    b = knn_graph(X, 5, method="pynndescent", random_state=0)
    assert (a.indices == b.indices).all()
    recall = np.mean([len(set(r) & set(s)) / 5 for r, s in zip(a.indices, exact.indices)])
    assert recall > 0.95
    assert (a.indices >= 0).all()


def test_to_csr_is_sparse_n_by_n():
    X = np.random.RandomState(0).randn(30, 2)
    g = knn_graph(X, 4)
    m = g.to_csr()
    assert sp.issparse(m) and m.shape == (30, 30) and m.nnz == 120


def test_sparse_input_and_cosine_metric():
    X = sp.random(40, 20, density=0.3, random_state=0, format="csr") + sp.eye(40, 20)
    g = knn_graph(X, 3, metric="cosine")
    assert g.indices.shape == (40, 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        knn_graph(np.zeros((1, 2)), 1)
    with pytest.raises(ValueError, match="n_neighbors"):
        knn_graph(np.zeros((3, 2)), 0)
    with pytest.raises(ValueError, match="method"):
        knn_graph(np.zeros((3, 2)), 1, method="magic")


@pytest.mark.parametrize("perplexity", [2.0, 5.0, 12.5])
def test_perplexity_calibration_hits_target(perplexity):
    rng = np.random.RandomState(1)
    d2 = rng.rand(50, 30) * 10
    beta = perplexity_betas(d2, perplexity)
    logits = -beta[:, None] * d2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    perp = np.exp(entr(p).sum(axis=1))
    assert np.max(np.abs(perp - perplexity)) < 1e-5


def test_perplexity_out_of_range():
    with pytest.raises(ValueError, match="perplexity"):
        perplexity_betas(np.ones((3, 4)), 10.0)


# -- the exact torch search (the CUDA default; tested here on the CPU) ---------------------------
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_torch_knn_is_exact(metric):
    from sklearn.neighbors import NearestNeighbors

    from skicon.neighbors import torch_knn

    rng = np.random.RandomState(0)
    X_ref, X_new = rng.randn(700, 24), rng.randn(90, 24)
    X_ref[5] = 0.0  # a zero row: cosine distance 1 to everything
    # small chunks: several chunks of queries, and the float32 shortlist at its narrowest
    idx, dist = torch_knn(X_ref, X_new, 12, metric=metric, chunk_bytes=40_000)
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=12, metric=metric, algorithm="brute").fit(X_ref).kneighbors(X_new)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-9, atol=1e-9)


def test_torch_knn_graph_and_ties():
    from skicon.neighbors import search_device, torch_knn

    X = np.random.RandomState(1).randn(300, 8)
    g_torch = knn_graph(X, 10, method="torch")
    g_exact = knn_graph(X, 10, method="exact")
    np.testing.assert_array_equal(g_torch.indices, g_exact.indices)
    np.testing.assert_allclose(g_torch.distances, g_exact.distances, rtol=1e-9)
    with search_device("cpu"):  # the CPU keeps scikit-learn / pynndescent
        assert knn_graph(X, 10).indices.shape == (300, 10)
    # equidistant reference points come in index order, as in query_neighbors
    idx, _ = torch_knn(np.array([[0.0], [2.0], [-1.0], [1.0], [1.0]]), np.array([[0.0]]), 4)
    assert idx.tolist() == [[0, 2, 3, 4]]
    with pytest.raises(ValueError, match="metric"):
        torch_knn(X, X, 2, metric="manhattan")


def _brute(A, B, k):
    """Reference: all float64 distances summed feature by feature in order, sorted by (distance, index)."""
    d2 = np.zeros((A.shape[0], B.shape[0]))
    for f in range(A.shape[1]):
        d2 += (A[:, None, f] - B[None, :, f]) ** 2
    d = np.sqrt(d2)
    order = np.lexsort((np.broadcast_to(np.arange(B.shape[0]), d.shape), d), axis=1)[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


@pytest.fixture(params=["compiled", "numpy"])
def search_path(request, monkeypatch):
    """Force the exact search's compiled path or its NumPy path (small searches), whatever the size."""
    from skicon import _knn_exact

    monkeypatch.setattr(_knn_exact, "SMALL_WORK", -1 if request.param == "compiled" else 2**62)
    return request.param


@pytest.mark.parametrize("case", ["gauss", "integer_ties", "duplicates", "offset", "tiny", "huge"])
def test_compiled_exact_search_equals_brute_force(case, search_path):
    """The float32 shortlist plus its proof gives exactly the float64 brute-force answer (both paths)."""
    from skicon._knn_exact import euclidean_search

    rng = np.random.RandomState(0)
    if case == "gauss":
        B = rng.randn(700, 12)
    elif case == "integer_ties":  # many equidistant points: ties broken by index
        B = rng.randint(0, 3, size=(700, 6)).astype(float)
    elif case == "duplicates":  # 50 copies of each point: far more ties than the slack of 16
        B = np.repeat(rng.randn(14, 5), 50, axis=0)
    elif case == "offset":  # far from the origin: float32 alone could not tell the points apart
        B = 1e6 + rng.randn(700, 8)
    elif case == "tiny":
        B = 1e-30 * rng.randn(700, 8)
    else:
        B = 1e30 * rng.randn(700, 8)
    A = np.concatenate([B[:300], B[:100] + 0.5 * (B[1:101] - B[:100])])
    for k in (1, 20, 91):
        idx, dist = euclidean_search(A, B, k)
        ref_idx, ref_dist = _brute(A, B, k)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(dist, ref_dist, rtol=1e-12, atol=0)


def test_compiled_exact_search_small_blocks_and_retries(monkeypatch, search_path):
    """Tiny blocks (many products per row) and shortlists that must grow give the same answer."""
    from skicon import _knn_exact

    monkeypatch.setattr(_knn_exact, "ROWS", 7)
    monkeypatch.setattr(_knn_exact, "COLS", 13)
    rng = np.random.RandomState(1)
    B = np.repeat(rng.randint(0, 4, size=(30, 3)).astype(float), 9, axis=0)
    idx, dist = _knn_exact.euclidean_search(B, B, 25, slack=2)
    ref_idx, ref_dist = _brute(B, B, 25)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", ["gauss", "duplicates", "far"])
def test_exact_search_paths_agree_bit_for_bit(case, monkeypatch):
    """The NumPy path of small searches and the compiled path return identical indices and distances."""
    from skicon import _knn_exact

    rng = np.random.RandomState(2)
    B = {"gauss": rng.randn(600, 9), "duplicates": np.repeat(rng.randn(20, 4), 30, axis=0),
         "far": 1e5 + rng.rand(600, 7)}[case]
    A = B[::3] + 0.3 * rng.rand(*B[::3].shape)
    out = {}
    for name, work in (("compiled", -1), ("numpy", 2**62)):
        monkeypatch.setattr(_knn_exact, "SMALL_WORK", work)
        out[name] = _knn_exact.euclidean_search(B, B, 15) + _knn_exact.euclidean_search(A, B, 15)
    for a, b in zip(out["compiled"], out["numpy"]):
        np.testing.assert_array_equal(a, b)


def test_small_exact_search_does_not_load_numba():
    """A small search (a joblib worker's fit on digits) does not pay numba's import and cache loading."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from skicon.neighbors import knn_graph, query_neighbors; "
            "X = np.random.RandomState(0).randn(1800, 64); g = knn_graph(X, 10); query_neighbors(X, X[:600], 10); "
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
