"""Helpers of ICONClustering: restart heads, centre scores, k-means++ seeding, the Lloyd polish
and the restart-pruning schedule. No estimator logic and no objective maths (see
:mod:`skicon.objectives._cluster`)."""

import copy

import numpy as np
import torch
from torch import nn

from ._utils import as_tensor

#: Restarts are first compared after this many steps (see :func:`pruning_schedule`).
PRUNE_MIN_STEP = 100


# ---------------------------------------------------------------------------------------------
# Restart heads trained side by side
# ---------------------------------------------------------------------------------------------
class Heads(nn.Module):
    """R independent assignment heads trained side by side (restarts); output (R', m, C).

    Only the R' heads still in ``active`` (all at first; see :meth:`keep`) are evaluated.
    """

    #: Under torch.distributed (:mod:`skicon._distributed`): the rows are the outputs' axis 1, and
    #: pruned heads leave parameters without a gradient, which DDP must look for.
    batch_axis = 1
    ddp_find_unused_parameters = True

    def __init__(self, heads, n_used=None):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.active = list(range(len(heads)))
        self.register_buffer("unused", unused_outputs(heads, n_used), persistent=False)

    def keep(self, indices):
        """Evaluate only the heads ``indices`` (original numbering) from now on."""
        self.active = sorted(int(i) for i in indices)

    def forward(self, x):
        return mask_unused(torch.stack([self.heads[r](x) for r in self.active]), self.unused, self.active)

    def head(self, r):
        """The r-th head as a standalone module."""
        return self.heads[r]


class FusedHeads(nn.Module):
    """R copies of a Linear / elementwise-activation stack evaluated as batched matmuls.

    The same maths as running the R modules one after the other, but one kernel call per
    layer, which matters on small CPUs. ``head(r)`` returns the r-th module with its trained
    weights. After :meth:`keep`, only the kept heads are evaluated (their weights are gathered
    from the stacked parameters, so the optimiser's parameters never change shape).
    """

    #: As :class:`Heads` (``template`` holds parameters that never get a gradient).
    batch_axis = 1
    ddp_find_unused_parameters = True

    def __init__(self, heads, n_used=None):
        super().__init__()
        self.template = copy.deepcopy(heads[0])
        self.register_buffer("unused", unused_outputs(heads, n_used), persistent=False)
        self.kinds = []
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer_idx, layer in enumerate(layers_of(heads[0])):
            if isinstance(layer, nn.Linear):
                self.kinds.append(("linear", len(self.weights)))
                self.weights.append(nn.Parameter(torch.stack([layers_of(h)[layer_idx].weight.detach() for h in heads])))
                self.biases.append(nn.Parameter(torch.stack([layers_of(h)[layer_idx].bias.detach() for h in heads])))
            else:
                self.kinds.append(("act", layer))
        self.active = list(range(len(heads)))
        self._index = None  # None while every head is active: no gather

    def keep(self, indices):
        """Evaluate only the heads ``indices`` (original numbering) from now on."""
        self.active = sorted(int(i) for i in indices)
        self._index = torch.as_tensor(self.active, device=self.weights[0].device)

    @staticmethod
    def supports(module):
        """Whether ``module`` is a Linear or a Sequential of biased Linear and activation layers."""
        layers = layers_of(module)
        ok_act = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Identity)
        return layers is not None and all(
            (isinstance(m, nn.Linear) and m.bias is not None) or isinstance(m, ok_act) for m in layers
        )

    def forward(self, x):
        h = x.unsqueeze(0)
        for kind, item in self.kinds:
            if kind == "linear":
                w, b = self.weights[item], self.biases[item]
                if self._index is not None:
                    w, b = w[self._index], b[self._index]
                h = torch.baddbmm(b[:, None, :], h.expand(w.shape[0], -1, -1), w.transpose(1, 2))
            else:
                h = item(h)
        return mask_unused(h, self.unused, self.active)

    def head(self, r):
        """The r-th head as a standalone module."""
        module = copy.deepcopy(self.template)
        with torch.no_grad():
            for (kind, item), layer in zip(self.kinds, layers_of(module)):
                if kind == "linear":
                    layer.weight.copy_(self.weights[item][r])
                    layer.bias.copy_(self.biases[item][r])
        return module.to(self.weights[0].device)


