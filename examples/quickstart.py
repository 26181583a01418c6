"""Quick start: skicon next to scikit-learn on the digits data set.

Fits skicon's t-SNE (``ICONEmbedding(method="tsne")``) next to ``sklearn.manifold.TSNE`` and
skicon's clustering (``ICONClustering``) next to ``sklearn.cluster.KMeans`` on scikit-learn's
digits (1,797 8x8 images, shipped with scikit-learn, so no download), prints their scores side
by side and writes the figure ``quickstart.png``.

Scores: trustworthiness of the 2-D map (are its 10 nearest neighbours true neighbours in the
input?), 10-nearest-neighbour accuracy of the map (5-fold cross-validation), and the Hungarian
accuracy, adjusted Rand index and normalised mutual information of the clusters.

Run from the repository root::

    python examples/quickstart.py [--output quickstart.png]
"""

import argparse
import time

import matplotlib

matplotlib.use("Agg")  # write the figure without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.manifold import TSNE, trustworthiness  # noqa: E402
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

from skicon import ICONClustering, ICONEmbedding  # noqa: E402
from skicon.metrics import hungarian_accuracy, hungarian_matching  # noqa: E402
from skicon.plotting import plot_embedding  # noqa: E402


def timed(fn):
    """Run ``fn()`` and return its result and the seconds it took."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def embedding_scores(X, y, Z, seconds):
    knn = KNeighborsClassifier(n_neighbors=10)
    return {
        "trustworthiness": trustworthiness(X, Z, n_neighbors=10),
        "10-NN accuracy": cross_val_score(knn, Z, y, cv=5).mean(),
        "seconds": seconds,
    }


def clustering_scores(y, labels, seconds):
    return {
        "Hungarian acc.": hungarian_accuracy(y, labels),
        "ARI": adjusted_rand_score(y, labels),
        "NMI": normalized_mutual_info_score(y, labels),
        "seconds": seconds,
    }


def print_table(title, rows):
    columns = list(next(iter(rows.values())))
    print(f"\n{title}")
    print(f"{'':<28}" + "".join(f"{c:>17}" for c in columns))
    for name, scores in rows.items():
        print(f"{name:<28}" + "".join(f"{scores[c]:>17.3f}" for c in columns))


def scatter(ax, Z, labels, title):
    plot_embedding(Z, labels, ax=ax, legend=False, s=4)
    ax.set_title(title, fontsize=9)


def main(output="quickstart.png"):
    X, y = load_digits(return_X_y=True)
    print(f"digits: {X.shape[0]} samples, {X.shape[1]} features, {len(np.unique(y))} classes")

    Z_icon, t_icon = timed(lambda: ICONEmbedding(method="tsne", random_state=0).fit_transform(X))
    Z_sk, t_sk = timed(lambda: TSNE(random_state=0).fit_transform(X))
    embeddings = {
        'skicon ICONEmbedding("tsne")': embedding_scores(X, y, Z_icon, t_icon),
        "sklearn TSNE": embedding_scores(X, y, Z_sk, t_sk),
    }
    print_table("2-D embeddings (higher is better, except seconds)", embeddings)

    labels_icon, c_icon = timed(
        lambda: ICONClustering(n_clusters=10, random_state=0).fit_predict(X)
    )
    labels_km, c_km = timed(
        lambda: KMeans(n_clusters=10, n_init=10, random_state=0).fit_predict(X)
    )
    clusterings = {
        "skicon ICONClustering": clustering_scores(y, labels_icon, c_icon),
        "sklearn KMeans": clustering_scores(y, labels_km, c_km),
    }
    print_table("Clusterings, 10 clusters (higher is better, except seconds)", clusterings)

    fig, axes = plt.subplots(2, 2, figsize=(10, 8.5), layout="constrained")
    for ax, Z, name in ((axes[0, 0], Z_icon, "skicon t-SNE"), (axes[0, 1], Z_sk, "sklearn TSNE")):
        s = embeddings['skicon ICONEmbedding("tsne")' if Z is Z_icon else "sklearn TSNE"]
        scatter(ax, Z, y, f"{name}, coloured by digit\ntrustworthiness "
                f"{s['trustworthiness']:.3f}, 10-NN acc. {s['10-NN accuracy']:.3f}")
    for ax, labels, name in ((axes[1, 0], labels_icon, "skicon ICONClustering"),
                             (axes[1, 1], labels_km, "sklearn KMeans")):
        s = clusterings[name]
        # rename each cluster to its best-matching digit so that colours are comparable
        matching = hungarian_matching(y, labels)
        labels = np.array([matching.get(c, -1) for c in labels])
        scatter(ax, Z_icon, labels, f"{name} clusters on the skicon map\nHungarian acc. "
                f"{s['Hungarian acc.']:.3f}, NMI {s['NMI']:.3f}")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, title="digit", loc="outside right center", markerscale=3, frameon=False)
    fig.suptitle("skicon vs scikit-learn on digits")
    fig.savefig(output, dpi=120)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="quickstart.png", help="where to write the figure")
    main(parser.parse_args().output)
