"""Memory a job will need on this host, estimated before any data is read, and the refusal when
that exceeds what the host has: a cause naming the estimate, the host's memory and the remedies,
instead of the kernel killing the job with no failure file.

The estimate counts rows from the files' own metadata (parquet footers; CSV line counts), so it
costs well under a second on panels that take minutes to prepare:

    host bytes = processes x PROCESS_BYTES + rows this host reads x columns x BYTES_PER_VALUE

The host's first process prepares the panel once for all of them (host_panel.py): the data is
counted once per host, whatever the number of processes. On a `ShardedByS3Key` train channel a
host's files are its share already; on a replicated channel of a multi-host job each host keeps
about 1/hosts of the series (`shares.py`). `memory_limit_gb` replaces the host's memory (tests,
or a host shared with other work).
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow.parquet as pq
import torch

from .channels import channel_data_files
from .errors import DataError
from .sagemaker.launch_plan import LaunchPlan, hosts_per_machine, process_memory
from .sagemaker.paths import SHARDED, JobPaths

log = logging.getLogger(__name__)

# Calibrated on the lean host panel (issue 18, bench/results/scale_lean.json): the built-in
# generator's 11 columns peaked at 2.11 GB summed RSS at 5 million rows in one process, 3.05 GB
# with two and 7.13 GB at 20 million with two (27-34 bytes per value once read, validated,
# encoded with the narrowest integer types and laid out as the panel's tensors, index and
# batcher arrays, the lean frames rank 0 keeps included; a second process counts the pages it
# maps again); a process holds about 0.55 GB of torch, Lightning and pytorch-forecasting once
# imported.
BYTES_PER_VALUE = 34
PROCESS_BYTES = 600 * 1024**2
_CHUNK = 1 << 22
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _csv_rows(path: Path) -> int:
    """Data rows of a CSV file (lines after the header), decompressed as it streams."""
    suffix = path.suffix.lower()
    if suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            with archive.open(names[0]) as stream:
                return _count_lines(stream)
    opener = _OPENERS.get(suffix, open)
    with opener(path, "rb") as stream:
        return _count_lines(stream)


def _count_lines(stream: IO[bytes]) -> int:
    lines, last = 0, b"\n"
    while chunk := stream.read(_CHUNK):
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    lines += last != b"\n"  # a last line without its newline
    return max(0, lines - 1)


def _csv_columns(path: Path) -> int:
    opener = _OPENERS.get(path.suffix.lower(), open)
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as archive, archive.open(archive.namelist()[0]) as stream:
            header = stream.readline()
    else:
        with opener(path, "rb") as stream:
            header = stream.readline()
    text = header.decode("utf-8", "replace")
    return max(text.count(sep) for sep in (",", ";", "\t", "|")) + 1


@dataclass(frozen=True)
class TableSize:
    rows: int
    columns: int


def table_size(files: Iterable[Path]) -> TableSize:
    """Rows and columns (the widest file's) of a channel's files, from metadata where the
    format has it."""
    rows = columns = 0
    for path in files:
        try:
            if path.stat().st_size == 0:
                continue
            if path.name.lower().endswith((".parquet", ".pq")):
                metadata = pq.ParquetFile(path).metadata
                rows += metadata.num_rows
                columns = max(columns, metadata.num_columns)
            else:
                rows += _csv_rows(path)
                columns = max(columns, _csv_columns(path))
        except Exception as err:  # pyarrow, zipfile and the decompressors raise many types
            reason = " ".join(str(err).split())[:200]
            raise DataError(
                f"Cannot read data file {path}: {type(err).__name__}: {reason}"
            ) from None
    return TableSize(rows, columns)


@dataclass(frozen=True)
class MemoryEstimate:
    rows: int  # rows this host prepares (its share), once for all its processes
    columns: int
    processes: int  # training processes on this host

    @property
    def bytes_per_row(self) -> int:
        return self.columns * BYTES_PER_VALUE

    @property
    def total_bytes(self) -> int:
        data = self.rows * self.bytes_per_row
        return self.processes * PROCESS_BYTES + data

    def describe(self) -> str:
        return (
            f"about {gb(self.total_bytes)} ({self.rows:,} rows x {self.bytes_per_row:,} bytes per "
            f"row, prepared once on the host, plus "
            f"{gb(PROCESS_BYTES)} per process for {self.processes} process(es))"
        )


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def estimate(size: TableSize, processes: int, hosts: int, sharded: bool) -> MemoryEstimate:
    """This host's estimate, prepared once for its `processes`: its rows are those of the files
    it sees (sharded: its share already) or 1/hosts of them (a replicated channel split by
    series)."""
    rows = size.rows if sharded or hosts == 1 else -(-size.rows // hosts)
    return MemoryEstimate(rows, size.columns, processes)


def check_memory(estimated: MemoryEstimate, available: int, source: str) -> None:
    """Refuse a job whose estimate exceeds the host's memory (`source` says where that figure
    came from); log the estimate otherwise."""
    line = f"{estimated.describe()}; the host has {gb(available)} ({source})"
    if estimated.total_bytes <= available:
        log.info("memory: estimated %s", line)
        return
    raise DataError(
        f"Not enough memory for this panel on one host: the job needs {line}. Split it over more "
        "hosts (instance_count; with S3DataDistributionType=ShardedByS3Key each host reads only "
        "its files), use an instance with more memory, or fewer processes per host (devices)."
    )


def check_host_memory(paths: JobPaths, plan: LaunchPlan, limit_gb: float | None) -> None:
    """`check_memory` for this host: the train and validation channels' files, the plan's
    processes and hosts, and `limit_gb` or the container's memory."""
    files = [
        path
        for name in ("train", "validation")
        for path in channel_data_files(paths, name, required=name == "train") or []
    ]
    sharded = paths.distribution("train") == SHARDED
    estimated = estimate(table_size(files), plan.devices, plan.num_nodes, sharded)
    check_memory(estimated, *host_memory_available(limit_gb))


def host_memory_available(limit_gb: float | None) -> tuple[int, str]:
    """The memory this host's processes share, and where the figure comes from: `limit_gb`,
    else the container's (shared by the hosts on one machine)."""
    if limit_gb is not None:
        return int(limit_gb * 1e9), f"memory_limit_gb={limit_gb:g}"
    available, source = process_memory()
    if source.startswith("MemTotal") and (sharing := hosts_per_machine(os.environ)) > 1:
        return available // sharing, f"{source}, shared by {sharing} hosts"
    return available, source


def process_memory_available(plan: LaunchPlan, limit_gb: float | None) -> tuple[int, str]:
    """The memory one training process has for its model: its GPU's, or its share of the
    host's."""
    if plan.accelerator == "gpu":
        device = torch.cuda.get_device_properties(plan.local_rank % torch.cuda.device_count())
        return device.total_memory, f"the memory of one {device.name}"
    available, source = host_memory_available(limit_gb)
    if plan.devices > 1:
        return available // plan.devices, f"{source}, shared by {plan.devices} processes"
    return available, source
