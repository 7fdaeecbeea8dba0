"""Inputs of the teachers and pixel losses at the label grid: resizing of images, masks and logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_grid_size(logits: torch.Tensor, upsample: int = 1) -> tuple[int, int]:
    """(h, w) of pseudo labels, CRFs and pixel losses: the (B, K, h0, w0) logits' size times ``upsample``.

    At output stride 8 a small crop gives too few pixels per object for the pairwise terms to follow its
    outline; the heads' stride-4 skip or ``upsample`` gives them more.
    """
    h, w = logits.shape[-2:]
    return h * upsample, w * upsample


def unnormalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> float RGB in 0..255; ``mean``/``std``: (1, 3, 1, 1) in 0..255 units."""
    return images.float() * std + mean


def rgb_at(rgb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) RGB 0..255 -> (B, 3, *size), area-averaged and clamped to 0..255."""
    return F.interpolate(rgb, size, mode="area").clamp(0, 255)


def valid_at(valid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool -> (B, *size) bool: a low-resolution pixel is valid if most of it is."""
    return F.interpolate(valid[:, None].float(), size, mode="area")[:, 0] > 0.5


def maps_at(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, K, h, w) -> (B, K, *size) float32, bilinear where the size differs."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size, mode="bilinear", align_corners=False)


def masks_at(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) label maps -> (B, *size) long, nearest."""
    return F.interpolate(masks[:, None].float(), size, mode="nearest")[:, 0].long()
