import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skicon._clustering import ICONClustering
from skicon.kernels import ClusterKernel, Debiased

SMALL = dict(max_iter=25, n_init=2, batch_size=32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@parametrize_with_checks(
    [
        ICONClustering(n_clusters=3, **SMALL),
        ICONClustering(n_clusters=3, n_ensemble=2, **SMALL),
        ICONClustering(n_clusters=3, method="kmeans", n_init=2),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def data():
    return make_blobs(150, centers=3, cluster_std=0.7, random_state=0)


def test_pipeline(data):
    X, y = data
    pipe = make_pipeline(StandardScaler(), ICONClustering(3, random_state=0, **SMALL))
    labels = pipe.fit_predict(X)
    assert labels.shape == (len(X),)
    assert np.array_equal(pipe.predict(X), labels)
    assert pipe.transform(X).shape == (len(X), 3)


GRID = {
    "alpha": [0.0, 0.3],
    "n_neighbors": [5, 10],
    "walk_length": [1, 2],
    "q": [ClusterKernel(include_self=False), Debiased(ClusterKernel(include_self=False), alpha=0.3)],
}


def test_grid_search_default_score(data):
    X, _ = data
    search = GridSearchCV(ICONClustering(3, random_state=0, **SMALL), GRID, cv=KFold(2, shuffle=True, random_state=0))
    search.fit(X)
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 16 and np.isfinite(scores).all()
    assert search.best_estimator_.n_clusters_ == 3


def test_grid_search_ari_with_labels(data):
    X, y = data
    search = GridSearchCV(
        ICONClustering(3, random_state=0, **SMALL),
        {"alpha": [0.0, 0.3], "walk_length": [1, 2]},
        scoring="adjusted_rand_score",
        cv=KFold(2, shuffle=True, random_state=0),
    ).fit(X, y)
    assert search.best_score_ > 0.8


def test_clone_keeps_kernel_params():
    est = ICONClustering(q=Debiased(ClusterKernel(), alpha=0.7))
    assert clone(est).get_params()["q__alpha"] == 0.7
