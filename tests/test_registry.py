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
