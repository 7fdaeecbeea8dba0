"""How good teacher A's reliable labels are with each CRF: precision and recall of its labels against the truth.

From one checkpoint's (multi-scale) CAMs on training images at the validation transform, the reliable labels of
``reliable_cam_labels`` are computed with no CRF, the local-window CRF and the fully connected CRF at several label
grids (and the exact dense CRF when ``pydensecrf2`` is installed), and scored against the ground-truth masks:

- fg precision: labelled foreground pixels whose class is right; fg recall: foreground pixels labelled right;
- fg on background: labelled foreground pixels that are background in truth; labelled: pixels not ignored;
- bg recall: background pixels labelled background; near objects: the same within ``NEAR_OBJECT_PX`` image pixels
  of an object, the margin R must learn to leave (a margin with no background labels teaches R to grow blobs);
  fg labelled background: foreground pixels labelled background, what a generous background costs.

``--alpha-high`` compares teacher A's generous background power (``model.teacher_a.alpha_high``) at several values,
``--alpha-low`` its conservative one (``model.teacher_a.alpha_low``, where its foreground labels come from),
``--cam-threshold`` adds, for scale, the CAM baseline's maps at those thresholds and R's own prediction,
``--background power otsu`` its background rules (``model.teacher_a.background``).

    python -m benchmarks.teacher_labels --ckpt outputs/<run>/checkpoints/last.ckpt [--images 160] [--md out.md]
    python -m benchmarks.teacher_labels --ckpt ... --grids 2 --alpha-high 8 32
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from scipy import ndimage

from asdt_lightning.constants import IGNORE_INDEX
from asdt_lightning.data.registry import build_datamodule
from asdt_lightning.lit.inference import load_model
from asdt_lightning.method import cam as cam_method
from asdt_lightning.method.cam import TeacherAParams, normalize_cams, reliable_cam_labels
from benchmarks._common import emit, machine_info, md_table, parse_cli

KERNEL_BYTES_PER_CALL = 2 * 2**30  # fully connected kernels labelled at once, at most
NEAR_OBJECT_PX = 8.0  # background within this many image pixels of an object counts as "near objects"
SCORE_KEYS = ("fg_right", "fg_labelled", "fg_truth", "fg_on_bg", "labelled", "valid", "bg_right", "bg_truth")
SCORE_KEYS += ("near_bg_right", "near_bg_truth", "bg_on_fg")


def label_scores(labels: torch.Tensor, masks: torch.Tensor, pixel_step: float = 1.0) -> np.ndarray:
    """Pixel counts of (B, h, w) labels against (B, H, W) truth taken at the labels' size, in ``SCORE_KEYS`` order.

    ``pixel_step``: image pixels per label pixel, for the distance to the nearest object of "near objects".
    """
    truth = F.interpolate(masks[:, None].float(), labels.shape[-2:], mode="nearest")[:, 0].long()
    valid = truth != IGNORE_INDEX
    labelled = (labels != IGNORE_INDEX) & valid
    fg_labelled = labelled & (labels > 0)
    bg_truth = valid & (truth == 0)
    object_px = (valid & (truth > 0)).numpy()
    distance = np.stack(
        [ndimage.distance_transform_edt(~o) if o.any() else np.full(o.shape, np.inf) for o in object_px]
    )
    near = bg_truth & torch.from_numpy(distance * pixel_step <= NEAR_OBJECT_PX)
    bg_right = labelled & (labels == 0)
    counts = [
        (fg_labelled & (labels == truth)).sum(),
        fg_labelled.sum(),
        (valid & (truth > 0)).sum(),
        (fg_labelled & (truth == 0)).sum(),
        labelled.sum(),
        valid.sum(),
        (bg_right & bg_truth).sum(),
        bg_truth.sum(),
        (bg_right & near).sum(),
        near.sum(),
        (bg_right & (truth > 0)).sum(),
    ]
    return np.array([int(c) for c in counts], dtype=np.int64)


def score_row(counts: np.ndarray) -> dict[str, float]:
    """Rates from ``label_scores`` counts summed over images."""
    c = dict(zip(SCORE_KEYS, counts.tolist(), strict=True))
    return {
        "fg_precision": c["fg_right"] / max(c["fg_labelled"], 1),
        "fg_recall": c["fg_right"] / max(c["fg_truth"], 1),
        "fg_on_background": c["fg_on_bg"] / max(c["fg_labelled"], 1),
        "labelled": c["labelled"] / max(c["valid"], 1),
        "bg_recall": c["bg_right"] / max(c["bg_truth"], 1),
        "bg_recall_near_objects": c["near_bg_right"] / max(c["near_bg_truth"], 1),
        "fg_labelled_background": c["bg_on_fg"] / max(c["fg_truth"], 1),
    }


def dense_crf_patch() -> Any:
    """A stand-in for ``mean_field`` that runs the exact dense CRF (pydensecrf2) per image, or None without it."""
    try:
        from asdt_lightning.method.dense_crf import dense_crf_single, load_pydensecrf

        load_pydensecrf()
    except Exception:
        return None

    def mean_field(probs, kernel, params, allowed=None, method=None):  # kernel: (rgb, pixel_step) here
        rgb, step = kernel
        sxy = {"gaussian_sxy": params.gaussian_sxy / step, "bilateral_sxy": params.bilateral_sxy / step}
        scaled = dataclasses.replace(params, **sxy)  # pydensecrf counts in label pixels
        out = torch.zeros_like(probs)
        for i in range(probs.shape[0]):
            p = probs[i] * allowed[i][:, None, None] if allowed is not None else probs[i]
            p = p / p.sum(0, keepdim=True).clamp_min(1e-8)
            image = rgb[i].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
            q = torch.from_numpy(dense_crf_single(np.ascontiguousarray(image), p.numpy(), scaled))
            out[i] = q * allowed[i][:, None, None] if allowed is not None else q
        return out

    def crf_kernel(image, params, pixel_step=1.0):
        return image, pixel_step

    return mean_field, crf_kernel


def variants(
    base: TeacherAParams,
    grids: list[int],
    dense: bool,
    alphas_high: list[float] | None = None,
    backgrounds: list[str] | None = None,
    alphas_low: list[float] | None = None,
) -> list[tuple[str, int, TeacherAParams, bool]]:
    """(name, label-grid multiple of the logits, params, exact dense CRF) for every configuration compared."""
    out = []
    settings = itertools.product(
        grids, alphas_low or [base.alpha_low], alphas_high or [base.alpha_high], backgrounds or [base.background]
    )
    for up, low, alpha, background in settings:
        params = dataclasses.replace(base, alpha_low=low, alpha_high=alpha, background=background)
        crf = params.crf
        no_crf = dataclasses.replace(params, crf=dataclasses.replace(crf, iterations=0))
        out.append(("none (CAM thresholds only)", up, no_crf, False))
        local = dataclasses.replace(crf, connectivity="local")
        out.append((f"local, {crf.window}x{crf.window} window", up, dataclasses.replace(params, crf=local), False))
        full = dataclasses.replace(crf, connectivity="full")
        out.append(("fully connected", up, dataclasses.replace(params, crf=full), False))
        if dense:
            out.append(("exact dense CRF (pydensecrf2)", up, params, True))
    return out


@torch.no_grad()
def run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(args.ckpt).parents[1]
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config_resolved.yaml"), resolve=True)
    data = cfg["dataset"]  # type: ignore[index]
    datamodule = build_datamodule(data, 0)
    cpu = torch.device("cpu")
    module = load_model(args.ckpt, datamodule.class_names, datamodule.has_background, data["name"], cpu)
    dataset = datamodule.dataset(data["train_list"], datamodule.val_transform)
    batch_size = min(16, args.images)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    batches = list(itertools.islice(loader, -(-args.images // batch_size)))
    outputs = [network_outputs(module, batch) for batch in batches]  # one forward per batch for every variant
    dense = dense_crf_patch() if not args.no_dense else None
    rows = []
    settings = variants(
        module.teacher_a, args.grids, dense is not None, args.alpha_high, args.background, args.alpha_low
    )
    for name, up, params, exact in settings:
        counts = np.zeros(len(SCORE_KEYS), dtype=np.int64)
        for batch, (raw_cams, refine_logits) in zip(batches, outputs, strict=True):
            images, image_labels = batch["image"], batch["labels"]
            h, w = refine_logits.shape[-2:]
            size = (h * up, w * up)
            cams = F.interpolate(raw_cams, size, mode="bilinear")
            norm = normalize_cams(cams, image_labels)
            rgb = module.rgb_at(images, size)
            valid = module.valid_at(batch["valid"], size)
            saved = cam_method.mean_field, cam_method.crf_kernel
            if exact:
                cam_method.mean_field, cam_method.crf_kernel = dense
            # a fully connected kernel on a fine grid is large: label a few images at a time
            chunk = len(images)
            if params.crf.connectivity == "full" and not exact:
                chunk = max(1, KERNEL_BYTES_PER_CALL // (4 * (size[0] * size[1]) ** 2))
            step = images.shape[-1] / size[-1]
            try:
                labels = torch.cat(
                    [
                        reliable_cam_labels(
                            rgb[i : i + chunk],
                            norm[i : i + chunk],
                            image_labels[i : i + chunk],
                            params,
                            module.has_background,
                            step,
                            valid[i : i + chunk],
                        )
                        for i in range(0, len(images), chunk)
                    ]
                )
            finally:
                cam_method.mean_field, cam_method.crf_kernel = saved
            counts += label_scores(labels, batch["mask"], step)
        background = "otsu" if params.background == "otsu" else f"power {params.alpha_low:g} / {params.alpha_high:g}"
        rows.append({"crf": name, "grid": f"{size[0]}x{size[1]}", "background": background, **score_row(counts)})
        print(rows[-1], flush=True)
    if args.cam_threshold:
        rows += baseline_rows(module, batches, outputs, args.grids[0], args.cam_threshold)
    images = sum(len(b["name"]) for b in batches)
    return {"machine": machine_info(), "command": args.command, "ckpt": str(args.ckpt), "images": images, "rows": rows}


def network_outputs(module: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's network outputs that every row scores: teacher A's (multi-scale) CAMs (B, C, h, w), float, and
    R's logits (B, K, h, w)."""
    out = module.net(batch["image"])
    return module.training_cams(batch["image"], out.cams).float(), out.refine_logits


