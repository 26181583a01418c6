"""The FFT grid of the pairwise engine on CPU: compiled spreading and gathering, pocketfft transforms.

The same computation as :class:`skicon.objectives._pairwise._GridPlan` (Lagrange interpolation
onto a regular grid, convolution by FFT, the self pair made exact), for 2-D embeddings on the
CPU, where the torch version costs several times more than its arithmetic: its interpolation
weights are a chain of small tensor operations, its spreading and gathering materialise
``(n, nodes**2, channels)`` tensors, and torch's FFT along a non-contiguous axis is slow. Here

* one compiled pass per point computes its stencil (first grid node and Lagrange weights per
  axis), kept for the iteration;
* one compiled pass spreads the charges into a ``(channels, G, G)`` grid, in point order (so the
  sums are the same on any number of threads);
* scipy's pocketfft transforms the grid axis by axis (the zero padding is never transformed)
  with the threads of the active limit; each 1-D transform is computed alone, so the result
  does not depend on the thread count either;
* one compiled pass per point gathers the potentials and, with the same stencil, the
  ``w^T K w`` of its interpolated self interaction.

Used by the joint form's repulsion on CPU (:class:`skicon.objectives._pairwise._Repulsion`);
tested against the torch grid in ``tests/test_grid_cpu.py``.
"""

import numpy as np
import scipy.fft

from .._threads import current_threads
from ._compiled import _blocks, _n_blocks, _run, available  # available: whether numba is importable

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba comes with pynndescent, a hard dependency
    njit = None

__all__ = ["available", "CpuGrid"]


if njit is not None:

    @njit(nogil=True, cache=True)
    def _stencils(Y, lo, spacing, G, p, first, wts, lo_row, hi_row):  # pragma: no cover - compiled
        # the centred p-node stencil of each point per axis, as _pairwise._interpolation
        for i in range(lo_row, hi_row):
            for a in range(2):
                v = (Y[i, a] - lo[a]) / spacing
                f = np.floor(v - (p - 1) / 2.0 + 0.5)
                f = min(max(f, 0.0), G - p)
                t = min(max(v - f, 0.0), p - 1.0)
                first[i, a] = np.int64(f)
                for k in range(p):
                    w = 1.0
                    for m in range(p):
                        if m != k:
                            w = w * ((t - m) / (k - m))
                    wts[i, a, k] = w

    @njit(nogil=True, cache=True)
    def _spread(charges, first, wts, grid):  # pragma: no cover - compiled
        n, c = charges.shape
        p = wts.shape[2]
        for i in range(n):
            fx, fy = first[i, 0], first[i, 1]
            for a in range(p):
                for b in range(p):
                    w = wts[i, 0, a] * wts[i, 1, b]
                    for ch in range(c):
                        grid[ch, fx + a, fy + b] += w * charges[i, ch]

    @njit(nogil=True, cache=True)
    def _gather(pot, first, wts, K, out, self_w, lo_row, hi_row):  # pragma: no cover - compiled
        # out[i, ch] = sum_ab w_a w_b pot[ch, fx + a, fy + b]; self_w[i] = w^T K w over the stencil
        c = pot.shape[0]
        p = wts.shape[2]
        pp = p * p
        w2 = np.empty(pp, dtype=wts.dtype)
        for i in range(lo_row, hi_row):
            fx, fy = first[i, 0], first[i, 1]
            for a in range(p):
                for b in range(p):
                    w2[a * p + b] = wts[i, 0, a] * wts[i, 1, b]
            for ch in range(c):
                acc = 0.0
                for a in range(p):
                    for b in range(p):
                        acc += w2[a * p + b] * pot[ch, fx + a, fy + b]
                out[i, ch] = acc
            for s in range(K.shape[0]):
                q = 0.0
                for u in range(pp):
                    kw = 0.0
                    for v in range(pp):
                        kw += K[s, u, v] * w2[v]
                    q += w2[u] * kw
                self_w[s, i] = q


