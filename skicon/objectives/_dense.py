"""The I-Con loss: the mean over anchors i of KL(p(.|i) || q(.|i)), computed in log space."""

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["icon_loss"]


def _as_torch_like(p, ref):
    """Return ``p`` as a dense or sparse-COO torch tensor on the device and dtype of ``ref``."""
    if sp.issparse(p):
        coo = p.tocoo()
        indices = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.long, device=ref.device)
        values = torch.as_tensor(coo.data, dtype=ref.dtype, device=ref.device)
        return torch.sparse_coo_tensor(indices, values, coo.shape).coalesce()
    if isinstance(p, torch.Tensor):
        if p.is_sparse:
            return p.to(device=ref.device, dtype=ref.dtype).coalesce()
        if p.layout != torch.strided:  # CSR / CSC tensors
            return p.to_sparse_coo().to(device=ref.device, dtype=ref.dtype).coalesce()
        return p.to(device=ref.device, dtype=ref.dtype)
    return torch.as_tensor(np.asarray(p), dtype=ref.dtype, device=ref.device)


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


def icon_loss(p, log_q, *, direction="forward", log_p=None, reduction="mean"):
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
    if torch.isnan(log_q).any():
        raise ValueError("log_q contains NaN; check the representation for NaN or inf values.")

    if direction == "reverse":
        if log_p is None:
            p_t = _as_torch_like(p, log_q)
            if p_t.is_sparse:
                p_t = p_t.to_dense()
            if p_t.shape != log_q.shape:
                raise ValueError(f"p has shape {tuple(p_t.shape)} but log_q has shape {tuple(log_q.shape)}.")
            log_p = torch.log(p_t)
        per_row, has_mass = _reverse(log_p.to(log_q), log_q)
        return _reduce(per_row, has_mass, reduction)

    p_t = _as_torch_like(p, log_q)
    if tuple(p_t.shape) != tuple(log_q.shape):
        raise ValueError(f"p has shape {tuple(p_t.shape)} but log_q has shape {tuple(log_q.shape)}.")
    if p_t.is_sparse:
        per_row, has_mass = _forward_sparse(p_t, log_q)
    else:
        per_row, has_mass = _forward_dense(p_t, log_q)
    return _reduce(per_row, has_mass, reduction)
