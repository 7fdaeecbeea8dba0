"""COCO-Stuff 10K: class mappings, the official .mat format, the resumable PNG cache, the dataset, and training."""

import json
import os

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from asdt_lightning.data.coco_stuff import (
    COCO_STUFF_182,
    USED_IDS,
    CocoStuffReader,
    CocoStuffSegmentation,
    coco_stuff_class_names,
    id_lookup,
    read_mat_labels,
)
from asdt_lightning.data.coco_stuff import cache as coco_cache
from asdt_lightning.data.transforms import build_train_transform
from asdt_lightning.errors import DatasetError
from data_roots import blocks_mask, coco_ids, make_coco, write_coco_mat


def test_class_names_and_both_mappings():
    assert len(COCO_STUFF_182) == 182 and len(set(COCO_STUFF_182)) == 182
    assert COCO_STUFF_182[0] == "person" and COCO_STUFF_182[91] == "banner" and COCO_STUFF_182[-1] == "wood"
    names171 = coco_stuff_class_names(171)
    assert len(names171) == 171 and len(USED_IDS) == 171
    assert "street sign" not in names171 and "hair brush" not in names171 and "toothbrush" in names171
    assert names171[79] == "toothbrush" and names171[80] == "banner"  # 80 things, then 91 stuff classes
    assert coco_stuff_class_names(182) == list(COCO_STUFF_182)
    lut171, lut182 = id_lookup(171), id_lookup(182)
    assert lut171[0] == lut182[0] == 255  # unlabeled -> ignore
    assert lut171[1] == 0 and lut171[11] == 10 and lut171[12] == 255 and lut171[13] == 11 and lut171[182] == 170
    assert [names171[lut171[i]] for i in (1, 13, 92, 182)] == ["person", "stop sign", "banner", "wood"]
    assert all(lut182[i] == i - 1 for i in range(1, 183)) and (lut182[183:] == 255).all()
    with pytest.raises(DatasetError, match="171.*182"):
        id_lookup(172)


