import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.datasets import load_digits, make_blobs

from skicon import get_method, list_methods
from skicon._cluster_heads import FusedHeads as _FusedHeads, Heads as _Heads, pruning_schedule as _pruning_schedule
from skicon._cluster_train import graph_degrees
from skicon._clustering import ICONClustering
from skicon._training import RowSampler
from skicon.kernels import ClusterKernel, Debiased, Graph, normalize_rows
from skicon.objectives import icon_loss
from skicon.objectives._cluster import (
    cluster_kernel_loss, exp_graph_log_p, probabilistic_kmeans_loss, reverse_cluster_loss, temi_loss,
)
from skicon.mappers import make_mapper
from skicon.metrics import adjusted_rand_score, hungarian_accuracy

FAST = dict(max_iter=60, n_init=2, batch_size=64, n_ensemble=1)  # one fit: the tests of its mechanics


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two shared cores: one torch thread avoids oversubscription and keeps these tests fast.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(240, centers=4, cluster_std=0.6, random_state=0)


@pytest.fixture(scope="module")
def digits():
    return load_digits(return_X_y=True)


# -- the batch loss equals the foundation's I-Con loss ----------------------------------------
def _random_block(m, rng):
    P = np.zeros((m, m))
    for i in range(m):
        js = rng.choice([j for j in range(m) if j != i], size=rng.randint(1, 3), replace=False)
        P[i, js] = rng.rand(len(js)) + 0.1
    return P / P.sum(1, keepdims=True)


@pytest.mark.parametrize("alpha,alpha_q,teacher,degree", [
    (0.0, 0.0, False, False), (0.3, 0.0, False, False), (0.0, 0.5, False, False),
    (0.6, 0.6, False, False), (0.4, 0.2, True, False), (0.0, 0.0, False, True), (0.3, 0.3, True, True),
])
def test_loss_equals_icon_loss_of_foundation_kernels(alpha, alpha_q, teacher, degree):
    rng = np.random.RandomState(0)
    m, C = 7, 3
    P = _random_block(m, rng)
    logits = torch.tensor(rng.randn(m, C) * 2)
    cand = torch.tensor(rng.randn(m, C)) if teacher else None
    d = torch.tensor(rng.rand(m) + 0.5) if degree else None
    # independent reference: foundation kernels + icon_loss on the dense block
    eye = torch.eye(m, dtype=torch.bool)
    p_tilde = Debiased(ClusterKernel(include_self=False), alpha=alpha).finalize_block(torch.tensor(P), eye) \
        if alpha > 0 else torch.tensor(P)
    q_kernel = Debiased(ClusterKernel(degree_weighted=degree, include_self=False), alpha=alpha_q)
    log_q = q_kernel.log_prob(logits, cand if teacher else logits, exclude=eye, degrees=d)
    expected = icon_loss(p_tilde, log_q)
    coo = sp.coo_matrix(P)
    got = cluster_kernel_loss(
        logits[None], torch.tensor(coo.row, dtype=torch.long), torch.tensor(coo.col, dtype=torch.long),
        torch.tensor(coo.data), alpha=alpha, alpha_q=alpha_q,
        cand_logits=None if cand is None else cand[None], degrees=d,
    )
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(float(expected), rel=1e-9, abs=1e-10)


def test_sampled_negatives_are_unbiased():
    rng = np.random.RandomState(1)
    m = 12
    P = sp.coo_matrix(_random_block(m, rng))
    args = (torch.tensor(rng.randn(1, m, 3)), torch.tensor(P.row, dtype=torch.long),
            torch.tensor(P.col, dtype=torch.long), torch.tensor(P.data))
    exact = float(cluster_kernel_loss(*args, alpha=0.5, alpha_q=0.3)[0])
    gen = torch.Generator().manual_seed(0)
    draws = [float(cluster_kernel_loss(*args, alpha=0.5, alpha_q=0.3,
                                       negatives=torch.randperm(m, generator=gen)[:4])[0]) for _ in range(600)]
    assert np.mean(draws) == pytest.approx(exact, abs=3 * np.std(draws) / np.sqrt(len(draws)) + 1e-9)
    assert np.std(draws) > 0  # the estimate does vary: the test is not vacuous


def test_probabilistic_kmeans_is_theorem_8():
    rng = np.random.RandomState(0)
    X = torch.tensor(rng.randn(9, 2))
    logits = torch.tensor(rng.randn(9, 3))
    phi = torch.softmax(logits, 1)
    q = ClusterKernel(include_self=True).prob(logits)  # sum_c phi_ic phi_jc / sum_k phi_kc
    theorem8 = -((X @ X.T) * q).sum() + (X * X).sum()
    assert float(probabilistic_kmeans_loss(X, phi)) == pytest.approx(float(theorem8), rel=1e-10)


def _temi_by_loops(phi, psi, pairs, prior, beta):
    # TEMI's definition written out pair by pair: -mean over anchors of sum_j p(j|i) pmi_beta(i, j)
    per_anchor = {}
    for i, j, v in pairs:
        pmi = np.log(sum((phi[i, c] * psi[j, c]) ** beta / prior[c] for c in range(phi.shape[1])))
        per_anchor[i] = per_anchor.get(i, 0.0) + v * pmi
    return -sum(per_anchor.values()) / len(per_anchor)


@pytest.mark.parametrize("beta", [0.6, 1.0])
@pytest.mark.parametrize("teacher", [False, True])
def test_temi_loss_is_the_beta_weighted_pmi(beta, teacher):
    rng = np.random.RandomState(0)
    m, C = 7, 3
    logits = torch.as_tensor(rng.randn(2, m, C))
    t_logits = torch.as_tensor(rng.randn(2, m, C)) if teacher else None
    pairs = [(0, 1, 0.5), (0, 2, 0.5), (1, 0, 1.0), (2, 5, 1.0), (5, 2, 0.25), (5, 6, 0.75), (6, 5, 1.0)]
    rows, cols, vals = (torch.as_tensor([p[k] for p in pairs]) for k in range(3))
    prior = torch.as_tensor(rng.dirichlet(np.ones(C), size=2))
    got = temi_loss(logits, t_logits, rows, cols, vals.double(), beta=beta, prior=prior)
    got_batch_prior = temi_loss(logits, t_logits, rows, cols, vals.double(), beta=beta)
    for r in range(2):
        phi = torch.softmax(logits[r], -1).numpy()
        psi = torch.softmax((t_logits if teacher else logits)[r], -1).numpy()
        assert float(got[r]) == pytest.approx(_temi_by_loops(phi, psi, pairs, prior[r].numpy(), beta), rel=1e-10)
        assert float(got_batch_prior[r]) == pytest.approx(_temi_by_loops(phi, psi, pairs, psi.mean(0), beta),
                                                          rel=1e-10)
    if beta == 1.0:
        # the I-Con KL of the cluster kernel (self pair a candidate, teacher on the candidate
        # side) plus H(p) minus log m: KL - sum p log p - log m, averaged over anchors
        kl = cluster_kernel_loss(logits, rows, cols, vals.double(), cand_logits=t_logits, include_self=True)
        anchors = sorted({p[0] for p in pairs})
        plogp = np.mean([sum(v * np.log(v) for i, _, v in pairs if i == a) for a in anchors])
        assert np.allclose(got_batch_prior.numpy(), kl.numpy() - plogp - np.log(m), rtol=1e-10)


