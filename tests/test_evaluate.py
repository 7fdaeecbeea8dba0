"""Evaluation: PNG folders and checkpoints against a numpy mIoU, the CAM threshold sweep, shared work, reports.
(The confusion matrix and its scores themselves: test_metrics.py.)"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from asdt_lightning.data.voc import read_mask, write_mask_png
from asdt_lightning.errors import ASDTUserError
from asdt_lightning.evaluate import run_evaluate
from asdt_lightning.metrics import mean_iou
from asdt_lightning.models.asdt import ASDTOutput
from wsss_helpers import compose_plain, numpy_miou, save_asdt_checkpoint, tiny_reader

FAST = ["num_workers=0", "progress=false", "crf_params.iterations=2", "crf_params.window=5"]


def test_png_folder_is_scored_against_ground_truth(tmp_path):
    reader, _ = tiny_reader()
    names = reader.read_list("val")
    gts = {n: reader.decode_mask(reader.mask_file(n)) for n in names}
    for i, (name, gt) in enumerate(gts.items()):
        pred = np.where(gt == 255, 0, gt).astype(np.uint8)
        if i % 2:  # damage every second prediction
            pred[:10] = 0
        write_mask_png(tmp_path / "pred" / f"{name}.png", pred)
    given = [f"pred_dir={tmp_path / 'pred'}", "split=val", *FAST]
    report = run_evaluate(compose_plain("evaluate", f"out={tmp_path / 'out'}", *given))
    expected = numpy_miou(
        [read_mask(tmp_path / "pred" / f"{n}.png") for n in names],
        [gts[n] for n in names],
        7,
    )
    assert report["results"]["folder"]["none"]["miou"] == pytest.approx(expected, abs=1e-12)
    assert 0 < expected < 1
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["results"]["folder"]["none"]["miou"] == report["results"]["folder"]["none"]["miou"]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert f"{100 * expected:.2f}" in markdown and "| background |" in markdown
    assert (tmp_path / "out" / "confusion_folder.png").stat().st_size > 1000

    (tmp_path / "pred" / f"{names[0]}.png").unlink()
    with pytest.raises(ASDTUserError, match=f"1 of {len(names)} images"):
        run_evaluate(compose_plain("evaluate", f"out={tmp_path / 'o2'}", *given))
    write_mask_png(tmp_path / "pred" / f"{names[0]}.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(ASDTUserError, match="original image size"):
        run_evaluate(compose_plain("evaluate", f"out={tmp_path / 'o3'}", *given))


def test_checkpoint_is_scored_per_branch_with_and_without_crf(tmp_path):
    ckpt = save_asdt_checkpoint(tmp_path / "last.ckpt")
    report = run_evaluate(
        compose_plain("evaluate", f"ckpt={ckpt}", f"out={tmp_path / 'out'}", "figure=false", "limit=4", *FAST)
    )
    assert set(report["results"]) == {"cam", "refine", "student", "fused"}
    assert all(set(v) == {"none", "local"} for v in report["results"].values())
    assert report["images"] == 4 and 0.05 <= report["cam_threshold"] <= 0.95
    for per_crf in report["results"].values():
        for scores in per_crf.values():
            cm = torch.tensor(scores["confusion"])
            assert scores["miou"] == pytest.approx(mean_iou(cm))
            assert int(cm.sum()) > 0
    markdown = (tmp_path / "out" / "results.md").read_text()  # the branch titles of metrics.BRANCH_TITLES
    assert "| CAM teacher (A) |" in markdown and "| fused (max R, S) |" in markdown
    assert "## refinement teacher (R) + local CRF" in markdown and report["params"]["fusion"] == "max"


def test_checkpoint_of_another_dataset_is_refused(tmp_path):
    ckpt = save_asdt_checkpoint(tmp_path / "voc.ckpt", class_names=["aeroplane", "bicycle"])
    with pytest.raises(ASDTUserError, match="trained on 2 classes .* dataset 'synthetic' has 6") as err:
        run_evaluate(compose_plain("evaluate", f"ckpt={ckpt}", f"out={tmp_path / 'out'}", *FAST))
    assert "\n" not in str(err.value)


def test_exactly_one_source_is_required(tmp_path):
    with pytest.raises(ASDTUserError, match="exactly one"):
        run_evaluate(compose_plain("evaluate", f"out={tmp_path}", *FAST))


def _tiny_model_and_images(tmp_path):
    """A small random ASDT checkpoint loaded for inference and the tiny synthetic 'val' list."""
    from asdt_lightning.data.inference import InferenceImages
    from asdt_lightning.lit.inference import load_model

    reader, data = tiny_reader()
    ckpt = save_asdt_checkpoint(tmp_path / "last.ckpt")
    module = load_model(ckpt, reader.class_names, reader.has_background, data["name"], torch.device("cpu"))
    return module, InferenceImages(reader, "val", data["mean"], data["std"], require_masks=True)


def _counting(monkeypatch, owner, name: str) -> list:
    """Replace ``owner.name`` by a wrapper that records each call; returns the record."""
    calls: list = []
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def test_one_forward_and_one_crf_kernel_per_batch_for_every_branch_and_crf(tmp_path, monkeypatch):
    """4 branches x (none, local CRF) and the CAM threshold sweep share each batch's forward and CRF kernel,
    and a second pass (CAM + CRF at the chosen threshold) computes them again only for batches not kept."""
    import asdt_lightning.method.crf as crf
    from asdt_lightning.evaluate import evaluate_model
    from asdt_lightning.lit.inference import INFERENCE_CRF, InferenceParams

    module, images = _tiny_model_and_images(tmp_path)
    forwards = _counting(monkeypatch, module, "branch_probabilities")
    affinities = _counting(monkeypatch, crf, "local_affinity")  # two per CRF kernel: Gaussian and bilateral
    params = InferenceParams(crf_params=dataclasses.replace(INFERENCE_CRF, iterations=2, window=5))
    branches, crfs = ["cam", "refine", "student", "fused"], ["none", "local"]
    batches = -(-len(images) // 2)
    kept = evaluate_model(module, images, branches, crfs, params, torch.device("cpu"), batch_size=2, progress=False)
    assert (len(forwards), len(affinities)) == (batches, 2 * batches)
    forwards.clear(), affinities.clear()
    again = evaluate_model(
        module, images, branches, crfs, params, torch.device("cpu"), batch_size=2, progress=False, cache_bytes=0
    )
    assert (len(forwards), len(affinities)) == (2 * batches, 4 * batches)
    assert again["results"] == kept["results"] and again["cam_threshold"] == kept["cam_threshold"]


def test_threshold_sweep_equals_scoring_the_chosen_threshold_alone(tmp_path):
    """The CAM without CRF at the best threshold of the sweep scores as the CAM branch at that threshold given."""
    from asdt_lightning.evaluate import evaluate_model
    from asdt_lightning.lit.inference import INFERENCE_CRF, InferenceParams
    from asdt_lightning.method.cam import CAM_THRESHOLDS
    from asdt_lightning.metrics import segmentation_scores

    module, images = _tiny_model_and_images(tmp_path)
    params = InferenceParams(crf_params=dataclasses.replace(INFERENCE_CRF, iterations=2, window=5))
    cpu = torch.device("cpu")
    swept = evaluate_model(module, images, ["cam"], ["none"], params, cpu, batch_size=2, progress=False)
    chosen = swept["cam_threshold"]
    assert chosen in CAM_THRESHOLDS
    given = dataclasses.replace(params, cam_threshold=chosen)
    alone = evaluate_model(module, images, ["cam"], ["none"], given, cpu, batch_size=3, progress=False)
    assert alone["cam_threshold"] == chosen and alone["results"] == swept["results"]
    names = swept["label_names"]
    for t in (CAM_THRESHOLDS[0], CAM_THRESHOLDS[-1]):  # other thresholds score no higher
        other = evaluate_model(
            module, images, ["cam"], ["none"], dataclasses.replace(params, cam_threshold=t), cpu, progress=False
        )
        confusion = torch.tensor(other["results"]["cam"]["none"]["confusion"])
        assert segmentation_scores(confusion, names)["miou"] <= swept["results"]["cam"]["none"]["miou"]


def test_shared_crf_kernel_gives_the_per_call_crf(tmp_path):
    """The local CRF with a batch's shared kernel equals the standalone CRF, batched and image by image."""
    from asdt_lightning.lit.inference import INFERENCE_CRF, CRFKernels, crf_per_image_group
    from asdt_lightning.method.dense_crf import refine_with_crf

    generator = torch.Generator().manual_seed(1)
    params = dataclasses.replace(INFERENCE_CRF, iterations=3, window=5)
    rgb = torch.rand(2, 3, 12, 14, generator=generator) * 255
    probs = torch.softmax(torch.randn(2, 4, 12, 14, generator=generator) * 2, 1)
    allowed = torch.tensor([[True, True, False, True], [True, False, False, True]])
    kernels = CRFKernels()
    shared = crf_per_image_group("local", rgb, probs, params, allowed, [(12, 14)] * 2, kernels)
    again = crf_per_image_group("local", rgb, probs.flip(1), params, allowed, [(12, 14)] * 2, kernels)
    assert kernels.built == 1
    assert torch.allclose(shared, refine_with_crf("local", rgb, probs, params, allowed), atol=1e-5)
    assert torch.allclose(again, refine_with_crf("local", rgb, probs.flip(1), params, allowed), atol=1e-5)
    mixed = crf_per_image_group("local", rgb, probs, params, allowed, [(12, 14), (8, 9)], CRFKernels())
    alone = refine_with_crf("local", rgb[1:, :, :8, :9], probs[1:, :, :8, :9], params, allowed[1:])
    assert torch.allclose(mixed[1:, :, :8, :9], alone, atol=1e-5)
    assert torch.equal(mixed[1:, :, 8:], probs[1:, :, 8:])


