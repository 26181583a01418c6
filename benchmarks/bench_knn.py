"""Benchmark: the neighbour graph of t-SNE (k = 91 with self), exact search against pynndescent.

For each data set, in one run: skicon's exact search (:mod:`skicon._knn_exact`: float32 products,
compiled top-k, float64 re-ranking), pynndescent with its defaults as skicon calls it, warm (its
numba code compiled by an earlier call in the same process) and cold (a fresh process: what a
script's first fit pays, since pynndescent's search cannot be cached on disk), and recall of
pynndescent's graph against the exact one. ``--threads`` sets the threads of both searches.

Run ``python -m benchmarks.bench_knn [--datasets ...] [--threads 2]``; writes
``benchmarks/results/knn.{json,md}``.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from .bench_embedding import RESULTS, load

K = 91  # perplexity 30: 90 neighbours plus the point itself

_COLD = """
import sys, time, numpy as np
X = np.load(sys.argv[1])
import pynndescent
t = time.perf_counter()
idx = pynndescent.NNDescent(X, n_neighbors={k}, random_state=0, n_jobs={threads}).neighbor_graph[0]
print(time.perf_counter() - t)
"""


def _pynndescent(X, threads):
    import pynndescent

    return pynndescent.NNDescent(X, n_neighbors=K, random_state=0, n_jobs=threads).neighbor_graph[0]


def _recall(found, exact):
    hits = sum(len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(found, exact))
    return hits / exact.size


def run(datasets, threads, cold=True):
    """Time each search per data set; returns the rows."""
    import threadpoolctl

    from skicon._knn_exact import euclidean_search
    from skicon._threads import thread_limits

    # compile (or load from the disk cache) skicon's loops, and compile pynndescent's, once
    warm = np.random.RandomState(0).rand(500, 8).astype(np.float32)
    euclidean_search(warm.astype(np.float64), warm.astype(np.float64), K)
    _pynndescent(warm, threads)
    rows = []
    for name in datasets:
        X, _ = load(name)
        X = np.ascontiguousarray(X, dtype=np.float32)
        row = {"dataset": name, "n": int(X.shape[0]), "d": int(X.shape[1])}
        with thread_limits(threads), threadpoolctl.threadpool_limits(threads):
            t = time.perf_counter()
            exact = euclidean_search(X.astype(np.float64), X.astype(np.float64), K)[0]
            row["exact_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        approx = _pynndescent(X, threads)
        row["pynndescent_warm_s"] = round(time.perf_counter() - t, 2)
        row["pynndescent_recall"] = round(_recall(approx[:, 1:], exact[:, 1:]), 4)
        if cold:
            path = os.path.join(RESULTS, f"_knn_{name}.npy")
            np.save(path, X)
            out = subprocess.run([sys.executable, "-c", _COLD.format(k=K, threads=threads), path],
                                 capture_output=True, text=True, check=True)
            os.remove(path)
            row["pynndescent_cold_s"] = round(float(out.stdout.split()[-1]), 2)
        print(row, flush=True)
        rows.append(row)
    return rows


def to_markdown(rows, threads):
    """The rows as a Markdown table."""
    lines = [f"# Neighbour graph benchmark (k = {K}, {threads} threads)", "",
             "| data set | n | d | exact (s) | pynndescent warm (s) | pynndescent cold (s) | pynndescent recall |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['n']} | {r['d']} | {r['exact_s']} | {r['pynndescent_warm_s']} | "
                     f"{r.get('pynndescent_cold_s', '')} | {r['pynndescent_recall']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=["mnist5k", "mnist1d", "blobs50k", "mnist1d70000"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-cold", action="store_true")
    args = ap.parse_args(argv)
    rows = run(args.datasets, args.threads, cold=not args.no_cold)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "knn.json"), "w") as fh:
        json.dump({"threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                   "rows": rows}, fh, indent=2)
    md = to_markdown(rows, args.threads)
    with open(os.path.join(RESULTS, "knn.md"), "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
