"""Convert PSA's MXNet ImageNet ResNet-38 into a torch state dict for ``backbone=resnet38 backbone.weights=...``.

``python -m asdt_lightning.convert_weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params res38_imagenet.pth``

The file (Wu et al.'s ``ilsvrc-cls_rna-a1_cls1000``, as distributed by PSA) is read with numpy alone
(``models.backbones.mxnet_params``, no mxnet needed). Its names follow MXNet's ResNet scheme, which maps onto the
``resnet38`` backbone's keys as:

- ``arg:conv1a_weight`` -> ``conv1a.weight``
- ``arg:res<S>a_<branch>_weight`` -> ``b<S>.conv_<branch>.weight``; ``res<S>b<N>`` -> ``b<S>_<N>``
  (``<branch>``: ``branch1`` the shortcut, ``branch2a``, ``branch2b1``, ``branch2b2``)
- ``arg:bn<S>a_<branch>_gamma`` / ``_beta`` -> ``b<S>.bn_<branch>.weight`` / ``.bias``, and the running
  statistics ``aux:..._moving_mean`` / ``_moving_var`` -> ``.running_mean`` / ``.running_var``
- ``bn7_*`` -> ``bn7.*``, the BatchNorm after the last block
- the ImageNet classifier (``linear1000_*``, ``fc*_*``) is dropped.

Every backbone tensor must come from the file with its shape; the result is written atomically and then loaded
back into a freshly built ``resnet38`` through the strict loader of ``backbone.weights`` as the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .errors import ASDTUserError
from .io_utils import atomic_write, is_torch_file
from .models.backbones import Backbone, build_backbone, load_backbone_weights
from .models.backbones.mxnet_params import load_params

_BN_FIELDS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
_AUX_FIELDS = frozenset({"moving_mean", "moving_var"})  # MXNet keeps BatchNorm's running statistics as aux states
_FIELD = r"(?P<field>weight|bias|gamma|beta|moving_mean|moving_var)"
_BLOCK = re.compile(rf"(?P<kind>res|bn)(?P<stage>\d+)(?:a|b(?P<index>\d+))_(?P<branch>branch[0-9a-z]+)_{_FIELD}")
_STEM = re.compile(rf"(?P<layer>conv1a)_{_FIELD}")
_TOP_BN = re.compile(rf"(?P<layer>bn\d+)_{_FIELD}")
_CLASSIFIER = re.compile(r"(?:linear|fc)\d*_(?:weight|bias)")


class ConversionReport(NamedTuple):
    """What :func:`convert` wrote."""

    out: Path
    tensors: int  # tensors written (every backbone key)
    parameters: int  # values in learnable tensors (conv weights, BatchNorm weights and biases)
    statistics: int  # values in BatchNorm running means and variances
    dropped: list[str]  # the MXNet names left out: the ImageNet classifier

    def line(self, src: str | Path) -> str:
        """The command line's one-line summary."""
        dropped = f"; dropped {', '.join(self.dropped)}" if self.dropped else ""
        return (
            f"converted {self.tensors} tensors ({self.parameters:,} parameters + {self.statistics:,} BatchNorm "
            f"statistics) from {src} to {self.out}{dropped}; checked: it loads into resnet38 as backbone.weights"
        )


def psa_key(name: str) -> str | None:
    """The ``resnet38`` key of an MXNet parameter name of PSA's ImageNet ResNet-38, None for the ImageNet
    classifier; ValueError (saying why) for a name outside the scheme."""
    prefix, _, bare = name.rpartition(":")
    if prefix not in ("", "arg", "aux"):
        raise ValueError(f"{name}: unknown prefix {prefix}:")
    if _CLASSIFIER.fullmatch(bare):
        return None
    if match := _BLOCK.fullmatch(bare):
        block = f"b{match['stage']}" + (f"_{match['index']}" if match["index"] is not None else "")
        layer = f"{block}.{'conv' if match['kind'] == 'res' else 'bn'}_{match['branch']}"
        is_bn = match["kind"] == "bn"
    elif match := _STEM.fullmatch(bare) or _TOP_BN.fullmatch(bare):
        layer = match["layer"]
        is_bn = layer.startswith("bn")
    else:
        raise ValueError(f"{name}: not a ResNet-38 parameter name")
    field = match["field"]
    if is_bn != (field in _BN_FIELDS):
        raise ValueError(f"{name}: a {'BatchNorm' if is_bn else 'convolution'} has no {field}")
    if prefix and (prefix == "aux") != (field in _AUX_FIELDS):
        raise ValueError(f"{name}: {field} belongs under {'aux' if field in _AUX_FIELDS else 'arg'}:")
    return f"{layer}.{_BN_FIELDS.get(field, field)}"


