"""One preparation per host: the datasets' tensors in memory-mapped files every process maps.

The host's first process (local rank 0) reads, validates and encodes the channels, and builds
the training and validation datasets column by column (columnar.py) straight into `.npy` files
of a host-local directory; the host's other processes wait for it, then map the same files
(copy-on-write, so nothing they do reaches the files) and load the datasets' fitted parameters:
the panel's pages are in the host's memory once, however many processes train.

The directory is `$TFT_PANEL_DIR`, else `panel/` in the SageMaker base directory (beside
`input/`, neither uploaded nor synchronised); each panel is in a subdirectory named by a key of
what it is made from (the data configuration and the channels' file names, sizes and times), so
every process of the host names it without reading the data, and a job started again on the
same host with the same inputs maps the panel it left. A panel is written under a temporary name
and renamed once complete (`complete` is its last file). While it is prepared, `<key>.owner`
holds the preparing process's id; a failure leaves its cause in `<key>.failed`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import mmap
import os
import pickle
import shutil
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_forecasting
import torch
from pytorch_forecasting import TimeSeriesDataSet

from .channels import channel_data_files
from .columnar import Allocate, tensors
from .config import DataConfig
from .errors import JobError, writing
from .recipe import Choice
from .sagemaker.paths import JobPaths
from .speedups import batches

log = logging.getLogger(__name__)

FORMAT = 3  # of the files below: a change makes new keys
COMPLETE = "complete"
DATASETS = ("training", "validation", "backtest")
_POLL_S = 0.2


@dataclass
class Prepared:
    """What the host's first process prepared, as every process of the host uses it."""

    config: DataConfig  # resolved from the data (recipe.resolve_data)
    choices: list[Choice]
    training: TimeSeriesDataSet
    validation: TimeSeriesDataSet
    # ensemble=true: the backtest windows carved from the training rows (job_data.carve_backtest)
    backtest: TimeSeriesDataSet | None = None


def panel_key(paths: JobPaths, config: DataConfig, backtest: bool) -> str:
    """Names what the panel is made from, without reading the data."""
    files = []
    for channel in ("train", "validation"):
        for path in channel_data_files(paths, channel, required=False) or []:
            stat = path.stat()
            files.append([channel, str(path), stat.st_size, stat.st_mtime_ns])
    made_of = [FORMAT, pytorch_forecasting.__version__, repr(config), backtest, files]
    return hashlib.sha256(json.dumps(made_of).encode()).hexdigest()[:20]


def panel_root(paths: JobPaths) -> Path:
    return Path(os.environ.get("TFT_PANEL_DIR") or paths.base / "panel")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def bytes_per_row(dataset: TimeSeriesDataSet) -> str:
    """`<N> bytes per row (what they are)` of a dataset's tensors and windows."""
    rows = len(dataset.data["time"])
    parts = {
        name: sum(t.element_size() * t.numel() for t in (v if isinstance(v, list) else [v]))
        for name, v in dataset.data.items()
        if v is not None
    }
    parts["windows"] = int(dataset.index.memory_usage(index=False).sum())
    total = sum(parts.values())
    shares = ", ".join(f"{name} {size / rows:.1f}" for name, size in parts.items())
    return f"{total / rows:.1f} bytes per row ({shares}; {rows} rows)"


# The arrays each dataset loaded from a panel maps (`release_pages`).
_MAPPED: weakref.WeakKeyDictionary[TimeSeriesDataSet, list[np.memmap]] = weakref.WeakKeyDictionary()


def _drop_pages(arrays: list[np.memmap]) -> None:
    """The pages of these mapped arrays out of this process's memory (RSS): read again, they
    are mapped back from the page cache, or read from their files. Written arrays (a shared
    mapping) are flushed first; a copy-on-write mapping would lose what this process wrote
    into it (nothing writes into a dataset's tensors: the batches are copies)."""
    for array in arrays:
        array.flush()  # a shared mapping's pages to its file (nothing to do for the others)
        array._mmap.madvise(mmap.MADV_DONTNEED)


def release_pages(dataset: TimeSeriesDataSet) -> None:
    """`dataset`'s pages out of this process's memory, where it is mapped from a panel (else
    nothing): once it is read no more for a while (the training windows after training)."""
    _drop_pages(_MAPPED.get(dataset, []))


def _mapped(directory: Path) -> dict[str, np.ndarray]:
    """The arrays of a panel directory, mapped copy-on-write: what a process writes stays its
    own."""
    return {path.stem: np.load(path, mmap_mode="c") for path in sorted(directory.glob("*.npy"))}


