"""The parameter classes' defaults and the command line's YAML defaults are the same values: a model built in
Python (a notebook, a benchmark) is the model the command line builds."""

from __future__ import annotations

import dataclasses

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from asdt_lightning.lit.module import ASDTModule
from asdt_lightning.lit.optim import OptimizerParams
from asdt_lightning.method.asdt_loss import LossWeights, PairwiseParams, TeacherBParams
from asdt_lightning.method.cam import TeacherAParams
from asdt_lightning.method.crf import INFERENCE_CRF, CRFParams
from asdt_lightning.params import params_from
from asdt_lightning.train import build_module


def composed(name: str, *overrides: str) -> dict:
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        cfg = compose(name, overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=False)


@pytest.mark.parametrize(
    ("key", "params"),
    [
        ("loss", LossWeights),
        ("teacher_a", TeacherAParams),
        ("teacher_b", TeacherBParams),
        ("pairwise", PairwiseParams),
        ("optimizer", OptimizerParams),
    ],
)
def test_every_model_setting_of_the_yaml_equals_its_class_default(key, params):
    model = composed("train")["model"]
    assert params_from(params, model[key]) == params()  # a value that drifts apart fails here
    assert set(model[key]) == {f.name for f in dataclasses.fields(params)}  # and every setting is in the YAML


def test_the_inference_crf_has_one_value_everywhere():
    inference = {k: v for k, v in dataclasses.asdict(INFERENCE_CRF).items() if k != "connectivity"}
    for name, overrides in (("evaluate", ()), ("pseudo_labels", ("ckpt=x",))):
        crf_params = composed(name, *overrides)["crf_params"]
        assert crf_params == pytest.approx(inference)  # every setting but the connectivity, which inference picks
        assert params_from(CRFParams, {**crf_params, "connectivity": "local"}) == INFERENCE_CRF
    assert INFERENCE_CRF.connectivity == "local"  # at the image's resolution a full kernel would not fit
    assert TeacherBParams().crf == dataclasses.replace(INFERENCE_CRF, connectivity="full")  # on the label grid
    assert composed("train", "experiment=voc_paper")["model"]["teacher_b"]["crf"]["bilateral_srgb"] == 5


def test_an_asdt_module_built_in_python_equals_the_command_lines():
    plain = composed("train")
    for part in ("model", "backbone", "dataset"):
        plain[part] = OmegaConf.to_container(OmegaConf.create(plain[part]), resolve=True)
    cli = build_module(plain, ["a", "b"])
    net = {**plain["model"]["net"], "backbone": plain["backbone"]["name"]}
    python = ASDTModule(net=net, class_names=["a", "b"])
    for attr in ("loss_weights", "teacher_a", "teacher_b", "pairwise", "optim", "cam_scales", "label_upsample"):
        assert getattr(python, attr) == getattr(cli, attr), attr
    assert (python.fusion, python.cam_thresholds) == (cli.fusion, cli.cam_thresholds)
