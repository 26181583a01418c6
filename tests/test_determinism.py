"""Thread-count determinism: the default estimators give bit-identical output on 1 and 2 threads.

Each test runs the same fits in two fresh processes, one with every thread pool at one thread
(torch, numba, BLAS/OpenMP through the environment, and ``n_jobs=1``) and one with all of them at
two (``n_jobs=2``), and compares SHA-256 digests of every output. Fresh processes, because thread
pools read the environment once at start-up. What made outputs depend on the thread count, and
what keeps them apart now (see the "Reproducibility" section of docs/user_guide/performance.rst):

* exact kNN search: the order in which a parallel search met equidistant points (ties are
  common in integer data such as digits) chose different neighbours -> candidates from BLAS,
  exact elementwise distances, ties by index (``skicon.neighbors``);
* full sums (``x.sum()`` over more than torch's parallel grain, ``torch.dot``) split across
  threads -> :func:`skicon.objectives._pairwise.fixed_sum` (the FFT grid's normaliser, the
  losses).

CI runs this file once under one thread and once under two (``.ci/run``); each test compares 1
with 2 threads itself, whatever the outer setting.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.determinism, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import hashlib, json, sys, warnings
import numpy as np
import torch
from sklearn.datasets import load_digits

which, n_jobs = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(n_jobs)
try:
    import numba
    numba.set_num_threads(n_jobs)
except ImportError:
    pass
warnings.simplefilter("ignore")
X, y = load_digits(return_X_y=True)


def digest(a):
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
    return hashlib.sha256(a.tobytes()).hexdigest()


out = {"threads": [torch.get_num_threads()]}
if which == "embedding_exact":
    from skicon import ICONEmbedding
    est = ICONEmbedding(random_state=0, max_iter=300, n_jobs=n_jobs).fit(X[:1200])
    out["mode"] = est.mode_
    out["fit"] = [digest(est.embedding_), digest([est.kl_divergence_]), digest(est.loss_curve_)]
    out["transform"] = digest(est.transform(X[1200:1400]))
elif which == "embedding_fft":
    from skicon import ICONEmbedding
    est = ICONEmbedding(mode="fft", random_state=0, max_iter=150, n_jobs=n_jobs).fit(X[:1200])
    out["fit"] = [digest(est.embedding_), digest([est.kl_divergence_]), digest(est.loss_curve_)]
    out["transform"] = digest(est.transform(X[1200:1400]))
elif which == "clustering":
    from skicon import ICONClustering
    # the default's three fits: in turn on one thread, in two worker processes on two
    est = ICONClustering(10, random_state=0, max_iter=200, n_jobs=n_jobs).fit(X[:800])
    out["fits"] = len(est.ensemble_losses_)
    out["fit"] = [digest(est.labels_), digest([est.loss_]), digest(est.ensemble_losses_)]
    out["predict_proba"] = digest(est.predict_proba(X[800:1000]))
elif which == "contrastive":
    from skicon import ICONContrastive
    est = ICONContrastive(random_state=0, max_iter=40, n_jobs=n_jobs).fit(X[:800])
    out["fit"] = [digest([est.loss_]), digest(est.loss_curve_)]
    out["transform"] = digest(est.transform(X[800:1000]))
elif which == "classifier":
    from skicon import ICONClassifier
    # n_jobs=None, the default: n_jobs=2 differs (MKL's sgemm splits the batch axis of the head's
    # thin weight-gradient product across threads; see docs/user_guide/performance.rst)
    est = ICONClassifier(random_state=0, max_iter=40).fit(X[:800], y[:800])
    out["fit"] = [digest([est.loss_]), digest(est.loss_curve_)]
    out["predict_proba"] = digest(est.predict_proba(X[800:1000]))
print("RESULT" + json.dumps(out))
"""


def _run(which, n_threads):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(n_threads)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", PROBE, which, str(n_threads)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("which", ["embedding_exact", "embedding_fft", "clustering", "contrastive", "classifier"])
def test_default_estimator_is_bit_identical_on_one_and_two_threads(which):
    one, two = _run(which, 1), _run(which, 2)
    # the two processes did run on different thread counts
    assert one.pop("threads") == [1] and two.pop("threads") == [2]
    assert one == two


# fast in-process checks of the two fixes (torch's thread setting switches reliably in-process)
def test_fixed_sum_does_not_depend_on_torch_threads():
    import torch

    from skicon.objectives._pairwise import fixed_dot, fixed_sum

    x = torch.randn(200_003, generator=torch.Generator().manual_seed(0))
    old = torch.get_num_threads()
    try:
        sums, dots = [], []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            sums.append(float(fixed_sum(x)))
            dots.append(float(fixed_dot(x, x.flip(0))))
    finally:
        torch.set_num_threads(old)
    assert len(set(sums)) == 1 and len(set(dots)) == 1
    assert abs(sums[0] - float(x.double().sum())) < 1e-3


def test_exact_knn_breaks_ties_by_index_and_keeps_the_whole_tie_group_in_view():
    import numpy as np

    from skicon.neighbors import knn_graph, query_neighbors

    # five points, each three times: ties at every distance, and the k-th neighbour inside a tie group
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]), 3, axis=0)
    g = knn_graph(X, 5, method="exact")
    # point 0's nearest: its two duplicates (1, 2), then the 12 points at distance 1, lowest index first
    assert g.indices[0].tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(g.distances[0], [0, 0, 1, 1, 1])
    idx, dist = query_neighbors(X, np.array([[0.0, 0.0]]), 6)
    assert idx[0].tolist() == [0, 1, 2, 3, 4, 5]
