import lightning as L
import pytest
import torch

from asdt_lightning.constants import IGNORE_INDEX
from asdt_lightning.errors import ASDTUserError
from asdt_lightning.lit.callbacks import PWMCallback
from asdt_lightning.lit.module import ASDTModule
from asdt_lightning.method.cam import predicted_image_labels
from asdt_lightning.models.asdt import ASDTOutput, build_asdt_net
from asdt_lightning.models.heads import CAMHead, pool_cams
from conftest import CLASS_NAMES, small_module_kwargs


@pytest.mark.parametrize(("output_stride", "has_background"), [(8, True), (16, True), (8, False)])
def test_network_returns_every_branch(output_stride, has_background):
    net = build_asdt_net(
        "resnet18", num_classes=5, has_background=has_background, output_stride=output_stride, head_channels=8
    )
    out = net(torch.randn(2, 3, 64, 64))
    h = 64 // output_stride
    k = 5 + int(has_background)
    assert out.cams.shape == (2, 5, h, h)
    assert out.class_logits.shape == (2, 5)
    assert out.refine_logits.shape == out.student_logits.shape == (2, k, h, h)
    assert torch.allclose(out.class_logits, out.cams.mean((2, 3)))
    assert net.forward_cams(torch.randn(1, 3, 32, 32)).shape == (1, 5, 32 // output_stride, 32 // output_stride)


@pytest.mark.parametrize("has_background", [True, False])
def test_skip_heads_predict_at_stride_4(has_background):
    torch.manual_seed(0)
    net = build_asdt_net("resnet18", 5, has_background, output_stride=8, head_channels=8, skip_channels=4)
    out = net(torch.randn(2, 3, 64, 48))
    k = 5 + int(has_background)
    assert out.cams.shape == (2, 5, 8, 6)
    assert out.refine_logits.shape == out.student_logits.shape == (2, k, 16, 12)
    (out.refine_logits.sum() + out.student_logits.sum()).backward()
    assert net.refine_head.skip[0].weight.grad.abs().sum() > 0  # the stride-4 path carries gradient
    assert net.backbone.layer1[0].conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ASDTUserError, match="skip_channels"):
        build_asdt_net("resnet18", 5, output_stride=8, skip_channels=-1)


def batch_of(loader):
    return next(iter(loader))


@pytest.mark.parametrize("source", [0, 1])
@pytest.mark.parametrize("distillation", ["hard", "soft"])
def test_training_step_gives_a_finite_loss_and_trains_every_branch(random_loader, source, distillation):
    torch.manual_seed(0)
    module = ASDTModule(**small_module_kwargs(loss={"distillation": distillation}))
    module.set_teacher(0, source)
    loss = module.training_step(batch_of(random_loader()), 0)
    assert torch.isfinite(loss)
    loss.backward()
    for head in (module.net.cam_head, module.net.refine_head, module.net.student_head):
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(p.grad.abs().sum() > 0 for p in module.net.student_head.parameters())


def test_training_step_on_images_without_any_class_is_finite(random_loader):
    module = ASDTModule(**small_module_kwargs())
    batch = batch_of(random_loader())
    batch["labels"].zero_()
    for source in (0, 1):
        module.set_teacher(0, source)
        loss = module.training_step(batch, 0)
        assert torch.isfinite(loss)
        loss.backward()


def test_training_step_refuses_to_run_without_the_pwm_callback(random_loader):
    module = ASDTModule(**small_module_kwargs())
    with pytest.raises(RuntimeError, match="PWMCallback"):
        module.training_step(batch_of(random_loader()), 0)


def test_parameter_groups_follow_the_1x_2x_10x_20x_rule():
    module = ASDTModule(
        **small_module_kwargs(
            net={"backbone": "resnet18", "head_channels": 8, "frozen_stem": True},
            optimizer={"lr": 0.1, "weight_decay": 1e-4},
        )
    )
    groups = {g["name"]: g for g in module.parameter_groups()}
    assert {n: g["lr"] for n, g in groups.items()} == pytest.approx(
        {"backbone_weight": 0.1, "backbone_bias": 0.2, "head_weight": 1.0, "head_bias": 2.0}
    )
    assert groups["backbone_bias"]["weight_decay"] == 0 and groups["head_weight"]["weight_decay"] == 1e-4
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    trainable = [id(p) for p in module.net.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)  # every trainable parameter exactly once
    assert id(module.net.backbone.conv1.weight) not in grouped  # frozen stem
    head_params = {id(p) for m in module.net.head_modules() for p in m.parameters()}
    assert {id(p) for p in groups["head_weight"]["params"]} <= head_params


