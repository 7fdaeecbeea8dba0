"""COCO 2014 / 2017: the three annotation sources (instances JSON, panoptic JSON + PNGs, PNG masks) on tiny roots
written here, the resumable PNG cache, image labels, bad inputs, and the real COCO panoptic files of coco128."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image
from pycocotools import mask as mask_utils

from asdt_lightning.checks import check_dataset
from asdt_lightning.data.coco import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    CocoReader,
    CocoSegmentation,
    category_lookup,
    panoptic_ids,
)
from asdt_lightning.data.coco import convert as coco_convert
from asdt_lightning.data.coco import layout as coco_layout
from asdt_lightning.data.registry import build_datamodule, config_class_names, dataset_class_names
from asdt_lightning.data.voc import VOC_CLASSES, read_mask, write_mask_png
from asdt_lightning.errors import ASDTUserError, DatasetError
from data_roots import image_from_mask

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128_train2017"
real_data = pytest.mark.skipif(not (REAL / "coco_panoptic").is_dir(), reason="coco128 panoptic files not here")

PERSON, CAT, DOG = (COCO_CATEGORY_IDS.index(c) + 1 for c in (1, 17, 18))  # mask labels (1..80)
H, W = 40, 48


def label(cid: int) -> int:
    return COCO_CATEGORY_IDS.index(cid) + 1


def rle(mask: np.ndarray) -> dict:
    """A compressed RLE, as COCO's JSON holds it (counts a str)."""
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": out["counts"].decode()}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """An uncompressed RLE (COCO's iscrowd format): run lengths, column-major, starting with zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))
    counts = np.diff(np.concatenate([[0], edges])).tolist()  # a leading 1 gives a first run of 0 zeros
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def block(top: int, left: int, bottom: int, right: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[top:bottom, left:right] = True
    return m


def write_image(path: Path, h: int = H, w: int = W, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_from_mask(np.zeros((h, w), np.uint8), seed)).save(path, quality=95)


def categories(*ids: int) -> list[dict]:
    return [{"id": c, "name": COCO_CLASSES[COCO_CATEGORY_IDS.index(c)], "supercategory": "x"} for c in ids]


def expected_overlap_mask() -> np.ndarray:
    """The mask of ``instances_json``'s first image, painted by the documented rule."""
    out = np.zeros((H, W), np.uint8)
    out[32:40, :] = 255  # the crowd band
    out[2:30, 2:30] = PERSON  # the large person (pixels well inside its polygon are checked)
    out[10:16, 10:16] = DOG  # the small dog on top of it, though listed first
    out[34:38, 40:46] = CAT  # an instance inside the crowd band keeps its label
    return out


def instances_json(split: str, year: int = 2014) -> tuple[dict, list[str]]:
    """Images 1..4 of ``split``: overlaps + crowd + polygon + RLEs; crowd only; no annotation; a tiny instance."""
    names = [f"COCO_{split}{year}_{k:012d}" if year == 2014 else f"{k:012d}" for k in range(1, 5)]
    offset = 0 if split == "train" else 100
    images = [{"id": offset + k, "file_name": f"{n}.jpg", "height": H, "width": W} for k, n in enumerate(names, 1)]
    person_poly = [[2, 2, 30, 2, 30, 30, 2, 30]]
    anns = [
        {"id": 1, "image_id": offset + 1, "category_id": 18, "iscrowd": 0, "segmentation": rle(block(10, 10, 16, 16))},
        {"id": 2, "image_id": offset + 1, "category_id": 1, "iscrowd": 0, "segmentation": person_poly},
        {"id": 3, "image_id": offset + 1, "category_id": 1, "iscrowd": 1,
         "segmentation": uncompressed_rle(block(32, 0, 40, W))},
        {"id": 4, "image_id": offset + 1, "category_id": 17, "iscrowd": 0, "segmentation": rle(block(34, 40, 38, 46))},
        {"id": 5, "image_id": offset + 2, "category_id": 18, "iscrowd": 1,
         "segmentation": uncompressed_rle(block(0, 0, 10, 10))},
        {"id": 6, "image_id": offset + 4, "category_id": 17, "iscrowd": 0, "segmentation": rle(block(0, 0, 2, 2))},
        {"id": 7, "image_id": offset + 4, "category_id": 18, "iscrowd": 0, "segmentation": [[1, 1, 3, 3]]},
        {"id": 8, "image_id": offset + 4, "category_id": 1, "iscrowd": 0, "segmentation": rle(block(20, 20, 30, 30))},
    ]  # fmt: skip
    data = {"images": images, "annotations": anns, "categories": categories(1, 17, 18)}
    return data, names


def make_instances_root(tmp: Path, year: int = 2014, splits: tuple[str, ...] = ("train", "val")) -> Path:
    root = tmp / "coco"
    for split in splits:
        data, names = instances_json(split, year)
        for k, name in enumerate(names):
            write_image(root / f"{split}{year}" / f"{name}.jpg", seed=k)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}{year}.json").write_text(json.dumps(data))
    return root


# ---------------------------------------------------------------- classes and the instances source
def test_the_80_classes_and_their_category_ids():
    assert len(COCO_CLASSES) == 80 and len(COCO_CATEGORY_IDS) == 80
    assert COCO_CLASSES[0] == "person" and COCO_CLASSES[-1] == "toothbrush" and "street sign" not in COCO_CLASSES
    assert COCO_CATEGORY_IDS[:12] == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13) and COCO_CATEGORY_IDS[-1] == 90
    lut = category_lookup()
    assert lut[0] == 0 and lut[1] == 1 and lut[12] == 255 and lut[13] == 12 and lut[90] == 80 and lut[91] == 255
    assert dataset_class_names("coco") == list(COCO_CLASSES)
    assert config_class_names({"name": "coco"}) == list(COCO_CLASSES)


