"""Export pseudo masks of an ASDT checkpoint as VOC-palette PNGs, for a second-stage segmenter.

    python -m asdt_lightning.pseudo_labels ckpt=outputs/<run>/checkpoints/last.ckpt            # synthetic train
    python -m asdt_lightning.pseudo_labels ckpt=... dataset=voc dataset.root=/data/VOCdevkit crf=dense \\
        scales=[1.0,0.5,1.5] flip=true out=/data/pseudo/asdt_train_aug

Masks are written at each image's original size and name (``<out>/<name>.png``), optionally with a per-pixel
confidence map (``<out>/confidence/<name>.png``, uint8: round(255 * confidence)). Every file is written atomically;
a re-run skips the images already done, so an interrupted export resumes and gives the same files as an
uninterrupted one (images are always predicted in the same batches). ``<out>/export.json`` records the settings;
a folder made with other settings is refused.

``layout=voc_server`` writes the PASCAL VOC evaluation server's layout instead,
``<out>/results/VOC2012/Segmentation/comp6_test_cls/<name>.png`` (``export.json`` stays in ``<out>``, outside the
archive), in the segmentation setting: no ground-truth image labels, the classes of every image predicted by the
classifier and R, S and fused over all classes, as ``evaluate image_labels=false`` scores them::

    python -m asdt_lightning.pseudo_labels ckpt=... dataset=voc split=test layout=voc_server out=/data/voc_test
    tar -czf results.tgz -C /data/voc_test results     # the file to upload
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from .cli import run_preflight
from .config import plain_config
from .data.inference import InferenceImages, pad_collate, reader_for, same_size_batches
from .data.voc import write_mask_png
from .errors import ASDTUserError, run_or_exit
from .io_utils import atomic_write, atomic_write_text
from .lit.inference import (
    InferenceParams,
    checkpoint_fusion,
    checkpoint_normalisation,
    crf_params_from,
    label_maps,
    load_model,
    model_outputs,
    predicted_image_labels,
    resolve_device,
)
from .method.dense_crf import CRF_AUTO, auto_crf_note, check_crf, resolve_crf

MANIFEST = "export.json"
LAYOUTS = ("flat", "voc_server")  # <out>/<name>.png | the VOC evaluation server's folders (VOC_SERVER_DIR)
VOC_SERVER_DIR = Path("results/VOC2012/Segmentation/comp6_test_cls")  # comp6: trained with outside data


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file (identifies the checkpoint an export came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def png_ok(path: Path, mode: str) -> bool:
    """True if ``path`` is a complete, readable PNG of the given mode."""
    if not path.is_file():
        return False
    try:
        with Image.open(path) as im:
            if im.format != "PNG" or im.mode != mode:
                return False
            im.load()
    except (OSError, ValueError, SyntaxError):
        return False
    return True


def write_confidence_png(path: Path, confidence: np.ndarray) -> Path:
    """(H, W) confidence in [0, 1] -> greyscale uint8 PNG (round(255 * c)), atomically."""
    image = Image.fromarray(np.round(np.clip(confidence, 0, 1) * 255).astype(np.uint8), mode="L")
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files a killed export may have left (``.<name>.png.<random>.tmp``)."""
    count = 0
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse to add to a folder exported with other settings; otherwise record this export's settings."""
    path = out / MANIFEST
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except ValueError:
            found = None
        if found != manifest:
            ours, theirs = _flatten(manifest), _flatten(found) if isinstance(found, dict) else {}
            keys = sorted(k for k in ours if theirs.get(k) != ours[k])
            raise ASDTUserError(
                f"{out} holds masks exported with other settings (differing: {', '.join(keys) or 'all'}); "
                "choose another out= or delete that folder"
            )
        return
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def fixed_batches(
    names: Sequence[str], sizes: Sequence[tuple[int, int]], batch_size: int, done: set[str]
) -> list[list[int]]:
    """Same-size batches of the full list (always the same ones, so a resumed export predicts each image as an
    uninterrupted one does), without the batches whose images are all done."""
    return [c for c in same_size_batches(sizes, batch_size) if any(names[i] not in done for i in c)]


