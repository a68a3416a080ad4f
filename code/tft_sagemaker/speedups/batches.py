"""Vectorized batches of a TimeSeriesDataSet's windows.

pytorch-forecasting builds every batch window by window: `TimeSeriesDataSet.__getitem__` slices
and patches each window in Python, and `_collate_fn` pads them one by one. That is most of the
data-loading cost of a training step. `WindowBatcher` precomputes, once, everything that depends
only on the window (its rows, encoder/decoder lengths, target scale) and then assembles a whole
batch with a few gathers, producing exactly (keys, dtypes, shapes and bits) what

    dataset._collate_fn([dataset[i] for i in windows])

produces. Features whose per-window work cannot be precomputed (randomized lengths, encoder
normalizers of covariates, overwritten values, windows that fill in missing timesteps) are
refused:
`unsupported_reason` names them, after `batches_guard` (the versions this was tested with, and
a small library-built dataset whose batches must equal the library's bit for bit).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
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
    TorchNormalizer,
)

from ..columnar import ColumnarDataSet
from .guards import guard

# A single target gives tensors; a list of targets gives one tensor per target.
Tensors = torch.Tensor | list[torch.Tensor]
Batch = tuple[dict[str, Tensors], tuple[Tensors, torch.Tensor | None]]


def unsupported_reason(dataset: TimeSeriesDataSet) -> str | None:
    """None when WindowBatcher reproduces this dataset's batches; else a short reason."""
    return batches_guard() or _unsupported_features(dataset)


def _unsupported_features(dataset: TimeSeriesDataSet) -> str | None:
    """What of this dataset WindowBatcher cannot precompute, or None."""
    cls = type(dataset)
    if (
        cls.__getitem__ not in (TimeSeriesDataSet.__getitem__, ColumnarDataSet.__getitem__)
        or cls._collate_fn is not TimeSeriesDataSet._collate_fn
    ):
        return f"{cls.__name__} overrides __getitem__ or _collate_fn"
    if dataset.randomize_length is not None:
        return "randomize_length is set"
    if dataset._overwrite_values is not None:
        return "overwrite values are set"
    # EncoderNormalizers are fitted on each window's encoder inside __getitem__: a single
    # target's is fitted window by window here too (`_EncoderScaled`).
    if dataset.multi_target:
        for name, normalizer in zip(dataset.target_names, dataset.target_normalizers, strict=True):
            if isinstance(normalizer, EncoderNormalizer):
                return f"EncoderNormalizer on {name}, one of several targets"
    for name in dataset.reals:
        if name in dataset.target_names:
            continue
        if isinstance(dataset.get_transformer(name), EncoderNormalizer):
            return f"EncoderNormalizer on {name}"
    # A window with fewer rows than timesteps is filled in by __getitem__ (repeated rows,
    # constant fill values, a re-interpolated time index). A host panel's windows were looked
    # at once, when it was prepared (`prepared`: only those of datasets found supported), and
    # are not read here again (a pass over every window's row in every process).
    if dataset in _PREPARED:
        return None
    index = dataset.index
    if ((index["index_end"] - index["index_start"] + 1) != index["sequence_length"]).any():
        return "windows with missing timesteps"
    return None


def _stack_scale(values: list[Any]) -> torch.Tensor:
    """One target's scales stacked as `_collate_fn` stacks them: tensors as they are,
    anything else (numpy arrays from GroupNormalizer, NaNLabelEncoder) as float32."""
    if isinstance(values[0], torch.Tensor):
        return torch.stack(values)
    return torch.from_numpy(np.array(values, dtype=np.float32))


def _stack_scales(values: list[Any]) -> Tensors:
    """`_collate_fn`'s target_scale, for a list of per-window `target_scale` values."""
    if isinstance(values[0], list | tuple):
        return [_stack_scale([v[i] for v in values]) for i in range(len(values[0]))]
    return _stack_scale(values)


