"""Small shared helpers: devices, seeding, tensors and validation messages."""

import numbers

import numpy as np
import torch
from sklearn.utils import check_random_state

__all__ = ["resolve_device", "seed_from_random_state", "torch_generator", "as_tensor", "state_on_cpu"]


def state_on_cpu(state):
    """An estimator's pickled state with its fitted torch modules and tensors moved to the CPU.

    What every estimator's ``__getstate__`` returns, so that a model fitted on CUDA unpickles on
    a machine without a GPU (``torch`` refuses to load CUDA storages there). When anything moved,
    the private resolved ``_device`` becomes the CPU, where the moved module now lives.

    Parameters
    ----------
    state : dict
        ``estimator.__dict__``.

    Returns
    -------
    dict
        A shallow copy, with copies of the moved modules (the estimator itself is untouched).

    Examples
    --------
    >>> import torch
    >>> state_on_cpu({"module_": torch.nn.Linear(2, 1), "alpha": 1.0})["alpha"]
    1.0
    """
    import copy

    state = dict(state)
    moved = False
    for key, value in state.items():
        if isinstance(value, torch.nn.Module):
            if any(t.device.type != "cpu" for t in (*value.parameters(), *value.buffers())):
                state[key] = copy.deepcopy(value).to("cpu")
                moved = True
        elif isinstance(value, torch.Tensor) and value.device.type != "cpu":
            state[key] = value.detach().cpu()
            moved = True
    if moved and "_device" in state:
        state["_device"] = torch.device("cpu")
    return state


def resolve_device(device):
    """Return a :class:`torch.device` for ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` picks CUDA when it is available, else the CPU.

    Returns
    -------
    torch.device
        The resolved device.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu', 'cuda' or 'auto', got {device!r}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='cpu' or device='auto'."
        )
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a valid torch device: use 'cpu', 'cuda' or 'auto'.") from exc


def seed_from_random_state(random_state):
    """Draw a 31-bit integer seed from a scikit-learn ``random_state``.

    Parameters
    ----------
    random_state : int, RandomState instance or None
        Anything accepted by :func:`sklearn.utils.check_random_state`.

    Returns
    -------
    int
        A seed usable by torch and numpy.
    """
    if isinstance(random_state, numbers.Integral):
        return int(random_state) % (2**31 - 1)
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def torch_generator(random_state, device="cpu"):
    """Return a seeded :class:`torch.Generator` derived from ``random_state``.

    Parameters
    ----------
    random_state : int, RandomState instance or None
        Source of randomness.
    device : str or torch.device, default="cpu"
        Device of the generator.

    Returns
    -------
    torch.Generator
        A generator seeded deterministically from ``random_state``.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed_from_random_state(random_state))
    return gen


def as_tensor(X, *, dtype=torch.float32, device="cpu"):
    """Convert an array-like (numpy, scipy sparse, torch) to a dense torch tensor.

    Parameters
    ----------
    X : array-like, sparse matrix or torch.Tensor
        Input data.
    dtype : torch.dtype or None, default=torch.float32
        Target dtype; None keeps the dtype of ``X``.
    device : str or torch.device, default="cpu"
        Target device.

    Returns
    -------
    torch.Tensor
        Dense tensor on ``device``. A writable NumPy array of that dtype on the CPU shares its
        memory; a read-only one (a pandas copy-on-write view, a read-only memmap) or one with a
        negative stride (``X[::-1]``) is copied, as torch can share neither.
    """
    if isinstance(X, torch.Tensor):
        return X.to(device=device, dtype=dtype)
    if hasattr(X, "toarray"):
        X = X.toarray()
    X = np.asarray(X)
    if not X.flags.writeable or any(stride < 0 for stride in X.strides):
        X = X.copy()
    return torch.as_tensor(X, dtype=dtype, device=device)
