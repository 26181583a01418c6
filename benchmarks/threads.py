"""Thread check: n_jobs settings side by side, GridSearchCV with one or two workers, import time.

Three parts, each alternating its settings round by round so that a busy (shared) machine slows
every setting alike, and reporting every time and the median ratio:

* ``fit``: ``ICONClustering`` and ``ICONEmbedding`` on scikit-learn's digits with ``n_jobs=None``
  (the default), ``1`` and ``-1`` (all cores for everything), in one process after a warm-up fit.
* ``grid``: a fresh process per run timing ``GridSearchCV(ICONClustering(...), cv=3)`` with
  ``n_jobs=1`` and ``n_jobs=2`` (worker start-up included, as a user sees it).
* ``import``: a fresh process per run timing ``import torch, sklearn`` and ``import skicon``.

Run ``python -m benchmarks.threads [--rounds 3] [--parts fit grid import]``.
"""

import argparse
import statistics
import subprocess
import sys
import time

_GRID = """
import time
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from skicon import ICONClustering
X, _ = load_digits(return_X_y=True)
start = time.perf_counter()
GridSearchCV(ICONClustering(n_clusters=10, max_iter=200, n_init=4, random_state=0),
             {{"n_neighbors": [5, 10, 20]}}, cv=3, n_jobs={n_jobs}).fit(X)
print(time.perf_counter() - start)
"""


def _python(code):
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, out


def _report(name, times):
    cells = "  ".join(f"{key}: " + " ".join(f"{t:.2f}" for t in values) for key, values in times.items())
    keys = list(times)
    ratios = [statistics.median(a / b for a, b in zip(times[k], times[keys[0]])) for k in keys[1:]]
    print(f"{name}: {cells}")
    print(f"{name}: median ratio to {keys[0]}: " + ", ".join(f"{k} {r:.2f}x" for k, r in zip(keys[1:], ratios)))


def fits(rounds):
    """ICONClustering / ICONEmbedding on digits under each n_jobs setting."""
    from sklearn.datasets import load_digits

    from skicon import ICONClustering, ICONEmbedding

    X, _ = load_digits(return_X_y=True)
    for make in (lambda n_jobs: ICONClustering(n_clusters=10, random_state=0, n_jobs=n_jobs),
                 lambda n_jobs: ICONEmbedding(random_state=0, n_jobs=n_jobs)):
        make(1).fit(X[:300])  # warm-up: torch's optimiser import, numba's cache
        times = {"n_jobs=None": [], "n_jobs=1": [], "n_jobs=-1": []}
        for _ in range(rounds):
            for key, n_jobs in (("n_jobs=None", None), ("n_jobs=1", 1), ("n_jobs=-1", -1)):
                start = time.perf_counter()
                est = make(n_jobs).fit(X)
                times[key].append(time.perf_counter() - start)
        _report(type(est).__name__, times)


def grid(rounds):
    """GridSearchCV with one and two workers, each in a fresh process."""
    times = {"n_jobs=1": [], "n_jobs=2": []}
    for _ in range(rounds):
        for key, n_jobs in (("n_jobs=1", 1), ("n_jobs=2", 2)):
            times[key].append(float(_python(_GRID.format(n_jobs=n_jobs))[1]))
    _report("GridSearchCV", times)


def imports(rounds):
    """Wall time of a fresh interpreter importing torch and sklearn, then skicon."""
    times = {"torch+sklearn": [], "skicon": []}
    for _ in range(max(rounds, 5)):
        times["torch+sklearn"].append(_python("import torch, sklearn")[0])
        times["skicon"].append(_python("import skicon")[0])
    base, full = min(times["torch+sklearn"]), min(times["skicon"])
    _report("import", times)
    print(f"import: min {base:.2f} s vs {full:.2f} s, skicon costs {full - base:+.2f} s beyond torch and sklearn")


def main(argv=None):
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["fit", "grid", "import"], choices=["fit", "grid", "import"])
    args = parser.parse_args(argv)
    for part in args.parts:
        {"fit": fits, "grid": grid, "import": imports}[part](args.rounds)


if __name__ == "__main__":
    main()
