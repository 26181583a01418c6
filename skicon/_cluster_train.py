"""Training of ICONClustering: the plan, the batch objectives and the runs through the Trainer.

* :class:`PairObjective` (forward rows "mi", "infonce_clustering"): anchors, one positive
  sampled from p per anchor (and an augmented view), :func:`cluster_kernel_loss`
  ("infonce_clustering") or TEMI's :func:`temi_loss` ("mi").
* :class:`BlockObjective` (reverse row "ncut"): anchors and one graph neighbour each, the
  row's exponential p and the degree-weighted cluster kernel on the block,
  :func:`reverse_cluster_loss`.
* :func:`train_heads`: ``n_init`` heads side by side through :class:`~skicon._training.Trainer`,
  pruning the restarts on a fixed selection sample (:class:`SelectionSet`, :func:`pruning_schedule`),
  one pick per group of heads (the ``overclustering`` factors).
* :func:`join_clusters` / :func:`merge_clusters`: a head's extra clusters joined in pairs down to
  ``n_clusters`` by the loss on the selection sample.
* :func:`relax_kmeans` ("kmeans", "spectral"): the Adam relaxation of probabilistic k-means
  through the Trainer, then the exact Lloyd polish.
* :func:`whole_row_loss` (forward rows) / :func:`reverse_block_loss`: a row's loss of a fitted
  head (``loss_``, ``score``; :class:`SelectionSet` ranks the restarts by the former on a sample).
"""

import copy
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ._cluster_heads import LogitTables, kmeans_pp, lloyd_polish, merge_logits, pruning_schedule, sqdist
from ._training import RowSampler, Trainer, check_callbacks, log_means
from .objectives._cluster import (
    cluster_kernel_loss, exp_graph_log_p, probabilistic_kmeans_loss, reverse_cluster_loss, sampled_row_loss,
    temi_loss,
)

#: TEMI's exponent of the pointwise mutual information and momentum of its cluster marginal
#: (Adaloglou et al., 2023, their defaults), used by the "mi" row.
TEMI_BETA = 0.6
TEMI_PRIOR_MOMENTUM = 0.9


#: Anchors of the fixed sample on which restarts are pruned and chosen (:class:`SelectionSet`).
SELECT_ANCHORS = 8192
#: Anchors of the pruning steps' sample (a coarser cut than the final choice and the merges).
PRUNE_ANCHORS = 2048
#: Candidates of the uniform part and the cluster masses in the selection loss and ``loss_``.
SELECT_CANDIDATES = 512
#: Anchors of ``loss_`` and ``score`` (:func:`whole_row_loss`): all samples up to this many, else
#: a fixed sample of this size. At a million MNIST-1D samples ``loss_`` took 1.7 s of a 92 s fit
#: (78 s of it the neighbour graph), the selection 1.0 s; the cost grows with the anchors.
LOSS_ANCHORS = 1 << 16


@dataclass(frozen=True)
class ClusterPlan:
    """The resolved parameters of one fit (``ICONClustering._plan``)."""

    row: str
    direction: str
    n_neighbors: int
    walk_length: int
    alpha: float
    alpha_q: float
    degree_weighted: bool
    include_self: bool
    learning_rate: float
    overclustering: tuple = (1.0,)
    polish: int = 0
    n_ensemble: int = 1


def graph_degrees(P):
    """Degrees of the symmetric 0/1 graph of the support of ``P`` (the degree-weighted kernel's d)."""
    S = (sp.csr_matrix(P) + sp.csr_matrix(P).T).tocsr()
    S.data[:] = 1.0
    return np.asarray(S.sum(axis=1)).ravel()


class _BatchInputs:
    """What the heads are fed for sample indices: rows of the standardised data, or the indices."""

    def __init__(self, Xt, table, device):
        self.Xt, self.table, self.device = Xt, table, device

    def __call__(self, idx):
        idx = torch.as_tensor(idx, device=self.device)
        return idx if self.table else self.Xt[idx]


