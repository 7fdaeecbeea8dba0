"""VOC reading on the 1,449 real VOC 2012 val masks (shared/), and on tiny roots built here."""

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asdt_lightning.data import voc as voc_module
from asdt_lightning.data.voc import (
    VOC_CLASSES,
    VOCSegmentation,
    check_voc_root,
    read_image_labels,
    read_mask,
    resolve_voc_root,
    split_list_path,
    voc_palette,
    write_mask_png,
)
from asdt_lightning.errors import DatasetError
from data_roots import real_voc_masks

REAL = real_voc_masks()
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="shared VOC val masks not available")
INDEX = {c: i for i, c in enumerate(VOC_CLASSES)}


@pytest.fixture(scope="module")
def real_masks():
    """name -> (mode, palette, (H, W) uint8 mask) of every real val mask."""
    names = (REAL / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    out = {}
    for n in names:
        with Image.open(REAL / "SegmentationClass" / f"{n}.png") as im:
            out[n] = (im.mode, im.getpalette(), read_mask(REAL / "SegmentationClass" / f"{n}.png"))
    return out


@needs_real
def test_every_real_val_mask_is_a_voc_palette_png_with_a_void_band(real_masks):
    assert len(real_masks) == 1449
    palette = voc_palette()
    for name, (mode, pal, mask) in real_masks.items():
        assert mode == "P", name
        assert pal == palette, name
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255}, name
        assert 255 in values, name  # every VOC mask has a void band at object boundaries


@needs_real
def test_real_val_class_statistics(real_masks):
    counts, per_image = Counter(), Counter()
    for _, _, mask in real_masks.values():
        present = [VOC_CLASSES[v - 1] for v in np.unique(mask) if 0 < v < 255]
        counts.update(present)
        per_image[len(present)] += 1
    assert counts["person"] == 446 and counts["cat"] == 119  # published VOC12 val statistics
    assert len(counts) == 20 and min(counts.values()) > 50
    # further per-class image counts of this mask set, and how many classes each image holds
    more = {"aeroplane": 90, "bird": 103, "car": 127, "chair": 123, "dog": 128, "sheep": 57}
    assert {c: counts[c] for c in more} == more
    assert sum(counts.values()) == 2148  # = 927 + 2 * 374 + 3 * 122 + 4 * 23 + 5 * 3
    assert per_image == {1: 927, 2: 374, 3: 122, 4: 23, 5: 3}  # no val image is background only


def test_palette_is_the_standard_voc_colour_map():
    p = voc_palette()
    assert len(p) == 768
    assert p[0:3] == [0, 0, 0] and p[3:6] == [128, 0, 0] and p[6:9] == [0, 128, 0]
    assert p[15 * 3 : 16 * 3] == [192, 128, 128]  # person
    assert p[20 * 3 : 21 * 3] == [0, 64, 128]  # tvmonitor
    assert p[255 * 3 : 256 * 3] == [224, 224, 192]  # void


def test_mask_png_round_trip_and_rgb_refused(tmp_path):
    mask = np.random.default_rng(0).integers(0, 21, (17, 23)).astype(np.uint8)
    mask[0] = 255
    write_mask_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P" and im.getpalette() == voc_palette()
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)
    assert read_mask(tmp_path / "m.png").dtype == np.uint8
    assert sorted(os.listdir(tmp_path)) == ["m.png"]  # atomic: no temporary file left behind
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match=r"rgb\.png.*RGB"):
        read_mask(tmp_path / "rgb.png")


