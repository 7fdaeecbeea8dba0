"""Check (and prepare) a dataset root: what training will read, what is wrong, and where to get what is missing.

    python -m asdt_lightning.prepare dataset=voc dataset.root=/data/VOCdevkit
    python -m asdt_lightning.prepare dataset=coco_stuff dataset.root=/data/cocostuff-10k workers=8
    python -m asdt_lightning.prepare dataset=voc splits=[train_aug,val,test] scan=false

A Hydra entry point, so that ``dataset=...`` and every ``dataset.*`` override mean exactly what they mean for
``asdt_lightning.train`` (same config group, same reader). It resolves the root (exit 2 with one ``error:`` line when
it is not a dataset), converts COCO-Stuff's ``.mat`` files into the PNG label cache, resolves every list (the same
check training runs first: files, labels and the image and mask headers), optionally decodes the samples that pass it
(``scan``: a truncated JPEG body, a label value outside the classes), and prints counts per list and per class and
the problems found. Exit status: 0 when training can run, 1 when bad samples were found and
``dataset.on_bad_sample=error``, 2 when the root or a list is missing.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from .cli import run_preflight
from .constants import IGNORE_INDEX
from .data.coco_stuff import COCO_STUFF_URL, CocoStuffReader
from .data.dataset import SegmentationReader
from .data.registry import build_reader
from .data.voc import MASK_DIRS, SBD_URL, VOC_URL, VOCReader
from .errors import DatasetError, run_or_exit


@dataclass
class SplitReport:
    """Counts of one list: ``entries`` listed, ``usable`` after skipping problems, images per class (from the
    image labels, and from the decoded masks when scanned), masks found, and the problems (one line each)."""

    split: str
    list_path: str
    targets: bool
    entries: int = 0
    usable: int = 0
    masks: int = 0
    per_class: Counter[int] = field(default_factory=Counter)
    per_class_masks: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


@dataclass
class DatasetReport:
    """Everything ``prepare`` found about one root."""

    name: str
    root: str
    class_names: list[str]
    has_background: bool
    splits: list[SplitReport] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # one line each: what is missing and where to get it
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return sum(len(s.problems) for s in self.splits)


def _scan_one(reader: SegmentationReader, name: str, targets: bool) -> tuple[str, list[int] | None, str | None]:
    """Decode one sample: (name, classes present in its mask or None, problem or None)."""
    try:
        _, mask = reader.read_sample(name, targets)
    except DatasetError as err:
        return name, None, str(err)
    if mask is None or reader.mask_file(name) is None:
        return name, None, None
    values = np.unique(mask)
    offset = int(reader.has_background)
    present = [int(v) - offset for v in values if v != IGNORE_INDEX and int(v) >= offset]
    return name, present, None


def _scan_task(args: tuple[SegmentationReader, str, bool]) -> tuple[str, list[int] | None, str | None]:
    return _scan_one(*args)


def scan_split(
    reader: SegmentationReader, names: Sequence[str], targets: bool, workers: int = 0
) -> list[tuple[str, list[int] | None, str | None]]:
    """Decode every sample of a list (in ``workers`` processes when > 1); see :func:`_scan_one`. Given the
    entries that passed :meth:`~.SegmentationReader.entries`, it finds only what a decode shows."""
    tasks = [(reader, n, targets) for n in names]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(_scan_task, tasks, chunksize=32))
    return [_scan_one(*t) for t in tasks]


def missing_layout(reader: SegmentationReader) -> list[str]:
    """Optional parts of a root that are absent, with where to get them."""
    root = reader.root
    out = []
    if isinstance(reader, VOCReader):
        if not (root / MASK_DIRS[0]).is_dir():
            out.append(f"{root / MASK_DIRS[0]} is missing (masks of the 10,582 train_aug images): {SBD_URL}")
        if not (root / MASK_DIRS[1]).is_dir():
            out.append(f"{root / MASK_DIRS[1]} is missing (val masks): {VOC_URL}")
    if isinstance(reader, CocoStuffReader) and not (root / "annotations").is_dir():
        out.append(f"{root / 'annotations'} is missing: {COCO_STUFF_URL}")
    return out


def dataset_report(
    reader: SegmentationReader,
    splits: Sequence[str],
    images_only: Sequence[str] = (),
    scan: bool = True,
    workers: int = 0,
    progress: Any = None,
) -> DatasetReport:
    """Resolve the root (raises a DatasetError when it is not a dataset), prepare, and count every list."""
    root = reader.root
    report = DatasetReport(reader.name, str(root), list(reader.class_names), reader.has_background)
    report.missing += missing_layout(reader)
    available = []
    for split in splits:
        try:
            reader.read_list(split)
            available.append(split)
        except DatasetError as err:
            report.missing.append(str(err))
    labelled = [s for s in available if s not in images_only]
    if labelled:
        reader.prepare(labelled, workers, progress)
    for split in available:
        targets = split not in images_only
        sr = SplitReport(split, str(reader.list_path(split)), targets, entries=len(reader.read_list(split)))
        try:
            entries = reader.entries(split, targets, on_bad_sample="report")
        except DatasetError as err:  # not a single usable entry
            sr.problems.append(str(err))
            report.splits.append(sr)
            continue
        sr.problems += list(entries.skipped.values())
        names = list(entries.names)
        for labels in entries.labels or []:
            sr.per_class.update(labels)
        if targets:
            sr.masks = sum(reader.mask_file(n) is not None for n in names)
        if scan:
            for _, present, problem in scan_split(reader, names, targets, workers):
                if problem is not None:
                    sr.problems.append(problem)
                elif present is not None:
                    sr.per_class_masks.update(present)
        sr.usable = sr.entries - len(sr.problems)
        report.splits.append(sr)
    return report


def format_report(report: DatasetReport) -> str:
    """The report as text: a table per list, a table per class, the problems and what is missing."""
    kind = "with a background class" if report.has_background else "no background class"
    lines = [f"{report.name} at {report.root}: {len(report.class_names)} classes, {kind}", ""]
    lines.append(f"{'list':<12} {'entries':>8} {'usable':>8} {'masks':>8} {'problems':>9}  file")
    for s in report.splits:
        masks = str(s.masks) if s.targets else "-"
        lines.append(f"{s.split:<12} {s.entries:>8} {s.usable:>8} {masks:>8} {len(s.problems):>9}  {s.list_path}")
    labelled = [s for s in report.splits if s.targets]
    if labelled:
        scanned = any(s.per_class_masks for s in labelled)
        lines += ["", "images per class (image labels" + (" / masks" if scanned else "") + ")"]
        width = max(len(c) for c in report.class_names)
        lines.append(f"{'class':<{width}} " + " ".join(f"{s.split:>14}" for s in labelled))
        for i, name in enumerate(report.class_names):
            cells = []
            for s in labelled:
                cell = str(s.per_class[i]) + (f" / {s.per_class_masks[i]}" if scanned else "")
                cells.append(f"{cell:>14}")
            lines.append(f"{name:<{width}} " + " ".join(cells))
    problems = [p for s in report.splits for p in s.problems]
    if problems:
        lines += ["", f"problems ({len(problems)}):"] + [f"  - {p}" for p in problems[:50]]
        if len(problems) > 50:
            lines.append(f"  ... and {len(problems) - 50} more")
    if report.missing:
        lines += ["", "missing:"] + [f"  - {m}" for m in report.missing]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def exit_status(report: DatasetReport, splits: Sequence[str], on_bad_sample: str) -> tuple[int, str | None]:
    """(status, one-line error or None): 2 when a list is missing, 1 for problems under ``error``, else 0."""
    found = {s.split for s in report.splits}
    absent = [s for s in splits if s not in found]
    if absent:
        return 2, f"list(s) {', '.join(absent)} missing from {report.root} (see 'missing' above)"
    if report.problems and on_bad_sample == "error":
        return 1, (
            f"{report.problems} bad sample(s) in {report.root} (listed above); fix them or train with "
            "dataset.on_bad_sample=skip"
        )
    return 0, None


def _progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"converting annotations: {done}/{total}", file=sys.stderr, flush=True)


def run(cfg: DictConfig) -> int:
    """The command: build the reader from ``cfg.dataset``, report, return the exit status."""
    data: dict[str, Any] = OmegaConf.to_container(cfg.dataset, resolve=True)  # type: ignore[assignment]
    splits = list(cfg.splits) if cfg.splits else list(dict.fromkeys([data["train_list"], data["val_list"]]))
    reader = build_reader(data)
    images_only = list(reader.image_only_lists if cfg.images_only is None else cfg.images_only)
    report = dataset_report(reader, splits, images_only, bool(cfg.scan), int(cfg.workers), _progress)
    if isinstance(reader, CocoStuffReader):
        report.notes.append(f"label cache: {reader.cache.folder}")
    print(format_report(report))
    status, message = exit_status(report, splits, data.get("on_bad_sample", "error"))
    if message:
        print(f"error: {message}", file=sys.stderr)
    return status


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def hydra_main(cfg: DictConfig) -> None:
    status = run_or_exit(run, cfg)
    sys.exit(status)


def main() -> None:
    """The command line: composition errors (bad option, unknown key) as one line before Hydra starts."""
    run_preflight("prepare")
    hydra_main()


if __name__ == "__main__":
    main()
