"""Plot an embedding coloured by label, with a legend.

matplotlib is optional (``pip install matplotlib``, or skicon's ``examples`` extra); it is imported
when a function here is called, so ``import skicon`` and ``import skicon.plotting`` never need it.
"""

import numpy as np

__all__ = ["plot_embedding"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised by a test that hides matplotlib
        raise ImportError(
            "skicon.plotting needs matplotlib, which is not installed: run `pip install matplotlib` "
            '(or install skicon with its examples extra: `pip install "skicon[examples]"`).'
        ) from exc
    return plt


def plot_embedding(Z, y=None, *, ax=None, labels=None, legend=True, title=None, **scatter_kwargs):
    """Scatter a 2-D (or the first two columns of a wider) embedding, one colour per label.

    Parameters
    ----------
    Z : array-like of shape (n_samples, n_components)
        The embedding, for example ``ICONEmbedding().fit_transform(X)`` (a pandas DataFrame from
        ``set_output(transform="pandas")`` works too). Only the first two columns are drawn.
    y : array-like of shape (n_samples,), default=None
        A label per sample (classes or cluster labels). Each distinct value gets its own colour
        and legend entry, in sorted order. None draws every point in one colour.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; None uses the current axes (``plt.gca()``).
    labels : dict or sequence, default=None
        Legend names: a mapping ``{label value: name}`` or a sequence with one name per distinct
        label in sorted order. None uses the label values themselves.
    legend : bool, default=True
        Whether to add a legend (only when ``y`` is given).
    title : str, default=None
        Title of the axes.
    **scatter_kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter` for every label (defaults: ``s=5``,
        ``alpha=0.8``, ``linewidths=0``).

    Returns
    -------
    ax : matplotlib.axes.Axes
        The axes drawn on.

    Raises
    ------
    ImportError
        When matplotlib is not installed (the message says how to install it).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from skicon.plotting import plot_embedding
    >>> Z = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]])
    >>> ax = plot_embedding(Z, y=[0, 1, 1], labels={0: "zero", 1: "one"})
    >>> [text.get_text() for text in ax.get_legend().get_texts()]
    ['zero', 'one']
    """
    plt = _pyplot()
    Z = np.asarray(Z, dtype=float)
    if Z.ndim != 2 or Z.shape[1] < 2:
        raise ValueError(f"Z must be a 2-D array with at least 2 columns, got shape {Z.shape}; "
                         "fit the embedding with n_components >= 2.")
    if ax is None:
        ax = plt.gca()
    style = {"s": 5, "alpha": 0.8, "linewidths": 0, **scatter_kwargs}
    if y is None:
        ax.scatter(Z[:, 0], Z[:, 1], **style)
    else:
        y = np.asarray(y)
        if y.shape != (Z.shape[0],):
            raise ValueError(f"y must have one label per row of Z ({Z.shape[0]}), got shape {y.shape}.")
        classes = np.unique(y)
        names = _label_names(classes, labels)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for k, (value, name) in enumerate(zip(classes, names)):
            mask = y == value
            kwargs = dict(style)
            if "c" not in kwargs and "color" not in kwargs:
                kwargs["color"] = cmap(k % cmap.N)
            ax.scatter(Z[mask, 0], Z[mask, 1], label=name, **kwargs)
        if legend:
            ax.legend(loc="best", fontsize="small", markerscale=2, frameon=False, title=None)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title)
    return ax


def _label_names(classes, labels):
    """One legend name per distinct label."""
    if labels is None:
        return [str(value) for value in classes]
    if isinstance(labels, dict):
        missing = [value for value in classes if value not in labels]
        if missing:
            raise ValueError(f"labels has no name for the label values {missing[:5]}.")
        return [str(labels[value]) for value in classes]
    labels = list(labels)
    if len(labels) != len(classes):
        raise ValueError(f"labels has {len(labels)} names for {len(classes)} distinct labels in y; "
                         "give one name per distinct label (sorted order), or a dict.")
    return [str(name) for name in labels]
