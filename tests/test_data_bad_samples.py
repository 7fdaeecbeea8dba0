"""Bad samples in both layouts: a DatasetError naming the file, or (on_bad_sample=skip) skipped and counted."""

import warnings

import numpy as np
import pytest
import torch

from asdt_lightning.data.coco_stuff import CocoStuffReader
from asdt_lightning.data.datamodule import SegmentationDataModule, VOCDataModule
from asdt_lightning.data.dataset import BadSample, DatasetWarning, SegmentationDataset
from asdt_lightning.data.transforms import build_val_transform
from asdt_lightning.data.voc import VOC_CLASSES, VOCReader, VOCSegmentation, write_mask_png
from asdt_lightning.errors import DatasetError
from data_roots import make_coco, make_voc

OBJECTS = {"a": ["cat"], "b": ["dog", "person"], "c": ["bus"], "d": ["car"]}


@pytest.fixture
def voc(tmp_path, monkeypatch):
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    return make_voc(tmp_path, OBJECTS, lists={"val": list(OBJECTS), "train": list(OBJECTS)})


def test_list_entry_without_an_image_is_an_error_or_skipped_at_construction(voc):
    (voc / "JPEGImages" / "c.jpg").unlink()
    with pytest.raises(DatasetError, match=r"JPEGImages/c\.jpg is missing \(listed in .*val\.txt\).*on_bad_sample"):
        VOCSegmentation(voc, "val")
    with pytest.warns(DatasetWarning, match=r"skipping 1 bad entr.*c\.jpg"):
        ds = VOCSegmentation(voc, "val", on_bad_sample="skip")
    assert ds.names == ["a", "b", "d"] and list(ds.skipped) == ["c"]
    assert ds.image_labels == [[7], [11, 14], [6]]  # labels stay with their images


