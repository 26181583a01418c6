"""Scalable SNE / t-SNE optimisation engine (pure torch functions, CPU or CUDA).

The objective is the I-Con loss with a sparse supervisory ``P`` and a learned kernel
``w(d^2)`` on the embedding: Student-t ``(1 + d^2/dof)^(-(dof+1)/2)`` or Gaussian
``exp(-d^2 / (2 sigma^2))``. Two normalisations are supported:

* ``"joint"`` (van der Maaten's t-SNE): one distribution over all ordered pairs,
  ``Q_ij = w_ij / sum_{k != l} w_kl``; the loss is ``KL(P || Q)`` with ``P`` summing to one.
* ``"conditional"`` (Table 1 of the I-Con paper): ``q(j|i) = w_ij / sum_{k != i} w_ik``; the loss
  is the mean over rows of ``KL(p(.|i) || q(.|i))``, exactly :func:`skicon.icon_loss`.

The gradient splits into an attractive part over the non-zeros of ``P`` (exact, O(nnz)) and a
repulsive part that needs kernel sums over all pairs. Those sums are computed

* ``"fft"``: by interpolating charges onto a regular grid with piecewise Lagrange polynomials and
  convolving on the grid with FFTs (the interpolation idea of FIt-SNE), O(n + G log G) per
  iteration, for 1-D and 2-D embeddings;
* ``"exact"``: over all pairs in row chunks, O(n^2) time but O(n * chunk) memory;
* ``"sampled"``: unbiased estimates from random negatives (any dimension, O(n m)).

Debiasing (paper eq. 2), ``p~ = (1 - alpha) p + alpha / N``, adds a uniform attraction whose
gradient is one more kernel sum, so it stays O(n) as well.
"""

import math

import numpy as np
import scipy.sparse as sp
import torch

from . import _cpu_kernels
from .neighbors import perplexity_betas

__all__ = [
    "perplexity_affinities",
    "joint_from_conditional",
    "SparseAffinity",
    "grid_plan",
    "fft_kernel_sums",
    "exact_kernel_sums",
    "sampled_kernel_sums",
    "objective_and_gradient",
    "GradientDescent",
    "auto_learning_rate",
    "optimize",
    "embed_new_points",
]


# ----------------------------------------------------------------------------------------------
# supervisory affinities
# ----------------------------------------------------------------------------------------------
def joint_from_conditional(P):
    """Symmetrised joint distribution ``(P + P^T) / (2 n)`` of a row-stochastic sparse matrix.

    Parameters
    ----------
    P : scipy.sparse matrix of shape (n, n)
        Conditional distribution, rows summing to one (or zero).

    Returns
    -------
    scipy.sparse.csr_matrix
        Symmetric, non-negative, summing to one over all entries (when every row had mass).
    """
    P = sp.csr_matrix(P, dtype=np.float64)
    J = (P + P.T).tocsr()
    J.sum_duplicates()
    total = J.sum()
    return J / total if total > 0 else J


def perplexity_affinities(distances, perplexity, *, tol=1e-5, max_iter=100):
    """Row-conditional Gaussian affinities on a kNN graph with per-row perplexity calibration.

    The precisions ``beta_i = 1 / (2 sigma_i^2)`` come from :func:`skicon.neighbors.perplexity_betas`
    (vectorised bisection, each row independent of the others), so that the entropy of
    ``p(.|i) ∝ exp(-beta_i d_ij^2)`` over the k neighbours equals ``log(perplexity)``.

    Parameters
    ----------
    distances : ndarray of shape (n, k)
        Distances to the k nearest neighbours (self excluded).
    perplexity : float
        Target perplexity, at most k.
    tol : float, default=1e-5
        Tolerance on the entropy (nats).
    max_iter : int, default=100
        Maximum bisection steps.

    Returns
    -------
    P : ndarray of shape (n, k)
        Conditional probabilities, rows summing to one.
    beta : ndarray of shape (n,)
        The calibrated precisions.
    """
    d2 = np.asarray(distances, dtype=np.float64) ** 2
    d2 = d2 - d2.min(axis=1, keepdims=True)
    beta = perplexity_betas(d2, perplexity, tol=tol, max_iter=max_iter)
    w = np.exp(-beta[:, None] * d2)
    return w / w.sum(axis=1, keepdims=True), beta


