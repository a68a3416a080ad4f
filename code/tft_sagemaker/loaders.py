"""Datasets → per-rank DataLoaders.

This module shards the windows across ranks itself (Lightning's `use_distributed_sampler` is
off). Each host holds the windows of its own series (shares.py); on each host, each epoch is
one permutation of them, seeded by (seed, epoch) and therefore the same on every process of the
host, split into disjoint shards of near-equal size. Together the ranks see every window
exactly once per epoch, and every rank yields the same number of batches (those of the largest
shard of any host, `HostWindows`; smaller shards make smaller batches), so DDP never waits on a
batch that does not come. The sampler's position is checkpointed, so a run resumed mid-epoch
(after SIGTERM on a spot instance) continues with the batches it had not yet trained on.

Batches come from `WindowBatcher` (vectorised, see speedups/batches.py) where `speedups.engage`
found that it reproduces the dataset's own batches exactly, otherwise from pytorch-forecasting's
per-window `__getitem__` + collate (the job's speed-ups log line says which, and why).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pytorch_forecasting import TimeSeriesDataSet
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import JobError
from .speedups.batches import WindowBatcher

log = logging.getLogger(__name__)

# Below this much shared memory, worker processes die with "Bus error" (Docker's default 64 MB).
_MIN_SHM_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class HostWindows:
    """The windows of one dataset on every host (in node order; shares.Hosts agrees them):
    this host's are numbered from `offset` in the job's numbering of all of them."""

    counts: tuple[int, ...]
    node: int = 0

    @property
    def offset(self) -> int:
        return sum(self.counts[: self.node])

    @property
    def total(self) -> int:
        return sum(self.counts)

    def batches(self, processes: int, batch_size: int) -> int:
        """Batches per epoch on every rank: those of the largest shard of any host."""
        largest_shard = max(math.ceil(count / processes) for count in self.counts)
        return math.ceil(largest_shard / batch_size)


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's batches of window indices for one epoch (see module docstring). `rank` and
    `world_size` are this process among its host's; `hosts`: the windows of every host (None:
    this host's are all of them)."""

    def __init__(
        self,
        n_windows: int,
        batch_size: int,
        rank: int,
        world_size: int,
        shuffle: bool,
        seed: int,
        hosts: HostWindows | None = None,
    ) -> None:
        self.hosts = hosts or HostWindows((n_windows,))
        self.n_windows, self.batch_size = n_windows, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self._batches = self.hosts.batches(world_size, batch_size)
        smallest = n_windows // world_size
        if smallest < self._batches:
            raise JobError(
                f"{n_windows} window(s) on this host cannot make {self._batches} batch(es) in "
                f"each of its {world_size} process(es), as many as on the host with the most "
                f"windows (windows per host: {', '.join(map(str, self.hosts.counts))}): use "
                "fewer devices/hosts, more data, or files of about equal size per host."
            )
        self.epoch = 0
        # Batches of this epoch already trained on. Counted by the training loop (see
        # `mark_trained`), not here: the loader fetches ahead of training.
        self.trained = 0
        self._skip = 0  # batches to skip on the next iteration (after a mid-epoch resume)
        self._first = 0  # first batch of the current iteration

    def __len__(self) -> int:
        return self._batches

    @property
    def total_windows(self) -> int:
        """Windows of every host (the job's numbering of windows runs to this)."""
        return self.hosts.total

    def set_epoch(self, epoch: int) -> None:  # trainer.LoaderPosition calls it
        if epoch != self.epoch:
            self.epoch, self.trained, self._skip, self._first = epoch, 0, 0, 0

    def shard(self) -> np.ndarray:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n_windows, generator=generator).numpy()
        else:
            order = np.arange(self.n_windows)
        return np.array_split(order, self.world_size)[self.rank]

    def batches(self) -> list[np.ndarray]:
        # Equal batch counts on every rank; batch sizes differ by at most one window.
        return np.array_split(self.shard(), len(self))

    def __iter__(self) -> Iterator[list[int]]:
        self._first, self._skip = self._skip, 0
        for batch in self.batches()[self._first :]:
            yield batch.tolist()

    @property
    def resumed_at(self) -> int:
        return self._first

    def trained_windows(self) -> np.ndarray:
        """Windows trained on in this epoch by this process (a resumed run: since the resume)."""
        trained = self.batches()[self._first : self.trained]
        windows = np.concatenate(trained) if trained else np.empty(0, dtype=np.int64)
        return windows + self.hosts.offset  # in the job's numbering

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.trained}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Resumed at this position, also when the epoch has no batch left to iterate.
        self.epoch = state["epoch"]
        self.trained = self._skip = self._first = state["batches_done"]


