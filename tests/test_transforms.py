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
from asdt_lightning.errors import DatasetError


def coded(h=40, w=52, cell=4):
    """An image whose pixels encode their (row, col) and a checkerboard; a mask derived from the same code.

    R = 5 * row, G = 4 * col (exact for h <= 51, w <= 63), B = 200 on checkerboard cells; mask = cell + 1.
    """
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
    image, mask = coded()
    transform = build_train_transform(48, scale_range=(1.0, 1.0), hflip=True)
    transform.set_random_seed(seed)
    image_t, mask_t, valid = apply_transform(transform, image, mask)
    assert image_t.shape == (3, 48, 48) and image_t.dtype == torch.float32
    assert mask_t.shape == valid.shape == (48, 48) and mask_t.dtype == torch.int64 and valid.dtype == torch.bool
    rgb = denormalise(image_t)
    rows = torch.round(rgb[0] / 5).long()
    cols = torch.round(rgb[1] / 4).long()
    assert torch.allclose(rgb[0][valid], rows[valid].float() * 5, atol=0.01)  # unscaled: exact pixels
    # every valid output pixel came from one source pixel, and the mask there is that pixel's mask
    src = torch.from_numpy(mask).long()
    assert torch.equal(mask_t[valid], src[rows[valid], cols[valid]])
    # the valid region is a translated (possibly mirrored) window of the source: rows +1 down, cols +-1 across
    r, c = rows.masked_fill(~valid, -1), cols.masked_fill(~valid, -1)
    vr = valid[1:] & valid[:-1]
    assert ((r[1:] - r[:-1])[vr] == 1).all()
    vc = valid[:, 1:] & valid[:, :-1]
    steps = (c[:, 1:] - c[:, :-1])[vc]
    assert (steps == 1).all() or (steps == -1).all()
    assert (mask_t[~valid] == 255).all()
    assert valid.sum() == 40 * 48  # the 40-pixel-high image was padded to 48 rows
    assert image_t[:, ~valid].abs().max() < 0.02  # padding is the mean colour (to uint8): ~0 once normalised


def test_flip_happens_for_some_seeds_and_not_for_others():
    image, mask = coded()
    transform = build_train_transform(48, scale_range=(1.0, 1.0), hflip=True)
    directions = set()
    for seed in range(12):
        transform.set_random_seed(seed)
        image_t, _, valid = apply_transform(transform, image, mask)
        cols = torch.round(denormalise(image_t)[1] / 4)
        row = valid.nonzero()[0, 0]
        directions.add(float(torch.sign(cols[row, -1] - cols[row, 0])))
    assert directions == {1.0, -1.0}
    no_flip = build_train_transform(48, scale_range=(1.0, 1.0), hflip=False)
    for seed in range(6):
        no_flip.set_random_seed(seed)
        image_t, _, valid = apply_transform(no_flip, image, mask)
        cols = torch.round(denormalise(image_t)[1] / 4)
        row = valid.nonzero()[0, 0]
        assert cols[row, -1] > cols[row, 0]


@pytest.mark.parametrize("seed", range(4))
def test_random_scale_keeps_alignment_up_to_interpolated_edges(seed):
    image, mask = coded(64, 64, cell=16)
    mask = np.where(mask == 2, 20, 1).astype(np.uint8)  # far-apart labels: interpolating them would show
    transform = build_train_transform(48, scale_range=(0.6, 1.4), hflip=True)
    transform.set_random_seed(seed)
    image_t, mask_t, valid = apply_transform(transform, image, mask)
    checker_from_image = torch.where(denormalise(image_t)[2] > 100, 20, 1)
    m = mask_t[None, None].float()
    near_edge = (F.max_pool2d(m, 3, 1, 1) != -F.max_pool2d(-m, 3, 1, 1))[0, 0]
    disagree = (checker_from_image != mask_t) & valid
    assert not (disagree & ~near_edge).any()  # bilinear vs nearest resizing may differ only beside an edge
    assert (checker_from_image[valid] == mask_t[valid]).float().mean() > 0.85
    assert (mask_t[~valid] == 255).all() and set(mask_t[valid].unique().tolist()) <= {1, 20}


