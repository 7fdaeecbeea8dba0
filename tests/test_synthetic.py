"""The embedded synthetic dataset: deterministic, resumable, in VOC layout, and a real WSSS problem."""

import numpy as np
import pytest

from asdt_lightning.data.synthetic import SYNTHETIC_CLASSES, SyntheticSpec, ensure_synthetic_voc, render_sample
from asdt_lightning.data.voc import VOCSegmentation, read_mask
from asdt_lightning.errors import DatasetError

SPEC = SyntheticSpec(num_train=16, num_val=8, image_size=64)


def test_generation_is_deterministic_and_in_voc_layout(tmp_path):
    a = ensure_synthetic_voc(tmp_path / "a", SPEC)
    b = ensure_synthetic_voc(tmp_path / "b", SPEC)
    for split in ("train", "val", "trainval"):
        assert (a / f"ImageSets/Segmentation/{split}.txt").read_text() == (
            b / f"ImageSets/Segmentation/{split}.txt"
        ).read_text()
    masks = sorted((a / "SegmentationClass").glob("*.png"))
    assert len(masks) == 24 and len(list((a / "JPEGImages").glob("*.jpg"))) == 24
    for m in masks:
        assert m.read_bytes() == (b / "SegmentationClass" / m.name).read_bytes()
    assert len((a / "ImageSets/Segmentation/train.txt").read_text().split()) == 16


def test_interrupted_generation_resumes_to_the_same_files(tmp_path):
    root = ensure_synthetic_voc(tmp_path / "r", SPEC)
    before = {p.name: p.read_bytes() for p in (root / "SegmentationClass").glob("*.png")}
    for p in list((root / "SegmentationClass").glob("*.png"))[:5]:
        p.unlink()
    (root / "JPEGImages" / "syn_000003.jpg").unlink()
    (root / ".complete").unlink()
    ensure_synthetic_voc(root, SPEC)
    after = {p.name: p.read_bytes() for p in (root / "SegmentationClass").glob("*.png")}
    assert after == before and (root / "JPEGImages" / "syn_000003.jpg").is_file()
    assert not list(root.rglob("*.tmp"))


def test_a_root_of_another_spec_is_refused(tmp_path):
    root = ensure_synthetic_voc(tmp_path / "r", SPEC)
    with pytest.raises(DatasetError, match="another spec"):
        ensure_synthetic_voc(root, SyntheticSpec(num_train=4, num_val=2, image_size=64))


def test_labels_match_masks_with_boundary_band_and_several_classes(tmp_path):
    root = ensure_synthetic_voc(tmp_path / "r", SyntheticSpec(num_train=40, num_val=20, image_size=64))
    multi = 0
    for split in ("train", "val"):
        ds = VOCSegmentation(root, split, SYNTHETIC_CLASSES)
        seen = set()
        for i, name in enumerate(ds.names):
            mask = read_mask(root / "SegmentationClass" / f"{name}.png")
            in_mask = sorted(int(v) - 1 for v in np.unique(mask) if 0 < v < 255)
            assert in_mask == ds.image_labels[i]
            assert (mask == 255).any()
            multi += len(in_mask) >= 2
            seen.update(in_mask)
        assert seen == set(range(len(SYNTHETIC_CLASSES)))
    assert multi >= 10


def test_the_class_cue_covers_only_a_minority_of_each_object():
    """A perfect cue detector (an ideal CAM) would fall far short of the ground truth."""
    ratios = []
    for index in range(40):
        _, mask, cue, _ = render_sample(SyntheticSpec(image_size=96), index)
        fg = (mask > 0) & (mask < 255)
        ratios.append((cue & fg).sum() / fg.sum())
    assert 0.1 < np.mean(ratios) < 0.4
