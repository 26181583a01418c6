"""ICONClustering's plan: the registry row, resolved parameters, p and q of one fit.

Functions of the estimator's parameters (``est``), kept out of the estimator file.
"""

import numbers

import numpy as np
import torch

from ._cluster_train import ClusterPlan, graph_degrees, reverse_block_loss, whole_row_loss
from ._registry import resolve_method
from .augment import apply_augment
from .kernels import ClusterKernel, Debiased, Graph, Propagated, UniformKNN, normalize_rows
from .kernels._base import drop_diagonal
from .objectives._cluster import exp_graph_log_p

CENTROID_ROWS = ("kmeans", "spectral")
#: Parameters of the learned head, rejected by the centroid rows when not at their default.
HEAD_PARAMS = {"ema": None, "augment": None, "mapper": "mlp", "hidden_layer_sizes": (64,), "polish": "auto"}


def make_plan(est):
    """Resolve ``method`` to its registry row and every "auto" parameter to the row's defaults."""
    row, _ = resolve_method("ICONClustering", est.method)
    defaults = {"walk_length": 1, "alpha": 0.0, "alpha_q": 0.0, "n_neighbors": 10, **row.defaults}
    resolved = {}
    for name in ("n_neighbors", "walk_length", "alpha", "alpha_q", "learning_rate"):
        value = getattr(est, name)
        if value != "auto" and name not in row.defaults:
            raise ValueError(f"{name}={value!r} has no meaning for method={est.method!r} (row {row.name!r}); "
                             f"leave it 'auto'. The row's parameters: {sorted(row.defaults)}.")
        resolved[name] = defaults[name] if value == "auto" else value
    if est.p is not None:
        if row.direction != "forward":
            raise ValueError(f"p can only be set with method='mi' or 'infonce_clustering', got method={est.method!r}; "
                             "the reverse rows fix p (a Gaussian on the data, the exponential graph).")
        for name in ("walk_length", "alpha"):
            if getattr(est, name) != "auto":
                raise ValueError(f"{name} builds p, which is given explicitly: leave {name}='auto' with p=...")
        resolved["alpha"] = float(est.p.alpha) if isinstance(est.p, Debiased) else 0.0
    if row.name in CENTROID_ROWS:
        for name, default in HEAD_PARAMS.items():
            value = getattr(est, name)
            if (tuple(value) if isinstance(value, list) else value) != default:
                raise ValueError(f"{name}={value!r} cannot be used with method={row.name!r}, whose head is the "
                                 "k-means centres; use a learned-head method such as 'infonce_clustering'.")
    if est.augment is not None and row.name == "ncut":
        raise ValueError("augment cannot be used with method='ncut': its p is over the graph's nodes.")
    degree_weighted, include_self, resolved["alpha_q"] = q_flags(est, row, resolved["alpha_q"])
    resolved["overclustering"] = resolve_overclustering(est, row)
    resolved["polish"] = resolve_polish(est, row)
    resolved["n_ensemble"] = resolve_n_ensemble(est, row)
    return ClusterPlan(row=row.name, direction=row.direction, degree_weighted=degree_weighted,
                       include_self=include_self, **resolved)

#: ``overclustering="auto"``: the restarts of "infonce_clustering" are split between these
#: factors, half learning ``n_clusters`` outputs and half 1.4 times as many, joined by the loss
#: (see :func:`skicon._cluster_train.merge_clusters`); the fit keeps the lower loss. Joined
#: heads were the better ones on raw digits (4 of 5 seeds), plain heads on EfficientNet
#: features of digits (5 of 5), and the lower loss went with the better kind in all ten fits.
OVERCLUSTERING = (1.0, 1.4)


#: ``polish="auto"``: steps of the final polish of "infonce_clustering" (at most half of
#: ``max_iter``); the other rows are not polished (see :func:`skicon._cluster_train.polish_head`).
POLISH_STEPS = 200


