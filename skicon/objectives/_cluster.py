"""Objectives of the clustering rows: the cluster kernel against a neighbourhood, both directions.

* :func:`cluster_kernel_loss`: forward KL of the (debiased) cluster kernel against a sparse
  block of positives (the "mi" and "infonce_clustering" rows), with an unbiased sampled estimate
  of the uniform part of a debiased p.
* :func:`sampled_row_loss`: the forward loss over whole rows of p for a sample of anchors, with
  the cluster masses of all samples (how ICONClustering compares its restarts).
* :func:`reverse_cluster_loss`: reverse KL of the (degree-weighted) cluster kernel, self
  included, against a dense block of log p (the "ncut", "kmeans" and "spectral" rows).
* :func:`exp_graph_log_p`: the "ncut" row's p(j|i) ∝ exp(A_ij / d_j) on a block of the graph.
* :func:`probabilistic_kmeans_loss`: the sigma -> 0 limit of the "kmeans" row (Theorem 9).
* :func:`temi_loss`: TEMI's beta-weighted pointwise mutual information of a student and a
  teacher head over sparse positives (the "mi" row's reference method, Theorem 10).

Pure functions of tensors; every debiasing goes through :mod:`skicon.kernels._transforms`.
"""

import torch

from ..kernels._transforms import debias, debias_coefficients, debiased_plogp

__all__ = ["cluster_kernel_loss", "sampled_row_loss", "reverse_cluster_loss", "exp_graph_log_p",
           "probabilistic_kmeans_loss", "temi_loss"]


def _softmax_last(z):
    """Softmax over the last (small) axis; faster on CPU than ``torch.softmax`` for C ~ 10."""
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values.detach())
    return e / e.sum(dim=-1, keepdim=True)


def _candidate_weights(phi, cand_logits, degrees):
    """``w_jc = psi_jc d_j / sum_k psi_kc d_k``: the candidate side of the cluster kernel."""
    psi = phi if cand_logits is None else _softmax_last(cand_logits)
    if degrees is not None:
        psi = psi * degrees.to(psi)[None, :, None]
    return psi / psi.sum(dim=1, keepdim=True).clamp_min(torch.finfo(phi.dtype).tiny)


class _UniformLogSum(torch.autograd.Function):
    """``sum_j log(phi_s @ w_u^T + offset)`` over the candidate columns j, self pairs left out.

    The uniform part of :func:`cluster_kernel_loss` (``offset > 0``: a debiased q), the one
    (R, m, n_u) block of a training step. The same float operations as autograd on
    ``log(bmm + offset).sum - self terms`` (forward and gradient alike), but the backward
    makes one pass over the block (``grad / q``, self pairs zeroed) before its two products
    instead of autograd's expand, scatter, add and divide (loss and gradient bit-identical to
    autograd's; forward + backward of the loss 3.06 -> 2.67 ms with 8 heads on one thread, no
    change with 2-4 heads, where the fixed cost of the small ops dominates).
    """

    @staticmethod
    def forward(ctx, phi_s, w_u, cols_u, offset):
        q = torch.bmm(phi_s, w_u.transpose(1, 2)).add_(offset)
        log_q = torch.log(q)
        j = torch.arange(cols_u.shape[0], device=q.device)
        ctx.save_for_backward(phi_s, w_u, q, cols_u, j)
        return log_q.sum(dim=2).index_add(1, cols_u, -log_q[:, cols_u, j])

    @staticmethod
    def backward(ctx, grad):
        phi_s, w_u, q, cols_u, j = ctx.saved_tensors
        g = grad[:, :, None] / q
        g[:, cols_u, j] = 0.0
        grad_phi = torch.bmm(g, w_u) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(phi_s.transpose(1, 2), g).transpose(1, 2) if ctx.needs_input_grad[1] else None
        return grad_phi, grad_w, None, None


