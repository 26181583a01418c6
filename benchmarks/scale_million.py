"""A million points: skicon t-SNE and ICONClustering on N MNIST-1D points, and openTSNE at 200,000.

Each fit runs in a fresh Python process (``--stage``), so its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, read at the end of the child) is its own. The
data are generated once and cached as ``.npy`` files (``--cache``): MNIST-1D's generator loops
over samples in Python (about 0.2 ms each), so the N points are made by ``--workers``
processes, each a ``mnist1d.data.make_dataset`` call with its own seed (each chunk standardised
by the generator itself; the chunks follow the same distribution). Nothing is downloaded.

What is printed, one row per fit: wall time (the fit alone, data loaded before the clock
starts), peak RSS of the process, and the 10-NN accuracy (5-fold cross-validation) on a fixed
random subsample of 10,000 points of the result. The openTSNE row and skicon's t-SNE at the same
200,000 points give the time ratio (skicon / openTSNE) and the accuracy difference.

Memory, by reading the code paths: the kNN graph is pynndescent's above ``knn_graph``'s
``EXACT_COST_LIMIT``, ``p`` is a CSR matrix of n x 3*perplexity entries, calibrated in blocks of
rows and normalised in place; t-SNE's joint ``p`` (``P + P^T``, float64, ``affinities_``) is
held once more by the engine as int32 column indices and float32 values (``SparseAffinity``,
8 bytes per edge, and its upper triangle for the attraction, 4 more; the int64 edge lists only
the torch code needs are not built on the compiled CPU path);
repulsion is the FFT grid (``mode="auto"`` for 2-D maps above a few thousand points).
ICONClustering trains on minibatches of the sparse ``p`` and evaluates its loss and assignments
over whole rows in chunks of anchors (``whole_row_loss``, never a COO copy of ``p``). Nothing is n x n.

Run ``python -m benchmarks.scale_million [--n 1000000] [--n-opentsne 200000] [--n-jobs 2]``;
``--only tsne,clustering,opentsne`` picks rows.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SUBSAMPLE = 10_000
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _mnist1d_chunk(args):
    n, seed = args
    from mnist1d.data import get_dataset_args, make_dataset

    cfg = get_dataset_args()
    cfg.num_samples = n
    cfg.seed = seed
    data = make_dataset(cfg)
    X = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    return X, np.concatenate([data["y"], data["y_test"]]).astype(np.int64)


def mnist1d(n, *, workers=None, cache=None, chunk=50_000):
    """``n`` MNIST-1D points (float32, 40 features) and labels, generated in parallel and cached.

    Parameters
    ----------
    n : int
        Number of points.
    workers : int, default=None
        Generator processes (all CPUs when None).
    cache : str or Path, default=None
        Folder of the cached ``.npy`` files; no caching when None.
    chunk : int, default=50000
        Points per generator call (one seed each; the first chunk uses MNIST-1D's default seed).

    Returns
    -------
    X : ndarray of shape (n, 40), float32
    y : ndarray of shape (n,), int64
    """
    if cache is not None:
        cache = Path(cache)
        fx, fy = cache / f"mnist1d_{n}_X.npy", cache / f"mnist1d_{n}_y.npy"
        if fx.exists() and fy.exists():
            return np.load(fx), np.load(fy)
    sizes = [min(chunk, n - s) for s in range(0, n, chunk)]
    # make_dataset gives num_samples // 10 per class: ask for a multiple of 10 and cut
    jobs = [(int(np.ceil(size / 10) * 10), 42 + i) for i, size in enumerate(sizes)]
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            parts = list(pool.map(_mnist1d_chunk, jobs))
    else:
        parts = [_mnist1d_chunk(job) for job in jobs]
    X = np.concatenate([p[0][:size] for p, size in zip(parts, sizes)])
    y = np.concatenate([p[1][:size] for p, size in zip(parts, sizes)])
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(fx, X)
        np.save(fy, y)
    return X, y


def knn_accuracy(Z, y, n_sub=SUBSAMPLE, seed=0):
    """10-NN accuracy (5-fold CV) on a fixed random subsample of ``n_sub`` points."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    sub = np.random.RandomState(seed).permutation(len(y))[:n_sub]
    return float(cross_val_score(KNeighborsClassifier(10), Z[sub], y[sub], cv=5).mean())


def peak_rss_mib():
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# stages (each in its own process)
# ---------------------------------------------------------------------------------------------
def stage(name, X, y, *, n_jobs, device="cpu"):
    """Run one fit; return its row (seconds, peak RSS, accuracy)."""
    start = time.perf_counter()
    if name == "tsne":
        from skicon import ICONEmbedding

        est = ICONEmbedding(random_state=0, n_jobs=n_jobs, device=device)
        Z = est.fit_transform(X)
        extra = {"mode": est.mode_, "finite": bool(np.isfinite(Z).all())}
    elif name == "opentsne":
        from openTSNE import TSNE

        Z = np.asarray(TSNE(n_jobs=n_jobs, random_state=0).fit(X))
        extra = {}
    elif name == "clustering":
        from skicon import ICONClustering
        from skicon.metrics import hungarian_accuracy

        est = ICONClustering(n_clusters=10, random_state=0, n_jobs=n_jobs, device=device)
        labels = est.fit_predict(X)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "accuracy": hungarian_accuracy(y, labels),
                "metric": "Hungarian accuracy"}
    else:
        raise ValueError(f"unknown stage {name!r}")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "accuracy": knn_accuracy(Z, y),
            "metric": "10-NN accuracy", **extra}


