"""Summarise a Hydra multirun folder of ``asdt_lightning.train`` runs: tables and a plot, no W&B needed.

    python -m asdt_lightning.report multirun/2025-01-31/12-00-00
    python -m asdt_lightning.report multirun/... --x pwm.duty --branch fused --out reports/duty

Reads every run's ``metrics.json`` with its ``config_resolved.yaml`` (and ``.hydra/overrides.yaml`` when present),
finds the swept settings (those whose values differ between runs; ``seed`` counts as a replicate, not a setting),
and writes into ``<folder>/report/`` (or ``--out``): ``runs.csv``/``runs.md`` (one row per run),
``summary.csv``/``summary.md`` (mean and standard deviation over seeds per swept value) and
``miou_vs_<x>.png`` (mIoU against the swept value, mean with a +-1 std band and every seed's point).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ASDTUserError
from .io_utils import atomic_write, atomic_write_text
from .metrics import BRANCH_TITLES

BRANCHES = ("cam", "refine", "student", "fused")
NOT_SETTINGS = ("output_dir", "ckpt_path", "seed", "hydra", "tracking")  # differ between runs without being swept


@dataclass
class Run:
    """One finished run: its folder (relative to the multirun folder), settings, seed and per-branch mIoU."""

    name: str
    settings: dict[str, Any]
    seed: Any
    miou: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": value}``; lists become their string form (hashable, comparable)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value) if isinstance(value, list) else value
    return flat


def parse_overrides(lines: Sequence[str]) -> dict[str, Any]:
    """Hydra override strings (``pwm.duty=0.5``, ``backbone=resnet50``, ``+x=1``) -> {key: parsed value}."""
    parsed: dict[str, Any] = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        if not sep:
            continue
        parsed[key.lstrip("+~")] = yaml.safe_load(value) if value else value
    return parsed


def _excluded(key: str) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in NOT_SETTINGS)


def load_run(metrics_path: Path, root: Path) -> Run:
    """A run from its ``metrics.json``; settings from ``.hydra/overrides.yaml``, else the resolved config."""
    run_dir = metrics_path.parent
    try:
        metrics = json.loads(metrics_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ASDTUserError(f"{metrics_path} is not valid JSON ({err}); rerun that run or delete its folder") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("miou"), dict):
        raise ASDTUserError(f"{metrics_path} has no 'miou' entry; is it a metrics.json of asdt_lightning.train?")
    config: dict[str, Any] = {}
    for candidate in (run_dir / "config_resolved.yaml", run_dir / ".hydra" / "config.yaml"):
        if candidate.is_file():
            config = flatten(yaml.safe_load(candidate.read_text()) or {})
            break
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = parse_overrides(yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.is_file() else {}
    settings = {k: v for k, v in (overrides or config).items() if not _excluded(k)}
    seed = config.get("seed", overrides.get("seed"))
    extra = {k: metrics[k] for k in ("global_step", "train_seconds") if k in metrics}
    name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    miou = {b: float(metrics["miou"][b]) for b in BRANCHES if b in metrics["miou"]}
    return Run(name=name, settings=settings, seed=seed, miou=miou, extra=extra)


def collect_runs(folder: str | Path) -> list[Run]:
    """Every finished run under ``folder`` (recursively), in folder order; raises if there is none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ASDTUserError(f"multirun folder not found: {root}")
    paths = sorted(
        (p for p in root.rglob("metrics.json") if not any(part.startswith((".", "wandb")) for part in p.parts[-3:])),
        key=lambda p: [int(s) if s.isdigit() else s for s in p.relative_to(root).parts],
    )
    if not paths:
        raise ASDTUserError(f"no metrics.json under {root}; give a finished asdt_lightning.train multirun folder")
    return [load_run(p, root) for p in paths]


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Settings whose value differs between runs (in the order they first appear); missing counts as a value."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.settings if k not in keys]
    return [k for k in keys if len({repr(r.settings.get(k)) for r in runs}) > 1]


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation; ``None`` for the spread of a single value (not 0)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise(runs: Sequence[Run], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per combination of swept values: ``n`` (seeds), ``seeds`` and ``<branch>_mean``/``<branch>_std``."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(repr(run.settings.get(k)) for k in keys), []).append(run)
    rows = []
    for members in groups.values():
        row: dict[str, Any] = {k: members[0].settings.get(k) for k in keys}
        row["n"] = len(members)
        row["seeds"] = " ".join(str(r.seed) for r in members)
        for b in BRANCHES:
            values = [r.miou[b] for r in members if b in r.miou]
            if values:
                row[f"{b}_mean"], row[f"{b}_std"] = _mean_std(values)
        rows.append(row)
    return rows


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def runs_table(runs: Sequence[Run], keys: Sequence[str]) -> tuple[str, str]:
    """(csv, markdown) of every run: folder, swept values, seed, mIoU per branch (fraction in CSV, % in md)."""
    columns = ["run", *keys, "seed", *(f"miou_{b}" for b in BRANCHES), "global_step", "train_seconds"]
    dicts = [
        {"run": r.name, **{k: r.settings.get(k) for k in keys}, "seed": r.seed, **r.extra}
        | {f"miou_{b}": r.miou.get(b) for b in BRANCHES}
        for r in runs
    ]
    md_rows = [[d["run"], *(d[k] for k in keys), d["seed"], *(_pct(d[f"miou_{b}"]) for b in BRANCHES)] for d in dicts]
    md = _markdown(["run", *keys, "seed", *(BRANCH_TITLES[b] for b in BRANCHES)], md_rows)
    return _csv(dicts, columns), md


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _mean_cell(row: Mapping[str, Any], branch: str) -> str:
    """ "mean ± std" in %, or the mean alone for one seed."""
    std = row[f"{branch}_std"]
    mean = f"{100 * row[f'{branch}_mean']:.2f}"
    return mean if std is None else f"{mean} ± {100 * std:.2f}"


def summary_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[str, str]:
    """(csv, markdown): mean and std over seeds per swept value (fractions in CSV, "mean ± std" % in md)."""
    columns = [*keys, "n", "seeds", *(f"{b}_{s}" for b in BRANCHES for s in ("mean", "std"))]
    md_rows = []
    for row in rows:
        cells = [_mean_cell(row, b) if f"{b}_mean" in row else "-" for b in BRANCHES]
        md_rows.append([*(row[k] for k in keys), row["n"], *cells])
    header = [*keys, "seeds", *(f"{BRANCH_TITLES[b]} mIoU (%)" for b in BRANCHES)]
    return _csv(rows, columns), _markdown(header, md_rows)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def sweep_name(runs: Sequence[Run], folder: str | Path) -> str | None:
    """The sweep config the runs were launched with (``sweep=pwm_duty`` in their overrides, else in the folder's
    ``multirun.yaml``), or None."""
    names = {r.settings.get("sweep") for r in runs}
    if len(names) == 1 and (name := names.pop()):
        return str(name)
    multirun = Path(folder).expanduser() / "multirun.yaml"
    if not multirun.is_file():
        return None
    try:
        config = yaml.safe_load(multirun.read_text()) or {}
        name = config["hydra"]["runtime"]["choices"].get("sweep")
    except (yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    return str(name) if name else None


def plot_title(folder: str | Path, runs: Sequence[Run], keys: Sequence[str], x: str | None, branch: str) -> str:
    """Two lines: the sweep (its config name, the swept settings) and the metric plotted; then the folder.

    E.g. ``sweep pwm_duty: validation mIoU per branch vs pwm.duty`` / ``mean ± std over seeds; multirun 12-00-00``.
    """
    x_key = x or (keys[0] if keys else None)
    others = [k for k in keys if k != x_key]
    metric = f"validation {BRANCH_TITLES[branch]} mIoU" if others else "validation mIoU per branch"
    against = f" vs {x_key}" if x_key else " of all runs (nothing swept)"
    by = f", one line per {', '.join(others)}" if others else ""
    name = sweep_name(runs, folder)
    first = f"{f'sweep {name}: ' if name else ''}{metric}{against}{by}"
    return f"{first}\nmean ± std over seeds; multirun {Path(folder).name}"


def plot(
    runs: Sequence[Run], keys: Sequence[str], x: str | None, branch: str, path: Path, title: str = ""
) -> Path | None:
    """mIoU against the swept value ``x``: one line per branch (or, with other swept settings, one line per
    combination of them for ``branch``), mean over seeds with a +-1 std band, every seed as a dot.
    Returns the written PNG, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    x_key = x or (keys[0] if keys else None)
    others = [k for k in keys if k != x_key]
    x_values = [r.settings.get(x_key) if x_key else "all runs" for r in runs]
    numeric = all(_is_number(v) for v in x_values)
    order = sorted(set(x_values), key=lambda v: v if numeric else str(v)) if numeric else list(dict.fromkeys(x_values))
    position = {v: (v if numeric else i) for i, v in enumerate(order)}
    series: dict[str, tuple[str, list[Run]]] = {}
    if others:
        for r in runs:
            series.setdefault(", ".join(f"{k}={r.settings.get(k)}" for k in others), (branch, []))[1].append(r)
    else:
        series = {BRANCH_TITLES[b]: (b, list(runs)) for b in BRANCHES}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, (b, members) in series.items():
        by_x: dict[Any, list[float]] = {}
        for r in members:
            if b in r.miou:
                by_x.setdefault(r.settings.get(x_key) if x_key else "all runs", []).append(100 * r.miou[b])
        xs = [v for v in order if v in by_x]
        if not xs:
            continue
        stats = [_mean_std(by_x[v]) for v in xs]
        px = [position[v] for v in xs]
        means = [m for m, _ in stats]
        line = ax.plot(px, means, marker="o", label=label)[0]
        lo = [m - (s or 0.0) for m, s in stats]
        hi = [m + (s or 0.0) for m, s in stats]
        ax.fill_between(px, lo, hi, alpha=0.15, color=line.get_color())
        for v in xs:
            ax.scatter([position[v]] * len(by_x[v]), by_x[v], s=10, alpha=0.5, color=line.get_color())
    if not numeric:
        ax.set_xticks(range(len(order)), [str(v) for v in order])
    ax.set_xlabel(x_key or "")
    ax.set_ylabel("validation mIoU (%)" + (f", {BRANCH_TITLES[branch]}" if others else ""))
    ax.set_title(title or "mIoU (mean ± std over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def make_report(
    folder: str | Path, out: str | Path | None = None, x: str | None = None, branch: str = "fused"
) -> dict[str, Any]:
    """Write the tables and the plot of a multirun folder; returns the paths, swept keys and summary rows."""
    if branch not in BRANCHES:
        raise ASDTUserError(f"--branch must be one of {', '.join(BRANCHES)}, got {branch!r}")
    runs = collect_runs(folder)
    keys = swept_keys(runs)
    if x is not None and x not in keys:
        raise ASDTUserError(f"--x {x} is not a swept setting of these runs; swept: {', '.join(keys) or 'none'}")
    if x is not None:
        keys = [x, *(k for k in keys if k != x)]
    out_dir = Path(out) if out is not None else Path(folder) / "report"
    rows = summarise(runs, keys)
    runs_csv, runs_md = runs_table(runs, keys)
    summary_csv, summary_md = summary_table(rows, keys)
    written = {
        "runs_csv": atomic_write_text(out_dir / "runs.csv", runs_csv),
        "runs_md": atomic_write_text(out_dir / "runs.md", f"# Runs of {folder}\n\n{runs_md}\n"),
        "summary_csv": atomic_write_text(out_dir / "summary.csv", summary_csv),
        "summary_md": atomic_write_text(
            out_dir / "summary.md", f"# Validation mIoU of {folder} (mean ± std over seeds)\n\n{summary_md}\n"
        ),
    }
    x_key = keys[0] if keys else None
    title = plot_title(folder, runs, keys, x_key, branch)
    png = plot(runs, keys, x_key, branch, out_dir / f"miou_vs_{x_key or 'runs'}.png", title=title)
    if png is not None:
        written["plot"] = png
    return {"paths": written, "swept": keys, "summary": rows, "runs": runs, "summary_md": summary_md}


def plain_text(rst: str) -> str:
    """reStructuredText inline literals (double backticks) as plain text, for terminal help."""
    return rst.replace("``", "")


def main(argv: Sequence[str] | None = None) -> int:
    description = plain_text(__doc__.split("\n\n")[0])
    parser = argparse.ArgumentParser(prog="python -m asdt_lightning.report", description=description)
    parser.add_argument("folder", help="a multirun folder of asdt_lightning.train (e.g. multirun/<date>/<time>)")
    parser.add_argument("--out", help="output folder (default: <folder>/report)")
    parser.add_argument("--x", help="the swept setting on the plot's x axis (default: the first swept one)")
    parser.add_argument("--branch", default="fused", help="branch plotted when several settings were swept")
    args = parser.parse_args(argv)
    try:
        result = make_report(args.folder, args.out, args.x, args.branch)
    except ASDTUserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(result['runs'])} runs; swept: {', '.join(result['swept']) or 'nothing'}\n")
    print(result["summary_md"])
    print()
    for path in result["paths"].values():
        print(f"wrote {path}")
    if "plot" not in result["paths"]:
        print('no plot: matplotlib is not installed (pip install -e ".[report]")', file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
