"""Clustering and embedding quality scores.

* :func:`hungarian_accuracy`: the fraction of samples whose cluster is matched to their class by
  the best one-to-one matching of clusters to classes. The matching is a rectangular
  assignment, so the number of clusters may differ from the number of classes; samples in a
  cluster left without a class (more clusters than classes) count as errors, and every sample
  is counted.
* :func:`adjusted_rand_score`, :func:`normalized_mutual_info_score`: thin wrappers over
  scikit-learn's implementations with the same argument order and input checks.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as _skm

__all__ = [
    "contingency",
    "hungarian_matching",
    "hungarian_accuracy",
    "adjusted_rand_score",
    "normalized_mutual_info_score",
]


def _check_label_pair(labels_true, labels_pred):
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    if labels_true.ndim != 1 or labels_pred.ndim != 1:
        raise ValueError(
            "labels_true and labels_pred must be 1-d arrays of labels, got shapes "
            f"{labels_true.shape} and {labels_pred.shape}."
        )
    if labels_true.shape[0] != labels_pred.shape[0]:
        raise ValueError(
            f"labels_true and labels_pred must have the same length, got {labels_true.shape[0]} "
            f"and {labels_pred.shape[0]}."
        )
    if labels_true.shape[0] == 0:
        raise ValueError("labels_true and labels_pred are empty; at least one sample is needed.")
    return labels_true, labels_pred


def contingency(labels_true, labels_pred):
    """Counts of samples per (cluster, class) pair.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth classes (any hashable labels).
    labels_pred : array-like of shape (n_samples,)
        Cluster labels (any hashable labels).

    Returns
    -------
    table : ndarray of shape (n_clusters, n_classes)
        ``table[a, b]`` is the number of samples in the a-th cluster and the b-th class, in the
        sorted order of the unique labels.
    clusters : ndarray of shape (n_clusters,)
        The unique cluster labels (row order).
    classes : ndarray of shape (n_classes,)
        The unique class labels (column order).

    Examples
    --------
    >>> from skicon.metrics import contingency
    >>> contingency([0, 0, 1], [5, 7, 7])[0]
    array([[1, 0],
           [1, 1]])
    """
    labels_true, labels_pred = _check_label_pair(labels_true, labels_pred)
    classes, y = np.unique(labels_true, return_inverse=True)
    clusters, c = np.unique(labels_pred, return_inverse=True)
    table = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(table, (c.ravel(), y.ravel()), 1)
    return table, clusters, classes


def hungarian_matching(labels_true, labels_pred):
    """Best one-to-one matching of clusters to classes (maximum total agreement).

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth classes.
    labels_pred : array-like of shape (n_samples,)
        Cluster labels.

    Returns
    -------
    dict
        ``{cluster_label: class_label}`` for the ``min(n_clusters, n_classes)`` matched pairs.
        Clusters absent from the dict have no class.

    Examples
    --------
    >>> from skicon.metrics import hungarian_matching
    >>> hungarian_matching([0, 0, 1, 1], [1, 1, 0, 0])
    {0: 1, 1: 0}
    """
    table, clusters, classes = contingency(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {clusters[r].item(): classes[c].item() for r, c in zip(rows, cols)}


def hungarian_accuracy(labels_true, labels_pred):
    """Clustering accuracy under the best one-to-one matching of clusters to classes.

    ``acc = max over injective matchings m of (1/n) sum_i 1[m(cluster_i) = class_i]``,
    found with the Hungarian algorithm on the (n_clusters, n_classes) contingency table. The
    table may be rectangular: with more clusters than classes the extra clusters stay
    unmatched and all their samples count as errors; with fewer clusters than classes the
    samples of unmatched classes count as errors. The denominator is always the total number
    of samples.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth classes.
    labels_pred : array-like of shape (n_samples,)
        Cluster labels.

    Returns
    -------
    float
        Accuracy in [0, 1]; 1 for a clustering equal to the classes up to renaming.

    Examples
    --------
    >>> from skicon.metrics import hungarian_accuracy
    >>> hungarian_accuracy([0, 0, 1, 1], [3, 3, 2, 2])
    1.0
    >>> hungarian_accuracy([0, 0, 0, 0], [0, 0, 1, 1])  # two clusters, one class
    0.5
    """
    table, _, _ = contingency(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def adjusted_rand_score(labels_true, labels_pred):
    """Adjusted Rand index (chance-corrected pair agreement) of a clustering.

    Wraps :func:`sklearn.metrics.adjusted_rand_score` after checking the inputs.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth classes.
    labels_pred : array-like of shape (n_samples,)
        Cluster labels.

    Returns
    -------
    float
        ARI, 1 for a perfect match and about 0 for a random labelling.

    Examples
    --------
    >>> from skicon.metrics import adjusted_rand_score
    >>> adjusted_rand_score([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    """
    labels_true, labels_pred = _check_label_pair(labels_true, labels_pred)
    return float(_skm.adjusted_rand_score(labels_true, labels_pred))


def normalized_mutual_info_score(labels_true, labels_pred, *, average_method="arithmetic"):
    """Normalized mutual information between a clustering and the classes.

    Wraps :func:`sklearn.metrics.normalized_mutual_info_score` after checking the inputs.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth classes.
    labels_pred : array-like of shape (n_samples,)
        Cluster labels.
    average_method : {"arithmetic", "geometric", "min", "max"}, default="arithmetic"
        Normaliser of the mutual information.

    Returns
    -------
    float
        NMI in [0, 1].

    Examples
    --------
    >>> from skicon.metrics import normalized_mutual_info_score
    >>> normalized_mutual_info_score([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    """
    labels_true, labels_pred = _check_label_pair(labels_true, labels_pred)
    return float(_skm.normalized_mutual_info_score(labels_true, labels_pred, average_method=average_method))
