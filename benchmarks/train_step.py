"""Training-step time and peak memory of ASDT against the backbone-only lower bound and the two-model setup.

Every variant runs the package's own code: ``ASDTModule.training_step`` (network, multi-scale CAMs, teacher A's
reliable labels with two CRFs, teacher B's CRF labels on B-steps, balanced CE, pairwise losses, classification
loss), then ``backward`` and the optimiser step built from ``ASDTModule.parameter_groups``. Variants:

- ``lower bound``: backbone + CAM head + classification loss (``net.backbone``, ``net.cam_head``,
  ``classification_loss``), optimiser over those parameters only;
- ``ASDT``: the module as configured (multi-scale training CAMs); ``ASDT 1-scale``: ``cam_scales=[1.0]``;
- ``two-model``: the same ``training_step`` with the network swapped for a separate classifier (backbone + CAM
  head: CAMs, class logits, extra CAM scales) and a separate refinement network with its own backbone (R and S
  heads), i.e. the conventional pipeline doing the same work in one step.

Variants are timed side by side in one process, interleaved (the order rotates every repeat), median of
``--repeats`` after ``--warmup`` rounds; ratios are paired per repeat. A second, instrumented pass times each part
(explicit sections with device synchronisation, by wrapping the functions ``training_step`` calls and hooking the
network's modules). Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the PyTorch profiler's memory
timeline on CPU.

    python -m benchmarks.train_step                       # ResNet-18 on CPU, default config, several sizes
    python -m benchmarks.train_step --preset cpu-bf16     # the same at bf16 autocast (AMX / AVX512-BF16 CPUs)
    python -m benchmarks.train_step --preset gpu          # ResNet-101, voc_paper settings, crop 321, bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asdt_lightning.lit.optim import build_optimizer
from benchmarks._common import (
    compose_config,
    machine_info,
    md_table,
    median,
    quiet_lightning,
    shown_args,
    synchronize,
)

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "device": "cpu",
        "overrides": ["model.loss.classifier_warmup=0"],
        "sizes": ["4x128", "8x128", "4x192"],
        "breakdown_size": "8x128",
        "precision": "32",
        "channels_last": False,
    },
    "cpu-bf16": {  # what the default run uses on CPUs with AMX / AVX512-BF16 (trainer.precision=auto)
        "device": "cpu",
        "overrides": ["model.loss.classifier_warmup=0"],
        "sizes": ["8x128"],
        "breakdown_size": "8x128",
        "precision": "bf16",
        "channels_last": False,
    },
    "gpu": {
        "device": "cuda",
        "overrides": ["experiment=voc_paper", "backbone=resnet101", "model.loss.classifier_warmup=0"],
        "sizes": ["4x321", "8x321"],
        "breakdown_size": "4x321",
        "precision": "bf16",
        "channels_last": True,
    },
    "tiny": {  # for the test suite: seconds, not a measurement
        "device": "cpu",
        "overrides": [
            "model.loss.classifier_warmup=0",
            "model.net.head_channels=8",
            "model.teacher_a.crf.iterations=1",
            "model.teacher_b.crf.iterations=1",
        ],
        "sizes": ["2x32"],  # batch 2: at output stride 16 the 0.5-scale CAM's layer4 is 1x1, BatchNorm needs 2
        "breakdown_size": "2x32",
        "precision": "32",
        "channels_last": False,
    },
}

LOWER = "lower bound"
ASDT = "ASDT"
ASDT_1 = "ASDT 1-scale"
TWO = "two-model"


# ------------------------------------------------------------------------------------------------ building
class TwoModelNet(nn.Module):
    """The conventional setup behind ``ASDTNet``'s interface: a classifier network gives the CAMs and class
    logits (and the extra CAM scales), a separate refinement network with its own backbone gives R and S."""

    def __init__(self, classifier: nn.Module, refiner: nn.Module) -> None:
        super().__init__()
        self.classifier, self.refiner = classifier, refiner
        self.num_labels = refiner.num_labels
        self.has_background = refiner.has_background

    @property
    def output_stride(self) -> int:
        return self.refiner.output_stride

    def head_modules(self) -> list[nn.Module]:
        return [self.classifier.cam_head, self.refiner.refine_head, self.refiner.student_head]

    def forward(self, images: torch.Tensor):
        from asdt_lightning.models.asdt import ASDTOutput

        cams, class_logits = self.classifier.cam_head(self.classifier.backbone(images))
        low_level, features = self.refiner.backbone(images, with_low_level=True)
        low_level = low_level if self.refiner.skip_channels else None
        refine = self.refiner.refine_head(features, low_level)
        return ASDTOutput(cams, class_logits, refine, self.refiner.student_head(features, low_level))

    def forward_cams(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.forward_cams(images)


def make_optimizer(module: Any, keep: Callable[[nn.Parameter], bool] | None = None) -> torch.optim.Optimizer:
    """The optimiser of ``ASDTModule.configure_optimizers`` (same groups and settings) without a Trainer."""
    groups = []
    for g in module.parameter_groups():
        params = [p for p in g["params"] if keep is None or keep(p)]
        if params:
            groups.append({**g, "params": params})
    o = module.optim
    return build_optimizer(o.name, groups, o.lr, o.momentum)


@dataclass
class Setting:
    device: torch.device
    precision: str  # "32" or "bf16"
    channels_last: bool
    compile: bool
    cfg: dict[str, Any]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass
class Variant:
    """One benchmarked training step: ``run(batch, source)`` does forward, labels, losses, backward, step."""

    name: str
    module: Any
    optimizer: torch.optim.Optimizer
    lower_bound: bool = False
    sources: tuple[int, ...] = (0, 1)
    extra: dict[str, Any] = field(default_factory=dict)

    def run(self, batch: dict[str, torch.Tensor], source: int, setting: Setting) -> None:
        with setting.autocast():
            if self.lower_bound:
                loss = lower_bound_loss(self.module, batch)
            else:
                self.module.set_teacher(0, source)  # no Trainer: global_step is 0
                loss = self.module.training_step(batch, 0)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def lower_bound_loss(module: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Backbone + CAM head + multi-label soft-margin loss: the classifier every WSSS method trains."""
    from asdt_lightning.method.losses import classification_loss

    net = module.net
    _cams, class_logits = net.cam_head(net.backbone(batch["image"]))
    return classification_loss(class_logits.float(), batch["labels"])