def test_unknown_class_or_missing_xml_is_named(voc):
    (voc / "Annotations" / "b.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    (voc / "Annotations" / "d.xml").unlink()
    with pytest.raises(DatasetError, match=r"unknown class 'unicorn' in .*b\.xml"):
        VOCSegmentation(voc, "val")
    with pytest.warns(DatasetWarning, match="skipping 2 bad entr"):
        ds = VOCSegmentation(voc, "val", on_bad_sample="skip")
    assert ds.names == ["a", "c"] and "d.xml is missing" in ds.skipped["d"]
    with pytest.raises(DatasetError, match="on_bad_sample must be one of"):
        VOCSegmentation(voc, "val", on_bad_sample="ignore")


def corrupt(voc):
    (voc / "JPEGImages" / "b.jpg").write_bytes((voc / "JPEGImages" / "b.jpg").read_bytes()[:200])  # truncated
    write_mask_png(voc / "SegmentationClass" / "c.png", np.zeros((5, 7), np.uint8))  # another size


def test_unreadable_image_and_mask_of_another_size_raise_naming_the_file(voc):
    corrupt(voc)
    ds = VOCSegmentation(voc, "val")
    assert ds[0]["name"] == "a"
    with pytest.raises(DatasetError, match=r"cannot read image .*b\.jpg"):
        ds[1]
    with pytest.raises(DatasetError, match=r"mask .*c\.png is 7x5 but its image is 32x24"):
        ds[2]


def test_mask_value_outside_the_classes_is_named_not_passed_on(voc):
    mask = np.zeros((24, 32), np.uint8)
    mask[:4, :4] = 21  # VOC has labels 0..20 and 255
    write_mask_png(voc / "SegmentationClass" / "d.png", mask)
    ds = VOCSegmentation(voc, "val")
    with pytest.raises(DatasetError, match=r"mask .*d\.png holds value\(s\) \[21\], but voc has labels 0\.\.20"):
        ds[3]
    assert VOCSegmentation(voc, "val", on_bad_sample="skip")[3].name == "d"  # a BadSample, skipped and counted


@pytest.mark.parametrize("workers", [0, 2])
def test_skipped_samples_leave_the_batch_and_are_counted(voc, workers):
    corrupt(voc)
    dm = VOCDataModule(voc, VOC_CLASSES, train_list="train", val_list="val", crop_size=16, val_size=32)
    dm.batch_size = dm.val_batch_size = 2
    dm.num_workers = workers
    dm.on_bad_sample = "skip"
    dm.setup("fit")
    batches = [dm.on_before_batch_transfer(b, 0) for b in dm.val_dataloader()]
    assert [b["name"] for b in batches] == [["a"], ["d"]]  # b, c dropped; no batch is empty
    assert all("skipped" not in b for b in batches)
    assert dm.bad_samples == {"b": 1, "c": 1}
    assert batches[0]["mask"].shape == (1, 32, 32) and batches[0]["labels"].shape == (1, 20)
    with pytest.warns(DatasetWarning, match=r"skipped 0 list entr\(ies\) and 2 unreadable sample\(s\).*: b, c"):
        dm.teardown("fit")
    [dm.on_before_batch_transfer(b, 0) for b in dm.val_dataloader()]  # validate after fit: the same two again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.teardown("validate")  # said once, not after every stage


def test_a_batch_of_bad_samples_takes_the_next_good_one(voc):
    corrupt(voc)
    (voc / "JPEGImages" / "a.jpg").write_bytes(b"")
    ds = VOCSegmentation(voc, "val", on_bad_sample="skip")
    with pytest.warns(DatasetWarning):
        batches = list(SegmentationDataModule(VOCReader(voc), on_bad_sample="skip", num_workers=0).loader(ds, 2, False))
    assert [b["name"] for b in batches] == [["d"], ["d"]] and batches[0]["skipped"] == ["a", "b"]
    for name in "bcd":
        (voc / "JPEGImages" / f"{name}.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="every sample of the dataset is bad"), pytest.warns(DatasetWarning):
        list(SegmentationDataModule(VOCReader(voc), num_workers=0).loader(ds, 2, False))


def test_coco_stuff_bad_samples_error_and_skip(tmp_path, monkeypatch):
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_coco(tmp_path, n=6)
    (root / "annotations" / "COCO_train2014_000000000001.mat").write_bytes(b"garbage")
    (root / "images" / "COCO_train2014_000000000002.jpg").write_bytes(b"garbage")
    reader = CocoStuffReader(root)
    with pytest.raises(DatasetError, match=r"cannot read annotation .*000000000001\.mat"):
        SegmentationDataset(reader, "train")
    with pytest.warns(DatasetWarning, match=r"skipping 1 bad entr.*000000000001\.mat"):
        ds = SegmentationDataset(reader, "train", on_bad_sample="skip")
    assert len(ds) == 3
    with pytest.warns(DatasetWarning, match=r"000000000002\.jpg"):
        assert isinstance(ds[1], BadSample) and ds[1].name == "COCO_train2014_000000000002"


def test_voc_test_split_reads_images_names_and_sizes_without_masks_or_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_voc(tmp_path, {"t1": [], "t2": []}, size=(30, 20), lists={"test": ["t1", "t2"]})
    for sub in ("Annotations", "SegmentationClass"):
        for f in (root / sub).iterdir():
            f.unlink()
        (root / sub).rmdir()
    with pytest.raises(DatasetError, match="Annotations"):
        VOCReader(root).check(["test"])
    assert VOCReader(root).check(["test"], targets=False) == root
    dm = VOCDataModule(root, VOC_CLASSES, num_workers=0)
    ds = dm.dataset("test", build_val_transform(32), targets=False)
    batch = next(iter(dm.loader(ds, 2, train=False)))
    assert set(batch) == {"image", "valid", "size", "name", "index", "skipped"}
    assert batch["name"] == ["t1", "t2"] and batch["size"].tolist() == [[30, 20], [30, 20]]
    assert batch["image"].shape == (2, 3, 32, 32) and batch["valid"][0].sum() == 32 * 21  # 30x20 -> 32x21
    assert torch.equal(batch["index"], torch.tensor([0, 1]))


def test_validation_list_with_an_image_without_a_mask_is_refused(voc):
    (voc / "SegmentationClass" / "d.png").unlink()
    dm = VOCDataModule(voc, VOC_CLASSES, train_list="train", val_list="val", crop_size=16, val_size=32)
    with pytest.raises(DatasetError, match=r"1 of 4 images of 'val' have no ground-truth mask \(e\.g\. d\)"):
        dm.setup("fit")
