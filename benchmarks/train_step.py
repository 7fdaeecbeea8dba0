"""Training-step time and peak memory of ASDT against the backbone-only lower bound and the two-model setup.

Every variant runs the package's own code: ``ASDTModule.training_step`` (network, multi-scale CAMs, teacher A's
reliable labels with two CRFs, teacher B's CRF labels on B-steps, balanced CE, pairwise losses, classification
loss), then ``backward`` and the step of the optimiser ``ASDTModule.configure_optimizers`` builds. Variants:

- ``lower bound``: backbone + CAM head + classification loss (``net.backbone``, ``net.cam_head``,
  ``classification_loss``); only their parameters get gradients, the optimiser step skips the others;
- ``ASDT``: the module as configured (multi-scale training CAMs); ``ASDT 1-scale``: ``cam_scales=[1.0]``;
- ``two-model``: the same ``training_step`` with the network swapped for a separate classifier (backbone + CAM
  head: CAMs, class logits, extra CAM scales) and a separate refinement network with its own backbone (R and S
  heads), i.e. the conventional pipeline doing the same work in one step.

Variants are timed side by side in one process, interleaved (the order rotates every repeat), median of
``--repeats`` after ``--warmup`` rounds; ratios are paired per repeat. A second, instrumented pass times each part
under the PyTorch profiler: the package's profiler sections (``record_function("asdt: ...")``: extra CAM scales,
resizing, teacher A's and B's labels with their CRFs, pairwise kernel, losses), ranges around the forwards of the
network's parts (forward hooks), and each backward op counted towards the part whose forward made it; nothing
reaches into the package's modules, so code moves do not break it. Peak memory: ``torch.cuda.max_memory_allocated``
on a GPU, the PyTorch profiler's memory timeline on CPU.

    python -m benchmarks.train_step                       # ResNet-18 on CPU, default config, several sizes
    python -m benchmarks.train_step --preset cpu-bf16     # the same at bf16 autocast (AMX / AVX512-BF16 CPUs)
    python -m benchmarks.train_step --preset gpu          # ResNet-101, voc_paper settings, crop 321, bf16
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from benchmarks._common import (
    compose_config,
    emit,
    machine_info,
    md_table,
    median,
    parse_cli,
    quiet_lightning,
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


def make_optimizer(module: Any, setting: Setting) -> torch.optim.Optimizer:
    """The optimiser of ``module.configure_optimizers`` (its groups, settings and fused kernels), under a Trainer of
    the config's that is attached for that call only: the benchmark steps the module without one."""
    import lightning as L

    trainer_cfg = setting.cfg["trainer"]
    module.trainer = L.Trainer(
        accelerator="gpu" if setting.device.type == "cuda" else "cpu",
        devices=1,
        max_steps=max(int(trainer_cfg["max_steps"]), 1),
        gradient_clip_val=trainer_cfg.get("gradient_clip_val"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        return module.configure_optimizers()["optimizer"]
    finally:
        module.trainer = None


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

    def loss(self, batch: dict[str, torch.Tensor], source: int) -> torch.Tensor:
        """The forward of one step: labels and losses for the student's teacher ``source``."""
        if self.lower_bound:
            return lower_bound_loss(self.module, batch)
        self.module.set_teacher(0, source)  # no Trainer: global_step is 0
        return self.module.training_step(batch, 0)

    def run(self, batch: dict[str, torch.Tensor], source: int, setting: Setting) -> None:
        with setting.autocast():
            loss = self.loss(batch, source)
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
    asdt, asdt_1 = module(), module([1.0])
    two = module()
    two.net = TwoModelNet(two.net, module().net)
    if setting.compile:
        for m in (lower, asdt, asdt_1):
            m.net.backbone = torch.compile(m.net.backbone)
        two.net.classifier.backbone = torch.compile(two.net.classifier.backbone)
        two.net.refiner.backbone = torch.compile(two.net.refiner.backbone)
    return [
        Variant(LOWER, lower, make_optimizer(lower, setting), lower_bound=True, sources=(0,)),
        Variant(ASDT, asdt, make_optimizer(asdt, setting)),
        Variant(ASDT_1, asdt_1, make_optimizer(asdt_1, setting)),
        Variant(TWO, two, make_optimizer(two, setting)),
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
PACKAGE_SECTION = "asdt: "  # the package's profiler sections (``torch.profiler.record_function``) start so
BENCH = "bench: "  # this benchmark's own ranges
STEP_OTHER = "training_step other (glue, logging)"
BACKWARD_OTHER = "backward: other (gradient accumulation, autograd engine)"
OPTIMIZER = "optimizer step"
UNRANGED = "outside every range"
IDLE = "device idle (launch gaps, host work)"
RANGE_PARTS = {f"{BENCH}backward": BACKWARD_OTHER}  # a range's part where it is not the name after "bench: "
NET_PARTS = {  # attribute of the network -> part (their forwards with gradient)
    "backbone": "backbone fwd",
    "cam_head": "CAM head fwd",
    "refine_head": "R + S heads fwd",
    "student_head": "R + S heads fwd",
}
BACKWARD_OF = {
    "backbone fwd": "backward: backbone",
    "CAM head fwd": "backward: heads",
    "R + S heads fwd": "backward: heads",
}
BACKWARD_LOSSES = "backward: losses"  # the backward of every other forward op (losses, resizing, glue)
TEACHER_SECTIONS = (f"{PACKAGE_SECTION}teacher A labels", f"{PACKAGE_SECTION}teacher B labels")
LABELS = "teacher labels (incl. CRFs)"  # not a part: the teacher sections' time, whatever is nested in them
SPECIAL = ("total", LABELS)
EVALUATE = "autograd::engine::evaluate_function: "  # the profiler's event of one autograd node's backward


@contextlib.contextmanager
def network_ranges(net: nn.Module) -> Iterator[None]:
    """Profiler ranges ``bench: <part>`` around the forwards with gradient of the network's parts (``NET_PARTS``);
    the no-grad forwards of the extra CAM scales stay in the package's section."""
    handles = []
    for attr, part in NET_PARTS.items():
        module = getattr(net, attr, None)
        if module is None:
            continue
        ranges: list[Any] = []

        def pre(_m: nn.Module, _inputs: Any, part: str = part, ranges: list[Any] = ranges) -> None:
            ranges.append(record_function(BENCH + part).__enter__() if torch.is_grad_enabled() else None)

        def post(_m: nn.Module, _inputs: Any, _out: Any, ranges: list[Any] = ranges) -> None:
            opened = ranges.pop()
            if opened is not None:
                opened.__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def range_part(name: str) -> str | None:
    """The part a profiler range stands for: a package section (by its name) or one of this benchmark's."""
    if name.startswith(PACKAGE_SECTION):
        return name
    if name.startswith(BENCH):
        return RANGE_PARTS.get(name, name[len(BENCH) :])
    return None


def profiled_parts(events: list[Any], device_time: bool) -> dict[str, float]:
    """Exclusive seconds per part of one profiled step, and ``LABELS``.

    A part is a profiler range (the package's sections, this benchmark's), nested ranges excluded, or the backward
    of one: the profiler's event of each autograd node's backward is linked (thread, sequence number) to the
    forward op that made the node, and counts towards ``BACKWARD_OF`` that op's part. ``device_time``: kernel
    time (a GPU's), else the ranges' wall time.
    """
    from torch.autograd import DeviceType

    events = [e for e in events if e.device_type == DeviceType.CPU]
    part = {id(e): p for e in events if (p := range_part(e.name)) is not None}
    nodes = {id(e) for e in events if e.name.startswith(EVALUATE)} | set(part)

    def around(e: Any) -> tuple[Any, bool]:
        """The nearest range or backward node around ``e`` (None: none), and whether a teacher section is."""
        node, parent, in_labels = None, e.cpu_parent, False
        while parent is not None:
            if node is None and id(parent) in nodes:
                node = parent
            in_labels = in_labels or parent.name in TEACHER_SECTIONS
            parent = parent.cpu_parent
        return node, in_labels

    enclosing = {id(e): around(e) for e in events}
    forward: dict[tuple[int, int], str] = {}  # (thread, sequence number) of a forward op -> its part
    for e in events:
        node = enclosing[id(e)][0]
        if e.sequence_nr >= 0 and not e.fwd_thread and node is not None and id(node) in part:
            forward.setdefault((e.thread, e.sequence_nr), part[id(node)])
    for e in events:
        if e.name.startswith(EVALUATE):
            made_by = forward.get((e.fwd_thread, e.sequence_nr))
            part[id(e)] = BACKWARD_OTHER if made_by is None else BACKWARD_OF.get(made_by, BACKWARD_LOSSES)
    seconds: dict[str, float] = defaultdict(float)
    labels = 0.0
    for e in events:
        node, in_labels = enclosing[id(e)]
        if device_time:
            spent = sum(k.duration for k in e.kernels) / 1e6
            owner = e if id(e) in nodes else node
            seconds[part[id(owner)] if owner is not None else UNRANGED] += spent
            labels += spent if in_labels or e.name in TEACHER_SECTIONS else 0.0
        elif id(e) in nodes:
            spent = e.time_range.elapsed_us() / 1e6
            seconds[part[id(e)]] += spent
            if node is not None:
                seconds[part[id(node)]] -= spent
            labels += spent if e.name in TEACHER_SECTIONS and not in_labels else 0.0
    return {**{p: s for p, s in seconds.items() if s > 0}, LABELS: labels}


def instrumented_step(variant: Variant, batch: dict, source: int, setting: Setting) -> dict[str, float]:
    """One step of ``variant`` under the profiler; returns exclusive seconds per part, ``LABELS`` and ``total``
    (the step's wall time; on a GPU the time no part's kernels ran is ``IDLE``)."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = setting.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with network_ranges(variant.module.net), profile(activities=activities) as prof:
        synchronize(setting.device)
        start = time.perf_counter()
        with setting.autocast(), record_function(BENCH + STEP_OTHER):
            loss = variant.loss(batch, source)
        with record_function(f"{BENCH}backward"):
            loss.backward()
        with record_function(BENCH + OPTIMIZER):
            variant.optimizer.step()
            variant.optimizer.zero_grad(set_to_none=True)
        synchronize(setting.device)
        total = time.perf_counter() - start
    parts = profiled_parts(list(prof.events()), device_time=on_gpu)
    if on_gpu:
        parts[IDLE] = max(0.0, total - sum(s for p, s in parts.items() if p not in SPECIAL))
    return {**parts, "total": total}


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
    if c.get("connectivity") in ("attention", "auto"):
        return f"(fully connected by {c['connectivity']}, {c['iterations']} iterations)"
    return f"(window {c['window']}, {c['iterations']} iterations)"


def _ms_range(t: list[float]) -> str:
    return f"{1000 * min(t):.0f}-{1000 * max(t):.0f}"


def _breakdown_md(bd: dict[str, dict[str, float]]) -> str:
    labels = list(bd)
    parts = sorted({n for v in bd.values() for n in v if n not in SPECIAL}, key=_part_order)
    rows = []
    for part in parts:
        rows.append([part] + [_cell(bd[label].get(part), bd[label]["total"]) for label in labels])
    rows.append(["**total (instrumented step)**"] + [f"{1000 * bd[label]['total']:.0f}" for label in labels])
    rows.append(["**labels + CRFs share**"] + [f"{100 * label_share(bd[label]):.1f}%" for label in labels])
    return (
        "Where the step goes: exclusive ms per part (share of the instrumented step), median of the instrumented "
        "repeats, from the PyTorch profiler. `asdt: ...` rows are the package's profiler sections (the teachers' "
        "labels include their CRFs), the network parts are ranges around their forwards with gradient (the no-grad "
        "extra scales are in `asdt: extra CAM scales`), and each backward op counts towards the part whose forward "
        "made it. On CPU: wall time per range; on a GPU: kernel time per range, the rest of the step being device "
        "idle time. 'labels + CRFs share' = the teacher A and B sections, all they contain, over the step.\n\n"
        + md_table(["part", *labels], rows)
    )


def _cell(seconds: float | None, total: float) -> str:
    if not seconds:
        return "-"
    return f"{1000 * seconds:.1f} ({100 * seconds / total:.0f}%)"


ORDER = [  # the rows' order, by prefix (first match); other package sections after the known ones
    "backbone fwd",
    "CAM head fwd",
    "R + S heads fwd",
    f"{PACKAGE_SECTION}extra CAM scales",
    f"{PACKAGE_SECTION}resize",
    f"{PACKAGE_SECTION}teacher A",
    f"{PACKAGE_SECTION}teacher B",
    f"{PACKAGE_SECTION}pairwise kernel",
    f"{PACKAGE_SECTION}losses",
    PACKAGE_SECTION,
    "training_step other",
    "backward: losses",
    "backward: heads",
    "backward: backbone",
    "backward: other",
    "optimizer",
    UNRANGED,
    IDLE,
]


def _part_order(name: str) -> int:
    return next((i for i, prefix in enumerate(ORDER) if name.startswith(prefix)), len(ORDER))


def label_share(parts: dict[str, float]) -> float:
    """Share of the step spent making teacher labels (teacher A's and B's sections, their CRFs included)."""
    return parts.get(LABELS, 0.0) / parts["total"]


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
    return parse_cli(p, argv, "train_step")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    emit(args, markdown(result), result)
    return result


if __name__ == "__main__":
    main()
