"""Exact Euclidean k-nearest-neighbour search: float32 matrix products, a compiled top-k, a proof.

The search of :func:`skicon.neighbors.knn_graph` (``method="exact"``) and of
:func:`skicon.neighbors.query_neighbors`. Three steps:

1. **Shortlist.** Blocks of ``-2 a.b`` come from float32 matrix products (BLAS), and a compiled
   loop keeps, per query row, the ``w = k + slack`` smallest values of ``|b|^2 - 2 a.b`` in a
   max-heap. Most entries are rejected by one comparison with the heap's root, so the pass costs
   about one comparison per pair; nothing of size ``n x m`` is ever held (one block of
   ``ROWS x COLS`` float32 values).
2. **Exact distances.** The shortlist is re-ranked with float64 distances summed elementwise in
   a fixed order (:func:`skicon.objectives._compiled.pair_distances`), sorted by
   ``(distance, index)``.
3. **Proof.** The float32 values carry a rounding error below a bound ``e_i`` per row (casting,
   the dot product's ``gamma_d |a| |b|``, the final subtraction). Every point left out of row
   ``i``'s shortlist has a float32 value at least the heap's root ``h_i``, so an exact squared
   distance at least ``h_i + |a_i|^2 - e_i``. When that is strictly above the ``k``-th exact
   distance of the shortlist, the shortlist provably holds the true ``k`` nearest, ties
   included. Rows where it fails (many equidistant points, duplicates) are searched again with
   a four times longer shortlist, until the proof holds or the shortlist is the whole set.

So the result is the exact one, and it is the same whatever the number of BLAS threads, which
can change the float32 values but not which points pass the proof. Small searches (at most
:data:`SMALL_WORK` multiply-adds) run steps 1 and 2 in NumPy instead (an ``argpartition`` per
block, the same float64 sums in the same order), so that a fresh process does not load numba for
milliseconds of work; the result is the same. The data are centred (the
distances do not change) and scaled by a power of two (exact) before the float32 cast, so that
``|a| |b|`` is as small as it can be and nothing overflows.

Measured against the float64 BLAS search with ``argpartition`` that it replaces
(``benchmarks/bench_knn.py``): see the performance guide.
"""

import numpy as np

__all__ = ["euclidean_search"]

#: Query rows per block of the float32 products.
ROWS = 512
#: Reference rows per block: ``ROWS x COLS`` float32 values (8 MiB) per product.
COLS = 4096
#: Searches of at most this many ``query x reference x feature`` multiply-adds run in NumPy alone:
#: there the whole search takes milliseconds, less than what numba costs a fresh process (its
#: import and the loading of the cached machine code: about half a second, measured on two
#: cores; every joblib worker and every script pays it once). Both paths return the same result
#: (exact, the same float64 distances: the sums run in the same order).
SMALL_WORK = 2**28

_U32 = 2.0**-24  # unit roundoff of float32


def _compiled():
    """``(push, compiled loops module)``, or None where numba is missing (imports numba)."""
    from .objectives import _compiled as loops

    if not loops.available():  # pragma: no cover - numba comes with pynndescent, a hard dependency
        return None
    from ._knn_compiled import push

    return push, loops


def _push_numpy(G, sqB, col0, heap_v, heap_i):
    """NumPy twin of the compiled push: keep each row's ``w`` smallest of heap and ``|b|^2 - 2 a.b``.

    The kept values are in no particular order (the proof takes their maximum).
    """
    w = heap_v.shape[1]
    vals = np.concatenate([heap_v, sqB[col0 : col0 + G.shape[1]] - np.float32(2.0) * G], axis=1)
    cols = np.concatenate([heap_i, np.broadcast_to(np.arange(col0, col0 + G.shape[1]), G.shape)], axis=1)
    keep = np.argpartition(vals, w - 1, axis=1)[:, :w]
    heap_v[...] = np.take_along_axis(vals, keep, axis=1)
    heap_i[...] = np.take_along_axis(cols, keep, axis=1)


