"""The one optimisation loop of skicon, its optimisers and its batch samplers.

Every estimator trains through :class:`Trainer`: the t-SNE engine (analytic gradients, the
gains optimiser, early-exaggeration phases), parametric embeddings, the exact dense path
(LBFGS), the k-means relaxation, clustering heads, contrastive encoders and classifiers. One
iteration is one optimiser step; callbacks, ``n_iter_``, ``loss_curve_`` and the progress bar
mean the same thing in every estimator: the loss is logged, and the callbacks are called, every
:data:`LOG_EVERY` iterations and after the last one. A minibatch objective logs the mean loss
of the iterations since the previous log; an objective whose loss costs extra work (the t-SNE
engine's exact loss needs one more pass over the edges, 40-60 % of an iteration) computes it
only when :attr:`Trainer.wants_loss` is true.

The step is a closure (as ``torch.optim.Optimizer.step(closure)`` expects): it zeroes the
gradients, evaluates the objective and back-propagates when the loss carries an autograd graph.
Objectives with closed-form gradients (the t-SNE engine) write ``.grad`` themselves and return
a plain loss. Behaviour is changed by small overridable methods (``make_optimizer``,
``sample_batch``, ``compute_loss``, ``update_teacher``) or by callbacks, not by new loops.
"""

import copy
import math
import time

import numpy as np
import torch

from ._threads import torch_threads
from ._utils import as_tensor, torch_generator

__all__ = ["Trainer", "GainsSGD", "RowSampler", "check_callbacks", "ConvergenceStop", "batched_forward", "LOG_EVERY",
           "log_means"]

#: Iterations between two loss logs and callback calls, in every estimator (and after the last
#: iteration). 50 is scikit-learn's and openTSNE's t-SNE cadence: the t-SNE engine's exact loss
#: then costs about 1 % of the fit instead of 40-60 % when computed at every iteration.
LOG_EVERY = 50


class GainsSGD:
    """Gradient descent with momentum and per-coordinate gains (delta-bar-delta), as in t-SNE.

    The gain of a coordinate grows by 0.2 while its gradient keeps opposing the last update;
    when it flips, the gain shrinks by a factor 0.8 and ``min_gain`` is added (openTSNE's rule:
    gains settle at ``5 * min_gain`` at the least, rather than being clipped at ``min_gain``).
    Each point's update is capped in length and the embedding is re-centred after the step (the
    loss is translation invariant). Against the clipped rule of the original t-SNE code, same
    kNN graph, one fit each on two cores: exact KL 3.9724 -> 3.9664 on 50,000 blobs, 3.0347 ->
    3.0318 on MNIST-1D 20k, 3.6733 -> 3.6718 on MNIST-1D 70k, 1.4602 -> 1.4597 on MNIST-5k,
    0.7397 -> 0.7402 on digits.

    It implements the interface of :class:`torch.optim.Optimizer` that the
    :class:`Trainer` uses (``param_groups``, ``state``, ``zero_grad``, ``step(closure)``)
    without subclassing it: constructing a torch optimiser imports ``torch._dynamo``, which took
    2.0 s in a fresh process here, more than a whole t-SNE fit of scikit-learn's digits.

    Parameters
    ----------
    params : iterable of torch.Tensor
        The embedding (one (n, d) tensor).
    lr : float
        Learning rate.
    momentum : float, default=0.8
        Momentum of the update.
    min_gain : float, default=0.01
        Added to a gain whenever it shrinks.
    max_step_norm : float or None, default=5.0
        Per-point cap on the length of one update.
    recenter : bool, default=True
        Subtract the mean after each step.

    Examples
    --------
    >>> import torch
    >>> Y = torch.zeros(3, 2, requires_grad=True)
    >>> opt = GainsSGD([Y], lr=1.0, recenter=False)
    >>> Y.grad = torch.ones(3, 2)
    >>> _ = opt.step()
    >>> Y.detach()[0]  # first step: gains shrink to 0.8 + 0.01
    tensor([-0.8100, -0.8100])
    """

    def __init__(self, params, lr, momentum=0.8, min_gain=0.01, max_step_norm=5.0, recenter=True):
        self.defaults = dict(lr=lr, momentum=momentum, min_gain=min_gain, max_step_norm=max_step_norm,
                             recenter=recenter)
        self.param_groups = [dict(self.defaults, params=list(params))]
        self.state = {}

    def zero_grad(self, set_to_none=True):
        """Clear the gradients of the parameters."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self, closure=None):
        """Apply one update from the gradients (evaluating ``closure`` first when given)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for Y in group["params"]:
                if Y.grad is None:
                    continue
                grad = Y.grad
                state = self.state.setdefault(Y, {})
                if not state:
                    state["update"] = torch.zeros_like(Y)
                    state["gains"] = torch.ones_like(Y)
                update, gains = state["update"], state["gains"]
                same = (update * grad) >= 0
                gains = torch.where(same, gains * 0.8 + group["min_gain"], gains + 0.2)
                state["gains"] = gains
                update.mul_(group["momentum"]).sub_(group["lr"] * gains * grad)
                if group["max_step_norm"] is not None:
                    norm = update.norm(dim=1, keepdim=True)
                    update.mul_(torch.clamp(group["max_step_norm"] / norm.clamp_min(1e-12), max=1.0))
                Y.add_(update)
                if group["recenter"]:
                    Y.sub_(Y.mean(dim=0, keepdim=True))
        return loss


