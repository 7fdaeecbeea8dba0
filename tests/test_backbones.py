"""Backbones: shapes per output stride, dilation, registry, weight loading, freezing, offline pretrained."""

from __future__ import annotations

import socket
import urllib.error

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from asdt_lightning.errors import ASDTUserError
from asdt_lightning.models import backbones
from asdt_lightning.models.backbones import (
    BACKBONES,
    Backbone,
    available_backbones,
    build_backbone,
    check_backbone,
    load_backbone_weights,
    register_backbone,
)
from asdt_lightning.models.backbones import resnet38 as resnet38_module
from asdt_lightning.models.backbones.weights import load_checked

TORCHVISION = ["resnet18", "resnet50", "resnet101"]
CHANNELS = {"resnet18": 512, "resnet50": 2048, "resnet101": 2048}


@pytest.fixture(scope="module")
def resnet38() -> Backbone:
    """Built once: ~105M parameters."""
    torch.manual_seed(0)
    return build_backbone("resnet38", output_stride=8).eval()


def _randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine values, so that loading and freezing are observable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module


def _source_resnet18(tmp_path, seed: int = 0):
    torch.manual_seed(seed)
    source = _randomise_bn(build_backbone("resnet18", output_stride=8), seed).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    return source, path


def _assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", TORCHVISION)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_torchvision_output_shape(name, output_stride):
    backbone = build_backbone(name, output_stride=output_stride).eval()
    assert backbone.out_channels == CHANNELS[name]
    assert backbone.output_stride == output_stride
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    side = 64 // output_stride
    assert out.shape == (1, CHANNELS[name], side, side)


def test_output_shape_rounds_up_for_odd_sizes():
    backbone = build_backbone("resnet18", output_stride=16).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 65, 50))
    assert out.shape == (2, 512, 5, 4)  # ceil(65 / 16), ceil(50 / 16)


def test_resnet38_output_shape(resnet38):
    assert (resnet38.out_channels, resnet38.output_stride) == (4096, 8)
    with torch.no_grad():
        out = resnet38(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 4096, 8, 8)
    assert out.min() >= 0  # ends with bn7 + ReLU


@pytest.mark.parametrize("name", [*TORCHVISION, "resnet38"])
def test_forward_levels_gives_stride_4_and_final_features(name, resnet38):
    backbone = resnet38 if name == "resnet38" else build_backbone(name, output_stride=8).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        low, final = backbone.forward_levels(x)
        assert torch.equal(final, backbone(x))
    assert low.shape == (1, backbone.low_level_channels, 16, 12)
    assert final.shape == (1, backbone.out_channels, 8, 6)


@pytest.mark.parametrize(("name", "output_stride"), [("resnet18", 4), ("resnet50", 12), ("resnet38", 16)])
def test_unsupported_output_stride(name, output_stride):
    with pytest.raises(ASDTUserError) as error:
        build_backbone(name, output_stride=output_stride)
    _assert_one_line(error, name, f"output_stride={output_stride}")


# ---------------------------------------------------------------------------------------------- dilation


