"""Objectives: the I-Con loss and its fast backends.

* :func:`icon_loss` (``_dense``): the loss on a dense or sparse ``p`` and a batch of ``log q``,
  the reference every other backend is tested against.
* ``_pairwise``: the scalable neighbour-embedding backend (sparse attraction over ``p``, exact /
  FFT-grid / sampled repulsion, compiled CPU loops in ``_compiled``) for distance kernels.
* ``_cluster``: the cluster-kernel loss over sparse positives (clustering rows).
* ``_batch``: per-batch supervisory blocks of contrastive learning and classification.

Objectives are pure functions of tensors: they know the maths of a row, not the estimators.
"""

from ._dense import icon_loss

__all__ = ["icon_loss"]
