"""Thread discipline (one meaning of n_jobs, one manager), lazy imports and verbose bars."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.utils._param_validation import InvalidParameterError
from threadpoolctl import threadpool_info
from torch.overrides import TorchFunctionMode

from skicon import ICONClassifier, ICONClustering, ICONContrastive, ICONEmbedding
from skicon import _threads
from skicon._threads import (DATA_GRAIN, TORCH_GRAIN, available_threads, current_threads, resolve_n_jobs, thread_limits,
                             torch_threads_for)


@pytest.fixture(scope="module")
def data():
    X, y = load_digits(return_X_y=True)
    return X[:150], y[:150]


def _small(name):
    """Each estimator with a short fit (callbacks are called every 50 iterations and at the end)."""
    return {
        "ICONEmbedding": ICONEmbedding(max_iter=60, random_state=0),
        "ICONClustering": ICONClustering(n_clusters=5, n_init=2, max_iter=60, random_state=0),
        "ICONContrastive": ICONContrastive(method="supcon", n_components=4, hidden_layer_sizes=(16,), max_iter=2,
                                           batch_size=64, device="cpu", random_state=0),
        "ICONClassifier": ICONClassifier(hidden_layer_sizes=(16,), max_iter=2, batch_size=64, device="cpu",
                                         random_state=0),
    }[name]


ESTIMATORS = ["ICONEmbedding", "ICONClustering", "ICONContrastive", "ICONClassifier"]


def _fit(est, X, y):
    return est.fit(X, y) if isinstance(est, (ICONContrastive, ICONClassifier)) else est.fit(X)


def _pools():
    return {(lib["internal_api"], lib["filepath"]): lib["num_threads"] for lib in threadpool_info()}


def _snapshot():
    """Thread settings seen from inside a fit: torch, skicon's compiled loops, BLAS/OpenMP, numba."""
    import numba

    return {"torch": torch.get_num_threads(), "compiled": current_threads(), "numba": numba.get_num_threads(),
            "blas": max(_pools().values())}


# -- the meaning of n_jobs ----------------------------------------------------------------------
def test_resolve_n_jobs_meaning(monkeypatch):
    monkeypatch.setattr(_threads, "_cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert available_threads() == 8 and resolve_n_jobs(None) == min(8, torch.get_num_threads())
    assert (resolve_n_jobs(-1), resolve_n_jobs(-2), resolve_n_jobs(-20), resolve_n_jobs(3)) == (8, 7, 1, 3)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # how joblib's process pools pass a worker its share
    assert available_threads() == 2 and resolve_n_jobs(-1) == 8  # an explicit n_jobs is not capped
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the user's own torch limit holds under the default
        assert resolve_n_jobs(None) == 1 and resolve_n_jobs(3) == 3
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="n_jobs=0"):
        resolve_n_jobs(0)


def test_thread_limits_sets_and_restores_every_pool():
    import numba

    numba.get_num_threads()  # start numba's threading layer, so that the manager limits it too
    before = (torch.get_num_threads(), numba.get_num_threads(), _pools(), current_threads())
    with thread_limits(1) as limits:
        assert limits.n_threads == 1
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1 and current_threads() == 1
        assert set(_pools().values()) == {1}
        with thread_limits(2):  # limits nest
            assert torch.get_num_threads() == 2 and current_threads() == 2
        assert torch.get_num_threads() == 1 and current_threads() == 1
    assert (torch.get_num_threads(), numba.get_num_threads(), _pools(), current_threads()) == before
    with pytest.raises(RuntimeError):  # restored when the block raises too
        with thread_limits(1):
            raise RuntimeError
    assert (torch.get_num_threads(), numba.get_num_threads(), _pools(), current_threads()) == before


def test_small_training_iterations_get_one_torch_thread_under_the_default():
    with thread_limits(None) as limits:
        assert torch_threads_for(TORCH_GRAIN - 1) == 1
        assert torch_threads_for(10**6 * TORCH_GRAIN) == limits.n_threads
    with thread_limits(2):  # an explicit count is what the user asked for
        assert torch_threads_for(1) == 2


def test_small_inputs_get_one_torch_and_blas_thread_under_the_default():
    share = resolve_n_jobs(None)
    with thread_limits(None, size=DATA_GRAIN - 1) as limits:  # e.g. digits: 1797 x 64
        assert (limits.n_threads, limits.n_dense_threads) == (share, 1)
        assert torch.get_num_threads() == 1 and set(_pools().values()) == {1}
        assert current_threads() == share  # the compiled loops split their own work
    with thread_limits(None, size=10**6 * DATA_GRAIN) as limits:
        assert limits.n_dense_threads == share and torch.get_num_threads() == share
    with thread_limits(2, size=1) as limits:  # an explicit count is applied as is
        assert limits.n_dense_threads == 2 and torch.get_num_threads() == 2


def test_default_fit_on_small_data_runs_torch_and_blas_on_one_thread(data):
    seen = []
    ICONClustering(n_clusters=5, n_init=2, max_iter=60, random_state=0,
                   callbacks=lambda it, loss, e: seen.append((torch.get_num_threads(), max(_pools().values())))).fit(
        data[0])
    assert seen and set(seen) == {(1, 1)}, seen


