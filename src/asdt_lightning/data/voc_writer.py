"""Writing a generated dataset as a VOC-layout root: resumable, atomic, the same bytes for the same samples."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..io_utils import atomic_write, atomic_write_text
from .voc import write_mask_png


@dataclass(frozen=True)
class VOCSample:
    """One generated sample: the (H, W, 3) uint8 image, the (H, W) uint8 mask and its XML annotation text."""

    image: np.ndarray
    mask: np.ndarray
    annotation: str


def write_voc_root(
    root: Path,
    names: Sequence[str],
    render: Callable[[int, str], VOCSample],
    lists: Mapping[str, Sequence[str]],
    jpeg_quality: int = 90,
) -> Path:
    """Write ``JPEGImages/<name>.jpg``, ``SegmentationClass/<name>.png`` (VOC palette), ``Annotations/<name>.xml``
    of every name and then ``ImageSets/Segmentation/<list>.txt`` of every list; returns ``root``.

    ``render(index, name)`` makes sample ``index`` of ``names``; it is called only for a name with a file missing,
    and only the missing files are written, each atomically, so an interrupted run resumes with the same bytes.
    A list file is rewritten only when its text differs.
    """
    folders = {key: root / key for key in ("JPEGImages", "SegmentationClass", "Annotations")}
    lists_dir = root / "ImageSets" / "Segmentation"
    for folder in [*folders.values(), lists_dir]:
        folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        jpg = folders["JPEGImages"] / f"{name}.jpg"
        png = folders["SegmentationClass"] / f"{name}.png"
        xml = folders["Annotations"] / f"{name}.xml"
        if jpg.is_file() and png.is_file() and xml.is_file():
            continue
        sample = render(index, name)
        if not jpg.is_file():
            image = Image.fromarray(sample.image)
            atomic_write(jpg, lambda f, im=image: im.save(f, format="JPEG", quality=jpeg_quality))
        if not png.is_file():
            write_mask_png(png, sample.mask)
        if not xml.is_file():
            atomic_write_text(xml, sample.annotation)
    for split, ids in lists.items():
        path = lists_dir / f"{split}.txt"
        text = "\n".join(ids) + "\n"
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
    return root
