"""Thread discipline: one meaning of ``n_jobs`` and the one manager that applies it.

Every estimator's ``fit``, ``transform``, ``predict`` (and their relatives) run under
:class:`thread_limits`, which caps, for the duration of the call and restoring the previous
settings afterwards,

* torch's intra-op threads (``torch.set_num_threads``),
* numba's threads (``numba.set_num_threads``, when numba is loaded: pynndescent's kNN search),
* the row blocks of skicon's compiled loops (:mod:`skicon.objectives._compiled`), and
* every BLAS and OpenMP pool loaded in the process (``threadpoolctl``: scipy's and NumPy's
  OpenBLAS, scikit-learn's OpenMP, torch's MKL).

``n_jobs`` means the same in every estimator:

* ``None``: the threads joblib gives this process (:func:`available_threads`): all usable cores
  (``joblib.cpu_count()``: CPU affinity and container quotas respected), or fewer when
  ``OMP_NUM_THREADS`` says so, which is how joblib's process pools give each worker its share
  (``cpu_count() // n_workers``, or ``inner_max_num_threads``); never more than torch's own
  setting, so a user's ``torch.set_num_threads(1)`` still holds. Small work gets fewer threads:
  torch and BLAS one per :data:`DATA_GRAIN` input elements, training loops one torch thread per
  :data:`TORCH_GRAIN` multiply-adds of an iteration (:func:`torch_threads_for`). An op of well
  under a millisecond gains nothing from a second thread, and when another process holds a core
  each parallel region waits for it (measured 6-30x slower with two threads than with one on a
  loaded 2-core machine). The compiled loops split their own work within the whole share.
* ``-1``: all cores; ``-2``: all but one, and so on (``cpu_count() + 1 + n_jobs``, at least 1).
* ``k > 0``: exactly ``k`` threads for everything.
"""

import numbers
import os
import sys
import threading
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

__all__ = ["thread_limits", "available_threads", "resolve_n_jobs", "current_threads", "torch_threads_for",
           "torch_threads", "numba_threads", "limit_threads", "TORCH_GRAIN", "DATA_GRAIN", "N_JOBS_CONSTRAINT"]

#: Multiply-adds of one training iteration per torch thread, below which (under ``n_jobs=None``)
#: a training loop does not add a torch thread: about 5-10 ms of one core's work, so the cost of a
#: parallel region (microseconds on idle cores, up to a scheduler slice of milliseconds when
#: another process holds a core) stays a small fraction of the op.
TORCH_GRAIN = 2**25

#: Input elements (``n_samples * n_features``) per torch / BLAS thread outside the training loops
#: under ``n_jobs=None``: below a million, the products on the data (a randomized SVD, kNN
#: distances, a forward pass) take a few milliseconds, and a second thread made them slower, not
#: faster, on a loaded 2-core machine (ICONClustering on digits: 4.5 s of randomized SVD with two
#: threads, unmeasurably little with one).
DATA_GRAIN = 2**20

#: The ``_parameter_constraints`` entry of ``n_jobs`` in every estimator (0 means no thread).
N_JOBS_CONSTRAINT = [None, Interval(numbers.Integral, None, -1, closed="right"),
                     Interval(numbers.Integral, 1, None, closed="left")]

_STATE = threading.local()
_CONTROLLER = [None, -1]  # threadpoolctl controller, number of loaded modules when it was built


def _cpu_count():
    from joblib import cpu_count

    return max(1, int(cpu_count()))


def available_threads():
    """Threads this process may use: what joblib gives it.

    All usable cores (``joblib.cpu_count()``) outside joblib workers; inside a worker of one of
    joblib's process pools, the worker's share, which joblib passes through ``OMP_NUM_THREADS``
    (also honoured when a user sets it).

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> available_threads() >= 1
    True
    """
    n = _cpu_count()
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        n = min(n, int(value))
    return n


def resolve_n_jobs(n_jobs):
    """Threads that ``n_jobs`` stands for (see the module docstring).

    Parameters
    ----------
    n_jobs : int or None
        None: :func:`available_threads`, and no more than torch's current setting (a user's
        ``torch.set_num_threads(1)`` is kept); negative: ``cpu_count() + 1 + n_jobs`` (-1: all
        cores); positive: itself.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> resolve_n_jobs(3)
    3
    >>> resolve_n_jobs(-10**6)
    1
    """
    if n_jobs is None:  # a limit the user already set on torch (torch.set_num_threads) still rules
        return max(1, min(available_threads(), torch.get_num_threads()))
    n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs=0 means no thread at all; use n_jobs=None (joblib's share of the cores), "
                         "-1 (all cores) or a positive number of threads.")
    return n_jobs if n_jobs > 0 else max(1, _cpu_count() + 1 + n_jobs)


def _stack():
    stack = getattr(_STATE, "stack", None)
    if stack is None:
        stack = _STATE.stack = []
    return stack


def current_threads(default=1):
    """Threads granted by the innermost active :class:`thread_limits` of this thread.

    Parameters
    ----------
    default : int, default=1
        Returned outside any limit (direct calls of the compiled loops stay serial).

    Returns
    -------
    int

    Examples
    --------
    >>> with thread_limits(2):
    ...     current_threads()
    2
    >>> current_threads()
    1
    """
    stack = _stack()
    return stack[-1][0] if stack else default


