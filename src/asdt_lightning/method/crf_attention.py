"""The fully connected CRF of ``connectivity="full"`` without its (B, N, N) kernel: messages as attention.

``method.crf``'s ``full`` connectivity builds every pixel pair's weight, so its memory grows with N^2 (N = h * w
label pixels) and it stops at a few thousand pixels. ``connectivity="attention"`` computes the same messages with
memory linear in N, from the features alone; its time is still N^2 per message pass.

Derivation. A Gaussian kernel of features ``f`` (positions / sxy, and for the bilateral kernel rgb / srgb) is

    k_ij = exp(-|f_i - f_j|^2 / 2) = exp(f_i . f_j - |f_j|^2 / 2) * exp(-|f_i|^2 / 2),

so, row by row, ``k_ij / sum_j k_ij = softmax_j(q_i . k_j)`` with ``q_i = [f_i, 1]``, ``k_j = [f_j, -|f_j|^2 / 2]``
(the factor of ``i`` cancels): a kernel-weighted average over all pixels is one
``scaled_dot_product_attention(q, k, v, scale=1)`` call, which the fused kernels (flash on CPU, memory-efficient
on CUDA) evaluate block by block without forming N x N. ``full`` excludes the pixel itself and divides by the sum
of the others' weights plus the pixel's own, 1, i.e. by ``S_i = sum_j k_ij`` (self included):

    m_i = sum_{j != i} k_ij v_j / S_i.

Every pass adds a "sink" key whose weight equals the pixel's own (query ``[f_i, 1, |f_i|^2 / 2]``, keys
``[f_j, -|f_j|^2 / 2, 0]`` and the sink ``[0, 0, 1]``: its score is the self score ``|f_i|^2 / 2``), with value 0
for the pixels' columns and 1 in one extra column. The output is then ``o_v = sum_j k_ij v_j / (S_i + 1)`` and
``o_s = 1 / (S_i + 1)``, so one pass gives the message ``m_i = (o_v - v_i o_s) / (1 - o_s)``. A column of ones in
``v`` gives the rows' sums ``sum_{j != i} k_ij / S_i`` (the pairwise loss).

Differences from ``full`` (measured in ``tests/test_crf_attention.py``): ``full`` sets weights below ``e^-40`` (of
the pixel's own) to exactly 0 and lowers the others by ``e^-40`` (no subnormal floats); attention keeps them, or
(``prune``) drops some of them: a row changes by at most ``N e^-40`` relative (< 1e-12 at 321 x 321), far below
float32 rounding. The scores stay float32 (autocast off, full-precision matmuls): they reach ``|f|^2 / 2`` ~
10^2-10^3, where bf16 or TF32 would be off by whole units in the exponent. Features are centred (smaller
magnitudes, less cancellation).

Speed-ups that keep the messages exact (to the same ``e^-40``):

- the spatial Gaussian kernel is separable, ``exp(-dy^2 / 2s^2) exp(-dx^2 / 2s^2)``, so its all-pairs message is
  ``K_y Q K_x`` with (h, h) and (w, w) matrices (``SeparableGaussian``): no attention at all;
- ``prune`` (the CPU default): pixels are sorted by their features' projection on the image's principal axis;
  since ``|f_i - f_j| >= |p_i - p_j|``, pairs more than ``sqrt(80)`` apart in the projection weigh less than
  ``e^-40``, so each chunk of sorted queries attends only to the contiguous range of keys within that distance
  (one SDPA call per chunk). On real photos this skips 45-70% of the pairs, close to all that are below
  ``e^-40``;
- only the classes some image of the batch allows take part (the others' marginals and messages are 0).

Memory: O(N) features and values, plus what one SDPA call uses. q, k and v are zero-padded to one head dim, a
multiple of 8: the CPU flash kernel needs equal dims (else PyTorch takes the math path, which materialises the
scores), the CUDA memory-efficient one aligned ones.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

if TYPE_CHECKING:
    from .crf import CRFParams

LOG_FLOOR = 40.0  # pairs below e^-40 of the pixel's own weight: dropped by ``full`` (crf._FULL_LOG_FLOOR)
PRUNE_RADIUS = math.sqrt(2 * LOG_FLOOR) * 1.001 + 1e-3  # projection distance beyond which a pair is below e^-40
QUERY_CHUNK = 512  # sorted queries per SDPA call when pruning
SCORE_CHUNK_BYTES = 256 << 20  # math-path fallback: query chunks whose float32 scores fit this
_ALIGN = 8  # head dims are zero-padded to a multiple of this
_INVALID_FEATURE = 10.0  # a feature 10 apart: valid-invalid pairs weigh exp(-50), below the floor (as in ``full``)


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """No autocast and full-precision float32 matmuls inside (the scores need all of float32's bits)."""
    previous = torch.get_float32_matmul_precision()
    with torch.autocast(device.type, enabled=False):
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T) v`` (scale 1) of (..., Lq, dq), (..., Lk, dq), (..., Lk, dv): all zero-padded to one head
    dim for the call; returns (..., Lq, dv)."""
    width = v.shape[-1]
    dim = -(-max(q.shape[-1], width) // _ALIGN) * _ALIGN
    q, k, v = (F.pad(x, (0, dim - x.shape[-1])) for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :width]


def _sdpa_all(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``_sdpa`` of (B, 1, N, dq) queries against every key, in memory linear in the keys: on CUDA the
    memory-efficient kernel in one call; elsewhere (the CPU flash kernel, which works in blocks), or where that
    kernel refuses the inputs, query chunks whose scores would fit ``SCORE_CHUNK_BYTES`` if materialised."""
    if q.is_cuda:
        try:
            with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                return _sdpa(q, k, v)
        except RuntimeError as error:  # no fused kernel for these inputs (float64, say): chunks below
            if isinstance(error, torch.OutOfMemoryError):
                raise
    rows = max(1, SCORE_CHUNK_BYTES // (4 * q.shape[0] * k.shape[2]))
    return torch.cat([_sdpa(q[:, :, i : i + rows], k, v) for i in range(0, q.shape[2], rows)], 2)


class SeparableGaussian:
    """The spatial Gaussian kernel over all pixel pairs, normalised as ``full``, self excluded, as two small matrices
    (``symmetric``: ``n_i k_ij n_j`` with ``n = S^-1/2``, self included, as ``pydensecrf``).

    ``k_ij = ky[y_i, y_j] kx[x_i, x_j]``, so ``sum_j k_ij v_j = (K_y V K_x)_i`` per channel; ``S_i`` is the product
    of the two matrices' row sums. Entries below ``e^-40`` are 0.

    Args:
        h, w: the label grid; sxy: bandwidth in image pixels; pixel_step: image pixels per label pixel;
        weight: multiplies the normalised weights (a CRF's ``compat``).
    """

    def __init__(
        self,
        h: int,
        w: int,
        sxy: float,
        pixel_step: float,
        weight: float,
        device: torch.device,
        symmetric: bool = False,
    ) -> None:
        def axis(n: int) -> torch.Tensor:  # (n, n)
            r = torch.arange(n, device=device, dtype=torch.float32)
            logk = -(((r[:, None] - r[None]) * (pixel_step / sxy)) ** 2) / 2
            return torch.where(logk > -LOG_FLOOR, logk.exp(), torch.zeros_like(logk))

        self.ky, self.kx = axis(h), axis(w)
        self.symmetric, self.weight = symmetric, weight
        totals = self.ky.sum(1)[:, None] * self.kx.sum(1)[None, :]  # (h, w): S_i, self included
        self.scale = totals.rsqrt() if symmetric else weight / totals  # (h, w): n_i, or compat / S_i

    def message(self, q: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) marginals -> (B, K, h, w) weighted messages."""
        with exact_float32(q.device):
            v = q.float()
            if self.symmetric:  # n_i sum_j k_ij n_j v_j, self included
                return (torch.matmul(torch.matmul(self.ky, v * self.scale), self.kx) * self.scale * self.weight).to(
                    q.dtype
                )
            return ((torch.matmul(torch.matmul(self.ky, v), self.kx) - v) * self.scale).to(q.dtype)

    def to(self, device: torch.device | str) -> SeparableGaussian:
        moved = object.__new__(SeparableGaussian)
        moved.ky, moved.kx, moved.scale = self.ky.to(device), self.kx.to(device), self.scale.to(device)
        moved.symmetric, moved.weight = self.symmetric, self.weight
        return moved

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ky, self.kx, self.scale))


class GaussianAttention:
    """A normalised Gaussian kernel of per-pixel features, self excluded (as ``full``), applied by attention.

    Args:
        feats: (B, N, d) features (already divided by their bandwidths), float32 (float64 for gradient checks).
        weight: multiplies the normalised weights (a CRF's ``compat``).
        prune: skip the key ranges that are provably below ``e^-40`` (see module); default: on CPU only (on a GPU,
            one batched call for all images beats many small ones).
        chunk: queries per SDPA call when pruning.
    """

    def __init__(
        self, feats: torch.Tensor, weight: float = 1.0, prune: bool | None = None, chunk: int = QUERY_CHUNK
    ) -> None:
        b, n, _d = feats.shape
        self.weight = weight
        self.prune = feats.device.type != "cuda" if prune is None else prune
        self.order: torch.Tensor | None = None  # pruned: (B, N) the sorted pixel order, and its inverse
        self.inverse: torch.Tensor | None = None
        self.blocks: list[tuple[int, int, int, int, int]] = []  # pruned: (image, q0, q1, k0, k1), sorted order
        self.norm: torch.Tensor | None = None  # (B, N, 1) S^-1/2 once ``symmetric_normalization`` is called
        with exact_float32(feats.device):
            feats = feats - feats.mean(1, keepdim=True)
            if not self.prune:
                self.feats = feats
                self.queries = self._queries(feats)[:, None]  # (B, 1, N, d + 2)
                self.keys = self._keys(feats)[:, None]  # (B, 1, N + 1, d + 2)
                return
            proj, order = self._principal_projection(feats).sort(1)
            arange = torch.arange(n, device=order.device).expand(b, n)
            self.order, self.inverse = order, torch.empty_like(order).scatter_(1, order, arange)
            self.feats = feats.gather(1, order[..., None].expand_as(feats))
            for i, p in enumerate(proj):
                self.blocks += [(i, *r) for r in self._chunk_ranges(p, chunk)]
            # each block's features relative to its queries' mean (the kernel is translation invariant): smaller
            # scores, less float32 rounding
            self.centres = torch.stack([self.feats[i, q0:q1].mean(0) for i, q0, q1, _k0, _k1 in self.blocks])
            centred = [self.feats[i, q0:q1] - c for (i, q0, q1, _, _), c in zip(self.blocks, self.centres, strict=True)]
            self.queries = self._queries(torch.cat(centred)).view(b, 1, n, -1)
            self.keys = None

    @staticmethod
    def _queries(feats: torch.Tensor) -> torch.Tensor:
        """(..., L, d) features -> (..., L, d + 2) queries ``[f_i, 1, |f_i|^2 / 2]``."""
        return torch.cat([feats, torch.ones_like(feats[..., :1]), feats.pow(2).sum(-1, keepdim=True) / 2], -1)

    @staticmethod
    def _keys(feats: torch.Tensor) -> torch.Tensor:
        """(..., L, d) features -> (..., L + 1, d + 2) keys ``[f_j, -|f_j|^2 / 2, 0]`` and the sink ``[0, 0, 1]``."""
        keys = torch.cat([feats, feats.pow(2).sum(-1, keepdim=True) / -2, torch.zeros_like(feats[..., :1])], -1)
        sink = torch.zeros_like(keys[..., :1, :])
        sink[..., -1] = 1.0
        return torch.cat([keys, sink], -2)

    @staticmethod
    def _principal_projection(feats: torch.Tensor) -> torch.Tensor:
        """(B, N) projection of each image's centred features on their principal axis (a unit vector)."""
        _vals, vecs = torch.linalg.eigh((feats.transpose(1, 2) @ feats).double())
        return (feats * vecs[..., -1].to(feats.dtype)[:, None]).sum(2)

    @staticmethod
    def _chunk_ranges(proj: torch.Tensor, chunk: int) -> list[tuple[int, int, int, int]]:
        """(q0, q1, k0, k1) per chunk of sorted queries: the keys within ``PRUNE_RADIUS`` of any of its queries."""
        n = proj.numel()
        starts = torch.arange(0, n, chunk, device=proj.device)
        ends = (starts + chunk).clamp_max(n)
        lo = torch.searchsorted(proj, proj[starts] - PRUNE_RADIUS)
        hi = torch.searchsorted(proj, proj[ends - 1] + PRUNE_RADIUS, right=True)
        return [tuple(r) for r in torch.stack([starts, ends, lo, hi], 1).tolist()]

    def _attend(self, v: torch.Tensor) -> torch.Tensor:
        """(B, 1, N, V + 1) values, in the kernel's pixel order, last column 0 -> (B, 1, N, V + 1) ``[o_v, o_s]``
        (see module): the sink's value, 1 in the last column, is appended here."""
        sink = torch.zeros_like(v[..., :1, :])
        sink[..., -1] = 1.0
        if not self.prune:
            return _sdpa_all(self.queries, self.keys, torch.cat([v, sink], 2))
        outs = []
        for block, (i, q0, q1, k0, k1) in enumerate(self.blocks):
            keys = self._keys(self.feats[i, k0:k1] - self.centres[block])[None, None]
            values = torch.cat([v[i : i + 1, :, k0:k1], sink[:1]], 2)
            outs.append(_sdpa(self.queries[i : i + 1, :, q0:q1], keys, values))
        return torch.cat(outs, 2).view(v.shape)

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """(B, N, V) values -> (B, N, V) ``weight * sum_{j != i} k_ij v_j / S_i`` (differentiable in ``values``)."""
        with exact_float32(values.device):
            v = values.to(self.feats.dtype)
            if self.order is not None:
                v = v.gather(1, self.order[..., None].expand_as(v))
            o = self._attend(F.pad(v, (0, 1))[:, None])[:, 0]  # (B, N, V + 1)
            o_v, o_s = o[..., :-1], o[..., -1:]
            m = (o_v - v * o_s) / (1 - o_s) * self.weight
            if self.inverse is not None:
                m = m.gather(1, self.inverse[..., None].expand_as(m))
        return m.to(values.dtype)

    def sums(self, values: torch.Tensor) -> torch.Tensor:
        """(B, N, V) values -> (B, N, V) the unnormalised ``sum_j k_ij v_j`` over every pixel, self included
        (``weight`` not applied): ``o_v / o_s`` of one pass, both accurate to float32 rounding. No gradient."""
        with torch.no_grad(), exact_float32(values.device):
            v = values.to(self.feats.dtype)
            if self.order is not None:
                v = v.gather(1, self.order[..., None].expand_as(v))
            o = self._attend(F.pad(v, (0, 1))[:, None])[:, 0]  # (B, N, V + 1)
            total = o[..., :-1] / o[..., -1:]
            if self.inverse is not None:
                total = total.gather(1, self.inverse[..., None].expand_as(total))
        return total.to(values.dtype)

    def message(self, q: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) marginals -> (B, K, h, w) weighted messages: ``weight * sum_{j != i} k_ij q_j / S_i``, or with
        ``symmetric_normalization`` set, ``weight * n_i sum_j k_ij n_j q_j`` (``n = S^-1/2``, self included: the
        normalisation of ``pydensecrf``'s kernels)."""
        b, k, h, w = q.shape
        flat = q.flatten(2).transpose(1, 2)
        if self.norm is not None:
            return (self.sums(flat * self.norm) * self.norm * self.weight).transpose(1, 2).reshape(b, k, h, w)
        return self.apply(flat).transpose(1, 2).reshape(b, k, h, w)

    def symmetric_normalization(self) -> GaussianAttention:
        """Switch ``message`` to the symmetric normalisation (one attention pass for ``S``); returns ``self``."""
        ones = torch.ones_like(self.feats[..., :1])
        self.norm = self.sums(ones).rsqrt()  # (B, N, 1)
        return self

    def to(self, device: torch.device | str) -> GaussianAttention:
        moved = object.__new__(GaussianAttention)
        moved.__dict__.update({k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()})
        return moved

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.__dict__.values() if torch.is_tensor(v))


def position_features(
    b: int, h: int, w: int, sxy: float, pixel_step: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(B, N, 2) pixel positions in image pixels / sxy."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij"
    )
    return (torch.stack([ys, xs], -1).view(1, h * w, 2) * (pixel_step / sxy)).expand(b, -1, -1)


def bilateral_attention(
    image: torch.Tensor,
    sxy: float,
    srgb: float | None,
    pixel_step: float = 1.0,
    valid: torch.Tensor | None = None,
    weight: float = 1.0,
    prune: bool | None = None,
    dtype: torch.dtype = torch.float32,
    chunk: int = QUERY_CHUNK,
) -> GaussianAttention:
    """The attention form of ``crf.full_affinity`` (same arguments; ``weight`` = its ``scale``).

    Args:
        image: (B, 3, H, W) RGB 0..255 at the label resolution (only its shape matters when ``srgb`` is None).
        valid: optional (B, H, W) bool; valid and invalid pixels exchange (almost: e^-50) no weight.
        prune, chunk: see ``GaussianAttention``; dtype: of the features and scores (float64 for gradient checks).
    """
    b, _, h, w = image.shape
    feats = position_features(b, h, w, sxy, pixel_step, image.device, dtype)
    if srgb is not None:
        feats = torch.cat([feats, image.to(dtype).flatten(2).transpose(1, 2) / srgb], 2)
    if valid is not None:
        feats = torch.cat([feats, (~valid).flatten(1)[:, :, None].to(dtype) * _INVALID_FEATURE], 2)
    return GaussianAttention(feats, weight, prune, chunk)


class AttentionCRFKernel:
    """The CRF kernel of ``connectivity="attention"``: ``compat_g * gaussian + compat_b * bilateral``, exactly as
    ``crf.crf_kernel``'s full one, kept as features (memory linear in the pixels)."""

    def __init__(self, gaussian: SeparableGaussian, bilateral: GaussianAttention) -> None:
        self.gaussian, self.bilateral = gaussian, bilateral

    def message(self, q: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) marginals -> (B, K, h, w) messages (what ``full``'s ``q @ kernel^T`` gives)."""
        return self.gaussian.message(q).add_(self.bilateral.message(q))

    def to(self, device: torch.device | str) -> AttentionCRFKernel:
        return AttentionCRFKernel(self.gaussian.to(device), self.bilateral.to(device))

    @property
    def nbytes(self) -> int:
        return self.gaussian.nbytes + self.bilateral.nbytes

    def numel(self) -> int:  # with ``element_size``, sized like a tensor by ``lit.inference.CRFKernels.nbytes``
        return self.nbytes

    def element_size(self) -> int:
        return 1


def attention_crf_kernel(
    image: torch.Tensor, params: CRFParams, pixel_step: float = 1.0, prune: bool | None = None
) -> AttentionCRFKernel:
    """``crf.crf_kernel`` for ``connectivity="attention"``: (B, 3, H, W) RGB 0..255 at the label resolution."""
    _b, _, h, w = image.shape
    symmetric = params.normalization == "symmetric"
    gaussian = SeparableGaussian(h, w, params.gaussian_sxy, pixel_step, params.gaussian_compat, image.device, symmetric)
    bilateral = bilateral_attention(
        image, params.bilateral_sxy, params.bilateral_srgb, pixel_step, None, params.bilateral_compat, prune
    )
    return AttentionCRFKernel(gaussian, bilateral.symmetric_normalization() if symmetric else bilateral)


def attention_mean_field(
    unary: torch.Tensor, q: torch.Tensor, kernel: AttentionCRFKernel, iterations: int
) -> torch.Tensor:
    """Mean-field iterations ``q = softmax(unary + message(q))`` of (B, K, h, w) log-unaries and marginals
    (``crf.mean_field`` passes each image's allowed classes only). Returns the (B, K, h, w) marginals."""
    for _ in range(iterations):
        q = torch.softmax(unary + kernel.message(q), dim=1)
    return q


def attention_pairwise_loss(probs: torch.Tensor, kernel: GaussianAttention) -> torch.Tensor:
    """(B, K, h, w) probabilities -> (B, h, w) ``sum_{j != i} k_ij (1 - <p_i, p_j>)`` (``losses.pairwise_loss``),
    the rows' sums from a column of ones in the same pass."""
    b, _k, h, w = probs.shape
    flat = probs.flatten(2).transpose(1, 2)  # (B, N, K)
    m = kernel.apply(F.pad(flat, (0, 1), value=1.0))  # (B, N, K + 1)
    return (m[..., -1] - (flat * m[..., :-1]).sum(2)).view(b, h, w)
