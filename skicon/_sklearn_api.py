"""The parts of scikit-learn's estimator API that all four estimators share.

* :class:`FeatureNamesOutMixin`: ``get_feature_names_out`` (``"iconembedding0"``, ...), which is
  also what makes scikit-learn's ``set_output`` (pandas or polars output, in pipelines and under
  ``sklearn.set_config(transform_output=...)``) available on a transformer.
* :class:`KernelParamsMixin`: ``set_params`` whose error names the fix when a grid sets a nested
  parameter (``p__alpha``) of a kernel left at ``None``.
* :func:`per_view_output`: container output for a transform that takes a list of views.
* :func:`device_name`: the ``device_`` fitted attribute.
* :func:`warn_user`: a warning that points at the caller's line, outside skicon.
"""

import functools
import os
import sys
import warnings

import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin
from sklearn.utils._set_output import _wrap_data_with_container

__all__ = ["FeatureNamesOutMixin", "KernelParamsMixin", "device_name", "per_view_output", "warn_user"]


class FeatureNamesOutMixin(ClassNamePrefixFeaturesOutMixin):
    """``get_feature_names_out`` from the lower-cased class name and ``_n_features_out``.

    Each estimator defines ``_n_features_out`` (the width of ``transform``'s output) as a
    property of its fitted state, so that it raises ``AttributeError`` (``NotFittedError``)
    before ``fit``.
    """


_EXAMPLE_KERNEL = {"p": "Debiased(UniformKNN(n_neighbors=10), alpha=0.0)", "q": "StudentT(dof=1.0)"}


class KernelParamsMixin:
    """``set_params`` that explains why a nested kernel parameter cannot be set on ``None``.

    ``p=None`` (or ``q=None``) means "the kernel that ``method`` builds at fit time from the
    estimator's own parameters (perplexity, n_neighbors, alpha, ...)": there is no kernel object
    yet whose ``alpha`` a grid could set, and making one up would change what the default fits.
    scikit-learn's own message is ``'NoneType' object has no attribute 'set_params'``; this one
    names the fix.
    """

    def set_params(self, **params):
        for key in params:
            name, sep, _ = key.partition("__")
            if sep and name in ("p", "q") and name not in params and getattr(self, name, False) is None:
                raise ValueError(
                    f"cannot set {key!r}: {name}=None stands for the kernel that method="
                    f"{getattr(self, 'method', None)!r} builds at fit time, which has no parameters to set. "
                    f"Pass an explicit kernel from skicon.kernels, e.g. {type(self).__name__}({name}="
                    f"{_EXAMPLE_KERNEL[name]}), then search {key!r}; or search "
                    f"{name!r} itself (a list of kernels) or the estimator's own parameters."
                )
        return super().set_params(**params)


def device_name(device):
    """The torch device as a string with its index (``"cpu"``, ``"cuda:0"``).

    Parameters
    ----------
    device : torch.device or str
        A resolved device.

    Returns
    -------
    str
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def per_view_output(wrapped):
    """Let a ``set_output``-wrapped method return one container per view for a list of views.

    scikit-learn wraps ``transform`` and ``fit_transform`` to turn one array into a DataFrame;
    a list of views (``ICONContrastive`` with several modalities) gets a list back, each element
    wrapped with its own view's index.
    """
    plain = wrapped.__wrapped__

    @functools.wraps(plain)
    def method(self, X, *args, **kwargs):
        if not self._is_views(X):
            return wrapped(self, X, *args, **kwargs)
        out = plain(self, X, *args, **kwargs)
        return [_wrap_data_with_container("transform", Z, view, self) for Z, view in zip(out, X)]

    return method


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message, category=UserWarning):
    """``warnings.warn`` attributed to the first frame outside skicon (the user's ``fit`` call),
    however many decorators and helpers lie in between."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the caller of warn_user
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)