def make_root(tmp, names=("a", "b"), objects=(("cat", "dog"), ("person",)), masks=True, size=(20, 30)):
    """A VOCdevkit/VOC2012 root: grey JPEGs, XMLs (every other object difficult), zero masks, val.txt."""
    root = tmp / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, objs in zip(names, objects, strict=True):
        Image.fromarray(np.full((*size, 3), 100, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        xml = "".join(f"<object><name>{o}</name><difficult>{i % 2}</difficult></object>" for i, o in enumerate(objs))
        (root / "Annotations" / f"{name}.xml").write_text(f"<annotation>{xml}</annotation>")
        if masks:
            write_mask_png(root / "SegmentationClass" / f"{name}.png", np.zeros(size, np.uint8))
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(names) + "\n")
    return root


def test_image_labels_include_difficult_objects_and_fail_clearly(tmp_path):
    root = make_root(tmp_path, names=("a",), objects=(("dog", "cat", "dog", "person"),))
    assert read_image_labels(root / "Annotations" / "a.xml", INDEX) == [7, 11, 14]  # sorted, unique
    (root / "Annotations" / "bad.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(DatasetError, match=r"unicorn.*bad\.xml|bad\.xml.*unicorn"):
        read_image_labels(root / "Annotations" / "bad.xml", INDEX)
    (root / "Annotations" / "broken.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match=r"broken\.xml"):
        read_image_labels(root / "Annotations" / "broken.xml", INDEX)


def test_dataset_sample_contract_and_root_forms(tmp_path):
    root = make_root(tmp_path)
    assert resolve_voc_root(tmp_path / "VOCdevkit") == root
    assert resolve_voc_root(root) == root
    ds = VOCSegmentation(tmp_path / "VOCdevkit", "val", VOC_CLASSES)
    assert ds.names == ["a", "b"] and ds.num_classes == 20 and ds.class_names == list(VOC_CLASSES)
    assert ds.image_labels == [[7, 11], [14]] and len(ds) == 2
    sample = ds[0]
    assert sample["labels"].dtype == torch.float32 and sample["labels"].shape == (20,)
    assert sample["labels"].nonzero().flatten().tolist() == [7, 11]
    assert sample["image"].shape == (3, 20, 30) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (20, 30) and sample["mask"].dtype == torch.int64
    assert sample["valid"].dtype == torch.bool and sample["valid"].all()
    assert sample["name"] == "a" and sample["index"] == 0
    # without a transform the grey 100 image is ImageNet-normalised
    assert torch.allclose(sample["image"][0], torch.full((20, 30), (100 / 255 - 0.485) / 0.229), atol=0.05)


def test_segmentation_class_aug_is_preferred_and_missing_masks_are_ignore(tmp_path):
    root = make_root(tmp_path)
    write_mask_png(root / "SegmentationClassAug" / "a.png", np.full((20, 30), 8, np.uint8))
    ds = VOCSegmentation(root, "val", VOC_CLASSES)
    assert (ds[0]["mask"] == 8).all()  # from SegmentationClassAug/
    assert (ds[1]["mask"] == 0).all()  # not in Aug: SegmentationClass/
    bare = make_root(tmp_path / "bare", masks=False)
    assert (VOCSegmentation(bare, "val", VOC_CLASSES)[1]["mask"] == 255).all()


def test_image_labels_are_parsed_once_per_root_and_reparsed_when_a_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_root(tmp_path)
    parsed = []
    real_parse = voc_module.ET.parse
    monkeypatch.setattr(voc_module.ET, "parse", lambda path: parsed.append(Path(path).name) or real_parse(path))
    assert VOCSegmentation(root, "val", VOC_CLASSES).image_labels == [[7, 11], [14]]
    assert sorted(parsed) == ["a.xml", "b.xml"]
    cached = list((tmp_path / "cache" / "labels").glob("voc-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["entries"]["a"][1] == ["cat", "dog"]
    (root / "ImageSets/Segmentation/train.txt").write_text("b\n")
    assert VOCSegmentation(root, "train", VOC_CLASSES).image_labels == [[14]]  # another list: same cache
    assert len(parsed) == 2
    xml = root / "Annotations" / "a.xml"
    xml.write_text("<annotation><object><name>bus</name></object></annotation>")
    os.utime(xml, ns=(1, 1))  # a changed file (size and mtime) is parsed again, the other is not
    assert VOCSegmentation(root, "val", VOC_CLASSES).image_labels == [[5], [14]]
    assert sorted(parsed) == ["a.xml", "a.xml", "b.xml"]
    assert len(list((tmp_path / "cache" / "labels").glob("*.json"))) == 1


def test_a_list_can_be_a_path(tmp_path):
    root = make_root(tmp_path)
    lst = tmp_path / "mine.txt"
    lst.write_text("JPEGImages/b.jpg SegmentationClass/b.png\n")
    assert split_list_path(root, str(lst)) == lst
    assert split_list_path(root, "train_aug") == root / "ImageSets" / "Segmentation" / "train_aug.txt"
    ds = VOCSegmentation(root, str(lst), VOC_CLASSES)
    assert ds.names == ["b"] and ds.image_labels == [[14]]


def test_bad_samples_are_named(tmp_path):
    root = make_root(tmp_path)
    write_mask_png(root / "SegmentationClass" / "b.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DatasetError, match=r"b\.png is 5x5"):  # its header shows it: named before any read
        VOCSegmentation(root, "val", VOC_CLASSES)
    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DatasetError, match=r"a\.jpg"):
        VOCSegmentation(root, "val", VOC_CLASSES)


def test_check_names_the_missing_folder_or_list(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere.*host\.robots\.ox\.ac\.uk.*dataset\.root"):
        check_voc_root(tmp_path / "nowhere", ["val"])
    root = make_root(tmp_path)
    with pytest.raises(DatasetError, match=r"train_aug\.txt.*10,582.*dataset\.train_list"):
        check_voc_root(root, ["train_aug", "val"])
    with pytest.raises(DatasetError, match=r"trainx\.txt"):
        check_voc_root(root, ["val", "trainx"])
    assert check_voc_root(tmp_path / "VOCdevkit", ["val"], masks_required=["val"]) == root
    (root / "ImageSets/Segmentation/empty.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"empty\.txt.*empty"):
        check_voc_root(root, ["empty"])
    bare = make_root(tmp_path / "bare", masks=False)
    assert check_voc_root(bare, ["val"]) == bare  # masks only needed where asked
    with pytest.raises(DatasetError, match="SegmentationClass"):
        check_voc_root(bare, ["val"], masks_required=["val"])
    for xml in (bare / "Annotations").iterdir():
        xml.unlink()
    (bare / "Annotations").rmdir()
    with pytest.raises(DatasetError, match="Annotations"):
        check_voc_root(bare, ["val"])


@needs_real
def test_real_masks_through_the_dataset(tmp_path, real_masks):
    """A root with the real masks (and blank images of their size): the dataset reads them unchanged."""
    names = sorted(real_masks)[:12]
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for n in names:
        mask = real_masks[n][2]
        os.symlink(REAL / "SegmentationClass" / f"{n}.png", root / "SegmentationClass" / f"{n}.png")
        Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / "JPEGImages" / f"{n}.jpg")
        objs = "".join(f"<object><name>{VOC_CLASSES[v - 1]}</name></object>" for v in np.unique(mask) if 0 < v < 255)
        (root / "Annotations" / f"{n}.xml").write_text(f"<annotation>{objs}</annotation>")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(names))
    ds = VOCSegmentation(root, "val", VOC_CLASSES)
    for i, n in enumerate(names):
        sample = ds[i]
        mask = real_masks[n][2]
        assert torch.equal(sample["mask"], torch.from_numpy(mask).long())
        present = sorted(int(v) - 1 for v in np.unique(mask) if 0 < v < 255)
        assert sample["labels"].nonzero().flatten().tolist() == present