def test_fusion_defaults_to_the_checkpoints_own_and_an_explicit_one_overrides_it(tmp_path):
    """``fusion: null`` scores the fused branch as the checkpoint's ``val/miou_fused`` did (its ``model.fusion``;
    ``max`` for checkpoints older than that setting); ``fusion=`` overrides it."""
    ckpt = save_asdt_checkpoint(tmp_path / "mean.ckpt", fusion="mean")
    given = [f"ckpt={ckpt}", "figure=false", "limit=3", "branches=[fused]", "crfs=[none]", *FAST]

    def evaluate(name, *overrides):
        return run_evaluate(compose_plain("evaluate", f"out={tmp_path / name}", *given, *overrides))

    default, mean, maximum = evaluate("default"), evaluate("mean", "fusion=mean"), evaluate("max", "fusion=max")
    assert (default["params"]["fusion"], maximum["params"]["fusion"]) == ("mean", "max")
    assert default["results"] == mean["results"] != maximum["results"]
    assert json.loads((tmp_path / "default" / "results.json").read_text())["params"]["fusion"] == "mean"
    assert "| fused (mean R, S) |" in (tmp_path / "default" / "results.md").read_text()

    old = torch.load(ckpt, weights_only=False)  # a checkpoint from before model.fusion existed
    del old["hyper_parameters"]["fusion"]
    torch.save(old, ckpt)
    older = evaluate("older")
    assert older["params"]["fusion"] == "max" and older["results"] == maximum["results"]


