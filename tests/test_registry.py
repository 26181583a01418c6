import numpy as np
import pytest

import skicon
from skicon import get_method, list_methods
from skicon.kernels import Kernel

TABLE1 = {"sne", "tsne", "pca", "mds", "infonce", "triplet", "supcon", "cmc", "cross_entropy", "kmeans",
          "ncut", "spectral", "mi", "infonce_clustering"}


def test_every_table1_row_is_registered():
    names = {m.name for m in list_methods()}
    assert TABLE1 <= names
    assert len(list_methods()) >= 14


def test_rows_build_fresh_kernels_and_name_their_estimator():
    for m in list_methods():
        assert isinstance(m.make_p(), Kernel) and isinstance(m.make_q(), Kernel)
        assert m.make_p() is not m.make_p()
        assert m.direction in ("forward", "reverse")
        assert m.estimator in ("ICONEmbedding", "ICONClustering", "ICONContrastive", "ICONClassifier")
        assert m.theorem


def test_overrides_reach_nested_parameters():
    p = get_method("infonce_clustering").make_p(alpha=0.1, kernel__walk_length=3)
    assert p.alpha == 0.1 and p.kernel.walk_length == 3


def test_table_renderings():
    table = list_methods()
    text = repr(table)
    assert "t-SNE" in text and "Theorem 9" in text
    md = table.to_markdown()
    assert md.count("\n") == len(table) + 1
    assert ".. list-table::" in table.to_rst()
    assert len(list_methods(estimator="ICONClustering")) == 5


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="tsne"):
        get_method("t-sne-ish")


def test_exported_at_top_level():
    assert skicon.list_methods is list_methods


def test_kmeans_row_is_reverse_kl_and_finite():
    X = np.random.RandomState(0).randn(10, 2)
    Z = np.random.RandomState(1).randn(10, 3)
    assert np.isfinite(float(get_method("kmeans").loss(X, Z)))


# --------------------------------------------------------------------------------------------
# The walk: every row of the table, trained by its estimator from method=<row name>, reports the
# row's own loss on what it learned. A row added without a recipe here fails the walk.
# --------------------------------------------------------------------------------------------
def _data(n=40, seed=0):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.RandomState(seed)
    idx = rng.permutation(len(X))[:n]
    return X[idx], y[idx]


def _walk_embedding(row):
    import torch

    from skicon import ICONEmbedding

    X, _ = _data(60)
    est = ICONEmbedding(method=row.name, mode="exact", perplexity=8, max_iter=40, early_exaggeration_iter=10,
                        random_state=0).fit(X)
    Z = torch.tensor(est.embedding_)
    return est.loss_, float(row.loss(X, Z, p=est.p_, q=est.q_, normalization=est.normalization_))


def _walk_clustering(row):
    import torch

    from skicon import ICONClustering

    X, _ = _data(60)
    est = ICONClustering(4, method=row.name, max_iter=40, n_init=2, batch_size=64, n_negatives=None,
                         n_components=None, random_state=0).fit(X)
    logits = torch.as_tensor(est._logits(X, training=True), dtype=torch.float64)
    if row.name == "ncut":
        X_used = est.affinity_matrix_  # p_ sees the graph
    elif row.name == "kmeans":
        X_used = X
    elif row.name == "spectral":
        X_used = est._train_embedding
    else:
        X_used = est._knn_space(X)
    return est.loss_, float(row.loss(X_used, logits, p=est.p_, q=est.q_))


def _walk_contrastive(row):
    from skicon import ICONContrastive

    X, y = _data(40)
    groups = np.arange(len(X)) // 2
    kw = dict(hidden_layer_sizes=(16,), n_components=4, batch_size=128, max_iter=20, learning_rate=1e-2,
              random_state=0)
    if row.name == "triplet":
        pytest.skip("triplet draws one negative per anchor: tests/test_contrastive.py checks loss_ for the "
                    "draw it used")
    if row.name == "supcon":
        est = ICONContrastive(method=row.name, **kw).fit(X, y)
        return est.loss_, float(row.loss(np.zeros((len(X), 1)), est.transform(X), y=y, p=est.p_, q=est.q_))
    if row.name == "cmc":
        views = [X[:, :32], X[:, 32:]]
        est = ICONContrastive(method=row.name, **kw).fit(views)
        Z = np.vstack(est.transform(views))
        context = dict(groups=np.r_[np.arange(len(X)), np.arange(len(X))], views=np.repeat([0, 1], len(X)))
        return est.loss_, float(row.loss(np.zeros((len(Z), 1)), Z, p=est.p_, q=est.q_, **context))
    est = ICONContrastive(method=row.name, **kw).fit(X, groups=groups)
    return est.loss_, float(row.loss(np.zeros((len(X), 1)), est.transform(X), groups=groups, p=est.p_, q=est.q_))


def _walk_classifier(row):
    from skicon import ICONClassifier

    X, y = _data(40)
    clf = ICONClassifier(method=row.name, batch_size=128, max_iter=3, hidden_layer_sizes=(16,), random_state=0)
    clf.fit(X, y)
    W = clf.module_.prototypes.detach().double()
    return clf.loss_, float(row.loss(X, clf.transform(X), y=y, prototypes=W, p=clf.p_, q=clf.q_))


WALKS = {
    "ICONEmbedding": _walk_embedding,
    "ICONClustering": _walk_clustering,
    "ICONContrastive": _walk_contrastive,
    "ICONClassifier": _walk_classifier,
}


@pytest.mark.parametrize("name", [m.name for m in list_methods()])
def test_every_row_is_trained_by_its_estimator(name):
    row = get_method(name)
    reported, expected = WALKS[row.estimator](row)
    assert np.isfinite(expected)
    # the same objective evaluated twice in float64 (float32 encoders: 1e-5)
    assert reported == pytest.approx(expected, rel=1e-5, abs=1e-9)
