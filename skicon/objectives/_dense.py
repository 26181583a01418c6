"""The I-Con loss: the mean over anchors i of KL(p(.|i) || q(.|i)), computed in log space."""

import numpy as np
import scipy.sparse as sp
import torch

from .._utils import as_tensor

__all__ = ["icon_loss"]


def _as_torch_like(p, ref, name="p"):
    """Return ``p`` as a dense or sparse-COO torch tensor on the device and dtype of ``ref``."""
    if p is None:
        raise ValueError(f"{name} is None; pass the supervisory distribution {name} (or log_p for "
                         "direction='reverse').")
    if sp.issparse(p):
        coo = p.tocoo()
        indices = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.long, device=ref.device)
        values = as_tensor(coo.data, dtype=ref.dtype, device=ref.device)  # a COO p's own (maybe read-only) data
        # the invariants checked (O(nnz)): torch warns when the choice is left implicit
        return torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=True).coalesce()
    if isinstance(p, torch.Tensor):
        if p.is_sparse:
            return p.to(device=ref.device, dtype=ref.dtype).coalesce()
        if p.layout != torch.strided:  # CSR / CSC tensors
            return p.to_sparse_coo().to(device=ref.device, dtype=ref.dtype).coalesce()
        return p.to(device=ref.device, dtype=ref.dtype)
    arr = np.asarray(p)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (probabilities), got an array of dtype {arr.dtype}.")
    return as_tensor(arr, dtype=ref.dtype, device=ref.device)


def _tolerance(dtype):
    """Rounding allowed on probabilities of ``dtype`` (sums of many float32 terms drift)."""
    return float(np.sqrt(torch.finfo(dtype).eps))


def _check_p(p_t, name="p"):
    """``p`` finite, non-negative, rows summing to one (or zero: ignored rows), or one joint distribution."""
    p_t = p_t.detach()
    vals = p_t.coalesce().values() if p_t.is_sparse else p_t
    if vals.numel() == 0:
        return
    if torch.isnan(vals).any():
        raise ValueError(f"{name} contains NaN; {name} must be a probability distribution (finite, >= 0).")
    if torch.isinf(vals).any():
        raise ValueError(f"{name} contains infinite values; {name} must be a probability distribution "
                         "(finite, >= 0, rows summing to one).")
    if (vals < 0).any():
        raise ValueError(f"{name} has negative entries (min {float(vals.min()):.3g}); {name} must be a probability "
                         "distribution (entries >= 0, rows summing to one).")
    sums = (torch.sparse.sum(p_t, dim=1).to_dense() if p_t.is_sparse else p_t.sum(dim=1)).double()
    tol = _tolerance(p_t.dtype) * 4
    rows_ok = bool(((sums - 1).abs() <= tol).logical_or(sums.abs() <= tol).all())
    joint_ok = abs(float(sums.sum()) - 1.0) <= tol  # one distribution over all pairs (the joint t-SNE form)
    if not (rows_ok or joint_ok):
        bad = sums[((sums - 1).abs() > tol) & (sums.abs() > tol)]
        raise ValueError(f"The rows of {name} must sum to one (or zero for rows to ignore), or all of {name} to one "
                         f"(a joint distribution); got row sums such as {float(bad[0]):.6g}. Normalise {name}, e.g. "
                         f"{name} / {name}.sum(axis=1, keepdims=True).")


def _check_log(t, name):
    """A floating tensor of log-probabilities: no NaN, nothing above 0 (beyond rounding)."""
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of log-probabilities, got dtype {t.dtype}; "
                        f"convert it, e.g. {name}.double().")
    t = t.detach()
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN; check the representation for NaN or inf values.")
    if t.numel() and float(t.max()) > _tolerance(t.dtype):
        raise ValueError(f"{name} must hold log-probabilities (<= 0), got a maximum of {float(t.max()):.6g}; pass "
                         f"the log of a distribution, e.g. torch.log_softmax(logits, dim=1).")
    if t.ndim == 2 and t.numel() and float(torch.logsumexp(t, dim=1).max()) > _tolerance(t.dtype):
        raise ValueError(f"The rows of exp({name}) sum to more than one (up to "
                         f"{float(torch.logsumexp(t, dim=1).exp().max()):.6g}); {name} must be the log of a "
                         "distribution over each row's candidates, e.g. torch.log_softmax(logits, dim=1).")


def _reduce(per_row, has_mass, reduction):
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    # Rows without any supervisory mass carry no information (e.g. an anchor whose positives are
    # all outside the batch); averaging over them would only dilute the loss.
    n = has_mass.sum()
    return per_row.sum() / n.clamp_min(1)


def _forward_dense(p, log_q):
    mask = p > 0
    safe_p = torch.where(mask, p, torch.ones_like(p))
    safe_log_q = torch.where(mask, log_q, torch.zeros_like(log_q))
    terms = torch.where(mask, p * (torch.log(safe_p) - safe_log_q), torch.zeros_like(p))
    return terms.sum(dim=1), mask.any(dim=1)


