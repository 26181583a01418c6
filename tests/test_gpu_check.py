"""benchmarks/gpu_check.py runs end to end on the CPU (``--cpu-smoke``), so that it cannot rot
while no GPU runs it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_runs_every_row():
    # the smoke run's stages run in-process without time limits; the budget bounds only the
    # cuda-tests subprocess (generous: the machine may be loaded)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--cpu-smoke", "--budget", "400"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "failed" not in out and "timed out" not in out, out
    for row in ("t-SNE", "kNN k=90", "contrastive", "clustering", "cuda tests"):
        assert row in out, out
    assert "samples/s" in out and "nan samples/s" not in out, out
    # the cuda tests ran (skipped without a GPU), none failed
    tail = out.split("cuda tests")[-1]
    assert ("skipped" in tail or "passed" in tail) and "FAILED" not in tail and " failed" not in tail, out
