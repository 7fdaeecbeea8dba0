"""Cheap checks of a training config's values, before any data or model is built: each failure is one
``ASDTUserError`` line that names the key, the value and what to pass instead."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .data.coco import check_settings as check_coco_settings
from .data.coco import require_pycocotools
from .data.dataset import check_policy
from .data.transforms import check_resize_long
from .errors import ASDTUserError
from .io_utils import is_torch_file
from .method.crf import pydensecrf_available

# Lightning's precision names, plus the package's ``auto`` (see ``hardware.resolve_precision``)
PRECISIONS = ("auto", "64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
# the network settings a checkpoint must share with the run that resumes it (they change shapes or the model)
RESUME_NET_KEYS = ("backbone", "output_stride", "head_channels", "head_dilation", "skip_channels")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, key: str, hint: str = "") -> None:
    """Refuse anything but an integer >= 1 for ``key``."""
    if not _is_int(value) or value < 1:
        raise ASDTUserError(f"{key} must be a whole number >= 1, got {value!r}{'; ' + hint if hint else ''}")


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """Step counts, intervals, precision and accelerator of the ``trainer`` group, and a GPU where one is asked for."""
    max_steps = trainer.get("max_steps", -1)
    if not _is_int(max_steps) or (max_steps < 1 and max_steps != -1):
        raise ASDTUserError(
            f"trainer.max_steps must be a number of steps >= 1 (or -1 to train trainer.max_epochs epochs), "
            f"got {max_steps!r}"
        )
    if max_steps == -1 and trainer.get("max_epochs") is not None:
        positive_int(trainer["max_epochs"], "trainer.max_epochs")
    for key in ("log_every_n_steps", "check_val_every_n_epoch", "num_nodes"):
        if trainer.get(key) is not None:
            positive_int(trainer[key], f"trainer.{key}")
    devices = trainer.get("devices", "auto")
    if _is_int(devices) and devices < 1 and devices != -1:
        raise ASDTUserError(f"trainer.devices must be >= 1, -1 (all) or auto, got {devices}")
    precision = str(trainer.get("precision", "auto"))
    if precision not in PRECISIONS:
        raise ASDTUserError(f"trainer.precision={precision} is not a precision; choose one of {', '.join(PRECISIONS)}")
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator not in ACCELERATORS:
        raise ASDTUserError(f"trainer.accelerator={accelerator} is unknown; choose one of {', '.join(ACCELERATORS)}")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ASDTUserError(
            f"trainer.accelerator={accelerator} but no GPU is visible here (torch.cuda.is_available() is False); "
            "use trainer=cpu (or trainer.accelerator=auto)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ASDTUserError("trainer.accelerator=mps but this machine has no Apple GPU; use trainer=cpu")


def unknown_trainer_keys(trainer: Mapping[str, Any]) -> list[str]:
    """Keys of the ``trainer`` group that ``lightning.Trainer`` does not take."""
    import lightning as L

    known = set(inspect.signature(L.Trainer.__init__).parameters)
    return sorted(set(trainer) - known)


def check_crf_connectivities(model: Mapping[str, Any]) -> None:
    """``connectivity=dense`` of the teachers' CRFs needs pydensecrf2: refused before anything is built."""
    for key in ("teacher_a", "teacher_b"):
        if model[key]["crf"]["connectivity"] == "dense" and not pydensecrf_available():
            raise ASDTUserError(
                f"model.{key}.crf.connectivity=dense needs the optional pydensecrf2 package: "
                "pip install 'asdt-lightning[crf]', or use connectivity=auto (attention without it)"
            )


def check_dataset(data: Mapping[str, Any]) -> None:
    """Batch sizes, workers, crop and augmentation values of the ``dataset`` group."""
    positive_int(data.get("batch_size"), "dataset.batch_size", "the images per training step")
    if data.get("val_batch_size") is not None:
        positive_int(data["val_batch_size"], "dataset.val_batch_size")
    workers = data.get("num_workers", 0)
    if not _is_int(workers) or workers < 0:
        raise ASDTUserError(f"dataset.num_workers must be >= 0 (0: load in the main process), got {workers!r}")
    positive_int(data.get("crop_size"), "dataset.crop_size")
    if data.get("val_size") is not None:
        positive_int(data["val_size"], "dataset.val_size")
    scale = data.get("scale_range")
    if scale is not None and (
        not isinstance(scale, Sequence) or len(scale) != 2 or not 0 < float(scale[0]) <= float(scale[1])
    ):
        raise ASDTUserError(f"dataset.scale_range must be [low, high] with 0 < low <= high, got {scale!r}")
    if data.get("resize_long") is not None:
        check_resize_long(data["resize_long"])
    check_policy(data.get("on_bad_sample", "error"))
    if data.get("name") == "coco":
        check_coco_settings(
            data.get("year"),
            data.get("source"),
            data.get("png_ids"),
            data.get("label_source"),
            data.get("min_label_pixels"),
        )
        if data.get("source") == "instances":
            require_pycocotools()


def check_resume_checkpoint(
    path: str | Path, net: Mapping[str, Any], class_names: Sequence[str], has_background: bool, dataset: str
) -> None:
    """Refuse a ``ckpt_path`` that is missing, unreadable, not an ASDT checkpoint, or of another network, dataset
    or class count than this run (``net``: the run's network settings, with ``backbone`` its name)."""
    from .lit.inference import check_compatible, checkpoint_kind, read_checkpoint

    path = Path(path).expanduser()
    if not path.is_file():
        raise ASDTUserError(f"ckpt_path={path}: no such file; pass ckpt_path=<run>/checkpoints/last.ckpt")
    if not is_torch_file(path):
        raise ASDTUserError(
            f"ckpt_path={path} is not a checkpoint (not a PyTorch file); pass ckpt_path=<run>/checkpoints/last.ckpt"
        )
    ckpt = read_checkpoint(path)
    if checkpoint_kind(ckpt) != "asdt":
        raise ASDTUserError(f"ckpt_path={path} is a second-stage checkpoint; resume ASDT training from an ASDT one")
    hparams = ckpt["hyper_parameters"]
    check_compatible(hparams, class_names, has_background, path, dataset)
    trained = hparams.get("net", {})
    differ = [
        f"{key} {trained.get(key)!r} there, {net.get(key)!r} here"
        for key in RESUME_NET_KEYS
        if key in trained and trained.get(key) != net.get(key)
    ]
    if differ:
        raise ASDTUserError(
            f"ckpt_path={path} was trained with another network ({'; '.join(differ)}); resume with the "
            "checkpoint's settings (its run's config_resolved.yaml) or start a new run"
        )
