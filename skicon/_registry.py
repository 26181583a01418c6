"""The periodic table: every row of the paper's Table 1 as a choice of p, q and direction.

Rows are data, not code paths: each names a supervisory kernel factory ``p``, a learned kernel
factory ``q``, the divergence direction and the estimator that trains it. ``MethodSpec.loss``
evaluates the exact I-Con loss of a row on small inputs, which the tests compare with the
original methods' own formulas.
"""

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .objectives import icon_loss
from ._utils import as_tensor
from .kernels import (
    ClusterKernel,
    Cosine,
    Debiased,
    Gaussian,
    Identity,
    Labels,
    Propagated,
    Prototypes,
    StudentT,
    UniformKNN,
    Views,
    Graph,
)

__all__ = ["MethodSpec", "MethodTable", "get_method", "list_methods", "resolve_method", "METHODS"]

#: Width used for the "wide Gaussian" limits (PCA, MDS); the theorems hold as sigma -> infinity.
WIDE_SIGMA = 1e3


@dataclass(frozen=True)
class MethodSpec:
    """One row of the I-Con periodic table.

    Parameters
    ----------
    name : str
        Identifier accepted by the estimators' ``method=``.
    title : str
        Human-readable name.
    p : callable
        Factory of the supervisory kernel.
    q : callable
        Factory of the learned kernel.
    direction : {"forward", "reverse"}
        KL(p || q) or KL(q || p).
    estimator : str
        Estimator that trains this row.
    theorem : str
        Where the paper proves the equivalence.
    p_text, q_text : str
        One-line descriptions of p and q.
    defaults : dict
        The estimator's hyper-parameters for this row: an estimator built with
        ``method=<name>`` takes every parameter left at its ``"auto"`` / None default from here.
        Where they differ from the paper's values (the kernels ``p`` and ``q`` build), ``note``
        says so and why.
    needs : tuple of str
        Extra inputs the row needs (``"y"``, ``"groups"``, ``"views"``, ``"prototypes"``).
    aliases : dict
        Other names the estimator accepts for this row, each with the parameters it implies
        (e.g. ``{"tsne_conditional": {"normalization": "conditional"}}``).
    note : str
        How the estimator's defaults differ from the paper's values, and why.
    """

    name: str
    title: str
    p: Callable
    q: Callable
    direction: str
    estimator: str
    theorem: str
    p_text: str
    q_text: str
    defaults: dict = field(default_factory=dict)
    needs: tuple = ()
    aliases: dict = field(default_factory=dict)
    note: str = ""

    def make_p(self, **params):
        """A fresh supervisory kernel, with nested parameters overridden (``alpha=...``)."""
        return self.p().set_params(**params)

    def make_q(self, **params):
        """A fresh learned kernel, with nested parameters overridden."""
        return self.q().set_params(**params)

    def loss(
        self, X, Z, *, y=None, groups=None, views=None, prototypes=None, exclude=None, degrees=None, p=None, q=None,
        normalization="conditional",
    ):
        """Exact I-Con loss of this row on small inputs (dense, float64).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data for the supervisory kernel (ignored by label/view kernels beyond its length).
        Z : array-like or torch.Tensor of shape (n_samples, n_components)
            Learned representation (assignment logits for the clustering rows).
        y, groups, views : array-like, default=None
            Labels, positive-pair groups and view ids, as the row needs.
        prototypes : array-like of shape (n_classes, n_components), default=None
            Class prototypes (cross-entropy row).
        exclude : torch.Tensor of bool of shape (n_samples, n_candidates), default=None
            Pairs removed from the candidate set of q (e.g. all but one negative for triplet).
        degrees : array-like of shape (n_samples,), default=None
            Node degrees for the degree-weighted cluster kernel (normalized cuts); the row sums
            of the affinity ``X`` when None.
        p, q : Kernel, default=None
            Kernels to use instead of the row's defaults.
        normalization : {"conditional", "joint"}, default="conditional"
            ``"conditional"`` is the per-row loss of Table 1. ``"joint"`` is van der Maaten's
            form of the neighbour-embedding rows: ``P = (P + P^T) / (2n)`` and one learned
            distribution over all ordered pairs, ``Q_ij = w_ij / sum_{k != l} w_kl``, with the
            loss ``KL(P || Q)`` (no mean over rows).

        Returns
        -------
        torch.Tensor
            Scalar loss (differentiable in ``Z`` when ``Z`` requires grad).
        """
        p = self.make_p() if p is None else p
        q = self.make_q() if q is None else q
        Zt = Z if isinstance(Z, torch.Tensor) else as_tensor(Z, dtype=torch.float64)
        if normalization == "joint":
            return _joint_loss(p, q, X, Zt)
        if normalization != "conditional":
            raise ValueError(f"normalization must be 'conditional' or 'joint', got {normalization!r}.")
        if "prototypes" in self.needs:
            W = prototypes if isinstance(prototypes, torch.Tensor) else as_tensor(prototypes, dtype=Zt.dtype)
            P = torch.as_tensor(p.conditional(X, y=y).toarray(), dtype=Zt.dtype)
            P = p.finalize_block(P)  # applies Debiased (label smoothing) on p
            log_q = q.log_prob(Zt, W, exclude=exclude)
        else:
            context = {"y": y, "groups": groups}
            if views is not None:
                context["views"] = views
                if "views" in self.needs:
                    # CMC / CLIP (Theorem 6): q's candidates are the points of the other views.
                    v = np.asarray(views)
                    same_view = torch.as_tensor(v[:, None] == v[None, :])
                    exclude = same_view if exclude is None else (exclude | same_view)
            P = p.dense(X, **context).to(Zt.dtype)
            if exclude is not None:
                P = P.masked_fill(exclude, 0.0)
                P = P / P.sum(dim=1, keepdim=True).clamp_min(torch.finfo(P.dtype).tiny)
            if getattr(q, "degree_weighted", False):
                if degrees is None:
                    degrees = np.asarray(abs(X).sum(axis=1)).ravel()
                log_q = q.log_prob(Zt, exclude=exclude, degrees=torch.as_tensor(degrees, dtype=Zt.dtype))
            else:
                log_q = q.log_prob(Zt, exclude=exclude)
        return icon_loss(P, log_q, direction=self.direction)


