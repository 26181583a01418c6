"""The pairwise objective of neighbour embedding: SNE / t-SNE with any distance kernel (torch, CPU or CUDA).

The objective is the I-Con loss with a sparse supervisory ``P`` and a learned kernel ``w(d^2)``
on the embedding, any :class:`~skicon.kernels.DistanceKernel` (Student-t, Gaussian, or a kernel
written by the user with only ``log_weight``). Two normalisations are supported:

* ``"joint"`` (van der Maaten's t-SNE): one distribution over all ordered pairs,
  ``Q_ij = w_ij / sum_{k != l} w_kl``; the loss is ``KL(P || Q)`` with ``P`` summing to one.
* ``"conditional"`` (Table 1 of the I-Con paper): ``q(j|i) = w_ij / sum_{k != i} w_ik``; the loss
  is the mean over rows of ``KL(p(.|i) || q(.|i))``, exactly :func:`skicon.icon_loss`.

The gradient splits into an attractive part over the non-zeros of ``P`` (exact, O(nnz)) and a
repulsive part that needs kernel sums over all pairs. Those sums are computed

* ``"fft"``: by interpolating charges onto a regular grid with piecewise Lagrange polynomials and
  convolving on the grid with FFTs (the interpolation idea of FIt-SNE), O(n + G log G) per
  iteration, for 1-D and 2-D embeddings;
* ``"exact"``: over all pairs in row chunks, O(n^2) time but O(n * chunk) memory; on CPU in 1-D
  to 3-D by the fused compiled loops of :mod:`skicon.objectives._compiled` (and
  :mod:`skicon.objectives._compiled3d`: 3-D, and the Gaussian with a vectorised exponential)
  for kernels that name one (``compiled_profile()``), by torch code for every other kernel;
* ``"sampled"``: unbiased estimates from random negatives (any dimension, O(n m)).

The loss value needs no extra pass over the edges: ``sum p log w`` is accumulated by the
attraction loop from the distances it computes anyway, and the normalisers are the repulsion's
own sums. It still costs a logarithm per edge (40-60 % of an iteration), so the objectives
below compute it only on the iterations the Trainer logs (``want_loss``).

Debiasing (paper eq. 2), ``p~ = (1 - alpha) p + alpha / N``
(:func:`skicon.kernels.debias`), adds a uniform attraction whose gradient is one more kernel
sum, so it stays O(n) as well.

:class:`EngineObjective` and :class:`PlacementObjective` are the objectives the one
:class:`~skicon._training.Trainer` runs: they write the analytic gradient into ``.grad`` and
return the loss.
"""

import math

import numpy as np
import scipy.fft
import scipy.sparse as sp
import torch

from ..kernels._transforms import debias
from .._lazy import lazy_module

# numba (0.7 s to import) loads with the compiled loops' first use, not with ``import skicon``.
_compiled = lazy_module(__package__ + "._compiled")
_compiled3d = lazy_module(__package__ + "._compiled3d")
_compiled_cond = lazy_module(__package__ + "._compiled_cond")
_grid_cpu = lazy_module(__package__ + "._grid_cpu")

__all__ = [
    "joint_from_conditional",
    "fixed_sum",
    "fixed_dot",
    "SparseAffinity",
    "grid_plan",
    "fft_kernel_sums",
    "exact_kernel_sums",
    "sampled_kernel_sums",
    "compiled_kernels_apply",
    "objective_and_gradient",
    "auto_learning_rate",
    "EngineObjective",
    "PlacementObjective",
]


# ----------------------------------------------------------------------------------------------
# supervisory affinities: the CSR ``P`` in O(nnz) memory (:mod:`skicon.objectives._affinity`)
# ----------------------------------------------------------------------------------------------
from ._affinity import SparseAffinity, joint_from_conditional  # noqa: E402


# ----------------------------------------------------------------------------------------------
# kernel sums sum_j K(y_i, y_j) c_j  (self pair j == i included; callers remove it)
# ----------------------------------------------------------------------------------------------
#: Elements summed by one thread: torch reduces a tensor below its parallel grain (32,768
#: elements) serially, in an order fixed by the shape alone.
_SERIAL_CHUNK = 16_384


def fixed_sum(x):
    """Sum of all elements of ``x`` in an order that does not depend on the number of threads.

    ``x.sum()`` over more than torch's parallel grain gives each thread a slice and adds the
    partials, so the last bits change with ``torch.get_num_threads()``, and t-SNE's iterations
    amplify them into a different map. Here fixed slices of :data:`_SERIAL_CHUNK` elements are
    each summed serially and the partials are summed the same way, in order. Row-wise reductions
    (``sum(dim=1)`` with several outputs) give one output to one thread and need no such care.

    Parameters
    ----------
    x : torch.Tensor
        Any shape.

    Returns
    -------
    torch.Tensor
        A 0-d tensor.

    Examples
    --------
    >>> import torch
    >>> float(fixed_sum(torch.ones(100_000)))
    100000.0
    """
    x = x.reshape(-1)
    if x.numel() <= _SERIAL_CHUNK:
        return x.sum()
    return fixed_sum(torch.stack([part.sum() for part in x.split(_SERIAL_CHUNK)]))


def fixed_dot(a, b):
    """``torch.dot(a, b)`` in an order that does not depend on the number of threads (see :func:`fixed_sum`).

    Parameters
    ----------
    a, b : torch.Tensor of shape (n,)

    Returns
    -------
    torch.Tensor
        A 0-d tensor.

    Examples
    --------
    >>> import torch
    >>> float(fixed_dot(torch.ones(3), torch.arange(3.0)))
    3.0
    """
    return fixed_sum(a * b)


def _lagrange(t, n_nodes):
    """Lagrange basis on the integer nodes 0..n_nodes-1, evaluated at t: (n, n_nodes)."""
    cols = []
    for k in range(n_nodes):
        val = torch.ones_like(t)
        for m in range(n_nodes):
            if m != k:
                val = val * ((t - m) / (k - m))
        cols.append(val)
    return torch.stack(cols, dim=1)


def _circulant_sq(G, spacing, dim, device, dtype):
    """Squared offsets of the circulant embedding of a grid kernel: (2G,) or (2G, 2G).

    Offsets 0..G-1, (unused) G, then -(G-1)..-1 node spacings along each axis.
    """
    k = torch.arange(2 * G, device=device, dtype=dtype)
    off = torch.where(k <= G, k, k - 2 * G) * spacing
    return off * off if dim == 1 else off[:, None] ** 2 + off[None, :] ** 2


