"""Shared helpers of the benchmarks: the machine, the package's Hydra config, timing and markdown."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

CONF_DIR = Path(__file__).resolve().parents[1] / "src" / "asdt_lightning" / "conf"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, cores, load, GPU, library versions and the date, for the header of a results file."""
    import lightning

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def compose_config(overrides: Sequence[str]) -> dict[str, Any]:
    """The package's training config (``conf/train.yaml`` + overrides), as plain dicts for ``build_module`` (and the
    trainer settings).

    Only the sections a module needs are resolved (the Hydra runtime keys are not available outside a run).
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    sections = ("model", "backbone", "dataset", "pwm", "trainer")
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in sections}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn`` takes, with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def quiet_lightning() -> None:
    """Silence the warnings ``LightningModule.log`` gives when a module runs without a Trainer."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*self.log.*")
    warnings.filterwarnings("ignore", message=".*trainer.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def shown_args(argv: list[str]) -> str:
    """The arguments as a command shows them, without the output paths (``--md``, ``--json``)."""
    shown, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--md", "--json"):
            skip = True
        else:
            shown.append(a)
    return " ".join(shown)


def parse_cli(parser: argparse.ArgumentParser, argv: list[str] | None, module: str) -> argparse.Namespace:
    """``parser``'s arguments of ``argv`` (default: the command line's), with ``command``: how the benchmark ran,
    ``python -m benchmarks.<module> ...`` without the output paths, for its results to show."""
    args = parser.parse_args(argv)
    args.command = f"python -m benchmarks.{module} " + shown_args(sys.argv[1:] if argv is None else list(argv))
    return args


def emit(args: argparse.Namespace, text: str, raw: Any | Callable[[], Any] = None) -> None:
    """Write a benchmark's markdown section to ``args.md`` and its raw results (``raw``, or ``raw()``) as JSON to
    ``args.json`` where those options are given, then print the section."""
    if getattr(args, "json", None):
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw() if callable(raw) else raw, indent=1) + "\n")
    if getattr(args, "md", None):
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
    print(text)
