"""skicon: the I-Con framework as scikit-learn estimators.

One loss, the mean KL divergence between a supervisory neighbourhood distribution p(j|i) and a
learned one q(j|i), gives SNE, t-SNE, PCA/MDS limits, InfoNCE, SupCon, CMC/CLIP, triplet,
cross-entropy, k-means, spectral clustering, normalized cuts and InfoNCE clustering.

``import skicon`` costs little beyond torch and scikit-learn: numba and pynndescent load when a
fit first needs them (the t-SNE engine's compiled loops, the approximate kNN search), and
:mod:`skicon.plotting` (matplotlib) when first used.
"""

import importlib

__version__ = "0.1.0.dev0"

from . import augment, kernels, metrics, neighbors
from ._clustering import ICONClustering
from ._classifier import ICONClassifier
from ._contrastive import ICONContrastive
from ._embedding import ICONEmbedding
from .objectives import icon_loss
from ._registry import get_method, list_methods, resolve_method
from ._show_versions import show_versions

__all__ = [
    "ICONEmbedding",
    "ICONClustering",
    "ICONContrastive",
    "ICONClassifier",
    "icon_loss",
    "get_method",
    "list_methods",
    "resolve_method",
    "show_versions",
    "kernels",
    "neighbors",
    "metrics",
    "augment",
    "plotting",
    "__version__",
]

#: Submodules imported on first access (``skicon.plotting``), not with ``import skicon``.
_LAZY_SUBMODULES = ("plotting",)


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
