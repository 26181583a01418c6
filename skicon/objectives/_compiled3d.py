"""Compiled CPU loops for 3-D embeddings, and for the Gaussian kernel in any of 1-3 dimensions (numba).

The twins of :mod:`skicon.objectives._compiled` (same kernel codes, same outputs) with three
coordinate vectors ``x, y, z``; a 1-D or 2-D embedding passes zeros for the missing ones. They
serve two cases the 2-D loops serve slowly or not at all:

* 3-D embeddings (``n_components=3``), which otherwise run the torch code of the engine;
* the Gaussian kernel (SNE's ``q``, ``q=Gaussian()``) in every dimension. ``math.exp`` is a scalar
  library call for numba without Intel's SVML, so the 2-D loop's Gaussian branch does not
  vectorise (measured 13 ns per pair against 1 ns for the Cauchy kernel). Here the exponential
  is :func:`_exp_neg`, a polynomial that vectorises: ``exp(x) = exp(x / 4096) ** 4096`` with a
  degree-8 Taylor polynomial of ``exp`` on ``[-708 / 4096, 0]`` (centred there) and twelve
  squarings. Its relative error is below ``1e-11`` (tested against ``numpy.exp``), and it
  returns exactly 0 below ``-708`` (where ``exp`` is below 3.3e-308, the smallest normal float64).
  When every pair is within one kernel width (the wide-Gaussian limits of the PCA and MDS rows,
  whose losses are tiny differences of weights near 1), one Taylor polynomial on ``[-1, 0]``
  (:func:`_exp_unit`) gives ``exp`` to rounding instead.

Loops are the same row blocks over the thread pool of :mod:`skicon.objectives._compiled` (its
``threads`` setting applies). The Student-t loops run in the dtype they are given. A float32
embedding runs the Gaussian in float32 too (twice the lanes per vector, and fewer squarings):
:func:`_exp_neg32`, ``exp(x) = exp(x / 64) ** 64`` with a degree-10 Taylor polynomial on
``[-87 / 64, 0]`` (relative error below ``1e-5``, tested), exactly 0 below ``-87`` (where ``exp``
leaves float32's normal range). Weights that small are negligible against a row's sum unless
every weight of the row is that small (a point farther than about 9 kernel widths from all
others): then the sums are recomputed in float64 (:func:`gaussian_dtype_ok`). The
wide-Gaussian regime (``precise``) always runs in float64.
"""

import math

import numpy as np

from . import _compiled
from ._compiled import CAUCHY, GAUSSIAN, STUDENT, _blocks, _n_blocks, _run

__all__ = ["repulsion_field", "attraction_csr", "exp_neg", "CAUCHY", "STUDENT", "GAUSSIAN"]

#: below this argument the exponential is returned as 0 (exp(-708) ~ 3.3e-308)
EXP_FLOOR = -708.0
_SQUARINGS = 12
_C = EXP_FLOOR / 2 ** (_SQUARINGS + 1)  # centre of the reduced interval [-708 / 4096, 0]
#: Taylor coefficients of exp(c + t) = e^c sum t^k / k!, highest degree first (Horner)
_COEF = tuple(math.exp(_C) / math.factorial(k) for k in range(8, -1, -1))
#: Taylor coefficients of exp(-1/2 + t), |t| <= 1/2, degree 15 (truncation 2e-17 relative)
_UNIT = tuple(math.exp(-0.5) / math.factorial(k) for k in range(15, -1, -1))
#: float32: below this argument the exponential is 0 (exp(-87) ~ 1.6e-38, float32's smallest normal is 1.2e-38)
EXP_FLOOR32 = -87.0
_SQUARINGS32 = 6
_C32 = EXP_FLOOR32 / 2 ** (_SQUARINGS32 + 1)  # centre of the reduced interval [-87 / 64, 0]
_COEF32 = tuple(np.float32(math.exp(_C32) / math.factorial(k)) for k in range(10, -1, -1))
#: codes of the loops beyond the kernels': the Gaussian to rounding within one width (float64), the
#: Gaussian with the float32 exponential, the same for 1-D and 2-D embeddings (no z)
_UNIT_CODE, _F32_CODE, _F32_PLANAR = 3, 4, 5
#: a float32 row sum of Gaussian weights below this is recomputed in float64 (see the module docstring)
Z_FLOOR32 = 1e-30

