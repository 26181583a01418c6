"""Supervisory kernels defined by neighbours, labels, views, graphs or identity."""

import numbers

import numpy as np
import scipy.sparse as sp
import torch

from .._validation import check_data, to_unit_frame, unit_exponent
from ..neighbors import knn_graph
from ._base import Kernel, drop_diagonal, normalize_rows

__all__ = ["UniformKNN", "Labels", "Views", "Graph", "Identity", "same_group_block"]


def _check_ids(values, name, n):
    if values is None:
        raise ValueError(f"This kernel needs `{name}` (an array of length n_samples={n}); pass {name}=... to fit.")
    values = np.asarray(values)
    if values.ndim != 1 or values.shape[0] != n:
        raise ValueError(f"{name} must be a 1-d array of length n_samples={n}, got shape {values.shape}.")
    return values


def _same_id_matrix(ids, views=None):
    """Sparse row-stochastic p: uniform over j != i with ids[j] == ids[i] (and another view)."""
    n = len(ids)
    _, codes = np.unique(ids, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)])
    rows, cols = [], []
    for c in np.nonzero(counts > 1)[0]:
        members = order[starts[c] : starts[c + 1]]
        r = np.repeat(members, len(members))
        k = np.tile(members, len(members))
        keep = r != k
        if views is not None:
            keep &= views[r] != views[k]
        rows.append(r[keep])
        cols.append(k[keep])
    if not rows:
        return sp.csr_matrix((n, n))
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    return normalize_rows(sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)))


def same_group_block(ids_rows, ids_cols, *, exclude_self=None):
    """Dense block p(j|i) uniform over candidates sharing the anchor's id (labels or groups).

    Parameters
    ----------
    ids_rows : torch.Tensor of shape (B,)
        Ids of the anchors.
    ids_cols : torch.Tensor of shape (M,)
        Ids of the candidates.
    exclude_self : torch.Tensor of bool of shape (B, M), default=None
        Self pairs to exclude.

    Returns
    -------
    torch.Tensor of shape (B, M)
        Row-normalised block (rows with no positive are all zero).

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import same_group_block
    >>> same_group_block(torch.tensor([0, 1]), torch.tensor([0, 0, 1]))
    tensor([[0.5000, 0.5000, 0.0000],
            [0.0000, 0.0000, 1.0000]])
    """
    same = (ids_rows[:, None] == ids_cols[None, :]).to(torch.get_default_dtype())
    if exclude_self is not None:
        same = same.masked_fill(exclude_self, 0.0)
    return same / same.sum(dim=1, keepdim=True).clamp_min(1.0)


class UniformKNN(Kernel):
    """Uniform over the k nearest neighbours: p(j|i) = 1/k if j is a k-NN of i.

    The supervisory kernel of mutual-information clustering (Theorem 10) and of the paper's
    InfoNCE clustering.

    Parameters
    ----------
    n_neighbors : int, default=10
        Number of neighbours k (clamped to n_samples - 1).
    metric : str, default="euclidean"
        Neighbour-search metric.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.kernels import UniformKNN
    >>> UniformKNN(n_neighbors=2).conditional(np.arange(5.0)[:, None]).toarray()[0]
    array([0. , 0.5, 0.5, 0. , 0. ])
    """

    def __init__(self, n_neighbors=10, *, metric="euclidean"):
        self.n_neighbors = n_neighbors
        self.metric = metric

    def conditional(self, X, *, y=None, groups=None, knn=None, random_state=None, n_jobs=None):
        if not isinstance(self.n_neighbors, numbers.Integral) or isinstance(self.n_neighbors, bool) \
                or self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive integer, got {self.n_neighbors!r}.")
        X = check_data(X, caller=type(self).__name__)
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"A neighbourhood distribution needs at least 2 samples, got n_samples={n}.")
        k = min(int(self.n_neighbors), n - 1)
        if knn is None or knn.n_neighbors < k or knn.metric != self.metric:
            # neighbours do not change under a global rescaling: search in X's unit frame (exact)
            Xu = to_unit_frame(X, unit_exponent(X))
            knn = knn_graph(Xu, k, metric=self.metric, random_state=random_state, n_jobs=n_jobs)
        idx = knn.indices[:, :k]
        indptr = np.arange(0, n * k + 1, k)
        return normalize_rows(sp.csr_matrix((np.ones(n * k), idx.ravel(), indptr), shape=(n, n)))


