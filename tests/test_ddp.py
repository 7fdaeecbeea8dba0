"""Scale-out: trainer=ddp on CPU (two gloo processes, two steps) and the SLURM launcher configs compose."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tiny_runs import NO_PROGRESS_BAR, TINY_RUN

TINY = [*TINY_RUN, *NO_PROGRESS_BAR, "tracking.panels=1"]


def test_ddp_on_cpu_with_two_gloo_processes_trains_and_validates(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "asdt_lightning.train", "trainer=ddp", "trainer.devices=2"]  # TINY: on the CPU
    cmd += ["trainer.precision=32-true", "trainer.max_steps=2", *TINY, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output and "distributed_backend=gloo" in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and set(metrics["miou"]) == {"cam", "refine", "student", "fused"}
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert [p.name for p in (run_dir / "panels").iterdir()] == ["val_step000002.png"]  # rank 0 only, once


def test_ddp_and_slurm_launcher_configs_compose():
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        slurm = compose(
            "train",
            overrides=["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "hydra/launcher=slurm"],
            return_hydra_config=True,
        )
        plain = compose("train", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    assert (slurm.trainer.strategy, slurm.trainer.accelerator, slurm.trainer.devices) == ("ddp", "gpu", 4)
    launcher = OmegaConf.to_container(slurm.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert slurm.hydra.launcher.tasks_per_node == 4 and slurm.hydra.launcher.gpus_per_node == 4
    assert slurm.hydra.launcher.nodes == 2
    assert plain.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")


def test_slurm_launcher_refuses_all_gpus_as_a_job_size():
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        slurm = compose("train", overrides=["trainer=ddp", "hydra/launcher=slurm"], return_hydra_config=True)
    assert slurm.trainer.devices == -1  # trainer=ddp's default: every visible GPU
    with pytest.raises(Exception, match=r"trainer\.devices=-1, but hydra/launcher=slurm sizes each job"):
        _ = slurm.hydra.launcher.tasks_per_node