def test_mi_row_trains_temi(blobs, monkeypatch):
    import skicon._cluster_train as training

    calls = []
    original = training.temi_loss

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "temi_loss", recording)
    X, y = blobs
    est = ICONClustering(4, method="mi", random_state=0, **FAST).fit(X)
    assert len(calls) == FAST["max_iter"] and all(c["beta"] == training.TEMI_BETA for c in calls)
    prior = calls[-1]["prior"]
    assert prior.shape == (2, 4) and torch.allclose(prior.sum(1), torch.ones(2))
    assert adjusted_rand_score(y, est.labels_) > 0.9


# -- behaviour -------------------------------------------------------------------------------
def test_infonce_recovers_blobs_and_uses_every_cluster(blobs):
    X, y = blobs
    est = ICONClustering(4, random_state=0, **FAST).fit(X)
    assert sorted(np.unique(est.labels_)) == [0, 1, 2, 3]  # no collapse, no regulariser
    assert est.n_clusters_ == 4
    assert adjusted_rand_score(y, est.labels_) > 0.9
    assert np.array_equal(est.predict(X), est.labels_)
    proba = est.predict_proba(X)
    assert proba.shape == (len(X), 4) and np.allclose(proba.sum(1), 1)
    assert np.allclose(est.transform(X), proba)
    assert est.cluster_centers_.shape == (4, 2)
    # logged every 50 iterations and after the last one
    assert est.n_iter_ == FAST["max_iter"] and est.loss_curve_iterations_.tolist() == [50, 60]
    assert len(est.loss_curve_) == 2
    assert np.isfinite(est.score(X))


@pytest.mark.parametrize("seed", [0, 1])
def test_no_collapse_balanced_many_clusters(seed):
    # six well-separated equal blobs on a hexagon; no size regulariser anywhere
    angle = np.arange(6) * np.pi / 3
    X, y = make_blobs(300, centers=10 * np.c_[np.cos(angle), np.sin(angle)], cluster_std=0.8, random_state=3)
    labels = ICONClustering(6, random_state=seed, **FAST).fit_predict(X)
    assert np.bincount(labels, minlength=6).tolist() == [50] * 6
    assert adjusted_rand_score(y, labels) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_well_separated_blobs_no_merge_no_empty_cluster(seed):
    # 10 well-separated blobs in 20 dimensions (sklearn's defaults). Randomly initialised heads
    # started with clusters no sample preferred: they stayed empty while two blobs shared one
    # cluster (ARI 0.90, 9 clusters for these three seeds before the k-means++ seeding of the
    # heads; KMeans gets ARI 1.0).
    X, y = make_blobs(1000, 20, centers=10, random_state=0)
    est = ICONClustering(10, n_init=2, max_iter=150, random_state=seed).fit(X)
    assert est.n_clusters_ == 10
    assert np.bincount(est.labels_, minlength=10).min() > 0
    assert adjusted_rand_score(y, est.labels_) > 0.99


def test_heads_start_at_nearest_centre_assignments():
    from skicon._cluster_heads import seed_heads

    X, y = make_blobs(400, 6, centers=4, random_state=1)
    X = (X - X.mean(0)) / X.std()
    heads = [make_mapper(m, 6, 4, hidden=(32,), random_state=r) for r, m in enumerate(["mlp", "linear"])]
    assert seed_heads(heads, X.astype(np.float32), 4, np.random.RandomState(0)) == [True, True]
    for head in heads:
        with torch.no_grad():
            labels = head(torch.as_tensor(X, dtype=torch.float32)).argmax(1).numpy()
        assert adjusted_rand_score(y, labels) > 0.99
    # a factory whose last layer is not a Linear is left as built
    odd = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Softplus())
    before = [p.detach().clone() for p in odd.parameters()]
    assert seed_heads([odd], X.astype(np.float32), 4, np.random.RandomState(0)) == [False]
    assert all(torch.equal(a, b) for a, b in zip(before, odd.parameters()))


def test_same_seed_same_labels(blobs):
    X, _ = blobs
    a = ICONClustering(4, random_state=7, **FAST).fit(X)
    b = ICONClustering(4, random_state=7, **FAST).fit(X)
    assert np.array_equal(a.labels_, b.labels_)
    assert np.allclose(a.loss_curve_, b.loss_curve_)


@pytest.mark.parametrize("params", [
    dict(method="mi"), dict(mapper="linear"), dict(mapper="table"),
    dict(ema=0.9), dict(walk_length=1, alpha=0.0, alpha_q=0.0), dict(n_negatives=None),
    dict(mapper=lambda n_features, n_clusters: torch.nn.Sequential(torch.nn.Linear(n_features, n_clusters))),
    dict(q=Debiased(ClusterKernel(), alpha=0.5)),
])
def test_variants_fit_and_predict(blobs, params):
    X, y = blobs
    est = ICONClustering(4, random_state=0, **{**FAST, **params}).fit(X)
    assert est.labels_.min() == 0 and est.labels_.max() == est.n_clusters_ - 1
    assert est.predict(X[:5]).shape == (5,)
    if params.get("mapper") != "table":  # the free table learns slowly: a known gap, see the docstring
        assert adjusted_rand_score(y, est.labels_) > 0.5


def test_augment_positives(blobs):
    X, y = blobs
    calls = []

    def jitter(Xb, generator):  # the one augment signature: a torch batch and a torch.Generator
        calls.append(Xb.shape)
        return Xb + 0.05 * torch.randn(Xb.shape, generator=generator, dtype=Xb.dtype)

    from skicon._cluster_train import POLISH_ROUNDS

    est = ICONClustering(4, augment=jitter, random_state=0, **FAST).fit(X)
    rounds = min(est.polish_rounds_ + 1, POLISH_ROUNDS)  # the rounds kept, and the one that ended the polish
    assert len(calls) == FAST["max_iter"] + rounds * est._plan.polish  # every training step views its anchors
    assert adjusted_rand_score(y, est.labels_) > 0.9


def test_callback_stops_training(blobs):
    X, _ = blobs
    seen = []
    kw = {**FAST, "max_iter": 160}
    est = ICONClustering(4, callbacks=lambda it, loss, e: seen.append(it) or it >= 100, random_state=0, **kw).fit(X)
    assert seen == [50, 100]  # the number of iterations done, at every loss log (every 50)
    assert est.n_iter_ == 100 and len(est.loss_curve_) == 2


def test_kmeans_matches_sklearn_inertia_on_blobs(blobs):
    X, _ = blobs
    ours = ICONClustering(4, method="kmeans", n_init=10, random_state=0).fit(X)
    ref = KMeans(4, n_init=10, random_state=0).fit(X)
    assert ours.inertia_ <= 1.01 * ref.inertia_
    assert np.array_equal(ours.predict(X), ours.labels_)


def test_kmeans_matches_sklearn_inertia_on_digits(digits):
    X, _ = digits
    ours = ICONClustering(10, method="kmeans", n_init=10, random_state=0).fit(X)
    ref = KMeans(10, n_init=10, random_state=0).fit(X)
    assert ours.inertia_ <= 1.01 * ref.inertia_
    inertia = ((X - ours.cluster_centers_[ours.labels_]) ** 2).sum()
    assert inertia == pytest.approx(ours.inertia_, rel=1e-9)


