"""Contrastive feature learning as an I-Con estimator.

InfoNCE / SimCLR, SupCon, triplet, CMC / CLIP and t-SimCLR are one loss,
``mean_i KL(p(.|i) || q(.|i))`` (paper eq. 1), with different supervisory ``p`` (which samples
are positives of an anchor) and learned ``q`` (a kernel on the encoder's output). The row of the
periodic table (``skicon.list_methods("ICONContrastive")``) gives ``q`` and the checks on the
positives; the per-batch maths and batches live in :mod:`skicon.objectives._batch`, the machinery
shared with :class:`~skicon.ICONClassifier` in ``_classifier``. ``fit`` reads: validate -> plan
-> batches of (points, p) -> objective -> :class:`skicon._training.Trainer` -> fitted attributes.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import TransformerMixin, clone
from sklearn.preprocessing import LabelEncoder
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ._classifier import (_COMMON_CONSTRAINTS, _EVAL_SEED, _as_data, _call_augment, _double, _encode, _Encoders,
                          _global_scale, _ICONNetworkBase, _loo_knn_accuracy, _method_names, _output_dtype)
from ._distributed import from_rank0
from ._registry import resolve_method
from ._sklearn_api import FeatureNamesOutMixin, KernelParamsMixin, device_name, per_view_output, warn_user
from ._threads import limit_threads
from ._training import RowSampler
from ._utils import resolve_device, seed_from_random_state, torch_generator
from .kernels import Debiased, Kernel, Labels, UniformKNN, Views
from .neighbors import search_device
from .objectives._batch import contrastive_loss, positive_pairs_block, triplet_block  # noqa: F401 (re-exported)
from .objectives._batch import PositiveBatches, with_scale

__all__ = ["ICONContrastive"]

POSITIVES = ("auto", "labels", "groups", "augment", "views", "neighbors", "kernel")


# ---------------------------------------------------------------------------------------------
# ICONContrastive
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ContrastivePlan:
    """Resolved configuration of one fit (kept as ``_plan``)."""

    method: str  # the row's name (aliases resolved)
    positives: str
    p: Kernel  # supervisory kernel (``p_``)
    q: Kernel  # learned kernel before any learned scale
    alpha: float
    cross_view: bool
    triplet: bool
    two_views: bool
    seed: int
    n_components: int = 0  # width of the representation (``get_feature_names_out``)


def _block_loss(module, batcher, batch, plan, generator, *, alpha, reduction="mean"):
    """The objective on one batch (training and ``loss_``); returns the loss and the used ``p``."""
    Z, p, non_cand = batcher.points(module, batch)
    if plan.triplet:
        p, non_cand = triplet_block(p, non_cand, generator)
    loss = contrastive_loss(Z, p, non_cand, plan.q, alpha=alpha, log_scale=module.log_scale, reduction=reduction)
    return loss, p


class ICONContrastive(FeatureNamesOutMixin, KernelParamsMixin, TransformerMixin, _ICONNetworkBase):
    """Contrastive feature learning (InfoNCE/SimCLR, SupCon, triplet, CMC/CLIP, t-SimCLR).

    Trains an encoder ``f`` so that the learned neighbourhood distribution ``q(j|i)`` of its
    outputs matches a supervisory distribution ``p(j|i)`` that is uniform over the *positives*
    of each anchor, minimising the I-Con loss ``mean_i KL(p(.|i) || q(.|i))`` over minibatches;
    every other point of the batch is a negative. ``transform`` returns ``f(X)``.

    Where positives come from (``positives="auto"`` picks the first that applies):

    * ``fit([X_a, X_b, ...])`` -- several **views / modalities** of the same samples given
      together (CMC / CLIP): row ``k`` of each view is a positive pair, only cross-view
      candidates count and each view gets its own encoder.
    * ``fit(X, groups=g)`` -- samples sharing a **group id** are positives (e.g. precomputed
      augmentations of one image); batches are drawn group by group.
    * ``augment=callable`` -- two **augmented views** of each batch sample are a positive pair
      (SimCLR). ``augment(X_batch, generator)`` gets a torch batch of shape
      ``(batch, n_features)``; see :mod:`skicon.augment`. Combined with ``y`` and
      ``method="supcon"`` it is SupCon with two views.
    * ``fit(X, y)`` -- samples with the same **label** are positives (SupCon).
    * otherwise the **nearest neighbours** in the input are positives: each anchor is paired
      with one of its ``n_neighbors`` nearest neighbours drawn at random (an unbiased
      minibatch estimate of the loss with ``p`` uniform over the k-NN), or with a draw from the
      supervisory kernel ``p`` when one is given (``positives="kernel"``).

    Parameters
    ----------
    method : {"infonce", "simclr", "tsimclr", "triplet", "supcon", "cmc", "clip"}, default="infonce"
        Row of ``skicon.list_methods("ICONContrastive")`` (``"simclr"``, ``"clip"``: aliases of
        ``"infonce"``, ``"cmc"``). It gives ``q`` when ``q`` is None (``Cosine`` with temperature
        0.5 for infonce, 0.1 for supcon and cmc, ``Gaussian`` ``exp(-||z_i - z_j||^2)`` for triplet,
        ``StudentT(dof=1)`` for tsimclr) and the positives: supcon uses labels, cmc needs views (or
        ``augment``: two augmented views), triplet keeps one positive and one random negative per
        anchor (Theorem 5).
    p : Kernel or None, default=None
        Supervisory kernel on the input (e.g. ``UniformKNN(15)``) whose rows the positives are
        drawn from (``positives="kernel"``); None derives ``p`` from the positives above.
    q : Kernel or None, default=None
        Learned kernel (``Cosine``, ``Gaussian``, ``StudentT``, ``DotProduct``, possibly
        ``Debiased(...)``) instead of the row's; ``temperature`` and ``dof`` must then be None.
    positives : {"auto", "labels", "groups", "augment", "views", "neighbors", "kernel"}, \
            default="auto"
        Source of positive pairs; "auto" is described above.
    temperature : float or None, default=None
        Temperature of the row's cosine kernel; None keeps the row's value.
    dof : float or None, default=None
        Degrees of freedom of the Student-t kernel of ``"tsimclr"``; None keeps the row's (1).
    learn_temperature : bool, default=False
        Learn a factor ``s`` (initialised to 1, clamped to [0.01, 100]) multiplying ``q``'s
        log-affinities: a learned inverse temperature, as in CLIP.
    alpha : float in [0, 1), default=0.0
        Debiasing of ``p`` (paper eq. 2): every candidate gets ``alpha / N`` extra mass.
    augment : callable or None, default=None
        ``augment(X_batch, generator) -> X_view``, called positionally with a torch batch of
        shape ``(batch, n_features)`` and a :class:`torch.Generator` (the one signature of every
        estimator, :func:`skicon.augment.apply_augment`; the classes of :mod:`skicon.augment`
        follow it); it returns the same shape, finite.
    n_neighbors : int, default=10
        Neighbours per sample for neighbour positives (unused by the other sources).
    mapper : {"mlp", "linear"}, callable or list, default="mlp"
        Encoder: an MLP, a linear map, or a factory ``mapper(n_features, n_components) -> Module``
        taking flat batches; with views, a list gives one spec per view.
    hidden_layer_sizes : tuple of int, default=(256, 256)
        Hidden layers of the ``"mlp"`` mapper.
    n_components : int, default=32
        Dimension of the learned representation.
    batch_size : int, default=256
        Anchors per minibatch (each contributes one or two points).
    max_iter : int, default=100
        Number of epochs; the Trainer runs ``max_iter * (n_samples // batch_size)`` iterations
        (optimiser steps).
    optimizer : {"adam", "adamw", "sgd"}, default="adamw"
        Optimiser.
    learning_rate : float, default=1e-3
        Learning rate.
    weight_decay : float, default=1e-5
        Weight decay.
    scale_input : bool, default=True
        Divide the input by its overall standard deviation (one scalar, so images keep their
        zero background for augmentations) before the encoder.
    device : {"auto", "cpu", "cuda"} or torch.device, default="auto"
        Training device.
    random_state : int, RandomState instance or None, default=None
        Seed of the weights, batches, augmentations and neighbour draws (reproducible on the CPU).
    verbose : int, default=0
        Show the Trainer's progress bar with the loss, and a one-line summary, when positive.
    callbacks : callable or list of callables, default=None
        ``cb(iteration, loss, estimator) -> bool`` every 50 iterations and after the last one
        (the same cadence in every skicon estimator) with the logged loss; truthy stops.
    n_jobs : int, default=None
        Threads of ``fit``, ``transform`` and ``predict``: torch, numba, BLAS/OpenMP and the
        compiled loops are capped to it, and restored afterwards. None: joblib's share of the
        cores (all of them; a joblib worker's share inside one), with fewer torch threads for
        training loops whose iterations are small; -1: all cores; k: k threads (see
        :ref:`threads`).

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained encoders (``module_(X_tensor, view)``).
    loss_ : float
        The training objective at the end of fit on the training data (float64, same code as
        training, consecutive blocks of ``batch_size`` anchors -- group-sorted with groups --
        and seed 0 for every draw): exact whenever ``n_samples <= batch_size``. With
        drawn positives (augmentations, neighbours) or triplet negatives it is one fixed-seed
        draw of them.
    loss_curve_ : ndarray of shape (n_logs,)
        The mean batch loss over each window of 50 iterations (and the last).
    loss_curve_iterations_ : ndarray of shape (n_logs,)
        Iteration of each entry of ``loss_curve_``.
    n_iter_ : int
        Iterations run (optimiser steps).
    n_epochs_ : float
        Epochs run, ``n_iter_ / (n_samples // batch_size)``; below ``max_iter`` only when a
        callback stopped training (fractional then).
    positives_ : str
        Source of positives that was used.
    p_ : Kernel
        Supervisory kernel of the positives (``Debiased`` when ``alpha > 0``): ``Labels``,
        ``Views`` (groups, augmentations), ``Views(cross_view=True)`` (views), the k-NN or ``p``.
    q_ : Kernel
        Learned kernel (with the learned factor of ``learn_temperature``).
    input_scale_ : float or list of float
        Factor applied to the input (per view for views).
    device_ : str
        The torch device training ran on, with its index (``"cpu"``, ``"cuda:0"``): ``device``
        resolved (``"auto"`` becomes ``"cuda:0"`` or ``"cpu"``).
    n_features_in_ : int
        Number of features seen in fit (of the first view).
    n_views_ : int
        Number of views (1 unless fitted on a list of views).

    See Also
    --------
    ICONClassifier : Cross-entropy, the classification row of the same table.

    References
    ----------
    Alshammari et al., "I-Con: A Unifying Framework for Representation Learning", ICLR 2025.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skicon import ICONContrastive
    >>> X, y = load_digits(return_X_y=True)
    >>> est = ICONContrastive(method="supcon", n_components=8, max_iter=2, random_state=0)
    >>> est.fit_transform(X[:200], y[:200]).shape
    (200, 8)
    """

    _parameter_constraints = {
        **_COMMON_CONSTRAINTS,
        "method": [StrOptions(_method_names("ICONContrastive"))],
        "p": [None, Kernel],
        "q": [None, Kernel],
        "positives": [StrOptions(set(POSITIVES))],
        "dof": [None, Interval(numbers.Real, 0, None, closed="neither")],
        "learn_temperature": ["boolean"],
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    def __init__(self, method="infonce", *, p=None, q=None, positives="auto", temperature=None, dof=None,
                 learn_temperature=False, alpha=0.0, augment=None, n_neighbors=10, mapper="mlp",
                 hidden_layer_sizes=(256, 256), n_components=32, batch_size=256, max_iter=100,
                 optimizer="adamw", learning_rate=1e-3, weight_decay=1e-5, scale_input=True, device="auto",
                 random_state=None, verbose=0, callbacks=None, n_jobs=None):
        self.method = method
        self.p = p
        self.q = q
        self.positives = positives
        self.temperature = temperature
        self.dof = dof
        self.learn_temperature = learn_temperature
        self.alpha = alpha
        self.augment = augment
        self.n_neighbors = n_neighbors
        self.mapper = mapper
        self.hidden_layer_sizes = hidden_layer_sizes
        self.n_components = n_components
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.scale_input = scale_input
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.n_jobs = n_jobs

    # -- plan ---------------------------------------------------------------------------------
    def _make_plan(self, is_views, y, groups, n):
        row, implied = resolve_method("ICONContrastive", self.method)
        defaults = {**row.defaults, **implied}
        positives = self._resolve_positives(row, defaults.get("positives"), is_views, y, groups)
        q = self._learned_kernel(row, defaults, self.q, temperature=self.temperature, dof=self.dof)
        p = {"labels": Labels(), "groups": Views(), "views": Views(cross_view=True),
             "augment": Views(cross_view="views" in row.needs),
             "neighbors": UniformKNN(n_neighbors=min(self.n_neighbors, n - 1)),
             "kernel": None if self.p is None else clone(self.p)}[positives]
        alpha = float(self.alpha)
        if isinstance(p, Debiased):  # a debiased p: its alpha debiases every batch block
            if alpha not in (0.0, p.alpha):
                raise ValueError(f"alpha={alpha} and p={p!r} debias p twice; set one of them.")
            p, alpha = p.kernel, float(p.alpha)
        return _ContrastivePlan(
            method=row.name, positives=positives, p=Debiased(p, alpha=alpha) if alpha > 0 else p, q=q,
            alpha=alpha, cross_view="views" in row.needs, triplet=row.name == "triplet",
            two_views=self.augment is not None and positives != "views",
            seed=seed_from_random_state(self.random_state), n_components=self.n_components,
        )

    def _resolve_positives(self, row, required, is_views, y, groups):
        pos = self.positives
        if pos == "auto":  # the first source that fit got, in the order of the class docstring
            found = {"kernel": self.p is not None, "groups": groups is not None, "augment": self.augment is not None,
                     "labels": y is not None and self.augment is None}
            pos = "views" if is_views else required or next((k for k, v in found.items() if v), "neighbors")
            if pos == "neighbors":
                warn_user(
                    f"ICONContrastive(method={self.method!r}) got no augment, labels, groups, views or p, so "
                    f"each sample's positives are its n_neighbors={self.n_neighbors} nearest neighbours in the "
                    "input, not augmented views of it. Pass augment=... (see skicon.augment) for augmentation "
                    "positives, or positives='neighbors' to choose neighbour positives and silence this warning.",
                )
        needs = {
            "views": (is_views, "X to be a list of views [X_a, X_b, ...]"),
            "labels": (y is not None, "labels y: call fit(X, y)"),
            "groups": (groups is not None, "group ids: call fit(X, groups=groups)"),
            "augment": (self.augment is not None, "an augment callable: set augment=..."),
            "kernel": (self.p is not None, "a supervisory kernel: set p=..."),
        }
        by_row = f"method={self.method!r} uses positives={pos!r}, which" if pos == required else f"positives={pos!r}"
        if pos in needs and not needs[pos][0]:
            raise ValueError(f"{by_row} needs {needs[pos][1]}.")
        if required is not None and pos != required:
            raise ValueError(f"method={self.method!r} takes its positives from {required!r}; got positives={pos!r}.")
        if is_views and pos != "views":
            raise ValueError(f"X is a list of views, which only works with positives='views', not {pos!r}.")
        if "views" in row.needs and pos not in ("views", "augment"):
            raise ValueError(f"method={self.method!r} contrasts views: pass fit([X_a, X_b]) or set augment=... "
                             f"(got positives={pos!r}).")
        if self.p is not None and pos != "kernel":
            raise ValueError(f"p is only used with positives='kernel' (positives drawn from its rows); got "
                             f"positives={pos!r}. Leave p=None.")
        if self.augment is not None and pos == "views":
            raise ValueError("augment is not used with a list of views (the views are the positives); "
                             "set augment=None.")
        return pos

    # -- validation ---------------------------------------------------------------------------
    def _validate_input(self, X, reset):
        if self._is_views(X):
            if len(X) < 2:
                raise ValueError(f"A list of views needs at least two views, got {len(X)}.")
            views = [check_array(v, dtype=[np.float64, np.float32], input_name=f"X[{k}]") for k, v in enumerate(X)]
            lengths = [v.shape[0] for v in views]
            if len(set(lengths)) != 1:
                raise ValueError(f"All views must have the same number of samples (row k of each view is one "
                                 f"sample); got mismatched view lengths {lengths}.")
            if reset:
                self.n_features_in_ = views[0].shape[1]
                self.view_n_features_ = [v.shape[1] for v in views]
            return views, True
        return [validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2, reset=reset)], False

    @staticmethod
    def _is_views(X):
        return isinstance(X, (list, tuple)) and len(X) > 0 and all(len(getattr(v, "shape", ())) == 2 for v in X)

    @staticmethod
    def _check_ids(values, name, n):
        values = np.asarray(values)
        if values.ndim != 1 or values.shape[0] != n:
            raise ValueError(f"{name} must be a 1-d array of length n_samples={n}, got shape {values.shape}.")
        if name == "y":
            check_classification_targets(values)
        codes = LabelEncoder().fit_transform(values)
        if name == "y" and codes.max(initial=0) < 1:
            raise ValueError("y has a single class: every pair would be positive and the loss is constant. "
                             "Pass labels with at least two classes, or fit without y for self-supervised positives.")
        if np.bincount(codes).max() < 2:
            raise ValueError(f"Every {'class in y' if name == 'y' else 'group'} has a single sample, so no sample "
                             "has a positive; samples sharing a label or group id are positives.")
        return codes

    # -- fit ----------------------------------------------------------------------------------
    @limit_threads
    def fit(self, X, y=None, *, groups=None):
        """Train the encoder.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or list of such arrays
            Training data; a list holds several views (modalities) of the same samples.
        y : array-like of shape (n_samples,), default=None
            Class labels (positives = same class).
        groups : array-like of shape (n_samples,), default=None
            Group ids (positives = same group).

        Returns
        -------
        self : ICONContrastive
            The fitted estimator.
        """
        self._validate_params()
        views, is_views = self._validate_input(X, reset=True)
        n = views[0].shape[0]
        if n < 2:
            raise ValueError(f"Contrastive learning needs at least 2 samples, got n_samples = {n}.")
        plan = self._plan = self._make_plan(is_views, y, groups, n)
        self.positives_, self.n_views_ = plan.positives, len(views)
        self._device = resolve_device(self.device)
        self.device_ = device_name(self._device)
        scales = [_global_scale(v) if self.scale_input else 1.0 for v in views]
        self.input_scale_ = scales if is_views else scales[0]
        module = self._make_module(views, plan.seed)
        data = [_as_data(v, s, torch.float32) for v, s in zip(views, scales)]
        P = from_rank0(self._positives_matrix(data[0], y, groups, plan.seed))  # torch.distributed: one p
        batcher = self._make_batcher(data, y, groups, P, seed=plan.seed + 7919)
        if plan.two_views:
            _call_augment(self.augment, data[0][:4].to(self._device), torch_generator(0))
        triplet_gen = torch_generator(plan.seed + 104729)

        def objective(module, batch, teacher):
            return _block_loss(module, batcher, batch, plan, triplet_gen, alpha=plan.alpha)[0]

        sampler = batcher.sample_groups if batcher.group_batches else None
        self._train(module, objective, n, seed=plan.seed, sampler=sampler, desc="ICONContrastive")
        self.module_ = module
        self.p_ = plan.p
        self.q_ = plan.q if module.log_scale is None else with_scale(plan.q, float(module.log_scale.detach()))
        data64 = [_as_data(v, s, torch.float64) for v, s in zip(views, scales)]
        self.loss_ = self._evaluate(self._make_batcher(data64, y, groups, P, seed=_EVAL_SEED), plan.alpha)
        return self

    def _make_module(self, views, seed):
        specs = self.mapper if isinstance(self.mapper, (list, tuple)) else [self.mapper] * len(views)
        if len(specs) != len(views):
            raise ValueError(f"mapper has {len(specs)} specs for {len(views)} views.")
        encoders = [self._make_encoder(spec, v.shape[1], self.n_components, seed + k)
                    for k, (spec, v) in enumerate(zip(specs, views))]
        return _Encoders(encoders, learn_scale=self.learn_temperature).to(self._device)

    def _positives_matrix(self, X, y, groups, seed):
        """The sparse p of drawn positives (neighbours, ``p``), or None."""
        if self._plan.positives not in ("neighbors", "kernel"):
            return None
        with search_device(self._device):  # exact torch kNN on CUDA
            P = sp.csr_matrix(self._plan.p.conditional(X.numpy().astype(np.float64), y=y, groups=groups,
                                                       random_state=seed))
        if P.shape != (X.shape[0], X.shape[0]):
            raise ValueError(f"p.conditional must return an (n, n) matrix, got {P.shape}.")
        return P

    def _make_batcher(self, data, y, groups, P, *, seed):
        plan, n = self._plan, data[0].shape[0]
        ids = None
        if plan.positives in ("labels", "groups"):
            by_labels = plan.positives == "labels"
            ids = torch.as_tensor(self._check_ids(y if by_labels else groups, "y" if by_labels else "groups", n))
        augment = functools.partial(_call_augment, self.augment) if plan.two_views else None
        return PositiveBatches(data, ids, None if P is None else RowSampler(P, seed), augment, plan.cross_view,
                               torch_generator(seed), min(self.batch_size, n), plan.positives == "groups",
                               device=self._device)

    def _evaluate(self, batcher, alpha):
        """Mean objective over consecutive blocks (float64, ``_EVAL_SEED`` draws)."""
        module = _double(self.module_)
        gen = torch_generator(_EVAL_SEED)
        total, count = 0.0, 0
        order = batcher.evaluation_order()
        with torch.inference_mode():
            for s in range(0, len(order), batcher.batch_size):
                block = torch.as_tensor(order[s : s + batcher.batch_size])
                per_point, p = _block_loss(module, batcher, block, self._plan, gen, alpha=alpha, reduction="none")
                total += float(per_point.sum())
                count += int((p.sum(dim=1) > 0).sum())
        return total / max(count, 1)

    # -- transform ------------------------------------------------------------------------------
    @property
    def _n_features_out(self):
        """Width of the output of :meth:`transform` (names of ``get_feature_names_out``)."""
        return check_is_fitted(self, "module_") or self._plan.n_components

    @limit_threads
    def transform(self, X, view=0):
        """Embed ``X`` with the trained encoder.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or list of views
            Data to embed; a list returns one embedding per view.
        view : int, default=0
            Which view's encoder to use for a single array (multi-view models only).

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components), or list of them
            The representation, in the input's float dtype (float64 for other input).
        """
        check_is_fitted(self, "module_")
        if self._is_views(X):
            views, _ = self._validate_input(X, reset=False)
            return [self._transform_one(v, k) for k, v in enumerate(views)]
        if view == 0:
            X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        else:
            X = check_array(X, dtype=[np.float64, np.float32])
        return self._transform_one(X, view)

    def _transform_one(self, X, view):
        if not 0 <= view < self.n_views_:
            raise ValueError(f"view must be in [0, {self.n_views_}), got {view}.")
        expected = self.view_n_features_[view] if self.n_views_ > 1 else self.n_features_in_
        if X.shape[1] != expected:
            raise ValueError(f"X has {X.shape[1]} features, but view {view} expects {expected}.")
        scale = self.input_scale_[view] if isinstance(self.input_scale_, list) else self.input_scale_
        return _encode(self.module_, X, view=view, scale=scale).astype(_output_dtype(X), copy=False)

    # -- score --------------------------------------------------------------------------------
    @limit_threads
    def score(self, X, y=None, groups=None):
        """Default model-selection score (higher is better).

        With labels: the leave-one-out 10-nearest-neighbour accuracy of the embedding of ``X``
        (a label-aware measure comparable across ``alpha``, ``temperature`` and ``q``).
        Without labels: minus the I-Con loss on ``X`` with the positives used in fit, computed
        as ``loss_`` but without debiasing.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or list of views
            Evaluation data.
        y : array-like of shape (n_samples,), default=None
            Labels.
        groups : array-like of shape (n_samples,), default=None
            Group ids (for models fitted with groups).

        Returns
        -------
        score : float
        """
        check_is_fitted(self, "module_")
        if y is not None and not self._is_views(X):
            return _loo_knn_accuracy(self.transform(X), np.asarray(y), k=10)
        views, _ = self._validate_input(X, reset=False)
        scales = self.input_scale_ if isinstance(self.input_scale_, list) else [self.input_scale_]
        data = [_as_data(v, s, torch.float64) for v, s in zip(views, scales)]
        P = self._positives_matrix(data[0], y, groups, _EVAL_SEED)
        return -self._evaluate(self._make_batcher(data, y, groups, P, seed=_EVAL_SEED), 0.0)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.non_deterministic = self.device != "cpu" and not (self.device == "auto" and not torch.cuda.is_available())
        return tags


# set_output: a list of views gets one DataFrame per view (scikit-learn's wrapper expects one array)
ICONContrastive.transform = per_view_output(ICONContrastive.transform)
ICONContrastive.fit_transform = per_view_output(ICONContrastive.fit_transform)
