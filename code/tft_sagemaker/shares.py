"""Which rows each host reads, and what every host agrees on before training.

- On a `ShardedByS3Key` train channel a host holds only its own files: it trains on their
  series. On a replicated channel (every host got every file) of a multi-host job, each host
  keeps the series whose id hash falls to it (`Hosts.owns`): disjoint shares that together are
  the whole panel. A validation channel follows the train channel: a host validates its own
  series, and series that no host trains on by the same hash.
- What must be the same everywhere is agreed through `Hosts.gather` (a TCPStore on the master
  host at `master_port + 1`: each host's first process writes its value, every process reads
  them all) before any dataset is built: the time axis (the earliest date), the recipe's data
  statistics, the category vocabularies and series ids (their union, so codes are the ones one
  process would give on the whole panel), the scalers of the real variables (global mean and
  variance), a global target normaliser's centre and scale, and each host's window counts (a
  global numbering and a balanced epoch, loaders.HostWindows).
- The training datasets take what the hosts agree on (`Agreement`, asked by
  dataset.build_columnar_training): one preparation per host still (host_panel.py), which the
  host's other processes map.
- After training, every rank evaluates its share of its host's validation windows, each host's
  first process the baselines of the host's windows, and global rank 0 gathers them over the
  process group (job.evaluate): the scores are those of one process on every window.
"""

from __future__ import annotations

import copy
import math
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import torch.distributed as dist
from pytorch_forecasting.data.encoders import GroupNormalizer, TorchNormalizer
from sklearn.preprocessing import StandardScaler

from .config import DataConfig
from .errors import JobError
from .preparation import as_labels
from .sagemaker.launch_plan import LaunchPlan
from .time_axis import TimeAxis

Gather = Callable[[str, Any], list[Any]]  # (name, this host's value) → every host's, in order
FAILED = "failed"  # the store's key of the first host failure's cause
_POLL_S = 0.2


def series_hash(frame: pd.DataFrame, group_ids: Sequence[str]) -> np.ndarray:
    """A hash of each row's series ids as labels (the same on every host and every run)."""
    labels = pd.DataFrame({g: as_labels(frame[g]).astype(str) for g in group_ids})
    return pd.util.hash_pandas_object(labels, index=False).to_numpy()