class PairObjective:
    """Forward rows: anchors, sampled positives (and views), the sparse cluster-kernel loss."""

    def __init__(self, inputs, P, plan, seed, *, n_negatives, n_init, degrees=None, augment=None, n_clusters=None,
                 n_used=None):
        self.inputs, self.plan, self.n_negatives, self.n_init = inputs, plan, n_negatives, n_init
        # clusters asked for, and the outputs each head uses (None: every head's outputs are its clusters)
        self.n_clusters, self.n_used = n_clusters, n_used
        self.sampler = RowSampler(P, np.random.RandomState(seed))
        self.augment = augment  # augment(anchors) -> view tensor, or None
        self.degrees = degrees
        self.neg_gen = torch.Generator().manual_seed(seed + 2)
        self.per_head = []
        self.prior = None  # TEMI's moving cluster marginal ("mi")
        self._pairs = {}  # (batch size, device) -> the positive pairs of a batch (see pairs)

    def __call__(self, mod, anchors, teacher):
        a = anchors.numpy()
        idx = np.concatenate([a, self.sampler.sample(a)])
        inputs = self.inputs(idx)
        if self.augment is not None:
            inputs = torch.cat([inputs, self.augment(a)])
            idx = np.concatenate([idx, a])
        m, device = len(idx), inputs.device
        rows, cols, vals = self.pairs(len(a), device)
        negatives = None
        if self.n_negatives is not None and self.n_negatives < m - 1:
            negatives = torch.randperm(m, generator=self.neg_gen)[: self.n_negatives].to(device)
        logits = mod(inputs)
        cand = None
        if teacher is not mod:
            with torch.no_grad():
                cand = teacher(inputs)
        if self.plan.row == "mi":
            losses = self.temi(mod, logits, cand, rows, cols, vals)
            return record_heads(self, mod, losses)
        d = None if self.degrees is None else torch.as_tensor(self.degrees[idx], dtype=torch.float32, device=device)
        losses = cluster_kernel_loss(
            logits, rows, cols, vals, alpha=self.plan.alpha,
            alpha_q=self.plan.alpha_q, cand_logits=cand, negatives=negatives, degrees=d,
            include_self=self.plan.include_self,
        )
        return record_heads(self, mod, losses)

    def pairs(self, b, device):
        """The batch's positive pairs (rows, cols, p values) as tensors, built once per batch size.

        Anchor t pairs with its sampled positive b + t both ways (and with its view 2b + t,
        which pairs back with it, when ``augment`` is set); each anchor row sums to one.
        """
        key = (b, str(device))
        if key not in self._pairs:
            rows = [np.arange(b), np.arange(b, 2 * b)]
            cols = [np.arange(b, 2 * b), np.arange(b)]
            if self.augment is not None:
                rows += [np.arange(b), np.arange(2 * b, 3 * b)]
                cols += [np.arange(2 * b, 3 * b), np.arange(b)]
            rows, cols = np.concatenate(rows), np.concatenate(cols)
            vals = 1.0 / np.bincount(rows)[rows]
            self._pairs[key] = (torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device),
                                torch.as_tensor(vals, dtype=torch.float32, device=device))
        return self._pairs[key]

    def selection_loss(self, mod, sel):
        """Each evaluated head's loss on the fixed sample of :class:`SelectionSet`.

        :func:`~skicon.objectives._cluster.sampled_row_loss`: the row's KL with each anchor's
        whole row of p (no sampled positive, no views) and the cluster masses of all samples
        (estimated on the candidate sample), for the head itself (no EMA teacher). For "mi" the
        row's KL, not TEMI's surrogate (``loss_``'s objective).

        Heads that use more outputs than ``n_clusters`` (overclustering) are scored after
        joining their clusters down to ``n_clusters`` by the hard-label figure alone
        (:func:`join_clusters` with ``exact=False``), so that heads of every factor compare on
        one scale; the kept head's joins are then chosen exactly (:func:`merge_clusters`).
        """
        logits = batched_logits(mod, self.inputs, sel.nodes)
        if self.n_used is not None:
            k = self.n_clusters
            logits = torch.stack([
                merge_logits(z, join_clusters(z, self, sel, k, n_used=self.n_used[r], exact=False)[0])
                if self.n_used[r] > k else z[:, :k] for z, r in zip(logits, getattr(mod, "active", range(len(logits))))
            ])
        return self.sample_loss(logits, sel).numpy()

    def sample_loss(self, logits, sel):
        """The row's :func:`~skicon.objectives._cluster.sampled_row_loss` of ``logits`` (R, nodes, C)
        of the nodes of ``sel`` (a :class:`SelectionSet`), one figure per head."""
        d = None if self.degrees is None else torch.as_tensor(self.degrees[sel.nodes], dtype=torch.float64)
        return sampled_row_loss(logits, **sel.sample, n_samples=sel.n_samples, alpha=self.plan.alpha,
                                alpha_q=self.plan.alpha_q, degrees=d, include_self=self.plan.include_self)

    def temi(self, mod, logits, cand, rows, cols, vals):
        """The "mi" row as TEMI trains it: :func:`temi_loss` with a moving cluster marginal.

        The marginal ``pi`` of each head is the teacher's (the EMA teacher's with ``ema``, else
        the head's own) mean assignment, averaged over batches with momentum
        :data:`TEMI_PRIOR_MOMENTUM` as in TEMI; the pairs are listed both ways (symmetric loss).
        """
        device = logits.device
        with torch.no_grad():
            batch_mean = torch.softmax(logits if cand is None else cand, dim=-1).mean(dim=1).cpu().numpy()
        active = getattr(mod, "active", list(range(self.n_init)))
        if self.prior is None:
            self.prior = np.full((self.n_init, logits.shape[-1]), 1.0 / logits.shape[-1])
        self.prior[active] = TEMI_PRIOR_MOMENTUM * self.prior[active] + (1 - TEMI_PRIOR_MOMENTUM) * batch_mean
        return temi_loss(logits, cand, torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device),
                         torch.as_tensor(vals, dtype=torch.float32, device=device), beta=TEMI_BETA,
                         prior=torch.as_tensor(self.prior[active], dtype=torch.float32, device=device))


