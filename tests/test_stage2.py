"""Second stage: models, a fast_dev_run on exported pseudo masks, refusals, evaluation of its checkpoint."""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from asdt_lightning.data.voc import write_mask_png
from asdt_lightning.errors import ASDTUserError
from asdt_lightning.evaluate import run_evaluate
from asdt_lightning.models.deeplab import build_segmenter
from asdt_lightning.pseudo_labels import run_export
from asdt_lightning.segment import segment
from wsss_helpers import TINY_DATA, compose_plain, save_asdt_checkpoint, tiny_reader

TINY = [*TINY_DATA, "dataset.crop_size=48", "dataset.val_size=48", "dataset.batch_size=2", "dataset.val_batch_size=2"]
TINY += ["dataset.num_workers=0", "trainer.accelerator=cpu", "trainer.enable_model_summary=false", "logger=none"]


def segment_config(tmp_path, *overrides):
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        return compose("segment", overrides=[*TINY, f"output_dir={tmp_path / 'seg'}", *overrides])


@pytest.mark.parametrize("arch", ["deeplabv2", "deeplabv3"])
def test_segmenters_map_images_to_logits_at_the_output_stride(arch):
    net = build_segmenter(arch, num_labels=5, backbone="resnet18", output_stride=8, rates=[1, 2])
    assert net(torch.randn(2, 3, 40, 48)).shape == (2, 5, 5, 6)


def test_fast_dev_run_on_exported_pseudo_masks_then_evaluate(tmp_path):
    ckpt = save_asdt_checkpoint(tmp_path / "asdt" / "checkpoints" / "last.ckpt")
    masks = tmp_path / "masks"
    run_export(compose_plain("pseudo_labels", f"ckpt={ckpt}", f"out={masks}", "num_workers=0", "progress=false"))
    metrics = segment(segment_config(tmp_path, f"pseudo_masks={masks}", "trainer.fast_dev_run=true"))
    assert 0 <= metrics["miou"] <= 1 and set(metrics["per_class_iou"]) >= {"background", "apple"}
    seg_ckpt = tmp_path / "seg" / "checkpoints" / "last.ckpt"
    segment(segment_config(tmp_path, f"pseudo_masks={masks}", "trainer.max_steps=2", "segmenter=deeplabv3"))
    report = run_evaluate(
        compose_plain(
            "evaluate", f"ckpt={seg_ckpt}", f"out={tmp_path / 'eval'}", "num_workers=0", "progress=false", "crfs=[none]"
        )
    )
    assert list(report["results"]) == ["segmenter"] and report["kind"] == "segmenter"
    assert report["images"] == 6  # the validation list, at original size


def test_training_reads_the_pseudo_masks_not_the_ground_truth(tmp_path):
    from asdt_lightning.data.pseudo_masks import pseudo_mask_datamodule

    reader, data = tiny_reader()
    for name in reader.read_list("train"):
        write_mask_png(tmp_path / "masks" / f"{name}.png", np.full((48, 48), 3, np.uint8))
    dm = pseudo_mask_datamodule({**data, "num_workers": 0, "crop_size": 48}, 0, tmp_path / "masks")
    dm.setup("fit")
    train_masks = torch.stack([dm.train_set[i]["mask"] for i in range(len(dm.train_set))])
    assert set(train_masks.unique().tolist()) <= {3, 255} and (train_masks == 3).any()
    val_masks = torch.stack([dm.val_set[i]["mask"] for i in range(len(dm.val_set))])
    assert len(set(val_masks.unique().tolist()) - {255}) > 2  # real masks: background and several classes


def test_incomplete_pseudo_mask_folder_is_refused_before_training(tmp_path):
    reader, _ = tiny_reader()
    names = reader.read_list("train")
    for name in names[:-2]:
        write_mask_png(tmp_path / "masks" / f"{name}.png", np.zeros((48, 48), np.uint8))
    with pytest.raises(ASDTUserError, match=f"2 of {len(names)} images of 'train' have no pseudo mask"):
        segment(segment_config(tmp_path, f"pseudo_masks={tmp_path / 'masks'}"))
    with pytest.raises(ASDTUserError, match="not found"):
        segment(segment_config(tmp_path, f"pseudo_masks={tmp_path / 'nowhere'}"))
    with pytest.raises(ASDTUserError, match="unknown segmenter.arch"):
        segment(segment_config(tmp_path, f"pseudo_masks={tmp_path / 'masks'}", "segmenter.arch=unet"))
    assert not (tmp_path / "seg" / "checkpoints").exists()


def test_validation_counts_the_confusion_matrix_of_torchmetrics_with_ignored_pixels():
    """The second stage's validation mIoU: the package's one confusion matrix, equal to torchmetrics' own."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    from asdt_lightning.lit.segmenter import SegmenterModule
    from asdt_lightning.metrics import mean_iou

    torch.manual_seed(0)
    net = {"arch": "deeplabv2", "backbone": "resnet18", "output_stride": 8, "rates": [1, 2], "pretrained": False}
    module = SegmenterModule(net, ["apple", "pear"]).eval()
    reference = MulticlassConfusionMatrix(3, ignore_index=255)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in range(2):
            images = torch.randn(2, 3, 24, 32, generator=generator)
            masks = torch.randint(0, 3, (2, 24, 32), generator=generator)
            masks[:, :4] = 255
            module.validation_step({"image": images, "mask": masks}, i)
            reference.update(module(images).argmax(1), masks)
    expected = reference.compute()
    assert torch.equal(module.val_confusion.compute(), expected) and int(expected.sum()) == 2 * 2 * 20 * 32
    module.log = lambda *args, **kwargs: None  # no trainer
    module.on_validation_epoch_end()
    assert module.val_results["miou"] == mean_iou(expected)
    assert list(module.val_results["per_class_iou"]) == ["background", "apple", "pear"]
    assert not [k for k in module.state_dict() if "confusion" in k]  # checkpoints hold no metric state
