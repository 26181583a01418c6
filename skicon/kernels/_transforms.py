"""Transforms on kernels: debiasing, neighbour propagation, symmetrisation, exaggeration.

Each transform wraps a kernel and is itself a kernel, so transforms compose and their
parameters are reachable by ``GridSearchCV`` (``p__alpha``, ``p__kernel__n_neighbors``).
"""

import math
import numbers

import numpy as np
import scipy.sparse as sp
import torch

from ._base import Kernel, drop_diagonal, normalize_rows

__all__ = ["Debiased", "Propagated", "Symmetrized", "Exaggerated", "debias", "debias_coefficients", "log_debias",
           "debiased_plogp"]


# ---------------------------------------------------------------------------------------------
# Debiasing (paper eq. 2), written once: every path (kernel blocks, the t-SNE engine's loss, the
# cluster loss, contrastive batches) calls these three functions.
# ---------------------------------------------------------------------------------------------
def debias(p, alpha, n_candidates):
    """``(1 - alpha) p + alpha / N``: the debiased distribution on a candidate (paper eq. 2).

    Parameters
    ----------
    p : torch.Tensor or ndarray
        Probabilities of candidates (non-candidates must be masked by the caller).
    alpha : float in [0, 1)
        Debiasing weight.
    n_candidates : float, torch.Tensor or ndarray
        N, the number of candidates of the row (broadcast against ``p``).

    Returns
    -------
    Same type as ``p``.

    Examples
    --------
    >>> from skicon.kernels import debias
    >>> float(debias(1.0, 0.2, 4))
    0.85
    """
    scale, offset = debias_coefficients(alpha, n_candidates)
    return scale * p + offset


def debias_coefficients(alpha, n_candidates):
    """``(1 - alpha, alpha / N)``: debiasing as ``scale * p + offset`` (what :func:`debias` applies).

    For fused computations that fold the scale into another factor (e.g. the cluster loss folds
    it into each anchor's normalisation) and add the offset later.

    Parameters
    ----------
    alpha : float in [0, 1)
        Debiasing weight.
    n_candidates : float, torch.Tensor or ndarray
        N, the number of candidates of the row.

    Returns
    -------
    scale, offset
        ``1 - alpha`` and ``alpha / N``.

    Examples
    --------
    >>> from skicon.kernels._transforms import debias_coefficients
    >>> debias_coefficients(0.2, 4)
    (0.8, 0.05)
    """
    return 1.0 - alpha, alpha / n_candidates


def log_debias(log_q, alpha, n_candidates):
    """``log((1 - alpha) q + alpha / N)`` computed from ``log q`` without leaving log space.

    Parameters
    ----------
    log_q : torch.Tensor
        Log-probabilities of candidates.
    alpha : float in [0, 1)
        Debiasing weight.
    n_candidates : float or torch.Tensor
        N per row (broadcast against ``log_q``).

    Returns
    -------
    torch.Tensor
        Log of the debiased probabilities (``log_q`` itself when ``alpha == 0``).

    Examples
    --------
    >>> import math, torch
    >>> from skicon.kernels import log_debias
    >>> round(float(log_debias(torch.tensor(math.log(1.0)), 0.2, 4.0).exp()), 6)
    0.85
    """
    if alpha == 0:
        return log_q
    n_candidates = torch.as_tensor(n_candidates, dtype=log_q.dtype, device=log_q.device)
    return torch.logaddexp(math.log1p(-alpha) + log_q, torch.log(alpha / n_candidates))


def debiased_plogp(values, rows, n_rows, n_candidates, alpha):
    """Per row, ``sum_j p~_ij log p~_ij`` of ``p~ = debias(p, alpha, N)`` for a sparse ``p``.

    The row's ``N`` candidates are its stored entries (``values``) and ``N - nnz_i`` entries of
    zero probability, each of which becomes ``alpha / N``. This is the constant (negative
    entropy) part of ``KL(p~ || q)``; it needs O(nnz), never the dense row.

    Parameters
    ----------
    values : torch.Tensor of shape (nnz,)
        Stored probabilities (all positive).
    rows : torch.Tensor of int64, shape (nnz,)
        Row of each value.
    n_rows : int
        Number of rows.
    n_candidates : float
        N, candidates per row (the same for every row).
    alpha : float in [0, 1)
        Debiasing weight.

    Returns
    -------
    torch.Tensor of shape (n_rows,)
        ``sum_j p~ log p~`` of each row (rows without stored values count only the uniform part).

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import debiased_plogp
    >>> out = debiased_plogp(torch.tensor([1.0]), torch.tensor([0]), 1, 2.0, 0.5)
    >>> bool(torch.isclose(out, torch.tensor(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))[0])
    True
    """
    mixed = debias(values, alpha, n_candidates)
    out = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, mixed * torch.log(mixed))
    if alpha > 0:
        u = alpha / n_candidates
        nnz = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(
            0, rows, torch.ones_like(values))
        out = out + (n_candidates - nnz) * u * math.log(u)
    return out