def test_instances_are_rasterised_with_crowd_ignored_and_smaller_instances_on_top(tmp_path):
    root = make_instances_root(tmp_path)
    ds = CocoSegmentation(root, "train", label_cache=tmp_path / "cache")
    assert ds.reader.source("train") == "instances" and ds.has_background and ds.num_classes == 80
    name = "COCO_train2014_000000000001"
    assert ds.names == [name, "COCO_train2014_000000000002", "COCO_train2014_000000000004"]  # #3: no annotation
    mask = ds[0]["mask"].numpy()
    expected = expected_overlap_mask()
    inner = np.zeros((H, W), bool)
    inner[4:28, 4:28] = True  # well inside the person polygon, away from its rasterised edge
    inner |= expected == DOG
    inner[32:40] = True
    inner[:, 31:] = True
    assert np.array_equal(mask[inner], expected[inner])
    assert mask[0, 40] == 0 and mask[20, 20] == PERSON and mask[12, 12] == DOG and mask[35, 5] == 255
    assert [COCO_CLASSES[i] for i in ds.image_labels[0]] == ["person", "cat", "dog"]
    cached = ds.reader.cache("train").png(name)
    assert cached.is_file() and np.array_equal(read_mask(cached), mask)  # 0..80 / 255 PNG in the cache


def test_empty_label_images_and_label_sources(tmp_path):
    root = make_instances_root(tmp_path)
    crowd_only, no_ann, tiny = (f"COCO_train2014_{k:012d}" for k in (2, 3, 4))
    (tmp_path / "train_all.txt").write_text(f"{crowd_only}\n{no_ann}\n{tiny}\n")
    ds = CocoSegmentation(root, str(tmp_path / "train_all.txt"), label_cache=tmp_path / "cache")
    assert ds.image_labels[:2] == [[], []]  # crowd only (crowd is ignore, not a label), and no annotation at all
    assert ds[0]["labels"].sum() == 0 and torch.equal(ds[0]["mask"] == 255, torch.from_numpy(block(0, 0, 10, 10)))
    assert ds[1]["labels"].sum() == 0 and (ds[1]["mask"] == 0).all()
    assert ds.image_labels[2] == [PERSON - 1, CAT - 1]  # the 2-point polygon of a dog has no pixel
    few = CocoSegmentation(root, str(tmp_path / "train_all.txt"), label_cache=tmp_path / "cache", min_label_pixels=5)
    assert few.image_labels[2] == [PERSON - 1]  # the 4-pixel cat is below min_label_pixels
    json_labels = CocoSegmentation(
        root, str(tmp_path / "train_all.txt"), label_cache=tmp_path / "cache", label_source="annotations"
    )
    assert json_labels.image_labels == [[], [], [PERSON - 1, CAT - 1, DOG - 1]]


