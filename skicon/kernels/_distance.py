"""Kernels defined by a distance or a similarity: Gaussian, Student-t, cosine, dot product.

Each works both as a supervisory kernel on data (restricted to a k-nearest-neighbour graph, or
over all pairs when ``n_neighbors=None``, the exact O(n^2) mode) and as a learned kernel on a
representation (dense over a batch, differentiable).
"""

import dataclasses
import numbers

import numpy as np
import scipy.sparse as sp
import torch

from .._utils import as_tensor
from .._validation import check_data, check_positive, to_unit_frame, unit_exponent
from ..neighbors import knn_graph, perplexity_betas
from ._base import Kernel, normalize_rows

__all__ = ["DistanceKernel", "Gaussian", "StudentT", "Cosine", "DotProduct", "pairwise_sqdist"]

#: Entries (rows x candidates) per block of the perplexity calibration.
_CALIBRATION_BLOCK = 1 << 21


def pairwise_sqdist(Z, C=None):
    """Squared Euclidean distances between the rows of ``Z`` and ``C`` (torch, differentiable).

    Parameters
    ----------
    Z : torch.Tensor of shape (n, d)
        First set of points.
    C : torch.Tensor of shape (m, d), default=None
        Second set; ``Z`` when None.

    Returns
    -------
    torch.Tensor of shape (n, m)
        Non-negative squared distances.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import pairwise_sqdist
    >>> pairwise_sqdist(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    tensor([[ 0., 25.],
            [25.,  0.]])
    """
    C = Z if C is None else C
    zz = (Z * Z).sum(dim=1, keepdim=True)
    cc = (C * C).sum(dim=1, keepdim=True).T
    return (zz + cc - 2.0 * Z @ C.T).clamp_min(0.0)


def _check_positive(value, name, allow_none=False):
    check_positive(value, name, allow_none=allow_none)


def _check_Z(Z, name="Z"):
    """A learned representation: a 2-D floating torch tensor (array-likes are converted)."""
    if not isinstance(Z, torch.Tensor):
        Z = as_tensor(check_data(Z, name=name, accept_sparse=False), dtype=torch.float64)
    if Z.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_components), got shape {tuple(Z.shape)}.")
    if not Z.is_floating_point():
        Z = Z.double()
    return Z


