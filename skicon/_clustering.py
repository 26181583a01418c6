"""ICONClustering: k-means, spectral clustering, normalized cuts, MI clustering and the paper's
InfoNCE clustering as choices of p and q in one estimator.

Every method learns soft assignments ``phi_ic = softmax(f(x_i))_c`` and compares the learned
"shared cluster likelihood" kernel (Theorems 8-11)

    q(j|i) = sum_c phi_ic phi_jc / sum_k phi_kc

with a supervisory neighbourhood p(j|i):

* ``"infonce"`` (Section 3.3 / Section 4): p uniform over the k nearest neighbours, propagated by
  short walks on the KNN graph (plus augmented views when ``augment`` is given), debiased on both
  sides; forward KL; optional EMA teacher for the candidate side.
* ``"mi"`` (Theorem 10): p uniform over the k nearest neighbours, no propagation or debiasing.
* ``"ncut"`` (Theorem 11): p the random walk D^-1 A on the symmetric KNN graph, q the
  degree-weighted cluster kernel (forward KL on the sparse graph; see the class Notes).
* ``"kmeans"`` (Theorems 8-9): reverse KL against a Gaussian p on the data, in its sigma -> 0
  limit, which is the probabilistic k-means objective, polished with exact assignment steps.
* ``"spectral"`` (Corollary 5): the k-means row on the spectral embedding of the KNN graph.
"""

import copy
import numbers

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ._training import Trainer, batched_forward, check_callbacks
from ._utils import resolve_device, seed_from_random_state
from .kernels import ClusterKernel, Debiased, Kernel, Propagated, UniformKNN, normalize_rows
from .kernels._base import drop_diagonal
from .mappers import MAPPERS, make_mapper
from .neighbors import knn_graph

__all__ = ["ICONClustering", "cluster_kernel_loss", "probabilistic_kmeans_loss"]

#: Methods accepted by ``ICONClustering(method=...)``.
CLUSTERING_METHODS = ("infonce", "mi", "ncut", "kmeans", "spectral")

#: Restarts are first compared after this many steps, on their mean loss over the last
#: ``_PRUNE_WINDOW`` steps (see :func:`_pruning_schedule`).
_PRUNE_MIN_STEP = 100
_PRUNE_WINDOW = 50

#: Neighbours used when ``n_neighbors="auto"``: small k for the contrastive rows (the paper uses
#: k=3 with walks), the usual 10 for graph-cut rows whose graph must stay connected.
_AUTO_NEIGHBORS = {"infonce": 10, "mi": 10, "ncut": 10, "spectral": 10, "kmeans": 10}


