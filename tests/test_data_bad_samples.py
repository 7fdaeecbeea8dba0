"""Bad samples in both layouts: a DatasetError naming the file, or (on_bad_sample=skip) skipped and counted.

What the file headers show (an image or mask that does not open, a mask of another size) is found when a list is
resolved, before the first step; what only a decode shows (a truncated JPEG body, a label value outside the
classes) while loading. Through the command line both are one ``error:`` line and exit code 2.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from asdt_lightning.data import dataset as dataset_module
from asdt_lightning.data.coco_stuff import CocoStuffReader
from asdt_lightning.data.datamodule import SegmentationDataModule, VOCDataModule
from asdt_lightning.data.dataset import BadSample, DatasetWarning, SegmentationDataset
from asdt_lightning.data.transforms import build_val_transform
from asdt_lightning.data.voc import VOC_CLASSES, VOCReader, VOCSegmentation, write_mask_png
from asdt_lightning.errors import DatasetError
from data_roots import make_coco, make_voc, write_coco_mat
from tiny_runs import TINY_TRAINING as TINY

SRC = Path(__file__).resolve().parents[1] / "src"

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
    """Problems the headers show: b.jpg cut inside its header, c.png of another size than c.jpg."""
    (voc / "JPEGImages" / "b.jpg").write_bytes((voc / "JPEGImages" / "b.jpg").read_bytes()[:200])
    write_mask_png(voc / "SegmentationClass" / "c.png", np.zeros((5, 7), np.uint8))


def truncate_body(path):
    """Keep a JPEG's whole header (it opens, with its size) and cut its scan data: only a decode fails."""
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xff\xda") + 20])


def corrupt_bodies(voc):
    """Problems only a decode shows: b.jpg's scan data cut, c.png holding a value outside the classes."""
    truncate_body(voc / "JPEGImages" / "b.jpg")
    mask = np.zeros((24, 32), np.uint8)
    mask[:4, :4] = 21
    write_mask_png(voc / "SegmentationClass" / "c.png", mask)


def test_headers_find_an_unreadable_image_and_a_mask_of_another_size_before_any_sample_is_read(voc):
    corrupt(voc)
    with pytest.raises(DatasetError) as caught:
        VOCSegmentation(voc, "val")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("2 bad entries in list 'val': cannot read image ")
    assert "b.jpg" in message and "c.png is 7x5 but its image is 32x24" in message
    assert message.endswith("set dataset.on_bad_sample=skip to skip bad entries")
    with pytest.warns(DatasetWarning, match=r"skipping 2 bad entr\(ies\) of list 'val', e\.g\. cannot read .*b\.jpg"):
        ds = VOCSegmentation(voc, "val", on_bad_sample="skip")
    assert ds.names == ["a", "d"] and list(ds.skipped) == ["b", "c"]
    assert ds.image_labels == [[7], [6]]


