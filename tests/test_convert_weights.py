"""ResNet-38 weights as users have them: PSA's MXNet ImageNet file (the reader and the converter), a
``res38_cls.pth``-style file with its ``fc8`` CAM classifier, and legacy pickles that the safe loader refuses."""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from asdt_lightning import convert_weights
from asdt_lightning.convert_weights import convert, main, plan_conversion, psa_key
from asdt_lightning.errors import ASDTUserError
from asdt_lightning.models.asdt import build_asdt_net
from asdt_lightning.models.backbones import BACKBONES, Backbone, build_backbone, load_backbone_weights
from asdt_lightning.models.backbones.mxnet_params import MXNetParamsError, load_params, read_ndarray_list
from asdt_lightning.models.backbones.resnet38 import ResNet38, _conv, _PreActBlock, _PreActBottleneck
from asdt_lightning.models.backbones.weights import load_cam_classifier
from asdt_lightning.models.heads import CAMHead

# ---------------------------------------------------------------------------------------------- a writer

V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
FLAGS = {np.dtype(t): flag for flag, t in enumerate([np.float32, np.float64, np.float16, np.uint8, np.int32])}
FLAGS.update({np.dtype(np.int8): 5, np.dtype(np.int64): 6})


def encode_array(array: np.ndarray | None, version: str = "v2", stype: int = 0, flag: int | None = None) -> bytes:
    """One NDArray as MXNet's ``NDArray::Save`` writes it (``legacy``: MXNet < 0.11, no magic, uint32 dims)."""
    head = {
        "v3": struct.pack("<Ii", V3, stype),
        "v2": struct.pack("<Ii", V2, stype),
        "v1": struct.pack("<I", V1),
        "legacy": b"",
    }[version]
    if array is None:
        return head + struct.pack("<i", -1 if version == "v3" else 0)
    dim = "I" if version == "legacy" else "q"
    shape = struct.pack("<I", array.ndim) + struct.pack(f"<{array.ndim}{dim}", *array.shape)
    context = struct.pack("<ii", 2, 0)  # saved from gpu(0): the data is on the CPU in the file all the same
    flag = FLAGS[array.dtype] if flag is None else flag
    return head + shape + context + struct.pack("<i", flag) + array.astype(array.dtype.newbyteorder("<")).tobytes()


def write_params(path: Path, params: dict, version: str = "v2", named: bool = True) -> Path:
    """An NDArray list file as ``mx.nd.save`` writes it: header, arrays, names."""
    out = bytearray(struct.pack("<QQQ", 0x112, 0, len(params)))
    for array in params.values():
        out += array if isinstance(array, bytes) else encode_array(array, version)
    names = list(params) if named else []
    out += struct.pack("<Q", len(names))
    for name in names:
        raw = name.encode()
        out += struct.pack("<Q", len(raw)) + raw
    path.write_bytes(bytes(out))
    return path


# ---------------------------------------------------------------------------------------------- PSA's names

_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}


def mxnet_name(key: str) -> str:
    """PSA's MXNet name of a ``resnet38`` key (the inverse of the converter's mapping, written independently)."""
    layer, field = key.rsplit(".", 1)
    prefix = "aux" if field.startswith("running_") else "arg"
    if layer in ("conv1a", "bn7"):
        return f"arg:{layer}_weight" if layer == "conv1a" else f"{prefix}:bn7_{_BN[field]}"
    block, module = layer.split(".")
    stage, _, index = block[1:].partition("_")
    unit = f"{stage}b{index}" if index else f"{stage}a"
    kind, branch = module.split("_", 1)
    if kind == "conv":
        return f"arg:res{unit}_{branch}_weight"
    return f"{prefix}:bn{unit}_{branch}_{_BN[field]}"


class TinyResNet38(Backbone):
    """ResNet-38's key names and block types at a few channels: a basic block with and one without a projection,
    a bottleneck and the final BatchNorm."""

    def __init__(self, output_stride: int = 8, pretrained: bool = False) -> None:
        super().__init__()
        self.name, self.out_channels, self.low_level_channels, self.output_stride = "resnet38", 16, 8, 8
        self.conv1a = _conv(3, 4, 3)
        self.b2 = _PreActBlock(4, 8, 8, stride=2)
        self.b2_1 = _PreActBlock(8, 8, 8)
        self.b6 = _PreActBottleneck(8, 16, dilation=4, dropout=0.3)
        self.bn7 = nn.BatchNorm2d(16)

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.b2_1(self.b2(self.conv1a(x)))
        return low, torch.relu(self.bn7(self.b6(low)))


