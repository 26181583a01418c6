"""ICONEmbedding: SNE, t-SNE, PCA and MDS as choices of p and q in one estimator.

Which "t-SNE" is which
----------------------
* ``method="tsne"`` is van der Maaten & Hinton's t-SNE as users know it: the conditional
  Gaussian p(j|i) (perplexity-calibrated) is symmetrised into one *joint* distribution
  ``P = (P + P^T) / (2n)`` over all pairs, and q is the joint Student-t distribution
  ``Q_ij = w_ij / sum_{k != l} w_kl``. The loss is ``KL(P || Q)``.
* ``method="tsne_conditional"`` is the per-row form of Table 1 of the I-Con paper (Theorem 2):
  ``p(j|i)`` and ``q(j|i) = w_ij / sum_{k != i} w_ik`` are both row-normalised and the loss is the
  mean over rows of ``KL(p(.|i) || q(.|i))``, i.e. exactly :func:`skicon.icon_loss`.
* ``method="sne"`` is Hinton & Roweis' SNE (Table 1, Theorem 1): conditional Gaussians on both
  sides, ``q(j|i) ∝ exp(-||phi_i - phi_j||^2)``.
* ``method="pca"`` (Corollary 1) and ``method="mds"`` (Theorem 3) are the wide-Gaussian limits.
"""

import math
import numbers
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _cpu_kernels, _tsne
from .objectives import icon_loss
from ._training import check_callbacks
from ._utils import resolve_device, seed_from_random_state
from .kernels import DistanceKernel, Gaussian, Identity, Kernel, StudentT
from .kernels._base import restrict
from .mappers import make_mapper
from .neighbors import knn_graph

__all__ = ["ICONEmbedding", "trustworthiness_scorer", "make_trustworthiness_scorer"]

METHODS = ("tsne", "tsne_conditional", "sne", "pca", "mds")
MODES = ("auto", "exact", "fft", "sampled")

#: Below this many samples ``mode="auto"`` computes the repulsion exactly (measured faster than
#: the FFT grid there, and free of interpolation error). On CPU the compiled fused kernels of
#: :mod:`skicon._cpu_kernels` move the break-even point much higher: at 10,000 MNIST-1D points
#: one thread took 36 s exact against 37-44 s with the FFT grid.
EXACT_BELOW = 1000
EXACT_BELOW_COMPILED = 10_000

#: Width of the "wide" Gaussians of the PCA and MDS limits, in units of the root-mean-square
#: pairwise distance of the data: wide enough that the second-order terms the theorems drop are
#: about 1 % of the kept ones.
WIDE_FACTOR = 10.0


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


# ------------------------------------------------------------------------------------------------
# small modules
# ------------------------------------------------------------------------------------------------
class _OrthonormalLinear(torch.nn.Module):
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


def _tqdm(total, verbose, desc):
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


class _Threads:
    """Temporarily set torch's CPU threads, and the compiled kernels', from ``n_jobs`` (restored on exit)."""

    def __init__(self, n_jobs):
        self.n_jobs = n_jobs

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n_jobs is not None:
            import os

            cores = os.cpu_count() or 1
            n = self.n_jobs if self.n_jobs > 0 else max(1, cores + 1 + self.n_jobs)
            torch.set_num_threads(int(n))
        self.kernels = _cpu_kernels.threads(torch.get_num_threads())
        self.kernels.__enter__()
        return self

    def __exit__(self, *exc):
        self.kernels.__exit__(*exc)
        torch.set_num_threads(self.old)


