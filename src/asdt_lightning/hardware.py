"""What the machine can do fast: the ``trainer.precision: auto`` choice."""

from __future__ import annotations

from typing import Any

import torch

from .errors import ASDTUserError


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (Intel AMX or AVX512-BF16): oneDNN's bf16 convolutions
    then run about 3x faster than fp32. Elsewhere bf16 on the CPU is emulated and slower."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting lands on a CUDA GPU here."""
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def resolve_precision(precision: str | int, accelerator: str) -> str | int:
    """``auto`` -> ``bf16-mixed`` where bf16 is native (a bf16-capable GPU, or a CPU with AMX/AVX512-BF16),
    else ``32-true``; any other value is Lightning's and passes through."""
    if precision != "auto":
        return precision
    if uses_cuda(accelerator):
        if not torch.cuda.is_available():
            raise ASDTUserError(f"trainer.accelerator={accelerator} but no GPU is visible; use trainer=cpu")
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "32-true"
    if accelerator in ("auto", "cpu"):
        return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    return "32-true"


def trainer_settings(trainer: dict[str, Any]) -> dict[str, Any]:
    """The ``trainer`` config group as ``lightning.Trainer`` keyword arguments, ``precision: auto`` resolved."""
    precision = resolve_precision(trainer.get("precision", "32-true"), str(trainer.get("accelerator", "auto")))
    return {**trainer, "precision": precision}
