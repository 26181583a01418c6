"""Shared input checks: data arrays and the scale of the data.

Every entry point that takes data (kernels' ``conditional``, the estimators' ``fit`` / ``predict``)
checks it here, so the messages are the same everywhere and name what is wrong and the fix.

The scale helpers serve the estimators whose maths is invariant to a global rescaling of ``X``
(perplexity-calibrated and k-nearest-neighbour affinities, standardised inputs): they compute in
a frame where the data's global scale is about one, reached by multiplying with an exact power
of two. Multiplying by ``2**e`` is exact in floating point (no rounding; only overflow or
underflow could change a value, and the factor is chosen to avoid both), so data already of
scale about one is left bit-identical, and a dataset and its rescaled copy ``X * 1e160`` meet in
nearly the same frame: squared distances neither overflow nor underflow in float64 and the
float32 cast keeps its precision.
"""

import math
import numbers

import numpy as np
import scipy.sparse as sp
from sklearn.utils import check_array

__all__ = ["check_data", "check_positive", "global_scale", "global_std", "unit_exponent", "to_unit_frame"]


def check_data(X, *, name="X", accept_sparse="csr", ensure_min_samples=1, caller=None):
    """``X`` as a finite 2-D float array (or CSR matrix), with a clear message otherwise.

    Parameters
    ----------
    X : {array-like, sparse matrix, torch.Tensor} of shape (n_samples, n_features)
        Data. Lists, pandas frames, integer, boolean and float16 arrays are converted to float64.
    name : str, default="X"
        The argument's name in messages.
    accept_sparse : str, tuple or False, default="csr"
        Sparse formats accepted (converted to the first one).
    ensure_min_samples : int, default=1
        Fewest rows accepted.
    caller : str, default=None
        Name of the calling object in messages.

    Returns
    -------
    ndarray or scipy.sparse.csr_matrix of float32 / float64
        The checked data.

    Examples
    --------
    >>> from skicon._validation import check_data
    >>> check_data([[0, 1], [2, 3]]).dtype
    dtype('float64')
    """
    if hasattr(X, "detach") and hasattr(X, "cpu"):  # a torch tensor: data, not a graph
        X = X.detach().cpu().numpy()
    if not sp.issparse(X):
        arr = np.asarray(X) if not hasattr(X, "dtypes") else X
        ndim = getattr(arr, "ndim", 2)
        if ndim == 1:
            raise ValueError(f"{name} must be 2-D (n_samples, n_features), got a 1-D array of shape {arr.shape}; "
                             f"reshape it with {name}.reshape(-1, 1) for one feature or {name}.reshape(1, -1) for "
                             "one sample.")
    return check_array(X, accept_sparse=accept_sparse, dtype=[np.float64, np.float32], input_name=name,
                       ensure_min_samples=ensure_min_samples, estimator=caller)


def check_positive(value, name, *, allow_none=False):
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is a positive finite real number.

    Parameters
    ----------
    value : object
        The parameter's value.
    name : str
        The parameter's name.
    allow_none : bool, default=False
        Whether None is accepted.

    Examples
    --------
    >>> from skicon._validation import check_positive
    >>> check_positive(-5, "perplexity")
    Traceback (most recent call last):
    ...
    ValueError: perplexity must be a positive finite number, got -5.
    """
    if value is None and allow_none:
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def global_scale(X):
    """Root mean square deviation of all entries of ``X`` from their column means, overflow-free.

    Computed in float64 on ``X / max|X|`` and multiplied back, so data near the float64 limits
    (``1e-300``, ``1e300``) has a finite, non-zero scale. Constant data gives ``max|X|`` (0 for
    all-zero data). Sparse data: the root mean square of its stored values.

    Parameters
    ----------
    X : {ndarray, sparse matrix} of shape (n_samples, n_features)
        Finite data.

    Returns
    -------
    float
        The scale (0.0 only when every entry is zero).

    Examples
    --------
    >>> import numpy as np
    >>> from skicon._validation import global_scale
    >>> global_scale(np.array([[1e200], [-1e200]]))
    1e+200
    """
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.size == 0:
        return 0.0
    top = float(np.max(np.abs(values)))
    if top == 0.0 or not math.isfinite(top):
        return top if math.isfinite(top) else 1.0
    Y = np.asarray(values, dtype=np.float64) / top
    if sp.issparse(X):
        rms = float(np.sqrt(np.mean(Y**2)))
    else:
        rms = float(np.sqrt(np.mean((Y - Y.mean(axis=0)) ** 2))) if Y.ndim == 2 else float(np.std(Y))
    return top * rms if rms > 0 else top


def global_std(X):
    """``np.std(X)`` (all entries), computed without overflow or underflow at extreme scales.

    Data whose standard deviation is within ``[1e-100, 1e100]`` gets exactly ``np.std(X)``;
    beyond, it is computed on ``X / max|X|`` and multiplied back.

    Parameters
    ----------
    X : ndarray
        Finite data.

    Returns
    -------
    float
        The standard deviation (0.0 for constant data).

    Examples
    --------
    >>> import numpy as np
    >>> from skicon._validation import global_std
    >>> global_std(np.array([[1e-200], [-1e-200]]))
    1e-200
    """
    X = np.asarray(X)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        std = float(np.std(X))
    if math.isfinite(std) and 1e-100 <= std <= 1e100:
        return std
    top = float(np.max(np.abs(X))) if X.size else 0.0
    if top == 0.0 or not math.isfinite(top):
        return 0.0
    return top * float(np.std(np.asarray(X, dtype=np.float64) / top))


def unit_exponent(X):
    """The integer ``e`` such that ``X * 2**-e`` has a global scale in ``[2**-0.5, 2**0.5)``.

    Parameters
    ----------
    X : {ndarray, sparse matrix}
        Finite data.

    Returns
    -------
    int
        0 for all-zero data.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon._validation import unit_exponent
    >>> unit_exponent(np.array([[0.0], [2.0**40]]))
    39
    """
    scale = global_scale(X)
    if scale == 0.0:
        return 0
    return int(round(math.log2(scale)))


def to_unit_frame(X, exponent):
    """``X * 2**-exponent``, exactly (a power of two only shifts the float exponents).

    Parameters
    ----------
    X : {ndarray, sparse matrix}
        Data.
    exponent : int
        From :func:`unit_exponent` on the training data.

    Returns
    -------
    ndarray or sparse matrix
        Same type and dtype; ``X`` itself when ``exponent == 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon._validation import to_unit_frame
    >>> to_unit_frame(np.array([3e160]), 532) * 2.0**532 == 3e160
    array([ True])
    """
    if exponent == 0:
        return X
    if sp.issparse(X):
        X = X.copy()
        X.data = np.ldexp(X.data, -exponent).astype(X.dtype, copy=False)
        return X
    X = np.asarray(X)
    return np.ldexp(X, -exponent).astype(X.dtype, copy=False)