#: The logit of an output a head does not use (:func:`mask_unused`): its softmax is exactly 0 in
#: float32 and float64, and its log-softmax stays finite.
UNUSED_LOGIT = -1e4


def unused_outputs(heads, n_used):
    """(R, C) bool: which outputs of each head are unused (head r uses its first ``n_used[r]`` of
    ``C = max(n_used)`` outputs); None when every head uses all of them."""
    if n_used is None:
        return None
    if len(n_used) != len(heads):
        raise ValueError(f"n_used has {len(n_used)} entries for {len(heads)} heads.")
    mask = torch.arange(max(n_used))[None, :] >= torch.as_tensor(n_used)[:, None]
    return mask if bool(mask.any()) else None


def mask_unused(logits, unused, active):
    """``logits`` (R', m, C) of the ``active`` heads with their unused outputs at
    :data:`UNUSED_LOGIT`: restarts of different cluster counts trained side by side (the
    overclustering factors of ICONClustering). The masked outputs get no gradient, so their
    weights never move (Adam's step of a zero gradient is zero)."""
    if unused is None:
        return logits
    return logits.masked_fill(unused[active][:, None, :], UNUSED_LOGIT)


def layers_of(module):
    if isinstance(module, nn.Linear):
        return [module]
    if isinstance(module, nn.Sequential):
        return list(module)
    return None


class MergedHead(nn.Module):
    """A head whose clusters are groups of another head's: logits ``log sum_{c in g} exp(z_c)``.

    The softmax of the merged logits is the sum of the head's assignments over each group, so
    the merged model is the same probabilistic clustering with clusters joined
    (:func:`~skicon._cluster_train.merge_clusters` chooses the groups).
    """

    def __init__(self, head, groups):
        super().__init__()
        self.head = head
        self.groups = [[int(c) for c in g] for g in groups]

    def forward(self, x):
        return merge_logits(self.head(x), self.groups)


class ConsensusHead(nn.Module):
    """Independent fits combined: logits ``log (1/E) sum_e softmax(f_e(x))[order_e]``.

    Each head's clusters are taken in the order ``orders[e]`` (``orders[e][c]`` is head e's
    cluster matched to cluster c of the first head, :func:`match_clusters`), and the
    assignments are averaged: a soft vote of the ``E`` fits, whose softmax is that mean.
    """

    def __init__(self, heads, orders):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.orders = [[int(c) for c in order] for order in orders]

    def forward(self, x):
        votes = [torch.log_softmax(head(x), dim=-1)[..., order] for head, order in zip(self.heads, self.orders)]
        return torch.logsumexp(torch.stack(votes), dim=0) - float(np.log(len(votes)))


def match_clusters(reference, labels, k):
    """``order`` with ``order[c]`` the cluster of ``labels`` matched to cluster c of ``reference``.

    The one-to-one matching of the k clusters that shares the most samples (the Hungarian
    algorithm on the k x k contingency table of the two labellings, labels in ``range(k)``).
    Not :func:`skicon.metrics.hungarian_matching`: that one matches only the labels present,
    while a head's k outputs need a whole permutation, its empty clusters included.
    """
    from scipy.optimize import linear_sum_assignment

    table = np.zeros((k, k))
    np.add.at(table, (np.asarray(reference), np.asarray(labels)), 1.0)
    rows, cols = linear_sum_assignment(table, maximize=True)
    order = np.empty(k, dtype=int)
    order[rows] = cols
    return order


def merge_logits(z, groups):
    """``log sum_{c in g} exp(z_c)`` for each group ``g`` (torch), over the last axis."""
    return torch.stack([torch.logsumexp(z[..., g], dim=-1) for g in groups], dim=-1)