def torch_threads_for(work):
    """Torch threads for a training loop doing ``work`` multiply-adds per iteration.

    Under an explicit ``n_jobs`` (or outside any :class:`thread_limits`) the granted threads;
    under ``n_jobs=None`` one thread per :data:`TORCH_GRAIN` multiply-adds, within the share.

    Parameters
    ----------
    work : float
        Multiply-adds of the largest product of one iteration.

    Returns
    -------
    int

    Examples
    --------
    >>> with thread_limits(None):
    ...     torch_threads_for(1000)
    1
    >>> with thread_limits(2):
    ...     torch_threads_for(1000)
    2
    """
    stack = _stack()
    if not stack:
        return torch.get_num_threads()
    _, n, auto = stack[-1]
    return max(1, min(n, int(work // TORCH_GRAIN))) if auto else n


def _controller():
    """A cached threadpoolctl controller (rebuilt when new modules, hence libraries, were loaded)."""
    if _CONTROLLER[0] is None or _CONTROLLER[1] != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _CONTROLLER[0] = ThreadpoolController()  # scans the loaded libraries: ~40 ms, so cached
        _CONTROLLER[1] = len(sys.modules)
    return _CONTROLLER[0]


def _numba_launched():
    """Whether numba's threading layer is running (asking it for its threads would start it)."""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(getattr(parallel, "_is_initialized", False))


def numba_threads(n_jobs=None):
    """Threads for pynndescent's ``n_jobs``, within numba's pool size (-1 or 8 on 2 cores: 2).

    pynndescent's graph for a given seed depends on its thread count (a quarter of the edges
    differed between 1 and 2 threads on 4,000 points), so ``None`` keeps it on one thread: a
    fit's result does not change with the machine's cores unless ``n_jobs`` asks for threads.

    Parameters
    ----------
    n_jobs : int or None, default=None
        None: 1; otherwise see :func:`resolve_n_jobs`.

    Returns
    -------
    int

    Examples
    --------
    >>> numba_threads(None), numba_threads(1)
    (1, 1)
    """
    import numba

    n = 1 if n_jobs is None else resolve_n_jobs(n_jobs)
    return max(1, min(n, numba.config.NUMBA_NUM_THREADS))


class thread_limits:
    """Run a block with ``n_jobs`` threads for torch, numba, BLAS/OpenMP and the compiled loops.

    The previous settings are restored on exit, also when the block raises. Limits nest (the
    innermost applies). The settings are process-wide: fits running concurrently in threads of
    one process share them.

    Parameters
    ----------
    n_jobs : int or None, default=None
        See :func:`resolve_n_jobs`.
    size : float or None, default=None
        Elements of the input (``n_samples * n_features``). Under ``n_jobs=None``, torch and
        BLAS get one thread per :data:`DATA_GRAIN` of it (within the share); the compiled loops,
        which split their own work (:func:`current_threads`), keep the whole share.

    Attributes
    ----------
    n_threads : int
        The resolved number of threads (set on entry): the compiled loops' and numba's.
    n_dense_threads : int
        torch's and BLAS's threads.

    Examples
    --------
    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with thread_limits(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """

    def __init__(self, n_jobs=None, *, size=None):
        self.n_jobs = n_jobs
        self.size = size

    def __enter__(self):
        n = self.n_threads = resolve_n_jobs(self.n_jobs)
        dense = n if self.n_jobs is not None or self.size is None else max(1, min(n, int(self.size // DATA_GRAIN)))
        self.n_dense_threads = dense
        self._torch = torch.get_num_threads()
        self._pools = _controller().limit(limits=dense)
        torch.set_num_threads(dense)
        self._numba = None
        if _numba_launched():  # else nothing numba-parallel ran yet: see numba_threads
            import numba

            self._numba = numba.get_num_threads()
            numba.set_num_threads(numba_threads(n))
        _stack().append((n, dense, self.n_jobs is None))
        return self

    def __exit__(self, *exc):
        _stack().pop()
        if self._numba is not None:
            sys.modules["numba"].set_num_threads(self._numba)
        self._pools.restore_original_limits()
        torch.set_num_threads(self._torch)
        return False


@contextmanager
def torch_threads(work, exact=False):
    """Set torch's threads to :func:`torch_threads_for` ``(work)`` for a block (restored after).

    Parameters
    ----------
    work : float
        Multiply-adds of the largest product of one iteration; with ``exact=True``, the
        number of threads itself.
    exact : bool, default=False
        Use ``work`` threads whatever the limit in effect (an objective that runs its heavy
        work on its own threads and needs torch only for glue).

    Examples
    --------
    >>> import torch
    >>> with thread_limits(None), torch_threads(10):
    ...     torch.get_num_threads()
    1
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(work)) if exact else torch_threads_for(work))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def limit_threads(method):
    """Decorate an estimator method to run under ``thread_limits(self.n_jobs, size=X.size)``.

    ``X`` is the first positional argument (its ``n_samples * n_features`` when it has a shape).

    Parameters
    ----------
    method : callable
        ``method(self, ...)`` of an estimator with an ``n_jobs`` parameter.

    Returns
    -------
    callable

    Examples
    --------
    >>> import torch
    >>> class Est:
    ...     n_jobs = 1
    ...     @limit_threads
    ...     def fit(self):
    ...         return torch.get_num_threads()
    >>> Est().fit()
    1
    """
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        X = args[0] if args else None
        shape = getattr(X, "shape", None)
        size = float(np.prod(shape[:2])) if shape is not None and len(shape) >= 2 else None
        with thread_limits(getattr(self, "n_jobs", None), size=size):
            return method(self, *args, **kwargs)

    return wrapper
