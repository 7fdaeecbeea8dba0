"""Both stages' optimisers: fused kernels, per-group settings, and the same update as the loop implementation."""

from __future__ import annotations

import pytest
import torch

from asdt_lightning.lit.optim import build_optimizer


def _params(seed: int) -> list[torch.nn.Parameter]:
    """Two parameters with gradients, the same values for the same seed."""
    values = torch.sin(torch.arange(30, dtype=torch.float32) * (seed + 1.3))
    params = [torch.nn.Parameter(values[:12].view(4, 3).clone()), torch.nn.Parameter(values[12:15].clone())]
    params[0].grad, params[1].grad = values[15:27].view(4, 3).clone(), values[27:30].clone()
    return params


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimizer_matches_the_reference_update(name):
    fused_params, loop_params = _params(0), _params(0)
    groups = [{"params": fused_params[:1], "weight_decay": 0.1}, {"params": fused_params[1:], "lr": 0.5}]
    optimizer = build_optimizer(name, groups, lr=0.05, momentum=0.9, weight_decay=0.0)
    assert optimizer.defaults["fused"] is True
    reference_groups = [{"params": loop_params[:1], "weight_decay": 0.1}, {"params": loop_params[1:], "lr": 0.5}]
    if name == "sgd":
        reference = torch.optim.SGD(reference_groups, lr=0.05, momentum=0.9, weight_decay=0.0, foreach=False)
    else:
        reference = torch.optim.AdamW(reference_groups, lr=0.05, weight_decay=0.0, foreach=False)
    for _ in range(3):
        optimizer.step()
        reference.step()
    for a, b in zip(fused_params, loop_params, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build_optimizer("rmsprop", [{"params": _params(0)}], lr=0.1)


def test_fused_kernels_only_without_gradient_clipping():
    import lightning as L

    from asdt_lightning.lit.optim import fused_allowed

    def trainer(**kwargs):
        return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, **kwargs)

    assert fused_allowed(trainer())
    assert not fused_allowed(trainer(gradient_clip_val=1.0))
    optimizer = build_optimizer("adamw", [{"params": _params(0)}], lr=0.1, allow_fused=False)
    assert not optimizer.defaults["fused"]
