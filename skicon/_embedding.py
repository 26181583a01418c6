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
* ``method="pca"`` (Corollary 1) and ``method="mds"`` (Theorem 3) are the wide-Gaussian limits,
  solved by LBFGS on their exact loss from a principal-subspace start
  (:mod:`skicon._embedding_limits`).

The fit reads: validate -> plan (:class:`skicon._embedding_parts.Plan`) -> p =
kernel.conditional -> objective (the pairwise engine of :mod:`skicon.objectives._pairwise`, or
the dense :func:`skicon.icon_loss`) -> :class:`skicon._training.Trainer` -> fitted attributes.
"""

import math
import numbers

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._embedding_parts import (EXACT_BELOW, METHODS, MODES, DenseObjective, GradientAtRest, LossStalled, dense,
                               dense_module, embed_new_points, initial_embedding, make_plan,
                               make_trustworthiness_scorer, trustworthiness_scorer)
from ._sklearn_api import FeatureNamesOutMixin, KernelParamsMixin, device_name
from ._threads import N_JOBS_CONSTRAINT, thread_limits
from ._embedding_limits import fit_limit
from ._training import Trainer, check_callbacks
from ._utils import as_tensor, resolve_device, seed_from_random_state, state_on_cpu
from ._validation import to_unit_frame, unit_exponent
from .kernels import Gaussian, Kernel, StudentT
from .mappers import Table, make_mapper
from .neighbors import query_neighbors, search_device
from .objectives._pairwise import (EngineObjective, SparseAffinity, auto_learning_rate, engine_dtype,
                                   joint_from_conditional)

__all__ = ["ICONEmbedding", "trustworthiness_scorer", "make_trustworthiness_scorer"]

#: Momentum of the gains optimiser during early exaggeration and in the main phase. 0.8 in the
#: main phase as everywhere; during exaggeration scikit-learn uses 0.5 and openTSNE 0.8, and
#: neither was best here. Same kNN graph, one fit each, two cores (exact KL of MNIST-1D 70k,
#: lower is better; trustworthiness of MNIST-1D 200k, mean of five 2,000-point subsamples, where
#: openTSNE's map scored 0.9437): 0.5 gave KL 3.6927 (openTSNE 3.6875) and trust 0.9426; 0.8 gave
#: 3.6718 and 0.9383 (coarser structure lost); 0.65 gave 3.6774 and 0.9420.
EE_MOMENTUM = 0.65
MOMENTUM = 0.8

# ------------------------------------------------------------------------------------------------
# estimator
# ------------------------------------------------------------------------------------------------
class ICONEmbedding(FeatureNamesOutMixin, KernelParamsMixin, TransformerMixin, BaseEstimator):
    """Neighbour embedding by I-Con: SNE, t-SNE, PCA and MDS as choices of p and q.

    Minimises the I-Con loss between a supervisory neighbourhood distribution ``p`` on the data
    and a learned one ``q`` on the embedding. The default is van der Maaten's t-SNE (joint
    symmetrised ``P``, Student-t ``Q``); see the module notes for the per-row Table 1 form.
    Large problems use O(n k) memory: a sparse kNN ``P``, exact attraction over its non-zeros and
    FFT-accelerated grid interpolation for the repulsion (1-D and 2-D), or sampled negatives
    (higher dimensions). Every optimisation runs through :class:`skicon._training.Trainer`.

    Parameters
    ----------
    method : {"tsne", "tsne_conditional", "sne", "pca", "mds"}, default="tsne"
        Row of the periodic table (:func:`skicon.list_methods`); ``"tsne_conditional"`` is an
        alias of the ``tsne`` row with ``normalization="conditional"``. The row gives the
        default ``p`` and ``q`` and the defaults of the "auto" parameters (``row.defaults``);
        an explicit ``p`` or ``q`` replaces the row's.
    p : Kernel, default=None
        Explicit supervisory kernel (e.g. ``skicon.kernels.Gaussian(perplexity=50)`` or
        ``UniformKNN(n_neighbors=15)``); overrides the method's (``perplexity`` and
        ``n_neighbors`` then do not apply).
    q : Kernel, default=None
        Explicit learned kernel (e.g. ``StudentT(dof=0.5)``). Any
        :class:`~skicon.kernels.DistanceKernel` (self pair excluded) runs on the scalable
        engine, including a kernel written with only ``log_weight``; kernels that name a
        compiled loop (``compiled_profile()``: ``StudentT``, ``Gaussian``) run the fused CPU
        loops in 1-D to 3-D, every other distance kernel falls back to the engine's torch
        code (same results, slower). Other kernels (cosine, dot product, debiased or
        self-including ones) run the dense exact path (small n only).
    n_components : int, default=2
        Embedding dimension.
    perplexity : float, default=30.0
        Perplexity of the Gaussian ``p`` of SNE/t-SNE; reduced to the number of neighbours
        (with a warning) on tiny data sets.
    n_neighbors : int or "auto", default="auto"
        Neighbours kept in the sparse ``p``: ``min(n - 1, ceil(3 * perplexity))`` when "auto".
    alpha : float in [0, 1), default=0.0
        Debiasing (paper eq. 2): ``p~ = (1 - alpha) p + alpha / N``, on every path (``p_`` is
        then ``Debiased(p, alpha)``). On the engine the uniform part acts as a weak global
        attraction and keeps the loss O(n) (one more kernel sum). ``p=Debiased(kernel, alpha=a)``
        means the same as ``p=kernel, alpha=a`` (so a grid can search ``p__alpha``); giving
        both a non-zero ``alpha`` and a different ``p.alpha`` raises a ``ValueError``.
    normalization : {"auto", "joint", "conditional"}, default="auto"
        Joint (one distribution over pairs, t-SNE) or conditional (per row, Table 1). "auto"
        takes the row's default (joint for ``tsne``), conditional with an explicit ``p`` and
        on the dense path. The dense path supports only "conditional" (ValueError otherwise).
    mapper : {"auto", "table", "linear", "mlp"} or callable, default="auto"
        ``"table"``: non-parametric (one free vector per sample). ``"linear"``/``"mlp"`` or a
        factory ``f(n_features, n_components) -> torch.nn.Module``: parametric, and ``transform``
        runs the network. "auto" takes the row's default: "linear" (orthonormal) for
        ``method="pca"``, "table" otherwise.
    init : {"pca", "random", "spectral"} or ndarray of shape (n_samples, n_components), default="pca"
        Initial table. "pca" and "spectral" are rescaled to standard deviation 1e-4, as usual
        for t-SNE (``method="mds"``: the principal scores themselves, at the data's scale).
        Ignored by parametric mappers.
    learning_rate : float or "auto", default="auto"
        Step size. "auto" is ``max(n / (4 * exaggeration), 50)`` per phase for the table (the
        gradient carries t-SNE's factor 4; this equals openTSNE's ``n / exaggeration``), 1e-3
        (Adam) for parametric mappers, 1.0 for the dense path's LBFGS and 1e-2 for its Adam.
    max_iter : int, default=750
        Total iterations (optimiser steps), including the early-exaggeration phase. With a
        light-tailed ``q`` (SNE's Gaussian) on a table, the fit stops earlier once the gradient
        has vanished (below 1e-5 of its norm when exaggeration ends, checked at each loss log).
    early_exaggeration : float, default=12.0
        Factor on the attraction during the first ``early_exaggeration_iter`` iterations
        (engine only: the dense path minimises the exact loss directly).
    early_exaggeration_iter : int, default=250
        Length of the early-exaggeration phase. A table embedding is optimised by t-SNE's gains
        with momentum 0.65 during exaggeration and 0.8 after it.
    mode : {"auto", "exact", "fft", "sampled"}, default="auto"
        How the repulsion over all pairs is computed. "exact": all pairs (O(n^2) time, chunked
        memory); "fft": grid interpolation + FFT (1-D/2-D only); "sampled": random negatives.
        "auto": exact below 10,000 samples for 1-D to 3-D embeddings on CPU with a compiled
        kernel (fused loops, O(n) memory) and below 1,000 elsewhere, then fft in 1-D/2-D,
        sampled otherwise (exact up to 5,000 samples). The PCA and MDS rows and the dense path
        accept only "auto" and "exact".
    n_negatives : int, default=64
        Negatives per point for ``mode="sampled"``.
    batch_size : int, default=2048
        Rows per step of the dense path (Adam on batches when n is larger; LBFGS on the full
        batch otherwise). The engine is always full batch.
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Torch device.
    random_state : int, RandomState instance or None, default=None
        Seed for the initialisation, neighbour search and sampling.
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
    embedding_ : ndarray of shape (n_samples, n_components)
        The embedding of the training data.
    affinities_ : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
        The supervisory ``p``: joint for the joint form, conditional otherwise (before
        debiasing).
    p_ : Kernel
        The supervisory kernel trained (``Debiased`` when ``alpha > 0``).
    q_ : Kernel
        The learned kernel trained.
    normalization_ : str
        The normalisation trained ("joint" or "conditional").
    kl_divergence_ : float
        Final value of the loss (KL for the joint form, mean row KL for the conditional form),
        evaluated on the final embedding; in float64 and exact with ``mode="exact"`` and on the
        dense path. With ``mode="fft"`` the normaliser comes from the grid interpolation (about
        1e-4 relative error on 2,000 points in the tests), with ``mode="sampled"`` from random
        negatives.
    loss_ : float
        Same as ``kl_divergence_``: equals ``get_method(row).loss(X, embedding_, p=p_, q=q_,
        normalization=normalization_)`` (exact modes).
    loss_curve_ : ndarray of shape (n_logs,)
        The loss logged every 50 iterations and after the last one (at
        ``loss_curve_iterations_``): the exact loss at that iteration, before its step (the engine
        computes it only there: it costs one more pass over the edges).
    loss_curve_iterations_ : ndarray of shape (n_logs,)
        Iteration of each entry of ``loss_curve_``.
    n_iter_ : int
        Iterations (optimiser steps) run.
    module_ : torch.nn.Module
        The trained mapper, for parametric mappers only.
    learning_rate_ : float or str
        The learning rate used ("auto" stays "auto" for the table: it varies per phase).
    perplexity_ : float
        Perplexity actually used (None when ``p`` is not a perplexity Gaussian).
    mode_ : str
        The repulsion mode actually used (or "dense").
    device_ : str
        The torch device training ran on, with its index (``"cpu"``, ``"cuda:0"``): ``device``
        resolved (``"auto"`` becomes ``"cuda:0"`` or ``"cpu"``).
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
        "n_jobs": N_JOBS_CONSTRAINT,
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

    def __getstate__(self):
        # The fitted module on the CPU, so that a model fitted on CUDA unpickles anywhere.
        return state_on_cpu(super().__getstate__())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.non_deterministic = self.device != "cpu"
        return tags

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
        # The neighbour rows' p is scale free (perplexity-calibrated): compute in X's unit frame
        # (an exact power of two), so that X * 1e-160 or X * 1e160 fit as X does.
        scale_free = self.method in ("sne", "tsne", "tsne_conditional") and (
            self.p is None or getattr(self.p, "_scale_free", lambda: False)())
        self._unit_exp = unit_exponent(X) if scale_free else 0
        X = to_unit_frame(X, self._unit_exp)
        callbacks = check_callbacks(self.callbacks)
        device = resolve_device(self.device)
        plan = self._plan = make_plan(self, X, device)
        with thread_limits(self.n_jobs, size=np.prod(X.shape)), search_device(device):  # torch kNN on CUDA
            if plan.path == "engine":
                trainer, objective, module, loss = self._fit_engine(X, plan, device, callbacks)
            elif plan.path == "limit":
                trainer, objective, module, loss, self.affinities_ = fit_limit(self, X, plan, device, callbacks)
                with torch.no_grad():
                    self._set_embedding(objective.embedding(module))
            else:
                trainer, objective, module, loss = self._fit_dense(X, plan, device, callbacks)
        self.p_, self.q_, self.normalization_, self.mode_ = plan.p, plan.q, plan.normalization, plan.mode
        self.perplexity_ = plan.perplexity
        self.device_ = device_name(device)
        self.kl_divergence_ = self.loss_ = float(loss)
        self.loss_curve_ = np.asarray(trainer.history, dtype=np.float64)
        self.n_iter_ = trainer.n_iter
        self.loss_curve_iterations_ = np.asarray(trainer.history_iterations)
        self.learning_rate_ = self.learning_rate
        if plan.mapper != "table":
            self.module_ = module.eval()
        self._fit_X = X
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

    def _set_embedding(self, Y):
        if not torch.isfinite(Y).all():
            raise FloatingPointError("the embedding diverged (non-finite values); lower learning_rate.")
        self.embedding_ = Y.detach().cpu().numpy().astype(np.float64)

    # -- the pairwise engine (sne / tsne rows with a distance kernel q) --------------------------
    def _fit_engine(self, X, plan, device, callbacks):
        n, d = X.shape[0], self.n_components
        # the row's p is Gaussian(perplexity, n_neighbors=k): its conditional() finds the kNN graph
        P = sp.csr_matrix(plan.p_base.conditional(X, random_state=self.random_state, n_jobs=self.n_jobs))
        # Gaussian affinities underflow float32 at moderate distances, except in the compiled loops
        dtype = engine_dtype(plan.q, device, d, plan.mode)
        if plan.normalization == "joint":
            self.affinities_ = joint_from_conditional(P)
            aff = SparseAffinity(self.affinities_, device, dtype, symmetric=True)
        else:
            self.affinities_ = P
            aff = SparseAffinity.conditional(P, device, dtype)
        del P  # the joint form keeps its own matrix: the conditional one (n k entries) is not held in training
        parametric = plan.mapper != "table"
        gen = torch.Generator(device=device).manual_seed(seed_from_random_state(self.random_state))
        inputs = as_tensor(X, dtype=dtype, device=device) if parametric else None
        objective = EngineObjective(aff, plan.q, inputs=inputs, normalization=plan.normalization,
                                    alpha=float(plan.p.alpha) if plan.p is not plan.p_base else 0.0,  # debiased p
                                    method=plan.mode, n_negatives=self.n_negatives,
                                    generator=gen)
        if parametric:
            module = make_mapper(plan.mapper, X.shape[1], d, n_samples=n, random_state=self.random_state)
            module = module.to(device=device, dtype=dtype)
        else:
            Y0 = initial_embedding(self.init, X, n, d, self.affinities_, self.random_state)
            module = Table(torch.as_tensor(Y0, dtype=dtype, device=device))
        trainer = self._engine_trainer(module, objective, n, plan.q, parametric, device, callbacks)
        objective.trainer = trainer
        trainer.run()
        with torch.no_grad():
            Y = objective.embedding(module).detach()
        self._set_embedding(Y)
        return trainer, objective, module, objective.final_loss(Y)

    def _engine_trainer(self, module, objective, n, q, parametric, device, callbacks):
        """Early exaggeration, then the main phase: t-SNE's gains for the table, Adam for a mapper."""
        ee_iter = min(self.early_exaggeration_iter, self.max_iter)
        phases = []
        for n_steps, ex, momentum in ((ee_iter, float(self.early_exaggeration), EE_MOMENTUM),
                                      (self.max_iter - ee_iter, 1.0, MOMENTUM)):
            phase = {"n_steps": n_steps, "exaggeration": ex}
            if not parametric:
                lr = auto_learning_rate(n, ex, q) if self.learning_rate == "auto" else float(self.learning_rate)
                phase["optimizer"] = {"lr": lr, "momentum": momentum}
            phases.append(phase)
        if parametric:
            optimizer, lr = "adam", 1e-3 if self.learning_rate == "auto" else float(self.learning_rate)
        else:
            optimizer, lr = "gains", phases[0]["optimizer"]["lr"]
        # a light-tailed q (SNE's Gaussian) converges long before max_iter: stop once its gradient vanishes
        hooks = [GradientAtRest()] if not parametric and not q.heavy_tailed() else []
        return Trainer(module, objective, n_steps=self.max_iter, optimizer=optimizer, learning_rate=lr,
                       phases=phases, device=device, random_state=self.random_state, callbacks=callbacks,
                       hooks=hooks, verbose=self.verbose, estimator=self, desc="ICONEmbedding")

    # -- dense exact path (PCA, MDS, any other kernels) ------------------------------------------
    def _fit_dense(self, X, plan, device, callbacks):
        Xd = dense(X)
        n, d = Xd.shape[0], self.n_components
        module = dense_module(self, Xd, plan).to(device=device, dtype=torch.float64)
        table = plan.mapper == "table"
        objective = DenseObjective(plan.p, plan.q, Xd, table=table, batch_size=self.batch_size, device=device,
                                   random_state=self.random_state, n_jobs=self.n_jobs)
        self.affinities_ = sp.csr_matrix(objective.P) if objective.P is not None else None
        auto = self.learning_rate == "auto"
        if objective.P is not None:
            # one Trainer iteration = one LBFGS iteration; max_eval: torch gives the line search
            # max_eval - 1 evaluations (none with its default for max_iter=1). Wide-Gaussian limits
            # have tiny gradients: no absolute tolerances, only max_iter (and a stop at rest)
            options = {"max_iter": 1, "max_eval": 26, "history_size": 20, "line_search_fn": "strong_wolfe",
                       "tolerance_grad": 0.0, "tolerance_change": 0.0}
            trainer = Trainer(module, objective, n_steps=self.max_iter, optimizer="lbfgs",
                              learning_rate=1.0 if auto else float(self.learning_rate), optimizer_options=options,
                              device=device, callbacks=callbacks, hooks=[LossStalled()], verbose=self.verbose,
                              estimator=self, desc="ICONEmbedding")
        else:
            trainer = Trainer(module, objective, n_steps=self.max_iter, n_samples=n, batch_size=self.batch_size,
                              optimizer="adam", learning_rate=1e-2 if auto else float(self.learning_rate),
                              device=device, random_state=self.random_state, callbacks=callbacks,
                              verbose=self.verbose, estimator=self, desc="ICONEmbedding", distributed=True)
        trainer.run()
        with torch.no_grad():
            self._set_embedding(objective.outputs(module))
        return trainer, objective, module, objective.final_loss(module)

    # -- transform -------------------------------------------------------------------------------
    @property
    def _n_features_out(self):
        """Width of the output of :meth:`transform` (names of ``get_feature_names_out``)."""
        return self.embedding_.shape[1]

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
        X = to_unit_frame(X, getattr(self, "_unit_exp", 0))
        device = resolve_device(self.device)
        with thread_limits(self.n_jobs, size=np.prod(X.shape)), search_device(device):  # torch kNN on CUDA
            if hasattr(self, "module_"):
                dtype = next(self.module_.parameters()).dtype
                with torch.no_grad():  # on the module's device (the CPU after unpickling)
                    Z = self.module_(as_tensor(X, dtype=dtype, device=next(self.module_.parameters()).device))
                return Z.cpu().numpy().astype(np.float64)
            return self._transform_table(X, device)

    def _transform_table(self, X, device):
        """New rows: p from their training neighbours (the Gaussian's own rows), then placement."""
        n = self._fit_X.shape[0]
        perplexity = self.perplexity_ if self.perplexity_ is not None else min(30.0, (n - 1) / 3)
        k = int(min(n, max(1, math.ceil(3 * perplexity))))
        ind, dist = query_neighbors(self._fit_X, X, k, n_jobs=self.n_jobs)
        rows = Gaussian(perplexity=max(1.0, min(perplexity, k))).rows_from_distances(dist)
        Y_ref = torch.as_tensor(self.embedding_, dtype=torch.float32, device=device)
        kernel = self.q_ if self._plan.path == "engine" else StudentT(dof=1.0)
        method = "fft" if (self.n_components <= 2 and n >= EXACT_BELOW) else "exact"
        Y = embed_new_points(Y_ref, torch.as_tensor(ind, device=device),
                             torch.as_tensor(rows, dtype=torch.float32, device=device), kernel, method=method,
                             device=device)
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

