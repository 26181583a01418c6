"""Compiled CPU loops of the pairwise objective (numba), used for 1-D and 2-D embeddings on CPU.

On CPU, torch evaluates an all-pairs kernel sum as a chain of separate passes over an
(n, n) block (distances, kernel, products, reductions), each bound by memory traffic. A fused
loop that keeps one row's accumulators in registers does the same arithmetic 10-20x faster
(measured 0.5 ms against 8.9 ms per gradient on 1,797 points, one thread), which is what makes
exact repulsion cheaper than the FFT grid below several thousand points. The same holds for
the attraction over the sparse ``P``. numba is already required by pynndescent.

The loops vectorise only under ``error_model="numpy"`` (no Python division-by-zero checks;
the denominators here are at least 1 anyway) and ``fastmath`` (reassociated reductions).

Kernels are selected by an integer code, which each kernel names in its
``compiled_profile()`` (:class:`skicon.kernels.DistanceKernel`): 0 Cauchy (Student-t, one degree of freedom), 1
Student-t with ``dof`` degrees of freedom, 2 Gaussian ``exp(-d^2 * inv2s2)``. Coordinates come as
two contiguous vectors ``x`` and ``y``; a 1-D embedding passes ``y = 0``.

All functions are pure: arrays in, arrays out; the torch engine in
:mod:`skicon.objectives._pairwise` wraps them and falls back to its own torch code on CUDA, in
more than two dimensions, and for kernels without a ``compiled_profile()``.
"""

import math
import os

import numpy as np

from .._threads import current_threads

try:
    import numba
    from numba import njit
except ImportError:  # pragma: no cover - numba comes with pynndescent, a hard dependency
    numba = None

__all__ = ["available", "repulsion_field", "attraction_csr", "attraction_upper", "pair_distances", "CAUCHY", "STUDENT", "GAUSSIAN"]

CAUCHY, STUDENT, GAUSSIAN = 0, 1, 2


def available():
    """Whether the compiled kernels can be used (numba is importable).

    Returns
    -------
    bool

    Examples
    --------
    >>> isinstance(available(), bool)
    True
    """
    return numba is not None


_POOL = None


def _forget_pool():
    """In a forked child: the parent's pool threads do not exist here, so start a new pool."""
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _blocks(weights_cumsum, n_blocks):
    """Split rows 0..n into ``n_blocks`` contiguous ranges of about equal cumulative work."""
    n = len(weights_cumsum) - 1
    if n_blocks == 1:
        return [(0, n)]
    targets = weights_cumsum[-1] * np.arange(1, n_blocks) // n_blocks
    bounds = [0, *np.searchsorted(weights_cumsum, targets).tolist(), n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _run(kernel, args, ranges):
    """Run ``kernel(*args, lo, hi, ...)`` over row ranges, in parallel when there are several."""
    global _POOL
    if len(ranges) == 1:
        kernel(*args(ranges[0]))
        return
    if _POOL is None or _POOL._max_workers < len(ranges):
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="skicon")
    for f in [_POOL.submit(kernel, *args(r)) for r in ranges]:
        f.result()