def test_2014_names_carry_their_split_and_lists_mix_splits(tmp_path):
    root = make_instances_root(tmp_path)
    (tmp_path / "subset.txt").write_text("COCO_val2014_000000000001\nCOCO_train2014_000000000004\n")
    ds = CocoSegmentation(root, str(tmp_path / "subset.txt"), label_cache=tmp_path / "cache")
    assert ds.reader.image_path(ds.names[0]) == root / "val2014" / "COCO_val2014_000000000001.jpg"
    assert [COCO_CLASSES[i] for i in ds.image_labels[0]] == ["person", "cat", "dog"]
    val = CocoSegmentation(root, "val2014", label_cache=tmp_path / "cache")
    assert len(val) == 3 and val.names[0] == "COCO_val2014_000000000001"


def test_interrupted_conversion_resumes_and_gives_identical_files(tmp_path, monkeypatch):
    root = make_instances_root(tmp_path, splits=("train",))
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    for k in range(5, 12):  # more images: copies of image 1
        data["images"].append({"id": k, "file_name": f"COCO_train2014_{k:012d}.jpg", "height": H, "width": W})
        data["annotations"] += [{**a, "id": 100 * k + a["id"], "image_id": k} for a in data["annotations"][:4]]
        write_image(root / "train2014" / f"COCO_train2014_{k:012d}.jpg")
    path.write_text(json.dumps(data))
    clean = CocoReader(root, label_cache=tmp_path / "clean")
    clean.prepare(["train"])
    reader = CocoReader(root, label_cache=tmp_path / "resumed")
    writes: list[str] = []
    real_write = coco_convert.write_mask_png

    def interrupted(dst, mask):
        if len(writes) == 4:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the fifth file
        writes.append(dst.name)
        return real_write(dst, mask)

    expected_labels = clean.load_labels(clean.read_list("train"))[0]
    monkeypatch.setattr(coco_convert, "write_mask_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reader.prepare(["train"])
    labels = reader.cache("train").labels
    assert sorted(p.name for p in labels.iterdir()) == sorted(writes)  # four whole files, no temporary one
    index = reader.cache("train").index_path
    assert len(json.loads(index.read_text())["entries"]) == 4  # flushed on the way out
    (labels / ".COCO_train2014_000000000009.png.x1y2.tmp").write_bytes(b"half a png")  # as a kill -9 leaves
    monkeypatch.setattr(coco_convert, "write_mask_png", lambda dst, m: writes.append(dst.name) or real_write(dst, m))
    resumed = CocoReader(root, label_cache=tmp_path / "resumed")
    resumed.prepare(["train"])
    assert len(writes) == 10  # the four were not converted again
    assert sorted(os.listdir(labels)) == sorted(os.listdir(clean.cache("train").labels))  # the stale .tmp is gone
    for png in clean.cache("train").labels.iterdir():
        assert png.read_bytes() == (labels / png.name).read_bytes()
    monkeypatch.setattr(coco_convert, "write_mask_png", lambda *a: pytest.fail("converted again"))
    monkeypatch.setattr("asdt_lightning.data.coco.reader.load_instances", lambda p: pytest.fail("JSON parsed again"))
    again = CocoSegmentation(root, "train", label_cache=tmp_path / "resumed")  # all cached: no JSON, no conversion
    assert len(again) == 10 and again.image_labels == [expected_labels[n] for n in again.names]


# ---------------------------------------------------------------- panoptic and PNG sources
def make_panoptic_root(tmp: Path) -> tuple[Path, np.ndarray]:
    """2017 panoptic: one image with a thing, a stuff segment, a crowd thing, unlabelled pixels and an id the
    JSON does not list; returns the root and the expected label map."""
    root = tmp / "coco2017"
    ids = np.zeros((H, W), np.int64)  # 0: unlabelled
    segments = {
        5 + 256 * 3: (1, 0, PERSON),  # (category, iscrowd, expected label)
        70000: (184, 0, 0),  # stuff -> background
        2 + 256 * 256 * 4: (18, 1, 255),  # crowd dog -> ignore
    }
    ids[0:20, 0:20] = 5 + 256 * 3
    ids[20:40, :] = 70000
    ids[0:10, 30:40] = 2 + 256 * 256 * 4
    ids[12:18, 40:48] = 999  # in the PNG, not in segments_info -> ignore
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    (root / "annotations" / "panoptic_train2017").mkdir(parents=True)
    Image.fromarray(rgb).save(root / "annotations" / "panoptic_train2017" / "000000000001.png")
    write_image(root / "train2017" / "000000000001.jpg")
    stuff = {"id": 184, "name": "tree-merged", "isthing": 0, "supercategory": "plant"}
    data = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": H, "width": W}],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "000000000001.png",
                "segments_info": [{"id": int(s), "category_id": c, "iscrowd": k} for s, (c, k, _) in segments.items()],
            }
        ],
        "categories": [*({**c, "isthing": 1} for c in categories(1, 18)), stuff],
    }
    (root / "annotations" / "panoptic_train2017.json").write_text(json.dumps(data))
    expected = np.full((H, W), 255, np.uint8)
    for s, (_, _, lab) in segments.items():
        expected[ids == s] = lab
    return root, expected


