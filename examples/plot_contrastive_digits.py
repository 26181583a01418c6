"""
SupCon and SimCLR embeddings of digits
======================================

Contrastive learning is the I-Con loss with a supervisory distribution that is uniform over
*positive pairs* and a learned distribution that is a softmax of cosine similarities between
network features. The only difference between SupCon and SimCLR is where the positives come
from:

* **SupCon** (``method="supcon"``): samples with the same label are positives, so ``p(j|i)`` is
  uniform over the anchor's class;
* **SimCLR** (``method="simclr"``): two random augmentations of the same image are positives,
  so ``p(j|i)`` puts all its mass on the anchor's other view, and no label is used.

We train both on 75% of scikit-learn's digits, embed the held-out 25%, and compare them by the
accuracy of a logistic regression fitted on the training features (a *linear probe*). For the
pictures, the 16-dimensional features of the test set are mapped to 2-D with
:class:`sklearn.manifold.TSNE`.
"""

# %%
import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.model_selection import train_test_split

from skicon import ICONContrastive
from skicon.augment import default_image_augmentation
from skicon.plotting import plot_embedding

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y,
                                                    random_state=0)

# %%
# Two estimators that differ only in their positives
# --------------------------------------------------
# Both use the same encoder (an MLP with one hidden layer) and the same cosine kernel for
# ``q``. SimCLR gets an augmentation function: small crops, rotations, shifts, cut-outs and
# noise on the 8x8 images (:func:`skicon.augment.default_image_augmentation`).
common = dict(n_components=16, hidden_layer_sizes=(128,), max_iter=25, batch_size=256,
              random_state=0)
models = {
    "SupCon (labels)": ICONContrastive(method="supcon", **common),
    "SimCLR (augmentations, no labels)": ICONContrastive(
        method="simclr", augment=default_image_augmentation((8, 8)), **common
    ),
}
models["SupCon (labels)"].fit(X_train, y_train)
models["SimCLR (augmentations, no labels)"].fit(X_train)

# %%
# Linear probe on held-out digits
# -------------------------------
# The raw pixels give a strong baseline on this easy data set; SimCLR learns its features
# without ever seeing a label.
probe = LogisticRegression(max_iter=2000)
scores = {"raw pixels (64-D)": probe.fit(X_train, y_train).score(X_test, y_test)}
for name, model in models.items():
    probe.fit(model.transform(X_train), y_train)
    scores[name] = probe.score(model.transform(X_test), y_test)
for name, score in scores.items():
    print(f"{name:<36} linear-probe accuracy {score:.3f}")

# %%
# Pictures of the two feature spaces
# ----------------------------------
fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
for ax, (name, model) in zip(axes[:2], models.items()):
    Z = TSNE(random_state=0).fit_transform(model.transform(X_test))
    plot_embedding(Z, y_test, ax=ax, legend=False, s=8)
    ax.set_title(f"{name}\nprobe accuracy {scores[name]:.3f}", fontsize=10)
for name, model in models.items():
    axes[2].plot(model.loss_curve_iterations_, model.loss_curve_, label=name.split(" (")[0])
axes[2].set_xlabel("iteration (optimiser step)")
axes[2].set_ylabel("I-Con loss (training)")
axes[2].legend()
axes[2].set_title("Training loss", fontsize=10)
fig.legend(*axes[0].get_legend_handles_labels(), title="digit", loc="outside right center",
           markerscale=3, frameon=False)
plt.show()
