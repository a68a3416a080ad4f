"""A validated frame → a TimeSeriesDataSet built column by column, in chunks of series.

pytorch-forecasting builds a dataset over the whole frame at once: `_preprocess_data` adds
column after column to a copy of it, `_construct_index` groups it by series row by row, and
`_data_to_tensors` copies it once more; a panel of millions of rows needs many times its own
size. Here the same dataset is made in three steps whose memory is bounded by a chunk:

1. `fit_parameters`: the library's encoders, scalers and target normalizer, fitted on the
   whole columns exactly as `_preprocess_data` fits them (same objects, same values, in the
   same order), and the parameters a dataset built on the whole frame would have;
2. the tensors (`dataset.data`), chunk of series by chunk: `_preprocess` encodes and scales
   each chunk as `_preprocess_data` does, with the same fitted objects (categories looked up
   once per distinct value, target scales once per series: the library does both row by row),
   and the library's own `_data_to_tensors` turns it into tensors, written into arrays that
   `allocate` provides (host_panel.py: memory-mapped files every process maps);
3. `window_index`: the windows (`dataset.index`), computed with numpy over the whole time
   column as `_construct_index` computes them over a grouped frame.

Only the schema (the dataset without data) is built by the library, on one series. Reaching
into its `_data_to_tensors` and `_check_tensors` is measured: at a million rows (profiled) the
library's per-chunk `from_parameters` took 54 s of the 65 s training build (row-by-row category
lookups, a MultiIndex join per chunk for the target scales, a per-chunk window index thrown
away, `_find_end_indices` a Python loop without numba), this path under 6 s, bit for bit;
`unsupported_reason` says when it does not apply (dataset.py then has the library build the
dataset on the whole frame, and logs why).

`build_columnar` returns a library dataset whose `data` and `index` are those: the model,
`get_parameters`, `__getitem__`, the collate function and WindowBatcher use it as they would
the library's own, and its batches are the library's bit for bit (tests/test_columnar.py).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import warnings
from collections.abc import Callable
from copy import deepcopy
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_forecasting import TimeSeriesDataSet
from pytorch_forecasting.data.encoders import (
    EncoderNormalizer,
    GroupNormalizer,
    MultiNormalizer,
    NaNLabelEncoder,
    TorchNormalizer,
)
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

log = logging.getLogger(__name__)

# Rows per chunk the library turns into tensors at a time (whole series, so a little more).
CHUNK_ROWS = 200_000
# (name, shape, dtype) → a writable array of that shape: where the tensors are written.
Allocate = Callable[[str, tuple[int, ...], np.dtype], np.ndarray]


def in_memory(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An `Allocate` that keeps the tensors in this process's memory."""
    return np.empty(shape, dtype=dtype)


class ColumnarDataSet(TimeSeriesDataSet):
    """The library's dataset over tensors of which the integer ones (categorical codes, group
    ids, time) are stored in the narrowest type that holds them (`storage_types`), not the
    library's int64: a panel's rows are most of the job's memory. `__getitem__` is the
    library's, its codes and ids widened back, so that its windows and batches are the
    library's bit for bit (WindowBatcher widens them per batch likewise)."""

    def __getitem__(self, idx: int) -> tuple[dict[str, torch.Tensor], Any]:
        x, y = super().__getitem__(idx)
        # _collate_fn stacks these as they come; the time index it converts itself
        return x | {"x_cat": x["x_cat"].long(), "groups": x["groups"].long()}, y


def narrowest(low: int, high: int, types: tuple[type, ...]) -> np.dtype:
    """The first of `types` that holds every integer from `low` to `high`."""
    return next(np.dtype(t) for t in types if np.iinfo(t).min <= low and high <= np.iinfo(t).max)


_CODES = (np.int8, np.int16, np.int32, np.int64)
# The time index at least int32: the library's __getitem__ repeats rows by time differences
# (windows with missing steps), which torch does not do in narrower types.
_TIMES = (np.int32, np.int64)