def run_stage(name, n, *, cache, n_jobs, device="cpu", timeout=None, module="benchmarks.scale_million"):
    """Run ``stage`` in a fresh process; its JSON row (or an error row)."""
    cmd = [sys.executable, "-m", module, "--stage", name, "--n", str(n), "--cache", str(cache),
           "--n-jobs", str(n_jobs), "--device", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}


def main(argv=None):
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--n-opentsne", type=int, default=200_000)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--only", default="tsne,clustering,opentsne")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "skicon-bench"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.stage is not None:  # child: load the cached data, fit, print one JSON line
        X, y = mnist1d(args.n, cache=args.cache)
        print(json.dumps(stage(args.stage, X, y, n_jobs=args.n_jobs, device=args.device)))
        return

    only = set(args.only.split(","))
    plan = []
    if "tsne" in only:
        plan.append(("skicon t-SNE", "tsne", args.n))
    if "clustering" in only:
        plan.append(("ICONClustering", "clustering", args.n))
    if "opentsne" in only:
        if "tsne" not in only or args.n != args.n_opentsne:
            plan.append(("skicon t-SNE", "tsne", args.n_opentsne))
        plan.append(("openTSNE", "opentsne", args.n_opentsne))
    start = time.perf_counter()
    for n in sorted({n for _, _, n in plan}):
        mnist1d(n, cache=args.cache)
    print(f"data ready in {time.perf_counter() - start:.0f} s (cache {args.cache}); machine: {os.cpu_count()} CPUs, "
          f"n_jobs={args.n_jobs}")
    rows = []
    print(f"{'fit':16s} {'n':>9s} {'seconds':>9s} {'peak RSS':>10s} {'accuracy':>9s}  metric")
    for label, name, n in plan:
        row = run_stage(name, n, cache=args.cache, n_jobs=args.n_jobs, device=args.device)
        rows.append((label, name, n, row))
        if "error" in row:
            print(f"{label:16s} {n:9d}  failed: {row['error']}")
        else:
            print(f"{label:16s} {n:9d} {row['seconds']:9.1f} {row['peak_rss_mib'] / 1024:8.2f} GiB "
                  f"{row['accuracy']:9.3f}  {row['metric']}")
    pair = {name: row for _, name, n, row in rows if n == args.n_opentsne and "error" not in row}
    if {"tsne", "opentsne"} <= set(pair):
        print(f"at {args.n_opentsne} points: time ratio skicon / openTSNE = "
              f"{pair['tsne']['seconds'] / pair['opentsne']['seconds']:.2f}, 10-NN accuracy difference "
              f"{pair['tsne']['accuracy'] - pair['opentsne']['accuracy']:+.3f}")


if __name__ == "__main__":
    main()
