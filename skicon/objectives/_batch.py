"""Per-batch objectives of the contrastive and classification rows.

A contrastive batch holds ``M`` points (anchors, their augmented copies or partners, or the
points of several views). Its supervisory block ``p`` is uniform over each anchor's positives
(:func:`positive_pairs_block`), optionally debiased (:func:`debias_block`, paper eq. 2) or cut
down to one positive and one negative (:func:`triplet_block`, Theorem 5); the loss is the I-Con
loss of the block (:func:`contrastive_loss`). Cross-entropy's block is the label indicator over
the classes (:func:`cross_entropy_block`). These are pure functions of tensors;
:class:`PositiveBatches` turns a batch of anchor indices into the batch's points and blocks, and
:class:`Scaled` is the learned inverse temperature of CLIP on any learned kernel.
"""

import math

import numpy as np
import torch

from ..kernels import Debiased, Kernel
from ..kernels._transforms import debias
from ._dense import icon_loss

__all__ = [
    "positive_pairs_block", "debias_block", "triplet_block", "contrastive_loss", "cross_entropy_block",
    "PositiveBatches", "Scaled", "with_scale",
]


def positive_pairs_block(ids, *, view_ids=None, cross_view=False, same_sample=None, dtype=torch.float64):
    """Batch supervisory distribution p(j|i) uniform over the anchor's positives.

    Point ``j`` is a positive of anchor ``i`` when ``ids[j] == ids[i]`` and ``j != i``
    (InfoNCE, Theorem 4; SupCon, Corollary 2 when ``ids`` are labels). With ``cross_view``
    only points of another view are candidates at all (CMC / CLIP, Theorem 6).

    Parameters
    ----------
    ids : torch.Tensor of shape (M,)
        Positive-pair ids of the batch points (sample index, label or group).
    view_ids : torch.Tensor of shape (M,), default=None
        View (modality) of each point; needed when ``cross_view`` is True.
    cross_view : bool, default=False
        Restrict candidates to points of another view.
    same_sample : torch.Tensor of bool of shape (M, M), default=None
        Pairs that are copies of the same data point without augmentation; they are neither
        positives nor negatives (a copy is not evidence of anything).
    dtype : torch.dtype, default=torch.float64
        Dtype of ``p``.

    Returns
    -------
    p : torch.Tensor of shape (M, M)
        Row-stochastic over each anchor's positives; rows without a positive are zero.
    non_candidates : torch.Tensor of bool of shape (M, M)
        Pairs excluded from the candidate set of ``q`` (the self pair and, with
        ``cross_view``, same-view pairs).

    Examples
    --------
    >>> import torch
    >>> p, nc = positive_pairs_block(torch.tensor([0, 1, 0, 1]))
    >>> p[0].tolist(), nc[0].tolist()
    ([0.0, 0.0, 1.0, 0.0], [True, False, False, False])
    """
    m = ids.shape[0]
    non_candidates = torch.eye(m, dtype=torch.bool, device=ids.device)
    if cross_view:
        if view_ids is None:
            raise ValueError("cross_view=True needs view_ids.")
        non_candidates = non_candidates | (view_ids[:, None] == view_ids[None, :])
    if same_sample is not None:
        non_candidates = non_candidates | same_sample
    same = (ids[:, None] == ids[None, :]) & ~non_candidates
    counts = same.sum(dim=1, keepdim=True).clamp_min(1).to(dtype)
    p = same.to(dtype) / counts
    return p, non_candidates


def debias_block(p, non_candidates, alpha):
    """Debiased supervisory block (paper eq. 2): (1 - alpha) p(j|i) + alpha / N_i.

    ``N_i`` is the number of candidates of anchor ``i`` (the formula is
    :func:`skicon.kernels.debias`). Rows without any positive stay zero so that the loss
    ignores them, as it does without debiasing.

    Parameters
    ----------
    p : torch.Tensor of shape (B, M)
        Row-stochastic supervisory block.
    non_candidates : torch.Tensor of bool of shape (B, M)
        Pairs that are not candidates.
    alpha : float in [0, 1)
        Debiasing weight.

    Returns
    -------
    torch.Tensor of shape (B, M)

    Examples
    --------
    >>> import torch
    >>> p, nc = positive_pairs_block(torch.tensor([0, 0, 1]))
    >>> debias_block(p, nc, 0.5)[0].tolist()
    [0.0, 0.75, 0.25]
    """
    if alpha == 0:
        return p
    candidates = ~non_candidates
    n_cand = candidates.sum(dim=1, keepdim=True).clamp_min(1).to(p.dtype)
    mixed = torch.where(candidates, debias(p, alpha, n_cand), torch.zeros_like(p))
    has_mass = p.sum(dim=1, keepdim=True) > 0
    return torch.where(has_mass, mixed, torch.zeros_like(mixed))