@dataclass
class Hosts:
    """This host among the job's hosts: its share of the rows and the exchange with the
    others (see the module docstring). The default: a job on one host."""

    node: int = 0
    nodes: int = 1
    sharded: bool = False  # the train channel is ShardedByS3Key
    writer: bool = True  # the host's first process: the one that prepares and gathers its data
    store: dist.TCPStore | None = None
    timeout_s: float = 1800.0  # how long a gather waits for the other hosts

    @classmethod
    def of_job(cls, plan: LaunchPlan, sharded: bool, timeout_s: int) -> Hosts:
        """This process's view; on several hosts a TCPStore at master_port + 1 on the master
        host, usable before Lightning forms the process group (and by the processes it starts)."""
        store = None
        if plan.num_nodes > 1:
            store = dist.TCPStore(
                plan.master_addr,
                plan.master_port + 1,
                is_master=plan.global_rank == 0,
                timeout=timedelta(seconds=timeout_s),
                wait_for_workers=False,
            )
        return cls(plan.node_rank, plan.num_nodes, sharded, plan.local_rank == 0, store, timeout_s)

    def gather(self, name: str, value: Any) -> list[Any]:
        """Every host's `value` for `name`, in node order (each name is gathered once)."""
        if self.store is None:
            return [value]
        keys = [f"{name}/{node}" for node in range(self.nodes)]
        if self.writer:
            self.store.set(keys[self.node], pickle.dumps(value))
        deadline = time.monotonic() + self.timeout_s
        while not self.store.check(keys):
            if self.store.check([FAILED]):
                raise JobError(
                    f"Another host could not prepare its share of the data: "
                    f"{self.store.get(FAILED).decode()}"
                )
            if time.monotonic() > deadline:
                missing = [n for n, key in enumerate(keys) if not self.store.check([key])]
                raise JobError(
                    f"Node(s) {', '.join(map(str, missing))} had not sent their {name} after "
                    f"{self.timeout_s:.0f} s (collective_timeout_s): their logs have the cause."
                )
            time.sleep(_POLL_S)
        return [pickle.loads(self.store.get(key)) for key in keys]

    @contextmanager
    def telling_the_others(self) -> Iterator[None]:
        """Around a host's preparation: a failure's cause reaches the other hosts' gathers at
        once (they fail with it rather than wait until the timeout)."""
        try:
            yield
        except Exception as error:
            if self.store is not None and not self.store.check([FAILED]):
                self.store.set(FAILED, f"node {self.node}: {error}")
            raise

    def owns(self, frame: pd.DataFrame, group_ids: Sequence[str]) -> np.ndarray:
        """Rows of series whose hash falls to this host."""
        return series_hash(frame, group_ids) % self.nodes == self.node

    def train_rows(self, raw: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
        """This host's rows of the train channel: all it has on a sharded channel, its series
        of a replicated one (left whole when an id column is missing: preparation says so)."""
        if self.nodes == 1 or self.sharded or not set(config.group_ids) <= set(raw.columns):
            return raw
        return raw[self.owns(raw, config.group_ids)].reset_index(drop=True)

    def validation_rows(
        self, validation: pd.DataFrame, train: pd.DataFrame, config: DataConfig
    ) -> pd.DataFrame:
        """This host's rows of a (prepared) validation channel: its own training series, and
        those no host trains on whose hash falls to it."""
        if self.nodes == 1:
            return validation
        hashes = series_hash(validation, config.group_ids)
        mine = hashes % self.nodes == self.node
        if self.sharded:
            own = np.unique(series_hash(train, config.group_ids))
            everyone = np.concatenate(self.gather("train_series", own))
            mine = np.isin(hashes, own) | (~np.isin(hashes, everyone) & mine)
        return validation[mine].reset_index(drop=True)

    def time_axis(self, axis: TimeAxis | None) -> TimeAxis | None:
        """The time axis of the whole panel: the earliest origin of any host."""
        origins = [a for a in self.gather("time_axis", axis) if a is not None]
        return min(origins, key=lambda a: pd.Timestamp(a.origin)) if origins else axis


# --------------------------------------------------------------------------------------------
# Encoders, scalers and normaliser the dataset would fit on the whole panel
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations: they combine exactly across hosts."""

    n: int
    mean: float
    m2: float

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        values = np.asarray(values, dtype=float)
        if not len(values):
            return cls(0, 0.0, 0.0)
        mean = float(values.mean())
        return cls(len(values), mean, float(((values - mean) ** 2).sum()))

    @classmethod
    def of_scaler(cls, scaler: StandardScaler) -> Moments:
        """The moments a fitted (one-column) StandardScaler saw."""
        n = int(np.asarray(scaler.n_samples_seen_).reshape(-1)[0])
        return cls(n, float(scaler.mean_[0]), float(scaler.var_[0]) * n)

    @staticmethod
    def combine(parts: Sequence[Moments]) -> Moments:
        n = sum(p.n for p in parts)
        if not n:
            return Moments(0, 0.0, 0.0)
        mean = sum(p.n * p.mean for p in parts) / n
        m2 = sum(p.m2 + p.n * (p.mean - mean) ** 2 for p in parts)
        return Moments(n, mean, m2)

    @property
    def var(self) -> float:
        return self.m2 / self.n if self.n else 0.0


def _scaler(fitted: StandardScaler, moments: Moments) -> StandardScaler:
    """`fitted` (a host's scaler) as `fit` on the values these moments describe leaves it."""
    scaler = copy.deepcopy(fitted)
    scaler.n_samples_seen_ = np.int64(moments.n)
    scaler.mean_ = np.array([moments.mean])
    scaler.var_ = np.array([moments.var])
    std = math.sqrt(moments.var)
    # sklearn's scale of a constant column is 1
    scaler.scale_ = np.array([std if std >= 10 * np.finfo(float).eps else 1.0])
    return scaler


def _group_encoders(kwargs: dict[str, Any]) -> dict[str, str]:
    """The encoders of series ids the library fits on the training rows (name → its column):
    each id's internal copy, and the id itself where a per-series normaliser encodes it (and no
    categorical encoder is it)."""
    categoricals = {
        *kwargs["static_categoricals"],
        *kwargs["time_varying_known_categoricals"],
        *kwargs["time_varying_unknown_categoricals"],
    }
    names = {f"__group_id__{g}": g for g in kwargs["group_ids"]}
    if isinstance(kwargs["target_normalizer"], GroupNormalizer):
        names |= {g: g for g in kwargs["group_ids"] if g not in categoricals}
    return names


class Agreement:
    """What the hosts' training datasets take instead of fitting it on their own rows, so that
    every host encodes and scales like one process on the whole panel: the category
    vocabularies (their union), the scalers of the real variables (exact moments), a global
    target normaliser's centre and scale, the first time index. The job asks it for the
    categories (`categories`), and `dataset.build_columnar_training` for the series ids'
    encoders before `columnar.fit_parameters` and for the rest after (from the scalers and
    normaliser fitted on this host's rows)."""

    def __init__(self, gather: Gather) -> None:
        self.gather = gather

    def categories(self, categories: dict[str, set[str]]) -> dict[str, set[str]]:
        """Every host's labels of each categorical (`dataset.known_categories` of its rows):
        the encoders `dataset_parameters` fits on them give the codes of the whole panel."""
        parts = self.gather("categories", categories)
        return {name: set().union(*(p.get(name, set()) for p in parts)) for name in parts[0]}

    def encoders(self, data: pd.DataFrame, kwargs: dict[str, Any]) -> dict[str, Any]:
        """`kwargs` with the series ids' encoders pre-fitted on every host's ids (the library
        keeps a fitted encoder as it is)."""
        columns = _group_encoders(kwargs)
        parts = self.gather(
            "series_ids", {name: pd.unique(data[c].to_numpy()) for name, c in columns.items()}
        )
        encoders = dict(kwargs["categorical_encoders"])
        for name in columns:
            union = np.unique(np.concatenate([p[name] for p in parts]))
            encoders[name] = copy.deepcopy(encoders[name]).fit(union, overwrite=True)
        return kwargs | {"categorical_encoders": encoders}

    def parameters(self, data: pd.DataFrame, parameters: dict[str, Any]) -> dict[str, Any]:
        """`columnar.fit_parameters`' result on this host's rows → the whole panel's."""
        normalizer = copy.deepcopy(parameters["target_normalizer"])
        target = parameters["target"]
        moments = {name: Moments.of_scaler(s) for name, s in parameters["scalers"].items()}
        # A global standard normaliser (not per series, not per window): its centre and scale.
        global_standard = type(normalizer) is TorchNormalizer and normalizer.method == "standard"
        if global_standard:
            transformed = np.asarray(normalizer.preprocess(data[target]), dtype=float)
            moments["__target__"] = Moments.of(transformed)
        parts = self.gather("moments", (moments, data[parameters["time_idx"]].min()))
        combined = {name: Moments.combine([m[name] for m, _ in parts]) for name in moments}
        if global_standard:
            whole = combined.pop("__target__")
            normalizer.center_ = whole.mean
            normalizer.scale_ = math.sqrt(whole.var) + float(np.finfo(np.float16).eps)
            # the target's centre and scale, added to every row: constants of the whole panel
            for suffix, value in (("center", normalizer.center_), ("scale", normalizer.scale_)):
                if f"{target}_{suffix}" in combined:
                    combined[f"{target}_{suffix}"] = Moments(whole.n, value, 0.0)
        scalers = {name: _scaler(parameters["scalers"][name], m) for name, m in combined.items()}
        return parameters | {
            "scalers": scalers,
            "target_normalizer": normalizer,
            "min_prediction_idx": min(first for _, first in parts),
        }


def merged_normalizer(normalizer: TorchNormalizer, gather: Gather) -> TorchNormalizer:
    """A per-series normaliser with every host's series (for the saved model and the forecast
    channel); a global one as it is."""
    if not isinstance(normalizer, GroupNormalizer) or not normalizer.groups:
        return normalizer
    parts = gather("series_scales", normalizer.norm_)
    if len(parts) == 1:
        return normalizer
    merged = copy.deepcopy(normalizer)
    merged.norm_ = pd.concat(parts).sort_index()
    merged.missing_ = merged.norm_.median().to_dict()
    return merged


# --------------------------------------------------------------------------------------------
# After training: the ranks' shares of the evaluation, over the training process group
# --------------------------------------------------------------------------------------------
def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def to_zero(value: Any) -> list[Any] | None:
    """Every rank's `value` on global rank 0 (in rank order), None on the others."""
    if not _grouped():
        return [value]
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def from_zero(value: Any) -> Any:
    """Global rank 0's `value` on every rank."""
    if not _grouped():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def everyone(value: Any) -> list[Any]:
    """Every rank's `value` on every rank (in rank order)."""
    if not _grouped():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