def test_a_checkpoint_is_scored_with_the_input_normalisation_it_was_trained_with(tmp_path):
    """A network trained on TF-scaled inputs (a pretrained EfficientNet-Lite0's) is fed them by evaluate too, whatever
    the evaluate config's ``dataset.mean`` / ``dataset.std`` say."""
    tf_scaling = ["dataset.mean=[0.498,0.498,0.498]", "dataset.std=[0.502,0.502,0.502]"]
    ckpt = save_asdt_checkpoint(tmp_path / "tf.ckpt", image_mean=[0.498] * 3, image_std=[0.502] * 3)
    given = [f"ckpt={ckpt}", "figure=false", "limit=3", "branches=[fused,cam]", "crfs=[none]", *FAST]

    def evaluate(name, *overrides):
        return run_evaluate(compose_plain("evaluate", f"out={tmp_path / name}", *given, *overrides))["results"]

    tf_default = evaluate("default")
    assert tf_default == evaluate("given", *tf_scaling)
    given[0] = f"ckpt={save_asdt_checkpoint(tmp_path / 'in.ckpt')}"  # the same weights, ImageNet mean/std
    imagenet = evaluate("imagenet")
    assert imagenet == evaluate("imagenet_tf", *tf_scaling)  # the config's values do not override the checkpoint's
    assert imagenet != tf_default  # and the normalisation changes what the network sees


