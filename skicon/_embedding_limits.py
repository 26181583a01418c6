"""The PCA and MDS rows of ICONEmbedding solved well: a spectral start, then LBFGS on the exact loss.

Both rows are wide-Gaussian limits of the conditional I-Con loss (Corollary 1, Theorem 3). Their
loss surfaces are nearly flat (the informative part of the loss is a second-order term in
``1 / sigma^2``), so a random start costs LBFGS hundreds of iterations. Here

1. the start is the data's top principal directions from a few power iterations (a randomized
   SVD): the subspace the limit converges to as ``sigma -> infinity``. It is only a start:
2. LBFGS (the one :class:`~skicon._training.Trainer`) then minimises the row's own exact loss at
   the finite width, with its closed-form gradient from the engine's all-pairs sums
   (:class:`skicon.objectives._limits.LimitObjective`), until the loss is at rest.

What is reported (``loss_``) is that exact loss, equal to ``get_method(row).loss(...)``.
"""

import math

import numpy as np
import scipy.sparse as sp
import torch

from ._embedding_parts import LossStalled, OrthonormalLinear, dense, initial_embedding, rms_distance
from ._training import Trainer
from ._utils import as_tensor, seed_from_random_state
from .mappers import Table, make_mapper
from .objectives._limits import LimitObjective
from .objectives._pairwise import SparseAffinity

__all__ = ["fit_limit", "principal_directions"]

#: Power iterations of the start (each costs two passes over the data).
POWER_ITERATIONS = 4


def principal_directions(X, d, random_state, n_iter=POWER_ITERATIONS):
    """Orthonormal (n_features, d) directions from ``n_iter`` power iterations on the centred data.

    A randomized SVD (range finder with oversampling, then the SVD of the small projected
    matrix). Columns beyond the rank of the data are random orthonormal completions.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Data.
    d : int
        Directions wanted.
    random_state : int, RandomState instance or None
        Seed of the random test matrix.
    n_iter : int, default=4
        Power iterations.

    Returns
    -------
    ndarray of shape (n_features, d)

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.RandomState(0).randn(200, 5) * [5.0, 1.0, 1.0, 0.1, 0.1]
    >>> V = principal_directions(X, 1, 0)
    >>> bool(abs(V[0, 0]) > 0.99)
    True
    """
    rng = np.random.RandomState(seed_from_random_state(random_state))
    Xc = X - X.mean(axis=0)
    n, f = Xc.shape
    k = min(f, n, d + 10)
    Q = np.linalg.qr(Xc @ rng.randn(f, k))[0]
    for _ in range(n_iter):
        Q = np.linalg.qr(Xc @ (Xc.T @ Q))[0]
    _, _, Vt = np.linalg.svd(Q.T @ Xc, full_matrices=False)
    V = Vt[:d].T
    if V.shape[1] < d:  # fewer features or samples than components: complete at random
        extra = rng.randn(f, d - V.shape[1])
        V = np.linalg.qr(np.hstack([V, extra]))[0][:, :d] if f >= d else np.hstack([V, extra])
    return V


def _module(est, Xd, plan, d):
    """The start: the principal map (PCA), the principal scores at data scale (MDS table), or a mapper."""
    if plan.row == "pca":
        module = OrthonormalLinear(Xd.shape[1], d, Xd.mean(axis=0), torch.Generator().manual_seed(0))
        with torch.no_grad():
            module.raw.copy_(torch.as_tensor(principal_directions(Xd, d, est.random_state)))
        return module
    if plan.mapper != "table":
        return make_mapper(plan.mapper, Xd.shape[1], d, n_samples=Xd.shape[0], random_state=est.random_state)
    if isinstance(est.init, str) and est.init == "pca":
        # the scores themselves: distances of the data projected on the principal subspace
        Y0 = (Xd - Xd.mean(axis=0)) @ principal_directions(Xd, d, est.random_state)
    else:
        Y0 = initial_embedding(est.init, Xd, Xd.shape[0], d, None, est.random_state)
        if isinstance(est.init, str):  # random / spectral: rescaled from 1e-4 to the data's scale
            Y0 = Y0 / 1e-4 * (rms_distance(Xd) / math.sqrt(2) / max(np.sqrt(d), 1.0))
    return Table(torch.as_tensor(Y0, dtype=torch.float64))


