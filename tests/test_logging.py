"""Experiment tracking: what a run logs (CSV, TensorBoard, W&B offline), image panels, and refused bad settings."""

import csv

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from PIL import Image

from asdt_lightning.errors import ASDTUserError
from asdt_lightning.lit.image_logging import PANEL_COLUMNS, colorize, fixed_indices, panel_row
from asdt_lightning.method.pwm import pwm_signal
from asdt_lightning.tracking import build_loggers, default_group, resolve_wandb_mode
from asdt_lightning.train import train
from tiny_runs import NO_PROGRESS_BAR, TINY_RUN

TINY = [*TINY_RUN, *NO_PROGRESS_BAR]


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path, monkeypatch):
    """W&B never reaches the network and writes nothing outside tmp."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # artifact staging
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def config(tmp_path, *overrides):
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        return compose("train", overrides=[*TINY, f"output_dir={tmp_path}", *overrides])


def test_a_run_logs_losses_pwm_teacher_lrs_miou_tables_and_panels(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pwm = dict(period=2, duty=0.5, warmup=0)
    metrics = train(
        config(
            tmp_path,
            "logger=[csv,tensorboard]",
            "trainer.max_steps=4",  # 8 images, batch 2: validation after the epoch, at step 4
            "trainer.check_val_every_n_epoch=1",
            "trainer.log_every_n_steps=1",
            "model.loss.classifier_warmup=2",
            *(f"pwm.{k}={v}" for k, v in pwm.items()),
            "tracking.panels=3",
            "tracking.panel_tile=32",
        )
    )
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    columns = set(rows[0])
    losses = {"loss", "loss_cls", "loss_refine_ce", "loss_refine_pairwise", "loss_student_distill"}
    assert {f"train/{k}" for k in losses} | {"train/loss_student_pairwise"} <= columns
    assert {f"val/miou_{b}" for b in ("cam", "refine", "student", "fused")} <= columns
    assert {c for c in columns if c.startswith("lr-")} >= {"lr-AdamW/head_weight", "lr-AdamW/backbone_weight"}
    steps = {int(r["step"]): r for r in rows if r.get("pwm/signal")}
    assert sorted(steps) == [0, 1, 2, 3]
    assert [float(steps[t]["pwm/signal"]) for t in range(4)] == [pwm_signal(t, **pwm) for t in range(4)]
    # the classifier warms up alone for 2 steps (no teacher), then the student follows the PWM signal
    active = [float(steps[t]["pwm/active_teacher"]) for t in range(4)]
    assert active == [-1, -1, pwm_signal(2, **pwm), pwm_signal(3, **pwm)]

    table = list(csv.DictReader((tmp_path / "csv" / "per_class_iou.csv").open()))
    per_class = metrics["per_class_iou"]
    assert [r["class"] for r in table] == list(per_class["fused"])  # one row per label, the final validation only
    assert {r["step"] for r in table} == {"4"}
    for r in table:
        for b in per_class:
            expected = per_class[b][r["class"]]
            assert (np.isnan(expected) and r[b] == "nan") or float(r[b]) == pytest.approx(expected)
    assert "| background |" in (tmp_path / "per_class_iou.md").read_text()

    panel = np.asarray(Image.open(tmp_path / "panels" / "val_step000004.png"))
    assert panel.shape == (14 + 3 * 32 + 2 * 2, 6 * 32 + 5 * 2, 3)  # header + 3 rows of 6 tiles of 32 px

    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert hparams["config"]["pwm"] == {**pwm, "phase": 0}  # the resolved run config is logged

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert "val/panels" in tags["images"] and "train/loss_cls" in tags["scalars"]
    assert any(t.startswith("val/per_class_iou") for t in tags["tensors"])


def test_wandb_logger_offline_gets_group_name_tags_and_config(tmp_path):
    import wandb

    plain = {"project": "p", "group": "pwm_duty", "name": "duty-0.5", "tags": ["a", "b"]}
    conf = {"_target_": "asdt_lightning.tracking.wandb_logger", "save_dir": str(tmp_path), "mode": "auto", **plain}
    (logger,) = build_loggers({"wandb": conf}, {"pwm": {"duty": 0.5}})
    try:
        run = logger.experiment
        assert run.offline and run.group == "pwm_duty" and run.name == "duty-0.5" and set(run.tags) == {"a", "b"}
        assert run.config["config"]["pwm"]["duty"] == 0.5
        assert str(tmp_path) in run.dir
    finally:
        wandb.finish()


def test_wandb_mode_is_offline_without_credentials_and_online_with_them(tmp_path):
    home = {"HOME": str(tmp_path)}
    assert resolve_wandb_mode("auto", home) == "offline"
    assert resolve_wandb_mode("auto", {**home, "WANDB_API_KEY": "x" * 40}) == "online"
    assert resolve_wandb_mode("auto", {**home, "WANDB_MODE": "disabled"}) == "disabled"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert resolve_wandb_mode("auto", home) == "online"
    assert resolve_wandb_mode("offline", {**home, "WANDB_API_KEY": "x"}) == "offline"
    with pytest.raises(ASDTUserError, match="logger.wandb.mode"):
        resolve_wandb_mode("cloud", home)


def test_runs_of_a_sweep_share_its_group():
    assert default_group({"sweep": "pwm_duty", "multirun_dir": "12-00-00"}) == "pwm_duty"
    assert default_group({"sweep": None, "multirun_dir": "12-00-00"}) == "multirun-12-00-00"
    assert default_group({}) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tracking.progress_bar=fancy"], "tracking.progress_bar"),
        (["tracking.panels=-1"], "tracking.panels"),
        (["logger=wandb", "logger.wandb.mode=cloud"], "logger.wandb.mode"),
    ],
)
def test_bad_tracking_settings_are_refused_before_training(tmp_path, overrides, message):
    with pytest.raises(ASDTUserError, match=message):
        train(config(tmp_path, *overrides))
    assert not (tmp_path / "checkpoints").exists()


def test_missing_wandb_package_is_a_one_line_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ASDTUserError, match=r"pip install -e \"\.\[wandb\]\""):
        train(config(tmp_path, "logger=[csv,wandb]"))


def test_colorize_uses_the_voc_colours_and_white_for_ignore():
    rgb = colorize(torch.tensor([[0, 1], [15, 255]]))
    assert rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [128, 0, 0]
    assert rgb[1, 0].tolist() == [192, 128, 128] and rgb[1, 1].tolist() == [255, 255, 255]


def test_panel_row_shows_each_branch_argmax_and_the_cam_where_it_fires():
    size, k = 16, 3
    rgb = np.full((size, size, 3), 200, dtype=np.uint8)
    mask = torch.zeros(size, size, dtype=torch.long)
    cam = torch.zeros(2, size, size)
    cam[1, :8] = 1.0  # class 2 fires on the top half
    probs = torch.zeros(k, size, size)
    probs[1] = 1.0  # R, S and fused say class 1 everywhere
    row = panel_row(rgb, mask, {"cam": cam, "refine": probs, "student": probs, "fused": probs}, tile=size)
    assert row.shape == (size, len(PANEL_COLUMNS) * size + (len(PANEL_COLUMNS) - 1) * 2, 3)
    tiles = [row[:, i * (size + 2) : i * (size + 2) + size] for i in range(len(PANEL_COLUMNS))]
    assert (tiles[0] == 200).all() and (tiles[1] == 0).all()
    assert tiles[2][0, 0].tolist() == [0, 128, 0]  # label 2's colour where its CAM is 1
    assert tiles[2][-1, 0].tolist() == [70, 70, 70]  # darkened image where no CAM fires
    for t in tiles[3:]:
        assert (t == np.array([128, 0, 0], dtype=np.uint8)).all()


def test_fixed_indices_are_spread_and_stable():
    assert fixed_indices(100, 4) == [0, 33, 66, 99]
    assert fixed_indices(3, 8) == [0, 1, 2]
    assert fixed_indices(10, 0) == []


def test_panel_samples_replace_skipped_ones_with_the_next_good_ones():
    from asdt_lightning.data.dataset import BadSample
    from asdt_lightning.lit.image_logging import good_samples

    bad = {0, 1, 5}
    dataset = [BadSample(i, f"s{i}", "unreadable") if i in bad else {"index": i} for i in range(6)]
    assert [s["index"] for s in good_samples(dataset, [0, 2, 5])] == [2, 3, 4]
    assert good_samples([BadSample(0, "s0", "unreadable")], [0]) == []


def test_checkpoints_go_to_wandb_as_artifacts_when_asked(tmp_path, monkeypatch):
    import wandb
    from wandb.sdk.wandb_run import Run

    logged = []
    real_log_artifact = Run.log_artifact

    def spy(self, artifact, *args, **kwargs):
        logged.append((artifact.type, sorted(artifact.manifest.entries)))
        return real_log_artifact(self, artifact, *args, **kwargs)

    monkeypatch.setattr(Run, "log_artifact", spy)
    try:
        train(
            config(tmp_path, "logger=wandb", "logger.wandb.log_model=true", "trainer.max_steps=2", "tracking.panels=0")
        )
    finally:
        wandb.finish()
    models = [names for kind, names in logged if kind == "model"]
    assert models and all(any(name.endswith(".ckpt") for name in names) for names in models)


def test_rich_progress_bar_and_model_summary_by_default():
    from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar

    from asdt_lightning.tracking import build_callbacks

    built = build_callbacks({"progress_bar": "rich", "panels": 0}, {}, ".", has_loggers=False)
    assert all(any(isinstance(c, kind) for c in built) for kind in (RichProgressBar, RichModelSummary))
    quiet = {"enable_progress_bar": False, "enable_model_summary": False}
    built = build_callbacks({"progress_bar": "rich", "panels": 0}, quiet, ".", has_loggers=False)
    assert not any(isinstance(c, (RichProgressBar, RichModelSummary)) for c in built)


@pytest.mark.parametrize("background", [0, 255])
def test_panel_labels_are_readable_on_white_and_on_black_images(background):
    from asdt_lightning.lit.image_logging import panel_grid

    row = np.full((40, 6 * 50 + 10, 3), background, dtype=np.uint8)
    grid = panel_grid([row], names=["2007_000032"])
    label = grid[14:40, :100].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # luminance
    assert label.min() < 40 and label.max() > 215  # light text on a dark box, whatever the image around it
    text = label > 128
    assert 0 < text.sum() < text.size  # neither an empty box nor a filled one
