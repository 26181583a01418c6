"""Multi-process training on :mod:`torch.distributed`: one global batch, its forward pass split by rank.

When a minibatch estimator (ICONContrastive, ICONClassifier, ICONClustering's learned heads,
ICONEmbedding's minibatch parametric path) is fitted in processes that have initialised a
default process group with more than one rank (``torchrun --nproc_per_node=N script.py``, or
``torch.distributed.init_process_group`` called by the user), the :class:`~skicon._training.Trainer`
trains through a :class:`ShardedModule` instead of the module itself:

* every rank draws the *same* global batch (the Trainer's generator and the objectives' draws are
  seeded from the estimator's integer ``random_state``; :func:`check_same_seed` refuses ranks
  that disagree);
* each rank runs the mapper, wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, on
  its contiguous share of the batch's points (:func:`shard_bounds`): the encoder's forward and
  backward passes, the expensive part, are split;
* the representations are gathered with an all-gather that keeps the autograd graph
  (:func:`gather_rows`), so each rank holds the representations of
  the whole global batch and evaluates exactly the single-process loss of that batch (InfoNCE,
  SupCon, the cluster losses: the candidate side is the global batch);
* gradients: every rank back-propagates the same loss ``L``; the all-gather's backward sums the
  ranks' gradients of each share (``world_size * dL/dZ_r``), and DDP averages the parameter
  gradients over the ranks, so every rank applies ``dL/dtheta``, the single-process gradient.
  Parameters used only in the loss (class prototypes, CLIP's temperature) get ``dL/dtheta`` on
  every rank, which the average leaves unchanged.

The loss block itself is evaluated on every rank (O(M^2) per rank for M batch points, as in one
process); only the mapper is sharded. Every rank ends with the same fitted estimator, holding the
unwrapped module (pickle-able, usable without :mod:`torch.distributed`). What is not distributed:
the t-SNE engine and the exact full-batch paths run identically on each rank (no speed-up); the
supervisory ``p`` is computed on each rank and rank 0's is used everywhere (:func:`from_rank0`).
"""

import numpy as np
import torch

__all__ = ["is_active", "world", "shard_bounds", "gather_rows", "ShardedModule", "check_same_seed", "from_rank0"]


