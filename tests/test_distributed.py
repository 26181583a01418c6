"""Multi-process training on torch.distributed (skicon._distributed) against one process.

Two ``gloo`` processes on this machine (started by the test, ``file://`` rendezvous) must give the
loss and the gradients of one process on the same global batch (float64, to 1e-6), and, for short
deterministic fits, the same fitted estimators (float32 training: the ranks' shares of a batch go
through separate matrix products, so they differ from one process only in float32 rounding). The
workers run every scenario in one launch (a torch import per process is most of the cost).
"""

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from skicon import ICONClassifier, ICONClustering, ICONContrastive, ICONEmbedding
from skicon._distributed import ShardedModule, from_rank0, gather_rows, is_active, shard_bounds, world

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
M = 37  # odd: the two shares differ by one row


# ---------------------------------------------------------------------------------------------
# The scenarios: run in the workers under torch.distributed and in this process without it
# ---------------------------------------------------------------------------------------------
def _batch():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(M, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (M,), generator=g)
    return X, labels


def _gradient_cases(wrap):
    """Loss and parameter gradients of three objectives on one global batch (float64)."""
    from skicon._classifier import _PrototypeClassifier
    from skicon._cluster_heads import FusedHeads
    from skicon.kernels import Cosine, StudentT
    from skicon.mappers import make_mapper
    from skicon.objectives import icon_loss
    from skicon.objectives._batch import contrastive_loss, cross_entropy_block, positive_pairs_block
    from skicon.objectives._cluster import cluster_kernel_loss

    X, labels = _batch()
    out = {}

    def run(name, module, loss_fn):
        module = module.double()
        mod = wrap(module)
        loss = loss_fn(mod)
        loss.backward()
        out[name] = (float(loss.detach()), [p.grad.detach().clone().numpy() for p in module.parameters()
                                            if p.grad is not None])
        if isinstance(mod, ShardedModule):
            mod.close()

    # SupCon / InfoNCE block over the global batch (Cosine q, debiased p).
    enc = make_mapper("mlp", 6, 3, hidden=(8,), random_state=0)
    p, nc = positive_pairs_block(labels, dtype=torch.float64)
    run("contrastive", enc, lambda mod: contrastive_loss(mod(X), p, nc, Cosine(temperature=0.5), alpha=0.1))

    # The clustering rows' forward loss: two fused heads, outputs (heads, rows, clusters).
    heads = FusedHeads([make_mapper("mlp", 6, 3, hidden=(8,), random_state=r) for r in range(2)])
    rows = torch.arange(M)
    cols = torch.roll(rows, 1)
    vals = torch.ones(M, dtype=torch.float64)
    run("cluster", heads, lambda mod: cluster_kernel_loss(mod(X), rows, cols, vals, alpha=0.2).mean())

    # Cross-entropy against prototypes used outside the forward pass.
    clf = _PrototypeClassifier(make_mapper("mlp", 6, 3, hidden=(8,), random_state=0), 4, 3,
                               torch.Generator().manual_seed(1))

    def ce(mod):
        log_q = StudentT().log_prob(mod(X), mod.prototypes)
        return icon_loss(cross_entropy_block(labels, 4, 0.1, dtype=torch.float64), log_q)

    run("classifier", clf, ce)
    return out


def _data():
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.randn(30, 5) + 3 * c for c in range(3)])
    return X, np.repeat(np.arange(3), 30)


def _fits():
    """Short deterministic fits of the four minibatch estimators."""
    X, y = _data()
    out = {}
    con = ICONContrastive(n_components=3, hidden_layer_sizes=(16,), batch_size=25, max_iter=3, random_state=0,
                          device="cpu").fit(X, y)
    out["contrastive"] = con.transform(X)
    out["contrastive_pickle"] = pickle.dumps(con)
    clu = ICONClustering(n_clusters=3, mapper="mlp", hidden_layer_sizes=(16,), n_init=2, batch_size=31,
                         max_iter=40, random_state=0).fit(X)
    out["clustering"] = (clu.labels_, clu.predict_proba(X))
    clf = ICONClassifier(hidden_layer_sizes=(16,), batch_size=25, max_iter=3, random_state=0).fit(X, y)
    out["classifier"] = clf.predict_proba(X)
    emb = ICONEmbedding(method="sne", q=_cosine(), perplexity=5, mapper="mlp", batch_size=31, max_iter=15,
                        random_state=0).fit(X)
    out["embedding"] = emb.embedding_
    return out


