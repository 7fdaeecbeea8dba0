"""Lightning callbacks of ASDT."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from ..method.pwm import pwm_signal, validate_pwm


class PWMCallback(L.Callback):
    """Sets the student's teacher from the PWM signal of the global step, before every training step.

    The signal is a pure function of ``trainer.global_step``, which a checkpoint restores, so a run resumed
    mid-period continues the wave exactly where it was. Logs ``pwm/signal`` (1 = teacher B, the refinement
    branch; 0 = teacher A, the CAM branch).
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

    def state_dict(self) -> dict[str, Any]:
        return {"period": self.period, "duty": self.duty, "phase": self.phase, "warmup": self.warmup}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict != self.state_dict():
            rank_zero_warn(f"resuming with PWM setting {self.state_dict()} instead of the checkpoint's {state_dict}")
