"""COCO-Stuff 10K v1.1's class names and ids, and the two mappings of raw ids to contiguous classes."""

from __future__ import annotations

import numpy as np

from ...constants import IGNORE_INDEX
from ...errors import DatasetError

COCO_STUFF_URL = "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/cocostuff-10k-v1.1.zip"
# fmt: off
COCO_STUFF_182: tuple[str, ...] = (  # COCO-Stuff id i + 1 is COCO_STUFF_182[i]
    # things (ids 1..91; 11 ids are unused)
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "hair brush",
    # stuff (ids 92..182)
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain",
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin",
    "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other",
    "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
# fmt: on
NUM_IDS = 182
UNUSED_IDS: tuple[int, ...] = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)  # thing ids without annotations
USED_IDS: tuple[int, ...] = tuple(i for i in range(1, NUM_IDS + 1) if i not in UNUSED_IDS)
CLASS_SETS = (171, 182)


def check_classes(classes: int) -> int:
    """Validate ``dataset.classes``."""
    if classes not in CLASS_SETS:
        raise DatasetError(f"dataset.classes must be 171 (the used COCO-Stuff ids) or 182 (all ids), got {classes}")
    return classes


def class_ids(classes: int) -> tuple[int, ...]:
    """The COCO-Stuff ids of the contiguous classes 0..classes-1."""
    return USED_IDS if check_classes(classes) == 171 else tuple(range(1, NUM_IDS + 1))


def coco_stuff_class_names(classes: int = 171) -> list[str]:
    """Names of the contiguous classes of a mapping (171 used or all 182 ids)."""
    return [COCO_STUFF_182[i - 1] for i in class_ids(classes)]


def id_lookup(classes: int = 171) -> np.ndarray:
    """(256,) uint8 table: raw COCO-Stuff id -> contiguous class index; 0 (unlabeled) and unmapped ids -> 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for index, cid in enumerate(class_ids(classes)):
        table[cid] = index
    return table
