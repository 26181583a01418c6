"""Nearest-neighbour graphs and perplexity calibration.

Exact search (brute force, chunked by scikit-learn) for small problems, approximate search with
pynndescent above a cost threshold. Everything here is O(n k) in memory.
"""

import contextlib
import contextvars
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._utils import seed_from_random_state

__all__ = ["KNNGraph", "knn_graph", "query_neighbors", "perplexity_betas", "EXACT_COST_LIMIT", "torch_knn",
           "search_device", "TORCH_CUDA_COST_LIMIT"]

#: The exact search runs while its cost, ``n_samples**2 * (n_features + 180)``, stays below this:
#: about 30 seconds on two cores for the compiled Euclidean search of :mod:`skicon._knn_exact`
#: (measured 2.7-3.0 ns per pair at 20-40 features: the ``+ 180`` is its per-pair selection cost
#: in units of one feature's multiply-add). That is 100,000 points of 40 features or 50,000 of
#: 784, where it beat pynndescent even with pynndescent's code already compiled (which a fresh
#: process must first do, 25-30 s that cannot be cached on disk): ``benchmarks/bench_knn.py``.
#: Other metrics and sparse data (scikit-learn's brute force) use the search below this divided
#: by :data:`BRUTE_COST_RATIO`.
EXACT_COST_LIMIT = 2.5e12

#: How much more a pair costs in scikit-learn's brute force (other metrics, sparse data) than in
#: the compiled Euclidean search, in :data:`EXACT_COST_LIMIT`'s units.
BRUTE_COST_RATIO = 80.0


def _exact_pays(n, d, metric, sparse):
    """Whether ``method="auto"`` searches exactly (see :data:`EXACT_COST_LIMIT`)."""
    if metric == "euclidean" and not sparse:
        return float(n) * n * (d + 180) <= EXACT_COST_LIMIT
    return float(n) * n * d <= EXACT_COST_LIMIT / BRUTE_COST_RATIO


@dataclass
class KNNGraph:
    """A k-nearest-neighbour graph without self loops.

    Parameters
    ----------
    indices : ndarray of shape (n_samples, n_neighbors)
        Neighbour indices of each sample, nearest first.
    distances : ndarray of shape (n_samples, n_neighbors)
        The corresponding distances in ``metric``.
    metric : str
        Metric used for the search.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.neighbors import knn_graph
    >>> graph = knn_graph(np.arange(5.0)[:, None], n_neighbors=2)
    >>> graph.indices[0], graph.distances[0]
    (array([1, 2]), array([1., 2.]))
    >>> graph.to_csr().toarray()[0]
    array([0., 1., 2., 0., 0.])
    """

    indices: np.ndarray
    distances: np.ndarray
    metric: str = "euclidean"

    @property
    def n_samples(self):
        """Number of samples (rows)."""
        return self.indices.shape[0]

    @property
    def n_neighbors(self):
        """Number of neighbours per sample."""
        return self.indices.shape[1]

    def to_csr(self, values=None):
        """Return the graph as a sparse (n_samples, n_samples) CSR matrix.

        Parameters
        ----------
        values : ndarray of shape (n_samples, n_neighbors), default=None
            Edge values; the distances when None.

        Returns
        -------
        scipy.sparse.csr_matrix
            Row i holds the neighbours of sample i.
        """
        n, k = self.indices.shape
        vals = self.distances if values is None else np.asarray(values)
        indptr = np.arange(0, n * k + 1, k)
        mat = sp.csr_matrix((vals.ravel(), self.indices.ravel(), indptr), shape=(n, n))
        mat.sum_duplicates()
        return mat


def _drop_self(indices, distances, k):
    """Remove each row's own index (or the farthest extra neighbour when self is absent)."""
    n = indices.shape[0]
    is_self = indices == np.arange(n)[:, None]
    # Duplicated points can push a row's own index out of the k+1 returned; drop the last then.
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    keep = ~is_self
    return indices[keep].reshape(n, -1)[:, :k], distances[keep].reshape(n, -1)[:, :k]


def _exact(X, k, metric, n_jobs):
    if metric == "euclidean" and not sp.issparse(X):
        X64 = np.asarray(X, dtype=np.float64)
        return _euclidean_search(X64, X64, k + 1)
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric=metric, n_jobs=n_jobs).fit(X)
    distances, indices = nn.kneighbors(X)
    return indices, distances