def _convs_3x3(layer: nn.Module) -> list[nn.Conv2d]:
    return [m for m in layer.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


def test_resnet18_os8_dilation():
    backbone = build_backbone("resnet18", output_stride=8)
    for layer in (backbone.layer3, backbone.layer4):
        assert all(m.stride == (1, 1) for m in layer.modules() if isinstance(m, nn.Conv2d))
    # first block keeps the previous dilation, the rest use the new one
    assert {m.dilation for m in _convs_3x3(backbone.layer3[0])} == {(1, 1)}
    assert {m.dilation for m in _convs_3x3(backbone.layer3[1])} == {(2, 2)}
    assert {m.dilation for m in _convs_3x3(backbone.layer4[0])} == {(2, 2)}
    assert {(m.dilation, m.padding) for m in _convs_3x3(backbone.layer4[1])} == {((4, 4), (4, 4))}
    assert backbone.layer2[0].conv1.stride == (2, 2)


def test_resnet18_os16_dilates_only_layer4():
    backbone = build_backbone("resnet18", output_stride=16)
    assert backbone.layer3[0].conv1.stride == (2, 2)
    assert backbone.layer3[0].downsample[0].stride == (2, 2)
    assert {m.dilation for m in _convs_3x3(backbone.layer3)} == {(1, 1)}
    assert backbone.layer4[0].downsample[0].stride == (1, 1)
    assert {m.dilation for m in _convs_3x3(backbone.layer4[1])} == {(2, 2)}


@pytest.mark.parametrize(("output_stride", "dilate"), [(8, [False, True, True]), (16, [False, False, True])])
def test_resnet50_dilation_matches_torchvision(output_stride, dilate):
    """Same weights, same features as torchvision's own replace_stride_with_dilation (Bottleneck only)."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilate).eval()
    backbone = build_backbone("resnet50", output_stride=output_stride).eval()
    backbone.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        r = reference
        expected = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))))
        torch.testing.assert_close(backbone(x), expected)


# ---------------------------------------------------------------------------------------------- registry


def test_registry_names():
    torchvision_and_wsss = ["resnet101", "resnet18", "resnet38", "resnet50"]
    assert available_backbones() == sorted(
        [
            *torchvision_and_wsss,
            "convnext_tiny",
            "deit_base",
            "efficientnet_lite0",
            "efficientnet_lite1",
            "efficientnet_lite2",
            "res2net101",
            "vit_base_patch16",
        ]
    )
    assert set(BACKBONES) == set(available_backbones())


def test_unknown_backbone_lists_names():
    with pytest.raises(ASDTUserError) as error:
        build_backbone("resnet99")
    _assert_one_line(error, "resnet99", *available_backbones())


def test_register_backbone():
    @register_backbone("tiny_test")
    def tiny(output_stride: int = 16, pretrained: bool = False) -> Backbone:
        raise NotImplementedError  # only the registration is checked

    try:
        assert "tiny_test" in available_backbones()
        assert BACKBONES["tiny_test"] is tiny
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("tiny_test")(tiny)
    finally:
        BACKBONES.pop("tiny_test")


# ---------------------------------------------------------------------------------------------- weights


def _wrap_raw(state):
    return state


def _wrap_nested_module(state):
    return {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}


def _wrap_with_classifier(state):
    return {**state, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}


def _wrap_model_backbone(state):
    return {"model": {"backbone." + k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}}


@pytest.mark.parametrize("wrap", [_wrap_raw, _wrap_nested_module, _wrap_with_classifier, _wrap_model_backbone])
def test_weights_round_trip(tmp_path, wrap):
    source, _ = _source_resnet18(tmp_path)
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(source.state_dict()), path)
    torch.manual_seed(1)
    target = build_backbone("resnet18", output_stride=8).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(target(x), source(x))
        load_backbone_weights(target, path)
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_build_backbone_loads_weights(tmp_path):
    source, path = _source_resnet18(tmp_path)
    torch.manual_seed(1)
    target = build_backbone("resnet18", output_stride=8, weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_wrong_architecture_weights(tmp_path):
    _, path = _source_resnet18(tmp_path)
    target = build_backbone("resnet50")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ASDTUserError) as error:
        load_backbone_weights(target, path)
    _assert_one_line(error, str(path), "resnet50", "keys matched", "missing e.g.", "wrong shape")
    # nothing was loaded (conv1 and bn1 have matching shapes and would have been)
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_extra_and_missing_keys_are_reported(tmp_path):
    source, _ = _source_resnet18(tmp_path)
    state = source.state_dict()
    state.pop("layer4.1.conv2.weight")
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ASDTUserError) as error:
        load_backbone_weights(build_backbone("resnet18"), path)
    _assert_one_line(error, "missing e.g. ['layer4.1.conv2.weight']", "unexpected e.g. ['layer5.0.conv1.weight']")


def test_wrong_shape_is_reported(tmp_path):
    source, _ = _source_resnet18(tmp_path)
    state = source.state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "reshaped.pth"
    torch.save(state, path)
    with pytest.raises(ASDTUserError) as error:
        load_backbone_weights(build_backbone("resnet18"), path)
    _assert_one_line(error, str(path), "wrong shape e.g. ['conv1.weight (64, 3, 5, 5) vs (64, 3, 7, 7)']")


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(ASDTUserError) as error:
        load_backbone_weights(build_backbone("resnet18"), path)
    _assert_one_line(error, str(path))


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("truncated", "truncated or corrupt"),
        ("whole_model", "pickled Python objects"),
        ("empty", "is empty"),
        ("garbage", "not a PyTorch file"),
    ],
)
def test_unreadable_weights_say_what_the_file_is_not_never_weights_only_false(tmp_path, content, says):
    path = tmp_path / f"{content}.pth"
    if content == "whole_model":
        torch.save(torch.nn.Linear(2, 2), path)
    elif content == "truncated":
        torch.save(build_backbone("resnet18").state_dict(), path)
        path.write_bytes(path.read_bytes()[:100_000])
    else:
        path.write_bytes(b"" if content == "empty" else b"GIF89a not weights" * 4)
    with pytest.raises(ASDTUserError) as error:
        load_backbone_weights(build_backbone("resnet18"), path)
    _assert_one_line(error, str(path), says)
    assert "weights_only" not in str(error.value)


def test_torch_file_without_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ASDTUserError) as error:
        load_backbone_weights(build_backbone("resnet18"), path)
    _assert_one_line(error, str(path), "not a state dict")


def test_missing_weights_file(tmp_path, monkeypatch):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(ASDTUserError) as error:
        load_backbone_weights(build_backbone("resnet18"), path)
    assert str(error.value) == f"backbone.weights file not found: {path}"

    # build_backbone checks the path before building anything
    monkeypatch.setitem(BACKBONES, "resnet18", lambda **_: pytest.fail("built before checking weights"))
    with pytest.raises(ASDTUserError) as error:
        build_backbone("resnet18", weights=str(path))
    _assert_one_line(error, str(path))


def test_check_backbone_refuses_what_build_backbone_would(tmp_path):
    _, path = _source_resnet18(tmp_path)
    check_backbone("resnet18")
    check_backbone("resnet38", str(path))
    with pytest.raises(ASDTUserError) as error:
        check_backbone("resnet7", str(path))
    choices = ", ".join(available_backbones())
    assert str(error.value) == (
        f"unknown backbone 'resnet7'; choose one of: {choices}, or any timm model name "
        "(backbone=timm backbone.name=<name>)"
    )
    with pytest.raises(ASDTUserError) as error:
        check_backbone("resnet18", "~/nowhere.pth")
    assert str(error.value) == "backbone.weights file not found: ~/nowhere.pth"  # the path as given
    with pytest.raises(ASDTUserError, match="pretrained"):
        check_backbone("resnet18", str(path), pretrained=True)


def test_weights_and_pretrained_conflict(tmp_path, monkeypatch):
    _, path = _source_resnet18(tmp_path)
    monkeypatch.setitem(BACKBONES, "resnet18", lambda **_: pytest.fail("built before checking options"))
    with pytest.raises(ASDTUserError) as error:
        build_backbone("resnet18", pretrained=True, weights=str(path))
    _assert_one_line(error, "backbone.weights", "pretrained")


# ---------------------------------------------------------------------------------------------- resnet38


def test_resnet38_key_names(resnet38):
    keys = set(resnet38.state_dict())
    for key in [
        "conv1a.weight",
        "b2.conv_branch1.weight",
        "b2.bn_branch2a.weight",
        "b2_1.conv_branch2b1.weight",
        "b4_5.bn_branch2b1.running_mean",
        "b5.conv_branch1.weight",
        "b6.conv_branch2b2.weight",
        "b7.conv_branch2b2.weight",
        "b7.bn_branch2b2.running_var",
        "bn7.weight",
    ]:
        assert key in keys, key
    assert "b2_1.conv_branch1.weight" not in keys  # identity shortcut when the shape is kept
    assert "b5_1.conv_branch1.weight" not in keys
    assert not any(k.startswith(("b4_6.", "b5_3.", "b8.", "fc")) for k in keys)
    assert not any(k.startswith("conv") or ".conv" in k for k in keys if k.endswith(".bias"))


def test_resnet38_layer_shapes(resnet38):
    sd = resnet38.state_dict()
    assert sd["conv1a.weight"].shape == (64, 3, 3, 3)
    assert sd["b2.conv_branch2a.weight"].shape == (128, 64, 3, 3)
    assert sd["b5.conv_branch2b1.weight"].shape == (1024, 512, 3, 3)
    assert sd["b6.conv_branch2a.weight"].shape == (512, 1024, 1, 1)
    assert sd["b6.conv_branch2b1.weight"].shape == (1024, 512, 3, 3)
    assert sd["b7.conv_branch2b2.weight"].shape == (4096, 2048, 1, 1)
    assert sd["b7.conv_branch1.weight"].shape == (4096, 2048, 1, 1)
    assert resnet38.b2.conv_branch2a.stride == (2, 2)
    assert resnet38.b5.conv_branch2a.dilation == (1, 1)
    assert resnet38.b5.conv_branch2b1.dilation == (2, 2)
    assert resnet38.b5_1.conv_branch2a.dilation == (2, 2)
    assert resnet38.b7.conv_branch2b1.dilation == (4, 4)
    assert (resnet38.b6.dropout_2b1.p, resnet38.b7.dropout_2b2.p) == (0.3, 0.5)
    assert resnet38.stem_modules() == [resnet38.conv1a]


def test_resnet38_accepts_converted_key_layout(resnet38):
    """The loader's checks on ResNet-38 names, in memory (a file would be ~420 MB)."""
    state = {"module." + k: v for k, v in resnet38.state_dict().items()}
    state["module.fc8.weight"] = torch.zeros(20, 4096, 1, 1)
    load_checked(resnet38, state, "weights file res38_cls.pth")

    state.pop("module.b7.conv_branch2b2.weight")
    with pytest.raises(ASDTUserError) as error:
        load_checked(resnet38, state, "weights file res38_cls.pth")
    _assert_one_line(error, "res38_cls.pth", "resnet38", "missing e.g. ['b7.conv_branch2b2.weight']")


def test_resnet38_pretrained_is_refused_before_building(monkeypatch):
    monkeypatch.setattr(resnet38_module, "ResNet38", lambda *_: pytest.fail("built before refusing"))
    with pytest.raises(ASDTUserError) as error:
        build_backbone("resnet38", output_stride=8, pretrained=True)
    _assert_one_line(error, "backbone.weights=", "resnet38")


# ---------------------------------------------------------------------------------------------- freezing


def test_frozen_bn(tmp_path):
    source, path = _source_resnet18(tmp_path)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in source.modules())
    frozen = build_backbone("resnet18", output_stride=8, weights=str(path), frozen_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) == n_bn

    x = torch.randn(2, 3, 64, 64)
    stats = {k: v.clone() for k, v in frozen.state_dict().items() if "running" in k}
    with torch.no_grad():
        train_out = frozen.train()(x)
        eval_out = frozen.eval()(x)
        torch.testing.assert_close(train_out, eval_out, rtol=0, atol=0)
        torch.testing.assert_close(eval_out, source.eval()(x), rtol=1e-4, atol=1e-4)  # same BN, other rounding
    for key, value in frozen.state_dict().items():
        if "running" in key:
            assert torch.equal(value, stats[key]), key
    load_backbone_weights(frozen, path)  # the same file still loads into the frozen model


