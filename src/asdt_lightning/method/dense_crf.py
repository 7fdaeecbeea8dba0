"""CRF refinement of per-pixel distributions at inference: the exact dense CRF or the local PyTorch one.

The fully connected dense CRF (Krähenbühl & Koltun) comes from the optional ``pydensecrf2`` package
(``pip install 'asdt-lightning[crf]'``), imported only when used; it runs on the CPU, one image at a time. The
local-window CRF of ``method.crf`` runs batched on any device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ASDTUserError
from .crf import CRFParams, mean_field_crf, pydensecrf_available

CRF_CHOICES = ("none", "local", "dense")
CRF_AUTO = "auto"  # pseudo_labels' default: dense when pydensecrf2 imports, else none (``resolve_crf``)
CRF_EXTRA = "pip install 'asdt-lightning[crf]'"


def load_pydensecrf() -> Any:
    """The ``pydensecrf.densecrf`` module, or a one-line error saying how to install it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise ASDTUserError(
            f"crf=dense needs the optional pydensecrf2 package: {CRF_EXTRA} "
            "(or pip install pydensecrf2), or use crf=local"
        ) from None
    return dcrf


def resolve_crf(method: str) -> str:
    """``auto``: ``dense`` when pydensecrf2 imports, else ``none``; any other choice unchanged."""
    if method != CRF_AUTO:
        return method
    return "dense" if pydensecrf_available() else "none"


def auto_crf_note(resolved: str) -> str:
    """The one line saying what ``crf=auto`` chose (``resolve_crf``) and how to get the dense CRF."""
    if resolved == "dense":
        return "crf=auto: the exact dense CRF (pydensecrf2 is installed; crf=none or crf=local to change)"
    return f"crf=auto: no CRF (pydensecrf2 is not installed; {CRF_EXTRA} for the exact dense CRF, or crf=local)"


def check_crf(method: str) -> None:
    """Refuse an unknown CRF choice, or ``dense`` without pydensecrf2, before any work starts."""
    if method not in CRF_CHOICES:
        raise ASDTUserError(f"unknown crf {method!r}; choose one of {', '.join(CRF_CHOICES)}")
    if method == "dense":
        load_pydensecrf()


def dense_crf_single(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """Exact dense CRF of one image.

    Args:
        image: (H, W, 3) uint8 RGB.
        probs: (K, H, W) float probabilities (K >= 1).
    Returns:
        (K, H, W) float32 refined probabilities.
    """
    dcrf = load_pydensecrf()
    k, h, w = probs.shape
    if k == 1:
        return np.ones_like(probs, dtype=np.float32)
    crf = dcrf.DenseCRF2D(w, h, k)
    unary = -np.log(np.clip(probs, 1e-5, 1.0)).reshape(k, -1).astype(np.float32)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image, dtype=np.uint8),
        compat=params.bilateral_compat,
    )
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(k, h, w)


def dense_crf(
    rgb: torch.Tensor, probs: torch.Tensor, params: CRFParams, allowed: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """Batched front end of the dense CRF; only each image's allowed labels take part.

    Args:
        rgb: (B, 3, H, W) RGB in 0..255; probs: (B, K, H, W); allowed: (B, K) bool.
        normalize: renormalise the allowed labels' probabilities first; False: take the scores as they are
            (unary ``-log(clip(score, 1e-5, 1))``, as ``method.crf.mean_field`` and the released teacher A).
    Returns:
        (B, K, H, W) refined probabilities (0 for labels not allowed), on ``probs``' device.
    """
    out = torch.zeros_like(probs, dtype=torch.float32)
    images = rgb.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for i in range(probs.shape[0]):
        keep = allowed[i].nonzero().flatten()
        if keep.numel() == 0:
            keep = torch.arange(probs.shape[1], device=probs.device)
        sub = probs[i, keep].float()
        if normalize:
            sub = sub / sub.sum(0, keepdim=True).clamp_min(1e-8)
        refined = dense_crf_single(images[i], sub.cpu().numpy(), params)
        out[i, keep] = torch.from_numpy(refined).to(out.device)
    return out


UNFOLD_BYTES = 1 << 30  # the unfold message pass materialises (B, K, window^2, H, W); above this, shift


def local_crf_subset(rgb: torch.Tensor, probs: torch.Tensor, params: CRFParams, allowed: torch.Tensor) -> torch.Tensor:
    """The PyTorch CRF on the labels some image of the batch allows (B, K', H, W), scattered back to (B, K, H, W).

    Labels no image allows stay 0 and cost nothing (VOC images hold 2-3 of 21 labels).
    """
    used = allowed.any(0)
    if not bool(used.any()):
        used = torch.ones_like(used)
    b, _, h, w = probs.shape
    sub = probs[:, used].float()
    footprint = 4 * b * sub.shape[1] * params.window**2 * h * w
    method = "unfold" if footprint <= UNFOLD_BYTES else "shift"
    refined = mean_field_crf(rgb.float(), sub, params, pixel_step=1.0, allowed=allowed[:, used], method=method)
    out = torch.zeros_like(probs, dtype=torch.float32)
    out[:, used] = refined
    return out


def refine_with_crf(
    method: str, rgb: torch.Tensor, probs: torch.Tensor, params: CRFParams, allowed: torch.Tensor
) -> torch.Tensor:
    """``method`` in ``none | local | dense``: (B, 3, H, W) RGB 0..255, (B, K, H, W) probs -> (B, K, H, W)."""
    if method == "none":
        return probs
    if method == "local":
        return local_crf_subset(rgb, probs, params, allowed)
    if method == "dense":
        return dense_crf(rgb, probs, params, allowed)
    raise ASDTUserError(f"unknown crf {method!r}; choose one of {', '.join(CRF_CHOICES)}")
