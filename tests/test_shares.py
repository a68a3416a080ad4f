"""Hosts' shares and what they agree on (shares.py), without processes: two "hosts" as threads
exchanging their values, each with half of the series. What they agree on must be what one
process fits on the whole panel, so that their datasets encode and scale every row alike."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
from conftest import record_error

from tft_sagemaker.config import DataConfig, build_config
from tft_sagemaker.dataset import build_columnar_training, known_categories
from tft_sagemaker.errors import DataError, JobError
from tft_sagemaker.loaders import HostWindows, ShardedBatchSampler
from tft_sagemaker.preparation import prepare_training_frame
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.recipe import resolve_data
from tft_sagemaker.sagemaker.launch_plan import plan_launch
from tft_sagemaker.shares import Agreement, Hosts, Moments, merged_normalizer, series_hash


class ThreadExchange:
    """`Hosts.gather` for hosts that are threads of this process."""

    def __init__(self, hosts: int) -> None:
        self.hosts = hosts
        self.barrier = threading.Barrier(hosts)
        self.values: dict[tuple[str, int], Any] = {}

    def gather_of(self, node: int) -> Callable[[str, Any], list[Any]]:
        def gather(name: str, value: Any) -> list[Any]:
            self.values[name, node] = value
            self.barrier.wait()
            return [self.values[name, n] for n in range(self.hosts)]

        return gather


def on_hosts(hosts: int, work: Callable[[int, Callable[[str, Any], list[Any]]], Any]) -> list:
    exchange = ThreadExchange(hosts)
    with ThreadPoolExecutor(hosts) as pool:
        futures = [pool.submit(work, node, exchange.gather_of(node)) for node in range(hosts)]
        return [f.result(timeout=120) for f in futures]


def prepared(panel: pd.DataFrame, **values: str) -> tuple[pd.DataFrame, DataConfig]:
    config = build_config({"preset": "synthetic", **values}, None, PRESET_VALUES).data
    frame = prepare_training_frame(panel, config)[0]
    return frame, resolve_data(config, frame)[0]


def halves(frame: pd.DataFrame, config: DataConfig) -> list[pd.DataFrame]:
    mine = series_hash(frame, config.group_ids) % 2
    return [frame[mine == node].reset_index(drop=True) for node in range(2)]


def test_moments_combine_as_one_set() -> None:
    values = np.random.default_rng(0).normal(3.0, 2.0, 1001)
    parts = [Moments.of(p) for p in np.array_split(values, 3)]
    combined = Moments.combine(parts)
    assert combined.n == len(values)
    assert combined.mean == pytest.approx(values.mean(), rel=1e-12)
    assert combined.var == pytest.approx(values.var(), rel=1e-12)


def test_replicated_hosts_split_the_series_disjointly(small_panel: pd.DataFrame) -> None:
    config = prepared(small_panel)[1]
    shares = []
    for node in range(3):
        env = {"SM_HOSTS": '["algo-1", "algo-2", "algo-3"]', "SM_CURRENT_HOST": f"algo-{node + 1}"}
        plan = plan_launch(env, None, gpus_per_host=0, cpus_per_host=1)
        hosts = Hosts(node=plan.node_rank, nodes=plan.num_nodes)
        shares.append(hosts.train_rows(small_panel, config))
    series = [set(map(tuple, s[config.group_ids].astype(str).values)) for s in shares]
    assert all(series), "a host got no series"
    assert sum(len(s) for s in series) == len(set.union(*series))  # disjoint
    assert sum(len(s) for s in shares) == len(small_panel)  # together, every row


@pytest.mark.parametrize("normalizer", ["group", "encoder", "standard"])
def test_two_hosts_fit_what_one_process_fits_on_the_panel(
    small_panel: pd.DataFrame, normalizer: str
) -> None:
    frame, config = prepared(small_panel, target_normalizer=normalizer)
    # One process on the whole panel, as the job builds it (tests/test_columnar.py: the
    # library's own dataset).
    whole = build_columnar_training(frame, config, categories=known_categories([frame], config))
    parts = halves(frame, config)

    def host(node: int, gather: Callable[[str, Any], list[Any]]) -> Any:
        agreement = Agreement(gather)
        categories = agreement.categories(known_categories([parts[node]], config))
        dataset = build_columnar_training(
            parts[node], config, categories=categories, agreement=agreement
        )
        return dataset, merged_normalizer(dataset.target_normalizer, gather)

    results = on_hosts(2, host)
    expected = whole.get_parameters()
    for dataset, merged in results:
        parameters = dataset.get_parameters()
        for name, encoder in expected["categorical_encoders"].items():
            if not hasattr(encoder, "classes_"):  # an encoder of a name no column has
                continue
            assert parameters["categorical_encoders"][name].classes_ == encoder.classes_, name
        assert expected["scalers"].keys() == parameters["scalers"].keys()
        for name, scaler in expected["scalers"].items():
            agreed = parameters["scalers"][name]
            assert agreed.n_samples_seen_ == scaler.n_samples_seen_, name
            np.testing.assert_allclose(agreed.mean_, scaler.mean_, rtol=1e-9, err_msg=name)
            np.testing.assert_allclose(agreed.scale_, scaler.scale_, rtol=1e-9, err_msg=name)
        if normalizer == "group":
            pd.testing.assert_frame_equal(merged.norm_, whole.target_normalizer.norm_)
        if normalizer == "standard":
            assert merged.center_ == pytest.approx(whole.target_normalizer.center_, rel=1e-9)
            assert merged.scale_ == pytest.approx(whole.target_normalizer.scale_, rel=1e-9)
        assert dataset.min_prediction_idx == whole.min_prediction_idx
    # Together the hosts have the whole panel's windows, every row encoded and scaled as the
    # whole panel's same row.
    assert sum(len(dataset) for dataset, _ in results) == len(whole)
    groups = whole.data["groups"]
    for dataset, _ in results:
        for code in dataset.data["groups"].unique(dim=0):
            here = (dataset.data["groups"] == code).all(-1)
            there = (groups == code).all(-1)
            for key in ("reals", "categoricals", "target"):
                mine, theirs = dataset.data[key], whole.data[key]
                mine = mine[0] if isinstance(mine, list) else mine
                theirs = theirs[0] if isinstance(theirs, list) else theirs
                torch.testing.assert_close(mine[here], theirs[there], rtol=1e-6, atol=1e-6)


def test_a_host_that_cannot_prepare_fails_the_others_with_its_cause() -> None:
    """Two hosts; the second's train channel has no rows: the first host's failure names it."""
    master = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    client = dist.TCPStore("127.0.0.1", master.port, is_master=False)
    hosts = [Hosts(0, 2, store=master, timeout_s=60), Hosts(1, 2, store=client, timeout_s=60)]
    with ThreadPoolExecutor(2) as pool:  # a real exchange first: both get both values
        both = pool.map(lambda node: hosts[node].gather("first", "ab"[node]), range(2))
        assert list(both) == [["a", "b"], ["a", "b"]]
    with pytest.raises(DataError), hosts[1].telling_the_others():
        raise DataError("Channel 'train' has no rows (1 file(s)).")
    with pytest.raises(JobError) as failed:
        hosts[0].gather("vocabularies", {})
    assert str(failed.value) == (
        "Another host could not prepare its share of the data: node 1: Channel 'train' has no "
        "rows (1 file(s))."
    )
    record_error("job", str(failed.value))


def test_a_gather_waits_at_most_its_timeout() -> None:
    """Two hosts; the second never sends its window counts (collective_timeout_s=0 here)."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    with pytest.raises(JobError) as late:
        Hosts(0, 2, store=store, timeout_s=0).gather("windows", (10, 2))
    assert str(late.value) == (
        "Node(s) 1 had not sent their windows after 0 s (collective_timeout_s): their logs have "
        "the cause."
    )
    record_error("job", str(late.value))


def test_hosts_windows_make_one_balanced_epoch() -> None:
    counts = (10, 7)  # windows per host: the hosts' shares differ
    samplers = [
        ShardedBatchSampler(
            counts[node], 3, rank, 2, shuffle=True, seed=1, hosts=HostWindows(counts, node)
        )
        for node in range(2)
        for rank in range(2)
    ]
    assert {len(s) for s in samplers} == {2}  # the largest shard's batches, on every rank
    for sampler in samplers:
        sampler.trained = len(sampler)  # as the training loop counts them
    trained = np.concatenate([s.trained_windows() for s in samplers])
    np.testing.assert_array_equal(np.sort(trained), np.arange(sum(counts)))
    assert {s.total_windows for s in samplers} == {17}


def test_a_host_with_too_few_windows_is_refused() -> None:
    with pytest.raises(JobError, match=r"^3 window\(s\) on this host cannot make 4 batch\(es\)"):
        ShardedBatchSampler(3, 2, 0, 1, shuffle=False, seed=0, hosts=HostWindows((3, 8), 0))