class _FavoursOneClass(torch.nn.Module):
    """R and S favour label 2 everywhere, next label 1; the classifier predicts class 2 (label 2) only."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images):
        b, _, h, w = images.shape
        seg = torch.zeros(b, self.num_classes + 1, -(-h // 4), -(-w // 4))
        seg[:, 1], seg[:, 2] = 2.0, 3.0
        cams = torch.rand(b, self.num_classes, -(-h // 8), -(-w // 8))
        class_logits = torch.full((b, self.num_classes), -5.0)
        class_logits[:, 1] = 5.0
        return ASDTOutput(cams, class_logits, seg, seg.clone())


def test_without_image_labels_every_branch_scores_the_segmentation_setting(tmp_path, monkeypatch):
    """``image_labels=false``: R, S and fused take the favoured label on every image, whatever its classes, and
    the CAM only the class its classifier predicts; with the labels, each image's own classes only."""
    import asdt_lightning.evaluate as evaluate_module

    real_load = evaluate_module.load_model

    def load_fixed(*args, **kwargs):
        module = real_load(*args, **kwargs)
        module.net = _FavoursOneClass(len(module.class_names))
        return module

    monkeypatch.setattr(evaluate_module, "load_model", load_fixed)
    ckpt = save_asdt_checkpoint(tmp_path / "last.ckpt")
    given = [f"ckpt={ckpt}", "figure=false", "limit=6", "crfs=[none]", *FAST]
    with_labels = run_evaluate(compose_plain("evaluate", f"out={tmp_path / 'a'}", *given))
    without = run_evaluate(compose_plain("evaluate", f"out={tmp_path / 'b'}", *given, "image_labels=false"))
    assert (with_labels["params"]["image_labels"], without["params"]["image_labels"]) == (True, False)
    for branch in ("refine", "student", "fused"):
        predicted = torch.tensor(without["results"][branch]["none"]["confusion"]).sum(0)
        assert predicted[2] == predicted.sum() > 0  # label 2 everywhere
        restricted = torch.tensor(with_labels["results"][branch]["none"]["confusion"]).sum(0)
        assert restricted[2] < restricted.sum()  # images without class 2 get their own classes
    cam = torch.tensor(without["results"]["cam"]["none"]["confusion"]).sum(0)
    assert cam[0] + cam[2] == cam.sum()  # background or the predicted class


def test_split_follows_the_setting_pseudo_masks_on_train_segmentation_on_val(tmp_path):
    """``split: null``: the pseudo-mask list with image labels (VOC train, 1,464), the validation list without them
    and for a second-stage checkpoint; an explicit split wins."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from asdt_lightning.data.voc import VOC_CLASSES
    from asdt_lightning.evaluate import default_split
    from segmenter_helpers import save_segmenter_checkpoint

    def config(*overrides):  # any dataset (compose_plain sets the tiny synthetic one's keys)
        with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
            return OmegaConf.to_container(compose("evaluate", overrides=["out=o", *overrides]), resolve=True)

    def split_of(*overrides):
        return default_split(config("pred_dir=p", *overrides))

    voc = ["dataset=voc"]
    assert config("pred_dir=p")["split"] is None
    assert split_of(*voc) == "train" and split_of(*voc, "image_labels=false") == "val"
    assert (
        split_of(*voc, "split=val") == "val" and split_of(*voc, "split=train_aug", "image_labels=false") == "train_aug"
    )
    assert split_of("dataset=coco_stuff") == "train" and split_of("dataset=coco_stuff", "image_labels=false") == "test"
    assert split_of("dataset.train_list=mine.txt") == "mine.txt"  # synthetic: its (overridden) training list
    asdt = save_asdt_checkpoint(tmp_path / "asdt.ckpt", class_names=VOC_CLASSES)
    segmenter = save_segmenter_checkpoint(tmp_path / "seg.ckpt", VOC_CLASSES)
    assert default_split(config(f"ckpt={asdt}", *voc)) == "train"
    assert default_split(config(f"ckpt={segmenter}", *voc)) == "val"  # no image-label setting
    with pytest.raises(ASDTUserError, match="not found"):
        default_split(config(f"ckpt={tmp_path / 'nope.ckpt'}"))

    ckpt = save_asdt_checkpoint(tmp_path / "last.ckpt")
    given = [f"ckpt={ckpt}", "figure=false", "limit=2", "crfs=[none]", "branches=[fused]", *FAST]
    report = run_evaluate(compose_plain("evaluate", f"out={tmp_path / 'a'}", *given))
    without = run_evaluate(compose_plain("evaluate", f"out={tmp_path / 'b'}", *given, "image_labels=false"))
    assert (report["split"], report["split_images"]) == ("train", 10)  # the tiny root's 10 training images
    assert (without["split"], without["split_images"]) == ("val", 6)
