"""Run every benchmark and write ``benchmarks/RESULTS.md`` (atomically): ``make bench``.

Each benchmark runs in its own process with the exact command recorded beside its figures. The quality table is
not trained here (hours on a CPU): its finished runs are gathered if any (``python -m benchmarks.quality``), and
so are the held-out check's (``python -m benchmarks.heldout_dataset --root outputs/heldout_root --check``); the
teacher-label table scores the quality run's default checkpoint (seed 0) when it exists.

    python -m benchmarks.run_all                     # the full set, ~5-8 minutes on a 2-core CPU
    python -m benchmarks.run_all --quick --out /tmp/RESULTS.md     # seconds: checks the scripts only
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asdt_lightning.io_utils import atomic_write_text
from benchmarks import quality
from benchmarks._common import machine_info, md_table

ROOT = Path(__file__).resolve().parents[1]


DEFAULT_QUALITY = quality.DEFAULT_OUT.name  # the folder ``python -m benchmarks.quality`` trains the default config into
# (title, folder under outputs/, extra arguments): the default configuration's table first, then the former defaults'
QUALITY_TABLES = (
    ("Quality, the default configuration", DEFAULT_QUALITY,
     ["--title", "Quality on the synthetic set: the default configuration"]),
    ("Quality, plain CE and alpha_high 32 (the default until session 5)", "quality_plain_ce",
     ["--only", "ASDT duty 1/2", "--title", "Quality on the synthetic set: plain CE, alpha_high 32"]),
    ("Quality, balanced CE and alpha_high 32 (the default until session 4)", "quality",
     ["--title", "Quality on the synthetic set: balanced CE, alpha_high 32"]),
)  # fmt: skip


# (title, folder under outputs/, overrides) of the held-out checks (python -m benchmarks.heldout_dataset ... --check)
HELDOUT_CHECKS = (
    ("Held-out dataset", "quality_heldout", ()),
    ("Held-out dataset, 3x the budget", "quality_heldout_3x",  # the budget the classifier needs to learn that data
     ("trainer.max_steps=3600", "model.loss.classifier_warmup=1500")),
)  # fmt: skip


def jobs(quick: bool) -> list[tuple[str, list[str]]]:
    """(title, argv after ``python``) of every benchmark; each writes markdown to the ``--md`` path appended."""
    if quick:
        return [
            ("Training step (tiny check)", ["-m", "benchmarks.train_step", "--preset", "tiny", "--repeats", "1",
                                            "--warmup", "0", "--breakdown-repeats", "1", "--no-memory"]),
            ("Training step, GPU", ["-m", "benchmarks.train_step", "--preset", "gpu"]),
            ("CRF profile (tiny check)", ["-m", "benchmarks.crf_profile", "--shape", "1x3x8", "--windows", "3",
                                          "--iterations", "1", "--repeats", "1"]),
        ]  # fmt: skip
    out = [
        ("Training step, ResNet-18, CPU", ["-m", "benchmarks.train_step", "--preset", "cpu"]),
        ("Training step, ResNet-18, CPU bf16", ["-m", "benchmarks.train_step", "--preset", "cpu-bf16"]),
        ("Training step, ResNet-101, GPU", ["-m", "benchmarks.train_step", "--preset", "gpu"]),
        ("CRF profile, CPU", ["-m", "benchmarks.crf_profile"]),
        ("CRF profile, GPU", ["-m", "benchmarks.crf_profile", "--device", "cuda", "--shape", "4x21x41",
                              "--shape", "8x21x41"]),
    ]  # fmt: skip
    if (ROOT / "benchmarks" / "data_throughput.py").is_file():
        out.append(("Data loading throughput", ["benchmarks/data_throughput.py"]))
    for title, folder, extra in QUALITY_TABLES:
        if (ROOT / "outputs" / folder).is_dir():
            gather = ["-m", "benchmarks.quality", *extra, "--gather-only", "--out", f"outputs/{folder}"]
            out.append((title, gather))
    for title, folder, overrides in HELDOUT_CHECKS:
        if (ROOT / "outputs" / folder).is_dir():
            check = ["--root", "outputs/heldout_root", "--check", "--gather-only", "--seeds", "0", "1", "2"]
            check += ["--out", f"outputs/{folder}", *(f"--override={o}" for o in overrides)]
            out.append((title, ["-m", "benchmarks.heldout_dataset", *check]))
    ckpt = ROOT / "outputs" / DEFAULT_QUALITY / "asdt_duty_1_2" / "seed0" / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        labels = ["-m", "benchmarks.teacher_labels", "--ckpt", str(ckpt.relative_to(ROOT))]
        out.append(("Teacher A's labels per CRF and label grid", labels))
        out.append(
            ("Teacher A's labels per background power", [*labels, "--grids", "2", "--alpha-high", "32", "16", "8"])
        )
    return out


def run_job(title: str, argv: list[str], tmp: Path) -> tuple[str, float, int]:
    """Run one benchmark; returns its markdown (its own, or its stdout when it writes none), seconds, exit code."""
    md = tmp / f"{abs(hash(title))}.md"
    takes_md = argv[0] == "-m"
    cmd = [sys.executable, *argv, *(["--md", str(md)] if takes_md else [])]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    shown = "python " + shlex.join(argv)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return (
            f"### {title}\n\nCommand: `{shown}` **failed** (exit {proc.returncode}):\n\n```\n{tail}\n```\n",
            seconds,
            1,
        )
    if takes_md and md.is_file():
        return md.read_text(), seconds, 0
    return f"### {title}\n\nCommand: `{shown}`\n\n```\n{proc.stdout.strip()}\n```\n", seconds, 0


def header(info_before: dict, info_after: dict, timings: list[tuple[str, float]]) -> str:
    cores = info_before["cores"] or 1
    loads = [info_before["load_average_1_5_15"], info_after["load_average_1_5_15"]]
    loaded = any(load and load[0] > 0.75 * cores for load in loads)
    rows = [
        ["date", info_before["date"]],
        ["CPU", f"{info_before['cpu']}, {cores} cores"],
        ["GPU", info_before["gpu"] or "none"],
        [
            "python / torch / lightning",
            f"{info_before['python']} / {info_before['torch']} / {info_before['lightning']}",
        ],
        ["load average (1, 5, 15 min) before / after", f"{loads[0]} / {loads[1]}"],
        ["regenerate", "`make bench` (= `python -m benchmarks.run_all`)"],
    ]
    note = (
        "**These figures were taken under load** (the machine was shared: load average above the core count "
        "during the run); read the ratios (interleaved, paired per repeat) rather than the absolute times, and "
        "the min-max spread beside each median."
        if loaded
        else "The machine was not heavily loaded during the run."
    )
    took = md_table(["benchmark", "wall seconds"], [[t, f"{s:.0f}"] for t, s in timings])
    return (
        "# Benchmark results\n\nGenerated by `benchmarks/run_all.py`; do not edit by hand.\n\n"
        + md_table(["", ""], rows)
        + f"\n\n{note}\n\n{took}\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the scripts, measures nothing")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = p.parse_args(argv)
    before = machine_info()
    sections, timings, failures = [], [], 0
    env_note = os.environ.get("ASDT_BENCH_NOTE")
    with tempfile.TemporaryDirectory() as tmp:
        for title, job in jobs(args.quick):
            print(f"[bench] {title}: python {shlex.join(job)}", flush=True)
            text, seconds, failed = run_job(title, job, Path(tmp))
            sections.append(text)
            timings.append((title, seconds))
            failures += failed
    after = machine_info()
    body = header(before, after, timings) + ("\n" + env_note + "\n" if env_note else "")
    atomic_write_text(args.out, body + "\n" + "\n".join(sections))
    print(f"[bench] wrote {args.out} ({failures} failed)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
