"""mIoU of a checkpoint (per branch, with and without CRF) or of a folder of predicted PNGs, against ground truth.

    python -m asdt_lightning.evaluate ckpt=outputs/<run>/checkpoints/last.ckpt           # pseudo masks, all branches
    python -m asdt_lightning.evaluate ckpt=... image_labels=false                      # the segmentation setting, val
    python -m asdt_lightning.evaluate ckpt=... split=val 'crfs=[none,dense]' scales=[1.0,0.5,1.5] flip=true
    python -m asdt_lightning.evaluate pred_dir=outputs/<run>/pseudo_masks/train split=train   # a PNG folder
    python -m asdt_lightning.evaluate ckpt=outputs/segment/<run>/checkpoints/last.ckpt      # a second-stage model

Scores follow the VOC benchmark: one confusion matrix over all pixels of the split at each image's original
size, background included, ground-truth 255 ignored, IoU = TP / (TP + FP + FN) per class, mean over the classes
present in the ground truth or the prediction. A predicted 255 (an unlabelled pseudo-mask pixel) counts as a miss.
ASDT branches are restricted to each image's ground-truth classes (the pseudo-mask setting); with
``image_labels=false`` they are not (the segmentation setting that one-stage papers report: R, S and fused over all
classes, the CAM over the classes its classifier predicts). The CAM is scored at its best background threshold on
the split unless ``cam_threshold`` is given. ``split: null`` follows the setting, as the literature reports it:
pseudo masks on ``dataset.pseudo_mask_list`` (VOC ``train``, 1,464 images), the segmentation setting and
second-stage checkpoints on ``dataset.val_list``. Writes ``results.json``,
``results.md`` and a confusion-matrix figure per entry to ``out`` (default: the Hydra run folder).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .cli import run_preflight
from .config import plain_config
from .constants import IGNORE_INDEX
from .data.inference import InferenceImages, pad_collate, reader_for, same_size_batches
from .data.voc import read_mask
from .errors import ASDTUserError, run_or_exit
from .io_utils import atomic_write, atomic_write_text
from .lit.inference import (
    CRFKernels,
    InferenceParams,
    checkpoint_fusion,
    checkpoint_kind,
    checkpoint_normalisation,
    crf_params_from,
    label_maps,
    load_model,
    model_outputs,
    predicted_image_labels,
    read_checkpoint,
    resolve_device,
)
from .method.cam import CAM_THRESHOLDS, cam_label_maps
from .method.dense_crf import CRF_CHOICES, check_crf
from .method.fusion import BRANCH_CHOICES
from .metrics import (
    BRANCH_TITLES,  # noqa: F401  (importers of evaluate.BRANCH_TITLES; its home is metrics)
    ConfusionMatrices,
    ConfusionMatrix,
    branch_title,
    label_names,
    scores_table,
    segmentation_scores,
)

CACHE_BYTES = 2 << 30  # first-pass batches (CAMs, images, CRF kernels) the CAM + CRF pass may reuse from memory
Job = tuple[str, str]  # (branch, crf) of one report entry


def report_scores(confusion: torch.Tensor, unlabelled: torch.Tensor, names: Sequence[str]) -> dict[str, Any]:
    """One entry of the report: ``segmentation_scores`` with the confusion matrix and unlabelled counts."""
    confusion, unlabelled = confusion.cpu(), unlabelled.cpu()
    return {
        **segmentation_scores(confusion, names, unlabelled),
        "confusion": confusion.tolist(),
        "unlabelled": unlabelled.tolist(),
    }


def best_threshold(confusions: torch.Tensor, names: Sequence[str]) -> int:
    """The index of the (T, K, K) confusion matrix of highest mIoU (the first on ties)."""
    confusions = confusions.cpu()
    return max(range(len(confusions)), key=lambda i: segmentation_scores(confusions[i], names)["miou"])


def entry_title(branch: str, crf: str, fusion: str = "max") -> str:
    """``branch_title`` of a report entry, with its CRF."""
    return branch_title(branch, fusion) + ("" if crf == "none" else f" + {crf} CRF")


def report_fusion(report: dict[str, Any]) -> str:
    """How the report's fused branch fused R and S (``max`` for reports without a checkpoint)."""
    return report.get("params", {}).get("fusion", "max")