def is_active():
    """Whether a default process group with more than one rank is initialised.

    Returns
    -------
    bool

    Examples
    --------
    >>> is_active()  # a plain Python process
    False
    """
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def world():
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> world()
    (0, 1)
    """
    if not is_active():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def shard_bounds(n, world_size):
    """Contiguous, near-equal shares of ``n`` rows among ``world_size`` ranks.

    Parameters
    ----------
    n : int
        Rows of the global batch.
    world_size : int
        Number of ranks.

    Returns
    -------
    ndarray of shape (world_size + 1,)
        Rank ``r`` holds rows ``bounds[r]:bounds[r + 1]`` (the first ``n % world_size`` ranks
        one row more).

    Examples
    --------
    >>> shard_bounds(5, 2).tolist()
    [0, 3, 5]
    """
    sizes = np.full(world_size, n // world_size, dtype=np.int64)
    sizes[: n % world_size] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def gather_rows(local, bounds, axis=0):
    """All-gather each rank's share along ``axis`` with its autograd graph; the whole batch.

    Shares may differ by one row: each is padded to the largest share before the all-gather
    (collectives need equal shapes) and the padding is dropped after it.

    Parameters
    ----------
    local : torch.Tensor
        This rank's share (``bounds[r + 1] - bounds[r]`` rows along ``axis``).
    bounds : ndarray of int
        :func:`shard_bounds` of the global batch.
    axis : int, default=0
        Batch axis of ``local``.

    Returns
    -------
    torch.Tensor
        The global batch, identical on every rank. Its backward sums the ranks' gradients of each
        share.
    """
    sizes = np.diff(bounds)
    width = int(sizes.max())
    pad = width - local.shape[axis]
    if pad:
        shape = list(local.shape)
        shape[axis] = pad
        local = torch.cat([local, local.new_zeros(shape)], dim=axis)
    parts = _AllGather.apply(local.contiguous())
    return torch.cat([part.narrow(axis, 0, int(s)) for part, s in zip(parts, sizes)], dim=axis)


class _AllGather(torch.autograd.Function):
    """All-gather whose backward gives each rank the sum over the ranks of its share's gradient.

    What :func:`torch.distributed.nn.functional.all_gather` does (deprecated in torch 2.13), on
    every backend: the backward all-reduces the stacked gradients (gloo has no reduce-scatter).
    """

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, tensor)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        stacked = torch.stack([g.contiguous() for g in grads])
        torch.distributed.all_reduce(stacked, op=torch.distributed.ReduceOp.SUM)
        return stacked[torch.distributed.get_rank()]


def check_same_seed(generator, what="the batches", device="cpu"):
    """Raise when the ranks' generators differ: every rank must draw the same global batches.

    Parameters
    ----------
    generator : torch.Generator
        The Trainer's batch generator.
    what : str, default="the batches"
        What the generator draws (for the message).
    device : torch.device, default="cpu"
        Device of the exchanged fingerprint (NCCL exchanges CUDA tensors only).
    """
    state = generator.get_state()
    fingerprint = torch.tensor([int(np.frombuffer(state.numpy().tobytes(), dtype=np.uint8).astype(np.int64)
                                    @ np.arange(1, state.numel() + 1, dtype=np.int64) % (2**61 - 1))],
                               dtype=torch.int64)
    if torch.distributed.get_backend() == "nccl":
        fingerprint = fingerprint.to(device if torch.device(device).type == "cuda" else "cuda")
    _, size = world()
    gathered = [torch.zeros_like(fingerprint) for _ in range(size)]
    torch.distributed.all_gather(gathered, fingerprint)
    if len({int(t) for t in gathered}) > 1:
        raise ValueError(
            f"Under torch.distributed every rank must draw the same global batches, but the ranks' seeds of {what} "
            "differ. Pass the same integer random_state on every rank (random_state=None draws a different seed "
            "in each process)."
        )


def from_rank0(obj):
    """Rank 0's ``obj`` on every rank (unchanged in a single process).

    The supervisory ``p`` of a distributed fit is computed on every rank and then taken from rank
    0, so that an approximate kNN search that is not bit-for-bit reproducible across processes
    cannot give the ranks different objectives. Call it on every rank (a collective).

    Parameters
    ----------
    obj : object
        Anything picklable (e.g. a sparse matrix).

    Returns
    -------
    object

    Examples
    --------
    >>> from_rank0([1, 2])  # a single process
    [1, 2]
    """
    if not is_active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


class ShardedModule:
    """What the objectives call under :mod:`torch.distributed`: the module, its forward split by rank.

    ``sharded(X, *args)`` runs the DDP-wrapped module on this rank's rows of ``X`` (its first
    axis) and returns the outputs of all the rows, gathered with gradients along the module's
    ``batch_axis`` (0 unless the module declares another, e.g. 1 for clustering heads, whose
    outputs are ``(heads, rows, clusters)``). Any other attribute reads through to the module
    (``prototypes``, ``log_scale``, ``active``, ...).

    Parameters
    ----------
    module : torch.nn.Module
        The module being trained (on ``device``); it is not modified.
    device : torch.device
        Device of the module (a CUDA module is bound to its own device by DDP).
    """

    def __init__(self, module, device):
        from torch.nn.parallel import DistributedDataParallel

        device = torch.device(device)
        self.module = module
        self.rank, self.world_size = world()
        self.batch_axis = int(getattr(module, "batch_axis", 0))
        # Modules that stop evaluating parts of themselves while training (the clustering heads
        # dropped by restart pruning) need DDP to look for parameters without a gradient.
        self.ddp = DistributedDataParallel(
            module, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda" else None,
            find_unused_parameters=bool(getattr(module, "ddp_find_unused_parameters", False)),
        )

    def __call__(self, X, *args, **kwargs):
        bounds = shard_bounds(X.shape[0], self.world_size)
        local = X[int(bounds[self.rank]) : int(bounds[self.rank + 1])]
        return gather_rows(self.ddp(local, *args, **kwargs), bounds, axis=self.batch_axis)

    def __getattr__(self, name):
        # Only called for attributes not found on the wrapper itself.
        return getattr(self.__dict__["module"], name)

    def close(self):
        """Drop the DDP wrapper (its gradient hooks) and return the plain module."""
        ddp = self.__dict__.pop("ddp", None)
        del ddp
        return self.module
