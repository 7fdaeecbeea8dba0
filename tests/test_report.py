"""python -m asdt_lightning.report: tables and plot of a multirun; and a real seeded sweep end to end."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

from asdt_lightning.report import main, make_report
from tiny_runs import NO_PROGRESS_BAR, TINY_RUN

SRC = str(Path(__file__).parents[1] / "src")


def fake_run(folder: Path, num: int, duty: float, seed: int, fused: float, backbone: str = "resnet18") -> None:
    """A finished run as train writes it: metrics.json, config_resolved.yaml, .hydra/overrides.yaml."""
    run = folder / str(num)
    (run / ".hydra").mkdir(parents=True)
    miou = {"cam": 0.4, "refine": fused - 0.01, "student": fused - 0.02, "fused": fused}
    (run / "metrics.json").write_text(json.dumps({"miou": miou, "global_step": 10, "train_seconds": 1.0}))
    config = {
        "seed": seed,
        "pwm": {"duty": duty, "period": 150},
        "backbone": {"name": backbone},
        "output_dir": str(run),
    }
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"pwm.duty={duty}", f"seed={seed}", "sweep=x"]))


def test_report_averages_over_seeds_per_swept_value(tmp_path):
    runs = [(0.0, 0, 0.30), (0.0, 1, 0.34), (0.5, 0, 0.40), (0.5, 1, 0.50), (1.0, 0, 0.20)]
    for i, (duty, seed, fused) in enumerate(runs):
        fake_run(tmp_path, i, duty, seed, fused)
    (tmp_path / "multirun.yaml").write_text("{}")
    result = make_report(tmp_path)
    assert result["swept"] == ["pwm.duty"]  # seed is a replicate, output_dir and 'sweep' never vary
    rows = {r["pwm.duty"]: r for r in result["summary"]}
    assert rows[0.5]["n"] == 2 and rows[0.5]["fused_mean"] == pytest.approx(0.45)
    assert rows[0.5]["fused_std"] == pytest.approx(0.0707107, rel=1e-5)  # sample std over the two seeds
    assert rows[1.0]["n"] == 1 and rows[1.0]["fused_std"] is None  # one seed: no spread, not a spread of 0
    summary = list(csv.DictReader(result["paths"]["summary_csv"].open()))
    assert [float(r["fused_mean"]) for r in summary] == pytest.approx([0.32, 0.45, 0.20])
    per_run = list(csv.DictReader(result["paths"]["runs_csv"].open()))
    assert [(r["pwm.duty"], r["seed"]) for r in per_run] == [
        ("0.0", "0"),
        ("0.0", "1"),
        ("0.5", "0"),
        ("0.5", "1"),
        ("1.0", "0"),
    ]
    md = result["paths"]["summary_md"].read_text()
    assert "| 0.5 | 2 | 40.00 ± 0.00 | 44.00 ± 7.07 | 43.00 ± 7.07 | 45.00 ± 7.07 |" in md
    assert "| CAM teacher (A) mIoU (%) |" in md and "| fused (max R, S) mIoU (%) |" in md  # metrics.BRANCH_TITLES
    one_seed = next(line for line in md.splitlines() if line.startswith("| 1 | 1 |"))
    assert "±" not in one_seed  # a single seed has a mean, not a spread
    png = result["paths"]["plot"]
    assert png.name == "miou_vs_pwm.duty.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_report_with_two_swept_settings_and_a_categorical_axis(tmp_path):
    for i, (bb, duty, fused) in enumerate([("resnet18", 0.0, 0.3), ("resnet50", 0.0, 0.4), ("resnet50", 1.0, 0.5)]):
        fake_run(tmp_path, i, duty, 0, fused, backbone=bb)
        overrides = [f"backbone={bb}", f"pwm.duty={duty}", "seed=0"]
        (tmp_path / str(i) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    result = make_report(tmp_path, out=tmp_path / "rep", x="backbone")
    assert result["swept"] == ["backbone", "pwm.duty"]
    assert result["paths"]["plot"] == tmp_path / "rep" / "miou_vs_backbone.png"


def test_report_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: multirun folder not found: {tmp_path / 'missing'}"
    assert main([str(tmp_path)]) == 2
    assert "no metrics.json under" in capsys.readouterr().err
    fake_run(tmp_path, 0, 0.0, 0, 0.3)
    assert main([str(tmp_path), "--x", "pwm.period"]) == 2
    assert "not a swept setting" in capsys.readouterr().err
    (tmp_path / "0" / "metrics.json").write_text("{not json")
    assert main([str(tmp_path)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_sweep_configs_control_seeds_and_offer_optuna_for_loss_weights():
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        for name, key in [("pwm_duty", "pwm.duty"), ("pwm_period", "pwm.period"), ("backbone", "backbone")]:
            cfg = compose("train", overrides=[f"sweep={name}"], return_hydra_config=True)
            assert key in cfg.hydra.sweeper.params and cfg.hydra.sweeper.params.seed == "0,1,2"
        optuna = compose("train", overrides=["sweep=loss_weights"], return_hydra_config=True)
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper") and optuna.hydra.sweeper.direction == "maximize"
    assert set(optuna.hydra.sweeper.params) == {
        f"model.loss.{k}" for k in ("refine", "student", "teacher_b", "pairwise")
    }
    assert optuna.hydra.sweeper.sampler.seed == 0


def test_seeded_sweep_with_wandb_and_no_account_then_report(tmp_path):
    """A real multirun: no W&B account, no stdin; every run its own offline W&B run in the sweep's group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(PYTHONPATH=SRC, HOME=str(tmp_path / "home"), WANDB_SILENT="true", OMP_NUM_THREADS="1")
    env["WANDB_CONFIG_DIR"] = env["WANDB_CACHE_DIR"] = env["WANDB_DATA_DIR"] = str(tmp_path / "wandb_home")
    sweep_dir = tmp_path / "multirun"
    tiny = [*TINY_RUN, *NO_PROGRESS_BAR, "trainer.max_steps=2", "tracking.panels=0"]
    cmd = [sys.executable, "-m", "asdt_lightning.train", "-m", "sweep=pwm_duty", "pwm.duty=0,1", "seed=3"]
    cmd += ["logger=[csv,wandb]", *tiny, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for num in ("0", "1"):
        config = yaml.safe_load((sweep_dir / num / "config_resolved.yaml").read_text())
        assert config["seed"] == 3
        (run_file,) = (sweep_dir / num / "wandb").glob("offline-run-*/run-*.wandb")  # its own offline run
        assert b"pwm_duty" in run_file.read_bytes()  # the group: the sweep's name
    report = subprocess.run(
        [sys.executable, "-m", "asdt_lightning.report", str(sweep_dir)], capture_output=True, text=True, env=env
    )
    assert report.returncode == 0, report.stderr
    assert "swept: pwm.duty" in report.stdout
    summary = list(csv.DictReader((sweep_dir / "report" / "summary.csv").open()))
    assert [(r["pwm.duty"], r["n"], r["seeds"]) for r in summary] == [("0", "1", "3"), ("1", "1", "3")]
    assert (sweep_dir / "report" / "miou_vs_pwm.duty.png").is_file()


def test_plot_title_names_the_sweep_the_swept_settings_and_the_metric(tmp_path):
    from asdt_lightning.report import collect_runs, plot_title, swept_keys

    for i, duty in enumerate([0.0, 0.5]):
        fake_run(tmp_path / "12-00-00", i, duty, 0, 0.3 + duty / 10)  # overrides hold sweep=x
    runs = collect_runs(tmp_path / "12-00-00")
    title = plot_title(tmp_path / "12-00-00", runs, swept_keys(runs), None, "fused")
    assert title.splitlines() == [
        "sweep x: validation mIoU per branch vs pwm.duty",
        "mean ± std over seeds; multirun 12-00-00",
    ]
    two = plot_title(tmp_path, runs, ["backbone", "pwm.duty"], "backbone", "student")
    assert two.splitlines()[0] == "sweep x: validation student (S) mIoU vs backbone, one line per pwm.duty"


def test_sweep_name_comes_from_multirun_yaml_without_overrides(tmp_path):
    from asdt_lightning.report import collect_runs, plot_title

    fake_run(tmp_path, 0, 0.0, 0, 0.3)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").unlink()
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"sweep": "pwm_duty"}}}}))
    title = plot_title(tmp_path, collect_runs(tmp_path), [], None, "fused")
    assert title.splitlines()[0] == "sweep pwm_duty: validation mIoU per branch of all runs (nothing swept)"
    (tmp_path / "multirun.yaml").write_text("{}")
    assert plot_title(tmp_path, collect_runs(tmp_path), [], None, "fused").startswith("validation mIoU per branch")


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "asdt_lightning.train runs" in text and "``" not in text
