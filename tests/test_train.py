"""The Hydra entry point: a fast_dev_run end to end, and every bad input refused before training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from asdt_lightning.errors import ASDTUserError
from asdt_lightning.train import train

TINY_SYNTHETIC = ["dataset.synthetic.num_train=8", "dataset.synthetic.num_val=4", "dataset.synthetic.image_size=64"]
TINY = [
    "dataset.crop_size=64",
    "dataset.val_size=64",
    "dataset.batch_size=2",
    "dataset.val_batch_size=2",
    "dataset.num_workers=0",
    "model.net.head_channels=8",
    "model.cam_scales=[1.0]",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
]


def config(tmp_path, *overrides):
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        tiny = TINY if "dataset=voc" in overrides else [*TINY_SYNTHETIC, *TINY]
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
        (["pwm.duty=-0.2"], "pwm.duty"),
        (["pwm.period=0"], "pwm.period"),
        (["backbone.name=resnet7"], "unknown backbone 'resnet7'"),
        (["backbone.weights=/nonexistent/w.pth"], "/nonexistent/w.pth"),
        (["dataset=voc", "dataset.root=/nonexistent/VOCdevkit"], "/nonexistent/VOCdevkit"),
    ],
)
def test_bad_input_is_refused_before_training(tmp_path, overrides, message):
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


def test_paper_experiment_and_sweeps_compose():
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        paper = compose("train", overrides=["experiment=voc_paper", "output_dir=/tmp/x"])
        sweep = compose("train", overrides=["sweep=pwm_duty", "output_dir=/tmp/x"], return_hydra_config=True)
    assert paper.backbone.name == "resnet38" and paper.backbone.output_stride == 8 and paper.backbone.frozen_bn
    assert paper.dataset.name == "voc" and paper.dataset.crop_size == 321 and paper.dataset.batch_size == 4
    assert list(paper.model.cam_scales) == [1.0, 0.5, 1.5, 2.0]
    assert (paper.pwm.period, paper.pwm.warmup) == (150, 1000) and abs(paper.pwm.duty - 1 / 6) < 1e-9
    assert paper.model.optimizer.lr == 7e-4 and paper.trainer.max_steps == 20000 and paper.seed == 42
    duties = [float(d) for d in sweep.hydra.sweeper.params["pwm.duty"].split(",")]
    assert duties == pytest.approx([0, 1 / 6, 1 / 3, 1 / 2, 2 / 3, 1])


def test_paper_experiment_uses_the_released_optimiser_groups():
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        paper = compose("train", overrides=["experiment=voc_paper", "output_dir=/tmp/x"])
    o = paper.model.optimizer
    assert (o.name, o.backbone_bias_mult, o.head_weight_mult, o.head_bias_mult) == ("sgd", 2.0, 10.0, 20.0)
    assert paper.model.loss.classifier_warmup == 0 and paper.model.teacher_a.bg_score_threshold == 0.8


def test_paper_experiment_keeps_the_released_teacher_a_settings():
    """The CPU default departs from the released code (alpha_high, bg_score_threshold); voc_paper must not."""
    from asdt_lightning.method.cam import TeacherAParams

    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        paper = compose("train", overrides=["experiment=voc_paper", "output_dir=/tmp/x"])
        default = compose("train", overrides=["output_dir=/tmp/x"])
    released = TeacherAParams()  # the dataclass defaults are the released code's
    keys = ("alpha_low", "alpha_high", "fg_percentile", "fg_min_cam", "bg_score_threshold", "crf_confidence")
    assert {k: paper.model.teacher_a[k] for k in keys} == {k: getattr(released, k) for k in keys}
    assert default.model.teacher_a.alpha_high < released.alpha_high  # background labels near objects on CPU runs
