"""The whole pipeline in a tiny setting: every stage runs, the table is written, a re-run skips finished stages."""

import json

from hydra import compose, initialize_config_module

from asdt_lightning.pipeline import run_pipeline
from tiny_runs import NO_PROGRESS_BAR, TINY_MODEL
from wsss_helpers import TINY_DATA_BATCHES

QUIET = ["trainer.enable_model_summary=false", *NO_PROGRESS_BAR, "logger=none"]


def listed(*items):
    """A Hydra list of quoted override strings: ['a=1','b=[2]']."""
    return "[" + ",".join(f"'{item}'" for item in items) + "]"


def overrides(out):
    small_crf = ["crf_params.iterations=2", "crf_params.window=5"]
    return [
        f"output_dir={out}",
        "crf=local",
        "pseudo_eval_limit=4",
        "common=" + listed(*TINY_DATA_BATCHES),
        "train=" + listed("trainer.max_steps=2", *TINY_MODEL, *QUIET),
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


def _result(images, limit=None, split_images=None, split="train"):
    result = {"images": images, "limit": limit, "split": split, "cam_threshold": 0.3}
    if split_images is not None:
        result["split_images"] = split_images
    return result


def test_table_says_first_n_only_when_a_limit_cut_the_list():
    from asdt_lightning.pipeline import images_used, pipeline_table

    assert images_used(_result(16, limit=16, split_images=600)) == "first 16 of 600"
    assert images_used(_result(10, limit=300, split_images=10)) == "all 10"  # a limit above the list's length
    assert images_used(_result(150, split_images=150)) == "all 150"
    assert images_used(_result(16, limit=16)) == "first 16"  # results.json of before split_images
    assert images_used(_result(10, limit=300)) == "all 10"
    assert images_used(_result(10)) == "all 10"
    scores = {"none": {"miou": 0.5}, "local": {"miou": 0.6}}
    pseudo = {**_result(16, limit=16, split_images=600), "results": {"fused": scores}}
    export = {**_result(16, limit=16, split_images=600), "results": {"folder": {"none": {"miou": 0.55}}}}
    stage2 = {**_result(150, split_images=150, split="val"), "results": {"segmenter": {"none": {"miou": 0.7}}}}
    table = pipeline_table(pseudo, export, stage2, "local")
    assert "| pseudo masks: fused (max R, S) | train (first 16 of 600) | 50.00 | 60.00 |" in table
    assert "| exported pseudo masks (PNG) | train (first 16 of 600) | 55.00 | |" in table
    assert "| val (all 150) | **70.00** | |" in table and "all 16" not in table


def test_pseudo_masks_are_scored_on_the_pseudo_mask_list(tmp_path, monkeypatch):
    """VOC trains on train_aug but scores pseudo masks on train (1,464): both evaluate stages take that list."""
    import asdt_lightning.pipeline as pipeline

    splits = []
    monkeypatch.setattr(pipeline, "run_evaluate", lambda config: splits.append(config["split"]))
    (tmp_path / "asdt").mkdir()
    (tmp_path / "asdt" / "metrics.json").write_text(json.dumps({"cam_threshold": 0.3}))
    given = overrides(tmp_path)
    given[3] = "common=" + listed(*TINY_DATA_BATCHES, "dataset.pseudo_mask_list=val")
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        stages = {s.name: s for s in pipeline.pipeline_stages(compose("pipeline", overrides=given), tmp_path, "none")}
        stages["score branches as pseudo masks"].run()
        stages["score exported masks"].run()
    assert splits == ["val", "val"]  # not the training list
