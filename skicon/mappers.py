"""Mappers: the functions f_phi that turn inputs into representations.

``"table"`` is the non-parametric mapper of SNE/t-SNE (one free vector per training sample);
``"linear"`` and ``"mlp"`` are parametric; any torch module factory can be used too.
"""

import numbers

import torch
from torch import nn

from ._utils import as_tensor

__all__ = ["Table", "MLP", "make_mapper", "MAPPERS"]

#: Names of the built-in mappers accepted by :func:`make_mapper`.
MAPPERS = ("table", "linear", "mlp")


class Table(nn.Module):
    """Non-parametric mapper: a learnable table with one row per training sample.

    Parameters
    ----------
    init : torch.Tensor of shape (n_samples, n_components)
        Initial representation.

    Examples
    --------
    >>> import torch
    >>> from skicon.mappers import Table
    >>> Table(torch.zeros(4, 2))(torch.tensor([0, 3])).shape
    torch.Size([2, 2])
    """

    def __init__(self, init):
        super().__init__()
        self.weight = nn.Parameter(init.clone())

    def forward(self, index):
        """Return the rows of the table for the given sample indices."""
        return self.weight[index]


class MLP(nn.Sequential):
    """Multi-layer perceptron: linear layers with an activation between them.

    Parameters
    ----------
    n_features : int
        Input dimension.
    n_components : int
        Output dimension.
    hidden : tuple of int, default=(256, 256)
        Hidden layer sizes.
    activation : type of nn.Module, default=nn.GELU
        Activation between layers.
    batch_norm : bool, default=False
        Add BatchNorm1d after each hidden linear layer.

    Examples
    --------
    >>> import torch
    >>> from skicon.mappers import MLP
    >>> MLP(5, 2, hidden=(8,))(torch.zeros(3, 5)).shape
    torch.Size([3, 2])
    """

    def __init__(self, n_features, n_components, hidden=(256, 256), activation=nn.GELU, batch_norm=False):
        layers = []
        d = n_features
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation())
            d = h
        layers.append(nn.Linear(d, n_components))
        super().__init__(*layers)


def make_mapper(spec, n_features, n_components, *, n_samples=None, init=None, hidden=(256, 256), random_state=None):
    """Build the mapper module named by ``spec``.

    Parameters
    ----------
    spec : {"table", "linear", "mlp"} or callable
        Mapper kind, or a factory ``spec(n_features, n_components) -> torch.nn.Module``.
    n_features : int
        Input dimension.
    n_components : int
        Output dimension.
    n_samples : int, default=None
        Number of training samples (``"table"`` only).
    init : array-like of shape (n_samples, n_components), default=None
        Initial table (``"table"`` only); small Gaussian noise when None.
    hidden : tuple of int, default=(256, 256)
        Hidden sizes of ``"mlp"``.
    random_state : int or None, default=None
        Seed of the initial weights.

    Returns
    -------
    torch.nn.Module
        The mapper. ``"table"`` modules take sample indices, the others take feature batches.

    Examples
    --------
    >>> from skicon.mappers import make_mapper
    >>> type(make_mapper("linear", 4, 2)).__name__
    'Linear'
    """
    from ._utils import seed_from_random_state

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed_from_random_state(random_state))
    try:
        if callable(spec) and not isinstance(spec, str):
            module = spec(n_features, n_components)
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"mapper factory must return a torch.nn.Module, got {type(module).__name__}; "
                    "use mapper=lambda n_features, n_components: torch.nn.Linear(n_features, n_components)."
                )
            return module
        if spec == "table":
            if init is None:
                if n_samples is None:
                    raise ValueError("mapper='table' needs n_samples.")
                init = 1e-4 * torch.randn(n_samples, n_components)
            return Table(as_tensor(init, dtype=torch.float32))
        if spec == "linear":
            return nn.Linear(n_features, n_components)
        if spec == "mlp":
            if isinstance(hidden, numbers.Integral):
                hidden = (int(hidden),)
            return MLP(n_features, n_components, hidden=tuple(hidden))
        raise ValueError(f"mapper must be one of {MAPPERS} or a callable module factory, got {spec!r}.")
    finally:
        torch.random.set_rng_state(gen_state)