def _joint_loss(p, q, X, Z):
    """``KL(P || Q)`` of the joint (symmetrised) neighbour-embedding form, dense float64."""
    P = p.dense(X).to(Z.dtype)
    P = (P + P.T) / (2.0 * P.shape[0])
    logits = q.log_weights(Z).masked_fill(torch.eye(Z.shape[0], dtype=torch.bool), float("-inf"))
    log_Q = logits - torch.logsumexp(logits.reshape(-1), dim=0)
    mask = P > 0
    return (P[mask] * (torch.log(P[mask]) - log_Q[mask])).sum()


class MethodTable(list):
    """The periodic table as a list of :class:`MethodSpec` rows that prints as a table."""

    columns = ("method", "title", "p", "q", "direction", "estimator", "theorem")

    def rows(self):
        """The table as a list of tuples of strings (one per method)."""
        return [(m.name, m.title, m.p_text, m.q_text, m.direction, m.estimator, m.theorem) for m in self]

    def to_markdown(self):
        """Markdown rendering.

        Returns
        -------
        str
            A pipe table.
        """
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows()]
        return "\n".join(lines)

    def to_rst(self):
        """reStructuredText list-table rendering.

        Returns
        -------
        str
            A ``list-table`` directive.
        """
        out = [".. list-table::", "   :header-rows: 1", ""]
        for r in [self.columns] + self.rows():
            out.append("   * - " + r[0])
            out += [f"     - {c}" for c in r[1:]]
        return "\n".join(out)

    def __repr__(self):
        table = [self.columns] + self.rows()
        widths = [max(len(r[i]) for r in table) for i in range(len(self.columns))]
        fmt = "  ".join("{:<%d}" % w for w in widths)
        return "\n".join(fmt.format(*r).rstrip() for r in table)

    __str__ = __repr__