def _cosine():
    from skicon.kernels import Cosine

    return Cosine()


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        result = {"active": is_active(), "world": world(), "from_rank0": from_rank0(f"rank {rank}")}
        result["grads"] = _gradient_cases(lambda module: ShardedModule(module, "cpu"))
        result["fits"] = _fits()
        try:  # random_state=None: each process draws its own seed, which the Trainer refuses
            ICONContrastive(n_components=2, batch_size=20, max_iter=1, random_state=None).fit(*_data())
            result["unseeded"] = None
        except ValueError as exc:
            result["unseeded"] = str(exc)
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as fh:
            pickle.dump(result, fh)
        # both ranks done before either closes its connections: a rank that tears the group down
        # while the other still talks to it can abort the other ("terminate called ...")
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks():
    """Run the two workers once; their results by rank."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
        init_file = os.path.join(tmp, "rendezvous")
        procs = [subprocess.Popen([sys.executable, "-c", f"import test_distributed as t; t._worker({r}, "
                                   f"{init_file!r}, {tmp!r})"], env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(WORLD)]
        logs = []
        try:
            for proc in procs:
                logs.append(proc.communicate(timeout=300)[0].decode(errors="replace"))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        for proc, log in zip(procs, logs):
            assert proc.returncode == 0, log[-3000:]
        results = []
        for r in range(WORLD):
            with open(os.path.join(tmp, f"rank{r}.pkl"), "rb") as fh:
                results.append(pickle.load(fh))
    return results


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_shard_bounds_cover_the_batch():
    for n in (0, 1, 5, 37):
        for size in (1, 2, 3):
            bounds = shard_bounds(n, size)
            assert bounds[0] == 0 and bounds[-1] == n and np.all(np.diff(bounds) >= 0)
            assert np.diff(bounds).max() - np.diff(bounds).min() <= 1


def test_single_process_is_not_distributed():
    assert not is_active() and world() == (0, 1)
    with pytest.raises(Exception):  # collectives need an initialised process group
        gather_rows(torch.zeros(2, 1), shard_bounds(2, 1))


def test_workers_ran_distributed(ranks):
    assert [r["world"] for r in ranks] == [(0, WORLD), (1, WORLD)]
    assert all(r["active"] for r in ranks)
    assert [r["from_rank0"] for r in ranks] == ["rank 0"] * WORLD  # p is taken from rank 0


@pytest.mark.parametrize("case", ["contrastive", "cluster", "classifier"])
def test_loss_and_gradients_match_one_process(ranks, case):
    loss_1, grads_1 = _gradient_cases(lambda module: module)[case]
    for r in ranks:
        loss_n, grads_n = r["grads"][case]
        assert loss_n == pytest.approx(loss_1, rel=1e-6, abs=1e-9)
        assert len(grads_n) == len(grads_1)
        for g_n, g_1 in zip(grads_n, grads_1):
            np.testing.assert_allclose(g_n, g_1, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["contrastive", "clustering", "classifier", "embedding"])
def test_ranks_end_with_the_same_model(ranks, name):
    a, b = ranks[0]["fits"][name], ranks[1]["fits"][name]
    for x, z in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        np.testing.assert_array_equal(x, z)


@pytest.fixture(scope="module")
def single():
    return _fits()


@pytest.mark.parametrize("name", ["contrastive", "classifier", "embedding"])
def test_fit_matches_one_process(ranks, single, name):
    # float32 training (float64 for the embedding's dense path): a few Adam steps move the
    # rounding of the split matrix products by far less than 1e-4.
    np.testing.assert_allclose(ranks[0]["fits"][name], single[name], rtol=1e-4, atol=1e-5)


def test_clustering_matches_one_process(ranks, single):
    labels, proba = ranks[0]["fits"]["clustering"]
    np.testing.assert_array_equal(labels, single["clustering"][0])
    np.testing.assert_allclose(proba, single["clustering"][1], rtol=1e-4, atol=1e-5)


def test_fitted_model_unpickles_without_torch_distributed(ranks, single):
    est = pickle.loads(ranks[0]["fits"]["contrastive_pickle"])
    assert not is_active()
    np.testing.assert_allclose(est.transform(_data()[0]), ranks[0]["fits"]["contrastive"], rtol=1e-6, atol=1e-7)
    assert "DistributedDataParallel" not in repr(est.module_)


def test_unseeded_ranks_are_refused(ranks):
    for r in ranks:
        assert r["unseeded"] is not None and "integer random_state" in r["unseeded"]