def cluster_kernel_loss(logits, rows, cols, vals, *, alpha=0.0, alpha_q=0.0, cand_logits=None,
                        negatives=None, degrees=None, include_self=False):
    """Forward I-Con loss of the (debiased) cluster kernel against a sparse supervisory block.

    For each of ``R`` independent heads, with ``phi = softmax(logits)`` over clusters and the
    candidate-side assignments ``psi = softmax(cand_logits)`` (an EMA teacher, or ``phi``),

    * ``q(j|i) = sum_c phi_ic w_jc``, ``w_jc = psi_jc d_j / sum_k psi_kc d_k`` (``d = 1`` unless
      ``degrees`` is given): :class:`~skicon.kernels.ClusterKernel`. Without ``include_self``
      the self pair is excluded and q renormalised, ``q(j|i) / (1 - q(i|i))`` over ``j != i``;
    * ``q~ = debias(q, alpha_q, N_q)`` and ``p~ = debias(p, alpha, m - 1)``
      (:class:`~skicon.kernels.Debiased` on both sides, m the batch size, ``N_q = m - 1``, or
      ``m`` when q includes the self pair; p never has a self pair);
    * the loss is ``1/m' sum_i KL(p~(.|i) || q~(.|i))`` over the m' anchors with positives.

    The uniform part of ``p~`` touches every pair; with ``negatives`` it is estimated without
    bias from a random subset of candidate columns (O(m |negatives|) instead of O(m^2)).

    Parameters
    ----------
    logits : torch.Tensor of shape (R, m, n_clusters)
        Assignment logits of the batch for R heads.
    rows, cols : torch.Tensor of int64, shape (nnz,)
        Positive pairs (anchor row, candidate column) of the sparse block of p, no self pair.
    vals : torch.Tensor of shape (nnz,)
        Their probabilities; each anchor row sums to one.
    alpha : float, default=0.0
        Debiasing of p.
    alpha_q : float, default=0.0
        Debiasing of q.
    cand_logits : torch.Tensor of shape (R, m, n_clusters), default=None
        Candidate-side logits (EMA teacher); ``logits`` when None.
    negatives : torch.Tensor of int64, default=None
        Candidate columns that estimate the uniform part; all columns when None (exact).
    degrees : torch.Tensor of shape (m,), default=None
        Candidate degrees for the degree-weighted (normalized-cuts) kernel.
    include_self : bool, default=False
        Whether the self pair is a candidate of q (``ClusterKernel(include_self=True)``).

    Returns
    -------
    torch.Tensor of shape (R,)
        The loss of each head (exactly the I-Con KL when ``negatives`` is None).

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[[5.0, -5.0], [5.0, -5.0], [-5.0, 5.0], [-5.0, 5.0]]])
    >>> rows, cols = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 3, 2])
    >>> float(cluster_kernel_loss(logits, rows, cols, torch.ones(4))) < 1e-3
    True
    """
    R, m, _ = logits.shape
    phi = _softmax_last(logits)
    w = _candidate_weights(phi, cand_logits, degrees)
    tiny = torch.finfo(phi.dtype).tiny
    n_q = m if include_self else m - 1
    # q~ = scale q + offset (debiasing, eq. 2), the scale folded into each anchor's factor (with
    # the renormalisation over j != i when the self pair is excluded): one pass less over the
    # pair tensors, which this loss touches every step.
    scale, offset = debias_coefficients(alpha_q, n_q)
    if include_self:
        phi_s = phi * scale
    else:
        q_self = (phi * w).sum(dim=2)
        inv_norm = scale / (1.0 - q_self).clamp_min(torch.finfo(phi.dtype).eps)
        phi_s = phi * inv_norm[:, :, None]

    def log_q_tilde(scaled_q):
        # log(scale q + offset); q clamped at tiny only when alpha_q = 0, so that it stays finite.
        return torch.log(scaled_q + offset) if offset > 0 else torch.log(scaled_q.clamp_min(tiny))

    q_pos = (phi_s[:, rows] * w[:, cols]).sum(dim=2)
    pos_terms = vals.to(phi)[None, :] * log_q_tilde(q_pos)
    cross_pos = torch.zeros(R, m, dtype=phi.dtype, device=phi.device).index_add(1, rows, pos_terms)
    scale_p, _ = debias_coefficients(alpha, m - 1)  # p~ = scale_p p + alpha / (m - 1) off the diagonal
    loss = -scale_p * cross_pos

    plogp = debiased_plogp(vals.to(phi), rows, m, m - 1, alpha)
    if alpha > 0:
        cols_u = torch.arange(m, device=phi.device) if negatives is None else negatives
        n_u = cols_u.shape[0]
        # Mean over the candidate columns other than the anchor itself: the full row sum minus
        # the self pairs (anchor cols_u[j] in column j), which are few.
        if offset > 0:
            sum_u = _UniformLogSum.apply(phi_s, w[:, cols_u], cols_u, offset)
        else:
            log_q_u = log_q_tilde(torch.bmm(phi_s, w[:, cols_u].transpose(1, 2)))
            j = torch.arange(n_u, device=phi.device)
            sum_u = log_q_u.sum(dim=2).index_add(1, cols_u, -log_q_u[:, cols_u, j])
        n_valid = torch.full((m,), float(n_u), dtype=phi.dtype, device=phi.device).index_add(
            0, cols_u, -torch.ones(n_u, dtype=phi.dtype, device=phi.device))
        loss = loss - alpha * sum_u / n_valid.clamp_min(1.0)
    has_mass = torch.zeros(m, dtype=torch.bool, device=phi.device)
    has_mass[rows] = True
    per_row = (loss + plogp[None, :]) * has_mass[None, :]
    return per_row.sum(dim=1) / has_mass.sum().clamp_min(1)