def build_variants(setting: Setting, class_names: list[str]) -> list[Variant]:
    from asdt_lightning.train import build_module

    cfg = setting.cfg

    def module(cam_scales: list[float] | None = None) -> Any:
        plain = {**cfg, "model": {**cfg["model"], **({"cam_scales": cam_scales} if cam_scales else {})}}
        m = build_module(plain, class_names).to(setting.device)
        return m.to(memory_format=torch.channels_last) if setting.channels_last else m

    lower = module([1.0])
    keep_ids = {id(p) for p in [*lower.net.backbone.parameters(), *lower.net.cam_head.parameters()]}
    asdt, asdt_1 = module(), module([1.0])
    two = module()
    two.net = TwoModelNet(two.net, module().net)
    if setting.compile:
        for m in (lower, asdt, asdt_1):
            m.net.backbone = torch.compile(m.net.backbone)
        two.net.classifier.backbone = torch.compile(two.net.classifier.backbone)
        two.net.refiner.backbone = torch.compile(two.net.refiner.backbone)
    return [
        Variant(LOWER, lower, make_optimizer(lower, lambda p: id(p) in keep_ids), lower_bound=True, sources=(0,)),
        Variant(ASDT, asdt, make_optimizer(asdt)),
        Variant(ASDT_1, asdt_1, make_optimizer(asdt_1)),
        Variant(TWO, two, make_optimizer(two)),
    ]


