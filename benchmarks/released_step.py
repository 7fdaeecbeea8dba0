"""One ``experiment=voc_released`` training step against the released code's own loss functions.

Two phases, two processes (the released code is GPL: it is run from its own checkout, never copied here):

1. ``python -m benchmarks.released_step dump``: two real photos (``../shared/data/coco128_train2017``) as a fixed
   64 x 64 batch with 8 padded columns, through the ``voc_released`` network at seed 0 (ResNet-38, random
   weights, eval mode): writes ``tests/data/released_step/step.npz`` (the uint8 crops, crop masks, image labels,
   the multi-scale CAMs the loss sees, R's and S's logits and the classifier's logits).
2. ``python benchmarks/released_step.py reference --released /tmp/released``: loads that file and runs the
   released ``tool/myTool.py`` (``compute_cam_up``, ``compute_seg_label``, ``compute_joint_loss``) and
   ``DenseEnergyLoss.py`` on it, on the CPU (``Tensor.cuda`` made a no-op), with one substitution: its compiled
   permutohedral ``bilateralfilter`` module is replaced by the exact Gaussian sum it approximates (numpy,
   float64). Writes ``tests/data/released_step/reference.json``: closs, celoss, dloss, celoss2, dloss2, the
   total ``closs + (celoss + dloss) * 0.5 + (celoss2 + dloss2) * 0.5`` and teacher A's label map.

``tests/test_released_step.py`` feeds the stored network outputs to our objective and compares.
``/tmp/released``: ``git -C <mirror of lifuguan/ASDT> archive 470d780 tool DenseEnergyLoss.py | tar -x -C
/tmp/released`` (it needs ``opencv-python-headless`` and ``pydensecrf2``).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "released_step"
ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128_train2017" / "VOC2012"
NAMES = ("000000000073", "000000000086")  # a motorbike; a motorbike and a person (VOC classes 14; 14, 15)
SIZE, PAD = 64, 8


def fixed_batch() -> dict[str, np.ndarray]:
    """(2, 64, 64, 3) uint8 crops (the last 8 columns padding, at the released mean colour), (2, 64, 64) crop
    masks and (2, 20) image labels from the photos' real masks."""
    from PIL import Image

    rgb = np.zeros((len(NAMES), SIZE, SIZE, 3), np.uint8)
    roi = np.zeros((len(NAMES), SIZE, SIZE), bool)
    labels = np.zeros((len(NAMES), 20), np.float32)
    for i, name in enumerate(NAMES):
        photo = Image.open(ROOT / "JPEGImages" / f"{name}.jpg").convert("RGB").resize((SIZE - PAD, SIZE))
        mask = np.asarray(Image.open(ROOT / "SegmentationClass" / f"{name}.png").resize((SIZE - PAD, SIZE), 0))
        rgb[i] = (124, 116, 104)  # the released RandomCrop pads with 0 in normalised units: the mean colour
        rgb[i, :, : SIZE - PAD] = np.asarray(photo)
        roi[i, :, : SIZE - PAD] = True
        for c in np.unique(mask):
            if 0 < c < 255:
                labels[i, c - 1] = 1
    return {"rgb": rgb, "roi": roi, "labels": labels}


