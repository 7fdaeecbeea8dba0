"""albumentations pipelines; the mask and a validity map always follow the image's geometry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from ..constants import IGNORE_INDEX
from ..errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TARGETS = {"valid": "mask"}  # the validity map is a second mask: nearest resizing, filled like the mask


def _pad(size: int, mean: Sequence[float], position: str) -> A.PadIfNeeded:
    """Pad to ``size``: image with the mean colour (0 after normalisation), masks with 255."""
    return A.PadIfNeeded(
        min_height=size,
        min_width=size,
        position=position,
        border_mode=cv2.BORDER_CONSTANT,
        fill=tuple(255.0 * m for m in mean),
        fill_mask=IGNORE_INDEX,
    )


def build_train_transform(
    crop_size: int,
    scale_range: tuple[float, float] = (0.7, 1.3),
    hflip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    color_jitter: float | Mapping[str, float] = 0.0,
    resize_long: tuple[int, int] | None = None,
) -> A.Compose:
    """Random scale (bilinear image, nearest masks), pad with ignore, random crop, flip, jitter, normalise.

    ``resize_long`` (low, high): first resize the longer side to a uniform random length in [low, high] pixels,
    so that the crop shows the same share of every photo whatever its resolution (PSA's and ToCo's random
    long-side resize); None: images keep their pixel size. Then the scale factor is uniform in ``scale_range``;
    the output is ``crop_size`` x ``crop_size``. ``color_jitter``
    is one strength for brightness, contrast and saturation, or a mapping of ``brightness``, ``contrast``,
    ``saturation``, ``hue`` and ``p`` (probability, default 1); all zero: no jitter. Only the image changes.
    """
    low, high = scale_range
    if not 0 < low <= high:
        raise DatasetError(f"dataset.scale_range must be [low, high] with 0 < low <= high, got {scale_range}")
    steps: list[A.BasicTransform] = []
    if resize_long is not None:
        long_low, long_high = check_resize_long(resize_long)
        steps.append(
            A.LongestMaxSize(
                max_size=list(range(long_low, long_high + 1)),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        )
    steps += [
        A.RandomScale(
            scale_limit=(low - 1.0, high - 1.0),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            p=1.0,
        ),
        _pad(crop_size, mean, "center"),
        A.RandomCrop(crop_size, crop_size),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    jitter = color_jitter_params(color_jitter)
    if any(v > 0 for k, v in jitter.items() if k != "p"):
        steps.append(A.ColorJitter(**jitter))
    steps.append(A.Normalize(mean=mean, std=std, max_pixel_value=255.0))
    return A.Compose(steps, additional_targets=_TARGETS)


def check_resize_long(resize_long: object) -> tuple[int, int]:
    """``dataset.resize_long`` as (low, high) pixels; anything but two integers 0 < low <= high raises."""
    if (
        not isinstance(resize_long, Sequence)
        or isinstance(resize_long, str | bytes)
        or len(resize_long) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in resize_long)
        or not 0 < resize_long[0] <= resize_long[1]
    ):
        raise DatasetError(
            f"dataset.resize_long must be null or [low, high] pixels with 0 < low <= high, got {resize_long!r}"
        )
    return int(resize_long[0]), int(resize_long[1])


JITTER_KEYS = ("brightness", "contrast", "saturation", "hue", "p")


def color_jitter_params(color_jitter: float | Mapping[str, float]) -> dict[str, float]:
    """``dataset.color_jitter`` (a strength, or a mapping of JITTER_KEYS) -> albumentations ColorJitter kwargs."""
    if isinstance(color_jitter, int | float):
        strength = float(color_jitter)
        params = {"brightness": strength, "contrast": strength, "saturation": strength, "hue": 0.0, "p": 1.0}
    else:
        unknown = set(color_jitter) - set(JITTER_KEYS)
        if unknown:
            raise DatasetError(f"unknown dataset.color_jitter key(s) {sorted(unknown)}; known: {JITTER_KEYS}")
        params = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "p": 1.0}
        params.update({k: float(v) for k, v in color_jitter.items()})
    if any(params[k] < 0 for k in JITTER_KEYS) or params["hue"] > 0.5 or params["p"] > 1:
        raise DatasetError(f"dataset.color_jitter needs values >= 0, hue <= 0.5 and p <= 1, got {color_jitter}")
    return params


def build_val_transform(
    size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> A.Compose:
    """Resize the longer side to ``size``, pad to ``size`` x ``size`` at the top-left (so batches stack)."""
    return A.Compose(
        [
            A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
            _pad(size, mean, "top_left"),
            A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
        ],
        additional_targets=_TARGETS,
    )


_NORMALISE_ONLY = A.Compose(
    [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)], additional_targets=_TARGETS
)


def apply_transform(
    transform: A.Compose | None, image: np.ndarray, mask: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Transform one sample: the single place where the data contract lives.

    (H, W, 3) uint8 image and (H, W) uint8 mask -> (3, h, w) float32 normalised image, (h, w) int64 mask
    (255 = ignore, also on padding) and (h, w) bool ``valid`` (False where the transform padded). Without a
    transform the image is only normalised with the ImageNet statistics.
    """
    out = (transform or _NORMALISE_ONLY)(image=image, mask=mask, valid=np.zeros(mask.shape, dtype=np.uint8))
    image_t = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1), dtype=np.float32))
    mask_t = torch.from_numpy(np.ascontiguousarray(out["mask"])).long()
    valid_t = torch.from_numpy(np.ascontiguousarray(out["valid"]) == 0)
    return image_t, mask_t, valid_t
