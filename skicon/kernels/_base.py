"""The kernel abstraction: one family of objects for both sides of the I-Con loss.

A kernel turns data (supervisory use, ``p``) or a learned representation (learned use, ``q``)
into row-normalised conditional distributions p(j|i).
"""

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator

from .._utils import as_tensor

__all__ = ["Kernel", "normalize_rows", "restrict"]


def normalize_rows(P):
    """Scale the rows of a sparse matrix to sum to one (empty rows stay empty).

    Parameters
    ----------
    P : scipy.sparse matrix of shape (n, m)
        Non-negative affinities.

    Returns
    -------
    scipy.sparse.csr_matrix
        Row-stochastic matrix.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from skicon.kernels import normalize_rows
    >>> normalize_rows(sp.csr_matrix([[1.0, 3.0], [0.0, 0.0]])).toarray()
    array([[0.25, 0.75],
           [0.  , 0.  ]])
    """
    P = sp.csr_matrix(P, dtype=np.float64)
    sums = np.asarray(P.sum(axis=1)).ravel()
    inv = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.csr_matrix(sp.diags(inv) @ P)


def drop_diagonal(M):
    """``M`` as CSR without its diagonal entries (no self pairs).

    A mask on the CSR entries: ``setdiag(0)`` needs LIL, or is slow on CSR, at large n, and a
    round trip through COO costs twice as much. The result has sorted indices (canonical CSR),
    so that what is drawn from its rows does not depend on how ``M`` was assembled.
    """
    M = sp.csr_matrix(M, dtype=np.float64)
    counts = np.diff(M.indptr)
    # row ids in the indices' own dtype (int32 below 2**31 rows): 4 bytes per entry, not 8
    off = M.indices != np.repeat(np.arange(M.shape[0], dtype=M.indices.dtype), counts)
    # a diagonal entry's row is its column: each row's count less its diagonal entries
    counts = counts - np.bincount(M.indices[~off], minlength=M.shape[0])
    indptr = np.zeros(M.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    out = sp.csr_matrix((M.data[off], M.indices[off], indptr), shape=M.shape)
    out.sort_indices()
    return out


def self_mask(rows, cols, device=None):
    """Boolean (len(rows), len(cols)) mask of the self pairs ``rows[a] == cols[b]``."""
    rows = torch.as_tensor(rows, device=device)
    cols = torch.as_tensor(cols, device=device)
    return rows[:, None] == cols[None, :]


def restrict(kernel, P, rows, cols, *, dtype=torch.float32, device="cpu"):
    """Dense block of a supervisory distribution over a batch, renormalised over its candidates.

    The block is ``P[rows][:, cols]`` with each row rescaled to sum to one over the candidate
    columns, then passed through ``kernel.finalize_block`` (which applies debiasing).

    Parameters
    ----------
    kernel : Kernel
        The supervisory kernel that produced ``P``.
    P : scipy.sparse matrix of shape (n, n)
        Global supervisory distribution.
    rows, cols : array-like of int
        Anchor and candidate indices.
    dtype : torch.dtype, default=torch.float32
        Output dtype.
    device : str or torch.device, default="cpu"
        Output device.

    Returns
    -------
    torch.Tensor of shape (len(rows), len(cols))
        Dense supervisory block.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.kernels import UniformKNN, restrict
    >>> kernel = UniformKNN(n_neighbors=2)
    >>> P = kernel.conditional(np.arange(6.0)[:, None])
    >>> restrict(kernel, P, rows=[0, 1], cols=[0, 1, 2])
    tensor([[0.0000, 0.5000, 0.5000],
            [0.5000, 0.0000, 0.5000]])
    """
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    block = sp.csr_matrix(P)[rows][:, cols].toarray()
    if not kernel.include_self:
        block[rows[:, None] == cols[None, :]] = 0.0
    sums = block.sum(axis=1, keepdims=True)
    block = np.divide(block, sums, out=np.zeros_like(block), where=sums > 0)
    out = torch.as_tensor(block, dtype=dtype, device=device)
    return kernel.finalize_block(out, self_mask(rows, cols, device=out.device))


class Kernel(BaseEstimator):
    """Base class of skicon kernels (neighbourhood distributions).

    A kernel has two uses. As the *supervisory* distribution it maps data to a sparse
    row-stochastic matrix with :meth:`conditional`. As the *learned* distribution it maps a
    representation (a torch tensor) to log-probabilities with :meth:`log_prob`, differentiably.
    Kernels are scikit-learn estimators: their parameters are searchable with ``GridSearchCV``.

    Notes
    -----
    Subclasses define :meth:`log_weights` (learned use) and/or :meth:`conditional`
    (supervisory use). The class attribute ``include_self`` says whether the self pair j == i is
    a candidate.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import Kernel
    >>> class Laplace(Kernel):
    ...     # a learned kernel w_ij = exp(-||z_i - z_j||_1 / scale)
    ...     def __init__(self, scale=1.0):
    ...         self.scale = scale
    ...     def log_weights(self, Z, Z_cand=None):
    ...         Z_cand = Z if Z_cand is None else Z_cand
    ...         return -torch.cdist(Z, Z_cand, p=1) / self.scale
    >>> q = Laplace(scale=2.0).prob(torch.tensor([[0.0], [1.0], [3.0]]))
    >>> q[0]  # the self pair is not a candidate
    tensor([0.0000, 0.7311, 0.2689])
    >>> Laplace(scale=2.0).get_params()
    {'scale': 2.0}
    """

    include_self = False

    # -- supervisory use --------------------------------------------------------------------
    def conditional(self, X, *, y=None, groups=None, knn=None, random_state=None, n_jobs=None):
        """Supervisory conditional distribution over the samples of ``X``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Data.
        y : array-like of shape (n_samples,), default=None
            Labels, for label-based kernels.
        groups : array-like of shape (n_samples,), default=None
            Group ids, for positive-pair kernels.
        knn : KNNGraph, default=None
            Precomputed neighbour graph to reuse.
        random_state : int, RandomState instance or None, default=None
            Seed for approximate neighbour search.
        n_jobs : int, default=None
            Parallel jobs for neighbour search.

        Returns
        -------
        scipy.sparse.csr_matrix of shape (n_samples, n_samples)
            Row i is p(.|i).
        """
        raise TypeError(
            f"{type(self).__name__} is a learned kernel and cannot be used as the supervisory "
            "distribution p; choose a kernel such as Gaussian, UniformKNN, Labels or Views for p."
        )

    def finalize_block(self, p_block, self_pairs=None):
        """Post-process a dense supervisory block (identity; debiasing overrides it).

        Parameters
        ----------
        p_block : torch.Tensor of shape (n_anchors, n_candidates)
            Row-normalised block.
        self_pairs : torch.Tensor of bool, default=None
            Mask of the self pairs inside the block.

        Returns
        -------
        torch.Tensor
            The block to use in the loss.
        """
        return p_block

    def dense(self, X, **context):
        """Exact dense (n_samples, n_samples) supervisory distribution, for small problems.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data.
        **context : dict
            Passed to :meth:`conditional` (``y``, ``groups``, ...).

        Returns
        -------
        torch.Tensor of shape (n_samples, n_samples), float64
            Row-stochastic matrix including any block transform (debiasing).
        """
        P = self.conditional(X, **context)
        idx = np.arange(P.shape[0])
        return restrict(self, P, idx, idx, dtype=torch.float64)

    # -- learned use ------------------------------------------------------------------------
    def log_weights(self, Z, Z_cand=None):
        """Unnormalised log-affinities between anchors ``Z`` and candidates ``Z_cand``.

        Parameters
        ----------
        Z : torch.Tensor of shape (n_anchors, n_components)
            Anchor representations.
        Z_cand : torch.Tensor of shape (n_candidates, n_components), default=None
            Candidate representations; ``Z`` itself when None.

        Returns
        -------
        torch.Tensor of shape (n_anchors, n_candidates)
            Log-affinities.
        """
        raise TypeError(
            f"{type(self).__name__} is a supervisory kernel (it depends on data, labels or a graph, "
            "not on a learned representation) and cannot be used as the learned distribution q; "
            "choose Gaussian, StudentT, Cosine, DotProduct, ClusterKernel or Prototypes for q."
        )

    def log_prob(self, Z, Z_cand=None, *, exclude=None):
        """Learned conditional log-probabilities log q(j|i), differentiable in ``Z``.

        Parameters
        ----------
        Z : torch.Tensor of shape (n_anchors, n_components)
            Anchor representations.
        Z_cand : torch.Tensor of shape (n_candidates, n_components), default=None
            Candidate representations. When None the candidates are the anchors themselves and
            the self pair is excluded unless the kernel includes it.
        exclude : torch.Tensor of bool, default=None
            Extra mask of (anchor, candidate) pairs that are not candidates (e.g. the self pair
            when ``Z_cand`` holds the anchors in another order, or same-view pairs for CMC).

        Returns
        -------
        torch.Tensor of shape (n_anchors, n_candidates)
            Row-wise log-softmax over the candidates; non-candidates are ``-inf``.
        """
        logits = self.log_weights(Z, Z_cand)
        mask = self._candidate_exclusions(logits, Z_cand, exclude)
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        return logits - torch.logsumexp(logits, dim=1, keepdim=True)

    def _candidate_exclusions(self, logits, Z_cand, exclude):
        mask = exclude
        if Z_cand is None and not self.include_self:
            eye = torch.eye(logits.shape[0], logits.shape[1], dtype=torch.bool, device=logits.device)
            mask = eye if mask is None else (mask | eye)
        return mask

    def prob(self, Z, Z_cand=None, **kwargs):
        """Learned conditional probabilities q(j|i) (``exp`` of :meth:`log_prob`).

        Parameters
        ----------
        Z : array-like or torch.Tensor of shape (n_anchors, n_components)
            Anchor representations.
        Z_cand : array-like or torch.Tensor, default=None
            Candidate representations.
        **kwargs : dict
            Passed to :meth:`log_prob`.

        Returns
        -------
        torch.Tensor
            Row-stochastic matrix.
        """
        Z = Z if isinstance(Z, torch.Tensor) else as_tensor(Z, dtype=torch.float64)
        if Z_cand is not None and not isinstance(Z_cand, torch.Tensor):
            Z_cand = as_tensor(Z_cand, dtype=Z.dtype)
        return torch.exp(self.log_prob(Z, Z_cand, **kwargs))

    def __repr__(self, N_CHAR_MAX=200):
        return super().__repr__(N_CHAR_MAX=N_CHAR_MAX)