def baseline_rows(
    module: Any, batches: list[dict], outputs: list[tuple[torch.Tensor, torch.Tensor]], up: int, thresholds: list[float]
) -> list[dict[str, Any]]:
    """The same scores for what teacher A is measured against: the CAM baseline's maps (argmax over the image's
    classes, background below each threshold of ``thresholds``) and R's prediction (argmax over the image's
    labels), on the same label grid. ``outputs``: ``network_outputs`` of each batch."""
    counts = np.zeros((len(thresholds) + 1, len(SCORE_KEYS)), dtype=np.int64)
    for batch, (raw_cams, refine_logits) in zip(batches, outputs, strict=True):
        images, image_labels = batch["image"], batch["labels"]
        size = (refine_logits.shape[-2] * up, refine_logits.shape[-1] * up)
        cams = F.interpolate(raw_cams, size, mode="bilinear")
        valid = module.valid_at(batch["valid"], size)
        step = images.shape[-1] / size[-1]
        maps = cam_method.cam_label_maps(normalize_cams(cams, image_labels), image_labels, thresholds).long()
        logits = F.interpolate(refine_logits.float(), size, mode="bilinear")
        allowed = cam_method.allowed_labels(image_labels, module.has_background)
        refine = logits.masked_fill(~allowed[:, :, None, None], float("-inf")).argmax(1)
        for i, labels in enumerate([*maps, refine]):
            counts[i] += label_scores(labels.masked_fill(~valid, IGNORE_INDEX), batch["mask"], step)
    names = [f"CAM baseline, background below {t:g} (no CRF)" for t in thresholds] + ["R's prediction"]
    grid = f"{size[0]}x{size[1]}"
    return [{"crf": n, "grid": grid, "background": "-", **score_row(c)} for n, c in zip(names, counts, strict=True)]