def plan_conversion(
    params: Mapping[str, Any], target: Mapping[str, torch.Tensor], what: str = "resnet38"
) -> tuple[dict[str, str], list[str]]:
    """``{MXNet name: target key}`` for ``params`` (arrays, or anything with ``shape`` and ``dtype``; None for
    MXNet's "none" array) onto ``target`` (a state dict), and the dropped names; every mismatch is reported in one
    ASDTUserError before anything is converted."""
    own = {k: v for k, v in target.items() if not k.endswith("num_batches_tracked")}
    plan: dict[str, str] = {}
    named: dict[str, str] = {}  # target key -> the first MXNet name that maps onto it
    dropped, unmapped, empty, not_float, mis_shaped = [], [], [], [], []
    for name, array in params.items():
        try:
            key = psa_key(name)
        except ValueError as why:
            unmapped.append(str(why))
            continue
        if key is None:
            dropped.append(name)
            continue
        if key not in own:
            unmapped.append(f"{name}: {key} is not a {what} key")
            continue
        if key in named:
            unmapped.append(f"{name}: {key} again (also {named[key]})")
            continue
        named[key] = name
        if array is None:
            empty.append(name)
        elif not np.issubdtype(np.dtype(array.dtype), np.floating):
            not_float.append(f"{name} ({np.dtype(array.dtype)})")
        elif tuple(array.shape) != tuple(own[key].shape):
            mis_shaped.append(f"{name} {tuple(array.shape)} vs {key} {tuple(own[key].shape)}")
        else:
            plan[name] = key
    missing = [k for k in own if k not in named]
    problems = []
    for label, names in (
        (f"names that do not map onto {what}", unmapped),
        (f"{what} keys missing", missing),
        ("wrong shape", mis_shaped),
        ("not floating point", not_float),
        ("empty arrays", empty),
    ):
        if names:
            problems.append(f"{len(names)} {label}, e.g. {names[:3]}")
    if problems:
        raise ASDTUserError(f"{len(plan)} of {len(own)} {what} keys matched; {'; '.join(problems)}")
    return plan, dropped


def _build_resnet38() -> Backbone:
    """The backbone the converted file is for (the tests swap in a small one)."""
    return build_backbone("resnet38", output_stride=8)


def convert(src: str | Path, out: str | Path, build: Callable[[], Backbone] | None = None) -> ConversionReport:
    """Convert the MXNet file ``src`` into the torch state dict ``out`` for the backbone ``build()`` makes (default:
    a fresh ``resnet38``), then check that ``out`` loads into it through ``load_backbone_weights``."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.is_file():
        raise ASDTUserError(f"MXNet params file not found: {src}")
    if out.exists() and (out.is_dir() or out.resolve() == src.resolve()):
        raise ASDTUserError(f"output {out} is {'a folder' if out.is_dir() else 'the input file'}; name a new file")
    if is_torch_file(src):
        raise ASDTUserError(f"{src} is a PyTorch file, not MXNet's; pass it as backbone.weights={src} directly")
    params = load_params(src)
    backbone = (build or _build_resnet38)()
    own = backbone.state_dict()
    plan, dropped = plan_conversion(params, own, backbone.name)
    state = {key: torch.from_numpy(params[name]).to(own[key].dtype).contiguous() for name, key in plan.items()}
    state = {key: state[key] for key in own if key in state}  # the backbone's order
    del params
    atomic_write(out, lambda f: torch.save(state, f))
    load_backbone_weights(backbone, out)  # the check: the strict loader of backbone.weights, on a fresh backbone
    loaded = backbone.state_dict()
    differing = [k for k, v in state.items() if not torch.equal(loaded[k], v)]
    if differing:  # pragma: no cover - would mean torch.save / load lost values
        raise ASDTUserError(f"{out} reloads with other values, e.g. {differing[:3]}")
    learnable = {name for name, _ in backbone.named_parameters()}
    parameters = sum(v.numel() for k, v in state.items() if k in learnable)
    statistics = sum(v.numel() for k, v in state.items() if k not in learnable)
    return ConversionReport(out, len(state), parameters, statistics, dropped)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: convert, print one line; an error is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(
        prog="python -m asdt_lightning.convert_weights",
        description=(
            "Convert PSA's MXNet ImageNet ResNet-38 (ilsvrc-cls_rna-a1_cls1000_ep-0001.params) into a PyTorch "
            "state dict for backbone=resnet38 backbone.weights=OUT.pth (no mxnet needed). The ImageNet "
            "classifier is dropped; the result is checked by loading it into a fresh resnet38."
        ),
    )
    parser.add_argument("src", metavar="SRC.params", help="the MXNet .params file")
    parser.add_argument("out", metavar="OUT.pth", help="the PyTorch state dict to write (replaced atomically)")
    args = parser.parse_args(argv)
    try:
        report = convert(args.src, args.out)
    except (ASDTUserError, OSError) as err:  # OSError: the input unreadable, or the output not writable
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(report.line(args.src))
    return 0


if __name__ == "__main__":
    sys.exit(main())
