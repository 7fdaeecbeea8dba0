"""The mask and the validity map follow the image's geometry exactly."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asdt_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    apply_transform,
    build_train_transform,
    build_val_transform,
)


def coded(h=40, w=52, cell=4):
    """An image whose pixels encode their position, and a mask derived from the same code."""
    yy, xx = np.mgrid[0:h, 0:w]
    checker = (yy // cell + xx // cell) % 2
    image = np.stack([yy * 5 % 256, xx * 4 % 256, checker * 200], -1).astype(np.uint8)
    mask = checker.astype(np.uint8) + 1  # a checkerboard of classes 1 and 2
    return image, mask


def denormalise(image_t):
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (image_t * std + mean) * 255


@pytest.mark.parametrize("seed", range(6))
def test_crop_and_flip_keep_mask_and_image_aligned_pixel_by_pixel(seed):
    import random

    random.seed(seed)
    np.random.seed(seed)
    image, mask = coded()
    transform = build_train_transform(48, scale_range=(1.0, 1.0), hflip=True)
    transform.set_random_seed(seed)
    image_t, mask_t, valid = apply_transform(transform, image, mask)
    assert image_t.shape == (3, 48, 48) and mask_t.shape == valid.shape == (48, 48)
    rgb = denormalise(image_t)
    checker_from_image = (rgb[2] > 100).long() + 1  # the image's blue channel carries the checkerboard
    assert torch.equal(checker_from_image[valid], mask_t[valid])
    assert (mask_t[~valid] == 255).all()
    assert valid.float().mean() < 1.0  # the 40-pixel-high image needed padding to 48
    assert image_t[:, ~valid].abs().max() < 0.02  # padding is the mean colour (to uint8): ~0 once normalised


@pytest.mark.parametrize("seed", range(4))
def test_random_scale_keeps_alignment_up_to_interpolated_edges(seed):
    image, mask = coded(64, 64, cell=16)
    transform = build_train_transform(48, scale_range=(0.6, 1.4), hflip=True)
    transform.set_random_seed(seed)
    image_t, mask_t, valid = apply_transform(transform, image, mask)
    checker_from_image = (denormalise(image_t)[2] > 100).long() + 1
    m = mask_t[None, None].float()
    near_edge = (F.max_pool2d(m, 3, 1, 1) != -F.max_pool2d(-m, 3, 1, 1))[0, 0]
    disagree = (checker_from_image != mask_t) & valid
    assert not (disagree & ~near_edge).any()  # bilinear vs nearest resizing may differ only beside an edge
    assert (checker_from_image[valid] == mask_t[valid]).float().mean() > 0.85


def test_val_transform_resizes_the_long_side_and_pads_bottom_right():
    image, mask = coded(40, 80)
    image_t, mask_t, valid = apply_transform(build_val_transform(64), image, mask)
    assert image_t.shape == (3, 64, 64)
    assert valid[:32].all() and not valid[32:].any()  # 40x80 -> 32x64, padded below
    assert (mask_t[32:] == 255).all() and set(mask_t[:32].unique().tolist()) <= {1, 2}


def test_no_transform_only_normalises():
    image, mask = coded(8, 8)
    image_t, mask_t, valid = apply_transform(None, image, mask)
    assert torch.allclose(denormalise(image_t), torch.from_numpy(image).permute(2, 0, 1).float(), atol=1e-3)
    assert torch.equal(mask_t, torch.from_numpy(mask).long()) and valid.all()
