"""A small minibatch training loop for I-Con objectives.

The loop is split into short overridable steps (``make_optimizer``, ``sample_batch``,
``compute_loss``, ``step``, ``update_teacher``) so that estimators change one step, not the loop.
"""

import copy
import math

import numpy as np
import torch

from ._utils import torch_generator

__all__ = ["Trainer", "check_callbacks", "ConvergenceStop"]

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


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
        Iterations without an improvement of at least ``tol`` before stopping.
    tol : float, default=1e-4
        Minimum improvement.

    Examples
    --------
    >>> stop = ConvergenceStop(patience=2, tol=0.0)
    >>> [stop(i, loss, None) for i, loss in enumerate([3.0, 2.0, 2.0, 2.0])]
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


class Trainer:
    """Minibatch optimiser of an I-Con loss over a module.

    Parameters
    ----------
    module : torch.nn.Module
        The mapper being trained (already on ``device``).
    loss_fn : callable
        ``loss_fn(module, batch_index, teacher) -> torch scalar``; ``teacher`` is the EMA copy of
        the module (or the module itself when ``ema`` is None).
    n_samples : int
        Size of the training set the batches are drawn from.
    batch_size : int
        Anchors per batch (clipped to ``n_samples``).
    n_steps : int
        Number of optimisation steps.
    learning_rate : float, default=1e-3
        Initial learning rate.
    optimizer : {"adam", "adamw", "sgd"}, default="adam"
        Optimiser.
    weight_decay : float, default=0.0
        Weight decay.
    schedule : {"constant", "cosine"}, default="constant"
        Learning-rate schedule over ``n_steps``.
    ema : float or None, default=None
        Momentum of an exponential-moving-average teacher (e.g. 0.99), or None for no teacher.
    device : torch.device, default="cpu"
        Device of the batches.
    random_state : int, RandomState instance or None, default=None
        Seed of the batch order.
    callbacks : list of callables, default=()
        ``cb(iteration, loss, estimator) -> bool``; truthy stops.
    verbose : bool or int, default=False
        Show a tqdm progress bar.
    estimator : object, default=None
        Passed to callbacks.
    desc : str, default="skicon"
        Progress-bar label.
    """

    def __init__(
        self,
        module,
        loss_fn,
        *,
        n_samples,
        batch_size,
        n_steps,
        learning_rate=1e-3,
        optimizer="adam",
        weight_decay=0.0,
        schedule="constant",
        ema=None,
        device="cpu",
        random_state=None,
        callbacks=(),
        verbose=False,
        estimator=None,
        desc="skicon",
    ):
        self.module = module
        self.loss_fn = loss_fn
        self.n_samples = int(n_samples)
        self.batch_size = max(1, min(int(batch_size), self.n_samples))
        self.n_steps = int(n_steps)
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.ema = ema
        self.device = torch.device(device)
        self.generator = torch_generator(random_state)
        self.callbacks = check_callbacks(callbacks)
        self.verbose = verbose
        self.estimator = estimator
        self.desc = desc
        self.history = []
        self.n_iter = 0
        self._order = None
        self._cursor = 0

    # -- overridable steps -------------------------------------------------------------------
    def make_optimizer(self):
        """Return the torch optimiser and learning-rate scheduler."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}.")
        params = [p for p in self.module.parameters() if p.requires_grad]
        kwargs = {}
        if self.optimizer in ("adam", "adamw") and all(
                p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
            # One fused kernel per step instead of a dozen small ops per tensor: 0.06 ms against
            # 0.22 ms per step for a clustering head's four tensors on CPU.
            kwargs["fused"] = True
        opt = OPTIMIZERS[self.optimizer](params, lr=self.learning_rate, weight_decay=self.weight_decay, **kwargs)
        if self.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.n_steps))
        elif self.schedule == "constant":
            sched = None
        else:
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}.")
        return opt, sched

    def sample_batch(self):
        """Next batch of anchor indices: epochs of a seeded random permutation."""
        if self._order is None or self._cursor + self.batch_size > self.n_samples:
            self._order = torch.randperm(self.n_samples, generator=self.generator)
            self._cursor = 0
        batch = self._order[self._cursor : self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return batch

    def compute_loss(self, batch):
        """Loss of one batch."""
        return self.loss_fn(self.module, batch, self.teacher)

    def step(self, batch):
        """One optimisation step; returns the loss as a float."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.compute_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The I-Con loss became {float(loss.detach())} at iteration {self.n_iter}; lower learning_rate, "
                "standardise the input, or add debiasing (alpha > 0)."
            )
        loss.backward()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.update_teacher()
        return float(loss.detach())

    @torch.no_grad()
    def update_teacher(self):
        """Exponential moving average of the student's weights into the teacher."""
        if self.ema is None:
            return
        for t, s in zip(self.teacher.parameters(), self.module.parameters()):
            t.mul_(self.ema).add_(s.detach(), alpha=1.0 - self.ema)
        for t, s in zip(self.teacher.buffers(), self.module.buffers()):
            t.copy_(s)

    # -- the loop ----------------------------------------------------------------------------
    def run(self):
        """Train for ``n_steps`` or until a callback asks to stop.

        Returns
        -------
        list of float
            The loss of each step.
        """
        from tqdm.auto import tqdm

        self.module.train()
        self.opt, self.sched = self.make_optimizer()
        if self.ema is not None:
            if not 0.0 <= float(self.ema) < 1.0:
                raise ValueError(f"ema must be in [0, 1) or None, got {self.ema!r}.")
            self.teacher = copy.deepcopy(self.module)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        else:
            self.teacher = self.module
        bar = tqdm(total=self.n_steps, desc=self.desc, disable=not self.verbose, leave=False)
        try:
            for it in range(self.n_steps):
                loss = self.step(self.sample_batch())
                self.history.append(loss)
                self.n_iter = it + 1
                bar.update(1)
                if self.verbose and it % 10 == 0:
                    bar.set_postfix(loss=f"{loss:.4f}")
                if any(bool(cb(it, loss, self.estimator)) for cb in self.callbacks):
                    break
        finally:
            bar.close()
        self.module.eval()
        return self.history


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
            xb = torch.as_tensor(np.asarray(X[s : s + batch_size]), dtype=dtype, device=device)
            out.append(module(xb).detach().cpu().double().numpy())
    return np.concatenate(out, axis=0) if out else np.empty((0, 0))