def _row(name, title, p, q, direction, estimator, theorem, p_text, q_text, defaults=None, needs=(), aliases=None,
         note=""):
    return MethodSpec(name, title, p, q, direction, estimator, theorem, p_text, q_text, defaults or {}, needs,
                      aliases or {}, note)


METHODS = {
    m.name: m
    for m in [
        _row("sne", "SNE", lambda: Gaussian(perplexity=30.0), lambda: Gaussian(sigma=np.sqrt(0.5)),
             "forward", "ICONEmbedding", "Theorem 1",
             "Gaussian on data, per-point sigma from perplexity", "Gaussian on embedding, exp(-d^2)",
             {"normalization": "conditional", "perplexity": 30.0},
             note="The light-tailed q converges long before t-SNE's max_iter=750: after early exaggeration "
                  "the fit stops at the first loss log where the gradient norm is below 1e-5 of its value "
                  "at the start of that phase (about 450 iterations on digits, the loss then fixed to 6 "
                  "digits). The engine trains it in float32 in the compiled loops, as t-SNE."),
        _row("tsne", "t-SNE", lambda: Gaussian(perplexity=30.0), lambda: StudentT(dof=1.0),
             "forward", "ICONEmbedding", "Theorem 2",
             "Gaussian on data, per-point sigma from perplexity", "Student-t (Cauchy) on embedding",
             {"normalization": "joint", "perplexity": 30.0},
             aliases={"tsne_conditional": {"normalization": "conditional"}},
             note="ICONEmbedding trains van der Maaten's joint symmetrised form by default (the t-SNE that "
                  "users compare with sklearn and openTSNE); Table 1's per-row form of Theorem 2 is "
                  "normalization='conditional', also reachable as method='tsne_conditional'."),
        _row("pca", "PCA (limit)", lambda: Identity(), lambda: Gaussian(sigma=WIDE_SIGMA, include_self=True),
             "forward", "ICONEmbedding", "Corollary 1",
             "indicator 1[i = j]", "wide Gaussian on a linear map, sigma -> inf", {"mapper": "linear"},
             note="The estimator sets the width to 10x the root-mean-square pairwise distance of the data "
                  "(WIDE_FACTOR), not the fixed 1e3 of this row, so the limit holds at any data scale."),
        _row("mds", "MDS (limit)", lambda: Gaussian(sigma=WIDE_SIGMA, n_neighbors=None),
             lambda: Gaussian(sigma=WIDE_SIGMA), "forward", "ICONEmbedding", "Theorem 3",
             "wide Gaussian on data, sigma -> inf", "wide Gaussian on embedding, sigma -> inf", {"mapper": "table"},
             note="The estimator sets the width to 10x the root-mean-square pairwise distance of the data "
                  "(WIDE_FACTOR), not the fixed 1e3 of this row, so the limit holds at any data scale."),
        _row("infonce", "InfoNCE / SimCLR", lambda: Views(), lambda: Cosine(temperature=0.5),
             "forward", "ICONContrastive", "Theorem 4",
             "uniform over positive pairs (views)", "Gaussian on unit-norm features (cosine / tau)", needs=("groups",),
             aliases={"simclr": {}},
             note="ICONContrastive takes the positives from groups (this row's p), two augmentations of each "
                  "sample, labels or sampled nearest neighbours (positives='auto' picks from what fit gets)."),
        _row("tsimclr", "t-SimCLR", lambda: Views(), lambda: StudentT(dof=1.0),
             "forward", "ICONContrastive", "Appendix A",
             "uniform over positive pairs (views)", "Student-t on features", needs=("groups",),
             note="Positives as for infonce; dof=... sets the Student-t's degrees of freedom (Appendix A)."),
        _row("triplet", "Triplet loss", lambda: Views(), lambda: Gaussian(sigma=np.sqrt(0.5)),
             "forward", "ICONContrastive", "Theorem 5",
             "uniform over positive pairs", "Gaussian over {positive, one negative}", needs=("groups",),
             note="ICONContrastive draws one positive and one negative per anchor in every batch (Theorem 5 "
                  "holds for any fixed draw); the row's loss takes that draw as exclude=."),
        _row("supcon", "SupCon", lambda: Labels(), lambda: Cosine(temperature=0.1),
             "forward", "ICONContrastive", "Corollary 2",
             "uniform over same-class samples", "Gaussian on unit-norm features (cosine / tau)", needs=("y",),
             defaults={"positives": "labels"}),
        _row("cmc", "CMC / CLIP", lambda: Views(cross_view=True), lambda: Cosine(temperature=0.1),
             "forward", "ICONContrastive", "Theorem 6",
             "uniform over positive pairs from other views", "Gaussian on features, candidates in other views",
             needs=("groups", "views"), aliases={"clip": {}},
             note="ICONContrastive fits one encoder per view on fit([X_a, X_b, ...]); with augment=... on one "
                  "array the two augmented copies are the two views (one shared encoder)."),
        _row("cross_entropy", "Cross-entropy", lambda: Prototypes(), lambda: Prototypes(),
             "forward", "ICONClassifier", "Corollary 3",
             "indicator over the label", "softmax over class prototypes", needs=("y", "prototypes"),
             note="ICONClassifier's alpha debiases p (label smoothing, p_ = Debiased(Prototypes(), alpha)); "
                  "n_components=None uses max(n_classes, 16) prototype dimensions."),
        _row("kmeans", "Probabilistic k-means", lambda: Gaussian(sigma=1.0, n_neighbors=None, include_self=True),
             lambda: ClusterKernel(), "reverse", "ICONClustering", "Theorem 9",
             "Gaussian on data (self included)", "shared cluster likelihood (by cluster)",
             {"learning_rate": 0.1},
             note="ICONClustering minimises the sigma -> 0 limit (probabilistic k-means): an Adam relaxation "
                  "(learning rate 0.1, at most 100 steps) from k-means++ seeds, then exact Lloyd steps; its "
                  "loss_ is this row's loss at sigma^2 = inertia / (n_samples n_features)."),
        _row("spectral", "Spectral clustering", lambda: Gaussian(sigma=1.0, n_neighbors=None, include_self=True),
             lambda: ClusterKernel(), "reverse", "ICONClustering", "Corollary 5",
             "Gaussian on spectral embedding", "shared cluster likelihood (by cluster)",
             {"n_neighbors": 10, "learning_rate": 0.1},
             note="The embedding is that of the symmetric 10-NN graph (weight 1 for mutual neighbours, 1/2 "
                  "otherwise); then the kmeans row's procedure on the embedding."),
        _row("ncut", "Normalized cuts", lambda: Graph(degree_weighted=True, exponential=True),
             lambda: ClusterKernel(degree_weighted=True),
             "reverse", "ICONClustering", "Theorem 11",
             "exp(w_ij / d_j) over all j (dense)", "degree-weighted shared cluster likelihood",
             {"n_neighbors": 10, "learning_rate": 2e-2},
             note="w is the symmetric 0/1 graph of the 10 nearest neighbours; the estimator evaluates the "
                  "row's exponential p on each batch block (O(batch^2)), never over all pairs. The loss is "
                  "Ncut minus the entropy of q, which favours few large clusters: trained faithfully it "
                  "merged digits into 3 clusters of 10."),
        _row("mi", "Mutual-information clustering", lambda: UniformKNN(n_neighbors=10), lambda: ClusterKernel(),
             "forward", "ICONClustering", "Theorem 10",
             "uniform over k nearest neighbours", "shared cluster likelihood (by cluster)",
             {"n_neighbors": 10, "learning_rate": 2e-2},
             note="ICONClustering trains this row as TEMI (the row's reference) does: minus the beta-weighted "
                  "pointwise mutual information log sum_c (phi_ic psi_jc)^beta / pi_c of each kNN pair, both "
                  "ways, with beta = 0.6, psi the teacher's assignments (ema=...; the head's own otherwise) "
                  "and pi their moving mean over batches (momentum 0.9). At beta = 1 with pi the batch mean "
                  "this is the row's I-Con loss up to constants; loss_ reports the row's I-Con loss, with "
                  "the self pair excluded from q (q(j|i) renormalised over j != i; pass q=ClusterKernel() "
                  "for the row's q with the self pair)."),
        _row("infonce_clustering", "InfoNCE clustering (new)",
             lambda: Debiased(Propagated(UniformKNN(n_neighbors=5), walk_length=2), alpha=0.6),
             lambda: Debiased(ClusterKernel(), alpha=0.6), "forward", "ICONClustering", "Section 3.3",
             "debiased KNN + walks (+ augmentations)", "debiased shared cluster likelihood (by point)",
             {"n_neighbors": 10, "walk_length": 2, "alpha": 0.3, "alpha_q": 0.3, "learning_rate": 2e-2},
             aliases={"infonce": {}},
             note="The paper's values are k=5, walks of length 2, alpha=0.6 on both sides, self pair a "
                  "candidate of q (what this row's p and q build). ICONClustering's tuned defaults are "
                  "k=10, walk_length=2, alpha=alpha_q=0.3, self pair excluded from q: on raw pixels "
                  "(digits, MNIST-5k, MNIST-1D) they gave a higher mean Hungarian accuracy over 5 seeds "
                  "(see the clustering benchmark and its ablation)."),
    ]
}


