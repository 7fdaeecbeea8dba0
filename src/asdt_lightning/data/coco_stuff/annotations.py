"""Reading COCO-Stuff annotation files: ``.mat`` label maps and names, and the check of raw ids."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DatasetError
from .ids import COCO_STUFF_182, COCO_STUFF_URL, NUM_IDS


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def mat_names(value: Any) -> list[str]:
    """The ``names`` field of a ``.mat`` file (cell array or char matrix, as scipy loads it) -> list of str."""
    if value is None:
        return []
    arr = np.asarray(value)
    if arr.dtype.kind in "US":  # a char matrix: one row per name
        return [str(x).strip() for x in arr.reshape(-1)]
    out = []
    for item in arr.reshape(-1):
        flat = np.asarray(item).reshape(-1)
        out.append(str(flat[0]).strip() if flat.size else "")
    return out


def check_mat_names(names: Sequence[str], path: Path) -> None:
    """Refuse a ``names`` list that does not follow the v1.1 ids (e.g. v1.0's 172 classes); a few spellings may
    differ from :data:`COCO_STUFF_182`, a different order may not."""
    if not names:
        return
    if len(names) == NUM_IDS + 1 and _normalise(names[0]) == "unlabeled":
        names = names[1:]
    if len(names) != NUM_IDS:
        version = " (COCO-Stuff 10K v1.0 has 172)" if len(names) in (171, 172) else ""
        raise DatasetError(f"{path} lists {len(names)} class names{version}, not the 182 of v1.1; get {COCO_STUFF_URL}")
    pairs = zip(names, COCO_STUFF_182, strict=True)
    wrong = [i + 1 for i, (a, b) in enumerate(pairs) if _normalise(a) != _normalise(b)]
    if len(wrong) > 10:
        i = wrong[0]
        raise DatasetError(
            f"the class names in {path} do not follow the COCO-Stuff v1.1 ids (id {i} is '{names[i - 1]}', "
            f"expected '{COCO_STUFF_182[i - 1]}'); get {COCO_STUFF_URL}"
        )


def read_mat_labels(path: str | Path) -> np.ndarray:
    """A COCO-Stuff ``.mat`` annotation -> (H, W) uint8 raw ids (0 unlabeled, 1..182); bad files raise, named."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=["S", "names"])
    except NotImplementedError:
        raise DatasetError(
            f"{path} is a MATLAB v7.3 (HDF5) file; the v1.1 release has v5 files: {COCO_STUFF_URL}"
        ) from None
    except Exception as err:  # scipy raises ValueError, TypeError, OSError, zlib errors... on damaged files
        raise DatasetError(f"cannot read annotation {path}: {err}; fix or re-extract that file") from None
    if "S" not in mat:
        raise DatasetError(f"annotation {path} has no label map 'S'; COCO-Stuff .mat files hold S and names")
    check_mat_names(mat_names(mat.get("names")), path)
    labels = np.asarray(mat["S"])
    if labels.ndim != 2 or labels.dtype.kind not in "uif":
        raise DatasetError(f"label map S of {path} is {labels.dtype} {labels.shape}, not an (H, W) map of ids")
    return check_raw_ids(labels, path)


def check_raw_ids(labels: np.ndarray, path: str | Path) -> np.ndarray:
    """(H, W) raw ids -> uint8, refusing values outside 0..182 (e.g. PNGs of already-mapped ids, 255 ignore)."""
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > NUM_IDS or (labels.dtype.kind == "f" and not np.all(labels == np.round(labels))):
        raise DatasetError(
            f"label map {path} holds values {low}..{high}; COCO-Stuff maps hold the raw ids 0 (unlabeled) .. 182 "
            "(PNGs of already-mapped train ids with 255 are not accepted: convert them back or use the .mat files)"
        )
    return labels.astype(np.uint8)