def test_spectral_at_least_sklearn_on_digits(digits):
    X, y = digits
    ours = ICONClustering(10, method="spectral", random_state=0).fit(X)
    ref = SpectralClustering(10, affinity="nearest_neighbors", random_state=0).fit(X)
    assert adjusted_rand_score(y, ours.labels_) >= adjusted_rand_score(y, ref.labels_)
    assert hungarian_accuracy(y, ours.labels_) > 0.75


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input(blobs, bad):
    X = blobs[0].copy()
    X[3, 1] = bad
    with pytest.raises(ValueError, match="X"):
        ICONClustering(4, **FAST).fit(X)


def test_too_many_clusters():
    with pytest.raises(ValueError, match="n_clusters"):
        ICONClustering(10, **FAST).fit(np.random.RandomState(0).randn(5, 2))


def test_one_sample():
    with pytest.raises(ValueError, match="sample"):
        ICONClustering(1, **FAST).fit(np.zeros((1, 3)))


def test_sparse_input(blobs):
    with pytest.raises(TypeError, match="sparse"):
        ICONClustering(4, **FAST).fit(sp.csr_matrix(blobs[0]))


@pytest.mark.parametrize("augment,match", [
    (lambda Xb, rs: Xb[:, :1], "shape"),
    (lambda Xb, rs: Xb * np.nan, "finite"),
    (lambda Xb, rs: 1 / 0, "augment raised"),
])
def test_bad_augment(blobs, augment, match):
    with pytest.raises(ValueError, match=match):
        ICONClustering(4, augment=augment, **FAST).fit(blobs[0])


@pytest.mark.parametrize("params,match", [
    (dict(q="cluster"), "q"), (dict(method="kmeanz"), "method"), (dict(alpha=1.5), "alpha"),
    (dict(n_neighbors=0), "n_neighbors"), (dict(mapper="cnn"), "mapper"),
])
def test_bad_parameters(blobs, params, match):
    with pytest.raises(ValueError, match=match):
        ICONClustering(4, **{**FAST, **params}).fit(blobs[0])


def test_q_must_be_a_cluster_kernel(blobs):
    from skicon.kernels import Gaussian

    with pytest.raises(ValueError, match="ClusterKernel"):
        ICONClustering(4, q=Gaussian(), **FAST).fit(blobs[0])


# -- restarts and positives ------------------------------------------------------------------
@pytest.mark.parametrize("n_init,max_iter,expected", [
    (8, 400, {100: 4, 200: 2}), (8, 600, {150: 4, 300: 2}), (8, 300, {150: 4}), (3, 400, {100: 2}),
    (16, 400, {100: 8, 200: 4}), (2, 400, {}), (1, 400, {}), (8, 60, {}),
])
def test_pruning_schedule_hand_computed(n_init, max_iter, expected):
    assert _pruning_schedule(n_init, max_iter) == expected


@pytest.mark.parametrize("fused", [True, False])
def test_kept_heads_are_the_named_ones(fused):
    heads = [make_mapper("mlp", 5, 3, hidden=(4,), random_state=r) for r in range(4)]
    module = _FusedHeads(heads) if fused else _Heads(heads)
    x = torch.randn(7, 5)
    module.keep([3, 1])
    out = module(x)
    assert out.shape == (2, 7, 3)
    with torch.no_grad():
        assert torch.allclose(out[0], heads[1](x), atol=1e-6)
        assert torch.allclose(out[1], heads[3](x), atol=1e-6)
        assert torch.allclose(module.head(3)(x), heads[3](x), atol=1e-6)


def test_restarts_are_pruned_on_the_selection_loss(blobs, monkeypatch):
    # n_init=4, max_iter=200: at step 100 the four heads are scored on the selection sample and
    # the worse two stop; after step 200 the better survivor is kept. With 240 samples every
    # sample is an anchor and a candidate, so the selection loss is loss_'s figure.
    import skicon._cluster_train as clustering

    seen = []
    original = clustering.sampled_row_loss

    def recording(*args, **kwargs):
        losses = original(*args, **kwargs)
        seen.append(losses.numpy().copy())
        return losses

    monkeypatch.setattr(clustering, "sampled_row_loss", recording)
    X, _ = blobs
    est = ICONClustering(4, n_init=4, max_iter=200, batch_size=64, overclustering=1, polish=0, n_ensemble=1,
                         random_state=0).fit(X)
    # step 100 (four heads), the end (two heads), then loss_ of the kept head (no polish: its own
    # selection score would come before loss_)
    assert [len(s) for s in seen] == [4, 2, 1]
    assert sorted(est.init_n_iter_.tolist()) == [100, 100, 200, 200]
    survivors = np.flatnonzero(est.init_n_iter_ == 200)
    assert sorted(survivors.tolist()) == sorted(np.argsort(seen[0])[:2].tolist())
    dropped = np.flatnonzero(est.init_n_iter_ == 100)
    assert np.array_equal(est.init_losses_[dropped], seen[0][dropped])
    assert np.array_equal(est.init_losses_[survivors], seen[1])
    # the kept head is the better survivor: loss_ (its whole-row loss) is the lower final score
    assert seen[2][0] == pytest.approx(seen[1].min(), rel=1e-5) and est.loss_ == pytest.approx(seen[1].min(), rel=1e-5)
    assert est.n_iter_ == 200 and est.loss_curve_iterations_.tolist() == [50, 100, 150, 200]


def test_positive_sampler_draws_each_row_distribution():
    rng = np.random.RandomState(0)
    n = 30
    dense = np.zeros((n, n))
    for i in range(n):
        js = rng.choice(n, size=rng.randint(1, 12), replace=False)
        dense[i, js] = rng.rand(len(js)) + 0.05
    P = sp.csr_matrix(dense / dense.sum(1, keepdims=True))
    sampler = RowSampler(P, np.random.RandomState(1))
    draws = 20000
    for i in (0, 7, 29):
        got = np.bincount(sampler.sample(np.full(draws, i)), minlength=n) / draws
        assert set(np.flatnonzero(got)) <= set(P[i].indices)
        sd = np.sqrt(P[i].toarray().ravel() * (1 - P[i].toarray().ravel()) / draws)
        assert np.all(np.abs(got - P[i].toarray().ravel()) <= 5 * sd + 1e-12)
    mixed = rng.randint(n, size=500)
    assert all(P[a, b] > 0 for a, b in zip(mixed, sampler.sample(mixed)))


# -- one engine: the registry rows, their losses, the Trainer ----------------------------------
ROWS = [r.name for r in list_methods("ICONClustering")]


def _small():
    X, y = make_blobs(60, centers=3, cluster_std=0.5, random_state=2)
    return X, y


@pytest.mark.parametrize("name", ROWS + [a for r in list_methods("ICONClustering") for a in r.aliases])
def test_method_accepts_every_row_and_alias(name):
    X, _ = _small()
    est = ICONClustering(3, method=name, max_iter=30, n_init=2, batch_size=32, random_state=0).fit(X)
    assert est.n_iter_ >= 1 and isinstance(est.loss_curve_, np.ndarray)
    assert len(est.loss_curve_) == len(est.loss_curve_iterations_) >= 1
    assert est.loss_curve_iterations_[-1] == est.n_iter_
    assert np.isfinite(est.loss_) and est.p_ is not None and est.q_ is not None


