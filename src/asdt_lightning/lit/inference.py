"""Inference shared by pseudo-mask export and evaluation: checkpoints, test-time augmentation, fusion, CRF.

Checkpoints are checked against the dataset (class names and count, background) before any image is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..constants import IGNORE_INDEX
from ..errors import ASDTUserError
from ..method.cam import allowed_labels
from ..method.cam import predicted_image_labels as labels_from_classifier
from ..method.crf import INFERENCE_CRF, CRFParams, crf_kernel, mean_field
from ..method.dense_crf import UNFOLD_BYTES, refine_with_crf
from ..method.fusion import BRANCH_CHOICES, FUSION_CHOICES, branch_scores, labels_from_scores, tta_outputs
from ..params import params_from


@dataclass(frozen=True)
class InferenceParams:
    """How per-branch maps become label maps."""

    branch: str = "fused"  # fused | refine | student | cam
    fusion: str = "max"  # max | mean | product (of R's and S's softmax, for branch=fused); see checkpoint_fusion
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crf: str = "none"  # none | local | dense
    crf_params: CRFParams = field(default_factory=lambda: INFERENCE_CRF)
    confidence: float = 0.0  # pixels whose winning share is below this -> 255
    cam_threshold: float | None = None  # background score of the CAM branch (required for branch=cam)
    restrict: bool = True  # R, S, fused over the image's labels; False: over all labels (the segmentation setting)

    def __post_init__(self) -> None:
        if self.branch not in BRANCH_CHOICES:
            raise ASDTUserError(f"unknown branch {self.branch!r}; choose one of {', '.join(BRANCH_CHOICES)}")
        if self.fusion not in FUSION_CHOICES:
            raise ASDTUserError(f"unknown fusion {self.fusion!r}; choose one of {', '.join(FUSION_CHOICES)}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ASDTUserError(f"scales must be a non-empty list of positive numbers, got {list(self.scales)}")
        if not 0 <= self.confidence < 1:
            raise ASDTUserError(f"confidence must lie in [0, 1), got {self.confidence}")


def crf_params_from(values: dict[str, Any] | None) -> CRFParams:
    """Inference CRF parameters: ``INFERENCE_CRF`` overridden by a plain dict (``crf_params``)."""
    return params_from(INFERENCE_CRF, values, "crf_params")


def checkpoint_normalisation(
    module: torch.nn.Module, mean: Sequence[float], std: Sequence[float]
) -> tuple[list[float], list[float]]:
    """The input normalisation a checkpoint was trained with (its ``image_mean`` / ``image_std``): scoring with
    another (a pretrained backbone's own scaling, say) would feed the network inputs it never saw. ``mean`` /
    ``std``: for a module without them."""
    hparams = getattr(module, "hparams", {})
    return list(hparams.get("image_mean", mean)), list(hparams.get("image_std", std))


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ASDTUserError(f"unknown device {device!r} ({err}); use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ASDTUserError("device=cuda but no GPU is visible; use device=cpu or device=auto")
    return resolved


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict (on the CPU), or a one-line error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ASDTUserError(f"checkpoint {path} not found; pass ckpt=<run>/checkpoints/last.ckpt (or best-*.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file: pickle, zip and torch errors alike
        raise ASDTUserError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ASDTUserError(f"{path} is not a Lightning checkpoint of this package (no state_dict/hyper_parameters)")
    return ckpt


def checkpoint_kind(ckpt: dict[str, Any]) -> str:
    """``asdt`` (an ASDT network) or ``segmenter`` (a second-stage network)."""
    hp = ckpt["hyper_parameters"]
    if "segmenter" in hp:
        return "segmenter"
    if "net" in hp and "class_names" in hp:
        return "asdt"
    raise ASDTUserError("the checkpoint is neither an ASDT nor a second-stage segmenter checkpoint of this package")


def check_compatible(
    hparams: dict[str, Any], class_names: Sequence[str], has_background: bool, path: str | Path, dataset: str
) -> None:
    """Refuse a checkpoint trained on other classes (another dataset or class count), in one line."""
    trained = list(hparams.get("class_names", []))
    if len(trained) != len(class_names):
        raise ASDTUserError(
            f"checkpoint {path} was trained on {len(trained)} classes ({', '.join(trained[:6])}"
            f"{', ...' if len(trained) > 6 else ''}) but dataset '{dataset}' has {len(class_names)}; "
            "use a checkpoint trained on this dataset or set dataset= to the checkpoint's"
        )
    if trained != list(class_names):
        diff = next(i for i, (a, b) in enumerate(zip(trained, class_names, strict=True)) if a != b)
        raise ASDTUserError(
            f"checkpoint {path} was trained on other classes than dataset '{dataset}' (class {diff} is "
            f"'{trained[diff]}' there, '{class_names[diff]}' here); use a checkpoint trained on this dataset"
        )
    if bool(hparams.get("has_background", True)) != bool(has_background):
        raise ASDTUserError(
            f"checkpoint {path} has_background={hparams.get('has_background')} but dataset '{dataset}' has "
            f"has_background={has_background}; use a checkpoint trained on this dataset"
        )


def load_model(
    path: str | Path, class_names: Sequence[str], has_background: bool, dataset: str, device: torch.device
) -> L.LightningModule:
    """An ASDT or second-stage module from ``path``, checked against the dataset, in eval mode on ``device``."""
    ckpt = read_checkpoint(path)
    kind = checkpoint_kind(ckpt)
    hparams = dict(ckpt["hyper_parameters"])
    check_compatible(hparams, class_names, has_background, path, dataset)
    if kind == "asdt":
        from .module import ASDTModule

        module: L.LightningModule = ASDTModule(**hparams)
    else:
        from .segmenter import SegmenterModule

        # the weights come from the checkpoint: no download, no backbone file needed
        hparams["segmenter"] = {**hparams["segmenter"], "pretrained": False, "weights": None}
        module = SegmenterModule(**hparams)
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise ASDTUserError(
            f"checkpoint {path} does not match its own configuration ({len(missing)} missing, "
            f"{len(unexpected)} unexpected weights, e.g. {(missing or unexpected)[0]}); was it written by another "
            "version of this package?"
        )
    return module.eval().to(device)


def checkpoint_fusion(module: torch.nn.Module, fusion: str | None = None) -> str:
    """How the fused branch fuses R and S: ``fusion`` when given, else the ASDT checkpoint's own ``model.fusion``
    (the rule of its ``val/miou_fused``); ``max`` for checkpoints older than that setting and for second-stage ones,
    which have no fused branch."""
    if fusion is not None:
        return fusion
    hparams = getattr(module, "hparams", None) or {}
    return str(hparams.get("fusion", "max"))


@torch.no_grad()
def model_outputs(
    module: L.LightningModule,
    images: torch.Tensor,
    image_labels: torch.Tensor,
    scales: Sequence[float],
    flip: bool,
    restrict: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-branch maps at the input resolution, averaged over scales and flips.

    ASDT: ``cam`` (B, C, H, W) CAMs normalised over ``image_labels``, ``refine`` and ``student`` (B, K, H, W)
    softmax over the image's labels (``restrict=False``: over all labels). Second stage: ``segmenter``
    (B, K, H, W) softmax over all labels.
    """
    if hasattr(module, "branch_probabilities"):

        def predict(x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = module.branch_probabilities(x, image_labels, restrict=restrict)
            return {k: out[k] for k in ("cam", "refine", "student")}

    else:

        def predict(x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"segmenter": module.probabilities(x)}

    return tta_outputs(predict, images, scales, flip)


@torch.no_grad()
def predicted_image_labels(module: L.LightningModule, images: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, C) multi-hot image labels from an ASDT classifier (``method.cam.predicted_image_labels``), for lists
    without annotations (VOC test). (B, 3, H, W) images."""
    return labels_from_classifier(module.net(images).class_logits, threshold)


class CRFKernels:
    """The CRF kernels of one batch's images, each built once and shared by every map refined on that batch.

    A kernel depends on the image and the CRF parameters only, not on the probabilities it refines: the branches
    of a batch (and the CAM at its chosen threshold) all reuse it. Valid for one batch only.
    """

    def __init__(self) -> None:
        self.kernels: dict[tuple[CRFParams, int | None], torch.Tensor] = {}
        self.built = 0  # kernels computed, for tests

    def get(self, rgb: torch.Tensor, params: CRFParams, image: int | None = None) -> torch.Tensor:
        """The kernel of ``rgb`` (the whole batch, or image ``image`` of it) under ``params``."""
        key = (params, image)
        if key not in self.kernels:
            self.kernels[key] = crf_kernel(rgb.float(), params)
            self.built += 1
        return self.kernels[key]

    def to(self, device: torch.device | str) -> CRFKernels:
        moved = CRFKernels()
        moved.kernels = {key: kernel.to(device) for key, kernel in self.kernels.items()}
        return moved

    @property
    def nbytes(self) -> int:
        return sum(kernel.numel() * kernel.element_size() for kernel in self.kernels.values())


def message_method(probs: torch.Tensor, params: CRFParams) -> str:
    """Local messages by ``unfold`` on a GPU while its temporary is small, else by ``shift`` (on a CPU the
    (B, K, window^2, H, W) temporary costs ~25x the arithmetic; see ``method.crf.message_passing``)."""
    b, k, h, w = probs.shape
    return "unfold" if probs.is_cuda and 4 * b * k * params.window**2 * h * w <= UNFOLD_BYTES else "shift"


def local_crf(
    rgb: torch.Tensor,
    probs: torch.Tensor,
    params: CRFParams,
    allowed: torch.Tensor,
    kernels: CRFKernels,
    image: int | None = None,
) -> torch.Tensor:
    """The PyTorch CRF on the labels some image of the batch allows, with the batch's shared kernel.

    (B, 3, H, W) RGB 0..255, (B, K, H, W) probabilities, (B, K) allowed -> (B, K, H, W); labels no image allows
    stay 0 and cost nothing. ``image``: which image of the batch ``rgb`` is (None: all of it).
    """
    used = allowed.any(0)
    if not bool(used.any()):
        used = torch.ones_like(used)
    sub = probs[:, used].float()
    kernel = kernels.get(rgb, params, image)
    refined = mean_field(sub, kernel, params, allowed[:, used], message_method(sub, params))
    out = torch.zeros_like(probs, dtype=torch.float32)
    out[:, used] = refined
    return out


def refine(
    method: str,
    rgb: torch.Tensor,
    scores: torch.Tensor,
    params: CRFParams,
    allowed: torch.Tensor,
    kernels: CRFKernels,
    image: int | None = None,
) -> torch.Tensor:
    """``refine_with_crf``, with the local CRF's kernel taken from (or added to) ``kernels``."""
    if method == "local":
        return local_crf(rgb, scores, params, allowed, kernels, image)
    return refine_with_crf(method, rgb, scores, params, allowed)


def crf_per_image_group(
    method: str,
    rgb: torch.Tensor,
    scores: torch.Tensor,
    params: CRFParams,
    allowed: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    kernels: CRFKernels | None = None,
) -> torch.Tensor:
    """CRF over a padded batch: batched when all images share a size, else image by image on its own pixels.

    ``kernels``: the batch's shared kernels (see ``CRFKernels``); None builds them for this call only.
    """
    if method == "none":
        return scores
    kernels = kernels if kernels is not None else CRFKernels()
    if all(tuple(s) == tuple(rgb.shape[-2:]) for s in sizes):
        return refine(method, rgb, scores, params, allowed, kernels)
    out = scores.clone()
    for i, (h, w) in enumerate(sizes):
        out[i : i + 1, :, :h, :w] = refine(
            method, rgb[i : i + 1, :, :h, :w], scores[i : i + 1, :, :h, :w], params, allowed[i : i + 1], kernels, i
        )
    return out


def label_maps(
    outputs: dict[str, torch.Tensor],
    rgb: torch.Tensor,
    image_labels: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    params: InferenceParams,
    has_background: bool,
    kernels: CRFKernels | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Branch selection/fusion, optional CRF, argmax and confidence threshold.

    Args:
        outputs: from ``model_outputs``; rgb: (B, 3, H, W) uint8 or float 0..255; image_labels: (B, C).
        kernels: the batch's CRF kernels, to share them between calls on the same batch (see ``CRFKernels``).
    Returns:
        (B, H, W) long labels (255 below the confidence threshold and on padding) and (B, H, W) confidence.
    """
    if "segmenter" in outputs:
        scores = outputs["segmenter"]
        allowed = torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
    else:
        if params.branch == "cam" and has_background and params.cam_threshold is None:
            raise ASDTUserError("branch=cam needs cam_threshold (the CAM's constant background score, e.g. 0.3)")
        threshold = params.cam_threshold if has_background else None
        scores = branch_scores(outputs, image_labels, params.branch, params.fusion, threshold)
        allowed = allowed_labels(image_labels, has_background)
        if not params.restrict and params.branch != "cam":
            allowed = torch.ones_like(allowed)
    scores = crf_per_image_group(params.crf, rgb.float(), scores, params.crf_params, allowed, sizes, kernels)
    labels, conf = labels_from_scores(scores, params.confidence)
    for i, (h, w) in enumerate(sizes):
        labels[i, h:], labels[i, :, w:] = IGNORE_INDEX, IGNORE_INDEX
        conf[i, h:], conf[i, :, w:] = 0.0, 0.0
    return labels, conf