@dataclasses.dataclass
class ScoredBatch:
    """One batch's network maps and what scoring them takes: images' RGB and labels, ground truth, CRF kernels."""

    outputs: dict[str, torch.Tensor]
    rgb: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor  # (B, H, W) ground truth, kept on the CPU
    sizes: list[tuple[int, int]]
    kernels: CRFKernels

    def to(self, device: torch.device | str, keys: Sequence[str] | None = None) -> ScoredBatch:
        """A copy on ``device`` holding only the maps in ``keys`` (None: all)."""
        outputs = {k: v.to(device) for k, v in self.outputs.items() if keys is None or k in keys}
        rgb, labels, kernels = self.rgb.to(device), self.labels.to(device), self.kernels.to(device)
        return ScoredBatch(outputs, rgb, labels, self.masks, self.sizes, kernels)

    @property
    def nbytes(self) -> int:
        tensors = [*self.outputs.values(), self.rgb, self.labels, self.masks]
        return sum(t.numel() * t.element_size() for t in tensors) + self.kernels.nbytes


def forward_batch(
    module: torch.nn.Module, batch: dict[str, Any], params: InferenceParams, device: torch.device
) -> ScoredBatch:
    """The network's maps of one collated batch (one forward per scale and flip), ready for scoring."""
    images, labels = batch["image"].to(device), batch["labels"].to(device)
    if not params.restrict and hasattr(module, "branch_probabilities"):  # the segmentation setting
        labels = predicted_image_labels(module, images)
    outputs = model_outputs(module, images, labels, params.scales, params.flip, params.restrict)
    return ScoredBatch(outputs, batch["rgb"].to(device), labels, batch["mask"], list(batch["size"]), CRFKernels())


def score_jobs(
    batch: ScoredBatch,
    jobs: Sequence[Job],
    params: InferenceParams,
    cam_threshold: float | None,
    has_background: bool,
    acc: dict[Job, ConfusionMatrix],
) -> None:
    """Add every (branch, crf) job's label maps of ``batch`` to its accumulator; CRF kernels are shared."""
    for branch, crf in jobs:
        job = dataclasses.replace(
            params, branch=branch if branch != "segmenter" else "fused", crf=crf, cam_threshold=cam_threshold
        )
        pred, _ = label_maps(batch.outputs, batch.rgb, batch.labels, batch.sizes, job, has_background, batch.kernels)
        acc[(branch, crf)].update(pred.cpu(), batch.masks.cpu())


class BatchCache:
    """First-pass batches kept (on the CPU, up to ``budget`` bytes) for the CAM + CRF pass, which then needs no
    second forward nor CRF kernel for them; the batches that did not fit are recomputed."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self.batches: dict[int, ScoredBatch] = {}

    def offer(self, index: int, batch: ScoredBatch) -> None:
        kept = batch.to("cpu", keys=["cam"])
        if self.used + kept.nbytes <= self.budget:
            self.batches[index] = kept
            self.used += kept.nbytes

    def missing(self, count: int) -> list[int]:
        return [i for i in range(count) if i not in self.batches]

    def drain(self, device: torch.device) -> Iterator[ScoredBatch]:
        while self.batches:
            yield self.batches.pop(next(iter(self.batches))).to(device)
        self.used = 0


def base_dataset(dataset: InferenceImages | Subset) -> InferenceImages:
    """The ``InferenceImages`` of ``dataset``: itself, or the one a ``Subset`` takes its images from."""
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def evaluation_batches(dataset: InferenceImages | Subset, batch_size: int) -> list[list[int]]:
    """Same-size batches of ``dataset``'s images (no padding: scores do not depend on the batch size)."""
    sizes = base_dataset(dataset).image_sizes()
    if isinstance(dataset, Subset):
        sizes = [sizes[i] for i in dataset.indices]
    return same_size_batches(sizes, batch_size)


def evaluation_jobs(
    branches: Sequence[str], crfs: Sequence[str], sweep_cam: bool
) -> tuple[list[Job], list[Job], list[Job]]:
    """Every distinct (branch, crf) job; those the first pass scores; the CAM + CRF jobs of the second pass.

    With ``sweep_cam`` the CAM's jobs wait for the sweep's threshold: without CRF it is the sweep's own entry,
    with a CRF it takes the second pass."""
    jobs = list(dict.fromkeys((b, c) for b in branches for c in crfs))
    first = [(b, c) for b, c in jobs if not (sweep_cam and b == "cam")]
    cam_crfs = [(b, c) for b, c in jobs if sweep_cam and b == "cam" and c != "none"]
    return jobs, first, cam_crfs