def _pair_sqdist_numpy(A, B, cand, chunk=2**20):
    """NumPy twin of :func:`skicon.objectives._compiled.pair_distances`: the same sums, in the same order.

    Each squared distance is accumulated feature by feature from zero, as the compiled loop does
    (no fused multiply-add there: it is compiled without fastmath), so the two agree bit for bit.
    """
    n, w = cand.shape
    BT = np.ascontiguousarray(B.T)
    out = np.empty((n, w))
    step = max(1, chunk // max(1, w))
    for r0 in range(0, n, step):
        c = cand[r0 : r0 + step]
        s = np.zeros(c.shape)
        for f in range(A.shape[1]):
            u = A[r0 : r0 + step, f, None] - BT[f][c]
            s += u * u
        out[r0 : r0 + step] = s
    return out


def _shortlist(A32, B32, sqB32, w, compiled):
    """Per row of ``A32``: the ``w`` smallest ``|b|^2 - 2 a.b`` (any order).

    The threads of the active limit each take whole row blocks, product and selection both, with
    BLAS on one thread: a multi-threaded product followed by a parallel selection leaves BLAS's
    workers spinning on the cores the selection needs. Without ``compiled`` (a small search) the
    selection runs in NumPy on this thread.
    """
    n, m = A32.shape[0], B32.shape[0]
    heap_v = np.full((n, w), np.inf, dtype=np.float32)
    heap_i = np.full((n, w), -1, dtype=np.int64)
    starts = np.arange(0, n, ROWS)
    if compiled is None:
        for r0 in starts:
            a = A32[r0 : r0 + ROWS]
            for c0 in range(0, m, COLS):
                _push_numpy(a @ B32[c0 : c0 + COLS].T, sqB32, c0, heap_v[r0 : r0 + ROWS], heap_i[r0 : r0 + ROWS])
        return heap_v, heap_i
    push, loops = compiled
    from ._threads import _controller

    def work(first, stop):
        for r0 in starts[first:stop]:
            a = A32[r0 : r0 + ROWS]
            hv, hi = heap_v[r0 : r0 + ROWS], heap_i[r0 : r0 + ROWS]
            for c0 in range(0, m, COLS):
                push(a @ B32[c0 : c0 + COLS].T, sqB32, c0, hv, hi, 0, a.shape[0])

    blocks = np.arange(len(starts) + 1, dtype=np.int64)
    ranges = loops._blocks(blocks, min(len(starts), loops._n_blocks(float(n) * m * 4)))
    if len(ranges) == 1:
        work(0, len(starts))
    else:
        pools = _controller().limit(limits=1, user_api="blas")
        try:
            loops._run(work, lambda r: r, ranges)
        finally:
            pools.restore_original_limits()
    return heap_v, heap_i


def _rerank(A, B, cand, k, compiled):
    """Exact float64 distances of the candidates, the ``k`` nearest by (distance, index).

    Sorted by the distance itself (not its square), as :func:`skicon.neighbors.query_neighbors`
    sorts: squares a rounding apart can share one square root, and then the index decides.
    """
    sq = _pair_sqdist_numpy(A, B, cand) if compiled is None else compiled[1].pair_distances(A, B, cand)
    exact = np.sqrt(sq)
    order = np.lexsort((cand, exact), axis=1)[:, :k]
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(exact, order, axis=1)


def euclidean_search(A, B, k, slack=16):
    """The ``k`` nearest rows of ``B`` for each row of ``A``: exact, ties broken by index.

    Parameters
    ----------
    A : ndarray of shape (n, d)
        Query rows (float64).
    B : ndarray of shape (m, d)
        Reference rows (float64).
    k : int
        Neighbours per query, at most ``m``.
    slack : int, default=16
        Extra candidates in the first shortlist.

    Returns
    -------
    indices : ndarray of shape (n, k), int64
    distances : ndarray of shape (n, k), float64
        Euclidean distances, nearest first.

    Examples
    --------
    >>> import numpy as np
    >>> idx, dist = euclidean_search(np.array([[0.0], [2.9]]), np.array([[0.0], [1.0], [3.0]]), 2)
    >>> idx.tolist(), dist.round(1).tolist()
    ([[0, 1], [2, 1]], [[0.0, 1.0], [0.1, 1.9]])
    """
    same = A is B
    B = np.ascontiguousarray(B, dtype=np.float64)
    A = B if same else np.ascontiguousarray(A, dtype=np.float64)
    n, m, d = A.shape[0], B.shape[0], B.shape[1]
    k = min(int(k), m)
    if n == 0 or k == 0:
        return np.empty((n, k), dtype=np.int64), np.empty((n, k))
    # centre and scale by a power of two: the distances keep their order (and the float64
    # re-ranking uses A and B themselves), the float32 values their accuracy
    mu = B.mean(axis=0)
    Bc = B - mu
    Ac = Bc if same else A - mu  # a search of B among itself holds one copy
    peak = max(float(np.abs(Ac).max()), float(np.abs(Bc).max()))
    scale = 2.0 ** -np.frexp(peak)[1] if peak > 0 else 1.0
    Bc *= scale
    if not same:
        Ac *= scale
    B32 = Bc.astype(np.float32)
    A32 = B32 if same else Ac.astype(np.float32)
    sqB = np.einsum("ij,ij->i", B32.astype(np.float64), B32.astype(np.float64))
    sqA = np.einsum("ij,ij->i", Ac, Ac)
    # bound on |float32 value - exact value| per row, in the scaled frame (see the module docstring)
    normA, maxB = np.sqrt(sqA), float(np.sqrt(np.einsum("ij,ij->i", Bc, Bc).max()))
    err = (2.0 * d + 16.0) * _U32 / max(1.0 - d * _U32, 0.5) * (normA + maxB) ** 2 + 1e-30
    sqB32 = sqB.astype(np.float32)
    compiled = None if float(n) * m * d <= SMALL_WORK else _compiled()
    indices = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k))
    todo = np.arange(n)
    w = min(m, k + slack)
    while todo.size:
        if w >= m:  # the whole reference set: nothing to prove
            cand = np.broadcast_to(np.arange(m), (todo.size, m))
            indices[todo], dist[todo] = _rerank(A[todo], B, cand, k, compiled)
            break
        heap_v, heap_i = _shortlist(A32[todo], B32, sqB32, w, compiled)
        idx, dd = _rerank(A[todo], B, heap_i, k, compiled)
        indices[todo], dist[todo] = idx, dd
        # every point outside the shortlist lies at a squared distance >= root + |a|^2 - err (the
        # root: the largest value kept); the relative 1e-12 keeps it from sharing the k-th
        # distance's square root (a tie by index)
        floor = (heap_v.max(axis=1).astype(np.float64) + sqA[todo] - err[todo]) / (scale * scale)
        todo = todo[~(floor > dd[:, k - 1] ** 2 * (1.0 + 1e-12))]
        w = min(m, 4 * w)
    return indices, dist