def test_alias_is_the_row_and_the_default():
    X, _ = _small()
    kw = dict(max_iter=40, n_init=2, batch_size=32, random_state=0)
    a = ICONClustering(3, **kw).fit(X)
    b = ICONClustering(3, method="infonce", **kw).fit(X)
    assert ICONClustering().method == "infonce_clustering"
    assert np.array_equal(a.labels_, b.labels_) and np.array_equal(a.loss_curve_, b.loss_curve_)


@pytest.mark.parametrize("name", ROWS)
def test_auto_parameters_take_the_row_defaults(name):
    X, _ = _small()
    est = ICONClustering(3, method=name, max_iter=5, n_init=1, random_state=0).fit(X)
    for key, value in get_method(name).defaults.items():
        assert getattr(est._plan, key) == value


@pytest.mark.parametrize("name,params", [
    ("kmeans", dict(n_neighbors=5)), ("mi", dict(alpha=0.2)), ("ncut", dict(walk_length=2)),
    ("kmeans", dict(ema=0.9)), ("spectral", dict(mapper="linear")), ("ncut", dict(augment=lambda Xb, rs: Xb)),
    ("kmeans", dict(q=ClusterKernel())), ("ncut", dict(p=Graph())),
])
def test_parameters_a_row_does_not_use_are_rejected(name, params):
    X, _ = _small()
    key = next(iter(params))
    with pytest.raises(ValueError, match=key):
        ICONClustering(3, method=name, max_iter=5, n_init=1, **params).fit(X)


def _fitted_logits(est, X):
    return torch.as_tensor(est._logits(X, training=True), dtype=torch.float64)


@pytest.mark.parametrize("name,params", [
    ("mi", {}), ("infonce_clustering", {}), ("ncut", {}),
    ("mi", dict(q=ClusterKernel(degree_weighted=True, include_self=False))),
    ("infonce_clustering", dict(q=Debiased(ClusterKernel(), alpha=0.6))),  # the paper's q, self included
    ("ncut", dict(q=Debiased(ClusterKernel(degree_weighted=True), alpha=0.2))),
])
def test_loss_is_the_registry_row_loss(name, params):
    # The estimator trains its row: loss_ equals row.loss on the learned logits (exact block).
    X, _ = _small()
    est = ICONClustering(3, method=name, max_iter=40, n_init=2, batch_size=64, n_negatives=None,
                         n_components=None, random_state=0, **params).fit(X)
    row = get_method(name)
    logits = _fitted_logits(est, X)
    if name == "ncut":
        X_used, degrees = est.affinity_matrix_, None  # p_ sees the graph; degrees are its row sums
    else:
        X_used = est._knn_space(X)
        degrees = graph_degrees(est._train_P) if est._plan.degree_weighted else None
    if name == "ncut" and isinstance(est.q_, Debiased):
        # row.loss looks for degree_weighted on q itself, not through Debiased: its maths by hand
        d = torch.as_tensor(np.asarray(X_used.sum(axis=1)).ravel())
        expected = float(icon_loss(est.p_.dense(X_used), est.q_.log_prob(logits, degrees=d), direction="reverse"))
    else:
        expected = float(row.loss(X_used, logits, p=est.p_, q=est.q_, degrees=degrees))
    assert est.loss_ == pytest.approx(expected, rel=1e-5)
    # score on the training data (one exact block, the graph of X itself) is minus the same loss,
    # degree weighting included (it collapsed to all ones before)
    assert est.score(X) == pytest.approx(-expected, rel=1e-5)


@pytest.mark.parametrize("name", ["kmeans", "spectral"])
def test_centroid_rows_loss_is_the_reverse_row_loss_at_the_resolved_bandwidth(name):
    X, _ = _small()
    est = ICONClustering(3, method=name, n_init=2, batch_size=64, random_state=0).fit(X)
    Z = X if name == "kmeans" else est._train_embedding
    expected = float(get_method(name).loss(Z, _fitted_logits(est, X), p=est.p_, q=est.q_))
    assert np.isfinite(expected)
    assert est.loss_ == pytest.approx(expected, rel=1e-5)
    assert est.p_.sigma ** 2 == pytest.approx(est.inertia_ / (Z.shape[0] * Z.shape[1]))


def test_reverse_cluster_loss_is_icon_loss_of_the_kernels():
    rng = np.random.RandomState(0)
    m = 9
    A = (rng.rand(m, m) < 0.3).astype(float)
    A = np.maximum(A, A.T)
    np.fill_diagonal(A, 0)
    A[0, 1] = A[1, 0] = 1.0
    d = torch.tensor(np.maximum(A.sum(1), 1.0))
    logits = torch.tensor(rng.randn(m, 3) * 2)
    log_p = exp_graph_log_p(torch.tensor(A), d)
    Ad = A / d.numpy()[None, :]
    assert torch.allclose(log_p.exp(), torch.tensor(np.exp(Ad) / np.exp(Ad).sum(1, keepdims=True)))
    for alpha_q in (0.0, 0.3):
        q = Debiased(ClusterKernel(degree_weighted=True), alpha=alpha_q)
        expected = icon_loss(None, q.log_prob(logits, degrees=d), direction="reverse", log_p=log_p)
        got = reverse_cluster_loss(logits[None], log_p, degrees=d, alpha_q=alpha_q)
        assert float(got[0]) == pytest.approx(float(expected), rel=1e-10)


def test_include_self_matches_the_kernel():
    rng = np.random.RandomState(3)
    m = 8
    P = _random_block(m, rng)
    logits = torch.tensor(rng.randn(m, 3))
    eye = torch.eye(m, dtype=torch.bool)
    p_tilde = Debiased(ClusterKernel(include_self=False), alpha=0.4).finalize_block(torch.tensor(P), eye)
    expected = icon_loss(p_tilde, Debiased(ClusterKernel(), alpha=0.6).log_prob(logits))
    coo = sp.coo_matrix(P)
    got = cluster_kernel_loss(logits[None], torch.tensor(coo.row, dtype=torch.long),
                              torch.tensor(coo.col, dtype=torch.long), torch.tensor(coo.data),
                              alpha=0.4, alpha_q=0.6, include_self=True)
    assert float(got[0]) == pytest.approx(float(expected), rel=1e-9)


def test_kmeans_labels_are_float64_nearest_centres_far_from_origin():
    # float32 distances mislabelled 110 of 400 points here, and inertia_ used other labels.
    X, _ = make_blobs(400, centers=5, cluster_std=1.0, random_state=0)
    X = X + 1e4
    est = ICONClustering(5, method="kmeans", n_init=3, random_state=0).fit(X)
    d2 = ((X[:, None, :] - est.cluster_centers_[None, :, :]) ** 2).sum(-1)
    assert np.array_equal(est.labels_, d2.argmin(1))
    assert np.array_equal(est.predict(X), est.labels_)
    assert est.inertia_ == pytest.approx(d2.min(1).sum(), rel=1e-9)
    assert est.score(X) == pytest.approx(-d2.min(1).mean(), rel=1e-9)


