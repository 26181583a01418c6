"""Nearest-neighbour graphs and perplexity calibration.

Exact search (brute force, chunked by scikit-learn) for small problems, approximate search with
pynndescent above a cost threshold. Everything here is O(n k) in memory.
"""

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._utils import seed_from_random_state

__all__ = ["KNNGraph", "knn_graph", "query_neighbors", "perplexity_betas", "EXACT_COST_LIMIT"]

#: Brute-force search is used while ``n_samples**2 * n_features`` stays below this number of
#: multiply-adds (about a second or two of BLAS on two cores); pynndescent above it.
EXACT_COST_LIMIT = 3e10


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
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric=metric, n_jobs=n_jobs).fit(X)
    distances, indices = nn.kneighbors(X)
    return indices, distances


def _approximate(X, k, metric, random_state, n_jobs):
    from pynndescent import NNDescent

    index = NNDescent(
        X,
        n_neighbors=k + 1,
        metric=metric,
        random_state=seed_from_random_state(random_state),
        n_jobs=n_jobs if n_jobs is not None else 1,
        verbose=False,
    )
    indices, distances = index.neighbor_graph
    return indices.astype(np.int64), distances.astype(np.float64)


def knn_graph(X, n_neighbors, *, metric="euclidean", method="auto", random_state=None, n_jobs=None):
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
    method : {"auto", "exact", "pynndescent"}, default="auto"
        ``"auto"`` uses exact brute force while ``n_samples**2 * n_features`` is below
        :data:`EXACT_COST_LIMIT`, pynndescent above it.
    random_state : int, RandomState instance or None, default=None
        Seed of the approximate search.
    n_jobs : int, default=None
        Parallel jobs for the search.

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
    if method not in ("auto", "exact", "pynndescent"):
        raise ValueError(f"method must be 'auto', 'exact' or 'pynndescent', got {method!r}.")
    k = min(int(n_neighbors), n - 1)
    if method == "auto":
        method = "exact" if float(n) * n * X.shape[1] <= EXACT_COST_LIMIT or n <= 4 * (k + 1) else "pynndescent"
    if method == "exact":
        indices, distances = _exact(X, min(k + 1, n - 1), metric, n_jobs)
    else:
        indices, distances = _approximate(X, k + 1 if k + 1 < n else k, metric, random_state, n_jobs)
    indices, distances = _drop_self(np.asarray(indices), np.asarray(distances, dtype=np.float64), k)
    if indices.shape[1] < k:  # happens when n - 1 == k and self was already removed
        raise RuntimeError("neighbour search returned fewer neighbours than requested")
    return KNNGraph(indices.astype(np.int64), distances, metric)


def query_neighbors(X_ref, X_new, n_neighbors, *, metric="euclidean", n_jobs=None):
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
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric=metric, n_jobs=n_jobs).fit(X_ref)
    _, indices = nn.kneighbors(X_new)
    indices = np.asarray(indices, dtype=np.int64)
    A = X_new.toarray() if sp.issparse(X_new) else np.asarray(X_new, dtype=np.float64)
    B = X_ref.toarray() if sp.issparse(X_ref) else np.asarray(X_ref, dtype=np.float64)
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
