"""
A custom p / q pair in a few lines
==================================

Every method in skicon is a pair of kernels, and a kernel is a small class. A *learned* kernel
defines :meth:`~skicon.kernels.Kernel.log_weights`, the unnormalised log-affinities between
representations (skicon normalises the rows and excludes the self pair). A *supervisory*
kernel defines :meth:`~skicon.kernels.Kernel.conditional`, a sparse row-stochastic matrix over
the training samples. Being scikit-learn objects (subclasses of :class:`~skicon.kernels.Kernel`,
itself a :class:`~sklearn.base.BaseEstimator`), they get ``get_params``, ``clone`` and grid
search for free.

Here we invent a pair that is in no paper's table:

* ``p``: uniform over **mutual** k-nearest neighbours: ``j`` counts only if ``i`` is also among
  ``j``'s neighbours, which drops the one-sided links that join different clusters;
* ``q``: a **Laplace** kernel, :math:`w_{ij} = \\exp(-\\lVert z_i - z_j \\rVert_1 / s)`, with
  tails between a Gaussian's and a Cauchy's;

and train a small network with it to map digits to 2-D, next to the standard pair (uniform over
k-NN, Student-t).
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp
import torch
from sklearn.datasets import load_digits
from sklearn.manifold import trustworthiness

from skicon import ICONContrastive
from skicon.kernels import Kernel, StudentT, UniformKNN, normalize_rows
from skicon.neighbors import knn_graph
from skicon.plotting import plot_embedding


class Laplace(Kernel):
    """Learned kernel w_ij = exp(-||z_i - z_j||_1 / scale)."""

    def __init__(self, scale=1.0):
        self.scale = scale

    def log_weights(self, Z, Z_cand=None):
        Z_cand = Z if Z_cand is None else Z_cand
        return -torch.cdist(Z, Z_cand, p=1) / self.scale


class MutualKNN(Kernel):
    """Supervisory kernel: uniform over the mutual k nearest neighbours."""

    def __init__(self, n_neighbors=15):
        self.n_neighbors = n_neighbors

    def conditional(self, X, *, random_state=None, n_jobs=None, **context):
        knn = knn_graph(X, self.n_neighbors, random_state=random_state, n_jobs=n_jobs)
        A = knn.to_csr(np.ones_like(knn.distances))  # A[i, j] = 1: j is a neighbour of i
        return normalize_rows(sp.csr_matrix(A.multiply(A.T)))  # keep links both ways


# %%
# Fit both pairs
# --------------
# ``positives="kernel"`` draws each anchor's positive from its row of ``p``; the rest of the
# batch are the negatives.
X, y = load_digits(return_X_y=True)
common = dict(positives="kernel", n_components=2, hidden_layer_sizes=(128,), max_iter=40,
              random_state=0)
models = {
    "standard: UniformKNN(15) / StudentT(dof=1)": ICONContrastive(
        p=UniformKNN(n_neighbors=15), q=StudentT(dof=1.0), **common),
    "custom: MutualKNN(15) / Laplace(scale=1)": ICONContrastive(
        p=MutualKNN(n_neighbors=15), q=Laplace(scale=1.0), **common),
}

fig, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
for ax, (name, model) in zip(axes, models.items()):
    Z = model.fit_transform(X)
    trust = trustworthiness(X, Z, n_neighbors=10)
    print(f"{name:<44} trustworthiness {trust:.3f}")
    plot_embedding(Z, y, ax=ax, legend=False, s=3)
    ax.set_title(f"{name}\ntrustworthiness {trust:.3f}", fontsize=10)
fig.legend(*axes[0].get_legend_handles_labels(), title="digit", loc="outside right center",
           markerscale=3, frameon=False)

# %%
# The custom kernels are ordinary parameters
# ------------------------------------------
# ``get_params`` sees inside them, so ``GridSearchCV`` could search ``q__scale`` or
# ``p__n_neighbors`` like any built-in kernel's parameters.
print(sorted(k for k in models["custom: MutualKNN(15) / Laplace(scale=1)"].get_params()
             if k.startswith(("p__", "q__"))))
plt.show()
