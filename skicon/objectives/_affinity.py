"""The sparse supervisory ``P`` of the neighbour-embedding engine, held in O(nnz) memory.

:class:`SparseAffinity` keeps what the attraction needs and nothing more: the CSR arrays of ``P``
(``indptr``, int32 column indices, values in the engine's dtype), which is all the compiled CPU
loops of :mod:`skicon.objectives._compiled` read. The int64 edge lists ``rows`` / ``cols`` of the
torch code (CUDA, kernels without a compiled twin, more than three components) are built on first
use only: at a million points with ``perplexity=30`` they would be 16 bytes per edge, about 2 GiB.
:func:`joint_from_conditional` symmetrises a conditional ``P`` without a second copy of the result.
"""

import numpy as np
import scipy.sparse as sp
import torch

from ..kernels._transforms import debiased_plogp

#: From this many points on, the CPU arrays are stored in :func:`locality_order`. Measured on the
#: t-SNE ``P`` of 200,000 MNIST-1D points (26 million edges, two cores): the compiled attraction
#: took 186 ms per pass in input order and 42 ms in reverse Cuthill-McKee order, for 0.3 s of
#: ordering and about 1 s of renumbering once per fit; a whole 70,000-point fit 29.9 s against
#: 24.9 s. Smaller sizes were not measured: the threshold keeps the 2k-20k fits on the path
#: their benchmarks were measured on (their coordinates fit a core's 1 MiB L2 cache below about
#: 130,000 float32 points, but the edges still stream from memory).
LOCALITY_MIN_N = 30_000

#: Edges handled per step of the float64 reductions and of the alignment of the loss weights,
#: so that their temporaries stay a few tens of MiB at any nnz.
_CHUNK = 1 << 22


def joint_from_conditional(P):
    """Symmetrised joint distribution ``(P + P^T) / (2 n)`` of a row-stochastic sparse matrix.

    Parameters
    ----------
    P : scipy.sparse matrix of shape (n, n)
        Conditional distribution, rows summing to one (or zero).

    Returns
    -------
    scipy.sparse.csr_matrix
        Symmetric, non-negative, summing to one over all entries (when every row had mass).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> joint_from_conditional(sp.csr_matrix([[0.0, 1.0], [1.0, 0.0]])).toarray()
    array([[0. , 0.5],
           [0.5, 0. ]])
    """
    P = sp.csr_matrix(P, dtype=np.float64)  # no copy of a float64 CSR matrix
    J = (P + P.T).tocsr()  # scipy's sum of canonical matrices is canonical (sorted, no duplicates)
    J.sum_duplicates()
    total = J.sum()
    if total > 0:
        J.data /= total  # in place: ``J / total`` would hold a second copy at the peak
    return J


def _positive_csr(P):
    """``P`` as canonical CSR (sorted columns, no duplicates) with only its positive entries.

    Copies only what is not already so: the kNN graphs' matrices pass through unchanged.
    """
    P = P if sp.isspmatrix_csr(P) or isinstance(P, sp.csr_array) else sp.csr_matrix(P)
    if not P.has_canonical_format:
        P = P.copy()
        P.sum_duplicates()  # sorts the columns too
    positive = P.data > 0  # False for NaN too
    if not positive.all():
        P = P.copy()
        P.data[~positive] = 0.0
        P.eliminate_zeros()
    return P


def locality_order(P):
    """A renumbering of the points of a symmetric sparse ``P`` that puts graph neighbours close.

    Reverse Cuthill-McKee (scipy): a breadth-first order that keeps every edge's two ends a short
    distance apart in the numbering, in O(nnz) time. Gathers over a row's neighbours then read
    nearby memory instead of random addresses.

    Parameters
    ----------
    P : scipy.sparse.csr_matrix of shape (n, n)
        Symmetric pattern (the joint ``P``, or ``P + P^T``).

    Returns
    -------
    order : ndarray of shape (n,), int64
        ``order[r]`` is the point stored at position ``r``.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> P = sp.csr_matrix(([1.0] * 6, ([0, 2, 2, 3, 3, 0], [2, 0, 3, 2, 0, 3])), shape=(4, 4))
    >>> sorted(locality_order(P).tolist())
    [0, 1, 2, 3]
    """
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    return np.asarray(reverse_cuthill_mckee(sp.csr_matrix(P), symmetric_mode=True), dtype=np.int64)


