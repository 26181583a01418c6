"""The CUDA path: every estimator fitted and used on a GPU (``pytest -m cuda`` on a GPU machine).

Skipped without CUDA. Covers fit / transform / predict on ``device="cuda"`` for every
estimator, the exact torch kNN on the GPU, a CUDA-fitted model unpickled and used in a process
that sees no GPU, float32 against float64 input, CUDA against CPU, and repeated fits.
Tolerances: the GPU's float32 reductions (atomics in ``index_add``, cuBLAS) differ from the
CPU's in the last bits, and a few hundred optimiser steps amplify that to ~1e-4 relative.
"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from skicon import ICONClassifier, ICONClustering, ICONContrastive, ICONEmbedding

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=600, centers=4, n_features=10, cluster_std=1.0, random_state=0)
    return X, y


def _on_cuda(module):
    return all(p.device.type == "cuda" for p in module.parameters())


def _make(name):
    """A short CUDA fit of each estimator (``name`` -> unfitted estimator, fit args)."""
    if name == "tsne":
        return ICONEmbedding(perplexity=20, max_iter=300, random_state=0, device="cuda"), False
    if name == "parametric":
        return ICONEmbedding(perplexity=20, mapper="mlp", max_iter=200, random_state=0, device="cuda"), False
    if name == "clustering":
        return ICONClustering(n_clusters=4, mapper="mlp", n_init=2, max_iter=300, random_state=0, device="cuda"), False
    if name == "contrastive":
        return ICONContrastive(n_components=4, batch_size=128, max_iter=10, random_state=0, device="cuda"), True
    if name == "classifier":
        return ICONClassifier(batch_size=128, max_iter=10, random_state=0, device="cuda"), True
    raise AssertionError(name)


ALL = ["tsne", "parametric", "clustering", "contrastive", "classifier"]


def _use(est, X):
    """What a fitted estimator gives on new data (transform, and predict where there is one)."""
    out = [est.transform(X)] if hasattr(est, "transform") else []
    if hasattr(est, "predict"):
        out.append(np.asarray(est.predict(X), dtype=np.float64))
    return out


def _fit(name, X, y):
    est, supervised = _make(name)
    return est.fit(X, y) if supervised else est.fit(X)


@pytest.fixture(scope="module")
def fitted(blobs):
    """One CUDA fit of each estimator, shared by the tests below (GPU time is scarce)."""
    X, y = blobs
    return {name: _fit(name, X, y) for name in ALL}


@pytest.mark.parametrize("name", ALL)
def test_fit_transform_predict_on_cuda(blobs, fitted, name):
    X, y = blobs
    est = fitted[name]
    if hasattr(est, "device_"):
        assert str(est.device_).startswith("cuda")
    if getattr(est, "module_", None) is not None and name != "clustering":
        assert _on_cuda(est.module_)
    for out in _use(est, X[:50]):
        assert np.all(np.isfinite(out)) and out.shape[0] == 50
    assert np.isfinite(est.loss_)
    if name == "clustering":
        assert adjusted_rand_score(y, est.labels_) > 0.9  # four well separated blobs
    if name == "classifier":
        assert est.score(X, y) > 0.9


def test_torch_knn_on_cuda_is_exact():
    from sklearn.neighbors import NearestNeighbors

    from skicon.neighbors import knn_graph, search_device, torch_knn

    rng = np.random.RandomState(0)
    X = rng.randn(3000, 40)
    idx, dist = torch_knn(X, X[:500], 15, device="cuda")
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=15, algorithm="brute").fit(X).kneighbors(X[:500])
    np.testing.assert_array_equal(idx, ref_idx)
    # scikit-learn's distances come from the |a|^2 + |b|^2 - 2 a.b expansion: ~1e-7 off near 0
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-9, atol=1e-6)
    with search_device("cuda"):  # what an estimator fitted on CUDA searches with
        g = knn_graph(X, 15)
    np.testing.assert_array_equal(g.indices, knn_graph(X, 15, method="exact").indices)


def test_cuda_models_unpickle_without_a_gpu(blobs, fitted, tmp_path):
    X, _ = blobs
    np.save(tmp_path / "X.npy", X[:40])
    for name in ALL:
        (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps(fitted[name]))
    # A process that sees no GPU: torch refuses CUDA storages there, so this fails unless the
    # models were pickled on the CPU.
    code = (
        "import pickle, sys, numpy as np, torch\n"
        "assert not torch.cuda.is_available()\n"
        f"X = np.load({str(tmp_path / 'X.npy')!r})\n"
        f"for name in {ALL!r}:\n"
        f"    est = pickle.loads(open({str(tmp_path)!r} + f'/{{name}}.pkl', 'rb').read())\n"
        "    if 'device' in est.get_params() and est.get_params()['device'] != 'cpu':\n"
        "        est.set_params(device='cpu')\n"
        "    out = [est.transform(X)] if hasattr(est, 'transform') else []\n"
        "    if hasattr(est, 'predict'): out.append(np.asarray(est.predict(X), dtype=np.float64))\n"
        f"    np.save({str(tmp_path)!r} + f'/{{name}}_out.npy', np.concatenate([o.ravel() for o in out]))\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ALL:
        got = np.load(tmp_path / f"{name}_out.npy")
        want = np.concatenate([o.ravel() for o in _use(fitted[name], X[:40])])
        if name == "tsne":  # new points placed by an optimisation: CPU and GPU float32 sums differ
            np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * np.abs(want).max(), err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("name", ["parametric", "contrastive", "classifier"])
def test_float32_and_float64_input_agree(blobs, fitted, name):
    X, y = blobs
    est = fitted[name]
    z64 = est.transform(X[:100])
    z32 = est.transform(X[:100].astype(np.float32))
    np.testing.assert_allclose(z32, z64, rtol=1e-4, atol=1e-4 * np.abs(z64).max())
    est32 = _fit(name, X.astype(np.float32), y)
    np.testing.assert_allclose(est32.transform(X[:100]), z64, rtol=1e-3, atol=1e-3 * np.abs(z64).max())


def test_tsne_on_cuda_matches_cpu(blobs, fitted):
    X, _ = blobs
    gpu = fitted["tsne"]
    cpu = ICONEmbedding(perplexity=20, max_iter=300, random_state=0, device="cpu").fit(X)
    # different float32 backends (torch on the GPU, compiled loops on the CPU): the same
    # optimum, not the same bits
    assert gpu.kl_divergence_ == pytest.approx(cpu.kl_divergence_, rel=0.05)


@pytest.mark.parametrize("name", ALL)
def test_repeated_cuda_fits_agree(blobs, fitted, name):
    X, y = blobs
    runs = [fitted[name], _fit(name, X, y)]
    if name == "clustering":
        assert adjusted_rand_score(runs[0].labels_, runs[1].labels_) > 0.99
        return
    a, b = runs[0].transform(X[:100]), runs[1].transform(X[:100])
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(a).max())