class _PairwiseKernel(Kernel):
    """Shared machinery of kernels computed from pairs of vectors."""

    #: metric used to find neighbours when the kernel is used on data
    _search_metric = "euclidean"

    def _resolve_n_neighbors(self, n):
        k = self.n_neighbors
        if k is None:
            return None
        if k == "auto":
            perplexity = getattr(self, "perplexity", None)
            k = int(np.ceil(3 * perplexity)) if perplexity else 90
        if not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"n_neighbors must be a positive integer, 'auto' or None, got {self.n_neighbors!r}.")
        return min(int(k), n - 1)

    def _edges(self, X, k, knn, random_state, n_jobs):
        """Return (rows, cols) of candidate pairs: kNN edges, or all off-diagonal pairs."""
        n = X.shape[0]
        if k is None:
            # Exact mode: every off-diagonal pair, row-major (O(n^2), asked for explicitly).
            off = ~np.eye(n, dtype=bool)
            rows, cols = np.nonzero(off)
            distances = None
            if self._search_metric == "euclidean" and not sp.issparse(X):
                # all pairs at once (C loops over exact differences), instead of gathering the
                # O(n^2) row pairs of X: 24 s -> 0.3 s on the 1,797 digits
                from scipy.spatial.distance import cdist

                distances = np.sqrt(cdist(X, X, "sqeuclidean")[off]).reshape(n, n - 1)
            return rows.astype(np.int64), cols.astype(np.int64), distances
        if knn is None or knn.n_neighbors < k or knn.metric != self._search_metric:
            knn = knn_graph(X, k, metric=self._search_metric, random_state=random_state, n_jobs=n_jobs)
        idx = knn.indices[:, :k]
        rows = np.repeat(np.arange(n), idx.shape[1])
        return rows, idx.ravel(), knn.distances[:, :k]

    def _edge_log_weights(self, X, rows, cols, distances):
        """Log-weights of each edge, computed with the same formula as :meth:`log_weights`."""
        Xt = as_tensor(X, dtype=torch.float64)
        out = np.empty(len(rows))
        step = max(1, 2_000_000 // max(1, Xt.shape[1]))
        for s in range(0, len(rows), step):
            a = Xt[torch.as_tensor(rows[s : s + step])]
            b = Xt[torch.as_tensor(cols[s : s + step])]
            out[s : s + step] = self._pair_log_weights(a, b).numpy()
        return out

    def _scale_free(self):
        """Whether p is unchanged by a global rescaling of X (then computed in X's unit frame)."""
        return False

    def _validate(self):
        """Check the kernel's own parameters (called before use)."""

    def conditional(self, X, *, y=None, groups=None, knn=None, random_state=None, n_jobs=None):
        X = check_data(X, caller=type(self).__name__)
        self._validate()
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"A neighbourhood distribution needs at least 2 samples, got n_samples={n}.")
        k = self._resolve_n_neighbors(n)
        # Neighbours are searched in X's unit frame (X * 2**-e, exact): squared distances of data
        # at 1e-160 or 1e160 neither underflow nor overflow. Scale-free kernels also weigh there.
        e = unit_exponent(X)
        Xu = to_unit_frame(X, e)
        euclidean = self._search_metric == "euclidean"
        if knn is not None and e != 0 and euclidean and knn.metric == "euclidean":
            knn = dataclasses.replace(knn, distances=np.ldexp(knn.distances, -e))
        rows, cols, distances = self._edges(Xu, k, knn, random_state, n_jobs)
        if self._scale_free() or e == 0:
            logw = self._conditional_log_weights(Xu, rows, cols, distances, n)
        else:
            with np.errstate(over="ignore", under="ignore"):
                dist = None if distances is None or not euclidean else np.ldexp(distances, e)
                logw = self._conditional_log_weights(X, rows, cols, dist, n)
            self._check_weights(logw, rows, n)
        if k is not None and not self.include_self:
            # k candidates per row, rows in order: normalise the (n, k) block and build the CSR
            # directly (no COO round trip, which doubles the peak memory at large n)
            # in place on logw (the log-weights are this function's own): no second n x k copy
            w = logw.reshape(n, -1)
            w -= w.max(axis=1, keepdims=True)
            np.exp(w, out=w)
            w /= w.sum(axis=1, keepdims=True)
            P = sp.csr_matrix((w.ravel(), np.asarray(cols), np.arange(0, w.size + 1, w.shape[1])), shape=(n, n))
            P.sort_indices()
            return P
        if self.include_self:
            rows = np.concatenate([rows, np.arange(n)])
            cols = np.concatenate([cols, np.arange(n)])
            logw = np.concatenate([logw, self._self_log_weights(X, n)])
        # Row-wise max shift in log space so that exp() never overflows or flushes a row to 0.
        row_max = np.full(n, -np.inf)
        np.maximum.at(row_max, rows, logw)
        w = np.exp(logw - row_max[rows])
        return normalize_rows(sp.csr_matrix((w, (rows, cols)), shape=(n, n)))

    def _conditional_log_weights(self, X, rows, cols, distances, n):
        return self._edge_log_weights(X, rows, cols, distances)

    def _check_weights(self, logw, rows, n):
        """Weights of a scale-dependent kernel that overflowed or vanished on every candidate of a row."""
        row_max = np.full(n, -np.inf)
        np.maximum.at(row_max, rows, np.where(np.isnan(logw), np.inf, logw))
        if np.isnan(logw).any() or not np.isfinite(row_max).all():
            params = {k: v for k, v in self.get_params(deep=False).items() if k in ("sigma", "dof", "temperature")}
            raise ValueError(
                f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())}) gives no usable "
                "weight on some rows of X: the squared distances (or products) of X overflow float64 at this "
                f"scale, or are far beyond the kernel's width. Rescale X (e.g. StandardScaler) or set "
                f"{'/'.join(params) or 'the kernel parameters'} to match the scale of X."
            )

    def _self_log_weights(self, X, n):
        Xt = as_tensor(X, dtype=torch.float64)
        return self._pair_log_weights(Xt, Xt).numpy()

    def log_weights(self, Z, Z_cand=None):
        raise NotImplementedError

    def _pair_log_weights(self, A, B):
        raise NotImplementedError


