"""Cross-entropy classification as an I-Con estimator, and the machinery shared by the network
estimators (:class:`ICONClassifier` here, :class:`~skicon.ICONContrastive` in ``_contrastive``).

``p(c|i)`` is the indicator of sample ``i``'s label over the classes, ``q(c|i)`` a softmax over
learned class prototypes (the ``cross_entropy`` row, Corollary 3). ``fit`` reads: validate ->
plan -> objective (:func:`skicon.objectives._batch.cross_entropy_block` and ``icon_loss``) ->
:class:`skicon._training.Trainer` -> fitted attributes.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.preprocessing import LabelEncoder
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ._registry import list_methods, resolve_method
from ._sklearn_api import FeatureNamesOutMixin, device_name
from ._threads import N_JOBS_CONSTRAINT, limit_threads
from ._training import Trainer
from ._utils import resolve_device, seed_from_random_state, state_on_cpu, torch_generator
from ._validation import global_std
from .augment import apply_augment
from .kernels import Debiased, Kernel
from .mappers import make_mapper
from .neighbors import knn_graph
from .objectives import icon_loss
from .objectives._batch import cross_entropy_block

__all__ = ["ICONClassifier"]

_EVAL_SEED = 0  #: seed of every random draw of the end-of-fit loss (``loss_``) and held-out scores


def _method_names(estimator):
    """Row names and aliases an estimator accepts as ``method=`` (from the registry)."""
    return {name for row in list_methods(estimator) for name in (row.name, *row.aliases)}


# ---------------------------------------------------------------------------------------------
# Shared machinery of the network estimators (ICONContrastive, ICONClassifier)
# ---------------------------------------------------------------------------------------------
def _call_augment(augment, X, generator):
    """``augment(X_batch, generator)``, checked: every estimator's one call (:func:`skicon.augment.apply_augment`)."""
    return apply_augment(augment, X, generator)


def _global_scale(X):
    """Inverse of the overall standard deviation of the training data (1 if constant)."""
    std = global_std(X)  # overflow-free, in float64, before any float32 cast
    return 1.0 / std if std > 0 and np.isfinite(1.0 / std) else 1.0


def _output_dtype(X):
    return X.dtype if X.dtype in (np.float32, np.float64) else np.float64


def _as_data(X, scale, dtype):
    """Scaled input as a CPU tensor (float32 for training, float64 for ``loss_`` and scores)."""
    return torch.as_tensor(np.asarray(X, dtype=np.float64) * scale, dtype=dtype)


def _double(module):
    """A float64 copy of a trained module in evaluation mode (the trained one is untouched)."""
    return copy.deepcopy(module).double().eval()


def _encode(module, X, *, view=0, scale=1.0, batch_size=4096):
    """Encode ``X`` in batches under inference mode; returns float64 numpy.

    Float64 input goes through a float64 copy of the module, so the result does not depend on
    the batching (float32 products differ in the last bits between batch sizes).
    """
    device = next(module.parameters()).device
    dtype = torch.float64 if X.dtype == np.float64 else torch.float32
    if dtype == torch.float64:
        module = copy.deepcopy(module).double()
    was_training = module.training
    module.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, X.shape[0], batch_size):
            xb = torch.as_tensor(np.asarray(X[s : s + batch_size]) * scale, dtype=dtype, device=device)
            out.append(module(xb, view) if isinstance(module, _Encoders) else module(xb))
    module.train(was_training)
    return torch.cat(out).double().cpu().numpy() if out else np.empty((0, 0))


class _Encoders(nn.Module):
    """One encoder per view (a single one for ordinary data) and an optional log-scale."""

    def __init__(self, encoders, learn_scale=False):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.log_scale = nn.Parameter(torch.zeros(())) if learn_scale else None

    def forward(self, X, view=0):
        """Encode a batch of view ``view``."""
        return self.encoders[view](X)


_COMMON_CONSTRAINTS = {
    "mapper": [StrOptions({"mlp", "linear"}), callable, list, tuple],
    "hidden_layer_sizes": [tuple, list, Interval(numbers.Integral, 1, None, closed="left")],
    "batch_size": [Interval(numbers.Integral, 2, None, closed="left")],
    "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
    "optimizer": [StrOptions({"adam", "adamw", "sgd"})],
    "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
    "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
    "alpha": [Interval(numbers.Real, 0, 1, closed="left")],
    "temperature": [None, Interval(numbers.Real, 0, None, closed="neither")],
    "scale_input": ["boolean"], "device": [str, torch.device], "random_state": ["random_state"],
    "verbose": ["verbose"], "callbacks": [None, callable, list, tuple], "augment": [None, callable],
    "n_jobs": N_JOBS_CONSTRAINT,
}


