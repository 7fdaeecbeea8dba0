"""Image panels (image | ground truth | CAM | R | S | fused) for a fixed set of validation images.

The drawing functions are pure (tensors/arrays in, uint8 RGB arrays out) so notebooks use them too; the
``ImagePanelLogger`` callback renders the same images after every validation, writes a PNG into the run's folder
and sends it to every W&B and TensorBoard logger, so two runs can be compared image by image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image, ImageDraw

from ..constants import IGNORE_INDEX
from ..data.voc import voc_palette
from ..io_utils import atomic_write

PANEL_COLUMNS = ("image", "ground truth", "CAM", "R", "S", "fused")
_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
_IGNORE_COLOUR = np.array([255, 255, 255], dtype=np.uint8)


def colorize(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W) label indices -> (H, W, 3) uint8 RGB in the VOC colour map; 255 (ignore) is white."""
    labels = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    labels = labels.astype(np.int64)
    rgb = _PALETTE[np.clip(labels, 0, 255)]
    rgb[labels == IGNORE_INDEX] = _IGNORE_COLOUR
    return rgb


def cam_overlay(rgb: np.ndarray, cams: torch.Tensor, has_background: bool = True) -> np.ndarray:
    """Class-coloured CAM heat map over a darkened image.

    ``rgb``: (H, W, 3) uint8; ``cams``: (C, H, W) normalised CAMs in [0, 1] (zero for absent classes). Each pixel
    takes the colour of its strongest class, with the CAM value as its opacity.
    """
    cams = cams.detach().float().cpu().clamp(0, 1)
    strength, cls = cams.max(0)
    label = cls.numpy() + (1 if has_background else 0)
    colour = _PALETTE[label].astype(np.float32)
    alpha = strength.numpy()[..., None]
    base = rgb.astype(np.float32) * 0.35
    return (base * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)


