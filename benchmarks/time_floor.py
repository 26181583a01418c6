"""Where the time of ICONClustering goes at 20,000 points, against KMeans(n_init=10).

Issue 14 asks for at most 2x KMeans(n_init=10) at 20,000 points. This script measures, in one
run on MNIST-1D 20k (40 features, ``bench_clustering.load("mnist1d")``):

- ``KMeans(n_init=10)``, the reference;
- the bare float32 distance product ``X @ X.T`` in row blocks, the work every exact k-nearest
  neighbour search of all points must do, before any selection;
- the exact 10-nearest-neighbour graph of :func:`skicon.neighbors.knn_graph` (what p is built
  from) and pynndescent's approximate one (the search above ``EXACT_COST_LIMIT``);
- ICONClustering with the cheapest settings (one fit, one restart, no joins, no polish, 100
  steps), with one fit of the default settings (``n_ensemble=1``), and with its defaults.

The product and the two searches run under the thread limits a fit with ``n_jobs=None`` sets
(:class:`skicon._threads.thread_limits` with the size of X), so they get the threads they get
inside the fit; outside any limit the compiled search runs on one thread. Each step runs once
untimed (imports, numba's compilation, joblib's workers), then is timed ``--repeat`` times; the
median is reported, with its ratio to KMeans' median. One process, the machine's threads (set
``OMP_NUM_THREADS`` to change them). The table goes to ``benchmarks/results/time_floor.{json,md}``.

Run: ``python benchmarks/time_floor.py [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The cheapest ICONClustering settings timed (one fit, one restart, no joins, no polish).
CHEAPEST = dict(n_ensemble=1, n_init=1, overclustering=1, polish=0, max_iter=100)


def distance_product(X, rows=2048):
    """The float32 products ``X[block] @ X.T`` of every row block (the result is dropped)."""
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    for r0 in range(0, X32.shape[0], rows):
        X32[r0 : r0 + rows] @ X32.T


def steps_of(X):
    """``[(name, run(seed))]``: the steps timed, KMeans first."""
    from sklearn.cluster import KMeans

    from skicon import ICONClustering
    from skicon._threads import thread_limits
    from skicon.neighbors import knn_graph

    def as_in_fit(run):  # the limits a fit with n_jobs=None runs under (its @limit_threads)
        def limited(seed):
            with thread_limits(None, size=X.size):
                return run(seed)

        return limited

    def icon(**params):
        return lambda s: ICONClustering(10, random_state=s, **params).fit(X).labels_

    return [
        ("KMeans(n_init=10)", lambda s: KMeans(10, n_init=10, random_state=s).fit(X).labels_),
        ("distance product X @ X.T (float32, row blocks)", as_in_fit(lambda s: distance_product(X))),
        ("exact 10-NN graph (skicon.neighbors.knn_graph)", as_in_fit(lambda s: knn_graph(X, 10, method="exact"))),
        ("pynndescent 10-NN graph (after its compilation)",
         as_in_fit(lambda s: knn_graph(X, 10, method="pynndescent", random_state=s))),
        ("ICONClustering, cheapest " + ", ".join(f"{k}={v}" for k, v in CHEAPEST.items()), icon(**CHEAPEST)),
        ("ICONClustering, one fit (n_ensemble=1)", icon(n_ensemble=1)),
        ("ICONClustering, defaults", icon()),
    ]


def measure(X, y, repeat, log=print):
    """Rows ``[step, median seconds, ratio to KMeans, accuracy, ARI, the times]`` (text cells)."""
    from sklearn.metrics import adjusted_rand_score

    from skicon.metrics import hungarian_accuracy

    def spread(values):
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else ""

    rows, medians = [], []
    for name, run in steps_of(X):
        times, accs, aris = [], [], []
        run(repeat)  # untimed warm-up: imports, compilation, workers
        for seed in range(repeat):
            start = time.perf_counter()
            out = run(seed)
            times.append(time.perf_counter() - start)
            if isinstance(out, np.ndarray) and out.shape == y.shape:
                accs.append(hungarian_accuracy(y, out))
                aris.append(adjusted_rand_score(y, out))
        medians.append(float(np.median(times)))
        rows.append([name, f"{medians[-1]:.2f}", "", spread(accs), spread(aris), ", ".join(f"{t:.2f}" for t in times)])
        log(f"{name}: median {medians[-1]:.2f} s of {rows[-1][-1]}")
    for row, median in zip(rows, medians):
        row[2] = f"{median / medians[0]:.1f}"
    return rows


def main(argv=None):
    """Time each step, print the table and write ``results/time_floor.{json,md}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    from benchmarks._report import machine_info, to_markdown, write_record
    from benchmarks.bench_clustering import load

    start = time.perf_counter()
    X, y = load("mnist1d")
    rows = measure(X, y, args.repeat, log=lambda line: print(line, flush=True))
    result = {
        "title": "Where the time of ICONClustering goes at 20,000 points",
        "description": f"MNIST-1D {X.shape[0]} x {X.shape[1]}, ten clusters; medians of {args.repeat} timed runs "
                       "after one untimed warm-up run each, in one process (benchmarks/time_floor.py).",
        "tables": [{"columns": ["step", "time (s)", "/ KMeans", "Hungarian acc", "ARI",
                                f"the {args.repeat} times (s)"],
                    "rows": rows}],
        "notes": [f"torch threads: {torch.get_num_threads()}",
                  "The product and the searches run under the thread limits of a fit with n_jobs=None."],
    }
    record = {"name": "time_floor", "command": "python benchmarks/time_floor.py " + " ".join(sys.argv[1:]),
              "quick": False, "wall_time_s": time.perf_counter() - start, "result": result,
              "machine": machine_info()}
    path = write_record(record)
    path.with_suffix(".md").write_text(to_markdown([record]), encoding="utf-8")
    print(to_markdown([record]))


if __name__ == "__main__":
    main()