class SparseAffinity:
    """A sparse supervisory matrix held as torch COO edge lists, on a device.

    Parameters
    ----------
    P : scipy.sparse matrix of shape (n, n)
        Supervisory distribution (joint or conditional).
    device : torch.device
        Where the tensors live.
    dtype : torch.dtype
        Float dtype of the values.
    """

    def __init__(self, P, device, dtype):
        coo = sp.coo_matrix(P)
        keep = coo.data > 0
        order = np.lexsort((coo.col[keep], coo.row[keep]))
        self.rows = torch.as_tensor(coo.row[keep][order].astype(np.int64), device=device)
        self.cols = torch.as_tensor(coo.col[keep][order].astype(np.int64), device=device)
        self.values = torch.as_tensor(coo.data[keep][order], dtype=dtype, device=device)
        self.n = P.shape[0]
        counts = np.bincount(coo.row[keep], minlength=self.n)
        # segment_reduce is much faster than index_add_ on CPU; empty rows are fine
        self.lengths = torch.as_tensor(counts.astype(np.int64), device=device)
        # sum p log p, the constant part of KL(p || q)
        v = coo.data[keep]
        self.entropy_term = float(np.sum(v * np.log(v)))
        row_mass = np.zeros(self.n)
        np.add.at(row_mass, coo.row[keep], v)
        self.row_mass = torch.as_tensor(row_mass, dtype=dtype, device=device)
        # CSR views of the same arrays for the compiled CPU kernels (rows are sorted)
        self.csr = None
        if torch.device(device).type == "cpu":
            indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            # int32 column indices: less memory traffic in the gather-bound attraction loop
            self.csr = (indptr, self.cols.numpy().astype(np.int32), self.values.numpy())


# ----------------------------------------------------------------------------------------------
# kernel sums sum_j K(y_i, y_j) c_j  (self pair j == i included; callers remove it)
# ----------------------------------------------------------------------------------------------
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
        G = self.n_grid
        k = torch.arange(2 * G, device=device, dtype=dtype)
        # circulant embedding: offsets 0..G-1, (unused) G, then -(G-1)..-1
        off = torch.where(k <= G, k, k - 2 * G) * self.spacing
        if self.dim == 1:
            out = torch.fft.rfft(fn(off * off)).real.contiguous()
        else:
            out = torch.fft.rfft2(fn(off[:, None] ** 2 + off[None, :] ** 2)).real.contiguous()
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
        inner = power[..., 1:G].sum() if self.dim == 1 else power[:, 1:G].sum()
        edges = power[..., 0].sum() + power[..., G].sum()
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
        p, dim = self.n_nodes, self.dim
        ar = torch.arange(p, device=self.weights.device, dtype=self.weights.dtype)
        if dim == 1:
            off2 = ((ar[:, None] - ar[None, :]) * self.spacing) ** 2
        else:
            ox = (ar[:, None, None, None] - ar[None, None, :, None]) * self.spacing
            oy = (ar[None, :, None, None] - ar[None, None, None, :]) * self.spacing
            off2 = (ox**2 + oy**2).reshape(p * p, p * p)
        K = fn(off2)
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
        G = max_intervals * n_nodes
        spacing = span / (G - n_nodes - 2)
    G = _next_smooth(G)
    # centre the grid on the data
    lo = (lo + hi) / 2.0 - (G - 1) * spacing / 2.0
    index, weights = _interpolation(Y, lo, spacing, G, n_nodes)
    plan = _GridPlan(index, weights, G, spacing, dim, cache)
    plan.lo, plan.n_nodes = lo, n_nodes
    return plan


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
def compiled_kernels_apply(device, n_components):
    """Whether the compiled CPU kernels serve an embedding on ``device`` with ``n_components`` columns."""
    return _COMPILED and _cpu_kernels.available() and torch.device(device).type == "cpu" and n_components <= 2


def _use_compiled(Y, kernel):
    """The compiled loop's ``(code, dof, inv2s2)`` when it serves ``kernel`` on ``Y``, else None.

    The kernel names its compiled twin (:meth:`~skicon.kernels.DistanceKernel.compiled_profile`);
    a kernel without one runs the torch code below on every device.
    """
    if not compiled_kernels_apply(Y.device, Y.shape[1]):
        return None
    return kernel.compiled_profile()


def _is_cauchy(kernel):
    """The Student-t kernel with one degree of freedom, which has a cheaper exact path."""
    profile = kernel.compiled_profile()
    return profile is not None and profile[0] == _cpu_kernels.CAUCHY


#: Switch for the compiled CPU kernels (tests turn it off to compare with the torch code).
_COMPILED = True