class BlockObjective:
    """The "ncut" row: reverse KL on the block of anchors and one graph neighbour of each."""

    def __init__(self, inputs, A, degrees, plan, seed, *, n_init):
        self.inputs, self.A, self.plan, self.n_init = inputs, sp.csr_matrix(A), plan, n_init
        self.degrees = np.asarray(degrees, dtype=np.float64)
        self.sampler = RowSampler(self.A, np.random.RandomState(seed))
        self.per_head = []

    def __call__(self, mod, anchors, teacher):
        a = anchors.numpy()
        inputs, log_p, d = self.block(a, self.sampler.sample(a))
        logits = mod(inputs)
        cand = None
        if teacher is not mod:
            with torch.no_grad():
                cand = teacher(inputs)
        losses = reverse_cluster_loss(logits, log_p, cand_logits=cand, degrees=d, alpha_q=self.plan.alpha_q)
        return record_heads(self, mod, losses)

    def block(self, anchors, positives):
        """The heads' inputs, log p and the kernel's degrees (None unless degree-weighted) on a block.

        The block is the anchors and their graph neighbours (``positives``; -1 for none).
        """
        idx = np.unique(np.concatenate([anchors, positives[positives >= 0]]))
        inputs = self.inputs(idx)
        A_block = torch.as_tensor(self.A[idx][:, idx].toarray(), dtype=torch.float32, device=inputs.device)
        d = torch.as_tensor(self.degrees[idx], dtype=torch.float32, device=inputs.device)
        return inputs, exp_graph_log_p(A_block, d), d if self.plan.degree_weighted else None

    def selection_loss(self, mod, sel):
        """Each evaluated head's reverse KL on the fixed blocks of :class:`SelectionSet`."""
        total, batches = 0.0, sel.batches(self.sampler)
        for anchors, positives in batches:
            inputs, log_p, d = self.block(anchors, positives)
            total = total + reverse_cluster_loss(mod(inputs), log_p, degrees=d, alpha_q=self.plan.alpha_q).double() \
                * len(anchors)
        return (total / sum(len(a) for a, _ in batches)).cpu().numpy()


class SelectionSet:
    """The fixed sample on which the restarts are compared: the same for every head.

    ``min(n, SELECT_ANCHORS)`` anchors drawn once without replacement (their own random
    stream: the training batches do not change) with their whole rows of p, and
    ``min(n, SELECT_CANDIDATES)`` candidate samples that estimate the uniform part and the
    cluster masses (forward rows, :func:`~skicon.objectives._cluster.sampled_row_loss`); for the
    reverse row, blocks of anchors and one graph neighbour each. Every head is scored on the
    same sample (common random numbers) after training, not averaged along its trajectory.

    Why this figure. On digits (5 seeds, 8 heads trained 400 steps each) the head with the
    lowest recent batch loss (the former criterion, its mean over the last 50 steps) was the
    most accurate of the eight in 2 of 5 runs; the head with the lowest loss on consecutive
    blocks of 256 samples (the former ``loss_``) in 4 of 5. With 16 heads and 6 seeds,
    scoring each anchor against one sampled positive picked heads of mean accuracy 0.897;
    whole rows picked 0.918 (the block loss 0.919; the best heads averaged 0.932). On
    MNIST-5k (16 heads, 4 seeds) whole rows picked 0.787 against a best head of 0.790, while
    the block loss picked 0.581: its blocks keep few of a row's neighbours there, and it was
    anti-correlated with accuracy (Spearman -0.5 to -0.7 against this figure).
    """

    def __init__(self, P, n_samples, batch_size, seed, n_anchors=None):
        rng = np.random.RandomState(seed)
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        n_anchors = SELECT_ANCHORS if n_anchors is None else n_anchors
        self.anchors = rng.permutation(n_samples)[: min(n_samples, n_anchors)]
        candidates = rng.permutation(n_samples)[: min(n_samples, SELECT_CANDIDATES)]
        self.nodes, self.sample = row_sample(P, self.anchors, candidates)
        self._P, self._n_anchors, self._batches, self._first = P, n_anchors, None, {}

    def first(self, n_anchors):
        """The set of the first ``n_anchors`` anchors of the same draw (built once; ``self``
        when it has no more): the pruning steps' sample, and the ranking of the polish's splits."""
        if len(self.anchors) <= n_anchors or self._n_anchors <= n_anchors:
            return self
        if n_anchors not in self._first:
            self._first[n_anchors] = SelectionSet(self._P, self.n_samples, self.batch_size, self.seed, n_anchors)
        return self._first[n_anchors]

    def batches(self, sampler):
        """The anchors in batches with one positive each (reverse row), drawn once.

        The positives come from ``sampler``'s rows with a stream of their own (a shallow copy:
        no second cumulative array over p, which is hundreds of MiB at a million samples).
        """
        if self._batches is None:
            draw = copy.copy(sampler)
            draw.rng = np.random.RandomState(self.seed + 1)
            a, b = self.anchors, self.batch_size
            positives = draw.sample(a)
            self._batches = [(a[s : s + b], positives[s : s + b]) for s in range(0, len(a), b) if len(a[s : s + b]) > 1]
        return self._batches

    def losses(self, objective, module):
        """Each active head's selection loss, shape (len(module.active),)."""
        was_training = module.training
        module.eval()
        with torch.no_grad():
            out = objective.selection_loss(module, self)
        module.train(was_training)
        return out