@pytest.mark.parametrize(
    "bad",
    [
        {"loss": {"distillation": "fuzzy"}},
        {"loss": {"nope": 1}},
        {"cam_scales": [0.5, 1.0]},
        {"optimizer": {"name": "rmsprop"}},
        {"label_upsample": 0},
        {"label_upsample": 1.5},
    ],
)
def test_bad_module_options_raise_user_errors(bad):
    with pytest.raises(ASDTUserError):
        ASDTModule(**small_module_kwargs(**bad))


def test_nested_options_override_only_what_they_name():
    module = ASDTModule(**small_module_kwargs(teacher_b={"crf": {"iterations": 3}}))
    assert module.teacher_b.crf.iterations == 3
    assert module.teacher_b.crf.bilateral_srgb == 5  # teacher B's own default kept


def test_fit_validate_and_reload_from_checkpoint(random_loader, tmp_path):
    torch.manual_seed(0)
    module = ASDTModule(**small_module_kwargs())
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PWMCallback(period=2, duty=0.5)],
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    trainer.fit(module, random_loader(), random_loader(n=4))
    trainer.validate(module, random_loader(n=4), verbose=False)
    results = module.val_results
    assert set(results["miou"]) == {"cam", "refine", "student", "fused"}
    assert all(0.0 <= v <= 1.0 for v in results["miou"].values())
    assert set(results["per_class_iou"]["fused"]) == {"background", *CLASS_NAMES}
    assert results["cam_threshold"] in module.cam_thresholds
    # the poly schedule decays to zero at max_steps
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    reloaded = ASDTModule.load_from_checkpoint(path)
    x = torch.randn(1, 3, 64, 64)
    module.eval(), reloaded.eval()
    assert torch.allclose(module(x).student_logits, reloaded(x).student_logits)


@pytest.mark.parametrize(("upsample", "skip"), [(1, 0), (2, 0), (1, 8), (2, 8)])
def test_teacher_labels_and_pixel_losses_live_at_the_label_resolution(random_loader, monkeypatch, upsample, skip):
    import asdt_lightning.method.asdt_loss as module_code

    seen = {}
    original = module_code.reliable_cam_labels

    def spy(image, norm_cams, *args, **kwargs):
        seen["image"], seen["cams"] = image.shape, norm_cams.shape
        labels = original(image, norm_cams, *args, **kwargs)
        seen["labels"] = labels.shape
        return labels

    monkeypatch.setattr(module_code, "reliable_cam_labels", spy)
    net = {"backbone": "resnet18", "output_stride": 8, "head_channels": 16, "skip_channels": skip}
    module = ASDTModule(**small_module_kwargs(label_upsample=upsample, net=net))
    module.set_teacher(0, 1)
    batch = batch_of(random_loader(size=64))
    loss = module.training_step(batch, 0)
    side = 64 // (4 if skip else 8) * upsample  # the heads' stride: 4 with the skip, else the output stride 8
    assert seen["labels"] == (2, side, side)
    assert seen["image"][-2:] == seen["cams"][-2:] == (side, side)
    loss.backward()
    assert all(p.grad is not None for p in module.net.refine_head.parameters())


def test_segmentation_terms_ramp_up_after_the_warm_up():
    from asdt_lightning.lit.module import LossWeights

    weights = LossWeights(classifier_warmup=10, ramp=4)
    assert [weights.segmentation_scale(step) for step in (10, 11, 12, 13, 14, 500)] == [0.25, 0.5, 0.75, 1, 1, 1]
    assert LossWeights(classifier_warmup=10, ramp=0).segmentation_scale(10) == 1.0  # ramp 0: full weight at once


