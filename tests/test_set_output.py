"""scikit-learn's output API on all four estimators: ``get_feature_names_out``, ``set_output``
(pandas, and polars where installed), ``sklearn.set_config(transform_output=...)``, pipelines and
``ColumnTransformer``; and the estimator-level facts that go with it (``device_``, nested kernel
parameters, the neighbour-positives warning of contrastive methods)."""

import warnings

import numpy as np
import pytest
import sklearn
import torch
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skicon import ICONClassifier, ICONClustering, ICONContrastive, ICONEmbedding
from skicon.kernels import Cosine, Debiased, StudentT, UniformKNN

pd = pytest.importorskip("pandas")

NET = dict(hidden_layer_sizes=(16,), max_iter=2, batch_size=64, random_state=0)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X, y = X[:120], y[:120]
    columns = [f"px{i}" for i in range(X.shape[1])]
    index = pd.Index(np.arange(1000, 1000 + len(X)), name="sample")  # not 0..n-1: must be kept
    return pd.DataFrame(X, columns=columns, index=index), y


# (estimator, width of transform's output, whether fit takes y)
CASES = {
    "embedding": (lambda: ICONEmbedding(mapper="linear", max_iter=30, random_state=0), 2, False),
    "clustering": (lambda: ICONClustering(n_clusters=3, max_iter=20, random_state=0), None, False),
    "contrastive": (lambda: ICONContrastive(method="supcon", n_components=5, **NET), 5, True),
    "classifier": (lambda: ICONClassifier(n_components=6, **NET), 6, True),
}


def _fit(name, est, X, y):
    return est.fit(X, y) if CASES[name][2] else est.fit(X)


def _width(name, est):
    width = CASES[name][1]
    return est.n_clusters_ if width is None else width


@pytest.mark.parametrize("name", CASES)
def test_feature_names_out_and_pandas_output(name, digits):
    X, y = digits
    est = CASES[name][0]()
    with pytest.raises(NotFittedError):
        est.get_feature_names_out()
    assert est.set_output(transform="pandas") is est
    _fit(name, est, X, y)
    prefix = type(est).__name__.lower()
    names = est.get_feature_names_out()
    assert list(names) == [f"{prefix}{i}" for i in range(_width(name, est))]
    Z = est.transform(X)
    assert isinstance(Z, pd.DataFrame)
    assert list(Z.columns) == list(names) and Z.index.equals(X.index)
    # the DataFrame holds exactly what the default output gives
    plain = est.set_output(transform="default").transform(X)
    assert isinstance(plain, np.ndarray)
    np.testing.assert_array_equal(Z.to_numpy(), plain)


@pytest.mark.parametrize("name", CASES)
def test_fit_transform_and_set_config(name, digits):
    X, y = digits
    with sklearn.config_context(transform_output="pandas"):
        est = CASES[name][0]()
        Z = est.fit_transform(X, y) if CASES[name][2] else est.fit_transform(X)
        assert isinstance(Z, pd.DataFrame)
        assert list(Z.columns) == list(est.get_feature_names_out()) and Z.index.equals(X.index)
        assert isinstance(est.transform(X), pd.DataFrame)
        assert np.isfinite(est.score(X, y))  # score's own use of transform copes with a DataFrame


@pytest.mark.parametrize("name", CASES)
def test_in_a_pipeline(name, digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), CASES[name][0]()).set_output(transform="pandas")
    Z = pipe.fit_transform(X, y)
    assert isinstance(Z, pd.DataFrame) and Z.index.equals(X.index)
    assert list(Z.columns) == list(pipe.get_feature_names_out())
    assert list(pipe.get_feature_names_out(list(X.columns)))[0] == f"{type(pipe[-1]).__name__.lower()}0"


def test_column_transformer_prefixes_the_estimator_columns(digits):
    X, y = digits
    ct = ColumnTransformer([
        ("emb", ICONEmbedding(mapper="linear", max_iter=30, random_state=0), list(X.columns[:32])),
        ("enc", ICONContrastive(method="supcon", n_components=3, **NET), list(X.columns[32:])),
    ]).set_output(transform="pandas")
    Z = ct.fit_transform(X, y)
    assert list(Z.columns) == ["emb__iconembedding0", "emb__iconembedding1",
                               "enc__iconcontrastive0", "enc__iconcontrastive1", "enc__iconcontrastive2"]
    assert Z.index.equals(X.index)


def test_table_embedding_transform_of_new_points_in_pandas(digits):
    X, _ = digits
    est = ICONEmbedding(max_iter=60, early_exaggeration_iter=20, perplexity=10, random_state=0)
    est.set_output(transform="pandas").fit(X.iloc[:90])
    Z = est.transform(X.iloc[90:])  # placement of new points by optimisation
    assert Z.shape == (30, 2) and Z.index.equals(X.index[90:])