class ScaledTable(torch.nn.Module):
    """A table whose parameter is the embedding divided by a fixed ``scale``: ``weight = scale * raw``.

    The same function of the same embedding; only LBFGS's first step changes. torch's LBFGS
    starts with a plain gradient step of length ``lr`` (it has no curvature pairs yet), and the
    wide limits' gradients are ~1e-9 of the embedding's scale, so that step, and the loss change
    it makes, vanish below the rounding of the loss. In ``raw`` the first step is ``scale**2``
    times longer in the embedding; later steps use the curvature LBFGS has measured.

    Parameters
    ----------
    Y0 : torch.Tensor of shape (n, d)
        Initial embedding.
    scale : float
        Fixed factor.
    """

    def __init__(self, Y0, scale):
        super().__init__()
        self.scale = float(scale)
        self.raw = torch.nn.Parameter(Y0 / self.scale)

    @property
    def weight(self):
        """The embedding ``scale * raw``."""
        return self.raw * self.scale

    def forward(self, idx):
        return self.weight[idx]


def _first_step_scale(objective, Y0):
    """``sqrt(0.1 |Y0| / |grad|)``: LBFGS's first step then moves the embedding by ~10 % of its norm."""
    grad, _ = objective.loss_and_gradient(Y0)
    g, y = float(grad.norm()), float(Y0.norm())
    if not (g > 0 and y > 0 and math.isfinite(g)):
        return 1.0
    return math.sqrt(0.1 * y / g)


def fit_limit(est, X, plan, device, callbacks):
    """Fit the PCA or MDS row; returns ``(trainer, objective, module, loss, affinities)``."""
    Xd = dense(X)
    d = est.n_components
    module = _module(est, Xd, plan, d).to(device=device, dtype=torch.float64)
    aff, affinities = None, None
    if plan.row == "mds":
        # the row's p: a wide Gaussian over all pairs (the exact mode the row asks for)
        affinities = sp.csr_matrix(plan.p_base.conditional(Xd, random_state=est.random_state, n_jobs=est.n_jobs))
        aff = SparseAffinity.conditional(affinities, device, torch.float64)
    else:
        affinities = sp.identity(Xd.shape[0], format="csr", dtype=np.float64)
    inputs = None if plan.mapper == "table" and plan.row == "mds" else as_tensor(Xd, dtype=torch.float64, device=device)
    objective = LimitObjective(plan.q, aff, inputs=inputs, alpha=float(est.alpha))
    if isinstance(module, Table):
        Y0 = module.weight.detach()
        module = ScaledTable(Y0, _first_step_scale(objective, Y0))
    # one Trainer iteration = one LBFGS iteration (strong-Wolfe line search); the wide limits have
    # tiny gradients, so no absolute tolerances: max_iter and a stop when the loss is at rest
    options = {"max_iter": 1, "max_eval": 26, "history_size": 20, "line_search_fn": "strong_wolfe",
               "tolerance_grad": 0.0, "tolerance_change": 0.0}
    lr = 1.0 if est.learning_rate == "auto" else float(est.learning_rate)
    # the engine's loss is sum p log p - sum p log q, two terms of ~log n per row: rounding leaves
    # ~1e3 eps log n of noise in it (what a move must exceed), ~1e-9 of MDS's wide-limit KL
    stall = LossStalled(patience=5, atol=1e3 * np.finfo(np.float64).eps * math.log(max(Xd.shape[0], 2)))
    trainer = Trainer(module, objective, n_steps=est.max_iter, optimizer="lbfgs", learning_rate=lr,
                      optimizer_options=options, device=device, callbacks=callbacks, hooks=[stall],
                      verbose=est.verbose, estimator=est, desc="ICONEmbedding")
    trainer.run()
    return trainer, objective, module, objective.final_loss(module), affinities
