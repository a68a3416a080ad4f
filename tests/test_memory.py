"""The memory estimate and the refusal of a job that would not fit on its host (memory.py):
rows from the files' metadata, the host's memory from the cgroup or /proc/meminfo, and the cause
in output/failure before any data is prepared."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest
from conftest import SYNTHETIC_SHORT, TINY, SageMakerDir, record_error

from tft_sagemaker.memory import (
    BYTES_PER_VALUE,
    PROCESS_BYTES,
    TableSize,
    estimate,
    gb,
    table_size,
)
from tft_sagemaker.sagemaker.launch_plan import host_memory

MEMINFO = "MemTotal:       24683584 kB\nMemFree:         1000000 kB\n"


def test_rows_and_columns_from_parquet_and_csv_files(tmp_path, small_panel):
    small_panel.to_parquet(tmp_path / "a.parquet")
    small_panel.head(100).to_csv(tmp_path / "b.csv", index=False)
    with gzip.open(tmp_path / "c.csv.gz", "wt") as stream:
        small_panel.head(7).to_csv(stream, index=False, sep=";")
    size = table_size([tmp_path / "a.parquet", tmp_path / "b.csv", tmp_path / "c.csv.gz"])
    assert size == TableSize(len(small_panel) + 107, small_panel.shape[1])


def test_a_last_line_without_newline_counts(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,4")
    assert table_size([tmp_path / "d.csv"]) == TableSize(2, 2)


def test_the_estimate_counts_the_data_once_per_host():
    size = TableSize(rows=1_000_000, columns=10)
    one = estimate(size, processes=1)
    assert one.total_bytes == PROCESS_BYTES + 1_000_000 * 10 * BYTES_PER_VALUE
    # The host's first process prepares the panel for all of them (host_panel.py).
    two = estimate(size, processes=2)
    assert two.total_bytes == one.total_bytes + PROCESS_BYTES


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        ("8589934592", (8589934592, "the container's cgroup memory limit")),
        ("max", (24683584 * 1024, "MemTotal of /proc/meminfo")),
        (None, (24683584 * 1024, "MemTotal of /proc/meminfo")),
        # cgroup v1 without a limit: a number past the machine's memory
        ("9223372036854771712", (24683584 * 1024, "MemTotal of /proc/meminfo")),
    ],
)
def test_host_memory_from_the_cgroup_or_meminfo(cgroup, expected):
    assert host_memory(cgroup, MEMINFO) == expected


def test_a_panel_over_the_limit_fails_before_preparation(
    sm_job: SageMakerDir, small_panel: pd.DataFrame
) -> None:
    # The target column is missing: preparation would fail on it. The memory check comes first.
    sm_job.write_data(small_panel.drop(columns=["sales"]))
    needed = estimate(TableSize(len(small_panel), small_panel.shape[1] - 1), 1)
    limit_gb = (needed.total_bytes - 1_000) / 1e9
    result = sm_job.run({"preset": "synthetic", **TINY, "memory_limit_gb": f"{limit_gb:.9f}"})
    assert result.code != 0
    line = result.failure_line
    assert line.startswith("Not enough memory for this panel on one host: the job needs about ")
    assert f"{len(small_panel):,} rows x {needed.bytes_per_row:,} bytes per row" in line
    assert f"the host has {gb(limit_gb * 1e9)} (memory_limit_gb=" in line
    assert line.endswith("Use an instance with more memory, or fewer processes per host (devices).")
    assert "more memory" in line
    assert result.model_files == []


def test_a_panel_within_the_limit_reaches_preparation(
    sm_job: SageMakerDir, small_panel: pd.DataFrame
) -> None:
    """The same panel with room to spare gets past the check: to the missing target's cause."""
    sm_job.write_data(small_panel.drop(columns=["sales"]))
    result = sm_job.run({"preset": "synthetic", **TINY, "memory_limit_gb": "100"})
    assert result.code != 0
    assert "sales" in result.failure_line
    assert not result.failure_line.startswith("Not enough memory")


def test_a_hidden_size_of_100000_is_refused_at_once(
    sm_job: SageMakerDir, small_panel: pd.DataFrame
) -> None:
    """hidden_size=100000 (an extra digit: 500 billion weights)."""
    sm_job.write_data(small_panel)
    result = sm_job.run({**SYNTHETIC_SHORT, **TINY, "hidden_size": "100000"})
    assert result.code == 2, result.failure
    assert result.failure_line == "Hyperparameter hidden_size=100000 is above its maximum 8192."
    assert not (sm_job.base / "checkpoints").exists()
    record_error("job", result.failure_line)


def test_a_model_larger_than_the_memory_is_refused_before_it_is_built(
    sm_job: SageMakerDir, small_panel: pd.DataFrame
) -> None:
    """hidden_size=4096 on a host of 2 GB (memory_limit_gb=2): its weights alone need more."""
    sm_job.write_data(small_panel)
    result = sm_job.run({**SYNTHETIC_SHORT, **TINY, "hidden_size": "4096", "memory_limit_gb": "2"})
    assert result.code == 2, result.failure
    line = result.failure_line
    assert line.startswith(
        "The model cannot train in 2.0 GB (memory_limit_gb=2): hidden_size=4096, "
        "hidden_continuous_size=4, lstm_layers=1 make "
    ), line
    assert line.endswith("Lower hidden_size or batch_size, or use an instance with more memory."), (
        line
    )
    assert not list((sm_job.base / "checkpoints").glob("*.ckpt")), "it trained"
    record_error("job", line)


def test_the_default_model_fits_a_small_host(
    sm_job: SageMakerDir, small_panel: pd.DataFrame
) -> None:
    """The check refuses nothing that trains: the tiny model on a host of 2 GB."""
    sm_job.write_data(small_panel)
    result = sm_job.run({**SYNTHETIC_SHORT, **TINY, "memory_limit_gb": "2"})
    assert result.code == 0, result.failure
