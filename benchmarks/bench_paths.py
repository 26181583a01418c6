"""Benchmark: the PCA, MDS, SNE, Gaussian-q and 3-D paths of ICONEmbedding, side by side, one thread.

Every skicon row is the I-Con fit of its registry row; the references are scikit-learn's
``PCA`` (time and the subspace the PCA row must find) and ``TSNE(n_components=3)``.
Prints one table: data / method / wall time (min over ``--repeat`` runs) / ratio to the row's
reference / 10-NN accuracy (5-fold CV, as ``benchmarks.bench_embedding``) / largest principal
angle to sklearn's PCA subspace (PCA rows). All runs are in one process under one thread
(torch, numba loops, BLAS and OpenMP), so ratios are comparable on a shared machine.

Run ``python -m benchmarks.bench_paths`` (digits and MNIST-5k) or ``--quick`` (digits only).
"""

import argparse
import time

import numpy as np

from .bench_embedding import load


def knn_accuracy(Z, y):
    """10-NN accuracy, 5-fold CV (the measure of ``benchmarks.bench_embedding.quality``)."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(10), Z, y, cv=5).mean())


def _timed(fn, repeat):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _skicon(method="tsne", **kw):
    from skicon import ICONEmbedding

    def run(X):
        est = ICONEmbedding(method=method, random_state=0, n_jobs=1, **kw).fit(X)
        W = est.module_.weight().detach().numpy() if method == "pca" else None
        return est.embedding_, W

    return run


def _sk_pca(X):
    from sklearn.decomposition import PCA

    pca = PCA(2).fit(X)
    return pca.transform(X), pca.components_.T


def _sk_tsne3(X):
    from sklearn.manifold import TSNE

    return TSNE(n_components=3, init="pca", random_state=0).fit_transform(X), None


def cases(quick):
    """(data, name, runner, reference name) in the order printed."""
    from skicon.kernels import Gaussian

    out = [
        ("digits", "sklearn PCA", _sk_pca, None),
        ("digits", "pca", _skicon("pca"), "sklearn PCA"),
        ("digits", "tsne", _skicon("tsne"), None),
        ("digits", "sne", _skicon("sne"), "tsne"),
        ("digits", "tsne q=Gaussian()", _skicon("tsne", q=Gaussian()), "tsne"),
        ("digits", "mds", _skicon("mds"), "tsne"),
        ("digits", "tsne 3-D", _skicon("tsne", n_components=3), "tsne"),
    ]
    if not quick:
        out += [
            ("mnist5k", "sklearn TSNE 3-D", _sk_tsne3, None),
            ("mnist5k", "tsne 3-D", _skicon("tsne", n_components=3), "sklearn TSNE 3-D"),
        ]
    return out


def run(quick=False, repeat=2):
    """Run every case; returns rows of dicts."""
    from scipy.linalg import subspace_angles
    from threadpoolctl import threadpool_limits
    import torch

    torch.set_num_threads(1)
    data = {name: load(name) for name in ({"digits"} if quick else {"digits", "mnist5k"})}
    rows, times, pca_ref = [], {}, {}
    with threadpool_limits(1):
        _skicon("tsne", max_iter=20)(data["digits"][0][:200])  # compile the numba loops once
        _skicon("tsne", max_iter=20, n_components=3)(data["digits"][0][:200])
        _skicon("sne", max_iter=20)(data["digits"][0][:200])
        for dname, name, fn, ref in cases(quick):
            X, y = data[dname]
            X = np.asarray(X, dtype=np.float64)
            wall, (Z, W) = _timed(lambda: fn(X), repeat)
            times[(dname, name)] = wall
            if name == "sklearn PCA":
                pca_ref[dname] = W
            angle = float(np.degrees(subspace_angles(W, pca_ref[dname])).max()) if W is not None else None
            ratio = wall / times[(dname, ref)] if ref is not None else None
            rows.append(dict(data=dname, method=name, time_s=wall, ratio=ratio, reference=ref,
                             knn_acc=knn_accuracy(Z, y), angle_deg=angle))
            print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(r):
    ratio = f"{r['ratio']:.2f}x {r['reference']}" if r["ratio"] is not None else ""
    angle = f"{r['angle_deg']:.4f}" if r["angle_deg"] is not None else ""
    return f"{r['data']:<8} {r['method']:<20} {r['time_s']:8.2f} s  {ratio:<28} knn={r['knn_acc']:.4f}  {angle}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only")
    parser.add_argument("--repeat", type=int, default=2, help="runs per case (the minimum is reported)")
    args = parser.parse_args(argv)
    print(f"{'data':<8} {'method':<20} {'time':>10}  {'ratio':<28} {'10-NN acc':<12} angle to sklearn PCA (deg)")
    run(quick=args.quick, repeat=args.repeat)


if __name__ == "__main__":
    main()
