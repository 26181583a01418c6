"""Small-image augmentations on flat feature arrays, without torchvision.

Contrastive learners such as SimCLR need two random *views* of every sample.
The augmentations here act on a batch of flattened images ``X`` of shape
``(n_samples, n_features)`` together with an ``image_shape`` (``(H, W)`` or
``(C, H, W)``) whose product is ``n_features``; they return a batch of the same
shape and dtype.  Geometric transforms are vectorised affine resamplings
(``torch.nn.functional.grid_sample``), so a whole batch is transformed at once
on any device.

Every augmentation is a scikit-learn style parameter object (``get_params`` /
``set_params``, ``clone``-able, nothing computed in ``__init__``) and a callable
``aug(X, generator=None)``:

* ``X`` is a torch tensor or a numpy array; the output has the same type;
* ``generator`` is a :class:`torch.Generator`, an ``int`` seed,
  a :class:`numpy.random.RandomState` or ``None`` (fresh randomness);
  the same seed gives the same views.

Every estimator with an ``augment`` parameter (:class:`~skicon.ICONClustering`,
:class:`~skicon.ICONContrastive`, :class:`~skicon.ICONClassifier`) calls it the same way,
:func:`apply_augment`: ``augment(X_batch, generator)``, positionally, with a torch batch and a
:class:`torch.Generator`; so the classes here and a plain ``lambda Xb, g: ...`` both work.

Examples
--------
>>> import numpy as np
>>> from skicon.augment import Compose, RandomResizedCrop, GaussianNoise
>>> aug = Compose([RandomResizedCrop(image_shape=(8, 8)), GaussianNoise(std=0.1)])
>>> X = np.random.RandomState(0).rand(4, 64)
>>> aug(X, generator=0).shape
(4, 64)
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator

from ._utils import as_tensor

__all__ = [
    "Augmentation",
    "Compose",
    "GaussianNoise",
    "RandomAffine",
    "RandomErasing",
    "RandomResizedCrop",
    "RandomRotation",
    "RandomTranslation",
    "apply_augment",
    "default_image_augmentation",
    "make_generator",
]

#: The one signature of a user augmentation, as every estimator calls it.
AUGMENT_SIGNATURE = "augment(X_batch, generator) -> X_view"


def _takes_two_positional(fn):
    """Whether ``fn(a, b)`` binds (True when the signature cannot be read)."""
    import inspect

    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # builtins without a signature
        return True
    return True


def apply_augment(augment, X, generator):
    """Call a user augmentation the one way every estimator does, and check what it returns.

    ``augment(X_batch, generator)``, both positional: ``X_batch`` a torch tensor of shape
    ``(batch, n_features)`` (the estimator's dtype and device), ``generator`` a
    :class:`torch.Generator` to draw the randomness from (so that ``random_state`` reproduces
    the views). It must return a batch of the same shape (a tensor or an array). The
    augmentations of this module follow it; so does ``lambda Xb, g: Xb + 0.1 * torch.randn(
    Xb.shape, generator=g, dtype=Xb.dtype)``.

    Parameters
    ----------
    augment : callable
        The user's augmentation.
    X : torch.Tensor of shape (batch, n_features)
        The batch.
    generator : torch.Generator
        Source of randomness.

    Returns
    -------
    torch.Tensor of the shape, dtype and device of ``X``

    Raises
    ------
    TypeError
        When ``augment`` cannot take two positional arguments.
    ValueError
        When ``augment`` raises, or returns another shape or non-finite values.

    Examples
    --------
    >>> import torch
    >>> X = torch.zeros(4, 3)
    >>> apply_augment(lambda Xb, g: Xb + torch.rand(Xb.shape, generator=g), X, torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3])
    """
    if not callable(augment) or not _takes_two_positional(augment):
        raise TypeError(f"augment must be a callable {AUGMENT_SIGNATURE} taking two positional arguments "
                        f"(a torch batch and a torch.Generator); got {augment!r}.")
    try:
        out = augment(X, generator)
    except Exception as exc:  # a user callable failing gets named, its own message kept
        raise ValueError(f"augment raised {type(exc).__name__}: {exc} (augment is called as "
                         f"{AUGMENT_SIGNATURE}, X_batch a torch tensor, generator a torch.Generator).") from exc
    if not isinstance(out, torch.Tensor):
        out = np.asarray(out)
        if not np.issubdtype(out.dtype, np.number):
            raise ValueError(f"augment must return a numeric batch; got dtype {out.dtype}.")
        out = torch.as_tensor(out)
    if tuple(out.shape) != tuple(X.shape):
        raise ValueError(f"augment must return a batch of the same shape as its input; it turned {tuple(X.shape)} "
                         f"into {tuple(out.shape)}. Check the augmentation's image_shape.")
    if not (out.is_floating_point() or out.is_complex()):
        out = out.to(X.dtype)
    if not torch.isfinite(out).all():
        raise ValueError("augment returned NaN or infinite values; it must return a finite batch.")
    return out.to(dtype=X.dtype, device=X.device)


def make_generator(random_state=None, device="cpu"):
    """Turn a seed-like object into a :class:`torch.Generator`.

    Parameters
    ----------
    random_state : None, int, numpy.random.RandomState, numpy.random.Generator \
            or torch.Generator
        ``None`` draws a fresh seed from numpy's global state; an ``int`` seeds
        a new generator; numpy generators are used to draw a seed; a torch
        generator is returned unchanged.
    device : str or torch.device, default="cpu"
        Device of a newly created generator.

    Returns
    -------
    generator : torch.Generator

    Examples
    --------
    >>> from skicon.augment import make_generator
    >>> g = make_generator(0)
    >>> bool((make_generator(0).initial_seed() == g.initial_seed()))
    True
    """
    if isinstance(random_state, torch.Generator):
        return random_state
    if random_state is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        seed = int(random_state)
    elif isinstance(random_state, np.random.RandomState):
        seed = int(random_state.randint(0, 2**31 - 1))
    elif isinstance(random_state, np.random.Generator):
        seed = int(random_state.integers(0, 2**31 - 1))
    else:
        raise TypeError(
            "generator must be None, an int, a numpy RandomState/Generator or a "
            f"torch.Generator; got {type(random_state).__name__}."
        )
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    return gen


def _as_tensor(X):
    """Return ``(tensor, was_numpy)``; floating numpy input keeps its dtype and shares its
    memory where torch can (see :func:`skicon._utils.as_tensor`), other input becomes float32."""
    if isinstance(X, torch.Tensor):
        return X, False
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)
    return as_tensor(X, dtype=None), True


def _uniform(n, low, high, generator, like):
    """``n`` uniform draws in ``[low, high)``, drawn on the generator's device."""
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype)