class LogitTables(nn.Module):
    """R free tables of assignment logits, one row per sample: the "kmeans" relaxation's heads.

    ``forward()`` returns all of them, shape (R, n_samples, n_clusters).
    """

    def __init__(self, init):
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(init).clone())

    def forward(self, index=None):
        return self.weight


class CenterScores(nn.Module):
    """Logits of a Gaussian mixture with shared isotropic width: -||x - mu_c||^2 / (2 sigma^2).

    Computed in the input's dtype from elementwise differences (no ``|x|^2 - 2 x.mu + |mu|^2``
    cancellation), so that float64 input gives exactly the float64 nearest-centre order.
    """

    def __init__(self, centers, sigma2):
        super().__init__()
        self.register_buffer("centers", torch.as_tensor(np.asarray(centers, dtype=np.float64)))
        self.sigma2 = float(sigma2)

    def forward(self, x):
        return -center_sqdist(x, self.centers.to(x)) / (2.0 * self.sigma2)


def center_sqdist(X, C, chunk=2048):
    """Squared distances between the rows of ``X`` and a few centres ``C``, elementwise.

    ``sum_f (x_f - c_f)^2`` in chunks of rows (numpy or torch, the input's dtype): the exact
    float64 distances that labels and inertia are defined by, even far from the origin.
    """
    rows = []
    for s in range(0, X.shape[0], chunk):
        diff = X[s : s + chunk, None, :] - C[None, :, :]
        rows.append((diff * diff).sum(-1))
    if isinstance(X, torch.Tensor):
        return torch.cat(rows) if rows else X.new_zeros((0, C.shape[0]))
    return np.concatenate(rows) if rows else np.zeros((0, C.shape[0]))