class CpuGrid:
    """One iteration's grid on CPU: stencils of the points, transforms of charges, gathered sums.

    Parameters
    ----------
    Y : ndarray of shape (n, 2)
        Embedding (float32 or float64; the grid works in the same precision).
    lo : ndarray of shape (2,)
        Grid origin.
    spacing : float
        Distance between grid nodes.
    n_grid : int
        Nodes per axis ``G``.
    n_nodes : int
        Stencil nodes per axis.
    cache : dict
        Kernel transforms per geometry, reused across iterations.

    Examples
    --------
    >>> import numpy as np
    >>> grid = CpuGrid(np.zeros((2, 2)), np.array([-1.0, -1.0]), 0.5, 6, 3, {})
    >>> grid.first.tolist()
    [[1, 1], [1, 1]]
    """

    def __init__(self, Y, lo, spacing, n_grid, n_nodes, cache):
        self.Y = np.ascontiguousarray(Y)
        self.dtype = self.Y.dtype
        self.G, self.p, self.spacing, self.cache = int(n_grid), int(n_nodes), float(spacing), cache
        n = self.Y.shape[0]
        self.first = np.empty((n, 2), dtype=np.int64)
        self.wts = np.empty((n, 2, self.p), dtype=self.dtype)
        lo = np.asarray(lo, dtype=self.dtype)
        args = (self.Y, lo, self.dtype.type(self.spacing), self.G, self.p, self.first, self.wts)
        _run(_stencils, lambda r: args + r, _blocks(np.arange(n + 1) * 64, _n_blocks(n * 64)))

    def _workers(self):
        return max(1, current_threads())

    def spectrum(self, charges):
        """Spread ``charges`` (n, c) and return the transform of the zero-padded grid: (c, 2G, G + 1)."""
        charges = np.ascontiguousarray(charges, dtype=self.dtype)
        G = self.G
        grid = np.zeros((charges.shape[1], G, G), dtype=self.dtype)
        _spread(charges, self.first, self.wts, grid)
        half = scipy.fft.rfft(grid, n=2 * G, axis=2, workers=self._workers())
        return scipy.fft.fft(half, n=2 * G, axis=1, workers=self._workers(), overwrite_x=True)

    def potentials(self, spectrum, kernel_fft):
        """Potentials (c, G, G) of a spectrum under a kernel transform (2G, G + 1)."""
        G = self.G
        prod = spectrum * kernel_fft.astype(spectrum.dtype, copy=False)
        rows = scipy.fft.ifft(prod, axis=1, workers=self._workers(), overwrite_x=True)[:, :G]
        pot = scipy.fft.irfft(rows, n=2 * G, axis=2, workers=self._workers())[:, :, :G]
        return np.ascontiguousarray(pot, dtype=self.dtype)

    def total(self, spectrum, kernel_fft):
        """``sum_g charge_g (K * charge)_g`` of channel 0, by Parseval (see ``_GridPlan.total``)."""
        G = self.G
        s = spectrum[0]
        power = (s.real.astype(np.float64) ** 2 + s.imag.astype(np.float64) ** 2) * kernel_fft
        inner = power[:, 1:G].sum()
        edges = power[:, 0].sum() + power[:, G].sum()
        return float((2.0 * inner + edges) / (2 * G) ** 2)

    def gather(self, pot, stencil_kernels):
        """Interpolated potentials (n, c) and each point's ``w^T K w`` per stencil matrix: (s, n)."""
        n = self.Y.shape[0]
        K = np.ascontiguousarray(stencil_kernels, dtype=self.dtype)
        out = np.empty((n, pot.shape[0]), dtype=self.dtype)
        self_w = np.empty((K.shape[0], n), dtype=self.dtype)
        args = (pot, self.first, self.wts, K, out, self_w)
        _run(_gather, lambda r: args + r, _blocks(np.arange(n + 1) * 64, _n_blocks(n * 64)))
        return out, self_w