def _stencil_sq(p, spacing, dim, device, dtype):
    """Squared distances between the nodes of one point's stencil: (p**dim, p**dim)."""
    ar = torch.arange(p, device=device, dtype=dtype)
    if dim == 1:
        return ((ar[:, None] - ar[None, :]) * spacing) ** 2
    ox = (ar[:, None, None, None] - ar[None, None, :, None]) * spacing
    oy = (ar[None, :, None, None] - ar[None, None, None, :]) * spacing
    return (ox**2 + oy**2).reshape(p * p, p * p)


class _GridPlan:
    """Interpolation of n points onto a regular grid (shared by all kernels of an iteration)."""

    def __init__(self, index, weights, n_grid, spacing, dim, cache=None):
        self.index = index  # (n, nodes**dim) flat grid index
        self.weights = weights  # (n, nodes**dim) interpolation weights
        self.n_grid = n_grid
        self.spacing = spacing
        self.dim = dim
        self.cache = {} if cache is None else cache

    def kernel_fft(self, fn, device, dtype):
        """FFT of the circulant embedding of ``fn`` on the grid offsets (cached per geometry)."""
        key = (fn, self.n_grid, self.spacing, self.dim, str(device), dtype)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        values = fn(_circulant_sq(self.n_grid, self.spacing, self.dim, device, dtype))
        out = (torch.fft.rfft(values) if self.dim == 1 else torch.fft.rfft2(values)).real.contiguous()
        if len(self.cache) > 64:  # the grid grows during optimisation; keep memory bounded
            self.cache.clear()
        self.cache[key] = out
        return out

    def charge_spectrum(self, charges):
        """Spread charges (n, c) onto the grid and return their zero-padded FFT."""
        n, c = charges.shape
        G = self.n_grid
        vals = (self.weights[:, :, None] * charges[:, None, :]).reshape(-1, c)
        grid = torch.zeros(G**self.dim, c, device=charges.device, dtype=charges.dtype)
        grid.index_add_(0, self.index.reshape(-1), vals)
        grid = grid.T
        if self.dim == 1:
            return torch.fft.rfft(grid, n=2 * G)
        # axis by axis: the first transform runs over the G non-zero rows only (not the padding)
        half = torch.fft.rfft(grid.reshape(c, G, G), n=2 * G, dim=2)
        return torch.fft.fft(half, n=2 * G, dim=1)

    def convolve(self, spectrum, fn):
        """Potentials (c, G**dim) of a charge spectrum under kernel ``fn``."""
        G = self.n_grid
        kf = self.kernel_fft(fn, spectrum.device, spectrum.real.dtype)
        prod = spectrum * kf  # kf is real: the circulant kernel is symmetric
        if self.dim == 1:
            pot = torch.fft.irfft(prod, n=2 * G)[:, :G]
        else:
            # axis by axis, so that the last transform runs over the G rows that are kept only
            rows = torch.fft.ifft(prod, dim=1)[:, :G]
            pot = torch.fft.irfft(rows, n=2 * G, dim=2)[:, :, :G]
        return pot.reshape(spectrum.shape[0], -1)

    def total(self, spectrum, fn):
        """``sum_g charge_g (K * charge)_g`` of a one-channel spectrum, by Parseval (no inverse FFT).

        Equals ``gather(potentials(fn, charges)).sum()``: the interpolation that spreads the
        charges is the transpose of the one that gathers the potentials.
        """
        G = self.n_grid
        kf = self.kernel_fft(fn, spectrum.device, spectrum.real.dtype)
        power = (spectrum[0].real ** 2 + spectrum[0].imag ** 2) * kf
        # the half spectrum of the last axis stands for its conjugate twins too (not 0, not G)
        inner = fixed_sum(power[..., 1:G] if self.dim == 1 else power[:, 1:G])
        edges = fixed_sum(power[..., 0]) + fixed_sum(power[..., G])
        return (2.0 * inner + edges) / (2 * G) ** self.dim

    def potentials(self, fn, charges):
        """Kernel potentials of the charges on every grid node: (c, G**dim)."""
        return self.convolve(self.charge_spectrum(charges), fn)

    @staticmethod
    def gather(pot, index, weights):
        """Interpolate grid potentials ``pot`` (c, G**dim) at points given by ``locate``: (m, c)."""
        return (pot[:, index] * weights[None]).sum(dim=2).T

    def locate(self, Y):
        """Grid indices and interpolation weights of (new) points, clamped into the grid box."""
        return _interpolation(Y, self.lo, self.spacing, self.n_grid, self.n_nodes)

    def self_error(self, fn):
        """``fn(0)`` minus each point's interpolated interaction with itself: (n,).

        The self pair is the nearest, hardest part of the near field; its interpolated value is
        ``w_i^T K_stencil w_i`` with the same small stencil matrix for every point, so it can be
        replaced by the exact ``fn(0)`` at O(n) cost.
        """
        K = fn(_stencil_sq(self.n_nodes, self.spacing, self.dim, self.weights.device, self.weights.dtype))
        interp = ((self.weights @ K) * self.weights).sum(dim=1)
        zero = torch.zeros(1, device=K.device, dtype=K.dtype)
        return fn(zero) - interp

    def sums(self, fn, charges):
        """``sum_j fn(|y_i - y_j|^2) charges_j`` for every i, through the grid: (n, c)."""
        out = self.gather(self.potentials(fn, charges), self.index, self.weights)
        return out + self.self_error(fn)[:, None] * charges


def _interpolation(Y, lo, spacing, G, n_nodes):
    """Grid indices and weights of a centred ``n_nodes``-point Lagrange stencil per axis.

    The stencil of each point is the ``n_nodes`` grid nodes around it, so it always
    interpolates (never extrapolates): the error of the near field, and of each point's own
    self-interaction, is what a centred stencil of that order gives.
    """
    n, dim = Y.shape
    v = (Y - lo) / spacing
    first = torch.floor(v - (n_nodes - 1) / 2.0 + 0.5).clamp_(0, G - n_nodes)
    t = (v - first).clamp_(0.0, n_nodes - 1.0)
    first = first.long()
    ar = torch.arange(n_nodes, device=Y.device)
    if dim == 1:
        return first[:, 0:1] + ar[None, :], _lagrange(t[:, 0], n_nodes)
    gx = first[:, 0:1] + ar[None, :]
    gy = first[:, 1:2] + ar[None, :]
    index = (gx[:, :, None] * G + gy[:, None, :]).reshape(n, -1)
    wx = _lagrange(t[:, 0], n_nodes)
    wy = _lagrange(t[:, 1], n_nodes)
    return index, (wx[:, :, None] * wy[:, None, :]).reshape(n, -1)


