"""What bounds the training-loop CRF: kernel construction vs mean-field iterations, the window, the message method.

At the label shapes of the training-step benchmark, the local CRF (``mean_field_crf`` in ``method/crf.py``) is split
into its kernel (``crf_kernel``) and its iterations (``message_passing`` + softmax); the fully connected CRF
(``connectivity="full"``: a (B, N, N) kernel and batched matrix products) is timed beside it, its kernel built in
one reused buffer as the training step builds it (``kernel_buffer``: no fresh pages each call). Each iteration's
message with ``"unfold"`` materialises (B, K, window^2, h, w) floats twice (the neighbours and their product with
the kernel); the table gives that traffic and the bandwidth it implies, and compares the ``"shift"`` method
(no large temporary).

    python -m benchmarks.crf_profile                    # CPU, the default config's label shapes
    python -m benchmarks.crf_profile --device cuda --shape 4x21x41
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from asdt_lightning.method.crf import CRFParams, crf_kernel, kernel_buffer, mean_field, mean_field_crf, message_passing
from benchmarks._common import emit, machine_info, md_table, median, parse_cli, timed

METHODS = ("unfold", "shift")


def profile_shape(
    b: int, k: int, h: int, params: CRFParams, device: torch.device, repeats: int, pixel_step: float
) -> dict[str, Any]:
    """Times (seconds, medians) of one CRF at (b, k, h, h) with each message method, and their agreement."""
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(b, 3, h, h, generator=g) * 255).to(device)
    probs = torch.softmax(torch.randn(b, k, h, h, generator=g) * 3, 1).to(device)
    kernel = crf_kernel(image, params, pixel_step)
    out: dict[str, Any] = {"shape": [b, k, h, h], "window": params.window, "iterations": params.iterations}
    runs: dict[str, list[float]] = {f"crf[{m}]": [] for m in METHODS}
    runs.update({f"message[{m}]": [] for m in METHODS})
    runs["kernel"] = []
    runs["kernel[full]"] = []
    runs["crf[full]"] = []
    full = dataclasses.replace(params, connectivity="full")
    buffer = kernel_buffer({}, "full", image)

    def full_crf() -> torch.Tensor:
        return mean_field(probs, crf_kernel(image, full, pixel_step, buffer), full)

    for r in range(repeats + 1):  # round 0 warms up
        sample = {"kernel": timed(lambda: crf_kernel(image, params, pixel_step), device)}
        sample["kernel[full]"] = timed(lambda: crf_kernel(image, full, pixel_step, buffer), device)
        sample["crf[full]"] = timed(full_crf, device)
        for m in METHODS:
            sample[f"crf[{m}]"] = timed(lambda m=m: mean_field_crf(image, probs, params, pixel_step, method=m), device)
            sample[f"message[{m}]"] = timed(lambda m=m: message_passing(probs, kernel, params.window, m), device)
        if r:
            for name, value in sample.items():
                runs[name].append(value)
    out["seconds"] = {name: median(v) for name, v in runs.items()}
    reference = mean_field_crf(image, probs, full, pixel_step)  # a kernel in fresh memory, the same numbers
    out["full_buffer_max_abs_diff"] = float((full_crf() - reference).abs().max())
    ref = mean_field_crf(image, probs, params, pixel_step, method="unfold")
    shifted = mean_field_crf(image, probs, params, pixel_step, method="shift")
    out["max_abs_diff"] = float((shifted - ref).abs().max())
    out["unfold_bytes_per_iteration"] = 2 * b * k * params.window**2 * h * h * 4  # neighbours + product, float32
    return out


def top_ops(b: int, k: int, h: int, params: CRFParams, device: torch.device, method: str) -> str:
    """The profiler's op table (self time) of one CRF call."""
    from torch.profiler import ProfilerActivity, profile

    image = torch.rand(b, 3, h, h, device=device) * 255
    probs = torch.softmax(torch.randn(b, k, h, h, device=device), 1)
    mean_field_crf(image, probs, params, 8.0, method=method)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        mean_field_crf(image, probs, params, 8.0, method=method)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=8, max_name_column_width=28)


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine_info(), "command": args.command, "device": args.device}
    if args.device == "cuda" and not torch.cuda.is_available():
        result["status"] = "not measured: no GPU"
        return result
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    result.update(status="measured", threads=torch.get_num_threads(), shapes=[])
    for shape in args.shape:
        b, k, h = (int(x) for x in shape.split("x"))
        for window in args.windows:
            params = CRFParams(iterations=args.iterations, window=window, connectivity="local")
            result["shapes"].append(profile_shape(b, k, h, params, device, args.repeats, args.pixel_step))
    b, k, h = (int(x) for x in args.shape[-1].split("x"))
    local = CRFParams(iterations=args.iterations, connectivity="local")
    result["top_ops"] = {m: top_ops(b, k, h, local, device, m) for m in METHODS}
    return result


def markdown(result: dict[str, Any]) -> str:
    title = f"### CRF profile ({result['device']})"
    cmd = f"Command: `{result['command']}`"
    if result["status"] != "measured":
        return f"{title}\n\n{cmd}\n\n**{result['status']}**\n"
    rows = []
    for s in result["shapes"]:
        sec = s["seconds"]
        iters = s["iterations"]
        rows.append(
            [
                "x".join(str(x) for x in s["shape"]),
                s["window"],
                f"{1000 * sec['kernel']:.2f}",
                f"{1000 * sec['message[unfold]']:.2f}",
                f"{1000 * sec['message[shift]']:.2f}",
                f"{1000 * sec['crf[unfold]']:.1f}",
                f"{1000 * sec['crf[shift]']:.1f}",
                f"{sec['crf[unfold]'] / sec['crf[shift]']:.1f}x",
                f"{1000 * sec['kernel[full]']:.2f}",
                f"{1000 * sec['crf[full]']:.1f}",
                f"{s['unfold_bytes_per_iteration'] / 2**20:.1f}",
                f"{s['unfold_bytes_per_iteration'] * 2 / sec['message[unfold]'] / 1e9:.1f}",
                f"{s['max_abs_diff']:.1e}",
            ]
        )
        del iters
    header = [
        "B x K x h x w",
        "window",
        "kernel ms",
        "message ms (unfold)",
        "message ms (shift)",
        "CRF ms (unfold)",
        "CRF ms (shift)",
        "speed-up",
        "kernel ms (full)",
        "CRF ms (full)",
        "unfold temporaries MiB / iteration",
        "implied GB/s (unfold, write + read)",
        "max abs diff",
    ]
    it = result["shapes"][0]["iterations"]
    ops = "\n\n".join(
        f"Top ops of one CRF, method `{m}` (last shape, window 9):\n\n```\n{t}\n```"
        for m, t in result["top_ops"].items()
    )
    return (
        f"{title}\n\n{cmd}\n\n{it} mean-field iterations, {result['threads']} thread(s); median of the repeats. "
        "'CRF' = kernel + all iterations of ``mean_field_crf``; 'message' = one local ``message_passing`` "
        "call; '(full)' = fully connected (``connectivity=full``), the default config's choice.\n\n"
        + md_table(header, rows)
        + "\n\n"
        + ops
        + "\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", action="append", default=None, help="BxKxh (label resolution), repeatable")
    p.add_argument("--windows", type=int, nargs="+", default=[5, 9])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--pixel-step", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    args = parse_cli(p, argv, "crf_profile")
    args.shape = args.shape or ["8x7x32", "4x7x24"]
    result = run(args)
    emit(args, markdown(result), result)
    return result


if __name__ == "__main__":
    main()