def permuted_csr(indptr, indices, arrays, order):
    """The CSR arrays of ``P[order][:, order]``, each row's edges in their stored order.

    Built a block of rows at a time, so the temporaries stay a few tens of MiB at any nnz.

    Parameters
    ----------
    indptr, indices : ndarray
        CSR structure of an ``n x n`` matrix.
    arrays : tuple of ndarray
        Value arrays on those edges (e.g. the attraction and the loss weights).
    order : ndarray of shape (n,)
        A permutation: new row ``r`` is old row ``order[r]``.

    Returns
    -------
    indptr, indices : ndarray (int64, int32)
    arrays : tuple of ndarray

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.csr_matrix(np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [0.0, 4.0, 0.0]]))
    >>> order = np.array([2, 0, 1])
    >>> ip, ix, (v,) = permuted_csr(A.indptr, A.indices, (A.data,), order)
    >>> np.array_equal(sp.csr_matrix((v, ix, ip), shape=(3, 3)).toarray(), A.toarray()[order][:, order])
    True
    """
    n = len(order)
    inverse = np.empty(n, dtype=np.int32)
    inverse[order] = np.arange(n, dtype=np.int32)
    counts = np.diff(indptr)[order]
    new_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=new_indptr[1:])
    new_indices = np.empty(int(new_indptr[-1]), dtype=np.int32)
    out = tuple(np.empty(len(a), dtype=np.asarray(a).dtype) for a in arrays)
    start = 0
    while start < n:
        stop = int(np.searchsorted(new_indptr, new_indptr[start] + _CHUNK, side="right")) - 1
        stop = min(n, max(stop, start + 1))
        a, b = new_indptr[start], new_indptr[stop]
        # the source position of each new edge: its old row's start plus its offset in the row
        src = np.repeat(indptr[order[start:stop]].astype(np.int64) - new_indptr[start:stop], counts[start:stop])
        src += np.arange(a, b, dtype=np.int64)
        new_indices[a:b] = inverse[indices[src]]
        for dst, values in zip(out, arrays):
            dst[a:b] = values[src]
        start = stop
    return new_indptr, new_indices, out


def _row_sums(values, indptr):
    """Float64 sum of each CSR row's ``values`` (empty rows give 0)."""
    counts = np.diff(indptr)
    out = np.zeros(len(counts))
    nonempty = counts > 0
    if nonempty.any():  # each non-empty row's segment ends where the next non-empty one starts
        out[nonempty] = np.add.reduceat(np.asarray(values, dtype=np.float64), indptr[:-1][nonempty])
    return out


def _aligned(loss, A):
    """Values of the sparse ``loss`` on the edges of the canonical CSR ``A`` (zero elsewhere).

    Both matrices are canonical, so each row's columns are sorted: the loss edges are located
    by a search over keys ``row * n + col`` built for one block of rows at a time.
    """
    L = _positive_csr(loss)
    if L.shape != A.shape:
        raise ValueError(f"the loss weights must have the shape of the attraction matrix {A.shape}, got {L.shape}.")
    n = A.shape[0]
    out = np.zeros(A.nnz)
    start = 0
    while start < n:
        stop = int(np.searchsorted(A.indptr, A.indptr[start] + _CHUNK, side="right")) - 1
        stop = min(n, max(stop, start + 1))
        a0, a1, l0, l1 = A.indptr[start], A.indptr[stop], L.indptr[start], L.indptr[stop]
        block = np.arange(start, stop, dtype=np.int64)
        akeys = np.repeat(block, np.diff(A.indptr[start : stop + 1])) * n + A.indices[a0:a1]
        lkeys = np.repeat(block, np.diff(L.indptr[start : stop + 1])) * n + L.indices[l0:l1]
        at = np.searchsorted(akeys, lkeys)
        if np.any(at >= len(akeys)) or np.any(akeys[np.minimum(at, max(len(akeys) - 1, 0))] != lkeys):
            raise ValueError("the loss weights must be non-zero only on the edges of the attraction matrix.")
        out[a0 + at] = L.data[l0:l1]
        start = stop
    return out