def _check_kernel(kernel, name="kernel"):
    if not isinstance(kernel, Kernel):
        raise TypeError(f"{name} must be a skicon kernel (e.g. skicon.kernels.Gaussian()), got {kernel!r}.")


class _Wrapper(Kernel):
    """A kernel defined by transforming another one."""

    @property
    def include_self(self):
        _check_kernel(self.kernel)
        return self.kernel.include_self

    def conditional(self, X, **context):
        _check_kernel(self.kernel)
        return self.kernel.conditional(X, **context)

    def finalize_block(self, p_block, self_pairs=None):
        return self.kernel.finalize_block(p_block, self_pairs)

    def log_weights(self, Z, Z_cand=None):
        return self.kernel.log_weights(Z, Z_cand)

    def log_prob(self, Z, Z_cand=None, **kwargs):
        _check_kernel(self.kernel)
        return self.kernel.log_prob(Z, Z_cand, **kwargs)


class Debiased(_Wrapper):
    """Debiasing (paper eq. 2): p~(j|i) = (1 - alpha) p(j|i) + alpha / N.

    N is the number of candidates of row i (the self pair excluded unless the kernel includes
    it), so rows stay normalised and every negative pair gets probability alpha / N. As a
    supervisory kernel the uniform part is added to each dense block (:meth:`finalize_block`;
    :meth:`conditional` returns the sparse part, which keeps memory O(nnz)). As a learned kernel
    it acts in log space: log q~ = log((1 - alpha) q + alpha / N).

    Parameters
    ----------
    kernel : Kernel
        The kernel to debias.
    alpha : float in [0, 1), default=0.2
        Debiasing weight; for cross-entropy it is label smoothing.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import Debiased, Gaussian
    >>> q = Debiased(Gaussian(), alpha=0.5).prob(torch.tensor([[0.0], [10.0], [20.0]], dtype=torch.float64))
    >>> float(q.min(dim=1).values.min()) >= 0.0
    True
    """

    def __init__(self, kernel, alpha=0.2):
        self.kernel = kernel
        self.alpha = alpha

    def _check_alpha(self):
        if not isinstance(self.alpha, numbers.Real) or not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must be a float in [0, 1), got {self.alpha!r}.")

    def finalize_block(self, p_block, self_pairs=None):
        self._check_alpha()
        p_block = self.kernel.finalize_block(p_block, self_pairs)
        if self.alpha == 0:
            return p_block
        candidates = torch.ones_like(p_block, dtype=torch.bool)
        if self_pairs is not None and not self.include_self:
            candidates &= ~self_pairs.to(p_block.device)
        n_cand = candidates.sum(dim=1, keepdim=True).clamp_min(1).to(p_block.dtype)
        uniform = candidates.to(p_block.dtype) / n_cand
        # A row without supervisory mass in this block becomes uniform rather than empty.
        has_mass = p_block.sum(dim=1, keepdim=True) > 0
        mixed = torch.where(candidates, debias(p_block, self.alpha, n_cand), torch.zeros_like(p_block))
        return torch.where(has_mass, mixed, uniform)

    def log_prob(self, Z, Z_cand=None, **kwargs):
        self._check_alpha()
        _check_kernel(self.kernel)
        log_q = self.kernel.log_prob(Z, Z_cand, **kwargs)
        if self.alpha == 0:
            return log_q
        candidates = torch.isfinite(log_q)
        n_cand = candidates.sum(dim=1, keepdim=True).clamp_min(1).to(log_q.dtype)
        return torch.where(candidates, log_debias(log_q, self.alpha, n_cand), log_q)


