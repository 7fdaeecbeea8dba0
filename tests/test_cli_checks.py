"""A new user's mistakes on the training command line: each is one ``error:`` line before any work, and a clean
run prints nothing that is not about the run."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from torch.utils.data import DataLoader

from asdt_lightning.cli import preflight
from asdt_lightning.errors import ASDTUserError
from asdt_lightning.tracking import StepsProgressBar, StepsTQDMProgressBar, wandb_logger
from asdt_lightning.train import check_config
from tiny_runs import TINY_RUN

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_RUN, "trainer.enable_model_summary=true"]  # the summary is part of what must start quietly


def refused(*argv: str) -> str:
    with pytest.raises(ASDTUserError) as err:
        preflight("train", list(argv), check_config)
    message = str(err.value)
    assert "\n" not in message
    return message


# command line -> what its one error line says (check_config, the first thing ``train`` itself runs, included)
REFUSED = [
    (
        "backbone=resnet7",
        "backbone=resnet7: no such option; choose one of: convnext_tiny, deit_base, efficientnet_lite0",
    ),
    ("dataset=cityscapes", "dataset=cityscapes: no such option; choose one of: coco, coco_stuff, synthetic, voc"),
    ("pwm.dutty=0.5", "unknown key pwm.dutty; pwm has: duty, period, phase, warmup; did you mean pwm.duty?"),
    ("+pwm.dutty=0.5", "unknown key pwm.dutty (added with +)"),
    ("+model.loss.clss=2", "did you mean model.loss.cls?"),
    ("+trainer.max_stepz=3", "trainer.max_stepz is not an argument of lightning.Trainer"),
    ("dataset=voc dataset.synthetic.num_train=3", "unknown key dataset.synthetic.num_train; dataset has:"),
    ("pwm.duty=0.5)", "Error parsing override 'pwm.duty=0.5)'"),
    ("pwm.duty=1.5", "pwm.duty must lie in [0, 1]"),
    ("pwm.duty=-0.2", "pwm.duty must lie in [0, 1]"),
    ("pwm.period=0", "pwm.period must be a positive integer number of steps, got 0"),
    ("backbone.name=resnet7", "unknown backbone 'resnet7'"),
    ("backbone.weights=/nonexistent/w.pth", "backbone.weights file not found: /nonexistent/w.pth"),
    ("trainer.max_steps=-5", "trainer.max_steps must be a number of steps >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps must be a number of steps >= 1"),
    ("dataset.batch_size=0", "dataset.batch_size must be a whole number >= 1, got 0"),
    ("dataset.num_workers=-1", "dataset.num_workers must be >= 0"),
    ("trainer.precision=bf17", "trainer.precision=bf17 is not a precision"),
    ("dataset.on_bad_sample=ignore", "dataset.on_bad_sample must be one of error, skip"),
    ("dataset.resize_long=[384,256]", "dataset.resize_long must be null or [low, high] pixels with 0 < low <= high"),
]


@pytest.mark.parametrize(("command_line", "says"), REFUSED)
def test_bad_command_lines_are_one_line(command_line, says):
    assert says in refused(*command_line.split())


def test_lightning_trainer_arguments_may_be_added():
    assert preflight("train", ["+trainer.limit_val_batches=2", "+logger.csv.flush_logs_every_n_steps=5"]) == 1


def test_trainer_gpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no GPU is visible here" in refused("trainer=gpu")


def test_a_multirun_is_checked_job_by_job_before_the_first_starts():
    message = refused("-m", "pwm.duty=0.5,1.5")
    assert "pwm.duty must lie in [0, 1]" in message
    assert "(job: pwm.duty=1.5)" in message
    assert preflight("train", ["-m", "sweep=pwm_duty"], check_config) == 18
    assert preflight("train", ["-m", "model.cam_scales=[1.0,0.5]", "seed=0,1"], check_config) == 2


def _fake_checkpoint(path: Path, backbone: str = "resnet18", classes: int = 6) -> Path:
    net = {"backbone": backbone, "output_stride": 16, "head_channels": 128, "head_dilation": 2, "skip_channels": 48}
    names = ["apple", "bell", "cone", "drum", "egg", "flag"][:classes]
    hparams = {"net": net, "class_names": names, "has_background": True}
    torch.save({"state_dict": {}, "hyper_parameters": hparams, "global_step": 3}, path)
    return path


def test_ckpt_path_is_checked_before_any_work(tmp_path):
    assert "no such file" in refused(f"ckpt_path={tmp_path / 'missing.ckpt'}")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    assert "is not a checkpoint (not a PyTorch file)" in refused(f"ckpt_path={text}")
    other_backbone = _fake_checkpoint(tmp_path / "r50.ckpt", backbone="resnet50")
    assert "backbone 'resnet50' there, 'resnet18' here" in refused(f"ckpt_path={other_backbone}")
    fewer_classes = _fake_checkpoint(tmp_path / "three.ckpt", classes=3)
    assert "trained on 3 classes" in refused(f"ckpt_path={fewer_classes}")
    voc = refused(f"ckpt_path={_fake_checkpoint(tmp_path / 'ok.ckpt')}", "dataset=voc")
    assert "trained on 6 classes" in voc and "dataset 'voc' has 20" in voc
    synthetic = _fake_checkpoint(tmp_path / "same.ckpt")
    assert preflight("train", [f"ckpt_path={synthetic}"], check_config) == 1


def _run(*argv: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "asdt_lightning.train", *argv]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_refused_runs_print_one_line_exit_2_and_leave_no_folder(tmp_path):
    for argv in (["+pwm.dutty=0.5"], ["-m", "pwm.duty=1.5,0.5"], ["dataset=voc", f"dataset.root={tmp_path}/none"]):
        result = _run(*argv, "hydra.run.dir=runs/one", "hydra.sweep.dir=runs/many", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert not (tmp_path / "runs").exists(), argv


def test_a_tiny_run_starts_quietly_logs_to_its_log_and_respects_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        result = _run(
            *TINY,
            "trainer.max_steps=2",
            "tracking.panels=1",
            "dataset.pin_memory=true",
            "hydra.run.dir=run",
            cwd=tmp_path,
        )
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr[-3000:]
    shown = result.stdout + result.stderr
    for noise in (
        "litlogger",
        "already configured with model summary",
        "not supported by the model summary",
        "LeafSpec",
        "Total FLOPs: 0 ",
        "Epoch 0/-",
        "pin_memory",
        "anonymous",
    ):
        assert noise not in shown, noise
    run = tmp_path / "run"
    log = (run / "train.log").read_text()
    assert "Trainer.fit" in log and "fused (max R, S)" in log
    for path in [run / "metrics.json", run / "config_resolved.yaml", run / "checkpoints" / "last.ckpt"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    panels = list((run / "panels").glob("*.png"))
    assert panels and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in panels)


def test_progress_bar_counts_epochs_of_a_max_steps_run():
    bar = StepsProgressBar()
    bar._trainer = SimpleNamespace(max_steps=1200, num_training_batches=75, max_epochs=-1)
    assert bar._get_train_description(3).strip() == "Epoch 3/15"


def test_tqdm_progress_bar_counts_epochs_of_a_max_steps_run(tmp_path):
    trainer = L.Trainer(
        max_steps=12,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar := StepsTQDMProgressBar()],
        default_root_dir=tmp_path,
    )
    seen = []
    model = BoringModel()
    model.train_dataloader = lambda: DataLoader(RandomDataset(32, 5), batch_size=1)  # 5 batches: 3 epochs
    original = bar.on_train_epoch_start

    def spy(trainer, *args):
        original(trainer, *args)
        seen.append(bar.train_progress_bar.desc.rstrip(": "))

    bar.on_train_epoch_start = spy
    trainer.fit(model)
    assert seen == ["Epoch 0/2", "Epoch 1/2", "Epoch 2/2"]


def test_wandb_is_a_dependency_and_starts_without_the_anonymous_warning(tmp_path):
    dependencies = (ROOT / "pyproject.toml").read_text().split("\ndependencies = [", 1)[1].split("\n]", 1)[0]
    assert '"wandb>=' in dependencies
    logger = wandb_logger(save_dir=tmp_path, mode="offline")
    assert "anonymous" not in logger._wandb_init


@pytest.mark.parametrize(
    ("config", "argv", "says"),
    [
        ("pseudo_labels", ["brnch=fused"], "unknown key brnch; the config has: batch_size, branch"),
        ("segment", ["segmenter=deeplabv9"], "segmenter=deeplabv9: no such option; choose one of: deeplabv2"),
        ("prepare", ["dataset=vocc"], "dataset=vocc: no such option"),
        ("evaluate", ["crfs=[none]", "fusionn=max"], "unknown key fusionn"),
        ("pipeline", ["+crff=dense"], "unknown key crff (added with +); the config has: common, crf"),
    ],
)
def test_other_entry_points_refuse_bad_command_lines_in_one_line(config, argv, says):
    with pytest.raises(ASDTUserError, match=None) as err:
        preflight(config, argv)
    assert says in str(err.value)