def storage_types(dataset: TimeSeriesDataSet, data: pd.DataFrame) -> dict[str, np.dtype]:
    """The types `build_columnar` stores the integer tensors of `dataset` over `data` in:
    codes of NaNLabelEncoders (0 up to their largest class), the time index (its range)."""
    time = data[dataset.time_idx]
    types = {"time": narrowest(int(time.min()), int(time.max()), _TIMES)}
    group_encoders = [dataset.get_transformer(n, group_id=True) for n in dataset.group_ids]
    categorical_encoders = [dataset.get_transformer(n) for n in dataset.flat_categoricals]
    for name, encoders in (("groups", group_encoders), ("categoricals", categorical_encoders)):
        if encoders and all(isinstance(e, NaNLabelEncoder) for e in encoders):
            largest = max(max(e.classes_.values(), default=0) for e in encoders)
            types[name] = narrowest(0, largest, _CODES)
    return types


def unsupported_reason(parameters: dict[str, Any]) -> str | None:
    """None when `fit_parameters` and `build_columnar` make the library's dataset for these
    keyword arguments (nothing fitted)."""
    if not callable(getattr(TimeSeriesDataSet, "_data_to_tensors", None)):
        return "pytorch-forecasting's TimeSeriesDataSet has no _data_to_tensors"
    normalizer = parameters["target_normalizer"]
    if isinstance(normalizer, MultiNormalizer) or not isinstance(normalizer, TorchNormalizer):
        return f"target normalizer {type(normalizer).__name__}"
    if parameters.get("constant_fill_strategy"):
        return "constant_fill_strategy is set"
    if parameters.get("lags"):
        return "lags are set"
    if not isinstance(parameters["target"], str):
        return "several targets"
    if parameters.get("scalers"):
        return "scalers are given"
    return None


def series_bounds(frame: pd.DataFrame, group_ids: list[str]) -> np.ndarray:
    """Row offsets where each series of a frame sorted by series starts, and its length."""
    change = np.zeros(len(frame), dtype=bool)
    change[:1] = True  # (an empty frame has no series)
    for name in group_ids:
        codes = pd.factorize(frame[name], use_na_sentinel=False)[0]
        change[1:] |= codes[1:] != codes[:-1]
    return np.append(np.flatnonzero(change), len(frame))


def _chunks(bounds: np.ndarray, rows: int) -> list[tuple[int, int]]:
    """(first row, end row) of consecutive whole series, about `rows` rows each."""
    edges = [0]
    for end in bounds[1:]:
        if end - edges[-1] >= rows:
            edges.append(int(end))
    if edges[-1] != bounds[-1]:
        edges.append(int(bounds[-1]))
    return list(itertools.pairwise(edges))


def distinct(values: pd.Series | np.ndarray) -> pd.Series | np.ndarray:
    """`values` once each (hashed, not sorted), of the same kind: a NaNLabelEncoder fitted on
    them is the one fitted on `values` (it keeps `np.unique` of what it is given), without
    sorting every row's Python string."""
    return values.drop_duplicates() if isinstance(values, pd.Series) else pd.unique(values)


