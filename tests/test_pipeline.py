"""The whole pipeline in a tiny setting: every stage runs, the table is written, a re-run skips finished stages."""

import json

from hydra import compose, initialize_config_module

from asdt_lightning.pipeline import run_pipeline
from wsss_helpers import TINY_DATA

DATA = [*TINY_DATA, "dataset.crop_size=48", "dataset.val_size=48", "dataset.batch_size=2", "dataset.val_batch_size=2"]
DATA += ["dataset.num_workers=0"]
QUIET = ["trainer.enable_model_summary=false", "trainer.enable_progress_bar=false", "logger=none"]


def listed(*items):
    """A Hydra list of quoted override strings: ['a=1','b=[2]']."""
    return "[" + ",".join(f"'{item}'" for item in items) + "]"


def overrides(out):
    small_crf = ["crf_params.iterations=2", "crf_params.window=5"]
    return [
        f"output_dir={out}",
        "crf=local",
        "pseudo_eval_limit=4",
        "common=" + listed(*DATA),
        "train=" + listed("trainer.max_steps=2", "model.net.head_channels=8", "model.cam_scales=[1.0]", *QUIET),
        "pseudo_labels=" + listed("num_workers=0", "progress=false", *small_crf),
        "segment=" + listed("trainer.max_steps=2", *QUIET),
        "evaluate=" + listed("num_workers=0", "progress=false", "figure=false", *small_crf),
    ]


def test_pipeline_runs_every_stage_and_resumes(tmp_path, capsys):
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        summary = run_pipeline(compose("pipeline", overrides=overrides(tmp_path)))
        assert set(summary["stage_seconds"]) == {
            "train ASDT",
            "score branches as pseudo masks",
            "export pseudo masks",
            "score exported masks",
            "train second stage",
            "score second stage on val",
        }
        assert set(summary["pseudo_masks_train"]) == {"cam", "refine", "student", "fused"}
        assert all(set(v) == {"none", "local"} for v in summary["pseudo_masks_train"].values())
        assert 0 <= summary["second_stage_val"] <= 1
        assert len(list((tmp_path / "pseudo_masks").glob("*.png"))) == 10  # every training image
        table = (tmp_path / "pipeline.md").read_text()
        assert "second stage" in table and "exported pseudo masks" in table
        again = run_pipeline(compose("pipeline", overrides=overrides(tmp_path)))
    assert again["stage_seconds"] == {}  # every stage was done already
    assert again["second_stage_val"] == summary["second_stage_val"]
    assert json.loads((tmp_path / "pipeline.json").read_text())["table"] == summary["table"]