def test_panoptic_png_decodes_things_stuff_crowd_and_unlabelled(tmp_path):
    root, expected = make_panoptic_root(tmp_path)
    assert panoptic_ids(np.array([[[5, 3, 0], [2, 0, 4]]], np.uint8)).tolist() == [[5 + 768, 2 + 4 * 65536]]
    ds = CocoSegmentation(root, "train", year=2017, label_cache=tmp_path / "cache")
    assert ds.reader.source("train") == "panoptic" and ds.names == ["000000000001"]
    assert np.array_equal(ds[0]["mask"].numpy(), expected)
    assert ds.image_labels == [[PERSON - 1]]  # the crowd dog is no label
    with pytest.raises(DatasetError, match=r"dataset.source=panoptic needs dataset.year=2017"):
        CocoReader(root, year=2014, source="panoptic")


def test_png_masks_are_read_in_place_in_both_value_conventions(tmp_path):
    root = tmp_path / "MSCOCO"
    names = [f"COCO_train2014_{k:012d}" for k in range(3)]
    masks = [np.zeros((H, W), np.uint8) for _ in names]
    masks[0][5:15, 5:15] = 1
    masks[0][20:30, 20:30] = 80
    masks[0][0, :] = 255
    masks[2][:, :10] = 17  # class 16 ('dog'): label 17 in contiguous values, category id 18
    for name, m in zip(names, masks, strict=True):
        write_image(root / "JPEGImages" / "train2014" / f"{name}.jpg")
        write_mask_png(root / "SegmentationClass" / "train2014" / f"{name}.png", m)
    (root / "train.txt").write_text("\n".join(names) + "\n")
    ds = CocoSegmentation(root, "train", label_cache=tmp_path / "cache")  # the list file <root>/train.txt
    assert ds.reader.source("train") == "png" and ds.names == names
    assert ds.image_labels == [[0, 79], [], [16]]
    assert torch.equal(ds[0]["mask"], torch.from_numpy(masks[0]).long())
    assert not list((tmp_path / "cache").rglob("*.png"))  # nothing copied
    by_id = CocoSegmentation(root, "train", label_cache=tmp_path / "cache", png_ids="category")
    assert by_id.image_labels == [[0, COCO_CATEGORY_IDS.index(80)], [], [COCO_CATEGORY_IDS.index(17)]]
    masks[1][0, 0] = 91
    write_mask_png(root / "SegmentationClass" / "train2014" / f"{names[1]}.png", masks[1])
    with pytest.raises(DatasetError, match=rf"{names[1]}\.png holds value\(s\) \[91\].*png_ids=category"):
        CocoSegmentation(root, "train", label_cache=tmp_path / "cache")