def series_scales(dataset: TimeSeriesDataSet, series_groups: torch.Tensor) -> Tensors:
    """`_stack_scales` of `target_normalizer.get_parameters(groups, dataset.group_ids)` for
    each series' encoded group ids: a group normalizer's `norm_` looked up by position for all
    series at once (its `.loc` per series is what __getitem__ pays), a normalizer without
    groups asked once; any other, series by series."""
    normalizer = dataset.target_normalizer
    if (
        type(normalizer) is GroupNormalizer
        and not normalizer.scale_by_group
        and normalizer.groups
        and list(normalizer.groups) == list(dataset.group_ids)  # norm_ indexed as the series
        and not dataset.multi_target
        and isinstance(normalizer.norm_.index, pd.MultiIndex) == (series_groups.shape[1] > 1)
    ):
        columns = series_groups.numpy().T
        norm = normalizer.norm_
        keys = (
            pd.MultiIndex.from_arrays(list(columns)) if len(columns) > 1 else pd.Index(columns[0])
        )
        position = norm.index.get_indexer(keys)
        table = norm.to_numpy()[position]
        table[position < 0] = [normalizer.missing_[name] for name in normalizer.names]
        return torch.from_numpy(table.astype(np.float32))
    if type(normalizer) is TorchNormalizer:  # the same scale for every series
        return _stack_scale([normalizer.get_parameters()] * len(series_groups))
    scales = []
    for groups in series_groups:
        scale = normalizer.get_parameters(groups, dataset.group_ids)
        if not isinstance(normalizer, MultiNormalizer):
            scale = [scale]
        scales.append(scale if dataset.multi_target else scale[0])
    return _stack_scales(scales)


class _EncoderScaled:
    """A single target's EncoderNormalizer as __getitem__ applies it, window by window with the
    library's own calls on the CPU (a window's mean and standard deviation are reductions whose
    bits depend on how they are vectorised): fitted on the window's encoder target, its
    (center, scale) the window's target scale, the target input normalized with it, and the
    `<target>_center` / `<target>_scale` reals scaled by the dataset's scalers (for all the
    batch's windows at once: elementwise, the same bits as one by one)."""

    def __init__(self, dataset: TimeSeriesDataSet) -> None:
        self.normalizer = deepcopy(dataset.target_normalizer)  # refitted on every window
        name = dataset.target_names[0]
        self.target = dataset.data["target"][0]
        self.target_column = dataset.reals.index(name) if name in dataset.reals else None
        self.scale_columns = (
            [(dataset.reals.index(f"{name}_{p}"), f"{name}_{p}") for p in ("center", "scale")]
            if dataset.add_target_scales
            else []
        )
        self.transform_values = dataset.transform_values

    def __call__(
        self, start: list[int], encoder_length: list[int], decoder_length: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, torch.Tensor]]]:
        """Per window: the target scale, the normalized target (encoder and decoder parts,
        zero-padded) and, per scale column, its scaled values."""
        n, normalizer = len(start), self.normalizer
        scales = np.empty((n, 2), dtype=np.float32)
        dtype = self.target.dtype
        encoder = torch.zeros(n, max(encoder_length), dtype=dtype)
        decoder = torch.zeros(n, max(decoder_length), dtype=dtype)
        for i, (first, e, d) in enumerate(zip(start, encoder_length, decoder_length, strict=True)):
            y = self.target[first : first + e + d]
            normalizer.fit(y[:e])
            scales[i] = normalizer.get_parameters().numpy()
            if self.target_column is not None:
                scaled = normalizer.transform(y)
                encoder[i, :e] = scaled[:e]
                decoder[i, :d] = scaled[e:]
        features = [
            (column, torch.as_tensor(self.transform_values(name, torch.from_numpy(scales[:, p]))))
            for p, (column, name) in enumerate(self.scale_columns)
        ]
        return torch.from_numpy(scales), encoder, decoder, features


class _Part:
    """Row indices of the encoder or decoder part of a batch of windows, padded to the
    longest part in the batch. Padded positions point at row 0; `gather` zeroes them."""

    def __init__(self, first: torch.Tensor, lengths: torch.Tensor, max_length: int) -> None:
        self.steps = torch.arange(max_length, device=first.device)
        self.valid = self.steps < lengths.unsqueeze(1)
        self.rows = torch.where(self.valid, first.unsqueeze(1) + self.steps, 0)

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """`values`' rows of this part, zeros where padded (as `_collate_fn` pads)."""
        gathered = values[self.rows]
        mask = self.valid if gathered.dim() == 2 else self.valid.unsqueeze(-1)
        return gathered.masked_fill_(~mask, 0)


# Per-window arrays of datasets whose host panel holds them (`prepared`): mapped, not computed.
_PREPARED: weakref.WeakKeyDictionary[TimeSeriesDataSet, dict[str, np.ndarray]] = (
    weakref.WeakKeyDictionary()
)
_CHUNK = 1 << 20  # windows at a time: the int64 intermediates stay small