def _segment_sum(values, aff):
    """Sum edge values into their (sorted) rows."""
    if aff.lengths is not None:
        return torch.segment_reduce(values, "sum", lengths=aff.lengths, axis=0)
    return torch.zeros(aff.n, *values.shape[1:], dtype=values.dtype, device=values.device).index_add_(
        0, aff.rows, values
    )


def _attraction(Y, aff, kernel, scale, want_loss):
    """``sum_j scale * p_ij g_ij (y_i - y_j)`` over the non-zeros, and ``sum p_ij log w_ij``.

    Works one coordinate at a time on contiguous 1-D tensors: on CPU, gathers and reductions
    over an (nnz, 2) tensor are several times slower than the same work on 1-D vectors.
    """
    profile = _use_compiled(Y, kernel)
    if profile is not None and aff.csr is not None:
        code, dof, inv2s2 = profile
        force, plogw = _cpu_kernels.attraction_csr(
            Y.detach().numpy(), *aff.csr, code, dof, inv2s2, scale=scale, want_loss=want_loss
        )
        return torch.from_numpy(force), plogw
    diffs = []
    d2 = None
    for k in range(Y.shape[1]):
        col = Y[:, k].contiguous()
        diff = col.index_select(0, aff.rows).sub_(col.index_select(0, aff.cols))
        d2 = diff * diff if d2 is None else d2.addcmul_(diff, diff)
        diffs.append(diff)
    if _is_cauchy(kernel):
        coef = aff.values / (d2 + 1.0)
    else:
        coef = aff.values * kernel.slope(d2)
    if scale != 1.0:
        coef.mul_(scale)
    force = torch.stack([_segment_sum(coef * diff, aff) for diff in diffs], dim=1)
    plogw = float((aff.values * kernel.log_weight(d2)).sum()) if want_loss else None
    return force, plogw


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
        Supervisory ``P``: joint (sums to one) for ``normalization="joint"``, the *symmetrised
        sum* ``P + P^T`` of the conditional for ``"conditional"`` (the loss value then also needs
        ``aff.cond``, the conditional itself).
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
    """
    n, d = Y.shape
    one = torch.ones(n, 1, device=Y.device, dtype=Y.dtype)
    zero = torch.zeros(1, device=Y.device, dtype=Y.dtype)
    w0 = float(kernel.weight(zero))
    need_log = want_loss and alpha > 0

    if method == "fft":
        plan = grid_plan(Y, **(grid_kwargs or {}))
        sums = plan.sums
    elif method == "exact":
        def sums(fn, c):
            return exact_kernel_sums(Y, fn, c)
    elif method == "sampled":
        def sums(fn, c):
            return sampled_kernel_sums(Y, fn, c, n_negatives=n_negatives, generator=generator)
    else:
        raise ValueError(f"method must be 'fft', 'exact' or 'sampled', got {method!r}.")

    YC = torch.cat([one, Y], dim=1)
    profile = _use_compiled(Y, kernel) if method == "exact" else None
    compiled = profile is not None
    if compiled:
        code, dof, inv2s2 = profile
        Yn = Y.detach().numpy()

        def field(charges=None, want_slope=False):
            z, F, G = _cpu_kernels.repulsion_field(Yn, code, dof, inv2s2, charges=charges, want_slope=want_slope)
            return torch.from_numpy(z), torch.from_numpy(F), None if G is None else torch.from_numpy(G)

    if normalization == "joint":
        uniform_pull = None  # sum_j g_ij (y_i - y_j), needed by debiasing
        if compiled:
            S_w, rep, uniform_pull = field(want_slope=alpha > 0)
        elif method == "exact" and _is_cauchy(kernel):
            S_w, S_wg = _exact_cauchy_sums(Y, YC)
            S_w = S_w - w0
        elif method == "fft":
            # one charge spectrum [1, y] serves both kernels
            spec = plan.charge_spectrum(YC)
            # the joint form needs only the total of the row sums of w
            S_w = (plan.total(spec[:1], kernel.weight) + plan.self_error(kernel.weight).sum() - n * w0).reshape(1)
            S_wg = plan.gather(plan.convolve(spec, kernel.weight_slope), plan.index, plan.weights)
            S_wg = S_wg + plan.self_error(kernel.weight_slope)[:, None] * YC
        else:
            S_w = sums(kernel.weight, one)[:, 0] - w0
            S_wg = sums(kernel.weight_slope, YC)
        Z = S_w.sum().clamp_min(torch.finfo(Y.dtype).tiny)
        if not compiled:
            rep = Y * S_wg[:, :1] - S_wg[:, 1:]  # self pair cancels
        attr, plogw = _attraction(Y, aff, kernel, (1.0 - alpha) * exaggeration, want_loss)
        grad = 4.0 * (attr - rep / Z)
        if alpha > 0:
            # the uniform part alpha / (n (n - 1)) of p~ attracts every pair with weight g_ij
            if uniform_pull is None:
                S_g = sums(kernel.slope, YC)
                uniform_pull = Y * S_g[:, :1] - S_g[:, 1:]
            unif = alpha / (n * (n - 1))
            grad = grad + 4.0 * unif * exaggeration * uniform_pull
        loss = None
        if want_loss:
            logZ = float(torch.log(Z))
            loss = (1.0 - alpha) * (aff.entropy_term - plogw) + (1.0 - alpha) * logZ * float(aff.values.sum())
            if alpha > 0:
                S_lw = sums(kernel.log_weight, one)[:, 0] - float(kernel.log_weight(zero))
                unif = alpha / (n * (n - 1))
                # entropy of the mixture is not separable; only the cross-entropy part is exact
                loss = _mixture_entropy_joint(aff, alpha, n) - (1.0 - alpha) * (plogw - logZ * float(aff.values.sum())) \
                    - unif * (float(S_lw.sum()) - n * (n - 1) * logZ)
        return grad, loss

    if normalization != "conditional":
        raise ValueError(f"normalization must be 'joint' or 'conditional', got {normalization!r}.")
    # conditional: q(j|i) = w_ij / Z_i, loss = 1/n sum_i KL(p_i || q_i)
    uniform_pull = None
    if compiled:
        Zi, rep_own, _ = field()
        Zi = Zi.clamp_min(torch.finfo(Y.dtype).tiny)
        inv = (1.0 / Zi)[:, None]
        rep_own = rep_own * inv
        _, rep_other, uniform_pull = field(charges=inv[:, 0].numpy(), want_slope=alpha > 0)
    else:
        Zi = (sums(kernel.weight, one)[:, 0] - w0).clamp_min(torch.finfo(Y.dtype).tiny)
        inv = (1.0 / Zi)[:, None]
        S = sums(kernel.weight_slope, torch.cat([one, Y, inv, Y * inv], dim=1))
        rep_own = (Y * S[:, :1] - S[:, 1 : 1 + d]) * inv
        rep_other = Y * S[:, 1 + d : 2 + d] - S[:, 2 + d :]
    attr, _ = _attraction(Y, aff, kernel, (1.0 - alpha) * exaggeration, False)
    grad = (2.0 / n) * (attr - rep_own - rep_other)
    if alpha > 0:
        if uniform_pull is None:
            S_g = sums(kernel.slope, YC)
            uniform_pull = Y * S_g[:, :1] - S_g[:, 1:]
        unif = alpha / (n - 1)
        grad = grad + (4.0 / n) * unif * exaggeration * uniform_pull
    loss = None
    if want_loss:
        cond = aff.cond
        diff = Y[cond.rows] - Y[cond.cols]
        d2 = (diff * diff).sum(dim=1)
        cross = float((cond.values * (kernel.log_weight(d2) - torch.log(Zi)[cond.rows])).sum())
        if alpha > 0:
            S_lw = sums(kernel.log_weight, one)[:, 0] - float(kernel.log_weight(zero))
            unif = alpha / (n - 1)
            cross_u = float((S_lw - (n - 1) * torch.log(Zi)).sum())
            loss = (_mixture_entropy_cond(cond, alpha, n) - (1.0 - alpha) * cross - unif * cross_u) / n
        else:
            loss = (cond.entropy_term - cross) / n
    return grad, loss


def _mixture_entropy_joint(aff, alpha, n):
    """``sum p~ log p~`` for p~ = (1 - alpha) P + alpha / (n (n - 1)) over off-diagonal pairs."""
    u = alpha / (n * (n - 1))
    v = aff.values.double()
    mixed = (1.0 - alpha) * v + u
    n_zero = n * (n - 1) - v.numel()
    return float((mixed * torch.log(mixed)).sum()) + n_zero * u * math.log(u)


def _mixture_entropy_cond(cond, alpha, n):
    """``sum_i sum_j p~ log p~`` for p~ = (1 - alpha) p(j|i) + alpha / (n - 1)."""
    u = alpha / (n - 1)
    v = cond.values.double()
    mixed = (1.0 - alpha) * v + u
    n_zero = n * (n - 1) - v.numel()
    return float((mixed * torch.log(mixed)).sum()) + n_zero * u * math.log(u)


# ----------------------------------------------------------------------------------------------
# optimiser
# ----------------------------------------------------------------------------------------------
class GradientDescent:
    """Gradient descent with momentum and per-coordinate gains (delta-bar-delta), as in t-SNE.

    Parameters
    ----------
    Y : torch.Tensor of shape (n, d)
        Embedding, updated in place.
    min_gain : float, default=0.01
        Floor of the gains.
    max_step_norm : float or None, default=5.0
        Per-point cap on the length of one update (keeps stray points from shooting off).
    recenter : bool, default=True
        Subtract the mean after each step (the loss is translation invariant).
    """

    def __init__(self, Y, *, min_gain=0.01, max_step_norm=5.0, recenter=True):
        self.Y = Y
        self.update = torch.zeros_like(Y)
        self.gains = torch.ones_like(Y)
        self.min_gain = min_gain
        self.max_step_norm = max_step_norm
        self.recenter = recenter

    def step(self, grad, learning_rate, momentum):
        """Apply one update from ``grad``."""
        same = (self.update * grad) >= 0
        # gains grow where the gradient keeps pointing against the last update and shrink else
        self.gains = torch.where(same, self.gains * 0.8, self.gains + 0.2).clamp_(min=self.min_gain)
        self.update.mul_(momentum).sub_(learning_rate * self.gains * grad)
        if self.max_step_norm is not None:
            norm = self.update.norm(dim=1, keepdim=True)
            self.update.mul_(torch.clamp(self.max_step_norm / norm.clamp_min(1e-12), max=1.0))
        self.Y.add_(self.update)
        if self.recenter:
            self.Y.sub_(self.Y.mean(dim=0, keepdim=True))


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
        long range, the rate is ``n sigma^2 / (4 * exaggeration)`` without a floor, which keeps the step below the
        curvature of the attraction.

    Returns
    -------
    float
    """
    if kernel is not None and not kernel.heavy_tailed():
        # sigma^2 of a Gaussian is 1 / (2 g(0)); the same curvature rule for any light tail
        sigma2 = 1.0 / (2.0 * float(kernel.slope(torch.zeros(1, dtype=torch.float64))))
        return n_samples * sigma2 / (4.0 * exaggeration)
    return max(n_samples / (4.0 * exaggeration), 50.0)