def _tile(array: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 array so that its longer side is ``size`` (nearest: label colours stay exact)."""
    h, w = array.shape[:2]
    scale = size / max(h, w)
    if scale == 1:
        return array
    return np.asarray(Image.fromarray(array).resize((round(w * scale), round(h * scale)), Image.NEAREST))


def panel_row(
    rgb: np.ndarray,
    mask: np.ndarray | torch.Tensor,
    outputs: Mapping[str, torch.Tensor],
    has_background: bool = True,
    tile: int = 192,
) -> np.ndarray:
    """One image's row: image | ground truth | CAM | R | S | fused, each ``tile`` pixels on its longer side.

    ``outputs`` holds one image's ``ASDTModule.branch_probabilities``: ``cam`` (C, H, W) and ``refine``,
    ``student``, ``fused`` (K, H, W) probabilities.
    """
    tiles = [rgb, colorize(mask), cam_overlay(rgb, outputs["cam"], has_background)]
    tiles += [colorize(outputs[b].argmax(0)) for b in ("refine", "student", "fused")]
    tiles = [_tile(t, tile) for t in tiles]
    gap = np.full((tiles[0].shape[0], 2, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for t in tiles:
        parts += [t, gap]
    return np.concatenate(parts[:-1], axis=1)


def draw_label(array: np.ndarray, text: str, xy: tuple[int, int] = (3, 3)) -> np.ndarray:
    """``text`` in white on a black box at ``xy`` of an (H, W, 3) uint8 image: readable on light and dark images."""
    image = Image.fromarray(array)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox(xy, text)
    draw.rectangle((left - 2, top - 2, right + 1, bottom + 1), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255))
    return np.asarray(image)


def panel_grid(rows: Sequence[np.ndarray], names: Sequence[str] | None = None) -> np.ndarray:
    """Stack rows under a header naming the columns; each row's image name on its left edge."""
    width = rows[0].shape[1]
    tile_w = (width - 2 * (len(PANEL_COLUMNS) - 1)) // len(PANEL_COLUMNS)
    header = Image.new("RGB", (width, 14), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    for i, title in enumerate(PANEL_COLUMNS):
        draw.text((i * (tile_w + 2) + 3, 1), title, fill=(0, 0, 0))
    blocks = [np.asarray(header)]
    for i, row in enumerate(rows):
        row = row.copy()
        if names is not None:
            row = draw_label(row, names[i])
        blocks += [row, np.full((2, width, 3), 255, dtype=np.uint8)]
    return np.concatenate(blocks[:-1], axis=0)


@torch.no_grad()
def render_panels(module: Any, batch: Mapping[str, Any], tile: int = 192) -> np.ndarray:
    """The panel grid of a validation batch through ``module`` (an ``ASDTModule``), in eval mode.

    The module's training mode is restored afterwards.
    """
    was_training = module.training
    module.eval()
    try:
        images = batch["image"].to(module.device)
        labels = batch["labels"].to(module.device)
        outputs = module.branch_probabilities(images, labels)
        rgb = module.rgb_at(images, tuple(images.shape[-2:])).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    finally:
        module.train(was_training)
    rows = []
    for i in range(images.shape[0]):
        one = {k: v[i] for k, v in outputs.items()}
        rows.append(panel_row(rgb[i], batch["mask"][i], one, module.has_background, tile))
    names = [str(n) for n in batch["name"]] if "name" in batch else None
    return panel_grid(rows, names)


def fixed_indices(dataset_size: int, count: int) -> list[int]:
    """``count`` indices spread evenly over a dataset (the same ones in every run of the same data)."""
    count = min(count, dataset_size)
    if count <= 0:
        return []
    return sorted(set(np.linspace(0, dataset_size - 1, count).round().astype(int).tolist()))


def good_samples(dataset: Any, indices: list[int]) -> list[dict[str, Any]]:
    """The samples at ``indices``; one that ``on_bad_sample=skip`` skips is replaced by the next good one."""
    samples, taken = [], set()
    for start in indices:
        for i in range(start, start + len(dataset)):
            i %= len(dataset)
            if i in taken:
                continue
            sample = dataset[i]
            if isinstance(sample, dict):  # a BadSample otherwise
                samples.append(sample)
                taken.add(i)
                break
    return samples


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG, atomically."""
    return atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


class ImagePanelLogger(L.Callback):
    """After every validation (not the sanity check), renders the panel grid of a fixed set of validation images.

    Writes ``<out_dir>/panels/val_step<step>.png`` and logs the grid as ``val/panels`` to W&B and TensorBoard
    loggers. Runs on global rank 0 only.
    """

    def __init__(self, num_images: int = 4, out_dir: str | Path | None = None, tile: int = 192) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        self.num_images, self.tile = num_images, tile
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._batch: dict[str, Any] | None = None
        self.written: list[Path] = []

    def _fixed_batch(self, trainer: L.Trainer) -> dict[str, Any] | None:
        if self._batch is None:
            loaders = trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
            dataset = getattr(loader, "dataset", None)
            if dataset is None:
                return None
            samples = good_samples(dataset, fixed_indices(len(dataset), self.num_images))
            self._batch = torch.utils.data.default_collate(samples) if samples else None
        return self._batch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.num_images == 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        batch = self._fixed_batch(trainer)
        if batch is None:
            return
        grid = render_panels(pl_module, batch, self.tile)
        step = trainer.global_step
        if self.out_dir is not None:
            self.written.append(write_png(self.out_dir / "panels" / f"val_step{step:06d}.png", grid))
        caption = "image | ground truth | CAM | R | S | fused: " + ", ".join(str(n) for n in batch["name"])
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/panels", images=[grid], step=step, caption=[caption])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/panels", grid, step, dataformats="HWC")


def resize_to(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) integer labels -> (*size) by nearest neighbour (to show a low-resolution label map at image size)."""
    return F.interpolate(mask[None, None].float(), size, mode="nearest")[0, 0].long()