def test_the_error_counts_many_bad_entries_and_quotes_the_first_three(voc):
    for name in "abcd":
        (voc / "JPEGImages" / f"{name}.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"^4 bad entries in list 'val': cannot read image .*a\.jpg") as caught:
        VOCReader(voc).entries("val")
    assert "b.jpg" in str(caught.value) and "c.jpg" in str(caught.value) and "d.jpg" not in str(caught.value)
    assert " | and 1 more (python -m asdt_lightning.prepare lists them all)" in str(caught.value)
    with pytest.raises(DatasetError, match="no usable entry left"), pytest.warns(DatasetWarning, match="skipping 4"):
        VOCReader(voc).entries("val", on_bad_sample="skip")


def test_a_colour_mask_is_refused_from_its_header(voc):
    Image.new("RGB", (32, 24)).save(voc / "SegmentationClass" / "d.png")
    with pytest.raises(DatasetError, match=r"mask .*d\.png is a RGB image; masks must be palette"):
        VOCReader(voc).entries("val")
    assert VOCReader(voc).header_problems(["a", "d"], targets=False) == {}  # images only: masks are not read


def test_headers_are_read_in_threads_from_a_slow_disk_with_the_same_answer(voc, monkeypatch):
    corrupt(voc)
    serial = VOCReader(voc).header_problems(list(OBJECTS))
    monkeypatch.setattr(dataset_module, "HEADER_PILOT", 1)
    monkeypatch.setattr(dataset_module, "COLD_HEADER_S", 0.0)  # every disk is "cold": the pool reads the rest
    threaded = VOCReader(voc).header_problems(list(OBJECTS))
    assert threaded == serial and list(threaded) == ["b", "c"]


def test_decode_problems_raise_naming_the_file_when_read(voc):
    corrupt_bodies(voc)
    ds = VOCSegmentation(voc, "val")  # the headers are fine
    assert ds.names == list(OBJECTS) and ds[0]["name"] == "a"
    with pytest.raises(DatasetError, match=r"cannot read image .*b\.jpg: image file is truncated"):
        ds[1]
    with pytest.raises(DatasetError, match=r"mask .*c\.png holds value\(s\) \[21\]"):
        ds[2]
    write_mask_png(voc / "SegmentationClass" / "d.png", np.zeros((5, 7), np.uint8))  # after the check
    with pytest.raises(DatasetError, match=r"mask .*d\.png is 7x5 but its image is 32x24"):
        ds[3]


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
    corrupt_bodies(voc)
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
    corrupt_bodies(voc)
    truncate_body(voc / "JPEGImages" / "a.jpg")
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
    truncate_body(root / "images" / "COCO_train2014_000000000002.jpg")  # a decode problem: found when read
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


def test_coco_stuff_headers_are_checked_on_the_converted_pngs_naming_the_mat(tmp_path, monkeypatch):
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_coco(tmp_path, n=6)
    write_coco_mat(root / "annotations" / "COCO_train2014_000000000003.mat", np.full((5, 7), 3, np.uint8))
    reader = CocoStuffReader(root)
    pattern = r"mask .*labels/COCO_train2014_000000000003\.png is 7x5 but its image is 32x24.*converted from .*03\.mat"
    with pytest.raises(DatasetError, match=pattern):
        SegmentationDataset(reader, "train")
    with pytest.warns(DatasetWarning, match="skipping 1 bad entr"):
        assert len(SegmentationDataset(reader, "train", on_bad_sample="skip")) == 3


class RaisesInWorkers(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        raise DatasetError(f"cannot read image /data/x{index}.jpg: broken; fix or remove that file")


def test_an_error_raised_in_a_loader_worker_keeps_its_one_line_message():
    with pytest.raises(DatasetError) as caught:
        next(iter(DataLoader(RaisesInWorkers(), num_workers=1)))
    assert str(caught.value) == "cannot read image /data/x0.jpg: broken; fix or remove that file"
    assert "Original Traceback" in caught.value.worker_traceback
    assert DatasetError("plain\nmessage").worker_traceback is None and str(DatasetError("plain\nmessage")) == (
        "plain\nmessage"
    )


def train_cli(tmp_path, root, *overrides):
    """``python -m asdt_lightning.train`` on a VOC root, tiny, with one loader worker."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "ASDT_CACHE": str(tmp_path / "cache")}
    tiny = [o for o in TINY if not o.startswith("dataset.num_workers=")]
    args = ["dataset=voc", f"dataset.root={root}", "dataset.train_list=train", "dataset.val_list=val", *tiny]
    args += ["dataset.num_workers=1", "trainer.max_steps=2", "logger=none", f"output_dir={tmp_path / 'run'}"]
    cmd = [sys.executable, "-m", "asdt_lightning.train", *args, *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines, after checking that no traceback was printed."""
    assert "Traceback" not in stderr and "Caught DatasetError" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def cli_voc(tmp_path):
    objects = {k: ["cat"] if i % 2 else ["dog"] for i, k in enumerate("abcdefgh")}
    return make_voc(tmp_path / "data", objects, size=(64, 64), lists={"train": list("abcdef"), "val": ["g", "h"]})


def test_training_with_bad_files_stops_before_the_first_step_with_one_error_line(tmp_path, cli_voc):
    (cli_voc / "JPEGImages" / "b.jpg").write_bytes(b"garbage")
    write_mask_png(cli_voc / "SegmentationClass" / "d.png", np.zeros((5, 7), np.uint8))
    proc = train_cli(tmp_path, cli_voc)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and proc.stderr.rstrip().endswith(lines[0])
    assert lines[0].startswith("error: 2 bad entries in list 'train': cannot read image ")
    assert "JPEGImages/b.jpg" in lines[0] and "SegmentationClass/d.png is 7x5 but its image is 64x64" in lines[0]
    assert "dataset.on_bad_sample=skip" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()  # no step was taken

    proc = train_cli(tmp_path, cli_voc, "dataset.on_bad_sample=skip")
    assert proc.returncode == 0, proc.stderr
    assert "skipping 2 bad entr(ies) of list 'train'" in proc.stdout + proc.stderr  # a warning: logged under Hydra
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_a_sample_that_only_fails_to_decode_stops_training_with_one_error_line(tmp_path, cli_voc):
    truncate_body(cli_voc / "JPEGImages" / "c.jpg")
    proc = train_cli(tmp_path, cli_voc)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and proc.stderr.rstrip().endswith(lines[0])
    assert lines[0].startswith("error: cannot read image ") and "JPEGImages/c.jpg: image file is truncated" in lines[0]
