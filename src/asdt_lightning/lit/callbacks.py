"""Lightning callbacks of ASDT."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

from ..io_utils import atomic_write_text
from ..method.pwm import pwm_signal, validate_pwm
from ..metrics import per_class_table

NO_TEACHER = -1  # ``pwm/active_teacher`` while the classifier warms up alone (no distillation at all)


class FinalStepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the final step.

    Lightning writes ``last.ckpt`` at the end of training only when nothing was saved during the run; after a
    validation part way, the steps after it would be missing from ``last.ckpt``, and a run resumed from it would
    silently redo them.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)


class PWMCallback(L.Callback):
    """Sets the student's teacher from the PWM signal of the global step, before every training step.

    The signal is a pure function of ``trainer.global_step``, which a checkpoint restores, so a run resumed
    mid-period continues the wave exactly where it was. Logs ``pwm/signal`` (1 = teacher B, the refinement
    branch; 0 = teacher A, the CAM branch) and ``pwm/active_teacher``: the teacher the student really learns from
    at that step, which is the signal except during the module's classifier warm-up (``-1``: no teacher yet).
    """

    def __init__(self, period: int, duty: float, phase: int = 0, warmup: int = 0) -> None:
        validate_pwm(period, duty, phase, warmup)
        self.period, self.duty, self.phase, self.warmup = period, float(duty), phase, warmup

    def signal(self, step: int) -> int:
        return pwm_signal(step, self.period, self.duty, self.phase, self.warmup)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        step = trainer.global_step
        source = self.signal(step)
        pl_module.set_teacher(step, source)
        pl_module.log("pwm/signal", float(source), on_step=True, on_epoch=False, batch_size=1)
        warmup = getattr(getattr(pl_module, "loss_weights", None), "classifier_warmup", 0)
        active = NO_TEACHER if step < warmup else source
        pl_module.log("pwm/active_teacher", float(active), on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"period": self.period, "duty": self.duty, "phase": self.phase, "warmup": self.warmup}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict != self.state_dict():
            rank_zero_warn(f"resuming with PWM setting {self.state_dict()} instead of the checkpoint's {state_dict}")


class PerClassIoULogger(L.Callback):
    """After every validation (not the sanity check), logs the module's per-class IoU of every branch as a table.

    Reads ``pl_module.val_results["per_class_iou"]`` ({branch: {class: IoU}}). W&B gets a ``val/per_class_iou``
    table, TensorBoard a markdown text, a CSV logger a ``per_class_iou.csv`` (one row per validation step and
    class) in its log folder; ``<out_dir>/per_class_iou.md`` always holds the latest table. Global rank 0 only.
    """

    def __init__(self, out_dir: str | Path | None = None) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.history: list[dict[str, Any]] = []  # rows: step, class, one IoU per branch

    @staticmethod
    def rows(per_class: dict[str, dict[str, float]]) -> tuple[list[str], list[list[Any]]]:
        """Columns ``class, <branches...>`` and one row per class."""
        branches = list(per_class)
        classes = list(next(iter(per_class.values()))) if per_class else []
        return ["class", *branches], [[c, *(per_class[b][c] for b in branches)] for c in classes]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        per_class = getattr(pl_module, "val_results", {}).get("per_class_iou")
        if not per_class or trainer.sanity_checking or not trainer.is_global_zero:
            return
        step = trainer.global_step
        columns, rows = self.rows(per_class)
        self.history = [r for r in self.history if r["step"] != step]  # a re-validation at the same step replaces
        self.history += [{"step": step, **dict(zip(columns, row, strict=True))} for row in rows]
        branches = columns[1:]
        table_md = per_class_table({b: [r[i + 1] for r in rows] for i, b in enumerate(branches)}, [r[0] for r in rows])
        if self.out_dir is not None:
            atomic_write_text(self.out_dir / "per_class_iou.md", f"per-class IoU (%) at step {step}\n\n{table_md}\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table("val/per_class_iou", columns=columns, data=rows, step=step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("val/per_class_iou", table_md, step)
            elif isinstance(logger, CSVLogger):
                buffer = io.StringIO()
                writer = csv.DictWriter(buffer, fieldnames=["step", *columns], lineterminator="\n")
                writer.writeheader()
                writer.writerows(self.history)
                atomic_write_text(Path(logger.log_dir) / "per_class_iou.csv", buffer.getvalue())