#: The best split-and-join start of the polish replaces the head polished at its own clusters
#: only when its selection loss is lower by more than this fraction (:func:`choose_polished`):
#: on digits (seed 3) a move won by 0.03% of the loss and lost 0.07 accuracy; the moves that
#: mended a merged pair of digits won by 0.11% or more (0.0022-0.0084 on losses of 1.4-2.0,
#: MNIST-5k and the digits features).
MOVE_MARGIN = 1e-3

#: Each round of the polish tries the MOVE_SPLITS splits that lower the selection loss most, each
#: followed by each of its MOVE_JOINS cheapest joins by the hard-label figure: four moved copies
#: beside the own-clusters copy. On MNIST-5k (seed 1) the right move was the best split with the
#: second-cheapest join: the cheapest joined the two clusters that share the fours and nines.
MOVE_SPLITS = 2
MOVE_JOINS = 2

#: Rounds of the polish at most; each round starts from the head the previous one kept, and
#: the polish stops at the first round that does not lower the selection loss.
POLISH_ROUNDS = 3

#: Merges judged exactly per step of :func:`merge_clusters` (the best by the hard-label figure).
MERGE_CANDIDATES = 5


def merge_clusters(head, objective, selection, n_clusters, n_used=None):
    """:func:`join_clusters` of a head's logits on the nodes of ``selection``, judged exactly."""
    with torch.no_grad():
        logits = batched_logits(lambda x: head(x)[None], objective.inputs, selection.nodes)[0]  # (nodes, K)
    return join_clusters(logits, objective, selection, n_clusters, n_used=n_used)


def join_clusters(logits, objective, selection, n_clusters, n_used=None, exact=True):
    """Join the head's clusters in pairs, each time by the join that leaves the lowest loss.

    The heads learn more clusters than asked (``overclustering``); this brings them down to
    ``n_clusters``. Each step ranks every pair of the current groups by the loss of the hard
    labels after joining them (:func:`hard_merge_losses`, O(groups^2) from the sample's
    cluster-to-cluster mass of p), then evaluates the best :data:`MERGE_CANDIDATES` exactly
    (the selection loss of the merged soft assignments, :meth:`PairObjective.selection_loss`'s
    figure on the same sample) and keeps the lowest; with ``exact=False`` it keeps the best by
    the hard-label figure (a cheap ranking of heads, used when pruning). ``logits`` (nodes, C)
    are a head's on the nodes of ``selection``, of which the first ``n_used`` (all when None)
    are clusters. Returns the groups, a list of lists of the head's clusters, and their
    selection loss (None when not ``exact``).

    Why: over 10 seeds (``overclustering=1.4`` against 1, 8 restarts, one machine), heads of 14
    clusters joined to 10 this way scored 0.937 +- 0.007 Hungarian accuracy on digits, against
    0.901 +- 0.031 for heads of 10; on MNIST-5k and MNIST-1D 20k they were level or slightly
    behind (0.778 +- 0.025 against 0.792 +- 0.027, 0.210 +- 0.005 against 0.216 +- 0.006), and
    on EfficientNet features of digits behind (0.756 +- 0.035 against 0.786 +- 0.022), hence
    the mixed default of ``overclustering``. In an earlier 5-seed run, ranking every pair
    exactly gave the same as this on MNIST-5k at many times the cost, and the hard-label
    figure alone lost on digits (0.933 +- 0.018 against 0.941 +- 0.008).
    """
    plan = objective.plan
    sample = selection.sample
    groups = [[c] for c in range(logits.shape[1] if n_used is None else n_used)]
    loss = None
    while len(groups) > n_clusters:
        merged = merge_logits(logits, groups)
        hard = hard_merge_losses(merged.argmax(dim=1).numpy(), sample, len(groups), plan)
        pairs = np.transpose(np.triu_indices(len(groups), 1))
        order = np.argsort(hard[pairs[:, 0], pairs[:, 1]], kind="stable")[: MERGE_CANDIDATES if exact else 1]
        options = [joined(groups, *pairs[o]) for o in order]
        if not exact:
            groups = options[0]
            continue
        losses = objective.sample_loss(torch.stack([merge_logits(logits, g) for g in options]), selection)
        best = int(torch.argmin(losses))
        groups, loss = options[best], float(losses[best])
    if loss is None and exact:
        loss = float(objective.sample_loss(merge_logits(logits, groups)[None], selection)[0])
    return groups, loss


def joined(groups, a, b):
    """``groups`` with groups ``a`` and ``b`` joined (in ``a``'s place)."""
    return [g + groups[b] if i == a else g for i, g in enumerate(groups) if i != b]