def _plogp_and_mass(values):
    """``sum v log v`` over the positive ``values`` and ``sum v``, in float64, chunk by chunk."""
    plogp = mass = 0.0
    for s in range(0, len(values), _CHUNK):
        v = np.asarray(values[s : s + _CHUNK], dtype=np.float64)
        v = v[v > 0]
        plogp += float((v * np.log(v)).sum())  # not np.dot: BLAS splits a dot product by thread
        mass += float(v.sum())
    return plogp, mass


class UpperTriangle:
    """The strict upper triangle of a symmetric CSR ``P``, split into row blocks for the compiled loops.

    :func:`skicon.objectives._compiled.attraction_upper` reads each pair once from it. Block
    ``b`` holds rows ``row_lo[b]:row_hi[b]`` (about equal numbers of edges; the number of blocks
    is set by the number of edges, never by the number of threads) and accumulates forces for
    the points ``bases[b]:stops[b]`` (its rows and the columns they reach) at ``offsets[b]`` of
    one shared buffer of ``total`` entries per coordinate.

    Parameters
    ----------
    indptr, indices, values : ndarray
        CSR arrays of a symmetric ``n x n`` matrix (columns sorted in each row).

    Examples
    --------
    >>> import numpy as np
    >>> up = UpperTriangle(np.array([0, 1, 2]), np.array([1, 0]), np.array([0.5, 0.5]))
    >>> up.indptr.tolist(), up.indices.tolist(), up.values.tolist(), up.total
    ([0, 1, 1], [1], [0.5], 2)
    """

    #: Edges of the upper triangle per block (at most :attr:`MAX_BLOCKS` blocks).
    EDGES_PER_BLOCK = 250_000
    MAX_BLOCKS = 8

    def __init__(self, indptr, indices, values):
        n = len(indptr) - 1
        counts = np.zeros(n, dtype=np.int64)
        keep_parts = []
        start = 0
        while start < n:  # a block of rows at a time: the boolean mask stays a few MiB
            stop = int(np.searchsorted(indptr, indptr[start] + _CHUNK, side="right")) - 1
            stop = min(n, max(stop, start + 1))
            a, b = int(indptr[start]), int(indptr[stop])
            rows = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(indptr[start : stop + 1]))
            keep = indices[a:b] > rows
            counts[start:stop] = np.bincount(rows[keep] - start, minlength=stop - start)
            keep_parts.append((a, b, keep))
            start = stop
        self.indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=self.indptr[1:])
        self.indices = np.empty(int(self.indptr[-1]), dtype=np.int32)
        self.values = np.empty(int(self.indptr[-1]), dtype=np.asarray(values).dtype)
        at = 0
        for a, b, keep in keep_parts:
            m = int(keep.sum())
            self.indices[at : at + m] = indices[a:b][keep]
            self.values[at : at + m] = values[a:b][keep]
            at += m
        nnz = len(self.indices)
        from ._compiled import _blocks  # here, not at import: it loads numba

        n_blocks = int(min(self.MAX_BLOCKS, max(1, nnz // self.EDGES_PER_BLOCK)))
        ranges = _blocks(self.indptr, n_blocks)
        self.row_lo = np.asarray([a for a, _ in ranges], dtype=np.int64)
        self.row_hi = np.asarray([b for _, b in ranges], dtype=np.int64)
        self.bases = self.row_lo.copy()
        reach = np.maximum.reduceat(np.append(self.indices, 0).astype(np.int64),
                                    np.minimum(self.indptr[self.row_lo], nnz)) if nnz else np.zeros(len(self.row_lo))
        # a block without edges reaches nothing beyond its rows (reduceat then reads a neighbour's)
        empty = self.indptr[self.row_hi] == self.indptr[self.row_lo]
        self.stops = np.where(empty, self.row_hi, np.maximum(self.row_hi, np.asarray(reach, dtype=np.int64) + 1))
        spans = self.stops - self.bases
        self.offsets = np.concatenate([[0], np.cumsum(spans)[:-1]]).astype(np.int64)
        self.total = int(spans.sum())
        self._scratch = {}

    def scratch(self, dtype):
        """The blocks' force accumulators, ``(total, 2)`` in ``dtype``: one array, reused by every pass.

        Parameters
        ----------
        dtype : numpy dtype

        Returns
        -------
        ndarray of shape (total, 2)
        """
        dtype = np.dtype(dtype)
        if dtype not in self._scratch:
            self._scratch[dtype] = np.empty((self.total, 2), dtype=dtype)
        return self._scratch[dtype]


class SparseAffinity:
    """A sparse supervisory matrix held as CSR arrays (rows sorted), on a device.

    Two value arrays share the edges: ``values`` weight the attraction of the gradient, and
    ``loss_values`` weight ``log q`` in the loss. They are the same matrix for the joint form;
    the conditional form (:meth:`conditional`) attracts with ``P + P^T`` (the gradient of the
    mean row KL) while its loss weighs by ``P`` itself.

    On the CPU, from :data:`LOCALITY_MIN_N` points on, the points are stored renumbered by
    :func:`locality_order` (``order``: storage row ``r`` is point ``order[r]``), every array
    here included, so that the attraction's gathers of ``y_j`` read memory its neighbours just
    used. :func:`~skicon.objectives._pairwise.objective_and_gradient` maps the embedding into
    that numbering and the gradient back (O(n) each).

    Memory is O(nnz): on the CPU, 4 bytes per edge for the int32 column indices (shared with
    ``P`` when its indices are int32) and 4 or 8 per value array, plus O(n). The int64 edge
    lists ``rows`` and ``cols`` that the torch code of the engine gathers with are built when
    first asked for, and kept from then on.

    Parameters
    ----------
    P : scipy.sparse matrix of shape (n, n)
        Attraction weights (the joint ``P``, or ``P + P^T`` of a conditional ``P``); entries
        that are not positive are dropped.
    device : torch.device
        Where the tensors live.
    dtype : torch.dtype
        Float dtype of the values.
    loss : scipy.sparse matrix of shape (n, n), default=None
        Loss weights, non-zero only where ``P`` is; ``P`` itself when None.
    symmetric : bool, default=False
        Whether ``P`` is symmetric (the caller's word: the joint ``P`` of
        :func:`joint_from_conditional` is). With ``loss=None`` the compiled CPU attraction then
        reads each pair once, from :attr:`upper`.

    Examples
    --------
    >>> import scipy.sparse as sp, torch
    >>> aff = SparseAffinity.conditional(sp.csr_matrix([[0.0, 1.0], [0.5, 0.5]]), "cpu", torch.float64)
    >>> aff.values.tolist(), aff.loss_values.tolist()
    ([1.5, 1.5, 1.0], [1.0, 0.5, 0.5])
    >>> aff.rows.tolist(), aff.cols.tolist()  # built on first use
    ([0, 1, 1], [1, 0, 1])
    """

    def __init__(self, P, device, dtype, *, loss=None, symmetric=False):
        source = P
        self.symmetric = bool(symmetric)
        P = _positive_csr(P)
        self.n = P.shape[0]
        self.device = torch.device(device)
        lvals = P.data if loss is None else _aligned(loss, P)
        # sum l log l, the constant part of KL(p || q)
        self.entropy_term, self.loss_mass = _plogp_and_mass(lvals)
        indptr, indices, data = P.indptr, P.indices, P.data
        self.order = None
        if self.device.type == "cpu" and self.n >= LOCALITY_MIN_N:
            self.order = locality_order(P)
            arrays = (data,) if loss is None else (data, lvals)
            indptr, indices, arrays = permuted_csr(indptr, indices, arrays, self.order)
            data, lvals = arrays[0], arrays[-1]
        counts = np.diff(indptr).astype(np.int64)
        self.indptr = indptr.astype(np.int64, copy=False)
        # int32 column indices: less memory traffic in the gather-bound attraction loop
        self.indices = indices.astype(np.int32, copy=False)
        # a copy (never a view of P's data, which the caller may hold and change)
        self.values = torch.tensor(data, dtype=dtype, device=self.device)
        self.loss_values = self.values if loss is None else torch.tensor(lvals, dtype=dtype, device=self.device)
        # segment_reduce is much faster than index_add_ on CPU; empty rows are fine
        self.lengths = torch.as_tensor(counts, device=self.device)
        # l's mass per row weighs log Z_i in the conditional form's loss
        self.loss_row_mass = torch.as_tensor(_row_sums(lvals, self.indptr), dtype=dtype, device=self.device)
        # CSR views of the same arrays for the compiled CPU loops
        self.csr = None
        if self.device.type == "cpu":
            self.csr = (self.indptr, self.indices, self.values.numpy())
            self.csr_loss = self.loss_values.numpy()
        self._rows = self._cols = None
        self._upper = None
        self._source = (source, loss)

    @property
    def upper(self):
        """:class:`UpperTriangle` of the CPU arrays, for a symmetric ``P`` weighing the loss too; else None.

        Built on first use (the compiled 1-D/2-D attraction; 3-D and torch paths never ask) and
        kept: about 4 bytes per edge more (half the edges, int32 columns and float32 values).
        """
        if self._upper is None and self.symmetric and self.csr is not None and self.loss_values is self.values:
            self._upper = UpperTriangle(*self.csr)
        return self._upper

    @property
    def rows(self):
        """Row of each edge (int64 tensor on the device), built on first use and kept."""
        if self._rows is None:
            self._rows = self._edge_rows()
        return self._rows

    @property
    def cols(self):
        """Column of each edge (int64 tensor on the device), built on first use and kept."""
        if self._cols is None:
            self._cols = torch.as_tensor(self.indices, device=self.device).long()
        return self._cols

    @property
    def has_edge_lists(self):
        """Whether the int64 ``rows`` / ``cols`` tensors have been built."""
        return self._rows is not None or self._cols is not None

    def _edge_rows(self):
        return torch.repeat_interleave(torch.arange(self.n, device=self.device), self.lengths)

    @classmethod
    def conditional(cls, P, device, dtype):
        """The affinity of the conditional form: attraction ``P + P^T``, loss weights ``P``.

        Parameters
        ----------
        P : scipy.sparse matrix of shape (n, n)
            Row-stochastic conditional ``p``.
        device : torch.device
            Where the tensors live.
        dtype : torch.dtype
            Float dtype.

        Returns
        -------
        SparseAffinity
        """
        P = sp.csr_matrix(P)
        aff = cls((P + P.T).tocsr(), device, dtype, loss=P)
        aff._source = (None, P)  # rebuilt from P by :meth:`to`; P + P^T is not kept
        return aff

    def to(self, dtype):
        """The same affinity with values in ``dtype`` (e.g. float64 for an exact final loss).

        Parameters
        ----------
        dtype : torch.dtype
            Float dtype.

        Returns
        -------
        SparseAffinity
        """
        if dtype == self.values.dtype:
            return self
        P, loss = self._source
        if P is None:
            return SparseAffinity.conditional(loss, self.device, dtype)
        return SparseAffinity(P, self.device, dtype, loss=loss, symmetric=self.symmetric)

    def debiased_plogp(self, alpha, n_rows, n_candidates):
        """``sum p~ log p~`` of the debiased loss weights over ``n_rows`` rows of ``n_candidates`` each.

        Parameters
        ----------
        alpha : float
            Debiasing weight.
        n_rows : int
            1 for the joint form (one distribution over all pairs), n for the conditional form.
        n_candidates : int
            Candidates per row: ``n (n - 1)`` (joint) or ``n - 1`` (conditional).

        Returns
        -------
        float
        """
        from ._pairwise import fixed_sum

        # built when asked for (debiasing only): a float64 copy of the edges costs 16 bytes each
        vals = self.loss_values.double()
        pos = vals > 0
        if n_rows == 1:
            rows = torch.zeros(int(pos.sum()), dtype=torch.int64, device=vals.device)
        else:  # not kept: the compiled loops never need the int64 rows
            rows = (self.rows if self._rows is not None else self._edge_rows())[pos]
        return float(fixed_sum(debiased_plogp(vals[pos], rows, n_rows, float(n_candidates), alpha)))
