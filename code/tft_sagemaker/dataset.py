"""Validated frames → pytorch-forecasting TimeSeriesDataSets (training and validation windows).

Every rank builds the same datasets from the same full frames: the categorical encoders and the
target normalizer are fitted on the whole training frame, so embeddings match across ranks.

Column names reach the library under internal names where the user's would clash with it: the
TFT keys `nn.ModuleDict`s by variable name (a column `pop` or `keys` is an attribute of the
dict, `a.b` is not a module name) and pytorch-forecasting derives columns of its own
(`relative_time_idx`, `encoder_length`, `<target>_center`, `__group_id__<id>`, ...).
`internal_names` is a pure function of the configuration, so the job and `predict` derive the
same mapping from the saved configuration; `user_names` maps back, for anything shown.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from collections.abc import Callable
from copy import deepcopy
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_forecasting import TimeSeriesDataSet
from pytorch_forecasting.data import EncoderNormalizer, GroupNormalizer, NaNLabelEncoder
from pytorch_forecasting.data.encoders import TorchNormalizer

from .columnar import (
    CHUNK_ROWS,
    Allocate,
    build_columnar,
    fit_parameters,
    flat_tensors,
    in_memory,
    series_bounds,
    tensors,
    unsupported_reason,
)
from .config import DataConfig, job_season, unique
from .errors import DataError
from .shares import Agreement
from .units import in_model_unit
from .validation import is_sorted

log = logging.getLogger(__name__)

_EXAMPLES = 3
# Columns pytorch-forecasting adds to the data itself (the target's scales are added below).
_LIBRARY_COLUMNS = {"relative_time_idx", "encoder_length", "__time_idx__", "__weight__"}
_LIBRARY_PREFIXES = ("__group_id__", "__target__")
_MODULE_DICT = torch.nn.ModuleDict()  # its attributes (pop, keys, type, ...) cannot be keys
# NaNLabelEncoder.transform's warning for labels it does not know (which it encodes as missing).
UNKNOWN_CLASSES = r"Found \d+ unknown classes which were set to NaN"


# Calendar variables (`calendar_features`), from the parsed date column.
CALENDAR: dict[str, Callable[[pd.Series], pd.Series]] = {
    "month": lambda dates: dates.dt.month,
    "quarter": lambda dates: dates.dt.quarter,
    "day_of_week": lambda dates: dates.dt.dayofweek,
    "hour": lambda dates: dates.dt.hour,
}


def _user_variables(config: DataConfig) -> list[str]:
    """The data's names: columns, and the names of variable groups."""
    names = [config.target, config.time_idx, *config.group_ids, config.weight]
    names += [*config.categoricals, *config.variable_groups, *config.reals]
    return [n for n in dict.fromkeys(names) if n]


def calendar_columns(config: DataConfig) -> dict[str, str]:
    """Calendar variable → the column the dataset gets for it: `calendar_<variable>`, with
    underscores added while the data has a variable of that name. None before the recipe has
    resolved `calendar_features` ("auto"), nor with "none"."""
    taken = set(_user_variables(config))
    columns = {}
    for variable in config.calendar_features:
        if variable in CALENDAR:
            column = f"calendar_{variable}"
            while column in taken:
                column += "_"
            columns[variable] = column
    return columns


def seasonal_column(config: DataConfig) -> str | None:
    """The column of the target one season back (`seasonal_input`): `<target>_last_season`,
    with underscores added while the data has a variable of that name; None without it (or
    before the recipe has resolved "auto")."""
    if config.seasonal_input != "true":
        return None
    taken = set(_user_variables(config)) | set(calendar_columns(config).values())
    column = f"{config.target}_last_season"
    while column in taken:
        column += "_"
    return column


