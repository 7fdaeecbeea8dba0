"""Segmentation metrics from confusion matrices (the VOC benchmark's definition) and their tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


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