def make_batch(batch: int, crop: int, num_classes: int, setting: Setting, seed: int = 0) -> dict[str, torch.Tensor]:
    """A DataModule-shaped batch: normalised noise images, 1-3 classes per image, a padded band at the right."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, crop, crop, generator=g)
    labels = torch.zeros(batch, num_classes)
    for i in range(batch):
        k = int(torch.randint(1, min(3, num_classes) + 1, (1,), generator=g))
        labels[i, torch.randperm(num_classes, generator=g)[:k]] = 1.0
    valid = torch.ones(batch, crop, crop, dtype=torch.bool)
    valid[:, :, crop - crop // 16 :] = False
    out = {"image": images, "labels": labels, "valid": valid}
    out = {k: v.to(setting.device) for k, v in out.items()}
    if setting.channels_last:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


def step_kinds(variants: list[Variant]) -> list[tuple[str, Variant, int]]:
    """(label, variant, teacher source) for every timed step type."""
    kinds = []
    for v in variants:
        for s in v.sources:
            kinds.append((v.name if v.lower_bound else f"{v.name} [{'AB'[s]}]", v, s))
    return kinds


# ------------------------------------------------------------------------------------------------- timing
def time_interleaved(
    kinds: list[tuple[str, Variant, int]], batch: dict, setting: Setting, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Per-kind step seconds over ``repeats`` rounds (after ``warmup`` rounds); the order rotates each round."""
    times: dict[str, list[float]] = defaultdict(list)
    for r in range(warmup + repeats):
        order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
        for label, variant, source in order:
            synchronize(setting.device)
            start = time.perf_counter()
            variant.run(batch, source, setting)
            synchronize(setting.device)
            if r >= warmup:
                times[label].append(time.perf_counter() - start)
    return dict(times)


