"""A batched local-window CRF and its pairwise affinities, in PyTorch (runs on the training device).

The fully connected dense CRF of Krähenbühl & Koltun is approximated by mean-field inference with truncated
kernels: each pixel interacts with the ``window x window`` pixels around it (a "ConvCRF"). Kernels are
expressed in *image* pixel units (``pixel_step`` = image pixels per label pixel), so the dense-CRF
parameters (sxy, srgb) keep their meaning at any label resolution. Each pixel's kernel weights are normalised
to sum to one, so ``compat`` is the largest logit change a kernel can make, whatever the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_LOG_FLOOR = -87.0  # exp(-87) ~ 1.6e-38, just above float32's smallest normal number
_WEIGHT_FLOOR = 1e-20  # normalised weights below this are exactly 0 (products with them would be subnormal)


@dataclass(frozen=True)
class CRFParams:
    """Parameters of the local-window CRF (defaults: the released code's teacher-A CRF)."""

    iterations: int = 10
    window: int = 9
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0


def _neighbours(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, window*window, H, W): every pixel's neighbours (zero outside the image)."""
    b, c, h, w = x.shape
    cols = F.unfold(x, window, padding=window // 2)
    return cols.view(b, c, window * window, h, w)


def _offsets_sq(window: int, pixel_step: float, device: torch.device) -> torch.Tensor:
    """(window*window,) squared distances of the window's offsets from its centre, in image pixels."""
    r = torch.arange(window, device=device, dtype=torch.float32) - window // 2
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return ((dy**2 + dx**2) * pixel_step**2).flatten()


def local_affinity(
    image: torch.Tensor,
    window: int,
    sxy: float,
    srgb: float | None,
    pixel_step: float = 1.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kernel weights between each pixel and its window neighbours, centre excluded, rows summing to 1.

    Args:
        image: (B, 3, H, W) RGB in 0..255 at the label resolution.
        srgb: colour bandwidth; ``None`` gives a purely spatial Gaussian kernel.
        valid: optional (B, H, W) bool; invalid pixels neither send nor receive weight.
    Returns:
        (B, window*window, H, W) weights.
    """
    b, _, h, w = image.shape
    logk = -_offsets_sq(window, pixel_step, image.device).view(1, -1, 1, 1) / (2 * sxy**2)
    inside = _neighbours(torch.ones(1, 1, h, w, device=image.device, dtype=image.dtype), window)[:, 0]
    if valid is not None:
        inside = _neighbours(valid[:, None].to(image.dtype), window)[:, 0] * valid[:, None].to(image.dtype)
    if srgb is not None:
        diff = _neighbours(image, window) - image[:, :, None]
        logk = logk - diff.pow(2).sum(1) / (2 * srgb**2)
    # Weights below e^-87 are set to 0 rather than computed: exp would make them subnormal floats, which CPUs
    # process ~100x slower, and they could not change a row summing to 1 at float32 precision anyway.
    logk = logk.expand(b, -1, h, w)
    k = torch.exp(logk.clamp_min(_LOG_FLOOR)) * ((logk > _LOG_FLOOR) * inside)
    k[:, (window * window) // 2] = 0.0  # no self-interaction
    k = k / k.sum(1, keepdim=True).clamp_min(1e-8)
    return k.masked_fill_(k < _WEIGHT_FLOOR, 0.0)  # negligible weights would make subnormal messages


def message_passing(q: torch.Tensor, kernel: torch.Tensor, window: int, method: str | None = None) -> torch.Tensor:
    """One mean-field message: ``m[b, k, p] = sum_n kernel[b, n, p] * q[b, k, p + offset_n]`` (zero outside).

    Args:
        q: (B, K, H, W) current marginals; kernel: (B, window*window, H, W) from ``crf_kernel``.
        method: ``"unfold"`` materialises every pixel's neighbours, (B, K, window*window, H, W), in one op (few
            large kernels: the GPU choice); ``"shift"`` adds one shifted slice of ``q`` per window offset in place
            (no large temporary: on CPU, allocating and first-touching the unfolded tensor costs more than the
            arithmetic). ``None``: ``"unfold"`` on CUDA, ``"shift"`` elsewhere. Both give the same result.
    Returns:
        (B, K, H, W) messages.
    """
    method = method or ("unfold" if q.is_cuda else "shift")
    if method == "unfold":
        return (_neighbours(q, window) * kernel[:, None]).sum(2)
    if method != "shift":
        raise ValueError(f"unknown message-passing method {method!r}; use 'unfold' or 'shift'")
    _b, _k, h, w = q.shape
    r = window // 2
    padded = F.pad(q, (r, r, r, r))
    message = torch.zeros_like(q)
    for n in range(window * window):
        dy, dx = divmod(n, window)
        if n != (window * window) // 2:  # the centre's weight is 0 (no self-interaction)
            message.addcmul_(padded[:, :, dy : dy + h, dx : dx + w], kernel[:, n : n + 1])
    return message


def crf_kernel(image: torch.Tensor, params: CRFParams, pixel_step: float = 1.0) -> torch.Tensor:
    """(B, window*window, H, W) combined Potts kernel: ``compat_g * gaussian + compat_b * bilateral``."""
    gauss = local_affinity(image, params.window, params.gaussian_sxy, None, pixel_step)
    bilat = local_affinity(image, params.window, params.bilateral_sxy, params.bilateral_srgb, pixel_step)
    return params.gaussian_compat * gauss + params.bilateral_compat * bilat


def local_crf(
    image: torch.Tensor,
    probs: torch.Tensor,
    params: CRFParams,
    pixel_step: float = 1.0,
    allowed: torch.Tensor | None = None,
    method: str | None = None,
) -> torch.Tensor:
    """Mean-field inference of a Potts CRF with local Gaussian + bilateral kernels.

    Args:
        image: (B, 3, H, W) RGB in 0..255 at the resolution of ``probs``.
        probs: (B, K, H, W) unary class probabilities.
        pixel_step: image pixels per pixel of ``probs`` (the kernels' spatial unit).
        allowed: optional (B, K) bool; classes not allowed keep probability 0.
        method: how messages are computed (see ``message_passing``; default: by device).
    Returns:
        (B, K, H, W) refined probabilities.
    """
    unary = probs.clamp_min(1e-5).log()
    if allowed is not None:
        allowed = allowed | ~allowed.any(1, keepdim=True)  # an image with no allowed label keeps them all
        unary = unary.masked_fill(~allowed[:, :, None, None], float("-inf"))
    kernel = crf_kernel(image, params, pixel_step)  # (B, N, H, W)
    q = torch.softmax(unary, dim=1)
    for _ in range(params.iterations):
        q = torch.softmax(unary + message_passing(q, kernel, params.window, method), dim=1)
    return q