# ---------------------------------------------------------------------------------------------
# k-means: seeding and the exact minimisation step
# ---------------------------------------------------------------------------------------------
def kmeans_pp(X, k, rng, n_trials=1):
    """k-means++ seeding: centers drawn with probability proportional to D(x)^2.

    With ``n_trials > 1``, the greedy variant: each step draws ``n_trials`` candidates and keeps
    the one that most lowers the sum of D(x)^2 (scikit-learn's KMeans uses ``2 + log k``).
    """
    n = X.shape[0]
    centers = [X[rng.randint(n)]]
    d2 = ((X - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:
            cand = rng.randint(n, size=n_trials)
        else:
            cand = rng.choice(n, size=n_trials, p=d2 / total)
        best_i, best_d2 = None, None
        for i in cand:
            trial = np.minimum(d2, ((X - X[i]) ** 2).sum(1))
            if best_d2 is None or trial.sum() < best_d2.sum():
                best_i, best_d2 = i, trial
        centers.append(X[best_i])
        d2 = best_d2
    return np.array(centers)


def sqdist(X, C):
    """Squared distances by the expansion ``|x|^2 - 2 x.c + |c|^2`` (fast; float64 only)."""
    return np.maximum((X * X).sum(1)[:, None] - 2 * X @ C.T + (C * C).sum(1)[None, :], 0.0)


def lloyd_polish(X, centers, max_iter=300):
    """Exact alternating minimisation of the k-means objective from ``centers``.

    Hard assignment to the closest centre, then centres as the means of their members, until
    the assignment stops changing: each step cannot increase the objective. An emptied cluster
    takes the point farthest from its centre. Returns ``(inertia, labels, centers)`` with the
    labels and inertia of the final centres in exact float64 distances (:func:`center_sqdist`).
    """
    X = np.asarray(X, dtype=np.float64)
    centers = np.array(centers, dtype=np.float64)
    labels = None
    for _ in range(max_iter):
        new = sqdist(X, centers).argmin(1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for c in range(centers.shape[0]):
            members = labels == c
            if members.any():
                centers[c] = X[members].mean(0)
            else:
                far = sqdist(X, centers)[np.arange(len(X)), labels].argmax()
                centers[c] = X[far]
    d2 = center_sqdist(X, centers)
    labels = d2.argmin(1)
    return float(d2[np.arange(len(X)), labels].sum()), labels, centers


# ---------------------------------------------------------------------------------------------
# Initial assignments: k-means++ and Lloyd steps on each head's own features
# ---------------------------------------------------------------------------------------------
#: Samples on which a head's initial centres are computed (a uniform subsample above it).
INIT_SAMPLE = 4096
#: Lloyd steps of the initial centres after the k-means++ seeding.
INIT_LLOYD = 10
#: Temperature of the initial logits in units of the mean squared distance to the nearest centre.
INIT_SOFTNESS = 1.0
#: The restarts that :func:`seed_heads` starts (the others keep their random initialisation).
SEEDED_HEADS = slice(0, None, 2)


def seed_heads(heads, Xs, k, rng):
    """Start each head at a k-means assignment of its own features (in place).

    The head's last linear layer reads features ``h`` (the input for a linear head, the hidden
    layer for an MLP, at their random initialisation). Centres ``mu_c`` from greedy k-means++ and
    :data:`INIT_LLOYD` Lloyd steps on ``h`` (each head its own seeding) define the
    nearest-centre logits ``-||h - mu_c||^2 / T``, which are linear in ``h`` up to a per-row
    constant: weights ``2 mu_c / T`` and biases ``-||mu_c||^2 / T``. ``T`` is the mean squared
    distance to the nearest centre, so the initial assignment is soft where the clusters
    overlap and near hard where they are well separated. Without it, a random head starts with
    clusters that no sample prefers; they stay empty while two groups share one cluster (on
    10 well-separated blobs most restarts ended with 9 clusters). A head whose last layer is not
    a biased ``nn.Linear`` (a user factory) is left as built.

    Parameters
    ----------
    heads : list of torch.nn.Module
        Linear layers or Sequentials ending in one, as built by :func:`~skicon.mappers.make_mapper`.
    Xs : ndarray of shape (n_samples, n_features)
        The standardised training data the heads read.
    k : int or list of int
        Number of clusters of each head (all heads alike for an int): its first ``k``
        outputs are seeded; the others are left as built (unused, see :func:`mask_unused`).
    rng : numpy.random.RandomState
        Seeding and subsampling.

    Returns
    -------
    list of bool
        Whether each head was seeded.
    """
    n = Xs.shape[0]
    sample = rng.choice(n, INIT_SAMPLE, replace=False) if n > INIT_SAMPLE else np.arange(n)
    X_sample = torch.as_tensor(np.asarray(Xs[sample], dtype=np.float32))
    done = []
    ks = [k] * len(heads) if np.isscalar(k) else list(k)
    for head, k in zip(heads, ks):
        layers = layers_of(head)
        last = None if not layers else layers[-1]
        if not isinstance(last, nn.Linear) or last.bias is None or last.out_features < k:
            done.append(False)
            continue
        with torch.no_grad():
            H = X_sample
            for layer in layers[:-1]:
                H = layer(H)
            H = H.double().numpy()
            centers = kmeans_pp(H, k, rng, n_trials=2 + int(np.log(k)))
            for _ in range(INIT_LLOYD):
                labels = sqdist(H, centers).argmin(1)
                for c in range(k):
                    if (labels == c).any():
                        centers[c] = H[labels == c].mean(0)
            seat_centres(last, H, centers, INIT_SOFTNESS)
        done.append(True)
    return done


def seat_centres(layer, H, centers, softness):
    """Set ``layer``'s first ``len(centers)`` outputs to the nearest-centre logits of ``H``.

    ``-||h - mu_c||^2 / T`` is linear in ``h`` up to a per-row constant: weights ``2 mu_c / T``,
    biases ``-||mu_c||^2 / T``, with ``T = softness x`` the mean squared distance of ``H``'s rows
    to their nearest centre (in place, under ``no_grad``).
    """
    with torch.no_grad():
        temperature = softness * max(float(sqdist(H, centers).min(1).mean()), 1e-12)
        k = len(centers)
        layer.weight[:k].copy_(torch.as_tensor(2.0 * centers / temperature, dtype=layer.weight.dtype))
        layer.bias[:k].copy_(torch.as_tensor(-(centers * centers).sum(1) / temperature, dtype=layer.bias.dtype))


#: Temperature of the polished head's restarted logits (:func:`restart_last_layers`), in units of
#: the mean squared distance to the nearest centre: sharper than a restart's seeding, since the
#: clusters are the kept head's own.
POLISH_SOFTNESS = 0.5


def restart_last_layers(head, Xs, starts, k, chunk=8192):
    """Copies of ``head`` whose last layer is new and seated at the centres of each of ``starts``.

    For each hard labelling in ``starts``, the layers before the last are copied with their
    trained weights, and a new last layer (``k`` outputs) gives the nearest-centre logits of the
    features it reads (the hidden layer of an MLP, the input of a linear head) around the
    centres of the ``k`` clusters (:func:`seat_centres`, :data:`POLISH_SOFTNESS`); the features
    of ``Xs`` are computed once for all. The starts of the final polish of ICONClustering
    (:func:`~skicon._cluster_train.polish_head`). Returns one copy per labelling: None for a
    labelling with an empty cluster, and for every one when the head's last layer is not a
    biased ``nn.Linear`` (a table, a user factory of another shape).
    """
    layers = layers_of(head)
    last = None if not layers else layers[-1]
    starts = [np.asarray(labels) for labels in starts]
    usable = [np.bincount(labels, minlength=k).min() > 0 for labels in starts]
    if not isinstance(last, nn.Linear) or last.bias is None or not any(usable):
        return [None] * len(starts)
    device = last.weight.device
    with torch.no_grad():
        features = copy.deepcopy(nn.Sequential(*layers[:-1])).eval()  # eval mode without touching the head
        X = as_tensor(Xs, dtype=last.weight.dtype, device=device)  # a worker's Xs is a read-only memmap
        H = torch.cat([features(X[s : s + chunk]) for s in range(0, X.shape[0], chunk)]).double().cpu().numpy()
    copies = []
    for labels, ok in zip(starts, usable):
        if not ok:
            copies.append(None)
            continue
        body = [copy.deepcopy(layer) for layer in layers[:-1]]
        new = nn.Linear(last.in_features, k).to(device=device, dtype=last.weight.dtype)
        seat_centres(new, H, np.stack([H[labels == c].mean(0) for c in range(k)]), POLISH_SOFTNESS)
        copies.append(nn.Sequential(*body, new) if body else new)
    return copies


# ---------------------------------------------------------------------------------------------
# Restarts
# ---------------------------------------------------------------------------------------------
def pruning_schedule(n_init, max_iter):
    """``{iteration: heads kept}``: halve the restarts at 1/4 and 1/2 of the steps, never below two.

    The key is the (1-based) number of iterations done when the Trainer's hook prunes: the
    restarts trained for the first ``key`` steps are scored on the selection sample
    (:class:`~skicon._cluster_train.SelectionSet`) and the worse ones stop. Halving twice trains
    half the head-steps of keeping every head. No pruning before :data:`PRUNE_MIN_STEP` steps:
    an earlier version that pruned at a quarter of any budget kept the wrong head in a 60-step
    fit of six blobs.

    Pruning is a bet that early rank predicts the final one, and it only partly does: with 32
    heads trained 400 steps on digits (6 seeds), the head with the lowest final selection loss
    ranked 0-14th of 32 at step 100 and 0-10th at step 300. Keeping every head to the end
    (``n_init`` restarts at full cost) is what made digits stable (see ``n_init``).
    """
    schedule, heads = {}, int(n_init)
    for fraction in (0.25, 0.5):
        step, keep = int(max_iter * fraction), max(2, heads // 2)
        if step >= PRUNE_MIN_STEP and keep < heads:
            schedule[step] = keep
            heads = keep
    return schedule


def softmax(z):
    """Row-wise softmax of a numpy array."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
