"""Learned kernels over discrete structure: the clustering kernel and class prototypes."""

import torch

from ._base import Kernel

__all__ = ["ClusterKernel", "Prototypes"]


class ClusterKernel(Kernel):
    """The "shared cluster likelihood" kernel of the clustering rows (Theorems 8-11).

    With soft assignments phi_ic = p(c | x_i),

    ``q(j|i) = sum_c phi_ic phi_jc / sum_k phi_kc``

    the probability that a point drawn uniformly from i's cluster is j. With
    ``degree_weighted=True`` (normalized cuts, Theorem 11),
    ``q(j|i) = sum_c phi_ic phi_jc d_j / sum_k phi_kc d_k``. Rows sum to one over the candidate
    set that defines the cluster sizes.

    The representation passed to :meth:`log_prob` is the matrix of assignment *logits*
    (phi = softmax(logits)); computations are done in log space.

    Parameters
    ----------
    degree_weighted : bool, default=False
        Weight candidates by their degree ``degrees`` (passed to :meth:`log_prob`).
    include_self : bool, default=True
        Whether j == i is a candidate (the theorems sum over all k, self included).

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import ClusterKernel
    >>> logits = torch.tensor([[9.0, -9.0], [9.0, -9.0], [-9.0, 9.0]], dtype=torch.float64)
    >>> ClusterKernel().prob(logits).round(decimals=3)[0]
    tensor([0.5000, 0.5000, 0.0000], dtype=torch.float64)
    """

    def __init__(self, degree_weighted=False, *, include_self=True):
        self.degree_weighted = degree_weighted
        self.include_self = include_self

    def log_prob(self, Z, Z_cand=None, *, exclude=None, degrees=None):
        """Log q(j|i) from assignment logits; see the class docstring.

        Parameters
        ----------
        Z : torch.Tensor of shape (n_anchors, n_clusters)
            Assignment logits of the anchors.
        Z_cand : torch.Tensor of shape (n_candidates, n_clusters), default=None
            Assignment logits of the candidates (e.g. an EMA teacher's); ``Z`` when None.
        exclude : torch.Tensor of bool, default=None
            Extra non-candidate pairs.
        degrees : torch.Tensor of shape (n_candidates,), default=None
            Candidate degrees, required when ``degree_weighted``.

        Returns
        -------
        torch.Tensor of shape (n_anchors, n_candidates)
            Log-probabilities.
        """
        log_phi = torch.log_softmax(Z, dim=1)
        log_phi_c = log_phi if Z_cand is None else torch.log_softmax(Z_cand, dim=1)
        if self.degree_weighted:
            if degrees is None:
                raise ValueError("ClusterKernel(degree_weighted=True) needs the candidate degrees: degrees=...")
            log_d = torch.log(torch.as_tensor(degrees, dtype=Z.dtype, device=Z.device))
        else:
            log_d = torch.zeros(log_phi_c.shape[0], dtype=Z.dtype, device=Z.device)
        # log of the (degree-weighted) cluster sizes over the candidate set
        log_size = torch.logsumexp(log_phi_c + log_d[:, None], dim=0)
        log_cand = log_phi_c + log_d[:, None] - log_size[None, :]
        if log_phi.shape[0] * log_cand.shape[0] * log_phi.shape[1] <= 2**20:
            logits = torch.logsumexp(log_phi[:, None, :] + log_cand[None, :, :], dim=2)
        else:
            # Large blocks: a matmul in probability space (memory O(B M) instead of O(B M C)).
            tiny = torch.finfo(Z.dtype).tiny
            logits = torch.log((torch.exp(log_phi) @ torch.exp(log_cand).T).clamp_min(tiny))
        mask = self._candidate_exclusions(logits, Z_cand, exclude)
        if mask is None:
            return logits
        # Excluding pairs breaks normalisation; renormalise over what remains.
        logits = logits.masked_fill(mask, float("-inf"))
        return logits - torch.logsumexp(logits, dim=1, keepdim=True)

    def log_weights(self, Z, Z_cand=None):
        return self.log_prob(Z, Z_cand)


class Prototypes(Kernel):
    """Softmax over learned class prototypes: q(c|i) = exp(z_i . w_c / T) / sum_k exp(z_i . w_k / T).

    The learned kernel of cross-entropy classification (Corollary 3): the candidates are the
    classes, represented by prototype vectors ``w`` passed as ``Z_cand``. As a supervisory kernel
    it is the indicator over the label, p(c|i) = 1[c = y_i] (``conditional`` returns the
    (n_samples, n_classes) one-hot matrix).

    Parameters
    ----------
    temperature : float, default=1.0
        Temperature T of the softmax.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import Prototypes
    >>> Prototypes().prob(torch.eye(2), torch.eye(2)).shape
    torch.Size([2, 2])
    """

    include_self = True

    def __init__(self, temperature=1.0):
        self.temperature = temperature

    def log_weights(self, Z, Z_cand=None):
        if Z_cand is None:
            raise ValueError("Prototypes.log_prob needs the class prototypes as Z_cand.")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}.")
        return Z @ Z_cand.T / self.temperature

    def conditional(self, X, *, y=None, groups=None, knn=None, random_state=None, n_jobs=None):
        import numpy as np
        import scipy.sparse as sp

        if y is None:
            raise ValueError("Prototypes as a supervisory kernel needs class labels y.")
        _, codes = np.unique(np.asarray(y), return_inverse=True)
        n = len(codes)
        return sp.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, codes.max() + 1))
