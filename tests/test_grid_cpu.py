"""The compiled CPU grid of the FFT repulsion against the torch grid it replaces on CPU."""

import numpy as np
import pytest
import torch

from skicon.objectives import _pairwise as pw
from skicon.kernels import Gaussian, StudentT

pytest.importorskip("numba")


def _fields(Y, kernel):
    fast = pw._Repulsion(Y, kernel, "fft", {"cache": {}}, 64, None)
    assert fast.cpu_grid is not None
    slow = pw._Repulsion(Y, kernel, "fft", {"cache": {}}, 64, None)
    slow.cpu_grid = None  # the torch _GridPlan path
    return fast.joint(False, False)[:2], slow.joint(False, False)[:2]


@pytest.mark.parametrize("kernel", [StudentT(), StudentT(dof=3.0), Gaussian(sigma=2.0)])
@pytest.mark.parametrize("spread", [0.5, 10.0, 200.0])
def test_cpu_grid_equals_torch_grid_in_float64(kernel, spread):
    rng = np.random.RandomState(0)
    centres = rng.randn(5, 2) * spread
    Y = torch.from_numpy(centres[rng.randint(0, 5, 800)] + rng.randn(800, 2))
    (zw, rep), (zw0, rep0) = _fields(Y, kernel)
    assert float(zw) == pytest.approx(float(zw0), rel=1e-11)
    assert float((rep - rep0).norm() / rep0.norm()) < 1e-10


def test_cpu_grid_is_close_to_exact_sums():
    """The grid keeps the torch grid's accuracy: within 2 % of the exact repulsion on 1,500 points."""
    rng = np.random.RandomState(1)
    Y = torch.from_numpy(rng.randn(1500, 2) * 8.0)
    kernel = StudentT()
    (zw, rep), _ = _fields(Y, kernel)
    exact = pw._Repulsion(Y, kernel, "exact", None, 64, None)
    exact.profile = None  # the torch all-pairs sums
    zw_e, rep_e, _, _ = exact.joint(False, False)
    assert float(zw) == pytest.approx(float(zw_e), rel=1e-3)
    assert float((rep - rep_e).norm() / rep_e.norm()) < 0.02


def test_cpu_grid_self_pair_cancels():
    """Two points: the repulsion is the exact pair force, with no leftover self interaction."""
    Y = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    (zw, rep), _ = _fields(Y, StudentT())
    w = 1.0 / (1.0 + 25.0)
    assert float(zw) == pytest.approx(2 * w, rel=1e-3)
    expected = torch.tensor([[-3.0, -4.0], [3.0, 4.0]], dtype=torch.float64) * w * w
    assert torch.allclose(rep, expected, rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_split_spreading_equals_one_pass_and_ignores_the_thread_count(monkeypatch, dtype):
    """Spreading two halves of the points into two grids (large problems) gives the one-pass sums.

    The split is set by the number of points alone, so the results are bit for bit equal on 1-3
    threads; against the one-pass spreading (another order of the additions) they agree to
    rounding.
    """
    from skicon._threads import thread_limits
    from skicon.objectives import _grid_cpu

    rng = np.random.RandomState(5)
    Y = (rng.randn(6000, 2) * 30.0).astype(dtype)
    charges = np.concatenate([np.ones((6000, 1)), Y], axis=1).astype(dtype)
    lo, spacing, G, p = pw.grid_geometry(torch.from_numpy(Y))
    grid = _grid_cpu.CpuGrid(Y, lo.numpy(), spacing, G, p, {})
    one_pass = grid.spectrum(charges)
    monkeypatch.setattr(_grid_cpu.CpuGrid, "SPLIT_MIN_N", 1)
    split = []
    for threads in (1, 2, 3):
        with thread_limits(threads):
            split.append(grid.spectrum(charges))
    for other in split[1:]:
        np.testing.assert_array_equal(other, split[0])
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.abs(split[0] - one_pass).max() <= tol * np.abs(one_pass).max()
    assert np.abs(split[0] - one_pass).max() > 0  # another order of the additions: the path did run