# -- every estimator ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ESTIMATORS)
def test_n_jobs_constraint_on_every_estimator(name, data):
    est = _small(name)
    assert "n_jobs" in est.get_params() and "n_jobs" in type(est)._parameter_constraints
    with pytest.raises(ValueError, match="n_jobs"):  # InvalidParameterError, or the manager's own message
        _fit(est.set_params(n_jobs=0), *data)
    assert InvalidParameterError.__mro__[1] is ValueError or issubclass(InvalidParameterError, ValueError)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_fit_and_predict_run_on_n_jobs_threads(name, data):
    import numba

    numba.get_num_threads()
    X, y = data
    before = (torch.get_num_threads(), numba.get_num_threads(), _pools())
    seen = []
    est = _small(name).set_params(n_jobs=1, callbacks=lambda it, loss, e: seen.append(_snapshot()))
    _fit(est, X, y)
    assert seen and all(s == {"torch": 1, "compiled": 1, "numba": 1, "blas": 1} for s in seen), seen
    assert (torch.get_num_threads(), numba.get_num_threads(), _pools()) == before

    # transform / predict run under the same limit: torch's setting at every torch call inside
    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is not torch.device:  # resolving the device name may precede the limit
                inside.add(torch.get_num_threads())
            return func(*args, **(kwargs or {}))

    inside = set()
    est.set_params(n_jobs=3)  # more than the test machine may have: an explicit count is applied as is
    with Record():
        (est.predict if hasattr(est, "predict") else est.transform)(X[:20])
    assert inside == {3}
    assert torch.get_num_threads() == before[0]


@pytest.mark.slow
def test_joblib_workers_get_their_share(data, monkeypatch):
    """Inside joblib's process pool (GridSearchCV(n_jobs=2)), a default fit uses the worker's share."""
    from joblib import Parallel, cpu_count, delayed
    cloudpickle = pytest.importorskip("cloudpickle")  # what joblib pickles callables with

    def fit_in_worker(X):
        import torch as torch_

        from skicon import ICONClustering as Clustering
        from skicon._threads import current_threads as granted

        seen = []
        Clustering(n_clusters=5, n_init=2, max_iter=50, random_state=0,
                   callbacks=lambda it, loss, e: seen.append((granted(), torch_.get_num_threads()))).fit(X)
        return seen

    # Workers started without the user's thread variables (CI sets OMP_NUM_THREADS to the
    # machine's cores, which joblib respects and passes on): joblib then gives each worker
    # cpu_count() // n_workers threads, and a default fit must use that share.
    from joblib.externals.loky import get_reusable_executor

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    get_reusable_executor().shutdown(wait=True)  # no worker started under the old variables
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        results = Parallel(n_jobs=2, backend="loky")(delayed(fit_in_worker)(data[0]) for _ in range(2))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        get_reusable_executor().shutdown(wait=True)
    share = max(cpu_count() // 2, 1)
    assert all(seen and all(granted == share and torch_threads <= share for granted, torch_threads in seen)
               for seen in results), results


# -- lazy imports -------------------------------------------------------------------------------
def test_import_skicon_leaves_numba_pynndescent_and_matplotlib_unloaded():
    code = ("import sys, skicon\n"
            "from skicon import ICONEmbedding, ICONClustering, ICONContrastive, ICONClassifier\n"
            "print(sorted(m for m in ('numba', 'pynndescent', 'matplotlib', 'skicon.plotting') if m in sys.modules))\n"
            "skicon.plotting\n"
            "print('skicon.plotting' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", out
    assert out[1] == "True"  # the lazy submodule loads on first access


# -- verbose bars -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ESTIMATORS)
def test_verbose_bar_shows_the_loss_and_leaves_a_summary(name, data, capfd):
    est = _small(name).set_params(verbose=1, n_jobs=1)
    _fit(est, *data)
    out, err = capfd.readouterr()
    text = out + err
    assert re.search(r"loss=[-+0-9.e]+", text), text  # the loss in the bar's postfix
    summary = re.findall(rf"^{name}: (\d+) iterations in [0-9.]+ s(?: \(stopped early\))?, final loss ([-+0-9.e]+)$",
                         out, flags=re.M)
    assert summary, out  # one line that stays when the bar is gone
    assert int(summary[-1][0]) >= 1 and np.isfinite(float(summary[-1][1]))

    _fit(_small(name).set_params(verbose=0, n_jobs=1), *data)
    out, err = capfd.readouterr()
    assert name not in out + err  # silent by default


def _search_in_child(queue):
    import numpy as np

    from skicon._knn_exact import euclidean_search
    from skicon._threads import thread_limits

    X = np.random.RandomState(0).randn(3000, 40)
    with thread_limits(2):
        queue.put(euclidean_search(X, X, 5)[0].tolist())


def test_compiled_loops_run_in_a_forked_child():
    """A child forked after the parent used the compiled loops' thread pool starts its own pool.

    The parent's pool threads do not exist in the child; submitting to the inherited pool hung
    forever (found by the benchmarks, which fork a worker per method).
    """
    import multiprocessing as mp

    import numpy as np

    from skicon._knn_exact import euclidean_search
    from skicon._threads import thread_limits

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    X = np.random.RandomState(0).randn(3000, 40)
    with thread_limits(2):
        expected = euclidean_search(X, X, 5)[0].tolist()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_search_in_child, args=(queue,))
    proc.start()
    try:
        assert queue.get(timeout=120) == expected
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