def hard_merge_losses(labels, sample, n_groups, plan):
    """The loss of hard labels after joining each pair of groups, up to a constant: (G, G).

    For hard assignments of a batch of m samples, with ``pi_c`` the share of cluster c and
    ``m_i`` the mass of p(.|i) inside i's cluster, an anchor's expected loss is, up to a
    constant, ``-((1 - alpha) m_i + alpha pi_c) log(1 + (1 - alpha_q) (m - 1) / (alpha_q (m pi_c
    - 1)))``: it depends on the labels only through each cluster's share and its inner mass of p,
    so a join's effect follows from the cluster-to-cluster mass of the sample's rows. ``m`` is
    256, ``alpha_q`` at least 0.05 (a hard q without debiasing has an infinite loss across
    clusters): a ranking, not the objective.
    """
    labels = np.asarray(labels)
    anchors, rows, cols = (sample[k].numpy() for k in ("anchors", "rows", "cols"))
    vals = sample["vals"].numpy()
    la, lc = labels[anchors][rows], labels[cols]
    mass = np.bincount(la * n_groups + lc, weights=vals, minlength=n_groups * n_groups).reshape(n_groups, n_groups)
    mass = mass / max(len(anchors), 1)  # share of all p mass, per pair of clusters
    share = np.bincount(labels[sample["candidates"].numpy()], minlength=n_groups) / max(len(sample["candidates"]), 1)
    anchor_share = np.bincount(labels[anchors], minlength=n_groups) / max(len(anchors), 1)
    m, alpha, alpha_q = 256.0, plan.alpha, max(plan.alpha_q, 0.05)

    def term(inner, pi, f):
        # the anchors of a cluster (a share f of them) with inner mass `inner` and share pi
        gain = np.log1p((1 - alpha_q) * (m - 1) / (alpha_q * np.maximum(m * pi - 1, 1e-3)))
        return -gain * ((1 - alpha) * inner + alpha * f * pi)

    own = term(np.diag(mass), share, anchor_share)
    both = mass + mass.T
    joined_term = term(np.diag(mass)[:, None] + np.diag(mass)[None, :] + both, share[:, None] + share[None, :],
                       anchor_share[:, None] + anchor_share[None, :])
    return joined_term - own[:, None] - own[None, :]


def batched_logits(mod, inputs, idx, chunk=8192):
    """``mod(inputs(idx))`` in chunks of rows, float64, shape (R, len(idx), C)."""
    return torch.cat([mod(inputs(idx[s : s + chunk])).double().cpu() for s in range(0, len(idx), chunk)], dim=1)


def row_sample(P, anchors, candidates):
    """Anchors' whole rows of ``P`` and candidates as positions in their nodes.

    Returns ``(nodes, sample)``: the sorted samples involved (anchors, the columns of their rows,
    candidates) and the keyword arguments of
    :func:`~skicon.objectives._cluster.sampled_row_loss` that index into them.
    """
    P = sp.csr_matrix(P)
    block = P[anchors]
    wanted = np.concatenate([anchors, block.indices, candidates])
    # positions by a mask over the samples, not np.unique: no sort of the rows' entries
    mask = np.zeros(P.shape[0], dtype=bool)
    mask[wanted] = True
    nodes = np.flatnonzero(mask)
    position = np.cumsum(mask) - 1
    inverse = position[wanted]
    a, c = len(anchors), len(block.indices)
    rows = np.repeat(np.arange(a), np.diff(block.indptr))
    return nodes, dict(anchors=torch.as_tensor(inverse[:a]), rows=torch.as_tensor(rows),
                       cols=torch.as_tensor(inverse[a : a + c]), vals=torch.as_tensor(block.data, dtype=torch.float64),
                       candidates=torch.as_tensor(inverse[a + c :]))


def whole_row_loss(P, logits, *, alpha, alpha_q, degrees=None, include_self=False, chunk=4096):
    """The forward rows' loss of ``logits`` (one head): every anchor with its whole row of ``P``.

    :func:`~skicon.objectives._cluster.sampled_row_loss` over all samples as anchors (in chunks
    of ``chunk`` rows; above :data:`LOSS_ANCHORS` samples, that many drawn with seed 0), with
    the uniform part and the cluster masses on ``min(n, SELECT_CANDIDATES)`` candidates drawn
    with seed 0: exactly the row's KL over all samples when ``n <= SELECT_CANDIDATES``.
    ``loss_``, ``score`` and the restarts' ranking (:class:`SelectionSet`) are this one
    figure. Float64.
    """
    P = sp.csr_matrix(P)
    n = P.shape[0]
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)[None]
    rng = np.random.RandomState(0)
    candidates = rng.permutation(n)[: min(n, SELECT_CANDIDATES)]
    all_anchors = np.arange(n) if n <= LOSS_ANCHORS else np.sort(rng.permutation(n)[:LOSS_ANCHORS])
    total = 0.0
    for s in range(0, len(all_anchors), chunk):
        anchors = all_anchors[s : s + chunk]
        nodes, sample = row_sample(P, anchors, candidates)
        d = None if degrees is None else torch.as_tensor(np.asarray(degrees)[nodes], dtype=torch.float64)
        loss = sampled_row_loss(logits[:, nodes], **sample, n_samples=n, alpha=alpha, alpha_q=alpha_q, degrees=d,
                                include_self=include_self)
        total += float(loss[0]) * len(anchors)
    return total / max(len(all_anchors), 1)