def _tiny_params(seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Distinct random values for every TinyResNet38 key under PSA's names, plus the ImageNet classifier."""
    rng = np.random.default_rng(seed)
    shapes = {k: tuple(v.shape) for k, v in TinyResNet38().state_dict().items() if "num_batches" not in k}
    params = {mxnet_name(k): rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    params["arg:linear1000_weight"] = rng.standard_normal((1000, 16)).astype(dtype)
    params["arg:linear1000_bias"] = rng.standard_normal(1000).astype(dtype)
    return params


def _one_line(error: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("version", ["v2", "v3", "v1", "legacy"])
def test_reader_round_trips_values_dtypes_and_names(tmp_path, version):
    rng = np.random.default_rng(1)
    params = {
        "arg:w": rng.standard_normal((3, 2, 1, 1)).astype(np.float32),
        "arg:d": rng.standard_normal(5),  # float64
        "arg:h": rng.standard_normal((2, 3)).astype(np.float16),
        "aux:u": np.arange(7, dtype=np.uint8),
        "aux:i": np.array([[-3, 4]], dtype=np.int32),
        "aux:l": np.array([2**40, -1], dtype=np.int64),
        "arg:empty": np.zeros((0, 4), np.float32),
        "arg:none": None,
    }
    path = write_params(tmp_path / f"{version}.params", params, version)
    loaded = load_params(path)
    assert list(loaded) == list(params)
    assert loaded["arg:none"] is None
    for name, array in params.items():
        if array is not None:
            assert loaded[name].dtype == array.dtype, name
            assert loaded[name].shape == array.shape, name
            assert loaded[name].tobytes() == array.tobytes(), name  # bit for bit
    assert loaded["arg:w"].flags.writeable  # torch.from_numpy takes it without copying or warning


def test_reader_v2_none_array_of_unknown_ndim(tmp_path):
    """MXNet >= 1.5 writes a "none" array's shape as ndim -1 in V2 as well; nothing follows it."""
    none = struct.pack("<Iii", V2, 0, -1)
    path = write_params(tmp_path / "none.params", {"aux:n": none, "arg:a": np.arange(3, dtype=np.float32)})
    loaded = load_params(path)
    assert loaded["aux:n"] is None and loaded["arg:a"].tolist() == [0, 1, 2]


def test_reader_unnamed_list_and_v3_scalar(tmp_path):
    path = tmp_path / "unnamed.params"
    scalar = np.array(2.5, np.float32)
    write_params(path, {"x": scalar}, "v3", named=False)
    arrays, names = read_ndarray_list(path)
    assert names == [] and arrays[0].shape == () and arrays[0] == 2.5  # np shape semantics: ndim 0 is a scalar
    with pytest.raises(MXNetParamsError) as error:
        load_params(path)
    _one_line(error, str(path), "1 unnamed arrays")


@pytest.mark.parametrize("cut", [3, 20, 40, 60, -30, -3])
def test_truncated_file_is_a_clear_error(tmp_path, cut):
    path = write_params(tmp_path / "full.params", {"arg:a": np.ones((4, 4), np.float32), "arg:bb": np.ones(3)})
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(MXNetParamsError) as error:
        load_params(path)
    _one_line(error, str(path))
    assert any(word in str(error.value) for word in ("truncated", "not an MXNet params file")), error.value


@pytest.mark.parametrize(
    ("array", "says"),
    [
        (encode_array(np.ones(2, np.float32), stype=1), "row_sparse array (array 0); only dense"),
        (encode_array(np.ones(2, np.float32), stype=2), "csr array"),
        (encode_array(np.ones(2, np.uint16), flag=12), "bfloat16 array (array 0); supported dtypes"),
        (encode_array(np.ones(2, np.float32), flag=42), "dtype flag 42"),
        (struct.pack("<Ii", V2, 0) + struct.pack("<i", 999), "claims 999 dimensions"),
        (struct.pack("<I", 0xDEADBEEF), "starts with 0xdeadbeef"),
    ],
)
def test_unsupported_or_corrupt_arrays(tmp_path, array, says):
    path = write_params(tmp_path / "odd.params", {"arg:a": array})
    with pytest.raises(MXNetParamsError) as error:
        load_params(path)
    _one_line(error, str(path), says)


def test_not_an_mxnet_file(tmp_path):
    path = tmp_path / "notes.params"
    path.write_bytes(b"these are not weights at all\n")
    with pytest.raises(MXNetParamsError) as error:
        load_params(path)
    _one_line(error, str(path), "is not an MXNet params file (header")
    with pytest.raises(MXNetParamsError) as error:
        load_params(tmp_path / "nowhere.params")
    _one_line(error, "not found")


# ---------------------------------------------------------------------------------------------- the mapping


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("arg:conv1a_weight", "conv1a.weight"),
        ("arg:res2a_branch1_weight", "b2.conv_branch1.weight"),
        ("arg:res2a_branch2a_weight", "b2.conv_branch2a.weight"),
        ("arg:bn2a_branch2a_gamma", "b2.bn_branch2a.weight"),
        ("arg:bn3b1_branch2b1_beta", "b3_1.bn_branch2b1.bias"),
        ("arg:res4b5_branch2b1_weight", "b4_5.conv_branch2b1.weight"),
        ("aux:bn5b2_branch2a_moving_mean", "b5_2.bn_branch2a.running_mean"),
        ("aux:bn6a_branch2b2_moving_var", "b6.bn_branch2b2.running_var"),
        ("arg:res7a_branch2b2_weight", "b7.conv_branch2b2.weight"),
        ("arg:bn7_gamma", "bn7.weight"),
        ("aux:bn7_moving_var", "bn7.running_var"),
        ("bn7_beta", "bn7.bias"),  # mx.nd.save of a plain dict: no prefix
        ("arg:linear1000_weight", None),
        ("arg:fc1_bias", None),
    ],
)
def test_psa_names(name, key):
    assert psa_key(name) == key


@pytest.mark.parametrize(
    "name",
    ["arg:bn7_moving_mean", "aux:bn2a_branch2a_gamma", "arg:res2a_branch1_gamma", "arg:bn2a_branch1_weight", "x:y"],
)
def test_names_outside_the_scheme(name):
    with pytest.raises(ValueError, match=name):
        psa_key(name)


@pytest.fixture(scope="module")
def resnet38_shapes() -> dict[str, torch.Tensor]:
    """The real resnet38's state dict on the meta device: every key and shape, no memory."""
    with torch.device("meta"):
        return ResNet38().state_dict()


def _full_size_psa_params(shapes: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Every key under PSA's name, at full size as zero-stride views of one float (no memory)."""
    zero = np.float32(0)
    return {mxnet_name(k): np.broadcast_to(zero, v.shape) for k, v in shapes.items() if "num_batches" not in k}


def test_full_resnet38_key_set_maps_with_real_shapes(resnet38_shapes):
    """Every one of resnet38's 191 tensors under PSA's names, at full size (zero-stride views: no memory)."""
    params = _full_size_psa_params(resnet38_shapes)
    params["arg:linear1000_weight"] = np.broadcast_to(np.float32(0), (1000, 4096))
    params["arg:linear1000_bias"] = np.broadcast_to(np.float32(0), (1000,))
    plan, dropped = plan_conversion(params, resnet38_shapes)
    keys = [k for k in resnet38_shapes if not k.endswith("num_batches_tracked")]
    assert len(keys) == 191
    assert sorted(plan.values()) == sorted(keys)
    assert dropped == ["arg:linear1000_weight", "arg:linear1000_bias"]
    assert sum(name.startswith("aux:") for name in plan) == 2 * sum(k.endswith("running_mean") for k in keys)


def test_mismatches_are_listed_in_one_line(resnet38_shapes):
    params = _full_size_psa_params(resnet38_shapes)
    params.pop("arg:res4b5_branch2b1_weight")
    params["arg:res9a_branch2a_weight"] = np.zeros(1, np.float32)  # no b9
    params["arg:mystery_weight"] = np.zeros(1, np.float32)
    params["arg:bn7_gamma"] = np.zeros(7, np.float32)
    params["arg:conv1a_weight"] = np.zeros((64, 3, 3, 3), np.int32)
    with pytest.raises(ASDTUserError) as error:
        plan_conversion(params, resnet38_shapes)
    _one_line(
        error,
        "188 of 191 resnet38 keys matched",
        "2 names that do not map onto resnet38",
        "arg:res9a_branch2a_weight: b9.conv_branch2a.weight is not a resnet38 key",
        "arg:mystery_weight: not a ResNet-38 parameter name",
        "1 resnet38 keys missing, e.g. ['b4_5.conv_branch2b1.weight']",
        "wrong shape, e.g. ['arg:bn7_gamma (7,) vs bn7.weight (4096,)']",
        "not floating point, e.g. ['arg:conv1a_weight (int32)']",
    )


# ---------------------------------------------------------------------------------------------- the converter


def test_convert_round_trips_exactly_into_the_backbone(tmp_path):
    params = _tiny_params()
    params["aux:bn7_moving_var"] = np.abs(params["aux:bn7_moving_var"]) + 0.5
    src = write_params(tmp_path / "tiny.params", params, "v2")
    out = tmp_path / "out" / "tiny.pth"
    report = convert(src, out, build=TinyResNet38)

    state = torch.load(out, weights_only=True)  # a plain state dict
    own = TinyResNet38().state_dict()
    assert list(state) == [k for k in own if "num_batches" not in k]
    for key, value in state.items():
        assert value.dtype == torch.float32
        assert torch.equal(value, torch.from_numpy(params[mxnet_name(key)])), key
    assert torch.equal(state["bn7.running_var"], torch.from_numpy(params["aux:bn7_moving_var"]))
    assert torch.equal(
        state["b6.bn_branch2b2.running_mean"], torch.from_numpy(params["aux:bn6a_branch2b2_moving_mean"])
    )

    target = TinyResNet38()
    load_backbone_weights(target, out)
    assert torch.equal(target.b2.bn_branch2a.running_mean, torch.from_numpy(params["aux:bn2a_branch2a_moving_mean"]))
    n_stats = sum(v.numel() for k, v in state.items() if "running" in k)
    assert report == (out, len(state), sum(p.numel() for p in target.parameters()), n_stats, report.dropped)
    assert sorted(report.dropped) == ["arg:linear1000_bias", "arg:linear1000_weight"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.pth"]  # no temporary file left


def test_convert_casts_float64_and_float16_to_the_backbone_dtype(tmp_path):
    for dtype in (np.float64, np.float16):
        params = _tiny_params(dtype=dtype)
        src = write_params(tmp_path / f"{np.dtype(dtype)}.params", params, "legacy")
        out = convert(src, tmp_path / f"{np.dtype(dtype)}.pth", build=TinyResNet38).out
        state = torch.load(out, weights_only=True)
        assert state["conv1a.weight"].dtype == torch.float32
        expected = torch.from_numpy(params["arg:conv1a_weight"]).float()
        assert torch.equal(state["conv1a.weight"], expected)


def test_convert_refuses_before_writing(tmp_path):
    params = _tiny_params()
    params.pop("aux:bn7_moving_mean")
    params["arg:bn7_moving_mean"] = np.zeros(16, np.float32)  # a running statistic under arg:
    src = write_params(tmp_path / "bad.params", params)
    out = tmp_path / "bad.pth"
    with pytest.raises(ASDTUserError) as error:
        convert(src, out, build=TinyResNet38)
    _one_line(error, "moving_mean belongs under aux:", "missing, e.g. ['bn7.running_mean']")
    assert not out.exists()


@pytest.fixture
def tiny_cli(monkeypatch):
    monkeypatch.setattr(convert_weights, "_build_resnet38", TinyResNet38)


def test_cli_end_to_end(tmp_path, capsys, tiny_cli):
    src = write_params(tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params", _tiny_params(), "v1")
    out = tmp_path / "res38_imagenet.pth"
    assert main([str(src), str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert "\n" not in printed
    n_params = sum(p.numel() for p in TinyResNet38().parameters())
    n_keys = sum("num_batches" not in k for k in TinyResNet38().state_dict())
    for fragment in (f"converted {n_keys} tensors", f"({n_params:,} parameters", str(out), "linear1000_weight"):
        assert fragment in printed, printed
    load_backbone_weights(TinyResNet38(), out)


@pytest.mark.parametrize("case", ["missing", "garbage", "torch", "unmapped", "unwritable"])
def test_cli_errors_are_one_line(tmp_path, capsys, tiny_cli, case):
    src = tmp_path / "in.params"
    out = tmp_path / "out.pth"
    if case == "unwritable":  # the output's folder is a file
        write_params(src, _tiny_params())
        (tmp_path / "taken").write_text("")
        out = tmp_path / "taken" / "out.pth"
    if case == "garbage":
        src.write_bytes(b"GIF89a" * 10)
    elif case == "torch":
        torch.save({"a": torch.zeros(1)}, src)
    elif case == "unmapped":
        write_params(src, {**_tiny_params(), "arg:stem_weight": np.zeros(1, np.float32)})
    assert main([str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    says = {
        "missing": "MXNet params file not found",
        "garbage": "is not an MXNet params file",
        "torch": "is a PyTorch file, not MXNet's; pass it as backbone.weights=",
        "unmapped": "1 names that do not map onto resnet38, e.g. ['arg:stem_weight: not a ResNet-38 parameter name']",
        "unwritable": str(tmp_path / "taken"),
    }[case]
    assert says in err, err
    assert not out.exists()


def test_cli_help_and_module_entry(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "SRC.params" in capsys.readouterr().out
    result = subprocess.run(
        [sys.executable, "-m", "asdt_lightning.convert_weights", str(tmp_path / "no.params"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: MXNet params file not found: {tmp_path / 'no.params'}\n"


# ---------------------------------------------------------------------------------------------- fc8


def _resnet18_file(tmp_path, **extra: torch.Tensor) -> tuple[dict, Path]:
    torch.manual_seed(0)
    state = build_backbone("resnet18", output_stride=8).state_dict()
    path = tmp_path / "res18_cls.pth"
    torch.save({"module." + k: v for k, v in {**state, **extra}.items()}, path)
    return state, path


def test_fc8_loads_into_the_cam_head_and_is_logged(tmp_path, caplog):
    fc8 = torch.randn(20, 512, 1, 1)
    state, path = _resnet18_file(tmp_path, **{"fc8.weight": fc8})
    with caplog.at_level(logging.INFO, logger="asdt_lightning.models.asdt"):
        net = build_asdt_net("resnet18", num_classes=20, output_stride=8, weights=str(path))
    assert torch.equal(net.cam_head.classifier.weight, fc8)
    assert torch.equal(net.backbone.state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    n = sum(not k.endswith("num_batches_tracked") for k in state)
    assert [r.getMessage() for r in caplog.records] == [
        f"backbone.weights: {n} of {n} backbone keys matched; fc8 (20x512) loaded into the CAM head"
    ]


def test_without_fc8_the_cam_head_keeps_its_initialisation(tmp_path, caplog):
    state, path = _resnet18_file(tmp_path)
    torch.manual_seed(5)
    plain = build_asdt_net("resnet18", num_classes=20, output_stride=8, frozen_bn=True)
    torch.manual_seed(5)
    with caplog.at_level(logging.INFO, logger="asdt_lightning.models.asdt"):
        net = build_asdt_net("resnet18", num_classes=20, output_stride=8, weights=str(path), frozen_bn=True)
    assert torch.equal(net.cam_head.classifier.weight, plain.cam_head.classifier.weight)  # same draw, untouched
    assert torch.equal(net.backbone.state_dict()["conv1.weight"], state["conv1.weight"])
    n = sum(not k.endswith("num_batches_tracked") for k in state)
    assert [r.getMessage() for r in caplog.records] == [f"backbone.weights: {n} of {n} backbone keys matched"]


def test_fc8_of_another_class_count_is_refused_before_building(tmp_path, monkeypatch):
    _, path = _resnet18_file(tmp_path, **{"fc8.weight": torch.zeros(20, 512, 1, 1)})
    monkeypatch.setitem(BACKBONES, "resnet18", lambda **_: pytest.fail("built before checking fc8"))
    with pytest.raises(ASDTUserError) as error:
        build_asdt_net("resnet18", num_classes=80, output_stride=8, weights=str(path))
    _one_line(error, str(path), "fc8 (20x512: 20 classes x 512 channels)", "CAM head (80 classes)", "without fc8")


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"fc8.weight": torch.zeros(20, 4096, 1, 1)}, "fc8 (20x4096: 20 classes x 4096 channels) does not fit the CAM"),
        ({"fc8.weight": torch.zeros(20, 512, 3, 3)}, "fc8.weight has shape (20, 512, 3, 3)"),
        ({"fc8.weight": torch.zeros(20, 512, 1, 1), "fc8.bias": torch.zeros(20)}, "['fc8.bias'] besides fc8.weight"),
    ],
)
def test_fc8_that_does_not_fit_the_head(tmp_path, extra, says):
    _, path = _resnet18_file(tmp_path, **extra)
    with pytest.raises(ASDTUserError) as error:
        build_asdt_net("resnet18", num_classes=20, output_stride=8, weights=str(path))
    _one_line(error, str(path), says)


def test_res38_cls_fc8_fits_the_resnet38_cam_head():
    """res38_cls.pth's fc8, (20, 4096, 1, 1), into resnet38's 20-class head (in memory: the file is ~420 MB);
    a (C, D) linear-style fc8 fits as well."""
    head = CAMHead(4096, 20)
    fc8 = torch.randn(20, 4096, 1, 1)
    assert load_cam_classifier(head.classifier, {"fc8.weight": fc8}, "res38_cls.pth") == "fc8 (20x4096)"
    assert torch.equal(head.classifier.weight, fc8)
    assert load_cam_classifier(head.classifier, {"fc8.weight": fc8[:, :, 0, 0] * 2}, "x") == "fc8 (20x4096)"
    assert torch.equal(head.classifier.weight, fc8 * 2)
    with pytest.raises(ASDTUserError) as error:
        load_cam_classifier(CAMHead(4096, 21).classifier, {"fc8.weight": fc8}, "res38_cls.pth")
    _one_line(error, "res38_cls.pth", "CAM head (21x4096: 21 classes x 4096 channels)")


# ---------------------------------------------------------------------------------------------- legacy pickles


class TrainingConfig:
    """A custom class pickled next to the weights, as training scripts do with their arguments."""

    def __init__(self) -> None:
        self.lr = 0.01


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_custom_class_says_what_to_run(tmp_path, legacy):
    torch.manual_seed(0)
    source = build_backbone("resnet18", output_stride=8)
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {"state_dict": source.state_dict(), "config": TrainingConfig()}, path, _use_new_zipfile_serialization=not legacy
    )
    with pytest.raises(ASDTUserError) as error:
        load_backbone_weights(build_backbone("resnet18"), path)
    qualified = f"{TrainingConfig.__module__}.TrainingConfig"
    message = _one_line(error, str(path), qualified, "if you trust the file", "torch.serialization.safe_globals([")
    assert ("legacy (torch < 1.6) pickle" in message) == legacy
    assert ("weights_only=False" in message) == legacy  # only for the whole models nothing else reads

    # the advice works: allow that one class, re-save the state dict, use it
    with torch.serialization.safe_globals([TrainingConfig]):
        obj = torch.load(path)
    resaved = tmp_path / "checkpoint.state_dict.pth"
    assert f"use {resaved}" in message
    torch.save(obj["state_dict"], resaved)
    load_backbone_weights(build_backbone("resnet18"), resaved)


def test_legacy_whole_model_names_the_full_load_for_trusted_files(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(nn.Linear(2, 2), path, _use_new_zipfile_serialization=False)
    with pytest.raises(ASDTUserError) as error:
        load_backbone_weights(build_backbone("resnet18"), path)
    _one_line(
        error,
        "legacy (torch < 1.6) pickle",
        "torch.nn.modules.linear.Linear",
        f"torch.load('{path}', weights_only=False)",
    )
