"""Property tests (hypothesis): any shape, scale (1e-200..1e200) and dtype of X gives either a clear
error (a ValueError / TypeError naming a parameter or X) or a finite result (issue 12).

Derandomised and few examples, so that CI is deterministic and quick.
"""

import re
import warnings

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from skicon import ICONClassifier, ICONClustering, ICONContrastive, ICONEmbedding, icon_loss  # noqa: E402

#: what a clear message names: a parameter, X / y and what is wrong with them
CLEAR = re.compile(r"\bX\b|\by\b|n_samples|sample|feature|n_neighbors|n_clusters|perplexity|class|NaN|infinit|"
                   r"identical|scale|\bp\b|log_q|log_p|dtype", re.I)

FUZZ = settings(max_examples=10, deadline=None, derandomize=True, database=None)

DTYPES = [np.float64, np.float32, np.float16, np.int64, np.bool_]


@st.composite
def data(draw, min_samples=1, max_samples=30):
    n = draw(st.integers(min_samples, max_samples))
    d = draw(st.integers(1, 5))
    exponent = draw(st.integers(-200, 200))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.RandomState(seed)
    X = rng.randn(n, d) + 4.0 * (np.arange(n) % 2)[:, None]  # two groups
    with np.errstate(over="ignore"):
        X = (X * 10.0**exponent).astype(dtype)
    return X


def _outcome(fit_and_output):
    """Run; return the output, or None after a clear error. Fails on anything else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fit_and_output()
    except (ValueError, TypeError) as exc:
        assert CLEAR.search(str(exc)), f"unclear error: {type(exc).__name__}: {exc}"
        return None
    out = np.asarray(out, dtype=np.float64)
    assert np.isfinite(out).all(), "silent non-finite result"
    return out


@settings(FUZZ, max_examples=6)
@given(X=data(min_samples=1))
def test_fuzz_embedding(X):
    est = ICONEmbedding(max_iter=30, early_exaggeration_iter=10, random_state=0)
    out = _outcome(lambda: est.fit(X).transform(X[:5]))
    if out is not None:
        assert np.isfinite(est.embedding_).all() and np.isfinite(est.kl_divergence_)


@FUZZ
@given(X=data(min_samples=1), method=st.sampled_from(["kmeans", "infonce_clustering", "spectral"]))
def test_fuzz_clustering(X, method):
    est = ICONClustering(2, method=method, n_init=1, max_iter=5, random_state=0)
    out = _outcome(lambda: est.fit(X).predict_proba(X))
    if out is not None:
        assert np.allclose(out.sum(axis=1), 1.0)
        assert set(np.unique(est.labels_)) <= set(range(est.n_clusters_))


@FUZZ
@given(X=data(min_samples=1))
def test_fuzz_contrastive(X):
    est = ICONContrastive(max_iter=2, hidden_layer_sizes=(8,), n_components=3, device="cpu", random_state=0)
    out = _outcome(lambda: est.fit(X).transform(X))
    if out is not None:
        assert out.shape == (X.shape[0], 3)


@FUZZ
@given(X=data(min_samples=1))
def test_fuzz_classifier(X):
    y = np.arange(X.shape[0]) % 2
    est = ICONClassifier(max_iter=3, hidden_layer_sizes=(8,), device="cpu", random_state=0)
    out = _outcome(lambda: est.fit(X, y).predict_proba(X))
    if out is not None:
        assert np.allclose(out.sum(axis=1), 1.0)


@FUZZ
@given(
    n=st.integers(0, 6), m=st.integers(1, 6), exponent=st.integers(-200, 200),
    corrupt=st.sampled_from(["none", "nan", "inf", "negative", "scaled", "positive_log_q", "shape"]),
    dtype=st.sampled_from([torch.float64, torch.float32]), seed=st.integers(0, 2**16),
)
def test_fuzz_icon_loss(n, m, exponent, corrupt, dtype, seed):
    rng = np.random.RandomState(seed)
    p = rng.rand(n, m) * 10.0**exponent
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        p = p / p.sum(axis=1, keepdims=True)
    p = np.nan_to_num(p, nan=1.0 / m)  # rows underflowed to 0 / 0: uniform
    log_q = torch.log_softmax(torch.as_tensor(rng.randn(n, m) * 10.0 ** min(exponent, 30), dtype=dtype), dim=1)
    if n and corrupt == "nan":
        p[0, 0] = np.nan
    elif n and corrupt == "inf":
        p[0, 0] = np.inf
    elif n and corrupt == "negative":
        p[0, 0] = -0.5
    elif n and corrupt == "scaled":
        p = p * 10.0 ** (exponent % 50 + 1)
    elif n and corrupt == "positive_log_q":
        log_q = log_q + 1.0
    elif corrupt == "shape":
        p = p[:, :-1]
    bad = n > 0 and corrupt != "none"
    try:
        loss = icon_loss(torch.as_tensor(p, dtype=dtype), log_q)
    except (ValueError, TypeError) as exc:
        assert CLEAR.search(str(exc)), f"unclear error: {exc}"
        assert bad or corrupt == "shape", f"valid input rejected: {exc}"
        return
    assert not bad, f"corrupt input ({corrupt}) accepted: loss {loss}"
    # finite where log_q is finite on p's support; float32 log_softmax of huge logits can give -inf
    if torch.isfinite(log_q).all():
        assert torch.isfinite(loss)