@dataclasses.dataclass
class ForwardPasses:
    """Loads batches of a dataset (``pad_collate``) and gives each one's network maps (``forward_batch``)."""

    module: torch.nn.Module
    dataset: InferenceImages | Subset
    params: InferenceParams
    device: torch.device
    num_workers: int = 0
    progress: bool = True

    def __call__(self, batches: list[list[int]], desc: str) -> Iterator[ScoredBatch]:
        data = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers, collate_fn=pad_collate)
        for batch in tqdm(data, desc=desc, unit="batch", disable=not self.progress, dynamic_ncols=True):
            yield forward_batch(self.module, batch, self.params, self.device)


class CAMSweep:
    """The CAM's confusion matrices at every background threshold (without CRF), and the best threshold."""

    def __init__(self, thresholds: Sequence[float], num_labels: int, device: torch.device) -> None:
        self.thresholds = thresholds
        self.confusions = ConfusionMatrices(len(thresholds), num_labels, sync_on_compute=False).to(device)

    def update(self, batch: ScoredBatch) -> None:
        cams = batch.outputs["cam"]
        self.confusions.update(cam_label_maps(cams, batch.labels, self.thresholds), batch.masks.to(cams.device))

    def best(self, names: Sequence[str]) -> tuple[float, dict[str, Any]]:
        """The threshold of highest mIoU and the CAM's report entry at it."""
        confusions, unlabelled = self.confusions.counts()
        best = best_threshold(confusions, names)
        return float(self.thresholds[best]), report_scores(confusions[best], unlabelled[best], names)


def cam_crf_pass(
    forward: ForwardPasses,
    batches: list[list[int]],
    cache: BatchCache,
    jobs: Sequence[Job],
    cam_threshold: float,
    acc: dict[Job, ConfusionMatrix],
) -> None:
    """The sweep's second pass: the CAM + CRF ``jobs`` at the chosen threshold, over the first pass's batches kept
    in ``cache`` and a new forward of the others."""
    missing = [batches[i] for i in cache.missing(len(batches))]
    desc = f"CAM + CRF at threshold {cam_threshold}"
    has_background = base_dataset(forward.dataset).has_background
    for batch in chain(cache.drain(forward.device), forward(missing, desc) if missing else ()):
        score_jobs(batch, jobs, forward.params, cam_threshold, has_background, acc)


