"""Exact objectives of the wide-kernel limits (the PCA and MDS rows) for LBFGS, on the pairwise engine.

Both rows are the conditional I-Con loss with a learned distance kernel ``q`` on the embedding:

* PCA (Corollary 1): ``p(j|i) = 1[i = j]`` and ``q`` includes the self pair, so the loss is
  ``mean_i -log q(i|i) = mean_i [log(w(0) + Z_i) - log w(0)]`` with ``Z_i = sum_{j != i} w_ij``.
  Its gradient is the conditional repulsion of the engine with normalisers ``w(0) + Z_i``.
* MDS (Theorem 3): ``p`` is a wide Gaussian over all pairs of the data (a dense conditional
  ``P``, the exact mode the row asks for) and ``q`` excludes the self pair: exactly the
  conditional form of :func:`skicon.objectives._pairwise.objective_and_gradient`.

Both evaluate the exact loss and its closed-form gradient in O(n^2) time and O(n) extra
memory through the engine's all-pairs sums (the compiled loops on CPU for kernels that name one,
torch code otherwise), instead of autograd through dense (n, n) blocks. :class:`LimitObjective`
is the Trainer objective: it always returns the loss (LBFGS's line search needs it) and carries
the gradient into a parametric mapper by the chain rule.
"""

import math

import torch

from ._pairwise import _Repulsion, objective_and_gradient

__all__ = ["self_included_identity_loss", "LimitObjective"]


def self_included_identity_loss(Y, kernel, *, method="exact"):
    """Loss and gradient of the PCA row: ``p = 1[i = j]``, ``q`` a self-including distance kernel.

    Parameters
    ----------
    Y : torch.Tensor of shape (n, d)
        Embedding.
    kernel : DistanceKernel
        Learned kernel (its self pair counts as a candidate).
    method : {"exact", "fft", "sampled"}, default="exact"
        How the all-pairs sums are computed (see :func:`~skicon.objectives._pairwise.objective_and_gradient`).

    Returns
    -------
    grad : torch.Tensor of shape (n, d)
    loss : float
        ``mean_i -log q(i|i)``.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import Gaussian
    >>> Y = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    >>> grad, loss = self_included_identity_loss(Y, Gaussian(sigma=1.0))
    >>> round(loss, 6) == round(float(torch.log(1 + torch.exp(torch.tensor(-0.5)))), 6)
    True
    """
    n = Y.shape[0]
    field = _Repulsion(Y, kernel, method, None, 64, None)
    w0 = field.w0
    tiny = torch.finfo(Y.dtype).tiny
    if field.profile is not None:
        Zi, rep_own, _, _ = field.compiled()
        Zi = (Zi + w0).clamp_min(tiny)
        inv = 1.0 / Zi
        _, rep_other, _, _ = field.compiled(charges=inv.numpy())
        rep_own = rep_own * inv[:, None]
    else:
        k = kernel
        Zi = (field.sums(k.weight, field.one)[:, 0]).clamp_min(tiny)  # the self pair included
        inv = (1.0 / Zi)[:, None]
        d = Y.shape[1]
        S = field.sums(k.weight_slope, torch.cat([field.one, Y, inv, Y * inv], dim=1))
        rep_own = (Y * S[:, :1] - S[:, 1 : 1 + d]) * inv
        rep_other = Y * S[:, 1 + d : 2 + d] - S[:, 2 + d :]
    # d/dy_i of mean_k log Z_k: -(2/n) sum_j w_ij g_ij (1/Z_i + 1/Z_j) (y_i - y_j)
    grad = -(2.0 / n) * (rep_own + rep_other)
    loss = float(torch.log(Zi).mean()) - math.log(w0)
    return grad, loss


class LimitObjective:
    """Trainer objective of the PCA and MDS rows: exact loss, closed-form gradient, every call.

    Parameters
    ----------
    kernel : DistanceKernel
        Learned kernel ``q``.
    aff : SparseAffinity or None
        The conditional ``P`` (:meth:`~skicon.objectives._pairwise.SparseAffinity.conditional`)
        for MDS; None for PCA's ``p = 1[i = j]`` (then ``kernel`` includes the self pair).
    inputs : torch.Tensor of shape (n, n_features), default=None
        Inputs of a parametric mapper; None for a table.
    alpha : float, default=0.0
        Debiasing of ``p`` (MDS only).

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import Gaussian
    >>> from skicon.mappers import Table
    >>> table = Table(torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    >>> obj = LimitObjective(Gaussian(sigma=1.0, include_self=True), None)
    >>> float(obj(table, None, table)) > 0, table.weight.grad.shape
    (True, torch.Size([2, 1]))
    """

    def __init__(self, kernel, aff=None, *, inputs=None, alpha=0.0):
        self.kernel, self.aff, self.inputs, self.alpha = kernel, aff, inputs, float(alpha)

    def embedding(self, module):
        """The embedding the module gives (with an autograd graph for a parametric mapper)."""
        return module.weight if self.inputs is None else module(self.inputs)

    def loss_and_gradient(self, Y):
        """``(grad, loss)`` at the embedding ``Y``."""
        Y = Y.detach()
        if self.aff is None:
            return self_included_identity_loss(Y, self.kernel)
        return objective_and_gradient(Y, self.aff, self.kernel, normalization="conditional", alpha=self.alpha,
                                      method="exact", want_loss=True)

    def __call__(self, module, batch, teacher):
        Y = self.embedding(module)
        grad, loss = self.loss_and_gradient(Y)
        if Y.is_leaf:  # a plain table: the embedding is the parameter
            Y.grad = grad.to(Y.dtype)
        else:  # a mapper or a rescaled table: the chain rule
            (Y * grad.to(Y.dtype)).sum().backward()
        return torch.tensor(loss, dtype=torch.float64)

    @torch.no_grad()
    def final_loss(self, module):
        """The loss at the module's embedding."""
        return self.loss_and_gradient(self.embedding(module))[1]
