"""Batched mean-field CRFs and their pairwise affinities, in PyTorch (they run on the training device).

The fully connected dense CRF of Krähenbühl & Koltun with Gaussian + bilateral Potts kernels, on the label grid,
in one of these connectivities:

- ``"local"``: each pixel interacts with the ``window x window`` pixels around it (a "ConvCRF"); memory and time
  grow with ``H * W * window^2``.
- ``"full"``: each pixel interacts with every pixel of the grid, exactly (no lattice approximation); the kernel is a
  (B, N, N) matrix for ``N = H * W`` pixels, so it suits label grids up to a few thousand pixels (32x32 on a
  128-px crop, 41x41 on a 321-px crop at output stride 8), where it costs a few batched matrix products.
- ``"attention"``: the same messages as ``"full"`` (to float32 rounding), computed from the pixels' features by
  ``scaled_dot_product_attention`` without forming N x N: memory linear in N (161x161, 321x321 grids), time
  still N^2 per iteration (``method.crf_attention`` has the derivation).
- ``"dense"``: the exact dense CRF of ``pydensecrf2`` (the permutohedral lattice, on the CPU, one image at a time,
  as the released code labels its 321 x 321 crops): the CPU path to labels at the crop's resolution, where
  attention's N^2 time is too slow (321x321: 0.18 s per CRF against 105 s; ``benchmarks/crf_connectivity.md``).
  Needs the optional ``crf`` extra.
- ``"auto"``: ``"full"`` where its (B, N, N) kernel fits ``AUTO_FULL_MAX_BYTES``, ``"attention"`` elsewhere
  (for a CRF on a CPU with ``pydensecrf2`` installed: ``"dense"``). On
  one CPU core full is the faster one up to ~60x60 (its exponentials are computed once, attention's every
  iteration: 41x41 in 21 vs 32 ms) and slower above (81x81: 436 vs 355 ms; 161x161: 15.6 vs 5.4 s and 5 GiB);
  ``benchmarks/crf_connectivity.md``.

Kernels are expressed in *image* pixel units (``pixel_step`` = image pixels per label pixel), so the dense-CRF
parameters (sxy, srgb) keep their meaning at any label resolution. Each pixel's weights are divided by their sum
plus the pixel's own weight (1), as in the dense CRF's normalisation: ``compat`` bounds the logit change a kernel
can make, and a pixel unlike all its neighbours receives almost nothing and keeps its unary.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from .crf_attention import AttentionCRFKernel, attention_crf_kernel, attention_mean_field

CONNECTIVITIES = ("local", "full", "attention", "dense", "auto")
NORMALIZATIONS = ("row", "symmetric")  # CRFParams.normalization
FULL_KERNEL_MAX_BYTES = 8 << 30  # a (B, N, N) float32 kernel above this is refused with a clear message
AUTO_FULL_MAX_BYTES = 512 << 20  # connectivity="auto": full up to this (B, N, N) float32 kernel, attention above
_LOG_FLOOR = -87.0  # exp(-87) ~ 1.6e-38, just above float32's smallest normal number
_WEIGHT_FLOOR = 1e-20  # normalised weights below this are exactly 0 (products with them would be subnormal)
_FULL_LOG_FLOOR = -40.0  # full kernel: weights below e^-40 of the pixel's own are exactly 0 (no subnormals)


@dataclass(frozen=True)
class CRFParams:
    """Parameters of the mean-field CRF (defaults: the released code's teacher-A dense CRF, on the label grid)."""

    iterations: int = 10
    window: int = 9  # neighbourhood side for local connectivity (ignored by full connectivity)
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    connectivity: str = "full"  # "full" (every pixel of the label grid) | "attention" (the same, linear memory)
    # | "dense" (pydensecrf2 on the CPU) | "auto" (full where it fits AUTO_FULL_MAX_BYTES, else attention)
    # | "local" (window x window)
    normalization: str = "row"  # "row": sum_{j != i} k_ij q_j / S_i | "symmetric": n_i sum_j k_ij n_j q_j with
    # n = S^-1/2, self included (pydensecrf's; full, attention and dense)

    def __post_init__(self) -> None:
        check_connectivity(self.connectivity)
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"CRF normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}"
            )
        if self.normalization == "symmetric" and self.connectivity == "local":
            raise ValueError("CRF normalization=symmetric needs connectivity full, attention, dense or auto, not local")


