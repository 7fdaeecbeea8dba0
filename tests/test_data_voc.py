"""VOC reading on the 1,449 real VOC 2012 val masks (shared/), and on tiny roots built here."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asdt_lightning.data.voc import (
    VOC_CLASSES,
    VOCSegmentation,
    check_voc_root,
    read_image_labels,
    read_mask,
    resolve_voc_root,
    voc_palette,
    write_mask_png,
)
from asdt_lightning.errors import DatasetError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2012_val_masks"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="shared VOC val masks not beside the checkout")


@pytest.fixture(scope="module")
def real_masks():
    names = (REAL / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    return {n: read_mask(REAL / "SegmentationClass" / f"{n}.png") for n in names}


@needs_real
def test_real_val_masks_have_the_voc_palette_values_and_boundary_band(real_masks):
    assert len(real_masks) == 1449
    with Image.open(REAL / "SegmentationClass" / f"{next(iter(real_masks))}.png") as im:
        assert im.mode == "P"
        assert im.getpalette()[: 3 * 21] == voc_palette()[: 3 * 21]
    for mask in real_masks.values():
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255}
        assert 255 in values  # every VOC mask has a void band


@needs_real
def test_real_val_class_statistics(real_masks):
    counts = Counter()
    for mask in real_masks.values():
        for v in np.unique(mask):
            if 0 < v < 255:
                counts[VOC_CLASSES[v - 1]] += 1
    assert counts["person"] == 446
    assert counts["cat"] == 119
    assert len(counts) == 20
    assert all(counts[c] > 40 for c in VOC_CLASSES)
    # every val image has at least one foreground class
    assert all(((m > 0) & (m < 255)).any() for m in real_masks.values())


def test_palette_is_the_standard_voc_colour_map():
    p = voc_palette()
    assert len(p) == 768
    assert p[0:3] == [0, 0, 0] and p[3:6] == [128, 0, 0] and p[15 * 3 : 16 * 3] == [192, 128, 128]
    assert p[255 * 3 : 256 * 3] == [224, 224, 192]


def test_mask_png_round_trip(tmp_path):
    mask = np.random.default_rng(0).integers(0, 21, (17, 23)).astype(np.uint8)
    mask[0] = 255
    write_mask_png(tmp_path / "m.png", mask)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="rgb.png"):
        read_mask(tmp_path / "rgb.png")


def make_root(tmp, names=("a", "b"), objects=(("cat", "dog"), ("person",)), masks=True, size=(20, 30)):
    root = tmp / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, objs in zip(names, objects, strict=True):
        Image.fromarray(np.full((*size, 3), 100, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        xml = "".join(f"<object><name>{o}</name><difficult>{i % 2}</difficult></object>" for i, o in enumerate(objs))
        (root / "Annotations" / f"{name}.xml").write_text(f"<annotation>{xml}</annotation>")
        if masks:
            write_mask_png(root / "SegmentationClass" / f"{name}.png", np.zeros(size, np.uint8))
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(names) + "\n")
    return root


def test_image_labels_include_difficult_objects_and_fail_on_unknown_names(tmp_path):
    root = make_root(tmp_path)
    index = {c: i for i, c in enumerate(VOC_CLASSES)}
    assert read_image_labels(root / "Annotations" / "a.xml", index) == [7, 11]
    (root / "Annotations" / "bad.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(DatasetError, match="unicorn.*bad.xml|bad.xml.*unicorn"):
        read_image_labels(root / "Annotations" / "bad.xml", index)


def test_dataset_reads_labels_masks_and_accepts_devkit_or_voc2012(tmp_path):
    root = make_root(tmp_path)
    assert resolve_voc_root(tmp_path / "VOCdevkit") == root
    ds = VOCSegmentation(tmp_path / "VOCdevkit", "val", VOC_CLASSES)
    sample = ds[0]
    assert sample["labels"].nonzero().flatten().tolist() == [7, 11]
    assert sample["image"].shape == (3, 20, 30) and sample["mask"].shape == (20, 30)
    assert sample["valid"].all() and sample["name"] == "a"


def test_split_without_masks_gives_all_ignore(tmp_path):
    make_root(tmp_path, masks=False)
    ds = VOCSegmentation(tmp_path / "VOCdevkit", "val", VOC_CLASSES)
    assert (ds[1]["mask"] == 255).all()


def test_bad_samples_are_named(tmp_path):
    root = make_root(tmp_path)
    write_mask_png(root / "SegmentationClass" / "b.png", np.zeros((5, 5), np.uint8))
    ds = VOCSegmentation(root, "val", VOC_CLASSES)
    with pytest.raises(DatasetError, match="b.png"):
        ds[1]
    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DatasetError, match="a.jpg"):
        VOCSegmentation(root, "val", VOC_CLASSES)


def test_check_names_the_missing_folder_or_list(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        check_voc_root(tmp_path / "nowhere", ["val"])
    root = make_root(tmp_path)
    with pytest.raises(DatasetError, match="train_aug.txt.*10,582"):
        check_voc_root(root, ["train_aug", "val"])
    assert check_voc_root(root, ["val"], masks_required=["val"]) == root
    (root / "ImageSets/Segmentation/empty.txt").write_text("\n")
    with pytest.raises(DatasetError, match="empty"):
        check_voc_root(root, ["empty"])