def peak_memory(variant: Variant, batch: dict, source: int, setting: Setting) -> dict[str, float]:
    """Peak memory (MiB) of one step: on a GPU the allocator's peak; on CPU the profiler's memory timeline."""
    state = sum(p.numel() * p.element_size() for p in variant.module.parameters())
    state += sum(
        t.numel() * t.element_size() for s in variant.optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    if setting.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(setting.device)
        base = torch.cuda.memory_allocated(setting.device)
        variant.run(batch, source, setting)
        synchronize(setting.device)
        peak = torch.cuda.max_memory_allocated(setting.device)
        return {"peak_mib": peak / 2**20, "step_extra_mib": (peak - base) / 2**20, "state_mib": state / 2**20}
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
        variant.run(batch, source, setting)
    _times, sizes = MemoryProfileTimeline(p._memory_profile())._coalesce_timeline(torch.device("cpu"))
    peak = max(sum(s) for s in sizes) if sizes else 0
    return {"peak_mib": peak / 2**20, "state_mib": state / 2**20}


# ---------------------------------------------------------------------------------------------- breakdown
class Sections:
    """Exclusive seconds per named section; sections nest (a child's time is not its parent's)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stack: list[list[Any]] = []  # [name, start, child seconds]
        self.seconds: dict[str, float] = defaultdict(float)

    def begin(self, name: str) -> None:
        synchronize(self.device)
        self.stack.append([name, time.perf_counter(), 0.0])

    def end(self, name: str) -> None:
        synchronize(self.device)
        top, start, child = self.stack.pop()
        assert top == name, f"section {name!r} ended inside {top!r}"
        elapsed = time.perf_counter() - start
        self.seconds[name] += elapsed - child
        if self.stack:
            self.stack[-1][2] += elapsed

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self.begin(name)
        try:
            yield
        finally:
            self.end(name)

    def parent(self) -> str | None:
        return self.stack[-1][0] if self.stack else None


@contextlib.contextmanager
def instrumented(variant: Variant, sections: Sections) -> Iterator[Callable[[], None]]:
    """Wrap the functions ``training_step`` calls and hook the network's modules to time each part."""
    import asdt_lightning.lit.module as lit_module
    import asdt_lightning.method.cam as cam

    patches: list[tuple[Any, str, Any]] = []
    handles: list[Any] = []
    crf_calls: dict[str, int] = defaultdict(int)

    def patch(owner: Any, attr: str, name: str | Callable[..., str]) -> None:
        original = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with sections.section(name(*args, **kwargs) if callable(name) else name):
                return original(*args, **kwargs)

        patches.append((owner, attr, original))
        setattr(owner, attr, wrapper)

    def kernel_name(*args: Any, **kwargs: Any) -> str:
        return "CRF A kernel (both alphas)" if args[1] is variant.module.teacher_a.crf else "CRF B kernel"

    def crf_name(*args: Any, **kwargs: Any) -> str:
        parent = sections.parent() or ""
        if parent.startswith("teacher A"):
            crf_calls[parent] += 1
            return ["CRF A (alpha low)", "CRF A (alpha high)"][min(crf_calls[parent] - 1, 1)]
        return "CRF B"

    patch(lit_module, "reliable_cam_labels", "teacher A labels (excl. CRFs)")
    patch(lit_module, "refinement_teacher_labels", "teacher B labels (excl. CRF)")
    patch(lit_module, "normalize_cams", "normalise CAMs")
    patch(lit_module, "crf_kernel", kernel_name)
    patch(cam, "mean_field", crf_name)
    patch(lit_module, "mean_field", "CRF B")  # soft distillation's
    patch(lit_module, "pairwise_kernel", "loss: pairwise kernel")
    patch(lit_module, "balanced_cross_entropy", "loss: balanced CE")
    patch(lit_module, "soft_distillation", "loss: soft distillation")
    patch(lit_module, "pairwise_loss", "loss: pairwise")
    patch(lit_module, "classification_loss", "loss: classification")
    module = variant.module
    patch(module, "training_cams", "extra CAM scales (no-grad fwd)")
    patch(module, "rgb_at", "resize RGB / valid")
    patch(module, "valid_at", "resize RGB / valid")

    net = module.net
    parts = [("backbone fwd", net.backbone), ("CAM head fwd", net.cam_head)]
    if hasattr(net, "refine_head"):
        parts += [("R + S heads fwd", net.refine_head), ("R + S heads fwd", net.student_head)]
    for label, part in parts:

        def pre(_m: nn.Module, _inputs: Any, label: str = label) -> None:
            if torch.is_grad_enabled():  # the no-grad extra scales belong to "extra CAM scales"
                sections.begin(label)

        def post(_m: nn.Module, _inputs: Any, _out: Any, label: str = label) -> None:
            if torch.is_grad_enabled():
                sections.end(label)

        handles += [part.register_forward_pre_hook(pre), part.register_forward_hook(post)]

    first_head_grad = [False]

    def head_grad(*_args: Any) -> None:
        if not first_head_grad[0] and sections.parent() == "backward: losses":
            first_head_grad[0] = True
            sections.end("backward: losses")
            sections.begin("backward: heads")

    def backbone_grad(*_args: Any) -> None:
        if sections.parent() in ("backward: heads", "backward: losses"):
            sections.end(sections.parent())
            sections.begin("backward: backbone")

    heads = [net.cam_head] + ([net.refine_head, net.student_head] if hasattr(net, "refine_head") else [])
    handles += [h.register_full_backward_pre_hook(head_grad) for h in heads]
    handles.append(net.backbone.register_full_backward_pre_hook(backbone_grad))

    def reset() -> None:
        crf_calls.clear()
        first_head_grad[0] = False

    try:
        yield reset
    finally:
        for owner, attr, original in reversed(patches):
            if owner is module:
                delattr(owner, attr)  # drop the instance attribute, back to the class's method
            else:
                setattr(owner, attr, original)
        for h in handles:
            h.remove()


def instrumented_step(variant: Variant, batch: dict, source: int, setting: Setting) -> dict[str, float]:
    """One step of ``variant`` with every part timed; returns exclusive seconds per part (and ``total``)."""
    sections = Sections(setting.device)
    with instrumented(variant, sections) as reset:
        reset()
        synchronize(setting.device)
        start = time.perf_counter()
        with setting.autocast(), sections.section("training_step other (glue, logging)"):
            if variant.lower_bound:
                loss = lower_bound_loss(variant.module, batch)
            else:
                variant.module.set_teacher(0, source)
                loss = variant.module.training_step(batch, 0)
        sections.begin("backward: losses")
        loss.backward()
        sections.end(sections.parent())  # whichever backward part ran last
        with sections.section("optimizer step"):
            variant.optimizer.step()
            variant.optimizer.zero_grad(set_to_none=True)
        synchronize(setting.device)
        total = time.perf_counter() - start
    return {**sections.seconds, "total": total}


LABEL_PARTS = (
    "normalise CAMs",
    "teacher A labels (excl. CRFs)",
    "CRF A kernel (both alphas)",
    "CRF A (alpha low)",
    "CRF A (alpha high)",
)
LABEL_PARTS_B = ("teacher B labels (excl. CRF)", "CRF B kernel", "CRF B")


def breakdown(kinds: list[tuple[str, Variant, int]], batch: dict, setting: Setting, repeats: int) -> dict:
    """Median exclusive seconds per part for every step kind except the two-model one (interleaved rounds)."""
    runs: dict[str, list[dict[str, float]]] = defaultdict(list)
    chosen = [k for k in kinds if k[1].name != TWO]
    for r in range(repeats + 1):
        for label, variant, source in chosen[r % len(chosen) :] + chosen[: r % len(chosen)]:
            result = instrumented_step(variant, batch, source, setting)
            if r > 0:
                runs[label].append(result)
    out = {}
    for label, results in runs.items():
        names = sorted({n for res in results for n in res})
        out[label] = {n: median([res.get(n, 0.0) for res in results]) for n in names}
    return out


# ------------------------------------------------------------------------------------------------ report
def run(args: argparse.Namespace) -> dict[str, Any]:
    preset = PRESETS[args.preset]
    device_name = args.device or preset["device"]
    result: dict[str, Any] = {"preset": args.preset, "machine": machine_info(), "command": args.command}
    if device_name == "cuda" and not torch.cuda.is_available():
        result["status"] = "not measured: no GPU"
        return result
    quiet_lightning()
    if device_name == "cpu":
        torch.set_num_threads(args.threads)
    overrides = preset["overrides"] + list(args.override)
    cfg = compose_config(overrides)
    from asdt_lightning.data.registry import dataset_class_names

    class_names = cfg["dataset"]["class_names"] or dataset_class_names(cfg["dataset"]["name"])
    setting = Setting(
        device=torch.device(device_name),
        precision=args.precision or preset["precision"],
        channels_last=preset["channels_last"] if args.channels_last is None else args.channels_last,
        compile=args.compile,
        cfg=cfg,
    )
    if setting.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    variants = build_variants(setting, class_names)
    kinds = step_kinds(variants)
    sizes = args.sizes.split(",") if args.sizes else preset["sizes"]
    result.update(
        status="measured",
        overrides=overrides,
        device=str(setting.device),
        threads=torch.get_num_threads(),
        precision=setting.precision,
        channels_last=setting.channels_last,
        compile=setting.compile,
        backbone=cfg["backbone"]["name"],
        output_stride=cfg["backbone"]["output_stride"],
        cam_scales=cfg["model"]["cam_scales"],
        num_classes=len(class_names),
        crf_a=cfg["model"]["teacher_a"]["crf"],
        crf_b=cfg["model"]["teacher_b"]["crf"],
        pwm_duty=cfg["pwm"]["duty"],
        repeats=args.repeats,
        warmup=args.warmup,
        sizes={},
    )
    for size in sizes:
        b, crop = (int(x) for x in size.split("x"))
        batch = make_batch(b, crop, len(class_names), setting)
        measured = time_interleaved(kinds, batch, setting, args.repeats, args.warmup)
        times = {label: measured[label] for label, _v, _s in kinds}
        entry: dict[str, Any] = {"seconds": times, "memory": {}}
        if not args.no_memory:
            for label, variant, source in kinds:  # a B-step does all of an A-step's work and one CRF more
                if variant.lower_bound or source == 1:
                    entry["memory"][label] = peak_memory(variant, batch, source, setting)
        if size == (args.breakdown_size or preset["breakdown_size"]) and not args.no_breakdown:
            entry["breakdown"] = breakdown(kinds, batch, setting, args.breakdown_repeats)
        result["sizes"][size] = entry
    return result


def ratio_stats(times: dict[str, list[float]], label: str) -> tuple[float, float, float]:
    """Median and min/max over repeats of the paired ratio ``label / lower bound``."""
    pairs = [t / lb for t, lb in zip(times[label], times[LOWER], strict=True)]
    return median(pairs), min(pairs), max(pairs)


def duty_ratio(times: dict[str, list[float]], name: str, duty: float) -> float:
    """``(1 - d) * ratio(A) + d * ratio(B)`` from the paired ratios (robust to load, unlike raw medians)."""
    return (1 - duty) * ratio_stats(times, f"{name} [A]")[0] + duty * ratio_stats(times, f"{name} [B]")[0]


def markdown(result: dict[str, Any]) -> str:
    """The results as a markdown section."""
    title = f"### Training step: preset `{result['preset']}`"
    cmd = f"Command: `{result['command']}`"
    if result["status"] != "measured":
        return f"{title}\n\n{cmd}\n\n**{result['status']}**\n"
    duty = float(result["pwm_duty"])
    lines = [
        title,
        "",
        cmd,
        "",
        f"Backbone {result['backbone']} (output stride {result['output_stride']}), {result['num_classes']} classes, "
        f"device {result['device']} ({result['threads']} thread(s)), precision {result['precision']}, "
        f"channels_last {result['channels_last']}, torch.compile {result['compile']}; training CAM scales "
        f"{result['cam_scales']}; CRF A {_crf(result['crf_a'])}; CRF B {_crf(result['crf_b'])}; config overrides "
        f"`{' '.join(result['overrides'])}`. Median of {result['repeats']} interleaved repeats after "
        f"{result['warmup']} warm-up rounds; ratio = paired per repeat, median (min-max). [A] = a teacher-A step "
        f"(two CRFs), [B] = a teacher-B step (three CRFs); 'mean at duty {duty:.3g}' = (1-d) A + d B.",
        "",
    ]
    for size, entry in result["sizes"].items():
        times = entry["seconds"]
        b, crop = size.split("x")
        lines += [f"#### batch {b}, crop {crop}", ""]
        rows = []
        for label, t in times.items():
            r = ratio_stats(times, label)
            mem = entry["memory"].get(label, {})
            mem_text = f"{mem['peak_mib']:.0f} ({mem['state_mib']:.0f})" if mem else "-"
            rows.append(
                [label, f"{1000 * median(t):.0f}", f"{r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f})", mem_text, _ms_range(t)]
            )
        for name in (ASDT, ASDT_1, TWO):
            a, bb = f"{name} [A]", f"{name} [B]"
            if a in times and bb in times:
                mean = (1 - duty) * median(times[a]) + duty * median(times[bb])
                rows.append(
                    [
                        f"{name}, mean at duty {duty:.3g}",
                        f"{1000 * mean:.0f}",
                        f"{duty_ratio(times, name, duty):.2f}",
                        "",
                        "",
                    ]
                )
        source = "GPU allocator" if result["device"].startswith("cuda") else "profiler memory timeline"
        mem_head = f"peak MiB, {source} (of which weights + optimiser state)"
        lines += [md_table(["step", "median ms", "ratio to lower bound", mem_head, "ms min-max"], rows), ""]
        if "breakdown" in entry:
            lines += [_breakdown_md(entry["breakdown"]), ""]
    lines += [_targets_md(result), ""]
    return "\n".join(lines)


def _crf(c: dict[str, Any]) -> str:
    if c.get("connectivity", "local") == "full":
        return f"(fully connected, {c['iterations']} iterations)"
    return f"(window {c['window']}, {c['iterations']} iterations)"


def _ms_range(t: list[float]) -> str:
    return f"{1000 * min(t):.0f}-{1000 * max(t):.0f}"


def _breakdown_md(bd: dict[str, dict[str, float]]) -> str:
    labels = list(bd)
    parts = sorted({n for v in bd.values() for n in v if n != "total"}, key=_part_order)
    rows = []
    for part in parts:
        rows.append([part] + [_cell(bd[label].get(part), bd[label]["total"]) for label in labels])
    rows.append(["**total (instrumented step)**"] + [f"{1000 * bd[label]['total']:.0f}" for label in labels])
    rows.append(["**labels + CRFs share**"] + [f"{100 * label_share(bd[label]):.1f}%" for label in labels])
    return (
        "Where the step goes: exclusive ms per part (share of the instrumented step), median of the instrumented "
        "repeats; each part ends with a device synchronisation.\n\n" + md_table(["part", *labels], rows)
    )


def _cell(seconds: float | None, total: float) -> str:
    if not seconds:
        return "-"
    return f"{1000 * seconds:.1f} ({100 * seconds / total:.0f}%)"


ORDER = [
    "backbone fwd",
    "CAM head fwd",
    "R + S heads fwd",
    "extra CAM scales",
    "resize",
    "normalise",
    "teacher A",
    "CRF A kernel",
    "CRF A (alpha low)",
    "CRF A (alpha high)",
    "teacher B",
    "CRF B",
    "loss",
    "training_step other",
    "backward: losses",
    "backward: heads",
    "backward: backbone",
    "optimizer",
]


def _part_order(name: str) -> int:
    return next((i for i, prefix in enumerate(ORDER) if name.startswith(prefix)), len(ORDER))


def label_share(parts: dict[str, float]) -> float:
    """Share of the step spent making teacher labels (CAM normalisation, reliable labels, teacher B, CRFs)."""
    return sum(parts.get(n, 0.0) for n in LABEL_PARTS + LABEL_PARTS_B) / parts["total"]


def _targets_md(result: dict[str, Any]) -> str:
    lines = ["Targets (issue 6):", ""]
    duty = float(result["pwm_duty"])
    for size, entry in result["sizes"].items():
        times = entry["seconds"]
        if f"{ASDT_1} [A]" not in times:
            continue
        ra, rb = ratio_stats(times, f"{ASDT_1} [A]")[0], ratio_stats(times, f"{ASDT_1} [B]")[0]
        mean = duty_ratio(times, ASDT_1, duty)
        ok = "met" if max(ra, rb) <= 1.3 else ("met on average only" if mean <= 1.3 else "missed")
        lines.append(
            f"- {size}: ASDT 1-scale / lower bound <= 1.3: A-step {ra:.2f}, B-step {rb:.2f}, "
            f"mean at duty {duty:.3g} {mean:.2f} -> **{ok}**"
        )
        if "breakdown" in entry:
            for label in (f"{ASDT_1} [A]", f"{ASDT_1} [B]"):
                share = label_share(entry["breakdown"][label])
                lines.append(
                    f"- {size}: labels + CRFs < 15% of the step, {label}: {100 * share:.1f}% -> "
                    f"**{'met' if share < 0.15 else 'missed'}**"
                )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: the preset's")
    p.add_argument("--sizes", default=None, help="comma-separated BATCHxCROP, e.g. 4x128,8x128")
    p.add_argument("--breakdown-size", default=None, help="the BATCHxCROP to break down by part")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--breakdown-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the machine is shared)")
    p.add_argument("--precision", choices=["32", "bf16"], default=None)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile each backbone")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-breakdown", action="store_true")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override of the training config")
    p.add_argument("--json", type=Path, default=None, help="write the raw results here")
    p.add_argument("--md", type=Path, default=None, help="write the markdown section here")
    args = p.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import sys

    args = parse_args(argv)
    args.command = "python -m benchmarks.train_step " + shown_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    text = markdown(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
