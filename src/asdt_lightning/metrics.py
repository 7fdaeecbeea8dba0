"""Segmentation metrics from confusion matrices (the VOC benchmark's definition), label and branch names, tables.

One accumulator (``ConfusionMatrices``, a torchmetrics ``Metric``; ``ConfusionMatrix`` for one prediction) and
one definition of the scores of a confusion matrix (``confusion_scores``; ``segmentation_scores`` is its JSON
form) serve training validation, the second stage and ``evaluate`` alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from .constants import IGNORE_INDEX

FUSED_TITLE = "fused ({fusion} R, S)"
BRANCH_TITLES = {
    "cam": "CAM teacher (A)",
    "refine": "refinement teacher (R)",
    "student": "student (S)",
    "fused": FUSED_TITLE.format(fusion="max"),
    "segmenter": "second stage",
    "folder": "PNG folder",
}


def branch_title(branch: str, fusion: str = "max") -> str:
    """``BRANCH_TITLES[branch]`` (an unknown branch: its own name); the fused branch names its fusion rule."""
    return FUSED_TITLE.format(fusion=fusion) if branch == "fused" else BRANCH_TITLES.get(branch, branch)


def label_names(class_names: Sequence[str], has_background: bool) -> list[str]:
    """The name of every label: ``background`` first when the dataset has one, then the classes."""
    return (["background"] if has_background else []) + list(class_names)


def confusion_counts(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """``M`` confusion matrices of ``M`` predictions of the same targets, with one ``torch.bincount``.

    Pixels whose target is ``ignore_index`` are not counted. A prediction of ``ignore_index`` on a labelled pixel
    (a pseudo mask's unconfident pixel) is counted apart, per ground-truth class ("unlabelled").
    Args:
        preds: (M, *S) labels in [0, K) or ``ignore_index``; target: (*S) labels in [0, K) or ``ignore_index``.
    Returns:
        (M, K, K) int64 counts (rows: ground truth, cols: prediction) and (M, K) int64 unlabelled counts.
    """
    if preds.shape[1:] != target.shape:
        raise ValueError(f"predictions {tuple(preds.shape)} are not (M, *{tuple(target.shape)}) like the target")
    m, k = preds.shape[0], num_classes
    keep = target.reshape(-1) != ignore_index
    labels = target.reshape(-1)[keep].long()
    pred = preds.reshape(m, -1)[:, keep].long()
    unlabelled = pred == ignore_index
    bad_target = ((labels < 0) | (labels >= k)).any()
    bad_pred = (((pred < 0) | (pred >= k)) & ~unlabelled).any()
    bad_target, bad_pred = torch.stack([bad_target, bad_pred]).tolist()  # one device sync for both checks
    if bad_target:
        raise ValueError(f"ground-truth labels must lie in [0, {k}) or be {ignore_index}")
    if bad_pred:
        raise ValueError(f"predicted labels must lie in [0, {k}) or be {ignore_index}")
    # column k of each row counts the unlabelled pixels: (M, K, K + 1) cells in one bincount (in place: ``pred``
    # is a copy made by the indexing above)
    cells = pred.masked_fill_(unlabelled, k).add_(labels * (k + 1))
    cells.add_(torch.arange(m, device=cells.device)[:, None] * (k * (k + 1)))
    counts = torch.bincount(cells.reshape(-1), minlength=m * k * (k + 1)).view(m, k, k + 1)
    return counts[..., :k], counts[..., k]


class ConfusionMatrices(Metric):
    """``M`` confusion matrices (and unlabelled counts) of ``M`` predictions of the same targets, summed over
    batches (and DDP ranks); see ``confusion_counts``, which each ``update`` calls once for all ``M``.

    ``compute``: (M, K, K) int64 (rows: ground truth); ``counts``: that and the (M, K) unlabelled counts.
    ``kwargs``: torchmetrics ``Metric`` options (``sync_on_compute=False``: this process's counts only).
    """

    full_state_update = False
    confmat: torch.Tensor
    unlabelled: torch.Tensor

    def __init__(self, count: int, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.count, self.num_classes, self.ignore_index = count, num_classes, ignore_index
        self.add_state("confmat", torch.zeros(count, num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("unlabelled", torch.zeros(count, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds: (M, *S) labels in [0, K) or ``ignore_index``; target: (*S) labels in [0, K) or ``ignore_index``."""
        if preds.shape[0] != self.count or preds.shape[1:] != target.shape:
            raise ValueError(f"expected predictions ({self.count}, *{tuple(target.shape)}), got {tuple(preds.shape)}")
        confmat, unlabelled = confusion_counts(preds, target, self.num_classes, self.ignore_index)
        self.confmat += confmat
        self.unlabelled += unlabelled

    def compute(self) -> torch.Tensor:
        return self.confmat.clone()

    def counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The confusion matrices and the unlabelled counts, summed over DDP ranks as ``compute`` is."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            return self.confmat.clone(), self.unlabelled.clone()


class ConfusionMatrix(ConfusionMatrices):
    """``ConfusionMatrices`` of one prediction: ``update(pred, target)`` of equal shapes; ``compute``: (K, K);
    ``counts``: (K, K) and (K,)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(1, num_classes, ignore_index, **kwargs)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        super().update(pred[None], target)

    def compute(self) -> torch.Tensor:
        return self.confmat[0].clone()

    def counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        confmat, unlabelled = super().counts()
        return confmat[0], unlabelled[0]


def confusion_scores(confmat: torch.Tensor, unlabelled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-class scores of a (K, K) confusion matrix (rows: ground truth, cols: prediction), float64 on its device.

    ``unlabelled``: optional (K,) count of ground-truth pixels per class that the prediction left as ignore
    (pseudo masks with a confidence threshold); they are false negatives of their class (lower IoU and recall).
    Returns ``tp``, ``gt`` (pixels per ground-truth class, unlabelled included), ``iou``, ``precision`` and
    ``recall``, each (K,); NaN where a class has no union / no prediction / no ground truth.
    """
    confmat = confmat.double()
    tp = confmat.diag()
    gt = confmat.sum(1) if unlabelled is None else confmat.sum(1) + unlabelled.to(confmat)
    predicted = confmat.sum(0)
    union = gt + predicted - tp
    nan = torch.full_like(tp, float("nan"))
    return {
        "tp": tp,
        "gt": gt,
        "iou": torch.where(union > 0, tp / union.clamp_min(1), nan),
        "precision": torch.where(predicted > 0, tp / predicted.clamp_min(1), nan),
        "recall": torch.where(gt > 0, tp / gt.clamp_min(1), nan),
    }


def iou_from_confusion(confmat: torch.Tensor) -> torch.Tensor:
    """(K, K) confusion matrix -> (K,) IoU (``confusion_scores``), NaN where a class has no union."""
    return confusion_scores(confmat)["iou"]


def mean_iou(confmat: torch.Tensor) -> float:
    """Mean IoU over the classes that occur in the ground truth or the predictions (VOC definition)."""
    return float(torch.nanmean(iou_from_confusion(confmat)))


def segmentation_scores(
    confmat: torch.Tensor, label_names: Sequence[str], unlabelled: torch.Tensor | None = None
) -> dict[str, object]:
    """``confusion_scores`` as plain values: mIoU, pixel accuracy, labelled fraction and per-class IoU,
    precision and recall by label name (None where undefined).

    Classes absent from both ground truth and prediction get no IoU and are left out of the mean (VOC definition).
    """
    scores = confusion_scores(confmat, unlabelled)
    total = float(scores["gt"].sum())

    def as_dict(values: torch.Tensor) -> dict[str, float | None]:
        return {n: (None if v != v else float(v)) for n, v in zip(label_names, values.tolist(), strict=True)}

    return {
        "miou": float(torch.nanmean(scores["iou"])),
        "pixel_accuracy": float(scores["tp"].sum()) / total if total else float("nan"),
        "labelled_fraction": float(confmat.sum()) / total if total else float("nan"),
        "iou": as_dict(scores["iou"]),
        "precision": as_dict(scores["precision"]),
        "recall": as_dict(scores["recall"]),
    }


def miou_table(results: Mapping[str, float], title: str = "validation mIoU (%)", **columns: Mapping[str, float]) -> str:
    """A small markdown table: one row per branch, a column per setting (``columns``: title -> more results)."""
    titles = [title, *columns]
    lines = ["| branch | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    for name, value in results.items():
        cells = [f"{100 * value:.2f}", *(f"{100 * col[name]:.2f}" for col in columns.values())]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(per_class: Mapping[str, Sequence[float]], class_names: Sequence[str]) -> str:
    """Markdown table of per-class IoU (%) with one column per branch."""
    branches = list(per_class)
    lines = ["| class | " + " | ".join(branches) + " |", "|---|" + "---:|" * len(branches)]
    for i, name in enumerate(class_names):
        cells = [f"{100 * per_class[b][i]:.1f}" if per_class[b][i] == per_class[b][i] else "-" for b in branches]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scores_table(scores: Mapping[str, Mapping[str, object]]) -> str:
    """Markdown table of per-class IoU / precision / recall (%) for one or more named score dicts."""
    names = list(scores)
    labels = list(next(iter(scores.values()))["iou"])  # type: ignore[arg-type]
    head = " | ".join(" | ".join(f"{n} {m}".strip() for m in ("IoU", "P", "R")) for n in names)
    lines = [f"| class | {head} |", "|---|" + "---:|" * (3 * len(names))]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    for label in labels:
        cells = [cell(scores[n][key][label]) for n in names for key in ("iou", "precision", "recall")]  # type: ignore[index]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{100 * scores[n]['miou']:.2f}** | | " for n in names) + "|")
    return "\n".join(lines)
