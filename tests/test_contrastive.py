"""ICONContrastive / ICONClassifier: equivalence with the classic losses, behaviour, errors.

The reference losses below are written from the papers' formulas, independently of skicon.
"""

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skicon import get_method, list_methods
from skicon._classifier import ICONClassifier
from skicon._contrastive import ICONContrastive
from skicon.augment import GaussianNoise, RandomTranslation
from skicon.kernels import Cosine, Debiased, Gaussian, Labels, Prototypes, StudentT, UniformKNN, debias
from skicon.objectives import icon_loss
from skicon.objectives._batch import (
    PositiveBatches,
    Scaled,
    contrastive_loss,
    cross_entropy_block,
    debias_block,
    positive_pairs_block,
    triplet_block,
)

SMALL = dict(hidden_layer_sizes=(16,), n_components=4, batch_size=32, max_iter=3)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These fits are tiny; two threads on a shared 2-core machine only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _z(m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=torch.float64, requires_grad=True)


# ---------------------------------------------------------------------------------------------
# Independent reference losses
# ---------------------------------------------------------------------------------------------
def ref_nt_xent(z1, z2, tau):
    """NT-Xent (SimCLR): 2B anchors, the other view is the positive, all others negatives."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    b = z1.shape[0]
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(sim, target)


def ref_supcon(z, labels, tau):
    """Khosla et al. L_out: -1/|P(i)| sum_{p in P(i)} log softmax_{a != i}(z_i.z_a/tau)[p]."""
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    total, count = 0.0, 0
    for i in range(n):
        others = [a for a in range(n) if a != i]
        logits = torch.stack([z[i] @ z[a] / tau for a in others])
        log_den = torch.logsumexp(logits, dim=0)
        pos = [k for k, a in enumerate(others) if labels[a] == labels[i]]
        if not pos:
            continue
        total = total + sum(-(logits[k] - log_den) for k in pos) / len(pos)
        count += 1
    return total / count


def ref_clip(za, zb, tau):
    """Two-view CLIP loss: symmetric cross-entropy of the image-text similarity matrix."""
    logits = F.normalize(za, dim=1) @ F.normalize(zb, dim=1).T / tau
    target = torch.arange(za.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _entropy_rows(p):
    logp = torch.where(p > 0, torch.log(p), torch.zeros_like(p))
    has = p.sum(dim=1) > 0
    return (p * logp).sum(dim=1)[has].mean()


# ---------------------------------------------------------------------------------------------
# Equivalence of the Table 1 rows
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_infonce_row_equals_nt_xent(tau):
    b = 6
    z = _z(2 * b, 5)
    ids = torch.arange(b).repeat(2)
    p, nc = positive_pairs_block(ids)
    ours = contrastive_loss(z, p, nc, Cosine(temperature=tau))
    ref = ref_nt_xent(z[:b], z[b:], tau)
    torch.testing.assert_close(ours, ref)
    g_ours = torch.autograd.grad(ours, z)[0]
    g_ref = torch.autograd.grad(ref_nt_xent(z[:b], z[b:], tau), z)[0]
    torch.testing.assert_close(g_ours, g_ref)


def test_supcon_row_equals_khosla_up_to_the_entropy_of_p():
    # KL(p || q) = CE(p, q) - H(p); with p uniform over |P(i)| positives H(p) = log|P(i)|.
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 3])  # class 3 has no positive
    z = _z(10, 4, seed=1)
    p, nc = positive_pairs_block(labels)
    ours = contrastive_loss(z, p, nc, Cosine(temperature=0.3))
    ref = ref_supcon(z, labels.tolist(), 0.3)
    torch.testing.assert_close(ours, ref + _entropy_rows(p))
    g_ours = torch.autograd.grad(ours, z)[0]
    g_ref = torch.autograd.grad(ref_supcon(z, labels.tolist(), 0.3), z)[0]
    # Anchors without positives are ignored by both; the averages then match exactly.
    torch.testing.assert_close(g_ours, g_ref)


def test_cmc_clip_row_equals_two_view_clip_loss():
    b = 7
    za, zb = _z(b, 3, seed=2), _z(b, 3, seed=3)
    ids = torch.arange(b).repeat(2)
    views = torch.arange(2).repeat_interleave(b)
    p, nc = positive_pairs_block(ids, view_ids=views, cross_view=True)
    ours = contrastive_loss(torch.cat([za, zb]), p, nc, Cosine(temperature=0.07))
    torch.testing.assert_close(ours, ref_clip(za, zb, 0.07))


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.4])
def test_cross_entropy_row_equals_torch_cross_entropy_with_label_smoothing(alpha):
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(9, 4, generator=g, dtype=torch.float64)
    W = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3])
    log_q = Prototypes(temperature=0.7).log_prob(Z, W)
    p = cross_entropy_block(y, 5, alpha, dtype=torch.float64)
    ours = icon_loss(p, log_q)
    ref = F.cross_entropy(Z @ W.T / 0.7, y, label_smoothing=alpha)
    # Label smoothing alpha gives p~ = (1 - alpha) onehot + alpha / C exactly (paper eq. 2).
    torch.testing.assert_close(ours, ref + _entropy_rows(p))
    if alpha == 0:
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("sigma", [2.0, 0.5, 0.1])
def test_triplet_row_within_theorem_5_bounds(sigma):
    # Gaussian(sigma) has log-weights -d^2 / (2 sigma^2): Theorem 5's sigma_T^2 = 2 sigma^2.
    b = 12
    z = _z(2 * b, 3, seed=4).detach()
    ids = torch.arange(b).repeat(2)
    p, nc = positive_pairs_block(ids)
    p_t, nc_t = triplet_block(p, nc, torch.Generator().manual_seed(0))
    assert torch.all((~nc_t).sum(dim=1) == 2)
    loss = contrastive_loss(z, p_t, nc_t, Gaussian(sigma=sigma))
    sig_t2 = 2 * sigma**2
    l_sigma = sig_t2 * float(loss)
    pos = p_t.argmax(dim=1)
    neg = torch.where(~nc_t & (p_t == 0))[1]
    d_pos = ((z - z[pos]) ** 2).sum(dim=1)
    d_neg = ((z - z[neg]) ** 2).sum(dim=1)
    l_triplet = float(torch.clamp(d_pos - d_neg, min=0).mean())
    assert l_sigma - sig_t2 * math.log(2) - 1e-9 <= l_triplet <= l_sigma + 1e-9


def test_triplet_bound_is_tight_as_sigma_goes_to_zero():
    b = 10
    z = _z(2 * b, 3, seed=5).detach()
    p, nc = positive_pairs_block(torch.arange(b).repeat(2))
    p_t, nc_t = triplet_block(p, nc, torch.Generator().manual_seed(1))
    pos = p_t.argmax(dim=1)
    neg = torch.where(~nc_t & (p_t == 0))[1]
    l_triplet = float(
        torch.clamp(((z - z[pos]) ** 2).sum(1) - ((z - z[neg]) ** 2).sum(1), min=0).mean()
    )
    gaps = []
    for sigma in [1.0, 0.3, 0.05]:
        l_sigma = 2 * sigma**2 * float(contrastive_loss(z, p_t, nc_t, Gaussian(sigma=sigma)))
        gaps.append(l_sigma - l_triplet)
    assert gaps[0] > gaps[1] > gaps[2] >= 0 and gaps[2] < 0.01


def test_debias_block_matches_equation_2():
    ids = torch.tensor([0, 0, 1, 1, 2])  # sample 4 has no positive
    p, nc = positive_pairs_block(ids)
    out = debias_block(p, nc, 0.3)
    n_cand = 4  # every other point
    expected = 0.7 * p + 0.3 / n_cand * (~nc).double()
    expected[4] = 0.0
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out[:4].sum(dim=1), torch.ones(4, dtype=torch.float64))
    # Same as the foundation's Debiased kernel on rows with mass.
    from skicon.kernels import Labels

    ref = Debiased(Labels(), alpha=0.3).finalize_block(p, nc)
    torch.testing.assert_close(out[:4], ref[:4])


def test_debias_counts_only_cross_view_candidates():
    ids = torch.arange(3).repeat(2)
    views = torch.arange(2).repeat_interleave(3)
    p, nc = positive_pairs_block(ids, view_ids=views, cross_view=True)
    out = debias_block(p, nc, 0.6)
    # Three candidates per anchor (the other view): the positive gets 0.4 + 0.2, others 0.2.
    assert torch.allclose(out[0], torch.tensor([0, 0, 0, 0.6, 0.2, 0.2], dtype=torch.float64))


def test_same_sample_copies_are_not_candidates():
    ids = torch.tensor([0, 1, 0, 1])
    same = torch.tensor([0, 1, 1, 2])  # points 1 and 2 are copies of sample 1
    same = same[:, None] == same[None, :]
    p, nc = positive_pairs_block(ids, same_sample=same)
    assert nc[1, 2] and nc[2, 1]
    assert p[2, 0] == 1.0 and p[0, 2] == 1.0
    assert p[1, 2] == 0.0 and p[1, 3] == 1.0


def test_neighbour_partners_are_drawn_from_p():
    import scipy.sparse as sp

    from skicon._training import RowSampler

    P = sp.csr_matrix(np.array([[0, 0.25, 0.75, 0], [1.0, 0, 0, 0], [0, 0, 0, 0], [0.5, 0.5, 0, 0]]))
    batches = PositiveBatches([torch.eye(4, dtype=torch.float64)], None, RowSampler(P, 0), None, False,
                              torch.Generator().manual_seed(0), 4, False)
    draws, rows_with_mass = [], []
    for _ in range(4000):
        Z, p, nc = batches.points(lambda X, view: X, torch.arange(4))  # Z = one-hot of each sample
        draws.append(Z[4:].argmax(dim=1).numpy())
        rows_with_mass.append((p.sum(dim=1) > 0).numpy())
    draws, rows_with_mass = np.array(draws), np.array(rows_with_mass)
    assert np.mean(draws[:, 0] == 2) == pytest.approx(0.75, abs=0.03)
    assert np.all(draws[:, 1] == 0)
    # No neighbour: the anchor is paired with a copy of itself, which is no positive (row ignored).
    assert np.all(draws[:, 2] == 2) and not rows_with_mass[:, [2, 6]].any()
    assert rows_with_mass[:, [0, 1, 3, 4, 5, 7]].all()
    assert np.mean(draws[:, 3] == 1) == pytest.approx(0.5, abs=0.03)


# ---------------------------------------------------------------------------------------------
# Estimator behaviour
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X[:240], y[:240]


def test_fit_transform_shapes_attributes_and_dtype(digits):
    X, y = digits
    est = ICONContrastive(method="supcon", random_state=0, **SMALL).fit(X, y)
    Z = est.transform(X)
    assert Z.shape == (240, 4) and Z.dtype == np.float64
    assert est.positives_ == "labels"
    # max_iter counts epochs; n_iter_ counts optimiser steps; the loss is logged every 50 steps
    # and after the last one
    assert est.n_epochs_ == 3 and est.n_iter_ == 3 * (240 // 32)
    assert len(est.loss_curve_) == 1 and est.loss_curve_iterations_.tolist() == [est.n_iter_]
    assert isinstance(est.loss_curve_, np.ndarray) and np.all(np.isfinite(est.loss_curve_))
    assert np.isfinite(est.loss_) and isinstance(est.p_, Labels) and isinstance(est.q_, Cosine)
    assert est.transform(X.astype(np.float32)).dtype == np.float32
    assert est.transform(X.astype(np.int64)).dtype == np.float64


def test_same_random_state_same_embedding(digits):
    X, y = digits
    a = ICONContrastive(method="supcon", random_state=3, **SMALL).fit_transform(X, y)
    b = ICONContrastive(method="supcon", random_state=3, **SMALL).fit_transform(X, y)
    c = ICONContrastive(method="supcon", random_state=4, **SMALL).fit_transform(X, y)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_same_random_state_same_embedding_with_augment(digits):
    X, _ = digits
    aug = RandomTranslation(image_shape=(8, 8), max_shift=1)
    kw = dict(augment=aug, random_state=0, **SMALL)
    np.testing.assert_array_equal(ICONContrastive(**kw).fit_transform(X), ICONContrastive(**kw).fit_transform(X))


def test_supcon_training_lowers_loss_and_separates_classes(digits):
    X, y = digits
    from sklearn.neighbors import KNeighborsClassifier

    est = ICONContrastive(method="supcon", n_components=8, hidden_layer_sizes=(64,), max_iter=60,
                          batch_size=64, learning_rate=3e-3, random_state=0).fit(X[:160], y[:160])
    assert est.loss_curve_iterations_.tolist() == [50, 100, 120]
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    assert est.loss_ < est.loss_curve_[0]
    Z = est.transform(X)
    acc = KNeighborsClassifier(5).fit(Z[:160], y[:160]).score(Z[160:], y[160:])
    assert acc > 0.85


def test_positive_sources_are_resolved(digits):
    X, y = digits
    aug = GaussianNoise(std=0.1)
    assert ICONContrastive(augment=aug, **SMALL).fit(X).positives_ == "augment"
    assert ICONContrastive(**SMALL).fit(X).positives_ == "neighbors"
    assert ICONContrastive(**SMALL).fit(X, y).positives_ == "labels"
    groups = np.arange(240) // 2
    assert ICONContrastive(**SMALL).fit(X, groups=groups).positives_ == "groups"
    assert ICONContrastive(p=UniformKNN(5), **SMALL).fit(X).positives_ == "kernel"
    assert ICONContrastive(method="supcon", augment=aug, **SMALL).fit(X, y).positives_ == "labels"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(method="triplet"),
        dict(method="tsimclr", augment=GaussianNoise(std=0.2)),
        dict(method="cmc", augment=GaussianNoise(std=0.2)),
        dict(q=StudentT(dof=2.0), alpha=0.4),
        dict(q=Debiased(Cosine(temperature=0.2), alpha=0.2), alpha=0.2),
        dict(learn_temperature=True, augment=GaussianNoise(std=0.2)),
    ],
    ids=["triplet", "tsimclr", "cmc-augment", "studentt-debiased", "double-debiased", "learn-temp"],
)
def test_method_variants_train(digits, kwargs):
    X, _ = digits
    est = ICONContrastive(random_state=0, **{**SMALL, **kwargs}).fit(X)
    assert np.all(np.isfinite(est.transform(X)))
    assert np.all(np.isfinite(est.loss_curve_))


def test_learned_temperature_moves(digits):
    X, y = digits
    est = ICONContrastive(method="supcon", learn_temperature=True, learning_rate=1e-2, random_state=0,
                          **{**SMALL, "max_iter": 5}).fit(X, y)
    assert float(est.module_.log_scale.detach()) != 0.0


def test_groups_batches_keep_groups_together(digits):
    X, _ = digits
    # Each group is a sample and a shifted copy: precomputed augmentations.
    X2 = np.vstack([X, RandomTranslation(image_shape=(8, 8))(X, generator=0)])
    groups = np.concatenate([np.arange(240), np.arange(240)])
    est = ICONContrastive(random_state=0, **SMALL).fit(X2, groups=groups)
    assert est.positives_ == "groups"
    # Group-aware batches: the loss is the InfoNCE loss with positives present (< log(M-1)).
    assert est.loss_curve_[-1] < math.log(2 * 32 - 1)
    assert est.loss_ < math.log(2 * 32 - 1)  # evaluated in group-sorted blocks of 32


def test_views_cmc_two_encoders_and_transform_lists(digits):
    X, _ = digits
    Xa, Xb = X[:, :32], X[:, 32:]
    est = ICONContrastive(method="clip", mapper=["mlp", "linear"], random_state=0, **SMALL).fit([Xa, Xb])
    assert est.positives_ == "views" and est.n_views_ == 2
    assert type(est.module_.encoders[1]).__name__ == "Linear"
    Za, Zb = est.transform([Xa, Xb])
    assert Za.shape == Zb.shape == (240, 4)
    np.testing.assert_allclose(est.transform(Xb, view=1), Zb)
    assert np.isfinite(est.score([Xa, Xb]))


def test_callbacks_stop_training(digits):
    X, y = digits
    seen = []

    def stop_after_two(iteration, loss, estimator):
        seen.append((iteration, loss))
        return iteration >= 100

    est = ICONContrastive(method="supcon", callbacks=stop_after_two, random_state=0, **{**SMALL, "max_iter": 20})
    est.fit(X, y)
    # Callbacks run at every loss log (every 50 steps), with the steps done; truthy stops.
    assert est.n_iter_ == 100 and [it for it, _ in seen] == [50, 100]
    np.testing.assert_array_equal(est.loss_curve_, [loss for _, loss in seen])
    assert est.n_epochs_ == pytest.approx(100 / (240 // 32))
    clf_seen = []
    clf = ICONClassifier(max_iter=3, batch_size=64, hidden_layer_sizes=(8,), random_state=0,
                         callbacks=lambda it, loss, est: clf_seen.append(it)).fit(X, y)
    # 9 steps: one log, after the last one
    assert clf_seen == [9] and clf.n_iter_ == 3 * (240 // 64) and len(clf.loss_curve_) == 1


def test_pickle_roundtrip_gives_same_transform(digits):
    X, y = digits
    est = ICONContrastive(method="supcon", random_state=0, **SMALL).fit(X, y)
    est2 = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(est.transform(X), est2.transform(X))
    clf = ICONClassifier(random_state=0, max_iter=2, hidden_layer_sizes=(8,)).fit(X, y)
    clf2 = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clf.predict_proba(X), clf2.predict_proba(X))


def test_default_score(digits):
    X, y = digits
    est = ICONContrastive(method="supcon", random_state=0, **SMALL).fit(X, y)
    s = est.score(X, y)
    assert 0.0 <= s <= 1.0
    # Without labels: minus a held-out InfoNCE-type loss, deterministic.
    est_u = ICONContrastive(augment=GaussianNoise(), random_state=0, **SMALL).fit(X)
    assert est_u.score(X) == est_u.score(X) < 0


# ---------------------------------------------------------------------------------------------
# The registry is the source of truth; loss_ is the row's loss
# ---------------------------------------------------------------------------------------------
def _fit_inputs(row_name, X, y):
    """fit arguments that give a row its positives (groups = pairs of consecutive samples)."""
    groups = np.arange(len(X)) // 2
    if row_name == "supcon":
        return (X, y), {}
    if row_name == "cmc":
        return ([X[:, :32], X[:, 32:]],), {}
    return (X,), {"groups": groups}


def test_method_accepts_every_row_and_alias_of_the_registry(digits):
    X, y = digits
    X, y = X[:60], y[:60]
    rows = list_methods("ICONContrastive")
    assert {r.name for r in rows} == {"infonce", "tsimclr", "triplet", "supcon", "cmc"}
    for row in rows:
        for name in (row.name, *row.aliases):
            args, kw = _fit_inputs(row.name, X, y)
            est = ICONContrastive(method=name, random_state=0, **{**SMALL, "max_iter": 1}).fit(*args, **kw)
            assert est._plan.method == row.name
            assert type(est.q_) is type(row.make_q()) and est.q_.get_params() == row.make_q().get_params()
    assert [r.name for r in list_methods("ICONClassifier")] == ["cross_entropy"]
    clf = ICONClassifier(method="cross_entropy", max_iter=1, hidden_layer_sizes=(8,)).fit(X, y)
    assert clf.q_.get_params() == get_method("cross_entropy").make_q().get_params()
    with pytest.raises(ValueError, match="method"):
        ICONClassifier(method="supcon").fit(X, y)
    with pytest.raises(ValueError, match="method"):
        ICONContrastive(method="cross_entropy").fit(X, y)


LOSS_CASES = {
    "supcon": dict(method="supcon"),
    "supcon-debiased": dict(method="supcon", alpha=0.3),
    "infonce-groups": dict(method="infonce"),
    "infonce-learned-temperature": dict(method="infonce", learn_temperature=True, learning_rate=1e-2),
    "tsimclr-groups": dict(method="tsimclr", dof=2.0),
    "cmc-views": dict(method="cmc"),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_loss_is_the_row_loss_of_the_learned_representation(digits, case):
    """With one batch holding every sample, loss_ equals row.loss(X, Z_train, p=p_, q=q_)."""
    X, y = digits
    X, y = X[:40], y[:40]
    kwargs = LOSS_CASES[case]
    row = get_method(kwargs["method"])
    args, fit_kw = _fit_inputs(row.name, X, y)
    fit_params = {**SMALL, "batch_size": 128, "max_iter": 30, "learning_rate": 1e-2, **kwargs}
    est = ICONContrastive(random_state=0, **fit_params).fit(*args, **fit_kw)
    if row.name == "cmc":
        Z = np.vstack(est.transform(args[0]))
        context = dict(groups=np.r_[np.arange(40), np.arange(40)], views=np.repeat([0, 1], 40))
    else:
        Z = est.transform(X)
        context = dict(y=y) if row.name == "supcon" else dict(groups=fit_kw["groups"])
    expected = float(row.loss(np.zeros((len(Z), 1)), Z, p=est.p_, q=est.q_, **context))
    assert est.loss_ == pytest.approx(expected, rel=1e-5)
    wrong = float(row.loss(np.zeros((len(Z), 1)), np.random.RandomState(0).randn(*Z.shape), p=est.p_, q=est.q_, **context))
    assert abs(wrong - expected) > 1e-3 * abs(expected)  # the comparison can fail
    if kwargs.get("learn_temperature"):
        assert isinstance(est.q_, Scaled) and est.q_.log_scale == float(est.module_.log_scale.detach())


@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_classifier_loss_is_the_cross_entropy_row_loss(digits, alpha):
    X, y = digits
    X, y = X[:40], y[:40]
    clf = ICONClassifier(alpha=alpha, batch_size=128, max_iter=3, hidden_layer_sizes=(16,), random_state=0).fit(X, y)
    W = clf.module_.prototypes.detach().double()
    expected = float(get_method("cross_entropy").loss(X, clf.transform(X), y=y, prototypes=W, p=clf.p_, q=clf.q_))
    assert clf.loss_ == pytest.approx(expected, rel=1e-5)
    assert isinstance(clf.p_, Debiased if alpha else Prototypes)


def test_triplet_loss_is_the_row_loss_given_the_drawn_negatives(digits):
    """Triplet draws one negative per anchor; loss_ uses the draws of seed 0, and the row's loss
    with those (anchor, positive, negative) triplets as ``exclude`` gives it exactly."""
    X, _ = digits
    X = X[:40]
    groups = np.arange(40) // 2
    est = ICONContrastive(method="triplet", random_state=0, **{**SMALL, "batch_size": 128}).fit(X, groups=groups)
    p, nc = positive_pairs_block(torch.as_tensor(groups))
    _, nc_t = triplet_block(p, nc, torch.Generator().manual_seed(0))
    row = get_method("triplet")
    expected = float(row.loss(X, est.transform(X), groups=groups, exclude=nc_t, q=est.q_))
    assert est.loss_ == pytest.approx(expected, rel=1e-5)
    other = triplet_block(p, nc, torch.Generator().manual_seed(1))[1]
    assert float(row.loss(X, est.transform(X), groups=groups, exclude=other, q=est.q_)) != pytest.approx(expected)


def test_loss_is_deterministic_and_score_is_minus_the_undebiased_loss(digits):
    X, _ = digits
    groups = np.arange(240) // 2
    est = ICONContrastive(random_state=0, **SMALL).fit(X, groups=groups)  # 240 samples: 8 blocks
    assert est.score(X, groups=groups) == pytest.approx(-est.loss_, rel=1e-12)
    aug = ICONContrastive(augment=GaussianNoise(std=0.2), random_state=0, **SMALL).fit(X)
    assert aug.loss_ == pytest.approx(aug._evaluate(aug._make_batcher(
        [torch.as_tensor(X * aug.input_scale_)], None, None, None, seed=0), 0.0), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, fit_y, match",
    [
        (dict(q=StudentT(), temperature=0.3), True, "temperature"),
        (dict(q=StudentT(), dof=3.0), True, "dof"),
        (dict(method="tsimclr", temperature=0.3, augment=GaussianNoise()), False, "temperature"),
        (dict(method="supcon", dof=3.0), True, "dof"),
        (dict(p=UniformKNN(5), positives="labels"), True, "p is only used"),
    ],
    ids=["q-and-temperature", "q-and-dof", "tsimclr-temperature", "supcon-dof", "p-with-labels"],
)
def test_parameters_that_would_be_ignored_are_rejected(digits, kwargs, fit_y, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        ICONContrastive(**{**SMALL, **kwargs}).fit(X, y if fit_y else None)


def test_debiased_supervisory_kernel_debiases_the_batches(digits):
    X, _ = digits
    kw = dict(random_state=0, **SMALL)
    via_p = ICONContrastive(p=Debiased(UniformKNN(5), alpha=0.5), **kw).fit(X)
    via_alpha = ICONContrastive(p=UniformKNN(5), alpha=0.5, **kw).fit(X)
    np.testing.assert_array_equal(via_p.transform(X), via_alpha.transform(X))
    assert via_p.loss_ == via_alpha.loss_ and via_p._plan.alpha == 0.5
    assert not np.allclose(via_p.transform(X), ICONContrastive(p=UniformKNN(5), **kw).fit(X).transform(X))
    with pytest.raises(ValueError, match="alpha"):
        ICONContrastive(p=Debiased(UniformKNN(5), alpha=0.5), alpha=0.2, **kw).fit(X)


def test_augment_with_a_list_of_views_is_rejected(digits):
    X, _ = digits
    with pytest.raises(ValueError, match="augment"):
        ICONContrastive(method="cmc", augment=GaussianNoise(), **SMALL).fit([X[:, :32], X[:, 32:]])


def test_debiasing_uses_the_shared_formula():
    p, nc = positive_pairs_block(torch.tensor([0, 0, 1, 1, 1]))
    n_cand = (~nc).sum(dim=1, keepdim=True).double()
    torch.testing.assert_close(debias_block(p, nc, 0.4), torch.where(nc, 0.0, debias(p, 0.4, n_cand)))
    onehot = F.one_hot(torch.tensor([2, 0]), 3).double()
    torch.testing.assert_close(cross_entropy_block(torch.tensor([2, 0]), 3, 0.4, dtype=torch.float64),
                               debias(onehot, 0.4, 3.0))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_single_class_labels_raise(digits):
    X, _ = digits
    with pytest.raises(ValueError, match="single class"):
        ICONContrastive(method="supcon", **SMALL).fit(X, np.zeros(240))
    with pytest.raises(ValueError, match="at least 2 classes"):
        ICONClassifier(max_iter=1).fit(X, np.zeros(240))


def test_mismatched_view_lengths_raise(digits):
    X, _ = digits
    with pytest.raises(ValueError, match="mismatched view lengths"):
        ICONContrastive(method="cmc", **SMALL).fit([X[:100], X[:90]])


def test_augment_that_changes_shape_raises(digits):
    X, _ = digits
    with pytest.raises(ValueError, match="same shape"):
        ICONContrastive(augment=lambda xb, g: xb[:, :10], **SMALL).fit(X)
    with pytest.raises(ValueError, match="image_shape"):
        ICONContrastive(augment=RandomTranslation(image_shape=(7, 7)), **SMALL).fit(X)


def test_nan_input_raises(digits):
    X, y = digits
    X = X.copy()
    X[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ICONContrastive(**SMALL).fit(X, y)
    with pytest.raises(ValueError, match="NaN"):
        ICONClassifier(max_iter=1).fit(X, y)


def test_missing_positives_raise(digits):
    X, y = digits
    with pytest.raises(ValueError, match="supcon"):
        ICONContrastive(method="supcon", **SMALL).fit(X)
    with pytest.raises(ValueError, match="views"):
        ICONContrastive(method="cmc", **SMALL).fit(X)
    with pytest.raises(ValueError, match="augment"):
        ICONContrastive(positives="augment", **SMALL).fit(X)
    with pytest.raises(ValueError, match="single sample"):
        ICONContrastive(**SMALL).fit(X, groups=np.arange(240))


def test_bad_parameters_raise(digits):
    X, y = digits
    with pytest.raises(ValueError, match="alpha"):
        ICONContrastive(alpha=1.5).fit(X, y)
    with pytest.raises(ValueError, match="method"):
        ICONContrastive(method="byol").fit(X, y)
    with pytest.raises(ValueError, match="mapper"):
        ICONContrastive(mapper="cnn").fit(X, y)


# ---------------------------------------------------------------------------------------------
# ICONClassifier
# ---------------------------------------------------------------------------------------------
def test_classifier_linear_matches_logistic_regression_on_digits():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(Xtr, ytr).score(Xte, yte)
    clf = ICONClassifier(mapper="linear", batch_size=128, max_iter=30, learning_rate=1e-2,
                         random_state=0).fit(Xtr, ytr)
    assert clf.score(Xte, yte) >= lr - 0.01
    proba = clf.predict_proba(Xte)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert set(clf.predict(Xte)) <= set(clf.classes_)


def test_classifier_label_smoothing_softens_probabilities():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    hard = ICONClassifier(mapper="linear", max_iter=40, learning_rate=1e-2, random_state=0).fit(X, y)
    soft = ICONClassifier(mapper="linear", alpha=0.5, max_iter=40, learning_rate=1e-2, random_state=0).fit(X, y)
    assert soft.predict_proba(X).max(axis=1).mean() < hard.predict_proba(X).max(axis=1).mean()
    assert soft.score(X, y) > 0.8


def test_classifier_string_labels_and_transform():
    rng = np.random.RandomState(0)
    X = np.vstack([rng.randn(30, 3) + 3, rng.randn(30, 3) - 3])
    y = np.array(["a"] * 30 + ["b"] * 30)
    clf = ICONClassifier(n_components=5, max_iter=20, random_state=0).fit(X, y)
    assert list(clf.classes_) == ["a", "b"]
    assert clf.score(X, y) > 0.95
    assert clf.transform(X).shape == (60, 5)