def test_scale_factor_is_drawn_from_the_range():
    image, mask = coded(64, 64, cell=16)
    half = build_train_transform(48, scale_range=(0.5, 0.5), hflip=False)
    _, mask_t, valid = apply_transform(half, image, mask)
    assert valid.sum() == 32 * 32  # 64 -> 32, padded to 48
    assert (mask_t[valid].view(32, 32)[:8, :8] == 1).all() and (mask_t[valid].view(32, 32)[:8, 8:16] == 2).all()
    varied = build_train_transform(200, scale_range=(0.7, 1.3), hflip=False)
    sides = set()
    for seed in range(8):
        varied.set_random_seed(seed)
        _, _, valid = apply_transform(varied, image, mask)
        sides.add(int(valid.any(0).sum()))
    assert len(sides) > 3 and min(sides) >= 44 and max(sides) <= 84  # 64 * [0.7, 1.3]
    with pytest.raises(DatasetError, match="scale_range"):
        build_train_transform(48, scale_range=(1.3, 0.7))


def test_resize_long_sets_the_longer_side_whatever_the_photo_size():
    """Two photos of one scene at different resolutions give crops at the same scale (long side in the range)."""
    transform = build_train_transform(200, scale_range=(1.0, 1.0), hflip=False, resize_long=(60, 90))
    for h, w in ((40, 52), (120, 156)):  # the same aspect, 3x the pixels
        image, mask = coded(h, w, cell=4)
        sides = set()
        for seed in range(10):
            transform.set_random_seed(seed)
            _, mask_t, valid = apply_transform(transform, image, mask)
            rows, cols = int(valid.any(1).sum()), int(valid.any(0).sum())
            assert 60 <= cols <= 90 and abs(rows / cols - h / w) < 0.05  # the longer side is set, aspect kept
            assert set(mask_t[valid].unique().tolist()) <= {1, 2} and (mask_t[~valid] == 255).all()
            sides.add(cols)
        assert len(sides) > 4  # drawn at random, not one size
    upscale = build_train_transform(96, scale_range=(1.0, 1.0), hflip=False, resize_long=(96, 96))
    _, _, valid = apply_transform(upscale, *coded(20, 40))
    assert int(valid.any(0).sum()) == 96 and int(valid.any(1).sum()) == 48  # small photos are enlarged


@pytest.mark.parametrize("bad", [(90, 60), (0, 10), (1.5, 3), (64,), 64])
def test_resize_long_refuses_bad_ranges(bad):
    with pytest.raises(DatasetError, match="resize_long"):
        build_train_transform(48, resize_long=bad)


def test_val_transform_resizes_the_long_side_and_pads_bottom_right():
    image, mask = coded(40, 80)
    image_t, mask_t, valid = apply_transform(build_val_transform(64), image, mask)
    assert image_t.shape == (3, 64, 64)
    assert valid[:32].all() and not valid[32:].any()  # 40x80 -> 32x64, padded below
    assert (mask_t[32:] == 255).all() and set(mask_t[:32].unique().tolist()) <= {1, 2}
    assert image_t[:, 32:].abs().max() < 0.02
    tall, tall_mask = coded(50, 20)
    _, _, valid = apply_transform(build_val_transform(100), tall, tall_mask)  # upscaled 2x, padded right
    assert valid[:, :40].all() and not valid[:, 40:].any()


def test_no_transform_only_normalises():
    image, mask = coded(8, 8)
    image_t, mask_t, valid = apply_transform(None, image, mask)
    assert torch.allclose(denormalise(image_t), torch.from_numpy(image).permute(2, 0, 1).float(), atol=1e-3)
    assert torch.equal(mask_t, torch.from_numpy(mask).long()) and valid.all()
