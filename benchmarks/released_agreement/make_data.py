"""Reference outputs of the released ASDT code (lifuguan/ASDT at 470d780) on real photos, for agreement tests.

Rerun (from the repository root):

    python benchmarks/released_agreement/make_data.py --released /tmp/released --out tests/data/released_agreement

``--released`` is an export of the released repository (GPL; run, never copied here):
``git -C <mirror of lifuguan/ASDT> archive 470d780 | tar -x -C /tmp/released``; it needs ``opencv-python-headless``
and ``pydensecrf2``. For ``dense_energy.npz`` its permutohedral extension must be built in place:
``cd /tmp/released/wrapper/bilateralfilter && LDFLAGS=-fopenmp python setup.py build_ext --inplace`` (the shipped
SWIG wrapper compiles as is; without ``-fopenmp`` at link time the module does not import). Without it only the
exact Gaussian energy is written.

Per crop (``<name>.npz``): the inputs made here from the photo's real mask (``rgb``, ``image_labels``,
``norm_cam``, ``refine_logits``, ``student_logits``, ``roi``, ``gt_mask``) and the released outputs
(``labels_a``: ``tool.myTool.compute_seg_label``; ``labels_b``: ``train_from_cls_weight._crf_with_alpha`` on
softmax(refine_logits), argmax; ``labels_inference``: ``infer_RRM._crf_with_alpha`` on the per-class max of
softmax(refine_logits) and softmax(student_logits), argmax). See ``tests/data/released_agreement/README.md``.
This script is never run by the tests.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

VOC = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco128_train2017" / "VOC2012"
# the colour of a padded pixel: the released crop pads the normalised image with 0, i.e. the ImageNet mean,
# which its de-normalisation turns back into int((0 * std + mean) * 255) per channel
PAD_RGB = np.array([int(m * 255.0) for m in (0.485, 0.456, 0.406)], dtype=np.uint8)  # (123, 116, 103)
NUM_FG = 20
# the stored maps are kept compressible (the data folder stays small) by a coarse grid, exact in float16:
CAM_STEP = 1.0 / 256.0  # norm_cam values are multiples of this
LOGIT_STEP = 1.0 / 4.0  # logits are multiples of this
OFF_LOGIT = -128.0  # the logit of every class that occurs nowhere in the map: its softmax is exactly 0


@dataclass(frozen=True)
class Crop:
    name: str  # output file stem
    photo: str  # COCO id (JPEGImages/<photo>.jpg, SegmentationClass/<photo>.png)
    scale: float  # the photo (and its mask) is resized by this first (PIL bilinear / nearest)
    top: int  # box in the resized photo; may reach outside it (padded)
    left: int
    height: int
    width: int


CROPS = (
    Crop("bicycle_dog_person", "000000000074", 0.76, 0, 40, 321, 321),
    Crop("dog", "000000000394", 0.55, 8, 16, 321, 321),
    Crop("car_person", "000000000328", 0.66, 0, 50, 321, 321),
    Crop("chairs_table", "000000000283", 0.75, 60, 0, 321, 321),
    Crop("person_padded", "000000000357", 0.5, -26, 90, 161, 161),
    Crop("cat_person_sofa_small", "000000000443", 0.335, 0, 25, 161, 161),
    Crop("chair_person_small", "000000000315", 0.4, 5, 40, 161, 161),
    Crop("bus_person_small", "000000000471", 0.4, 30, 40, 120, 200),
)
DENSE_CROPS = ("person_padded", "bus_person_small")


def load_crop(crop: Crop, voc: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The crop's (H, W, 3) uint8 RGB, (H, W) uint8 VOC mask (0..20, 255) and (H, W) bool not-padded mask."""
    img = Image.open(voc / "JPEGImages" / f"{crop.photo}.jpg").convert("RGB")
    gt = Image.open(voc / "SegmentationClass" / f"{crop.photo}.png")
    if crop.scale != 1.0:
        size = (round(img.width * crop.scale), round(img.height * crop.scale))
        img = img.resize(size, Image.BILINEAR)
        gt = gt.resize(size, Image.NEAREST)
    img_np, gt_np = np.asarray(img), np.asarray(gt)
    h, w = gt_np.shape
    rgb = np.empty((crop.height, crop.width, 3), np.uint8)
    rgb[:] = PAD_RGB
    mask = np.full((crop.height, crop.width), 255, np.uint8)
    roi = np.zeros((crop.height, crop.width), bool)
    y0, x0 = max(crop.top, 0), max(crop.left, 0)
    y1, x1 = min(crop.top + crop.height, h), min(crop.left + crop.width, w)
    dst = (slice(y0 - crop.top, y1 - crop.top), slice(x0 - crop.left, x1 - crop.left))
    rgb[dst] = img_np[y0:y1, x0:x1]
    mask[dst] = gt_np[y0:y1, x0:x1]
    roi[dst] = True
    return rgb, mask, roi


