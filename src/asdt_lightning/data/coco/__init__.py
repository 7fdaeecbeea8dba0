"""COCO 2014 / 2017 for WSSS: 80 thing classes + background (81 labels), image labels from the annotations.

The one-stage WSSS literature trains on COCO 2014 train (82,081 images with annotations) and scores val (40,137).
``dataset.root`` holds the images (``{train,val}{year}/``, ``images/{train,val}{year}/`` or
``JPEGImages/{train,val}{year}/``; or ``dataset.image_dir``) and one of three annotation sources
(``dataset.source``; ``auto`` takes the first present, in this order):

- ``png``: masks converted before, ``SegmentationClass/{train,val}{year}/<name>.png`` (the layout of one-stage
  codebases; ``dataset.mask_dir``), values 0 background, 1..80 the thing classes in category-id order, 255 ignore
  (``dataset.png_ids=category``: 0 and the COCO category ids 1..90). Read in place.
- ``instances``: ``annotations/instances_{train,val}{year}.json`` (``annotations_trainval{year}.zip``), rasterised
  once with pycocotools into a PNG cache: crowd regions 255, overlapping instances *smaller on top* (see
  :mod:`.rasterize`).
- ``panoptic`` (2017): ``annotations/panoptic_{train,val}2017.json`` and ``annotations/panoptic_{train,val}2017/*.png``
  (RGB-encoded segment ids ``R + 256 G + 256^2 B``), decoded once into the PNG cache: things -> their class,
  stuff -> background, unlabelled and crowd -> 255.

The cache (``dataset.label_cache``, default ``$ASDT_CACHE/coco/<hash>``) is written atomically and resumes an
interrupted conversion (:mod:`.cache`); a converted split never parses its JSON again. ``train`` and ``val`` list
every image of the split with a thing annotation (a PNG mask for ``png``); a list file (``train*.txt`` /
``val*.txt``, or of 2014 file names) picks a subset. Image labels: the classes with at least
``dataset.min_label_pixels`` pixels in the mask, or (``dataset.label_source=annotations``) the JSON's non-crowd
things.

``ids`` holds the classes and settings, ``layout`` the paths, ``annotations`` the JSON reading, ``rasterize`` the
array conversions, ``convert`` the per-image tasks, ``cache`` the conversion cache and ``reader`` the reader.
"""

from __future__ import annotations

from .annotations import load_instances, load_panoptic, split_index
from .cache import CocoLabelCache, default_label_cache
from .ids import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    COCO_URL,
    NUM_THINGS,
    SOURCES,
    YEARS,
    category_lookup,
    check_settings,
    thing_labels,
)
from .layout import CocoLayout, layout_help, require_pycocotools, resolve_coco_root
from .rasterize import instances_mask, label_counts, panoptic_ids, panoptic_mask, png_labels, segmentation_rle
from .reader import CocoReader, CocoSegmentation

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "COCO_URL",
    "NUM_THINGS",
    "SOURCES",
    "YEARS",
    "CocoLabelCache",
    "CocoLayout",
    "CocoReader",
    "CocoSegmentation",
    "category_lookup",
    "check_settings",
    "default_label_cache",
    "instances_mask",
    "label_counts",
    "layout_help",
    "load_instances",
    "load_panoptic",
    "panoptic_ids",
    "panoptic_mask",
    "png_labels",
    "require_pycocotools",
    "resolve_coco_root",
    "segmentation_rle",
    "split_index",
    "thing_labels",
]