def triplet_block(p, non_candidates, generator):
    """Keep one positive and one negative candidate per anchor (Theorem 5).

    The positive is drawn from ``p(.|i)``, the negative uniformly among the candidates with
    ``p = 0``. Anchors lacking either get an empty row.

    Parameters
    ----------
    p : torch.Tensor of shape (M, M)
        Supervisory block.
    non_candidates : torch.Tensor of bool of shape (M, M)
        Pairs that are not candidates.
    generator : torch.Generator
        Source of the draws (on the CPU).

    Returns
    -------
    p_triplet : torch.Tensor of shape (M, M)
        One-hot rows on the drawn positive.
    non_candidates : torch.Tensor of bool of shape (M, M)
        Everything except the drawn positive and negative.

    Examples
    --------
    >>> import torch
    >>> p, nc = positive_pairs_block(torch.tensor([0, 0, 1, 1]))
    >>> p_t, nc_t = triplet_block(p, nc, torch.Generator().manual_seed(0))
    >>> (~nc_t).sum(dim=1).tolist(), p_t.sum(dim=1).tolist()
    ([2, 2, 2, 2], [1.0, 1.0, 1.0, 1.0])
    """
    m = p.shape[0]
    device = p.device
    negatives = ((p == 0) & ~non_candidates).to(torch.float64)
    has_pos = p.sum(dim=1) > 0
    has_neg = negatives.sum(dim=1) > 0
    valid = has_pos & has_neg
    rows = torch.arange(m, device=device)
    pos_w = torch.where(has_pos[:, None], p, torch.ones_like(p)).cpu()
    neg_w = torch.where(has_neg[:, None], negatives, torch.ones_like(negatives)).cpu()
    pos = torch.multinomial(pos_w, 1, generator=generator).squeeze(1).to(device)
    neg = torch.multinomial(neg_w, 1, generator=generator).squeeze(1).to(device)
    keep = torch.zeros(m, m, dtype=torch.bool, device=device)
    keep[rows, pos] = True
    keep[rows, neg] = True
    p_trip = torch.zeros_like(p)
    p_trip[rows, pos] = 1.0
    p_trip = p_trip * valid[:, None]
    return p_trip, ~keep


def contrastive_loss(Z, p, non_candidates, q, *, alpha=0.0, log_scale=None, reduction="mean"):
    """The I-Con loss of a batch: mean over anchors of KL(p~(.|i) || q(.|i)).

    Parameters
    ----------
    Z : torch.Tensor of shape (M, d)
        Representations of the batch points.
    p : torch.Tensor of shape (M, M)
        Supervisory block (rows without positives are ignored).
    non_candidates : torch.Tensor of bool of shape (M, M)
        Pairs excluded from ``q``'s candidates.
    q : Kernel
        Learned kernel (Cosine, Gaussian, StudentT, ...; possibly :class:`Debiased`).
    alpha : float, default=0.0
        Debiasing of ``p`` (eq. 2, :func:`debias_block`).
    log_scale : torch.Tensor, float or None, default=None
        Learned log inverse temperature multiplying ``q``'s log-affinities.
    reduction : {"mean", "sum", "none"}, default="mean"
        As in :func:`skicon.icon_loss` (``"none"``: one divergence per point).

    Returns
    -------
    torch.Tensor
        Scalar loss (per-point divergences for ``reduction="none"``).

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import Cosine
    >>> p, nc = positive_pairs_block(torch.tensor([0, 1, 0, 1]))
    >>> Z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(float(contrastive_loss(Z, p, nc, Cosine(temperature=1.0))), 4)
    0.5514
    """
    q_eff = q if log_scale is None else with_scale(q, log_scale)
    log_q = q_eff.log_prob(Z, exclude=non_candidates)
    p = p.to(Z.dtype)
    if alpha == 0:
        # Positives are a small part of the block: hand the loss only those (sparse path).
        idx = p.nonzero().T
        p = torch.sparse_coo_tensor(
            idx, p[idx[0], idx[1]], p.shape, is_coalesced=True, check_invariants=False
        )
        return icon_loss(p, log_q, reduction=reduction, validate=False)
    return icon_loss(debias_block(p, non_candidates, alpha), log_q, reduction=reduction, validate=False)


