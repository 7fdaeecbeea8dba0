"""The Hydra entry point: a fast_dev_run end to end, bad inputs refused before training, and what each experiment's
composed config builds (the module, its optimiser, its network and its PWM)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from asdt_lightning.data.registry import config_class_names
from asdt_lightning.errors import ASDTUserError
from asdt_lightning.lit.callbacks import PWMCallback
from asdt_lightning.method.pwm import TEACHER_B
from asdt_lightning.models.backbones import ResNet38
from asdt_lightning.train import build_module, train
from tiny_runs import TINY_SYNTHETIC, TINY_TRAINING


def config(tmp_path, *overrides):
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        tiny = TINY_TRAINING if "dataset=voc" in overrides else [*TINY_SYNTHETIC, *TINY_TRAINING]
        return compose("train", overrides=[*tiny, f"output_dir={tmp_path}", *overrides])


def test_fast_dev_run_trains_validates_and_writes_metrics(tmp_path):
    metrics = train(config(tmp_path, "trainer.fast_dev_run=true", "pwm.duty=0.5"))
    assert set(metrics["miou"]) == {"cam", "refine", "student", "fused"}
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["miou"] == metrics["miou"]
    assert (tmp_path / "config_resolved.yaml").is_file()


def test_short_run_writes_a_checkpoint_that_resumes(tmp_path):
    train(config(tmp_path, "trainer.max_steps=3", "logger=none"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3
    out2 = tmp_path / "resumed"
    metrics = train(config(out2, "trainer.max_steps=5", "logger=none", f"ckpt_path={last}"))
    assert metrics["global_step"] == 5


def test_last_checkpoint_holds_the_final_step_after_a_validation_part_way(tmp_path):
    # 8 images in batches of 2: 4 steps an epoch; validation (and a checkpoint) at step 4, training ends at 6
    train(config(tmp_path, "trainer.max_steps=6", "trainer.check_val_every_n_epoch=1", "logger=none"))
    checkpoints = tmp_path / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 6
    assert [p.name for p in checkpoints.glob("best-*.ckpt")] == ["best-step000004.ckpt"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pwm.duty=1.5"], "pwm.duty"),
        (["dataset=voc", "dataset.root=/nonexistent/VOCdevkit"], "/nonexistent/VOCdevkit"),
    ],
)
def test_bad_input_is_refused_before_training(tmp_path, overrides, message):
    """``train`` itself refuses a bad config (its check's every message: test_cli_checks.py) and a missing root."""
    with pytest.raises(ASDTUserError, match=message) as err:
        train(config(tmp_path, *overrides))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "checkpoints").exists()


def test_incomplete_voc_root_names_what_is_missing(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("a\n")
    with pytest.raises(ASDTUserError, match="train_aug"):
        train(config(tmp_path / "out", "dataset=voc", f"dataset.root={tmp_path / 'VOCdevkit'}"))


def test_weights_that_do_not_match_the_backbone_are_refused(tmp_path):
    from asdt_lightning.models.backbones import build_backbone

    path = tmp_path / "r50.pth"
    torch.save(build_backbone("resnet50").state_dict(), path)
    with pytest.raises(ASDTUserError, match="does not match"):
        train(config(tmp_path / "out", f"backbone.weights={path}"))


def test_command_line_prints_a_one_line_error_and_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "asdt_lightning.train", "pwm.duty=2", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: pwm.duty must lie in [0, 1]")


# ------------------------------------------------------------------------------ what each experiment builds
def composed(*overrides: str) -> dict:
    """The sections of the composed training config that build a run's module, PWM and trainer, as plain dicts."""
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "backbone", "dataset", "pwm", "trainer")}


def built(*overrides: str) -> tuple[dict, object]:
    """(config, module) of ``python -m asdt_lightning.train *overrides``, as ``train`` builds the module."""
    cfg = composed(*overrides)
    return cfg, build_module(cfg, config_class_names(cfg["dataset"]))


@pytest.fixture(scope="module")
def voc_paper():
    return built("experiment=voc_paper")  # ResNet-38: a few seconds, once


@pytest.fixture(scope="module")
def default():
    return built()