def assemble_results(
    acc: dict[Job, ConfusionMatrix], names: Sequence[str], cam_scores: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """``{branch: {crf: report entry}}`` of every job; the CAM without CRF is ``cam_scores`` (the sweep's) if given."""
    results: dict[str, dict[str, Any]] = {}
    for (branch, crf), accumulator in acc.items():
        swept = (branch, crf) == ("cam", "none") and cam_scores is not None
        results.setdefault(branch, {})[crf] = cam_scores if swept else report_scores(*accumulator.counts(), names)
    return results


def evaluate_model(
    module: torch.nn.Module,
    dataset: InferenceImages | Subset,
    branches: Sequence[str],
    crfs: Sequence[str],
    params: InferenceParams,
    device: torch.device,
    cam_thresholds: Sequence[float] = CAM_THRESHOLDS,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = True,
    cache_bytes: int = CACHE_BYTES,
) -> dict[str, Any]:
    """Scores of every (branch, crf) of a model on a dataset with masks.

    ``branches``: ASDT branches (``cam``, ``refine``, ``student``, ``fused``) or ``["segmenter"]``. Each batch
    takes one network pass (per scale and flip) and one CRF kernel shared by all its branches. With
    ``params.cam_threshold`` None the CAM (without CRF) is scored at every threshold and the best is kept; its CRF
    rows then take a second pass at that threshold, over the first pass's batches kept in memory (up to
    ``cache_bytes``) and a new forward for the rest.
    """
    base = base_dataset(dataset)
    names = label_names(base.class_names, base.has_background)
    sweep_cam = "cam" in branches and base.has_background and params.cam_threshold is None
    jobs, first, cam_crfs = evaluation_jobs(branches, crfs, sweep_cam)
    acc = {job: ConfusionMatrix(len(names), sync_on_compute=False) for job in jobs}
    sweep = CAMSweep(cam_thresholds, len(names), device) if sweep_cam else None
    batches = evaluation_batches(dataset, batch_size)
    forward = ForwardPasses(module, dataset, params, device, num_workers, progress)
    start = time.perf_counter()
    cache = BatchCache(cache_bytes if cam_crfs else 0)
    for index, batch in enumerate(forward(batches, "evaluating")):
        if sweep is not None:
            sweep.update(batch)
        score_jobs(batch, first, params, params.cam_threshold, base.has_background, acc)
        if cam_crfs:
            cache.offer(index, batch)
    cam_threshold = params.cam_threshold
    cam_scores: dict[str, Any] | None = None  # the CAM without CRF at the sweep's threshold
    if sweep is not None:
        cam_threshold, cam_scores = sweep.best(names)
        if cam_crfs:
            cam_crf_pass(forward, batches, cache, cam_crfs, cam_threshold, acc)
    return {
        "results": assemble_results(acc, names, cam_scores),
        "cam_threshold": cam_threshold if "cam" in branches else None,
        "label_names": names,
        "images": len(dataset),
        "seconds": round(time.perf_counter() - start, 1),
    }


def evaluate_folder(pred_dir: Path, dataset: InferenceImages, names_subset: Sequence[str] | None = None) -> dict:
    """Scores of ``<pred_dir>/<name>.png`` label maps against the ground truth of every image of the list.

    Every prediction must exist and have its image's size (checked before scoring; one-line errors).
    """
    reader = dataset.reader
    names = list(names_subset if names_subset is not None else dataset.names)
    if not pred_dir.is_dir():
        raise ASDTUserError(f"prediction folder {pred_dir} not found")
    missing = [n for n in names if not (pred_dir / f"{n}.png").is_file()]
    if missing:
        raise ASDTUserError(
            f"{len(missing)} of {len(names)} images of '{dataset.split}' have no prediction in {pred_dir} "
            f"(e.g. {missing[0]}.png)"
        )
    labels = label_names(dataset.class_names, dataset.has_background)
    acc = ConfusionMatrix(len(labels), sync_on_compute=False)
    start = time.perf_counter()
    for name in names:
        path = reader.mask_file(name)
        assert path is not None  # InferenceImages(require_masks=True) checked it
        gt = reader.read_label_map(path)
        pred = read_mask(pred_dir / f"{name}.png")
        if pred.shape != gt.shape:
            raise ASDTUserError(
                f"prediction {pred_dir / f'{name}.png'} is {pred.shape[1]}x{pred.shape[0]} but the ground truth is "
                f"{gt.shape[1]}x{gt.shape[0]}; predictions must have the original image size"
            )
        bad = (pred != IGNORE_INDEX) & (pred >= len(labels))
        if bad.any():
            raise ASDTUserError(
                f"prediction {pred_dir / f'{name}.png'} holds label {int(pred[bad].max())} but the dataset has "
                f"{len(labels)} labels (0..{len(labels) - 1}, 255 = ignore)"
            )
        acc.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))
    return {
        "results": {"folder": {"none": report_scores(*acc.counts(), labels)}},
        "cam_threshold": None,
        "label_names": labels,
        "images": len(names),
        "seconds": round(time.perf_counter() - start, 1),
    }


