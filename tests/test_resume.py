"""Resuming a run with a larger max_steps: the same data order and losses as one uninterrupted run, and the poly
learning rate of the new length from the first resumed step on."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from torch.utils.data import Dataset

from asdt_lightning.data.datamodule import VOCDataModule
from asdt_lightning.data.sampling import EpochSampler, ResumableLoader, epoch_order, seed_transform
from asdt_lightning.data.synthetic import SYNTHETIC_CLASSES, SyntheticSpec, ensure_synthetic_voc
from asdt_lightning.data.transforms import apply_transform, build_train_transform
from asdt_lightning.lit.optim import PolyLR
from asdt_lightning.train import train

# 4 training images in batches of 2: 2 steps an epoch
RUN = [
    "dataset.synthetic.num_train=4",
    "dataset.synthetic.num_val=2",
    "dataset.synthetic.image_size=32",
    "dataset.crop_size=32",
    "dataset.val_size=32",
    "dataset.batch_size=2",
    "dataset.val_batch_size=2",
    "model.net.head_channels=8",
    "model.cam_scales=[1.0]",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "tracking.panels=0",
    "logger=csv",
]
STEPS = 5


def config(out: Path, *overrides: str) -> DictConfig:
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        return compose("train", overrides=[*RUN, f"output_dir={out}", *overrides])


def logged(out: Path, column: str) -> dict[int, float]:
    """step -> value of the run's CSV log column that ends with ``column``."""
    with (out / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    (name,) = [c for c in rows[0] if c.endswith(column)]
    return {int(row["step"]): float(row[name]) for row in rows if row[name]}


def run(out: Path, steps: int, *overrides: str) -> Path:
    train(config(out, f"trainer.max_steps={steps}", *overrides))
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, float]:
    """Training losses of a STEPS-step run at a constant learning rate (validation changes none of them)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as patch:  # the data cache of conftest's (function-scoped) fixture
        patch.setenv("ASDT_CACHE", str(tmp_path_factory.getbasetemp() / "asdt_cache"))
        run(out, STEPS, "model.optimizer.poly_power=0", "dataset.num_workers=0")
    losses = logged(out, "train/loss")
    assert sorted(losses) == list(range(STEPS))
    return losses


@pytest.mark.parametrize(
    ("stop", "workers", "validate", "checkpoint", "loader_state"),
    [
        (3, 1, 4, "last.ckpt", {"epoch": 1, "samples": 2}),  # saved when max_steps stopped mid-epoch
        (2, 0, 4, "last.ckpt", {"epoch": 0, "samples": 4}),  # saved when max_steps ended an epoch
        (3, 0, 1, "best-step000002.ckpt", {"epoch": 0, "samples": 4}),  # saved at the end of epoch 0
    ],
)
def test_resume_repeats_the_uninterrupted_losses(
    tmp_path, recwarn, uninterrupted, stop, workers, validate, checkpoint, loader_state
):
    """A run stopped after ``stop`` steps (validating every ``validate`` epochs), resumed from ``checkpoint`` to
    STEPS steps across the epoch boundaries after it."""
    settings = (
        "model.optimizer.poly_power=0",
        f"dataset.num_workers={workers}",
        f"trainer.check_val_every_n_epoch={validate}",
    )
    path = run(tmp_path / "first", stop, *settings).parent / checkpoint
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [loader_state]
    first = logged(tmp_path / "first", "train/loss")
    assert first == pytest.approx({s: uninterrupted[s] for s in range(stop)}, rel=1e-5)  # whatever the workers
    run(tmp_path / "resumed", STEPS, *settings, f"ckpt_path={path}")
    resumed = list(logged(tmp_path / "resumed", "train/loss").values())  # (Lightning may log them one step on)
    assert resumed == pytest.approx([uninterrupted[s] for s in range(saved["global_step"], STEPS)], rel=1e-5)
    assert not [w for w in recwarn if "not resumable" in str(w.message)]


def test_resumed_run_follows_the_poly_decay_of_its_new_length(tmp_path):
    """Stopped at the end of a 1-step decay (rate 0), resumed to 3 steps: steps 1 and 2 at the 3-step rates."""
    stop, steps, power = 1, 3, 0.9
    last = run(tmp_path / "first", stop, f"model.optimizer.poly_power={power}", "dataset.num_workers=0")
    run(tmp_path / "resumed", steps, f"model.optimizer.poly_power={power}", f"ckpt_path={last}")
    base = config(tmp_path).model.optimizer.lr
    assert logged(tmp_path / "first", "/backbone_weight") == pytest.approx({0: base})
    resumed = logged(tmp_path / "resumed", "/backbone_weight")
    assert resumed == pytest.approx({t: base * (1 - t / steps) ** power for t in range(stop, steps)})


def test_a_loaded_poly_schedule_keeps_its_own_length_and_sets_the_rates():
    """Restored as Lightning does (build, load the optimiser, load the scheduler): no step at the old rate."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    old = torch.optim.SGD(params, lr=1.0)
    old_schedule = PolyLR(old, total=2, power=1.0)
    for _ in range(2):
        old.step()
        old_schedule.step()
    assert old.param_groups[0]["lr"] == 0.0 and "total" not in old_schedule.state_dict()
    new = torch.optim.SGD(params, lr=1.0)
    schedule = PolyLR(new, total=4, power=1.0)
    new.load_state_dict(old.state_dict())
    schedule.load_state_dict(old_schedule.state_dict())
    assert schedule.total == 4 and new.param_groups[0]["lr"] == 0.5 and schedule.get_last_lr() == [0.5]