class _ICONNetworkBase(BaseEstimator):
    """Shared pieces: CPU pickling, mapper construction and the Trainer call."""

    def __getstate__(self):
        # Pickle the fitted module on the CPU so that a CUDA-trained model loads anywhere.
        return state_on_cpu(super().__getstate__())

    def _make_encoder(self, spec, n_features, n_components, seed):
        if isinstance(spec, str) and spec not in ("mlp", "linear"):
            raise ValueError(f"mapper must be 'mlp', 'linear' or a module factory, got {spec!r}.")
        return make_mapper(spec, n_features, n_components, hidden=self.hidden_layer_sizes, random_state=seed)

    def _learned_kernel(self, row, defaults, q=None, **params):
        """A copy of the user's ``q``, or the row's learned kernel with ``params`` (None: ``defaults``)."""
        if q is not None:
            for name in (k for k, v in params.items() if v is not None):
                raise ValueError(f"{name} sets the row's learned kernel, but q={q!r} is given: set it on q "
                                 f"instead, or leave {name}=None.")
            return clone(q)
        q = row.make_q()
        for name, value in params.items():
            value = defaults.get(name) if value is None else value
            if value is None:
                continue
            if name not in q.get_params():
                raise ValueError(f"{name}={value!r} does not apply to method={self.method!r}: its learned "
                                 f"kernel {q!r} has no {name}. Leave {name}=None or pass q=... instead.")
            q.set_params(**{name: value})
        return q

    def _train(self, module, objective, n_samples, *, seed, sampler=None, desc="skicon"):
        """Run the Trainer for ``max_iter`` epochs and set ``n_iter_``, ``n_epochs_``, ``loss_curve_``."""
        batch_size = min(self.batch_size, n_samples)
        steps_per_epoch = max(1, n_samples // batch_size)
        trainer = Trainer(
            module, objective, n_samples=n_samples, batch_size=batch_size,
            n_steps=self.max_iter * steps_per_epoch, learning_rate=self.learning_rate,
            optimizer=self.optimizer, weight_decay=self.weight_decay, device=self._device,
            random_state=seed, callbacks=self.callbacks, verbose=self.verbose, estimator=self, desc=desc,
            distributed=True,
        )
        if sampler is not None:
            trainer.sample_batch = sampler
        self.loss_curve_ = np.asarray(trainer.run(), dtype=np.float64)
        self.loss_curve_iterations_ = np.asarray(trainer.history_iterations)
        self.n_iter_ = trainer.n_iter
        self.n_epochs_ = trainer.n_iter / steps_per_epoch


def _loo_knn_accuracy(Z, y, k=10):
    """Leave-one-out k-NN accuracy of labels ``y`` in the embedding ``Z`` (ICONContrastive.score)."""
    if Z.shape[0] < 2:
        raise ValueError("score needs at least 2 samples.")
    k = min(k, Z.shape[0] - 1)
    neigh = knn_graph(Z, k, method="exact").indices  # each point itself excluded
    _, codes = np.unique(y, return_inverse=True)
    votes = np.apply_along_axis(np.bincount, 1, codes[neigh], minlength=codes.max() + 1)
    return float(np.mean(votes.argmax(axis=1) == codes))


# ---------------------------------------------------------------------------------------------
# ICONClassifier
# ---------------------------------------------------------------------------------------------
class _PrototypeClassifier(nn.Module):
    """Encoder f followed by class prototypes w_c: logits f(x) . w_c."""

    def __init__(self, encoder, n_classes, n_components, generator):
        super().__init__()
        self.encoder = encoder
        bound = 1.0 / math.sqrt(n_components)
        init = (torch.rand(n_classes, n_components, generator=generator) * 2 - 1) * bound
        self.prototypes = nn.Parameter(init)

    def forward(self, X):
        """Return the representation f(x) of a batch."""
        return self.encoder(X)


@dataclass(frozen=True)
class _ClassifierPlan:
    """Resolved configuration of one fit (kept as ``_plan``); ``p``, ``q`` become ``p_``, ``q_``."""

    method: str
    p: Kernel
    q: Kernel
    alpha: float
    n_classes: int
    n_components: int
    seed: int


def _batch_loss(module, data, codes, batch, plan, augment, generator, *, reduction="mean"):
    """The objective on one batch (training and ``loss_``)."""
    device = module.prototypes.device
    xb = data[batch].to(device)
    if augment is not None:
        xb = _call_augment(augment, xb, generator)
    log_q = plan.q.log_prob(module(xb), module.prototypes)
    p = cross_entropy_block(codes[batch], plan.n_classes, plan.alpha, dtype=log_q.dtype, device=device)
    return icon_loss(p, log_q, reduction=reduction, validate=False)


class ICONClassifier(FeatureNamesOutMixin, ClassifierMixin, TransformerMixin, _ICONNetworkBase):
    """Cross-entropy classification as I-Con (Table 1, Corollary 3).

    ``p(c|i)`` is the indicator of sample ``i``'s label over the classes and ``q(c|i)`` a
    softmax over learned class prototypes ``w_c``: ``q(c|i) ∝ exp(f(x_i) . w_c / T)``.
    Minimising ``mean_i KL(p || q)`` is the usual cross-entropy; the debiasing ``alpha`` of
    eq. 2 is exactly label smoothing.

    Parameters
    ----------
    mapper : {"mlp", "linear"} or callable, default="mlp"
        Encoder ``f``. With ``"linear"`` the model is a (low-rank when ``n_components`` is
        smaller than the number of classes) multinomial logistic regression.
    method : {"cross_entropy"}, default="cross_entropy"
        Row of the periodic table (``skicon.list_methods("ICONClassifier")``); it gives ``q``.
    hidden_layer_sizes : tuple of int, default=(256,)
        Hidden layers of the ``"mlp"`` mapper.
    n_components : int or None, default=None
        Dimension of ``f(x)`` (and of the prototypes); None uses ``max(n_classes, 16)``.
    temperature : float or None, default=None
        Softmax temperature ``T``; None keeps the row's (1).
    alpha : float in [0, 1), default=0.0
        Debiasing of ``p``, i.e. label smoothing.
    augment : callable or None, default=None
        Training-time augmentation ``augment(X_batch, generator) -> X_view``, called
        positionally with a torch batch of shape ``(batch, n_features)`` and a
        :class:`torch.Generator` (the one signature of every estimator,
        :func:`skicon.augment.apply_augment`; the classes of :mod:`skicon.augment` follow it);
        it returns the same shape, finite.
    batch_size : int, default=128
        Samples per minibatch.
    max_iter : int, default=100
        Number of epochs; the Trainer runs ``max_iter * (n_samples // batch_size)`` iterations.
    optimizer : {"adam", "adamw", "sgd"}, default="adamw"
        Optimiser.
    learning_rate : float, default=1e-3
        Learning rate.
    weight_decay : float, default=1e-4
        Weight decay (L2 regularisation).
    scale_input : bool, default=True
        Divide the input by its overall standard deviation.
    device : {"auto", "cpu", "cuda"} or torch.device, default="auto"
        Training device.
    random_state : int, RandomState instance or None, default=None
        Seed of the weights, batches and augmentations.
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
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    module_ : torch.nn.Module
        Encoder with the class ``prototypes`` parameter.
    loss_ : float
        The training objective at the end of fit on the training data (float64, same code as
        training, consecutive blocks of ``batch_size``; augmentations drawn with seed 0): equal
        to ``get_method("cross_entropy").loss(X, transform(X), y=y, prototypes=W, p=p_, q=q_)``
        with ``W`` the prototypes, when there is no augmentation.
    loss_curve_ : ndarray of shape (n_logs,)
        The mean batch loss over each window of 50 iterations (and the last).
    loss_curve_iterations_ : ndarray of shape (n_logs,)
        Iteration of each entry of ``loss_curve_``.
    n_iter_ : int
        Iterations run (optimiser steps).
    n_epochs_ : float
        Epochs run, ``n_iter_ / (n_samples // batch_size)``.
    p_ : Kernel
        ``Prototypes()`` (the label indicator), ``Debiased`` when ``alpha > 0``.
    q_ : Kernel
        Learned kernel, ``Prototypes(temperature)``.
    input_scale_ : float
        Factor applied to the input.
    device_ : str
        The torch device training ran on, with its index (``"cpu"``, ``"cuda:0"``): ``device``
        resolved (``"auto"`` becomes ``"cuda:0"`` or ``"cpu"``).
    n_features_in_ : int
        Number of features seen in fit.

    See Also
    --------
    ICONContrastive : The contrastive rows of the same table.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from skicon import ICONClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = ICONClassifier(mapper="linear", max_iter=50, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 3)
    """

    _parameter_constraints = {
        **_COMMON_CONSTRAINTS,
        "method": [StrOptions(_method_names("ICONClassifier"))],
        "mapper": [StrOptions({"mlp", "linear"}), callable],
        "n_components": [None, Interval(numbers.Integral, 1, None, closed="left")],
    }

    def __init__(self, mapper="mlp", *, method="cross_entropy", hidden_layer_sizes=(256,), n_components=None,
                 temperature=None, alpha=0.0, augment=None, batch_size=128, max_iter=100, optimizer="adamw",
                 learning_rate=1e-3, weight_decay=1e-4, scale_input=True, device="auto", random_state=None,
                 verbose=0, callbacks=None, n_jobs=None):
        self.mapper = mapper
        self.method = method
        self.hidden_layer_sizes = hidden_layer_sizes
        self.n_components = n_components
        self.temperature = temperature
        self.alpha = alpha
        self.augment = augment
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

    def _make_plan(self, n_classes):
        row, implied = resolve_method("ICONClassifier", self.method)
        defaults, alpha, p = {**row.defaults, **implied}, float(self.alpha), row.make_p()
        n_components = self.n_components or defaults.get("n_components") or max(n_classes, 16)
        return _ClassifierPlan(
            method=row.name, p=Debiased(p, alpha=alpha) if alpha > 0 else p,
            q=self._learned_kernel(row, defaults, temperature=self.temperature), alpha=alpha,
            n_classes=n_classes, n_components=n_components, seed=seed_from_random_state(self.random_state),
        )

    @limit_threads
    def fit(self, X, y):
        """Train the encoder and the class prototypes (``max_iter`` epochs through the Trainer).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Class labels.

        Returns
        -------
        self : ICONClassifier
            The fitted estimator.
        """
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        label_encoder = LabelEncoder()
        codes = torch.as_tensor(label_encoder.fit_transform(y))
        self.classes_ = label_encoder.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"ICONClassifier needs at least 2 classes in y; got 1 class ({self.classes_[0]!r}).")
        plan = self._plan = self._make_plan(len(self.classes_))
        self._device = resolve_device(self.device)
        self.device_ = device_name(self._device)
        self.input_scale_ = _global_scale(X) if self.scale_input else 1.0
        encoder = self._make_encoder(self.mapper, X.shape[1], plan.n_components, plan.seed)
        module = _PrototypeClassifier(encoder, plan.n_classes, plan.n_components,
                                      torch_generator(plan.seed + 1)).to(self._device)
        data = _as_data(X, self.input_scale_, torch.float32)
        aug_gen = torch_generator(plan.seed + 7919)
        if self.augment is not None:
            _call_augment(self.augment, data[:4].to(self._device), torch_generator(0))

        def objective(module, batch, teacher):
            return _batch_loss(module, data, codes, batch, plan, self.augment, aug_gen)

        self._train(module, objective, X.shape[0], seed=plan.seed, desc="ICONClassifier")
        self.module_ = module
        self.p_, self.q_ = plan.p, plan.q
        self.loss_ = self._evaluate(_as_data(X, self.input_scale_, torch.float64), codes)
        return self

    def _evaluate(self, data, codes):
        """Mean objective over consecutive blocks of ``batch_size`` (float64, seed-0 augmentations)."""
        module, gen = _double(self.module_), torch_generator(_EVAL_SEED)
        total = 0.0
        with torch.inference_mode():
            for s in range(0, data.shape[0], self.batch_size):
                batch = torch.arange(s, min(s + self.batch_size, data.shape[0]))
                total += float(_batch_loss(module, data, codes, batch, self._plan, self.augment, gen,
                                           reduction="sum"))
        return total / data.shape[0]

    def _log_proba(self, X):
        check_is_fitted(self, "module_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        Z = torch.as_tensor(_encode(self.module_, X, scale=self.input_scale_))
        W = self.module_.prototypes.detach().double().cpu()
        return self.q_.log_prob(Z, W).numpy()

    @limit_threads
    def predict_proba(self, X):
        """Class probabilities q(c|x).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Rows sum to one; columns follow ``classes_``.
        """
        return np.exp(self._log_proba(X))

    @limit_threads
    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log class probabilities.
        """
        return self._log_proba(X)

    @limit_threads
    def predict(self, X):
        """Most probable class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        log_proba = self._log_proba(X)  # checks that the model is fitted
        return self.classes_[np.argmax(log_proba, axis=1)]

    @property
    def _n_features_out(self):
        """Width of the output of :meth:`transform` (names of ``get_feature_names_out``)."""
        return check_is_fitted(self, "module_") or self._plan.n_components

    @limit_threads
    def transform(self, X):
        """Representation ``f(x)`` (the penultimate features), in the input's float dtype.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components)
        """
        check_is_fitted(self, "module_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return _encode(self.module_, X, scale=self.input_scale_).astype(_output_dtype(X), copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