def encode(encoder: NaNLabelEncoder, values: pd.Series) -> np.ndarray:
    """`encoder.transform(values)`: the encoder asked once per distinct value (the same
    codes, the same unknown-class warning, the same error), spread back to every row."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    return np.asarray(encoder.transform(uniques), dtype=np.int64)[codes]


def group_norm(normalizer: GroupNormalizer, frame: pd.DataFrame) -> np.ndarray:
    """`normalizer.get_norm(frame)` (each row's center and scale): looked up by position in
    `norm_` rather than by the library's join on a MultiIndex of every row."""
    if normalizer.scale_by_group or not normalizer._groups:
        return normalizer.get_norm(frame)
    groups = normalizer._groups
    keys = (
        pd.MultiIndex.from_arrays([frame[g] for g in groups])
        if isinstance(normalizer.norm_.index, pd.MultiIndex)
        else pd.Index(frame[groups[0]])
    )
    position = normalizer.norm_.index.get_indexer(keys)
    table = normalizer.norm_.to_numpy()[position]
    table[position < 0] = np.nan
    fill = np.array([normalizer.missing_[c] for c in normalizer.norm_.columns])
    return np.where(np.isnan(table), fill, table)


def fit_parameters(
    data: pd.DataFrame, skeleton: TimeSeriesDataSet, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The parameters of `TimeSeriesDataSet(data, **kwargs)`, fitted on all of `data` (sorted
    by series and time, as the library sorts it) as its `_preprocess_data` fits them.
    `skeleton`: the same dataset built on a few series, for the variables the library derives
    (reals, categoricals, internal group id names)."""
    encoders: dict[str, Any] = dict(kwargs["categorical_encoders"])
    group_columns: dict[str, np.ndarray] = {}
    for name, group_name in skeleton._group_ids_mapping.items():
        encoder = deepcopy(encoders.get(group_name, NaNLabelEncoder()))
        encoders[group_name] = encoder.fit(
            distinct(data[name].to_numpy().reshape(-1)), overwrite=False
        )
    normalizer = deepcopy(kwargs["target_normalizer"])
    group_normalized = isinstance(normalizer, GroupNormalizer)
    to_encode = list(skeleton.group_ids) if group_normalized else []
    for name in dict.fromkeys(to_encode + skeleton.categoricals):
        if name in skeleton.variable_groups:
            values = distinct(data[skeleton.variable_groups[name]].to_numpy().reshape(-1))
        else:
            values = distinct(data[name])
        if name not in encoders:
            encoders[name] = NaNLabelEncoder().fit(values)
        elif encoders[name] is not None and name not in skeleton.target_names:
            encoders[name] = _fitted(encoders[name], values)
    for name in to_encode:
        group_columns[name] = encode(encoders[name], data[name])
    target = data[skeleton.target]
    groups = pd.DataFrame(group_columns, index=data.index)
    if isinstance(normalizer, EncoderNormalizer):
        normalizer.fit(target)
        scales = group_norm(_approximation(normalizer, skeleton.group_ids, target, data), data)
    elif group_normalized:
        normalizer.fit(target, groups)
        scales = group_norm(normalizer, groups)
    else:
        normalizer.fit(target)
        _, scales = normalizer.transform(target, return_norm=True)
    derived: dict[str, Any] = {"relative_time_idx": 0.0, "encoder_length": 0}
    if skeleton.add_target_scales:
        for scale_idx, suffix in enumerate(("center", "scale")):
            derived[f"{skeleton.target}_{suffix}"] = scales[:, scale_idx].squeeze()
    scalers = {}
    for name in skeleton.reals:
        if name not in skeleton.target_names:
            column = (
                pd.DataFrame({name: np.broadcast_to(derived[name], len(data))})
                if name in derived
                else data[[name]]
            )
            scalers[name] = StandardScaler().fit(column)
    parameters = skeleton.get_parameters()
    return parameters | {
        "categorical_encoders": encoders,
        "scalers": scalers,
        "target_normalizer": normalizer,
        "min_prediction_idx": data[skeleton.time_idx].min(),
    }


def _approximation(
    normalizer: EncoderNormalizer, group_ids: list[str], target: pd.Series, data: pd.DataFrame
) -> GroupNormalizer:
    """The library's stand-in for an EncoderNormalizer over whole rows: one group normalizer
    over the whole time of each series, fitted on `data`."""
    common = inspect.signature(GroupNormalizer.__init__).parameters.keys() & set(
        inspect.signature(EncoderNormalizer.__init__).parameters
    )
    approximation = GroupNormalizer(
        groups=group_ids,
        **{n: getattr(normalizer, n) for n in common if n not in ("data", "self")},
    )
    return approximation.fit(target, data)


def _fitted(transformer: Any, values: Any) -> Any:
    """`transformer` as it is when fitted, else fitted on `values` (as the library does)."""
    try:
        check_is_fitted(transformer)
    except NotFittedError:
        return transformer.fit(values)
    return transformer


def end_indices(
    diffs: np.ndarray, max_lengths: np.ndarray, min_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """The library's `_find_end_indices` (a Python loop over every row without numba), over
    arrays: each row's window end, and the (start, end) of the shortened windows it adds.

    With `position` the time counted along all rows, the loop closes the window starting at
    row s at the first row whose window from s reaches `max_lengths[s]` steps, but never before
    it has closed the window of s - 1 (a running maximum); it ends one row earlier where that
    row overshoots. A row at which no window closes adds (current start, row) if long enough."""
    rows = np.arange(len(diffs))
    position = np.concatenate([[0], np.cumsum(diffs[:-1])])
    reaches = np.searchsorted(position, position + max_lengths - 1, side="left")
    closes = np.maximum.accumulate(np.minimum(reaches, len(diffs) - 1))
    end = np.where(position[closes] - position + 1 == max_lengths, closes, closes - 1)
    current = np.searchsorted(closes, rows, side="left")
    length = position - position[current] + 1
    missing = np.flatnonzero((closes[current] != rows) & (length >= min_length))
    return end, np.stack([current[missing], missing], axis=1)


def _windows(
    time: np.ndarray,
    bounds: np.ndarray,
    sequence: np.ndarray,
    dataset: TimeSeriesDataSet,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The windows of whole series (rows of `time`, series between `bounds`, `sequence`: each
    series' id), as the library makes them: one starting at every row, and the shortened ones
    it appends (both with its filters applied; positions relative to these rows)."""
    time = time.astype(np.int64)  # stored narrow (storage_types): the sums below are not
    starts, ends = bounds[:-1], bounds[1:]
    series = np.repeat(np.arange(len(starts)), np.diff(bounds))
    time_last = time[ends - 1][series]
    to_next = np.ones(len(time), dtype=np.int64)
    to_next[:-1] = time[1:] - time[:-1]
    to_next[ends - 1] = 1
    min_length = dataset.min_prediction_length + dataset.min_encoder_length
    max_length = dataset.max_prediction_length + dataset.max_encoder_length
    max_time = np.minimum(time + max_length - 1, time_last)
    assert dataset.allow_missing_timesteps or (to_next == 1).all(), (
        "Time difference between steps has been identified as larger than 1 - "
        "set allow_missing_timesteps=True"
    )
    index_end, missing = end_indices(to_next, max_time - time + 1, min_length)
    parts = []
    for start, end in ((np.arange(len(time)), index_end), (missing[:, 0], missing[:, 1])):
        window_time = time[start]
        length = time[end] - window_time + 1
        keep = (length >= min_length) & (
            length + window_time >= dataset.min_prediction_idx + dataset.min_prediction_length
        )
        if dataset.predict_mode:  # the longest window reaching each series' end
            keep &= time_last[start] - window_time + 1 <= max_length
        columns = {
            "index_start": start,
            "index_end": end,
            "sequence_length": length,
            "time": window_time,
            "sequence_id": sequence[series[start]],
        }
        parts.append({name: values[keep].astype(np.int32) for name, values in columns.items()})
    return parts[0], parts[1]


def window_index(
    time: np.ndarray, groups: np.ndarray, bounds: np.ndarray, dataset: TimeSeriesDataSet
) -> pd.DataFrame:
    """`dataset._construct_index` for rows whose time index is `time` and whose encoded group
    ids are `groups`, series by series between `bounds`: the same windows in the same order,
    computed over arrays, a chunk of series at a time (a window never leaves its series; the
    shortened windows go after all the others, as the library appends them)."""
    starts = bounds[:-1]
    sequence = np.unique(groups[starts], axis=0, return_inverse=True)[1].reshape(-1)
    # Predict mode picks one window per series id over all of them: in one piece (its
    # datasets hold a few steps per series).
    chunks = [(0, len(time))] if dataset.predict_mode else _chunks(bounds, CHUNK_ROWS)
    regular, shortened = [], []
    for first, end in chunks:
        inside = bounds[(bounds >= first) & (bounds <= end)]
        part_regular, part_shortened = _windows(
            time[first:end], inside - first, sequence[np.searchsorted(bounds, inside[:-1])], dataset
        )
        for part in (part_regular, part_shortened):
            part["index_start"] += first
            part["index_end"] += first
        regular.append(part_regular)
        shortened.append(part_shortened)
    index = {name: np.concatenate([p[name] for p in regular + shortened]) for name in regular[0]}
    if dataset.predict_mode:
        window_sequence, length = index["sequence_id"], index["sequence_length"]
        order = np.lexsort((np.arange(len(length)), -length.astype(np.int64), window_sequence))
        first_of = np.ones(len(order), dtype=bool)
        first_of[1:] = window_sequence[order][1:] != window_sequence[order][:-1]
        index = {name: values[order[first_of]] for name, values in index.items()}
    dropped = len(starts) - len(np.unique(index["sequence_id"]))
    if dropped:
        warnings.warn(
            "Min encoder length and/or min_prediction_idx and/or min prediction length and/or "
            f"lags are too large for {dropped} series/groups which therefore are not present in "
            "the dataset index. This means no predictions can be made for those series.",
            UserWarning,
            stacklevel=2,
        )
    assert len(index["index_start"]) > 0, (
        "filters should not remove entries all entries - check encoder/decoder lengths and lags"
    )
    frame = pd.DataFrame(index, copy=False)  # the columns above, not a copy of them
    if dataset.predict_mode:
        return frame[[*index, "sequence_id"]]  # the id twice, as the library has it
    return frame


def _preprocess(dataset: TimeSeriesDataSet, data: pd.DataFrame) -> pd.DataFrame:
    """What `dataset._preprocess_data` makes of `data` (whole series, sorted) with the
    dataset's fitted encoders, scalers and target normalizer: the columns its
    `_data_to_tensors` reads. Step by step as the library does it; only the lookups differ
    (`encode`, `group_norm`)."""
    columns: dict[str, Any] = {}
    for name, group_name in dataset._group_ids_mapping.items():
        columns[group_name] = encode(dataset.get_transformer(name, group_id=True), data[name])
    frame = data.assign(**columns)
    if dataset.add_relative_time_idx:
        frame["relative_time_idx"] = 0.0
    if dataset.add_encoder_length:
        frame["encoder_length"] = 0
    normalizer = dataset.target_normalizer
    to_encode = list(dataset.group_ids) if isinstance(normalizer, GroupNormalizer) else []
    for name in dict.fromkeys(to_encode + dataset.flat_categoricals):
        encoder = dataset.get_transformer(name)
        if name not in dataset.target_names and encoder is not None:
            frame[name] = encode(encoder, frame[name])
    frame["__time_idx__"] = frame[dataset.time_idx]
    target = dataset.target
    frame[f"__target__{target}"] = frame[target]
    if dataset.weight is not None:
        frame["__weight__"] = frame[dataset.weight]
    if isinstance(normalizer, EncoderNormalizer | GroupNormalizer):
        if isinstance(normalizer, EncoderNormalizer):
            normalizer = _approximation(normalizer, dataset.group_ids, frame[target], frame)
        scales = group_norm(normalizer, frame)
        frame[target] = normalizer.transform(frame[target], target_scale=scales)
    else:
        frame[target], scales = normalizer.transform(frame[target], return_norm=True)
    if dataset.add_target_scales:
        for scale_idx, suffix in enumerate(("center", "scale")):
            frame[f"{target}_{suffix}"] = scales[:, scale_idx].squeeze()
    for name in dataset.reals:
        transformer = dataset.get_transformer(name)
        if name != target and transformer is not None:
            frame[name] = dataset.transform_values(name, frame[name], data=frame)
    return frame


def _last_windows(
    data: pd.DataFrame, parameters: dict[str, Any], bounds: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of `data` a predict-mode window can hold, and their series bounds: each
    series' last max_encoder_length + max_prediction_length steps (its one window ends at the
    series' end and spans no more). The windows and their batches are the library's; the
    rows before, which no window reads, are left out (about two thirds of a long history).
    Not for an EncoderNormalizer: the library fits its scales on every row of the dataset."""
    time = data[parameters["time_idx"]].to_numpy()
    span = parameters["max_encoder_length"] + parameters["max_prediction_length"]
    time_last = np.repeat(time[bounds[1:] - 1], np.diff(bounds))
    keep = time > time_last - span
    kept = np.concatenate([[0], np.cumsum(keep)])
    return data[keep], kept[bounds]


def build_columnar(
    data: pd.DataFrame,
    parameters: dict[str, Any],
    predict: bool,
    allocate: Allocate = in_memory,
) -> TimeSeriesDataSet:
    """`TimeSeriesDataSet.from_parameters(parameters, data, predict=predict,
    stop_randomization=predict)`, its tensors written chunk by chunk into `allocate`'s arrays
    (`predict`: of the rows its windows hold, `_last_windows`). `data`: sorted by series and
    time; `parameters`: fitted (`fit_parameters`)."""
    if parameters["min_prediction_idx"] is not None:  # as the library filters (no lags)
        first_time = parameters["min_prediction_idx"] - parameters["max_encoder_length"]
        kept = data[parameters["time_idx"]].to_numpy() >= first_time
        data = data if kept.all() else data[kept]  # a copy only where rows go
    bounds = series_bounds(data, parameters["group_ids"])
    if predict and not isinstance(parameters["target_normalizer"], EncoderNormalizer):
        data, bounds = _last_windows(data, parameters, bounds)
    schema = ColumnarDataSet.from_parameters(
        parameters, data.iloc[: bounds[1]], predict=predict, stop_randomization=predict
    )
    # The library refits the group ids' encoders on the dataset's own rows (new series of a
    # validation frame get codes): on all of them, not on the first series.
    for name, group_name in schema._group_ids_mapping.items():
        encoder = deepcopy(parameters["categorical_encoders"].get(group_name, NaNLabelEncoder()))
        schema._categorical_encoders[group_name] = encoder.fit(
            distinct(data[name].to_numpy().reshape(-1)), overwrite=False
        )
    types = storage_types(schema, data)
    arrays: dict[str, np.ndarray] = {}
    for first, end in _chunks(bounds, CHUNK_ROWS):
        part = schema._data_to_tensors(_preprocess(schema, data.iloc[first:end]))
        if not all(np.isfinite(t.numpy()).all() for t in flat_tensors(part).values()):
            schema._check_tensors(part)  # the library's error, naming the variable
        for name, tensor in flat_tensors(part).items():
            values = tensor.numpy()
            if name not in arrays:
                shape = (len(data), *tensor.shape[1:])
                dtype = types.get(name, values.dtype) if values.dtype == np.int64 else values.dtype
                arrays[name] = allocate(name, shape, dtype)
            if values.size and values.dtype != arrays[name].dtype:  # the bounds held?
                info = np.iinfo(arrays[name].dtype)
                assert info.min <= values.min() and values.max() <= info.max, name
            arrays[name][first:end] = values
    schema.data = tensors(arrays)
    schema.index = window_index(arrays["time"], arrays["groups"], bounds, schema)
    return schema


def flat_tensors(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A dataset's tensors by file name (`target_<i>` for each target, no absent weight)."""
    flat = {k: v for k, v in data.items() if k != "target" and v is not None}
    return flat | {f"target_{i}": t for i, t in enumerate(data["target"])}


def tensors(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """`dataset.data` over `arrays` (no copy)."""
    data: dict[str, Any] = {k: torch.from_numpy(v) for k, v in arrays.items()}
    targets = sorted((k for k in data if k.startswith("target_")), key=lambda k: int(k[7:]))
    return {
        "reals": data["reals"],
        "categoricals": data["categoricals"],
        "groups": data["groups"],
        "target": [data.pop(k) for k in targets],
        "weight": data.get("weight"),
        "time": data["time"],
    }