def _normalise_image_shape(image_shape):
    """Validate ``image_shape`` and return it as ``(C, H, W)``."""
    if image_shape is None:
        raise ValueError(
            "image_shape is required: pass image_shape=(H, W) or (C, H, W) whose "
            "product equals the number of features."
        )
    try:
        if isinstance(image_shape, str):
            raise TypeError
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"image_shape must be a tuple (H, W) or (C, H, W); got {image_shape!r}."
        ) from None
    if len(shape) not in (2, 3) or any(s <= 0 for s in shape):
        raise ValueError(
            f"image_shape must be (H, W) or (C, H, W) of positive ints; got {image_shape!r}."
        )
    return shape if len(shape) == 3 else (1,) + shape


class Augmentation(BaseEstimator):
    """Base class of the batch augmentations in :mod:`skicon.augment`.

    Subclasses implement :meth:`_apply` on a ``(B, C, H, W)`` tensor (image
    augmentations) or override :meth:`__call__` (feature-space augmentations).

    Parameters
    ----------
    image_shape : tuple of int or None
        ``(H, W)`` or ``(C, H, W)``; the product must equal ``n_features``.
    p : float, default=1.0
        Probability that a given sample is augmented (samples not selected are
        returned unchanged).

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.augment import Augmentation
    >>> class Flip(Augmentation):
    ...     # mirror images left to right
    ...     def _apply(self, images, generator):
    ...         return images.flip(-1)
    >>> X = np.arange(4.0).reshape(1, 4)
    >>> Flip(image_shape=(2, 2))(X, generator=0)
    array([[1., 0., 3., 2.]])
    """

    def __init__(self, image_shape=None, p=1.0):
        self.image_shape = image_shape
        self.p = p

    def __call__(self, X, generator=None):
        """Augment a batch.

        Parameters
        ----------
        X : torch.Tensor or ndarray of shape (n_samples, n_features)
            Flattened images.
        generator : torch.Generator, int, RandomState or None, default=None
            Source of randomness; see :func:`make_generator`.

        Returns
        -------
        X_aug : same type as ``X``, shape (n_samples, n_features)
            The augmented batch, in the dtype of ``X``.
        """
        tensor, was_numpy = _as_tensor(X)
        self._check_p()
        images = self._to_images(tensor)
        gen = make_generator(generator, device="cpu")
        out = self._apply(images, gen)
        out = self._keep_with_probability(images, out, gen)
        out = out.reshape(tensor.shape).to(tensor.dtype)
        return out.numpy() if was_numpy else out

    # -- helpers shared by subclasses ------------------------------------------------
    def _check_p(self):
        if not (isinstance(self.p, numbers.Real) and 0.0 <= self.p <= 1.0):
            raise ValueError(f"p must be a probability in [0, 1]; got {self.p!r}.")

    def _to_images(self, X):
        if X.ndim != 2:
            raise ValueError(
                f"X must be 2-D (n_samples, n_features); got shape {tuple(X.shape)}."
            )
        c, h, w = _normalise_image_shape(self.image_shape)
        if c * h * w != X.shape[1]:
            raise ValueError(
                f"image_shape={tuple(self.image_shape)!r} has {c * h * w} pixels but X "
                f"has {X.shape[1]} features; pass the image shape of the data."
            )
        if not X.is_floating_point():
            X = X.float()
        return X.reshape(X.shape[0], c, h, w)

    def _keep_with_probability(self, images, out, gen):
        if self.p >= 1.0:
            return out
        keep = _uniform(images.shape[0], 0.0, 1.0, gen, images) < self.p
        return torch.where(keep[:, None, None, None], out, images)

    def _apply(self, images, gen):  # pragma: no cover - abstract
        raise NotImplementedError