def window_arrays(
    dataset: TimeSeriesDataSet,
    allocate: Callable[[str, tuple[int, ...], np.dtype], np.ndarray] = (
        lambda name, shape, dtype: np.empty(shape, dtype)
    ),
) -> dict[str, np.ndarray]:
    """What WindowBatcher needs per window, in the narrowest types, into `allocate`'s arrays:
    each window's first row (`start`), encoder and decoder lengths (as __getitem__ computes
    them: without missing timesteps a window is the rows start .. start + sequence_length - 1)
    and series (`series`, a position in `series_groups`: the encoded group ids of each run of
    rows of one series)."""
    index, time = dataset.index, dataset.data["time"].numpy()
    groups = dataset.data["groups"].numpy()
    change = np.ones(len(groups), dtype=bool)
    change[1:] = (groups[1:] != groups[:-1]).any(axis=1)
    series_groups = allocate("series_groups", (int(change.sum()), groups.shape[1]), groups.dtype)
    series_groups[...] = groups[change]
    series_start = np.flatnonzero(change)
    n = len(index)
    longest = int(index["sequence_length"].max())
    narrow = np.int16 if longest <= np.iinfo(np.int16).max else np.int32
    arrays = {
        "start": allocate("start", (n,), np.dtype(np.int32)),
        "encoder_length": allocate("encoder_length", (n,), np.dtype(narrow)),
        "decoder_length": allocate("decoder_length", (n,), np.dtype(narrow)),
        "series": allocate("series", (n,), np.dtype(np.int32)),
        "series_groups": series_groups,
    }
    for first in range(0, n, _CHUNK):
        part = slice(first, first + _CHUNK)
        start = index["index_start"].to_numpy()[part].astype(np.int64)
        sequence_length = index["sequence_length"].to_numpy()[part].astype(np.int64)
        time_last = time[start + sequence_length - 1].astype(np.int64)  # may be stored narrow
        decoder_length = dataset.calculate_decoder_length(time_last, sequence_length)
        arrays["start"][part] = start
        arrays["encoder_length"][part] = sequence_length - decoder_length
        arrays["decoder_length"][part] = decoder_length
        arrays["series"][part] = np.searchsorted(series_start, start, side="right") - 1
    return arrays


def prepared(dataset: TimeSeriesDataSet, arrays: dict[str, np.ndarray]) -> None:
    """WindowBatchers of `dataset` take these `window_arrays` (mapped from its host panel,
    prepared where `unsupported_reason` found none)."""
    _PREPARED[dataset] = arrays


