"""The held-out procedural dataset (benchmarks/heldout_dataset.py): deterministic, resumable, VOC-readable."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from benchmarks.heldout_dataset import (
    HELDOUT_CLASSES,
    SCENES,
    HeldoutSpec,
    main,
    render_heldout,
    train_command,
    write_heldout_voc,
)
from scipy import ndimage

from asdt_lightning.data.voc import VOCReader, read_mask, read_object_classes, voc_palette

SPEC = HeldoutSpec(num_train=8, num_val=4, seed=7)
C = len(HELDOUT_CLASSES)


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_heldout_voc(tmp_path_factory.mktemp("heldout") / "VOCdevkit", SPEC)


@pytest.fixture(scope="module")
def renders():
    spec = HeldoutSpec(seed=11)
    return [render_heldout(spec, i) for i in range(120)]


def test_classes_and_layout(root):
    assert 5 <= C <= 8 and len(set(HELDOUT_CLASSES)) == C and len(SCENES) == C
    assert not set(HELDOUT_CLASSES) & {"apple", "bell", "cone", "drum", "egg", "flag"}
    lists = {s: (root / f"ImageSets/Segmentation/{s}.txt").read_text().split() for s in ("train", "val", "trainval")}
    assert lists["train"] == [f"ho_{i:06d}" for i in range(8)] and lists["val"] == [f"ho_{i:06d}" for i in range(8, 12)]
    assert lists["trainval"] == lists["train"] + lists["val"]
    for folder, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("Annotations", "xml")):
        assert sorted(p.name for p in (root / folder).iterdir()) == [f"{n}.{ext}" for n in lists["trainval"]]
    assert not [p for p in root.rglob("*.tmp")]  # atomic writes leave nothing behind


def test_same_spec_gives_byte_identical_roots_and_another_seed_differs(root, tmp_path):
    assert tree_bytes(write_heldout_voc(tmp_path / "b", SPEC)) == tree_bytes(root)
    other = tree_bytes(write_heldout_voc(tmp_path / "c", HeldoutSpec(num_train=8, num_val=4, seed=8)))
    assert other["JPEGImages/ho_000000.jpg"] != tree_bytes(root)["JPEGImages/ho_000000.jpg"]


def test_an_interrupted_root_resumes_to_the_same_bytes(root, tmp_path):
    again = write_heldout_voc(tmp_path / "r", SPEC)
    expected = tree_bytes(again)
    for rel in ("JPEGImages/ho_000003.jpg", "SegmentationClass/ho_000005.png", "Annotations/ho_000009.xml"):
        (again / rel).unlink()
    (again / "ImageSets/Segmentation/val.txt").unlink()
    kept = again / "JPEGImages/ho_000000.jpg"
    before = kept.stat().st_mtime_ns
    write_heldout_voc(again, SPEC)
    assert tree_bytes(again) == expected
    assert kept.stat().st_mtime_ns == before  # existing files are not rewritten
    with pytest.raises(ValueError, match="another spec"):
        write_heldout_voc(again, HeldoutSpec(num_train=8, num_val=4, seed=8))


def test_the_package_reader_reads_labels_that_match_masks_and_xml(root):
    reader = VOCReader(root, HELDOUT_CLASSES)
    reader.check(["train", "val"], masks_required=["train", "val"])
    for split in ("train", "val"):
        entries = reader.entries(split)
        assert not entries.skipped
        for name, labels in zip(entries.names, entries.labels, strict=True):
            image, mask = reader.read_sample(name)
            assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and mask.shape == (128, 128)
            values = set(np.unique(mask).tolist())
            assert values <= set(range(C + 1)) | {255} and 255 in values and 0 in values
            in_mask = sorted(v - 1 for v in values if 0 < v < 255)
            assert in_mask and in_mask == labels
            xml = root / "Annotations" / f"{name}.xml"
            assert sorted({HELDOUT_CLASSES.index(c) for c in read_object_classes(xml)}) == in_mask
            for obj in ET.parse(xml).getroot().iter("object"):
                assert obj.findtext("difficult") == "0"
                x0, y0, x1, y1 = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
                assert 1 <= x0 <= x1 <= 128 and 1 <= y0 <= y1 <= 128
                cls = HELDOUT_CLASSES.index(obj.findtext("name")) + 1
                assert (mask[y0 - 1 : y1, x0 - 1 : x1] == cls).any()


def test_mask_png_is_a_voc_palette_png(root):
    from PIL import Image

    with Image.open(root / "SegmentationClass" / "ho_000000.png") as im:
        assert im.mode == "P" and im.getpalette() == voc_palette()
    with Image.open(root / "JPEGImages" / "ho_000000.jpg") as im:
        assert im.mode == "RGB" and im.size == (128, 128)


def test_render_matches_the_written_mask(root):
    for index in (0, 5, 11):
        sample = render_heldout(SPEC, index)
        assert np.array_equal(read_mask(root / "SegmentationClass" / f"ho_{index:06d}.png"), sample.mask)


def test_boundary_band_is_thin_and_on_every_object_boundary(renders):
    band_pixels = labelled = 0
    for sample in renders[:30]:
        mask, ids = sample.mask, sample.instances
        band = mask == 255
        edge = ndimage.maximum_filter(ids, 3) != ndimage.minimum_filter(ids, 3)
        assert not (band & ~edge).any()  # every band pixel is next to another object or the background
        for value in np.unique(mask[~band]):  # pixels of different labels are >= 3 px apart
            near = ndimage.maximum_filter((mask == value).astype(np.uint8), 5).astype(bool)
            assert not (near & ~band & (mask != value)).any()
        band_pixels += band.sum()
        labelled += ((mask > 0) & (mask < 255)).sum()
    assert 0.1 * labelled < band_pixels < 0.5 * labelled


def test_each_discriminative_part_is_a_minority_of_its_object(renders):
    full, visible = [], []
    for sample in renders:
        assert sample.labels == sorted(int(v) - 1 for v in np.unique(sample.mask) if 0 < v < 255)
        for k, obj in enumerate(sample.objects, start=1):
            own = (sample.instances == k) & (sample.mask != 255)
            assert own.sum() == obj.mask_pixels and (own & sample.part).sum() == obj.mask_part
            assert 0 < obj.mask_part < 0.5 * obj.mask_pixels  # the part is visible but a minority
            full.append(obj.full_part / obj.full_pixels)
            visible.append(obj.mask_part / obj.mask_pixels)
    assert min(full) >= 0.13 and max(full) <= 0.38  # spec.part_fraction (0.15, 0.35), up to rasterisation
    assert 0.18 < float(np.median(visible)) < 0.32


def test_images_pose_a_varied_multi_object_problem(renders):
    counts = np.bincount([len(s.objects) for s in renders], minlength=5)
    assert counts[0] == 0 and counts[1:].min() > 5 and len(counts) == 5  # one to four objects
    classes = np.bincount([o.class_index for s in renders for o in s.objects], minlength=C)
    assert classes.min() > 0.5 * classes.mean()
    extent = [max(o.bbox[2] - o.bbox[0], o.bbox[3] - o.bbox[1]) + 1 for s in renders for o in s.objects]
    assert 0.15 * 128 < np.median(extent) < 0.45 * 128
    assert np.mean([(0.15 * 128 <= e <= 0.5 * 128) for e in extent]) > 0.75
    assert 0.08 < np.mean([o.truncated for s in renders for o in s.objects]) < 0.7  # objects cut by the border
    context = np.mean([s.scene == s.objects[0].class_index for s in renders])
    assert 0.6 < context < 0.9  # the scene tells the first object's class more often than chance


def test_cli_writes_a_root_and_prints_the_train_command(tmp_path, capsys):
    out = main(["--root", str(tmp_path / "cli"), "--seed", "3", "--num-train", "2", "--num-val", "1"])
    assert len(os.listdir(out / "JPEGImages")) == 3
    printed = capsys.readouterr().out
    assert train_command(out) in printed
    assert f"'dataset.class_names=[{','.join(HELDOUT_CLASSES)}]'" in printed
    assert "dataset=voc" in printed and "dataset.crop_size=128 dataset.val_size=128" in printed


def test_spec_is_validated():
    with pytest.raises(ValueError, match="part_fraction"):
        HeldoutSpec(part_fraction=(0.3, 0.6))
    with pytest.raises(ValueError, match="num_train"):
        HeldoutSpec(num_train=0)
