"""Shared fixtures: tiny in-memory batches shaped like the VOC DataModule's."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

CLASS_NAMES = ["apple", "bell", "cone"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep generated data and label caches out of the user's home."""
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path_factory.getbasetemp() / "asdt_cache"))


class RandomSegmentationDataset(Dataset):
    """Random images (with a bright square per present class) and matching masks; deterministic per index."""

    def __init__(self, n: int = 8, size: int = 64, num_classes: int = len(CLASS_NAMES)) -> None:
        self.n, self.size, self.num_classes = n, size, num_classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        image = torch.randn(3, self.size, self.size, generator=g) * 0.3
        mask = torch.zeros(self.size, self.size, dtype=torch.long)
        labels = torch.zeros(self.num_classes)
        c = i % self.num_classes
        s = self.size // 4
        image[c % 3, s : 3 * s, s : 3 * s] += 2.0
        mask[s : 3 * s, s : 3 * s] = c + 1
        labels[c] = 1.0
        valid = torch.ones(self.size, self.size, dtype=torch.bool)
        valid[:, -4:] = False  # some padding, as the crop transform produces
        mask[:, -4:] = 255
        return {"image": image, "mask": mask, "valid": valid, "labels": labels, "name": f"img{i}", "index": i}


@pytest.fixture
def random_loader():
    def make(n: int = 8, batch_size: int = 2, size: int = 64) -> DataLoader:
        return DataLoader(RandomSegmentationDataset(n, size), batch_size=batch_size, shuffle=False)

    return make


def _merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in, nested dicts key by key."""
    out = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if nested else value
    return out


def small_module_kwargs(**overrides) -> dict:
    """ASDTModule arguments for a fast CPU model (ResNet-18, OS 8, thin heads, 2 CRF iterations), trained with
    the released code's SGD rule and no classifier warm-up; dict overrides of the
    loss, teacher and optimiser settings merge key by key; ``net`` is replaced whole."""
    kwargs = dict(
        net={"backbone": "resnet18", "output_stride": 8, "head_channels": 16},
        class_names=CLASS_NAMES,
        cam_scales=[1.0, 0.5],
        loss={"pairwise": 1.0, "classifier_warmup": 0, "ramp": 0},
        teacher_a={"alpha_high": 32, "bg_score_threshold": 0.8, "crf": {"iterations": 2, "window": 5}},
        teacher_b={"crf": {"iterations": 2, "window": 5}},
        optimizer={
            "name": "sgd",
            "lr": 0.01,
            "weight_decay": 1e-5,
            "backbone_bias_mult": 2.0,
            "head_weight_mult": 10.0,
            "head_bias_mult": 20.0,
        },
    )
    net = overrides.pop("net", kwargs["net"])  # the network is replaced whole
    return {**_merged(kwargs, overrides), "net": net}