def record_heads(objective, mod, losses):
    """Keep each active head's loss of this step; return the mean over them for the optimiser.

    The mean, not the sum, over the heads: callbacks see a loss on one head's scale that does
    not jump when restarts are dropped (Adam is invariant to the factor, up to eps).
    """
    row = np.full(objective.n_init, np.nan)
    row[getattr(mod, "active", slice(None))] = losses.detach().cpu().numpy()
    objective.per_head.append(row)
    return losses.mean()


def train_heads(module, objective, *, n_samples, P, plan, est, seed, groups=None, selection=None, prune=True):
    """Train the restart heads through the Trainer, pruning them on the selection loss.

    At each step of :func:`pruning_schedule` the active heads are scored on a fixed
    :class:`SelectionSet` and the better ones go on (heads with more clusters than asked are
    scored after joining them, see :meth:`PairObjective.selection_loss`). After the last step
    the survivor with the lowest selection loss in each of ``groups`` (lists of head indices,
    e.g. the heads of each overclustering factor; one group of all when None) is that group's
    pick. Returns the picks (one head index per group, None for a group with no survivor),
    the (iterations, n_init) batch-loss history (NaN once a head stopped), each restart's last
    selection loss, the Trainer and the selection sample (``selection`` when given: a
    :class:`SelectionSet` to score on, as the final polish does to compare with the main run).
    ``prune=False`` trains every head to the end (the polish's copies are compared only then).
    """
    groups = [np.arange(est.n_init)] if groups is None else [np.asarray(g, dtype=int) for g in groups]
    schedule = pruning_schedule(est.n_init, est.max_iter) if prune else {}
    batch = min(est.batch_size, n_samples)
    selection = SelectionSet(P, n_samples, batch, seed + 5) if selection is None else selection
    early = selection.first(PRUNE_ANCHORS) if schedule else selection  # the pruning steps' sample
    scores = np.full(est.n_init, np.nan)

    def score(sample=selection):
        scores[module.active] = sample.losses(objective, module)

    def alive(group):
        return group[np.isin(group, module.active)]

    def prune(trainer, loss):
        keep = schedule.get(trainer.n_iter)  # iterations done, 1-based
        if keep is not None:
            score(early)
            active = np.asarray(module.active)
            kept = active[np.argsort(scores[active], kind="stable")[:keep]]
            module.keep(kept)
            if trainer.teacher is not module:  # the EMA teacher evaluates the same heads
                trainer.teacher.keep(kept)
        return False

    trainer = Trainer(
        module, objective, n_samples=n_samples, batch_size=min(est.batch_size, n_samples), n_steps=est.max_iter,
        learning_rate=plan.learning_rate, ema=est.ema, device=est._device, random_state=seed,
        callbacks=check_callbacks(est.callbacks), hooks=[prune], verbose=est.verbose, estimator=est,
        desc="ICONClustering", distributed=True,
    )
    trainer.run()
    score()
    picks = [int(heads[np.argmin(scores[heads])]) if len(heads) else None for heads in map(alive, groups)]
    return picks, np.array(objective.per_head), scores, trainer, selection


def polish_head(head, Xs, starts, n_clusters, make_objective, *, n_steps, est, n_samples, P, plan, seed, selection):
    """The final polish: the kept head's last layer restarted at hard clusters and trained on.

    For each labelling in ``starts`` (hard clusters of the training samples: the head's own, a
    joined head's groups becoming plain outputs, and those of :func:`split_join_labels`),
    :func:`~skicon._cluster_heads.restart_last_layers` copies the head's trained layers and
    seats a new last layer of ``n_clusters`` outputs at the clusters' centres. The copies train
    side by side through :func:`train_heads` (``n_steps`` steps on ``make_objective(seed,
    n_init)``, the same batches for all, no pruning, no callbacks) and are scored on
    ``selection``, the main run's sample. Returns one ``(head, selection loss)`` per start, None
    for a start that cannot be restarted (a table, a user factory whose last layer is not a
    biased ``nn.Linear``, a labelling with an empty cluster).

    Why: the restarts end in local optima whose losses are close, and more of them did not help
    (``n_init=16`` against 8 over 20 seeds: MNIST-5k 0.788 +- 0.031 against 0.787 +- 0.031).
    Restarting the kept head's last layer at its own clusters and training on lowered the
    selection loss in 39 of 40 fits of a first version (MNIST-5k and the digits features, 20
    seeds each; hence the comparison before it is kept), and over 20 seeds raised MNIST-5k's
    Hungarian accuracy from 0.787 +- 0.031 to 0.806 +- 0.019 (the same number of extra steps
    without the restart, ``max_iter=800``, gave 0.795 +- 0.025 on 10 of them). The
    split-and-join start then took the digits features from 0.782 +- 0.029 to 0.790 +- 0.013
    (20 seeds), and rounds of four moves each (:func:`polish`) MNIST-5k from 0.805 +- 0.019 to
    0.814 +- 0.013 (20 seeds); see :ref:`benchmarks`.
    """
    from types import SimpleNamespace

    from ._cluster_heads import FusedHeads, Heads, restart_last_layers
    from ._threads import thread_limits

    restarted = restart_last_layers(head, Xs, starts, n_clusters)
    heads = [h for h in restarted if h is not None]
    if not heads:
        return [None] * len(starts)
    module = (FusedHeads(heads) if FusedHeads.supports(heads[0]) else Heads(heads)).to(est._device)
    side = SimpleNamespace(n_init=len(heads), max_iter=n_steps, batch_size=est.batch_size, ema=est.ema,
                           _device=est._device, callbacks=None, verbose=est.verbose)
    # One thread: the polish's steps are small (n_jobs=None would give them one thread too), and on
    # two threads a lone head's weight-gradient product is split along the batch rows, which
    # changes the sums: the fit would differ between n_jobs=1 and n_jobs=2 (test_determinism.py).
    with thread_limits(1):
        _, _, scores, _, _ = train_heads(module, make_objective(seed, len(heads)), n_samples=n_samples, P=P,
                                         plan=plan, est=side, seed=seed, selection=selection, prune=False)
    results, r = [], 0
    for h in restarted:
        results.append(None if h is None else (module.head(r).eval(), float(scores[r])))
        r += h is not None
    return results