def prepare_out(out: Path) -> int:
    """Create ``out``; delete the temporaries a killed export left there and in ``confidence/``; returns how many."""
    out.mkdir(parents=True, exist_ok=True)
    conf_dir = out / "confidence"
    return remove_stale_temporaries(out) + (remove_stale_temporaries(conf_dir) if conf_dir.is_dir() else 0)


def is_exported(out: Path, name: str, save_confidence: bool) -> bool:
    """True if image ``name``'s mask (and with ``save_confidence`` its confidence map) is a whole PNG in ``out``."""
    if save_confidence and not png_ok(out / "confidence" / f"{name}.png", "L"):
        return False
    return png_ok(out / f"{name}.png", "P")


def uses_image_labels(dataset: InferenceImages, params: InferenceParams) -> bool:
    """Whether the export takes each image's ground-truth classes (else the classifier's predicted ones)."""
    return dataset.labels_known and params.restrict


def predict_masks(
    module: torch.nn.Module,
    batch: dict[str, Any],
    params: InferenceParams,
    has_background: bool,
    device: torch.device,
    label_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W) label maps and confidences of one collated batch, as numpy arrays.

    ``label_threshold``: for images without image labels (or ``params.restrict`` False), the ASDT classifier's score
    above which a class is taken (``predicted_image_labels``); None: the batch's own image labels."""
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["labels"].to(device)
    if label_threshold is not None and hasattr(module, "branch_probabilities"):
        # e.g. VOC test: the ASDT classifier says which classes each image holds
        labels = predicted_image_labels(module, images, label_threshold)
    outputs = model_outputs(module, images, labels, params.scales, params.flip, params.restrict)
    masks, conf = label_maps(outputs, batch["rgb"].to(device), labels, batch["size"], params, has_background)
    return masks.cpu().numpy(), conf.cpu().numpy()


def write_masks(
    out: Path,
    batch: dict[str, Any],
    masks: np.ndarray,
    conf: np.ndarray,
    skip: set[str],
    save_confidence: bool,
    bar: tqdm,
) -> int:
    """Write the batch's masks (and confidence maps), cropped to each image's size, but those of ``skip``;
    returns how many."""
    written = 0
    for i, name in enumerate(batch["name"]):
        if name in skip:
            continue
        h, w = batch["size"][i]
        if save_confidence:  # the mask is written last: its presence means the image is done
            write_confidence_png(out / "confidence" / f"{name}.png", conf[i, :h, :w])
        write_mask_png(out / f"{name}.png", masks[i, :h, :w].astype(np.uint8))
        written += 1
        bar.update(1)
    return written


def export_summary(images: int, skipped: int, written: int, removed: int, seconds: float) -> dict[str, Any]:
    """What ``export_pseudo_masks`` returns: counts and timing."""
    return {
        "images": images,
        "skipped": skipped,
        "written": written,
        "stale_temporaries_removed": removed,
        "seconds": round(seconds, 2),
        "images_per_second": round(written / seconds, 2) if written and seconds > 0 else None,
    }


