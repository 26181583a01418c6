"""One compiled pass for the repulsion of the conditional form (SNE, Table 1's t-SNE), 1-D to 3-D.

The conditional gradient needs, for every i, ``Z_i = sum_{j != i} w_ij`` and two force sums:
``sum_j w_ij g_ij (y_i - y_j) / Z_i`` (its own row) and ``sum_j w_ij g_ij (y_i - y_j) / Z_j`` (the
other rows). The second needs every ``Z_j`` first, so the row loops of
:mod:`skicon.objectives._compiled` take two passes over all pairs, each evaluating the kernel
(an exponential per pair for the Gaussian of SNE). Here one pass suffices: the kernel is
symmetric, so row i's weights, kept in an O(n) buffer while the row is summed, give -- once
``Z_i`` is known at the end of the row -- row i's share ``w_ij g_ij (y_j - y_i) / Z_i`` of every
other row j's second sum, added into a per-block accumulator (a contiguous, vectorised loop
without any kernel evaluation).

The rows are split into a fixed number of blocks (:data:`N_PARTS`), whatever the thread count;
each block has its own accumulator and they are added in block order, so the result does not
depend on the number of threads. Memory: ``N_PARTS * n * 3`` floats.
"""

import numpy as np

from . import _compiled
from ._compiled import _blocks, _n_blocks, _run
from ._compiled3d import _F32_CODE, _F32_PLANAR, _work_dtype, _xyz, gaussian_code, gaussian_dtype_ok

__all__ = ["conditional_field", "N_PARTS"]

#: Row blocks of the pass (each with its own accumulator), independent of the thread count.
N_PARTS = 16

if _compiled.numba is not None:
    import math

    from numba import njit

    from ._compiled3d import _exp_neg, _exp_neg32, _exp_unit

    @njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
    def _conditional_rows(x, y, z, code, dof, inv2s2, tiny, lo, hi, zs_out, ox, oy, oz, ax_o, ay_o, az_o,
                          wg):  # pragma: no cover - compiled
        n = x.shape[0]
        dt = x.dtype.type
        one = dt(1.0)
        zero = dt(0.0)
        expo = dt(-(dof + 1.0) / 2.0)
        gscale = dt((dof + 1.0) / (2.0 * dof))
        inv_dof = dt(1.0 / dof)
        s = dt(inv2s2)
        tiny = dt(tiny)
        for i in range(lo, hi):
            xi = x[i]
            yi = y[i]
            zi = z[i]
            zs = dt(0.0)
            fx = dt(0.0)
            fy = dt(0.0)
            fz = dt(0.0)
            if code == 0:
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    w = one / (one + dx * dx + dy * dy + dz * dz)
                    w = w if j != i else zero
                    f = w * w
                    wg[j] = f
                    zs += w
                    fx += f * dx
                    fy += f * dy
                    fz += f * dz
            elif code == 1:
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    u = one + (dx * dx + dy * dy + dz * dz) * inv_dof
                    w = math.exp(expo * math.log(u))
                    w = w if j != i else zero
                    f = w * gscale / u
                    wg[j] = f
                    zs += w
                    fx += f * dx
                    fy += f * dy
                    fz += f * dz
            elif code == 3:  # the Gaussian within one width: the exponential to rounding
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    w = _exp_unit(max(-(dx * dx + dy * dy + dz * dz) * s, -1.0))
                    w = w if j != i else zero
                    f = w * s
                    wg[j] = f
                    zs += w
                    fx += f * dx
                    fy += f * dy
                    fz += f * dz
            elif code == 5:  # the Gaussian in float32, planar (z = 0)
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    w = _exp_neg32(-(dx * dx + dy * dy) * s)
                    w = w if j != i else zero
                    f = w * s
                    wg[j] = f
                    zs += w
                    fx += f * dx
                    fy += f * dy
            elif code == 4:  # the Gaussian in float32
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    w = _exp_neg32(-(dx * dx + dy * dy + dz * dz) * s)
                    w = w if j != i else zero
                    f = w * s
                    wg[j] = f
                    zs += w
                    fx += f * dx
                    fy += f * dy
                    fz += f * dz
            else:
                for j in range(n):
                    dx = xi - x[j]
                    dy = yi - y[j]
                    dz = zi - z[j]
                    w = _exp_neg(-(dx * dx + dy * dy + dz * dz) * s)
                    w = w if j != i else zero
                    f = w * s
                    wg[j] = f
                    zs += w
                    fx += f * dx
                    fy += f * dy
                    fz += f * dz
            zs_out[i] = zs
            inv = one / max(zs, tiny)
            ox[i] = fx * inv
            oy[i] = fy * inv
            oz[i] = fz * inv
            # row i's share of every other row's sum over j of w_ij g_ij (y_j - y_i) / Z_i
            if code == 5:
                for j in range(n):
                    c = wg[j] * inv
                    ax_o[j] += c * (x[j] - xi)
                    ay_o[j] += c * (y[j] - yi)
            else:
                for j in range(n):
                    c = wg[j] * inv
                    ax_o[j] += c * (x[j] - xi)
                    ay_o[j] += c * (y[j] - yi)
                    az_o[j] += c * (z[j] - zi)


