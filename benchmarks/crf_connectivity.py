"""One dense CRF (10 mean-field iterations) per connectivity and label grid: time, peak memory, agreement.

Connectivities of ``method/crf.py`` side by side on a real photo (the first of ``../shared/data/coco128_train2017``,
else a synthetic one) with CAM-like maps from its mask, at label grids of a 321-px crop: ``local`` (9x9 window),
``full`` (the (B, N, N) kernel, only where it fits ``--full-max-mib``), ``attention`` (the same messages as full
by ``scaled_dot_product_attention``, linear memory; pruned on CPU, and on CUDA also with ``prune``:
``attention+prune``), what ``auto`` picks, and the
exact-lattice dense CRF of ``pydensecrf2`` (CPU, one image at a time) with the ratios to it. Each case runs in its
own subprocess, so its peak memory is its own: on CPU the growth of the process's peak RSS
(``resource.getrusage``) over what it held before the CRF, on CUDA ``torch.cuda.max_memory_allocated``. Labels are
compared with full's (where it ran) and pydensecrf2's.

    python -m benchmarks.crf_connectivity --md benchmarks/crf_connectivity.md   # CPU, one thread, 41 ... 321
    python -m benchmarks.crf_connectivity --device cuda --batch 4 --threads 16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._common import emit, machine_info, md_table, median, parse_cli, synchronize

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "coco128_train2017" / "VOC2012"
CROP = 321
CLASSES = 4  # CAM-like maps over the photo's classes, padded to this many with empty ones


# ------------------------------------------------------------------------------------------------ inputs
def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g, c = g / g.sum(), x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def inputs(size: int, batch: int) -> tuple[np.ndarray, torch.Tensor, str]:
    """(B, H, W, 3) uint8 photos and (B, K, H, W) CAM-like maps (blurred real masks, a smooth random field on top)."""
    from PIL import Image

    names = sorted(p.stem for p in (PHOTOS / "SegmentationClass").glob("*.png")) if PHOTOS.is_dir() else []
    images, regions = [], []
    for i in range(batch):
        if names:
            name = names[i % len(names)]
            image = Image.open(PHOTOS / "JPEGImages" / f"{name}.jpg").convert("RGB").resize((size, size))
            mask = np.array(Image.open(PHOTOS / "SegmentationClass" / f"{name}.png").resize((size, size), 0))
            mask[mask == 255] = 0
            _ids, mask = np.unique(mask, return_inverse=True)
            images.append(np.array(image))
            regions.append(np.minimum(mask.reshape(size, size), CLASSES - 1))
        else:  # a synthetic photo: four coloured quadrant-ish blobs and noise
            rng = np.random.default_rng(i)
            yy, xx = np.mgrid[0:size, 0:size] / size
            blob = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.08).astype(np.int64) + (xx > 0.7) * 2
            colours = rng.integers(30, 225, (CLASSES, 3))
            images.append(np.clip(colours[blob] + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8))
            regions.append(blob)
    source = f"photos {', '.join(names[: min(batch, len(names))])}" if names else "synthetic images"
    g = torch.Generator().manual_seed(0)
    onehot = F.one_hot(torch.from_numpy(np.stack(regions)).long(), CLASSES).permute(0, 3, 1, 2).float()
    probs = _blur(onehot, size / 20) * 0.8 + 0.2 / CLASSES
    probs = probs * torch.exp(1.5 * _blur(torch.randn(probs.shape, generator=g), size / 30))
    return np.stack(images), probs / probs.sum(1, keepdim=True), source


# ------------------------------------------------------------------------------------------- one case
def current_rss_kib() -> int:
    """This process's resident memory now (KiB), from /proc (0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0
    return pages * resource.getpagesize() // 1024


