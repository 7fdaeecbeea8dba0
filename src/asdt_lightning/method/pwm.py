"""The pulse-width-modulation (PWM) signal that picks the student's teacher at each step.

``s(t) = 1`` (distil from teacher B, the refinement branch) when ``t >= warmup`` and
``(t + phase) mod period < round(duty * period)``; otherwise ``s(t) = 0`` (teacher A, the CAM branch).
Rounding the on-time to whole steps makes the fraction of B-steps over any whole period exactly
``round(duty * period) / period`` (= ``duty`` whenever ``duty * period`` is an integer), free of float error.
"""

from __future__ import annotations

import torch

from ..errors import ASDTUserError

TEACHER_A = 0  # CAM teacher: discriminative parts
TEACHER_B = 1  # refinement teacher: full object structure


def validate_pwm(period: int, duty: float, phase: int = 0, warmup: int = 0) -> None:
    """Raise a one-line ``ASDTUserError`` (a ValueError) naming the argument of a PWM setting that makes no sense."""
    if isinstance(period, bool) or not isinstance(period, int) or period <= 0:
        raise ASDTUserError(f"period must be a positive integer number of steps, got {period!r}")
    if not 0.0 <= float(duty) <= 1.0:
        raise ASDTUserError(f"duty must lie in [0, 1] (0 = CAM teacher only, 1 = refinement only), got {duty}")
    if isinstance(phase, bool) or not isinstance(phase, int):
        raise ASDTUserError(f"phase must be an integer number of steps, got {phase!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ASDTUserError(f"warmup must be a non-negative integer number of steps, got {warmup!r}")


def on_steps(period: int, duty: float) -> int:
    """Number of steps per period spent on teacher B."""
    return round(duty * period)


def pwm_signal(step: int | torch.Tensor, period: int, duty: float, phase: int = 0, warmup: int = 0):
    """PWM selection signal for a global step (int -> int) or a tensor of steps (LongTensor -> LongTensor).

    Returns ``TEACHER_B`` (1) where the student distils from the refinement teacher, else ``TEACHER_A`` (0).
    """
    active = ((step + phase) % period < on_steps(period, duty)) & (step >= warmup)
    if isinstance(active, torch.Tensor):
        return active.long()
    return int(active)