def _parts(n):
    """The fixed row blocks: ``N_PARTS`` contiguous ranges (fewer for tiny n)."""
    bounds = np.linspace(0, n, min(N_PARTS, n) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def conditional_field(Y, code, dof=1.0, inv2s2=0.0, precise=None):
    """``Z``, the own-row and the other-rows forces of the conditional form, in one pass over all pairs.

    Parameters
    ----------
    Y : ndarray of shape (n, d), d in {1, 2, 3}
        Embedding.
    code : int
        Kernel code (``CAUCHY``, ``STUDENT``, ``GAUSSIAN``).
    dof, inv2s2 : float
        Degrees of freedom of the Student-t kernel, ``1 / (2 sigma^2)`` of the Gaussian.
    precise : bool, default=None
        Gaussian only: see :func:`skicon.objectives._compiled3d.repulsion_field`.

    Returns
    -------
    z : ndarray of shape (n,)
        ``Z_i = sum_{j != i} w_ij``.
    own : ndarray of shape (n, d)
        ``sum_j w_ij g_ij (y_i - y_j) / Z_i``.
    other : ndarray of shape (n, d)
        ``sum_j w_ij g_ij (y_i - y_j) / Z_j``.

    Examples
    --------
    >>> import numpy as np
    >>> z, own, other = conditional_field(np.array([[0.0, 0.0], [1.0, 0.0]]), 0)
    >>> z.tolist(), own[:, 0].tolist(), other[:, 0].tolist()
    ([0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5])
    """
    d = Y.shape[1]
    if d > 3:
        raise ValueError(f"the compiled loops serve 1 to 3 dimensions, got {d}.")
    if code == _compiled.GAUSSIAN:
        code, dtype = gaussian_code(Y, inv2s2, precise)
    else:
        dtype = _work_dtype(Y, code)
    x, y, z = _xyz(Y, dtype)
    n = x.shape[0]
    code = _F32_PLANAR if (code == _F32_CODE and d < 3) else code
    zs = np.empty_like(x)
    own = [np.empty_like(x) for _ in range(3)]
    parts = _parts(n)
    acc = np.zeros((len(parts), 3, n), dtype=dtype)
    fixed = (x, y, z, code, float(dof), float(inv2s2), float(np.finfo(dtype).tiny))

    def run_parts(a, b):
        wg = np.empty_like(x)
        for k in range(a, b):
            lo, hi = parts[k]
            _conditional_rows(*fixed, lo, hi, zs, *own, acc[k, 0], acc[k, 1], acc[k, 2], wg)

    groups = _blocks(np.arange(len(parts) + 1), min(len(parts), _n_blocks(n * n)))
    _run(run_parts, lambda r: r, groups)
    if code in (_F32_CODE, _F32_PLANAR) and not gaussian_dtype_ok(zs):  # a row near float32's underflow: float64
        return tuple(a.astype(Y.dtype) for a in conditional_field(Y.astype(np.float64), code=_compiled.GAUSSIAN,
                                                                     dof=dof, inv2s2=inv2s2, precise=False))
    other = acc[0].copy()
    for k in range(1, len(parts)):  # in block order, whatever the threads
        other += acc[k]
    out = Y.dtype
    return (zs.astype(out, copy=False), np.stack(own[:d], axis=1).astype(out, copy=False),
            np.ascontiguousarray(other[:d].T).astype(out, copy=False))
