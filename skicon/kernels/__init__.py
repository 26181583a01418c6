"""Kernels: neighbourhood distributions p(j|i) and q(j|i), and transforms on them.

The same objects serve as the supervisory distribution ``p`` (on data, labels, views or graphs)
and as the learned distribution ``q`` (on representations, differentiably in torch).
"""

from ._base import Kernel, normalize_rows, restrict
from ._cluster import ClusterKernel, Prototypes
from ._distance import Cosine, DistanceKernel, DotProduct, Gaussian, StudentT, pairwise_sqdist
from ._supervisory import Graph, Identity, Labels, UniformKNN, Views, same_group_block
from ._transforms import Debiased, Exaggerated, Propagated, Symmetrized, debias, debiased_plogp, log_debias

__all__ = [
    "Kernel",
    "DistanceKernel",
    "Gaussian",
    "StudentT",
    "Cosine",
    "DotProduct",
    "UniformKNN",
    "Labels",
    "Views",
    "Graph",
    "Identity",
    "ClusterKernel",
    "Prototypes",
    "Debiased",
    "Propagated",
    "Symmetrized",
    "Exaggerated",
    "debias",
    "log_debias",
    "debiased_plogp",
    "normalize_rows",
    "restrict",
    "pairwise_sqdist",
    "same_group_block",
]