def configured_optimizer(module, trainer_cfg: dict):
    """The optimiser and schedule of ``module.configure_optimizers`` under a Trainer of the run's length."""
    module.trainer = L.Trainer(
        accelerator="cpu",
        max_steps=trainer_cfg["max_steps"],
        gradient_clip_val=trainer_cfg["gradient_clip_val"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        configured = module.configure_optimizers()
    finally:
        module.trainer = None
    return configured["optimizer"], configured["lr_scheduler"]["scheduler"]


def test_voc_paper_trains_with_the_released_sgd_groups(voc_paper):
    cfg, module = voc_paper
    groups = {g["name"]: g for g in module.parameter_groups()}
    base = 7e-4  # the released rule: 1x backbone weights, 10x head weights, 20x head biases (no decay) ...
    assert list(groups) == ["backbone_weight", "head_weight", "head_bias"]
    assert [g["lr"] for g in groups.values()] == pytest.approx([base, 10 * base, 20 * base])
    assert [g["weight_decay"] for g in groups.values()] == pytest.approx([1e-5, 1e-5, 0.0])
    assert module.optim.backbone_bias_mult == 2.0  # ... 2x backbone biases: none, the convs have none, BN is frozen
    heads = {id(p) for m in module.net.head_modules() for p in m.parameters()}
    assert {id(p) for name in ("head_weight", "head_bias") for p in groups[name]["params"]} == heads
    optimizer, schedule = configured_optimizer(module, cfg["trainer"])
    assert isinstance(optimizer, torch.optim.SGD)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([g["lr"] for g in groups.values()])
    assert {g["momentum"] for g in optimizer.param_groups} == {1e-5}  # the released SGD's (see voc_released.yaml)
    assert (schedule.total, schedule.power) == (20000, 0.9)  # poly decay over the whole run


def test_voc_paper_keeps_the_released_teacher_a(voc_paper, default):
    _cfg, module = voc_paper
    assert module.objective.teacher_a is module.teacher_a  # what the loss labels with
    assert (module.teacher_a.alpha_high, module.teacher_a.bg_score_threshold) == (32, 0.8)
    assert default[1].teacher_a.alpha_high < module.teacher_a.alpha_high  # the CPU default departs from it


def test_voc_paper_network_is_resnet38_at_stride_8_with_frozen_batchnorm(voc_paper):
    _cfg, module = voc_paper
    backbone = module.net.backbone
    assert isinstance(backbone, ResNet38) and module.net.output_stride == 8
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(1, 3, 64, 64))
    shapes = [tuple(t.shape) for t in (out.cams, out.refine_logits, out.student_logits)]
    assert shapes == [(1, 20, 8, 8), (1, 21, 8, 8), (1, 21, 8, 8)]  # the paper's heads: R and S at stride 8 too


def test_voc_paper_pwm_switches_to_teacher_b_one_step_in_six_after_its_warmup(voc_paper):
    cfg, _module = voc_paper
    pwm = PWMCallback(**cfg["pwm"])
    b_steps = [t for t in range(3000) if pwm.signal(t) == TEACHER_B]
    assert b_steps == [t for t in range(1000, 3000) if t % 150 < 25]  # the first 25 steps of every 150
    assert pwm.signal(900) != TEACHER_B and pwm.signal(999) != TEACHER_B  # still warming up
    assert pwm.signal(1050) == pwm.signal(1074) == TEACHER_B and pwm.signal(1075) != TEACHER_B


def test_default_trains_from_scratch_with_adamw_and_batchnorm(default):
    cfg, module = default
    optimizer, _schedule = configured_optimizer(module, cfg["trainer"])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert any(isinstance(m, nn.BatchNorm2d) and m.weight.requires_grad for m in module.net.backbone.modules())
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(1, 3, 64, 64))
    assert out.cams.shape[-2:] == (4, 4) and out.refine_logits.shape[-2:] == out.student_logits.shape[-2:] == (16, 16)


def test_pwm_duty_sweep_steps_from_cam_only_to_refinement_only_in_sixths():
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        sweep = compose("train", overrides=["sweep=pwm_duty"], return_hydra_config=True)
    pwm = {**OmegaConf.to_container(sweep.pwm, resolve=True), "warmup": 0}
    period = pwm["period"]
    duties = [float(d) for d in sweep.hydra.sweeper.params["pwm.duty"].split(",")]
    shares = [sum(PWMCallback(**{**pwm, "duty": d}).signal(t) for t in range(period)) / period for d in duties]
    assert shares == pytest.approx([0, 1 / 6, 1 / 3, 1 / 2, 2 / 3, 1])  # teacher B's share of each PWM period
