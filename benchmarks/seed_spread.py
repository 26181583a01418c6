"""Seed spread of ICONClustering: one fit per ``random_state``, its accuracy and its ``loss_``.

The figures of the polish's sections of the benchmarks page (seeds beyond the five of
``bench_clustering``/``bench_pretrained``) come from this script: for each seed, the Hungarian
accuracy, ``loss_`` (the row's loss over all samples; lower is a better optimum of the
objective), ``polish_rounds_`` and the wall time, then the mean ± standard deviation. Each fit
runs alone in this process, one after the other.

Data: ``digits``, ``mnist5k`` and ``mnist1d`` as in ``bench_clustering``; ``f-digits`` and
``f-mnist5k``, the L2-normalised EfficientNet-Lite0 features of ``bench_pretrained`` (they need
the ``bench`` extra, or the cached features).

Run: ``python benchmarks/seed_spread.py DATA FIRST STOP ['{"param": value}'] [--vote 3,5]``, for
example ``python benchmarks/seed_spread.py mnist5k 0 20`` (seeds 0-19, the defaults) or
``python benchmarks/seed_spread.py f-digits 0 10 '{"polish": 0}'``. ``--vote 3,5`` then prints
the majority vote of each cyclic window of 3 (and of 5) consecutive fits, each fit's clusters
matched to the window's first (:func:`skicon._cluster_heads.match_clusters`): the figures of
the vote of separate fits that ``n_ensemble`` builds into the estimator.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def data(name):
    """``(X, y)`` of a data set of ``bench_clustering`` or, with an ``f-`` prefix, of ``bench_pretrained``."""
    if name.startswith("f-"):
        from benchmarks.bench_pretrained import features

        return features(name[2:], log=lambda *args: None)
    from benchmarks.bench_clustering import load

    return load(name)


def main(argv=None):
    """Fit one ICONClustering per seed and print each fit's figures and the summary."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3:
        raise SystemExit(__doc__)
    from skicon import ICONClustering
    from skicon.metrics import hungarian_accuracy

    sizes = []
    if "--vote" in argv:
        at = argv.index("--vote")
        sizes = [int(v) for v in argv[at + 1].split(",")]
        argv = argv[:at] + argv[at + 2 :]
    name, first, stop = argv[0], int(argv[1]), int(argv[2])
    params = json.loads(argv[3]) if len(argv) > 3 else {}
    X, y = data(name)
    accs, fits = [], []
    for seed in range(first, stop):
        start = time.perf_counter()
        est = ICONClustering(10, random_state=seed, **params).fit(X)
        elapsed = time.perf_counter() - start
        accs.append(hungarian_accuracy(y, est.labels_))
        fits.append(est.labels_)
        print(f"{name} seed {seed}: accuracy {accs[-1]:.3f}  loss_ {est.loss_:.5f}  "
              f"polish_rounds_ {getattr(est, 'polish_rounds_', 0)}  {elapsed:.1f} s", flush=True)
    print(f"{name} {params}: accuracy {np.mean(accs):.3f} +- {np.std(accs):.3f} over seeds {first}-{stop - 1}",
          np.round(accs, 3).tolist())
    for size in sizes:
        votes = [hungarian_accuracy(y, vote([fits[(i + j) % len(fits)] for j in range(size)]))
                 for i in range(len(fits))]
        print(f"{name} {params}: vote of {size} consecutive fits (cyclic windows): accuracy "
              f"{np.mean(votes):.3f} +- {np.std(votes):.3f}", np.round(votes, 3).tolist())


def vote(labelings):
    """Majority vote of hard labelings, each matched to the first's clusters (ties: the lowest)."""
    from skicon._cluster_heads import match_clusters

    k = 1 + max(int(labels.max()) for labels in labelings)
    counts = np.zeros((len(labelings[0]), k))
    for labels in labelings:
        order = match_clusters(labelings[0], labels, k)  # order[c]: the cluster of labels matched to c
        counts[np.arange(len(labels)), np.argsort(order)[labels]] += 1
    return counts.argmax(axis=1)


if __name__ == "__main__":
    main()
