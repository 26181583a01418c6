"""Contrastive feature learning and classification as I-Con estimators.

InfoNCE / SimCLR, SupCon, triplet, CMC / CLIP, t-SimCLR and cross-entropy are one loss,
``mean_i KL(p(.|i) || q(.|i))`` (paper eq. 1), with different supervisory ``p`` (which
samples are positives of an anchor) and learned ``q`` (a kernel on the encoder's output).

The pure functions at the top build the per-batch ``p`` and candidate masks; the estimators
below only validate input, draw batches and call them.
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from torch import nn

from .objectives import icon_loss
from ._registry import get_method
from ._training import Trainer, check_callbacks
from ._utils import resolve_device, seed_from_random_state, torch_generator
from .kernels import Debiased, Kernel, Prototypes, UniformKNN
from .mappers import make_mapper

__all__ = [
    "ICONContrastive",
    "ICONClassifier",
    "positive_pairs_block",
    "debias_block",
    "triplet_block",
    "contrastive_loss",
    "cross_entropy_block",
]

CONTRASTIVE_METHODS = ("infonce", "simclr", "supcon", "triplet", "cmc", "clip", "tsimclr")
POSITIVES = ("auto", "labels", "groups", "augment", "views", "neighbors", "kernel")


# ---------------------------------------------------------------------------------------------
# Pure maths: per-batch supervisory distributions
# ---------------------------------------------------------------------------------------------
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

    ``N_i`` is the number of candidates of anchor ``i``. Rows without any positive stay zero
    so that the loss ignores them, as it does without debiasing.

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
    """
    if alpha == 0:
        return p
    mixed = Debiased(_BlockOnly(), alpha=alpha).finalize_block(p, non_candidates)
    has_mass = p.sum(dim=1, keepdim=True) > 0
    return torch.where(has_mass, mixed, torch.zeros_like(mixed))


class _BlockOnly(Kernel):
    """Neutral kernel used to reach :class:`Debiased`'s block maths."""


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


def contrastive_loss(Z, p, non_candidates, q, *, alpha=0.0, log_scale=None):
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
        Debiasing of ``p`` (eq. 2).
    log_scale : torch.Tensor or None, default=None
        Learned log inverse temperature multiplying ``q``'s log-affinities.

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    q_eff = q if log_scale is None else _with_scale(q, log_scale)
    log_q = q_eff.log_prob(Z, exclude=non_candidates)
    p = p.to(Z.dtype)
    if alpha == 0:
        # Positives are a small part of the block: hand the loss only those (sparse path).
        idx = p.nonzero().T
        p = torch.sparse_coo_tensor(
            idx, p[idx[0], idx[1]], p.shape, is_coalesced=True, check_invariants=False
        )
        return icon_loss(p, log_q)
    return icon_loss(debias_block(p, non_candidates, alpha), log_q)


class _Scaled(Kernel):
    """A kernel whose log-affinities are multiplied by a learned factor exp(log_scale)."""

    def __init__(self, kernel=None, log_scale=None):
        self.kernel = kernel
        self.log_scale = log_scale

    @property
    def include_self(self):
        return self.kernel.include_self

    def log_weights(self, Z, Z_cand=None):
        # Clamped like CLIP's logit scale so that a runaway temperature cannot overflow.
        factor = torch.exp(self.log_scale.clamp(-math.log(100.0), math.log(100.0)))
        return self.kernel.log_weights(Z, Z_cand) * factor


def _with_scale(q, log_scale):
    if isinstance(q, Debiased):
        return Debiased(_Scaled(q.kernel, log_scale), alpha=q.alpha)
    return _Scaled(q, log_scale)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------
class _Encoders(nn.Module):
    """One encoder per view (a single one for ordinary data) and an optional log-scale."""

    def __init__(self, encoders, learn_scale=False):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.log_scale = nn.Parameter(torch.zeros(())) if learn_scale else None

    def forward(self, X, view=0):
        """Encode a batch of view ``view``."""
        return self.encoders[view](X)


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