class FusedAdam:
    """Adam / AdamW as one fused kernel per step (``torch._fused_adam_`` / ``torch._fused_adamw_``).

    The same update, bit for bit, as ``torch.optim.Adam(..., fused=True)`` (``AdamW`` with
    ``decoupled=True``), through the optimiser interface the :class:`Trainer` uses
    (``param_groups``, ``state``, ``zero_grad``, ``step(closure)``) without subclassing
    :class:`torch.optim.Optimizer`, whose constructor imports ``torch._dynamo``: about 1 s of
    every process's first fit (see :class:`GainsSGD`), paid again by each joblib worker.

    Parameters
    ----------
    params : iterable of torch.Tensor
        Floating-point parameters on one CPU or CUDA device.
    lr : float
        Learning rate.
    betas : tuple of float, default=(0.9, 0.999)
        Decay rates of the first and second moment estimates.
    eps : float, default=1e-8
        Added to the denominator.
    weight_decay : float, default=0.0
        L2 penalty (Adam) or decoupled decay (AdamW).
    decoupled : bool, default=False
        AdamW's decoupled weight decay.

    Examples
    --------
    >>> import torch
    >>> w = torch.zeros(2, requires_grad=True)
    >>> opt = FusedAdam([w], lr=0.1)
    >>> w.grad = torch.tensor([1.0, -1.0])
    >>> _ = opt.step()
    >>> w.detach()
    tensor([-0.1000,  0.1000])
    """

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
        self.defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        self.param_groups = [dict(self.defaults, params=list(params))]
        self.state = {}
        self._op = torch._fused_adamw_ if decoupled else torch._fused_adam_

    zero_grad = GainsSGD.zero_grad

    @torch.no_grad()
    def step(self, closure=None):
        """Apply one update from the gradients (evaluating ``closure`` first when given)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p not in self.state:
                    self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                     "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            states = [self.state[p] for p in params]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            beta1, beta2 = group["betas"]
            self._op(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                     [s["exp_avg_sq"] for s in states], [], steps, lr=float(group["lr"]), beta1=beta1,
                     beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                     maximize=False)
        return loss


class CosineSchedule:
    """Cosine decay of every group's learning rate to 0 over ``n_steps`` (``step()`` after each).

    The rule of ``torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_steps)`` in the same
    recursive form (so the same rates to the last bit), for the optimisers of this module that do
    not subclass :class:`torch.optim.Optimizer`.

    Parameters
    ----------
    optimizer : object
        Anything with ``param_groups``.
    n_steps : int
        Steps to decay over.

    Examples
    --------
    >>> opt = FusedAdam([], lr=1.0)
    >>> sched = CosineSchedule(opt, 2)
    >>> sched.step(); opt.param_groups[0]["lr"]
    0.5
    """

    def __init__(self, optimizer, n_steps):
        self.optimizer, self.n_steps, self.n_done = optimizer, max(1, int(n_steps)), 0
        self.base = [g["lr"] for g in optimizer.param_groups]

    def step(self):
        """Advance one step and set the learning rates."""
        self.n_done += 1
        t, T = self.n_done, self.n_steps
        for group, base in zip(self.optimizer.param_groups, self.base):
            if (t - 1 - T) % (2 * T) == 0:  # the rate left 0 at the end of the previous half period
                group["lr"] = group["lr"] + base * (1.0 - math.cos(math.pi / T)) / 2.0
            else:
                group["lr"] = (1.0 + math.cos(math.pi * t / T)) / (1.0 + math.cos(math.pi * (t - 1) / T)) * group["lr"]


#: Optimisers by name. "lbfgs" is the exact full-batch solver (one Trainer iteration is one
#: LBFGS iteration with a strong-Wolfe line search); "gains" is t-SNE's gradient descent.
OPTIMIZERS = {
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "lbfgs": "LBFGS",
    "gains": GainsSGD,
}


def _optimizer_class(name):
    """The class of a named optimiser (torch's looked up only when asked for)."""
    cls = OPTIMIZERS[name]
    return getattr(torch.optim, cls) if isinstance(cls, str) else cls


def log_means(per_iteration, iterations):
    """Means of a per-iteration series over the windows that end at the logged ``iterations``.

    What the Trainer logs for a minibatch objective, for a series it did not see itself (e.g.
    one restart's loss among several trained side by side).

    Parameters
    ----------
    per_iteration : array-like of shape (n_iter,)
        A value per iteration.
    iterations : list of int
        The logged iterations (1-based, increasing), e.g. ``Trainer.history_iterations``.

    Returns
    -------
    ndarray of shape (len(iterations),)

    Examples
    --------
    >>> log_means([1.0, 3.0, 5.0, 7.0, 9.0], [2, 4, 5]).tolist()
    [2.0, 6.0, 9.0]
    """
    values = np.asarray(per_iteration, dtype=np.float64)
    bounds = [0, *[int(i) for i in iterations]]
    return np.array([values[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])


def check_callbacks(callbacks):
    """Validate ``callbacks``: None, one callable, or a list of callables.

    Parameters
    ----------
    callbacks : callable, list of callables or None
        Each is called as ``cb(iteration, loss, estimator)``; a truthy return stops training.

    Returns
    -------
    list
        The callbacks as a list.
    """
    if callbacks is None:
        return []
    if callable(callbacks):
        return [callbacks]
    callbacks = list(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(
                f"callbacks must be callables cb(iteration, loss, estimator) -> bool, got {cb!r}."
            )
    return callbacks


class ConvergenceStop:
    """Callback that stops training when the loss stops improving.

    Parameters
    ----------
    patience : int, default=50
        Calls (loss logs) without an improvement of at least ``tol`` before stopping.
    tol : float, default=1e-4
        Minimum improvement.

    Examples
    --------
    >>> stop = ConvergenceStop(patience=2, tol=0.0)
    >>> [stop(i, loss, None) for i, loss in enumerate([3.0, 2.0, 2.0, 2.0], start=1)]
    [False, False, False, True]
    """

    def __init__(self, patience=50, tol=1e-4):
        self.patience = patience
        self.tol = tol
        self._best = math.inf
        self._since = 0

    def __call__(self, iteration, loss, estimator):
        if loss < self._best - self.tol:
            self._best = loss
            self._since = 0
        else:
            self._since += 1
        return self._since >= self.patience


class RowSampler:
    """Draw one column per row from a sparse row-stochastic matrix (inverse-CDF sampling).

    The one sampler of positives: neighbour positives of clustering and contrastive learning.
    A binary search within each anchor's own row, vectorised over the anchors: searching the
    whole cumulative array at once is twice as slow at 20,000 points (its random reads over
    millions of entries miss the cache, where a row has ~100 entries).

    Parameters
    ----------
    P : scipy.sparse.csr_matrix of shape (n, m)
        Non-negative weights; rows need not be normalised.
    random_state : int, RandomState instance or None
        Source of the draws (numpy).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> s = RowSampler(sp.csr_matrix([[0, 1.0, 0], [0.0, 0, 0], [1, 0, 0]]), 0)
    >>> s.sample([0, 2]).tolist(), s.empty.tolist()
    ([1, 0], [False, True, False])
    """

    def __init__(self, P, random_state=None):
        import scipy.sparse as sp
        from sklearn.utils import check_random_state

        P = sp.csr_matrix(P)
        self.indices = P.indices
        self.rng = check_random_state(random_state)
        self.cum = np.cumsum(P.data, dtype=np.float64)
        starts = np.concatenate([[0.0], self.cum])
        self.first = P.indptr[:-1].astype(np.int64)
        self.last = P.indptr[1:].astype(np.int64) - 1
        self.empty = self.last < self.first
        self.low = starts[self.first]
        self.high = starts[np.maximum(self.last, self.first - 1) + 1]

    def sample(self, rows):
        """One column per row, drawn with probability proportional to the row's weights.

        Rows without any entry (see ``empty``) return -1.

        Parameters
        ----------
        rows : array-like of int
            Anchor rows.

        Returns
        -------
        ndarray of int64
            The drawn columns.
        """
        rows = np.asarray(rows, dtype=np.int64)
        low = self.low[rows]
        u = low + self.rng.random_sample(len(rows)) * (self.high[rows] - low)
        lo, hi = self.first[rows], np.maximum(self.last[rows], self.first[rows])
        # Smallest position in [first, last] whose cumulative weight exceeds u (last if none,
        # which only rounding can cause).
        while (lo < hi).any():
            mid = (lo + hi) >> 1
            right = self.cum[mid] <= u
            lo = np.where(right, mid + 1, lo)
            hi = np.where(right, hi, mid)
        out = np.full(len(rows), -1, dtype=np.int64)
        ok = ~self.empty[rows]
        out[ok] = self.indices[lo[ok]]
        return out


class Trainer:
    """The optimisation loop shared by every estimator.

    Parameters
    ----------
    module : torch.nn.Module
        What is trained (a mapper, a :class:`~skicon.mappers.Table` holding an embedding, ...),
        already on ``device``.
    objective : callable
        ``objective(module, batch, teacher) -> torch scalar``; ``batch`` comes from
        :meth:`sample_batch` (None for full-batch training) and ``teacher`` is the EMA copy of the
        module (the module itself without ``ema``). When the loss has an autograd graph the
        trainer back-propagates it; otherwise the objective has written the gradients itself
        and may return None on iterations where :attr:`wants_loss` is false.
    n_steps : int
        Iterations (optimiser steps) to run, the sum of the phases' lengths when ``phases`` is
        given.
    n_samples : int, default=None
        Size of the training set the batches are drawn from; None for full-batch training.
    batch_size : int, default=None
        Anchors per batch (clipped to ``n_samples``).
    optimizer : {"adam", "adamw", "sgd", "lbfgs", "gains"}, default="adam"
        Optimiser (see :data:`OPTIMIZERS`).
    learning_rate : float, default=1e-3
        Initial learning rate.
    weight_decay : float, default=0.0
        Weight decay (adam, adamw, sgd).
    optimizer_options : dict, default=None
        Extra keyword arguments of the optimiser (e.g. LBFGS's ``history_size``).
    schedule : {"constant", "cosine"}, default="constant"
        Learning-rate schedule over ``n_steps``.
    phases : list of dict, default=None
        Consecutive phases, each ``{"n_steps": k, "optimizer": {...}, ...}``: at the start of a
        phase its ``"optimizer"`` entries are written into the optimiser's parameter groups
        (e.g. ``lr``, ``momentum``), and the whole dict is :attr:`phase` for the objective to
        read (e.g. t-SNE's ``exaggeration``).
    ema : float or None, default=None
        Momentum of an exponential-moving-average teacher (e.g. 0.99), or None.
    device : torch.device, default="cpu"
        Device of the batches.
    random_state : int, RandomState instance or None, default=None
        Seed of the batch order.
    callbacks : list of callables, default=()
        ``cb(iteration, loss, estimator) -> bool`` at every loss log (every ``log_every``
        iterations and after the last one), with the number of iterations done (1-based) and the
        logged loss; a truthy return stops training.
    hooks : list of callables, default=()
        ``hook(trainer, loss) -> bool`` after every iteration, with that iteration's loss (None
        when the objective did not compute it): the estimators' own per-iteration logic (restart
        pruning, LBFGS at rest), not a user interface. A truthy return stops training; the
        iterations since the last log are then logged.
    log_every : int, default=LOG_EVERY
        Iterations between two loss logs.
    verbose : bool or int, default=False
        Show a progress bar with the loss, and a one-line summary at the end.
    estimator : object, default=None
        Passed to callbacks.
    distributed : bool, default=False
        The objective calls the module row-wise on a minibatch, so that under an initialised
        :mod:`torch.distributed` process group (more than one rank) the module's forward can be
        split by rank (:class:`skicon._distributed.ShardedModule`: DDP and an all-gather with
        gradients; every rank draws the same global batch). Ignored in a single process.
    desc : str, default="skicon"
        Progress-bar label.

    Attributes
    ----------
    history : list of float
        The logged losses (one per log).
    history_iterations : list of int
        The iteration of each log.
    n_iter : int
        Iterations run.
    wants_loss : bool
        Whether the iteration being run will be logged (objectives with a costly loss read it).
    """

    def __init__(
        self,
        module,
        objective,
        *,
        n_steps,
        n_samples=None,
        batch_size=None,
        optimizer="adam",
        learning_rate=1e-3,
        weight_decay=0.0,
        optimizer_options=None,
        schedule="constant",
        phases=None,
        ema=None,
        device="cpu",
        random_state=None,
        callbacks=(),
        hooks=(),
        log_every=LOG_EVERY,
        verbose=False,
        estimator=None,
        desc="skicon",
        distributed=False,
    ):
        self.module = module
        self.objective = objective
        self.n_samples = None if n_samples is None else int(n_samples)
        self.batch_size = None if n_samples is None else max(1, min(int(batch_size or n_samples), self.n_samples))
        self.n_steps = int(n_steps)
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.optimizer_options = dict(optimizer_options or {})
        self.schedule = schedule
        self.phases = list(phases) if phases else [{"n_steps": self.n_steps}]
        self.ema = ema
        self.device = torch.device(device)
        self.generator = torch_generator(random_state)
        self.callbacks = check_callbacks(callbacks)
        self.hooks = list(hooks)
        self.log_every = max(1, int(log_every))
        self.verbose = verbose
        self.estimator = estimator
        self.desc = desc
        self.distributed = distributed
        self._sharded = None
        self.history = []
        self.history_iterations = []
        self.n_iter = 0
        self.wants_loss = True
        self.phase = self.phases[0]
        self._order = None
        self._cursor = 0

    # -- overridable steps -------------------------------------------------------------------
    def make_optimizer(self):
        """Return the torch optimiser and learning-rate scheduler."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}.")
        params = [p for p in self.module.parameters() if p.requires_grad]
        kwargs = dict(self.optimizer_options)
        if self.optimizer in ("adam", "adamw", "sgd"):
            kwargs.setdefault("weight_decay", self.weight_decay)
        if (self.optimizer in ("adam", "adamw") and set(kwargs) <= {"weight_decay", "betas", "eps", "fused"}
                and kwargs.get("fused", True) and len({p.device for p in params}) <= 1
                and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)):
            # One fused kernel per step instead of a dozen small ops per tensor (0.06 ms against
            # 0.22 ms per step for a clustering head's four tensors on CPU), without torch's
            # optimiser class and its 1 s import of torch._dynamo (see FusedAdam).
            kwargs.pop("fused", None)
            opt = FusedAdam(params, lr=self.learning_rate, decoupled=self.optimizer == "adamw", **kwargs)
        else:
            opt = _optimizer_class(self.optimizer)(params, lr=self.learning_rate, **kwargs)
        if self.schedule == "cosine" and not isinstance(opt, torch.optim.Optimizer):
            sched = CosineSchedule(opt, self.n_steps)
        elif self.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.n_steps))
        elif self.schedule == "constant":
            sched = None
        else:
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}.")
        return opt, sched

    def sample_batch(self):
        """Next batch of anchor indices (epochs of a seeded permutation), or None for full batch."""
        if self.n_samples is None:
            return None
        if self._order is None or self._cursor + self.batch_size > self.n_samples:
            self._order = torch.randperm(self.n_samples, generator=self.generator)
            self._cursor = 0
        batch = self._order[self._cursor : self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return batch

    def compute_loss(self, batch):
        """Loss of one batch."""
        try:
            if self._sharded is not None:  # torch.distributed: the forward split by rank
                teacher = self._sharded if self.teacher is self.module else self.teacher
                return self.objective(self._sharded, batch, teacher)
            return self.objective(self.module, batch, self.teacher)
        except (ValueError, RuntimeError, FloatingPointError) as exc:
            # an objective that validates its input (e.g. "log_q contains NaN") met diverged weights
            if not all(bool(torch.isfinite(p).all()) for p in self.module.parameters()):
                raise self.divergence_error("the parameters became non-finite") from exc
            raise

    def divergence_error(self, what):
        """The one divergence error of every estimator: what happened, and the parameter to lower.

        Parameters
        ----------
        what : str
            What became non-finite.

        Returns
        -------
        FloatingPointError
        """
        lr = self.opt.param_groups[0]["lr"] if getattr(self, "opt", None) is not None else self.learning_rate
        return FloatingPointError(
            f"{self.desc} diverged: {what} at iteration {self.n_iter + 1}. Lower learning_rate (the step in "
            f"use was {lr:.3g}; try {lr / 10:.3g} or less), standardise the input, or add debiasing (alpha > 0)."
        )

    def _check_finite(self, loss):
        if loss is None:
            return
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise self.divergence_error(f"the I-Con loss became {value}")

    def step(self, batch):
        """One optimisation step (the closure may run several times, e.g. in LBFGS); returns the loss.

        The loss is a float, or None when the objective skipped it (see :attr:`wants_loss`).
        """

        def closure():
            self.opt.zero_grad(set_to_none=True)
            loss = self.compute_loss(batch)
            self._check_finite(loss)
            if isinstance(loss, torch.Tensor) and loss.requires_grad:
                loss.backward()
            return loss

        loss = self.opt.step(closure)
        if self.wants_loss:  # the parameters too, at each log (a per-step check costs ~20 us)
            for p in self.module.parameters():
                if p.grad is not None and not bool(torch.isfinite(p).all()):
                    self._check_finite(float("nan"))
        if self.sched is not None:
            self.sched.step()
        self.update_teacher()
        if loss is None:
            return None
        return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)

    @torch.no_grad()
    def update_teacher(self):
        """Exponential moving average of the student's weights into the teacher."""
        if self.ema is None:
            return
        for t, s in zip(self.teacher.parameters(), self.module.parameters()):
            t.mul_(self.ema).add_(s.detach(), alpha=1.0 - self.ema)
        for t, s in zip(self.teacher.buffers(), self.module.buffers()):
            t.copy_(s)

    def _enter_phase(self, phase):
        self.phase = phase
        for group in self.opt.param_groups:
            group.update(phase.get("optimizer", {}))

    def _make_teacher(self):
        if self.ema is None:
            return self.module
        if not 0.0 <= float(self.ema) < 1.0:
            raise ValueError(f"ema must be in [0, 1) or None, got {self.ema!r}.")
        teacher = copy.deepcopy(self.module)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def _start_distributed(self):
        """Under torch.distributed (more than one rank): split the module's forward by rank."""
        if not self.distributed:
            return
        from . import _distributed

        if not _distributed.is_active():
            return
        _distributed.check_same_seed(self.generator, device=self.device)
        self._sharded = _distributed.ShardedModule(self.module, self.device)  # DDP: rank 0's weights

    def _stop_distributed(self):
        if self._sharded is not None:
            self._sharded.close()
            self._sharded = None

    def step_work(self):
        """Multiply-adds of the largest product of one iteration, as the thread rule sees it.

        Rows of a batch (1 for full-batch training, whose heavy work is the objective's own:
        the compiled loops or an exact dense block) times the largest parameter. Under
        ``n_jobs=None`` torch gets one thread per :data:`skicon._threads.TORCH_GRAIN` of it.
        """
        largest = max([p.numel() for p in self.module.parameters()], default=0)
        return (self.batch_size or 1) * largest

    # -- the loop ----------------------------------------------------------------------------
    def run(self):
        """Train through the phases, or until a callback asks to stop.

        Returns
        -------
        list of float
            The logged losses (:attr:`history`).
        """
        from tqdm.auto import tqdm

        self.module.train()
        self._start_distributed()
        self.opt, self.sched = self.make_optimizer()
        self.teacher = self._make_teacher()
        total = sum(int(phase["n_steps"]) for phase in self.phases)
        bar = tqdm(total=total, desc=self.desc, disable=not self.verbose, leave=False)
        start = time.perf_counter()
        window = []
        # n_jobs=None: small iterations run on fewer threads; an objective whose heavy work runs on
        # its own threads (compiled loops) leaves torch one thread for its glue
        glue = getattr(self.objective, "torch_glue_only", None)
        own = glue is not None and glue(self.module)
        threads = torch_threads(1, exact=True) if own else torch_threads(self.step_work())
        threads.__enter__()
        try:
            for phase in self.phases:
                self._enter_phase(phase)
                stop = False
                for _ in range(int(phase["n_steps"])):
                    self.wants_loss = (self.n_iter + 1) % self.log_every == 0 or self.n_iter + 1 == total
                    loss = self.step(self.sample_batch())
                    self.n_iter += 1
                    bar.update(1)
                    if loss is not None:
                        window.append(loss)
                        if self.verbose:  # the running loss of the window until the next log
                            bar.set_postfix(loss=f"{np.mean(window):.4g}", refresh=False)
                    done = any([bool(hook(self, loss)) for hook in self.hooks])
                    if (self.wants_loss or done) and window:
                        stop = self._log(float(np.mean(window)), bar)
                        window = []
                    stop = stop or done
                    if stop:
                        break
                if stop:
                    break
        finally:
            threads.__exit__(None, None, None)
            bar.close()
            self._stop_distributed()
        if self.verbose and self.history:  # the bar goes; one summary line stays
            early = " (stopped early)" if self.n_iter < total else ""
            tqdm.write(f"{self.desc}: {self.n_iter} iterations in {time.perf_counter() - start:.1f} s{early}, "
                       f"final loss {self.history[-1]:.6g}")
        self.module.eval()
        return self.history

    def _log(self, loss, bar):
        """Record a logged loss, show it and call the callbacks; True when one asks to stop."""
        self.history.append(loss)
        self.history_iterations.append(self.n_iter)
        if self.verbose:  # drawn now: a short fit may end before the bar's next refresh
            bar.set_postfix(loss=f"{loss:.4g}", refresh=True)
        return any([bool(cb(self.n_iter, loss, self.estimator)) for cb in self.callbacks])


def batched_forward(module, X, *, batch_size=4096, device="cpu", dtype=torch.float32):
    """Apply ``module`` to ``X`` in batches under inference mode and return a numpy array.

    Parameters
    ----------
    module : torch.nn.Module
        Trained mapper.
    X : ndarray of shape (n_samples, n_features)
        Input.
    batch_size : int, default=4096
        Rows per forward pass.
    device : torch.device, default="cpu"
        Device of the module.
    dtype : torch.dtype, default=torch.float32
        Input dtype for the module.

    Returns
    -------
    ndarray of shape (n_samples, n_outputs)
        Float64 outputs.
    """
    module.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, X.shape[0], batch_size):
            xb = as_tensor(X[s : s + batch_size], dtype=dtype, device=device)  # copies a read-only memmap
            out.append(module(xb).detach().cpu().double().numpy())
    return np.concatenate(out, axis=0) if out else np.empty((0, 0))