def split_join_labels(logits, Xs, objective, selection, rng, n_splits=MOVE_SPLITS, n_joins=MOVE_JOINS):
    """Hard labels after split-and-join moves of a head's clusters: a list, empty when none.

    Each cluster c is split in two by 2-means on its members in ``Xs`` (the head's input:
    k-means++ and Lloyd steps), its assignment phi_c shared between the halves by the nearer of
    the two centres; the ``n_splits`` splits that lower the selection loss most are kept (all k
    judged in one call of :meth:`PairObjective.sample_loss`). After each, the ``n_joins`` pairs
    of the k + 1 clusters whose join costs least by the hard-label figure
    (:func:`hard_merge_losses`), other than the split's own halves, are joined, one per move.
    ``logits`` (n_samples, k) are the head's on the training samples. Returns the labels of
    each move's partition (k clusters each), best split first, cheapest join first.

    It targets the local optimum that restarts share: one cluster holding two classes while
    another class is split in two (on the EfficientNet features of digits, a cluster of sixes and
    nines next to two clusters of fives). The labels start the polish's moved copies
    (:func:`polish_head`), of which one is kept only if its loss ends clearly lower
    (:func:`choose_polished`). Several joins per split: the cheapest join by the hard-label
    figure is often the pair of clusters that share two classes evenly (the fours and nines of
    MNIST), whose join the training then undoes.
    """
    logits, X = np.asarray(logits, dtype=np.float64), np.asarray(Xs, dtype=np.float64)
    k = logits.shape[1]
    labels = logits.argmax(axis=1)
    nodes = selection.nodes
    options = []
    for c in range(k if k > 1 else 0):
        members = labels == c
        if members.sum() < 4:
            continue
        # seeded on the data as given (float32 from the estimator), polished in float64
        _, halves, centers = lloyd_polish(X[members], kmeans_pp(Xs[members], 2, rng), max_iter=50)
        if np.bincount(halves, minlength=2).min() == 0:
            continue
        options.append((c, sqdist(X, centers).argmin(axis=1) == 0))
    if not options:
        return []
    tiny = np.log(np.finfo(np.float64).tiny)

    def split(z, c, first):
        # cluster c's assignment to the half each sample is nearer to (c keeps the first half)
        z = np.concatenate([z, z[:, c : c + 1]], axis=1)
        z[~first, c], z[first, k] = tiny, tiny
        return z

    trial = torch.as_tensor(np.stack([split(logits[nodes], c, first[nodes]) for c, first in options]))
    order = np.argsort(objective.sample_loss(trial, selection).numpy(), kind="stable")
    moves = []
    for o in order[:n_splits]:
        c, first = options[o]
        new = np.where(first, labels, np.where(labels == c, k, labels))
        hard = hard_merge_losses(new[nodes], selection.sample, k + 1, objective.plan)
        pairs = [(a, b) for a, b in zip(*np.triu_indices(k + 1, 1)) if (a, b) != (c, k)]
        for a, b in sorted(pairs, key=lambda pair: hard[pair])[:n_joins]:
            moved = np.where(new == b, a, new)
            moves.append(np.unique(moved, return_inverse=True)[1].reshape(-1))
    return moves


def choose_polished(own, moves):
    """The polish's pick of one round: the own-clusters copy, or the best moved copy when its
    selection loss is lower by more than :data:`MOVE_MARGIN` of the own copy's.

    ``own`` and each of ``moves`` are ``(head, loss)`` or None (:func:`polish_head`). Returns
    ``(head, loss)``, or None when no copy could be made.
    """
    moves = [m for m in moves if m is not None]
    best = min(moves, key=lambda m: m[1]) if moves else None
    if best is not None and (own is None or best[1] < own[1] - MOVE_MARGIN * abs(own[1])):
        return best
    return own


