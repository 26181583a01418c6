"""Private pieces of ICONEmbedding: the plan, initialisation, the dense objective, new points.

Kept out of :mod:`skicon._embedding` so that the estimator file reads as validate -> plan ->
p -> objective -> Trainer.run -> fitted attributes. The maths of the scalable path lives in
:mod:`skicon.objectives._pairwise`.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ._registry import METHODS as _ROWS
from ._registry import resolve_method
from ._training import Trainer
from ._utils import seed_from_random_state
from .kernels import Debiased, DistanceKernel, Gaussian, Identity
from .kernels._base import restrict
from .mappers import Table, make_mapper
from .objectives import icon_loss
from .objectives._pairwise import PlacementObjective, compiled_kernels_apply

#: Row names and aliases ``method=`` accepts (the registry's rows of ICONEmbedding).
METHODS = tuple(sorted(name for row in _ROWS.values() if row.estimator == "ICONEmbedding"
                       for name in (row.name, *row.aliases)))
MODES = ("auto", "exact", "fft", "sampled")

#: Below this many samples ``mode="auto"`` computes the repulsion exactly (measured faster than
#: the FFT grid there, and free of interpolation error). On CPU the compiled fused loops of
#: :mod:`skicon.objectives._compiled` move the break-even point much higher: at 10,000 MNIST-1D
#: points one thread took 36 s exact against 37-44 s with the FFT grid.
EXACT_BELOW = 1000
EXACT_BELOW_COMPILED = 10_000

#: Width of the "wide" Gaussians of the PCA and MDS limits, in units of the root-mean-square
#: pairwise distance of the data: wide enough that the second-order terms the theorems drop are
#: about 1 % of the kept ones.
WIDE_FACTOR = 10.0


@dataclass(frozen=True)
class Plan:
    """The resolved configuration of one fit (what the parameters mean for this data).

    Attributes
    ----------
    row : str
        Registry row trained (``"tsne"``, ``"sne"``, ``"pca"``, ``"mds"``).
    p : Kernel
        Supervisory kernel as trained (wrapped in ``Debiased`` when ``alpha > 0``).
    p_base : Kernel
        The same without debiasing (the engine applies ``alpha`` itself).
    q : Kernel
        Learned kernel.
    normalization : str
        ``"joint"`` or ``"conditional"``.
    mapper : str or callable
        ``"table"``, ``"linear"``, ``"mlp"`` or a factory.
    path : str
        ``"engine"`` (pairwise objective, analytic gradient), ``"limit"`` (the PCA / MDS rows: LBFGS
        on the exact loss with the engine's gradient, :mod:`skicon._embedding_limits`) or
        ``"dense"`` (exact blocks, autograd).
    mode : str
        Repulsion mode of the engine, or ``"dense"``.
    perplexity : float or None
        Perplexity of a Gaussian ``p``.
    """

    row: str
    p: object
    p_base: object
    q: object
    normalization: str
    mapper: object
    path: str
    mode: str
    perplexity: object


def dense(X):
    """``X`` as a dense float64 array."""
    return X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# the plan: what the parameters mean for this data (the registry row is the source of truth)
# ------------------------------------------------------------------------------------------------
def make_plan(est, X, device):
    """Resolve the row, the kernels, the normalisation, the mapper, the path and the mode."""
    row, implied = resolve_method("ICONEmbedding", est.method)
    defaults = {**row.defaults, **implied}
    p, perplexity = _row_p(est, row.name, X)
    p, alpha = _one_debiasing(p, est.alpha)
    q = est.q if est.q is not None else _row_q(row, X)
    engine = row.name in ("sne", "tsne") and isinstance(q, DistanceKernel) and not q.include_self
    norm = est.normalization
    if norm == "auto":
        norm = defaults.get("normalization", "conditional") if (engine and est.p is None) else "conditional"
    mapper = defaults.get("mapper", "table") if est.mapper == "auto" else est.mapper
    limit = not engine and limit_applies(row.name, p, q, mapper, alpha)
    if engine:
        q._validate()
        mode = _resolve_mode(est, X.shape[0], device, q)
    else:
        if norm != "conditional":
            raise ValueError(f"normalization={norm!r} needs a distance kernel q on the pairwise engine "
                             f"(method 'sne'/'tsne'); the dense path (q={q!r}) trains the conditional form.")
        if est.mode not in ("auto", "exact"):
            raise ValueError(f"mode={est.mode!r} is not available on the dense exact path (q={q!r}, "
                             f"method={est.method!r}); use mode='auto' or 'exact'.")
        mode = "exact" if limit else "dense"
    p_used = Debiased(p, alpha=alpha) if alpha > 0 else p
    path = "engine" if engine else ("limit" if limit else "dense")
    return Plan(row.name, p_used, p, q, norm, mapper, path, mode, perplexity)


def limit_applies(row, p, q, mapper, alpha):
    """Whether the PCA / MDS row runs on the limit path (else the dense autograd path).

    PCA: ``p = 1[i = j]`` (no debiasing), a self-including distance kernel ``q`` and the
    orthonormal linear map (a free table has no PCA optimum: its variance is unbounded). MDS:
    any supervisory ``p`` and a distance kernel ``q`` without the self pair.
    """
    if not isinstance(q, DistanceKernel):
        return False
    if row == "pca":
        return isinstance(p, Identity) and q.include_self and mapper == "linear" and alpha == 0
    return row == "mds" and not q.include_self


def _one_debiasing(p, alpha):
    """A debiased ``p`` as (kernel, alpha): the engine applies ``alpha`` itself, and would
    otherwise train the kernel inside ``Debiased`` without its debiasing."""
    alpha = float(alpha)
    if not isinstance(p, Debiased):
        return p, alpha
    if alpha not in (0.0, float(p.alpha)):
        raise ValueError(f"alpha={alpha} and p={p!r} debias p twice; set one of them (alpha=0 keeps p's).")
    return p.kernel, float(p.alpha)


def _row_p(est, row, X):
    """The supervisory kernel (the row's, sized to the data, unless ``p`` is given) and its perplexity."""
    n = X.shape[0]
    if est.p is not None:
        perplexity = getattr(est.p, "perplexity", None)
        if perplexity is not None and perplexity >= n:
            raise ValueError(f"p.perplexity={perplexity} must be below n_samples={n}.")
        return est.p, perplexity
    if row == "pca":
        return Identity(), None
    if row == "mds":
        return Gaussian(sigma=WIDE_FACTOR * rms_distance(dense(X)), n_neighbors=None), None
    perplexity = float(est.perplexity)
    k = int(math.ceil(3 * perplexity)) if est.n_neighbors == "auto" else int(est.n_neighbors)
    k = min(k, n - 1)
    if perplexity > k:
        warnings.warn(
            f"perplexity={perplexity} needs at least {math.ceil(perplexity)} neighbours but only {k} "
            f"are available (n_samples={n}, n_neighbors={est.n_neighbors!r}); using perplexity={k}.",
            UserWarning,
        )
        perplexity = float(k)
    return Gaussian(perplexity=perplexity, n_neighbors=k), perplexity


def _row_q(row, X):
    """The row's learned kernel; the PCA and MDS widths scale with the data (WIDE_FACTOR)."""
    if row.name == "pca":
        return Gaussian(sigma=WIDE_FACTOR * rms_distance(dense(X)), include_self=True)
    if row.name == "mds":
        return Gaussian(sigma=WIDE_FACTOR * rms_distance(dense(X)))
    return row.make_q()


def _resolve_mode(est, n, device, q):
    """The repulsion mode: the given one, or the fastest accurate one for ``n`` points."""
    mode = est.mode
    if mode == "fft" and est.n_components > 2:
        raise ValueError(
            f"mode='fft' supports n_components of 1 or 2, got n_components={est.n_components}; "
            "use mode='exact' or mode='sampled'."
        )
    if mode != "auto":
        return mode
    compiled = compiled_kernels_apply(device, est.n_components) and q.compiled_profile() is not None
    if n < (EXACT_BELOW_COMPILED if compiled else EXACT_BELOW):
        return "exact"
    if est.n_components <= 2:
        return "fft"
    return "exact" if n <= 5000 else "sampled"


def dense_module(est, Xd, plan):
    """The module of the dense path: orthonormal linear (PCA), a mapper, or a table."""
    n, d = Xd.shape[0], est.n_components
    if plan.row == "pca" and plan.mapper == "linear":
        gen = torch.Generator().manual_seed(seed_from_random_state(est.random_state))
        return OrthonormalLinear(Xd.shape[1], d, Xd.mean(axis=0), gen)
    if plan.mapper != "table":
        return make_mapper(plan.mapper, Xd.shape[1], d, n_samples=n, random_state=est.random_state)
    Y0 = initial_embedding(est.init, Xd, n, d, None, est.random_state)
    if plan.row == "mds" and isinstance(est.init, str):
        Y0 = Y0 / 1e-4 * (rms_distance(Xd) / math.sqrt(2) / max(np.sqrt(d), 1.0))  # data scale, not 1e-4
    return Table(torch.as_tensor(Y0, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# scorers
# ------------------------------------------------------------------------------------------------
def make_trustworthiness_scorer(n_neighbors=10):
    """Build a scorer ``scorer(estimator, X, y=None) -> float``: trustworthiness of ``transform(X)``.

    Trustworthiness (Venna & Kaski) is in [0, 1]; higher means fewer points that are close in the
    embedding but far in the data. Use it as ``GridSearchCV(..., scoring=scorer)``.

    Parameters
    ----------
    n_neighbors : int, default=10
        Neighbourhood size; clipped to ``n_samples / 2 - 1`` on small sets.

    Returns
    -------
    callable
        The scorer.

    Examples
    --------
    >>> from skicon._embedding import make_trustworthiness_scorer
    >>> scorer = make_trustworthiness_scorer(5)
    """

    def scorer(estimator, X, y=None):
        from sklearn.manifold import trustworthiness

        Xv = X.toarray() if sp.issparse(X) else np.asarray(X)
        Z = estimator.transform(X)
        k = int(max(1, min(n_neighbors, Xv.shape[0] // 2 - 1)))
        return float(trustworthiness(Xv, Z, n_neighbors=k))

    scorer.n_neighbors = n_neighbors
    return scorer


#: Trustworthiness scorer with ``n_neighbors=10``.
trustworthiness_scorer = make_trustworthiness_scorer(10)


class OrthonormalLinear(torch.nn.Module):
    """``z = (x - mean) @ W`` with ``W`` kept orthonormal (QR of a free matrix): the PCA mapper."""

    def __init__(self, n_features, n_components, mean, generator):
        super().__init__()
        self.raw = torch.nn.Parameter(torch.randn(n_features, n_components, generator=generator, dtype=torch.float64))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))

    def weight(self):
        q, r = torch.linalg.qr(self.raw)
        # fix the sign ambiguity of QR so the map is a smooth function of raw
        return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(1, dtype=q.dtype))

    def forward(self, X):
        return (X - self.mean) @ self.weight().to(X.dtype)


def rms_distance(X):
    """Root-mean-square pairwise distance of the rows of a dense array."""
    centred = X - X.mean(axis=0)
    return math.sqrt(max(2.0 * float((centred**2).sum(axis=1).mean()), 1e-300))


# ------------------------------------------------------------------------------------------------
# initialisation of the table
# ------------------------------------------------------------------------------------------------
def initial_embedding(init, X, n, d, P, random_state):
    """The initial table: ``init`` given, or PCA / spectral / random rescaled to std 1e-4."""
    rng = np.random.RandomState(seed_from_random_state(random_state))
    if not isinstance(init, str):
        Y = np.asarray(init, dtype=np.float64)
        if Y.shape != (n, d) or not np.all(np.isfinite(Y)):
            raise ValueError(
                f"init must be 'pca', 'random', 'spectral' or a finite array of shape (n_samples, "
                f"n_components)=({n}, {d}); got an array of shape {Y.shape}."
            )
        return Y.copy()
    if init == "random":
        return 1e-4 * rng.randn(n, d)
    if init == "spectral":
        Y = _spectral(P, n, d, rng)
        if Y is None:
            return 1e-4 * rng.randn(n, d)
    else:
        Y = pca_scores(X, d, rng)
    std = Y[:, 0].std()
    if not np.isfinite(std) or std <= 1e-12:
        return 1e-4 * rng.randn(n, d)
    return Y / std * 1e-4


def _spectral(P, n, d, rng):
    from sklearn.manifold import SpectralEmbedding

    A = sp.csr_matrix(P) if P is not None else None
    if A is None:
        return None
    try:
        return SpectralEmbedding(d, affinity="precomputed", random_state=rng).fit_transform((A + A.T) / 2)
    except Exception as exc:  # disconnected or degenerate graphs
        warnings.warn(f"spectral initialisation failed ({exc}); using random initialisation.")
        return None


def pca_scores(X, d, rng):
    """Top-``d`` principal component scores (truncated SVD for sparse input), zero-padded."""
    n, f = X.shape
    m = min(d, f, n - 1) if n > 1 else 0
    out = np.zeros((n, d))
    if m >= 1:
        if sp.issparse(X):
            from sklearn.decomposition import TruncatedSVD

            out[:, :m] = TruncatedSVD(m, random_state=rng).fit_transform(X) if m < f else X.toarray()[:, :m]
        else:
            from sklearn.decomposition import PCA

            # the f x f covariance is far cheaper than an SVD of X when samples outnumber features
            if f <= 1000 and n >= f:
                solver = "covariance_eigh"
            else:
                solver = "randomized" if n * f > 5_000_000 else "full"
            # constant data: sklearn divides by the zero total variance for explained_variance_ratio_
            # (unused here; the scores are zero) and numpy would warn
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, :m] = PCA(m, svd_solver=solver, random_state=rng).fit_transform(X)
    if m < d:
        scale = out[:, 0].std() if m >= 1 and out[:, 0].std() > 0 else 1.0
        out[:, m:] = scale * 1e-2 * rng.randn(n, d - m)
    return out


# ------------------------------------------------------------------------------------------------
# the dense exact objective (any kernels; autograd)
# ------------------------------------------------------------------------------------------------
class DenseObjective:
    """``icon_loss(p block, q.log_prob(Z))`` on the whole data set or on a batch (autograd).

    Full batch: the block is the conditional ``p`` of all the data, computed once. Minibatch:
    ``p`` is recomputed on each batch's own data. ``p`` is a kernel that may be ``Debiased``:
    :func:`~skicon.kernels.restrict` applies its ``finalize_block`` (the debiasing).
    """

    def __init__(self, p, q, X, *, table, batch_size, device, random_state=None, n_jobs=None):
        self.p, self.q, self.X, self.table = p, q, X, table
        self.Xt = torch.as_tensor(X, dtype=torch.float64, device=device)
        self.device, self.random_state, self.n_jobs = device, random_state, n_jobs
        n = X.shape[0]
        self.batch_size = min(int(batch_size), n)
        self.P = None
        if self.batch_size >= n:
            self.P = p.conditional(X, random_state=random_state, n_jobs=n_jobs)
            idx = np.arange(n)
            self.P_block = restrict(p, self.P, idx, idx, dtype=torch.float64, device=device)

    def outputs(self, module, idx=None):
        """The representation of the rows ``idx`` (all rows when None)."""
        if idx is None:
            idx = torch.arange(self.X.shape[0], device=self.device)
        return module(idx) if self.table else module(self.Xt[idx])

    def block_loss(self, module, idx):
        """The loss of the rows ``idx`` with ``p`` computed on their own data."""
        idx = np.asarray(idx)
        P = self.p.conditional(self.X[idx], random_state=self.random_state, n_jobs=self.n_jobs)
        loc = np.arange(len(idx))
        block = restrict(self.p, P, loc, loc, dtype=torch.float64, device=self.device)
        return icon_loss(block, self.q.log_prob(self.outputs(module, torch.as_tensor(idx, device=self.device))),
                         validate=False)

    def __call__(self, module, batch, teacher):
        if self.P is not None:
            return icon_loss(self.P_block, self.q.log_prob(self.outputs(module)), validate=False)
        return self.block_loss(module, batch.cpu().numpy())

    @torch.no_grad()
    def final_loss(self, module):
        """The loss on the training data: full batch, or the mean over consecutive blocks."""
        if self.P is not None:
            return float(self(module, None, module))
        n, b = self.X.shape[0], self.batch_size
        starts = list(range(0, n, b))
        if n - starts[-1] < 2 and len(starts) > 1:
            starts.pop()  # a single trailing row has no neighbourhood: it joins the last block
        bounds = starts[1:] + [n]
        total = sum(float(self.block_loss(module, np.arange(a, c))) * (c - a) for a, c in zip(starts, bounds))
        return total / n


class LossStalled:
    """Trainer hook: stop when the loss has not moved for ``patience`` iterations (LBFGS at rest).

    A move counts when it exceeds ``rtol * |loss| + atol``; ``atol`` is for losses computed as
    the difference of two large terms, whose rounding does not shrink with the loss.
    """

    def __init__(self, patience=20, rtol=1e-12, atol=0.0):
        self.patience, self.rtol, self.atol = patience, rtol, atol
        self.prev, self.still = math.inf, 0

    def __call__(self, trainer, loss):
        # relative to the loss itself: the wide-Gaussian limits have losses of 1e-10 that still move
        self.still = self.still + 1 if abs(self.prev - loss) <= self.rtol * abs(loss) + self.atol else 0
        self.prev = loss
        return self.still >= self.patience


class GradientAtRest:
    """Trainer hook of the engine's table: stop the final phase once its gradient has vanished.

    Checked at the loss logs only (so the loss curve ends on the last iteration), in the phase
    without exaggeration: stop when the gradient norm is below ``rtol`` times its norm at the
    start of that phase (scikit-learn's ``min_grad_norm``, relative so that it does not depend
    on n or the data's scale). The light-tailed Gaussian of SNE reaches it in about 200
    iterations on digits (its loss then stays fixed to 6 digits); a heavy-tailed t-SNE does not.
    """

    def __init__(self, rtol=1e-5):
        self.rtol, self.ref = rtol, None

    def __call__(self, trainer, loss):
        if float(trainer.phase.get("exaggeration", 1.0)) != 1.0:
            return False
        grad = trainer.module.weight.grad
        if grad is None:
            return False
        norm = float(grad.norm())
        if self.ref is None:
            self.ref = norm
        return bool(trainer.wants_loss and loss is not None and norm < self.rtol * self.ref)


# ------------------------------------------------------------------------------------------------
# new points (transform of the non-parametric table)
# ------------------------------------------------------------------------------------------------
def embed_new_points(Y_ref, neighbors, p_rows, kernel, *, method="fft", n_iter=250, learning_rate=1.0,
                     device="cpu"):
    """Place new points against a frozen reference embedding, each row independently.

    Adam (elementwise, so rows never interact) with a cosine schedule, run by the one
    :class:`~skicon._training.Trainer` on a table holding the new rows; the objective is
    :class:`~skicon.objectives._pairwise.PlacementObjective`.

    Parameters
    ----------
    Y_ref : torch.Tensor of shape (n, d)
        Frozen reference embedding.
    neighbors : torch.Tensor of shape (m, k), int64
        Reference neighbours of each new point.
    p_rows : torch.Tensor of shape (m, k)
        Supervisory probabilities over those neighbours.
    kernel : DistanceKernel
        Learned kernel.
    method : {"fft", "exact"}, default="fft"
        Repulsion evaluation.
    n_iter : int, default=250
        Adam steps.
    learning_rate : float, default=1.0
        Initial step (embedding units), annealed by the cosine schedule.
    device : torch.device, default="cpu"
        Device.

    Returns
    -------
    torch.Tensor of shape (m, d)
        New embedding rows.
    """
    objective = PlacementObjective(Y_ref, neighbors, p_rows, kernel, method=method)
    start = objective.start()
    if start.shape[0] == 0:
        return start
    table = Table(start)
    objective.trainer = Trainer(table, objective, n_steps=n_iter, optimizer="adam", learning_rate=learning_rate,
                                schedule="cosine", device=device, desc="ICONEmbedding.transform")
    objective.trainer.run()
    return table.weight.detach()