def test_under_bf16_autocast_labels_crfs_and_pixel_losses_stay_fp32(random_loader, monkeypatch):
    import asdt_lightning.method.asdt_loss as module_code

    dtypes = {}

    def spy(name, original):
        def wrapper(*args, **kwargs):
            floats = {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}
            dtypes[name] = (floats, torch.is_autocast_enabled("cpu"))
            return original(*args, **kwargs)

        return wrapper

    for name in ("reliable_cam_labels", "refinement_teacher_labels", "pairwise_loss", "balanced_cross_entropy"):
        monkeypatch.setattr(module_code, name, spy(name, getattr(module_code, name)))
    module = ASDTModule(**small_module_kwargs())
    module.set_teacher(0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.training_step(batch_of(random_loader()), 0)
    assert torch.isfinite(loss)
    assert set(dtypes) == {
        "reliable_cam_labels",
        "refinement_teacher_labels",
        "pairwise_loss",
        "balanced_cross_entropy",
    }
    assert all(found == ({torch.float32}, False) for found in dtypes.values()), dtypes


def test_the_ramp_scales_the_segmentation_terms_in_the_training_step(random_loader):
    batch = batch_of(random_loader())
    losses = {}
    for ramp in (0, 4):
        torch.manual_seed(0)
        module = ASDTModule(**small_module_kwargs(loss={"cls": 0.0, "classifier_warmup": 0, "ramp": ramp}))
        module.set_teacher(0, 0)
        losses[ramp] = module.training_step(batch, 0)  # global step 0: the ramp's first step, 1/4 weight
    assert losses[0] > 0
    assert torch.allclose(losses[4], losses[0] / 4, rtol=1e-5)


@pytest.mark.parametrize("source", [0, 1])
def test_ground_truth_supervision_trains_both_heads_on_the_true_masks(random_loader, monkeypatch, source):
    import asdt_lightning.method.asdt_loss as module_code

    targets = []
    original = module_code.balanced_cross_entropy

    def spy(logits, labels, *args, **kwargs):
        targets.append(labels.clone())
        return original(logits, labels, *args, **kwargs)

    monkeypatch.setattr(module_code, "balanced_cross_entropy", spy)
    module = ASDTModule(**small_module_kwargs(loss={"supervision": "ground_truth"}))
    module.set_teacher(0, source)  # the PWM source does not matter: no teacher B in the upper bound
    batch = batch_of(random_loader(size=64))
    module.training_step(batch, 0)
    expected = batch["mask"][:, ::8, ::8]  # nearest from 64 to 8 pixels: every 8th pixel ...
    expected = expected.masked_fill(~module.valid_at(batch["valid"], (8, 8)), IGNORE_INDEX)  # ... padding ignored
    assert (expected != IGNORE_INDEX).any() and expected.unique().numel() > 1
    assert len(targets) == 2  # R's CE and S's CE
    assert all(torch.equal(t, expected) for t in targets)
    with pytest.raises(ASDTUserError, match="supervision"):
        ASDTModule(**small_module_kwargs(loss={"supervision": "masks"}))


def test_kernel_buffers_reused_across_steps_change_no_loss_or_gradient(random_loader):
    import copy

    torch.manual_seed(0)
    reused = ASDTModule(**small_module_kwargs(loss={"classifier_warmup": 0, "ramp": 0}))
    fresh = copy.deepcopy(reused)
    loader = iter(random_loader(n=6, batch_size=2))
    pointers = set()
    for step, source in enumerate([0, 1, 1]):  # teacher A, then B twice: each kernel rebuilt in its buffer
        batch = next(loader)
        results = []
        for module in (reused, fresh):
            if module is fresh:
                module.objective._kernel_buffers.clear()  # every kernel in new memory
            module.set_teacher(0, source)  # no Trainer: the global step stays 0
            module.zero_grad(set_to_none=True)
            loss = module.training_step(batch, step)
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in module.net.student_head.parameters()]))
        (loss_r, grads_r), (loss_f, grads_f) = results
        assert torch.equal(loss_r, loss_f) and any(g.abs().sum() > 0 for g in grads_r)  # the kernels are in it
        assert all(torch.equal(a, b) for a, b in zip(grads_r, grads_f, strict=True))
        pointers.add(tuple(sorted((name, b.data_ptr()) for name, b in reused.objective._kernel_buffers.items())))
    assert len(pointers) == 1 and {name for name, _ in next(iter(pointers))} == {"teachers", "pairwise"}