if _compiled.numba is not None:
    from numba import njit

    c8, c7, c6, c5, c4, c3, c2, c1, c0 = _COEF

    @njit(inline="always", fastmath=True, error_model="numpy", cache=True)
    def _exp_neg(a):  # pragma: no cover - compiled
        """``exp(a)`` for ``a <= 0`` in float64 (vectorisable): polynomial and twelve squarings."""
        t = max(a, EXP_FLOOR) * (1.0 / 4096.0) - _C
        p = c8
        p = p * t + c7
        p = p * t + c6
        p = p * t + c5
        p = p * t + c4
        p = p * t + c3
        p = p * t + c2
        p = p * t + c1
        p = p * t + c0
        for _ in range(_SQUARINGS):
            p = p * p
        return p if a > EXP_FLOOR else 0.0

    e10, e9, e8, e7, e6, e5, e4, e3, e2, e1, e0 = _COEF32
    _F32 = np.float32(EXP_FLOOR32)
    _INV64 = np.float32(1.0 / 64.0)
    _CF32 = np.float32(_C32)
    _ZERO32 = np.float32(0.0)

    @njit(inline="always", fastmath=True, error_model="numpy", cache=True)
    def _exp_neg32(a):  # pragma: no cover - compiled
        """``exp(a)`` for float32 ``a <= 0`` in float32 (vectorisable): polynomial and six squarings."""
        t = max(a, _F32) * _INV64 - _CF32
        p = e10
        p = p * t + e9
        p = p * t + e8
        p = p * t + e7
        p = p * t + e6
        p = p * t + e5
        p = p * t + e4
        p = p * t + e3
        p = p * t + e2
        p = p * t + e1
        p = p * t + e0
        for _ in range(_SQUARINGS32):
            p = p * p
        return p if a > _F32 else _ZERO32

    @njit(fastmath=True, error_model="numpy", cache=True)
    def _exp_neg32_array(a, out):  # pragma: no cover - compiled
        for i in range(a.shape[0]):
            out[i] = _exp_neg32(a[i])

    u15, u14, u13, u12, u11, u10, u9, u8, u7, u6, u5, u4, u3, u2, u1, u0 = _UNIT

    @njit(inline="always", fastmath=True, error_model="numpy", cache=True)
    def _exp_unit(a):  # pragma: no cover - compiled
        """``exp(a)`` for ``-1 <= a <= 0`` in float64 to rounding (vectorisable): one Taylor polynomial."""
        t = a + 0.5
        p = u15
        p = p * t + u14
        p = p * t + u13
        p = p * t + u12
        p = p * t + u11
        p = p * t + u10
        p = p * t + u9
        p = p * t + u8
        p = p * t + u7
        p = p * t + u6
        p = p * t + u5
        p = p * t + u4
        p = p * t + u3
        p = p * t + u2
        p = p * t + u1
        return p * t + u0

    @njit(fastmath=True, error_model="numpy", cache=True)
    def _exp_neg_array(a, unit, out):  # pragma: no cover - compiled
        for i in range(a.shape[0]):
            out[i] = _exp_unit(a[i]) if unit else _exp_neg(a[i])

    @njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
    def _repulsion3(x, y, z, c, code, dof, inv2s2, want_slope, lo, hi, zs_out, fx, fy, fz, gx, gy,
                    gz):  # pragma: no cover - compiled
        n = x.shape[0]
        dt = x.dtype.type
        one = dt(1.0)
        zero = dt(0.0)
        expo = dt(-(dof + 1.0) / 2.0)
        gscale = dt((dof + 1.0) / (2.0 * dof))
        inv_dof = dt(1.0 / dof)
        s = dt(inv2s2)
        for i in range(lo, hi):
            xi = x[i]
            yi = y[i]
            zi = z[i]
            zs = dt(0.0)
            ax = dt(0.0)
            ay = dt(0.0)
            az = dt(0.0)
            bx = dt(0.0)
            by = dt(0.0)
            bz = dt(0.0)
            # one specialised inner loop per kernel, so that each vectorises
            if code == 0:
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    w = one / (one + dx * dx + dy * dy + dz * dz)
                    zs += w if j != i else zero  # the self pair, exactly: no 1 + Z - 1
                    f = w * w * c[j]
                    ax += f * dx
                    ay += f * dy
                    az += f * dz
                    if want_slope:
                        bx += w * dx
                        by += w * dy
                        bz += w * dz
            elif code == 1:
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    u = one + (dx * dx + dy * dy + dz * dz) * inv_dof
                    w = math.exp(expo * math.log(u))
                    g = gscale / u
                    zs += w if j != i else zero  # the self pair, exactly: no 1 + Z - 1
                    f = w * g * c[j]
                    ax += f * dx
                    ay += f * dy
                    az += f * dz
                    if want_slope:
                        bx += g * dx
                        by += g * dy
                        bz += g * dz
            elif code == 3:  # the Gaussian when every pair is within one width (see repulsion_field)
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    w = _exp_unit(max(-(dx * dx + dy * dy + dz * dz) * s, -1.0))
                    zs += w if j != i else zero  # the self pair, exactly: no 1 + Z - 1
                    f = w * c[j]
                    ax += f * dx
                    ay += f * dy
                    az += f * dz
                    if want_slope:
                        bx += dx
                        by += dy
                        bz += dz
                ax *= s
                ay *= s
                az *= s
                bx *= s
                by *= s
                bz *= s
            elif code == 5:  # the Gaussian in float32, planar (z = 0)
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    w = _exp_neg32(-(dx * dx + dy * dy) * s)
                    zs += w if j != i else zero  # the self pair, exactly: no 1 + Z - 1
                    f = w * c[j]
                    ax += f * dx
                    ay += f * dy
                    if want_slope:
                        bx += dx
                        by += dy
                ax *= s
                ay *= s
                bx *= s
                by *= s
            elif code == 4:  # the Gaussian in float32
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    w = _exp_neg32(-(dx * dx + dy * dy + dz * dz) * s)
                    zs += w if j != i else zero  # the self pair, exactly: no 1 + Z - 1
                    f = w * c[j]
                    ax += f * dx
                    ay += f * dy
                    az += f * dz
                    if want_slope:
                        bx += dx
                        by += dy
                        bz += dz
                ax *= s
                ay *= s
                az *= s
                bx *= s
                by *= s
                bz *= s
            else:
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    w = _exp_neg(-(dx * dx + dy * dy + dz * dz) * s)
                    zs += w if j != i else zero  # the self pair, exactly: no 1 + Z - 1
                    f = w * c[j]
                    ax += f * dx
                    ay += f * dy
                    az += f * dz
                    if want_slope:
                        bx += dx
                        by += dy
                        bz += dz
                ax *= s
                ay *= s
                az *= s
                bx *= s
                by *= s
                bz *= s
            zs_out[i] = zs
            fx[i] = ax
            fy[i] = ay
            fz[i] = az
            if want_slope:
                gx[i] = bx
                gy[i] = by
                gz[i] = bz

    @njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
    def _log_weight_sums3(x, y, z, code, dof, inv2s2, lo, hi, lw):  # pragma: no cover - compiled
        n = x.shape[0]
        inv_dof = 1.0 / dof
        for i in range(lo, hi):
            xi = x[i]
            yi = y[i]
            zi = z[i]
            acc = 0.0
            if code >= 2:
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    acc += dx * dx + dy * dy + dz * dz
                lw[i] = -acc * inv2s2
            else:
                # one log per 8 pairs: a product of 8 factors >= 1 stays far from overflow
                for j0 in range(0, n, 8):
                    prod = 1.0
                    for j in range(j0, min(j0 + 8, n)):
                        dx = xi - x[j]
                        dy = yi - y[j]
                        dz = zi - z[j]
                        prod *= 1.0 + (dx * dx + dy * dy + dz * dz) * inv_dof
                    acc += math.log(prod)
                lw[i] = -acc * (dof + 1.0) / 2.0

    @njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
    def _attraction3(x, y, z, indptr, indices, values, lvalues, code, dof, inv2s2, scale, want_loss, lo, hi, fx, fy,
                     fz, plogw):  # pragma: no cover - compiled
        dt = x.dtype.type
        one = dt(1.0)
        inv_dof = dt(1.0 / dof)
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
            zi = z[i]
            ax = dt(0.0)
            ay = dt(0.0)
            az = dt(0.0)
            start, stop = indptr[i], indptr[i + 1]
            if code == 2:
                for e in range(start, stop):
                    j = indices[e]
                    p = values[e]
                    ax += p * (xi - x[j])
                    ay += p * (yi - y[j])
                    az += p * (zi - z[j])
            else:
                for e in range(start, stop):
                    j = indices[e]
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    coef = values[e] / (one + (dx * dx + dy * dy + dz * dz) * inv_dof)
                    ax += coef * dx
                    ay += coef * dy
                    az += coef * dz
            if want_loss:
                acc = 0.0
                for e in range(start, stop):
                    j = indices[e]
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    d2 = dx * dx + dy * dy + dz * dz
                    if code == 2:
                        acc += lvalues[e] * d2
                    else:
                        acc += lvalues[e] * math.log(one + d2 * inv_dof)
                plogw[i] = acc * lscale
            fx[i] = ax * sc
            fy[i] = ay * sc
            fz[i] = az * sc