# ------------------------------------------------------------------------------------------------
# estimator
# ------------------------------------------------------------------------------------------------
class ICONEmbedding(TransformerMixin, BaseEstimator):
    """Neighbour embedding by I-Con: SNE, t-SNE, PCA and MDS as choices of p and q.

    Minimises the I-Con loss between a supervisory neighbourhood distribution ``p`` on the data
    and a learned one ``q`` on the embedding. The default is van der Maaten's t-SNE (joint
    symmetrised ``P``, Student-t ``Q``); see the module notes for the per-row Table 1 form.
    Large problems use O(n k) memory: a sparse kNN ``P``, exact attraction over its non-zeros and
    FFT-accelerated grid interpolation for the repulsion (1-D and 2-D), or sampled negatives
    (higher dimensions).

    Parameters
    ----------
    method : {"tsne", "tsne_conditional", "sne", "pca", "mds"}, default="tsne"
        Row of the I-Con table. Ignored for a kernel given explicitly in ``p`` or ``q``.
    p : Kernel, default=None
        Explicit supervisory kernel (e.g. ``skicon.kernels.Gaussian(perplexity=50)`` or
        ``UniformKNN(n_neighbors=15)``); overrides the method's.
    q : Kernel, default=None
        Explicit learned kernel (e.g. ``StudentT(dof=0.5)``). ``StudentT`` and ``Gaussian`` run
        on the scalable engine; other kernels run the dense exact path (small n only).
    n_components : int, default=2
        Embedding dimension.
    perplexity : float, default=30.0
        Perplexity of the Gaussian ``p`` of SNE/t-SNE; reduced to the number of neighbours
        (with a warning) on tiny data sets.
    n_neighbors : int or "auto", default="auto"
        Neighbours kept in the sparse ``p``: ``min(n - 1, ceil(3 * perplexity))`` when "auto".
    alpha : float in [0, 1), default=0.0
        Debiasing (paper eq. 2): ``p~ = (1 - alpha) p + alpha / N``. The uniform part acts as a
        weak global attraction and keeps the loss O(n) (one more FFT kernel sum).
    normalization : {"auto", "joint", "conditional"}, default="auto"
        Joint (one distribution over pairs, t-SNE) or conditional (per row, Table 1). "auto" is
        joint for ``method="tsne"`` without an explicit ``p`` (an explicit ``q`` alone keeps
        the joint t-SNE form), and conditional otherwise.
    mapper : {"auto", "table", "linear", "mlp"} or callable, default="auto"
        ``"table"``: non-parametric (one free vector per sample). ``"linear"``/``"mlp"`` or a
        factory ``f(n_features, n_components) -> torch.nn.Module``: parametric, and ``transform``
        runs the network. "auto" is "table", except "linear" (orthonormal) for ``method="pca"``.
    init : {"pca", "random", "spectral"} or ndarray of shape (n_samples, n_components), default="pca"
        Initial table. "pca" and "spectral" are rescaled to standard deviation 1e-4, as usual
        for t-SNE. Ignored by parametric mappers.
    learning_rate : float or "auto", default="auto"
        Step size. "auto" is ``max(n / (4 * exaggeration), 50)`` per phase for the table (the
        gradient carries t-SNE's factor 4; this equals openTSNE's ``n / exaggeration``), and
        1e-3 (Adam) for parametric mappers.
    max_iter : int, default=750
        Total iterations, including the early-exaggeration phase.
    early_exaggeration : float, default=12.0
        Factor on the attraction during the first ``early_exaggeration_iter`` iterations.
    early_exaggeration_iter : int, default=250
        Length of the early-exaggeration phase.
    mode : {"auto", "exact", "fft", "sampled"}, default="auto"
        How the repulsion over all pairs is computed. "exact": all pairs (O(n^2) time, chunked
        memory); "fft": grid interpolation + FFT (1-D/2-D only); "sampled": random negatives.
        "auto": exact below 10,000 samples for 1-D/2-D embeddings on CPU (compiled fused
        kernels, O(n) memory) and below 1,000 elsewhere, then fft in 1-D/2-D, sampled otherwise
        (exact up to 5,000 samples).
    n_negatives : int, default=64
        Negatives per point for ``mode="sampled"``.
    batch_size : int, default=2048
        Rows per step of the dense path (PCA, MDS, other kernels); full batch when n is smaller.
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Torch device.
    random_state : int, RandomState instance or None, default=None
        Seed for the initialisation, neighbour search and sampling.
    verbose : int, default=0
        Show a progress bar when positive.
    callbacks : callable or list of callables, default=None
        ``cb(iteration, loss, estimator) -> bool`` called every 50 iterations (and at the end of
        the dense path's iterations); a truthy return stops training.
    n_jobs : int, default=None
        CPU threads for torch and the neighbour search (-1: all cores).

    Attributes
    ----------
    embedding_ : ndarray of shape (n_samples, n_components)
        The embedding of the training data.
    affinities_ : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
        The supervisory ``p``: joint for "tsne", conditional otherwise (dense-path methods store
        the conditional matrix actually used).
    kl_divergence_ : float
        Final value of the loss (KL for the joint form, mean row KL for the conditional form).
        With ``mode="fft"`` the normaliser comes from the grid interpolation (about 1e-4
        relative error on 2,000 points in the tests), with ``mode="sampled"`` from random
        negatives, so the value is approximate to that order; ``"exact"`` is exact.
    loss_ : float
        Same as ``kl_divergence_``.
    loss_curve_ : ndarray of shape (n_evaluations,)
        Loss at ``loss_curve_iterations_``.
    loss_curve_iterations_ : ndarray of shape (n_evaluations,)
        Iterations at which the loss was evaluated.
    n_iter_ : int
        Iterations run.
    module_ : torch.nn.Module
        The trained mapper, for parametric mappers only.
    learning_rate_ : float or str
        The learning rate used ("auto" stays "auto" for the table: it varies per phase).
    perplexity_ : float
        Perplexity actually used (None when ``p`` is not a perplexity Gaussian).
    mode_ : str
        The repulsion mode actually used (or "dense").
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when X has string column names.

    See Also
    --------
    sklearn.manifold.TSNE : scikit-learn's t-SNE.

    Notes
    -----
    The non-parametric ``transform`` places each new point by minimising its own row of the
    conditional I-Con loss against the frozen training embedding (``p`` from its neighbours in
    the training data, ``q`` over all training points), so the rows are independent: a batch
    gives the same result as one point at a time.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon import ICONEmbedding
    >>> X = np.random.RandomState(0).randn(60, 5)
    >>> Z = ICONEmbedding(perplexity=5, max_iter=100, random_state=0).fit_transform(X)
    >>> Z.shape
    (60, 2)
    """

    _parameter_constraints = {
        "method": [StrOptions(set(METHODS))],
        "p": [Kernel, None],
        "q": [Kernel, None],
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "perplexity": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "alpha": [Interval(numbers.Real, 0, 1, closed="left")],
        "normalization": [StrOptions({"auto", "joint", "conditional"})],
        "mapper": [StrOptions({"auto", "table", "linear", "mlp"}), callable],
        "init": [StrOptions({"pca", "random", "spectral"}), "array-like"],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "early_exaggeration": [Interval(numbers.Real, 1, None, closed="left")],
        "early_exaggeration_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "mode": [StrOptions(set(MODES))],
        "n_negatives": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 2, None, closed="left")],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [callable, list, tuple, None],
        "n_jobs": [numbers.Integral, None],
    }

    def __init__(
        self,
        method="tsne",
        *,
        p=None,
        q=None,
        n_components=2,
        perplexity=30.0,
        n_neighbors="auto",
        alpha=0.0,
        normalization="auto",
        mapper="auto",
        init="pca",
        learning_rate="auto",
        max_iter=750,
        early_exaggeration=12.0,
        early_exaggeration_iter=250,
        mode="auto",
        n_negatives=64,
        batch_size=2048,
        device="cpu",
        random_state=None,
        verbose=0,
        callbacks=None,
        n_jobs=None,
    ):
        self.method = method
        self.p = p
        self.q = q
        self.n_components = n_components
        self.perplexity = perplexity
        self.n_neighbors = n_neighbors
        self.alpha = alpha
        self.normalization = normalization
        self.mapper = mapper
        self.init = init
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.early_exaggeration = early_exaggeration
        self.early_exaggeration_iter = early_exaggeration_iter
        self.mode = mode
        self.n_negatives = n_negatives
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.n_jobs = n_jobs

    # -- scikit-learn plumbing --------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.non_deterministic = self.device != "cpu"
        return tags

    # -- resolution of the configuration -----------------------------------------------------
    def _resolve(self, n):
        """Decide kernels, normalisation, mapper and path for ``n`` samples."""
        method = self.method
        mapper = self.mapper
        if mapper == "auto":
            mapper = "linear" if (method == "pca" and self.p is None and self.q is None) else "table"
        cfg = {"mapper": mapper, "parametric": mapper != "table"}
        if self.p is None and self.q is None and method in ("pca", "mds"):
            cfg.update(path="dense", limit=method)
            return cfg
        # p: the perplexity Gaussian unless given
        cfg["p"] = self.p
        # q: Student-t for t-SNE, Table 1's exp(-d^2) for SNE
        if self.q is not None:
            q = self.q
        elif method == "sne":
            q = Gaussian(sigma=math.sqrt(0.5))
        else:
            q = StudentT(dof=1.0)
        cfg["q"] = q
        norm = self.normalization
        if norm == "auto":
            norm = "joint" if (method == "tsne" and self.p is None) else "conditional"
        cfg["normalization"] = norm
        spec = _engine_kernel(q)
        cfg["kernel"] = spec
        cfg["path"] = "engine" if spec is not None else "dense"
        cfg["limit"] = None
        return cfg

    def _resolve_mode(self, n, device):
        mode = self.mode
        if mode == "fft" and self.n_components > 2:
            raise ValueError(
                f"mode='fft' supports n_components of 1 or 2, got n_components={self.n_components}; "
                "use mode='exact' or mode='sampled'."
            )
        if mode != "auto":
            return mode
        if n < (EXACT_BELOW_COMPILED if _tsne.compiled_kernels_apply(device, self.n_components) else EXACT_BELOW):
            return "exact"
        if self.n_components <= 2:
            return "fft"
        return "exact" if n <= 5000 else "sampled"

    # -- fitting -----------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the embedding to ``X``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data. Sparse input is supported by the neighbour search; the PCA
            initialisation then uses a truncated SVD.
        y : None
            Ignored.

        Returns
        -------
        self : ICONEmbedding
            The fitted estimator.
        """
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], ensure_min_samples=2)
        callbacks = check_callbacks(self.callbacks)
        device = resolve_device(self.device)
        n = X.shape[0]
        cfg = self._resolve(n)
        with _Threads(self.n_jobs):
            if cfg["path"] == "engine":
                self._fit_engine(X, cfg, device, callbacks)
            else:
                self._fit_dense(X, cfg, device, callbacks)
        self.loss_ = self.kl_divergence_
        return self

    def fit_transform(self, X, y=None):
        """Fit to ``X`` and return its embedding.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : None
            Ignored.

        Returns
        -------
        ndarray of shape (n_samples, n_components)
            ``embedding_``.
        """
        return self.fit(X, y).embedding_

    # -- supervisory p -------------------------------------------------------------------------
    def _affinities(self, X, cfg):
        """Conditional sparse p, the neighbour graph and the perplexity used."""
        n = X.shape[0]
        p_kernel = cfg["p"]
        if p_kernel is None:
            perplexity = float(self.perplexity)
            k = int(math.ceil(3 * perplexity)) if self.n_neighbors == "auto" else int(self.n_neighbors)
            k = min(k, n - 1)
            if perplexity > k:
                warnings.warn(
                    f"perplexity={perplexity} needs at least {math.ceil(perplexity)} neighbours but only {k} "
                    f"are available (n_samples={n}, n_neighbors={self.n_neighbors!r}); using perplexity={k}.",
                    UserWarning,
                )
                perplexity = float(k)
            graph = knn_graph(X, k, random_state=self.random_state, n_jobs=self.n_jobs)
            rows, _ = _tsne.perplexity_affinities(graph.distances, perplexity)
            P = graph.to_csr(rows)
            self._knn_k = k
            return P.tocsr(), perplexity
        P = p_kernel.conditional(X, random_state=self.random_state, n_jobs=self.n_jobs)
        self._knn_k = None
        perplexity = getattr(p_kernel, "perplexity", None)
        return sp.csr_matrix(P), perplexity

    def _initial_embedding(self, X, n, d, P_joint):
        rng = np.random.RandomState(seed_from_random_state(self.random_state))
        init = self.init
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
            from sklearn.manifold import SpectralEmbedding

            A = sp.csr_matrix(P_joint)
            A = (A + A.T) / 2
            try:
                Y = SpectralEmbedding(d, affinity="precomputed", random_state=rng).fit_transform(A)
            except Exception as exc:  # disconnected or degenerate graphs
                warnings.warn(f"spectral initialisation failed ({exc}); using random initialisation.")
                return 1e-4 * rng.randn(n, d)
        else:
            Y = _pca_scores(X, d, rng)
        std = Y[:, 0].std()
        if not np.isfinite(std) or std <= 1e-12:
            return 1e-4 * rng.randn(n, d)
        return Y / std * 1e-4

    # -- the scalable engine --------------------------------------------------------------------
    def _fit_engine(self, X, cfg, device, callbacks):
        n, d = X.shape[0], self.n_components
        P, perplexity = self._affinities(X, cfg)
        norm = cfg["normalization"]
        # Gaussian affinities underflow float32 at moderate distances; Student-t ones do not
        dtype = torch.float32 if cfg["kernel"].heavy_tailed() else torch.float64
        if norm == "joint":
            J = _tsne.joint_from_conditional(P)
            aff = _tsne.SparseAffinity(J, device, dtype)
            self.affinities_ = J
        else:
            aff = _tsne.SparseAffinity((P + P.T).tocsr(), device, dtype)
            aff.cond = _tsne.SparseAffinity(P, device, dtype)
            self.affinities_ = P
        self.perplexity_ = perplexity
        mode = self._resolve_mode(n, device)
        self.mode_ = mode
        ee_iter = min(self.early_exaggeration_iter, self.max_iter)
        phases = [
            {"n_iter": ee_iter, "exaggeration": self.early_exaggeration, "momentum": 0.5,
             "learning_rate": self.learning_rate},
            {"n_iter": self.max_iter - ee_iter, "exaggeration": 1.0, "momentum": 0.8,
             "learning_rate": self.learning_rate},
        ]
        gen = torch.Generator(device=device)
        gen.manual_seed(seed_from_random_state(self.random_state))
        common = dict(normalization=norm, alpha=float(self.alpha), method=mode, n_negatives=self.n_negatives,
                      generator=gen)
        bar = _tqdm(self.max_iter, self.verbose, "ICONEmbedding")

        def callback(it, loss):
            return any(bool(cb(it, loss, self)) for cb in callbacks)

        try:
            if cfg["parametric"]:
                Y, curve, n_iter = self._train_parametric(X, aff, cfg, device, phases, common, callback, bar)
            else:
                Y0 = self._initial_embedding(X, n, d, self.affinities_)
                Y = torch.as_tensor(Y0, dtype=dtype, device=device)
                Y, curve, n_iter = _tsne.optimize(Y, aff, cfg["kernel"], phases=phases, callback=callback,
                                                  progress=bar, **common)
        finally:
            if bar is not None:
                bar.close()
        _, loss = _tsne.objective_and_gradient(Y, aff, cfg["kernel"], want_loss=True, **common)
        if not torch.isfinite(Y).all():
            raise FloatingPointError("the embedding diverged (non-finite values); lower learning_rate.")
        self.embedding_ = Y.detach().cpu().numpy().astype(np.float64)
        self.kl_divergence_ = float(loss)
        self.loss_curve_ = np.array([c[1] for c in curve] + [float(loss)])
        self.loss_curve_iterations_ = np.array([c[0] for c in curve] + [n_iter])
        self.n_iter_ = n_iter
        self.learning_rate_ = self.learning_rate
        self._engine = cfg["kernel"]
        self._fit_X = X
        self._cfg = cfg

    def _train_parametric(self, X, aff, cfg, device, phases, common, callback, bar):
        n, d = X.shape[0], self.n_components
        Xt = _dense_tensor(X, device, torch.float32)
        module = make_mapper(cfg["mapper"], X.shape[1], d, n_samples=n, random_state=self.random_state).to(device)
        lr = 1e-3 if self.learning_rate == "auto" else float(self.learning_rate)
        opt = torch.optim.Adam(module.parameters(), lr=lr)
        curve, it = [], 0
        for phase in phases:
            for _ in range(phase["n_iter"]):
                it += 1
                want = it % 50 == 0
                opt.zero_grad(set_to_none=True)
                Y = module(Xt)
                grad, loss = _tsne.objective_and_gradient(
                    Y.detach(), aff, cfg["kernel"], exaggeration=phase["exaggeration"], want_loss=want, **common
                )
                # chain rule through the network: d loss / d theta = (d loss / d Y) . (d Y / d theta)
                (Y * grad).sum().backward()
                opt.step()
                if bar is not None:
                    bar.update(1)
                if want:
                    curve.append((it, loss))
                    if callback(it, loss):
                        break
            else:
                continue
            break
        self.module_ = module.eval()
        with torch.no_grad():
            Y = module(Xt)
        return Y, curve, it

    # -- dense path (PCA, MDS, any other kernels) ------------------------------------------------
    def _fit_dense(self, X, cfg, device, callbacks):
        Xd = X.toarray() if sp.issparse(X) else np.asarray(X)
        n, d = Xd.shape[0], self.n_components
        dtype = torch.float64
        Xt = torch.as_tensor(Xd, dtype=dtype, device=device)
        limit = cfg.get("limit")
        centred = Xd - Xd.mean(axis=0)
        rms = math.sqrt(max(2.0 * float((centred**2).sum(axis=1).mean()), 1e-300))
        gen = torch.Generator().manual_seed(seed_from_random_state(self.random_state))
        if limit == "pca":
            p_kernel = Identity()
            q_kernel = Gaussian(sigma=WIDE_FACTOR * rms, include_self=True)
        elif limit == "mds":
            p_kernel = Gaussian(sigma=WIDE_FACTOR * rms, n_neighbors=None)
            q_kernel = Gaussian(sigma=WIDE_FACTOR * rms)
        else:
            p_kernel = cfg["p"] if cfg["p"] is not None else Gaussian(perplexity=float(self.perplexity))
            q_kernel = cfg["q"]
            if getattr(p_kernel, "perplexity", None) is not None and p_kernel.perplexity >= n:
                raise ValueError(f"p.perplexity={p_kernel.perplexity} must be below n_samples={n}.")
        self.perplexity_ = getattr(p_kernel, "perplexity", None)
        self.mode_ = "dense"
        mapper = cfg["mapper"]
        if limit == "pca" and mapper == "linear":
            module = _OrthonormalLinear(Xd.shape[1], d, Xd.mean(axis=0), gen).to(device)
        elif mapper == "table":
            Y0 = self._initial_embedding(Xd, n, d, None)
            if limit == "mds" and isinstance(self.init, str):
                Y0 = Y0 / 1e-4 * (rms / math.sqrt(2) / max(np.sqrt(d), 1.0))  # data scale, not 1e-4
            module = make_mapper("table", Xd.shape[1], d, n_samples=n, init=Y0, random_state=self.random_state)
            module = module.to(device=device, dtype=dtype)
        else:
            module = make_mapper(mapper, Xd.shape[1], d, n_samples=n, random_state=self.random_state)
            module = module.to(device=device, dtype=dtype)
        table = mapper == "table"
        full = n <= self.batch_size
        P = None if not full else p_kernel.conditional(Xd, random_state=self.random_state, n_jobs=self.n_jobs)
        self.affinities_ = sp.csr_matrix(P) if P is not None else None
        idx_all = np.arange(n)
        P_full = restrict(p_kernel, P, idx_all, idx_all, dtype=dtype, device=device) if full else None

        def batch_loss(idx):
            idx_t = torch.as_tensor(idx, device=device)
            Z = module(idx_t) if table else module(Xt[idx_t])
            if full:
                Pb = P_full
            else:
                Pb_sparse = p_kernel.conditional(Xd[idx], random_state=self.random_state, n_jobs=self.n_jobs)
                loc = np.arange(len(idx))
                Pb = restrict(p_kernel, Pb_sparse, loc, loc, dtype=dtype, device=device)
            return icon_loss(Pb, q_kernel.log_prob(Z))

        curve = []
        bar = _tqdm(self.max_iter, self.verbose, "ICONEmbedding")
        it = 0
        try:
            if full:
                # wide-Gaussian limits have tiny gradients: no absolute tolerances, only max_iter
                opt = torch.optim.LBFGS(module.parameters(), lr=1.0, max_iter=20, history_size=20,
                                        tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe")
                n_outer = max(1, math.ceil(self.max_iter / 20))

                def closure():
                    opt.zero_grad(set_to_none=True)
                    loss = batch_loss(idx_all)
                    loss.backward()
                    return loss

                prev = math.inf
                for _ in range(n_outer):
                    loss = float(opt.step(closure))
                    it += 20
                    curve.append((it, loss))
                    if bar is not None:
                        bar.update(20)
                    if any(bool(cb(it, loss, self)) for cb in callbacks) or abs(prev - loss) <= 1e-12 * max(1, abs(loss)):
                        break
                    prev = loss
            else:
                lr = 1e-2 if self.learning_rate == "auto" else float(self.learning_rate)
                opt = torch.optim.Adam(module.parameters(), lr=lr)
                rng = np.random.RandomState(seed_from_random_state(self.random_state))
                for it in range(1, self.max_iter + 1):
                    idx = np.sort(rng.choice(n, self.batch_size, replace=False))
                    opt.zero_grad(set_to_none=True)
                    loss = batch_loss(idx)
                    loss.backward()
                    opt.step()
                    if bar is not None:
                        bar.update(1)
                    if it % 50 == 0 or it == self.max_iter:
                        curve.append((it, float(loss)))
                        if any(bool(cb(it, float(loss), self)) for cb in callbacks):
                            break
        finally:
            if bar is not None:
                bar.close()
        with torch.no_grad():
            Z = module(torch.as_tensor(idx_all, device=device)) if table else module(Xt)
            final = float(batch_loss(idx_all)) if full else curve[-1][1]
        if not torch.isfinite(Z).all():
            raise FloatingPointError("the embedding diverged (non-finite values); lower learning_rate.")
        self.embedding_ = Z.detach().cpu().numpy().astype(np.float64)
        self.kl_divergence_ = final
        self.loss_curve_ = np.array([c[1] for c in curve])
        self.loss_curve_iterations_ = np.array([c[0] for c in curve])
        self.n_iter_ = int(curve[-1][0]) if curve else 0
        self.learning_rate_ = self.learning_rate
        if not table:
            self.module_ = module.eval()
        self._cfg = cfg
        self._fit_X = X

    # -- transform -------------------------------------------------------------------------------
    def transform(self, X):
        """Embed new data.

        Parametric mappers run the trained network. The non-parametric table optimises each new
        point's row of the conditional loss against the frozen training embedding (rows are
        independent). Dense-path table embeddings (PCA/MDS limits with ``mapper="table"``) place
        new points the same way with a Student-t field, which is only a heuristic there.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            New data.

        Returns
        -------
        ndarray of shape (n_samples, n_components)
            Embedding of ``X``.
        """
        check_is_fitted(self, "embedding_")
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False)
        device = resolve_device(self.device)
        with _Threads(self.n_jobs):
            if hasattr(self, "module_"):
                dtype = next(self.module_.parameters()).dtype
                with torch.no_grad():
                    Z = self.module_(_dense_tensor(X, device, dtype))
                return Z.cpu().numpy().astype(np.float64)
            return self._transform_table(X, device)

    def _transform_table(self, X, device):
        from sklearn.neighbors import NearestNeighbors

        Xf = self._fit_X
        n = Xf.shape[0]
        perplexity = self.perplexity_ if self.perplexity_ is not None else min(30.0, (n - 1) / 3)
        k = int(min(n, max(1, math.ceil(3 * perplexity))))
        perplexity = min(perplexity, k)
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(Xf)
        _, ind = nn.kneighbors(X)
        # recompute the distances elementwise: BLAS-based ones depend on the batch in the last bits
        Xd = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
        Fd = Xf.toarray() if sp.issparse(Xf) else np.asarray(Xf, dtype=np.float64)
        dist = np.zeros(ind.shape)
        step = max(1, 4_000_000 // max(1, k * Xd.shape[1]))
        for s in range(0, Xd.shape[0], step):
            dist[s : s + step] = np.sqrt(((Xd[s : s + step, None, :] - Fd[ind[s : s + step]]) ** 2).sum(axis=2))
        rows, _ = _tsne.perplexity_affinities(dist, perplexity)
        Y_ref = torch.as_tensor(self.embedding_, dtype=torch.float32, device=device)
        kernel = getattr(self, "_engine", None) or StudentT(dof=1.0)
        method = "fft" if (self.n_components <= 2 and n >= EXACT_BELOW) else "exact"
        Y = _tsne.embed_new_points(
            Y_ref,
            torch.as_tensor(ind, device=device),
            torch.as_tensor(rows, dtype=torch.float32, device=device),
            kernel,
            method=method,
        )
        return Y.cpu().numpy().astype(np.float64)

    def score(self, X, y=None):
        """Trustworthiness (k = 10) of the embedding of ``X`` given by :meth:`transform`.

        Higher is better (at most 1), which lets ``GridSearchCV`` compare settings with different
        ``q`` or ``alpha`` (whose KL values are not comparable) without a ``scoring`` argument.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Data to embed and score (at least 4 samples).
        y : None
            Ignored.

        Returns
        -------
        float
            Trustworthiness in [0, 1].
        """
        return trustworthiness_scorer(self, X)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _engine_kernel(q):
    """``q`` itself when the scalable engine can run it (any distance kernel), else None.

    The engine needs ``q`` as a function of the squared distance
    (:class:`~skicon.kernels.DistanceKernel`, self pair excluded); other learned kernels
    (cosine, dot product, debiased or self-including ones) run the dense exact path.
    """
    if isinstance(q, DistanceKernel) and not q.include_self:
        q._validate()
        return q
    return None


def _dense_tensor(X, device, dtype):
    if sp.issparse(X):
        X = X.toarray()
    return torch.as_tensor(np.asarray(X), dtype=dtype, device=device)


def _pca_scores(X, d, rng):
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
            out[:, :m] = PCA(m, svd_solver=solver, random_state=rng).fit_transform(X)
    if m < d:
        scale = out[:, 0].std() if m >= 1 and out[:, 0].std() > 0 else 1.0
        out[:, m:] = scale * 1e-2 * rng.randn(n, d - m)
    return out