# ---------------------------------------------------------------------------------------------- the sampler
def test_each_epoch_is_its_own_permutation_with_its_own_seeds():
    sampler = EpochSampler(range(10), seed=5)
    epochs = [list(sampler) for _ in range(3)]  # every iter() is the next epoch
    for items in epochs:
        assert sorted(i for i, _ in items) == list(range(10))
    assert len({tuple(items) for items in epochs}) == 3
    assert len({s for items in epochs for _, s in items}) == 30
    sampler.set_epoch(7)  # Lightning's epoch count is not the sampler's
    sampler.resume(1, 0)
    assert list(sampler) == epochs[1]  # a pure function of (seed, epoch)
    assert list(EpochSampler(range(10), seed=6)) != epochs[0]


def test_ranks_split_each_epoch_between_them():
    shares = [list(EpochSampler(range(7), seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    order, seeds = epoch_order(7, 1, 0, 8)
    assert [len(s) for s in shares] == [4, 4] and {i for s in shares for i, _ in s} == set(range(7))
    assert shares[0] + shares[1] == [(order[p], seeds[p]) for p in (0, 2, 4, 6, 1, 3, 5, 7)]


class Pairs(Dataset):
    """A dataset whose samples are the items the sampler asks for."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, int]:
        return item


def loader(size: int = 10, batch_size: int = 3) -> ResumableLoader:
    """A loader of the sampler's (index, seed) pairs, 3 full batches an epoch."""
    dataset = Pairs(size)
    sampler = EpochSampler(dataset, seed=2)
    return ResumableLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, collate_fn=list)


def test_loader_state_round_trip_mid_epoch_yields_exactly_the_rest():
    full = loader()
    epochs = [list(full) for _ in range(2)]
    stopped = loader()
    batches = iter(stopped)
    assert [next(batches) for _ in range(2)] == epochs[0][:2]
    state = stopped.state_dict()
    assert state == {"epoch": 0, "samples": 6}
    resumed = loader()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    resumed.epoch_sampler().set_epoch(5)  # Lightning's call at an epoch start changes nothing
    assert list(resumed) == epochs[0][2:]
    assert resumed.state_dict() == {"epoch": 0, "samples": 9}
    assert list(resumed) == epochs[1]


def test_a_used_up_epoch_resumes_at_the_next_and_a_left_iteration_goes_on():
    full = loader()
    epochs = [list(full) for _ in range(3)]
    stopped = loader()
    list(stopped)
    assert stopped.state_dict() == {"epoch": 0, "samples": 9}  # one sample dropped with the last partial batch
    resumed = loader()
    resumed.load_state_dict(stopped.state_dict())
    assert next(iter(resumed)) == epochs[1][0]
    assert list(resumed) == epochs[1][1:] and list(resumed) == epochs[2]


# ------------------------------------------------------------------------------------------ the augmentation
def test_a_training_sample_depends_on_its_seed_alone(tmp_path):
    root = ensure_synthetic_voc(tmp_path, SyntheticSpec(num_train=4, num_val=2, image_size=48))
    dm = VOCDataModule(root, SYNTHETIC_CLASSES, crop_size=40, scale_range=(0.5, 1.5), num_workers=0)
    dm.setup("fit")
    data = dm.train_set
    first = data[(1, 7)]
    _ = data[(2, 8)], data[3]  # whatever was drawn in between
    again = data[(1, 7)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert first["index"] == 1 and not torch.equal(first["image"], data[(1, 9)]["image"])


def test_the_steps_of_a_seeded_augmentation_draw_independently():
    """One shared stream: the flip is not decided by the scale's draw (as with ``Compose.set_random_seed``)."""
    transform = build_train_transform(64, (0.5, 1.5), hflip=True)
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :20] = 255  # bright left half: shows a flip; the whole scaled image fits the 64 crop
    scales, flips = [], []
    for seed in range(100):
        seed_transform(transform, seed)
        out, _, valid = apply_transform(transform, image, np.zeros((40, 40), np.uint8))
        cols = valid.any(0).nonzero().flatten()
        scales.append(float(valid.sum()) ** 0.5 / 40)
        flips.append(bool(out[0, :, cols[-1]].mean() > out[0, :, cols[0]].mean()))
    flipped_large = [s > 1.0 for s, f in zip(scales, flips, strict=True) if f]
    assert 30 < len(flipped_large) < 70 and 0.25 < np.mean(flipped_large) < 0.75