class _FixedNet(torch.nn.Module):
    """Every image: R and S favour class 2 ("bell") over class 1 ("apple"), the classifier predicts "bell", and
    the CAMs of both are high on the whole image."""

    def forward(self, images):
        b, _, h, w = images.shape
        seg = torch.zeros(b, 1 + len(CLASS_NAMES), h // 4, w // 4)
        seg[:, 1], seg[:, 2] = 2.0, 3.0
        cams = torch.zeros(b, len(CLASS_NAMES), h // 8, w // 8)
        cams[:, 0], cams[:, 1] = 1.0, 2.0
        class_logits = torch.tensor([[-3.0, 4.0, -3.0]]).expand(b, -1)
        return ASDTOutput(cams, class_logits, seg, seg.clone())


def test_validation_scores_with_and_without_the_image_labels():
    """With the ground-truth classes ({apple}) every branch is right on an all-apple image; without them R, S and
    fused take the favoured "bell" and the CAM the predicted "bell": all wrong."""
    module = ASDTModule(**small_module_kwargs())
    module.net = _FixedNet()
    images = torch.zeros(2, 3, 32, 32)
    batch = {"image": images, "labels": torch.tensor([[1.0, 0.0, 0.0]] * 2), "mask": torch.ones(2, 32, 32).long()}
    module.validation_step(batch, 0)
    module.log = module.log_dict = lambda *args, **kwargs: None  # no trainer to log to
    module.on_validation_epoch_end()
    results = module.val_results
    assert results["miou"] == {"cam": 1.0, "refine": 1.0, "student": 1.0, "fused": 1.0}
    assert results["miou_without_image_labels"] == {"cam": 0.0, "refine": 0.0, "student": 0.0, "fused": 0.0}
    assert results["cam_threshold_without_image_labels"] in module.cam_thresholds
    module.validation_step(batch, 0)  # the matrices were reset: the same scores again
    module.on_validation_epoch_end()
    again = module.val_results
    assert (
        again["miou"] == results["miou"] and again["miou_without_image_labels"] == results["miou_without_image_labels"]
    )


def test_predicted_image_labels_keep_the_top_class():
    logits = torch.tensor([[-5.0, -1.0, -4.0], [2.0, 0.5, -1.0]])
    assert predicted_image_labels(logits).tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    assert predicted_image_labels(logits, threshold=0.9).tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_cam_pooling_scores_each_class_on_the_mean_the_max_or_its_top_pixels():
    cams = torch.zeros(1, 2, 4, 5)
    cams[0, 0, 0, :2] = torch.tensor([4.0, 2.0])  # class 0: a small strong region
    cams[0, 1] = 0.5  # class 1: weak everywhere
    assert torch.allclose(pool_cams(cams, "gap"), torch.tensor([[0.3, 0.5]]))
    assert torch.allclose(pool_cams(cams, "gmp"), torch.tensor([[4.0, 0.5]]))
    assert torch.allclose(pool_cams(cams, "topk", 0.1), torch.tensor([[3.0, 0.5]]))  # top 2 of 20 pixels
    assert torch.allclose(pool_cams(cams, "topk", 0.01), pool_cams(cams, "gmp"))  # at least one pixel
    assert torch.allclose(pool_cams(cams, "topk", 1.0), pool_cams(cams, "gap"))


@pytest.mark.parametrize("pooling", ["gmp", "topk"])
def test_max_pooled_classifier_trains_only_through_its_top_pixels(pooling):
    torch.manual_seed(0)
    head = CAMHead(4, 3, pooling=pooling, topk_fraction=0.25)
    features = torch.rand(2, 4, 4, 4, requires_grad=True)
    cams, logits = head(features)
    assert torch.allclose(logits, pool_cams(cams, pooling, 0.25))
    logits.sum().backward()
    touched = (features.grad.abs().sum(1) > 0).flatten(1).sum(1)  # pixels that get any gradient
    assert (touched <= 3 * (1 if pooling == "gmp" else 4)).all() and (touched >= 1).all()


def test_cam_dropout_with_max_pooling_drops_channels_in_training_only():
    torch.manual_seed(0)
    head = CAMHead(16, 3, dropout=0.5, pooling="gmp")
    features = torch.rand(2, 16, 4, 4) + 0.1
    cams, logits = head.train()(features)
    assert not torch.allclose(logits, cams.amax((2, 3)))
    cams_eval, logits_eval = head.eval()(features)
    assert torch.equal(cams, cams_eval) and torch.equal(logits_eval, cams.amax((2, 3)))


@pytest.mark.parametrize("bad", [{"cam_pooling": "lse"}, {"cam_topk_fraction": 0.0}, {"cam_topk_fraction": 1.5}])
def test_bad_cam_pooling_names_its_model_net_key(bad):
    kwargs = small_module_kwargs()
    kwargs["net"] = {**kwargs["net"], "cam_pooling": "topk", **bad}
    key = next(iter(bad))
    with pytest.raises(ASDTUserError, match=f"model.net.{key}"):
        ASDTModule(**kwargs)
