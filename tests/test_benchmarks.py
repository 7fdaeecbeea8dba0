"""The benchmark scripts run on a tiny setting and produce well-formed output (no timing is checked)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from benchmarks import crf_profile, quality, run_all, train_step


def test_train_step_tiny_reports_every_variant_ratio_and_breakdown(tmp_path):
    out = tmp_path / "ts.md"
    argv = ["--preset", "tiny", "--repeats", "1", "--warmup", "0", "--breakdown-repeats", "1", "--no-memory"]
    result = train_step.main([*argv, "--md", str(out), "--json", str(tmp_path / "ts.json")])
    assert result["status"] == "measured"
    times = result["sizes"]["2x32"]["seconds"]
    assert set(times) == {
        "lower bound",
        *(f"{v} [{s}]" for v in ("ASDT", "ASDT 1-scale", "two-model") for s in "AB"),
    }
    assert all(len(t) == 1 and t[0] > 0 for t in times.values())
    parts = result["sizes"]["2x32"]["breakdown"]["ASDT [B]"]
    sections = {f"asdt: {s}" for s in ("extra CAM scales", "teacher A labels", "teacher B labels", "losses")}
    assert {"backbone fwd", "R + S heads fwd", "backward: heads", "backward: backbone", *sections} <= set(parts)
    assert "asdt: teacher B labels" not in result["sizes"]["2x32"]["breakdown"]["ASDT [A]"]
    crfs = parts["asdt: CRF kernel"] + parts["asdt: CRF mean field"]  # nested in the teachers' sections only
    labels = parts["asdt: teacher A labels"] + parts["asdt: teacher B labels"] + crfs
    assert parts[train_step.LABELS] == pytest.approx(labels, rel=1e-6)
    assert sum(v for k, v in parts.items() if k not in train_step.SPECIAL) == pytest.approx(parts["total"], rel=0.1)
    text = out.read_text()
    assert "ratio to lower bound" in text and "Targets (issue 6)" in text
    assert json.loads((tmp_path / "ts.json").read_text())["preset"] == "tiny"


def _event(name, parent=None, kernel_us=0.0, seq=-1, fwd_thread=0, us=0.0):
    from torch.autograd import DeviceType

    return SimpleNamespace(
        name=name, cpu_parent=parent, device_type=DeviceType.CPU, sequence_nr=seq, fwd_thread=fwd_thread, thread=1,
        kernels=[SimpleNamespace(duration=kernel_us)] if kernel_us else [],
        time_range=SimpleNamespace(elapsed_us=lambda: us),
    )  # fmt: skip


def test_breakdown_counts_kernels_to_the_nearest_range_and_backward_to_the_forward_part():
    """The GPU path of the breakdown (kernel time), on hand-made profiler events."""
    step = _event("bench: training_step other (glue, logging)")
    backbone = _event("bench: backbone fwd", step)
    conv = _event("aten::conv2d", backbone, kernel_us=300.0, seq=7)
    teacher = _event("asdt: teacher A labels", step, kernel_us=0.0)
    crf = _event("asdt: CRF mean field", teacher)  # a section nested in a teacher's
    bmm = _event("aten::bmm", crf, kernel_us=50.0)
    glue = _event("aten::add", step, kernel_us=10.0, seq=8)
    grad = _event("autograd::engine::evaluate_function: ConvolutionBackward0", seq=7, fwd_thread=1)
    grad_op = _event("aten::convolution_backward", grad, kernel_us=600.0)
    add_grad = _event("autograd::engine::evaluate_function: AddBackward0", seq=8, fwd_thread=1)
    accumulate = _event("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad")
    copy = _event("aten::add_", accumulate, kernel_us=5.0)
    events = [step, backbone, conv, teacher, crf, bmm, glue, grad, grad_op, add_grad, accumulate, copy]
    parts = train_step.profiled_parts(events, device_time=True)
    assert parts == pytest.approx(
        {
            "backbone fwd": 300e-6,
            "asdt: CRF mean field": 50e-6,
            "training_step other (glue, logging)": 10e-6,
            "backward: backbone": 600e-6,
            train_step.BACKWARD_OTHER: 5e-6,
            train_step.LABELS: 50e-6,
        }
    )


def test_breakdown_on_cpu_times_each_range_without_its_nested_ranges():
    step = _event("bench: training_step other (glue, logging)", us=1000.0)
    teacher = _event("asdt: teacher A labels", step, us=400.0)
    crf = _event("asdt: CRF mean field", teacher, us=300.0)
    parts = train_step.profiled_parts([step, teacher, crf, _event("aten::bmm", crf, us=250.0)], device_time=False)
    assert parts == pytest.approx(
        {
            "training_step other (glue, logging)": 600e-6,
            "asdt: teacher A labels": 100e-6,
            "asdt: CRF mean field": 300e-6,
            train_step.LABELS: 400e-6,
        }
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_preset_without_gpu_says_not_measured():
    result = train_step.main(["--preset", "gpu"])
    assert result["status"] == "not measured: no GPU"
    assert "not measured: no GPU" in train_step.markdown(result)


def test_crf_profile_tiny_methods_agree(tmp_path):
    argv = ["--shape", "1x3x8", "--windows", "3", "--iterations", "2", "--repeats", "1", "--md", str(tmp_path / "c")]
    result = crf_profile.main(argv)
    (shape,) = result["shapes"]
    assert shape["max_abs_diff"] < 1e-4
    assert shape["full_buffer_max_abs_diff"] < 1e-5  # a kernel in the reused buffer: the same CRF
    assert "speed-up" in (tmp_path / "c").read_text()


def test_quality_table_gathers_finished_runs_and_marks_missing_ones(tmp_path):
    run = quality.run_dir(tmp_path, "ASDT duty 1/2", 0)
    run.mkdir(parents=True)
    metrics = {"miou": {"cam": 0.3, "refine": 0.4, "student": 0.5, "fused": 0.55}, "global_step": 20}
    (run / "metrics.json").write_text(json.dumps(metrics))
    records = quality.main(["--gather-only", "--seeds", "0", "--out", str(tmp_path), "--md", str(tmp_path / "q.md")])
    status = {r["variant"]: r["status"] for r in records}
    assert status["ASDT duty 1/2"] == "done" and status["ASDT duty 1/6"] == "missing"
    assert status["fully supervised (upper bound)"] == "missing"
    assert "model.loss.supervision=ground_truth" in next(
        r["command"] for r in records if r["variant"] == "fully supervised (upper bound)"
    )
    text = (tmp_path / "q.md").read_text()
    assert "| ASDT duty 1/2 | 30.0 ± 0.0 | 40.0 ± 0.0 | 50.0 ± 0.0 | 55.0 ± 0.0 | 25.0 ± 0.0 |" in text


def test_quality_table_gap_to_the_upper_bound_and_a_chosen_subset(tmp_path):
    for variant, fused in [("ASDT duty 1/2", 0.55), ("fully supervised (upper bound)", 0.75)]:
        run = quality.run_dir(tmp_path, variant, 1)
        run.mkdir(parents=True)
        metrics = {"miou": {"cam": 0.3, "refine": 0.4, "student": 0.5, "fused": fused}, "global_step": 20}
        (run / "metrics.json").write_text(json.dumps(metrics))
    only = ["--only", "ASDT duty 1/2", "--only", "fully supervised (upper bound)"]
    args = ["--gather-only", "--seeds", "1", "--out", str(tmp_path), "--md", str(tmp_path / "q.md"), *only]
    records = quality.main([*args, "--title", "Held-out check"])
    assert {r["variant"] for r in records} == {"ASDT duty 1/2", "fully supervised (upper bound)"}
    text = (tmp_path / "q.md").read_text()
    assert text.startswith("### Held-out check")
    assert "| 25.0 ± 0.0 | 20.0 ± 0.0 | 1/1 |" in text  # fused - cam, then the upper bound's 75 minus 55
    with pytest.raises(SystemExit, match="unknown variant"):
        quality.main(["--gather-only", "--out", str(tmp_path), "--only", "duty 2"])


def test_run_all_header_and_jobs():
    info = {"date": "d", "cpu": "c", "cores": 2, "gpu": None, "python": "3", "torch": "t", "lightning": "l"}
    text = run_all.header({**info, "load_average_1_5_15": [4.0, 4, 4]}, {**info, "load_average_1_5_15": None}, [])
    assert "under load" in text and "make bench" in text
    titles = [t for t, _ in run_all.jobs(quick=False)]
    assert any("GPU" in t for t in titles) and any("CPU" in t for t in titles)


def test_label_scores_count_background_labels_near_objects_apart():
    from benchmarks.teacher_labels import label_scores, score_row

    truth = torch.zeros(1, 32, 32, dtype=torch.long)
    truth[0, 12:20, 12:20] = 2  # an 8x8 object
    labels = torch.full_like(truth, 255)
    labels[0, 12:20, 12:20] = 2
    labels[0, 12, 12] = 0  # one object pixel labelled background
    labels[0, :, :2] = 0  # background labels only far from the object (>= 10 px)
    labels[0, 0, 31] = 1  # one foreground label on background
    row = score_row(label_scores(labels, truth, pixel_step=1.0))
    assert row["bg_recall_near_objects"] == 0.0  # nothing within 8 px of the object is labelled background
    assert row["bg_recall"] == pytest.approx(64 / (32 * 32 - 64))
    assert row["fg_labelled_background"] == pytest.approx(1 / 64)
    assert row["fg_precision"] == pytest.approx(63 / 64) and row["fg_on_background"] == pytest.approx(1 / 64)
    labels[0, 8:24, 8:24] = 0  # background labelled all round the object, out to 4 px
    labels[0, 12:20, 12:20] = 2
    near = score_row(label_scores(labels, truth, pixel_step=1.0))["bg_recall_near_objects"]
    assert 0 < near < 1  # the 4-px ring is labelled, the rest of the 8-px margin is not
    coarse = score_row(label_scores(labels, truth, pixel_step=4.0))["bg_recall_near_objects"]
    assert coarse > near  # at 4 image px per label px, the 8-px margin is only 2 label px wide


def test_teacher_label_quality_table_scores_every_crf(tmp_path):
    from benchmarks import teacher_labels
    from omegaconf import OmegaConf

    from wsss_helpers import compose_plain, save_asdt_checkpoint

    ckpt = save_asdt_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    data = compose_plain("pseudo_labels", "ckpt=unused", "dataset.val_size=48")["dataset"]  # the run's dataset
    (tmp_path / "run" / "config_resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"dataset": data})))
    args = ["--ckpt", str(ckpt), "--images", "4", "--grids", "1", "--no-dense", "--md", str(tmp_path / "t.md")]
    result = teacher_labels.main([*args, "--background", "power", "otsu", "--cam-threshold", "0.3", "1.0"])
    assert [r["crf"].split(",")[0] for r in result["rows"]] == [
        "none (CAM thresholds only)",
        "local",
        "fully connected",
    ] * 2 + ["CAM baseline", "CAM baseline", "R's prediction"]
    backgrounds = [r["background"] for r in result["rows"]]
    assert all(b.startswith("power ") for b in backgrounds[:3]) and backgrounds[3:6] == ["otsu"] * 3
    never_foreground = result["rows"][7]  # normalised CAMs never exceed 1: every valid pixel is background
    assert never_foreground["fg_recall"] == 0 and never_foreground["bg_recall"] == 1
    assert never_foreground["labelled"] == 1  # the baselines label every pixel, unlike teacher A
    for row in result["rows"]:
        assert 0 <= row["fg_precision"] <= 1 and 0 <= row["fg_recall"] <= 1 and 0 <= row["labelled"] <= 1
    assert result["images"] == 4 and "fg precision" in (tmp_path / "t.md").read_text()


def test_teacher_label_variants_cross_both_background_powers():
    from benchmarks.teacher_labels import variants

    from asdt_lightning.method.cam import TeacherAParams

    rows = variants(TeacherAParams(), [1], False, alphas_high=[8, 2], alphas_low=[4, 1])
    powers = [(p.alpha_low, p.alpha_high) for _name, _up, p, _exact in rows]
    assert powers == [(4, 8)] * 3 + [(4, 2)] * 3 + [(1, 8)] * 3 + [(1, 2)] * 3  # none, local, full for each pair
    defaults = variants(TeacherAParams(alpha_low=3.0), [1], False)
    assert {p.alpha_low for _n, _u, p, _e in defaults} == {3.0}  # without --alpha-low: the run's own


def test_heldout_check_gathers_its_runs_with_the_dataset_swapped(tmp_path):
    from benchmarks import heldout_dataset

    run = quality.run_dir(tmp_path / "runs", "ASDT duty 1/2", 0)
    run.mkdir(parents=True)
    metrics = {"miou": {"cam": 0.4, "refine": 0.5, "student": 0.5, "fused": 0.52}, "global_step": 1200}
    (run / "metrics.json").write_text(json.dumps(metrics))
    args = ["--root", str(tmp_path / "root"), "--check", "--gather-only", "--out", str(tmp_path / "runs")]
    heldout_dataset.main([*args, "--md", str(tmp_path / "h.md")])
    text = (tmp_path / "h.md").read_text()
    assert text.startswith("### Held-out dataset") and "dataset=voc" in text and "dataset.train_list=train" in text
    assert "| ASDT duty 1/2 | 40.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 52.0 ± 0.0 | 12.0 ± 0.0 |" in text
