"""Quality table on the synthetic set: CAM teacher only, refinement teacher only, ASDT at duty 1/6 and 1/2, and the
fully supervised upper bound, same budget and seeds, mIoU mean ± std per branch.

Every run goes through the package's entry point (``python -m asdt_lightning.train`` with Hydra overrides) and
writes its ``metrics.json``; this script gathers them into a markdown table. A full table is 5 variants x seeds
default runs (about 10 minutes each on a 2-core CPU); ``--max-steps`` and ``--seeds`` shrink it for a check.

    python -m benchmarks.quality --seeds 0 1 2 --out outputs/quality_default  # the full table (hours on CPU)
    python -m benchmarks.quality --seeds 0 --max-steps 20 --out /tmp/q        # does the script work?
    python -m benchmarks.quality --gather-only --out outputs/quality_default  # re-make the table from finished runs

The held-out check (the default config on a dataset the defaults were not tuned on, ``benchmarks/heldout_dataset.py``)
uses the same script with the dataset swapped by ``--override``; see README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from benchmarks._common import emit, machine_info, md_table, parse_cli

UPPER = "fully supervised (upper bound)"
# name -> Hydra overrides
VARIANTS: dict[str, list[str]] = {
    "CAM teacher only (duty 0)": ["pwm.duty=0"],
    "refinement teacher only (duty 1)": ["pwm.duty=1"],
    "ASDT duty 1/6": ["pwm.duty=0.16666666666666666"],
    "ASDT duty 1/2": ["pwm.duty=0.5"],
    UPPER: ["model.loss.supervision=ground_truth"],  # R and S on the true masks
}
BRANCHES = ("cam", "refine", "student", "fused")
DEFAULT_OUT = Path("outputs/quality_default")  # the default configuration's runs: one folder per configuration


def run_dir(out: Path, variant: str, seed: int) -> Path:
    slug = "".join(c if c.isalnum() else "_" for c in variant.lower()).strip("_")
    return out / slug / f"seed{seed}"


def train_command(overrides: list[str], seed: int, directory: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "asdt_lightning.train",
        *overrides,
        f"seed={seed}",
        "logger=none",
        f"hydra.run.dir={directory}",
        *extra,
    ]


def selected(args: argparse.Namespace) -> dict[str, list[str]]:
    """The variants ``--only`` names (all by default)."""
    unknown = [name for name in args.only if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {unknown}; choose among {list(VARIANTS)}")
    return {name: o for name, o in VARIANTS.items() if not args.only or name in args.only}


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train every (variant, seed) not yet finished; returns one record per run, with its command."""
    extra = list(args.override) + ([f"trainer.max_steps={args.max_steps}"] if args.max_steps else [])
    records = []
    for seed in args.seeds:  # every variant of one seed first: a cut-short run still gives a whole table row set
        for variant, overrides in selected(args).items():
            directory = run_dir(args.out, variant, seed)
            record: dict[str, Any] = {"variant": variant, "seed": seed, "dir": str(directory)}
            cmd = train_command(overrides, seed, directory, extra)
            record["command"] = "python " + " ".join(cmd[1:])
            metrics_file = directory / "metrics.json"
            if not args.gather_only and not metrics_file.is_file():
                start = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                record["seconds"] = round(time.perf_counter() - start, 1)
                if proc.returncode != 0:
                    record["status"] = f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
                    records.append(record)
                    continue
            if metrics_file.is_file():
                record["metrics"] = json.loads(metrics_file.read_text())
                record["status"] = "done"
                record["pixel_ce"] = pixel_ce(directory)
            else:
                record["status"] = "missing"
            records.append(record)
    return records


def pixel_ce(directory: Path) -> str:
    """Which pixel cross-entropy a finished run trained with: ``balanced`` or ``plain`` (``model.loss.balanced_ce``;
    runs from before the option existed trained with the balanced one)."""
    config = directory / "config_resolved.yaml"
    if not config.is_file():
        return "unknown"
    loss = OmegaConf.load(config).get("model", {}).get("loss", {})
    return "balanced" if loss.get("balanced_ce", True) else "plain"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


HEADER = ("variant", *BRANCHES, "fused - cam", "gap to upper bound (fused)", "seeds done", "steps", "note")


def markdown(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """One row per variant: mIoU (%) mean ± std over its finished seeds, per branch."""
    rows = []
    upper = {
        r["seed"]: r["metrics"]["miou"]["fused"] for r in records if r["status"] == "done" and r["variant"] == UPPER
    }
    for variant in selected(args):
        runs = [r for r in records if r["variant"] == variant]
        done = [r for r in runs if r["status"] == "done"]
        cells = [_mean_std([r["metrics"]["miou"][b] for r in done]) for b in BRANCHES]
        gain = _mean_std([r["metrics"]["miou"]["fused"] - r["metrics"]["miou"]["cam"] for r in done])
        gap = _mean_std([upper[r["seed"]] - r["metrics"]["miou"]["fused"] for r in done if r["seed"] in upper])
        steps = sorted({r["metrics"]["global_step"] for r in done})
        note = "" if done else (runs[0]["status"] if runs else "")
        row = [variant, *cells, gain, gap if variant != UPPER else "-", f"{len(done)}/{len(runs)}"]
        rows.append([*row, ",".join(map(str, steps)) or "-", note])
    budget = f"trainer.max_steps={args.max_steps}" if args.max_steps else "the default budget"
    commands = "\n".join(f"- `{r['command']}`" for r in records if "command" in r)
    ce = sorted({r["pixel_ce"] for r in records if "pixel_ce" in r})
    return (
        f"### {args.title}\n\n"
        f"Command: `{args.command}`\n\nmIoU (%) on the val split, mean ± std over seeds "
        f"{args.seeds}, {budget}; pixel cross-entropy of the runs (`model.loss.balanced_ce`): {', '.join(ce) or '-'}. "
        f"Runs:\n\n{commands}\n\n"
        + md_table(
            ["variant", *BRANCHES, "fused - cam", "gap to upper bound (fused)", "seeds done", "steps", "note"], rows
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-steps", type=int, default=None, help="trainer.max_steps for every run (default: config)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--override", action="append", default=[], help="extra Hydra override for every run")
    p.add_argument("--gather-only", action="store_true", help="do not train, only gather finished runs")
    p.add_argument("--only", action="append", default=[], help="train/gather only this variant (repeatable)")
    p.add_argument("--title", default="Quality on the synthetic set", help="the markdown section's title")
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = parse_cli(p, argv, "quality")
    records = run_all(args)
    emit(args, markdown(records, args), lambda: {"machine": machine_info(), "runs": records})
    return records


if __name__ == "__main__":
    main()