def cross_entropy_block(codes, n_classes, alpha=0.0, dtype=torch.float32, device="cpu"):
    """Supervisory p(c|i): the indicator of the label, debiased (= label smoothing).

    Parameters
    ----------
    codes : torch.Tensor of shape (B,)
        Integer class codes.
    n_classes : int
        Number of classes (the candidates).
    alpha : float, default=0.0
        Debiasing weight; p~ = (1 - alpha) 1[c = y_i] + alpha / n_classes
        (:func:`skicon.kernels.debias`).
    dtype : torch.dtype, default=torch.float32
        Output dtype.
    device : str or torch.device, default="cpu"
        Output device.

    Returns
    -------
    torch.Tensor of shape (B, n_classes)

    Examples
    --------
    >>> import torch
    >>> cross_entropy_block(torch.tensor([1]), 2, alpha=0.5).tolist()
    [[0.25, 0.75]]
    """
    p = torch.nn.functional.one_hot(codes.long(), n_classes).to(dtype=dtype, device=device)
    if alpha == 0:
        return p
    return debias(p, alpha, torch.full((p.shape[0], 1), n_classes, dtype=dtype, device=p.device))


class Scaled(Kernel):
    """A learned kernel whose log-affinities are multiplied by ``exp(log_scale)``.

    The learned inverse temperature of CLIP: ``log_scale`` is clamped to
    ``[-log 100, log 100]`` so that a runaway temperature cannot overflow.

    Parameters
    ----------
    kernel : Kernel
        The learned kernel.
    log_scale : torch.Tensor or float
        Log of the factor.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import Cosine
    >>> Z = torch.eye(2)
    >>> bool(torch.allclose(Scaled(Cosine(1.0), 0.0).log_weights(Z), Cosine(1.0).log_weights(Z)))
    True
    """

    def __init__(self, kernel=None, log_scale=0.0):
        self.kernel = kernel
        self.log_scale = log_scale

    @property
    def include_self(self):
        return self.kernel.include_self

    def log_weights(self, Z, Z_cand=None):
        log_scale = torch.as_tensor(self.log_scale, dtype=Z.dtype, device=Z.device)
        factor = torch.exp(log_scale.clamp(-math.log(100.0), math.log(100.0)))
        return self.kernel.log_weights(Z, Z_cand) * factor


def with_scale(q, log_scale):
    """``q`` with its log-affinities scaled by ``exp(log_scale)`` (inside any debiasing).

    Parameters
    ----------
    q : Kernel
        Learned kernel, possibly :class:`~skicon.kernels.Debiased`.
    log_scale : torch.Tensor or float
        Log of the factor.

    Returns
    -------
    Kernel

    Examples
    --------
    >>> from skicon.kernels import Cosine, Debiased
    >>> type(with_scale(Debiased(Cosine(), alpha=0.1), 0.0).kernel).__name__
    'Scaled'
    """
    if isinstance(q, Debiased):
        return Debiased(Scaled(q.kernel, log_scale), alpha=q.alpha)
    return Scaled(q, log_scale)