def _forward_sparse(p, log_q):
    rows, cols = p.indices()
    vals = p.values()
    keep = vals > 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    terms = vals * (torch.log(vals) - log_q[rows, cols])
    per_row = torch.zeros(p.shape[0], dtype=log_q.dtype, device=log_q.device).index_add(0, rows, terms)
    has_mass = torch.zeros(p.shape[0], dtype=torch.bool, device=log_q.device)
    has_mass[rows] = True
    return per_row, has_mass


def _reverse(log_p, log_q):
    q = torch.exp(log_q)
    mask = q > 0
    safe_log_q = torch.where(mask, log_q, torch.zeros_like(log_q))
    # q > 0 where p == 0 makes KL(q || p) infinite, as it should.
    terms = torch.where(mask, q * (safe_log_q - log_p), torch.zeros_like(q))
    return terms.sum(dim=1), torch.ones(q.shape[0], dtype=torch.bool, device=q.device)


def icon_loss(p, log_q, *, direction="forward", log_p=None, reduction="mean", validate=True):
    """The I-Con loss: mean over anchors of the KL divergence between p(.|i) and q(.|i).

    ``L = 1/n sum_i sum_j p(j|i) [log p(j|i) - log q(j|i)]`` (``direction="forward"``), or
    ``L = 1/n sum_i sum_j q(j|i) [log q(j|i) - log p(j|i)]`` (``direction="reverse"``, used by
    the k-means row, Theorem 9 of the paper).

    Parameters
    ----------
    p : array-like, scipy sparse matrix or torch.Tensor of shape (n_anchors, n_candidates)
        Supervisory conditional distribution, rows summing to one. Only its non-zero entries
        contribute to the forward direction, so a sparse ``p`` is never densified.
    log_q : torch.Tensor of shape (n_anchors, n_candidates)
        Learned conditional distribution as log-probabilities. Non-candidates are ``-inf``.
        Underflowed probabilities are fine: the loss stays finite as long as ``log_q`` is finite
        wherever ``p > 0``.
    direction : {"forward", "reverse"}, default="forward"
        ``"forward"`` is KL(p || q); ``"reverse"`` is KL(q || p) and needs ``p`` dense (or
        ``log_p``).
    log_p : torch.Tensor, default=None
        Log of ``p`` for the reverse direction, if already available (avoids ``log(0)``).
    reduction : {"mean", "sum", "none"}, default="mean"
        ``"mean"`` averages over anchors whose row of ``p`` has mass (forward) or over all
        anchors (reverse); ``"none"`` returns the per-anchor divergences.
    validate : bool, default=True
        Check the inputs: ``p`` finite and non-negative with rows summing to one (or zero, for
        rows the loss ignores; or one joint distribution summing to one overall), ``log_q`` (and
        ``log_p``) floating point, without NaN and ``<= 0``, shapes equal. Internal callers whose
        inputs are valid by construction pass False to skip the passes over the data.

    Returns
    -------
    torch.Tensor
        A scalar (or a vector for ``reduction="none"``), differentiable with respect to ``log_q``.

    Examples
    --------
    >>> import torch
    >>> from skicon import icon_loss
    >>> p = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> log_q = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    >>> float(icon_loss(p, log_q))  # log(2)
    0.693...
    """
    if not isinstance(log_q, torch.Tensor):
        raise TypeError(f"log_q must be a torch.Tensor of log-probabilities, got {type(log_q).__name__}.")
    if log_q.ndim != 2:
        raise ValueError(f"log_q must be 2-dimensional (n_anchors, n_candidates), got shape {tuple(log_q.shape)}.")
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}.")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    if direction == "reverse":
        if log_p is None:
            p_t = _as_torch_like(p, log_q)
            if p_t.is_sparse:
                p_t = p_t.to_dense()
            if p_t.shape != log_q.shape:
                raise ValueError(f"p has shape {tuple(p_t.shape)} but log_q has shape {tuple(log_q.shape)}.")
            if validate:
                _check_log(log_q, "log_q")
                _check_p(p_t)
            log_p = torch.log(p_t)
        elif validate:
            if not isinstance(log_p, torch.Tensor):
                raise TypeError(f"log_p must be a torch.Tensor of log-probabilities, got {type(log_p).__name__}.")
            if tuple(log_p.shape) != tuple(log_q.shape):
                raise ValueError(f"log_p has shape {tuple(log_p.shape)} but log_q has shape {tuple(log_q.shape)}; "
                                 "they must be equal (no broadcasting).")
            _check_log(log_q, "log_q")
            _check_log(log_p, "log_p")
        per_row, has_mass = _reverse(log_p.to(log_q), log_q)
        return _reduce(per_row, has_mass, reduction)

    p_t = _as_torch_like(p, log_q)
    if tuple(p_t.shape) != tuple(log_q.shape):
        raise ValueError(f"p has shape {tuple(p_t.shape)} but log_q has shape {tuple(log_q.shape)}.")
    if validate:
        _check_log(log_q, "log_q")
        _check_p(p_t)
    if p_t.is_sparse:
        per_row, has_mass = _forward_sparse(p_t, log_q)
    else:
        per_row, has_mass = _forward_dense(p_t, log_q)
    return _reduce(per_row, has_mass, reduction)
