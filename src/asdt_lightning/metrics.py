"""Segmentation metrics from confusion matrices (the VOC benchmark's definition) and their tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Metric


class ConfusionMatrices(Metric):
    """``M`` confusion matrices of ``M`` predictions of the same targets, summed over batches (and DDP ranks).

    One ``torch.bincount`` per update for all ``M``; targets are range-checked, predictions are not (those of
    argmax or thresholding are in range by construction). ``compute``: (M, K, K) int64 (rows: ground truth).
    """

    full_state_update = False
    confmat: torch.Tensor

    def __init__(self, count: int, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        self.count, self.num_classes, self.ignore_index = count, num_classes, ignore_index
        self.add_state("confmat", torch.zeros(count, num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds: (M, *S) labels in [0, K); target: (*S) labels in [0, K) or ``ignore_index``."""
        if preds.shape[0] != self.count or preds.shape[1:] != target.shape:
            raise ValueError(f"expected predictions ({self.count}, *{tuple(target.shape)}), got {tuple(preds.shape)}")
        keep = target.reshape(-1) != self.ignore_index
        k = self.num_classes
        labels = target.reshape(-1)[keep].long()
        if labels.numel() and (int(labels.max()) >= k or int(labels.min()) < 0):
            raise ValueError(f"ground-truth labels must lie in [0, {k}) or be {self.ignore_index}")
        cells = labels * k + preds.reshape(self.count, -1)[:, keep].long()
        cells = cells + torch.arange(self.count, device=cells.device)[:, None] * (k * k)
        self.confmat += torch.bincount(cells.reshape(-1), minlength=self.count * k * k).view(self.count, k, k)

    def compute(self) -> torch.Tensor:
        return self.confmat.clone()


def iou_from_confusion(confmat: torch.Tensor) -> torch.Tensor:
    """(K, K) confusion matrix (rows: ground truth, cols: prediction) -> (K,) IoU, NaN where a class has no union."""
    confmat = confmat.double()
    tp = confmat.diag()
    union = confmat.sum(0) + confmat.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(confmat: torch.Tensor) -> float:
    """Mean IoU over the classes that occur in the ground truth or the predictions."""
    return float(torch.nanmean(iou_from_confusion(confmat)))


def miou_table(results: Mapping[str, float], title: str = "validation mIoU (%)") -> str:
    """A small markdown table: one row per branch."""
    lines = [f"| branch | {title} |", "|---|---:|"]
    lines += [f"| {name} | {100 * value:.2f} |" for name, value in results.items()]
    return "\n".join(lines)


def per_class_table(per_class: Mapping[str, Sequence[float]], class_names: Sequence[str]) -> str:
    """Markdown table of per-class IoU (%) with one column per branch."""
    branches = list(per_class)
    lines = ["| class | " + " | ".join(branches) + " |", "|---|" + "---:|" * len(branches)]
    for i, name in enumerate(class_names):
        cells = [f"{100 * per_class[b][i]:.1f}" if per_class[b][i] == per_class[b][i] else "-" for b in branches]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion_and_unlabelled(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confusion matrix of label maps of any equal shape, and the labelled pixels the prediction left unlabelled.

    Pixels whose target is ``ignore_index`` are not counted. A prediction of ``ignore_index`` on a labelled pixel
    (a pseudo mask's unconfident pixel) is counted in the second output, per ground-truth class.
    Returns:
        (K, K) int64 counts (rows: ground truth, cols: prediction) and (K,) int64 unlabelled counts.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < 0):
        raise ValueError(f"ground-truth labels must lie in [0, {num_classes}) or be {ignore_index}")
    unlabelled = pred == ignore_index
    if bool(((pred < 0) | (pred >= num_classes))[~unlabelled].any()):
        raise ValueError(f"predicted labels must lie in [0, {num_classes}) or be {ignore_index}")
    labelled = ~unlabelled
    counts = torch.bincount(target[labelled] * num_classes + pred[labelled], minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes), torch.bincount(target[unlabelled], minlength=num_classes)


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(K, K) int64 confusion matrix (rows: ground truth, cols: prediction); target ``ignore_index`` not counted.

    Predictions of ``ignore_index`` are left out too (see ``confusion_and_unlabelled`` to count them).
    """
    return confusion_and_unlabelled(pred, target, num_classes, ignore_index)[0]


def segmentation_scores(
    confmat: torch.Tensor, label_names: Sequence[str], unlabelled: torch.Tensor | None = None
) -> dict[str, object]:
    """mIoU, pixel accuracy and per-class IoU, precision and recall of a (K, K) confusion matrix.

    ``unlabelled``: optional (K,) count of ground-truth pixels per class that the prediction left as ignore
    (pseudo masks with a confidence threshold); they are false negatives of their class (lower IoU and recall).
    Classes absent from both ground truth and prediction get NaN and are left out of the mean (VOC definition).
    """
    confmat = confmat.double()
    missed = torch.zeros(confmat.shape[0], dtype=torch.float64) if unlabelled is None else unlabelled.double()
    tp = confmat.diag()
    gt = confmat.sum(1) + missed
    predicted = confmat.sum(0)
    union = gt + predicted - tp
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), nan)
    recall = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
    total = float(gt.sum())

    def as_dict(values: torch.Tensor) -> dict[str, float | None]:
        return {n: (None if v != v else float(v)) for n, v in zip(label_names, values.tolist(), strict=True)}

    return {
        "miou": float(torch.nanmean(iou)),
        "pixel_accuracy": float(tp.sum()) / total if total else float("nan"),
        "labelled_fraction": float(confmat.sum()) / total if total else float("nan"),
        "iou": as_dict(iou),
        "precision": as_dict(precision),
        "recall": as_dict(recall),
    }


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