def test_contrastive_views_give_one_dataframe_per_view(digits):
    X, _ = digits
    views = [X.iloc[:, :32], X.iloc[:, 32:]]
    est = ICONContrastive(method="cmc", n_components=3, **NET).set_output(transform="pandas")
    out = est.fit_transform(views)
    assert isinstance(out, list) and len(out) == 2
    for Z, view in zip(out, views):
        assert isinstance(Z, pd.DataFrame) and Z.index.equals(view.index)
        assert list(Z.columns) == ["iconcontrastive0", "iconcontrastive1", "iconcontrastive2"]


@pytest.mark.parametrize("name", CASES)
def test_polars_output(name, digits):
    pl = pytest.importorskip("polars")
    X, y = digits
    est = _fit(name, CASES[name][0]().set_output(transform="polars"), X, y)
    Z = est.transform(X)
    assert isinstance(Z, pl.DataFrame) and Z.columns == list(est.get_feature_names_out())


@pytest.mark.parametrize("name", CASES)
def test_device_is_a_fitted_string(name, digits):
    X, y = digits
    est = CASES[name][0]()
    assert not hasattr(est, "device_")
    _fit(name, est, X.to_numpy(), y)
    assert est.device_ == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_names_the_cuda_index(digits):
    X, _ = digits
    est = ICONEmbedding(mapper="linear", max_iter=10, device="auto", random_state=0).fit(X.to_numpy())
    assert est.device_ == f"cuda:{torch.cuda.current_device()}"


def test_nested_kernel_parameter_of_a_default_kernel_names_the_fix():
    for est in (ICONEmbedding(), ICONClustering(), ICONContrastive()):  # ICONClassifier has no p
        with pytest.raises(ValueError, match=r"p=None .* Pass an explicit kernel"):
            est.set_params(p__alpha=0.2)
    with pytest.raises(ValueError, match=r"q=StudentT\(dof=1.0\)"):
        ICONEmbedding().set_params(q__dof=0.5)
    # setting the kernel and its parameter together, or an explicit kernel's, works as usual
    est = ICONEmbedding().set_params(p=Debiased(UniformKNN(n_neighbors=5)), p__alpha=0.3)
    assert est.p.alpha == 0.3
    assert est.set_params(p__kernel__n_neighbors=7).p.kernel.n_neighbors == 7


def test_grid_over_q_and_p_alpha(digits):
    X, y = digits
    search = GridSearchCV(
        ICONContrastive(p=Debiased(UniformKNN(n_neighbors=10), alpha=0.0), n_components=4, **NET),
        {"q": [Cosine(temperature=0.5), StudentT(dof=1.0)], "p__alpha": [0.0, 0.2]}, cv=2,
    ).fit(X.to_numpy(), y)
    assert set(search.best_params_) == {"q", "p__alpha"}
    # the searched alpha reached the fit (p_ is wrapped in Debiased only when alpha > 0)
    assert getattr(search.best_estimator_.p_, "alpha", 0.0) == search.best_params_["p__alpha"]


def test_contrastive_neighbour_positives_warn_and_say_how_to_silence(digits):
    X, y = digits
    X = X.to_numpy()
    message = r"method='simclr'.*nearest neighbours.*augment=.*positives='neighbors'"
    with pytest.warns(UserWarning, match=message) as rec:
        est = ICONContrastive(method="simclr", n_components=3, **NET).fit(X)
    assert est.positives_ == "neighbors"
    assert {w.filename for w in rec} == {__file__}  # points at the user's fit call, not at skicon
    with warnings.catch_warnings():  # each of these chose its positives: no warning
        warnings.simplefilter("error")
        ICONContrastive(method="simclr", positives="neighbors", n_components=3, **NET).fit(X)
        ICONContrastive(method="infonce", n_components=3, **NET).fit(X, y)
        def jitter(B, generator):
            return B + 0.1 * torch.randn(B.shape, generator=generator)

        ICONContrastive(method="simclr", augment=jitter, n_components=3, **NET).fit(X)


def test_embedding_trains_the_alpha_of_a_debiased_p(digits):
    """``p__alpha`` in a grid must change the fit: the engine used to train the kernel inside
    ``Debiased`` and drop its alpha (alpha=0 and alpha=0.5 gave the same embedding and loss)."""
    X = digits[0].to_numpy()[:100]
    fit = dict(max_iter=60, early_exaggeration_iter=20, random_state=0)
    p = Debiased(UniformKNN(n_neighbors=10), alpha=0.0)
    plain = ICONEmbedding(p=p, **fit).fit(X)
    via_p = ICONEmbedding(p=p, **fit).set_params(p__alpha=0.5).fit(X)
    via_estimator = ICONEmbedding(p=UniformKNN(n_neighbors=10), alpha=0.5, **fit).fit(X)
    assert np.abs(plain.embedding_ - via_p.embedding_).max() > 1e-3
    np.testing.assert_allclose(via_p.embedding_, via_estimator.embedding_)  # one debiasing, two spellings
    assert via_p.loss_ == pytest.approx(via_estimator.loss_)
    with pytest.raises(ValueError, match="debias p twice"):
        ICONEmbedding(p=Debiased(UniformKNN(), alpha=0.2), alpha=0.3, **fit).fit(X)