def resolve_polish(est, row):
    """``polish`` resolved to a number of steps: "auto" is ``min(200, max_iter // 2)`` for
    "infonce_clustering" and 0 (no polish) for the other rows."""
    if est.polish == "auto":
        return min(POLISH_STEPS, est.max_iter // 2) if row.name == "infonce_clustering" else 0
    return int(est.polish)


#: ``n_ensemble="auto"``: independent fits of "infonce_clustering" combined by a soft vote. Over
#: 5 seeds, three fits took the seed spread of the Hungarian accuracy from 0.019 to 0.006 on
#: MNIST-5k, 0.009 to 0.002 on digits and 0.017 to 0.008 on EfficientNet features of digits,
#: and raised every mean (see :ref:`benchmarks`); they cost three fits on one p.
ENSEMBLE_FITS = 3


def resolve_n_ensemble(est, row):
    """``n_ensemble`` resolved to a number of fits: "auto" is 3 for "infonce_clustering" and 1
    for the other rows; "kmeans"/"spectral" accept only 1 (their head is the k-means centres)."""
    if est.n_ensemble == "auto":
        return ENSEMBLE_FITS if row.name == "infonce_clustering" else 1
    if est.n_ensemble != 1 and row.name in CENTROID_ROWS:
        raise ValueError(f"n_ensemble={est.n_ensemble!r} cannot be used with method={row.name!r}, whose head is "
                         "the k-means centres; use a learned-head method such as 'infonce_clustering', or "
                         "n_ensemble='auto' or 1.")
    return int(est.n_ensemble)


def resolve_overclustering(est, row):
    """``overclustering`` resolved to a tuple of factors: (1, 1.4) for "infonce_clustering" with
    "auto", (1,) (no joining) for the other rows; a number ``f`` is ``(f,)``."""
    value = est.overclustering
    if isinstance(value, str):  # "auto" (the only string _parameter_constraints lets through)
        return OVERCLUSTERING if row.name == "infonce_clustering" else (1.0,)
    factors = (value,) if isinstance(value, numbers.Real) else tuple(value)
    if not factors or not all(isinstance(f, numbers.Real) and not isinstance(f, bool) and f >= 1
                              and np.isfinite(f) for f in factors):
        raise ValueError(f"overclustering={value!r} must be 'auto', a number >= 1 or a non-empty list of "
                         "numbers >= 1 (factors of n_clusters that the restarts are split between).")
    if any(f != 1 for f in factors) and row.direction != "forward":
        raise ValueError(f"overclustering={value!r} cannot be used with method={est.method!r}: the merge of "
                         "extra clusters is judged by a forward row's loss; use method='infonce_clustering' or "
                         "'mi', or overclustering=1.")
    return tuple(float(f) for f in factors)


def q_flags(est, row, alpha_q):
    """(degree_weighted, include_self, alpha_q) of q: the row's, or the given kernel's."""
    if est.q is None:
        return row.name == "ncut", row.direction == "reverse", float(alpha_q)
    if row.name in CENTROID_ROWS:
        raise ValueError(f"q cannot be set with method={row.name!r}: the k-means rows fix q to ClusterKernel().")
    if est.alpha_q != "auto":
        raise ValueError("alpha_q debiases q, which is given explicitly: leave alpha_q='auto' with q=...")
    inner = est.q.kernel if isinstance(est.q, Debiased) else est.q
    if not isinstance(inner, ClusterKernel):
        raise ValueError("q must be a skicon.kernels.ClusterKernel, optionally wrapped in Debiased(..., alpha=...): "
                         f"a clusterer learns cluster assignments, got q={est.q!r}.")
    alpha_q = float(est.q.alpha) if isinstance(est.q, Debiased) else 0.0
    if not 0.0 <= alpha_q < 1.0:
        raise ValueError(f"q's debiasing alpha must be in [0, 1), got {alpha_q!r}.")
    if row.direction == "reverse" and not inner.include_self:
        raise ValueError("method='ncut' needs q with include_self=True (the row's q sums over all j).")
    return bool(inner.degree_weighted), bool(inner.include_self), alpha_q


def supervisory(est, Xk, random_state):
    """The row's p on ``Xk``: (kernel, sparse P without self pairs, degrees or None)."""
    plan, k = est._plan, est._plan.n_neighbors
    if plan.row in ("ncut", "spectral"):
        A = UniformKNN(k, metric=est.metric).conditional(Xk, random_state=random_state, n_jobs=est.n_jobs)
        A.data[:] = 1.0
        A = (A + A.T).tocsr()
        A.data[:] = 1.0 if plan.row == "ncut" else np.minimum(A.data, 2.0) * 0.5  # ncut: 0/1; spectral as before
        return Graph(degree_weighted=True, exponential=True), A, graph_degrees(A)
    kernel = est.p
    if kernel is None:
        kernel = UniformKNN(k, metric=est.metric)
        if plan.row != "mi":
            kernel = Debiased(Propagated(kernel, plan.walk_length), alpha=plan.alpha)
    P = drop_diagonal(kernel.conditional(Xk, random_state=random_state, n_jobs=est.n_jobs))
    P.eliminate_zeros()
    P = normalize_rows(P)
    if (np.diff(P.indptr) == 0).any():
        raise ValueError("Some samples have no supervisory neighbour (all duplicates or an empty row of p); "
                         "increase n_neighbors or remove duplicated samples.")
    return kernel, P, graph_degrees(P) if plan.degree_weighted else None

def learned_kernel(est):
    if est.q is not None:
        return est.q
    plan = est._plan
    q = ClusterKernel(plan.degree_weighted, include_self=plan.include_self)
    return Debiased(q, alpha=plan.alpha_q) if plan.alpha_q > 0 else q


def augmented(est, X, anchors, generator):
    """The anchors' views: ``est.augment(X_batch, generator)`` on the raw float32 batch, then standardised."""
    batch = torch.as_tensor(np.asarray(X[anchors], dtype=np.float32))
    view = apply_augment(est.augment, batch, generator).numpy()
    return torch.as_tensor(est._standardize(view), device=est._device)


def row_loss(est, logits, P=None, degrees=None, Z=None, block=None):
    """The row's loss of ``logits`` (training data unless P/Z given).

    Forward rows: over whole rows of p (:func:`~skicon._cluster_train.whole_row_loss`); the
    reverse and centroid rows: on consecutive blocks of ``block`` samples.
    """
    plan, block = est._plan, block or est.batch_size
    if plan.row in CENTROID_ROWS:
        Z = est._train_Z if Z is None else Z
        return reverse_block_loss(lambda idx: est.p_.log_prob(torch.as_tensor(Z[idx])), logits, block)
    P = est._train_P if P is None else P
    degrees = est._train_degrees if degrees is None else degrees
    d = degrees if plan.degree_weighted else None
    if plan.direction == "reverse":
        def log_p(idx):
            return exp_graph_log_p(torch.as_tensor(P[idx][:, idx].toarray()), torch.as_tensor(degrees[idx]))

        return reverse_block_loss(log_p, logits, block, degrees=d, alpha_q=plan.alpha_q)
    return whole_row_loss(P, logits, alpha=plan.alpha, alpha_q=plan.alpha_q, degrees=d, include_self=plan.include_self)

