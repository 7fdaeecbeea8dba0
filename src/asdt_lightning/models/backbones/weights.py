"""Loading a local weights file into a backbone: key normalisation and a strict, all-or-nothing check."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ...errors import ASDTUserError
from ...io_utils import unreadable_torch_file
from .base import Backbone

_KEY_PREFIXES = ("module.", "backbone.", "model.", "encoder.")
_CLASSIFIER_PREFIXES = ("fc.", "fc8.", "classifier.", "aux_classifier.")
CAM_CLASSIFIER_PREFIX = "fc8."  # PSA's res38_cls.pth: the VOC CAM classifier, (20, 4096, 1, 1), no bias


def check_weights_file(path: str | Path) -> Path:
    """The expanded path of an existing weights file; a missing one raises, named as given."""
    found = Path(path).expanduser()
    if not found.is_file():
        raise ASDTUserError(f"backbone.weights file not found: {path}")
    return found


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a local state dict (raw, or under ``state_dict`` / ``model``) into ``backbone``, strictly.

    Prefixes such as ``module.`` are stripped and classifier keys (``fc.*``, ``fc8.*``) dropped (a network with a
    CAM head takes ``fc8`` with :func:`read_cam_classifier`); any other difference (missing, unexpected or
    mis-shaped keys) raises ASDTUserError before anything is loaded.
    """
    path = check_weights_file(path)
    load_checked(backbone, read_state_dict(path), f"weights file {path}")


def read_state_dict(path: str | Path, mmap: bool = False) -> Mapping[str, torch.Tensor]:
    """The state dict of a local torch file (raw, or under ``state_dict`` / ``model``), tensors only.

    ``mmap`` maps the tensors' storage instead of reading it (a zip-format file; a legacy one is read whole), for
    callers that want a few tensors of a large file.
    """
    path = check_weights_file(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as error:
            if not (mmap and "mmap" in str(error)):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format: no mmap
    except Exception as error:  # not a torch file, or a pickle with arbitrary objects
        raise ASDTUserError(f"cannot use backbone.weights: {unreadable_torch_file(path, error)}") from None
    for nested in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(nested), Mapping):
            state = state[nested]
    if not isinstance(state, Mapping):
        raise ASDTUserError(
            f"weights file {path} holds a {type(state).__name__}, not a state dict; "
            f"save one with torch.save(model.state_dict(), path)"
        )
    return state


def read_cam_classifier(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``fc8.*`` tensors of a weights file (wrapper prefixes stripped): the CAM classifier of PSA-style
    ``res38_cls.pth`` files, which ``load_backbone_weights`` leaves out. Empty for a file without one."""
    state = read_state_dict(path, mmap=True)
    found = {}
    for key, value in state.items():
        key = strip_prefixes(str(key))
        if key.startswith(CAM_CLASSIFIER_PREFIX):
            found[key] = value.clone() if torch.is_tensor(value) else value  # off the mapped file
    return found


def check_cam_classifier(
    found: Mapping[str, torch.Tensor], source: str, classes: int, channels: int | None = None
) -> tuple[int, int]:
    """Refuse a file's ``fc8.*`` that cannot be a CAM head of ``classes`` x ``channels`` (None: not checked yet)
    as one bias-free 1x1 conv; returns fc8's (classes, channels)."""
    weight = found.get(f"{CAM_CLASSIFIER_PREFIX}weight")
    others = sorted(k for k in found if k != f"{CAM_CLASSIFIER_PREFIX}weight")
    if others:
        raise ASDTUserError(
            f"{source} has {others} besides fc8.weight, but the CAM head is one bias-free 1x1 conv; "
            "re-save the file without them"
        )
    if not torch.is_tensor(weight) or weight.dim() not in (2, 4) or tuple(weight.shape[2:]) not in ((), (1, 1)):
        shape = tuple(getattr(weight, "shape", ()))
        raise ASDTUserError(f"{source}: fc8.weight has shape {shape}; expected (classes, channels, 1, 1)")
    rows, cols = int(weight.shape[0]), int(weight.shape[1])
    if rows != classes or (channels is not None and cols != channels):
        head = f"{classes}x{channels}: {classes} classes x {channels} channels" if channels else f"{classes} classes"
        raise ASDTUserError(
            f"{source}: its fc8 ({rows}x{cols}: {rows} classes x {cols} channels) does not fit the CAM head "
            f"({head}); to use only its backbone, re-save the file without fc8.weight"
        )
    return rows, cols


def load_cam_classifier(conv: nn.Conv2d, found: Mapping[str, torch.Tensor], source: str) -> str:
    """Copy a file's ``fc8.weight`` ((C, D, 1, 1) or (C, D)) into ``conv``, a bias-free C x D 1x1 conv, after
    :func:`check_cam_classifier`; returns the report's phrase, e.g. ``"fc8 (20x4096)"``."""
    rows, cols = check_cam_classifier(found, source, conv.out_channels, conv.in_channels)
    with torch.no_grad():
        conv.weight.copy_(found[f"{CAM_CLASSIFIER_PREFIX}weight"].reshape(conv.weight.shape))
    return f"fc8 ({rows}x{cols})"


def backbone_key_count(backbone: Backbone) -> int:
    """How many state-dict keys ``load_checked`` matches for ``backbone`` (BatchNorm counters left out)."""
    return sum(not k.endswith("num_batches_tracked") for k in backbone.state_dict())


def load_checked(backbone: Backbone, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Normalise ``state``'s keys, check they match ``backbone`` exactly, then load strictly."""
    cleaned = {}
    for key, value in state.items():
        key = backbone.import_key(strip_prefixes(str(key)))
        if key is not None and not (key.endswith("num_batches_tracked") or key.startswith(_CLASSIFIER_PREFIXES)):
            cleaned[key] = value
    own = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in cleaned]
    unexpected = [k for k in cleaned if k not in own]
    mis_shaped = [
        f"{k} {tuple(getattr(cleaned[k], 'shape', ()))} vs {tuple(own[k].shape)}"
        for k in own
        if k in cleaned and not (torch.is_tensor(cleaned[k]) and cleaned[k].shape == own[k].shape)
    ]
    if missing or unexpected or mis_shaped:
        matched = len(own) - len(missing) - len(mis_shaped)
        problems = [f"{matched} of {len(own)} keys matched"]
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if names:
                problems.append(f"{label} e.g. {names[:3]}")
        raise ASDTUserError(f"{source} does not match backbone {backbone.name}: {'; '.join(problems)}")
    # BatchNorm's num_batches_tracked counters are not part of the check; keep the backbone's own.
    full = {**backbone.state_dict(), **cleaned}
    backbone.load_state_dict(full, strict=True)


def strip_prefixes(key: str) -> str:
    """A state-dict key without its wrapper prefixes (``module.``, ``backbone.``...), however many are stacked."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key