@pytest.mark.parametrize("name", ["kmeans", "spectral"])
def test_centroid_rows_run_through_the_trainer(name, capsys):
    X, _ = _small()
    seen = []
    est = ICONClustering(3, method=name, n_init=2, max_iter=300, random_state=0, verbose=True,
                         callbacks=lambda it, loss, e: seen.append((it, loss)) or it >= 50).fit(X)
    assert [it for it, _ in seen] == [50]  # the relaxation logs every 50 iterations
    assert est.n_iter_ == 50 and len(est.loss_curve_) == 1
    assert "ICONClustering" in capsys.readouterr().err  # the Trainer's summary line
    full = ICONClustering(3, method=name, n_init=2, max_iter=300, random_state=0).fit(X)
    assert full.n_iter_ == 100 and full.loss_curve_iterations_.tolist() == [50, 100]  # at most 100
    assert np.allclose(est.loss_curve_, full.loss_curve_[:1])


def test_ncut_trains_its_reverse_row_on_batch_blocks(blobs):
    # Theorem 11's loss is Ncut minus the entropy of q: training lowers it below the loss of
    # the initial heads; the block never exceeds anchors + one neighbour each.
    X, _ = blobs
    sizes = []
    import skicon._cluster_train as ct

    original = ct.exp_graph_log_p

    def recording(A_block, degrees):
        sizes.append(A_block.shape[0])
        return original(A_block, degrees)

    ct.exp_graph_log_p = recording
    try:
        est = ICONClustering(4, method="ncut", random_state=0, **FAST).fit(X)
    finally:
        ct.exp_graph_log_p = original
    # one block per training step, then the restarts' selection sample: the 240 samples in
    # blocks of 64 (4 blocks), scored once after the last step (no pruning in 60 steps)
    assert max(sizes) <= 2 * FAST["batch_size"] and len(sizes) == FAST["max_iter"] + 4
    assert isinstance(est.p_, Graph) and est.p_.exponential and est.q_.degree_weighted
    # The row is Ncut minus the entropy of q (Theorem 11): the fitted heads beat the true
    # partition on it (few large clusters win), which is why it is not the default.
    Xs, ys = _small()
    small = ICONClustering(3, method="ncut", max_iter=60, n_init=2, batch_size=64, random_state=0).fit(Xs)
    truth = torch.tensor(60.0 * (np.eye(3)[ys] - 0.5))
    truth_loss = float(get_method("ncut").loss(small.affinity_matrix_, truth, p=small.p_, q=small.q_))
    assert small.loss_ < truth_loss