# ---------------------------------------------------------------- bad inputs
def test_missing_root_annotation_file_and_pycocotools_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match=r"no COCO dataset at .*nowhere.*cocodataset\.org/#download") as err:
        CocoReader(tmp_path / "nowhere").check(["train", "val"])
    assert "\n" not in str(err.value) and "instances_{train,val}2014.json" in str(err.value)
    root = make_instances_root(tmp_path, splits=("train",))
    with pytest.raises(DatasetError, match=r"val2014 is missing: the val2014 images.*cocodataset"):
        CocoReader(root).check(["train", "val"])
    (root / "val2014").mkdir()
    with pytest.raises(DatasetError, match=r"no val2014 annotations.*instances_val2014\.json.*cocodataset"):
        CocoReader(root).check(["train", "val"])
    (root / "train2017").mkdir()
    with pytest.raises(DatasetError, match=r"source=panoptic but .*panoptic_train2017\.json .*is missing"):
        CocoReader(root, year=2017, source="panoptic").check(["train"])
    real_find = coco_layout.importlib.util.find_spec
    monkeypatch.setattr(
        coco_layout.importlib.util, "find_spec", lambda name, *a: None if name == "pycocotools" else real_find(name)
    )
    with pytest.raises(DatasetError, match=r"pycocotools is not installed.*pip install pycocotools"):
        CocoReader(root).check(["train"])
    with pytest.raises(ASDTUserError, match="pycocotools is not installed"):
        check_dataset({**coco_config(root), "source": "instances"})


def coco_config(root: Path, **overrides) -> dict:
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=["dataset=coco", f"dataset.root={root}"])
    return {**OmegaConf.to_container(cfg.dataset, resolve=True), **overrides}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"year": 2015}, r"dataset\.year must be one of 2014, 2017, got 2015"),
        ({"source": "json"}, r"dataset\.source must be one of auto, instances, panoptic, png"),
        ({"source": "panoptic"}, r"source=panoptic needs dataset\.year=2017"),
        ({"min_label_pixels": 0}, r"dataset\.min_label_pixels must be a whole number >= 1"),
    ],
)
def test_bad_settings_are_refused_before_any_file_is_read(tmp_path, overrides, message):
    with pytest.raises(ASDTUserError, match=message):
        check_dataset(coco_config(tmp_path / "nowhere", **overrides))


def test_bad_lists_and_files_are_named(tmp_path):
    root = make_instances_root(tmp_path)
    (tmp_path / "mine.txt").write_text("000000000001\n")
    with pytest.raises(DatasetError, match=r"which COCO split 000000000001 .*mine\.txt.*train\*\.txt"):
        CocoReader(root).check([str(tmp_path / "mine.txt")])
    with pytest.raises(DatasetError, match=r"list 'val2017' is of COCO 2017 but dataset\.year=2014"):
        CocoReader(root).check(["val2017"])
    (tmp_path / "train_x.txt").write_text("COCO_train2014_000000000001\nCOCO_train2014_000000000077\n")
    with pytest.raises(DatasetError, match=r"COCO_train2014_000000000077\.jpg is missing"):
        CocoSegmentation(root, str(tmp_path / "train_x.txt"), label_cache=tmp_path / "cache")
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["categories"][0]["name"] = "human"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"instances_val2014\.json lists thing category 1 'human'.*'person'"):
        CocoSegmentation(root, "val", label_cache=tmp_path / "cache")
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"cannot read .*instances_val2014\.json.*re-extract"):
        CocoSegmentation(root, "val", label_cache=tmp_path / "cache")
    data, _ = instances_json("val")
    data["annotations"][1]["segmentation"] = {"size": [3, 3], "counts": "x"}
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"cannot rasterise COCO_val2014_000000000001.*annotation 2: RLE of size"):
        CocoSegmentation(root, "val", label_cache=tmp_path / "cache")
    with pytest.warns(UserWarning, match="skipping 1 bad entr"):
        ds = CocoSegmentation(root, "val", label_cache=tmp_path / "cache", on_bad_sample="skip")
    assert len(ds) == 2