class Propagated(_Wrapper):
    """Neighbour propagation: P~ ∝ P + P^2 + ... + P^s, walks of length <= s on the graph of p.

    Parameters
    ----------
    kernel : Kernel
        Supervisory kernel whose matrix P is propagated (usually :class:`UniformKNN`).
    walk_length : int, default=2
        Longest walk s. ``walk_length=1`` leaves P unchanged.
    weighting : {"walks", "uniform"}, default="walks"
        ``"walks"`` weights j by the (row-normalised) walk mass; ``"uniform"`` is uniform over
        every j reachable within s steps, P~_U ∝ 1[P + ... + P^s > 0].

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.kernels import Propagated, UniformKNN
    >>> P = Propagated(UniformKNN(n_neighbors=1), walk_length=2).conditional(np.arange(4.0)[:, None])
    >>> np.allclose(P.sum(axis=1), 1)
    True
    """

    def __init__(self, kernel, walk_length=2, *, weighting="walks"):
        self.kernel = kernel
        self.walk_length = walk_length
        self.weighting = weighting

    def conditional(self, X, **context):
        if not isinstance(self.walk_length, numbers.Integral) or self.walk_length < 1:
            raise ValueError(f"walk_length must be an integer >= 1, got {self.walk_length!r}.")
        if self.weighting not in ("walks", "uniform"):
            raise ValueError(f"weighting must be 'walks' or 'uniform', got {self.weighting!r}.")
        P = sp.csr_matrix(super().conditional(X, **context))
        total = P.copy()
        power = P
        for _ in range(self.walk_length - 1):
            power = power @ P
            total = total + power
        del power, P  # the last power is as large as the total: not held while the diagonal goes
        if not self.include_self:
            total = drop_diagonal(total)  # walks that return to i are not neighbours of i
        total = sp.csr_matrix(total)
        total.eliminate_zeros()
        if self.weighting == "uniform":
            total.data[:] = 1.0
        return normalize_rows(total)


class Symmetrized(_Wrapper):
    """Symmetrisation of a supervisory kernel.

    ``mode="conditional"``: P~ = rownorm((P + P^T) / 2). ``mode="joint"``: the joint
    distribution of t-SNE, P~ = (P + P^T) / (2 n), whose entries sum to one over all pairs
    (not row-normalised).

    Parameters
    ----------
    kernel : Kernel
        Kernel to symmetrise.
    mode : {"conditional", "joint"}, default="conditional"
        Output form.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.kernels import Symmetrized, UniformKNN
    >>> P = Symmetrized(UniformKNN(n_neighbors=1), mode="joint").conditional(np.arange(3.0)[:, None])
    >>> round(float(P.sum()), 6), bool(abs(P - P.T).max() == 0)
    (1.0, True)
    """

    def __init__(self, kernel, mode="conditional"):
        self.kernel = kernel
        self.mode = mode

    def conditional(self, X, **context):
        if self.mode not in ("conditional", "joint"):
            raise ValueError(f"mode must be 'conditional' or 'joint', got {self.mode!r}.")
        P = sp.csr_matrix(super().conditional(X, **context))
        S = (P + P.T).tocsr()
        if self.mode == "joint":
            return S / (2.0 * P.shape[0])
        return normalize_rows(S / 2.0)


class Exaggerated(_Wrapper):
    """Exaggeration: multiplies the supervisory distribution by ``factor`` (t-SNE early phase).

    The result is not normalised; it is an optimisation device that strengthens attraction.

    Parameters
    ----------
    kernel : Kernel
        Supervisory kernel.
    factor : float, default=12.0
        Exaggeration factor.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.kernels import Exaggerated, UniformKNN
    >>> float(Exaggerated(UniformKNN(n_neighbors=1), 4.0).conditional(np.arange(3.0)[:, None]).sum())
    12.0
    """

    def __init__(self, kernel, factor=12.0):
        self.kernel = kernel
        self.factor = factor

    def conditional(self, X, **context):
        if not isinstance(self.factor, numbers.Real) or self.factor <= 0:
            raise ValueError(f"factor must be a positive number, got {self.factor!r}.")
        return super().conditional(X, **context) * float(self.factor)

    def finalize_block(self, p_block, self_pairs=None):
        return super().finalize_block(p_block, self_pairs) * float(self.factor)