class WindowBatcher:
    """Batches of `dataset`'s windows equal to TimeSeriesDataSet._collate_fn's, vectorized."""

    def __init__(self, dataset: TimeSeriesDataSet, device: torch.device | str = "cpu") -> None:
        reason = _unsupported_features(dataset)
        if reason is not None:
            raise ValueError(reason)
        self.device = torch.device(device)
        self._multi_target = dataset.multi_target
        data = dataset.data

        # Per window (a panel has about as many windows as rows): prepared with the panel
        # (host_panel.py) or computed here.
        arrays = _PREPARED.get(dataset) or window_arrays(dataset)
        # Kept on the CPU as well: the batch's padded lengths are needed as Python ints, and
        # reading them there spares a device synchronisation.
        self._encoder_length_cpu = torch.from_numpy(arrays["encoder_length"])
        self._decoder_length_cpu = torch.from_numpy(arrays["decoder_length"])
        self._encoder_length = self._encoder_length_cpu.to(self.device)
        self._decoder_length = self._decoder_length_cpu.to(self.device)
        self._start_cpu = torch.from_numpy(arrays["start"])
        self._start = self._start_cpu.to(self.device)
        self._series = torch.from_numpy(arrays["series"]).to(self.device)
        max_encoder_length_seen = int(self._encoder_length_cpu.max())

        # Per row, as the dataset holds them (on the CPU: the same memory, not a copy); the
        # integers perhaps narrower than the library's int64 (columnar.storage_types), widened
        # per batch.
        self._time = data["time"].to(self.device)
        self._row_groups = data["groups"].to(self.device)
        self._reals = data["reals"].to(self.device)
        self._categoricals = data["categoricals"].to(self.device)
        self._targets = [t.to(self.device) for t in data["target"]]
        self._weight = None if data["weight"] is None else data["weight"].to(self.device)
        # The two reals __getitem__ overwrites per window, as lookup tables computed with its
        # arithmetic on the CPU (a CUDA division by a scalar may round differently), each
        # with a trailing 0 for padded positions.
        dtype = data["reals"].dtype
        max_encoder_length = dataset.max_encoder_length
        self._relative_time_column = None
        if dataset.add_relative_time_idx:
            self._relative_time_column = dataset.reals.index("relative_time_idx")
            # Entry r + span is relative time r, for every r a window has (-encoder length up
            # to decoder length - 1): __getitem__'s arange(-e, d) / max_encoder_length, value
            # by value. (The column is float: the dataset adds it as 0.0.)
            # (the longest window: without missing timesteps, its encoder and decoder)
            self._span = int(
                (self._encoder_length_cpu.int() + self._decoder_length_cpu.int()).max()
            )
            relative = torch.arange(-self._span, self._span, dtype=dtype) / max_encoder_length
            self._relative_time = torch.cat([relative, torch.zeros(1, dtype=dtype)])
            self._relative_time = self._relative_time.to(self.device)
        self._encoder_length_column = None
        if dataset.add_encoder_length:
            self._encoder_length_column = dataset.reals.index("encoder_length")
            # Entry e is the feature of encoder length e, computed in float64 as __getitem__
            # does (its encoder length is a numpy integer) and rounded on assignment.
            feature = [
                (e - 0.5 * max_encoder_length) / max_encoder_length * 2.0
                for e in range(max_encoder_length_seen + 1)
            ]
            self._encoder_length_feature = torch.tensor([*feature, 0.0], dtype=torch.float64)
            self._encoder_length_feature = self._encoder_length_feature.to(dtype).to(self.device)

        # Target scales: an EncoderNormalizer's are the window's (`_EncoderScaled`); any other's
        # depend only on the window's series: asked of the normalizer once per series exactly
        # as __getitem__ asks, stacked as _collate_fn stacks them, then gathered per window.
        self._encoder_scaled = None
        self._target_scale: Tensors | None = None
        if isinstance(dataset.target_normalizer, EncoderNormalizer):
            self._encoder_scaled = _EncoderScaled(dataset)
        else:
            stacked = series_scales(dataset, torch.from_numpy(arrays["series_groups"]).long())
            self._target_scale = (
                [s.to(self.device) for s in stacked]
                if isinstance(stacked, list)
                else stacked.to(self.device)
            )

    def __len__(self) -> int:
        return len(self._start)

    def __call__(self, windows: Sequence[int] | np.ndarray | torch.Tensor) -> Batch:
        """The batch `_collate_fn` makes of these windows (positions in `dataset.index`)."""
        windows = torch.as_tensor(windows, dtype=torch.long).cpu()
        max_encoder = int(self._encoder_length_cpu[windows].max())
        max_decoder = int(self._decoder_length_cpu[windows].max())
        scaled = None
        if self._encoder_scaled is not None:
            scaled = self._encoder_scaled(
                self._start_cpu[windows].tolist(),
                self._encoder_length_cpu[windows].tolist(),
                self._decoder_length_cpu[windows].tolist(),
            )
        windows = windows.to(self.device)
        start = self._start[windows].long()
        encoder_length = self._encoder_length[windows].long()
        decoder_length = self._decoder_length[windows].long()
        encoder = _Part(start, encoder_length, max_encoder)
        decoder = _Part(start + encoder_length, decoder_length, max_decoder)

        encoder_cont = encoder.gather(self._reals)
        decoder_cont = decoder.gather(self._reals)
        if self._relative_time_column is not None:
            pad = 2 * self._span  # the table's trailing 0
            encoder_relative = encoder.steps - encoder_length.unsqueeze(1) + self._span
            decoder_relative = decoder.steps + self._span
            encoder_cont[..., self._relative_time_column] = self._relative_time[
                torch.where(encoder.valid, encoder_relative, pad)
            ]
            decoder_cont[..., self._relative_time_column] = self._relative_time[
                torch.where(decoder.valid, decoder_relative, pad)
            ]
        if self._encoder_length_column is not None:
            pad = len(self._encoder_length_feature) - 1
            lengths = encoder_length.unsqueeze(1)
            encoder_cont[..., self._encoder_length_column] = self._encoder_length_feature[
                torch.where(encoder.valid, lengths, pad)
            ]
            decoder_cont[..., self._encoder_length_column] = self._encoder_length_feature[
                torch.where(decoder.valid, lengths, pad)
            ]

        if scaled is not None:
            target_scale, encoder_scaled, decoder_scaled, features = scaled
            column = self._encoder_scaled.target_column
            if column is not None:
                encoder_cont[..., column] = encoder_scaled.to(self.device)
                decoder_cont[..., column] = decoder_scaled.to(self.device)
            for column, values in features:
                values = values.to(self.device).unsqueeze(1)
                encoder_cont[..., column] = torch.where(encoder.valid, values, 0)
                decoder_cont[..., column] = torch.where(decoder.valid, values, 0)

        encoder_target: Tensors = [encoder.gather(t) for t in self._targets]
        target: Tensors = [decoder.gather(t) for t in self._targets]
        if self._multi_target:
            target_scale = [s[self._series[windows]] for s in self._target_scale]
        else:
            encoder_target, target = encoder_target[0], target[0]
            if scaled is None:
                target_scale = self._target_scale[self._series[windows]]
            else:
                target_scale = target_scale.to(self.device)
        weight = None if self._weight is None else decoder.gather(self._weight)

        # _collate_fn does not pad the time index: it counts on past each decoder's end.
        decoder_time_idx = (self._time[start].long() + encoder_length).unsqueeze(1) + decoder.steps
        x = dict(
            encoder_cat=encoder.gather(self._categoricals).long(),
            encoder_cont=encoder_cont,
            encoder_target=encoder_target,
            encoder_lengths=encoder_length,
            decoder_cat=decoder.gather(self._categoricals).long(),
            decoder_cont=decoder_cont,
            decoder_target=target,
            decoder_lengths=decoder_length,
            decoder_time_idx=decoder_time_idx,
            groups=self._row_groups[start].long(),
            target_scale=target_scale,
        )
        return x, (target, weight)