def test_official_mat_structure_is_read_and_bad_files_are_named(tmp_path):
    labels = blocks_mask(10, 12, [0, 1, 92, 182])
    write_coco_mat(tmp_path / "a.mat", labels)
    out = read_mat_labels(tmp_path / "a.mat")
    assert out.dtype == np.uint8 and np.array_equal(out, labels)
    write_coco_mat(tmp_path / "v10.mat", labels, names=["unlabeled", *COCO_STUFF_182[:171]])
    with pytest.raises(DatasetError, match=r"v10\.mat.*172.*v1\.0.*cocostuff-10k-v1\.1\.zip"):
        read_mat_labels(tmp_path / "v10.mat")
    write_coco_mat(tmp_path / "order.mat", labels, names=list(reversed(COCO_STUFF_182)))
    with pytest.raises(DatasetError, match=r"order\.mat.*do not follow"):
        read_mat_labels(tmp_path / "order.mat")
    write_coco_mat(tmp_path / "big.mat", np.full((4, 4), 200))
    with pytest.raises(DatasetError, match=r"big\.mat.*0\.\.200"):
        read_mat_labels(tmp_path / "big.mat")
    (tmp_path / "junk.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 40)
    with pytest.raises(DatasetError, match=r"junk\.mat"):
        read_mat_labels(tmp_path / "junk.mat")


@pytest.mark.parametrize("fmt", ["mat", "png"])
@pytest.mark.parametrize("classes", [171, 182])
def test_dataset_maps_ids_and_derives_image_labels_from_the_masks(tmp_path, monkeypatch, fmt, classes):
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_coco(tmp_path, n=6, fmt=fmt)
    ds = CocoStuffSegmentation(root, "train", classes=classes)
    lut = id_lookup(classes)
    assert len(ds) == 4 and ds.num_classes == classes and not ds.reader.has_background
    for i in range(len(ds)):
        sample = ds[i]
        raw = blocks_mask(24, 32, coco_ids(i), band=0)
        assert torch.equal(sample["mask"], torch.from_numpy(lut[raw]).long())  # unlabeled band -> 255
        assert sorted(sample["labels"].nonzero().flatten().tolist()) == sorted(lut[coco_ids(i)].tolist())
        assert sample["size"].tolist() == [24, 32] and sample["name"] == ds.names[i]
    assert (ds[0]["mask"] == 255).sum() > 0
    names = ds.class_names
    assert [names[j] for j in ds.image_labels[0]] == ["person", "grass", "sky-other"]
    if fmt == "png":
        assert not list((tmp_path / "cache" / "coco_stuff").glob("*/labels/*.png"))  # PNGs are read in place


def test_conversion_cache_is_reused_and_picks_up_changed_files(tmp_path, monkeypatch):
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_coco(tmp_path, n=6)
    reader = CocoStuffReader(root)
    reader.prepare(["all"])
    pngs = sorted(reader.cache.labels.glob("*.png"))
    assert len(pngs) == 6 and reader.cache.index_path.is_file()
    assert sorted(os.listdir(reader.cache.labels)) == [p.name for p in pngs]  # no temporary file left
    calls = []
    real = coco_cache.read_mat_labels
    monkeypatch.setattr(coco_cache, "read_mat_labels", lambda p: calls.append(p.name) or real(p))
    CocoStuffReader(root).prepare(["all"])
    CocoStuffSegmentation(root, "train")
    assert calls == []  # converted once
    name = "COCO_train2014_000000000001"
    write_coco_mat(root / "annotations" / f"{name}.mat", blocks_mask(24, 32, [0, 169]))
    os.utime(root / "annotations" / f"{name}.mat", ns=(1, 1))
    ds = CocoStuffSegmentation(root, "train")
    assert calls == [f"{name}.mat"]
    assert [ds.class_names[j] for j in ds.image_labels[1]] == ["tree"]


def test_interrupted_conversion_resumes_and_gives_identical_files(tmp_path, monkeypatch):
    root = make_coco(tmp_path, n=9)
    clean = CocoStuffReader(root, label_cache=tmp_path / "clean")
    clean.prepare(["all"])
    reader = CocoStuffReader(root, label_cache=tmp_path / "resumed")
    writes = []
    real_write = coco_cache.write_mask_png

    def interrupted(path, mask):
        if len(writes) == 4:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the fifth file
        writes.append(path.name)
        return real_write(path, mask)

    monkeypatch.setattr(coco_cache, "write_mask_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reader.prepare(["all"])
    labels = reader.cache.labels
    assert sorted(p.name for p in labels.iterdir()) == sorted(writes)  # four whole files, no temporary one
    assert len(json.loads(reader.cache.index_path.read_text())["entries"]) == 4  # flushed on the way out
    (labels / ".COCO_train2014_000000000007.png.x1y2.tmp").write_bytes(b"half a png")  # as a kill -9 leaves
    monkeypatch.setattr(
        coco_cache, "write_mask_png", lambda path, mask: writes.append(path.name) or real_write(path, mask)
    )
    reader.prepare(["all"])
    assert len(writes) == 9  # the four were not converted again
    assert sorted(os.listdir(labels)) == sorted(os.listdir(clean.cache.labels))  # the stale .tmp is gone
    for png in clean.cache.labels.iterdir():
        assert png.read_bytes() == (labels / png.name).read_bytes()
    assert json.loads(reader.cache.index_path.read_text())["entries"].keys() == (
        json.loads(clean.cache.index_path.read_text())["entries"].keys()
    )


def test_ids_outside_the_mapping_and_empty_maps_are_refused_or_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_coco(tmp_path, n=6)
    street_sign = "COCO_train2014_000000000000"
    write_coco_mat(root / "annotations" / f"{street_sign}.mat", blocks_mask(24, 32, [1, 12]))
    with pytest.raises(DatasetError, match=rf"{street_sign}\.mat.*id 12 \('street sign'\).*classes=182"):
        CocoStuffSegmentation(root, "train")
    assert CocoStuffSegmentation(root, "train", classes=182).image_labels[0] == [0, 11]
    empty = "COCO_train2014_000000000002"
    write_coco_mat(root / "annotations" / f"{empty}.mat", np.zeros((24, 32)))
    with pytest.warns(UserWarning, match=rf"skipping 2 bad entr.*{street_sign}"):
        ds = CocoStuffSegmentation(root, "train", on_bad_sample="skip")
    assert street_sign not in ds.names and empty not in ds.names and len(ds) == 2
    assert "no labelled pixel" in ds.skipped[empty]


def test_root_forms_and_missing_parts_are_named(tmp_path):
    root = make_coco(tmp_path, n=3)
    assert CocoStuffReader(tmp_path / "cocostuff-10k").root == root
    with pytest.raises(DatasetError, match=r"nowhere.*cocostuff-10k-v1\.1\.zip.*COCO_STUFF_ROOT"):
        CocoStuffReader(tmp_path / "nowhere").check(["train"])
    with pytest.raises(DatasetError, match=r"imageLists/val\.txt.*train, test and all"):
        CocoStuffReader(root).check(["train", "val"])
    (root / "annotations" / "COCO_train2014_000000000001.mat").unlink()
    with pytest.raises(DatasetError, match=r"COCO_train2014_000000000001\.mat \(or \.png\) is missing"):
        CocoStuffSegmentation(root, "all")
    with pytest.raises(DatasetError, match="dataset.class_names has 2 names"):
        CocoStuffReader(root, class_names=["a", "b"])


@pytest.mark.parametrize("seed", range(4))
def test_image_and_mask_stay_aligned_pixel_by_pixel_through_the_pipeline(tmp_path, monkeypatch, seed):
    """Each class has its own flat colour in a near-lossless JPEG: after crop, pad and flip every valid pixel's
    colour must still name its mask label."""
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    sizes = [(37, 61), (50, 29), (44, 44)]
    root = make_coco(tmp_path, n=3, sizes=sizes, lists={"all": [f"COCO_train2014_{k:012d}" for k in range(3)]})
    colours = {cid: np.array([(cid * 67) % 256, (cid * 151) % 256, (cid * 29) % 256]) for cid in range(183)}
    for k, (h, w) in enumerate(sizes):
        raw = blocks_mask(h, w, coco_ids(k), band=0)
        image = np.stack([colours[int(v)] for v in raw.reshape(-1)]).reshape(h, w, 3).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"COCO_train2014_{k:012d}.jpg", quality=100, subsampling=0)
    transform = build_train_transform(48, scale_range=(1.0, 1.0), hflip=True)
    transform.set_random_seed(seed)
    ds = CocoStuffSegmentation(root, "all", transform=transform)
    lut = id_lookup(171)
    for i in range(3):
        sample = ds[i]
        rgb = sample["image"] * torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        rgb = ((rgb + torch.tensor([0.485, 0.456, 0.406])[:, None, None]) * 255).permute(1, 2, 0).numpy()
        palette = np.stack([colours[c] for c in range(183)]).astype(float)
        nearest = np.argmin(((rgb[:, :, None, :] - palette[None, None]) ** 2).sum(-1), -1)
        expected = torch.from_numpy(lut[nearest].astype(np.int64))
        valid = sample["valid"]
        assert valid.sum() == min(sizes[i][0], 48) * min(sizes[i][1], 48)
        assert torch.equal(sample["mask"][valid], expected[valid])
        assert (sample["mask"][~valid] == 255).all()


def tiny_train_config(tmp_path, root, *overrides):
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "dataset=coco_stuff",
                f"dataset.root={root}",
                "dataset.crop_size=64",
                "dataset.val_size=64",
                "dataset.batch_size=2",
                "dataset.val_batch_size=2",
                "dataset.num_workers=0",
                "dataset.pin_memory=false",
                "backbone=resnet18",
                "model.net.head_channels=8",
                "model.cam_scales=[1.0]",
                "trainer.accelerator=cpu",
                "trainer.enable_model_summary=false",
                "logger=none",
                f"output_dir={tmp_path / 'out'}",
                *overrides,
            ],
        )


