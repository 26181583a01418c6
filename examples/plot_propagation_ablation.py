"""
Neighbour propagation: how far to walk
======================================

A k-nearest-neighbour graph gives each point only k positives. *Neighbour propagation* widens
the supervisory distribution by walks on that graph,

.. math:: \\tilde P \\propto P + P^2 + \\dots + P^s,

so that the neighbours of neighbours become (weaker) positives too
(:class:`skicon.kernels.Propagated`). Longer walks connect more points, which helps the
optimisation, but each step also adds pairs that are less likely to share a class. The paper
found one or two steps best.

We first measure that trade-off directly on the supervisory kernel, then cluster
scikit-learn's digits with :class:`~skicon.ICONClustering` for walks of length 1 to 3. The
clustering runs are short (300 steps, 4 restarts, one seed), so differences of a few points
are within seed-to-seed noise.
"""

# %%
import matplotlib.pyplot as plt
from sklearn.datasets import load_digits

from skicon import ICONClustering
from skicon.kernels import Propagated, UniformKNN
from skicon.metrics import hungarian_accuracy

X, y = load_digits(return_X_y=True)
walks = [1, 2, 3]
k = 5  # neighbours of the KNN graph, for p and for the clusterings alike

# %%
# What the walks do to p
# ----------------------
# For each walk length: how many positives a point has on average, and how much of its
# probability mass lands on points of the same digit (the *precision* of ``p``).
size, precision = [], []
for s in walks:
    P = Propagated(UniformKNN(n_neighbors=k), walk_length=s).conditional(X).tocoo()
    same = y[P.row] == y[P.col]
    size.append(P.nnz / X.shape[0])
    precision.append(P.data[same].sum() / P.data.sum())
    print(f"walk_length={s}: {size[-1]:6.1f} positives per point, "
          f"{precision[-1]:.3f} of p's mass on the same digit")

# %%
# Clustering with each walk length
# --------------------------------
accuracy = []
for s in walks:
    model = ICONClustering(n_clusters=10, n_neighbors=k, walk_length=s, n_init=4, max_iter=300,
                           n_ensemble=1, random_state=0).fit(X)  # single fits, like the paper's
    accuracy.append(hungarian_accuracy(y, model.labels_))
    print(f"walk_length={s}: Hungarian accuracy {accuracy[-1]:.3f}")

fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
axes[0].bar(walks, size, color="tab:blue")
axes[0].set_ylabel("positives per point")
axes[1].bar(walks, precision, color="tab:orange")
axes[1].set_ylim(min(precision) - 0.05, 1.0)
axes[1].set_ylabel("mass of p on the same digit")
axes[2].plot(walks, accuracy, marker="o", color="tab:green")
axes[2].set_ylabel("Hungarian accuracy")
for ax in axes:
    ax.set_xlabel("walk length s")
    ax.set_xticks(walks)
fig.suptitle(f"Neighbour propagation on digits (k = {k})")
fig.tight_layout()
plt.show()
