"""COCO-Stuff 10K (v1.1): class names and mappings, ``.mat`` reading, the PNG label cache, and the reader.

The official layout (``cocostuff-10k-v1.1.zip``): ``images/<name>.jpg``, ``annotations/<name>.mat`` (``S``: the
(H, W) label map, 0 = unlabeled, 1..182 = COCO-Stuff ids, of which 171 are used; ``names``: the class names) and
``imageLists/{train,test,all}.txt`` (9,000 / 1,000 / 10,000 names). ``annotations/<name>.png`` holding the same raw
ids (0..182) is accepted instead of a ``.mat``.

Reading thousands of ``.mat`` files each epoch is slow, so each is converted once into a PNG of its raw ids in a
cache folder (atomically: an interrupted conversion resumes where it stopped, and never leaves a half-written file
under a final name), together with an index of the ids present in each map (the image-level labels). The cache
holds raw ids, so both class mappings read the same cache:

- ``classes=171``: the 171 used ids -> 0..170 in id order (80 things, then 91 stuff classes);
- ``classes=182``: id -> id - 1 (0..181), as deeplab-pytorch does; the 11 unused thing ids are never present.

Unlabeled (0) becomes ignore (255). There is no background class: every labelled pixel is a thing or stuff class.

``ids`` holds the names and mappings, ``annotations`` the file reading, ``cache`` the conversion cache and
``reader`` the reader and dataset.
"""

from __future__ import annotations

from .annotations import check_mat_names, check_raw_ids, mat_names, read_mat_labels
from .cache import LabelCache, convert_annotation, default_label_cache, id_counts
from .ids import (
    CLASS_SETS,
    COCO_STUFF_182,
    COCO_STUFF_URL,
    NUM_IDS,
    UNUSED_IDS,
    USED_IDS,
    check_classes,
    class_ids,
    coco_stuff_class_names,
    id_lookup,
)
from .reader import CocoStuffReader, CocoStuffSegmentation, resolve_coco_stuff_root

__all__ = [
    "CLASS_SETS",
    "COCO_STUFF_182",
    "COCO_STUFF_URL",
    "NUM_IDS",
    "UNUSED_IDS",
    "USED_IDS",
    "CocoStuffReader",
    "CocoStuffSegmentation",
    "LabelCache",
    "check_classes",
    "check_mat_names",
    "check_raw_ids",
    "class_ids",
    "coco_stuff_class_names",
    "convert_annotation",
    "default_label_cache",
    "id_counts",
    "id_lookup",
    "mat_names",
    "read_mat_labels",
    "resolve_coco_stuff_root",
]