class DistanceKernel(_PairwiseKernel):
    """A kernel that is a function of the squared Euclidean distance: ``w_ij = f(||z_i - z_j||^2)``.

    Each subclass writes its formula once, in :meth:`log_weight`; everything else derives
    from it: the learned use (:meth:`log_weights` on a batch), the supervisory use on data, the
    scalable t-SNE engine (attraction over the sparse ``p``, exact / FFT-grid / sampled
    repulsion, new points in ``transform``), all of which need only the weight, its log and
    its slope as functions of ``d2``. A subclass may override :meth:`weight` and :meth:`slope`
    with closed forms for speed; by default they are ``exp(log_weight)`` and an autograd
    derivative. :meth:`compiled_profile` names the compiled CPU loop that evaluates the same
    formula, when there is one (see :mod:`skicon.objectives._compiled`); kernels without one run the
    torch code of the engine on every device.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import DistanceKernel
    >>> class Laplacian(DistanceKernel):
    ...     # w = exp(-||z_i - z_j|| / scale): one formula, usable by every path
    ...     def __init__(self, scale=1.0, *, n_neighbors="auto", include_self=False):
    ...         self.scale = scale
    ...         self.n_neighbors = n_neighbors
    ...         self.include_self = include_self
    ...     def log_weight(self, d2):
    ...         return -torch.sqrt(d2 + 1e-12) / self.scale
    >>> k = Laplacian(scale=2.0)
    >>> round(float(k.slope(torch.tensor([4.0]))), 4)  # -d log w / d(d^2) = 1 / (2 scale d)
    0.125
    """

    def log_weight(self, d2):
        """Log of the unnormalised affinity as a function of the squared distance.

        Parameters
        ----------
        d2 : torch.Tensor
            Squared Euclidean distances (any shape).

        Returns
        -------
        torch.Tensor
            ``log w(d2)``, same shape.
        """
        raise NotImplementedError(f"{type(self).__name__} must define log_weight(d2).")

    def weight(self, d2):
        """Unnormalised affinity ``w(d2)`` (``exp(log_weight(d2))`` unless overridden).

        Parameters
        ----------
        d2 : torch.Tensor
            Squared distances.

        Returns
        -------
        torch.Tensor
            ``w(d2)``.
        """
        return torch.exp(self.log_weight(d2))

    def slope(self, d2):
        """``g(d2) = -d log w / d(d2)``, so that the gradient of ``-log w_ij`` in ``z_i`` is ``2 g (z_i - z_j)``.

        The default differentiates :meth:`log_weight` with autograd.

        Parameters
        ----------
        d2 : torch.Tensor
            Squared distances.

        Returns
        -------
        torch.Tensor
            The slope, same shape.
        """
        with torch.enable_grad():
            x = d2.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_weight(x).sum(), x)
        return -grad

    def weight_slope(self, d2):
        """``w(d2) g(d2)``: the kernel of the repulsive force.

        Parameters
        ----------
        d2 : torch.Tensor
            Squared distances.

        Returns
        -------
        torch.Tensor
            ``w g``, same shape.
        """
        return self.weight(d2) * self.slope(d2)

    def heavy_tailed(self):
        """Whether the slope decays with distance (Student-t) rather than staying flat (Gaussian).

        The engine uses it to choose float32 (heavy tails do not underflow) and the learning-rate
        rule. Measured on the formula itself: the slope at ``d2 = 1e4`` against ``d2 = 0``.

        Returns
        -------
        bool
        """
        d2 = torch.tensor([0.0, 1e4], dtype=torch.float64)
        g = self.slope(d2)
        return bool(g[1] < 0.5 * g[0])

    def compiled_profile(self):
        """``(code, dof, inv2s2)`` of the compiled CPU loop evaluating this formula, or None.

        Returns
        -------
        tuple or None
            None: the engine runs its torch code for this kernel.
        """
        return None

    def log_weights(self, Z, Z_cand=None):
        self._validate()
        Z = _check_Z(Z)
        Z_cand = None if Z_cand is None else _check_Z(Z_cand, "Z_cand").to(Z.dtype)
        return self.log_weight(pairwise_sqdist(Z, Z_cand))

    def _pair_log_weights(self, A, B):
        self._validate()
        return self.log_weight(((A - B) ** 2).sum(dim=1))