def get_method(name):
    """Return the :class:`MethodSpec` of a periodic-table row.

    Parameters
    ----------
    name : str
        Row name, e.g. ``"tsne"``, ``"supcon"``, ``"kmeans"``.

    Returns
    -------
    MethodSpec
        The row.

    Examples
    --------
    >>> from skicon import get_method
    >>> get_method("tsne").theorem
    'Theorem 2'
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown method {name!r}; choose one of {sorted(METHODS)}.") from None


def resolve_method(estimator, method):
    """The row an estimator trains for ``method=``, and the parameters its name implies.

    Parameters
    ----------
    estimator : str
        Estimator class name, e.g. ``"ICONClustering"``.
    method : str
        A row name of that estimator or one of its aliases.

    Returns
    -------
    row : MethodSpec
        The row.
    implied : dict
        Parameters implied by an alias (empty for a row name).

    Examples
    --------
    >>> from skicon import resolve_method
    >>> row, implied = resolve_method("ICONEmbedding", "tsne_conditional")
    >>> row.name, implied
    ('tsne', {'normalization': 'conditional'})
    """
    for row in METHODS.values():
        if row.estimator != estimator:
            continue
        if method == row.name:
            return row, {}
        if method in row.aliases:
            return row, dict(row.aliases[method])
    names = []
    for row in METHODS.values():
        if row.estimator == estimator:
            names += [row.name, *row.aliases]
    other = METHODS.get(method)
    hint = f" method={method!r} is a row of {other.estimator}." if other is not None else ""
    raise ValueError(f"{estimator} got method={method!r}; choose one of {sorted(names)}.{hint}")


def list_methods(estimator=None):
    """The periodic table: every implemented row of the paper's Table 1.

    Parameters
    ----------
    estimator : str, default=None
        Keep only the rows trained by this estimator (e.g. ``"ICONClustering"``).

    Returns
    -------
    MethodTable
        Rows with ``name``, ``title``, ``p_text``, ``q_text``, ``direction``, ``estimator`` and
        ``theorem``; printing it shows a table; ``to_markdown`` and ``to_rst`` render it.

    Examples
    --------
    >>> from skicon import list_methods
    >>> len(list_methods()) >= 14
    True
    """
    rows = [m for m in METHODS.values() if estimator is None or m.estimator == estimator]
    return MethodTable(rows)
