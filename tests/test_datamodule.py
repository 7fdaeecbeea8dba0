"""The VOC DataModule on a tiny synthetic root: batch contract, reproducibility, cheap checks."""

import pytest
import torch

from asdt_lightning.data.datamodule import VOCDataModule
from asdt_lightning.data.dataset import SegmentationDataset
from asdt_lightning.data.synthetic import SYNTHETIC_CLASSES, SyntheticSpec, ensure_synthetic_voc
from asdt_lightning.errors import DatasetError
from data_roots import make_voc


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return ensure_synthetic_voc(tmp_path_factory.mktemp("syn"), SyntheticSpec(num_train=16, num_val=8, image_size=64))


def module(root, **kw):
    args = dict(crop_size=48, val_size=64, batch_size=4, num_workers=0, seed=3)
    args.update(kw)
    dm = VOCDataModule(root, SYNTHETIC_CLASSES, **args)
    dm.check()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_have_the_documented_shapes(root, workers):
    dm = module(root, num_workers=workers)
    assert dm.num_classes == 6 and dm.class_names == list(SYNTHETIC_CLASSES)
    loader = dm.train_dataloader()
    assert loader.drop_last and loader.persistent_workers == (workers > 0)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 48, 48) and batch["mask"].dtype == torch.int64
    assert batch["valid"].shape == (4, 48, 48) and batch["valid"].dtype == torch.bool
    assert batch["labels"].shape == (4, 6) and batch["labels"].dtype == torch.float32
    assert len(batch["name"]) == 4 and batch["index"].shape == (4,)
    assert (batch["mask"][~batch["valid"]] == 255).all()
    assert set(batch["mask"].unique().tolist()) <= set(range(7)) | {255}
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (4, 3, 64, 64) and val["mask"].shape == (4, 64, 64)
    assert val["name"] == dm.val_set.names[:4]  # validation is not shuffled
    assert len(dm.train_dataloader()) == 4  # drop_last over 16 images


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_gives_the_same_batches(root, workers):
    a = next(iter(module(root, num_workers=workers).train_dataloader()))
    b = next(iter(module(root, num_workers=workers).train_dataloader()))
    assert a["name"] == b["name"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["name"] != sorted(a["name"]) or a["index"].tolist() != list(range(4))  # shuffled
    c = next(iter(module(root, num_workers=workers, seed=4).train_dataloader()))
    assert c["name"] != a["name"] or not torch.equal(c["image"], a["image"])


def test_augmentation_differs_between_epochs_and_workers(root):
    """Seeded, but not the same random crop for every sample (workers and epochs get their own streams)."""
    dm = module(root, num_workers=2, batch_size=2, crop_size=100, scale_range=(0.5, 1.5))
    loader = dm.train_dataloader()
    first = [b["valid"].sum((1, 2)) for b in loader]  # the scaled image's area: a proxy for the scale
    second = [b["valid"].sum((1, 2)) for b in loader]
    assert len(set(torch.cat(first).tolist())) > 8
    assert not torch.equal(first[0], first[1])  # batches 0 and 1 come from different workers
    assert not all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def test_check_names_a_missing_root_or_list(root, tmp_path):
    with pytest.raises(DatasetError, match="missing_root"):
        VOCDataModule(tmp_path / "missing_root", SYNTHETIC_CLASSES).check()
    with pytest.raises(DatasetError, match="nolist"):
        VOCDataModule(root, SYNTHETIC_CLASSES, train_list="nolist").check()
    with pytest.raises(DatasetError, match="nolist_val"):
        VOCDataModule(root, SYNTHETIC_CLASSES, val_list="nolist_val").check()
    assert VOCDataModule(root, SYNTHETIC_CLASSES).check() == root


def test_coco_stuff_goes_through_the_same_datamodule(tmp_path, monkeypatch):
    """No background: masks hold 0..170 and 255, labels have 171 columns, the .mat cache is built by prepare_data."""
    from asdt_lightning.data.coco_stuff import CocoStuffReader
    from asdt_lightning.data.datamodule import SegmentationDataModule
    from data_roots import make_coco

    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_coco(tmp_path, n=6, size=(40, 56))
    dm = SegmentationDataModule(
        CocoStuffReader(root),
        train_list="train",
        val_list="test",
        crop_size=32,
        val_size=48,
        batch_size=2,
        num_workers=0,
        color_jitter={"brightness": 0.3, "hue": 0.05},
    )
    assert dm.check() == root and not dm.has_background and dm.num_classes == 171
    dm.prepare_data()
    assert len(list(dm.reader.cache.labels.glob("*.png"))) == 6
    dm.setup("fit")
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["image"].shape == (2, 3, 32, 32) and batch["labels"].shape == (2, 171)
    assert set(batch["mask"].unique().tolist()) <= set(range(171)) | {255}
    assert (batch["mask"][~batch["valid"]] == 255).all() and batch["size"].tolist() == [[40, 56], [40, 56]]
    for mask, labels in zip(batch["mask"], batch["labels"], strict=True):  # mask classes are image classes
        present = set(mask.unique().tolist()) - {255}
        assert present <= set(labels.nonzero().flatten().tolist())
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, 48, 48) and val["name"] == dm.val_set.names


def test_background_list_adds_images_with_no_class_and_no_annotation(tmp_path):
    """Background-only images train beside the list with an empty label and an all-background mask; their XML and
    mask need not exist; overlaps, missing images and a dataset without background are one-line errors."""
    voc = make_voc(tmp_path, {"a": ["cat"], "b": ["dog"], "c": [], "d": []}, lists={"train": ["a", "b"], "val": ["a"]})
    for name in ("c", "d"):  # background-only photos: only their JPEG exists
        (voc / "Annotations" / f"{name}.xml").unlink()
        (voc / "SegmentationClass" / f"{name}.png").unlink()
    lists = voc / "ImageSets/Segmentation"
    (lists / "negatives.txt").write_text("c\nd\n")
    dm = VOCDataModule(voc, train_list="train", val_list="val", crop_size=16, batch_size=2, num_workers=0)
    dm.background_list = "negatives"
    dm.check()
    dm.setup("fit")
    train = dm.train_set
    assert train.names == ["a", "b", "c", "d"] and train.image_labels == [[7], [11], [], []]
    sample = train[2]
    assert sample["labels"].sum() == 0 and (sample["mask"][sample["valid"]] == 0).all()  # every pixel background
    assert (train[0]["mask"] == 255).any()  # a labelled image keeps its own mask (with its 255 band)
    assert dm.val_set.names == ["a"]  # scored on the val list only

    (lists / "overlap.txt").write_text("c\nb\n")
    with pytest.raises(DatasetError, match="also in list train"):
        SegmentationDataset(dm.reader, "train", background_split="overlap")
    (lists / "missing.txt").write_text("c\nzz\n")
    with pytest.raises(DatasetError, match="zz"):
        SegmentationDataset(dm.reader, "train", background_split="missing")
    with pytest.raises(DatasetError, match="nolist"):
        VOCDataModule(voc, train_list="train", val_list="val", background_list="nolist").check()


def test_background_list_needs_a_background_class(tmp_path, monkeypatch):
    voc = make_voc(tmp_path, {"a": ["cat"]}, lists={"train": ["a"], "val": ["a"]})
    dm = VOCDataModule(voc, train_list="train", val_list="val", background_list="train")
    monkeypatch.setattr(dm.reader, "has_background", False)  # as COCO-Stuff's reader (171 classes, no background)
    with pytest.raises(DatasetError, match="needs a background class"):
        dm.check()
    with pytest.raises(DatasetError, match="needs a background class"):
        dm.reader.background_entries("train")