# ---------------------------------------------------------------------------------------------
# Pure loss functions
# ---------------------------------------------------------------------------------------------
def cluster_kernel_loss(logits, rows, cols, vals, *, alpha=0.0, alpha_q=0.0, cand_logits=None,
                        negatives=None, degrees=None):
    """Forward I-Con loss of the (debiased) cluster kernel against a sparse supervisory block.

    For each of ``R`` independent heads, with ``phi = softmax(logits)`` over clusters and the
    candidate-side assignments ``psi = softmax(cand_logits)`` (an EMA teacher, or ``phi``),

    * ``q(j|i) = sum_c phi_ic w_jc / (1 - sum_c phi_ic w_ic)`` over ``j != i``, with
      ``w_jc = psi_jc d_j / sum_k psi_kc d_k`` (``d = 1`` unless ``degrees`` is given), i.e.
      :class:`~skicon.kernels.ClusterKernel` with the self pair excluded and renormalised;
    * ``q~ = (1 - alpha_q) q + alpha_q / (m - 1)`` and ``p~ = (1 - alpha) p + alpha / (m - 1)``
      (:class:`~skicon.kernels.Debiased` on both sides, m the batch size);
    * the loss is ``1/m sum_i KL(p~(.|i) || q~(.|i))``.

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
    psi = phi if cand_logits is None else _softmax_last(cand_logits)
    if degrees is not None:
        psi = psi * degrees.to(psi)[None, :, None]
    tiny = torch.finfo(phi.dtype).tiny
    w = psi / psi.sum(dim=1, keepdim=True).clamp_min(tiny)
    q_self = (phi * w).sum(dim=2)
    # log q~ = log((1 - alpha_q) q_raw / (1 - q_self) + alpha_q / (m - 1)); q_raw clamped at
    # tiny so that alpha_q = 0 stays finite. One log per pair (no logaddexp): this runs every step.
    inv_norm = (1.0 - alpha_q) / (1.0 - q_self).clamp_min(torch.finfo(phi.dtype).eps)
    eps = alpha_q / (m - 1)

    def log_q_tilde(scaled_q):
        # scaled_q = (1 - alpha_q) q_raw / (1 - q_self); clamped at tiny only when alpha_q = 0.
        return torch.log(scaled_q + eps) if eps > 0 else torch.log(scaled_q.clamp_min(tiny))

    # Each anchor's row scale folded into phi: one pass less over the pair tensors.
    phi_s = phi * inv_norm[:, :, None]
    q_pos = (phi_s[:, rows] * w[:, cols]).sum(dim=2)
    pos_terms = vals.to(phi)[None, :] * log_q_tilde(q_pos)
    cross_pos = torch.zeros(R, m, dtype=phi.dtype, device=phi.device).index_add(1, rows, pos_terms)
    loss = -(1.0 - alpha) * cross_pos

    entropy = _debiased_entropy(rows, vals.to(phi), m, alpha)
    if alpha > 0:
        cols_u = torch.arange(m, device=phi.device) if negatives is None else negatives
        n_u = cols_u.shape[0]
        log_q_u = log_q_tilde(torch.bmm(phi_s, w[:, cols_u].transpose(1, 2)))
        # Mean over the candidate columns other than the anchor itself: the full row sum minus
        # the self pairs (anchor cols_u[j] in column j), which are few.
        j = torch.arange(n_u, device=phi.device)
        self_terms = log_q_u[:, cols_u, j]
        sum_u = log_q_u.sum(dim=2).index_add(1, cols_u, -self_terms)
        n_valid = torch.full((m,), float(n_u), dtype=phi.dtype, device=phi.device).index_add(
            0, cols_u, -torch.ones(n_u, dtype=phi.dtype, device=phi.device))
        loss = loss - alpha * sum_u / n_valid.clamp_min(1.0)
    has_mass = torch.zeros(m, dtype=torch.bool, device=phi.device)
    has_mass[rows] = True
    per_row = (loss - entropy[None, :]) * has_mass[None, :]
    return per_row.sum(dim=1) / has_mass.sum().clamp_min(1)


def _softmax_last(z):
    """Softmax over the last (small) axis; faster on CPU than ``torch.softmax`` for C ~ 10."""
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values.detach())
    return e / e.sum(dim=-1, keepdim=True)


def _debiased_entropy(rows, vals, m, alpha):
    """Entropy of each row of p~ = (1 - alpha) p + alpha / (m - 1) (constant in the parameters)."""
    u = alpha / (m - 1)
    p_t = (1.0 - alpha) * vals + u
    h = torch.zeros(m, dtype=vals.dtype, device=vals.device)
    h = h.index_add(0, rows, -p_t * torch.log(p_t))
    n_pos = torch.zeros(m, dtype=vals.dtype, device=vals.device).index_add(0, rows, torch.ones_like(vals))
    if alpha > 0:
        h = h - (m - 1 - n_pos) * u * np.log(u)
    return h


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
    phi : torch.Tensor of shape (n_samples, n_clusters)
        Soft assignments (rows sum to one).

    Returns
    -------
    torch.Tensor
        Scalar objective (the k-means inertia for hard assignments).

    Examples
    --------
    >>> import torch
    >>> X = torch.tensor([[0.0], [2.0], [10.0]])
    >>> float(probabilistic_kmeans_loss(X, torch.tensor([[1.0, 0], [1, 0], [0, 1]])))
    2.0
    """
    size = phi.sum(dim=0).clamp_min(torch.finfo(phi.dtype).tiny)
    centers = (phi.T @ X) / size[:, None]
    sq = (X * X).sum(dim=1, keepdim=True) - 2 * X @ centers.T + (centers * centers).sum(dim=1)[None, :]
    return (phi * sq.clamp_min(0)).sum()


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------
class _Heads(nn.Module):
    """R independent assignment heads trained side by side (restarts); output (R', m, C).

    Only the R' heads still in ``active`` (all at first; see :meth:`keep`) are evaluated.
    """

    def __init__(self, heads):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.active = list(range(len(heads)))

    def keep(self, indices):
        """Evaluate only the heads ``indices`` (original numbering) from now on."""
        self.active = sorted(int(i) for i in indices)

    def forward(self, x):
        return torch.stack([self.heads[r](x) for r in self.active])

    def head(self, r):
        """The r-th head as a standalone module."""
        return self.heads[r]


class _FusedHeads(nn.Module):
    """R copies of a Linear / elementwise-activation stack evaluated as batched matmuls.

    The same maths as running the R modules one after the other, but one kernel call per
    layer, which matters on small CPUs. ``head(r)`` returns the r-th module with its trained
    weights. After :meth:`keep`, only the kept heads are evaluated (their weights are gathered
    from the stacked parameters, so the optimiser's parameters never change shape).
    """

    def __init__(self, heads):
        super().__init__()
        self.template = copy.deepcopy(heads[0])
        self.kinds = []
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer_idx, layer in enumerate(_layers(heads[0])):
            if isinstance(layer, nn.Linear):
                self.kinds.append(("linear", len(self.weights)))
                self.weights.append(nn.Parameter(torch.stack([_layers(h)[layer_idx].weight.detach() for h in heads])))
                self.biases.append(nn.Parameter(torch.stack([_layers(h)[layer_idx].bias.detach() for h in heads])))
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
        layers = _layers(module)
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
        return h

    def head(self, r):
        """The r-th head as a standalone module."""
        module = copy.deepcopy(self.template)
        with torch.no_grad():
            for (kind, item), layer in zip(self.kinds, _layers(module)):
                if kind == "linear":
                    layer.weight.copy_(self.weights[item][r])
                    layer.bias.copy_(self.biases[item][r])
        return module.to(self.weights[0].device)


def _layers(module):
    if isinstance(module, nn.Linear):
        return [module]
    if isinstance(module, nn.Sequential):
        return list(module)
    return None


class _CenterScores(nn.Module):
    """Logits of a Gaussian mixture with shared isotropic width: -||x - mu_c||^2 / (2 sigma^2)."""

    def __init__(self, centers, sigma2):
        super().__init__()
        self.register_buffer("centers", torch.as_tensor(centers, dtype=torch.float32))
        self.sigma2 = float(sigma2)

    def forward(self, x):
        return -torch.cdist(x, self.centers.to(x)).pow(2) / (2.0 * self.sigma2)