def peak_rss_kib() -> int:
    """This process's peak resident memory (KiB): /proc's ``VmHWM`` (which ``reset_peak_rss`` resets), else
    ``getrusage``'s ``ru_maxrss`` (the peak since the process started)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the process's resident high-water mark to what it holds now (Linux >= 4.0: ``clear_refs`` 5), so
    the next peak is the next run's own; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def crf_call(case: str, images: np.ndarray, probs: torch.Tensor, device: torch.device, params):
    """A function running one CRF of ``case`` on the batch, returning (B, K, H, W) probabilities on the CPU."""
    from asdt_lightning.method.crf import crf_kernel, mean_field
    from asdt_lightning.method.crf_attention import AttentionCRFKernel, attention_crf_kernel

    step = CROP / images.shape[1]
    if case == "pydensecrf2":
        from asdt_lightning.method.dense_crf import dense_crf_single

        scaled = dataclasses.replace(  # pydensecrf counts positions in label pixels
            params, gaussian_sxy=params.gaussian_sxy / step, bilateral_sxy=params.bilateral_sxy / step
        )
        p = probs.numpy()
        return lambda: torch.from_numpy(
            np.stack([dense_crf_single(im, q, scaled) for im, q in zip(images, p, strict=True)])
        )
    rgb = torch.from_numpy(images).permute(0, 3, 1, 2).float().to(device)
    probs = probs.to(device)
    if case.startswith("attention"):
        config = dataclasses.replace(params, connectivity="attention")
        prune = True if case == "attention+prune" else None  # None: the device's default

        def run():
            kernel = attention_crf_kernel(rgb, config, step, prune=prune)
            assert isinstance(kernel, AttentionCRFKernel)
            return mean_field(probs, kernel, config).cpu()

        return run
    config = dataclasses.replace(params, connectivity=case)
    return lambda: mean_field(probs, crf_kernel(rgb, config, step), config).cpu()


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    """The child's work: time and peak memory of ``args.case`` at ``args.size``; labels saved to ``args.labels``."""
    from asdt_lightning.method.crf import CRFParams

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    params = dataclasses.replace(CRFParams(), iterations=args.iterations)
    images, probs, _source = inputs(args.size, args.batch)
    # warm the code paths up on a tiny grid, then measure this process's memory growth from here on
    tiny_images, tiny_probs, _ = inputs(8, args.batch)
    crf_call(args.case, tiny_images, tiny_probs, device, params)()
    fn = crf_call(args.case, images, probs, device, params)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    reset = reset_peak_rss()
    peak_before = peak_rss_kib()
    rss_before = current_rss_kib()
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    seconds = [time.perf_counter() - start]
    peak_after = peak_rss_kib()
    # the peak is the CRF's if it raised the process's high-water mark; else the growth is at most the old gap
    growth = (peak_after - rss_before) / 1024
    result = {"peak_rss_growth_mib": growth, "peak_is_upper_bound": not reset and peak_after <= peak_before}
    if device.type == "cuda":
        result["peak_gpu_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    for _ in range(args.repeats - 1):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    np.save(args.labels, out.numpy())
    return {**result, "seconds": seconds}


# ---------------------------------------------------------------------------------------------- driver
def lscpu() -> str:
    """The CPU as ``lscpu`` names it (model, family / model / stepping, CPUs, caches), or '' without lscpu."""
    if not shutil.which("lscpu"):
        return ""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    keys = ("Model name", "CPU family", "Model", "Stepping", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache")
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return "; ".join(f"{k}: {fields[k].strip()}" for k in keys if k in fields)


def full_fits(size: int, batch: int, max_mib: float) -> bool:
    """Whether full's kernels, the (1, N, N) Gaussian and the (B, N, N) bilateral, fit ``max_mib``."""
    return 4 * (batch + 1) * (size * size) ** 2 <= max_mib * 2**20


def repeats_at(size: int, args: argparse.Namespace) -> int:
    return args.repeats if size <= 81 else args.big_repeats


def run(args: argparse.Namespace) -> dict[str, Any]:
    from asdt_lightning.method.crf import resolve_connectivity

    result: dict[str, Any] = {"machine": machine_info(), "command": args.command, "device": args.device}
    result["lscpu"] = lscpu()
    if args.device == "cuda" and not torch.cuda.is_available():
        result["status"] = "not measured: no GPU"
        return result
    try:
        import pydensecrf.densecrf  # noqa: F401

        dense = True
    except ImportError:
        dense = False
    result.update(status="measured", threads=args.threads, batch=args.batch, iterations=args.iterations, sizes=[])
    result["source"] = inputs(8, args.batch)[2]
    attention_cases = ["attention", "attention+prune"] if args.device == "cuda" else ["attention"]
    deadline = time.monotonic() + args.max_seconds if args.max_seconds > 0 else math.inf
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            cases = ["local"] + (["full"] if full_fits(size, args.batch, args.full_max_mib) else []) + attention_cases
            cases += ["pydensecrf2"] if dense else []
            entry: dict[str, Any] = {"size": size, "auto": resolve_connectivity("auto", args.batch, size, size)}
            entry["cases"] = {}
            for case in cases:
                labels = Path(tmp) / f"{case}-{size}.npy"
                device = "cpu" if case == "pydensecrf2" else args.device
                cmd = [sys.executable, "-m", "benchmarks.crf_connectivity", "--case", case, "--size", str(size)]
                cmd += ["--device", device, "--batch", str(args.batch), "--iterations", str(args.iterations)]
                cmd += ["--threads", str(1 if case == "pydensecrf2" else args.threads)]
                cmd += ["--repeats", str(repeats_at(size, args)), "--labels", str(labels)]
                left = deadline - time.monotonic()
                try:
                    if left <= 0:
                        raise subprocess.TimeoutExpired(cmd, 0)
                    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=min(left, 1e6))
                except subprocess.TimeoutExpired:
                    entry["cases"][case] = {"error": [f"not run: --max-seconds {args.max_seconds:g} spent"]}
                    print(f"{size} {case}: {entry['cases'][case]['error'][0]}", flush=True)
                    continue
                if proc.returncode != 0:
                    entry["cases"][case] = {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
                    print(f"{size} {case}: failed {entry['cases'][case]['error']}", flush=True)
                    continue
                entry["cases"][case] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{size} {case}: {entry['cases'][case]}", flush=True)
            outputs = {
                c: np.load(Path(tmp) / f"{c}-{size}.npy") for c in entry["cases"] if "error" not in entry["cases"][c]
            }
            for case, out in outputs.items():
                row = entry["cases"][case]
                for ref in ("full", "pydensecrf2"):
                    if ref in outputs and ref != case:
                        row[f"labels_equal_{ref}"] = float((out.argmax(1) == outputs[ref].argmax(1)).mean())
                        if ref == "full":
                            row["max_abs_prob_diff_full"] = float(np.abs(out - outputs[ref]).max())
            result["sizes"].append(entry)
    return result


def markdown(result: dict[str, Any]) -> str:
    title = f"### Dense CRF per connectivity ({result['device']})"
    cmd = f"Command: `{result['command']}`"
    if result["status"] != "measured":
        return f"{title}\n\n{cmd}\n\n**{result['status']}**\n"
    gpu = result["device"] == "cuda"
    rows = []
    for entry in result["sizes"]:
        size = entry["size"]
        dense = entry["cases"].get("pydensecrf2", {})
        dense_s = median(dense["seconds"]) if "seconds" in dense else None
        for case, r in entry["cases"].items():
            name = case + (" (= auto)" if case == entry["auto"] else "")
            if "error" in r:
                rows.append([f"{size}x{size}", name, "failed: " + " ".join(r["error"])[:80]] + [""] * (6 if gpu else 5))
                continue
            s = median(r["seconds"])
            mem = f"{'<= ' if r.get('peak_is_upper_bound') else ''}{r['peak_rss_growth_mib']:.0f}"
            row = [f"{size}x{size} ({size * size})", name, f"{1000 * s:.1f}", mem]
            if gpu:
                row.append(f"{r['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in r else "-")
            row.append(f"{s / dense_s:.1f}x" if dense_s and case != "pydensecrf2" else "-")
            row.append(f"{100 * r['labels_equal_full']:.2f}%" if "labels_equal_full" in r else "-")
            row.append(f"{r['max_abs_prob_diff_full']:.1e}" if "max_abs_prob_diff_full" in r else "-")
            row.append(f"{100 * r['labels_equal_pydensecrf2']:.2f}%" if "labels_equal_pydensecrf2" in r else "-")
            rows.append(row)
    header = ["label grid (N)", "connectivity", "ms / CRF", "peak RSS growth MiB"]
    header += ["peak GPU MiB"] if gpu else []
    header += ["time / pydensecrf2", "labels = full", "max abs prob diff to full", "labels = pydensecrf2"]
    machine = f"Machine: `{json.dumps(result['machine'])}`" + (f"; lscpu: {result['lscpu']}" if result["lscpu"] else "")
    return (
        f"{title}\n\n{cmd}\n\n{machine}.\n\nTeacher A's CRF (``CRFParams()``: sxy 3 / 80, srgb 13, compat 3 / 10), "
        f"{result['iterations']} mean-field iterations, batch {result['batch']}, label grids of a {CROP}-px crop "
        f"(pixel_step = {CROP} / grid); {result['source']} with CAM-like maps from their masks ({CLASSES} labels). "
        f"{result['threads']} thread(s) for the PyTorch CRFs, pydensecrf2 on one core (one image at a time, CPU). "
        "Each case in its own process: median of its runs (fewer at 161 and above); peak RSS growth = the process's "
        "peak resident memory (``VmHWM``, reset just before through ``/proc/self/clear_refs``; else ``getrusage``) "
        "during the first run minus its resident memory just before it; on CUDA also the "
        "allocator's peak. `full` only where its kernels fit; `(= auto)` marks what `connectivity=auto` picks. "
        "`attention` skips the key ranges below e^-40 on CPU (its default there), not on CUDA (one batched call); "
        "`attention+prune` prunes on CUDA too.\n\n" + md_table(header, rows) + "\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[41, 81, 161, 321], help="label grid sides")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="runs per case up to 81x81")
    p.add_argument("--big-repeats", type=int, default=1, help="runs per case at 161x161 and above")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--full-max-mib", type=float, default=6144, help="run full only where its kernels fit this")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # the child: one connectivity at one size
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--labels", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=0, help="cases not finished by then are left out (0: none)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    args = parse_cli(p, argv, "crf_connectivity")
    if args.case:
        print(json.dumps(run_case(args)))
        return {}
    result = run(args)
    emit(args, markdown(result), result)
    return result


if __name__ == "__main__":
    main()
