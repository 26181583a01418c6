"""skicon.plotting: an embedding coloured by label with a legend; matplotlib optional and lazy."""

import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from skicon.plotting import plot_embedding  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _points():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(30, 2))
    y = np.repeat(["b", "a", "c"], 10)
    return Z, y


def test_one_coloured_collection_and_legend_entry_per_label():
    Z, y = _points()
    fig, ax = plt.subplots()
    out = plot_embedding(Z, y, ax=ax, labels={"a": "alpha", "b": "beta", "c": "gamma"})
    assert out is ax
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["alpha", "beta", "gamma"]
    collections = ax.collections
    assert len(collections) == 3
    # each collection holds exactly its label's points, in sorted label order
    for collection, value in zip(collections, ["a", "b", "c"]):
        np.testing.assert_array_equal(collection.get_offsets(), Z[y == value])
    colours = {tuple(np.round(c.get_facecolor()[0], 6)) for c in collections}
    assert len(colours) == 3


def test_sequence_labels_default_names_and_no_legend():
    Z, y = _points()
    ax = plot_embedding(Z, y, labels=["A", "B", "C"], ax=plt.figure().gca())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A", "B", "C"]
    ax = plot_embedding(Z, y, ax=plt.figure().gca())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    ax = plot_embedding(Z, y, legend=False, ax=plt.figure().gca())
    assert ax.get_legend() is None
    ax = plot_embedding(Z, ax=plt.figure().gca(), title="map")  # no labels: one collection
    assert len(ax.collections) == 1 and ax.get_legend() is None and ax.get_title() == "map"


def test_scatter_kwargs_reach_matplotlib_and_dataframes_work():
    pd = pytest.importorskip("pandas")
    Z, y = _points()
    ax = plot_embedding(pd.DataFrame(Z, columns=["e0", "e1"]), pd.Series(y), s=40, marker="x",
                        ax=plt.figure().gca())
    assert all(np.allclose(c.get_sizes(), 40) for c in ax.collections)
    # the first two columns of a wider embedding are drawn
    ax = plot_embedding(np.c_[Z, Z[:, :1]], y, ax=plt.figure().gca())
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), Z[y == "a"])


def test_bad_input_names_the_problem():
    Z, y = _points()
    with pytest.raises(ValueError, match="at least 2 columns"):
        plot_embedding(Z[:, :1], y)
    with pytest.raises(ValueError, match="one label per row"):
        plot_embedding(Z, y[:5])
    with pytest.raises(ValueError, match="3 distinct labels"):
        plot_embedding(Z, y, labels=["only", "two"])
    with pytest.raises(ValueError, match="no name for"):
        plot_embedding(Z, y, labels={"a": "alpha"})


def test_missing_matplotlib_gives_an_install_hint(monkeypatch):
    Z, y = _points()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install matplotlib"):
        plot_embedding(Z, y)


def test_matplotlib_is_imported_only_when_plotting():
    code = ("import sys, skicon, skicon.plotting; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
