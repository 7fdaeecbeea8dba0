"""A training order that checkpoints resume: a resumed run sees the same batches as an uninterrupted one.

Epoch ``e``'s order and every sample's augmentation are pure functions of ``(seed, e, position)``: the
:class:`EpochSampler` yields ``(index, augmentation_seed)`` pairs and :class:`~.dataset.SegmentationDataset`
seeds its transform from the pair before each sample, so neither depends on the workers or their RNG streams.
The :class:`ResumableLoader` counts the samples the training loop has taken; Lightning saves its ``state_dict``
in every checkpoint and loads it before the resumed run's first ``iter()``, which then goes on where it stopped.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

if TYPE_CHECKING:
    import lightning as L

SeededIndex = tuple[int, int]  # (dataset index, augmentation seed)


def epoch_order(size: int, seed: int, epoch: int, positions: int) -> tuple[list[int], list[int]]:
    """Dataset indices and augmentation seeds of an epoch's ``positions`` (>= ``size``) places.

    The indices are a permutation of ``range(size)`` drawn from ``(seed, epoch)``, repeated from its start to
    fill ``positions`` (the padding of a distributed split); every place gets its own seed in [0, 2**63).
    """
    rng = np.random.default_rng([seed % 2**64, epoch])
    order = np.resize(rng.permutation(size), positions)
    return order.tolist(), rng.integers(2**63, size=positions, dtype=np.int64).tolist()


def seed_transform(transform: Any, seed: int) -> None:
    """Seed an albumentations pipeline for one sample with one numpy and one Python stream shared by all steps.

    ``Compose.set_random_seed`` would give every step its own copy of the same stream, which ties the steps'
    draws together (a flip exactly when the random scale is below its midpoint).
    """
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def distributed_shard(trainer: L.Trainer | None) -> dict[str, int]:
    """``num_replicas`` and ``rank`` of this process under a strategy of several processes, else nothing."""
    kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
    if not kwargs or int(kwargs["num_replicas"]) <= 1:
        return {}
    return {"num_replicas": int(kwargs["num_replicas"]), "rank": int(kwargs["rank"])}


class EpochSampler(DistributedSampler):
    """This rank's ``(index, augmentation_seed)`` pairs of a shuffled epoch, from position :attr:`start` on.

    It counts its epochs itself: every ``iter()`` is the next epoch, and :meth:`resume` sets where the next one
    begins (:class:`ResumableLoader` does, at each iteration). Lightning's ``set_epoch`` is ignored: after a
    resume from a checkpoint saved when ``max_steps`` stopped a run, Lightning counts that epoch as finished
    and numbers the rest of it as the next.
    Under DDP rank ``r`` takes positions ``r, r + R, ...`` of the epoch padded to a multiple of ``R`` replicas
    (as DistributedSampler does, which this is so that Lightning leaves it as it is instead of wrapping it).
    """

    def __init__(self, dataset: Sized, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        self.start = 0  # position in this rank's share where the next iteration begins

    def items(self, epoch: int) -> list[SeededIndex]:
        """All of this rank's pairs of epoch ``epoch``, in order (``num_samples`` of them)."""
        order, seeds = epoch_order(len(self.dataset), self.seed, epoch, self.total_size)  # type: ignore[arg-type]
        places = range(self.rank, self.total_size, self.num_replicas)
        return [(order[p], seeds[p]) for p in places]

    def __iter__(self) -> Iterator[SeededIndex]:
        items = self.items(self.epoch)[self.start :]
        self.epoch, self.start = self.epoch + 1, 0
        return iter(items)

    def set_epoch(self, epoch: int) -> None:
        """Ignored (see the class doc): the epoch follows the iterations and the resumed state."""

    def resume(self, epoch: int, start: int) -> None:
        """Begin the next iteration at position ``start`` of epoch ``epoch``."""
        self.epoch, self.start = epoch, start


class ResumableLoader(DataLoader):
    """A training DataLoader over an :class:`EpochSampler` that continues where its last batch left off.

    Every ``iter()`` goes on from that point to the end of the epoch; an epoch without a batch left moves on to
    the next. Its state (``{"epoch", "samples"}``: the epoch and the samples of this rank's share handed out)
    is saved by Lightning in checkpoints and loaded before the resumed run's first ``iter()``. It counts the
    batches handed out, not those its workers prefetch; Lightning does not prefetch from a loader with a length,
    so at a checkpoint that is what the finished steps consumed. Continuing (not restarting) an iteration the
    loop left early also covers Lightning's resume of a checkpoint saved when ``max_steps`` ended an epoch
    exactly: it takes one more batch as the end of that epoch, then starts the next epoch with a new ``iter()``.
    """

    _position: tuple[int, int] = (0, 0)  # (epoch, samples handed out in it)

    def epoch_sampler(self) -> EpochSampler:
        """The sampler, which must be an :class:`EpochSampler`."""
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError(f"ResumableLoader needs an EpochSampler, got {type(self.sampler).__name__}")
        return self.sampler

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        step = self.batch_size or 1
        epoch, taken = self._position  # read at the first batch, right before the sampler is drawn
        if taken >= len(self) * step:  # no batch left in this epoch
            epoch, taken = epoch + 1, 0
        self.epoch_sampler().resume(epoch, taken)
        self._position = (epoch, taken)
        for batch in super().__iter__():
            taken += step
            self._position = (epoch, taken)
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the loop is: ``epoch`` and the ``samples`` of this rank's share handed out in it."""
        epoch, taken = self._position
        return {"epoch": epoch, "samples": taken}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Make the next iteration continue from a :meth:`state_dict`."""
        self._position = (int(state_dict["epoch"]), int(state_dict["samples"]))