class Gaussian(DistanceKernel):
    """Gaussian neighbourhoods: p(j|i) ∝ exp(-||x_i - x_j||^2 / (2 sigma_i^2)).

    With ``perplexity`` set (supervisory use), each sigma_i is calibrated by bisection so that
    the row's perplexity equals the target, as in SNE and t-SNE. As a learned kernel it is the
    Gaussian of SNE and, on normalised features, the kernel of InfoNCE.

    Parameters
    ----------
    sigma : float, default=1.0
        Bandwidth. Table 1's SNE q uses ``exp(-||phi_i - phi_j||^2)``, i.e. ``sigma=sqrt(0.5)``.
    perplexity : float, default=None
        Target perplexity for per-point bandwidths (supervisory use only); overrides ``sigma``.
    n_neighbors : int, "auto" or None, default="auto"
        Candidates for the supervisory use: the k nearest neighbours ("auto": 3 x perplexity, or
        90), or all pairs when None (exact, O(n^2) memory).
    include_self : bool, default=False
        Whether j == i is a candidate (True for the k-means row, Theorem 9).

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.kernels import Gaussian
    >>> P = Gaussian(perplexity=2.0).conditional(np.random.RandomState(0).randn(20, 3))
    >>> np.allclose(P.sum(axis=1), 1.0)
    True
    """

    def __init__(self, sigma=1.0, *, perplexity=None, n_neighbors="auto", include_self=False):
        self.sigma = sigma
        self.perplexity = perplexity
        self.n_neighbors = n_neighbors
        self.include_self = include_self

    def _validate(self):
        _check_positive(self.sigma, "sigma")
        _check_positive(self.perplexity, "perplexity", allow_none=True)

    def _scale_free(self):
        return self.perplexity is not None  # each row's width is calibrated to the data

    def log_weight(self, d2):
        return -d2 / (2.0 * self.sigma**2)

    def slope(self, d2):
        return torch.full_like(d2, 1.0 / (2.0 * self.sigma**2))

    def heavy_tailed(self):
        return False

    def compiled_profile(self):
        self._validate()
        return (2, 1.0, 1.0 / (2.0 * self.sigma**2))

    def _conditional_log_weights(self, X, rows, cols, distances, n):
        self._validate()
        if distances is not None and self._search_metric == "euclidean":
            sq = np.asarray(distances, dtype=np.float64).ravel() ** 2
        else:
            Xt = as_tensor(X, dtype=torch.float64)
            sq = np.concatenate(
                [
                    ((Xt[torch.as_tensor(rows[s : s + 500_000])] - Xt[torch.as_tensor(cols[s : s + 500_000])]) ** 2)
                    .sum(dim=1)
                    .numpy()
                    for s in range(0, len(rows), 500_000)
                ]
            )
        if self.perplexity is None:
            return self.log_weight(torch.as_tensor(sq)).numpy()
        m = len(rows) // n
        sq_rows = sq.reshape(n, m)
        if self.perplexity > m:
            raise ValueError(
                f"perplexity={self.perplexity} is larger than the number of candidates ({m}); "
                "lower the perplexity or raise n_neighbors."
            )
        # calibrated in blocks of rows (each row's beta depends on that row alone): the solver's
        # float64 temporaries stay a few blocks' worth instead of several copies of all n x m
        step = max(1, _CALIBRATION_BLOCK // m)
        betas = np.concatenate([perplexity_betas(sq_rows[s : s + step], self.perplexity) for s in range(0, n, step)])
        sq_rows *= -betas[:, None]  # in place: sq is this function's own array
        return sq

    def _self_log_weights(self, X, n):
        return np.zeros(n)

    def rows_from_distances(self, distances):
        """Rows ``p(.|i)`` of new points over given neighbours, from their distances.

        The supervisory rows of points that are not in the training set (``transform``): each
        row is calibrated on its own (per-row perplexity bisection, as :meth:`conditional`
        does for the training rows), so a point's row does not depend on the other new points.

        Parameters
        ----------
        distances : ndarray of shape (n_new, k)
            Euclidean distances from each new point to its k reference neighbours.

        Returns
        -------
        ndarray of shape (n_new, k)
            Rows summing to one.

        Examples
        --------
        >>> import numpy as np
        >>> from skicon.kernels import Gaussian
        >>> rows = Gaussian(perplexity=2.0).rows_from_distances(np.array([[0.5, 1.0, 2.0]]))
        >>> float(np.exp(-(rows * np.log(rows)).sum()).round(6))  # the row's perplexity
        2.0
        """
        self._validate()
        sq = np.asarray(distances, dtype=np.float64) ** 2
        if self.perplexity is None:
            logw = self.log_weight(torch.as_tensor(sq)).numpy()
        else:
            if self.perplexity > sq.shape[1]:
                raise ValueError(
                    f"perplexity={self.perplexity} is larger than the number of neighbours ({sq.shape[1]}); "
                    "lower the perplexity or pass more neighbours."
                )
            logw = -perplexity_betas(sq, self.perplexity)[:, None] * sq
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        return w / w.sum(axis=1, keepdims=True)


class StudentT(DistanceKernel):
    """Student-t neighbourhoods: w_ij = (1 + ||z_i - z_j||^2 / dof)^(-(dof + 1) / 2).

    ``dof=1`` is the Cauchy kernel of t-SNE, ``(1 + d^2)^-1``; large ``dof`` tends to a Gaussian.

    Parameters
    ----------
    dof : float, default=1.0
        Degrees of freedom (any positive real).
    n_neighbors : int, "auto" or None, default="auto"
        Candidates for the supervisory use (see :class:`Gaussian`).
    include_self : bool, default=False
        Whether j == i is a candidate.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import StudentT
    >>> q = StudentT(dof=1.0).prob(torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64))
    >>> q.sum(dim=1)
    tensor([1., 1., 1.], dtype=torch.float64)
    """

    def __init__(self, dof=1.0, *, n_neighbors="auto", include_self=False):
        self.dof = dof
        self.n_neighbors = n_neighbors
        self.include_self = include_self

    def _validate(self):
        _check_positive(self.dof, "dof")

    def log_weight(self, d2):
        return -(self.dof + 1.0) / 2.0 * torch.log1p(d2 / self.dof)

    def weight(self, d2):
        if self.dof == 1.0:
            return 1.0 / (1.0 + d2)
        return torch.pow(1.0 + d2 / self.dof, -(self.dof + 1.0) / 2.0)

    def slope(self, d2):
        return (self.dof + 1.0) / (2.0 * self.dof) / (1.0 + d2 / self.dof)

    def heavy_tailed(self):
        return True

    def compiled_profile(self):
        self._validate()
        return (0, 1.0, 0.0) if self.dof == 1.0 else (1, float(self.dof), 0.0)


class Cosine(_PairwiseKernel):
    """Cosine-similarity kernel with temperature: w_ij = exp(cos(z_i, z_j) / temperature).

    On unit-norm features this equals a Gaussian of width ``sqrt(temperature)`` up to a
    per-row constant, which is why InfoNCE / NT-Xent is a Gaussian row of Table 1.

    Parameters
    ----------
    temperature : float, default=0.5
        Temperature tau.
    n_neighbors : int, "auto" or None, default="auto"
        Candidates for the supervisory use (cosine nearest neighbours).
    include_self : bool, default=False
        Whether j == i is a candidate.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import Cosine
    >>> Cosine(temperature=0.1).log_prob(torch.eye(3)).shape
    torch.Size([3, 3])
    """

    _search_metric = "cosine"

    def __init__(self, temperature=0.5, *, n_neighbors="auto", include_self=False):
        self.temperature = temperature
        self.n_neighbors = n_neighbors
        self.include_self = include_self

    def _validate(self):
        _check_positive(self.temperature, "temperature")

    def _scale_free(self):
        return True  # angles

    def log_weights(self, Z, Z_cand=None):
        _check_positive(self.temperature, "temperature")
        Z = _check_Z(Z)
        Z_cand = None if Z_cand is None else _check_Z(Z_cand, "Z_cand").to(Z.dtype)
        Zn = torch.nn.functional.normalize(Z, dim=1)
        Cn = Zn if Z_cand is None else torch.nn.functional.normalize(Z_cand, dim=1)
        return Zn @ Cn.T / self.temperature

    def _pair_log_weights(self, A, B):
        _check_positive(self.temperature, "temperature")
        return torch.nn.functional.cosine_similarity(A, B, dim=1) / self.temperature


class DotProduct(_PairwiseKernel):
    """Dot-product kernel: w_ij = exp(z_i . z_j / temperature) (unnormalised features).

    Parameters
    ----------
    temperature : float, default=1.0
        Temperature tau.
    n_neighbors : int, "auto" or None, default="auto"
        Candidates for the supervisory use (cosine nearest neighbours).
    include_self : bool, default=False
        Whether j == i is a candidate.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import DotProduct
    >>> DotProduct().log_prob(torch.eye(2), torch.eye(3)[:, :2]).exp().sum(dim=1)
    tensor([1., 1.])
    """

    _search_metric = "cosine"

    def __init__(self, temperature=1.0, *, n_neighbors="auto", include_self=False):
        self.temperature = temperature
        self.n_neighbors = n_neighbors
        self.include_self = include_self

    def _validate(self):
        _check_positive(self.temperature, "temperature")

    def log_weights(self, Z, Z_cand=None):
        _check_positive(self.temperature, "temperature")
        Z = _check_Z(Z)
        Z_cand = None if Z_cand is None else _check_Z(Z_cand, "Z_cand").to(Z.dtype)
        C = Z if Z_cand is None else Z_cand
        return Z @ C.T / self.temperature

    def _pair_log_weights(self, A, B):
        _check_positive(self.temperature, "temperature")
        return (A * B).sum(dim=1) / self.temperature