class HostPanel:
    """The panel directory of one job on one host."""

    def __init__(self, root: Path, key: str) -> None:
        self.directory = root / key
        self.owner = root / f"{key}.owner"
        self.failed = root / f"{key}.failed"
        self._staging = root / f"{key}.tmp-{os.getpid()}"
        self._written: list[np.memmap] = []

    @classmethod
    def for_job(cls, paths: JobPaths, config: DataConfig, backtest: bool) -> HostPanel:
        return cls(panel_root(paths), panel_key(paths, config, backtest))

    def complete(self) -> bool:
        return (self.directory / COMPLETE).is_file()

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Around the first process's preparation: its id in `owner` meanwhile, the cause of
        a failure in `failed`."""
        with writing("the prepared data", self.directory.parent):
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            self.failed.unlink(missing_ok=True)
            self.owner.write_text(str(os.getpid()))
        try:
            yield
        except BaseException as error:
            self.failed.write_text(str(error) or type(error).__name__)
            raise
        finally:
            self.owner.unlink(missing_ok=True)
            shutil.rmtree(self._staging, ignore_errors=True)

    def allocate(self, dataset: str) -> Allocate:
        """Arrays of `dataset` in memory-mapped files of the panel being written."""
        return self._allocate(dataset)

    def _allocate(self, part: str) -> Allocate:
        directory = self._staging / part

        def allocate(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
            directory.mkdir(parents=True, exist_ok=True)
            with writing("the prepared data", directory / f"{name}.npy"):
                array = np.lib.format.open_memmap(
                    directory / f"{name}.npy", mode="w+", dtype=dtype, shape=shape
                )
            self._written.append(array)
            return array

        return allocate

    def release(self) -> None:
        """The pages of the arrays written so far out of this process's memory: written to
        their files, they stay in the page cache (clean, which the kernel may reclaim) and
        are mapped again where read, rather than counting in this process for the whole
        preparation (a panel's tensors are most of it)."""
        with writing("the prepared data", self._staging):
            _drop_pages(self._written)

    def publish(self, prepared: Prepared) -> None:
        """Write what the arrays do not hold, then make the panel visible in one rename."""
        with writing("the prepared data", self._staging):
            for name in DATASETS:
                dataset: TimeSeriesDataSet | None = getattr(prepared, name)
                if dataset is None:
                    continue
                if batches.unsupported_reason(dataset) is None:  # WindowBatcher's, once
                    arrays = batches.window_arrays(dataset, self._allocate(f"{name}/windows"))
                    batches.prepared(dataset, arrays)
                schema = copy.copy(dataset)
                schema.data, schema.index = None, None
                torch.save(schema, self._staging / name / "schema.pt")
                np.save(self._staging / name / "index.npy", dataset.index.to_numpy())
                (self._staging / name / "index.json").write_text(
                    json.dumps(list(dataset.index.columns))
                )
            with (self._staging / "prepared.pkl").open("wb") as file:
                pickle.dump({"config": prepared.config, "choices": prepared.choices}, file)
            (self._staging / COMPLETE).write_text("")
            try:
                self._staging.rename(self.directory)
            except OSError:
                if not self.complete():  # not another run's identical panel
                    raise
        log.info("data: prepared once for this host in %s", self.directory)

    def load(self) -> Prepared:
        """The panel as this process maps it."""
        with (self.directory / "prepared.pkl").open("rb") as file:
            meta = pickle.load(file)
        datasets = {}
        for name in DATASETS:
            directory = self.directory / name
            if not directory.is_dir():  # no backtest (ensemble=false)
                continue
            dataset = torch.load(directory / "schema.pt", weights_only=False)
            arrays = _mapped(directory)
            index = arrays.pop("index")
            dataset.data = tensors(arrays)
            columns = json.loads((directory / "index.json").read_text())
            dataset.index = pd.DataFrame(index, columns=columns, copy=False)
            windows = _mapped(directory / "windows") if (directory / "windows").is_dir() else {}
            if windows:
                batches.prepared(dataset, windows)
            _MAPPED[dataset] = [*arrays.values(), index, *windows.values()]
            datasets[name] = dataset
        return Prepared(meta["config"], meta["choices"], **datasets)

    def wait(self, timeout_s: float) -> Prepared:
        """The panel once the host's first process has prepared it; a JobError when that
        process failed, ended without finishing, or took longer than `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self.complete():
            if self.failed.is_file():
                raise JobError(
                    "The host's first process could not prepare the data: "
                    f"{self.failed.read_text().strip()}"
                )
            owner = self._owner()
            if owner is not None and not _alive(owner):
                raise JobError(
                    f"The host's first process (pid {owner}) ended before it had prepared the "
                    "data (killed, e.g. out of memory?): its log has the cause."
                )
            if time.monotonic() > deadline:
                raise JobError(
                    f"The host's first process had not prepared the data in {self.directory} "
                    f"after {timeout_s:.0f} s (collective_timeout_s): raise collective_timeout_s "
                    "for larger panels, or look for the cause in its log."
                )
            time.sleep(_POLL_S)
        log.info("data: mapped from %s (prepared by the host's first process)", self.directory)
        return self.load()

    def _owner(self) -> int | None:
        try:
            return int(self.owner.read_text())
        except (FileNotFoundError, ValueError):
            return None