def test_training_runs_end_to_end_on_a_tiny_coco_stuff_root(tmp_path, monkeypatch):
    """``python -m asdt_lightning.train dataset=coco_stuff pwm.duty=0.5 trainer.fast_dev_run=true`` on a tiny root,
    with one unreadable image skipped (``dataset.on_bad_sample=skip``) and counted at the end."""
    from asdt_lightning.train import train

    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_coco(tmp_path, n=8, size=(60, 80))
    bad = "COCO_train2014_000000000006"  # first of the test list: in the first validation batch
    data = (root / "images" / f"{bad}.jpg").read_bytes()  # a whole header (it passes the check), a cut body
    (root / "images" / f"{bad}.jpg").write_bytes(data[: data.index(b"\xff\xda") + 20])
    cfg = tiny_train_config(
        tmp_path, root, "pwm.duty=0.5", "trainer.fast_dev_run=true", "dataset.on_bad_sample=skip", "tracking.panels=2"
    )
    assert cfg.dataset.has_background is False and cfg.dataset.val_list == "test"
    with pytest.warns(UserWarning, match=r"skipped 0 list entr\(ies\) and 1 unreadable sample.*000000000006"):
        metrics = train(cfg)
    per_class = metrics["per_class_iou"]["fused"]
    assert len(per_class) == 171 and "background" not in per_class and next(iter(per_class)) == "person"
    assert set(metrics["miou"]) == {"cam", "refine", "student", "fused"}
    assert all(np.isfinite(v) for v in metrics["miou"].values())
    # the fixed panel images skip the unreadable one (the first of the list) and take the next good one
    panels = sorted((tmp_path / "out" / "panels").glob("val_step*.png"))
    assert panels, "no image panel was written"


def test_a_bad_image_stops_training_with_the_file_named(tmp_path, monkeypatch):
    from asdt_lightning.train import train

    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_coco(tmp_path, n=8, size=(60, 80))
    (root / "images" / "COCO_train2014_000000000003.jpg").unlink()
    cfg = tiny_train_config(tmp_path, root, "trainer.fast_dev_run=true")
    with pytest.raises(DatasetError, match=r"COCO_train2014_000000000003\.jpg is missing.*on_bad_sample=skip"):
        train(cfg)
    assert not (tmp_path / "out" / "checkpoints").exists()
