"""The embedded synthetic dataset: deterministic, resumable, in VOC layout, and a real WSSS problem."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from asdt_lightning.data.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticSpec,
    ensure_synthetic_voc,
    render_sample,
)
from asdt_lightning.data.voc import VOCSegmentation, read_mask, voc_palette
from asdt_lightning.errors import DatasetError

SPEC = SyntheticSpec(num_train=14, num_val=6, image_size=64)
BIG = SyntheticSpec(num_train=40, num_val=24, image_size=64)


@pytest.fixture(scope="module")
def big_root(tmp_path_factory):
    return ensure_synthetic_voc(tmp_path_factory.mktemp("big"), BIG)


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_generation_is_deterministic_and_in_voc_layout(tmp_path):
    a = ensure_synthetic_voc(tmp_path / "a", SPEC)
    b = ensure_synthetic_voc(tmp_path / "b", SPEC)
    fa, fb = files(a), files(b)
    assert fa == fb  # byte-identical images, masks, annotations, lists and marker
    assert sum(k.startswith("JPEGImages/") for k in fa) == 20
    assert sum(k.startswith("SegmentationClass/") for k in fa) == 20
    assert sum(k.startswith("Annotations/") for k in fa) == 20
    lists = {s: (a / f"ImageSets/Segmentation/{s}.txt").read_text().split() for s in ("train", "val", "trainval")}
    assert lists["train"] == [f"syn_{i:06d}" for i in range(14)]
    assert lists["val"] == [f"syn_{i:06d}" for i in range(14, 20)]
    assert lists["trainval"] == lists["train"] + lists["val"]
    assert json.loads((a / ".complete").read_text())["num_train"] == 14
    with Image.open(a / "JPEGImages" / "syn_000000.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
    with Image.open(a / "SegmentationClass" / "syn_000000.png") as im:
        assert im.mode == "P" and im.getpalette() == voc_palette()
    assert ensure_synthetic_voc(a, SPEC) == a  # complete: returns at once


def test_samples_depend_only_on_seed_and_index():
    image, mask, cue, labels = render_sample(SPEC, 5)
    assert labels == sorted(int(v) - 1 for v in np.unique(mask) if 0 < v < 255)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert mask.shape == cue.shape == (64, 64) and mask.dtype == np.uint8 and cue.dtype == bool
    other = SyntheticSpec(num_train=500, num_val=1, image_size=64)  # other sizes of the split, same seed
    assert all(np.array_equal(x, y) for x, y in zip(render_sample(other, 5)[:3], (image, mask, cue), strict=True))
    reseeded = render_sample(SyntheticSpec(num_train=14, num_val=6, image_size=64, seed=1), 5)
    assert not np.array_equal(reseeded[0], image)


def test_interrupted_generation_resumes_to_the_same_files(tmp_path):
    root = ensure_synthetic_voc(tmp_path / "r", SPEC)
    before = files(root)
    for p in sorted((root / "SegmentationClass").glob("*.png"))[:5]:
        p.unlink()
    (root / "JPEGImages" / "syn_000003.jpg").unlink()
    (root / "Annotations" / "syn_000017.xml").unlink()
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    (root / ".complete").unlink()
    ensure_synthetic_voc(root, SPEC)
    assert files(root) == before
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_a_root_of_another_spec_or_dataset_is_refused(tmp_path):
    root = ensure_synthetic_voc(tmp_path / "r", SPEC)
    with pytest.raises(DatasetError, match=r"another spec.*delete"):
        ensure_synthetic_voc(root, SyntheticSpec(num_train=4, num_val=2, image_size=64))
    voc = tmp_path / "voc" / "ImageSets" / "Segmentation"
    voc.mkdir(parents=True)
    (voc / "val.txt").write_text("2007_000033\n")
    with pytest.raises(DatasetError, match="not the synthetic"):
        ensure_synthetic_voc(tmp_path / "voc", SPEC)
    with pytest.raises(DatasetError, match="max_objects"):
        SyntheticSpec(min_objects=3, max_objects=2)


def test_labels_and_annotations_match_the_masks(big_root):
    multi = 0
    for split in ("train", "val"):
        ds = VOCSegmentation(big_root, split, SYNTHETIC_CLASSES)
        seen = set()
        for i, name in enumerate(ds.names):
            mask = read_mask(big_root / "SegmentationClass" / f"{name}.png")
            assert set(np.unique(mask).tolist()) <= set(range(len(SYNTHETIC_CLASSES) + 1)) | {255}
            in_mask = sorted(int(v) - 1 for v in np.unique(mask) if 0 < v < 255)
            assert in_mask and in_mask == ds.image_labels[i]
            assert ds[i]["labels"].nonzero().flatten().tolist() == in_mask
            assert (mask == 255).any() and (mask == 0).any()
            tree = ET.parse(big_root / "Annotations" / f"{name}.xml").getroot()
            assert tree.findtext("filename") == f"{name}.jpg" and tree.findtext("size/width") == "64"
            for obj in tree.iter("object"):
                box = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                cls = SYNTHETIC_CLASSES.index(obj.findtext("name")) + 1
                assert obj.findtext("difficult") == "0" and 1 <= box[0] <= box[2] <= 64 and 1 <= box[1] <= box[3] <= 64
                inside = mask[box[1] - 1 : box[3], box[0] - 1 : box[2]]
                assert (inside == cls).any()
                ys, xs = np.nonzero(mask == cls)
                outside = (ys < box[1] - 1) | (ys >= box[3]) | (xs < box[0] - 1) | (xs >= box[2])
                if len(tree.findall(f"object[name='{obj.findtext('name')}']")) == 1:
                    assert not outside.any()  # the only instance of its class: its box holds all its pixels
            multi += len(in_mask) >= 2
            seen.update(in_mask)
        assert seen == set(range(len(SYNTHETIC_CLASSES)))  # every class in train and in val
    assert multi >= 15


def test_boundary_band_is_about_two_pixels_wide():
    _, mask, _, _ = render_sample(SPEC, 0)
    band = mask == 255
    for value in np.unique(mask[~band]):  # pixels of different labels are >= 3 px apart: a band of 2
        near = ndimage.maximum_filter((mask == value).astype(np.uint8), 5).astype(bool)
        assert not (near & ~band & (mask != value)).any()
    fg = ((mask > 0) & (mask < 255)).sum()
    assert 0.05 * fg < band.sum() < 0.6 * fg


def test_the_class_cue_covers_only_a_minority_of_each_object():
    """A perfect cue detector (an ideal CAM) falls far short of the ground truth."""
    spec = SyntheticSpec(image_size=96)
    ratios, inter, union = [], 0, 0
    for index in range(40):
        _, mask, cue, labels = render_sample(spec, index)
        fg = (mask > 0) & (mask < 255)
        ratios.append((cue & fg).sum() / fg.sum())
        for c in labels:  # every present class keeps a visible cue
            assert (cue & (mask == c + 1)).sum() >= 20
        for c in range(1, len(SYNTHETIC_CLASSES) + 1):
            gt, pred = mask == c, cue & (mask == c)
            inter, union = inter + (gt & pred).sum(), union + (gt | pred).sum()
    assert 0.15 < np.mean(ratios) < 0.35
    assert inter / union < 0.4  # the ideal CAM's foreground IoU


def test_the_body_does_not_reveal_the_class_but_the_cue_does():
    spec = SyntheticSpec(image_size=64)
    body = {c: [] for c in range(len(SYNTHETIC_CLASSES))}
    cue_px = {c: [] for c in range(len(SYNTHETIC_CLASSES))}
    for index in range(120):
        image, mask, cue, labels = render_sample(spec, index)
        for c in labels:
            obj = mask == c + 1
            body[c].append(image[obj & ~cue].reshape(-1, 3).mean(0))
            cue_px[c].append(image[obj & cue].reshape(-1, 3).mean(0))
    body_means = np.array([np.mean(v, 0) for v in body.values()])
    cue_means = np.array([np.mean(v, 0) for v in cue_px.values()])

    def spread(m):
        return max(np.abs(a - b).max() for a in m for b in m)

    assert spread(body_means) < 15  # one shared body appearance
    assert spread(cue_means) > 40  # class colours on the cue
