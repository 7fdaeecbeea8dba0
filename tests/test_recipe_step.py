"""One ``experiment=voc_paper`` Lightning training step (network, PWM, objective, optimiser update) on a fixed tiny
batch gives the numbers it gave when the recipe was last changed on purpose: a lock against unintended changes.

The reference numbers were computed with this same test's ``voc_paper_step`` (``python tests/test_recipe_step.py``)
after voc_paper became voc_released + the PWM (labels at the crop, symmetric CRF normalisation, the dense-CRF
energy, momentum 1e-5) on a 2-core AMD EPYC; the tolerance covers the last bits that differ between CPUs. The
agreement of the loss terms with the released code's own functions is ``tests/test_released_step.py``'s.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from asdt_lightning.data.voc import VOC_CLASSES
from asdt_lightning.lit.callbacks import PWMCallback
from asdt_lightning.train import build_module

# teacher -> logged loss terms and sums of the parameter update
REFERENCE: dict[str, dict[str, float]] = {
    "a": {
        "pwm/signal": 0.0,
        "pwm/active_teacher": 0.0,
        "train/loss": 4.364381790161133,
        "train/loss_cls": 1.5110561847686768,
        "train/loss_refine_ce": 2.889124870300293,
        "train/loss_refine_pairwise": -347.4674987792969,
        "train/loss_student_distill": 2.8175947666168213,
        "train/loss_student_pairwise": -342.9294738769531,
        "train/teacher_a_labelled_fraction": 0.4322916567325592,
        "train/segmentation_ramp": 1.0,
        "update_abs_sum": 213.51942819715157,
        "head_update_abs_sum": 128.73747885290345,
        "head_update_sum": -10.254695650527324,
    },
    "b": {
        "pwm/signal": 1.0,
        "pwm/active_teacher": 1.0,
        "train/loss": 3.1002917289733887,
        "train/loss_cls": 1.5110561847686768,
        "train/loss_refine_ce": 2.889124870300293,
        "train/loss_refine_pairwise": -347.4674987792969,
        "train/loss_student_distill": 0.2894150912761688,
        "train/loss_student_pairwise": -342.9294738769531,
        "train/teacher_a_labelled_fraction": 0.4322916567325592,
        "train/segmentation_ramp": 1.0,
        "update_abs_sum": 163.90346533683567,
        "head_update_abs_sum": 80.44064789322523,
        "head_update_sum": -12.932041337171867,
    },
}


def fixed_batch(size: int = 48) -> dict[str, torch.Tensor]:
    """Two images with a bright square each (classes 'cat' and 'bus, person'), and 6 padded columns."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=g) * 0.5
    images[0, 0, 8:32, 10:30] += 1.5
    images[1, 2, 4:28, 20:44] += 1.5
    images[1, 1, 30:46, 2:20] += 1.0
    labels = torch.zeros(2, len(VOC_CLASSES))
    labels[0, VOC_CLASSES.index("cat")] = 1
    labels[1, VOC_CLASSES.index("bus")] = 1
    labels[1, VOC_CLASSES.index("person")] = 1
    valid = torch.ones(2, size, size, dtype=torch.bool)
    valid[:, :, -6:] = False
    return {"image": images, "labels": labels, "valid": valid}


def voc_paper_step(teacher: str) -> dict[str, float]:
    """The logged terms of step 0 of ``voc_paper`` (ResNet-38, random init, seed 0) and sums of its parameter update."""
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=voc_paper"])
    plain = OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.backbone, resolve=True)
    config = {"model": plain[0], "backbone": plain[1], "dataset": OmegaConf.to_container(cfg.dataset, resolve=True)}
    torch.manual_seed(0)
    module = build_module(config, list(VOC_CLASSES))
    pwm = dict(OmegaConf.to_container(cfg.pwm, resolve=True))
    if teacher == "b":
        pwm["warmup"] = 0  # step 0 is then an on-step of the PWM: the student learns from teacher B
    batch = fixed_batch()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[PWMCallback(**pwm)],
        precision="32-true",
    )
    before = {name: p.detach().clone() for name, p in module.net.named_parameters()}
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    result = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "pwm/"))}
    update = {name: (p.detach() - before[name]).double() for name, p in module.net.named_parameters()}
    head = {id(p) for m in module.net.head_modules() for p in m.parameters()}
    head_names = {name for name, p in module.net.named_parameters() if id(p) in head}
    result["update_abs_sum"] = sum(float(d.abs().sum()) for d in update.values())
    result["head_update_abs_sum"] = sum(float(update[n].abs().sum()) for n in head_names)
    result["head_update_sum"] = sum(float(update[n].sum()) for n in head_names)
    return result


@pytest.mark.parametrize("teacher", ["a", "b"])
def test_voc_paper_step_matches_reference(teacher):
    result = voc_paper_step(teacher)
    reference = REFERENCE[teacher]
    assert sorted(result) == sorted(reference)
    for key, expected in reference.items():
        assert math.isclose(result[key], expected, rel_tol=2e-5, abs_tol=1e-6), (key, result[key], expected)


if __name__ == "__main__":  # prints the reference numbers
    import json

    print(json.dumps({t: voc_paper_step(t) for t in ("a", "b")}, indent=1))