def markdown(result: dict[str, Any]) -> str:
    keys = ("fg_precision", "fg_recall", "fg_on_background", "bg_recall", "bg_recall_near_objects")
    keys += ("fg_labelled_background", "labelled")
    rows = [[r["crf"], r["grid"], r["background"], *(f"{100 * r[k]:.1f}%" for k in keys)] for r in result["rows"]]
    header = ["teacher A's CRF", "label grid", "background", "fg precision", "fg recall", "fg labels on background"]
    header += ["bg recall", f"bg recall within {NEAR_OBJECT_PX:g} px of objects", "fg labelled background"]
    header += ["labelled"]
    return (
        "### Teacher A's labels per CRF\n\n"
        f"Command: `{result['command']}`\n\nCheckpoint `{result['ckpt']}`, {result['images']} training images "
        "(validation transform).\n\n" + md_table(header, rows) + "\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", type=Path, required=True, help="an ASDT checkpoint (its run folder has the config)")
    p.add_argument("--images", type=int, default=160, help="training images scored (in batches of 16)")
    p.add_argument("--grids", type=int, nargs="+", default=[1, 2, 8], help="label grid, multiples of the logits")
    p.add_argument(
        "--alpha-high", type=float, nargs="+", default=None, help="teacher A's alpha_high values (default: the run's)"
    )
    p.add_argument(
        "--alpha-low", type=float, nargs="+", default=None, help="teacher A's alpha_low values (default: the run's)"
    )
    p.add_argument(
        "--background", nargs="+", default=None, choices=["power", "otsu"], help="teacher A's background rules"
    )
    p.add_argument(
        "--cam-threshold",
        type=float,
        nargs="+",
        default=None,
        help="also score the CAM baseline at these background thresholds and R's prediction (first grid)",
    )
    p.add_argument("--no-dense", action="store_true", help="skip the exact dense CRF even if pydensecrf2 is here")
    p.add_argument("--md", type=Path, default=None)
    args = parse_cli(p, argv, "teacher_labels")
    result = run(args)
    emit(args, markdown(result))
    return result


if __name__ == "__main__":
    main()