# ---------------------------------------------------------------------------------------------
# Shared estimator machinery
# ---------------------------------------------------------------------------------------------
def _call_augment(augment, X, generator):
    """Call a user ``augment`` with the generator when its signature accepts one."""
    try:
        params = inspect.signature(augment).parameters
    except (TypeError, ValueError):
        params = {}
    takes_generator = "generator" in params or len(params) >= 2 or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values()
    )
    out = augment(X, generator=generator) if takes_generator else augment(X)
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(np.asarray(out), dtype=X.dtype, device=X.device)
    if out.shape != X.shape:
        raise ValueError(
            f"augment must return a batch of the same shape as its input; it turned "
            f"{tuple(X.shape)} into {tuple(out.shape)}. Check the augmentation's image_shape."
        )
    if not torch.isfinite(out).all():
        raise ValueError("augment returned NaN or infinite values.")
    return out.to(dtype=X.dtype, device=X.device)


def _global_scale(X):
    """Inverse of the overall standard deviation of the training data (1 if constant)."""
    std = float(np.std(X))
    return 1.0 / std if np.isfinite(std) and std > 0 else 1.0


def _output_dtype(X):
    return X.dtype if X.dtype in (np.float32, np.float64) else np.float64


def _encode(module, X, *, view=0, scale=1.0, batch_size=4096):
    """Encode ``X`` in batches under inference mode; returns float64 numpy.

    Float64 input is encoded by a float64 copy of the module, so that the result does not
    depend on how the rows are batched (float32 matrix products differ in the last bits
    between batch sizes).
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
    if not out:
        return np.empty((0, 0))
    return torch.cat(out).double().cpu().numpy()


class _TorchStateMixin:
    """Pickle the fitted module on the CPU so that a CUDA-trained model loads anywhere."""

    def __getstate__(self):
        state = self.__dict__.copy()
        module = state.get("module_")
        if module is not None and any(t.device.type != "cpu" for t in module.parameters()):
            state["module_"] = copy.deepcopy(module).to("cpu")
            state["_device"] = torch.device("cpu")
        return state


_COMMON_CONSTRAINTS = {
    "mapper": [StrOptions({"mlp", "linear"}), callable, list, tuple],
    "hidden_layer_sizes": [tuple, list, Interval(numbers.Integral, 1, None, closed="left")],
    "batch_size": [Interval(numbers.Integral, 2, None, closed="left")],
    "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
    "optimizer": [StrOptions({"adam", "adamw", "sgd"})],
    "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
    "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
    "scale_input": ["boolean"],
    "device": [str, torch.device],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "callbacks": [None, callable, list, tuple],
    "alpha": [Interval(numbers.Real, 0, 1, closed="left")],
    "augment": [None, callable],
}


class _ICONNetworkBase(_TorchStateMixin, BaseEstimator):
    """Shared pieces: mapper construction, trainer, transform."""

    def _make_encoder(self, spec, n_features, n_components, seed):
        if isinstance(spec, str) and spec not in ("mlp", "linear"):
            raise ValueError(f"mapper must be 'mlp', 'linear' or a module factory, got {spec!r}.")
        return make_mapper(
            spec, n_features, n_components, hidden=self.hidden_layer_sizes, random_state=seed
        )

    def _run_trainer(self, module, loss_fn, n_samples, sampler=None, seed=0, desc="skicon"):
        callbacks = check_callbacks(self.callbacks)
        batch_size = min(self.batch_size, n_samples)
        steps_per_epoch = max(1, n_samples // batch_size)
        trainer = Trainer(
            module,
            loss_fn,
            n_samples=n_samples,
            batch_size=batch_size,
            n_steps=self.max_iter * steps_per_epoch,
            learning_rate=self.learning_rate,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            device=self._device,
            random_state=seed,
            callbacks=callbacks,
            verbose=self.verbose,
            estimator=self,
            desc=desc,
        )
        if sampler is not None:
            trainer.sample_batch = sampler
        history = trainer.run()
        curve = [
            float(np.mean(history[s : s + steps_per_epoch]))
            for s in range(0, len(history), steps_per_epoch)
        ]
        self.loss_curve_ = curve
        self.n_iter_ = len(curve)
        self.n_steps_ = trainer.n_iter
        return history


# ---------------------------------------------------------------------------------------------
# ICONContrastive
# ---------------------------------------------------------------------------------------------
class ICONContrastive(TransformerMixin, _ICONNetworkBase):
    """Contrastive feature learning (InfoNCE/SimCLR, SupCon, triplet, CMC/CLIP, t-SimCLR).

    Trains an encoder ``f`` so that the learned neighbourhood distribution
    ``q(j|i)`` of its outputs matches a supervisory distribution ``p(j|i)`` that is uniform
    over the *positives* of each anchor, minimising the I-Con loss
    ``mean_i KL(p(.|i) || q(.|i))`` over minibatches; every other point of the batch is a
    negative. ``transform`` returns ``f(X)``.

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
    method : {"infonce", "simclr", "supcon", "triplet", "cmc", "clip", "tsimclr"}, \
            default="infonce"
        Row of the paper's Table 1 (``skicon.get_method``). It sets the learned kernel when
        ``q`` is None (``Cosine`` with temperature 0.5 for infonce/simclr and 0.1 for
        supcon/cmc/clip, ``Gaussian`` ``exp(-||z_i - z_j||^2)`` for triplet,
        ``StudentT(dof=1)`` for tsimclr) and checks the positives: ``"supcon"`` needs ``y``; ``"cmc"``/``"clip"`` need views (or
        ``augment``, then the two augmented views are the modalities); ``"triplet"``
        keeps one positive and one random negative per anchor (Theorem 5).
    p : Kernel or None, default=None
        Explicit supervisory kernel on the input (e.g. ``UniformKNN(15)`` or
        ``Gaussian(perplexity=30)``); positives are drawn from its rows. None derives ``p``
        from the positives described above.
    q : Kernel or None, default=None
        Explicit learned kernel (``Cosine``, ``Gaussian``, ``StudentT``, ``DotProduct``,
        possibly ``Debiased(...)`` to debias ``q`` too). Overrides ``method``'s kernel,
        ``temperature`` and ``dof``.
    positives : {"auto", "labels", "groups", "augment", "views", "neighbors", "kernel"}, \
            default="auto"
        Source of positive pairs; "auto" is described above.
    temperature : float or None, default=None
        Temperature of the method's cosine kernel; None keeps the row's default.
    dof : float or None, default=None
        Degrees of freedom of the Student-t kernel of ``method="tsimclr"``; None keeps the
        row's default (1, the Cauchy kernel).
    learn_temperature : bool, default=False
        Learn a factor ``s`` (initialised to 1, clamped to [0.01, 100]) multiplying ``q``'s
        log-affinities: a learned inverse temperature, as in CLIP.
    alpha : float in [0, 1), default=0.0
        Debiasing of ``p`` (paper eq. 2): every candidate gets ``alpha / N`` extra mass.
    augment : callable or None, default=None
        ``augment(X_batch, generator) -> X_batch_augmented`` (torch tensors, same shape).
    n_neighbors : int, default=10
        Neighbours per sample for neighbour positives.
    mapper : {"mlp", "linear"}, callable or list, default="mlp"
        Encoder: an MLP with ``hidden_layer_sizes``, a linear map, or a factory
        ``mapper(n_features, n_components) -> torch.nn.Module`` taking flat batches (e.g. a
        small CNN that reshapes its input). With views, a list gives one spec per view.
    hidden_layer_sizes : tuple of int, default=(256, 256)
        Hidden layers of the ``"mlp"`` mapper.
    n_components : int, default=32
        Dimension of the learned representation.
    batch_size : int, default=256
        Anchors per minibatch (each contributes one or two points).
    max_iter : int, default=100
        Number of epochs (passes over the anchors).
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
        Seed of the initial weights, the batches, the augmentations and the neighbour draws.
        The same seed gives the same embedding on the CPU.
    verbose : int, default=0
        Show a tqdm progress bar.
    callbacks : callable or list of callables, default=None
        ``cb(step, loss, estimator)`` after every optimisation step; truthy stops training.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained encoders (``module_(X_tensor, view)``).
    loss_curve_ : list of float
        Mean loss of each epoch.
    n_iter_ : int
        Epochs run.
    n_steps_ : int
        Optimisation steps run.
    positives_ : str
        Source of positives that was used.
    q_ : Kernel
        Learned kernel that was used.
    input_scale_ : float or list of float
        Factor applied to the input (per view for views).
    n_features_in_ : int
        Number of features seen in fit (of the first view).
    n_views_ : int
        Number of views (1 unless fitted on a list of views).

    See Also
    --------
    ICONClassifier : Cross-entropy, the classification row of the same table.

    Notes
    -----
    ``score(X, y)`` returns the leave-one-out 10-nearest-neighbour accuracy of the embedding
    of ``X`` when labels are given and ``-loss`` (positives as in fit, ``alpha=0``) otherwise,
    so ``GridSearchCV`` can tune ``alpha``, ``temperature`` or ``q`` without a ``scoring``.

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
        "method": [StrOptions(set(CONTRASTIVE_METHODS))],
        "p": [None, Kernel],
        "q": [None, Kernel],
        "positives": [StrOptions(set(POSITIVES))],
        "temperature": [None, Interval(numbers.Real, 0, None, closed="neither")],
        "dof": [None, Interval(numbers.Real, 0, None, closed="neither")],
        "learn_temperature": ["boolean"],
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        method="infonce",
        *,
        p=None,
        q=None,
        positives="auto",
        temperature=None,
        dof=None,
        learn_temperature=False,
        alpha=0.0,
        augment=None,
        n_neighbors=10,
        mapper="mlp",
        hidden_layer_sizes=(256, 256),
        n_components=32,
        batch_size=256,
        max_iter=100,
        optimizer="adamw",
        learning_rate=1e-3,
        weight_decay=1e-5,
        scale_input=True,
        device="auto",
        random_state=None,
        verbose=0,
        callbacks=None,
    ):
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

    # -- configuration ------------------------------------------------------------------------
    def _learned_kernel(self):
        if self.q is not None:
            return self.q
        row = {"simclr": "infonce", "clip": "cmc"}.get(self.method, self.method)
        q = get_method(row).q()  # the periodic table's kernel for this row
        if self.temperature is not None and "temperature" in q.get_params():
            q.set_params(temperature=self.temperature)
        if self.dof is not None and "dof" in q.get_params():
            q.set_params(dof=self.dof)
        return q

    def _resolve_positives(self, is_views, y, groups):
        pos = self.positives
        if pos == "auto":
            if is_views:
                pos = "views"
            elif self.p is not None:
                pos = "kernel"
            elif groups is not None:
                pos = "groups"
            elif self.method == "supcon" or (y is not None and self.augment is None):
                pos = "labels"
            elif self.augment is not None:
                pos = "augment"
            else:
                pos = "neighbors"
        if self.method == "supcon" and y is None:
            raise ValueError("method='supcon' uses class labels as positives; call fit(X, y).")
        needs = {
            "views": (is_views, "X to be a list of views [X_a, X_b, ...]"),
            "labels": (y is not None, "labels y: call fit(X, y)"),
            "groups": (groups is not None, "group ids: call fit(X, groups=groups)"),
            "augment": (self.augment is not None, "an augment callable: set augment=..."),
            "kernel": (self.p is not None, "a supervisory kernel: set p=..."),
        }
        if pos in needs and not needs[pos][0]:
            raise ValueError(f"positives={pos!r} needs {needs[pos][1]}.")
        if is_views and pos != "views":
            raise ValueError(f"X is a list of views, which only works with positives='views', not {pos!r}.")
        if self.method == "supcon" and pos != "labels":
            raise ValueError(
                f"method='supcon' uses class labels as positives; call fit(X, y) (got positives={pos!r})."
            )
        if self.method in ("cmc", "clip") and pos not in ("views", "augment"):
            raise ValueError(
                f"method={self.method!r} contrasts views: pass fit([X_a, X_b]) or set augment=... "
                f"(got positives={pos!r})."
            )
        return pos

    # -- validation ---------------------------------------------------------------------------
    def _validate_views(self, X, reset):
        if len(X) < 2:
            raise ValueError(f"A list of views needs at least two views, got {len(X)}.")
        views = [check_array(v, dtype=[np.float64, np.float32], input_name=f"X[{k}]") for k, v in enumerate(X)]
        lengths = [v.shape[0] for v in views]
        if len(set(lengths)) != 1:
            raise ValueError(
                f"All views must have the same number of samples (row k of each view is one "
                f"sample); got mismatched view lengths {lengths}."
            )
        if reset:
            self.n_features_in_ = views[0].shape[1]
            self.view_n_features_ = [v.shape[1] for v in views]
        return views

    @staticmethod
    def _is_views(X):
        return isinstance(X, (list, tuple)) and len(X) > 0 and all(
            hasattr(v, "shape") and len(getattr(v, "shape")) == 2 for v in X
        )

    def _check_labels(self, y, n):
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"y must be a 1-d array of length n_samples={n}, got shape {y.shape}.")
        check_classification_targets(y)
        codes = LabelEncoder().fit_transform(y)
        if codes.max(initial=0) < 1:
            raise ValueError(
                "y has a single class: every pair would be positive and the loss is constant. "
                "Pass labels with at least two classes, or fit without y for self-supervised positives."
            )
        if np.bincount(codes).max() < 2:
            raise ValueError("Every class in y has a single sample, so no sample has a positive.")
        return codes

    def _check_groups(self, groups, n):
        groups = np.asarray(groups)
        if groups.ndim != 1 or groups.shape[0] != n:
            raise ValueError(f"groups must be a 1-d array of length n_samples={n}, got shape {groups.shape}.")
        codes = np.unique(groups, return_inverse=True)[1].ravel()
        if np.bincount(codes).max() < 2:
            raise ValueError("Every group has a single sample, so no sample has a positive; "
                             "samples sharing a group id are positives.")
        return codes

    # -- fit ----------------------------------------------------------------------------------
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
        is_views = self._is_views(X)
        if is_views:
            views = self._validate_views(X, reset=True)
            n = views[0].shape[0]
        else:
            X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
            views = [X]
            n = X.shape[0]
        if n < 2:
            raise ValueError(f"Contrastive learning needs at least 2 samples, got n_samples = {n}.")
        self.positives_ = self._resolve_positives(is_views, y, groups)
        self.n_views_ = len(views)
        self._device = resolve_device(self.device)
        seed = seed_from_random_state(self.random_state)
        self.q_ = self._learned_kernel()

        scales = [_global_scale(v) if self.scale_input else 1.0 for v in views]
        self.input_scale_ = scales if is_views else scales[0]
        data = [torch.as_tensor(v * s, dtype=torch.float32) for v, s in zip(views, scales)]

        specs = self.mapper if isinstance(self.mapper, (list, tuple)) else [self.mapper] * len(views)
        if len(specs) != len(views):
            raise ValueError(f"mapper has {len(specs)} specs for {len(views)} views.")
        encoders = [
            self._make_encoder(spec, v.shape[1], self.n_components, seed + k)
            for k, (spec, v) in enumerate(zip(specs, views))
        ]
        module = _Encoders(encoders, learn_scale=self.learn_temperature).to(self._device)

        batcher = self._make_batcher(data, y, groups, seed)
        self._check_augment(data[0])
        loss_fn = self._make_loss_fn(batcher, seed)
        sampler = batcher.sampler if hasattr(batcher, "sampler") else None
        self._run_trainer(module, loss_fn, n, sampler=sampler, seed=seed, desc="ICONContrastive")
        self.module_ = module
        return self

    def _check_augment(self, X):
        if self.augment is None:
            return
        gen = torch_generator(0)
        _call_augment(self.augment, X[: min(4, X.shape[0])].to(self._device), gen)

    def _make_batcher(self, data, y, groups, seed):
        pos = self.positives_
        n = data[0].shape[0]
        ids = None
        if pos == "labels":
            ids = self._check_labels(y, n)
        elif pos == "groups":
            ids = self._check_groups(groups, n)
        partners = None
        if pos in ("neighbors", "kernel"):
            kernel = self.p if pos == "kernel" else UniformKNN(n_neighbors=min(self.n_neighbors, n - 1))
            P = sp.csr_matrix(kernel.conditional(data[0].numpy().astype(np.float64), y=y, groups=groups,
                                                 random_state=seed))
            if P.shape != (n, n):
                raise ValueError(f"p.conditional must return an (n, n) matrix, got {P.shape}.")
            partners = _RowSampler(P)
        return _Batcher(
            data=data,
            ids=None if ids is None else torch.as_tensor(ids),
            partners=partners,
            augment=self.augment if pos != "views" else None,
            two_views=self.augment is not None and pos != "views",
            cross_view=self.method in ("cmc", "clip"),
            device=self._device,
            generator=torch_generator(seed + 7919),
            batch_size=min(self.batch_size, n),
            group_batches=pos == "groups",
        )

    def _make_loss_fn(self, batcher, seed):
        triplet_gen = torch_generator(seed + 104729)
        q = self.q_
        alpha = float(self.alpha)
        triplet = self.method == "triplet"

        def loss_fn(module, batch, teacher):
            Z, p, non_cand = batcher.points(module, batch)
            if triplet:
                p, non_cand = triplet_block(p, non_cand, triplet_gen)
            return contrastive_loss(Z, p, non_cand, q, alpha=alpha, log_scale=module.log_scale)

        return loss_fn

    # -- transform ------------------------------------------------------------------------------
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
            views = self._validate_views(X, reset=False)
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
    def score(self, X, y=None, groups=None):
        """Default model-selection score (higher is better).

        With labels: the leave-one-out 10-nearest-neighbour accuracy of the embedding of ``X``
        (a label-aware measure comparable across ``alpha``, ``temperature`` and ``q``).
        Without labels: minus the I-Con loss on ``X`` with the positives used in fit, without
        debiasing and with a fixed seed, evaluated in batches of ``batch_size``.

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
            Z = self.transform(X)
            return _loo_knn_accuracy(Z, np.asarray(y), k=10)
        return -self._heldout_loss(X, y, groups)

    def _heldout_loss(self, X, y, groups):
        is_views = self._is_views(X)
        if is_views:
            views = self._validate_views(X, reset=False)
            scales = self.input_scale_
        else:
            views = [validate_data(self, X, dtype=[np.float64, np.float32], reset=False)]
            scales = [self.input_scale_]
        n = views[0].shape[0]
        data = [torch.as_tensor(v * s, dtype=torch.float32) for v, s in zip(views, scales)]
        saved = self.positives_
        batcher = self._make_batcher(data, y, groups, seed=0)
        self.positives_ = saved
        module = self.module_
        gen = torch_generator(1)
        total, count = 0.0, 0
        was_training = module.training
        module.eval()
        with torch.inference_mode():
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, batcher.batch_size):
                batch = order[s : s + batcher.batch_size]
                if len(batch) < 2:
                    continue
                Z, p, non_cand = batcher.points(module, batch)
                if self.method == "triplet":
                    p, non_cand = triplet_block(p, non_cand, gen)
                total += float(contrastive_loss(Z, p, non_cand, self.q_, log_scale=module.log_scale)) * len(batch)
                count += len(batch)
        module.train(was_training)
        return total / max(count, 1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.non_deterministic = self.device not in ("cpu",) and not (
            self.device == "auto" and not torch.cuda.is_available()
        )
        return tags


class _RowSampler:
    """Draw one column per row from a row-stochastic sparse matrix (CSR)."""

    def __init__(self, P):
        P = sp.csr_matrix(P)
        self.indptr = P.indptr
        self.indices = P.indices
        self.cum = np.zeros_like(P.data)
        for r in range(P.shape[0]):
            a, b = P.indptr[r], P.indptr[r + 1]
            self.cum[a:b] = np.cumsum(P.data[a:b])
        self.empty = np.diff(P.indptr) == 0

    def draw(self, rows, generator):
        rows = np.asarray(rows)
        u = torch.rand(len(rows), generator=generator, dtype=torch.float64).numpy()
        out = rows.copy()
        for k, r in enumerate(rows):
            a, b = self.indptr[r], self.indptr[r + 1]
            if a == b:
                continue  # no neighbour: the copy is marked as the same sample below
            c = self.cum[a:b]
            pos = min(int(np.searchsorted(c, u[k] * c[-1], side="right")), b - a - 1)
            out[k] = self.indices[a + pos]
        return out


class _Batcher:
    """Turn a batch of anchor indices into batch points, their p block and exclusions."""

    def __init__(self, *, data, ids, partners, augment, two_views, cross_view, device, generator,
                 batch_size, group_batches):
        self.data = data
        self.ids = ids
        self.partners = partners
        self.augment = augment
        self.two_views = two_views
        self.cross_view = cross_view
        self.device = device
        self.generator = generator
        self.batch_size = batch_size
        self._group_order = None
        if group_batches:
            self.sampler = self._group_sampler

    def _group_sampler(self):
        """Batches made of whole groups, so that every positive pair can meet in a batch."""
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
        batch = torch.as_tensor(batch).cpu()
        if self.partners is None and not self.two_views and len(self.data) == 1:
            return self._single(module, batch)
        if len(self.data) > 1:
            return self._views(module, batch)
        return self._pairs(module, batch)

    def _x(self, view, idx):
        return self.data[view][idx].to(self.device)

    def _maybe_augment(self, X):
        return X if self.augment is None else _call_augment(self.augment, X, self.generator)

    def _single(self, module, batch):
        Z = module(self._x(0, batch), 0)
        ids = self.ids[batch].to(self.device)
        p, non_cand = positive_pairs_block(ids, dtype=Z.dtype)
        return Z, p, non_cand

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
            partner = torch.as_tensor(self.partners.draw(batch.numpy(), self.generator))
            idx = torch.cat([batch, partner])
            ids = torch.arange(b).repeat(2)
        else:
            idx = torch.cat([batch, batch])
            ids = self.ids[batch].repeat(2) if self.ids is not None else torch.arange(b).repeat(2)
        X = self._x(0, idx)
        if self.two_views:
            X = torch.cat([self._maybe_augment(X[:b]), self._maybe_augment(X[b:])])
        Z = module(X, 0)
        ids = ids.to(self.device)
        same_sample = None
        if not self.two_views:
            # Un-augmented copies of one sample are identical points, not a pair or a negative;
            # a copy paired with itself (no neighbour) carries no signal either.
            idx_d = idx.to(self.device)
            same_sample = idx_d[:, None] == idx_d[None, :]
        view_ids = torch.arange(2, device=self.device).repeat_interleave(b)
        p, non_cand = positive_pairs_block(
            ids, view_ids=view_ids, cross_view=self.cross_view, same_sample=same_sample, dtype=Z.dtype
        )
        return Z, p, non_cand


def _loo_knn_accuracy(Z, y, k=10):
    """Leave-one-out k-NN accuracy of labels ``y`` in the embedding ``Z``."""
    from sklearn.neighbors import NearestNeighbors

    n = Z.shape[0]
    if n < 2:
        raise ValueError("score needs at least 2 samples.")
    k = min(k, n - 1)
    nn_ = NearestNeighbors(n_neighbors=k + 1).fit(Z)
    idx = nn_.kneighbors(Z, return_distance=False)
    # Drop each point itself (normally the first neighbour; duplicates may reorder it).
    neigh = np.array([[j for j in row if j != i][:k] for i, row in enumerate(idx)])
    _, codes = np.unique(y, return_inverse=True)
    votes = np.apply_along_axis(np.bincount, 1, codes[neigh], minlength=codes.max() + 1)
    return float(np.mean(votes.argmax(axis=1) == codes))


# ---------------------------------------------------------------------------------------------
# ICONClassifier
# ---------------------------------------------------------------------------------------------
def cross_entropy_block(codes, n_classes, alpha=0.0, dtype=torch.float32, device="cpu"):
    """Supervisory p(c|i): the indicator of the label, debiased (= label smoothing).

    Parameters
    ----------
    codes : torch.Tensor of shape (B,)
        Integer class codes.
    n_classes : int
        Number of classes (the candidates).
    alpha : float, default=0.0
        Debiasing weight; p~ = (1 - alpha) 1[c = y_i] + alpha / n_classes.
    dtype : torch.dtype, default=torch.float32
        Output dtype.
    device : str or torch.device, default="cpu"
        Output device.

    Returns
    -------
    torch.Tensor of shape (B, n_classes)
    """
    p = torch.nn.functional.one_hot(codes.long(), n_classes).to(dtype=dtype, device=device)
    if alpha == 0:
        return p
    return Debiased(_BlockOnly(), alpha=alpha).finalize_block(p, None)


class ICONClassifier(ClassifierMixin, TransformerMixin, _ICONNetworkBase):
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
    hidden_layer_sizes : tuple of int, default=(256,)
        Hidden layers of the ``"mlp"`` mapper.
    n_components : int or None, default=None
        Dimension of ``f(x)`` (and of the prototypes); None uses ``max(n_classes, 16)``.
    temperature : float, default=1.0
        Softmax temperature ``T``.
    alpha : float in [0, 1), default=0.0
        Debiasing of ``p``, i.e. label smoothing.
    augment : callable or None, default=None
        Optional training-time augmentation ``augment(X_batch, generator)``.
    batch_size : int, default=128
        Samples per minibatch.
    max_iter : int, default=100
        Number of epochs.
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
        Show a tqdm progress bar.
    callbacks : callable or list of callables, default=None
        ``cb(step, loss, estimator)`` after each step; truthy stops training.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    module_ : torch.nn.Module
        Encoder with the class ``prototypes`` parameter.
    loss_curve_ : list of float
        Mean loss of each epoch.
    n_iter_ : int
        Epochs run.
    n_steps_ : int
        Optimisation steps run.
    input_scale_ : float
        Factor applied to the input.
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
        "mapper": [StrOptions({"mlp", "linear"}), callable],
        "n_components": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "temperature": [Interval(numbers.Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        mapper="mlp",
        *,
        hidden_layer_sizes=(256,),
        n_components=None,
        temperature=1.0,
        alpha=0.0,
        augment=None,
        batch_size=128,
        max_iter=100,
        optimizer="adamw",
        learning_rate=1e-3,
        weight_decay=1e-4,
        scale_input=True,
        device="auto",
        random_state=None,
        verbose=0,
        callbacks=None,
    ):
        self.mapper = mapper
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

    def fit(self, X, y):
        """Train the encoder and the class prototypes.

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
        encoder = LabelEncoder()
        codes = encoder.fit_transform(y)
        self.classes_ = encoder.classes_
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(
                f"ICONClassifier needs at least 2 classes in y; got 1 class ({self.classes_[0]!r})."
            )
        self._device = resolve_device(self.device)
        seed = seed_from_random_state(self.random_state)
        self.input_scale_ = _global_scale(X) if self.scale_input else 1.0
        n_components = self.n_components or max(n_classes, 16)
        enc = self._make_encoder(self.mapper, X.shape[1], n_components, seed)
        module = _PrototypeClassifier(enc, n_classes, n_components, torch_generator(seed + 1)).to(self._device)

        data = torch.as_tensor(X * self.input_scale_, dtype=torch.float32)
        targets = torch.as_tensor(codes)
        aug_gen = torch_generator(seed + 7919)
        q = Prototypes(temperature=self.temperature)
        alpha = float(self.alpha)
        device = self._device
        augment = self.augment
        if augment is not None:
            _call_augment(augment, data[:4].to(device), torch_generator(0))

        def loss_fn(mod, batch, teacher):
            xb = data[batch].to(device)
            if augment is not None:
                xb = _call_augment(augment, xb, aug_gen)
            log_q = q.log_prob(mod(xb), mod.prototypes)
            p = cross_entropy_block(targets[batch], n_classes, alpha, dtype=log_q.dtype, device=device)
            return icon_loss(p, log_q)

        self._run_trainer(module, loss_fn, X.shape[0], seed=seed, desc="ICONClassifier")
        self.module_ = module
        return self

    def _log_proba(self, X):
        check_is_fitted(self, "module_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        Z = torch.as_tensor(_encode(self.module_, X, scale=self.input_scale_))
        W = self.module_.prototypes.detach().double().cpu()
        return Prototypes(temperature=self.temperature).log_prob(Z, W).numpy()

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

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        return self._log_proba(X)

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
        log_proba = self._log_proba(X)
        return self.classes_[np.argmax(log_proba, axis=1)]

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