class PositiveBatches:
    """The points of contrastive batches: anchor indices -> (Z, p block, non-candidates).

    A batch of ``b`` anchors becomes ``M`` points: the anchors themselves when positives are
    known ids (labels, groups; ``M = b``), every view of each anchor (CMC / CLIP;
    ``M = b * n_views``), or each anchor and a partner (``M = 2b``): two augmented copies
    (SimCLR) or a drawn neighbour (then identical copies of one sample are no candidates).

    Parameters
    ----------
    data : list of torch.Tensor
        One ``(n, d_v)`` tensor per view (one for ordinary data).
    ids : torch.Tensor of shape (n,) or None
        Positive-pair ids of the samples (labels or groups); None when positives are views,
        augmentations or partners.
    partners : object or None
        Sampler with ``sample(rows) -> ndarray`` of one partner per anchor (-1: none), e.g.
        :class:`skicon._training.RowSampler`.
    augment : callable or None
        ``augment(X_batch, generator) -> X_batch``; two augmented copies of each anchor.
    cross_view : bool
        Only points of the other copy / view are candidates (CMC / CLIP).
    generator : torch.Generator
        Source of the augmentations and of the group batches.
    batch_size : int
        Anchors per batch.
    group_batches : bool
        :meth:`sample_groups` draws batches made of whole groups of ``ids``.
    device : torch.device, default="cpu"
        Device of the points.

    Examples
    --------
    >>> import torch
    >>> batches = PositiveBatches([torch.eye(4)], torch.tensor([0, 0, 1, 1]), None, None, False,
    ...                           torch.Generator(), 4, False)
    >>> Z, p, nc = batches.points(lambda X, view: X, torch.arange(4))
    >>> p[0].tolist()
    [0.0, 1.0, 0.0, 0.0]
    """

    def __init__(self, data, ids, partners, augment, cross_view, generator, batch_size, group_batches,
                 device="cpu"):
        self.data, self.ids, self.partners, self.augment = data, ids, partners, augment
        self.cross_view, self.generator, self.batch_size = cross_view, generator, batch_size
        self.group_batches, self.device = group_batches, device
        self._group_order = None

    def evaluation_order(self):
        """Anchors in index order (group-sorted with group batches), to cut into blocks.

        Returns
        -------
        ndarray of int
        """
        n = self.data[0].shape[0]
        return np.argsort(self.ids.numpy(), kind="stable") if self.group_batches else np.arange(n)

    def sample_groups(self):
        """Next batch made of whole groups, so that every positive pair can meet in a batch.

        Returns
        -------
        torch.Tensor of int64
        """
        ids = self.ids.numpy()
        n = len(ids)
        if self._group_order is None or self._cursor >= len(self._group_order):
            perm = torch.randperm(n, generator=self.generator).numpy()
            # Stable sort of a random permutation by a random group order: groups contiguous.
            group_rank = torch.randperm(int(ids.max()) + 1, generator=self.generator).numpy()
            self._group_order = perm[np.argsort(group_rank[ids[perm]], kind="stable")]
            self._cursor = 0
        batch = self._group_order[self._cursor : self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return torch.as_tensor(batch)

    def points(self, module, batch):
        """Representations ``Z`` of the batch points, their ``p`` block and non-candidates.

        Parameters
        ----------
        module : callable
            ``module(X, view) -> Z``.
        batch : array-like of int
            Anchor indices.

        Returns
        -------
        Z : torch.Tensor of shape (M, d)
        p : torch.Tensor of shape (M, M)
        non_candidates : torch.Tensor of bool of shape (M, M)
        """
        batch = torch.as_tensor(batch).cpu()
        if len(self.data) > 1:
            return self._views(module, batch)
        if self.partners is None and self.augment is None:
            Z = module(self._x(0, batch), 0)
            p, non_cand = positive_pairs_block(self.ids[batch].to(self.device), dtype=Z.dtype)
            return Z, p, non_cand
        return self._pairs(module, batch)

    def _x(self, view, idx):
        return self.data[view][idx].to(self.device)

    def _views(self, module, batch):
        Z = torch.cat([module(self._x(v, batch), v) for v in range(len(self.data))])
        b = len(batch)
        ids = torch.arange(b, device=self.device).repeat(len(self.data))
        view_ids = torch.arange(len(self.data), device=self.device).repeat_interleave(b)
        p, non_cand = positive_pairs_block(ids, view_ids=view_ids, cross_view=True, dtype=Z.dtype)
        return Z, p, non_cand

    def _pairs(self, module, batch):
        b = len(batch)
        if self.partners is not None:
            drawn = self.partners.sample(batch.numpy())
            # An anchor without neighbour is paired with itself: a copy, then ignored (same_sample).
            idx = torch.cat([batch, torch.as_tensor(np.where(drawn < 0, batch.numpy(), drawn))])
            ids = torch.arange(b).repeat(2)
        else:
            idx = torch.cat([batch, batch])
            ids = self.ids[batch].repeat(2) if self.ids is not None else torch.arange(b).repeat(2)
        X = self._x(0, idx)
        same_sample = None
        if self.augment is not None:
            X = torch.cat([self.augment(X[:b], self.generator), self.augment(X[b:], self.generator)])
        else:
            # Un-augmented copies of one sample are identical points, not a pair or a negative.
            idx_d = idx.to(self.device)
            same_sample = idx_d[:, None] == idx_d[None, :]
        Z = module(X, 0)
        view_ids = torch.arange(2, device=self.device).repeat_interleave(b)
        p, non_cand = positive_pairs_block(ids.to(self.device), view_ids=view_ids, cross_view=self.cross_view,
                                           same_sample=same_sample, dtype=Z.dtype)
        return Z, p, non_cand