def _grid_size(m):
    """The grid size used for ``m`` nodes: the next FFT-friendly size on a ladder of ratio 1.0625.

    The span of an embedding grows a little at each iteration; sizes on a fixed ladder let
    consecutive iterations share one geometry, hence one cached kernel transform (computing it
    costs about as much as the iteration's own transforms), for at most 6 % more nodes per axis.
    """
    if m <= 32:
        return _next_smooth(m)
    rung = math.ceil(math.log(m / 32.0) / math.log(1.0625) - 1e-9)
    return _next_smooth(max(m, math.ceil(32.0 * 1.0625**rung)))


def _next_smooth(m):
    """Smallest integer >= m whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


#: Default grid parameters of :func:`grid_plan` (tuned by measurement, see benchmarks/).
GRID_DEFAULTS = {"n_nodes": 3, "min_intervals": 50, "interval_width": 1.0}


def grid_plan(Y, *, n_nodes=None, min_intervals=None, interval_width=None, max_intervals=None, cache=None):
    """Build the interpolation grid for a 1-D or 2-D embedding.

    The bounding box of ``Y`` is split into ``B`` square intervals per axis, at most
    ``interval_width`` wide and at least ``min_intervals`` of them (capped by ``max_intervals``);
    each interval holds ``n_nodes`` equispaced interpolation nodes, so the nodes form one
    regular grid of ``G = B * n_nodes`` points per axis, on which any translation-invariant
    kernel is a (block-)Toeplitz matrix applied by FFT. The interval width is snapped to a
    power of 2**(1/4) and ``B`` to an FFT-friendly size, so that consecutive iterations share
    the grid geometry and the kernel transforms can be reused from ``cache``.

    Parameters
    ----------
    Y : torch.Tensor of shape (n, d), d in {1, 2}
        Embedding.
    n_nodes : int, default=3
        Interpolation nodes per interval (polynomial degree + 1).
    min_intervals : int, default=50
        Minimum intervals per axis.
    interval_width : float, default=1.0
        Maximum interval width in embedding units.
    max_intervals : int, default=None
        Cap on intervals per axis (memory guard); 4096 in 1-D and 512 in 2-D when None.
    cache : dict, default=None
        Storage for kernel transforms, reused across calls.

    Returns
    -------
    _GridPlan
        Object whose ``sums(fn, charges)`` evaluates kernel sums.

    Examples
    --------
    >>> import torch
    >>> plan = grid_plan(torch.tensor([[0.0, 0.0], [3.0, 1.0]]))
    >>> plan.dim, plan.n_grid >= 50
    (2, True)
    """
    lo, spacing, G, n_nodes = grid_geometry(Y, n_nodes=n_nodes, min_intervals=min_intervals,
                                            interval_width=interval_width, max_intervals=max_intervals)
    index, weights = _interpolation(Y, lo, spacing, G, n_nodes)
    plan = _GridPlan(index, weights, G, spacing, Y.shape[1], cache)
    plan.lo, plan.n_nodes = lo, n_nodes
    return plan


def grid_geometry(Y, *, n_nodes=None, min_intervals=None, interval_width=None, max_intervals=None, **_):
    """The grid :func:`grid_plan` lays over ``Y``: ``(origin, node spacing, nodes per axis, stencil nodes)``.

    Parameters
    ----------
    Y : torch.Tensor of shape (n, d), d in {1, 2}
        Embedding.
    n_nodes, min_intervals, interval_width, max_intervals : see :func:`grid_plan`.

    Returns
    -------
    lo : torch.Tensor of shape (d,)
    spacing : float
    n_grid : int
    n_nodes : int

    Examples
    --------
    >>> import torch
    >>> lo, spacing, G, p = grid_geometry(torch.tensor([[0.0, 0.0], [3.0, 1.0]]))
    >>> G >= 150, p
    (True, 3)
    """
    n, dim = Y.shape
    if dim not in (1, 2):
        raise ValueError(f"the FFT repulsion supports 1-D and 2-D embeddings, got {dim}-D.")
    n_nodes = GRID_DEFAULTS["n_nodes"] if n_nodes is None else n_nodes
    min_intervals = GRID_DEFAULTS["min_intervals"] if min_intervals is None else min_intervals
    interval_width = GRID_DEFAULTS["interval_width"] if interval_width is None else interval_width
    if max_intervals is None:
        max_intervals = 4096 if dim == 1 else 512
    lo = Y.min(dim=0).values
    hi = Y.max(dim=0).values
    span = max(float((hi - lo).max()), 1e-12)
    h = span / min_intervals
    if h >= interval_width:
        h = float(interval_width)
    else:
        h = 2.0 ** (math.floor(4.0 * math.log2(h)) / 4.0)
    spacing = h / n_nodes
    G = math.ceil(span / spacing) + n_nodes + 2  # room for the stencils at both ends
    if G > max_intervals * n_nodes:
        # wider spacing, snapped up to a power of 2**(1/8) (a continuous one would change, and
        # miss the cache of kernel transforms, at every iteration)
        need = span / (max_intervals * n_nodes - n_nodes - 2)
        spacing = 2.0 ** (math.ceil(8.0 * math.log2(need)) / 8.0)
        G = math.ceil(span / spacing) + n_nodes + 2
    G = _grid_size(G)
    # centre the grid on the data
    lo = (lo + hi) / 2.0 - (G - 1) * spacing / 2.0
    return lo, spacing, G, n_nodes


def fft_kernel_sums(Y, fn, charges, **grid_kwargs):
    """Approximate ``sum_j fn(|y_i - y_j|^2) c_j`` (self included) by grid interpolation + FFT.

    Parameters
    ----------
    Y : torch.Tensor of shape (n, d), d in {1, 2}
        Points.
    fn : callable
        Kernel as a function of the squared distance (torch).
    charges : torch.Tensor of shape (n, c)
        Charges ``c_j``.
    **grid_kwargs : dict
        Passed to :func:`grid_plan`.

    Returns
    -------
    torch.Tensor of shape (n, c)
        Kernel sums.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import StudentT
    >>> Y = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    >>> fft_kernel_sums(Y, StudentT().weight, torch.ones(2, 1, dtype=torch.float64)).ravel().round(decimals=3)
    tensor([1.5000, 1.5000], dtype=torch.float64)
    """
    return grid_plan(Y, **grid_kwargs).sums(fn, charges)


def exact_kernel_sums(Y, fn, charges, *, chunk=None):
    """Exact ``sum_j fn(|y_i - y_j|^2) c_j`` (self included), in row chunks of O(chunk * n) memory.

    Parameters
    ----------
    Y : torch.Tensor of shape (n, d)
        Points.
    fn : callable
        Kernel as a function of the squared distance.
    charges : torch.Tensor of shape (n, c)
        Charges.
    chunk : int, default=None
        Rows per chunk; sized to about 4M pair entries when None.

    Returns
    -------
    torch.Tensor of shape (n, c)

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import StudentT
    >>> Y = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    >>> exact_kernel_sums(Y, StudentT().weight, torch.ones(2, 1, dtype=torch.float64)).ravel()
    tensor([1.5000, 1.5000], dtype=torch.float64)
    """
    n = Y.shape[0]
    chunk = chunk or max(1, min(n, 4_000_000 // max(n, 1)))
    sq = (Y * Y).sum(dim=1)
    out = []
    for s in range(0, n, chunk):
        Yb = Y[s : s + chunk]
        d2 = (sq[s : s + chunk, None] + sq[None, :] - 2.0 * Yb @ Y.T).clamp_min_(0.0)
        out.append(fn(d2) @ charges)
    return torch.cat(out, dim=0)


def _exact_cauchy_sums(Y, charges, chunk=None):
    """Exact row sums of ``w = 1/(1 + d^2)`` and ``(w^2) @ charges`` in one pass per chunk."""
    n = Y.shape[0]
    chunk = chunk or max(1, min(n, 2_000_000 // max(n, 1)))
    sq = (Y * Y).sum(dim=1)
    zs, outs = [], []
    for s in range(0, n, chunk):
        Yb = Y[s : s + chunk]
        # 1 + d^2 = (1 + |a|^2) + |b|^2 - 2 a.b, built in place to limit passes over memory
        w = torch.addmm((sq[s : s + chunk] + 1.0)[:, None], Yb, Y.T, beta=1.0, alpha=-2.0)
        w.add_(sq[None, :]).clamp_(min=1.0).reciprocal_()
        zs.append(w.sum(dim=1))
        outs.append(w.mul_(w) @ charges)
    return torch.cat(zs), torch.cat(outs, dim=0)


def sampled_kernel_sums(Y, fn, charges, *, n_negatives=64, generator=None):
    """Unbiased estimate of ``sum_{j != i} fn(|y_i - y_j|^2) c_j`` from random negatives.

    Unlike the other two, the self pair is *excluded* here (negatives are drawn among the
    ``n - 1`` other points), and ``fn(0) * c_i`` is added back so that callers can treat all
    three alike.

    Parameters
    ----------
    Y : torch.Tensor of shape (n, d)
        Points.
    fn : callable
        Kernel of the squared distance.
    charges : torch.Tensor of shape (n, c)
        Charges.
    n_negatives : int, default=64
        Negatives per point.
    generator : torch.Generator, default=None
        Source of randomness.

    Returns
    -------
    torch.Tensor of shape (n, c)

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import StudentT
    >>> Y = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    >>> sampled_kernel_sums(Y, StudentT().weight, torch.ones(2, 1, dtype=torch.float64)).ravel()
    tensor([1.5000, 1.5000], dtype=torch.float64)
    """
    n = Y.shape[0]
    m = int(min(n_negatives, n - 1))
    j = torch.randint(0, n - 1, (n, m), device=Y.device, generator=generator)
    i = torch.arange(n, device=Y.device)[:, None]
    j = j + (j >= i).long()  # skip the self index
    d2 = ((Y[:, None, :] - Y[j]) ** 2).sum(dim=2)
    est = torch.einsum("nm,nmc->nc", fn(d2), charges[j]) * ((n - 1) / m)
    zero = torch.zeros(1, device=Y.device, dtype=Y.dtype)
    return est + fn(zero) * charges


# ----------------------------------------------------------------------------------------------
# objective
# ----------------------------------------------------------------------------------------------
#: Switch for the compiled CPU loops (tests turn it off to compare with the torch code).
_COMPILED = True


def compiled_kernels_apply(device, n_components):
    """Whether the compiled CPU loops can serve an embedding on ``device`` with ``n_components`` columns.

    Whether they serve a given kernel depends on the kernel too (its ``compiled_profile()``).

    Parameters
    ----------
    device : str or torch.device
        Device of the embedding.
    n_components : int
        Embedding dimension.

    Returns
    -------
    bool

    Examples
    --------
    >>> compiled_kernels_apply("cpu", 4)
    False
    """
    return _COMPILED and _compiled.available() and torch.device(device).type == "cpu" and n_components <= 3


def _loops(Y, code):
    """The module whose compiled loops serve ``Y`` with kernel ``code``.

    :mod:`._compiled3d` serves 3-D embeddings, and the Gaussian in every dimension (its
    exponential vectorises); :mod:`._compiled` the rest.
    """
    return _compiled3d if (Y.shape[1] == 3 or code == _compiled.GAUSSIAN) else _compiled


def _use_compiled(Y, kernel):
    """The compiled loop's ``(code, dof, inv2s2)`` when it serves ``kernel`` on ``Y``, else None.

    The kernel names its compiled twin (:meth:`~skicon.kernels.DistanceKernel.compiled_profile`);
    a kernel without one runs the torch code below on every device.
    """
    if not compiled_kernels_apply(Y.device, Y.shape[1]):
        return None
    return kernel.compiled_profile()


def engine_dtype(kernel, device, n_components, method):
    """The dtype the engine trains in: float32 where it is safe and faster, else float64.

    A heavy-tailed kernel (Student-t) never underflows float32. A Gaussian does at moderate
    distances, except in the compiled loops' exact repulsion, which run it in float32 and redo
    a pass in float64 whenever a row's sum of weights nears float32's underflow
    (:func:`._compiled3d.gaussian_dtype_ok`); there float32 halves the cost of an iteration.

    Parameters
    ----------
    kernel : DistanceKernel
        Learned kernel.
    device : str or torch.device
        Device of the embedding.
    n_components : int
        Embedding dimension.
    method : {"fft", "exact", "sampled"}
        How repulsive sums are computed.

    Returns
    -------
    torch.dtype

    Examples
    --------
    >>> from skicon.kernels import Gaussian, StudentT
    >>> engine_dtype(StudentT(), "cpu", 2, "fft"), engine_dtype(Gaussian(), "cpu", 2, "fft")
    (torch.float32, torch.float64)
    """
    if kernel.heavy_tailed():
        return torch.float32
    profile = kernel.compiled_profile() if compiled_kernels_apply(device, n_components) else None
    if method == "exact" and profile is not None and profile[0] == _compiled.GAUSSIAN:
        return torch.float32
    return torch.float64


def _cpu_kernel(grid, fn):
    """Transform (2G, G + 1) and stencil matrix (nodes**2, nodes**2) of kernel ``fn`` on a :class:`CpuGrid` (cached)."""
    key = ("cpu", fn, grid.G, grid.spacing, grid.p, grid.dtype.str)
    hit = grid.cache.get(key)
    if hit is not None:
        return hit
    # the kernel's values in float64 (the grid's own precision only after the transform)
    values = fn(_circulant_sq(grid.G, grid.spacing, 2, "cpu", torch.float64)).numpy()
    kf = scipy.fft.rfft2(values).real.astype(grid.dtype)
    stencil = fn(_stencil_sq(grid.p, grid.spacing, 2, "cpu", torch.float64)).numpy().astype(grid.dtype)
    if len(grid.cache) > 64:  # the grid grows during optimisation; keep memory bounded
        grid.cache.clear()
    grid.cache[key] = (kf, stencil)
    return kf, stencil


def _is_cauchy(kernel):
    """The Student-t kernel with one degree of freedom, which has a cheaper exact torch path."""
    profile = kernel.compiled_profile()
    return profile is not None and profile[0] == _compiled.CAUCHY


def _segment_sum(values, aff):
    """Sum edge values into their (sorted) rows."""
    return torch.segment_reduce(values, "sum", lengths=aff.lengths, axis=0)


def _attraction(Y, aff, kernel, scale, want_loss):
    """``sum_j scale * p_ij g_ij (y_i - y_j)`` over the non-zeros, and ``sum l_ij log w_ij``.

    One pass over the edges for both, ``Y`` in the affinity's storage numbering. The torch code
    works one coordinate at a time on contiguous 1-D tensors: on CPU, gathers and reductions over
    an (nnz, 2) tensor are several times slower than the same work on 1-D vectors.
    """
    profile = _use_compiled(Y, kernel)
    if profile is not None and aff.csr is not None:
        code, dof, inv2s2 = profile
        if Y.shape[1] <= 2 and aff.upper is not None:  # a symmetric P: each pair once
            force, plogw = _compiled.attraction_upper(Y.detach().numpy(), aff.upper, code, dof, inv2s2,
                                                      scale=scale, want_loss=want_loss)
            return torch.from_numpy(force), plogw
        loops = _compiled3d if Y.shape[1] == 3 else _compiled
        force, plogw = loops.attraction_csr(
            Y.detach().numpy(), *aff.csr, code, dof, inv2s2, scale=scale, want_loss=want_loss,
            loss_values=aff.csr_loss,
        )
        return torch.from_numpy(force), plogw
    diffs = []
    d2 = None
    for k in range(Y.shape[1]):
        col = Y[:, k].contiguous()
        diff = col.index_select(0, aff.rows).sub_(col.index_select(0, aff.cols))
        d2 = diff * diff if d2 is None else d2.addcmul_(diff, diff)
        diffs.append(diff)
    plogw = None
    if _is_cauchy(kernel):
        u = d2.add_(1.0)  # d2 is not needed any more: 1 + d^2 in place
        coef = aff.values / u
        if want_loss:
            plogw = -float(fixed_dot(aff.loss_values, torch.log(u)))
    else:
        coef = aff.values * kernel.slope(d2)
        if want_loss:
            plogw = float(fixed_dot(aff.loss_values, kernel.log_weight(d2)))
    if scale != 1.0:
        coef.mul_(scale)
    force = torch.stack([_segment_sum(coef * diff, aff) for diff in diffs], dim=1)
    return force, plogw


class _Repulsion:
    """The all-pairs sums of one iteration: exact (compiled or torch), FFT grid, or sampled."""

    def __init__(self, Y, kernel, method, grid_kwargs, n_negatives, generator):
        if method not in ("fft", "exact", "sampled"):
            raise ValueError(f"method must be 'fft', 'exact' or 'sampled', got {method!r}.")
        self.Y, self.kernel, self.method = Y, kernel, method
        self.n_negatives, self.generator = n_negatives, generator
        n = Y.shape[0]
        self.one = torch.ones(n, 1, device=Y.device, dtype=Y.dtype)
        self.YC = torch.cat([self.one, Y], dim=1)
        zero = torch.zeros(1, device=Y.device, dtype=Y.dtype)
        self.w0, self.lw0 = float(kernel.weight(zero)), float(kernel.log_weight(zero))
        self.grid_kwargs = grid_kwargs or {}
        self.cpu_grid = None
        if method == "fft" and Y.shape[1] == 2 and compiled_kernels_apply(Y.device, 2) and _grid_cpu.available():
            self._plan = None  # the torch grid, built only if a torch-grid sum is asked for
            lo, spacing, G, p = grid_geometry(Y, **self.grid_kwargs)
            self.cpu_grid = _grid_cpu.CpuGrid(Y.detach().numpy(), lo.numpy(), spacing, G, p,
                                              self.grid_kwargs.setdefault("cache", {}))
        else:
            self._plan = grid_plan(Y, **self.grid_kwargs) if method == "fft" else None
        self.profile = _use_compiled(Y, kernel) if method == "exact" else None

    @property
    def plan(self):
        """The torch grid (:class:`_GridPlan`) of ``method="fft"``."""
        if self._plan is None and self.method == "fft":
            self._plan = grid_plan(self.Y, **self.grid_kwargs)
        return self._plan

    def _cpu_joint(self):
        """``(sum_{i != j} w_ij, sum_j w_ij g_ij (y_i - y_j))`` on the compiled CPU grid."""
        grid, k, n = self.cpu_grid, self.kernel, self.Y.shape[0]
        kf_w, K_w = _cpu_kernel(grid, k.weight)
        kf_wg, _ = _cpu_kernel(grid, k.weight_slope)
        spec = grid.spectrum(self.YC.detach().numpy())  # one charge spectrum [1, y] serves both kernels
        total = grid.total(spec, kf_w)  # before the potentials, which overwrite the spectrum
        S_wg, self_w = grid.gather(grid.potentials(spec, kf_wg, overwrite=True), K_w[None])
        # the interpolated self pairs replaced by the exact ones (cf. _GridPlan.self_error): in
        # sum w; in the repulsion the self pair's terms y_i * s_i - s_i * y_i cancel anyway
        S_w = total - float(np.sum(self_w[0], dtype=np.float64))
        S_wg = torch.from_numpy(S_wg)
        rep = self.Y * S_wg[:, :1] - S_wg[:, 1:]
        return torch.tensor(S_w, dtype=self.Y.dtype), rep

    def sums(self, fn, c):
        """``sum_j fn(d2_ij) c_j`` with the self pair included."""
        if self.method == "fft":
            return self.plan.sums(fn, c)
        if self.method == "exact":
            return exact_kernel_sums(self.Y, fn, c)
        return sampled_kernel_sums(self.Y, fn, c, n_negatives=self.n_negatives, generator=self.generator)

    def compiled(self, charges=None, want_slope=False, want_logw=False):
        code, dof, inv2s2 = self.profile
        out = _loops(self.Y, code).repulsion_field(self.Y.detach().numpy(), code, dof, inv2s2, charges=charges,
                                        want_slope=want_slope, want_logw=want_logw)
        return tuple(None if a is None else torch.from_numpy(a) for a in out)

    def pull(self):
        """``sum_j g_ij (y_i - y_j)``: the uniform attraction of debiasing."""
        S_g = self.sums(self.kernel.slope, self.YC)
        return self.Y * S_g[:, :1] - S_g[:, 1:]

    def logw(self):
        """``sum_{j != i} log w_ij`` per row."""
        return self.sums(self.kernel.log_weight, self.one)[:, 0] - self.lw0

    def joint(self, want_slope, want_logw):
        """``(sum_{i != j} w_ij, sum_j w_ij g_ij (y_i - y_j), pull or None, row sums of log w or None)``."""
        if self.profile is not None:
            z, rep, pull, lw = self.compiled(want_slope=want_slope, want_logw=want_logw)
            return fixed_sum(z), rep, pull, lw
        k, Y, n = self.kernel, self.Y, self.Y.shape[0]
        if self.method == "exact" and _is_cauchy(k):
            S_w, S_wg = _exact_cauchy_sums(Y, self.YC)
            S_w = fixed_sum(S_w - self.w0)
        elif self.cpu_grid is not None:
            S_w, rep = self._cpu_joint()
            return S_w, rep, self.pull() if want_slope else None, self.logw() if want_logw else None
        elif self.method == "fft":
            plan = self.plan
            spec = plan.charge_spectrum(self.YC)  # one charge spectrum [1, y] serves both kernels
            # the joint form needs only the total of the row sums of w
            S_w = plan.total(spec[:1], k.weight) + fixed_sum(plan.self_error(k.weight)) - n * self.w0
            S_wg = plan.gather(plan.convolve(spec, k.weight_slope), plan.index, plan.weights)
            S_wg = S_wg + plan.self_error(k.weight_slope)[:, None] * self.YC
        else:
            S_w = fixed_sum(self.sums(k.weight, self.one)[:, 0] - self.w0)
            S_wg = self.sums(k.weight_slope, self.YC)
        rep = Y * S_wg[:, :1] - S_wg[:, 1:]  # the self pair cancels
        return S_w, rep, self.pull() if want_slope else None, self.logw() if want_logw else None

    def conditional(self, want_slope, want_logw):
        """``(Z_i, own repulsion / Z_i, the others' repulsion, pull or None, log-w row sums or None)``."""
        tiny = torch.finfo(self.Y.dtype).tiny
        if self.profile is not None and self.profile[0] != _compiled.CAUCHY and not (want_slope or want_logw):
            # one pass over the pairs instead of two (the kernel is symmetric): _compiled_cond. Not
            # for the Cauchy kernel, whose second pass costs less than the one-pass bookkeeping
            Zi, rep_own, rep_other = _compiled_cond.conditional_field(self.Y.detach().numpy(), *self.profile)
            return torch.from_numpy(Zi).clamp_min(tiny), torch.from_numpy(rep_own), torch.from_numpy(rep_other), \
                None, None
        if self.profile is not None:
            Zi, rep_own, _, lw = self.compiled(want_logw=want_logw)
            Zi = Zi.clamp_min(tiny)
            inv = (1.0 / Zi)[:, None]
            _, rep_other, pull, _ = self.compiled(charges=inv[:, 0].numpy(), want_slope=want_slope)
            return Zi, rep_own * inv, rep_other, pull, lw
        Y, d, k = self.Y, self.Y.shape[1], self.kernel
        Zi = (self.sums(k.weight, self.one)[:, 0] - self.w0).clamp_min(tiny)
        inv = (1.0 / Zi)[:, None]
        S = self.sums(k.weight_slope, torch.cat([self.one, Y, inv, Y * inv], dim=1))
        rep_own = (Y * S[:, :1] - S[:, 1 : 1 + d]) * inv
        rep_other = Y * S[:, 1 + d : 2 + d] - S[:, 2 + d :]
        return Zi, rep_own, rep_other, self.pull() if want_slope else None, self.logw() if want_logw else None


def objective_and_gradient(
    Y,
    aff,
    kernel,
    *,
    normalization="joint",
    exaggeration=1.0,
    alpha=0.0,
    method="fft",
    want_loss=False,
    grid_kwargs=None,
    n_negatives=64,
    generator=None,
):
    """Gradient (and optionally the value) of the I-Con / t-SNE objective.

    Parameters
    ----------
    Y : torch.Tensor of shape (n, d)
        Embedding.
    aff : SparseAffinity
        Supervisory ``P``: the joint ``P`` (sums to one) for ``normalization="joint"``,
        :meth:`SparseAffinity.conditional` of the conditional ``P`` for ``"conditional"``.
    kernel : DistanceKernel
        Learned kernel.
    normalization : {"joint", "conditional"}, default="joint"
        See the module docstring.
    exaggeration : float, default=1.0
        Multiplies the attraction from ``P`` (early exaggeration).
    alpha : float, default=0.0
        Debiasing weight of the supervisory distribution.
    method : {"fft", "exact", "sampled"}, default="fft"
        How repulsive kernel sums are computed.
    want_loss : bool, default=False
        Also return the loss value (un-exaggerated).
    grid_kwargs : dict, default=None
        Passed to :func:`grid_plan`.
    n_negatives : int, default=64
        Negatives per point for ``method="sampled"``.
    generator : torch.Generator, default=None
        Randomness of ``method="sampled"``.

    Returns
    -------
    grad : torch.Tensor of shape (n, d)
    loss : float or None

    Examples
    --------
    >>> import scipy.sparse as sp, torch
    >>> from skicon.kernels import StudentT
    >>> aff = SparseAffinity(sp.csr_matrix([[0.0, 0.5], [0.5, 0.0]]), "cpu", torch.float64)
    >>> Y = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    >>> grad, loss = objective_and_gradient(Y, aff, StudentT(), method="exact", want_loss=True)
    >>> abs(loss) < 1e-12  # two points: Q = P, KL = 0
    True
    """
    if normalization not in ("joint", "conditional"):
        raise ValueError(f"normalization must be 'joint' or 'conditional', got {normalization!r}.")
    args = (kernel, normalization, exaggeration, alpha, method, want_loss, grid_kwargs, n_negatives, generator)
    if aff.order is None:
        return _objective_and_gradient(Y, aff, *args)
    # the affinity stores the points renumbered (locality): work in its numbering, which also
    # makes the grid's spreading and gathering walk memory in order; O(n) in and out
    order = torch.from_numpy(aff.order).to(Y.device)
    grad, loss = _objective_and_gradient(Y.index_select(0, order), aff, *args)
    return torch.empty_like(grad).index_copy_(0, order, grad), loss


def _objective_and_gradient(Y, aff, kernel, normalization, exaggeration, alpha, method, want_loss, grid_kwargs,
                            n_negatives, generator):
    """:func:`objective_and_gradient` with ``Y`` in the affinity's storage numbering."""
    field = _Repulsion(Y, kernel, method, grid_kwargs, n_negatives, generator)
    n = Y.shape[0]
    joint = normalization == "joint"
    N = n * (n - 1) if joint else n - 1  # candidates of the one joint row, or of each row
    u = float(debias(0.0, alpha, N))  # what every candidate gets from the uniform part of p~
    keep = float(debias(1.0, alpha, N)) - u  # the factor (1 - alpha) on p
    want_slope, want_logw = alpha > 0, want_loss and alpha > 0
    if joint:
        S_w, rep, pull, S_lw = field.joint(want_slope, want_logw)
        Z = S_w.clamp_min(torch.finfo(Y.dtype).tiny)
        attr, plogw = _attraction(Y, aff, kernel, keep * exaggeration, want_loss)
        grad = 4.0 * (attr - rep / Z)
        if alpha > 0:
            grad = grad + 4.0 * u * exaggeration * pull
        if not want_loss:
            return grad, None
        logZ = float(torch.log(Z))
        cross = plogw - logZ * aff.loss_mass  # sum p log q over the non-zeros
        if alpha == 0:
            return grad, aff.entropy_term - cross
        cross_u = float(fixed_sum(S_lw)) - N * logZ  # sum over every pair of log q
        return grad, aff.debiased_plogp(alpha, 1, N) - keep * cross - u * cross_u
    Zi, rep_own, rep_other, pull, S_lw = field.conditional(want_slope, want_logw)
    attr, plogw = _attraction(Y, aff, kernel, keep * exaggeration, want_loss)
    grad = (2.0 / n) * (attr - rep_own - rep_other)
    if alpha > 0:
        grad = grad + (4.0 / n) * u * exaggeration * pull
    if not want_loss:
        return grad, None
    logZ = torch.log(Zi)
    cross = plogw - float(fixed_dot(aff.loss_row_mass, logZ))
    if alpha == 0:
        return grad, (aff.entropy_term - cross) / n
    cross_u = float(fixed_sum(S_lw - (n - 1) * logZ))
    return grad, (aff.debiased_plogp(alpha, n, N) - keep * cross - u * cross_u) / n


def auto_learning_rate(n_samples, exaggeration, kernel=None):
    """Learning rate of ``learning_rate="auto"``: ``max(n / (4 * exaggeration), 50)``.

    With the true KL gradient (which carries the factor 4) this is the ``n / exaggeration`` rule
    of Belkina et al. (2019) used by openTSNE, floored as in scikit-learn.

    Parameters
    ----------
    n_samples : int
        Number of points.
    exaggeration : float
        Exaggeration of the current phase.
    kernel : DistanceKernel, default=None
        For a light-tailed kernel such as the Gaussian of SNE, whose attraction is not damped at
        long range, the rate is ``n sigma^2 / (4 * exaggeration)`` without a floor, which keeps
        the step below the curvature of the attraction.

    Returns
    -------
    float

    Examples
    --------
    >>> auto_learning_rate(1000, 12.0), auto_learning_rate(1000, 1.0)
    (50.0, 250.0)
    """
    if kernel is not None and not kernel.heavy_tailed():
        # sigma^2 of a Gaussian is 1 / (2 g(0)); the same curvature rule for any light tail
        sigma2 = 1.0 / (2.0 * float(kernel.slope(torch.zeros(1, dtype=torch.float64))))
        return n_samples * sigma2 / (4.0 * exaggeration)
    return max(n_samples / (4.0 * exaggeration), 50.0)


# ----------------------------------------------------------------------------------------------
# objectives run by the Trainer
# ----------------------------------------------------------------------------------------------
class EngineObjective:
    """Trainer objective of the pairwise engine: writes the analytic gradient, returns the loss.

    The trained module is a :class:`~skicon.mappers.Table` (its ``weight`` is the embedding) or,
    with ``inputs``, a parametric mapper whose output on ``inputs`` is the embedding; then the
    gradient flows into the mapper's weights by the chain rule
    ``dL/dtheta = (dL/dY) . (dY/dtheta)``. The exaggeration is read from the trainer's current
    phase (``phase["exaggeration"]``), so early exaggeration is a phase of the one loop.

    Parameters
    ----------
    aff : SparseAffinity
        Supervisory ``P``.
    kernel : DistanceKernel
        Learned kernel.
    inputs : torch.Tensor of shape (n, n_features), default=None
        Inputs of a parametric mapper; None for a table.
    **engine : dict
        ``normalization``, ``alpha``, ``method``, ``n_negatives``, ``generator``,
        ``grid_kwargs`` of :func:`objective_and_gradient`.

    Attributes
    ----------
    trainer : Trainer or None
        Set by the caller once the trainer exists; its ``phase`` gives the exaggeration.

    Examples
    --------
    >>> import scipy.sparse as sp, torch
    >>> from skicon.kernels import StudentT
    >>> from skicon.mappers import Table
    >>> aff = SparseAffinity(sp.csr_matrix([[0.0, 0.5], [0.5, 0.0]]), "cpu", torch.float64)
    >>> table = Table(torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64))
    >>> loss = EngineObjective(aff, StudentT(), method="exact")(table, None, table)
    >>> abs(float(loss)) < 1e-12, table.weight.grad.shape
    (True, torch.Size([2, 2]))
    """

    def __init__(self, aff, kernel, *, inputs=None, **engine):
        self.aff, self.kernel, self.inputs = aff, kernel, inputs
        self.engine = dict(engine)
        if self.engine.get("method") == "fft":
            self.engine["grid_kwargs"] = dict(self.engine.get("grid_kwargs") or {}, cache={})
        self.trainer = None

    def torch_glue_only(self, module):
        """Whether torch does only O(n) glue in this fit, the sums running in compiled loops on their own threads.

        True for a table on CPU whose kernel has a compiled twin, with the exact repulsion or the
        joint form's compiled FFT grid in 2-D: the :class:`~skicon._training.Trainer` then keeps
        torch on one thread, since torch's idle OpenMP workers spinning after each small op
        slowed the compiled loops' and the FFT's threads (MNIST-1D 20k: 17.0-21.7 s per fit
        with two torch threads, 11.8-14.7 s with one).
        """
        if self.inputs is not None or module.weight.device.type != "cpu":
            return False
        Y, method = module.weight, self.engine.get("method", "fft")
        if _use_compiled(Y, self.kernel) is None:
            return False
        if method == "exact":
            return True
        joint = self.engine.get("normalization", "joint") == "joint"
        return method == "fft" and Y.shape[1] == 2 and joint and _grid_cpu.available()

    def embedding(self, module):
        """The embedding the module gives (with an autograd graph for a parametric mapper)."""
        return module.weight if self.inputs is None else module(self.inputs)

    def __call__(self, module, batch, teacher):
        ex = 1.0 if self.trainer is None else float(self.trainer.phase.get("exaggeration", 1.0))
        # the exact loss costs a log per edge (40-60 % of an iteration): only when the Trainer logs
        want = self.trainer is None or self.trainer.wants_loss
        Y = self.embedding(module)
        grad, loss = objective_and_gradient(Y.detach(), self.aff, self.kernel, exaggeration=ex, want_loss=want,
                                            **self.engine)
        if self.inputs is None:
            Y.grad = grad.to(Y.dtype)
        else:
            (Y * grad.to(Y.dtype)).sum().backward()
        return torch.tensor(loss) if want else None

    def final_loss(self, Y):
        """The loss at ``Y`` (float64 when the repulsion is exact, so that it is exact)."""
        aff = self.aff
        if self.engine.get("method") == "exact":
            Y, aff = Y.double(), aff.to(torch.float64)
        return objective_and_gradient(Y.detach(), aff, self.kernel, want_loss=True, **self.engine)[1]


class PlacementObjective:
    """Trainer objective placing new points against a frozen reference embedding, row by row.

    Row i minimises ``KL(p(.|i) || q(.|i))`` where ``p(.|i)`` lives on its reference neighbours
    and ``q(j|i) = w(y_i, y_j) / sum_k w(y_i, y_k)`` runs over all reference points. The
    reference is frozen, so the repulsive field is computed once (on the FFT grid, or exactly per
    row, elementwise, for ``method="exact"``), and the gradient of row i depends on row i only:
    with an elementwise optimiser (Adam), a batch gives the same result as one point at a time.
    The loss is the sum of the rows' divergences (so its gradient is each row's own).

    Parameters
    ----------
    Y_ref : torch.Tensor of shape (n, d)
        Frozen reference embedding.
    neighbors : torch.Tensor of shape (m, k), int64
        Reference neighbours of each new point.
    p_rows : torch.Tensor of shape (m, k)
        Supervisory probabilities over those neighbours (rows sum to one).
    kernel : DistanceKernel
        Learned kernel.
    method : {"fft", "exact"}, default="fft"
        Repulsion evaluation; ``"fft"`` needs d in {1, 2}.
    grid_kwargs : dict, default=None
        Passed to :func:`grid_plan`.

    Attributes
    ----------
    trainer : Trainer or None
        Set by the caller once the trainer exists; the loss is computed only on the iterations
        it logs (``trainer.wants_loss``), always when None.

    Examples
    --------
    >>> import torch
    >>> from skicon.kernels import StudentT
    >>> from skicon.mappers import Table
    >>> ref = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    >>> obj = PlacementObjective(ref, torch.tensor([[0]]), torch.ones(1, 1, dtype=torch.float64), StudentT(),
    ...                          method="exact")
    >>> new = Table(obj.start())
    >>> round(float(obj(new, None, new)), 4)  # at the neighbour: -log q(0|new) = log(1 + 1/5)
    0.1823
    """

    def __init__(self, Y_ref, neighbors, p_rows, kernel, *, method="fft", grid_kwargs=None):
        self.Y_ref, self.kernel, self.p = Y_ref, kernel, p_rows
        self.Y_nb = Y_ref[neighbors]  # (m, k, d)
        logp = torch.log(torch.where(p_rows > 0, p_rows, torch.ones_like(p_rows)))
        self.plogp = float(fixed_sum(p_rows * logp))
        one = torch.ones(Y_ref.shape[0], 1, device=Y_ref.device, dtype=Y_ref.dtype)
        self.YC = torch.cat([one, Y_ref], dim=1)
        self.plan = None
        self.trainer = None  # set by the caller: the loss is computed only when it logs
        if method == "fft":
            self.plan = grid_plan(Y_ref, **(grid_kwargs or {}))
            self.pot_w = self.plan.potentials(kernel.weight, one)
            self.pot_wg = self.plan.potentials(kernel.weight_slope, self.YC)

    def start(self):
        """Initial rows: the ``p``-weighted mean of each point's reference neighbours."""
        return (self.p[:, :, None] * self.Y_nb).sum(dim=1)

    def field(self, Y):
        """``(sum_j w_ij, sum_j w_ij g_ij [1, y_j])`` over the reference, for each row of ``Y``."""
        if self.plan is not None:
            idx, wts = self.plan.locate(Y)
            return self.plan.gather(self.pot_w, idx, wts)[:, 0], self.plan.gather(self.pot_wg, idx, wts)
        # elementwise per row (no matmul) so that results do not depend on the batch
        Zs, Ss = [], []
        step = max(1, 2_000_000 // max(1, self.Y_ref.shape[0] * self.YC.shape[1]))
        for s in range(0, Y.shape[0], step):
            diff = Y[s : s + step, None, :] - self.Y_ref[None, :, :]
            d2 = (diff * diff).sum(dim=2)
            Zs.append(self.kernel.weight(d2).sum(dim=1))
            Ss.append((self.kernel.weight_slope(d2)[:, :, None] * self.YC[None, :, :]).sum(dim=1))
        return torch.cat(Zs), torch.cat(Ss)

    def __call__(self, module, batch, teacher):
        Y = module.weight
        Yd = Y.detach()
        diff = Yd[:, None, :] - self.Y_nb
        d2 = (diff * diff).sum(dim=2)
        attr = 2.0 * ((self.p * self.kernel.slope(d2))[:, :, None] * diff).sum(dim=1)
        Z, S = self.field(Yd)
        Z = Z.clamp_min(torch.finfo(Yd.dtype).tiny)
        rep = 2.0 * (Yd * S[:, :1] - S[:, 1:]) / Z[:, None]
        Y.grad = attr - rep
        if self.trainer is not None and not self.trainer.wants_loss:
            return None
        cross = float(fixed_sum(self.p * self.kernel.log_weight(d2))) - float(fixed_sum(torch.log(Z)))
        return torch.tensor(self.plogp - cross)