def _resample(images, theta, fill):
    """Affine resampling of ``(B, C, H, W)`` images; outside pixels get ``fill``."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Shift so that padding (zeros) represents `fill`, then shift back.
    shifted = images - fill
    out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def _identity_theta(n, like):
    theta = torch.zeros(n, 2, 3, dtype=like.dtype, device=like.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    return theta


class RandomTranslation(Augmentation):
    """Shift each image by a random offset of up to ``max_shift`` pixels.

    Pixels moved in from outside the image take the value ``fill``.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` or ``(C, H, W)``.
    max_shift : float, default=2
        Largest shift in pixels along each axis; the shift is drawn uniformly
        in ``[-max_shift, max_shift]`` independently for rows and columns.
    fill : float, default=0.0
        Value of the pixels that enter the image.
    p : float, default=1.0
        Probability that a sample is shifted.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.augment import RandomTranslation
    >>> X = np.random.RandomState(0).rand(4, 64)
    >>> RandomTranslation(image_shape=(8, 8), max_shift=1)(X, generator=0).shape
    (4, 64)
    """

    def __init__(self, image_shape=None, max_shift=2, fill=0.0, p=1.0):
        super().__init__(image_shape=image_shape, p=p)
        self.max_shift = max_shift
        self.fill = fill

    def _apply(self, images, gen):
        return _resample(images, self._theta(images, gen), float(self.fill))

    def _theta(self, images, gen):
        if not (isinstance(self.max_shift, numbers.Real) and self.max_shift >= 0):
            raise ValueError(f"max_shift must be a non-negative number; got {self.max_shift!r}.")
        n, _, h, w = images.shape
        theta = _identity_theta(n, images)
        # grid coordinates are in [-1, 1]: one pixel is 2 / size.
        theta[:, 0, 2] = _uniform(n, -self.max_shift, self.max_shift, gen, images) * 2.0 / w
        theta[:, 1, 2] = _uniform(n, -self.max_shift, self.max_shift, gen, images) * 2.0 / h
        return theta


class RandomRotation(Augmentation):
    """Rotate each image by a random angle about its centre.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` or ``(C, H, W)``.
    degrees : float, default=15
        The angle is drawn uniformly in ``[-degrees, degrees]``.
    fill : float, default=0.0
        Value of the pixels that enter the image.
    p : float, default=1.0
        Probability that a sample is rotated.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.augment import RandomRotation
    >>> X = np.random.RandomState(0).rand(4, 64)
    >>> RandomRotation(image_shape=(8, 8), degrees=10)(X, generator=0).shape
    (4, 64)
    """

    def __init__(self, image_shape=None, degrees=15, fill=0.0, p=1.0):
        super().__init__(image_shape=image_shape, p=p)
        self.degrees = degrees
        self.fill = fill

    def _apply(self, images, gen):
        return _resample(images, self._theta(images, gen), float(self.fill))

    def _theta(self, images, gen):
        if not (isinstance(self.degrees, numbers.Real) and 0 <= self.degrees <= 180):
            raise ValueError(f"degrees must be in [0, 180]; got {self.degrees!r}.")
        n, _, h, w = images.shape
        angle = _uniform(n, -self.degrees, self.degrees, gen, images) * (math.pi / 180.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
        # Normalised coordinates stretch non-square images; correct by the aspect ratio.
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin * h / w
        theta[:, 1, 0] = sin * w / h
        theta[:, 1, 1] = cos
        return theta


class RandomResizedCrop(Augmentation):
    """Crop a random region and resize it back to the full image.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` or ``(C, H, W)``.
    scale : tuple of float, default=(0.6, 1.0)
        Range of the crop's area as a fraction of the image area.
    ratio : tuple of float, default=(3/4, 4/3)
        Range of the crop's aspect ratio (width / height), drawn log-uniformly.
    p : float, default=1.0
        Probability that a sample is cropped.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.augment import RandomResizedCrop
    >>> X = np.random.RandomState(0).rand(4, 64)
    >>> RandomResizedCrop(image_shape=(8, 8), scale=(0.5, 1.0))(X, generator=0).shape
    (4, 64)
    """

    def __init__(self, image_shape=None, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), p=1.0):
        super().__init__(image_shape=image_shape, p=p)
        self.scale = scale
        self.ratio = ratio

    def _apply(self, images, gen):
        return _resample(images, self._theta(images, gen), 0.0)

    def _theta(self, images, gen):
        lo, hi = self._range("scale", self.scale, upper=1.0)
        rlo, rhi = self._range("ratio", self.ratio, upper=None)
        n = images.shape[0]
        area = _uniform(n, lo, hi, gen, images)
        log_ratio = _uniform(n, math.log(rlo), math.log(rhi), gen, images)
        ratio = torch.exp(log_ratio)
        # Crop width/height as fractions of the image; clamp so the crop fits.
        width = torch.sqrt(area * ratio).clamp(max=1.0)
        height = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (2 * _uniform(n, 0.0, 1.0, gen, images) - 1) * (1 - width)
        cy = (2 * _uniform(n, 0.0, 1.0, gen, images) - 1) * (1 - height)
        theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
        theta[:, 0, 0] = width
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = height
        theta[:, 1, 2] = cy
        return theta

    @staticmethod
    def _range(name, value, upper):
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a pair (low, high); got {value!r}.") from None
        if not (0 < lo <= hi) or (upper is not None and hi > upper):
            bound = f" and high <= {upper}" if upper is not None else ""
            raise ValueError(f"{name} must satisfy 0 < low <= high{bound}; got {value!r}.")
        return lo, hi


class RandomAffine(Augmentation):
    """Random resized crop, rotation and translation fused into one resampling.

    Equivalent to applying :class:`RandomResizedCrop`, :class:`RandomRotation` and
    :class:`RandomTranslation` in that order, but the three affine maps are composed first,
    so the image is interpolated once (sharper, and about three times cheaper).

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` or ``(C, H, W)``.
    scale : tuple of float, default=(0.6, 1.0)
        Range of the crop's area as a fraction of the image area.
    ratio : tuple of float, default=(3/4, 4/3)
        Range of the crop's aspect ratio.
    degrees : float, default=12
        Rotation angle range ``[-degrees, degrees]``.
    max_shift : float, default=2
        Translation range in pixels.
    fill : float, default=0.0
        Value of the pixels that enter the image.
    p : float, default=1.0
        Probability that a sample is transformed.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.augment import RandomAffine
    >>> X = np.random.RandomState(0).rand(4, 64)
    >>> RandomAffine(image_shape=(8, 8))(X, generator=0).shape
    (4, 64)
    """

    def __init__(self, image_shape=None, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), degrees=12,
                 max_shift=2, fill=0.0, p=1.0):
        super().__init__(image_shape=image_shape, p=p)
        self.scale = scale
        self.ratio = ratio
        self.degrees = degrees
        self.max_shift = max_shift
        self.fill = fill

    def _apply(self, images, gen):
        parts = [
            RandomResizedCrop(scale=self.scale, ratio=self.ratio),
            RandomRotation(degrees=self.degrees),
            RandomTranslation(max_shift=self.max_shift),
        ]
        n = images.shape[0]
        bottom = torch.zeros(n, 1, 3, dtype=images.dtype, device=images.device)
        bottom[:, 0, 2] = 1.0  # homogeneous coordinates, so that affine maps compose by matmul
        total = None
        for part in parts:
            theta = torch.cat([part._theta(images, gen), bottom], dim=1)
            # Output coordinates pass through the later maps first: crop(rotate(translate(u))).
            total = theta if total is None else total @ theta
        return _resample(images, total[:, :2], float(self.fill))


class RandomErasing(Augmentation):
    """Set a random rectangle of each image to a constant (cutout).

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` or ``(C, H, W)``.
    scale : tuple of float, default=(0.05, 0.2)
        Range of the erased area as a fraction of the image area.
    value : float, default=0.0
        Value written into the erased rectangle.
    p : float, default=0.5
        Probability that a sample gets a rectangle erased.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.augment import RandomErasing
    >>> X = np.ones((4, 64))
    >>> erased = RandomErasing(image_shape=(8, 8), p=1.0)(X, generator=0)
    >>> bool((erased == 0).any(axis=1).all())  # every image lost a rectangle
    True
    """

    def __init__(self, image_shape=None, scale=(0.05, 0.2), value=0.0, p=0.5):
        super().__init__(image_shape=image_shape, p=p)
        self.scale = scale
        self.value = value

    def _apply(self, images, gen):
        lo, hi = RandomResizedCrop._range("scale", self.scale, upper=1.0)
        n, _, h, w = images.shape
        area = _uniform(n, lo, hi, gen, images)
        side_h = (torch.sqrt(area) * h).clamp(1, h)
        side_w = (torch.sqrt(area) * w).clamp(1, w)
        top = _uniform(n, 0.0, 1.0, gen, images) * (h - side_h)
        left = _uniform(n, 0.0, 1.0, gen, images) * (w - side_w)
        rows = torch.arange(h, device=images.device, dtype=images.dtype)
        cols = torch.arange(w, device=images.device, dtype=images.dtype)
        in_rows = (rows[None, :] >= top[:, None].floor()) & (
            rows[None, :] < (top + side_h)[:, None].ceil()
        )
        in_cols = (cols[None, :] >= left[:, None].floor()) & (
            cols[None, :] < (left + side_w)[:, None].ceil()
        )
        mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
        return torch.where(mask, torch.full_like(images, float(self.value)), images)


class GaussianNoise(Augmentation):
    """Add Gaussian noise to every feature.

    Works on any feature vector; ``image_shape`` is not needed.

    Parameters
    ----------
    std : float, default=0.1
        Standard deviation of the noise.  With ``relative=True`` it is a
        fraction of the batch's overall standard deviation, so the same value
        suits data in [0, 1] and in [0, 255].
    relative : bool, default=True
        Whether ``std`` is relative to the batch's standard deviation.
    image_shape : tuple of int or None, default=None
        Ignored; accepted so that all augmentations share a signature.
    p : float, default=1.0
        Probability that a sample gets noise.

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.augment import GaussianNoise
    >>> X = np.zeros((2, 3))
    >>> GaussianNoise(std=0.5, relative=False)(X, generator=0).shape
    (2, 3)
    """

    def __init__(self, std=0.1, relative=True, image_shape=None, p=1.0):
        super().__init__(image_shape=image_shape, p=p)
        self.std = std
        self.relative = relative

    def __call__(self, X, generator=None):
        """Add noise to a batch; see :meth:`Augmentation.__call__`."""
        tensor, was_numpy = _as_tensor(X)
        self._check_p()
        if tensor.ndim != 2:
            raise ValueError(
                f"X must be 2-D (n_samples, n_features); got shape {tuple(tensor.shape)}."
            )
        if not (isinstance(self.std, numbers.Real) and self.std >= 0):
            raise ValueError(f"std must be a non-negative number; got {self.std!r}.")
        gen = make_generator(generator, device="cpu")
        work = tensor if tensor.is_floating_point() else tensor.float()
        scale = float(self.std)
        if self.relative and work.numel() > 1:
            scale *= float(work.std())
        noise = torch.randn(work.shape, generator=gen, dtype=work.dtype).to(work.device)
        out = work + scale * noise
        if self.p < 1.0:
            keep = _uniform(work.shape[0], 0.0, 1.0, gen, work) < self.p
            out = torch.where(keep[:, None], out, work)
        out = out.to(tensor.dtype) if tensor.is_floating_point() else out
        return out.numpy() if was_numpy else out


class Compose(BaseEstimator):
    """Apply several augmentations in sequence, sharing one generator.

    Parameters
    ----------
    steps : list of callables
        Each called as ``step(X, generator=generator)``; typically instances
        of the classes in this module.

    Examples
    --------
    >>> from skicon.augment import Compose, RandomTranslation, GaussianNoise
    >>> aug = Compose([RandomTranslation(image_shape=(8, 8)), GaussianNoise()])
    """

    def __init__(self, steps=()):
        self.steps = steps

    def __call__(self, X, generator=None):
        """Apply every step in order.

        Parameters
        ----------
        X : torch.Tensor or ndarray of shape (n_samples, n_features)
            Batch to augment.
        generator : torch.Generator, int, RandomState or None, default=None
            Source of randomness; see :func:`make_generator`.

        Returns
        -------
        X_aug : same type and shape as ``X``
        """
        gen = make_generator(generator, device="cpu")
        for step in self.steps:
            if not callable(step):
                raise TypeError(f"every step of Compose must be callable; got {step!r}.")
            X = step(X, generator=gen)
        return X


def default_image_augmentation(image_shape, *, strength=1.0):
    """SimCLR-style augmentation for small grey-scale images.

    Random resized crop, small rotation and small translation (fused in one
    :class:`RandomAffine`), cutout and a little Gaussian noise.  Tuned for 8x8 ``load_digits`` and 28x28 MNIST.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` or ``(C, H, W)``.
    strength : float, default=1.0
        Multiplies the magnitude of every transform (0 disables them).

    Returns
    -------
    augment : Compose

    Examples
    --------
    >>> import numpy as np
    >>> from skicon.augment import default_image_augmentation
    >>> augment = default_image_augmentation((8, 8))
    >>> X = np.random.RandomState(0).rand(4, 64)
    >>> view = augment(X, generator=0)
    >>> view.shape, bool(np.allclose(view, augment(X, generator=0)))  # same seed, same view
    ((4, 64), True)
    """
    shape = _normalise_image_shape(image_shape)
    h, w = shape[1], shape[2]
    s = float(strength)
    if s < 0:
        raise ValueError(f"strength must be non-negative; got {strength!r}.")
    min_area = max(0.05, 1.0 - 0.5 * s)
    max_ratio = (4 / 3) ** min(s, 1.0)
    return Compose(
        [
            RandomAffine(
                image_shape=image_shape,
                scale=(min_area, 1.0),
                ratio=(max_ratio**-1, max_ratio),
                degrees=min(180.0, 12.0 * s),
                max_shift=s * max(1.0, min(h, w) / 10),
            ),
            RandomErasing(image_shape=image_shape, scale=(0.02, 0.02 + 0.12 * s), p=0.5 * min(s, 1)),
            GaussianNoise(std=0.05 * s),
        ]
    )
