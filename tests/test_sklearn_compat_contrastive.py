"""scikit-learn compatibility of ICONContrastive and ICONClassifier."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skicon._classifier import ICONClassifier
from skicon._contrastive import ICONContrastive
from skicon.kernels import Cosine, StudentT

FAST = dict(hidden_layer_sizes=(16,), max_iter=5, batch_size=64)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These fits are tiny; two threads on a shared 2-core machine only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@parametrize_with_checks(
    [
        ICONContrastive(n_components=3, **FAST),
        ICONContrastive(method="triplet", n_components=3, **FAST),
        ICONClassifier(hidden_layer_sizes=(16,), max_iter=40, learning_rate=1e-2, batch_size=64),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:300], y[:300]


def test_pipeline_contrastive_then_classifier(digits):
    X, y = digits
    pipe = make_pipeline(
        ICONContrastive(method="supcon", n_components=8, hidden_layer_sizes=(32,), max_iter=30,
                        learning_rate=3e-3, batch_size=64, random_state=0),
        LogisticRegression(max_iter=500),
    )
    pipe.fit(X[:200], y[:200])
    assert pipe.score(X[200:], y[200:]) > 0.7


def test_pipeline_scaler_then_classifier(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), ICONClassifier(mapper="linear", max_iter=30, learning_rate=1e-2, batch_size=64,
                                                           random_state=0))
    assert pipe.fit(X[:200], y[:200]).score(X[200:], y[200:]) > 0.8


def test_gridsearch_over_alpha_temperature_and_q_without_scoring(digits):
    X, y = digits
    est = ICONContrastive(method="supcon", n_components=4, **{**FAST, "max_iter": 2}, random_state=0)
    grid = GridSearchCV(
        est,
        [
            {"alpha": [0.0, 0.4], "temperature": [0.1, 0.5]},
            {"q": [StudentT(dof=1.0), Cosine(temperature=0.2)]},
        ],
        cv=2,
    )
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 6
    assert np.all(np.isfinite(grid.cv_results_["mean_test_score"]))
    assert hasattr(grid.best_estimator_, "module_")


def test_gridsearch_over_nested_kernel_parameters(digits):
    X, y = digits
    est = ICONContrastive(method="supcon", q=StudentT(), n_components=4, **{**FAST, "max_iter": 2}, random_state=0)
    grid = GridSearchCV(est, {"q__dof": [0.5, 2.0]}, cv=2).fit(X, y)
    assert grid.best_params_["q__dof"] in (0.5, 2.0)


def test_gridsearch_classifier_alpha(digits):
    X, y = digits
    grid = GridSearchCV(ICONClassifier(mapper="linear", max_iter=10, learning_rate=1e-2, batch_size=64, random_state=0), {"alpha": [0.0, 0.2]}, cv=2)
    assert grid.fit(X, y).best_score_ > 0.5
