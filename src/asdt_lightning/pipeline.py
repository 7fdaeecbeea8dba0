"""The whole WSSS pipeline in one command (Hydra entry point).

    python -m asdt_lightning.pipeline                 # synthetic default, CPU, about 10 minutes on 2 cores
    make pipeline

Stages, each in its own folder of the run: ``asdt/`` (train ASDT), ``eval_pseudo/`` (every branch as pseudo masks
on ``dataset.pseudo_mask_list``, without and with CRF: VOC ``train``, 1,464 images, as the literature scores them;
the training list elsewhere), ``pseudo_masks/`` (the export, of the whole training list), ``eval_export/`` (the
exported PNGs against the same list's masks), ``segment/`` (the second stage), ``eval_val/`` (the second stage
on the validation masks). ``pipeline.md`` / ``pipeline.json`` hold the table: pseudo-mask mIoU on train,
second-stage mIoU on val. A stage whose result file exists is skipped, so a re-run with the same ``output_dir``
resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import hydra
from hydra import compose
from omegaconf import DictConfig

from .cli import run_preflight
from .config import plain_config
from .errors import run_or_exit
from .evaluate import check_figure_backend, run_evaluate
from .io_utils import atomic_write_text
from .method.crf import pydensecrf_available
from .method.dense_crf import check_crf
from .metrics import BRANCH_TITLES
from .pseudo_labels import run_export
from .segment import segment
from .train import train


def resolve_crf(crf: str) -> str:
    """``auto``: the exact dense CRF when pydensecrf2 is installed, else the local PyTorch CRF."""
    if crf != "auto":
        return crf
    return "dense" if pydensecrf_available() else "local"


def _stage(name: str, done: Path, timings: dict[str, float], work: Callable[[], Any]) -> None:
    """Run ``work`` unless ``done`` exists; record its wall time."""
    if done.is_file():
        print(f"[pipeline] {name}: done already ({done})")
        return
    print(f"[pipeline] {name} ...")
    start = time.perf_counter()
    work()
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"[pipeline] {name}: {timings[name]:.0f} s")


def images_used(result: dict[str, Any]) -> str:
    """How many images of the list an evaluate ``results.json`` scored: ``all N``, or ``first N of M`` when its
    ``limit`` cut the list (``first N`` when the list's length is not recorded)."""
    n = int(result["images"])
    listed = result.get("split_images")
    if listed is not None:
        return f"all {n}" if n >= int(listed) else f"first {n} of {listed}"
    limit = result.get("limit")
    return f"first {n}" if limit is not None and int(limit) <= n else f"all {n}"


def pipeline_table(pseudo: dict[str, Any], export: dict[str, Any], stage2: dict[str, Any], crf: str) -> str:
    """Markdown: pseudo-mask mIoU on the training list per branch (without / with CRF), the exported masks, and
    the second stage on the validation list."""
    crf_col = f"+ {crf} CRF" if crf != "none" else "+ CRF"
    lines = [
        f"| what | split (images) | mIoU (%) | mIoU {crf_col} (%) |",
        "|---|---|---:|---:|",
    ]
    for branch, per_crf in pseudo["results"].items():
        plain = f"{100 * per_crf['none']['miou']:.2f}" if "none" in per_crf else "-"
        refined = f"{100 * per_crf[crf]['miou']:.2f}" if crf in per_crf and crf != "none" else "-"
        title = BRANCH_TITLES.get(branch, branch)
        if branch == "cam":
            title += f" @ bg {pseudo['cam_threshold']}"
        lines.append(f"| pseudo masks: {title} | {pseudo['split']} ({images_used(pseudo)}) | {plain} | {refined} |")
    scores = export["results"]["folder"]["none"]
    lines.append(
        f"| exported pseudo masks (PNG) | {export['split']} ({images_used(export)}) | {100 * scores['miou']:.2f} | |"
    )
    seg = stage2["results"]["segmenter"]["none"]
    lines.append(
        f"| **second stage** ({stage2.get('arch', 'segmenter')}) | {stage2['split']} ({images_used(stage2)}) | "
        f"**{100 * seg['miou']:.2f}** | |"
    )
    return "\n".join(lines)


class Stage(NamedTuple):
    """One stage: its title, the file whose presence means it is done, and the work."""

    name: str
    done: Path
    run: Callable[[], Any]


def pipeline_stages(cfg: DictConfig, out: Path, crf: str) -> list[Stage]:
    """The six stages in order; each composes its entry point's config from the stage overrides when it runs."""
    common, extra = list(cfg.common), list(cfg.evaluate)
    crfs = "[none]" if crf == "none" else f"[none,{crf}]"
    asdt, masks, seg = out / "asdt", out / "pseudo_masks", out / "segment"
    ckpt = asdt / "checkpoints" / "last.ckpt"
    limit = "null" if cfg.pseudo_eval_limit is None else int(cfg.pseudo_eval_limit)

    def evaluate(folder: str, *overrides: str | Callable[[], str]) -> Stage:
        def run() -> Any:
            given = [o() if callable(o) else o for o in overrides]
            return run_evaluate(
                plain_config(compose("evaluate", overrides=[*common, *given, f"out={out / folder}", *extra]))
            )

        return Stage(TITLES[folder], out / folder / "results.json", run)

    def cam_threshold() -> str:  # chosen on the validation set by train
        return f"cam_threshold={json.loads((asdt / 'metrics.json').read_text())['cam_threshold']}"

    def export() -> None:
        config = compose(
            "pseudo_labels", overrides=[*common, f"ckpt={ckpt}", f"crf={crf}", f"out={masks}", *cfg.pseudo_labels]
        )
        atomic_write_text(masks / "summary.json", json.dumps(run_export(plain_config(config)), indent=2))

    train_overrides = [*common, *cfg.train, f"output_dir={asdt}"]
    segment_overrides = [*common, f"pseudo_masks={masks}", f"output_dir={seg}", *cfg.segment]
    return [
        Stage("train ASDT", asdt / "metrics.json", lambda: train(compose("train", overrides=train_overrides))),
        evaluate(
            "eval_pseudo",
            f"ckpt={ckpt}",
            "split=${dataset.pseudo_mask_list}",
            f"crfs={crfs}",
            f"limit={limit}",
            cam_threshold,
        ),
        Stage("export pseudo masks", masks / "summary.json", export),
        evaluate("eval_export", f"pred_dir={masks}", "split=${dataset.pseudo_mask_list}"),
        Stage(
            "train second stage", seg / "metrics.json", lambda: segment(compose("segment", overrides=segment_overrides))
        ),
        evaluate("eval_val", f"ckpt={seg / 'checkpoints' / 'last.ckpt'}", "crfs=[none]"),
    ]


TITLES = {
    "eval_pseudo": "score branches as pseudo masks",
    "eval_export": "score exported masks",
    "eval_val": "score second stage on val",
}


def pipeline_summary(out: Path, crf: str, timings: dict[str, float], wall_seconds: float) -> dict[str, Any]:
    """``pipeline.json``'s content, from the stages' result files."""
    pseudo, export, stage2 = (json.loads((out / d / "results.json").read_text()) for d in TITLES)
    stage2["arch"] = json.loads((out / "segment" / "metrics.json").read_text()).get("arch")
    return {
        "crf": crf,
        "table": pipeline_table(pseudo, export, stage2, crf),
        "pseudo_masks_train": {b: {c: s["miou"] for c, s in v.items()} for b, v in pseudo["results"].items()},
        "cam_threshold": pseudo["cam_threshold"],
        "exported_masks_train": export["results"]["folder"]["none"]["miou"],
        "second_stage_val": stage2["results"]["segmenter"]["none"]["miou"],
        "asdt_val": json.loads((out / "asdt" / "metrics.json").read_text())["miou"],
        "stage_seconds": timings,
        "wall_seconds": wall_seconds,
    }


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """All stages; needs an initialised Hydra (``hydra.main`` or ``initialize_config_module``) to compose configs."""
    out = Path(cfg.output_dir)
    crf = resolve_crf(cfg.crf)
    start = time.perf_counter()
    check_crf(crf)  # cheap checks of the later stages before the long first one
    if not any(o.replace(" ", "") == "figure=false" for o in cfg.evaluate):
        check_figure_backend()
    timings: dict[str, float] = {}
    for stage in pipeline_stages(cfg, out, crf):
        _stage(stage.name, stage.done, timings, stage.run)
    summary = pipeline_summary(out, crf, timings, round(time.perf_counter() - start, 1))
    atomic_write_text(out / "pipeline.json", json.dumps(summary, indent=2) + "\n")
    timing_lines = "\n".join(f"| {k} | {v:.0f} |" for k, v in timings.items())
    atomic_write_text(
        out / "pipeline.md",
        f"# WSSS pipeline ({out})\n\n{summary['table']}\n\n| stage | wall (s) |\n|---|---:|\n{timing_lines}\n"
        f"| **total** | **{summary['wall_seconds']:.0f}** |\n",
    )
    print(f"\n{summary['table']}\n\n(total {summary['wall_seconds']:.0f} s; {out / 'pipeline.md'})")
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="pipeline")
def hydra_main(cfg: DictConfig) -> float:
    summary = run_or_exit(run_pipeline, cfg)
    return summary["second_stage_val"]


def main() -> None:
    """The command line: composition errors (bad option, unknown key) as one line before Hydra starts."""
    run_preflight("pipeline")
    hydra_main()


if __name__ == "__main__":
    main()