def check_connectivity(connectivity: str) -> None:
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"unknown CRF connectivity {connectivity!r}; use one of {', '.join(CONNECTIVITIES)}")


def resolve_connectivity(
    connectivity: str, b: int, h: int, w: int, device: torch.device | None = None, allow_dense: bool = False
) -> str:
    """``"auto"`` -> ``"full"`` if a (B, N, N) float32 kernel of ``b`` images on an ``h x w`` grid fits
    ``AUTO_FULL_MAX_BYTES``; else, for a CRF (``allow_dense``) on a CPU ``device`` with ``pydensecrf2``
    installed, ``"dense"`` (N^2 attention is far too slow there: 105 s at 321x321), else ``"attention"``. Any
    other connectivity is returned as it is."""
    check_connectivity(connectivity)
    if connectivity != "auto":
        return connectivity
    if 4 * b * (h * w) ** 2 <= AUTO_FULL_MAX_BYTES:
        return "full"
    if allow_dense and device is not None and torch.device(device).type == "cpu" and pydensecrf_available():
        return "dense"
    return "attention"


def pydensecrf_available() -> bool:
    """Whether the optional ``pydensecrf2`` package imports (``pip install 'asdt-lightning[crf]'``)."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


class DenseCRFImage(NamedTuple):
    """The "kernel" of ``connectivity="dense"``: the image itself, which ``pydensecrf2`` builds its lattice from."""

    image: torch.Tensor  # (B, 3, H, W) RGB 0..255 at the label resolution
    pixel_step: float  # image pixels per label pixel: sxy in image pixels become sxy / pixel_step grid pixels


def dense_mean_field(
    probs: torch.Tensor, kernel: DenseCRFImage, params: CRFParams, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """``mean_field`` by ``pydensecrf2``: (B, K, H, W) probabilities -> (B, K, H, W), on ``probs``' device."""
    from .dense_crf import dense_crf  # imports crf.py: resolved at call time

    scaled = replace(
        params,
        gaussian_sxy=params.gaussian_sxy / kernel.pixel_step,
        bilateral_sxy=params.bilateral_sxy / kernel.pixel_step,
    )
    if allowed is None:
        allowed = torch.ones(probs.shape[:2], dtype=torch.bool, device=probs.device)
    return dense_crf(kernel.image, probs, scaled, allowed, normalize=False)  # as the other connectivities