def dump() -> None:
    import torch
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from asdt_lightning.data.voc import VOC_CLASSES
    from asdt_lightning.io_utils import atomic_write
    from asdt_lightning.train import build_module

    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=voc_released"])
    config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "backbone", "dataset")}
    torch.manual_seed(0)
    module = build_module(config, list(VOC_CLASSES)).eval()
    batch = fixed_batch()
    rgb = torch.from_numpy(batch["rgb"]).permute(0, 3, 1, 2).float()
    images = (rgb - module.image_mean) / module.image_std
    with torch.no_grad():
        out = module(images)
        cams = module.training_cams(images, out.cams)
    arrays = {
        **batch,
        "cams": cams.numpy(),
        "class_logits": out.class_logits.numpy(),
        "refine_logits": out.refine_logits.numpy(),
        "student_logits": out.student_logits.numpy(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write(OUT / "step.npz", lambda f: np.savez_compressed(f, **arrays))
    print({k: v.shape for k, v in arrays.items()})


def exact_bilateral_module() -> types.ModuleType:
    """A stand-in for the released ``bilateralfilter`` extension: the exact Gaussian sum, self included, of the
    features (x / sxy, y / sxy, r / srgb, g / srgb, b / srgb) its lattice approximates."""

    def bilateralfilter_batch(images, ins, outs, n, k, h, w, sigma_rgb, sigma_xy):
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        img = np.asarray(images, np.float64).reshape(n, 3, h * w)
        seg = np.asarray(ins, np.float64).reshape(n, k, h * w)
        result = np.zeros((n, k, h * w))
        for i in range(n):
            feats = np.concatenate([np.stack([xs, ys], -1).reshape(-1, 2) / sigma_xy, img[i].T / sigma_rgb], 1)
            sq = (feats**2).sum(1)
            kernel = np.exp(-np.clip(sq[:, None] + sq[None] - 2 * feats @ feats.T, 0, None) / 2)
            result[i] = seg[i] @ kernel.T
        outs[:] = result.reshape(-1).astype(np.float32)

    module = types.ModuleType("bilateralfilter")
    module.bilateralfilter = None
    module.bilateralfilter_batch = bilateralfilter_batch
    return module


def reference(released: Path) -> None:
    import torch
    import torch.nn.functional as F

    # the released functions move everything to a GPU; .cuda() makes a copy there, which some of its in-place
    # edits rely on (DenseEnergyLoss unsqueeze_s ROIs after Gate = ROIs.cuda())
    torch.Tensor.cuda = lambda self, *args, **kwargs: self.clone()
    sys.modules["bilateralfilter"] = exact_bilateral_module()
    sys.path.insert(0, str(released))
    from DenseEnergyLoss import DenseEnergyLoss
    from tool.myTool import compute_cam_up, compute_joint_loss, compute_seg_label

    data = np.load(OUT / "step.npz")
    b = data["rgb"].shape[0]
    ori_images = data["rgb"].transpose(0, 3, 1, 2)  # (B, 3, H, W) uint8, as get_data_from_chunk_v2 returns them
    label = torch.from_numpy(data["labels"])
    cams = torch.from_numpy(data["cams"])
    w, h = ori_images.shape[2], ori_images.shape[3]
    cam_up = compute_cam_up(cams, label, w, h, b)
    seg_label1 = np.zeros((b, w, h))
    for i in range(b):
        norm_cam = cam_up[i] / (np.max(cam_up[i], (1, 2), keepdims=True) + 1e-5)
        seg_label1[i] = compute_seg_label(ori_images[i].transpose(1, 2, 0), label[i].numpy(), norm_cam)
    critersion = torch.nn.CrossEntropyLoss(weight=None, ignore_index=255, reduction="mean")
    energy = DenseEnergyLoss(weight=1e-7, sigma_rgb=15.0, sigma_xy=100, scale_factor=0.5)
    croppings = data["roi"].transpose(1, 2, 0).astype(np.float64)  # (H, W, B) as the released loader gives
    terms = {"closs": float(F.multilabel_soft_margin_loss(torch.from_numpy(data["class_logits"]), label))}
    for suffix, logits in (("", "refine_logits"), ("2", "student_logits")):
        ce, d = compute_joint_loss(
            ori_images, torch.from_numpy(data[logits]), seg_label1, croppings, critersion, energy
        )
        terms[f"celoss{suffix}"], terms[f"dloss{suffix}"] = float(ce), float(d)
    terms["loss"] = (
        terms["closs"] + (terms["celoss"] + terms["dloss"]) * 0.5 + (terms["celoss2"] + terms["dloss2"]) * 0.5
    )
    fractions = {v: float((seg_label1 == v).mean()) for v in np.unique(seg_label1)}
    print(json.dumps(terms, indent=1), fractions)
    result = {"terms": terms, "labels_a": seg_label1.astype(int).tolist()}
    (OUT / "reference.json").write_text(json.dumps(result) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="phase", required=True)
    sub.add_parser("dump")
    ref = sub.add_parser("reference")
    ref.add_argument("--released", type=Path, required=True, help="an export of lifuguan/ASDT at 470d780")
    args = parser.parse_args()
    dump() if args.phase == "dump" else reference(args.released)


if __name__ == "__main__":
    main()