def last_season(frame: pd.DataFrame, config: DataConfig) -> np.ndarray:
    """Per row, its series' target `job_season` steps earlier, or the latest known before
    that (a gap), or the series' first known value (its first season): only values at least a
    season old, so over a horizon of at most a season only history (rows whose target is
    missing, the future a forecast is asked for, are never read)."""
    season = job_season(config)
    assert season is not None, "seasonal_input=true without a season (config checks it)"
    series = frame.groupby(config.group_ids, observed=True, sort=False).ngroup().to_numpy()
    time = frame[config.time_idx].to_numpy().astype(np.int64)
    values = frame[config.target].to_numpy(dtype=np.float64)
    order = np.lexsort((time, series))
    series, time, values = series[order], time[order], values[order]
    known = ~np.isnan(values)
    span = int(time.max() - time.min()) + season + 1  # one key range per series, in order
    key = series * span + (time - time.min() + season)
    known_key, known_values, known_series = key[known], values[known], series[known]
    position = np.searchsorted(known_key, key - season, side="right") - 1
    found = position >= 0
    found[found] = known_series[position[found]] == series[found]
    first = np.full(series.max() + 1, np.nan)
    with_values, first_row = np.unique(known_series, return_index=True)
    first[with_values] = known_values[first_row]  # each series' first known value
    lagged = np.where(found, known_values[np.maximum(position, 0)], first[series])
    out = np.empty(len(frame))
    out[order] = lagged
    return out


def _variables(config: DataConfig) -> list[str]:
    """Every name the dataset sees: the data's, the calendar columns and the seasonal one."""
    seasonal = seasonal_column(config)
    return (
        _user_variables(config)
        + list(calendar_columns(config).values())
        + ([seasonal] if seasonal else [])
    )


def _clashes(name: str, target: str) -> bool:
    """Whether the library cannot take `name` as it is (`target`: the internal target)."""
    return (
        not name
        or "." in name
        or hasattr(_MODULE_DICT, name)
        or name in _LIBRARY_COLUMNS
        or name.startswith(_LIBRARY_PREFIXES)
        or name in (f"{target}_center", f"{target}_scale")
        or re.fullmatch(r".+_lagged_by_\d+", name) is not None
    )


def internal_names(config: DataConfig) -> dict[str, str]:
    """User name → the name pytorch-forecasting gets, for every variable (most unchanged)."""
    names = _variables(config)
    taken = set(names)
    mapping: dict[str, str] = {}
    target = ""
    for name in names:  # the target first: the names derived from it depend on it
        internal = name
        if _clashes(name, target):
            base = "v_" + re.sub(r"\W", "_", name)
            internal, n = base, 1
            while internal in taken or _clashes(internal, target):
                n += 1
                internal = f"{base}_{n}"
            taken.add(internal)
        mapping[name] = internal
        target = target or internal
    return mapping


def user_names(config: DataConfig) -> dict[str, str]:
    """Internal name → user name, for the variables whose name changed, and for the target's
    scales the library adds (`<target>_center`, `<target>_scale`): to label what the model
    reports (variable importances, encoder and decoder variables)."""
    names = internal_names(config)
    back = {internal: name for name, internal in names.items() if internal != name}
    target = names[config.target]
    if target != config.target:
        back |= {f"{target}_{s}": f"{config.target}_{s}" for s in ("center", "scale")}
    return back


def internal_config(config: DataConfig) -> DataConfig:
    """`config` with every variable under its internal name."""
    names = internal_names(config)

    def rename(values: list[str]) -> list[str]:
        return [names[v] for v in values]

    return dataclasses.replace(
        config,
        target=names[config.target],
        time_idx=names[config.time_idx],
        group_ids=rename(config.group_ids),
        weight=names[config.weight] if config.weight else None,
        static_categoricals=rename(config.static_categoricals),
        static_reals=rename(config.static_reals),
        time_varying_known_categoricals=rename(
            config.time_varying_known_categoricals + list(calendar_columns(config).values())
        ),
        time_varying_known_reals=rename(
            config.time_varying_known_reals + unique([seasonal_column(config)])
        ),
        time_varying_unknown_categoricals=rename(config.time_varying_unknown_categoricals),
        time_varying_unknown_reals=rename(config.time_varying_unknown_reals),
        variable_groups={names[g]: rename(m) for g, m in config.variable_groups.items()},
    )


