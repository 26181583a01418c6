"""The FFT grid of the pairwise engine on CPU: compiled spreading and gathering, pocketfft transforms.

The same computation as :class:`skicon.objectives._pairwise._GridPlan` (Lagrange interpolation
onto a regular grid, convolution by FFT, the self pair made exact), for 2-D embeddings on the
CPU, where the torch version costs several times more than its arithmetic: its interpolation
weights are a chain of small tensor operations, its spreading and gathering materialise
``(n, nodes**2, channels)`` tensors, and torch's FFT along a non-contiguous axis is slow. Here

* one compiled pass per point computes its stencil (first grid node and Lagrange weights per
  axis), kept for the iteration;
* one compiled pass spreads the charges into a ``(channels, G, G)`` grid, in point order (from
  20,000 points, two halves of the points into two grids in parallel, then added: the sums are
  the same on any number of threads);
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
                if p == 3:  # the default stencil in closed form (the loop below divides 12 times a point)
                    wts[i, a, 0] = 0.5 * (t - 1.0) * (t - 2.0)
                    wts[i, a, 1] = t * (2.0 - t)
                    wts[i, a, 2] = 0.5 * t * (t - 1.0)
                    continue
                for k in range(p):
                    w = 1.0
                    for m in range(p):
                        if m != k:
                            w = w * ((t - m) / (k - m))
                    wts[i, a, k] = w

    @njit(nogil=True, cache=True)
    def _spread_rows(charges, first, wts, grid, lo, hi):  # pragma: no cover - compiled
        # the charges of points lo..hi onto the grid, in point order
        c = charges.shape[1]
        p = wts.shape[2]
        for i in range(lo, hi):
            fx, fy = first[i, 0], first[i, 1]
            for a in range(p):
                for b in range(p):
                    w = wts[i, 0, a] * wts[i, 1, b]
                    for ch in range(c):
                        grid[ch, fx + a, fy + b] += w * charges[i, ch]

    @njit(nogil=True, cache=True)
    def _power_rows(s, kf, G, out):  # pragma: no cover - compiled
        # per row r of the half spectrum: sum_c m_c |s[r, c]|^2 kf[r, c] in float64, with m_c = 2
        # for the columns 1..G-1 that stand for their conjugate twins too, 1 for columns 0 and G
        for r in range(s.shape[0]):
            acc = 0.0
            for c in range(s.shape[1]):
                re = np.float64(s[r, c].real)
                im = np.float64(s[r, c].imag)
                v = (re * re + im * im) * np.float64(kf[r, c])
                acc += v if (c == 0 or c == G) else 2.0 * v
            out[r] = acc

    @njit(nogil=True, cache=True)
    def _add_into(dst, src, lo, hi):  # pragma: no cover - compiled
        for r in range(lo, hi):
            dst[r] += src[r]

    @njit(nogil=True, cache=True)
    def _gather(pot, first, wts, K, out, self_w, lo_row, hi_row):  # pragma: no cover - compiled
        # out[i, ch] = sum_ab w_a w_b pot[ch, fx + a, fy + b]; self_w[i] = w^T K w over the stencil,
        # K a stencil matrix of a translation-invariant kernel (_pairwise._stencil_sq)
        c = pot.shape[0]
        p = wts.shape[2]
        pp = p * p
        w2 = np.empty(pp, dtype=wts.dtype)
        cx = np.empty(p)
        cy = np.empty(p)
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
            # w^T K w with w = wx (x) wy and K[u, v] a function of the node offsets (dx, dy):
            # sum over the offsets of k(dx, dy) times the autocorrelations of wx at dx and of wy
            # at dy (both even), so 2 p^2 products instead of p^4
            for a in range(p):
                cx_ = 0.0
                cy_ = 0.0
                for b in range(p - a):
                    cx_ += wts[i, 0, b] * wts[i, 0, b + a]
                    cy_ += wts[i, 1, b] * wts[i, 1, b + a]
                cx[a] = cx_ if a == 0 else 2.0 * cx_
                cy[a] = cy_ if a == 0 else 2.0 * cy_
            for s in range(K.shape[0]):
                q = 0.0
                for a in range(p):
                    for b in range(p):
                        q += K[s, 0, a * p + b] * cx[a] * cy[b]
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
        # the stencil arrays are reused from iteration to iteration (kept in the cache): fresh ones
        # cost more than filling them (measured 4.8 ms against 1.4 ms per iteration, 200,000 points)
        self.first = self._scratch("first", (n, 2), np.int64)
        self.wts = self._scratch("wts", (n, 2, self.p))
        lo = np.asarray(lo, dtype=self.dtype)
        args = (self.Y, lo, self.dtype.type(self.spacing), self.G, self.p, self.first, self.wts)
        _run(_stencils, lambda r: args + r, _blocks(np.arange(n + 1) * 64, _n_blocks(n * 64)))

    #: From this many points on, the spreading runs as two halves of the points into two grids,
    #: in parallel, then added (always two, whatever the number of threads, so the sums do not
    #: depend on it). Measured on 200,000 points (grid 625 x 625, two cores): 12.4 ms in one pass.
    SPLIT_MIN_N = 20_000

    def _spread(self, charges, grid):
        """Add the charges' interpolated masses to ``grid``, in an order set by the data only."""
        n = self.Y.shape[0]
        if n < self.SPLIT_MIN_N:
            _spread_rows(charges, self.first, self.wts, grid, 0, n)
            return
        half = n // 2
        other = self._scratch("second grid", grid.shape)
        other.fill(0)
        parts = [(grid, 0, half), (other, half, n)]
        args = (charges, self.first, self.wts)
        if self._workers() == 1:
            for g, lo, hi in parts:
                _spread_rows(*args, g, lo, hi)
        else:
            _run(_spread_rows, lambda r: args + r, parts)
        flat, flat_other = grid.reshape(-1, grid.shape[-1]), other.reshape(-1, other.shape[-1])
        rows = flat.shape[0]
        _run(_add_into, lambda r: (flat, flat_other) + r, _blocks(np.arange(rows + 1), min(self._workers(), 2)))

    def _scratch(self, name, shape, dtype=None):
        """A work array kept in the cache between iterations (one per name: replaced when the shape changes).

        Fresh arrays of several MiB per iteration cost more than the work on them here: the
        stencil arrays of 200,000 points took 4.8 ms per iteration when new, 1.4 ms when reused.
        """
        dtype = np.dtype(self.dtype if dtype is None else dtype)
        key = ("scratch", name)
        buf = self.cache.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self.cache[key] = np.empty(shape, dtype=dtype)
        return buf

    def _workers(self):
        return max(1, current_threads())

    def spectrum(self, charges):
        """Spread ``charges`` (n, c) and return the transform of the zero-padded grid: (c, 2G, G + 1)."""
        charges = np.ascontiguousarray(charges, dtype=self.dtype)
        G = self.G
        grid = self._scratch("grid", (charges.shape[1], G, G))
        grid.fill(0)
        self._spread(charges, grid)
        half = scipy.fft.rfft(grid, n=2 * G, axis=2, workers=self._workers())
        return scipy.fft.fft(half, n=2 * G, axis=1, workers=self._workers(), overwrite_x=True)

    def potentials(self, spectrum, kernel_fft, overwrite=False):
        """Potentials (c, G, G) of a spectrum under a kernel transform (2G, G + 1).

        With ``overwrite=True`` the product is formed in ``spectrum`` itself (which is then lost).
        """
        G = self.G
        kf = kernel_fft.astype(spectrum.dtype, copy=False)
        prod = np.multiply(spectrum, kf, out=spectrum) if overwrite else spectrum * kf
        rows = scipy.fft.ifft(prod, axis=1, workers=self._workers(), overwrite_x=True)[:, :G]
        pot = scipy.fft.irfft(rows, n=2 * G, axis=2, workers=self._workers())[:, :, :G]
        return np.ascontiguousarray(pot, dtype=self.dtype)

    def total(self, spectrum, kernel_fft):
        """``sum_g charge_g (K * charge)_g`` of channel 0, by Parseval (see ``_GridPlan.total``)."""
        G = self.G
        rows = np.empty(spectrum.shape[1])
        _power_rows(spectrum[0], kernel_fft, G, rows)  # one pass, no (2G, G + 1) temporaries
        return float(rows.sum() / (2 * G) ** 2)

    def gather(self, pot, stencil_kernels):
        """Interpolated potentials (n, c) and each point's ``w^T K w`` per stencil matrix: (s, n).

        Each stencil matrix holds a translation-invariant kernel between the stencil's nodes (as
        ``_pairwise._stencil_sq`` builds it): only its first row, the offsets from node (0, 0), is read.
        """
        n = self.Y.shape[0]
        K = np.ascontiguousarray(stencil_kernels, dtype=self.dtype)
        out = np.empty((n, pot.shape[0]), dtype=self.dtype)
        self_w = np.empty((K.shape[0], n), dtype=self.dtype)
        args = (pot, self.first, self.wts, K, out, self_w)
        _run(_gather, lambda r: args + r, _blocks(np.arange(n + 1) * 64, _n_blocks(n * 64)))
        return out, self_w