def optimize(
    Y,
    aff,
    kernel,
    *,
    phases,
    normalization="joint",
    alpha=0.0,
    method="fft",
    grid_kwargs=None,
    n_negatives=64,
    generator=None,
    eval_every=50,
    max_step_norm=5.0,
    callback=None,
    progress=None,
):
    """Run t-SNE style gradient descent through a list of phases.

    Parameters
    ----------
    Y : torch.Tensor of shape (n, d)
        Initial embedding; updated in place.
    aff : SparseAffinity
        Supervisory affinities (see :func:`objective_and_gradient`).
    kernel : DistanceKernel
        Learned kernel.
    phases : list of dict
        Each with ``n_iter``, ``exaggeration``, ``momentum`` and ``learning_rate`` (float or
        ``"auto"``), run in order (e.g. early exaggeration, then the main phase).
    normalization, alpha, method, grid_kwargs, n_negatives, generator
        See :func:`objective_and_gradient`.
    eval_every : int, default=50
        Evaluate the loss every this many iterations (and at the end).
    max_step_norm : float or None, default=5.0
        Per-point cap on the update length.
    callback : callable, default=None
        ``callback(iteration, loss) -> bool`` called at every evaluation; truthy stops.
    progress : object with ``update(k)``, default=None
        Progress bar advanced once per iteration.

    Returns
    -------
    Y : torch.Tensor
        Final embedding.
    loss_curve : list of (iteration, loss)
        Loss values at the evaluated iterations.
    n_iter : int
        Iterations run.
    """
    n = Y.shape[0]
    opt = GradientDescent(Y, max_step_norm=max_step_norm)
    if method == "fft":
        grid_kwargs = dict(grid_kwargs or {})
        grid_kwargs.setdefault("cache", {})
    curve = []
    it = 0
    for phase in phases:
        ex = float(phase.get("exaggeration", 1.0))
        lr = phase.get("learning_rate", "auto")
        lr = auto_learning_rate(n, ex, kernel) if lr == "auto" else float(lr)
        mom = float(phase.get("momentum", 0.8))
        for _ in range(int(phase["n_iter"])):
            it += 1
            want = eval_every is not None and it % eval_every == 0
            grad, loss = objective_and_gradient(
                Y, aff, kernel, normalization=normalization, exaggeration=ex, alpha=alpha, method=method,
                want_loss=want, grid_kwargs=grid_kwargs, n_negatives=n_negatives, generator=generator,
            )
            if not torch.isfinite(grad).all():
                raise FloatingPointError(
                    f"non-finite gradient at iteration {it}; lower learning_rate or check the input data."
                )
            opt.step(grad, lr, mom)
            if progress is not None:
                progress.update(1)
            if want:
                curve.append((it, loss))
                if callback is not None and callback(it, loss):
                    return Y, curve, it
    return Y, curve, it


