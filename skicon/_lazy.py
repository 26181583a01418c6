"""Modules loaded on first use, so that ``import skicon`` stays cheap.

numba costs about 0.7 s to import, more than all of skicon's own modules; only the compiled
loops of the t-SNE engine (:mod:`skicon.objectives._compiled`) and pynndescent need it. A module
bound with :func:`lazy_module` is executed at the first access of one of its attributes
(the standard library's :class:`importlib.util.LazyLoader`).
"""

import importlib.util
import sys

__all__ = ["lazy_module"]


def lazy_module(name):
    """The module ``name``, executed only when one of its attributes is first used.

    Parameters
    ----------
    name : str
        Absolute module name.

    Returns
    -------
    module
        The module, registered in ``sys.modules`` (already loaded modules are returned as they are).

    Examples
    --------
    >>> json = lazy_module("json")
    >>> json.dumps([1])
    '[1]'
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
