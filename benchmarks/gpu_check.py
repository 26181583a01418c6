"""GPU check: the CUDA path end to end in at most five minutes on one GPU, as one table.

Rows (each fit in a fresh process, with a share of the time budget; a row that runs out of time
says so instead of stopping the table):

* t-SNE (``ICONEmbedding``) of 70,000 and of 1,000,000 MNIST-1D points on the GPU: seconds and
  10-NN accuracy (5-fold CV on a fixed subsample of 10,000 points);
* exact kNN (k = 90, t-SNE's 3 x perplexity) of the 70,000 points: ``torch_knn`` on the GPU
  against pynndescent on the CPU (all cores; its first call includes numba's compilation),
  seconds and pynndescent's recall;
* contrastive training throughput (``ICONContrastive``, SupCon on labels, batch 1024) in
  samples per second, timed between the first and the last loss log (no set-up, no warm-up);
* ``ICONClustering`` of 1,000,000 points (10 clusters): seconds and Hungarian accuracy;
* the result of ``pytest -m cuda tests/test_cuda.py``.

The data are MNIST-1D generated on all CPUs (``benchmarks.scale_million.mnist1d``, cached).
``--cpu-smoke`` runs the same stages on the CPU at tiny sizes, in this process (a minute at
most), so that the script cannot rot; its figures mean nothing.

Run ``python -m benchmarks.gpu_check [--budget 300]`` on a GPU machine, or
``python -m benchmarks.gpu_check --cpu-smoke``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.scale_million import knn_accuracy, mnist1d

ROOT = Path(__file__).resolve().parents[1]

#: (label, stage, n) of the GPU run and of the CPU smoke run.
FULL = [("t-SNE", "tsne", 70_000), ("kNN k=90", "knn", 70_000), ("contrastive", "contrastive", 200_000),
        ("clustering", "clustering", 1_000_000), ("t-SNE", "tsne", 1_000_000)]
SMOKE = [("t-SNE", "tsne", 1_000), ("kNN k=90", "knn", 1_000), ("contrastive", "contrastive", 2_000),
         ("clustering", "clustering", 1_000), ("t-SNE", "tsne", 2_000)]


def stage(name, X, y, device, n_jobs):
    """One row (runs in a child process)."""
    import torch

    from skicon import ICONClustering, ICONContrastive, ICONEmbedding

    smoke = device == "cpu"
    start = time.perf_counter()
    if name == "tsne":
        est = ICONEmbedding(random_state=0, device=device, n_jobs=n_jobs, max_iter=60 if smoke else 750,
                            perplexity=10 if smoke else 30)
        Z = est.fit_transform(X)
        return {"seconds": time.perf_counter() - start, "accuracy": knn_accuracy(Z, y), "metric": "10-NN acc",
                "note": f"mode={est.mode_}"}
    if name == "knn":
        from skicon.neighbors import knn_graph, torch_knn

        k = 30 if smoke else 90
        t0 = time.perf_counter()
        idx, _ = torch_knn(X, X, k + 1, device=device)
        if device != "cpu":
            torch.cuda.synchronize()
        t_torch = time.perf_counter() - t0
        # the CPU reference: pynndescent on the GPU machine; the smoke run compares with the exact
        # search instead (pynndescent's numba compilation alone takes longer than the whole smoke run)
        reference = "exact" if smoke else "pynndescent"
        t0 = time.perf_counter()
        approx = knn_graph(X, k, method=reference, random_state=0, n_jobs=n_jobs).indices
        t_ref = time.perf_counter() - t0
        exact = idx[:, 1:]  # the point itself first (no duplicates in MNIST-1D's float data)
        recall = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(exact, approx)]))
        return {"seconds": t_torch, "accuracy": recall, "metric": f"{reference[:5]} recall",
                "note": f"{reference} (CPU, {n_jobs} jobs) {t_ref:.1f} s"}
    if name == "contrastive":
        stamps = []

        def clock(iteration, loss, est):
            if device != "cpu":
                torch.cuda.synchronize()
            stamps.append((iteration, time.perf_counter()))

        batch = 64 if smoke else 1024  # at least two loss logs (every 50 iterations) to time between
        est = ICONContrastive(n_components=16, batch_size=batch, max_iter=2, random_state=0,
                              device=device, callbacks=clock)
        est.fit(X, y)
        (i0, t0), (i1, t1) = stamps[0], stamps[-1]
        rate = (i1 - i0) * batch / (t1 - t0) if i1 > i0 else float("nan")
        return {"seconds": time.perf_counter() - start, "accuracy": knn_accuracy(est.transform(X), y),
                "metric": "10-NN acc", "note": f"{rate:,.0f} samples/s ({est.n_iter_} iterations)"}
    if name == "clustering":
        from skicon.metrics import hungarian_accuracy

        est = ICONClustering(n_clusters=10, random_state=0, device=device, n_jobs=n_jobs,
                             max_iter=50 if smoke else 400, n_init=1 if smoke else 8)
        labels = est.fit_predict(X)
        return {"seconds": time.perf_counter() - start, "accuracy": hungarian_accuracy(y, labels),
                "metric": "Hungarian acc", "note": ""}
    raise ValueError(f"unknown stage {name!r}")


def _child(name, n, cache, device, timeout):
    """Run one stage in a fresh process (its own memory, a time limit); its row."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--stage", name, "--n", str(n), "--cache", cache,
           "--device", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return rows[-1] if rows else {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}


