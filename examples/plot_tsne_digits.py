"""
t-SNE of digits next to scikit-learn's TSNE
===========================================

t-SNE is the I-Con loss with a Gaussian supervisory distribution on the data, its widths set so
that each point has a fixed perplexity (effective number of neighbours), and a Student-t
(Cauchy) learned distribution on a free 2-D point per sample. :class:`~skicon.ICONEmbedding`
with ``method="tsne"`` fits it; here we put it next to :class:`sklearn.manifold.TSNE` on
scikit-learn's digits and compare

* **trustworthiness** (:func:`sklearn.manifold.trustworthiness`): are the 10 nearest neighbours
  of a point in the map also close in the input?
* **10-NN accuracy**: how well a 10-nearest-neighbour classifier recovers the digit from the
  2-D map (5-fold cross-validation);
* the wall-clock time of the fit.

Then, because ``q`` is just a parameter, we change the tails of the Student-t kernel: fewer
degrees of freedom mean heavier tails and more separated clusters.
"""

# %%
import time

import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
from sklearn.manifold import TSNE, trustworthiness
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from skicon import ICONEmbedding
from skicon.kernels import StudentT
from skicon.plotting import plot_embedding

X, y = load_digits(return_X_y=True)


def fit_and_score(model):
    start = time.perf_counter()
    Z = model.fit_transform(X)
    seconds = time.perf_counter() - start
    knn = cross_val_score(KNeighborsClassifier(n_neighbors=10), Z, y, cv=5).mean()
    return Z, {"trust": trustworthiness(X, Z, n_neighbors=10), "knn": knn, "s": seconds}


# %%
# skicon and scikit-learn side by side
# ------------------------------------
results = {
    'skicon ICONEmbedding(method="tsne")': fit_and_score(
        ICONEmbedding(method="tsne", random_state=0)),
    "sklearn TSNE": fit_and_score(TSNE(random_state=0)),
}
for name, (_, s) in results.items():
    print(f"{name:<36} trustworthiness {s['trust']:.3f}  10-NN acc. {s['knn']:.3f}  "
          f"{s['s']:.1f} s")


def show(ax, Z, title, legend=False):
    plot_embedding(Z, y, ax=ax, legend=legend, s=3)
    ax.set_title(title, fontsize=9)


fig, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
for ax, (name, (Z, s)) in zip(axes, results.items()):
    show(ax, Z, f"{name}\ntrustworthiness {s['trust']:.3f}, 10-NN acc. {s['knn']:.3f}, "
         f"{s['s']:.1f} s")
fig.legend(*axes[0].get_legend_handles_labels(), title="digit", loc="outside right center",
           markerscale=3, frameon=False)

# %%
# Heavier and lighter tails
# -------------------------
# ``q=StudentT(dof=...)`` replaces the preset's Cauchy kernel (``dof=1``). Heavy tails
# (``dof < 1``) push clusters further apart; light tails (large ``dof``, towards a Gaussian,
# that is SNE) crowd them together. To keep the example quick, these three maps use the first
# 300 digits only.
X, y = X[:300], y[:300]
fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
for ax, dof in zip(axes, (0.5, 1.0, 10.0)):
    Z, s = fit_and_score(ICONEmbedding(method="tsne", q=StudentT(dof=dof), random_state=0))
    show(ax, Z, f"StudentT(dof={dof:g}), 300 digits\ntrustworthiness {s['trust']:.3f}, "
         f"10-NN acc. {s['knn']:.3f}")
fig.legend(*axes[0].get_legend_handles_labels(), title="digit", loc="outside right center",
           markerscale=3, frameon=False)
plt.show()