def filled_mask(mask: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """The mask with its 255 pixels given the nearest valid label and the padding set to background."""
    invalid = mask == 255
    out = mask.copy()
    if invalid.any():
        _, (iy, ix) = ndimage.distance_transform_edt(invalid, return_indices=True)
        out = mask[iy, ix]
    out[~roi] = 0
    return out


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-12)


def cam_like(rng: np.random.Generator, mask: np.ndarray, filled: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(20, H, W) float16 CAM-like maps: per present class a blurred, peaked distance map of its mask, a weaker
    false peak in the background and low-frequency noise; clipped at 0, divided by (max + 1e-5), rounded to
    CAM_STEP."""
    h, w = mask.shape
    size = max(min(h, w) / 321.0, 0.5)
    cams = np.zeros((NUM_FG, h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for c in np.flatnonzero(labels):
        inside = mask == c + 1
        dist = ndimage.distance_transform_edt(inside)
        peak = (dist / dist.max()) ** rng.uniform(0.4, 0.7)
        cam = ndimage.gaussian_filter(peak, rng.uniform(8.0, 12.0) * size)
        top = cam.max()
        away = (filled == 0) & (ndimage.distance_transform_edt(~inside) > 20 * size)
        if away.any():
            k = rng.integers(away.sum())
            py, px = np.argwhere(away)[k]
            radius = rng.uniform(8.0, 14.0) * size
            bump = np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * radius**2))
            cam = cam + rng.uniform(0.3, 0.5) * top * bump
        cam = cam + 0.06 * top * smooth_noise(rng, (h, w), 24.0 * size)
        cam = np.maximum(cam, 0.0).astype(np.float32)
        cams[c] = cam / (cam.max() + 1e-5)
    return (np.round(cams / CAM_STEP) * CAM_STEP).astype(np.float16)


def logits_like(rng: np.random.Generator, filled: np.ndarray, labels: np.ndarray, gain: float) -> np.ndarray:
    """(21, H, W) float16 logits: gain * the blurred one-hot of the mask with a few wrong blobs, plus smooth
    noise, on the channels that occur; the other channels are OFF_LOGIT. Rounded to LOGIT_STEP."""
    h, w = filled.shape
    size = max(min(h, w) / 321.0, 0.5)
    lab = filled.copy()
    absent = np.flatnonzero(labels == 0) + 1
    choices = np.concatenate([[0], np.flatnonzero(labels) + 1, rng.choice(absent, 1)])
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(3):
        cy, cx = rng.integers(h), rng.integers(w)
        radius = rng.uniform(6.0, 18.0) * size
        wrong = [c for c in choices if c != lab[cy, cx]]
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = rng.choice(wrong)
    logits = np.full((NUM_FG + 1, h, w), OFF_LOGIT, np.float64)
    for c in np.unique(lab):
        onehot = (lab == c).astype(np.float64)
        blurred = ndimage.gaussian_filter(onehot, rng.uniform(2.0, 4.0) * size)
        logits[c] = gain * blurred + 0.8 * smooth_noise(rng, (h, w), 8.0 * size)
    return (np.round(logits / LOGIT_STEP) * LOGIT_STEP).astype(np.float16)


def softmax21(logits16: np.ndarray) -> torch.Tensor:
    """The convention of the stored data: torch.softmax over dim 0 of the float32 of the float16 logits."""
    return torch.softmax(torch.from_numpy(logits16.astype(np.float32)), dim=0)


def fractions(labels: np.ndarray) -> dict[str, float]:
    n = labels.size
    return {
        "fg": float(((labels >= 1) & (labels <= NUM_FG)).sum() / n),
        "bg": float((labels == 0).sum() / n),
        "ignore": float((labels == 255).sum() / n),
    }


def agreement(labels: np.ndarray, gt: np.ndarray) -> float:
    """Pixel accuracy of the labelled pixels against the true mask (where the mask is valid)."""
    keep = (labels != 255) & (gt != 255)
    return float((labels[keep] == gt[keep]).mean()) if keep.any() else float("nan")


def import_released(released: Path):
    sys.path[:0] = [str(released), str(released / "wrapper" / "bilateralfilter")]
    my_tool = importlib.import_module("tool.myTool")
    train = importlib.import_module("train_from_cls_weight")
    infer = importlib.import_module("infer_RRM")
    return my_tool, train, infer


def make_crop(crop: Crop, index: int, voc: Path, my_tool, train, infer, out: Path) -> dict:
    rng = np.random.default_rng(1000 + index)
    rgb, mask, roi = load_crop(crop, voc)
    present = np.unique(mask[(mask >= 1) & (mask <= NUM_FG)])
    image_labels = np.zeros(NUM_FG, np.uint8)
    image_labels[present - 1] = 1
    filled = filled_mask(mask, roi)

    norm_cam = cam_like(rng, mask, filled, image_labels)
    refine_logits = logits_like(rng, filled, image_labels, gain=rng.uniform(4.0, 6.0))
    student_logits = logits_like(rng, filled, image_labels, gain=rng.uniform(3.0, 5.0))

    labels_a = my_tool.compute_seg_label(rgb.copy(), image_labels.copy(), norm_cam.astype(np.float32))
    p_refine = softmax21(refine_logits)
    p_student = softmax21(student_logits)
    labels_b = np.argmax(train._crf_with_alpha(p_refine, rgb.copy()), 0)
    fused = torch.maximum(p_refine, p_student)  # elementwise larger of the two, not renormalised
    labels_inf = np.argmax(infer._crf_with_alpha(fused, rgb.copy()), 0)

    np.savez_compressed(
        out / f"{crop.name}.npz",
        rgb=rgb,
        image_labels=image_labels,
        norm_cam=norm_cam,
        refine_logits=refine_logits,
        student_logits=student_logits,
        roi=roi.astype(np.uint8),
        gt_mask=mask,
        labels_a=labels_a.astype(np.uint8),
        labels_b=labels_b.astype(np.uint8),
        labels_inference=labels_inf.astype(np.uint8),
        photo=np.array(f"{crop.photo}.jpg"),
        scale=np.float64(crop.scale),
        box=np.array([crop.top, crop.left, crop.height, crop.width], np.int64),
    )
    row = {
        "name": crop.name,
        "photo": crop.photo,
        "size": f"{crop.height}x{crop.width}",
        "classes": [int(c) for c in present],
        **fractions(labels_a),
        "acc_a": agreement(labels_a, mask),
        "acc_b": agreement(labels_b, mask),
        "acc_inf": agreement(labels_inf, mask),
    }
    print(row, flush=True)
    return row


# ---- the dense-CRF energy loss ----------------------------------------------------------------------------


def downscale(rgb: np.ndarray, probs: torch.Tensor, roi: np.ndarray, labels: np.ndarray, factor: float):
    """The released loss's resizing by ``factor``: images, ROIs and labels nearest, probabilities bilinear
    (align_corners=False), all by scale_factor (torch.nn.functional.interpolate)."""
    f = torch.nn.functional
    img = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32))[None]
    img_s = f.interpolate(img, scale_factor=factor)[0]
    probs_s = f.interpolate(probs[None], scale_factor=factor, mode="bilinear", align_corners=False)[0]
    roi_s = f.interpolate(torch.from_numpy(roi.astype(np.float32))[None, None], scale_factor=factor)[0, 0]
    lab_s = f.interpolate(torch.from_numpy(labels.astype(np.float64))[None, None], scale_factor=factor)[0, 0]
    return img_s.numpy(), probs_s.numpy(), roi_s.numpy(), lab_s.numpy().astype(np.uint8)


def gate_of(probs: np.ndarray, roi: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Released gating: ROI minus the max probability, 1 on ignore (255) pixels, negatives to 0."""
    gate = roi - probs.max(0)
    gate[labels == 255] = 1.0
    return np.maximum(gate, 0.0)


def exact_filter(img: np.ndarray, values: np.ndarray, sigma_rgb: float, sigma_xy: float) -> np.ndarray:
    """sum_j k(i, j) values[:, j] over all j (j = i included), float64, k the unnormalised Gaussian."""
    _, h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    feats = np.concatenate(
        [np.stack([xx.ravel(), yy.ravel()], 1) / sigma_xy, img.reshape(3, -1).T.astype(np.float64) / sigma_rgb], 1
    )
    vals = values.reshape(values.shape[0], -1).T.astype(np.float64)
    sq = (feats**2).sum(1)
    out = np.empty_like(vals)
    for s in range(0, feats.shape[0], 2048):
        block = feats[s : s + 2048]
        d2 = sq[s : s + 2048, None] + sq[None, :] - 2.0 * block @ feats.T
        out[s : s + 2048] = np.exp(-0.5 * np.maximum(d2, 0.0)) @ vals
    return out.T.reshape(values.shape)


def dense_energy(names: tuple[str, ...], out: Path, weight: float, sigma_rgb: float, sigma_xy: float):
    factor = 0.5
    try:
        bf = importlib.import_module("bilateralfilter")
        del_mod = importlib.import_module("DenseEnergyLoss")
    except ImportError as err:
        print("no permutohedral extension:", err)
        bf = del_mod = None
    store: dict[str, np.ndarray] = {
        "weight": np.float64(weight),
        "sigma_rgb": np.float64(sigma_rgb),
        "sigma_xy": np.float64(sigma_xy),
        "scale_factor": np.float64(factor),
    }
    for name in names:
        data = np.load(out / f"{name}.npz")
        probs = softmax21(data["refine_logits"])
        img_s, probs_s, roi_s, lab_s = downscale(data["rgb"], probs, data["roi"], data["labels_a"], factor)
        sxy = sigma_xy * factor
        gate = gate_of(probs_s, roi_s, lab_s)
        seg = probs_s * roi_s[None]
        ws = exact_filter(img_s, seg, sigma_rgb, sxy)
        exact = -weight * float((seg.astype(np.float64) * gate[None] * ws).sum())
        grad = -2.0 * weight * gate[None] * ws * roi_s[None]
        row = {
            f"{name}/image": img_s,
            f"{name}/probs": probs_s,
            f"{name}/roi": roi_s.astype(np.uint8),
            f"{name}/label": lab_s,
            f"{name}/loss_exact": np.float64(exact),
            f"{name}/grad_exact": grad.astype(np.float32),
        }
        msg = f"{name}: {img_s.shape[1]}x{img_s.shape[2]} exact {exact:.6e}"
        if bf is not None:
            filtered = np.zeros(seg.size, np.float32)
            k, h, w = seg.shape
            flat = seg.astype(np.float32).ravel()
            bf.bilateralfilter_batch(img_s.ravel(), flat, filtered, 1, k, h, w, sigma_rgb, sxy)
            mine = -weight * float(np.dot(flat, filtered * np.repeat(gate[None], k, 0).ravel()))
            released_value, released_grad = run_released_loss(del_mod, data, probs, weight, sigma_rgb, sigma_xy)
            row[f"{name}/loss_permutohedral"] = np.float64(released_value)
            row[f"{name}/grad_permutohedral"] = released_grad
            rel = abs(released_value - exact) / abs(exact)
            msg += f" permutohedral {released_value:.6e} (direct call {mine:.6e}), relative diff {rel:.4%}"
            filt_rel = np.abs(filtered.reshape(seg.shape) - ws).sum() / np.abs(ws).sum()
            msg += f"; filtered W S relative L1 diff {filt_rel:.4%}"
        store.update(row)
        print(msg, flush=True)
    np.savez_compressed(out / "dense_energy.npz", **store)


def run_released_loss(del_mod, data, probs, weight, sigma_rgb, sigma_xy) -> tuple[float, np.ndarray]:
    """The released DenseEnergyLoss on the CPU (Tensor.cuda made a copy, as the GPU move is) with its inputs
    shaped as its training loop passes them; returns the value and d loss / d downscaled probabilities."""
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self.clone()
    try:
        layer = del_mod.DenseEnergyLoss(weight=weight, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, scale_factor=0.5)
        images = torch.from_numpy(data["rgb"].transpose(2, 0, 1)[None].astype(np.float32))
        rois = torch.from_numpy(data["roi"][None].astype(np.float32))
        seg_label = torch.from_numpy(data["labels_a"][None, None].astype(np.float64))
        value = float(layer(images, probs[None], rois, seg_label).item())
        # the gradient with respect to the downscaled probabilities: the inner Function on the layer's inputs
        f = torch.nn.functional
        segs = f.interpolate(probs[None], scale_factor=0.5, mode="bilinear", align_corners=False).requires_grad_()
        imgs = f.interpolate(images, scale_factor=0.5)
        rois_s = f.interpolate(rois.unsqueeze(1), scale_factor=0.5).squeeze(1)
        unl = (f.interpolate(seg_label, scale_factor=0.5, mode="nearest").long() == 255).squeeze(1)
        loss = weight * del_mod.DenseEnergyLossFunction.apply(imgs, segs, sigma_rgb, sigma_xy * 0.5, rois_s, unl)
        loss.sum().backward()
        return value, segs.grad[0].numpy().astype(np.float32)
    finally:
        torch.Tensor.cuda = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--released", type=Path, required=True, help="export of lifuguan/ASDT at 470d780")
    parser.add_argument("--out", type=Path, default=Path("tests/data/released_agreement"))
    parser.add_argument("--voc", type=Path, default=VOC, help="the coco128 VOC2012 folder")
    parser.add_argument("--skip-crops", action="store_true", help="only redo dense_energy.npz from the crops")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    my_tool, train, infer = import_released(args.released.resolve())
    if not args.skip_crops:
        rows = [make_crop(c, i, args.voc, my_tool, train, infer, args.out) for i, c in enumerate(CROPS)]
        print("| crop | photo | size | classes | labels_a fg | bg | ignore |")
        for r in rows:
            cls = " ".join(map(str, r["classes"]))
            print(
                f"| {r['name']} | {r['photo']}.jpg | {r['size']} | {cls} | {r['fg']:.3f} | {r['bg']:.3f} "
                f"| {r['ignore']:.3f} |"
            )
    dense_energy(DENSE_CROPS, args.out, weight=1e-7, sigma_rgb=15.0, sigma_xy=100.0)


if __name__ == "__main__":
    main()