# ---------------------------------------------------------------- the real COCO panoptic files (coco128)
def real_reader(**kwargs) -> CocoReader:
    return CocoReader(REAL, year=2017, annotation_dir="coco_panoptic", image_dir="VOC2012/JPEGImages", **kwargs)


@real_data
def test_real_panoptic_categories_are_cocos_80_things():
    data = json.loads((REAL / "coco_panoptic" / "panoptic_train2017.json").read_text())
    things = [c for c in data["categories"] if c["isthing"]]
    assert [c["id"] for c in things] == list(COCO_CATEGORY_IDS)
    assert [c["name"] for c in things] == list(COCO_CLASSES)


@real_data
def test_real_panoptic_masks_match_the_voc_palette_masks_of_the_shared_classes():
    reader = real_reader()
    names = reader.read_list("train")
    assert len(names) == 98 and reader.source("train") == "panoptic"
    voc_names = sorted(p.stem for p in (REAL / "VOC2012" / "SegmentationClass").glob("*.png"))[:6]
    voc_to_coco = {"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "diningtable": "dining table"}
    voc_to_coco |= {"pottedplant": "potted plant", "tvmonitor": "tv"}
    to_voc = np.zeros(256, np.uint8)  # our label -> VOC label (0 for the 60 things VOC lacks)
    to_voc[255] = 255
    for v, name in enumerate(VOC_CLASSES, 1):
        to_voc[COCO_CLASSES.index(voc_to_coco.get(name, name)) + 1] = v
    labels, problems = reader.load_labels(voc_names)
    assert not problems
    for name in voc_names:
        image, ours = reader.read_sample(name)
        voc = read_mask(REAL / "VOC2012" / "SegmentationClass" / f"{name}.png")
        assert ours.shape == voc.shape == image.shape[:2]
        assert (ours[voc == 255] == 255).all()  # unlabelled pixels are ignore in both
        labelled = ours != 255
        assert np.array_equal(to_voc[ours][labelled], voc[labelled])  # same class (or background) everywhere else
        crowd = (ours == 255) & (voc != 255)  # our crowd segments: VOC kept their class
        assert crowd.mean() < 0.5
        present = {int(v) for v in np.unique(ours) if 0 < v < 255}
        assert labels[name] == sorted(v - 1 for v in present)
    bowls = reader.load_labels(["000000000009"])[0]["000000000009"]  # a photo without VOC classes
    assert [COCO_CLASSES[i] for i in bowls] == ["bowl", "orange", "broccoli"]


@real_data
def test_real_coco_config_composes_and_yields_batches(tmp_path):
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "dataset=coco",
                f"dataset.root={REAL}",
                "dataset.year=2017",
                "dataset.annotation_dir=coco_panoptic",
                "dataset.image_dir=VOC2012/JPEGImages",
                "dataset.val_list=train",
                "dataset.crop_size=64",
                "dataset.val_size=64",
                "dataset.batch_size=2",
                "dataset.val_batch_size=2",
                "dataset.num_workers=0",
                "dataset.pin_memory=false",
            ],
        )
    data = OmegaConf.to_container(cfg.dataset, resolve=True)
    check_dataset(data)
    dm = build_datamodule(data, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 80 and dm.has_background and len(dm.train_set) == 98
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["mask"].shape == (2, 64, 64)
    assert batch["labels"].shape == (2, 80) and (batch["labels"].sum(1) > 0).all()
    values = set(batch["mask"].unique().tolist())
    assert values <= set(range(81)) | {255}
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, 64, 64) and val["name"] == ["000000000009", "000000000025"]