INFERENCE_CRF = CRFParams(bilateral_sxy=83.0, bilateral_srgb=5.0, bilateral_compat=4.0, connectivity="local")
"""The released code's test-time dense CRF: sharper colour (5), weaker compat (4) than teacher A's; local at the
image's own resolution, where a fully connected kernel would not fit in memory. Teacher B uses it fully connected
on the label grid."""


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
    """Kernel weights between each pixel and its window neighbours, centre excluded, normalised (see module).

    Args:
        image: (B, 3, H, W) RGB in 0..255 at the label resolution.
        srgb: colour bandwidth; ``None`` gives a purely spatial Gaussian kernel.
        valid: optional (B, H, W) bool; invalid pixels neither send nor receive weight.
    Returns:
        (B, window*window, H, W) weights; each pixel's sum lies in [0, 1).
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
    # process ~100x slower, and they could not change the normalised weights at float32 precision anyway.
    logk = logk.expand(b, -1, h, w)
    k = torch.exp(logk.clamp_min(_LOG_FLOOR)) * ((logk > _LOG_FLOOR) * inside)
    k[:, (window * window) // 2] = 0.0  # no self-interaction
    k = k / (k.sum(1, keepdim=True) + 1.0)  # + the pixel's own weight, exp(0)
    return k.masked_fill_(k < _WEIGHT_FLOOR, 0.0)  # negligible weights would make subnormal messages


@contextlib.contextmanager
def full_fp32_matmul() -> Iterator[None]:
    """Float32 matmuls at full precision inside, whatever ``torch.set_float32_matmul_precision`` says outside."""
    previous = torch.get_float32_matmul_precision()
    if previous == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def full_affinity(
    image: torch.Tensor,
    sxy: float,
    srgb: float | None,
    pixel_step: float = 1.0,
    valid: torch.Tensor | None = None,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
    symmetric: bool = False,
) -> torch.Tensor:
    """Kernel weights between every pair of pixels of the grid, self excluded, normalised (see module);
    ``symmetric``: ``n_i k_ij n_j`` with ``n = S^-1/2``, self included (``pydensecrf``'s normalisation).

    ``k_ij = exp(-|p_i - p_j|^2 / 2 sxy^2 - |I_i - I_j|^2 / 2 srgb^2)``, positions in image pixels, computed for
    all pairs with one batched matrix product. Weights below ``e^-40`` are 0.

    Args:
        image: (B, 3, H, W) RGB in 0..255 at the label resolution (only its shape matters when ``srgb`` is None).
        valid: optional (B, H, W) bool; valid and invalid pixels exchange no weight (what invalid pixels receive
            from each other is left in, as nothing downstream reads it).
        scale: multiplies the normalised weights (a CRF's ``compat``), at no extra cost.
        out: optional (B, N, N) float32 buffer to build the kernel in (see ``kernel_buffer``); ignored if its
            shape or device differs.
    Returns:
        (B, N, N) weights, ``N = H * W``: row ``i`` holds what pixel ``i`` receives from each pixel ``j``.
    """
    b, _, h, w = image.shape
    check_full_kernel_size(b, h, w)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=image.device, dtype=torch.float32),
        torch.arange(w, device=image.device, dtype=torch.float32),
        indexing="ij",
    )
    feats = (torch.stack([ys, xs], -1).view(1, h * w, 2) * (pixel_step / sxy)).expand(b, -1, -1)
    if srgb is not None:
        feats = torch.cat([feats, image.float().flatten(2).transpose(1, 2) / srgb], 2)
    feats = feats - feats.mean(1, keepdim=True)  # smaller magnitudes: less cancellation below
    if valid is not None:  # a feature 10 apart: valid-invalid pairs get exp(-50), below the floor, so exactly 0
        feats = torch.cat([feats, (~valid).flatten(1)[:, :, None].float() * 10.0], 2)
    half_sq = feats.pow(2).sum(2, keepdim=True) * -0.5
    ones = torch.ones_like(half_sq)
    # [f_i, -|f_i|^2/2, 1] . [f_j, 1, -|f_j|^2/2] = -|f_i - f_j|^2 / 2, every pair in one product
    with full_fp32_matmul():  # TF32 / bf16 matmuls would put errors of ~1 into these exponents
        left, right = torch.cat([feats, half_sq, ones], 2), torch.cat([feats, ones, half_sq], 2).transpose(1, 2)
        if out is not None and out.shape == (b, h * w, h * w) and out.device == image.device:
            logk = torch.bmm(left, right, out=out)
        else:
            logk = torch.bmm(left, right)
    if symmetric:
        k = logk.clamp_(_FULL_LOG_FLOOR, 0.0).exp_().sub_(math.exp(_FULL_LOG_FLOOR))
        k.diagonal(dim1=1, dim2=2).fill_(1.0)  # the pixel's own weight, exp(0)
        norm = k.sum(2).rsqrt_()  # (B, N)
        return k.mul_(norm[:, :, None]).mul_(norm[:, None, :] * scale)  # symmetric
    logk.diagonal(dim1=1, dim2=2).fill_(-math.inf)  # no self-interaction
    # weights at the floor become exp(floor) - exp(floor) = 0 (to a float32 ulp, ~1e-25): none is subnormal. (Not
    # exp of -inf: the vectorised exp takes a slow path, 10x, for inputs that underflow.)
    k = logk.clamp_(_FULL_LOG_FLOOR, 0.0).exp_().sub_(math.exp(_FULL_LOG_FLOOR))
    # k is symmetric, so dividing its columns by the row sums gives the transpose of the row-normalised kernel;
    # returning that as a transposed view makes ``kernel.transpose(1, 2)``, which messages multiply by, contiguous
    k.div_(k.sum(1, keepdim=True).add_(1.0).div_(scale))  # + the pixel's own weight, exp(0)
    return k.transpose(1, 2)


def kernel_buffer(buffers: dict[str, torch.Tensor], name: str, image: torch.Tensor) -> torch.Tensor:
    """A reusable (B, N, N) float32 buffer for a full kernel of ``image``'s grid, kept in ``buffers[name]``.

    On the CPU every fresh tensor of 32 MiB or more is new memory from the system, and writing it first costs a
    page fault per 4 KiB (about 10 ms for a 32 MiB kernel, several times the arithmetic); building each step's
    kernel in the same buffer avoids that. A kernel built in a buffer is valid until the buffer's next use.
    """
    b, _, h, w = image.shape
    buffer = buffers.get(name)
    if buffer is None or buffer.shape != (b, h * w, h * w) or buffer.device != image.device:
        check_full_kernel_size(b, h, w)
        buffer = buffers[name] = torch.empty(b, h * w, h * w, device=image.device)
    return buffer


def check_full_kernel_size(b: int, h: int, w: int) -> None:
    """Refuse a full-connectivity kernel too large for memory, with what to change."""
    size = 4 * b * (h * w) ** 2
    if size > FULL_KERNEL_MAX_BYTES:
        raise ValueError(
            f"a fully connected CRF kernel on a {h}x{w} label grid for {b} images needs {size / 2**30:.1f} GiB; "
            "lower label_upsample or the crop size, or use connectivity=attention (same messages, linear memory) "
            "or local"
        )


def message_passing(q: torch.Tensor, kernel: torch.Tensor, window: int, method: str | None = None) -> torch.Tensor:
    """One local mean-field message: ``m[b, k, p] = sum_n kernel[b, n, p] * q[b, k, p + offset_n]`` (0 outside).

    Args:
        q: (B, K, H, W) current marginals; kernel: (B, window*window, H, W) from ``local_affinity``.
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


@record_function("asdt: CRF kernel")
def crf_kernel(
    image: torch.Tensor, params: CRFParams, pixel_step: float = 1.0, out: torch.Tensor | None = None
) -> torch.Tensor | AttentionCRFKernel | DenseCRFImage:
    """Combined Potts kernel ``compat_g * gaussian + compat_b * bilateral`` of an image at the label resolution.

    ``out``: optional buffer for a full kernel (``full_affinity``).

    Returns:
        (B, window*window, H, W) for local connectivity, (B, N, N) for full connectivity, an
        ``AttentionCRFKernel`` (features, linear memory) for attention, a ``DenseCRFImage`` for dense;
        ``auto`` gives full or attention.
    """
    b, _, h, w = image.shape
    connectivity = resolve_connectivity(params.connectivity, b, h, w, image.device, allow_dense=True)
    if connectivity == "dense":
        return DenseCRFImage(image, pixel_step)
    if connectivity == "attention":
        return attention_crf_kernel(image, params, pixel_step)
    if connectivity == "full":
        symmetric = params.normalization == "symmetric"
        gauss = full_affinity(image[:1], params.gaussian_sxy, None, pixel_step, symmetric=symmetric)  # same for all
        bilat = full_affinity(
            image, params.bilateral_sxy, params.bilateral_srgb, pixel_step, None, params.bilateral_compat, out,
            symmetric,
        )  # fmt: skip
        return bilat.add_(gauss, alpha=params.gaussian_compat)
    gauss = local_affinity(image, params.window, params.gaussian_sxy, None, pixel_step)
    bilat = local_affinity(image, params.window, params.bilateral_sxy, params.bilateral_srgb, pixel_step)
    return params.gaussian_compat * gauss + params.bilateral_compat * bilat


@record_function("asdt: CRF mean field")
def mean_field(
    probs: torch.Tensor,
    kernel: torch.Tensor | AttentionCRFKernel | DenseCRFImage,
    params: CRFParams,
    allowed: torch.Tensor | None = None,
    method: str | None = None,
) -> torch.Tensor:
    """Mean-field inference of a Potts CRF with a precomputed ``crf_kernel`` (one kernel serves several unaries).

    Args:
        probs: (B, K, H, W) unary class probabilities.
        kernel: from ``crf_kernel`` for the same image and ``params`` (its type says the connectivity).
        allowed: optional (B, K) bool; classes not allowed keep probability 0.
        method: how local messages are computed (see ``message_passing``; default: by device).
    Returns:
        (B, K, H, W) refined probabilities.
    """
    if isinstance(kernel, DenseCRFImage):
        return dense_mean_field(probs, kernel, params, allowed)
    unary = probs.clamp_min(1e-5).log()
    if allowed is not None:
        allowed = allowed | ~allowed.any(1, keepdim=True)  # an image with no allowed label keeps them all
        unary = unary.masked_fill(~allowed[:, :, None, None], float("-inf"))
    q = torch.softmax(unary, dim=1)
    subset = allowed_subset(allowed) if allowed is not None else None
    if subset is not None:  # iterate on each image's allowed classes only: the others stay 0 whatever the messages
        full_shape = q.shape
        index = subset[:, :, None, None].expand(-1, -1, *q.shape[2:])
        unary, q = unary.gather(1, index), q.gather(1, index)
    if isinstance(kernel, AttentionCRFKernel):
        q = attention_mean_field(unary, q, kernel, params.iterations)
    elif kernel.dim() == 3:  # full: (B, N, N)
        b, k, h, w = q.shape
        unary, q = unary.flatten(2), q.flatten(2)
        kernel_t = kernel.transpose(1, 2)
        for _ in range(params.iterations):
            q = torch.softmax(unary + torch.matmul(q, kernel_t), dim=1)
        q = q.view(b, k, h, w)
    else:
        for _ in range(params.iterations):
            q = torch.softmax(unary + message_passing(q, kernel, params.window, method), dim=1)
    if subset is not None:
        q = q.new_zeros(full_shape).scatter_(1, index, q)
    return q


def allowed_subset(allowed: torch.Tensor) -> torch.Tensor | None:
    """(B, K) bool -> (B, k) long: each image's allowed classes first (then not-allowed ones, as padding), ``k`` the
    most any image allows; ``None`` where some image allows every class (nothing to save).

    Mean field under a Potts model updates each class from its own marginals only, so the classes an image does not
    allow (unary -inf, marginal 0) can be left out of its iterations exactly; the padding classes stay at 0 too.
    """
    k = int(allowed.sum(1).max())
    if k == allowed.shape[1]:
        return None
    return torch.argsort((~allowed).to(torch.uint8), dim=1, stable=True)[:, :k]


def mean_field_crf(
    image: torch.Tensor,
    probs: torch.Tensor,
    params: CRFParams,
    pixel_step: float = 1.0,
    allowed: torch.Tensor | None = None,
    method: str | None = None,
) -> torch.Tensor:
    """Refine (B, K, H, W) probabilities with the CRF of ``params`` on a (B, 3, H, W) RGB 0..255 image.

    ``pixel_step``: image pixels per pixel of ``probs`` (the kernels' spatial unit); see ``mean_field``.
    """
    return mean_field(probs, crf_kernel(image, params, pixel_step), params, allowed, method)
