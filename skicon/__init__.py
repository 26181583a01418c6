"""skicon: the I-Con framework as scikit-learn estimators.

One loss, the mean KL divergence between a supervisory neighbourhood distribution p(j|i) and a
learned one q(j|i), gives SNE, t-SNE, PCA/MDS limits, InfoNCE, SupCon, CMC/CLIP, triplet,
cross-entropy, k-means, spectral clustering, normalized cuts and InfoNCE clustering.
"""

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
    "__version__",
]