def test_frozen_stem_torchvision():
    backbone = build_backbone("resnet18", frozen_stem=True)
    stem = {id(p) for m in (backbone.conv1, backbone.bn1) for p in m.parameters()}
    assert len(stem) == 3
    for p in backbone.parameters():
        assert p.requires_grad == (id(p) not in stem)
    assert any(p.requires_grad for p in backbone.layer1.parameters())


def test_frozen_stem_with_frozen_bn():
    backbone = build_backbone("resnet50", frozen_bn=True, frozen_stem=True)
    assert not backbone.conv1.weight.requires_grad
    assert isinstance(backbone.bn1, FrozenBatchNorm2d)
    assert all(p.requires_grad for name, p in backbone.named_parameters() if not name.startswith("conv1."))


# ---------------------------------------------------------------------------------------------- pretrained


def test_pretrained_download_failure_is_fast_and_actionable(monkeypatch):
    seen_timeouts = []

    def offline(url, *args, **kwargs):
        seen_timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(ASDTUserError) as error:
        build_backbone("resnet18", pretrained=True)
    _assert_one_line(error, "resnet18", "download", "backbone.weights=")
    assert seen_timeouts == [backbones.DOWNLOAD_TIMEOUT_S]
    assert socket.getdefaulttimeout() == before