def _n_blocks(work):
    """Threads worth using for ``work`` pair evaluations (tiny problems stay serial).

    At most the threads of the active :class:`skicon._threads.thread_limits` (1 outside any).
    The loops release the GIL and are split into row blocks over a small thread pool of our own,
    rather than numba's parallel layer: its OpenMP workers busy-wait after each loop and fight
    torch's OpenMP workers for the cores (measured 4x slower on 2 cores).
    """
    return max(1, min(current_threads(), int(work // 200_000) or 1))


if numba is not None:

    @njit(nogil=True, error_model="numpy", cache=True)
    def _pair_sqdist(A, B, cand, lo, hi, out):  # pragma: no cover
        # no fastmath: the sum runs in one fixed order, so the result is the same on any machine
        # with the same rounding and whatever the number of threads
        w = cand.shape[1]
        d = A.shape[1]
        for i in range(lo, hi):
            for t in range(w):
                j = cand[i, t]
                s = 0.0
                for f in range(d):
                    u = A[i, f] - B[j, f]
                    s += u * u
                out[i, t] = s

    @njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
    def _repulsion(x, y, c, code, dof, inv2s2, want_slope, lo, hi, z, fx, fy, gx, gy):  # pragma: no cover
        n = x.shape[0]
        dt = x.dtype.type
        one = dt(1.0)
        expo = dt(-(dof + 1.0) / 2.0)
        gscale = dt((dof + 1.0) / (2.0 * dof))
        inv_dof = dt(1.0 / dof)
        s = dt(inv2s2)
        for i in range(lo, hi):
            xi = x[i]
            yi = y[i]
            zs = dt(0.0)
            ax = dt(0.0)
            ay = dt(0.0)
            bx = dt(0.0)
            by = dt(0.0)
            # one specialised inner loop per kernel, so that each vectorises
            if code == 0:
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    w = one / (one + dx * dx + dy * dy)
                    zs += w
                    f = w * w * c[j]
                    ax += f * dx
                    ay += f * dy
                    if want_slope:
                        bx += w * dx
                        by += w * dy
                zs -= one
            elif code == 1:
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    u = one + (dx * dx + dy * dy) * inv_dof
                    w = math.exp(expo * math.log(u))
                    g = gscale / u
                    zs += w
                    f = w * g * c[j]
                    ax += f * dx
                    ay += f * dy
                    if want_slope:
                        bx += g * dx
                        by += g * dy
                zs -= one
            else:
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    w = math.exp(-(dx * dx + dy * dy) * s)
                    zs += w
                    f = w * s * c[j]
                    ax += f * dx
                    ay += f * dy
                    if want_slope:
                        bx += s * dx
                        by += s * dy
                zs -= one
            z[i] = zs
            fx[i] = ax
            fy[i] = ay
            if want_slope:
                gx[i] = bx
                gy[i] = by

    @njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
    def _log_weight_sums(x, y, code, dof, inv2s2, lo, hi, lw):  # pragma: no cover
        # a separate pass (debiasing's loss only): a log in the hot loop above stops it vectorising
        n = x.shape[0]
        dt = x.dtype.type
        one = dt(1.0)
        inv_dof = dt(1.0 / dof)
        for i in range(lo, hi):
            xi = x[i]
            yi = y[i]
            acc = 0.0
            if code == 2:
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    acc += dx * dx + dy * dy
                lw[i] = -acc * inv2s2
            else:
                # sum of logs = log of products of 8 factors (each >= 1, far from overflow in
                # float64): one log per 8 pairs, and the products vectorise
                for j0 in range(0, n, 8):
                    prod = 1.0
                    for j in range(j0, min(j0 + 8, n)):
                        dx = xi - x[j]
                        dy = yi - y[j]
                        prod *= 1.0 + (dx * dx + dy * dy) * inv_dof
                    acc += math.log(prod)
                lw[i] = -acc * (dof + 1.0) / 2.0

    @njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
    def _attraction(x, y, indptr, indices, values, lvalues, code, dof, inv2s2, scale, want_loss, lo, hi, fx, fy,
                    plogw):  # pragma: no cover
        dt = x.dtype.type
        one = dt(1.0)
        inv_dof = dt(1.0 / dof)
        # the constant factors of the slope g and of log w fold into the scales
        if code == 0:
            sc = dt(scale)
        elif code == 1:
            sc = dt(scale * (dof + 1.0) / (2.0 * dof))
        else:
            sc = dt(scale * inv2s2)
        lscale = -inv2s2 if code == 2 else -(dof + 1.0) / 2.0
        for i in range(lo, hi):
            xi = x[i]
            yi = y[i]
            ax = dt(0.0)
            ay = dt(0.0)
            start, stop = indptr[i], indptr[i + 1]
            if code == 2:
                for e in range(start, stop):
                    j = indices[e]
                    p = values[e]
                    ax += p * (xi - x[j])
                    ay += p * (yi - y[j])
            else:
                for e in range(start, stop):
                    j = indices[e]
                    dx = xi - x[j]
                    dy = yi - y[j]
                    coef = values[e] / (one + (dx * dx + dy * dy) * inv_dof)
                    ax += coef * dx
                    ay += coef * dy
            if want_loss:
                # the row's loss term right after its force, while its edges are in cache; a
                # separate inner loop keeps the force loop's code (and its rounding) unchanged
                acc = 0.0
                if code == 2:
                    for e in range(start, stop):
                        j = indices[e]
                        dx = xi - x[j]
                        dy = yi - y[j]
                        acc += lvalues[e] * (dx * dx + dy * dy)
                else:
                    for e in range(start, stop):
                        j = indices[e]
                        dx = xi - x[j]
                        dy = yi - y[j]
                        acc += lvalues[e] * math.log(one + (dx * dx + dy * dy) * inv_dof)
                plogw[i] = acc * lscale
            fx[i] = ax * sc
            fy[i] = ay * sc


    @njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
    def _attraction_upper(Y, indptr, indices, values, code, dof, inv2s2, want_loss, lo, hi, base, acc,
                          plogw):  # pragma: no cover
        # rows lo..hi of the strict upper triangle of a symmetric P: each pair once, its force
        # added to row i and subtracted from row j in this block's own accumulator (row - base).
        # Y and acc are (., 2) row-major: both coordinates of a point in one cache line (measured
        # 11.4 ms against 14.5 ms with separate coordinate vectors, 70,000 points)
        dt = Y.dtype.type
        one = dt(1.0)
        inv_dof = dt(1.0 / dof)
        lscale = -inv2s2 if code == 2 else -(dof + 1.0) / 2.0
        for i in range(lo, hi):
            xi = Y[i, 0]
            yi = Y[i, 1]
            sx = dt(0.0)
            sy = dt(0.0)
            start, stop = indptr[i], indptr[i + 1]
            if code == 2:
                for e in range(start, stop):
                    j = indices[e]
                    p = values[e]
                    fx = p * (xi - Y[j, 0])
                    fy = p * (yi - Y[j, 1])
                    sx += fx
                    sy += fy
                    acc[j - base, 0] -= fx
                    acc[j - base, 1] -= fy
            else:
                for e in range(start, stop):
                    j = indices[e]
                    dx = xi - Y[j, 0]
                    dy = yi - Y[j, 1]
                    coef = values[e] / (one + (dx * dx + dy * dy) * inv_dof)
                    fx = coef * dx
                    fy = coef * dy
                    sx += fx
                    sy += fy
                    acc[j - base, 0] -= fx
                    acc[j - base, 1] -= fy
            acc[i - base, 0] += sx
            acc[i - base, 1] += sy
            if want_loss:
                s = 0.0
                if code == 2:
                    for e in range(start, stop):
                        j = indices[e]
                        dx = xi - Y[j, 0]
                        dy = yi - Y[j, 1]
                        s += values[e] * (dx * dx + dy * dy)
                else:
                    for e in range(start, stop):
                        j = indices[e]
                        dx = xi - Y[j, 0]
                        dy = yi - Y[j, 1]
                        s += values[e] * math.log(one + (dx * dx + dy * dy) * inv_dof)
                plogw[i] = 2.0 * s * lscale  # each pair stands for (i, j) and (j, i)

    @njit(nogil=True, error_model="numpy", cache=True)
    def _sum_blocks(offsets, bases, stops, acc, sc, lo, hi, out):  # pragma: no cover
        # out[i] = sc * sum over the blocks, in block order, of their accumulators at i
        for i in range(lo, hi):
            out[i, 0] = 0.0
            out[i, 1] = 0.0
        for b in range(bases.shape[0]):
            a = max(lo, bases[b])
            z = min(hi, stops[b])
            off = offsets[b] - bases[b]
            for i in range(a, z):
                out[i, 0] += acc[off + i, 0]
                out[i, 1] += acc[off + i, 1]
        for i in range(lo, hi):
            out[i, 0] *= sc
            out[i, 1] *= sc


def _xy(Y):
    """Contiguous coordinate vectors of a (n, 1) or (n, 2) array."""
    x = np.ascontiguousarray(Y[:, 0])
    y = np.ascontiguousarray(Y[:, 1]) if Y.shape[1] == 2 else np.zeros_like(x)
    return x, y


def _stack(fx, fy, d):
    return np.stack([fx, fy], axis=1) if d == 2 else fx[:, None]


def repulsion_field(Y, code, dof=1.0, inv2s2=0.0, charges=None, want_slope=False, want_logw=False):
    """Exact all-pairs sums of a 1-D or 2-D embedding in one fused O(n^2)-time, O(n)-memory pass.

    Parameters
    ----------
    Y : ndarray of shape (n, d), d in {1, 2}, float32 or float64
        Embedding.
    code : int
        Kernel code (see the module docstring).
    dof, inv2s2 : float
        Degrees of freedom of the Student-t kernel, ``1 / (2 sigma^2)`` of the Gaussian.
    charges : ndarray of shape (n,), default=None
        ``c_j`` weighting the force sum; ones when None.
    want_slope : bool, default=False
        Also return ``sum_j g_ij (y_i - y_j)`` (the uniform attraction of debiasing).
    want_logw : bool, default=False
        Also return ``sum_{j != i} log w_ij`` (the loss of debiasing's uniform part).

    Returns
    -------
    z : ndarray of shape (n,)
        ``sum_{j != i} w_ij``.
    force : ndarray of shape (n, d)
        ``sum_j w_ij g_ij c_j (y_i - y_j)``.
    slope : ndarray of shape (n, d) or None
        ``sum_j g_ij (y_i - y_j)`` when ``want_slope``.
    logw : ndarray of shape (n,) or None
        ``sum_{j != i} log w_ij`` when ``want_logw``.

    Examples
    --------
    >>> import numpy as np
    >>> z, force, _, logw = repulsion_field(np.array([[0.0, 0.0], [1.0, 0.0]]), CAUCHY, want_logw=True)
    >>> z.tolist(), force[:, 0].tolist(), logw.round(4).tolist()
    ([0.5, 0.5], [-0.25, 0.25], [-0.6931, -0.6931])
    """
    x, y = _xy(Y)
    n = x.shape[0]
    c = np.ones_like(x) if charges is None else np.ascontiguousarray(charges, dtype=x.dtype)
    z, fx, fy = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    gx, gy = (np.empty_like(x), np.empty_like(x)) if want_slope else (x[:0], x[:0])
    ranges = _blocks(np.arange(n + 1), _n_blocks(n * n))
    fixed = (x, y, c, code, float(dof), float(inv2s2), bool(want_slope))
    _run(_repulsion, lambda r: fixed + r + (z, fx, fy, gx, gy), ranges)
    lw = None
    if want_logw:
        lw = np.empty(n)
        _run(_log_weight_sums, lambda r: (x, y, code, float(dof), float(inv2s2)) + r + (lw,), ranges)
    d = Y.shape[1]
    return z, _stack(fx, fy, d), (_stack(gx, gy, d) if want_slope else None), lw


def attraction_csr(Y, indptr, indices, values, code, dof=1.0, inv2s2=0.0, scale=1.0, want_loss=False,
                   loss_values=None):
    """``scale * sum_j p_ij g_ij (y_i - y_j)`` over the non-zeros of a CSR ``P``, and ``sum l_ij log w_ij``.

    Both in one parallel pass over the non-zeros: the loss term reuses the distances of the force.

    Parameters
    ----------
    Y : ndarray of shape (n, d), d in {1, 2}
        Embedding.
    indptr, indices, values : ndarray
        CSR arrays of ``P`` (values in the dtype of ``Y``).
    code, dof, inv2s2 : see :func:`repulsion_field`.
    scale : float, default=1.0
        Factor on the force (exaggeration, debiasing).
    want_loss : bool, default=False
        Also compute ``sum_ij l_ij log w_ij`` (unscaled).
    loss_values : ndarray, default=None
        The weights ``l`` on the same non-zeros (e.g. the conditional ``p`` aligned to the
        symmetrised pattern); ``values`` when None.

    Returns
    -------
    force : ndarray of shape (n, d)
    plogw : float or None

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.array([[0.0, 0.0], [1.0, 0.0]])
    >>> force, plogw = attraction_csr(Y, np.array([0, 1, 2]), np.array([1, 0], dtype=np.int32),
    ...                               np.array([0.5, 0.5]), CAUCHY, want_loss=True)
    >>> force[:, 0].tolist(), round(plogw, 4)
    ([-0.25, 0.25], -0.6931)
    """
    x, y = _xy(Y)
    fx, fy = np.empty_like(x), np.empty_like(x)
    lv = values if loss_values is None else loss_values
    plogw = np.empty(x.shape[0]) if want_loss else np.empty(0)
    ranges = _blocks(indptr, _n_blocks(len(indices) * 4))
    fixed = (x, y, indptr, indices, values, lv, code, float(dof), float(inv2s2), float(scale), bool(want_loss))
    _run(_attraction, lambda r: fixed + r + (fx, fy, plogw), ranges)
    return _stack(fx, fy, Y.shape[1]), (float(plogw.sum()) if want_loss else None)


def _run_tasks(kernel, tasks, n_threads):
    """Run ``kernel(*task)`` for every task, on at most ``n_threads`` threads, tasks split in order."""
    groups = [tasks[k::n_threads] for k in range(min(n_threads, len(tasks)))]
    if len(groups) <= 1:
        for task in tasks:
            kernel(*task)
        return
    _run(lambda group: [kernel(*task) for task in group], lambda r: (r,), [tuple(g) for g in groups])


def attraction_upper(Y, upper, code, dof=1.0, inv2s2=0.0, scale=1.0, want_loss=False):
    """:func:`attraction_csr` of a symmetric ``P`` from its strict upper triangle: each pair once.

    The kernel of each pair is evaluated once and its force added to both ends, so half the
    edges are read and half the kernels computed. The rows are split into a fixed number of
    blocks (set by the number of edges, not of threads), each accumulating into arrays of its
    own that span its rows and the columns they reach; the blocks are then summed in block
    order, so the result does not depend on the number of threads. The loss weights are those
    of ``P`` (the joint form).

    Parameters
    ----------
    Y : ndarray of shape (n, d), d in {1, 2}
        Embedding.
    upper : UpperTriangle
        The strict upper triangle of ``P`` and its blocks
        (:attr:`skicon.objectives._affinity.SparseAffinity.upper`).
    code, dof, inv2s2, scale, want_loss : see :func:`attraction_csr`.

    Returns
    -------
    force : ndarray of shape (n, d)
    plogw : float or None

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from skicon.objectives._affinity import UpperTriangle
    >>> P = sp.csr_matrix(np.array([[0.0, 0.25, 0.25], [0.25, 0.0, 0.0], [0.25, 0.0, 0.0]]))
    >>> Y = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> force, plogw = attraction_upper(Y, UpperTriangle(P.indptr, P.indices, P.data), CAUCHY, want_loss=True)
    >>> force.tolist(), round(plogw, 4)
    ([[-0.125, -0.125], [0.125, 0.0], [0.0, 0.125]], -0.6931)
    """
    d = Y.shape[1]
    Y2 = np.ascontiguousarray(Y) if d == 2 else np.concatenate([Y, np.zeros_like(Y)], axis=1)
    n = Y2.shape[0]
    values = upper.values if upper.values.dtype == Y2.dtype else upper.values.astype(Y2.dtype)
    acc = upper.scratch(Y2.dtype)  # kept between iterations: fresh pages cost more than zeroing
    acc.fill(0)
    plogw = np.zeros(n) if want_loss else np.empty(0)
    fixed = (Y2, upper.indptr, upper.indices, values, code, float(dof), float(inv2s2), bool(want_loss))
    tasks = []
    for b in range(len(upper.bases)):
        base, off, stop = int(upper.bases[b]), int(upper.offsets[b]), int(upper.stops[b])
        tasks.append(fixed + (int(upper.row_lo[b]), int(upper.row_hi[b]), base, acc[off : off + stop - base], plogw))
    threads = _n_blocks(len(upper.indices) * 8)
    _run_tasks(_attraction_upper, tasks, threads)
    if code == 0:
        sc = scale
    elif code == 1:
        sc = scale * (dof + 1.0) / (2.0 * dof)
    else:
        sc = scale * inv2s2
    force = np.empty_like(Y2)
    sums = (upper.offsets, upper.bases, upper.stops, acc, Y2.dtype.type(sc))
    _run(_sum_blocks, lambda r: sums + r + (force,), _blocks(np.arange(n + 1), max(1, min(threads, n // 20_000))))
    return (force if d == 2 else force[:, :1]), (float(plogw.sum()) if want_loss else None)


def pair_distances(A, B, cand):
    """Squared Euclidean distances ``|A_i - B_cand[i, t]|^2`` summed elementwise in a fixed order.

    The shortlisted distances of the exact neighbour search (:mod:`skicon.neighbors`): computed
    without forming the gathered rows (which cost more memory traffic than the sums), rows split
    over the threads of the active limit, each row on one thread.

    Parameters
    ----------
    A : ndarray of shape (n, d), float64
    B : ndarray of shape (m, d), float64
    cand : ndarray of shape (n, w), int64
        Row indices into ``B``.

    Returns
    -------
    ndarray of shape (n, w)

    Examples
    --------
    >>> import numpy as np
    >>> pair_distances(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[0, 1]])).tolist()
    [[25.0, 1.0]]
    """
    A = np.ascontiguousarray(A, dtype=np.float64)
    B = np.ascontiguousarray(B, dtype=np.float64)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    out = np.empty(cand.shape)
    n = cand.shape[0]
    work = np.arange(n + 1) * cand.shape[1] * A.shape[1]
    _run(_pair_sqdist, lambda r: (A, B, cand) + r + (out,), _blocks(work, _n_blocks(work[-1] // 4)))
    return out
