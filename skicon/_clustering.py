"""ICONClustering: the clustering rows of the periodic table in one estimator.

Every row learns soft assignments ``phi_ic = softmax(f(x_i))_c`` and compares the "shared
cluster likelihood" kernel ``q(j|i) = sum_c phi_ic phi_jc / sum_k phi_kc`` (Theorems 8-11) with
a supervisory p; ``method=`` names the row of :func:`~skicon.list_methods` and the row's
``defaults`` fill every parameter left at "auto". The fit reads: validate -> plan
(:class:`~skicon._cluster_train.ClusterPlan`) -> p -> objective
(:mod:`skicon.objectives._cluster`) -> :class:`~skicon._training.Trainer` -> fitted attributes.
"""

import functools
import numbers

import numpy as np
import scipy.sparse as sp
import torch
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._cluster_heads import (
    SEEDED_HEADS, CenterScores, ConsensusHead, FusedHeads, Heads, MergedHead, center_sqdist, match_clusters,
    seed_heads, softmax,
)
from ._cluster_plan import CENTROID_ROWS as _CENTROID_ROWS
from ._cluster_plan import augmented, learned_kernel, make_plan, row_loss, supervisory
from ._cluster_train import (
    POLISH_ROUNDS, BlockObjective, PairObjective, _BatchInputs, merge_clusters, polish, relax_kmeans, train_heads,
)
from ._distributed import from_rank0, is_active
from ._registry import METHODS
from ._sklearn_api import FeatureNamesOutMixin, KernelParamsMixin, device_name
from ._threads import N_JOBS_CONSTRAINT, current_threads, limit_threads, thread_limits
from ._training import batched_forward, check_callbacks, log_means
from ._utils import resolve_device, seed_from_random_state, state_on_cpu
from ._validation import to_unit_frame, unit_exponent
from .kernels import Gaussian, Kernel
from .mappers import MAPPERS, make_mapper
from .neighbors import query_neighbors, search_device

__all__ = ["ICONClustering"]

#: Names accepted by ``method=``: every ICONClustering row of the registry and its aliases.
CLUSTERING_METHODS = tuple(n for r in METHODS.values() if r.estimator == "ICONClustering" for n in (r.name, *r.aliases))


def _forward_on(module, *, inputs, device, dtype):
    """A head's logits on the training inputs (a module-level function, so that it pickles)."""
    return batched_forward(module, inputs, device=device, dtype=dtype)


def _fit_member_in_worker(est, n_jobs, X, Xs, inputs, P, degrees, forward, seed):
    """:meth:`ICONClustering._fit_member` in a worker process, under ``thread_limits(n_jobs)``
    (None: the worker's share, which joblib passes through ``OMP_NUM_THREADS``)."""
    with thread_limits(n_jobs, size=float(X.shape[0]) * X.shape[1]):
        return est._fit_member(X, Xs, inputs, P, degrees, forward, seed)