def export_pseudo_masks(
    module: torch.nn.Module,
    dataset: InferenceImages,
    out: Path,
    params: InferenceParams,
    has_background: bool,
    device: torch.device,
    batch_size: int = 8,
    num_workers: int = 0,
    save_confidence: bool = False,
    progress: bool = True,
    label_threshold: float = 0.5,
) -> dict[str, Any]:
    """Predict and write the masks of every image of ``dataset`` not yet in ``out``; returns counts and timing.

    Images without image labels (``dataset.labels_known`` False), and every image in the segmentation setting
    (``params.restrict`` False), take the classes the classifier predicts with a sigmoid score above
    ``label_threshold`` (at least the top one)."""
    removed = prepare_out(out)
    names = dataset.names
    done = {n for n in names if is_exported(out, n, save_confidence)}
    batches = fixed_batches(names, dataset.image_sizes(), batch_size, done)
    todo = sum(1 for c in batches for i in c if names[i] not in done)
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=pad_collate,
        pin_memory=device.type == "cuda",
    )
    predicted_labels = None if uses_image_labels(dataset, params) else label_threshold
    start = time.perf_counter()
    written = 0
    with tqdm(total=todo, unit="img", desc="pseudo masks", disable=not progress, dynamic_ncols=True) as bar:
        for batch in loader:
            masks, conf = predict_masks(module, batch, params, has_background, device, predicted_labels)
            written += write_masks(out, batch, masks, conf, done, save_confidence, bar)
    return export_summary(len(names), len(done), written, removed, time.perf_counter() - start)


