import pytest
import torch

from asdt_lightning.data.datamodule import VOCDataModule
from asdt_lightning.data.synthetic import SYNTHETIC_CLASSES, SyntheticSpec, ensure_synthetic_voc
from asdt_lightning.errors import DatasetError


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
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 48, 48) and batch["mask"].dtype == torch.int64
    assert batch["valid"].dtype == torch.bool and batch["labels"].shape == (4, len(SYNTHETIC_CLASSES))
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (4, 3, 64, 64)
    assert len(dm.train_dataloader()) == 4  # drop_last over 16 images


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_gives_the_same_batches(root, workers):
    a = next(iter(module(root, num_workers=workers).train_dataloader()))
    b = next(iter(module(root, num_workers=workers).train_dataloader()))
    assert a["name"] == b["name"] and torch.equal(a["image"], b["image"])
    c = next(iter(module(root, num_workers=workers, seed=4).train_dataloader()))
    assert c["name"] != a["name"] or not torch.equal(c["image"], a["image"])


def test_check_names_a_missing_root_or_list(root, tmp_path):
    with pytest.raises(DatasetError, match="missing_root"):
        VOCDataModule(tmp_path / "missing_root", SYNTHETIC_CLASSES).check()
    with pytest.raises(DatasetError, match="nolist"):
        VOCDataModule(root, SYNTHETIC_CLASSES, train_list="nolist").check()