def _euclidean_search(A, B, k):
    """The ``k`` nearest rows of ``B`` for each row of ``A``: exact, ties by index, thread-independent.

    See :mod:`skicon._knn_exact` (float32 shortlist, compiled top-k, float64 re-ranking and a
    per-row proof that the shortlist holds the true neighbours).
    """
    from ._knn_exact import euclidean_search

    return euclidean_search(A, B, k)


def _approximate(X, k, metric, random_state, n_jobs):
    from pynndescent import NNDescent

    from ._threads import numba_threads

    index = NNDescent(
        X,
        n_neighbors=k + 1,
        metric=metric,
        random_state=seed_from_random_state(random_state),
        n_jobs=numba_threads(n_jobs),  # None: 1, as the graph depends on the thread count
        verbose=False,
    )
    indices, distances = index.neighbor_graph
    return indices.astype(np.int64, copy=False), distances.astype(np.float64, copy=False)


#: On CUDA, ``method="auto"`` searches exactly with :func:`torch_knn` while ``n_samples**2 *
#: n_features`` stays below this (1,000,000 points of 200 features: 2e14 multiply-adds, tens of
#: seconds of float32 matrix products on a data-centre GPU); pynndescent on the CPU above it.
TORCH_CUDA_COST_LIMIT = 2e14

_SEARCH_DEVICE = contextvars.ContextVar("skicon_search_device", default=None)


@contextlib.contextmanager
def search_device(device):
    """Run the neighbour searches of the block on ``device`` (what an estimator fitted on CUDA sets).

    Inside the block, :func:`knn_graph` with ``method="auto"`` and :func:`query_neighbors` use
    the exact :func:`torch_knn` on a CUDA ``device``; a CPU device changes nothing (pynndescent
    and scikit-learn stay the CPU defaults).

    Parameters
    ----------
    device : str, torch.device or None
        Device of the estimator.

    Examples
    --------
    >>> with search_device("cpu"):
    ...     pass
    """
    token = _SEARCH_DEVICE.set(device)
    try:
        yield
    finally:
        _SEARCH_DEVICE.reset(token)


def _cuda_search(device):
    """The CUDA device the searches should run on, or None."""
    import torch

    device = _SEARCH_DEVICE.get() if device is None else device
    if device is None:
        return None
    device = torch.device(device)
    return device if device.type == "cuda" else None