class Labels(Kernel):
    """Uniform over the other samples of the same class (SupCon, Corollary 2).

    ``p(j|i) = 1[y_j = y_i] / (K_i - 1)`` for j != i, K_i the size of i's class.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.kernels import Labels
    >>> Labels().conditional(np.zeros((3, 1)), y=[0, 0, 1]).toarray()[0]
    array([0., 1., 0.])
    """

    def conditional(self, X, *, y=None, groups=None, knn=None, random_state=None, n_jobs=None):
        y = _check_ids(y, "y", X.shape[0])
        return _same_id_matrix(y)

    def block(self, y_rows, y_cols, exclude_self=None):
        """Dense batch block of this kernel from labels (see :func:`same_group_block`).

        Parameters
        ----------
        y_rows, y_cols : torch.Tensor
            Labels of anchors and candidates.
        exclude_self : torch.Tensor of bool, default=None
            Self pairs.

        Returns
        -------
        torch.Tensor
            Row-normalised block.
        """
        return same_group_block(y_rows, y_cols, exclude_self=exclude_self)


class Views(Kernel):
    """Uniform over positive pairs: samples sharing a group id (augmented views, CMC/CLIP).

    Parameters
    ----------
    cross_view : bool, default=False
        If True only positives from *another* view count (CMC / CLIP, Theorem 6); the view of
        each sample is passed as ``views=`` to :meth:`conditional`.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.kernels import Views
    >>> Views().conditional(np.zeros((4, 1)), groups=[0, 1, 0, 1]).toarray()[0]
    array([0., 0., 1., 0.])
    """

    def __init__(self, cross_view=False):
        self.cross_view = cross_view

    def conditional(self, X, *, y=None, groups=None, knn=None, random_state=None, n_jobs=None, views=None):
        n = X.shape[0]
        groups = _check_ids(groups, "groups", n)
        if self.cross_view:
            views = _check_ids(views, "views", n)
            return _same_id_matrix(groups, views)
        return _same_id_matrix(groups)


class Graph(Kernel):
    """A precomputed affinity or adjacency matrix, row-normalised: p(j|i) = A_ij / d_i.

    Parameters
    ----------
    affinity : {array-like, sparse matrix} of shape (n, n), default=None
        The affinity. When None, ``X`` passed to :meth:`conditional` is taken as the affinity
        (``metric="precomputed"`` style).
    degree_weighted : bool, default=False
        Weight edges by the inverse degree of the target, A_ij / d_j.
    exponential : bool, default=False
        If True, p(j|i) ∝ exp(A_ij) (of the degree-weighted A_ij / d_j when
        ``degree_weighted``) over *every* j, the self pair and non-edges included (weight
        exp(0) = 1): Table 1's "Gaussians on edge weights" of the normalized-cuts row
        (Theorem 11), under which the reverse I-Con loss equals the soft normalized cut up to
        entropy and a constant. Dense, O(n^2) memory (an explicit exact mode). With the linear
        form (False) KL(q || p) is infinite on any sparse graph.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.kernels import Graph
    >>> Graph().conditional(np.array([[0, 1.0], [3.0, 0]])).toarray()
    array([[0., 1.],
           [1., 0.]])
    """

    def __init__(self, affinity=None, *, degree_weighted=False, exponential=False):
        self.affinity = affinity
        self.degree_weighted = degree_weighted
        self.exponential = exponential

    @property
    def include_self(self):
        """The self pair is a candidate only in the exponential form (weight exp(0))."""
        return bool(self.exponential)

    def conditional(self, X, *, y=None, groups=None, knn=None, random_state=None, n_jobs=None):
        A = X if self.affinity is None else self.affinity
        A = sp.csr_matrix(A, dtype=np.float64)
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"Graph needs a square (n, n) affinity, got shape {A.shape}.")
        if A.shape[0] != X.shape[0]:
            raise ValueError(f"The affinity has {A.shape[0]} rows but X has {X.shape[0]} samples.")
        if (A.data < 0).any() or not np.isfinite(A.data).all():
            raise ValueError("The affinity must be finite and non-negative.")
        A = drop_diagonal(A)
        A.eliminate_zeros()
        if self.degree_weighted:
            d = np.asarray(A.sum(axis=1)).ravel()
            inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
            A = A @ sp.diags(inv)
        if self.exponential:
            logw = A.toarray()
            return normalize_rows(sp.csr_matrix(np.exp(logw - logw.max(axis=1, keepdims=True))))
        return normalize_rows(A)


class Identity(Kernel):
    """The identity p(j|i) = 1[i = j]: the supervisory kernel of the PCA limit (Corollary 1).

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.kernels import Identity
    >>> Identity().conditional(np.zeros((2, 1))).toarray()
    array([[1., 0.],
           [0., 1.]])
    """

    include_self = True

    def conditional(self, X, *, y=None, groups=None, knn=None, random_state=None, n_jobs=None):
        return sp.identity(X.shape[0], format="csr", dtype=np.float64)