def to_internal(frame: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    """The columns the dataset uses, under their internal names, with the calendar columns and
    the seasonal one added (the others are left out: the library refuses some names even in
    columns it does not use), and the target in the model's unit (`units.py`)."""
    frame = in_model_unit(frame, config.target, config.resolved_target_unit)
    seasonal = seasonal_column(config)
    if seasonal:
        frame = frame.assign(**{seasonal: last_season(frame, config)})
    calendar = calendar_columns(config)
    if calendar:  # text labels: categories the encoders know by name
        dates = frame[config.date_column]
        frame = frame.assign(
            **{c: CALENDAR[v](dates).astype(str).astype("category") for v, c in calendar.items()}
        )
    names = internal_names(config)
    # The frame's own columns under other names, not a copy of them (nothing writes into them:
    # the library copies what it changes, and so does columnar.py).
    return pd.DataFrame({names[c]: frame[c] for c in names if c in frame.columns}, copy=False)


def _target_normalizer(config: DataConfig) -> TorchNormalizer:
    transformation = config.target_transformation
    match config.target_normalizer:
        case "group":
            return GroupNormalizer(groups=config.group_ids, transformation=transformation)
        case "encoder":
            return EncoderNormalizer(transformation=transformation)
        case "standard":
            return TorchNormalizer(method="standard", transformation=transformation)
        case "none":
            return TorchNormalizer(method="identity", transformation=transformation)
        case _:  # "auto"
            raise ValueError(
                f"target_normalizer={config.target_normalizer!r}: recipe.resolve_data chooses "
                "it before the dataset is built"
            )


def _categorical_encoders(
    config: DataConfig, categories: dict[str, set[str]] | None = None
) -> dict[str, NaNLabelEncoder]:
    """Encoders that map categories unseen in training to a learned 'unknown' embedding, so
    that validation and prediction data may hold new stores, products or holidays.
    `categories` (internal name → labels, `known_categories`): the categoricals' encoders come
    fitted on them (the library fits the others, and these where not given, on the rows it is
    built on)."""
    categoricals = (
        config.static_categoricals
        + config.time_varying_known_categoricals
        + config.time_varying_unknown_categoricals
    )
    names = categoricals + config.group_ids + [f"__group_id__{g}" for g in config.group_ids]
    encoders = {name: NaNLabelEncoder(add_nan=True) for name in dict.fromkeys(names)}
    for name in dict.fromkeys(categoricals) if categories is not None else []:
        members = config.variable_groups.get(name, [name])
        labels = set().union(*(categories[m] for m in members))
        encoders[name].fit(np.array(sorted(labels), dtype=object))
    return encoders


def known_categories(frames: list[pd.DataFrame], config: DataConfig) -> dict[str, set[str]]:
    """Internal categorical column → every label it holds in `frames` (the job's: the training
    rows and the validated ones). Encoders fitted on them know a category that only the
    held-out horizon holds (a holiday in the last weeks, a new calendar month): fitted on the
    training rows alone, the job's validation and `predict` on the training data would read
    it as unknown (pytorch-forecasting's "Found 1 unknown classes which were set to NaN")."""
    names = internal_names(config)
    calendar = calendar_columns(config)
    labels: dict[str, set[str]] = {}
    for frame in frames:
        columns = {names[c]: frame[c] for c in config.categoricals}
        if calendar:  # numbers, labelled as to_internal labels them once they are distinct
            dates = frame[config.date_column]
            columns |= {names[c]: CALENDAR[v](dates) for v, c in calendar.items()}
        for name, values in columns.items():
            labels.setdefault(name, set()).update(str(v) for v in pd.unique(values.dropna()))
    return labels


def trained_labels(parameters: dict[str, Any], config: DataConfig) -> dict[str, set[str]]:
    """The labels a trained model's encoders know (`parameters`: its dataset's), by the data's
    column: series ids (those it was fitted on), categoricals and calendar columns; without
    the encoders' placeholder for missing values."""
    names = internal_names(config)
    internal = internal_config(config)
    encoders = parameters["categorical_encoders"]
    group_of = {m: g for g, members in internal.variable_groups.items() for m in members}
    columns = {g: f"__group_id__{names[g]}" for g in config.group_ids}
    columns |= {c: group_of.get(names[c], names[c]) for c in config.categoricals}
    columns |= {c: names[c] for c in calendar_columns(config).values()}
    labels = {}
    for column, name in columns.items():
        encoder = encoders[name]
        placeholder = 0 if encoder.add_nan else None
        labels[column] = {str(k) for k, code in encoder.classes_.items() if code != placeholder}
    return labels


def dataset_parameters(
    config: DataConfig, categories: dict[str, set[str]] | None = None
) -> dict[str, Any]:
    """The TimeSeriesDataSet keyword arguments of the training dataset (nothing fitted but the
    categoricals' encoders, on `categories` where given: `known_categories`)."""
    internal = internal_config(config)
    return dict(
        time_idx=internal.time_idx,
        target=internal.target,
        group_ids=internal.group_ids,
        weight=internal.weight,
        min_encoder_length=internal.resolved_min_encoder_length,
        max_encoder_length=internal.max_encoder_length,
        min_prediction_length=internal.min_prediction_length,
        max_prediction_length=internal.max_prediction_length,
        static_categoricals=internal.static_categoricals,
        static_reals=internal.static_reals,
        time_varying_known_categoricals=internal.time_varying_known_categoricals,
        time_varying_known_reals=internal.time_varying_known_reals,
        time_varying_unknown_categoricals=internal.time_varying_unknown_categoricals,
        time_varying_unknown_reals=internal.time_varying_unknown_reals,
        variable_groups=internal.variable_groups,
        target_normalizer=_target_normalizer(internal),
        categorical_encoders=_categorical_encoders(internal, categories),
        add_relative_time_idx=internal.add_relative_time_idx,
        add_target_scales=internal.add_target_scales,
        add_encoder_length=internal.add_encoder_length,
        allow_missing_timesteps=internal.allow_missing_timesteps,
    )


def build_training_dataset(frame: pd.DataFrame, config: DataConfig) -> TimeSeriesDataSet:
    """The library's own dataset over the whole frame (the reference `build_columnar_training`
    reproduces)."""
    return TimeSeriesDataSet(to_internal(frame, config), **dataset_parameters(config))


def _sorted_internal(frame: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    """`to_internal(frame)`, sorted by series and time as the library sorts it."""
    names = internal_names(config)
    keys = [names[g] for g in config.group_ids] + [names[config.time_idx]]
    internal = to_internal(frame, config)
    return internal if is_sorted(internal, keys) else internal.sort_values(keys)


def _library_built(
    dataset: TimeSeriesDataSet, allocate: Allocate, reason: str
) -> TimeSeriesDataSet:
    """`dataset` (built by the library) with its tensors moved into `allocate`'s arrays."""
    log.warning("datasets: built by pytorch-forecasting on the whole frame (%s)", reason)
    arrays = {}
    for name, tensor in flat_tensors(dataset.data).items():
        arrays[name] = allocate(name, tuple(tensor.shape), tensor.numpy().dtype)
        arrays[name][...] = tensor.numpy()
    dataset.data = tensors(arrays)
    return dataset


def build_columnar_training(
    frame: pd.DataFrame,
    config: DataConfig,
    allocate: Allocate = in_memory,
    categories: dict[str, set[str]] | None = None,
    agreement: Agreement | None = None,
) -> TimeSeriesDataSet:
    """`build_training_dataset`'s dataset, fitted on whole columns and built chunk by chunk
    into `allocate`'s arrays (columnar.py); the categoricals' encoders fitted on `categories`
    where given (`known_categories`); `agreement`: what the job's hosts agree on (shares.py),
    so that `frame`, one host's share, is fitted as the whole panel."""
    kwargs = dataset_parameters(config, categories)
    reason = unsupported_reason(kwargs)
    if reason is not None:
        if agreement is not None:
            raise DataError(
                f"This job's hosts cannot share the panel: its dataset ({reason}) is built by "
                "pytorch-forecasting on the whole frame. Train on one host, or choose another "
                "target_normalizer."
            )
        library = TimeSeriesDataSet(to_internal(frame, config), **deepcopy(kwargs))
        return _library_built(library, allocate, reason)
    data = _sorted_internal(frame, config)
    if agreement is not None:
        kwargs = agreement.encoders(data, kwargs)
    first = series_bounds(data.iloc[:CHUNK_ROWS], kwargs["group_ids"])
    skeleton = TimeSeriesDataSet(data.iloc[: first[1]], **deepcopy(kwargs))
    parameters = fit_parameters(data, skeleton, kwargs)
    if agreement is not None:
        parameters = agreement.parameters(data, parameters)
    return build_columnar(data, parameters, False, allocate)


def build_columnar_validation(
    training: TimeSeriesDataSet,
    frame: pd.DataFrame,
    config: DataConfig,
    allocate: Allocate = in_memory,
) -> TimeSeriesDataSet:
    """`build_validation_dataset`'s dataset, built chunk by chunk into `allocate`'s arrays."""
    parameters = training.get_parameters()
    refuse_unscaled_series(parameters, frame, config, "Channel 'validation'", "'train'")
    reason = unsupported_reason(dataset_parameters(config))
    if reason is not None:
        validation = build_validation_dataset(training, frame, config)
        return _library_built(validation, allocate, reason)
    return build_columnar(_sorted_internal(frame, config), parameters, True, allocate)


def unscaled_series(
    parameters: dict[str, Any], frame: pd.DataFrame, config: DataConfig
) -> pd.DataFrame:
    """The series of `frame` (one row of ids each) that the fitted target normalizer has no
    scale for: series it was not fitted on, when it scales per series (`group`). The library
    would scale them by the median of the training series without a word."""
    normalizer = parameters["target_normalizer"]
    series = frame[config.group_ids].drop_duplicates()
    if not isinstance(normalizer, GroupNormalizer) or not normalizer.groups:
        return series.iloc[:0]
    names = internal_names(config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=UNKNOWN_CLASSES, category=UserWarning)
        codes = [
            parameters["categorical_encoders"][names[g]].transform(series[g])
            for g in config.group_ids
        ]
    known = normalizer.norm_.index
    known = known if isinstance(known, pd.MultiIndex) else pd.MultiIndex.from_arrays([known])
    return series[~pd.MultiIndex.from_arrays(codes).isin(known)]


def refuse_unscaled_series(
    parameters: dict[str, Any], frame: pd.DataFrame, config: DataConfig, where: str, fitted_on: str
) -> None:
    """A DataError naming the series of `frame` without a fitted target scale."""
    new = unscaled_series(parameters, frame, config)
    if new.empty:
        return
    examples = "; ".join(
        ", ".join(f"{g}={v}" for g, v in row.items())
        for row in new.head(_EXAMPLES).to_dict(orient="records")
    )
    raise DataError(
        f"{where}: {len(new)} series are not in {fitted_on} (e.g. {examples}), and "
        "target_normalizer=group scales each series by its own training history: add their "
        "history to the train channel, or set target_normalizer=encoder (scales each window by "
        "its own history)."
    )


def build_validation_dataset(
    training: TimeSeriesDataSet, frame: pd.DataFrame, config: DataConfig
) -> TimeSeriesDataSet:
    """The last `max_prediction_length` steps of each series in `frame`, one window each."""
    refuse_unscaled_series(
        training.get_parameters(), frame, config, "Channel 'validation'", "'train'"
    )
    return TimeSeriesDataSet.from_dataset(
        training, to_internal(frame, config), predict=True, stop_randomization=True
    )


def build_prediction_dataset(
    parameters: dict[str, Any], frame: pd.DataFrame, config: DataConfig
) -> TimeSeriesDataSet:
    """Windows forecasting the last `max_prediction_length` steps of each series in `frame`,
    with the encoders and scales of a trained model (`parameters`). `predict.new_categories`
    has named every category the encoders do not know (refused, or logged for new series and
    calendar values), so their "Found N unknown classes which were set to NaN" says nothing
    more and is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=UNKNOWN_CLASSES, category=UserWarning)
        return TimeSeriesDataSet.from_parameters(
            parameters, to_internal(frame, config), predict=True, stop_randomization=True
        )