def exp_neg32(a):
    """The loops' float32 exponential of non-positive values (for tests).

    Parameters
    ----------
    a : ndarray of shape (n,)
        Non-positive values (cast to float32).

    Returns
    -------
    ndarray of shape (n,), float32
        ``exp(a)``: to below 1e-5 relative error, and 0 below -87.

    Examples
    --------
    >>> import numpy as np
    >>> bool(abs(exp_neg32(np.array([-1.0]))[0] / np.exp(-1.0) - 1.0) < 1e-5)
    True
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    out = np.empty_like(a)
    _exp_neg32_array(a, out)
    return out


def exp_neg(a, unit=False):
    """The loops' exponentials of non-positive float64 values (for tests).

    Parameters
    ----------
    a : ndarray of shape (n,)
        Non-positive values (in ``[-1, 0]`` when ``unit``).
    unit : bool, default=False
        The narrow-range polynomial of the loops' wide-Gaussian regime (exact to rounding on
        ``[-1, 0]``) instead of the general one.

    Returns
    -------
    ndarray of shape (n,)
        ``exp(a)``: to below 1e-11 relative error and 0 below -708, or to rounding with ``unit``.

    Examples
    --------
    >>> import numpy as np
    >>> bool(abs(exp_neg(np.array([-1.0]))[0] / np.exp(-1.0) - 1.0) < 1e-11)
    True
    """
    a = np.ascontiguousarray(a, dtype=np.float64)
    out = np.empty_like(a)
    _exp_neg_array(a, bool(unit), out)
    return out


def _xyz(Y, dtype):
    """Three contiguous coordinate vectors of a (n, d) array, d <= 3 (zeros for the missing ones)."""
    cols = [np.ascontiguousarray(Y[:, k], dtype=dtype) for k in range(Y.shape[1])]
    zero = np.zeros(Y.shape[0], dtype=dtype)
    return tuple(cols + [zero] * (3 - len(cols)))


def _work_dtype(Y, code, precise=False):
    """The loops' dtype: the embedding's, except float64 for the wide-Gaussian regime and non-float32 input."""
    if code == GAUSSIAN and (precise or Y.dtype != np.float32):
        return np.float64
    return Y.dtype


def gaussian_code(Y, inv2s2, precise):
    """``(code, dtype)`` of the Gaussian loops for ``Y`` (see :func:`repulsion_field`'s ``precise``)."""
    if precise is None:
        diam2 = sum(float(np.ptp(Y[:, k])) ** 2 for k in range(Y.shape[1])) if Y.shape[0] else 0.0
        precise = inv2s2 * diam2 <= WIDE
    if precise:
        return _UNIT_CODE, np.float64
    dtype = _work_dtype(Y, GAUSSIAN)
    return (_F32_CODE if dtype == np.float32 else GAUSSIAN), dtype


def gaussian_dtype_ok(zs):
    """Whether float32 row sums ``zs`` of Gaussian weights are all far from float32's underflow."""
    return zs.dtype != np.float32 or zs.shape[0] == 0 or float(zs.min()) >= Z_FLOOR32


#: ``inv2s2 * diameter**2`` below which the Gaussian uses the library exponential (see repulsion_field)
WIDE = 1.0


def repulsion_field(Y, code, dof=1.0, inv2s2=0.0, charges=None, want_slope=False, want_logw=False,
                    precise=None):
    """Exact all-pairs sums of an embedding with 1 to 3 columns (as :func:`._compiled.repulsion_field`).

    Parameters
    ----------
    Y : ndarray of shape (n, d), d in {1, 2, 3}
        Embedding.
    code : int
        Kernel code (``CAUCHY``, ``STUDENT``, ``GAUSSIAN``).
    dof, inv2s2 : float
        Degrees of freedom of the Student-t kernel, ``1 / (2 sigma^2)`` of the Gaussian.
    charges : ndarray of shape (n,), default=None
        ``c_j`` weighting the force sum; ones when None.
    want_slope : bool, default=False
        Also return ``sum_j g_ij (y_i - y_j)``.
    want_logw : bool, default=False
        Also return ``sum_{j != i} log w_ij``.
    precise : bool, default=None
        Gaussian only: evaluate ``exp`` to rounding with one Taylor polynomial on ``[-1, 0]``
        (arguments below -1 are clamped: only for embeddings within one kernel width) instead of
        the general vectorised polynomial (1e-11 relative). None chooses it exactly when every
        pair is within that range (``inv2s2 * diameter**2 <= 1``): the regime of the
        wide-Gaussian limits (PCA, MDS rows), whose loss is a tiny difference of weights near 1
        that a 1e-11 error would change by percents, and of the first iterations of SNE.

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
    >>> z, force, _, _ = repulsion_field(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), CAUCHY)
    >>> z.tolist(), force[:, 0].tolist()
    ([0.5, 0.5], [-0.25, 0.25])
    """
    d = Y.shape[1]
    if d > 3:
        raise ValueError(f"the compiled loops serve 1 to 3 dimensions, got {d}.")
    if code == GAUSSIAN:
        code, dtype = gaussian_code(Y, inv2s2, precise)
    else:
        dtype = _work_dtype(Y, code)
    x, y, z = _xyz(Y, dtype)
    n = x.shape[0]
    code = _F32_PLANAR if (code == _F32_CODE and d < 3) else code
    c = np.ones_like(x) if charges is None else np.ascontiguousarray(charges, dtype=dtype)
    zs, fx, fy, fz = (np.empty_like(x) for _ in range(4))
    g = tuple(np.empty_like(x) for _ in range(3)) if want_slope else (x[:0],) * 3
    ranges = _blocks(np.arange(n + 1), _n_blocks(n * n))
    fixed = (x, y, z, c, code, float(dof), float(inv2s2), bool(want_slope))
    _run(_repulsion3, lambda r: fixed + r + (zs, fx, fy, fz) + g, ranges)
    if code in (_F32_CODE, _F32_PLANAR) and not gaussian_dtype_ok(zs):  # a row near float32's underflow: float64
        z64, f64, s64, lw = repulsion_field(Y.astype(np.float64), GAUSSIAN, dof, inv2s2, charges, want_slope,
                                            want_logw, False)
        return z64.astype(Y.dtype), f64.astype(Y.dtype), None if s64 is None else s64.astype(Y.dtype), lw
    lw = None
    if want_logw:
        lw = np.empty(n)
        _run(_log_weight_sums3, lambda r: (x, y, z, code, float(dof), float(inv2s2)) + r + (lw,), ranges)
    out = Y.dtype
    force = np.stack([fx, fy, fz][:d], axis=1).astype(out, copy=False)
    slope = np.stack(list(g)[:d], axis=1).astype(out, copy=False) if want_slope else None
    return zs.astype(out, copy=False), force, slope, lw


def attraction_csr(Y, indptr, indices, values, code, dof=1.0, inv2s2=0.0, scale=1.0, want_loss=False,
                   loss_values=None):
    """``scale * sum_j p_ij g_ij (y_i - y_j)`` over a CSR ``P``, and ``sum l_ij log w_ij``, for 1 to 3 columns.

    Parameters
    ----------
    Y : ndarray of shape (n, d), d in {1, 2, 3}
        Embedding.
    indptr, indices, values : ndarray
        CSR arrays of ``P`` (values in the dtype of ``Y``).
    code, dof, inv2s2 : see :func:`repulsion_field`.
    scale : float, default=1.0
        Factor on the force.
    want_loss : bool, default=False
        Also compute ``sum_ij l_ij log w_ij`` (unscaled).
    loss_values : ndarray, default=None
        The weights ``l`` on the same non-zeros; ``values`` when None.

    Returns
    -------
    force : ndarray of shape (n, d)
    plogw : float or None

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    >>> force, plogw = attraction_csr(Y, np.array([0, 1, 2]), np.array([1, 0], dtype=np.int32),
    ...                               np.array([0.5, 0.5]), CAUCHY, want_loss=True)
    >>> force[:, 0].tolist(), round(plogw, 4)
    ([-0.25, 0.25], -0.6931)
    """
    d = Y.shape[1]
    x, y, z = _xyz(Y, Y.dtype)
    fx, fy, fz = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    lv = values if loss_values is None else loss_values
    plogw = np.empty(x.shape[0]) if want_loss else np.empty(0)
    ranges = _blocks(indptr, _n_blocks(len(indices) * 4))
    fixed = (x, y, z, indptr, indices, values, lv, code, float(dof), float(inv2s2), float(scale), bool(want_loss))
    _run(_attraction3, lambda r: fixed + r + (fx, fy, fz, plogw), ranges)
    return np.stack([fx, fy, fz][:d], axis=1), (float(plogw.sum()) if want_loss else None)