def cuda_tests(timeout):
    """``pytest -m cuda`` on tests/test_cuda.py in a subprocess: its summary line."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s", time.perf_counter() - start
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith("FAILED")]
    return (lines[-1] if lines else proc.stderr[-200:]) + "".join(f"\n    {ln}" for ln in failed), \
        time.perf_counter() - start


def main(argv=None):
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole check")
    parser.add_argument("--cache", default=None, help="folder caching the generated data")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n_jobs = os.cpu_count() or 1

    if args.stage is not None:  # child
        X, y = mnist1d(args.n, cache=args.cache, workers=n_jobs)
        print(json.dumps(stage(args.stage, X, y, args.device, n_jobs)))
        return

    import torch

    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("No CUDA GPU here: run with --cpu-smoke to check the script on the CPU.")
    budget = args.budget or (60.0 if args.cpu_smoke else 300.0)
    deadline = time.perf_counter() + budget
    plan = SMOKE if args.cpu_smoke else FULL
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or tmp
        start = time.perf_counter()
        for n in sorted({n for _, _, n in plan}):
            mnist1d(n, cache=cache, workers=n_jobs)
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke run: sizes too small to mean anything)"
        print(f"device: {name}; torch {torch.__version__}; {n_jobs} CPUs; data in {time.perf_counter() - start:.0f} s")
        print(f"{'row':12s} {'n':>9s} {'seconds':>8s} {'score':>7s}  {'metric':14s} note")
        tests_share = 0.0 if args.skip_tests else (0.3 if not args.cpu_smoke else 0.35)
        for k, (label, name, n) in enumerate(plan):
            left = deadline - time.perf_counter() - tests_share * budget
            timeout = max(5.0, left / (len(plan) - k))
            if args.cpu_smoke:  # the same stage in this process: no process start-ups, no time limit
                try:
                    row = stage(name, *mnist1d(n, cache=cache), device, n_jobs)
                except Exception as exc:  # noqa: BLE001 (reported in the table)
                    row = {"error": f"{type(exc).__name__}: {exc}"}
            else:
                row = _child(name, n, cache, device, timeout)
            if "error" in row:
                print(f"{label:12s} {n:9d}  failed: {row['error']}")
            else:
                print(f"{label:12s} {n:9d} {row['seconds']:8.1f} {row['accuracy']:7.3f}  {row['metric']:14s} "
                      f"{row['note']}")
            sys.stdout.flush()
        if not args.skip_tests:
            summary, seconds = cuda_tests(max(120.0 if args.cpu_smoke else 60.0, deadline - time.perf_counter()))
            print(f"{'cuda tests':12s} {'':9s} {seconds:8.1f}  {summary}")


if __name__ == "__main__":
    main()