def default_cam_threshold(ckpt: Path) -> float | None:
    """The CAM's best background threshold from the training run's ``metrics.json`` (beside ``checkpoints/``)."""
    metrics = ckpt.parent.parent / "metrics.json"
    if metrics.is_file():
        try:
            return float(json.loads(metrics.read_text())["cam_threshold"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def inference_params(cfg: dict[str, Any], ckpt: Path | None = None) -> InferenceParams:
    """InferenceParams from the plain pseudo_labels config (conf/pseudo_labels.yaml holds every default), checked
    before the checkpoint is read; ``fusion: null`` (the checkpoint's own) stands as ``max`` until
    ``checkpoint_fusion`` reads it from the loaded model."""
    cam_threshold = cfg["cam_threshold"]
    if cam_threshold is None and cfg["branch"] == "cam" and ckpt is not None:
        cam_threshold = default_cam_threshold(ckpt)
    return InferenceParams(
        branch=cfg["branch"],
        fusion="max" if cfg["fusion"] is None else cfg["fusion"],
        scales=tuple(float(s) for s in cfg["scales"]),
        flip=bool(cfg["flip"]),
        crf=resolve_crf(cfg["crf"]),
        crf_params=crf_params_from(cfg["crf_params"]),
        confidence=float(cfg["confidence"]),
        cam_threshold=None if cam_threshold is None else float(cam_threshold),
        restrict=cfg["layout"] != "voc_server",  # the server's predictions: the segmentation setting
    )


def default_out_dir(ckpt: Path, split: str, layout: str = "flat") -> Path:
    """``<run>/pseudo_masks/<split>`` (``layout=voc_server``: ``<run>/voc_server/<split>``) for a checkpoint at
    ``<run>/checkpoints/<file>.ckpt``."""
    return ckpt.parent.parent / ("voc_server" if layout == "voc_server" else "pseudo_masks") / Path(split).stem


def mask_dir(out: Path, layout: str) -> Path:
    """Where the masks go: ``out`` itself, or the evaluation server's folder under it (``VOC_SERVER_DIR``)."""
    return out / VOC_SERVER_DIR if layout == "voc_server" else out


def check_layout(cfg: dict[str, Any]) -> None:
    """Refuse an unknown layout, or a server export the PASCAL VOC server cannot score, before any work."""
    layout = cfg["layout"]
    if layout not in LAYOUTS:
        raise ASDTUserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout != "voc_server":
        return
    if cfg["dataset"]["name"] != "voc":
        raise ASDTUserError(
            f"layout=voc_server is the PASCAL VOC server's; use dataset=voc, not {cfg['dataset']['name']}"
        )
    if float(cfg["confidence"]) > 0:
        raise ASDTUserError("layout=voc_server needs confidence=0: the server scores labels 0..20 only, not 255")
    if cfg["save_confidence"]:
        raise ASDTUserError("layout=voc_server writes label maps only; set save_confidence=false")


def export_manifest(
    cfg: dict[str, Any], ckpt: Path, params: InferenceParams, dataset: InferenceImages
) -> dict[str, Any]:
    """The settings an export folder records (``export.json``): what a re-run must match to add to it."""
    manifest = {
        "checkpoint_sha256": file_digest(ckpt),
        "dataset": cfg["dataset"]["name"],
        "root": str(dataset.reader.root.resolve()),
        "split": dataset.split,
        "params": {**params.__dict__, "crf_params": params.crf_params.__dict__, "scales": list(params.scales)},
        "save_confidence": bool(cfg["save_confidence"]),
        "batch_size": int(cfg["batch_size"]),
    }
    if not uses_image_labels(dataset, params):
        manifest["predicted_image_labels_threshold"] = float(cfg["label_threshold"])
    if cfg["layout"] != "flat":  # flat folders keep the manifest they had before layouts existed
        manifest["layout"] = cfg["layout"]
    return manifest


def run_export(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check everything cheap, then export. ``cfg``: the plain pseudo_labels config."""
    ckpt = Path(cfg["ckpt"]).expanduser()
    check_layout(cfg)
    params = inference_params(cfg, ckpt)
    check_crf(params.crf)
    if cfg["crf"] == CRF_AUTO:
        print(auto_crf_note(params.crf))
    if params.branch == "cam" and params.cam_threshold is None and cfg["dataset"]["has_background"]:
        raise ASDTUserError(f"branch=cam needs cam_threshold= (no metrics.json beside {ckpt.parent} to take it from)")
    if not 0 < float(cfg["label_threshold"]) < 1:
        raise ASDTUserError(f"label_threshold must lie in (0, 1), got {cfg['label_threshold']}")
    if int(cfg["batch_size"]) < 1:
        raise ASDTUserError(f"batch_size must be >= 1, got {cfg['batch_size']}")
    device = resolve_device(cfg["device"])
    data = cfg["dataset"]
    reader = reader_for(data)
    split = cfg["split"]
    module = load_model(ckpt, reader.class_names, reader.has_background, data["name"], device)
    params = dataclasses.replace(params, fusion=checkpoint_fusion(module, cfg["fusion"]))
    dataset = InferenceImages(reader, split, *checkpoint_normalisation(module, data["mean"], data["std"]))
    layout = cfg["layout"]
    out = Path(cfg["out"]).expanduser() if cfg["out"] else default_out_dir(ckpt, split, layout)
    masks = mask_dir(out, layout)
    check_manifest(out, export_manifest(cfg, ckpt, params, dataset))
    setting = "" if uses_image_labels(dataset, params) else ", without ground-truth image labels"
    print(f"exporting {len(dataset)} masks of '{split}' to {masks} ({params.branch}, crf={params.crf}{setting})")
    summary = export_pseudo_masks(
        module,
        dataset,
        masks,
        params,
        reader.has_background,
        device,
        batch_size=int(cfg["batch_size"]),
        num_workers=int(cfg["num_workers"]),
        save_confidence=bool(cfg["save_confidence"]),
        progress=bool(cfg["progress"]),
        label_threshold=float(cfg["label_threshold"]),
    )
    summary["out"], summary["mask_dir"] = str(out), str(masks)
    rate = f", {summary['images_per_second']} images/s" if summary["images_per_second"] else ""
    print(f"{summary['written']} written, {summary['skipped']} already done{rate}: {masks}")
    if layout == "voc_server":
        summary["upload"] = f"tar -czf results.tgz -C {shlex.quote(str(out))} results"
        print(f"for the evaluation server: {summary['upload']}")
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="pseudo_labels")
def hydra_main(cfg: DictConfig) -> None:
    required = {"ckpt": "ckpt=outputs/<run>/checkpoints/last.ckpt (an ASDT checkpoint)"}
    run_or_exit(lambda: run_export(plain_config(cfg, required)))


def main() -> None:
    """The command line: composition errors (bad option, unknown key) as one line before Hydra starts."""
    run_preflight("pseudo_labels")
    hydra_main()


if __name__ == "__main__":
    main()
