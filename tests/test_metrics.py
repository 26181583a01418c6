import itertools

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score as sk_ari
from sklearn.metrics import normalized_mutual_info_score as sk_nmi

from skicon.metrics import (
    adjusted_rand_score,
    contingency,
    hungarian_accuracy,
    hungarian_matching,
    normalized_mutual_info_score,
)


def brute_force_accuracy(y, c):
    """Best injective matching clusters -> classes by enumeration (tiny inputs only)."""
    classes = sorted(set(y))
    clusters = sorted(set(c))
    best = 0
    if len(clusters) <= len(classes):
        for perm in itertools.permutations(classes, len(clusters)):
            m = dict(zip(clusters, perm))
            best = max(best, sum(m[ci] == yi for ci, yi in zip(c, y)))
    else:
        for perm in itertools.permutations(clusters, len(classes)):
            m = dict(zip(perm, classes))
            best = max(best, sum(m.get(ci) == yi for ci, yi in zip(c, y)))
    return best / len(y)


def test_perfect_up_to_renaming():
    assert hungarian_accuracy([0, 0, 1, 1, 2], [7, 7, 3, 3, 5]) == 1.0


def test_hand_computed_square():
    # clusters: a={0,0,1}, b={1,1,0}: matching a->0, b->1 gets 2 + 2 = 4 of 6
    assert hungarian_accuracy([0, 0, 1, 1, 1, 0], ["a", "a", "a", "b", "b", "b"]) == pytest.approx(4 / 6)


def test_more_clusters_than_classes_counts_every_sample():
    # 4 clusters, 2 classes: only two clusters can be matched; the others are errors.
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    c = [0, 0, 1, 1, 2, 2, 3, 3]
    assert hungarian_accuracy(y, c) == pytest.approx(4 / 8)


def test_fewer_clusters_than_classes():
    # one cluster for three equal classes: best is one class out of three
    assert hungarian_accuracy([0, 1, 2, 0, 1, 2], [0] * 6) == pytest.approx(2 / 6)


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(seed):
    rng = np.random.RandomState(seed)
    n_classes, n_clusters = rng.randint(1, 5), rng.randint(1, 5)
    y = rng.randint(n_classes, size=12)
    c = rng.randint(n_clusters, size=12)
    assert hungarian_accuracy(y, c) == pytest.approx(brute_force_accuracy(list(y), list(c)))


def test_matching_and_contingency():
    table, clusters, classes = contingency([0, 0, 1], ["x", "y", "y"])
    assert table.tolist() == [[1, 0], [1, 1]]
    assert clusters.tolist() == ["x", "y"] and classes.tolist() == [0, 1]
    assert hungarian_matching([0, 0, 1, 1], [1, 1, 0, 0]) == {0: 1, 1: 0}


def test_wrappers_equal_sklearn():
    rng = np.random.RandomState(0)
    y, c = rng.randint(3, size=50), rng.randint(4, size=50)
    assert adjusted_rand_score(y, c) == pytest.approx(sk_ari(y, c))
    assert normalized_mutual_info_score(y, c) == pytest.approx(sk_nmi(y, c))


@pytest.mark.parametrize("func", [hungarian_accuracy, adjusted_rand_score, normalized_mutual_info_score])
def test_bad_input(func):
    with pytest.raises(ValueError, match="same length"):
        func([0, 1], [0])
    with pytest.raises(ValueError, match="1-d"):
        func([[0, 1]], [[0, 1]])
    with pytest.raises(ValueError, match="empty"):
        func([], [])
