"""trainer.precision: auto picks bf16 only where the hardware does it natively."""

from __future__ import annotations

import pytest
import torch

from asdt_lightning import hardware
from asdt_lightning.errors import ASDTUserError


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_auto_on_the_cpu_follows_native_bf16(monkeypatch, native, expected, accelerator):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_precision("auto", accelerator) == expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_on_a_gpu_follows_its_bf16_support(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)
    assert hardware.resolve_precision("auto", "auto") == expected
    assert hardware.resolve_precision("auto", "gpu") == expected


def test_explicit_precision_passes_through_and_a_missing_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_precision("32-true", "gpu") == "32-true"
    assert hardware.trainer_settings({"precision": "16-mixed", "max_steps": 3}) == {
        "precision": "16-mixed",
        "max_steps": 3,
    }
    with pytest.raises(ASDTUserError, match="no GPU is visible"):
        hardware.resolve_precision("auto", "gpu")