class StatefulDataLoader(DataLoader):
    """A DataLoader whose position Lightning saves in checkpoints and restores on resume."""

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)


class _BatchedWindows(Dataset):
    """Hands whole batches to the DataLoader: `__getitems__` receives a batch's indices."""

    def __init__(self, batcher: WindowBatcher) -> None:
        self.batcher = batcher

    def __len__(self) -> int:
        return len(self.batcher)

    def __getitem__(self, index: int) -> Any:
        return self.batcher([index])

    def __getitems__(self, indices: Sequence[int]) -> Any:
        return self.batcher(indices)


def _whole_batch(batch: Any) -> Any:
    """The collate function for `_BatchedWindows`, whose items are already whole batches."""
    return batch


@dataclass(frozen=True)
class LoaderSettings:
    batch_size: int
    val_batch_size: int
    rank: int  # among the host's processes (each host shards its own windows)
    world_size: int  # processes on the host
    seed: int
    num_workers: int | None  # None: fitted to the host
    device: torch.device  # where vectorised batches are assembled
    threads_per_process: int


def _shm_bytes() -> int:
    try:
        return shutil.disk_usage("/dev/shm").total
    except OSError:
        return 0


def auto_num_workers(settings: LoaderSettings, vectorised: bool) -> int:
    """Vectorised batches cost about a millisecond: workers would only add start-up and memory.
    The per-window path on a GPU host gets worker processes, unless /dev/shm is too small."""
    if settings.num_workers is not None:
        return settings.num_workers
    if vectorised or settings.device.type != "cuda":
        return 0
    if _shm_bytes() < _MIN_SHM_BYTES:
        log.warning("/dev/shm is below 512 MB: loading data in the main process (raise shm_size)")
        return 0
    return min(4, max(0, settings.threads_per_process - 1))


def library_collate(dataset: TimeSeriesDataSet) -> Any:
    """The collate function pytorch-forecasting's own loaders use for `dataset`."""
    return dataset.to_dataloader(train=False, batch_size=1, num_workers=0).collate_fn


def make_loader(
    dataset: TimeSeriesDataSet,
    settings: LoaderSettings,
    train: bool,
    vectorised: bool,
    hosts: HostWindows | None = None,
) -> DataLoader:
    """The DataLoader of this rank for `dataset` (training: shuffled; validation: in order),
    its batches assembled by gathers where `vectorised` (speedups.engage decides it); `hosts`:
    the windows of `dataset` on every host, for as many batches as the others."""
    sampler = ShardedBatchSampler(
        len(dataset),
        settings.batch_size if train else settings.val_batch_size,
        settings.rank,
        settings.world_size,
        shuffle=train,
        seed=settings.seed,
        hosts=hosts,
    )
    num_workers = auto_num_workers(settings, vectorised)
    if vectorised:
        device = settings.device if num_workers == 0 else torch.device("cpu")
        source: Dataset = _BatchedWindows(WindowBatcher(dataset, device=device))
        collate = _whole_batch
    else:
        source, collate = dataset, library_collate(dataset)
    loader_class = StatefulDataLoader if train else DataLoader
    return loader_class(
        source,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=settings.device.type == "cuda" and not (vectorised and num_workers == 0),
        persistent_workers=num_workers > 0,
        multiprocessing_context="fork" if num_workers > 0 and os.name == "posix" else None,
    )
