"""Tests for skicon.augment: shapes, determinism, effect, exact small cases, errors."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone

from skicon.augment import (
    Compose,
    GaussianNoise,
    RandomAffine,
    RandomErasing,
    RandomResizedCrop,
    RandomRotation,
    RandomTranslation,
    default_image_augmentation,
    make_generator,
)

SHAPE = (8, 8)


def _images(n=6, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 64) * 16


def _all_augmentations():
    return [
        RandomTranslation(image_shape=SHAPE, max_shift=2),
        RandomRotation(image_shape=SHAPE, degrees=30),
        RandomResizedCrop(image_shape=SHAPE, scale=(0.4, 0.8)),
        RandomErasing(image_shape=SHAPE, p=1.0),
        GaussianNoise(std=0.2),
        RandomAffine(image_shape=SHAPE),
        default_image_augmentation(SHAPE),
    ]


@pytest.mark.parametrize("aug", _all_augmentations(), ids=lambda a: type(a).__name__)
def test_shape_dtype_and_type_kept(aug):
    X = _images()
    out = aug(X, generator=0)
    assert isinstance(out, np.ndarray)
    assert out.shape == X.shape and out.dtype == X.dtype
    Xt = torch.tensor(X, dtype=torch.float32)
    out_t = aug(Xt, generator=0)
    assert isinstance(out_t, torch.Tensor)
    assert out_t.shape == Xt.shape and out_t.dtype == torch.float32


@pytest.mark.parametrize("aug", _all_augmentations(), ids=lambda a: type(a).__name__)
def test_deterministic_under_seed_and_changes_data(aug):
    X = _images()
    a = aug(X, generator=0)
    b = aug(X, generator=0)
    c = aug(X, generator=1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, X)
    # The input is never modified in place.
    np.testing.assert_array_equal(X, _images())


@pytest.mark.parametrize("aug", _all_augmentations(), ids=lambda a: type(a).__name__)
def test_read_only_input_is_augmented_without_warning(aug):
    # a memmap or broadcast view is read-only: torch.from_numpy would warn that it cannot share it
    X = _images()
    X.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = aug(X, generator=0)
    np.testing.assert_array_equal(out, aug(_images(), generator=0))
    np.testing.assert_array_equal(X, _images())


def test_as_tensor_copies_only_read_only_arrays():
    # torch warns only once per process, so the copy itself is checked too
    from skicon.augment import _as_tensor

    X = _images()
    assert np.shares_memory(_as_tensor(X)[0].numpy(), X)  # writable: shared, no copy
    X.flags.writeable = False
    tensor, was_numpy = _as_tensor(X)
    assert was_numpy and not np.shares_memory(tensor.numpy(), X)
    np.testing.assert_array_equal(tensor.numpy(), X)


@pytest.mark.parametrize("aug", _all_augmentations(), ids=lambda a: type(a).__name__)
def test_torch_generator_advances(aug):
    X = torch.tensor(_images())
    gen = torch.Generator().manual_seed(5)
    first = aug(X, generator=gen)
    second = aug(X, generator=gen)
    assert not torch.allclose(first, second)


def test_translation_by_whole_pixels_moves_content():
    # max_shift=1 with a single sample: the output is the image shifted by an
    # amount in [-1, 1] px; a pure one-pixel shift must match np.roll with fill 0.
    img = np.zeros((1, 25))
    img[0, 12] = 1.0  # centre pixel of a 5x5 image
    aug = RandomTranslation(image_shape=(5, 5), max_shift=1)
    out = aug(img, generator=0).reshape(5, 5)
    # Bilinear resampling preserves total mass when the support stays inside.
    assert out.sum() == pytest.approx(1.0, abs=1e-6)
    row, col = np.unravel_index(np.argmax(out), (5, 5))
    assert abs(row - 2) <= 1 and abs(col - 2) <= 1


def test_identity_parameters_leave_images_unchanged():
    X = _images()
    for aug in [
        RandomTranslation(image_shape=SHAPE, max_shift=0),
        RandomRotation(image_shape=SHAPE, degrees=0),
        RandomResizedCrop(image_shape=SHAPE, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
        GaussianNoise(std=0.0),
        RandomErasing(image_shape=SHAPE, p=0.0),
        default_image_augmentation(SHAPE, strength=0.0),
    ]:
        np.testing.assert_allclose(aug(X, generator=0), X, atol=1e-10)


def test_rotation_by_180_degrees_flips_image():
    # degrees=180 draws in [-180, 180]; build the exact 180-degree case by hand.
    X = _images(1)
    aug = RandomRotation(image_shape=SHAPE, degrees=180)
    images = torch.tensor(X).reshape(1, 1, 8, 8)
    theta = torch.tensor([[[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]], dtype=images.dtype)
    from skicon.augment import _resample

    flipped = _resample(images, theta, 0.0).reshape(8, 8).numpy()
    np.testing.assert_allclose(flipped, X.reshape(8, 8)[::-1, ::-1], atol=1e-10)
    assert aug(X, generator=0).shape == X.shape


def test_erasing_sets_a_rectangle_to_value():
    X = _images(4) + 1.0  # strictly positive, so erased pixels are identifiable
    out = RandomErasing(image_shape=SHAPE, scale=(0.1, 0.2), value=-5.0, p=1.0)(X, generator=0)
    for img in out.reshape(4, 8, 8):
        rows, cols = np.nonzero(img == -5.0)
        assert rows.size > 0
        # The erased pixels fill their bounding box exactly: a rectangle.
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == rows.size


def test_resized_crop_of_constant_image_is_constant():
    X = np.full((3, 64), 7.0)
    out = RandomResizedCrop(image_shape=SHAPE, scale=(0.3, 0.9))(X, generator=0)
    np.testing.assert_allclose(out, 7.0, atol=1e-10)


def test_noise_scale_is_relative_to_batch_std():
    rng = np.random.RandomState(0)
    X = rng.randn(500, 64) * 100.0
    out = GaussianNoise(std=0.1)(X, generator=0)
    assert np.std(out - X) == pytest.approx(0.1 * X.std(), rel=0.05)
    out_abs = GaussianNoise(std=0.1, relative=False)(X, generator=0)
    assert np.std(out_abs - X) == pytest.approx(0.1, rel=0.05)


def test_probability_p_leaves_some_samples_untouched():
    X = _images(200)
    out = RandomTranslation(image_shape=SHAPE, max_shift=2, p=0.5)(X, generator=0)
    unchanged = np.all(out == X, axis=1)
    assert 0.3 < unchanged.mean() < 0.7


def test_channels_first_shape_supported():
    X = np.random.RandomState(0).rand(3, 2 * 5 * 6)
    out = default_image_augmentation((2, 5, 6))(X, generator=0)
    assert out.shape == X.shape


@pytest.mark.parametrize("bad", [(7, 7), (8,), (0, 64), "8x8", None, (2, 2, 2, 8)])
def test_bad_image_shape_raises_value_error(bad):
    with pytest.raises(ValueError, match="image_shape"):
        RandomTranslation(image_shape=bad)(_images(), generator=0)


def test_bad_parameters_raise_value_error():
    X = _images()
    with pytest.raises(ValueError, match="p must"):
        RandomTranslation(image_shape=SHAPE, p=2.0)(X, generator=0)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(image_shape=SHAPE, scale=(0.5, 2.0))(X, generator=0)
    with pytest.raises(ValueError, match="max_shift"):
        RandomTranslation(image_shape=SHAPE, max_shift=-1)(X, generator=0)
    with pytest.raises(ValueError, match="std"):
        GaussianNoise(std=-1)(X, generator=0)
    with pytest.raises(ValueError, match="2-D"):
        RandomRotation(image_shape=SHAPE)(X.reshape(-1, 8, 8), generator=0)
    with pytest.raises(TypeError, match="generator"):
        GaussianNoise()(X, generator="seed")
    with pytest.raises(TypeError, match="callable"):
        Compose([1])(X, generator=0)


def test_augmentations_are_sklearn_parameter_objects():
    aug = default_image_augmentation(SHAPE)
    cloned = clone(aug)
    X = _images()
    np.testing.assert_array_equal(aug(X, generator=3), cloned(X, generator=3))
    crop = RandomResizedCrop(image_shape=SHAPE)
    assert crop.set_params(scale=(0.5, 0.9)).get_params()["scale"] == (0.5, 0.9)


def test_make_generator_accepts_seed_like_objects():
    assert isinstance(make_generator(None), torch.Generator)
    g = torch.Generator()
    assert make_generator(g) is g
    a = torch.rand(3, generator=make_generator(np.random.RandomState(0)))
    b = torch.rand(3, generator=make_generator(np.random.RandomState(0)))
    assert torch.equal(a, b)


def test_random_affine_composes_its_parts():
    X = _images()
    # With no rotation and no shift, the fused map is exactly the crop (same draws).
    fused = RandomAffine(image_shape=SHAPE, scale=(0.4, 0.9), degrees=0, max_shift=0)(X, generator=0)
    crop = RandomResizedCrop(image_shape=SHAPE, scale=(0.4, 0.9))(X, generator=0)
    np.testing.assert_allclose(fused, crop, atol=1e-10)
    # Identity parameters give back the image exactly.
    img = np.arange(16.0).reshape(1, 16)
    rot = RandomAffine(image_shape=(4, 4), scale=(1, 1), ratio=(1, 1), degrees=0, max_shift=0)
    np.testing.assert_allclose(rot(img, generator=0), img, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# the one augmentation signature of every estimator: augment(X_batch, generator), positional
# ---------------------------------------------------------------------------------------------
def _estimators():
    from skicon import ICONClassifier, ICONClustering, ICONContrastive

    return [
        ("clustering", lambda aug: ICONClustering(3, augment=aug, max_iter=20, n_init=1, random_state=0)),
        ("contrastive", lambda aug: ICONContrastive(augment=aug, n_components=4, hidden_layer_sizes=(16,),
                                                    batch_size=32, max_iter=3, random_state=0)),
        ("classifier", lambda aug: ICONClassifier(augment=aug, hidden_layer_sizes=(16,), batch_size=32, max_iter=3,
                                                  random_state=0)),
    ]


@pytest.mark.parametrize("name,make", _estimators(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_estimator_calls_a_plain_two_argument_augment_the_same_way(name, make):
    from sklearn.datasets import make_blobs

    X, y = make_blobs(90, n_features=6, centers=3, random_state=0)
    seen = []

    def jitter(Xb, g):  # positional, no keyword names assumed
        seen.append((type(Xb), type(g), tuple(Xb.shape)))
        return Xb + 0.01 * torch.randn(Xb.shape, generator=g, dtype=Xb.dtype)

    est = make(jitter)
    est.fit(X, y) if name == "classifier" else est.fit(X)
    assert seen
    assert all(t is torch.Tensor and gt is torch.Generator and s[1] == 6 for t, gt, s in seen)
    # a lambda works too, and the same seed gives the same views (the generator is the estimator's)
    again = make(lambda Xb, g: Xb + 0.01 * torch.randn(Xb.shape, generator=g, dtype=Xb.dtype))
    again.fit(X, y) if name == "classifier" else again.fit(X)


@pytest.mark.parametrize("name,make", _estimators(), ids=lambda v: v if isinstance(v, str) else "")
def test_an_augment_with_the_wrong_signature_is_named(name, make):
    from sklearn.datasets import make_blobs

    X, y = make_blobs(90, n_features=6, centers=3, random_state=0)
    est = make(lambda Xb: Xb)
    with pytest.raises(TypeError, match=r"augment\(X_batch, generator\)"):
        est.fit(X, y) if name == "classifier" else est.fit(X)


def test_apply_augment_checks_what_comes_back():
    from skicon.augment import apply_augment

    X, g = torch.zeros(4, 3), torch.Generator().manual_seed(0)
    assert torch.equal(apply_augment(lambda Xb, gen: np.ones((4, 3)), X, g), torch.ones(4, 3))
    with pytest.raises(ValueError, match="same shape"):
        apply_augment(lambda Xb, gen: Xb[:, :2], X, g)
    with pytest.raises(ValueError, match="finite"):
        apply_augment(lambda Xb, gen: Xb * np.nan, X, g)
    with pytest.raises(ValueError, match="augment raised ZeroDivisionError"):
        apply_augment(lambda Xb, gen: 1 / 0, X, g)
    # the module's own augmentations follow the signature
    aug, X = GaussianNoise(std=0.1), torch.arange(12.0).reshape(4, 3)
    a = apply_augment(aug, X, torch.Generator().manual_seed(1))
    b = apply_augment(aug, X, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, X)