def torch_knn(X_ref, X_new, n_neighbors, *, metric="euclidean", device="cpu", shortlist=None, chunk_bytes=None):
    """Exact k nearest reference points of each query point, by chunked matrix products in torch.

    Float32 squared distances ``|a|^2 + |b|^2 - 2 a.b`` (one matrix product per chunk of queries)
    shortlist ``shortlist`` candidates per query with :func:`torch.topk`; the shortlist's
    distances are recomputed elementwise in float64 and sorted by (distance, index), so the
    result is the exact search unless float32 rounding pushes a true neighbour below
    ``shortlist - n_neighbors`` other points. Memory: one ``(chunk, n_ref)`` float32 block and
    one ``(chunk, shortlist, n_features)`` float64 gather, each about ``chunk_bytes``.

    Parameters
    ----------
    X_ref : array-like of shape (n_ref, n_features)
        Reference points (dense).
    X_new : array-like of shape (n_new, n_features)
        Query points (dense).
    n_neighbors : int
        Neighbours per query; clamped to ``n_ref``.
    metric : {"euclidean", "cosine"}, default="euclidean"
        Distance (cosine: ``1 - cos``, zero rows at distance 1 from everything).
    device : str or torch.device, default="cpu"
        Where the products run.
    shortlist : int, default=None
        Candidates kept from the float32 pass; ``n_neighbors + max(8, n_neighbors // 2)`` when None.
    chunk_bytes : int, default=None
        Memory of one chunk of queries' blocks (None: 256 MiB on the CPU, 1 GiB on a GPU).

    Returns
    -------
    indices : ndarray of shape (n_new, k), int64
        Nearest first, ties by lower index.
    distances : ndarray of shape (n_new, k)
        Float64 distances.

    Examples
    --------
    >>> import numpy as np
    >>> idx, dist = torch_knn(np.arange(5.0)[:, None], np.array([[1.2]]), 2)
    >>> idx.tolist(), dist.round(2).tolist()
    ([[1, 2]], [[0.2, 0.8]])
    """
    import torch

    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"torch_knn supports metric='euclidean' or 'cosine', got {metric!r}; use "
                         "method='exact' (scikit-learn) for other metrics.")
    A = X_new.toarray() if sp.issparse(X_new) else np.asarray(X_new, dtype=np.float64)
    B = X_ref.toarray() if sp.issparse(X_ref) else np.asarray(X_ref, dtype=np.float64)
    if metric == "cosine":
        A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), np.finfo(np.float64).tiny)
        B = B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    m = B.shape[0]
    k = int(min(int(n_neighbors), m))
    if k < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}.")
    width = int(min(m, shortlist if shortlist is not None else k + max(8, k // 2)))
    device = torch.device(device)
    if chunk_bytes is None:
        chunk_bytes = 2**30 if device.type == "cuda" else 2**28
    B32 = torch.as_tensor(B, dtype=torch.float32, device=device)
    B64 = torch.as_tensor(B, dtype=torch.float64, device=device)
    sqB = (B32 * B32).sum(dim=1)
    # one chunk: its (chunk, n_ref) float32 distances, then its (chunk, shortlist, d) float64 gather
    step = max(1, int(chunk_bytes) // max(4 * m, 8 * width * B.shape[1], 1))
    indices = np.empty((A.shape[0], k), dtype=np.int64)
    distances = np.empty((A.shape[0], k))
    for s in range(0, A.shape[0], step):
        a64 = torch.as_tensor(A[s : s + step], dtype=torch.float64, device=device)
        a32 = a64.float()
        d2 = torch.addmm(sqB[None, :], a32, B32.T, alpha=-2.0).add_((a32 * a32).sum(dim=1, keepdim=True))
        cand = torch.topk(d2, width, dim=1, largest=False, sorted=False).indices
        del d2
        if metric == "cosine":  # 1 - cos of the normalised rows (zero rows: 1 from everything)
            exact = 1.0 - (B64[cand] * a64[:, None, :]).sum(dim=2)
        else:
            exact = ((B64[cand] - a64[:, None, :]) ** 2).sum(dim=2)
        cand, order = cand.sort(dim=1)  # ties by index: sort by index, then stably by distance
        exact = exact.gather(1, order)
        exact, order = exact.sort(dim=1, stable=True)
        cand = cand.gather(1, order)
        indices[s : s + step] = cand[:, :k].cpu().numpy()
        d = exact[:, :k].clamp_min(0)
        distances[s : s + step] = (d if metric == "cosine" else d.sqrt()).cpu().numpy()
    return indices, distances


def knn_graph(X, n_neighbors, *, metric="euclidean", method="auto", random_state=None, n_jobs=None, device=None):
    """Compute the k-nearest-neighbour graph of ``X`` (self excluded).

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Data.
    n_neighbors : int
        Number of neighbours; clamped to ``n_samples - 1`` (pynndescent would otherwise return
        ``-1`` indices).
    metric : str, default="euclidean"
        Any metric understood by scikit-learn (exact) and pynndescent (approximate), e.g.
        ``"euclidean"``, ``"cosine"``, ``"manhattan"``.
    method : {"auto", "exact", "pynndescent", "torch"}, default="auto"
        ``"auto"`` uses the exact search while ``n_samples**2 * (n_features + 180)`` is below
        :data:`EXACT_COST_LIMIT` (Euclidean, dense), pynndescent above it; on a CUDA ``device`` (or inside
        :func:`search_device` of one) it uses :func:`torch_knn` there while the cost is below
        :data:`TORCH_CUDA_COST_LIMIT`. ``"torch"``: :func:`torch_knn` on ``device`` (CPU when None).
    random_state : int, RandomState instance or None, default=None
        Seed of the approximate search.
    n_jobs : int, default=None
        Parallel jobs for the search (see :ref:`threads`). None: pynndescent on one thread (its
        graph for a seed depends on its thread count), BLAS within the active thread limit.
    device : str, torch.device or None, default=None
        Device of the torch search (None: the :func:`search_device` in effect, else the CPU).

    Returns
    -------
    KNNGraph
        Indices and distances, nearest first.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.neighbors import knn_graph
    >>> g = knn_graph(np.array([[0.0], [1.0], [3.0]]), n_neighbors=1)
    >>> g.indices.ravel().tolist()
    [1, 0, 1]
    """
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"A neighbour graph needs at least 2 samples, got n_samples={n}.")
    if int(n_neighbors) < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}.")
    if method not in ("auto", "exact", "pynndescent", "torch"):
        raise ValueError(f"method must be 'auto', 'exact', 'pynndescent' or 'torch', got {method!r}.")
    k = min(int(n_neighbors), n - 1)
    cuda = _cuda_search(device)
    if (method == "auto" and cuda is not None and metric in ("euclidean", "cosine")
            and float(n) * n * X.shape[1] <= TORCH_CUDA_COST_LIMIT):
        method = "torch"
    if method == "auto":
        method = "exact" if _exact_pays(n, X.shape[1], metric, sp.issparse(X)) or n <= 4 * (k + 1) else "pynndescent"
    if method == "torch":
        indices, distances = torch_knn(X, X, min(k + 1, n), metric=metric, device=cuda or device or "cpu")
    elif method == "exact":
        indices, distances = _exact(X, min(k + 1, n - 1), metric, n_jobs)
    else:
        indices, distances = _approximate(X, k + 1 if k + 1 < n else k, metric, random_state, n_jobs)
    indices, distances = _drop_self(np.asarray(indices), np.asarray(distances, dtype=np.float64), k)
    if indices.shape[1] < k:  # happens when n - 1 == k and self was already removed
        raise RuntimeError("neighbour search returned fewer neighbours than requested")
    return KNNGraph(indices.astype(np.int64, copy=False), distances, metric)


def query_neighbors(X_ref, X_new, n_neighbors, *, metric="euclidean", n_jobs=None, device=None):
    """The ``n_neighbors`` nearest reference points of each new point, and their distances.

    The one neighbour query for new points (``transform`` and ``predict`` of every estimator).
    The search is exact (brute force); the returned Euclidean distances are recomputed row by
    row, elementwise, so that a point's result does not depend on the other rows of ``X_new``
    (BLAS-based distances differ in the last bits with the batch). Ties between equidistant
    reference points are broken by the lower index.

    Parameters
    ----------
    X_ref : {array-like, sparse matrix} of shape (n_ref, n_features)
        Reference (training) points.
    X_new : {array-like, sparse matrix} of shape (n_new, n_features)
        Query points.
    n_neighbors : int
        Neighbours per query; clamped to ``n_ref``.
    metric : str, default="euclidean"
        Search metric (scikit-learn's names).
    n_jobs : int, default=None
        Parallel jobs of the search.
    device : str, torch.device or None, default=None
        On a CUDA device (or inside :func:`search_device` of one), Euclidean and cosine queries
        run :func:`torch_knn` there (the same float64 distances and tie order).

    Returns
    -------
    indices : ndarray of shape (n_new, k), int64
        Nearest first.
    distances : ndarray of shape (n_new, k)
        Distances in ``metric``.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.neighbors import query_neighbors
    >>> idx, dist = query_neighbors(np.arange(5.0)[:, None], np.array([[1.2]]), 2)
    >>> idx.tolist(), dist.round(2).tolist()
    ([[1, 2]], [[0.2, 0.8]])
    """
    from sklearn.neighbors import NearestNeighbors

    k = int(min(int(n_neighbors), X_ref.shape[0]))
    if k < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}.")
    cuda = _cuda_search(device)
    if cuda is not None and metric in ("euclidean", "cosine"):
        return torch_knn(X_ref, X_new, k, metric=metric, device=cuda)
    A = X_new.toarray() if sp.issparse(X_new) else np.asarray(X_new, dtype=np.float64)
    B = X_ref.toarray() if sp.issparse(X_ref) else np.asarray(X_ref, dtype=np.float64)
    if metric == "euclidean":  # ties broken by index, whatever the threads
        indices = _euclidean_search(A, B, k)[0]
    else:
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric=metric, n_jobs=n_jobs).fit(X_ref)
        indices = np.asarray(nn.kneighbors(X_new)[1], dtype=np.int64)
    distances = np.empty(indices.shape)
    step = max(1, 4_000_000 // max(1, k * A.shape[1]))
    for s in range(0, A.shape[0], step):
        a, b = A[s : s + step, None, :], B[indices[s : s + step]]
        if metric == "euclidean":
            distances[s : s + step] = np.sqrt(((a - b) ** 2).sum(axis=2))
        elif metric == "cosine":
            num = (a * b).sum(axis=2)
            den = np.sqrt((a * a).sum(axis=2)) * np.sqrt((b * b).sum(axis=2))
            distances[s : s + step] = 1.0 - np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        else:
            from sklearn.metrics import pairwise_distances

            for r in range(a.shape[0]):
                distances[s + r] = pairwise_distances(a[r], b[r], metric=metric)[0]
    # exact ties first by distance, then by index, independent of the batch
    order = np.lexsort((indices, distances), axis=-1) if indices.size else indices
    indices = np.take_along_axis(indices, order, axis=1)
    distances = np.take_along_axis(distances, order, axis=1)
    return indices, distances


def _row_entropy(sqdist, beta):
    """Entropy (nats) of rows of exp(-beta * d^2), normalised, and its derivative in beta.

    ``H = log Z + beta E[d^2]`` and ``dH/dbeta = -beta Var[d^2]`` under ``p ∝ exp(-beta d^2)``;
    the rows of ``sqdist`` start at 0.
    """
    logits = -beta[:, None] * sqdist
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    z = w.sum(axis=1)
    p = w / z[:, None]
    mean = (p * sqdist).sum(axis=1)
    var = np.maximum((p * sqdist * sqdist).sum(axis=1) - mean * mean, 0.0)
    return np.log(z) - (p * logits).sum(axis=1), -beta * var


def perplexity_betas(sqdist, perplexity, *, tol=1e-10, max_iter=200):
    """Find per-row precisions beta_i = 1/(2 sigma_i^2) matching a target perplexity.

    Safeguarded Newton iterations, vectorised over all rows at once, on the entropy
    ``H_i = -sum_j p_j|i log p_j|i`` with ``p_j|i ∝ exp(-beta_i d_ij^2)``, which decreases
    monotonically in ``beta_i``; the target is ``H_i = log(perplexity)``. Each row keeps a
    bracket of its root; a Newton step that leaves the bracket is replaced by bisection (or by
    doubling while the bracket is open), so convergence is never worse than bisection and
    usually takes a handful of steps instead of about 35.

    Parameters
    ----------
    sqdist : ndarray of shape (n_samples, n_candidates)
        Squared distances from each sample to its candidates (self excluded).
    perplexity : float
        Target perplexity, ``1 < perplexity < n_candidates``.
    tol : float, default=1e-10
        Tolerance on the entropy in nats.
    max_iter : int, default=200
        Maximum steps.

    Returns
    -------
    ndarray of shape (n_samples,)
        The precisions beta_i.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.neighbors import perplexity_betas
    >>> sqdist = np.random.RandomState(0).rand(3, 10)
    >>> beta = perplexity_betas(sqdist, perplexity=5.0)
    >>> p = np.exp(-beta[:, None] * sqdist)
    >>> p /= p.sum(axis=1, keepdims=True)
    >>> np.exp(-(p * np.log(p)).sum(axis=1)).round(6)  # the perplexity of each row
    array([5., 5., 5.])
    """
    sqdist = np.asarray(sqdist, dtype=np.float64)
    n, m = sqdist.shape
    if not 1.0 <= perplexity <= m:
        raise ValueError(
            f"perplexity={perplexity} must lie in [1, n_candidates={m}]; lower the perplexity or "
            "use more neighbours."
        )
    # Shifting each row by its minimum leaves the normalised distribution unchanged and keeps
    # exp() in range for any beta.
    d = sqdist - sqdist.min(axis=1, keepdims=True)
    target = np.log(perplexity)
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    scale = np.where(d.mean(axis=1) > 0, d.mean(axis=1), 1.0)
    beta = 1.0 / scale
    # Converged rows are frozen and dropped from the work: each row's result then depends on
    # that row alone (embedding new points in a batch or one by one agrees), and the late
    # iterations only touch the few slow rows.
    active = np.arange(n)
    for _ in range(max_iter):
        h, slope = _row_entropy(d[active], beta[active])
        diff = h - target
        keep = np.abs(diff) >= tol
        active, diff, slope = active[keep], diff[keep], slope[keep]
        if active.size == 0:
            break
        b, too_flat = beta[active], diff > 0  # entropy too high -> increase beta
        lo[active] = np.where(too_flat, b, lo[active])
        hi[active] = np.where(too_flat, hi[active], b)
        fallback = np.where(np.isinf(hi[active]), b * 2.0, (lo[active] + hi[active]) / 2.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = b - diff / slope
        inside = np.isfinite(newton) & (newton > lo[active]) & (newton < hi[active])
        beta[active] = np.where(inside, newton, fallback)
    return beta
