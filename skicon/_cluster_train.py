"""Training of ICONClustering: the plan, the batch objectives and the runs through the Trainer.

* :class:`PairObjective` (forward rows "mi", "infonce_clustering"): anchors, one positive
  sampled from p per anchor (and an augmented view), :func:`cluster_kernel_loss`
  ("infonce_clustering") or TEMI's :func:`temi_loss` ("mi").
* :class:`BlockObjective` (reverse row "ncut"): anchors and one graph neighbour each, the
  row's exponential p and the degree-weighted cluster kernel on the block,
  :func:`reverse_cluster_loss`.
* :func:`train_heads`: ``n_init`` heads side by side through :class:`~skicon._training.Trainer`,
  halving the restarts on their recent loss (:func:`pruning_schedule`).
* :func:`relax_kmeans` ("kmeans", "spectral"): the Adam relaxation of probabilistic k-means
  through the Trainer, then the exact Lloyd polish.
* :func:`forward_block_loss` / :func:`reverse_block_loss`: a row's loss on consecutive blocks
  (``loss_`` and ``score``).
"""

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ._cluster_heads import PRUNE_WINDOW, LogitTables, kmeans_pp, last_mean, lloyd_polish, pruning_schedule, sqdist
from ._training import RowSampler, Trainer, check_callbacks, log_means
from .objectives._cluster import (
    cluster_kernel_loss, exp_graph_log_p, probabilistic_kmeans_loss, reverse_cluster_loss, temi_loss,
)

#: TEMI's exponent of the pointwise mutual information and momentum of its cluster marginal
#: (Adaloglou et al., 2023, their defaults), used by the "mi" row.
TEMI_BETA = 0.6
TEMI_PRIOR_MOMENTUM = 0.9


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

    def __init__(self, inputs, P, plan, seed, *, n_negatives, n_init, degrees=None, augment=None):
        self.inputs, self.plan, self.n_negatives, self.n_init = inputs, plan, n_negatives, n_init
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
        pos = self.sampler.sample(a)
        idx = np.unique(np.concatenate([a, pos[pos >= 0]]))
        inputs = self.inputs(idx)
        A_block = torch.as_tensor(self.A[idx][:, idx].toarray(), dtype=torch.float32, device=inputs.device)
        d = torch.as_tensor(self.degrees[idx], dtype=torch.float32, device=inputs.device)
        logits = mod(inputs)
        cand = None
        if teacher is not mod:
            with torch.no_grad():
                cand = teacher(inputs)
        losses = reverse_cluster_loss(logits, exp_graph_log_p(A_block, d), cand_logits=cand,
                                      degrees=d if self.plan.degree_weighted else None, alpha_q=self.plan.alpha_q)
        return record_heads(self, mod, losses)


def record_heads(objective, mod, losses):
    """Keep each active head's loss of this step; return the mean over them for the optimiser.

    The mean, not the sum, over the heads: callbacks see a loss on one head's scale that does
    not jump when restarts are dropped (Adam is invariant to the factor, up to eps).
    """
    row = np.full(objective.n_init, np.nan)
    row[getattr(mod, "active", slice(None))] = losses.detach().cpu().numpy()
    objective.per_head.append(row)
    return losses.mean()


def train_heads(module, objective, *, n_samples, plan, est, seed):
    """Train the restart heads through the Trainer, pruning them on their recent loss.

    Returns the index of the kept head, the (iterations, n_init) loss history (NaN once a head
    stopped) and the Trainer.
    """
    schedule = pruning_schedule(est.n_init, est.max_iter)

    def prune(trainer, loss):
        keep = schedule.get(trainer.n_iter)  # iterations done, 1-based
        if keep is not None:
            window = np.array(objective.per_head[-PRUNE_WINDOW:])[:, module.active].mean(axis=0)
            kept = np.asarray(module.active)[np.argsort(window, kind="stable")[:keep]]
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
    history = np.array(objective.per_head)
    tail = max(1, min(100, len(history) // 4))
    final = np.array([last_mean(history[:, r], tail if r in module.active else PRUNE_WINDOW)
                      for r in range(est.n_init)])
    best = int(module.active[np.argmin(final[module.active])])
    return best, history, final, trainer


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
def forward_block_loss(P, logits, block, *, alpha, alpha_q, degrees=None, include_self=False):
    """Forward rows: exact cluster-kernel loss over consecutive blocks of ``block`` samples.

    Each block takes the rows of ``P`` restricted to its columns, renormalised (anchors left
    without positives in their block do not count); the result is the mean over anchors.
    Exactly the row's loss on all samples when ``n_samples <= block``. Float64.
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)
    n = logits.shape[0]
    rows, cols, vals, bounds = diagonal_blocks(P, block)
    rows_t, cols_t, vals_t = torch.as_tensor(rows), torch.as_tensor(cols), torch.as_tensor(vals)
    total, count = 0.0, 0
    for k, s in enumerate(range(0, n, block)):
        e, lo, hi = min(n, s + block), bounds[k], bounds[k + 1]
        if e - s < 2 or hi == lo:
            continue
        d = None if degrees is None else torch.as_tensor(degrees[s:e], dtype=torch.float64)
        with torch.no_grad():
            loss = cluster_kernel_loss(
                logits[None, s:e], rows_t[lo:hi] - s, cols_t[lo:hi] - s, vals_t[lo:hi],
                alpha=alpha, alpha_q=alpha_q, degrees=d, include_self=include_self,
            )
        rows_with_mass = int(np.count_nonzero(np.diff(rows[lo:hi])) + 1)
        total += float(loss[0]) * rows_with_mass
        count += rows_with_mass
    return total / max(count, 1)


def diagonal_blocks(P, block):
    """The entries of ``P`` inside its diagonal blocks of ``block`` rows, each block's rows renormalised.

    Returns ``(rows, cols, vals, bounds)``: int64 global indices and float64 values ordered by
    row, the entries of block k (rows and columns in ``[k block, (k + 1) block)``) at
    ``bounds[k]:bounds[k + 1]``. Each block's rows are what ``normalize_rows(P[idx][:, idx])``
    gives (rows without entries in their block stay empty), found in one pass over ``P``.
    """
    P = sp.csr_matrix(P)
    n = P.shape[0]
    # whole blocks at a time, straight from the CSR rows (no COO copy of P: at a million points
    # the int64 edge lists of all of P cost several GiB): about a million entries per step
    step = block * max(1, (1 << 20) // max(1, block * (P.nnz // n + 1)))
    parts = []
    for s in range(0, n, step):
        e = min(n, s + step)
        a, b = P.indptr[s], P.indptr[e]
        r = np.repeat(np.arange(s, e, dtype=np.int64), np.diff(P.indptr[s : e + 1]))
        c = P.indices[a:b].astype(np.int64)
        keep = r // block == c // block
        parts.append((r[keep], c[keep], P.data[a:b][keep].astype(np.float64)))
    r, c, v = (np.concatenate([part[i] for part in parts]) for i in range(3))
    sums = np.bincount(r, weights=v, minlength=n)
    inv = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    bounds = np.searchsorted(r, np.arange(0, P.shape[0] + block, block))
    return r, c, inv[r] * v, bounds


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