def summary_table(results: dict[str, dict[str, Any]], fusion: str = "max") -> str:
    """Markdown: one row per branch, one mIoU column per CRF setting (``fusion``: the fused branch's)."""
    crfs = list(dict.fromkeys(c for per_crf in results.values() for c in per_crf))
    header = " | ".join("mIoU (%)" if c == "none" else f"mIoU + {c} CRF (%)" for c in crfs)
    lines = [f"| branch | {header} |", "|---|" + "---:|" * len(crfs)]
    for branch, per_crf in results.items():
        cells = [f"{100 * per_crf[c]['miou']:.2f}" if c in per_crf else "-" for c in crfs]
        lines.append(f"| {branch_title(branch, fusion)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown: what was evaluated, the summary and per-class IoU/precision/recall."""
    source = report.get("checkpoint") or report.get("pred_dir")
    threshold = report["cam_threshold"]
    fusion = report_fusion(report)
    lines = [
        f"# Evaluation on '{report['split']}' ({report['dataset']}, {report['images']} images)",
        "",
        f"Source: `{source}`" + (f"; CAM background threshold {threshold}" if threshold is not None else ""),
        "",
        summary_table(report["results"], fusion),
    ]
    for branch, per_crf in report["results"].items():
        for crf, scores in per_crf.items():
            lines += ["", f"## {entry_title(branch, crf, fusion)}", "", scores_table({"": scores})]
    return "\n".join(lines) + "\n"


def check_figure_backend() -> None:
    """matplotlib is needed for the confusion figures; say how to get it before any work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ASDTUserError(
            "the confusion-matrix figure needs matplotlib: pip install 'asdt-lightning[report]', or set figure=false"
        ) from None


def confusion_figure(confusion: Sequence[Sequence[int]], label_names: Sequence[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix (recall per ground-truth class) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion, dtype=np.float64)
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    k = len(label_names)
    size = max(4.0, 0.35 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), label_names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), label_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=10)
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if rows[i, j] >= 0.005:
                    colour = "white" if rows[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out: Path, figure: bool) -> None:
    """``results.json``, ``results.md`` and (``figure``) ``confusion_<branch>[_<crf>].png`` in ``out``."""
    atomic_write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "results.md", results_markdown(report))
    if figure:
        for branch, per_crf in report["results"].items():
            for crf, scores in per_crf.items():
                suffix = "" if crf == "none" else f"_{crf}_crf"
                title = f"{entry_title(branch, crf, report_fusion(report))}, "
                title += f"'{report['split']}' mIoU {100 * scores['miou']:.1f}%"
                path = out / f"confusion_{branch}{suffix}.png"
                confusion_figure(scores["confusion"], report["label_names"], title, path)


def check_evaluate_config(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Check every setting that needs neither data nor a model; returns the branches and CRFs to evaluate."""
    if bool(cfg["ckpt"]) == bool(cfg["pred_dir"]):
        raise ASDTUserError("give exactly one of ckpt=<checkpoint> (a model) or pred_dir=<folder of PNGs>")
    crfs = list(cfg["crfs"] or ["none"])
    for crf in crfs:
        check_crf(crf)
    if len(set(crfs)) != len(crfs) or not set(crfs) <= set(CRF_CHOICES):
        raise ASDTUserError(f"crfs must be distinct values of {', '.join(CRF_CHOICES)}, got {crfs}")
    branches = list(cfg["branches"] or BRANCH_CHOICES)
    unknown = [b for b in branches if b not in BRANCH_CHOICES]
    if unknown:
        raise ASDTUserError(f"unknown branch(es) {unknown}; choose from {', '.join(BRANCH_CHOICES)}")
    if cfg["figure"]:
        check_figure_backend()
    limit = cfg["limit"]
    if limit is not None and int(limit) < 1:
        raise ASDTUserError(f"limit must be a positive number of images or null, got {limit}")
    return branches, crfs


def evaluate_params(cfg: dict[str, Any]) -> InferenceParams:
    """InferenceParams from the plain evaluate config, checked before the checkpoint is read; ``fusion: null`` (the
    checkpoint's own) stands as ``max`` until ``checkpoint_fusion`` reads it from the loaded model."""
    return InferenceParams(
        fusion="max" if cfg["fusion"] is None else cfg["fusion"],
        scales=tuple(float(s) for s in cfg["scales"]),
        flip=bool(cfg["flip"]),
        crf_params=crf_params_from(cfg["crf_params"]),
        cam_threshold=None if cfg["cam_threshold"] is None else float(cfg["cam_threshold"]),
        restrict=bool(cfg["image_labels"]),
    )


def folder_report(cfg: dict[str, Any], dataset: InferenceImages) -> dict[str, Any]:
    """The report entries of a folder of predicted PNGs (``pred_dir``), over the first ``limit`` images if given."""
    limit, pred_dir = cfg["limit"], cfg["pred_dir"]
    names = dataset.names[: int(limit)] if limit else None
    scores = evaluate_folder(Path(pred_dir).expanduser(), dataset, names)
    return {"pred_dir": str(pred_dir), "kind": "folder", **scores}


def checkpoint_report(
    cfg: dict[str, Any], dataset: InferenceImages, branches: list[str], crfs: list[str]
) -> dict[str, Any]:
    """The report entries of a checkpoint (``ckpt``): its kind, the settings used and ``evaluate_model``'s scores,
    over the first ``limit`` images if given."""
    params = evaluate_params(cfg)
    device = resolve_device(cfg["device"])
    reader, ckpt, limit = dataset.reader, cfg["ckpt"], cfg["limit"]
    module = load_model(ckpt, reader.class_names, reader.has_background, cfg["dataset"]["name"], device)
    params = dataclasses.replace(params, fusion=checkpoint_fusion(module, cfg["fusion"]))
    dataset.normalise_as(*checkpoint_normalisation(module, cfg["dataset"]["mean"], cfg["dataset"]["std"]))
    kind = "asdt" if hasattr(module, "branch_probabilities") else "segmenter"  # as checkpoint_kind said
    subset = Subset(dataset, range(min(int(limit), len(dataset)))) if limit else dataset
    used: dict[str, Any] = {"scales": list(params.scales), "flip": params.flip, "image_labels": params.restrict}
    if kind == "asdt":
        used["fusion"] = params.fusion  # the fused branch's title names it
    scores = evaluate_model(
        module,
        subset,
        ["segmenter"] if kind == "segmenter" else branches,
        crfs,
        params,
        device,
        batch_size=int(cfg["batch_size"]),
        num_workers=int(cfg["num_workers"]),
        progress=bool(cfg["progress"]),
    )
    return {"checkpoint": str(ckpt), "kind": kind, "params": used, **scores}


def peek_checkpoint_kind(path: str | Path) -> str:
    """``checkpoint_kind`` of the checkpoint at ``path``, its weights memory-mapped rather than read (cheap); a file
    that does not map (missing, foreign, legacy format) takes ``read_checkpoint``'s one-line error or full read."""
    try:
        ckpt = torch.load(Path(path).expanduser(), map_location="cpu", mmap=True, weights_only=False)
    except Exception:
        ckpt = None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        ckpt = read_checkpoint(path)
    return checkpoint_kind(ckpt)


def default_split(cfg: dict[str, Any]) -> str:
    """``split``, or with ``split: null`` the setting's list: ``dataset.pseudo_mask_list`` for pseudo masks
    (``image_labels`` true), ``dataset.val_list`` for the segmentation setting and second-stage checkpoints."""
    if cfg["split"] is not None:
        return str(cfg["split"])
    data = cfg["dataset"]
    segmenter = bool(cfg["ckpt"]) and peek_checkpoint_kind(cfg["ckpt"]) == "segmenter"
    if cfg["image_labels"] and not segmenter:
        return str(data.get("pseudo_mask_list") or data["train_list"])
    return str(data["val_list"])


def run_evaluate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check everything cheap, then evaluate and write the report. ``cfg``: the plain evaluate config."""
    branches, crfs = check_evaluate_config(cfg)
    data, split = cfg["dataset"], default_split(cfg)
    reader = reader_for(data)
    out = Path(cfg["out"]).expanduser()
    dataset = InferenceImages(reader, split, data["mean"], data["std"], require_masks=True)
    report: dict[str, Any] = {"dataset": data["name"], "split": split, "limit": cfg["limit"]}
    report["split_images"] = len(dataset)
    if cfg["pred_dir"]:
        report.update(folder_report(cfg, dataset))
    else:
        report.update(checkpoint_report(cfg, dataset, branches, crfs))
    write_report(report, out, bool(cfg["figure"]))
    print(summary_table(report["results"], report_fusion(report)))
    setting = "" if report.get("params", {}).get("image_labels", True) else ", without image labels"
    print(f"({report['images']} images of '{split}'{setting}; results in {out})")
    return report


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def hydra_main(cfg: DictConfig) -> None:
    run_or_exit(lambda: run_evaluate(plain_config(cfg)))


def main() -> None:
    """The command line: composition errors (bad option, unknown key) as one line before Hydra starts."""
    run_preflight("evaluate")
    hydra_main()


if __name__ == "__main__":
    main()