class ICONClustering(FeatureNamesOutMixin, KernelParamsMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """Clustering by I-Con: align the shared-cluster-likelihood kernel with a neighbourhood.

    The learned distribution is the cluster kernel of probabilistic k-means,
    ``q(j|i) = sum_c phi_ic phi_jc / sum_k phi_kc`` with soft assignments
    ``phi_i = softmax(f(x_i))`` produced by a head ``f`` (an MLP by default). The supervisory
    distribution p and the divergence are the row named by ``method`` (see Notes). The default,
    ``"infonce_clustering"``, is the paper's InfoNCE clustering: p uniform over the k nearest
    neighbours plus short walks on the KNN graph (and augmented views), debiased on both sides,
    optionally with an EMA teacher. No entropy or size regulariser is used.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters (outputs of the head). Clusters left empty on the training data are
        dropped, so ``n_clusters_`` may be smaller.
    method : str, default="infonce_clustering"
        Row of the periodic table: "infonce_clustering" (alias "infonce"), "mi", "ncut",
        "kmeans" or "spectral"; see Notes.
    p : Kernel, default=None
        Explicit supervisory kernel of the forward rows ("mi", "infonce_clustering"), e.g.
        ``Debiased(Propagated(UniformKNN(5), 2), alpha=0.6)``; replaces the one built from
        ``n_neighbors``, ``walk_length`` and ``alpha`` (which must then stay "auto").
    q : Kernel, default=None
        Explicit learned kernel: a :class:`~skicon.kernels.ClusterKernel` (``degree_weighted``
        and ``include_self`` honoured), possibly wrapped in :class:`~skicon.kernels.Debiased`;
        replaces the one built from ``alpha_q``. Not with "kmeans"/"spectral".
    n_neighbors, walk_length, alpha, alpha_q : "auto", int or float, default="auto"
        k of the KNN graph; longest walk s of the propagation p ∝ P + ... + P^s; debiasing of
        p, p~ = (1 - alpha) p + alpha / N; debiasing of q. "auto" takes the row's ``defaults``
        (k = 10; "infonce_clustering": s = 2, alpha = alpha_q = 0.3, tuned on digits and
        MNIST, see the row's note). A value set for a row that has no such parameter raises.
    ema : float in [0, 1) or None, default=None
        Momentum of an EMA teacher that provides the candidate-side assignments.
    mapper : {"mlp", "linear", "table"} or callable, default="mlp"
        The head f: an MLP (``hidden_layer_sizes``), a linear map, a free table of logits per
        training sample (new points are assigned through their training neighbours), or a
        factory ``factory(n_features, n_clusters) -> torch.nn.Module``.
    hidden_layer_sizes : tuple of int, default=(64,)
        Hidden sizes of ``mapper="mlp"``.
    augment : callable, default=None
        ``augment(X_batch, generator) -> X_view``, called positionally with a torch batch of
        shape ``(batch, n_features)`` and a :class:`torch.Generator` (the one signature of every
        estimator, :func:`skicon.augment.apply_augment`; the classes of :mod:`skicon.augment`
        follow it); it returns the same shape, finite. Each anchor's view is an extra positive
        (forward rows).
    overclustering : float >= 1, list of float >= 1 or "auto", default="auto"
        Factors of ``n_clusters`` that the restarts learn: with factors ``(f_1, ..., f_g)``
        the ``n_init`` heads are split into g consecutive groups, and group j's heads learn
        ``ceil(f_j * n_clusters)`` clusters (at most n_samples; the heads of a smaller count
        leave their extra outputs unused). A head with more clusters than ``n_clusters`` is
        brought down to ``n_clusters`` by joining its clusters in pairs, each time by the join
        that leaves the lowest loss on the restarts' selection sample (``merged_groups_``).
        All heads are pruned on one scale (the heads with extra clusters after cheap joins by a
        hard-label figure); at the end each group's best survivor is joined exactly and the
        lowest loss is kept. A number ``f`` is ``[f]``; 1: no joining. "auto": ``[1, 1.4]``
        for "infonce_clustering" (half the restarts learn ``n_clusters`` clusters, half 1.4
        times as many), 1 for the other rows ("mi" trains TEMI's ``n_clusters`` outputs;
        "ncut", "kmeans" and "spectral" accept only 1). Over 10 seeds the joined heads were
        the better ones on raw digits (Hungarian accuracy 0.937 against 0.901), the plain ones
        on EfficientNet features of digits (0.786 against 0.756); "auto" reached 0.938 and
        0.780 (see :ref:`benchmarks`). With fewer restarts than factors, the first factors are used.
    polish : int >= 0 or "auto", default="auto"
        Steps of each round of the final polish (learned heads with a last ``nn.Linear``:
        "mlp", "linear" or such a factory). After the restarts, copies of the kept head are
        made, each with its layers and a new last layer seated at the nearest-centre logits (in
        the features it reads) of hard clusters: the kept head's own clusters, and the same
        after each of four split-and-join moves (forward rows: the two clusters whose split by
        2-means lowers the loss most, each split followed by either of its two cheapest joins).
        The copies train this many steps side by side (without the restarts); a moved copy is
        preferred only when its selection loss (on the restarts' sample) is lower than the own
        copy's by more than 0.1%, and the preferred copy replaces the kept head if its loss is
        lower. Then the next round starts from it, up to three rounds; a round that does not
        lower the loss ends the polish. ``polish_rounds_`` counts the rounds kept. No callbacks
        run during the polish. 0: no polish. "auto": ``min(200, max_iter // 2)`` for
        "infonce_clustering", 0 for the other rows. It targets the local optima that restarts
        share (a cluster holding two classes next to a class split in two); it lowered the
        seed spread of the Hungarian accuracy on MNIST-5k and on EfficientNet features of
        digits (see :ref:`benchmarks`).
    n_init : int, default=8
        Restarts. Learned heads train side by side; at a quarter and at half of ``max_iter``
        (not before step 100) the worse half stops, down to two, and after the last step the
        survivor with the lowest loss is kept, all scored by the row's loss over whole rows
        of p on one fixed sample of 8,192 anchors, 2,048 at the pruning steps (the ``loss_``
        figure on a sample; the heads' recent batch losses ranked them worse, and on MNIST-5k
        the former block loss ranked them backwards). Every other restart (the
        first, third, ...) of an MLP or linear head starts from a k-means assignment of its
        own features: greedy k-means++ and 10 Lloyd steps on the input of its last layer set
        that layer to the nearest-centre logits; the others keep their random initialisation.
        Randomly initialised heads alone left a cluster empty and two blobs merged on
        well-separated blobs, where k-means is the right model; the seeded restarts do not,
        and win on the loss there (see ``seed_heads`` in ``skicon/_cluster_heads.py``).
        "kmeans"/"spectral" keep the seeding with the lowest objective.
    n_ensemble : int >= 1 or "auto", default="auto"
        Independent fits combined by a soft vote. Each is a whole fit of the heads on the same
        p (its own ``n_init`` restarts, selection, joins and polish, seeded in turn from
        ``random_state``); the clusters of each are matched to the first fit's (the Hungarian
        algorithm on their training labels), and ``module_`` averages the matched soft
        assignments (:class:`~skicon._cluster_heads.ConsensusHead`), so that ``labels_``,
        ``predict`` and ``predict_proba`` are the fits' soft vote. It costs ``n_ensemble`` fits
        (p is built once). The fits that go wrong are few, and wrong in different ways, so the
        vote removes most of their errors and lowers the seed spread (see :ref:`benchmarks`).
        "auto": 3 for "infonce_clustering" (over 5 seeds the spread of the Hungarian accuracy
        fell from 0.019 to 0.006 on MNIST-5k and from 0.009 to 0.002 on digits), 1 for the
        other rows; ``n_ensemble=1`` is the fast setting. The fits run in parallel processes
        when ``n_jobs`` grants more than one thread (see ``n_jobs``). Learned heads
        only ("kmeans"/"spectral" accept 1 or "auto"). ``n_iter_``, ``loss_curve_``,
        ``init_losses_``, ``init_n_iter_``, ``merged_groups_``, ``polished_`` and
        ``polish_rounds_`` describe the first fit.
    batch_size : int, default=256
        Anchors per step (each brings a sampled positive); also the block of ``loss_``.
    n_negatives : int or None, default=64
        Columns sampled per step to estimate the uniform part of a debiased p (forward rows);
        None: every pair of the batch (exact). The reverse rows evaluate their block exactly.
    max_iter : int, default=400
        Trainer iterations (at most 100 for the relaxation of "kmeans"/"spectral").
    learning_rate : float or "auto", default="auto"
        Adam learning rate; "auto" takes the row's default (2e-2; 0.1 for "kmeans"/"spectral").
    metric : str, default="euclidean"
        Metric of the KNN graph.
    n_components : int or None, default=50
        The data are centred and projected on this many principal directions (None: all
        features) before the KNN graph and the head; the head sees them over one global scale.
    device : str, default="cpu"
        Torch device ("cpu", "cuda", "auto").
    random_state : int, RandomState instance or None, default=None
        Seed of initialisation, batches and positives; fixed seed gives identical labels on CPU.
    verbose : bool or int, default=False
        Show the Trainer's progress bar with the loss, and a summary line.
    callbacks : callable or list of callables, default=None
        ``cb(iteration, loss, estimator) -> bool`` every 50 iterations and after the last one,
        as in every skicon estimator, with the logged loss (mean over the restarts still
        trained); truthy stops ("kmeans"/"spectral": the relaxation; the polish still runs).
    n_jobs : int, default=None
        Threads of ``fit``, ``transform`` and ``predict``: torch, numba, BLAS/OpenMP and the
        compiled loops are capped to it, and restored afterwards. None: joblib's share of the
        cores (all of them; a joblib worker's share inside one), with fewer torch threads for
        training loops whose iterations are small; -1: all cores; k: k threads (see
        :ref:`threads`). The fits of ``n_ensemble`` run in that many processes at once (at most
        one per fit, joblib's ``loky`` pool, the threads shared between them), except with
        ``callbacks``, ``verbose`` or ``augment`` (user code that reports or keeps state in this
        process) or off the CPU; the result is the same as one after the other.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample, consecutive integers from 0.
    n_clusters_ : int
        Number of non-empty clusters.
    cluster_centers_ : ndarray of shape (n_clusters_, n_features_in_)
        Soft means ``mu_c = sum_i phi_ic x_i / sum_i phi_ic`` (Theorem 8); the k-means centres
        for "kmeans".
    inertia_ : float
        "kmeans"/"spectral": sum of squared float64 distances to the nearest centre.
    n_iter_ : int
        Trainer iterations run (optimiser steps; the relaxation for "kmeans"/"spectral"), not
        counting the polish.
    polished_ : bool
        Learned heads: whether a polished head (see ``polish``) replaced the kept restart.
    polish_rounds_ : int
        Learned heads: the rounds of the polish whose head was kept (0 to 3; 0 when none
        was or with ``polish=0``).
    ensemble_losses_ : ndarray of shape (n_fits,)
        Learned heads: each fit's ``loss_`` before the vote, one per fit of the resolved
        ``n_ensemble`` (the one ``loss_`` with a single fit).
    loss_curve_ : ndarray of shape (n_logs,)
        The kept restart's mean batch loss over each window of 50 iterations (and the last).
    loss_curve_iterations_ : ndarray of shape (n_logs,)
        Iteration of each entry of ``loss_curve_``.
    loss_ : float
        The row's loss of the fitted model on the training data. Forward rows: the KL with
        ``p_`` and ``q_`` over every sample's whole row of p, q normalised by the cluster
        masses of all samples, the uniform parts on a fixed sample of 512 candidates (exactly
        the row's KL when n_samples <= 512); above 65,536 samples, the mean over a fixed
        sample of 65,536 anchors. "ncut": exact on consecutive blocks of
        ``batch_size``; for
        "kmeans"/"spectral" the row's reverse I-Con loss with the Gaussian ``p_`` at the
        resolved bandwidth (sigma^2 = inertia / (n_samples n_features)) and the head's logits.
    module_ : torch.nn.Module
        The kept head (features to cluster logits; centre scores for the centroid rows); with
        ``n_ensemble > 1`` the :class:`~skicon._cluster_heads.ConsensusHead` of the fits' heads.
    merged_groups_ : list of list of int
        Learned heads: the kept head's clusters joined into each output cluster (singletons
        when it learned ``n_clusters`` or was polished); its head outputs the joined logits
        ``log sum_{c in g} exp z_c``.
    init_losses_ : ndarray of shape (n_init,)
        Each restart's last selection loss, at the step it stopped (learned heads; after the
        hard-label joins for a head with extra clusters when the factors of
        ``overclustering`` differ), or its k-means objective after the polish.
    init_n_iter_ : ndarray of shape (n_init,)
        Steps each restart was trained (learned heads).
    p_, q_ : Kernel
        The supervisory and learned kernels of the row as trained.
    affinity_matrix_ : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
        "ncut": the symmetric 0/1 KNN graph (what ``p_`` sees); "spectral": the graph embedded.
    mean_, components_, scale_ : ndarray, ndarray or None, float
        Preprocessing: feature means, principal directions, global scale of the head's input.
    device_ : str
        The torch device training ran on, with its index (``"cpu"``, ``"cuda:0"``): ``device``
        resolved (``"auto"`` becomes ``"cuda:0"`` or ``"cpu"``).
    n_features_in_ : int
        Number of input features.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Input feature names, when X has string column names.

    Notes
    -----
    The rows (paper Table 1), all through the one :class:`~skicon._training.Trainer`:

    * ``"infonce_clustering"``: p = Debiased(Propagated(UniformKNN(k), s), alpha) (+ views), q =
      Debiased(ClusterKernel(include_self=False), alpha_q), forward KL on batches (Section 3.3).
    * ``"mi"``: p = UniformKNN(k), q = ClusterKernel (self excluded), forward KL (Theorem 10),
      trained as its reference method TEMI trains it: minus the beta-weighted pointwise mutual
      information ``log sum_c (phi_ic psi_jc)^0.6 / pi_c`` of the kNN pairs, with ``psi`` the
      EMA teacher's assignments when ``ema`` is set and ``pi`` their moving mean
      (:func:`skicon.objectives._cluster.temi_loss`; at exponent 1 it is the row's KL up to
      constants). ``loss_`` is the row's KL.
    * ``"ncut"``: reverse KL of the degree-weighted cluster kernel (self included) against
      p(j|i) ∝ exp(A_ij / d_j) over all j on the symmetric 0/1 KNN graph A (Theorem 11),
      on each batch block (O(batch^2)). Its loss is Ncut minus the entropy of q, which favours
      few large clusters: it merged digits into 3 of 10; prefer "infonce_clustering".
    * ``"kmeans"``: Theorem 9's sigma -> 0 limit (probabilistic k-means), relaxed by Adam from
      k-means++ seeds (Trainer iterations), then exact Lloyd steps until the assignment is stable.
    * ``"spectral"``: "kmeans" on the spectral embedding of the symmetric KNN graph
      (Corollary 5); new points take the mean embedding of their training neighbours.
    * Degree weighting (``q=ClusterKernel(degree_weighted=True)``, "ncut") uses the degrees of
      the symmetric 0/1 graph of p's support, in ``fit`` and in :meth:`score`.

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
        "walk_length": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "alpha": [StrOptions({"auto"}), Interval(numbers.Real, 0, 1, closed="left")],
        "alpha_q": [StrOptions({"auto"}), Interval(numbers.Real, 0, 1, closed="left")],
        "ema": [None, Interval(numbers.Real, 0, 1, closed="left")],
        "mapper": [StrOptions(set(MAPPERS)), callable],
        "hidden_layer_sizes": [tuple, list, Interval(numbers.Integral, 1, None, closed="left")],
        "augment": [None, callable],
        "overclustering": [StrOptions({"auto"}), Interval(numbers.Real, 1, None, closed="left"), "array-like"],
        "polish": [StrOptions({"auto"}), Interval(numbers.Integral, 0, None, closed="left")],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_ensemble": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 2, None, closed="left")],
        "n_negatives": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"auto"}), Interval(numbers.Real, 0, None, closed="neither")],
        "metric": [str],
        "n_components": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [None, callable, list, tuple],
        "n_jobs": N_JOBS_CONSTRAINT,
    }

    def __init__(self, n_clusters=8, *, method="infonce_clustering", p=None, q=None, n_neighbors="auto",
                 walk_length="auto", alpha="auto", alpha_q="auto", ema=None, mapper="mlp", hidden_layer_sizes=(64,),
                 augment=None, overclustering="auto", polish="auto", n_init=8, n_ensemble="auto", batch_size=256,
                 n_negatives=64, max_iter=400, learning_rate="auto", metric="euclidean", n_components=50, device="cpu",
                 random_state=None, verbose=False, callbacks=None, n_jobs=None):
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
        self.overclustering = overclustering
        self.polish = polish
        self.n_init = n_init
        self.n_ensemble = n_ensemble
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

    # -- validation, plan and preprocessing ----------------------------------------------------
    def _validate_X(self, X, reset):
        if sp.issparse(X):
            raise TypeError(
                "ICONClustering does not accept sparse X (the head and neighbour search need dense "
                "features); pass X.toarray() or reduce it first, e.g. with TruncatedSVD."
            )
        return validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], ensure_min_samples=2 if reset else 1)

    def _standardize(self, X):
        """Head input: centred, projected on the leading principal directions, one global scale."""
        return (self._knn_space(X) / np.ldexp(self.scale_, -self._unit_exp)).astype(np.float32)

    def _knn_space(self, X):
        """Centred data projected on the leading principal directions (KNN graph and head)."""
        # in the unit frame of the training data (an exact power of two): the kNN distances neither
        # overflow nor underflow for X * 1e160 or X * 1e-160
        Xc = to_unit_frame(np.asarray(X, dtype=np.float64) - self.mean_, self._unit_exp)
        return Xc if self.components_ is None else Xc @ self.components_.T

    def _fit_preprocessing(self, X):
        X = np.asarray(X, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        self._unit_exp = unit_exponent(X)
        self.components_ = None
        n, d = X.shape
        if self.n_components is not None and d > self.n_components and n > self.n_components:
            from sklearn.utils.extmath import randomized_svd

            self.components_ = randomized_svd(to_unit_frame(X - self.mean_, self._unit_exp), self.n_components,
                                              random_state=0)[2]
        # One global factor (not per feature): keeps the relative variance of the directions.
        scale = float(np.sqrt(self._knn_space(X).var(axis=0).mean()))  # about 1 in the unit frame
        self.scale_ = float(np.ldexp(scale if scale > 0 else 1.0, self._unit_exp))  # in the units of X

    # -- fitting -------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    @limit_threads
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
        if self.n_clusters > 1 and not np.ptp(X, axis=0).any():
            raise ValueError(f"All the samples of X are identical: they form one cluster, so n_clusters="
                             f"{self.n_clusters} cannot be honoured; pass distinct samples or n_clusters=1.")
        if self.n_clusters > X.shape[0]:
            raise ValueError(f"n_clusters={self.n_clusters} is larger than n_samples={X.shape[0]}; "
                             "use n_clusters <= n_samples.")
        check_callbacks(self.callbacks)
        self._plan = make_plan(self)
        self._device = resolve_device(self.device)
        self.device_ = device_name(self._device)
        rng = check_random_state(self.random_state)
        self._fit_preprocessing(X)
        self.q_ = learned_kernel(self)
        if self._plan.row in _CENTROID_ROWS:
            self._fit_centroids(X, rng)
        else:
            self._fit_heads(X, rng)
        self._finish(X)
        return self

    def _fit_heads(self, X, rng):
        """Learned heads ("mi", "infonce_clustering", "ncut"): p once, then ``n_ensemble`` fits of
        heads (:meth:`_fit_member`), combined by :class:`ConsensusHead` when there are several."""
        plan, n, k = self._plan, X.shape[0], self.n_clusters
        if self.mapper == "table" and self.augment is not None:
            raise ValueError("augment needs a parametric mapper ('linear', 'mlp' or a factory), not mapper='table'.")
        self._train_knn = Xk = self._knn_space(X)
        with search_device(self._device):  # exact torch kNN on CUDA
            self.p_, P, degrees = supervisory(self, Xk, seed_from_random_state(rng))
        P, degrees = from_rank0((P, degrees))  # torch.distributed: one p for every rank
        self._train_P, self._train_degrees = P, degrees
        if plan.direction == "reverse":
            self.affinity_matrix_ = P
        Xs = self._standardize(X)
        inputs = _BatchInputs(torch.as_tensor(Xs, device=self._device), self.mapper == "table", self._device)
        train_inputs = np.arange(n) if self.mapper == "table" else Xs
        forward = functools.partial(_forward_on, inputs=train_inputs, device=self._device,
                                    dtype=torch.long if self.mapper == "table" else torch.float32)
        seeds = [seed_from_random_state(rng) for _ in range(plan.n_ensemble)]
        workers = self._ensemble_workers(len(seeds))
        if workers > 1:  # the fits are independent given p: one process each, joblib's share of threads
            share = None if self.n_jobs is None else max(1, current_threads() // workers)
            fits = Parallel(n_jobs=workers, backend="loky")(
                delayed(_fit_member_in_worker)(self, share, X, Xs, inputs, P, degrees, forward, seed)
                for seed in seeds)
        else:
            fits = [self._fit_member(X, Xs, inputs, P, degrees, forward, seed) for seed in seeds]
        first = fits[0]
        self.module_, self.merged_groups_, self._train_logits = first["module"], first["merged_groups"], first["logits"]
        for name in ("loss_curve_", "loss_curve_iterations_", "n_iter_", "init_losses_", "init_n_iter_",
                     "polish_rounds_"):
            setattr(self, name, first[name])
        self.polished_ = self.polish_rounds_ > 0
        self.ensemble_losses_ = np.array([row_loss(self, f["logits"]) for f in fits])
        if len(fits) > 1:  # the vote, in the first fit's numbering of the clusters
            reference = first["logits"].argmax(axis=1)
            orders = [match_clusters(reference, f["logits"].argmax(axis=1), k) for f in fits]
            self.module_ = ConsensusHead([f["module"] for f in fits], orders).eval()
            self._train_logits = forward(self.module_)
        self.loss_ = row_loss(self, self._train_logits) if len(fits) > 1 else float(self.ensemble_losses_[0])

    def _ensemble_workers(self, n_fits):
        """Processes for the ``n_fits`` fits of the ensemble: one per fit, up to the threads that
        ``n_jobs`` grants (:func:`~skicon._threads.current_threads`); 1 (in this process) with
        callbacks or ``verbose`` (they report from this process), with ``augment`` (a user's
        function may draw from torch's global generator or keep state, which a worker would not
        share), off the CPU, or in a torch.distributed fit."""
        if (n_fits < 2 or self.callbacks is not None or self.verbose or self.augment is not None
                or self._device.type != "cpu" or is_active()):
            return 1
        return min(n_fits, current_threads())

    def _fit_member(self, X, Xs, inputs, P, degrees, forward, seed):
        """One fit of the heads on the given p: restarts, selection, joins and the polish.

        Returns a dict of the kept head (``module``, ``k`` outputs), its ``logits`` on the training
        samples, ``merged_groups`` and the fitted attributes of one fit (``loss_curve_``, ...).
        """
        plan, n, k = self._plan, X.shape[0], self.n_clusters
        # the restarts in consecutive groups, one per overclustering factor; group g's heads use
        # the first n_used of the n_out outputs (the others are masked, see mask_unused)
        factors = plan.overclustering[: self.n_init]
        group_of = [r * len(factors) // self.n_init for r in range(self.n_init)]
        group_k = [max(k, min(int(np.ceil(f * k)), n)) for f in factors]
        n_used = [group_k[g] for g in group_of]
        n_out = max(n_used)
        heads = [make_mapper(self.mapper, Xs.shape[1], n_out, n_samples=n, hidden=self.hidden_layer_sizes,
                             random_state=seed + r) for r in range(self.n_init)]
        seed_heads(heads[SEEDED_HEADS], Xs, n_used[SEEDED_HEADS], np.random.RandomState(seed + 3))
        masked = n_used if min(n_used) < n_out else None
        module = (FusedHeads(heads, masked) if FusedHeads.supports(heads[0]) else Heads(heads, masked))
        module = module.to(self._device)
        if plan.direction == "reverse":
            def make_objective(seed, n_init=1, n_used=None):
                return BlockObjective(inputs, P, degrees, plan, seed, n_init=n_init)
        else:
            aug_gen = torch.Generator().manual_seed(seed + 1)
            augment = None if self.augment is None else (lambda a: augmented(self, X, a, aug_gen))

            def make_objective(seed, n_init=1, n_used=None):
                return PairObjective(inputs, P, plan, seed, n_negatives=self.n_negatives, n_init=n_init,
                                     degrees=degrees, augment=augment, n_clusters=k, n_used=n_used)
        objective = make_objective(seed, n_init=self.n_init, n_used=masked)
        groups = [[r for r in range(self.n_init) if group_of[r] == g] for g in range(len(factors))]
        picks, history, init_losses, trainer, selection = train_heads(
            module, objective, n_samples=n, P=P, plan=plan, est=self, seed=seed, groups=groups)
        # each group's pick, its extra clusters joined; the lowest selection loss is kept
        options = []
        for g, r in enumerate(picks):
            if r is None:  # pruned away
                continue
            head = module.head(r).eval()
            if group_k[g] > k:
                joins, loss = merge_clusters(head, objective, selection, k, n_used=group_k[g])
            else:
                joins, loss = [[c] for c in range(k)], init_losses[r]
            options.append((loss, g, r, head, joins))
        kept_loss, _, best, head, merged_groups = min(options, key=lambda option: option[:2])
        fit = dict(module=head if n_out == k else MergedHead(head, merged_groups).eval(), merged_groups=merged_groups,
                   loss_curve_=log_means(history[:, best], trainer.history_iterations),
                   loss_curve_iterations_=np.asarray(trainer.history_iterations), n_iter_=trainer.n_iter,
                   init_losses_=init_losses, init_n_iter_=np.isfinite(history).sum(axis=0), polish_rounds_=0)
        fit["logits"] = forward(fit["module"])
        if plan.polish > 0 and self.mapper != "table":
            polished, _, logits, fit["polish_rounds_"] = polish(
                head, fit["logits"], kept_loss, Xs, objective, make_objective, forward, n_clusters=k,
                n_steps=plan.polish, rounds=POLISH_ROUNDS, est=self, n_samples=n, P=P, plan=plan, seed=seed + 7,
                selection=selection)
            if fit["polish_rounds_"]:
                fit.update(module=polished, merged_groups=[[c] for c in range(k)], logits=logits)
        return fit

    def _fit_centroids(self, X, rng):
        """"kmeans" / "spectral": Adam relaxation through the Trainer, then the Lloyd polish."""
        Z = self._center_space(X) if self._plan.row == "kmeans" else self._spectral_embedding(X, rng)
        fit = relax_kmeans(Z, self.n_clusters, n_init=self.n_init, n_relax=min(self.max_iter, 100),
                           learning_rate=self._plan.learning_rate, rng=rng, est=self)
        sigma2 = max(fit["inertia"] / max(1, Z.shape[0] * Z.shape[1]), 1e-12)
        self._embed_centers = fit["centers"]
        self.module_ = CenterScores(fit["centers"], sigma2)
        self.p_ = Gaussian(sigma=float(np.sqrt(sigma2)), n_neighbors=None, include_self=True)
        self.loss_curve_, self.n_iter_, self.init_losses_ = fit["loss_curve"], fit["n_iter"], fit["init_losses"]
        self.loss_curve_iterations_ = fit["loss_curve_iterations"]
        self.inertia_, self._train_Z = float(np.ldexp(fit["inertia"], 2 * self._unit_exp)) \
            if self._plan.row == "kmeans" else fit["inertia"], Z
        self.loss_ = row_loss(self, self._center_logits(Z))
        e = self._unit_exp if self._plan.row == "kmeans" else 0  # kmeans ran in X's unit frame: p_ in X's units
        self.p_ = Gaussian(sigma=float(np.ldexp(np.sqrt(sigma2), e)), n_neighbors=None, include_self=True)

    def _spectral_embedding(self, X, rng):
        from sklearn.manifold import spectral_embedding

        self._train_knn = Xk = self._knn_space(X)
        _, A, _ = supervisory(self, Xk, seed_from_random_state(rng))
        self.affinity_matrix_ = A
        tiny = A.shape[0] < 5 * self.n_clusters + 1  # ARPACK needs k < n: a dense eigensolver (lobpcg) then
        self._train_embedding = spectral_embedding(A, n_components=self.n_clusters, drop_first=False,
                                                   eigen_solver="lobpcg" if tiny else None,
                                                   random_state=seed_from_random_state(rng))
        return self._train_embedding

    def _finish(self, X):
        logits = self._logits(X, training=True)
        self._used = used = np.unique(logits.argmax(axis=1))
        self.n_clusters_ = len(used)
        self.labels_ = self._assign(logits, X, training=True)
        if self._plan.row == "kmeans":
            self.cluster_centers_ = np.ldexp(self._embed_centers[used], self._unit_exp)
        else:
            phi = softmax(logits[:, used])
            self.cluster_centers_ = (phi.T @ np.asarray(X, dtype=np.float64)) / np.maximum(phi.sum(0), 1e-12)[:, None]

    # -- inference -----------------------------------------------------------------------------
    def _neighbour_mean(self, X, values):
        """Mean of ``values`` over each new point's training neighbours (inductive extension)."""
        idx, _ = query_neighbors(self._train_knn, self._knn_space(X), self._plan.n_neighbors, metric=self.metric,
                                 n_jobs=self.n_jobs, device=self._device)
        return values[idx].mean(axis=1)

    def _center_space(self, X, training=False):
        if self._plan.row == "kmeans":
            return to_unit_frame(np.asarray(X, dtype=np.float64), self._unit_exp)
        return self._train_embedding if training else self._neighbour_mean(X, self._train_embedding)

    def _center_logits(self, Z):
        return -center_sqdist(Z, self._embed_centers) / (2.0 * self.module_.sigma2)

    def _logits(self, X, training=False):
        if self._plan.row in _CENTROID_ROWS:
            return self._center_logits(self._center_space(X, training))
        if self.mapper == "table" or training:
            return self._train_logits if training else self._neighbour_mean(X, self._train_logits)
        return batched_forward(self.module_, self._standardize(X), device=self._device)

    def _assign(self, logits, X, training=False):
        """Labels in ``range(n_clusters_)``: float64 nearest centre (centroid rows), else argmax phi."""
        if self._plan.row in _CENTROID_ROWS:
            d2 = center_sqdist(self._center_space(X, training), self._embed_centers[self._used])
            return d2.argmin(axis=1)
        return logits[:, self._used].argmax(axis=1)

    @limit_threads
    def predict(self, X):
        """Assign samples to the fitted clusters (the nearest centre for "kmeans"/"spectral").

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
        return self._assign(self._logits(X), X)

    @limit_threads
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
        return softmax(self._logits(X)[:, self._used])

    @property
    def _n_features_out(self):
        """Width of the output of :meth:`transform` (names of ``get_feature_names_out``)."""
        return self.n_clusters_

    @limit_threads
    def transform(self, X):
        """Soft cluster assignments (same as :meth:`predict_proba`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray of shape (n_samples, n_clusters_)
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

    @limit_threads
    def score(self, X, y=None):
        """Minus the row's loss of the fitted model on ``X`` (higher is better).

        Learned heads: the row's loss over ``X`` as ``loss_`` is computed (whole rows for the
        forward rows, consecutive blocks of ``2 * batch_size`` for "ncut"), with p built on the
        KNN graph of ``X`` itself (degrees of that graph for a
        degree-weighted q). "kmeans"/"spectral": minus the mean squared distance to the
        nearest centre (as ``KMeans.score``).

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
        if self._plan.row in _CENTROID_ROWS:
            e = self._unit_exp if self._plan.row == "kmeans" else 0  # inertia in the units of X
            inertia = center_sqdist(self._center_space(X), self._embed_centers).min(axis=1).mean()
            return -float(np.ldexp(inertia, 2 * e))
        if X.shape[0] < 3:
            raise ValueError(f"score needs at least 3 samples to build a neighbourhood, got {X.shape[0]}.")
        _, P, degrees = supervisory(self, self._knn_space(X), 0)
        return -row_loss(self, self._logits(X), P=P, degrees=degrees, block=max(3, 2 * self.batch_size))

    def __getstate__(self):
        # The fitted module on the CPU, so that a model fitted on CUDA unpickles anywhere.
        return state_on_cpu(super().__getstate__())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.non_deterministic = self.device not in ("cpu",)
        return tags