# -- overclustering: heads learn more clusters, joined by the loss -----------------------------
def test_merged_head_sums_the_assignments_of_each_group():
    from skicon._cluster_heads import MergedHead

    head = make_mapper("mlp", 5, 6, hidden=(4,), random_state=0)
    groups = [[0, 4], [1], [2, 3, 5]]
    merged = MergedHead(head, groups)
    x = torch.randn(9, 5)
    with torch.no_grad():
        phi = torch.softmax(head(x), dim=1)
        got = torch.softmax(merged(x), dim=1)
    expected = torch.stack([phi[:, g].sum(dim=1) for g in groups], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_hard_merge_losses_are_the_change_of_the_hard_label_loss():
    # hard_merge_losses[a, b] is L(labels with a and b joined) - L(labels), for L written out
    from skicon._cluster_train import ClusterPlan, hard_merge_losses, row_sample

    rng = np.random.RandomState(0)
    n, G = 120, 5
    P = normalize_rows(sp.random(n, n, density=0.1, random_state=rng, format="csr") + sp.eye(n, k=1, format="csr"))
    labels = rng.randint(G, size=n)
    _, sample = row_sample(P, np.arange(0, n, 2), rng.permutation(n)[:50])
    plan = ClusterPlan(row="infonce_clustering", direction="forward", n_neighbors=10, walk_length=2, alpha=0.3,
                       alpha_q=0.2, degree_weighted=False, include_self=False, learning_rate=0.02)
    anchors, rows, cols = (sample[k].numpy() for k in ("anchors", "rows", "cols"))
    vals, cand = sample["vals"].numpy(), sample["candidates"].numpy()

    def loss(lab):
        inner = np.bincount(rows, weights=vals * (lab[anchors][rows] == lab[cols]), minlength=len(anchors))
        pi = np.bincount(lab[cand], minlength=G) / len(cand)
        share = pi[lab[anchors]]
        gain = np.log1p(0.8 * 255 / (0.2 * np.maximum(256 * share - 1, 1e-3)))
        return float(np.mean(-gain * (0.7 * inner + 0.3 * share)))

    hard = hard_merge_losses(labels, sample, G, plan)
    for a in range(G):
        for b in range(a + 1, G):
            joined = np.where(labels == b, a, labels)
            assert hard[a, b] == pytest.approx(loss(joined) - loss(labels), rel=1e-9, abs=1e-12)


def test_overclustering_joins_the_extra_clusters_of_well_separated_blobs(blobs):
    X, y = blobs
    # polish=0: the joined head itself (a polished head would replace it by a plain one)
    est = ICONClustering(4, n_init=2, max_iter=150, batch_size=64, overclustering=2.0, polish=0,
                         random_state=0).fit(X)
    assert sorted(c for g in est.merged_groups_ for c in g) == list(range(8)) and len(est.merged_groups_) == 4
    assert est.n_clusters_ == 4 and adjusted_rand_score(y, est.labels_) > 0.95
    assert np.array_equal(est.predict(X), est.labels_)
    plain = ICONClustering(4, overclustering=1, **FAST).fit(X)
    assert plain.merged_groups_ == [[0], [1], [2], [3]]


@pytest.mark.parametrize("method", ["ncut", "kmeans", "spectral"])
def test_overclustering_is_rejected_by_rows_without_a_forward_loss(blobs, method):
    with pytest.raises(ValueError, match="overclustering"):
        ICONClustering(3, method=method, overclustering=1.5, **FAST).fit(blobs[0])


# -- overclustering factors: restarts of different cluster counts side by side ----------------
@pytest.mark.parametrize("fused", [True, False])
def test_unused_outputs_are_masked_and_get_no_gradient(fused):
    from skicon._cluster_heads import UNUSED_LOGIT

    heads = [make_mapper("mlp", 5, 4, hidden=(6,), random_state=r) for r in range(2)]
    module = (_FusedHeads if fused else _Heads)(heads, n_used=[2, 4])
    x = torch.randn(7, 5)
    out = module(x)
    assert torch.all(out[0, :, 2:] == UNUSED_LOGIT) and torch.all(out[1, :, 2:] != UNUSED_LOGIT)
    phi = torch.softmax(out, dim=-1)
    assert torch.all(phi[0, :, 2:] == 0) and torch.allclose(phi[0, :, :2].sum(-1), torch.ones(7))
    (phi * torch.randn(phi.shape)).sum().backward()
    if fused:
        grad = module.weights[-1].grad  # (heads, outputs, hidden)
        assert torch.all(grad[0, 2:] == 0) and torch.any(grad[0, :2] != 0) and torch.any(grad[1, 2:] != 0)
    else:
        assert torch.all(heads[0][-1].weight.grad[2:] == 0) and torch.any(heads[1][-1].weight.grad[2:] != 0)
    module.keep([1])  # the mask follows the active heads
    assert torch.all(module(x)[0, :, 2:] != UNUSED_LOGIT)


def test_seed_heads_seeds_each_heads_own_cluster_count(blobs):
    from skicon._cluster_heads import seed_heads

    X = (blobs[0] - blobs[0].mean(0)) / blobs[0].std(0)
    heads = [make_mapper("mlp", 2, 6, hidden=(8,), random_state=r) for r in range(2)]
    before = [h[-1].weight.detach().clone() for h in heads]
    assert seed_heads(heads, X, [4, 6], np.random.RandomState(0)) == [True, True]
    assert torch.equal(heads[0][-1].weight[4:], before[0][4:])  # unused outputs left as built
    assert not torch.equal(heads[0][-1].weight[:4], before[0][:4])
    assert not torch.equal(heads[1][-1].weight, before[1])


def test_mixed_overclustering_keeps_the_lower_selection_loss(blobs, monkeypatch):
    # overclustering=[1, 2], n_init=4: heads 0-1 learn 4 clusters, heads 2-3 learn 8 (joined to 4).
    # Every head is scored with 4 clusters (the 8-cluster heads after hard-label joins), and the
    # fit keeps the lower of the plain pick's loss and the joined pick's exact loss.
    import skicon._cluster_train as clustering
    import skicon._clustering as estimator

    widths, joins, inside = [], [], []
    original_loss, original_merge = clustering.sampled_row_loss, estimator.merge_clusters

    def recording_loss(logits, *args, **kwargs):
        if not inside:  # the exact joins also score 7, 6 and 5 clusters on the way down
            widths.append(logits.shape[-1])
        return original_loss(logits, *args, **kwargs)

    def recording_merge(*args, **kwargs):
        inside.append(True)
        joins.append(original_merge(*args, **kwargs))
        inside.clear()
        return joins[-1]

    monkeypatch.setattr(clustering, "sampled_row_loss", recording_loss)
    monkeypatch.setattr(estimator, "merge_clusters", recording_merge)
    X, y = blobs
    # polish=0: the choice between the restarts' picks itself (the polish is tested on its own)
    est = ICONClustering(4, n_init=4, max_iter=200, batch_size=64, overclustering=[1, 2], polish=0, n_ensemble=1,
                         random_state=0).fit(X)
    assert est._plan.overclustering == (1.0, 2.0)
    assert len(widths) >= 3 and set(widths) == {4}  # pruning, final scores and loss_: 4 clusters
    survivors = np.flatnonzero(est.init_n_iter_ == 200)
    plain = [r for r in survivors if r < 2]
    options = ([est.init_losses_[min(plain, key=lambda r: est.init_losses_[r])]] if plain else []) + \
        [loss for _, loss in joins]
    assert len(options) >= 1 and len(joins) == int(any(r >= 2 for r in survivors))
    assert est.loss_ == pytest.approx(min(options), rel=1e-5)  # loss_: the same figure on all samples
    is_plain = all(len(g) == 1 for g in est.merged_groups_)
    assert is_plain == (bool(plain) and options[0] == min(options))
    assert len(est.merged_groups_) == 4 and adjusted_rand_score(y, est.labels_) > 0.95
    assert np.array_equal(est.predict(X), est.labels_)


def test_overclustering_auto_splits_infonce_clustering_restarts(blobs):
    X, _ = blobs
    est = ICONClustering(4, random_state=0, **FAST).fit(X)
    assert est._plan.overclustering == (1.0, 1.4)
    assert ICONClustering(4, method="mi", random_state=0, **FAST).fit(X)._plan.overclustering == (1.0,)
    one = ICONClustering(4, n_init=1, max_iter=60, batch_size=64, random_state=0).fit(X)  # the first factor
    assert one.merged_groups_ == [[0], [1], [2], [3]]


@pytest.mark.parametrize("value", [[], [0.5], [1, "a"], [1, np.inf]])
def test_bad_overclustering_factors_are_rejected(blobs, value):
    with pytest.raises(ValueError, match="overclustering"):
        ICONClustering(3, overclustering=value, **FAST).fit(blobs[0])


def test_ncut_accepts_overclustering_of_one_only(blobs):
    ICONClustering(3, method="ncut", overclustering=[1], **FAST).fit(blobs[0])
    with pytest.raises(ValueError, match="overclustering"):
        ICONClustering(3, method="ncut", overclustering=[1, 1.5], **FAST).fit(blobs[0])


# -- the final polish ---------------------------------------------------------------------------
@pytest.mark.parametrize("mapper", ["linear", "mlp"])
def test_restart_last_layers_start_at_the_given_clusters(blobs, mapper):
    from skicon._cluster_heads import layers_of, restart_last_layers

    X, y = blobs
    head = make_mapper(mapper, X.shape[1], 6, hidden=(16,), random_state=0)
    new = restart_last_layers(head, X, [y], 4)[0]
    body, old = layers_of(new), layers_of(head)
    # the body keeps the trained weights (copies, not the same tensors); the last layer is new
    for a, b in zip(body[:-1], old[:-1]):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb) and pa is not pb
    assert body[-1].out_features == 4
    with torch.no_grad():
        H = torch.as_tensor(X, dtype=torch.float32)
        for layer in body[:-1]:
            H = layer(H)
        labels = new(torch.as_tensor(X, dtype=torch.float32)).argmax(1).numpy()
    # nearest-centre logits: the argmax is the nearest of the clusters' centres in the features read
    H = H.double().numpy()
    centres = np.stack([H[y == c].mean(0) for c in range(4)])
    nearest = ((H[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    assert (labels == nearest).mean() > 0.99
    assert (labels == y).mean() > 0.95  # well-separated blobs: the given clusters themselves


def test_restart_last_layers_decline_tables_and_empty_clusters(blobs):
    from skicon._cluster_heads import restart_last_layers

    X, y = blobs
    assert restart_last_layers(make_mapper("table", X.shape[1], 4, n_samples=len(X)), X, [y], 4) == [None]
    assert restart_last_layers(make_mapper("linear", X.shape[1], 5), X, [y], 5) == [None]  # cluster 4 is empty
    # a labelling with an empty cluster is declined, the others beside it still restarted
    kept, empty = restart_last_layers(make_mapper("linear", X.shape[1], 4), X, [y, np.zeros_like(y)], 4)
    assert kept is not None and empty is None


def test_polish_is_kept_only_when_its_selection_loss_is_lower(blobs, monkeypatch):
    import skicon._cluster_train as train

    X, _ = blobs
    calls = []
    real = train.polish_head

    def fake(loss_shift):
        def polish(head, Xs, starts, k, make_objective, **kw):
            calls.append((kw["n_steps"], len(starts)))
            return [None if r is None else (r[0], loss_shift) for r in real(head, Xs, starts, k, make_objective, **kw)]
        return polish

    plain = ICONClustering(4, random_state=0, polish=0, **FAST).fit(X)
    assert not plain.polished_ and plain.polish_rounds_ == 0
    monkeypatch.setattr(train, "polish_head", fake(np.inf))  # never lower: the main run's head stays
    worse = ICONClustering(4, random_state=0, polish=10, **FAST).fit(X)
    # one round (it did not lower the loss): the kept clusters and the split-and-join moves
    assert len(calls) == 1 and calls[0][0] == 10 and 2 <= calls[0][1] <= 1 + train.MOVE_SPLITS * train.MOVE_JOINS
    assert not worse.polished_ and worse.polish_rounds_ == 0
    np.testing.assert_array_equal(worse.labels_, plain.labels_)
    assert worse.loss_ == plain.loss_
    calls.clear()
    monkeypatch.setattr(train, "polish_head", fake(-np.inf))  # always lower than the main run's head
    better = ICONClustering(4, random_state=0, polish=10, **FAST).fit(X)
    # the first round is kept; the second cannot go below -inf and ends the polish
    assert len(calls) == 2 and better.polished_ and better.polish_rounds_ == 1
    assert better.merged_groups_ == [[0], [1], [2], [3]]
    np.testing.assert_array_equal(better.predict(X), better.labels_)


@pytest.mark.parametrize("losses,kept", [([-1.0, -2.0, -3.0, -4.0], 3), ([-1.0, -2.0, -2.0], 2), ([np.inf], 0)])
def test_polish_rounds_go_on_while_the_loss_falls(blobs, monkeypatch, losses, kept):
    # each round starts from the head the previous one kept; the first round that does not lower
    # the selection loss ends the polish, and at most POLISH_ROUNDS rounds run
    import skicon._cluster_train as train

    assert train.POLISH_ROUNDS == 3
    X, _ = blobs
    given, picks = [], []
    real = train.polish_head

    def polish(head, Xs, starts, k, make_objective, **kw):
        given.append(head)
        results = real(head, Xs, starts, k, make_objective, **kw)
        loss = losses[min(len(given) - 1, len(losses) - 1)]
        picks.append(results[0][0])
        return [(results[0][0], loss)] + [None] * (len(results) - 1)

    monkeypatch.setattr(train, "polish_head", polish)
    monkeypatch.setattr(train, "choose_polished", lambda own, moves: own)
    est = ICONClustering(4, random_state=0, polish=5, **FAST).fit(X)
    assert est.init_losses_[np.isfinite(est.init_losses_)].min() > -1.0  # a KL: the fake losses are lower
    assert est.polish_rounds_ == kept and len(given) == min(kept + 1, train.POLISH_ROUNDS)
    for r in range(1, len(given)):
        assert given[r] is picks[r - 1]  # round r + 1 polishes round r's head
    assert (est.module_ is picks[kept - 1]) if kept else not est.polished_


def test_polish_auto_and_validation(blobs):
    X, _ = blobs
    est = ICONClustering(4, random_state=0, **FAST).fit(X)
    assert est._plan.polish == 30  # "auto": min(200, max_iter // 2)
    from skicon._cluster_plan import resolve_polish
    from skicon._registry import resolve_method

    row = resolve_method("ICONClustering", "infonce_clustering")[0]
    assert resolve_polish(ICONClustering(max_iter=500), row) == 200  # capped at POLISH_STEPS
    assert resolve_polish(ICONClustering(max_iter=500, polish=7), row) == 7
    assert ICONClustering(4, method="mi", random_state=0, **FAST).fit(X)._plan.polish == 0
    assert not ICONClustering(4, mapper="table", random_state=0, polish=5, **FAST).fit(X).polished_
    with pytest.raises(ValueError, match="polish"):
        ICONClustering(4, polish=-1).fit(X)
    with pytest.raises(ValueError, match="polish"):
        ICONClustering(4, method="kmeans", polish=5).fit(X)


def test_split_join_move_undoes_a_merge_next_to_a_split():
    # four separated blobs labelled with blobs 0 and 1 in one cluster and blob 2 cut in two: the
    # move splits the merged cluster (its split lowers the loss most) and joins blob 2's halves
    from sklearn.neighbors import kneighbors_graph

    from skicon._cluster_train import ClusterPlan, PairObjective, SelectionSet, _BatchInputs, split_join_labels

    X, y = make_blobs(400, centers=4, cluster_std=0.5, random_state=1)
    P = normalize_rows(kneighbors_graph(X, 10, include_self=False).tocsr())
    plan = ClusterPlan(row="infonce_clustering", direction="forward", n_neighbors=10, walk_length=1, alpha=0.3,
                       alpha_q=0.3, degree_weighted=False, include_self=False, learning_rate=0.02)
    objective = PairObjective(_BatchInputs(torch.as_tensor(X), False, "cpu"), P, plan, 0, n_negatives=64, n_init=1,
                              n_clusters=4)
    selection = SelectionSet(P, len(X), 64, 0)
    bad = np.select([y == 1, (y == 2) & (X[:, 0] > np.median(X[y == 2, 0]))], [0, 1], default=y)
    bad = np.where((y == 2) & (bad != 1), 2, bad)  # blob 2: its halves in clusters 1 and 2
    assert adjusted_rand_score(y, bad) < 0.8 and len(np.unique(bad)) == 4
    logits = 4.0 * np.eye(4)[bad]
    moves = split_join_labels(logits, X, objective, selection, np.random.RandomState(0))
    assert 1 < len(moves) <= 4  # the best two splits, each with its two cheapest joins
    assert all(sorted(np.unique(moved)) == [0, 1, 2, 3] for moved in moves)
    assert adjusted_rand_score(y, moves[0]) == 1.0  # the best split with its cheapest join
    assert all(adjusted_rand_score(y, moved) < 1.0 for moved in moves[1:])
    assert split_join_labels(np.zeros((len(X), 1)), X, objective, selection, np.random.RandomState(0)) == []


@pytest.mark.parametrize("move_gain,kept", [(0.0005, "own"), (0.002, "move"), (-0.01, "own")])
def test_the_move_must_win_by_the_margin(blobs, monkeypatch, move_gain, kept):
    # a moved copy replaces the own-clusters copy only when its loss is lower by more than
    # MOVE_MARGIN (0.1%) of it; the best of the moves is the one compared; either replaces the
    # kept restart only below its loss
    import skicon._cluster_train as train

    assert train.MOVE_MARGIN == 1e-3
    X, _ = blobs
    made = {}
    real = train.polish_head

    def polish(head, Xs, starts, k, make_objective, **kw):
        (own, _), *moves = real(head, Xs, starts, k, make_objective, **kw)
        assert len(moves) >= 2
        if not made:  # the first round (the second does not go lower, and ends the polish)
            made.update(own=own, move=moves[1][0])
        # the second move is the best; the others are worse than the own copy
        return [(own, -5.0), (moves[0][0], -4.0), (moves[1][0], -5.0 - 5.0 * move_gain)] + [
            (m[0], -4.0) for m in moves[2:]]

    monkeypatch.setattr(train, "polish_head", polish)
    est = ICONClustering(4, random_state=0, polish=10, **FAST).fit(X)
    assert est.polished_ and est.polish_rounds_ == 1 and est.module_ is made[kept]


def test_choose_polished():
    from skicon._cluster_train import choose_polished

    own, a, b = object(), object(), object()
    assert choose_polished((own, 2.0), [(a, 1.999), None, (b, 1.9999)]) == (own, 2.0)  # within 0.1%
    assert choose_polished((own, 2.0), [(a, 1.99), (b, 1.95)]) == (b, 1.95)  # the best move, clearly lower
    assert choose_polished(None, [None, (a, 3.0)]) == (a, 3.0)
    assert choose_polished((own, -2.0), [(a, -2.001)]) == (own, -2.0)  # the margin on |loss|: 0.002
    assert choose_polished((own, -2.0), [(a, -2.01)]) == (a, -2.01)
    assert choose_polished(None, [None]) is None


# -- n_ensemble: independent fits combined by a soft vote --------------------------------------
def test_match_clusters_recovers_a_permutation():
    from skicon._cluster_heads import match_clusters

    rng = np.random.RandomState(0)
    reference = rng.randint(0, 5, 300)
    perm = np.array([3, 0, 4, 1, 2])
    labels = perm[reference]
    labels[:20] = rng.randint(0, 5, 20)  # a few disagreements do not change the matching
    order = match_clusters(reference, labels, 5)
    np.testing.assert_array_equal(order, perm)  # cluster c of the reference is cluster perm[c] of labels


def test_consensus_head_is_the_mean_of_the_matched_assignments():
    from skicon._cluster_heads import ConsensusHead

    torch.manual_seed(0)
    heads = [torch.nn.Linear(4, 3) for _ in range(3)]
    orders = [[0, 1, 2], [2, 0, 1], [1, 2, 0]]
    x = torch.randn(10, 4)
    with torch.no_grad():
        out = ConsensusHead(heads, orders)(x)
        mean = sum(torch.softmax(h(x), dim=-1)[:, o] for h, o in zip(heads, orders)) / 3  # independent formula
    np.testing.assert_allclose(torch.softmax(out, dim=-1).numpy(), mean.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.exp().sum(-1).numpy(), 1.0, rtol=1e-5)  # log-probabilities already


def test_n_ensemble_votes_the_fits(blobs):
    X, y = blobs
    one = ICONClustering(4, random_state=0, **FAST).fit(X)
    est = ICONClustering(4, random_state=0, **{**FAST, "n_ensemble": 3}).fit(X)
    from skicon._cluster_heads import ConsensusHead

    assert isinstance(est.module_, ConsensusHead) and len(est.module_.heads) == 3
    assert est.ensemble_losses_.shape == (3,) and np.all(np.isfinite(est.ensemble_losses_))
    assert one.ensemble_losses_.tolist() == [one.loss_]
    # the first fit is the n_ensemble=1 fit (same seed), and the vote is over the training samples
    assert est.ensemble_losses_[0] == one.loss_ and est.n_iter_ == one.n_iter_
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    proba = est.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(proba.argmax(1), est.labels_)
    assert adjusted_rand_score(y, est.labels_) == 1.0  # four separated blobs: every fit agrees
    again = ICONClustering(4, random_state=0, **{**FAST, "n_ensemble": 3}).fit(X)
    np.testing.assert_array_equal(again.labels_, est.labels_)  # reproducible from random_state
    assert again.loss_ == est.loss_


class _FixedLogits(torch.nn.Module):
    """A head that returns the same logits whatever its input (one logit row per sample)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.as_tensor(logits)

    def forward(self, x):
        return self.logits


def test_the_vote_outvotes_one_wrong_fit():
    # three labellings of four groups, each in its own numbering: two right, one with group 0
    # put in group 1's cluster and group 3 cut in two; matched to the first and averaged, the
    # vote is right on every sample (each has two right votes of three)
    from skicon._cluster_heads import ConsensusHead, match_clusters

    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(4), 50)
    right_a, right_b, wrong = np.array([2, 0, 3, 1])[y], np.array([1, 3, 0, 2])[y], y.copy()
    wrong[y == 0] = 1
    wrong[(y == 3) & (rng.rand(len(y)) < 0.5)] = 0
    fits = [4.0 * np.eye(4)[lab] + 0.1 * rng.randn(len(y), 4) for lab in (right_a, wrong, right_b)]
    orders = [match_clusters(fits[0].argmax(1), f.argmax(1), 4) for f in fits]
    with torch.no_grad():
        voted = ConsensusHead([_FixedLogits(f) for f in fits], orders)(None).numpy().argmax(1)
    assert adjusted_rand_score(y, wrong) < 0.7
    assert adjusted_rand_score(y, voted) == 1.0
    np.testing.assert_array_equal(voted, right_a)  # in the first fit's numbering


def test_n_ensemble_validation(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="n_ensemble"):
        ICONClustering(4, n_ensemble=0).fit(X)
    with pytest.raises(ValueError, match="n_ensemble"):
        ICONClustering(4, n_ensemble="three").fit(X)
    with pytest.raises(ValueError, match="n_ensemble"):
        ICONClustering(4, method="kmeans", n_ensemble=2).fit(X)


@pytest.mark.parametrize("method, fits", [("infonce_clustering", 3), ("mi", 1), ("ncut", 1), ("kmeans", None)])
def test_n_ensemble_auto(blobs, method, fits):
    # "auto": three fits for the paper's row, one for the others; the centroid rows take 1 or "auto"
    X, _ = blobs
    params = dict(method=method, random_state=0, max_iter=30, n_init=2, batch_size=64)
    est = ICONClustering(4, **params).fit(X)
    if fits is None:
        assert not hasattr(est, "ensemble_losses_")
        again = ICONClustering(4, n_ensemble=1, **params).fit(X)
        np.testing.assert_array_equal(again.labels_, est.labels_)
    else:
        assert est._plan.n_ensemble == fits and est.ensemble_losses_.shape == (fits,)


def test_ensemble_fits_run_in_processes_with_the_same_result(blobs, monkeypatch):
    # n_jobs=2: the three fits in two worker processes; bit-identical to one after the other
    import skicon._clustering as clustering

    X, _ = blobs
    calls = []

    class SpyParallel(clustering.Parallel):
        def __init__(self, n_jobs=None, **kwargs):
            calls.append(n_jobs)
            super().__init__(n_jobs=n_jobs, **kwargs)

    monkeypatch.setattr(clustering, "Parallel", SpyParallel)
    params = {**FAST, "n_ensemble": 3}
    serial = ICONClustering(4, random_state=0, n_jobs=1, **params).fit(X)
    assert calls == []  # one thread: in this process
    parallel = ICONClustering(4, random_state=0, n_jobs=2, **params).fit(X)
    assert calls == [2]
    np.testing.assert_array_equal(parallel.labels_, serial.labels_)
    np.testing.assert_array_equal(parallel.ensemble_losses_, serial.ensemble_losses_)
    assert parallel.loss_ == serial.loss_
    np.testing.assert_array_equal(parallel.predict_proba(X), serial.predict_proba(X))


def test_ensemble_with_callbacks_verbose_or_augment_stays_in_this_process(blobs, monkeypatch, capsys):
    import skicon._clustering as clustering

    def forbidden(*args, **kwargs):
        raise AssertionError("the fits must run in this process")

    monkeypatch.setattr(clustering, "Parallel", forbidden)
    X, _ = blobs
    seen = []
    params = {**FAST, "n_ensemble": 2}
    ICONClustering(4, random_state=0, n_jobs=2, callbacks=[lambda it, loss, est: seen.append(it)], **params).fit(X)
    assert seen  # the callback ran here, for the fits' training
    ICONClustering(4, random_state=0, n_jobs=2, verbose=1, **params).fit(X)
    views = []

    def jitter(Xb, g):
        views.append(len(Xb))
        return Xb + 0.01 * torch.randn(Xb.shape, generator=g, dtype=Xb.dtype)

    ICONClustering(4, random_state=0, n_jobs=2, augment=jitter, **params).fit(X)
    assert views  # the augment ran here
