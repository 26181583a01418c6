"""The compiled top-k of :mod:`skicon._knn_exact`: a max-heap of the ``w`` smallest values per row.

Imported only when a search is large enough to pay for numba (its import and the loading of
cached machine code cost about half a second of a fresh process); smaller searches select in
NumPy (:func:`skicon._knn_exact._push_numpy`).
"""

import numpy as np
from numba import njit

__all__ = ["push"]


@njit(nogil=True, cache=True)
def _sift(heap_v, heap_i, i, v, j):  # pragma: no cover - compiled
    # replace the root of row i's max-heap by (v, j) and restore the heap
    w = heap_v.shape[1]
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= w:
            break
        big = left
        if left + 1 < w and heap_v[i, left + 1] > heap_v[i, left]:
            big = left + 1
        if heap_v[i, big] <= v:
            break
        heap_v[i, pos] = heap_v[i, big]
        heap_i[i, pos] = heap_i[i, big]
        pos = big
    heap_v[i, pos] = v
    heap_i[i, pos] = j

@njit(nogil=True, fastmath=True, cache=True)
def push(G, sqB, col0, heap_v, heap_i, lo, hi):  # pragma: no cover - compiled
    # values v = |b|^2 - 2 a.b of rows lo..hi of the block G = A_blk @ B_blk.T, kept in a
    # max-heap of size w per row (root at 0). A vectorised minimum over 32 columns at a
    # time skips the (usual) spans where no value beats the root.
    m = G.shape[1]
    span = 32
    for i in range(lo, hi):
        top = heap_v[i, 0]
        for c0 in range(0, m, span):
            c1 = min(c0 + span, m)
            low = np.float32(np.inf)
            for c in range(c0, c1):
                low = min(low, sqB[col0 + c] - np.float32(2.0) * G[i, c])
            if low < top:
                for c in range(c0, c1):
                    v = sqB[col0 + c] - np.float32(2.0) * G[i, c]
                    if v < top:
                        _sift(heap_v, heap_i, i, v, col0 + c)
                        top = heap_v[i, 0]