def first_difference(expected: Any, actual: Any, path: str = "batch") -> str | None:
    """Where two batches differ (structure, dtype, shape, value or sign of zero), or None."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            return f"{path}: not a tensor"
        actual = actual.cpu()
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            return (
                f"{path}: {actual.dtype} {list(actual.shape)}, "
                f"not {expected.dtype} {list(expected.shape)}"
            )
        # torch.equal takes -0.0 == 0.0; bit for bit means the signs agree as well
        if not torch.equal(actual, expected) or (
            expected.is_floating_point()
            and not torch.equal(torch.signbit(actual), torch.signbit(expected))
        ):
            return f"{path}: values differ"
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or actual.keys() != expected.keys():
            return f"{path}: other keys"
        items = [(expected[k], actual[k], f"{path}[{k!r}]") for k in expected]
    elif isinstance(expected, list | tuple):
        if type(actual) is not type(expected) or len(actual) != len(expected):
            return f"{path}: other length"
        items = [
            (e, a, f"{path}[{i}]") for i, (e, a) in enumerate(zip(expected, actual, strict=True))
        ]
    else:
        return (
            None if expected is None and actual is None else f"{path}: {actual!r} != {expected!r}"
        )
    return next((d for e, a, p in items if (d := first_difference(e, a, p))), None)


def _probe() -> str | None:
    """A small dataset with what the batcher precomputes (varying encoder lengths, a group
    normalizer, relative time, encoder length, target scales, categoricals, weights), and the
    same with an encoder normalizer (fitted per window): every window batched both ways, bit
    for bit."""
    rng = np.random.default_rng(0)
    n_series, length = 3, 14
    frame = pd.DataFrame(
        {
            "series": np.repeat([f"s{i}" for i in range(n_series)], length),
            "t": np.tile(np.arange(length), n_series),
            "y": rng.uniform(1, 10, n_series * length),
            "price": rng.normal(size=n_series * length),
            "promo": rng.choice(["no", "yes"], n_series * length),
            "w": rng.uniform(0.5, 1.5, n_series * length),
        }
    ).astype({"series": "category", "promo": "category"})
    for normalizer in (
        GroupNormalizer(groups=["series"], transformation="softplus"),
        EncoderNormalizer(transformation="softplus"),
    ):
        dataset = TimeSeriesDataSet(
            frame,
            time_idx="t",
            target="y",
            group_ids=["series"],
            weight="w",
            min_encoder_length=3,
            max_encoder_length=6,
            min_prediction_length=1,
            max_prediction_length=3,
            static_categoricals=["series"],
            time_varying_known_categoricals=["promo"],
            time_varying_known_reals=["t", "price"],
            time_varying_unknown_reals=["y"],
            target_normalizer=normalizer,
            add_relative_time_idx=True,
            add_target_scales=True,
            add_encoder_length=True,
        )
        windows = np.arange(len(dataset))
        expected = TimeSeriesDataSet._collate_fn([dataset[int(i)] for i in windows])
        difference = first_difference(expected, WindowBatcher(dataset)(windows))
        if difference is not None:
            name = type(normalizer).__name__
            return f"batches differ from the library's ({name}: {difference})"
    return None


@functools.cache
def batches_guard() -> str | None:
    return guard("torch", "pytorch-forecasting", check=_probe)