def _kmeans_pp(X, k, rng):
    """k-means++ seeding: centers drawn with probability proportional to D(x)^2."""
    n = X.shape[0]
    centers = [X[rng.randint(n)]]
    d2 = ((X - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        i = rng.randint(n) if total <= 0 else rng.choice(n, p=d2 / total)
        centers.append(X[i])
        d2 = np.minimum(d2, ((X - X[i]) ** 2).sum(1))
    return np.array(centers)


def _sqdist(X, C):
    return np.maximum((X * X).sum(1)[:, None] - 2 * X @ C.T + (C * C).sum(1)[None, :], 0.0)


def _icon_kmeans(X, k, *, n_init, n_relax, learning_rate, rng, max_polish=300):
    """Minimise the probabilistic k-means I-Con objective from ``n_init`` seedings.

    Each run starts from k-means++ seeds, relaxes soft assignments (a table of logits) by Adam on
    :func:`probabilistic_kmeans_loss`, then polishes with exact alternating steps of the same
    objective (hard assignment to the closest centre, centres as means), which cannot increase
    it. The run with the lowest objective wins.
    """
    Xt = torch.tensor(np.array(X, dtype=np.float64))
    scale = max(float(X.var(axis=0).sum()), 1e-12)
    best = None
    for _ in range(n_init):
        centers = _kmeans_pp(X, k, rng)
        if n_relax > 0:
            logits = torch.tensor(-_sqdist(X, centers) / scale * k, requires_grad=True)
            opt = torch.optim.Adam([logits], lr=learning_rate)
            for _ in range(n_relax):
                opt.zero_grad()
                loss = probabilistic_kmeans_loss(Xt, torch.softmax(logits, dim=1))
                loss.backward()
                opt.step()
            phi = torch.softmax(logits.detach(), dim=1).numpy()
            centers = (phi.T @ X) / np.maximum(phi.sum(0), 1e-12)[:, None]
        labels = None
        for _ in range(max_polish):
            new = _sqdist(X, centers).argmin(1)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            for c in range(k):
                members = labels == c
                # An emptied cluster takes the point farthest from its centre (objective drops).
                if members.any():
                    centers[c] = X[members].mean(0)
                else:
                    far = _sqdist(X, centers)[np.arange(len(X)), labels].argmax()
                    centers[c] = X[far]
        labels = _sqdist(X, centers).argmin(1)
        inertia = float(_sqdist(X, centers)[np.arange(len(X)), labels].sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centers.copy())
    return best


# ---------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------
class ICONClustering(ClusterMixin, TransformerMixin, BaseEstimator):
    """Clustering by I-Con: align the shared-cluster-likelihood kernel with a neighbourhood.

    The learned distribution is the cluster kernel of probabilistic k-means,
    ``q(j|i) = sum_c phi_ic phi_jc / sum_k phi_kc`` with soft assignments
    ``phi_i = softmax(f(x_i))`` produced by a head ``f`` (an MLP by default). The supervisory
    distribution p and the divergence depend on ``method`` (see Notes). The default,
    ``method="infonce"``, is the paper's InfoNCE clustering: p uniform over the k nearest
    neighbours plus short walks on the KNN graph (and augmented views), debiased on both sides,
    optionally with an EMA teacher. The loss balances cluster sizes by itself: no entropy or
    size regulariser is used.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters (outputs of the head). Clusters left empty on the training data are
        dropped, so ``n_clusters_`` may be smaller.
    method : {"infonce", "mi", "ncut", "kmeans", "spectral"}, default="infonce"
        Row of the I-Con table to fit; see Notes.
    p : Kernel, default=None
        Explicit supervisory kernel (e.g. ``Propagated(UniformKNN(5), 2)``, possibly wrapped in
        :class:`~skicon.kernels.Debiased`), replacing the one built from ``n_neighbors``,
        ``walk_length`` and ``alpha``. Only with the neighbourhood methods
        ("infonce", "mi", "ncut").
    q : Kernel, default=None
        Explicit learned kernel: :class:`~skicon.kernels.ClusterKernel`, possibly wrapped in
        :class:`~skicon.kernels.Debiased`; replaces the one built from ``alpha_q``.
    n_neighbors : int or "auto", default="auto"
        k of the KNN graph: 10 for every method ("infonce" with k = 10 and one walk step
        reached a mean Hungarian accuracy of 0.788 on MNIST-5k over 5 seeds, against 0.755
        with k = 5, in 600 steps at learning rate 1e-2 without restart pruning).
    walk_length : int, default=2
        Longest walk s of the neighbour propagation p ∝ P + P^2 + ... + P^s ("infonce";
        ``walk_length=1`` is plain KNN, 2 adds one walk step on the KNN graph).
    alpha : float in [0, 1), default=0.3
        Debiasing of p: p~ = (1 - alpha) p + alpha / N ("infonce").
    alpha_q : float in [0, 1), default=0.3
        Debiasing of q in log space: q~ = (1 - alpha_q) q + alpha_q / N ("infonce").
    ema : float in [0, 1) or None, default=None
        Momentum of an EMA teacher that provides the candidate-side assignments.
    mapper : {"mlp", "linear", "table"} or callable, default="mlp"
        The head f: an MLP with one hidden layer (``hidden_layer_sizes``), a linear map of the
        preprocessed features (the paper's head on pretrained features), a free table of logits
        per training sample (non-parametric; new points are assigned through their training
        neighbours), or a factory ``factory(n_features, n_clusters) -> torch.nn.Module``.
    hidden_layer_sizes : tuple of int, default=(64,)
        Hidden sizes of ``mapper="mlp"``; 64 units matched 128 within the spread over seeds
        (see Notes) in 0.72 of the fit time on digits.
    augment : callable, default=None
        ``augment(X_batch, random_state) -> X_view`` returning a perturbed copy of a float32
        batch (same shape, finite). Each anchor's view is an extra positive ("infonce", "mi").
    n_init : int, default=8
        Independent restarts. Neighbourhood methods train ``n_init`` heads side by side on the
        same batches. At a quarter and at half of ``max_iter`` (not before step 100) the worse
        half of them by mean loss over the last 50 steps stops training, down to two; of those
        trained to the end, the one with the lowest final loss is kept (an unsupervised choice).
        "kmeans"/"spectral" keep the seeding with the lowest objective.
    batch_size : int, default=256
        Anchors per step; each anchor brings a sampled positive, so a batch has 2x (3x with
        ``augment``) this many points.
    n_negatives : int or None, default=64
        Candidate columns sampled per step to estimate the uniform (debiasing) part of the loss
        without bias; None uses every pair of the batch (exact, O(batch^2)).
    max_iter : int, default=400
        Optimisation steps (neighbourhood methods) or relaxation steps ("kmeans", "spectral",
        at most 100).
    learning_rate : float, default=2e-2
        Adam learning rate. Together with ``max_iter`` it sets the budget: 400 steps at 2e-2
        (with restart pruning and 64 hidden units) came within the spread over seeds of 600
        steps at 1e-2 on digits and MNIST-5k (see Notes).
    metric : str, default="euclidean"
        Metric of the KNN graph.
    n_components : int or None, default=50
        The data are centred and projected on this many principal directions (None: all
        features) before the KNN graph and the head; the head sees them divided by one global
        scale.
    device : str, default="cpu"
        Torch device ("cpu", "cuda", "auto").
    random_state : int, RandomState instance or None, default=None
        Seed of initialisation, batches and positives; fixed seed gives identical labels on CPU.
    verbose : bool or int, default=False
        Show a tqdm progress bar.
    callbacks : callable or list of callables, default=None
        ``cb(iteration, loss, estimator) -> bool``, where ``loss`` is the mean over the
        restarts still trained; a truthy return stops training.
    n_jobs : int, default=None
        Parallel jobs of the neighbour search.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample, consecutive integers from 0.
    n_clusters_ : int
        Number of non-empty clusters.
    cluster_centers_ : ndarray of shape (n_clusters_, n_features_in_)
        Soft means of the clusters in input space, ``mu_c = sum_i phi_ic x_i / sum_i phi_ic``
        (the centres of Theorem 8; the k-means centres for ``method="kmeans"``).
    loss_curve_ : list of float
        Loss of the selected head at each step (neighbourhood methods), or the objective of the
        selected run ("kmeans", "spectral").
    n_iter_ : int
        Steps run.
    module_ : torch.nn.Module
        The selected head (maps standardised features to cluster logits).
    init_losses_ : ndarray of shape (n_init,)
        Mean loss of each restart over the last steps it was trained (neighbourhood methods):
        the last 100 for those trained to the end, the last 50 before it stopped for the others.
        The kept head has the lowest value among those trained to the end.
    init_n_iter_ : ndarray of shape (n_init,)
        Steps each restart was trained before it stopped (see ``n_init``; neighbourhood
        methods).
    p_ : Kernel
        The supervisory kernel used (neighbourhood methods).
    q_ : Kernel
        The learned kernel used.
    mean_ : ndarray of shape (n_features_in_,)
        Feature means removed before the projection.
    components_ : ndarray of shape (n_components, n_features_in_) or None
        Principal directions the data are projected on (None when not projected).
    scale_ : float
        Global scale dividing the head's input.
    n_features_in_ : int
        Number of input features.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Input feature names, when X has string column names.

    Notes
    -----
    The rows (paper Table 1):

    * ``"infonce"``: p = Debiased(Propagated(UniformKNN(k), s), alpha) (+ augmented views),
      q = Debiased(ClusterKernel, alpha_q), forward KL on batches of anchors and sampled
      positives (Section 3.3; Tables 3-4).
    * ``"mi"``: p = UniformKNN(k), q = ClusterKernel, forward KL (Theorem 10).
    * ``"ncut"``: p = D^-1 A on the symmetric KNN graph A, q = degree-weighted ClusterKernel.
      Theorem 11 pairs this q with exponentiated edge weights over all pairs in the reverse
      direction, which is dense; the sparse forward form used here keeps memory O(n k).
    * ``"kmeans"``: reverse KL against p = Gaussian on the data with the cluster kernel q.
      Theorem 9 shows it equals the probabilistic k-means objective over 2 sigma^2 minus the
      entropy of q; the estimator minimises the sigma -> 0 limit (probabilistic k-means) from
      k-means++ seeds, then polishes with exact alternating assignment/mean steps of the same
      objective.
    * ``"spectral"``: the "kmeans" row on the spectral embedding of the symmetric KNN graph
      (Corollary 5); new points are embedded as the mean embedding of their training neighbours.

    The training budget of the neighbourhood rows (8 restarts halved twice, 400 steps at
    learning rate 2e-2, one hidden layer of 64) was chosen on digits and MNIST-5k, seeds 0-9:
    mean Hungarian accuracy 0.890 ± 0.037 and 0.800 ± 0.020 (mean ± std over seeds), against
    0.904 ± 0.032 and 0.783 ± 0.019 for 8 restarts trained to the end for 600 steps at 1e-2
    with 128 hidden units, in well under half the time (20,000 MNIST-1D points: about 2.1 s
    against 4.6-5.9 s on two CPU cores). A learning rate of 3e-2 was worse (0.725 on MNIST-5k,
    5 seeds).

    The default :meth:`score` is the negative I-Con loss of the fitted model on ``X`` (its own
    KNN graph for the neighbourhood rows; minus the k-means objective per sample for "kmeans"
    and "spectral"), so ``GridSearchCV`` prefers lower loss. Losses under different ``alpha`` are
    on different scales; pass ``scoring="adjusted_rand_score"`` with labels to compare those.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from skicon import ICONClustering
    >>> X, y = make_blobs(300, centers=3, random_state=0)
    >>> est = ICONClustering(n_clusters=3, max_iter=50, n_init=2, random_state=0).fit(X)
    >>> sorted(set(est.labels_.tolist()))
    [0, 1, 2]
    """

    _parameter_constraints = {
        "n_clusters": [Interval(numbers.Integral, 1, None, closed="left")],
        "method": [StrOptions(set(CLUSTERING_METHODS))],
        "p": [None, Kernel],
        "q": [None, Kernel],
        "n_neighbors": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "walk_length": [Interval(numbers.Integral, 1, None, closed="left")],
        "alpha": [Interval(numbers.Real, 0, 1, closed="left")],
        "alpha_q": [Interval(numbers.Real, 0, 1, closed="left")],
        "ema": [None, Interval(numbers.Real, 0, 1, closed="left")],
        "mapper": [StrOptions(set(MAPPERS)), callable],
        "hidden_layer_sizes": [tuple, list, Interval(numbers.Integral, 1, None, closed="left")],
        "augment": [None, callable],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 2, None, closed="left")],
        "n_negatives": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "metric": [str],
        "n_components": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [None, callable, list, tuple],
        "n_jobs": [None, numbers.Integral],
    }

    def __init__(
        self,
        n_clusters=8,
        *,
        method="infonce",
        p=None,
        q=None,
        n_neighbors="auto",
        walk_length=2,
        alpha=0.3,
        alpha_q=0.3,
        ema=None,
        mapper="mlp",
        hidden_layer_sizes=(64,),
        augment=None,
        n_init=8,
        batch_size=256,
        n_negatives=64,
        max_iter=400,
        learning_rate=2e-2,
        metric="euclidean",
        n_components=50,
        device="cpu",
        random_state=None,
        verbose=False,
        callbacks=None,
        n_jobs=None,
    ):
        self.n_clusters = n_clusters
        self.method = method
        self.p = p
        self.q = q
        self.n_neighbors = n_neighbors
        self.walk_length = walk_length
        self.alpha = alpha
        self.alpha_q = alpha_q
        self.ema = ema
        self.mapper = mapper
        self.hidden_layer_sizes = hidden_layer_sizes
        self.augment = augment
        self.n_init = n_init
        self.batch_size = batch_size
        self.n_negatives = n_negatives
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.metric = metric
        self.n_components = n_components
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.n_jobs = n_jobs

    # -- validation and preprocessing ----------------------------------------------------------
    def _validate_X(self, X, reset):
        if sp.issparse(X):
            raise TypeError(
                "ICONClustering does not accept sparse X (the head and neighbour search need dense "
                "features); pass X.toarray() or reduce it first, e.g. with TruncatedSVD."
            )
        return validate_data(
            self, X, reset=reset, dtype=[np.float64, np.float32], ensure_min_samples=2 if reset else 1
        )

    def _resolved_neighbors(self):
        return _AUTO_NEIGHBORS[self.method] if self.n_neighbors == "auto" else int(self.n_neighbors)

    def _standardize(self, X):
        """Head input: centred, projected on the leading principal directions, one global scale."""
        return (self._knn_space(X) / self.scale_).astype(np.float32)

    def _knn_space(self, X):
        """Centred data projected on the leading principal directions (KNN graph and head)."""
        Xc = np.asarray(X, dtype=np.float64) - self.mean_
        if self.components_ is not None:
            Xc = Xc @ self.components_.T
        return Xc

    def _fit_preprocessing(self, X):
        X = np.asarray(X, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        self.components_ = None
        n, d = X.shape
        if self.n_components is not None and d > self.n_components and n > self.n_components:
            from sklearn.utils.extmath import randomized_svd

            _, _, vt = randomized_svd(X - self.mean_, self.n_components, random_state=0)
            self.components_ = vt
        Z = self._knn_space(X)
        # One global factor (not per feature): keeps the relative variance of the directions,
        # so near-constant pixels are not blown up, and puts the head's input at unit scale.
        scale = float(np.sqrt(Z.var(axis=0).mean()))
        self.scale_ = scale if scale > 1e-12 else 1.0

    def _check_kernels(self):
        neighbourhood = self.method in ("infonce", "mi", "ncut")
        if self.p is not None and not neighbourhood:
            raise ValueError(
                f"p can only be set with method='infonce', 'mi' or 'ncut', got method={self.method!r}; "
                "the 'kmeans' and 'spectral' rows fix p to a Gaussian on the data / spectral embedding."
            )
        if self.q is not None:
            inner = self.q
            alpha_q = 0.0
            if isinstance(inner, Debiased):
                alpha_q = float(inner.alpha)
                inner = inner.kernel
            if not isinstance(inner, ClusterKernel):
                raise ValueError(
                    "q must be a skicon.kernels.ClusterKernel, optionally wrapped in Debiased(..., alpha=...): "
                    f"a clusterer learns cluster assignments, got q={self.q!r}."
                )
            if not 0.0 <= alpha_q < 1.0:
                raise ValueError(f"q's debiasing alpha must be in [0, 1), got {alpha_q!r}.")
            return alpha_q, bool(inner.degree_weighted)
        if self.method == "infonce":
            return float(self.alpha_q), False
        return 0.0, self.method == "ncut"

    def _supervisory(self, Xk, random_state):
        """Build p: the sparse matrix of positives and the debiasing weight of p."""
        k = self._resolved_neighbors()
        if self.p is not None:
            kernel = self.p
            alpha = float(kernel.alpha) if isinstance(kernel, Debiased) else 0.0
            P = kernel.conditional(Xk, random_state=random_state, n_jobs=self.n_jobs)
        elif self.method == "infonce":
            kernel = Debiased(Propagated(UniformKNN(k, metric=self.metric), self.walk_length), alpha=self.alpha)
            alpha = float(self.alpha)
            P = kernel.conditional(Xk, random_state=random_state, n_jobs=self.n_jobs)
        elif self.method == "mi":
            kernel = UniformKNN(k, metric=self.metric)
            alpha = 0.0
            P = kernel.conditional(Xk, random_state=random_state, n_jobs=self.n_jobs)
        else:  # ncut: random walk on the symmetric KNN connectivity graph
            kernel = UniformKNN(k, metric=self.metric)
            A = kernel.conditional(Xk, random_state=random_state, n_jobs=self.n_jobs)
            A.data[:] = 1.0
            A = ((A + A.T) * 0.5).tocsr()
            kernel = _GraphOf(A)
            alpha = 0.0
            P = normalize_rows(A)
        P = drop_diagonal(P)  # no self pair
        P.eliminate_zeros()
        P = normalize_rows(P)
        if (np.diff(P.indptr) == 0).any():
            raise ValueError(
                "Some samples have no supervisory neighbour (all duplicates or an empty row of p); "
                "increase n_neighbors or remove duplicated samples."
            )
        return kernel, P, alpha

    # -- fitting -------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the clustering.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (dense, finite).
        y : None
            Ignored.

        Returns
        -------
        self : ICONClustering
            The fitted estimator.
        """
        X = self._validate_X(X, reset=True)
        n = X.shape[0]
        if self.n_clusters > n:
            raise ValueError(
                f"n_clusters={self.n_clusters} is larger than n_samples={n}; use n_clusters <= n_samples."
            )
        check_callbacks(self.callbacks)
        self._device = resolve_device(self.device)
        rng = check_random_state(self.random_state)
        self._fit_preprocessing(X)
        if self.method in ("kmeans", "spectral"):
            self._check_kernels()
            self._fit_centroid_method(X, rng)
        else:
            self._fit_neighbourhood(X, rng)
        self._finish(X)
        return self

    def _fit_neighbourhood(self, X, rng):
        alpha_q, degree_weighted = self._check_kernels()
        n = X.shape[0]
        Xk = self._knn_space(X)
        self.p_, P, alpha = self._supervisory(Xk, seed_from_random_state(rng))
        self.q_ = self.q if self.q is not None else Debiased(ClusterKernel(degree_weighted, include_self=False),
                                                             alpha=alpha_q)
        self._train_P = P
        degrees = None
        if degree_weighted:
            degrees = np.asarray(P.sum(axis=1)).ravel() if self.method != "ncut" else \
                np.asarray(self.p_.affinity.sum(axis=1)).ravel()
        Xs = self._standardize(X)
        table = self.mapper == "table"
        if table and self.augment is not None:
            raise ValueError("augment needs a parametric mapper ('linear', 'mlp' or a factory), not mapper='table'.")
        seed = seed_from_random_state(rng)
        heads = []
        for r in range(self.n_init):
            heads.append(make_mapper(self.mapper, Xs.shape[1], self.n_clusters, n_samples=n,
                                     hidden=self.hidden_layer_sizes, random_state=seed + r))
        module = (_FusedHeads(heads) if _FusedHeads.supports(heads[0]) else _Heads(heads)).to(self._device)
        Xt = torch.as_tensor(Xs, device=self._device)
        sampler = _PositiveSampler(P, np.random.RandomState(seed))
        batch = max(1, min(self.batch_size, n))
        per_head = []
        aug_rng = np.random.RandomState(seed + 1)
        neg_gen = torch.Generator().manual_seed(seed + 2)

        def loss_fn(mod, anchors, teacher):
            a = anchors.numpy()
            pos = sampler.sample(a)
            idx = np.concatenate([a, pos])
            if table:
                inputs = torch.as_tensor(idx, device=self._device)
            else:
                inputs = Xt[torch.as_tensor(idx, device=self._device)]
            b = len(a)
            rows = [np.arange(b), np.arange(b, 2 * b)]
            cols = [np.arange(b, 2 * b), np.arange(b)]
            if self.augment is not None:
                view = self._augmented(X, a, aug_rng)
                inputs = torch.cat([inputs, view])
                idx = np.concatenate([idx, a])
                rows += [np.arange(b), np.arange(2 * b, 3 * b)]
                cols += [np.arange(2 * b, 3 * b), np.arange(b)]
            rows = np.concatenate(rows)
            cols = np.concatenate(cols)
            vals = 1.0 / np.bincount(rows, minlength=len(idx))[rows]
            m = len(idx)
            negatives = None
            if self.n_negatives is not None and self.n_negatives < m - 1:
                negatives = torch.randperm(m, generator=neg_gen)[: self.n_negatives].to(self._device)
            logits = mod(inputs)
            cand = None
            if teacher is not mod:
                with torch.no_grad():
                    cand = teacher(inputs)
            d = None if degrees is None else torch.as_tensor(degrees[idx], dtype=torch.float32, device=self._device)
            losses = cluster_kernel_loss(
                logits, torch.as_tensor(rows, device=self._device), torch.as_tensor(cols, device=self._device),
                torch.as_tensor(vals, dtype=torch.float32, device=self._device),
                alpha=alpha, alpha_q=alpha_q, cand_logits=cand, negatives=negatives, degrees=d,
            )
            row = np.full(self.n_init, np.nan)
            row[module.active] = losses.detach().cpu().numpy()
            per_head.append(row)
            # The mean, not the sum, over the heads: callbacks see a loss on one head's scale that
            # does not jump when restarts are dropped (Adam is invariant to the factor, up to eps).
            return losses.mean()

        schedule = _pruning_schedule(self.n_init, self.max_iter)

        def prune(iteration, loss, estimator):
            keep = schedule.get(iteration + 1)
            if keep is not None:
                window = np.array(per_head[-_PRUNE_WINDOW:])[:, module.active].mean(axis=0)
                kept = np.asarray(module.active)[np.argsort(window, kind="stable")[:keep]]
                module.keep(kept)
                if trainer.teacher is not module:  # the EMA teacher evaluates the same heads
                    trainer.teacher.keep(kept)
            return False

        trainer = Trainer(
            module, loss_fn, n_samples=n, batch_size=batch, n_steps=self.max_iter,
            learning_rate=self.learning_rate, ema=self.ema, device=self._device, random_state=seed,
            callbacks=[prune, *check_callbacks(self.callbacks)], verbose=self.verbose, estimator=self,
            desc="ICONClustering",
        )
        trainer.run()
        history = np.array(per_head)
        tail = max(1, min(100, len(history) // 4))
        final = np.array([_last_mean(history[:, r], tail if r in module.active else _PRUNE_WINDOW)
                          for r in range(self.n_init)])
        best = int(module.active[np.argmin(final[module.active])])
        self.init_losses_ = final
        self.init_n_iter_ = np.isfinite(history).sum(axis=0)
        self.module_ = module.head(best).eval()
        self.loss_curve_ = history[:, best].tolist()
        self.n_iter_ = trainer.n_iter
        if table:
            self._train_logits = batched_forward(self.module_, np.arange(n), device=self._device,
                                                 dtype=torch.long)
            self._train_knn = Xk

    def _augmented(self, X, anchors, rng):
        try:
            view = self.augment(np.asarray(X[anchors], dtype=np.float32), rng)
        except Exception as exc:  # a user callable failing gets named
            raise ValueError(f"augment raised {type(exc).__name__}: {exc}. augment must be a callable "
                             "augment(X_batch, random_state) -> perturbed X_batch.") from exc
        view = np.asarray(view.detach().cpu() if isinstance(view, torch.Tensor) else view)
        if view.shape != (len(anchors), X.shape[1]):
            raise ValueError(
                f"augment must return an array of the batch's shape {(len(anchors), X.shape[1])}, got {view.shape}."
            )
        if not np.issubdtype(view.dtype, np.number) or not np.isfinite(view).all():
            raise ValueError("augment returned non-finite or non-numeric values; it must return a finite float batch.")
        return torch.as_tensor(self._standardize(view), device=self._device)

    def _fit_centroid_method(self, X, rng):
        k = self.n_clusters
        if self.method == "kmeans":
            Z = np.asarray(X, dtype=np.float64)
        else:
            Z = self._spectral_embedding(X, rng)
        inertia, labels, centers = _icon_kmeans(
            Z, k, n_init=self.n_init, n_relax=min(self.max_iter, 100), learning_rate=0.1, rng=rng
        )
        sigma2 = max(inertia / max(1, Z.shape[0] * Z.shape[1]), 1e-12)
        self._embed_centers = centers
        self.module_ = _CenterScores(centers, sigma2)
        self.p_ = None
        self.q_ = ClusterKernel()
        self.loss_curve_ = [inertia]
        self.n_iter_ = min(self.max_iter, 100)
        self.inertia_ = inertia
        self._centroid_labels = labels

    def _spectral_embedding(self, X, rng):
        from sklearn.manifold import spectral_embedding

        Xk = self._knn_space(X)
        k = self._resolved_neighbors()
        A = UniformKNN(k, metric=self.metric).conditional(Xk, random_state=seed_from_random_state(rng),
                                                          n_jobs=self.n_jobs)
        A.data[:] = 1.0
        A = ((A + A.T) * 0.5).tocsr()
        emb = spectral_embedding(A, n_components=self.n_clusters, drop_first=False,
                                 random_state=seed_from_random_state(rng))
        self._train_knn = Xk
        self._train_embedding = emb
        self.p_ = _GraphOf(A)
        return emb

    def _finish(self, X):
        logits = self._logits(X, training=True)
        used = np.unique(logits.argmax(axis=1))
        self._used = used
        self.n_clusters_ = len(used)
        self.labels_ = logits[:, used].argmax(axis=1)
        phi = _softmax(logits[:, used])
        self.cluster_centers_ = (phi.T @ np.asarray(X, dtype=np.float64)) / np.maximum(phi.sum(0), 1e-12)[:, None]
        if self.method == "kmeans":
            self.cluster_centers_ = self._embed_centers[used]

    # -- inference -----------------------------------------------------------------------------
    def _neighbour_mean(self, X, values):
        """Mean of ``values`` over each new point's training neighbours (inductive extension)."""
        from sklearn.neighbors import NearestNeighbors

        Xk = self._knn_space(X)
        k = min(self._resolved_neighbors(), self._train_knn.shape[0])
        nn_ = NearestNeighbors(n_neighbors=k, metric=self.metric).fit(self._train_knn)
        idx = nn_.kneighbors(Xk, return_distance=False)
        return values[idx].mean(axis=1)

    def _logits(self, X, training=False):
        if self.method == "kmeans":
            Z = torch.as_tensor(np.asarray(X, dtype=np.float64), dtype=torch.float32)
            with torch.no_grad():
                return self.module_(Z).double().numpy()
        if self.method == "spectral":
            emb = self._train_embedding if training else self._neighbour_mean(X, self._train_embedding)
            with torch.no_grad():
                return self.module_(torch.as_tensor(emb, dtype=torch.float32)).double().numpy()
        if self.mapper == "table":
            if training:
                return self._train_logits
            return self._neighbour_mean(X, self._train_logits)
        return batched_forward(self.module_, self._standardize(X), device=self._device)

    def _proba(self, X):
        return _softmax(self._logits(X)[:, self._used])

    def predict(self, X):
        """Assign samples to the fitted clusters through the head.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray of shape (n_samples,)
            Cluster labels in ``range(n_clusters_)``.
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        return self._proba(X).argmax(axis=1)

    def predict_proba(self, X):
        """Soft cluster assignments phi_ic.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray of shape (n_samples, n_clusters_)
            Rows sum to one.
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        return self._proba(X)

    def transform(self, X):
        """Soft cluster assignments (same as :meth:`predict_proba`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray of shape (n_samples, n_clusters_)
            Soft assignments.
        """
        return self.predict_proba(X)

    def fit_predict(self, X, y=None):
        """Fit and return ``labels_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : None
            Ignored.

        Returns
        -------
        ndarray of shape (n_samples,)
            Cluster labels.
        """
        return self.fit(X).labels_

    def score(self, X, y=None):
        """Negative I-Con loss of the fitted model on ``X`` (higher is better).

        Neighbourhood methods: the exact loss (all pairs, no sampling) over ``X`` split into
        fixed consecutive blocks of ``2 * batch_size`` samples, with p built on the KNN graph of
        ``X`` itself and each anchor's positives restricted to its block. "kmeans" and
        "spectral": minus the probabilistic k-means objective per sample (as ``KMeans.score``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.
        y : None
            Ignored.

        Returns
        -------
        float
            Minus the loss.
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        if self.method in ("kmeans", "spectral"):
            Z = np.asarray(X, dtype=np.float64) if self.method == "kmeans" else self._neighbour_mean(
                X, self._train_embedding)
            d = _sqdist(Z, self._embed_centers)
            return -float(d.min(axis=1).mean())
        if X.shape[0] < 3:
            raise ValueError(f"score needs at least 3 samples to build a neighbourhood, got {X.shape[0]}.")
        alpha_q, degree_weighted = self._check_kernels()
        _, P, alpha = self._supervisory(self._knn_space(X), 0)
        degrees = np.asarray(P.sum(axis=1)).ravel() if degree_weighted else None
        logits_all = torch.as_tensor(self._logits(X), dtype=torch.float32)
        n = X.shape[0]
        block = max(3, 2 * self.batch_size)
        total, count = 0.0, 0
        for s in range(0, n, block):
            idx = np.arange(s, min(n, s + block))
            if len(idx) < 3:
                continue
            sub = normalize_rows(P[idx][:, idx])
            coo = sub.tocoo()
            if coo.nnz == 0:
                continue
            d = None if degrees is None else torch.as_tensor(degrees[idx], dtype=torch.float32)
            with torch.no_grad():
                loss = cluster_kernel_loss(
                    logits_all[idx][None], torch.as_tensor(coo.row, dtype=torch.long),
                    torch.as_tensor(coo.col, dtype=torch.long), torch.as_tensor(coo.data, dtype=torch.float32),
                    alpha=alpha, alpha_q=alpha_q, degrees=d,
                )
            rows_with_mass = len(np.unique(coo.row))
            total += float(loss[0]) * rows_with_mass
            count += rows_with_mass
        return -total / max(count, 1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.non_deterministic = self.device not in ("cpu",)
        return tags


class _GraphOf(Kernel):
    """The fixed symmetric KNN graph of the "ncut"/"spectral" rows (recorded for inspection)."""

    def __init__(self, affinity=None):
        self.affinity = affinity

    def conditional(self, X, **context):
        return normalize_rows(self.affinity)


class _PositiveSampler:
    """Draw one candidate per anchor from the rows of a sparse row-stochastic matrix.

    Inverse-CDF sampling within each anchor's row: a binary search over the row's own
    cumulative weights, vectorised over the anchors (rows are never empty: ``_supervisory``
    rejects such p). Searching the whole cumulative array instead (one ``np.searchsorted``)
    is twice as slow at 20,000 points: its ~20 levels of random reads over millions of
    entries miss the cache, where a row has ~100 entries.
    """

    def __init__(self, P, rng):
        self.P = P
        self.rng = rng
        self.cum = np.cumsum(P.data)
        starts = np.concatenate([[0.0], self.cum])
        self.first = P.indptr[:-1].astype(np.int64)
        self.last = P.indptr[1:].astype(np.int64) - 1
        self.low = starts[self.first]
        self.high = starts[self.last + 1]

    def sample(self, anchors):
        low = self.low[anchors]
        u = low + self.rng.random_sample(len(anchors)) * (self.high[anchors] - low)
        # Smallest position in [first, last] whose cumulative weight exceeds u (last if none,
        # which only rounding can cause).
        lo, hi = self.first[anchors], self.last[anchors]
        while (lo < hi).any():
            mid = (lo + hi) >> 1
            right = self.cum[mid] <= u
            lo = np.where(right, mid + 1, lo)
            hi = np.where(right, hi, mid)
        return self.P.indices[lo]


def _pruning_schedule(n_init, max_iter):
    """``{step: heads kept}``: halve the restarts at 1/4 and 1/2 of the steps, never below two.

    The head with the lowest final loss was the most accurate one in 5 of 6 runs (digits and
    MNIST-5k, 3 seeds each, 8 heads, 600 steps), and it already ranked among the better half
    early: the head finally chosen was in the better half of the mean loss over the last 50
    steps at step 100, 150, 200 and 300 in every run. Halving twice trains half the
    head-steps of keeping every head. No pruning before :data:`_PRUNE_MIN_STEP` steps: an
    earlier version that pruned at a quarter of any budget kept the wrong head in a 60-step
    fit of six blobs.
    """
    schedule, heads = {}, int(n_init)
    for fraction in (0.25, 0.5):
        step, keep = int(max_iter * fraction), max(2, heads // 2)
        if step >= _PRUNE_MIN_STEP and keep < heads:
            schedule[step] = keep
            heads = keep
    return schedule


def _last_mean(losses, window):
    """Mean of the last ``window`` finite entries (the steps a restart was trained)."""
    trained = losses[np.isfinite(losses)]
    return float(trained[-window:].mean()) if trained.size else float("nan")


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
