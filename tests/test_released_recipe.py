"""``experiment=voc_released`` (the released training step as it runs) and ``voc_paper`` (the same with the PWM
acting): every point where the released code departs from our defaults, asserted, so a regression fails here.

The loss forms are checked against values computed by hand (numpy, float64) on small tensors from the released
code's equations (``tool/myTool.compute_joint_loss``, ``DenseEnergyLoss.py``), not against our own functions.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn

from asdt_lightning.data.registry import config_class_names
from asdt_lightning.lit.callbacks import PWMCallback
from asdt_lightning.method.asdt_loss import ASDTLoss, LossWeights, PairwiseParams, TeacherBParams
from asdt_lightning.method.cam import TeacherAParams, merge_multiscale_cams
from asdt_lightning.method.crf import CRFParams
from asdt_lightning.method.losses import balanced_cross_entropy, dense_energy_loss
from asdt_lightning.method.pwm import TEACHER_B
from asdt_lightning.models.asdt import build_asdt_net
from asdt_lightning.models.backbones import build_backbone
from asdt_lightning.train import build_module


def composed(*overrides: str) -> dict:
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "backbone", "dataset", "pwm", "trainer")}


@pytest.fixture(scope="module", params=["voc_released", "voc_paper"])
def recipe(request):
    cfg = composed(f"experiment={request.param}")
    return request.param, cfg, build_module(cfg, config_class_names(cfg["dataset"]))


def test_both_recipes_train_without_momentum_as_the_released_optimiser_does(recipe):
    _name, cfg, module = recipe
    module.trainer = L.Trainer(accelerator="cpu", max_steps=cfg["trainer"]["max_steps"], logger=False)
    try:
        optimizer = module.configure_optimizers()["optimizer"]
    finally:
        module.trainer = None
    assert isinstance(optimizer, torch.optim.SGD)
    assert {g["momentum"] for g in optimizer.param_groups} == {1e-5}  # SGD(params, lr, weight_decay): momentum
    assert sorted({g["weight_decay"] for g in optimizer.param_groups}) == [0.0, 1e-5]  # per group, as released


def test_the_pwm_switches_the_student_in_voc_paper_and_never_in_voc_released(recipe):
    name, cfg, module = recipe
    pwm = PWMCallback(**cfg["pwm"])
    b_steps = [t for t in range(3000) if pwm.signal(t) == TEACHER_B]
    if name == "voc_released":  # the line that would use teacher B's labels is commented out
        assert b_steps == []
    else:
        assert b_steps == [t for t in range(1000, 3000) if t % 150 < 25]
        assert module.loss_weights.teacher_b == 0.1


def test_the_released_network_details(recipe):
    _name, _cfg, module = recipe
    net = module.net
    assert isinstance(net.cam_head.dropout, nn.Dropout2d) and net.cam_head.dropout.p == 0.5
    conv = net.refine_head.conv1  # 4096 -> 512, 3x3 dilated 12
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5  # Xavier-uniform; PyTorch's default would stay below 1 / sqrt(fan_in)
    assert 0.95 * bound < conv.weight.abs().max() <= bound
    assert (conv.dilation, conv.out_channels, net.output_stride) == ((12, 12), 512, 8)
    assert module.cam_relu_each_scale and module.cam_scales == [1.0, 0.5, 1.5, 2.0]
    objective = module.objective
    assert objective.label_resolution == "input"
    assert (objective.teacher_a.rule, objective.teacher_a.ignore_padding) == ("released", False)
    assert (objective.teacher_a.alpha_low, objective.teacher_a.alpha_high) == (4, 32)
    assert (objective.pairwise.form, objective.pairwise.scale, objective.weights.pairwise) == (
        "dense_energy",
        0.5,
        1e-7,
    )
    assert (objective.pairwise.sxy, objective.pairwise.srgb) == (100, 15)
    assert (objective.weights.balanced_ce, objective.weights.balanced_ce_combine) == (True, "sum")
    assert objective.weights.classifier_warmup == 0 and module.fusion == "max"
    assert objective.teacher_b.crf.bilateral_sxy == 83 and objective.teacher_b.crf.bilateral_compat == 4


def test_cam_dropout_touches_the_classifier_logits_in_training_only():
    torch.manual_seed(0)
    net = build_asdt_net("resnet18", num_classes=3, output_stride=8, head_channels=8, cam_dropout=0.5)
    features = torch.rand(2, net.backbone.out_channels, 4, 4) + 0.1
    net.cam_head.train()
    cams, logits = net.cam_head(features)
    assert not torch.allclose(logits, cams.mean((2, 3)))  # pooled from channel-dropped features
    net.cam_head.eval()
    cams_eval, logits_eval = net.cam_head(features)
    assert torch.equal(cams, cams_eval) and torch.allclose(logits_eval, cams.mean((2, 3)), atol=1e-6)


def test_fc8_survives_the_xavier_head_init(tmp_path):
    torch.manual_seed(0)
    state = build_backbone("resnet18", output_stride=8).state_dict()
    fc8 = torch.randn(20, 512, 1, 1)
    path = tmp_path / "res18_cls.pth"
    torch.save({**state, "fc8.weight": fc8}, path)
    net = build_asdt_net("resnet18", num_classes=20, output_stride=8, weights=str(path), head_init="xavier")
    assert torch.equal(net.cam_head.classifier.weight, fc8)  # loaded after the heads are initialised


def test_relu_on_each_scale_keeps_one_scales_negative_cam_from_cancelling_anothers():
    a, b = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), -2.0)
    assert torch.equal(merge_multiscale_cams([a, b], (2, 2), relu_each=True), torch.full((1, 1, 2, 2), 1.0))
    assert torch.equal(merge_multiscale_cams([a, b], (2, 2)), torch.zeros(1, 1, 2, 2))


# --------------------------------------------------------------------------------------- loss forms by hand
def log_softmax_np(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def test_balanced_ce_sum_is_the_background_mean_plus_the_foreground_mean():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 3, 5), generator=g)
    labels[0, 0] = 255
    lsm = log_softmax_np(logits.numpy())
    lab = labels.numpy()
    nll = {}
    for group, mask in (("bg", lab == 0), ("fg", (lab > 0) & (lab != 255))):
        idx = np.nonzero(mask)
        nll[group] = -lsm[idx[0], lab[mask], idx[1], idx[2]].mean()
    expected = nll["bg"] + nll["fg"]  # bg_celoss + fg_celoss of compute_joint_loss
    assert float(balanced_cross_entropy(logits, labels, combine="sum")) == pytest.approx(expected, rel=1e-12)
    assert float(balanced_cross_entropy(logits, labels)) == pytest.approx(expected / 2, rel=1e-12)
    with pytest.raises(ValueError, match="combine"):
        balanced_cross_entropy(logits, labels, combine="max")


def dense_energy_by_hand(images, probs, roi, labels, sigma_rgb, sigma_xy):
    """DenseEnergyLoss's forward and backward at one scale with the exact Gaussian kernel (numpy, float64):
    (B, 3, h, w) images, (B, K, h, w) probs, (B, h, w) roi / labels -> (energy, d energy / d probs)."""
    b, k, h, w = probs.shape
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    energy, grad = 0.0, np.zeros_like(probs)
    for i in range(b):
        feats = np.concatenate(
            [np.stack([ys, xs], -1).reshape(-1, 2) / sigma_xy, images[i].reshape(3, -1).T / sigma_rgb], 1
        )
        kernel = np.exp(-((feats[:, None] - feats[None]) ** 2).sum(2) / 2)  # (N, N), self included
        gate = roi[i] - probs[i].max(0)
        gate[labels[i] == 255] = 1
        gate = np.clip(gate, 0, None).reshape(-1)
        seg = (probs[i] * roi[i]).reshape(k, -1)
        gated = (seg @ kernel.T) * gate  # AS * Gate
        energy -= (seg * gated).sum() / b
        grad[i] = (-2 * gated / b).reshape(k, h, w) * roi[i]
    return energy, grad


def small_energy_inputs(h: int, w: int, k: int = 3, b: int = 2):
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(b, k, h, w, generator=g, dtype=torch.float64) * 2, 1)
    rgb = torch.randint(0, 256, (b, 3, h, w), generator=g).double()
    roi = torch.ones(b, h, w, dtype=torch.bool)
    roi[0, :, -2:] = False  # padded columns
    labels = torch.randint(0, k, (b, h, w), generator=g)
    labels[1, :3] = 255
    return probs, rgb, roi, labels


def test_dense_energy_loss_and_its_released_gradient_match_the_equations():
    probs, rgb, roi, labels = small_energy_inputs(7, 9)
    leaf = probs.float().requires_grad_()
    loss = dense_energy_loss(leaf, rgb.float(), roi, labels, sigma_rgb=15, sigma_xy=4, scale=1.0)
    loss.backward()
    energy, grad = dense_energy_by_hand(rgb.numpy(), probs.numpy(), roi.double().numpy(), labels.numpy(), 15, 4)
    assert float(loss) == pytest.approx(energy, rel=1e-5)
    np.testing.assert_allclose(leaf.grad.double().numpy(), grad, rtol=1e-4, atol=1e-6)
    assert float(loss) < 0 and (leaf.grad[0, :, :, -2:] == 0).all()  # an energy to lower; padding gets none


def test_dense_energy_at_half_scale_resizes_as_the_released_layer_and_scales_sigma_xy():
    probs, rgb, roi, labels = small_energy_inputs(12, 16)
    loss = dense_energy_loss(probs.float(), rgb.float(), roi, labels, sigma_rgb=15, sigma_xy=10, scale=0.5)
    f = torch.nn.functional  # the released layer's calls: nearest for images, ROI and labels, bilinear for probs
    small = [
        f.interpolate(rgb, scale_factor=0.5),
        f.interpolate(probs, scale_factor=0.5, mode="bilinear", align_corners=False),
        f.interpolate(roi[:, None].double(), scale_factor=0.5)[:, 0],
        f.interpolate(labels[:, None].double(), scale_factor=0.5)[:, 0].long(),
    ]
    energy, _ = dense_energy_by_hand(*(t.numpy() for t in small), 15, 10 * 0.5)
    assert float(loss) == pytest.approx(energy, rel=1e-5)


# ---------------------------------------------------------------------------------------- label resolution
def test_labels_and_losses_at_the_crop_resolution_with_label_resolution_input():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(1, 3, 24, 20, generator=g) * 255
    cams = torch.rand(1, 2, 3, 3, generator=g)
    logits = torch.randn(1, 3, 3, 3, generator=g, requires_grad=True)
    labels = torch.tensor([[1.0, 1.0]])
    crf = CRFParams(iterations=2, connectivity="full")
    common = dict(
        weights=LossWeights(classifier_warmup=0, ramp=0, pairwise=1e-3),
        teacher_a=TeacherAParams(crf=crf, rule="released", ignore_padding=False),
        teacher_b=TeacherBParams(crf=crf),
        pairwise=PairwiseParams(form="dense_energy", scale=0.5),
    )
    valid = torch.ones(1, 24, 20, dtype=torch.bool)
    crop = ASDTLoss(**common, label_resolution="input").teacher_targets(rgb, valid, labels, cams, logits)
    grid = ASDTLoss(**common, label_upsample=2).teacher_targets(rgb, valid, labels, cams, logits)
    assert crop.size == (24, 20) and crop.labels_a.shape == (1, 24, 20) and crop.pixel_step == 1.0
    assert grid.size == (6, 6) and grid.labels_a.shape == (1, 6, 6)
    loss, terms = ASDTLoss(**common, label_resolution="input")(
        rgb, valid, labels, cams, logits, logits * 1.0, torch.tensor(0.5), step=0, teacher_source=0
    )
    loss.backward()
    assert torch.isfinite(loss) and float(terms["train/loss_refine_pairwise"]) < 0  # the dense energy
    with pytest.raises(ValueError, match="label_resolution"):
        ASDTLoss(**common, label_resolution="crop")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"form": "gated"}, "form"),
        ({"scale": 0.0}, "scale"),
        ({"connectivity": "dense"}, "pydensecrf2"),
    ],
)
def test_pairwise_settings_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        PairwiseParams(**bad)


def test_a_dense_crf_without_pydensecrf2_is_refused_before_anything_is_built(monkeypatch):
    from asdt_lightning import checks
    from asdt_lightning.errors import ASDTUserError
    from asdt_lightning.train import check_config

    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=["model.teacher_b.crf.connectivity=dense"])
    check_config(cfg)  # installed here (the dev extra): accepted
    monkeypatch.setattr(checks, "pydensecrf_available", lambda: False)
    with pytest.raises(ASDTUserError, match=r"model.teacher_b.crf.connectivity=dense needs .*pip install"):
        check_config(cfg)


def test_a_recipe_without_weights_warns_that_its_cam_head_starts_at_random(caplog):
    import logging

    from asdt_lightning.train import warn_untrained_cam_head

    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        bare = compose("train", overrides=["experiment=voc_released"])
        weighted = compose("train", overrides=["experiment=voc_released", "backbone.weights=/w/res38_cls.pth"])
        default = compose("train")
    with caplog.at_level(logging.WARNING, logger="asdt_lightning.train"):
        for cfg in (weighted, default):  # trained weights / a classifier warm-up: nothing to say
            warn_untrained_cam_head(cfg)
        assert caplog.records == []
        warn_untrained_cam_head(bare)
    assert len(caplog.records) == 1 and "backbone.weights=/path/res38_cls.pth" in caplog.records[0].getMessage()
