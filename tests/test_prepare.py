"""``python -m asdt_lightning.prepare``: counts per list and class, problems, what is missing, exit status."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from PIL import Image

from asdt_lightning.data.coco_stuff import CocoStuffReader
from asdt_lightning.data.voc import VOC_CLASSES, VOCReader, read_mask
from asdt_lightning.prepare import dataset_report, exit_status, format_report, run
from data_roots import make_coco, make_voc, real_voc_masks

SRC = Path(__file__).resolve().parents[1] / "src"
REAL = real_voc_masks()


def prepare_cli(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(SRC), "ASDT_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "asdt_lightning.prepare", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


def config(*overrides):
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        return compose("prepare", overrides=list(overrides))


def test_bad_root_exits_2_with_one_error_line_and_writes_nothing(tmp_path):
    proc = prepare_cli(tmp_path, "dataset=coco_stuff", f"dataset.root={tmp_path / 'nowhere'}")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no COCO-Stuff 10K dataset at")
    assert "cocostuff-10k-v1.1.zip" in lines[0]
    assert sorted(os.listdir(tmp_path)) == []  # no Hydra output folder, no log file


def test_coco_root_is_converted_and_counted_from_the_command_line(tmp_path):
    root = make_coco(tmp_path / "data", n=6)
    proc = prepare_cli(tmp_path, "dataset=coco_stuff", f"dataset.root={root}", "workers=2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "coco_stuff at" in out and "171 classes, no background class" in out
    assert any(line.split()[:4] == ["train", "4", "4", "4"] for line in out.splitlines())
    assert any(line.split()[:4] == ["test", "2", "2", "2"] for line in out.splitlines())
    person = next(line for line in out.splitlines() if line.startswith("person "))
    assert person.split()[1:] == ["1", "/", "1", "0", "/", "0"]  # image 0 of train has a person, none in test
    assert "converting annotations: 6/6" in proc.stderr
    assert len(list((tmp_path / "cache" / "coco_stuff").glob("*/labels/*.png"))) == 6
    assert os.listdir(tmp_path) == ["data", "cache"] or sorted(os.listdir(tmp_path)) == ["cache", "data"]


def test_voc_report_names_missing_parts_and_where_to_get_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_voc(tmp_path, {"a": ["cat"], "b": ["dog", "cat"]}, lists={"val": ["a", "b"], "test": ["a"]})
    status = run(config("dataset=voc", f"dataset.root={tmp_path / 'VOCdevkit'}", "workers=0"))
    out = capsys.readouterr()
    assert status == 2 and "error: list(s) train_aug missing" in out.err
    assert "train_aug.txt not found" in out.out and "jiwoon-ahn/psa" in out.out
    assert "SegmentationClassAug is missing" in out.out and "SegmentationClassAug.zip" in out.out
    status = run(config("dataset=voc", f"dataset.root={root}", "splits=[val,test]"))
    out = capsys.readouterr().out
    assert status == 0
    cat = next(line for line in out.splitlines() if line.startswith("cat "))
    assert cat.split()[1:] == ["2", "/", "2"]  # two images with a cat: by their XML, and by their masks
    assert any(line.split()[:5] == ["test", "1", "1", "-", "0"] for line in out.splitlines())  # images only


def test_bad_samples_are_listed_and_set_the_status(tmp_path, monkeypatch):
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_voc(tmp_path, {"a": ["cat"], "b": ["dog"], "c": ["bus"], "d": ["car"]})
    (root / "JPEGImages" / "a.jpg").write_bytes(b"\xff\xd8 broken")  # a broken header
    data = (root / "JPEGImages" / "d.jpg").read_bytes()
    (root / "JPEGImages" / "d.jpg").write_bytes(data[: data.index(b"\xff\xda") + 20])  # a whole header, no body
    (root / "Annotations" / "c.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    report = dataset_report(VOCReader(root), ["val"], scan=True)
    [val] = report.splits
    assert (val.entries, val.usable) == (4, 1) and len(val.problems) == 3
    text = format_report(report)
    assert "a.jpg" in text and "d.jpg: image file is truncated" in text and "unicorn" in text
    assert "problems (3)" in text
    assert exit_status(report, ["val"], "error")[0] == 1 and exit_status(report, ["val"], "skip") == (0, None)
    [unscanned] = dataset_report(VOCReader(root), ["val"], scan=False).splits
    assert unscanned.usable == 2  # the header check (which training runs too) finds a.jpg; only a decode finds d.jpg
    assert any("a.jpg" in p for p in unscanned.problems) and not any("d.jpg" in p for p in unscanned.problems)


@pytest.mark.skipif(not REAL.is_dir(), reason="shared VOC val masks not available")
def test_real_val_masks_through_prepare(tmp_path, monkeypatch):
    """A root made of the 1,449 real val masks (images: blank JPEGs of their sizes, XMLs from the masks):
    the scan reads every mask and counts the published per-class image numbers."""
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    names = (REAL / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    blanks: dict[tuple[int, int], Path] = {}
    for n in names:
        src = REAL / "SegmentationClass" / f"{n}.png"
        os.symlink(src, root / "SegmentationClass" / f"{n}.png")
        with Image.open(src) as im:
            size = im.size
        if size not in blanks:
            blanks[size] = tmp_path / f"blank_{size[0]}x{size[1]}.jpg"
            Image.new("RGB", size).save(blanks[size])
        os.symlink(blanks[size], root / "JPEGImages" / f"{n}.jpg")
        present = [v for v in np.unique(read_mask(src)) if 0 < v < 255]
        objs = "".join(f"<object><name>{VOC_CLASSES[v - 1]}</name></object>" for v in present)
        (root / "Annotations" / f"{n}.xml").write_text(f"<annotation>{objs}</annotation>")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(names))
    report = dataset_report(VOCReader(root), ["val"], scan=True, workers=2)
    [val] = report.splits
    assert (val.entries, val.usable, val.masks, val.problems) == (1449, 1449, 1449, [])
    by_name = Counter({VOC_CLASSES[i]: c for i, c in val.per_class_masks.items()})
    assert by_name["person"] == 446 and by_name["cat"] == 119 and sum(by_name.values()) == 2148
    assert val.per_class_masks == val.per_class


def test_coco_report_counts_per_class_for_both_mappings(tmp_path, monkeypatch):
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_coco(tmp_path, n=6)
    for classes in (171, 182):
        reader = CocoStuffReader(root, classes)
        report = dataset_report(reader, ["all"], scan=True)
        counts = {reader.class_names[i]: c for i, c in report.splits[0].per_class.items()}
        assert counts["person"] == 1 and counts["grass"] == 2 and counts["sea"] == 2
        assert report.splits[0].per_class == report.splits[0].per_class_masks
