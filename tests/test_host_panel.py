"""One preparation per host (host_panel.py): written once, mapped by the others, and a
clear cause when the preparing process fails or dies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tft_sagemaker.config import build_config
from tft_sagemaker.dataset import build_columnar_training, build_columnar_validation
from tft_sagemaker.errors import DataError, JobError
from tft_sagemaker.host_panel import HostPanel, Prepared, bytes_per_row, release_pages
from tft_sagemaker.job_data import split_holdout
from tft_sagemaker.preparation import prepare_training_frame
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.recipe import resolve_data
from tft_sagemaker.speedups.batches import WindowBatcher, first_difference, window_arrays
from tft_sagemaker.synthetic import make_panel
from tft_sagemaker.validation import min_series_length, validate_frame


def prepare(panel: HostPanel) -> Prepared:
    config = build_config({"preset": "synthetic"}, None, PRESET_VALUES).data
    frame = prepare_training_frame(make_panel(n_stores=2, n_weeks=50), config)[0]
    frame = validate_frame(frame, config, "train", min_series_length(config, holdout=True))
    config, choices = resolve_data(config, frame)
    with panel.preparing():
        training = build_columnar_training(
            split_holdout(frame, config), config, panel.allocate("training")
        )
        panel.release()  # the pages written leave the process, not the data
        validation = build_columnar_validation(
            training, frame, config, panel.allocate("validation")
        )
        prepared = Prepared(config, choices, training, validation)
        panel.publish(prepared)
    return prepared


def test_the_other_processes_map_what_the_first_prepared(tmp_path: Path) -> None:
    first = prepare(HostPanel(tmp_path, "key"))
    other = HostPanel(tmp_path, "key").wait(timeout_s=0)
    assert other.config == first.config
    assert other.choices == first.choices
    for name in ("training", "validation"):
        ours, theirs = getattr(other, name), getattr(first, name)
        pd.testing.assert_frame_equal(ours.index, theirs.index, check_exact=True)
        assert first_difference(theirs.data, ours.data) is None
        windows = np.arange(len(theirs))
        expected = theirs._collate_fn([theirs[int(i)] for i in windows[:50]])
        assert first_difference(expected, WindowBatcher(ours)(windows[:50])) is None
        # the batcher's per-window arrays were computed once, and are mapped
        mapped = {p.stem: np.load(p) for p in (tmp_path / "key" / name / "windows").glob("*")}
        computed = window_arrays(theirs)
        assert mapped.keys() == computed.keys()
        assert all(np.array_equal(mapped[k], computed[k]) for k in computed)
        release_pages(ours)  # mapped back where read again
        assert first_difference(theirs.data, ours.data) is None
        assert first_difference(expected, WindowBatcher(ours)(windows[:50])) is None
    # mapped copy-on-write: what a process writes stays its own
    mapped = other.training.data["reals"]
    mapped[0, 0] += 1
    fresh = HostPanel(tmp_path, "key").load().training.data["reals"]
    assert fresh[0, 0] == first.training.data["reals"][0, 0] != mapped[0, 0]
    assert not list(tmp_path.glob("key.*"))  # no owner, failure or staging left
    assert bytes_per_row(first.training).endswith(f"; {len(first.training.data['time'])} rows)")


def test_a_failed_preparation_fails_the_others_with_its_cause(tmp_path: Path) -> None:
    with pytest.raises(DataError), HostPanel(tmp_path, "key").preparing():
        raise DataError("Channel 'train': target 'sales' has 3 missing values.")
    with pytest.raises(JobError, match="could not prepare the data: Channel 'train': target"):
        HostPanel(tmp_path, "key").wait(timeout_s=60)


def test_a_first_process_that_died_fails_the_others(tmp_path: Path) -> None:
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    (tmp_path / "key.owner").write_text(ended.stdout.strip())
    with pytest.raises(JobError, match=r"ended before it had prepared the data"):
        HostPanel(tmp_path, "key").wait(timeout_s=60)


def test_the_wait_is_bounded(tmp_path: Path) -> None:
    # this process prepares, and has not finished when the other gives up
    with (
        HostPanel(tmp_path, "key").preparing(),
        pytest.raises(JobError, match=r"had not prepared the data .* after 0 s"),
    ):
        HostPanel(tmp_path, "key").wait(timeout_s=0)