def embed_new_points(
    Y_ref,
    neighbors,
    p_rows,
    kernel,
    *,
    method="fft",
    n_iter=250,
    learning_rate=1.0,
    grid_kwargs=None,
):
    """Place new points against a frozen reference embedding, each row independently.

    Row i minimises ``KL(p(.|i) || q(.|i))`` where ``p(.|i)`` lives on its reference neighbours
    and ``q(j|i) = w(y_i, y_j) / sum_k w(y_i, y_k)`` runs over all reference points. The
    reference is frozen, so the repulsive field is computed once (on the FFT grid, or exactly per
    row for ``method="exact"``) and every row's optimisation touches only that row: a batch
    gives the same result as one point at a time.

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
    n_iter : int, default=250
        Adam steps.
    learning_rate : float, default=1.0
        Initial Adam step (embedding units), annealed by a cosine schedule.
    grid_kwargs : dict, default=None
        Passed to :func:`grid_plan`.

    Returns
    -------
    torch.Tensor of shape (m, d)
        New embedding rows.
    """
    m, d = neighbors.shape[0], Y_ref.shape[1]
    Y_nb = Y_ref[neighbors]  # (m, k, d)
    Y = (p_rows[:, :, None] * Y_nb).sum(dim=1).clone()  # start at the p-weighted mean
    if m == 0:
        return Y
    one = torch.ones(Y_ref.shape[0], 1, device=Y_ref.device, dtype=Y_ref.dtype)
    if method == "fft":
        plan = grid_plan(Y_ref, **(grid_kwargs or {}))
        pot_w = plan.potentials(kernel.weight, one)
        pot_wg = plan.potentials(kernel.weight_slope, torch.cat([one, Y_ref], dim=1))

        def field(Yq):
            idx, wts = plan.locate(Yq)
            return plan.gather(pot_w, idx, wts)[:, 0], plan.gather(pot_wg, idx, wts)
    else:
        YC = torch.cat([one, Y_ref], dim=1)

        def field(Yq):
            # elementwise per row (no matmul) so that results do not depend on the batch
            Zs, Ss = [], []
            step = max(1, 2_000_000 // max(1, Y_ref.shape[0] * (d + 1)))
            for s in range(0, Yq.shape[0], step):
                diff = Yq[s : s + step, None, :] - Y_ref[None, :, :]
                d2 = (diff * diff).sum(dim=2)
                Zs.append(kernel.weight(d2).sum(dim=1))
                Ss.append((kernel.weight_slope(d2)[:, :, None] * YC[None, :, :]).sum(dim=1))
            return torch.cat(Zs), torch.cat(Ss)

    Y = Y.requires_grad_(False)
    exp_avg = torch.zeros_like(Y)
    exp_sq = torch.zeros_like(Y)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, n_iter + 1):
        diff = Y[:, None, :] - Y_nb
        g = kernel.slope((diff * diff).sum(dim=2))
        attr = 2.0 * ((p_rows * g)[:, :, None] * diff).sum(dim=1)
        Z, S = field(Y)
        rep = 2.0 * (Y * S[:, :1] - S[:, 1:]) / Z.clamp_min(torch.finfo(Y.dtype).tiny)[:, None]
        grad = attr - rep
        # Adam, elementwise, so rows never interact
        exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        exp_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        lr = learning_rate * 0.5 * (1.0 + math.cos(math.pi * (t - 1) / n_iter))
        step = exp_avg / (1 - b1**t) / ((exp_sq / (1 - b2**t)).sqrt() + eps)
        Y = Y - lr * step
    return Y