def test_pretrained_uses_imagenet_weights(monkeypatch):
    torch.manual_seed(3)
    imagenet = torchvision.models.resnet50(weights=None).state_dict()  # includes fc.*
    urls = []

    def cached(url, *args, **kwargs):
        urls.append(url)
        return imagenet

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", cached)
    backbone = build_backbone("resnet50", output_stride=16, pretrained=True)
    assert urls == [torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url]
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, imagenet[key]), key


def test_resnet38_block_formulas(resnet38):
    """Pre-activation order: the 1x1 shortcut sees relu(bn(x)); identity shortcuts add the raw input."""
    relu = torch.relu
    x = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        b = resnet38.b2  # basic block with a projection shortcut
        a = relu(b.bn_branch2a(x))
        expected = b.conv_branch2b1(relu(b.bn_branch2b1(b.conv_branch2a(a)))) + b.conv_branch1(a)
        torch.testing.assert_close(b(x), expected)

        y = torch.randn(1, 128, 8, 8)
        b = resnet38.b2_1  # identity shortcut
        expected = b.conv_branch2b1(relu(b.bn_branch2b1(b.conv_branch2a(relu(b.bn_branch2a(y)))))) + y
        torch.testing.assert_close(b(y), expected)

        z = torch.randn(1, 1024, 4, 4)
        b = resnet38.b6  # bottleneck (dropout is off in eval mode)
        a = relu(b.bn_branch2a(z))
        mid = b.conv_branch2b1(relu(b.bn_branch2b1(b.conv_branch2a(a))))
        expected = b.conv_branch2b2(relu(b.bn_branch2b2(mid))) + b.conv_branch1(a)
        torch.testing.assert_close(b(z), expected)