class _PairPattern:
    """Sparse (row, col) pairs, sorted by row, whose dot products ``a_row . b_col`` are wanted.

    Torch's sampled dense-dense product on a CSR pattern: 9.5 ms against 85 ms for gathering
    both sides (600,000 pairs, 14 clusters, float64), and exact.
    """

    def __init__(self, rows, cols, n_rows, n_cols):
        crow = torch.zeros(n_rows + 1, dtype=torch.int64)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), dim=0)
        self.crow, self.cols, self.shape = crow, cols.to(torch.int64), (n_rows, n_cols)

    def dots(self, A, B):
        """``(A[rows] * B[cols]).sum(1)`` in the pattern's order."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            S = torch.sparse_csr_tensor(self.crow, self.cols, torch.zeros(len(self.cols), dtype=A.dtype),
                                        size=self.shape, check_invariants=False)
            return torch.sparse.sampled_addmm(S, A, B.T.contiguous(), beta=0.0).values()


def sampled_row_loss(logits, anchors, rows, cols, vals, candidates, *, n_samples, alpha=0.0, alpha_q=0.0,
                     degrees=None, include_self=False):
    """Forward I-Con loss of the debiased cluster kernel over whole rows of p, on a sample.

    The population version of :func:`cluster_kernel_loss` (self pair excluded): for anchors i
    with their whole sparse rows p(.|i), and ``phi = softmax(logits)`` of every node involved,

    * the cluster masses ``M_c = sum_k phi_kc d_k`` over all ``n`` samples, estimated as
      ``n / |U| sum_{k in U} phi_kc d_k`` on the candidate sample U;
    * ``q(j|i) = sum_c phi_ic phi_jc d_j / M_c``, renormalised over ``j != i`` (divided by
      ``1 - q(i|i)``) unless ``include_self``;
    * ``q~ = debias(q, alpha_q, N_q)`` (``N_q = n - 1``, or ``n`` with the self pair) and
      ``p~ = debias(p, alpha, n - 1)``;
    * ``KL(p~(.|i) || q~(.|i))``, the uniform part of ``p~`` averaged over the candidates
      other than i, the mean over anchors.

    Each anchor sees every positive of its row, not one sampled per step, and q is normalised
    by the masses of all samples, not of one batch: a low-variance figure to rank heads by.
    Debiasing over ``n - 1`` candidates instead of a batch's ``m - 1`` keeps the ratio of the
    two parts of q~, so the loss differs from the batch loss's expectation by about
    ``log(n / m)`` (and by the batch's noise). Float64, one head at a time (memory
    O(nnz + |anchors| |U|)).

    Parameters
    ----------
    logits : torch.Tensor of shape (R, n_nodes, n_clusters)
        Logits of the nodes: the anchors, their positives and the candidates.
    anchors : torch.Tensor of int64, shape (a,)
        Node of each anchor.
    rows : torch.Tensor of int64, shape (nnz,)
        Anchor (0 .. a - 1) of each entry of p.
    cols : torch.Tensor of int64, shape (nnz,)
        Node of each entry's candidate (never the anchor itself).
    vals : torch.Tensor of shape (nnz,)
        p(j|i); each anchor's entries sum to one.
    candidates : torch.Tensor of int64, shape (u,)
        Nodes of the candidate sample U, drawn uniformly from all samples.
    n_samples : int
        n, the number of samples the rows and masses are over.
    alpha, alpha_q : float, default=0.0
        Debiasing of p and of q.
    degrees : torch.Tensor of shape (n_nodes,), default=None
        Candidate degrees of a degree-weighted kernel.
    include_self : bool, default=False
        Whether the self pair is a candidate of q (``ClusterKernel(include_self=True)``).

    Returns
    -------
    torch.Tensor of shape (R,)
        Each head's mean KL over the anchors.

    Examples
    --------
    >>> import torch
    >>> logits = 9.0 * torch.tensor([[[1.0, 0], [1, 0], [0, 1], [0, 1]]])
    >>> rows, cols = torch.tensor([0, 1]), torch.tensor([1, 0])
    >>> loss = sampled_row_loss(logits, torch.tensor([0, 1]), rows, cols, torch.ones(2),
    ...                         torch.arange(4), n_samples=4)
    >>> float(loss[0]) < 1e-3
    True
    """
    R, n_nodes, _ = logits.shape
    a, u, n = len(anchors), len(candidates), float(n_samples)
    if len(rows) > 1 and bool((rows[1:] < rows[:-1]).any()):  # the pattern wants rows in order
        order = torch.argsort(rows, stable=True)
        rows, cols, vals = rows[order], cols[order], vals[order]
    pattern = _PairPattern(rows, cols, a, n_nodes)
    vals = vals.double()
    scale, offset = debias_coefficients(alpha_q, n if include_self else n - 1)
    scale_p, _ = debias_coefficients(alpha, n - 1)
    plogp = debiased_plogp(vals, rows, a, n - 1, alpha)
    self_rows, self_cols = torch.nonzero(anchors[:, None] == candidates[None, :], as_tuple=True)
    n_valid = (u - torch.bincount(self_rows, minlength=a)).clamp_min(1).double()
    tiny = torch.finfo(torch.float64).tiny
    # one (anchors, candidates) buffer for the uniform part, filled in place for each head: a
    # fresh tensor per operation spent three quarters of the time in allocation (8,192 x 512)
    buf = torch.empty((a, u), dtype=torch.float64) if alpha > 0 else None
    out = []
    for r in range(R):
        phi = _softmax_last(logits[r].double())
        psi = phi if degrees is None else phi * degrees.double()[:, None]
        mass = psi[candidates].sum(dim=0) * (n / u)
        w = psi / mass.clamp_min(tiny)
        pa = phi[anchors]
        if include_self:
            pa = pa * scale
        else:
            q_self = (pa * w[anchors]).sum(dim=1)
            pa = pa * (scale / (1.0 - q_self).clamp_min(torch.finfo(torch.float64).eps))[:, None]

        def log_q(x):
            return torch.log(x + offset) if offset > 0 else torch.log(x.clamp_min(tiny))

        cross = -scale_p * torch.zeros(a, dtype=torch.float64).index_add(
            0, rows, vals * log_q(pattern.dots(pa, w)))
        if alpha > 0:
            torch.matmul(pa, w[candidates].T, out=buf)
            log_u = buf.add_(offset).log_() if offset > 0 else buf.clamp_min_(tiny).log_()
            sum_u = log_u.sum(dim=1).index_add_(0, self_rows, -log_u[self_rows, self_cols])  # candidates j != i
            cross = cross - alpha * sum_u / n_valid
        out.append((cross + plogp).mean())
    return torch.stack(out)


def reverse_cluster_loss(logits, log_p, *, degrees=None, cand_logits=None, alpha_q=0.0):
    """Reverse I-Con loss ``1/m sum_i KL(q(.|i) || p(.|i))`` of the cluster kernel on a dense block.

    ``q(j|i) = sum_c phi_ic w_jc`` with ``w_jc = psi_jc d_j / sum_k psi_kc d_k`` over the m
    points of the block, the self pair included (Theorems 9 and 11), optionally debiased,
    ``q~ = debias(q, alpha_q, m)``. ``log_p`` is the supervisory block (self included), e.g.
    :func:`exp_graph_log_p` for normalized cuts or a Gaussian's log-probabilities for k-means.

    Parameters
    ----------
    logits : torch.Tensor of shape (R, m, n_clusters)
        Assignment logits of the block for R heads.
    log_p : torch.Tensor of shape (m, m)
        Log-probabilities of p over the block (rows normalised over the block).
    degrees : torch.Tensor of shape (m,), default=None
        Candidate degrees (degree-weighted kernel of normalized cuts).
    cand_logits : torch.Tensor of shape (R, m, n_clusters), default=None
        Candidate-side logits (EMA teacher); ``logits`` when None.
    alpha_q : float, default=0.0
        Debiasing of q.

    Returns
    -------
    torch.Tensor of shape (R,)
        The loss of each head.

    Examples
    --------
    >>> import math, torch
    >>> logits = torch.zeros(1, 4, 2, dtype=torch.float64)  # q uniform over the block
    >>> log_p = torch.full((4, 4), -math.log(4.0), dtype=torch.float64)
    >>> float(reverse_cluster_loss(logits, log_p))
    0.0
    """
    m = logits.shape[1]
    phi = _softmax_last(logits)
    w = _candidate_weights(phi, cand_logits, degrees)
    q = debias(torch.bmm(phi, w.transpose(1, 2)), alpha_q, m)
    log_q = torch.log(q.clamp_min(torch.finfo(q.dtype).tiny))
    return (q * (log_q - log_p.to(q)[None])).sum(dim=2).mean(dim=1)


def exp_graph_log_p(A_block, degrees):
    """Log of the "ncut" row's p(j|i) ∝ exp(A_ij / d_j) over the candidates j of a block.

    The self pair and non-edges get weight exp(0) = 1 (Table 1's "Gaussians on edge weights";
    :class:`~skicon.kernels.Graph` with ``degree_weighted=True, exponential=True`` restricted to
    the block, with the degrees of the whole graph).

    Parameters
    ----------
    A_block : torch.Tensor of shape (m, m)
        Edge weights between the block's points (zero diagonal).
    degrees : torch.Tensor of shape (m,)
        Degrees ``d_j`` of the candidates in the whole graph.

    Returns
    -------
    torch.Tensor of shape (m, m)
        Row-normalised log-probabilities.

    Examples
    --------
    >>> import torch
    >>> A = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    >>> exp_graph_log_p(A, torch.ones(2, dtype=torch.float64)).exp()[0]
    tensor([0.2689, 0.7311], dtype=torch.float64)
    """
    return torch.log_softmax(A_block / degrees.to(A_block)[None, :], dim=1)


def probabilistic_kmeans_loss(X, phi):
    """Probabilistic k-means objective (Proposition 2), the sigma -> 0 limit of Theorem 9.

    ``L = sum_i sum_c phi_ic ||x_i - mu_c||^2`` with ``mu_c = sum_i phi_ic x_i / sum_i phi_ic``,
    which equals ``-sum_ij (x_i . x_j) q(j|i) + sum_i ||x_i||^2`` with the cluster kernel q
    (Theorem 8), and ``2 sigma^2`` times the reverse I-Con loss against a Gaussian p up to the
    entropy of q and a constant (Theorem 9).

    Parameters
    ----------
    X : torch.Tensor of shape (n_samples, n_features)
        Data.
    phi : torch.Tensor of shape (..., n_samples, n_clusters)
        Soft assignments (rows sum to one); leading axes index independent restarts.

    Returns
    -------
    torch.Tensor of shape (...)
        The objective (the k-means inertia for hard assignments), one per restart.

    Examples
    --------
    >>> import torch
    >>> X = torch.tensor([[0.0], [2.0], [10.0]])
    >>> float(probabilistic_kmeans_loss(X, torch.tensor([[1.0, 0], [1, 0], [0, 1]])))
    2.0
    """
    size = phi.sum(dim=-2).clamp_min(torch.finfo(phi.dtype).tiny)
    centers = (phi.transpose(-1, -2) @ X) / size[..., :, None]
    sq = ((X * X).sum(dim=1, keepdim=True) - 2 * X @ centers.transpose(-1, -2)
          + (centers * centers).sum(dim=-1)[..., None, :])
    return (phi * sq.clamp_min(0)).sum(dim=(-2, -1))


def temi_loss(logits, teacher_logits, rows, cols, vals, *, beta=0.6, prior=None):
    """TEMI's loss: minus the beta-weighted pointwise mutual information over positive pairs.

    TEMI (Adaloglou et al., 2023; the mutual-information clustering row of the paper, Theorem
    10) scores a positive pair (i, j), e.g. j among the k nearest neighbours of i, by

    ``pmi_beta(i, j) = log sum_c (phi_ic psi_jc)^beta / pi_c``

    with the student's assignments ``phi = softmax(logits)``, the teacher's
    ``psi = softmax(teacher_logits)`` and the teacher's cluster marginal ``pi_c`` (TEMI keeps a
    moving average of it over batches). The loss is ``-1/m' sum_i sum_j p(j|i) pmi_beta(i, j)``
    over the m' anchors with positives; listing each pair in both directions gives TEMI's
    symmetrised loss. ``beta < 1`` flattens the product of assignments, which TEMI uses against
    collapse onto one cluster. With ``beta = 1`` and ``pi`` the batch mean of ``psi`` it is the
    I-Con loss of the cluster kernel (:func:`cluster_kernel_loss` with ``include_self=True`` and
    the teacher on the candidate side) plus the entropy of p minus ``log m``: the row's KL up to
    constants.

    Parameters
    ----------
    logits : torch.Tensor of shape (R, m, n_clusters)
        Student logits of the batch for R heads.
    teacher_logits : torch.Tensor of shape (R, m, n_clusters) or None
        Teacher logits; the student's own (with their gradient) when None.
    rows, cols : torch.Tensor of int64, shape (nnz,)
        Positive pairs (anchor, candidate).
    vals : torch.Tensor of shape (nnz,)
        p(j|i) of each pair; each anchor's row sums to one.
    beta : float, default=0.6
        Exponent of the pointwise mutual information (TEMI's default 0.6).
    prior : torch.Tensor of shape (R, n_clusters), default=None
        Cluster marginal ``pi``; the batch mean of ``psi`` when None.

    Returns
    -------
    torch.Tensor of shape (R,)
        The loss of each head.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[[9.0, -9.0], [9.0, -9.0], [-9.0, 9.0], [-9.0, 9.0]]])
    >>> rows, cols = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 3, 2])
    >>> loss = temi_loss(logits, None, rows, cols, torch.ones(4), beta=1.0)
    >>> round(float(loss), 3)  # log 2 at best: two equal clusters, pairs inside them
    -0.693
    """
    log_phi = torch.log_softmax(logits, dim=-1)
    log_psi = log_phi if teacher_logits is None else torch.log_softmax(teacher_logits, dim=-1)
    if prior is None:
        log_prior = torch.log(log_psi.exp().mean(dim=1).clamp_min(torch.finfo(log_phi.dtype).tiny))
    else:
        log_prior = torch.log(prior.to(log_phi).clamp_min(torch.finfo(log_phi.dtype).tiny))
    terms = beta * (log_phi[:, rows] + log_psi[:, cols]) - log_prior[:, None, :]
    pmi = torch.logsumexp(terms, dim=-1)  # (R, nnz)
    m = logits.shape[1]
    per_anchor = torch.zeros(logits.shape[0], m, dtype=log_phi.dtype, device=logits.device).index_add(
        1, rows, vals.to(log_phi)[None, :] * pmi)
    n_anchors = torch.unique(rows).numel()
    return -per_anchor.sum(dim=1) / max(n_anchors, 1)