def polish(head, logits, kept_loss, Xs, objective, make_objective, forward, *, n_clusters, n_steps, rounds, est,
           n_samples, P, plan, seed, selection):
    """The final polish of a fitted head: up to ``rounds`` rounds of :func:`polish_head`.

    Each round restarts the current head's last layer at its own hard clusters (from
    ``logits``, the head's on the training samples) and at those of the moves of
    :func:`split_join_labels` (forward rows; the splits ranked on the pruning steps' sample),
    trains the copies side by side and picks one (:func:`choose_polished`). The pick replaces
    the current head only if its selection loss is below ``kept_loss``, the current head's;
    the next round starts from it, and the first round that does not lower the loss ends the
    polish. ``forward(head)`` gives a head's logits on the training samples. Returns ``(head,
    loss, logits, rounds kept)``; the head given and 0 rounds when no round was kept.
    """
    kept = 0
    for r in range(rounds):
        starts = [logits.argmax(axis=1)]
        if n_clusters > 1 and plan.direction == "forward":  # the moves are judged by a forward row's loss
            starts += split_join_labels(logits, Xs, objective, selection.first(PRUNE_ANCHORS),
                                        np.random.RandomState(seed + 1 + 100 * r))
        own, *moves = polish_head(head, Xs, starts, n_clusters, make_objective, n_steps=n_steps, est=est,
                                  n_samples=n_samples, P=P, plan=plan, seed=seed + 100 * r, selection=selection)
        pick = choose_polished(own, moves)
        if pick is None or not pick[1] < kept_loss:
            break
        head, kept_loss = pick
        logits, kept = forward(head), r + 1
    return head, kept_loss, logits, kept


def relax_kmeans(Z, k, *, n_init, n_relax, learning_rate, rng, est):
    """Probabilistic k-means from ``n_init`` k-means++ seedings; the lowest objective wins.

    The relaxation runs through the Trainer: one table of soft-assignment logits per seeding,
    trained side by side by Adam on :func:`probabilistic_kmeans_loss` (each table's gradient is
    its own objective's), ``n_relax`` iterations with the Trainer's callbacks. Each run's soft
    means then start the exact minimisation step, :func:`lloyd_polish` (hard assignment and
    means, which cannot increase the objective). Returns the fitted quantities as a dict.
    """
    Z = np.array(Z, dtype=np.float64)  # a writable copy (torch shares its memory)
    seeds = [kmeans_pp(Z, k, rng) for _ in range(n_init)]
    history, n_iter, logged = np.empty((0, n_init)), 0, []
    if n_relax > 0:
        scale = max(float(Z.var(axis=0).sum()), 1e-12)
        tables = LogitTables(np.stack([-sqdist(Z, c) / scale * k for c in seeds]))
        Zt = torch.as_tensor(Z)
        per_head = []

        def objective(module, batch, teacher):
            losses = probabilistic_kmeans_loss(Zt, torch.softmax(module(), dim=-1))
            per_head.append(losses.detach().numpy())
            return losses.mean()

        trainer = Trainer(tables, objective, n_steps=n_relax, learning_rate=learning_rate,
                          callbacks=est.callbacks, verbose=est.verbose, estimator=est, desc="ICONClustering")
        trainer.run()
        history, n_iter, logged = np.array(per_head), trainer.n_iter, trainer.history_iterations
        phi = torch.softmax(tables.weight.detach(), dim=-1).numpy()
        seeds = [(f.T @ Z) / np.maximum(f.sum(0), 1e-12)[:, None] for f in phi]
    runs = [lloyd_polish(Z, c) for c in seeds]
    best = int(np.argmin([r[0] for r in runs]))
    inertia, labels, centers = runs[best]
    return dict(inertia=inertia, labels=labels, centers=centers, loss_curve=log_means(history[:, best], logged),
                loss_curve_iterations=np.asarray(logged), n_iter=n_iter, init_losses=np.array([r[0] for r in runs]))


# ---------------------------------------------------------------------------------------------
# A row's loss on consecutive blocks (loss_ and score)
# ---------------------------------------------------------------------------------------------
def reverse_block_loss(log_p_block, logits, block, *, degrees=None, alpha_q=0.0):
    """Reverse rows: exact loss over consecutive blocks; ``log_p_block(idx)`` gives log p there.

    The mean over all anchors; exactly the row's loss when ``n_samples <= block``. Float64.
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)
    n = logits.shape[0]
    total = 0.0
    for s in range(0, n, block):
        idx = np.arange(s, min(n, s + block))
        d = None if degrees is None else torch.as_tensor(degrees[idx], dtype=torch.float64)
        with torch.no_grad():
            loss = reverse_cluster_loss(logits[idx][None], log_p_block(idx), degrees=d, alpha_q=alpha_q)
        total += float(loss[0]) * len(idx)
    return total / max(n, 1)
