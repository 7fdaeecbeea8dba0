"""The interface every backbone implements, and the output-stride check its constructors share."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ASDTUserError


class Backbone(nn.Module):
    """Base class: ``forward`` maps (B, 3, H, W) to (B, out_channels, ceil(H / os), ceil(W / os)).

    ``forward_levels`` also returns the stride-4 features, (B, low_level_channels, ceil(H / 4), ceil(W / 4)),
    for heads that predict at stride 4.
    """

    name: str = "backbone"
    out_channels: int
    low_level_channels: int
    output_stride: int

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """(B, 3, H, W) -> (stride-4 features, final features)."""
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, with_low_level: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The final features, or with ``with_low_level`` the pair of ``forward_levels`` (module hooks see both)."""
        levels = self.forward_levels(x)
        return levels if with_low_level else levels[1]

    def stem_modules(self) -> list[nn.Module]:
        """The first layers, frozen by ``frozen_stem=True``."""
        return []

    def import_key(self, key: str) -> str | None:
        """A weights file's key (wrapper prefixes stripped) as this backbone's, or None for a part it lacks."""
        return key


def check_output_stride(name: str, output_stride: int, supported: tuple[int, ...]) -> None:
    """Refuse an output stride that backbone ``name`` cannot produce."""
    if output_stride not in supported:
        choices = ", ".join(map(str, supported))
        raise ASDTUserError(f"{name} does not support output_stride={output_stride}; use one of: {choices}")
