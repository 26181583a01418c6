"""scikit-learn's estimator checks for ICONEmbedding."""

import warnings

from sklearn.utils.estimator_checks import parametrize_with_checks

from skicon._embedding import ICONEmbedding

# t-SNE's transform is an out-of-sample extension: it places points against the frozen training
# embedding, so transform(X_train) is close to, but not equal to, fit_transform(X_train).
_OUT_OF_SAMPLE = (
    "non-parametric t-SNE: transform places points by optimising them against the frozen "
    "training embedding, which differs from the jointly optimised fit_transform result"
)
EXPECTED_FAILED = {
    "check_transformer_general": _OUT_OF_SAMPLE,
    "check_transformer_data_not_an_array": _OUT_OF_SAMPLE,
}


@parametrize_with_checks(
    [
        ICONEmbedding(max_iter=30, early_exaggeration_iter=10, perplexity=5),
        ICONEmbedding(mapper="linear", max_iter=30, early_exaggeration_iter=10, perplexity=5),
    ],
    expected_failed_checks=lambda est: EXPECTED_FAILED if est.mapper in ("auto", "table") else {},
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)
