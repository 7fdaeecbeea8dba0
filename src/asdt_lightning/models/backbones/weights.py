"""Loading a local weights file into a backbone: key normalisation and a strict, all-or-nothing check."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ...errors import ASDTUserError
from ...io_utils import unreadable_torch_file
from .base import Backbone

_KEY_PREFIXES = ("module.", "backbone.", "model.", "encoder.")
_CLASSIFIER_PREFIXES = ("fc.", "fc8.", "classifier.", "aux_classifier.")


def check_weights_file(path: str | Path) -> Path:
    """The expanded path of an existing weights file; a missing one raises, named as given."""
    found = Path(path).expanduser()
    if not found.is_file():
        raise ASDTUserError(f"backbone.weights file not found: {path}")
    return found


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a local state dict (raw, or under ``state_dict`` / ``model``) into ``backbone``, strictly.

    Prefixes such as ``module.`` are stripped and classifier keys (``fc.*``, ``fc8.*``) dropped; any other
    difference (missing, unexpected or mis-shaped keys) raises ASDTUserError before anything is loaded.
    """
    path = check_weights_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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
    load_checked(backbone, state, f"weights file {path}")


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
