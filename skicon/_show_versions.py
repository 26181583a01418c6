"""Report the versions of skicon, Python and the libraries it runs on.

Paste the output of :func:`show_versions` into bug reports: most problems with a
torch-backed estimator depend on the torch build and on whether CUDA is visible.
"""

import importlib
import platform
import sys
from importlib import metadata

# (distribution name on PyPI, import name)
_DEPENDENCIES = (
    ("skicon", "skicon"),
    ("torch", "torch"),
    ("numpy", "numpy"),
    ("scipy", "scipy"),
    ("scikit-learn", "sklearn"),
    ("pynndescent", "pynndescent"),
    ("numba", "numba"),
    ("threadpoolctl", "threadpoolctl"),
    ("joblib", "joblib"),
    ("tqdm", "tqdm"),
    # optional: DataFrame output (set_output) and skicon.plotting
    ("pandas", "pandas"),
    ("matplotlib", "matplotlib"),
)


def _system_info():
    """Python, executable and platform as a dict of strings."""
    return {
        "python": sys.version.replace("\n", " "),
        "executable": sys.executable,
        "machine": platform.platform(),
    }


def _package_version(dist_name, import_name):
    """Installed version of one package, or ``None`` when it is missing.

    The distribution metadata is read first because it does not need the import;
    a source checkout that is not installed falls back to ``module.__version__``.
    """
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        pass
    try:
        module = importlib.import_module(import_name)
    except ImportError:
        return None
    return getattr(module, "__version__", "unknown")


def _dependency_info():
    """Versions of skicon's dependencies as a dict (``None`` for missing ones)."""
    return {name: _package_version(name, module) for name, module in _DEPENDENCIES}


def _torch_info():
    """CUDA and threading facts about the installed torch, or an empty dict."""
    try:
        import torch
    except ImportError:
        return {}
    cuda = torch.cuda.is_available()
    info = {
        "cuda available": str(cuda),
        "cuda version": str(torch.version.cuda),
        "torch threads": str(torch.get_num_threads()),
    }
    if cuda:
        info["cuda devices"] = ", ".join(
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        )
    return info


def show_versions():
    """Print system, dependency and torch device information.

    Use it when reporting a bug: it lists the Python and platform, the versions of
    skicon, torch, numpy, scipy, scikit-learn, pynndescent, numba, threadpoolctl, joblib and
    tqdm (and of the optional pandas and matplotlib; ``None`` when one is not installed), and
    whether torch can see a CUDA device.

    Returns
    -------
    None
        The report is printed to standard output.

    Examples
    --------
    >>> from skicon import show_versions
    >>> show_versions()  # doctest: +ELLIPSIS
    <BLANKLINE>
    System:
    ...
    """
    sections = (
        ("System", _system_info()),
        ("Python dependencies", _dependency_info()),
        ("Torch", _torch_info()),
    )
    for title, info in sections:
        print(f"\n{title}:")
        for key, value in info.items():
            print(f"{key:>16}: {value}")
