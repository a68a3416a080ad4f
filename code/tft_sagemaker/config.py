"""Hyperparameters → typed configuration.

SageMaker hands hyperparameters to the script as `--key value` pairs, every value a string, and
the encoding depends on how the job was launched: framework estimators JSON-encode
(`true`, `"\"abc\""`), a generic `Estimator` sends `str(v)` (`True`, `['a', 'b']`). Configuration
files (JSON/YAML) give native values. Every one of those is accepted here; anything else is a
`ConfigError` that names the key and, for unknown keys, the nearest valid one.

Precedence, lowest first: field defaults < preset < configuration file < hyperparameters.
Everything in this module is pure (no I/O, no environment) but `load_config` at the end, which
reads the configuration file a channel holds and builds the configuration from it and the
command line: the one place configuration is loaded.
"""

import ast
import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pandas.tseries.frequencies import to_offset

from .errors import ConfigError

# Keys SageMaker or its SDK may add that are not ours; the toolkit usually strips them already.
_FOREIGN_KEY_PREFIXES = ("sagemaker_", "_tuning_objective_metric")
_NONE_WORDS = {"none", "null", "auto", ""}
_TRUE_WORDS = {"true", "1", "yes", "y", "on"}
_FALSE_WORDS = {"false", "0", "no", "n", "off"}


def unique(items: Iterable[str | None]) -> list[str]:
    """The names in `items`, each once, in order; None and "" (an unset name) left out."""
    return [name for name in dict.fromkeys(items) if name]


# Steps per season of a pandas frequency's base unit (a multiple such as 2MS divides it).
_SEASONS = {"MS": 12, "ME": 12, "M": 12, "QS": 4, "QE": 4, "Q": 4, "W": 52, "D": 7, "B": 5, "h": 24}


def season_length(freq: str | None) -> int | None:
    """Steps per season implied by a pandas frequency (12 for months, 4 for quarters, 52 for
    weeks, 7 for days, 5 for business days, 24 for hours); None for years, finer units, or
    no frequency (an integer time index)."""
    if not freq:
        return None
    try:
        offset = to_offset(freq)
    except ValueError:
        return None
    base = offset.name.split("-")[0]  # W-MON → W, QS-JAN → QS
    steps = _SEASONS.get(base)
    if steps is None or steps % offset.n:
        return None
    return steps // offset.n if steps // offset.n > 1 else None


def _opt(default: Any, help: str, **checks: Any) -> Any:
    """A dataclass field with help text and optional checks (min, max, choices, exclusive_min)."""
    if isinstance(default, list | dict):
        return field(
            default_factory=lambda d=default: type(d)(d), metadata={"help": help, **checks}
        )
    return field(default=default, metadata={"help": help, **checks})


_AUTO = " Default: chosen from the data (recipe.py)."
# Upper bounds of the sizes, far above what trains on any instance: they catch a typo (an extra
# digit) at once; what fits below them is checked against the memory before the model is built
# (model.check_model_fits).
MAX_WIDTH, MAX_STEPS, MAX_BATCH = 8192, 100_000, 2**20
# What `calendar_features` may name (dataset.CALENDAR computes them from the dates).
CALENDAR_VARIABLES = ("month", "quarter", "day_of_week", "hour")


class CountOrFraction(float):
    """Type tag: an int counts batches, a float in (0, 1] is a fraction (Lightning's limits)."""


@dataclass
class DataConfig:
    """Where the data comes from and what its columns mean (the TimeSeriesDataSet schema)."""

    preset: str | None = _opt(
        None, "Built-in dataset recipe: 'stallion' or 'synthetic' (schema, features and budget)."
    )
    config_file: str | None = _opt(
        None,
        "JSON/YAML file of hyperparameters, absolute or relative to a channel; "
        "default: tft_config.{json,yaml,yml} in the 'config' or 'train' channel if present.",
    )
    time_idx: str = _opt(
        "time_idx", "Integer time index column (computed when date_column is set)."
    )
    date_column: str | None = _opt(None, "Date column; time_idx is derived from it with freq.")
    freq: str | None = _opt(None, "Pandas frequency of date_column, e.g. 'D', 'W-MON', 'MS', 'h'.")
    date_format: str | None = _opt(
        None,
        "strftime pattern of date_column when it holds text, e.g. '%d.%m.%Y' for 31.01.2023 or "
        "'%Y-%m-%d %H:%M' (default: inferred from the first date).",
    )
    dayfirst: bool = _opt(
        False,
        "Read ambiguous text dates day first: 01/02/2023 is 1 February (without date_format).",
    )
    target: str | None = _opt(None, "Target column to forecast.")
    group_ids: list[str] = _opt([], "Columns that identify one time series.")
    static_categoricals: list[str] = _opt([], "Categorical columns constant per series.")
    static_reals: list[str] = _opt([], "Numeric columns constant per series.")
    time_varying_known_categoricals: list[str] = _opt([], "Categoricals known in the future.")
    time_varying_known_reals: list[str] = _opt([], "Numeric columns known in the future.")
    time_varying_unknown_categoricals: list[str] = _opt(
        [], "Categoricals observed only in the past."
    )
    time_varying_unknown_reals: list[str] = _opt(
        [], "Numeric columns observed only in the past (the target usually belongs here)."
    )
    variable_groups: dict[str, list[str]] = _opt(
        {}, "Groups of categorical columns embedded as one variable, e.g. {'holidays': [...]}."
    )
    weight: str | None = _opt(None, "Optional column of sample weights.")
    max_encoder_length: int = _opt(24, "Longest history the model sees.", min=1, max=MAX_STEPS)
    min_encoder_length: int | None = _opt(
        None, "Shortest history of a training window (default: max_encoder_length // 2).", min=0
    )
    max_prediction_length: int = _opt(6, "Forecast horizon.", min=1, max=MAX_STEPS)
    min_prediction_length: int = _opt(1, "Shortest horizon of a training window.", min=1)
    target_normalizer: str = _opt(
        "auto",
        "Target scaling: 'group' (per series), 'encoder' (per window), 'standard', 'none', or "
        "'auto': chosen from the data (encoder when series drift from their level, else group).",
        choices=("auto", "group", "encoder", "standard", "none"),
    )
    target_transformation: str | None = _opt(
        None,
        "Transformation before scaling: softplus, log, log1p, relu, logit (default none).",
        choices=(None, "softplus", "log", "log1p", "relu", "logit"),
    )
    target_unit: float | None = _opt(
        None,
        "The model sees the target divided by this, forecasts are multiplied back (the unit "
        "the target is measured in then changes nothing). Default: the power of ten that "
        "brings the median series' standard deviation between 10 and 100 (units.py).",
        exclusive_min=0.0,
    )
    add_relative_time_idx: bool = _opt(True, "Add the position relative to the forecast start.")
    add_target_scales: bool = _opt(True, "Add the series' target center/scale as static reals.")
    add_encoder_length: bool = _opt(True, "Add the encoder length as a static real.")
    allow_missing_timesteps: bool = _opt(
        False, "Accept gaps in a series (pytorch-forecasting fills them forward)."
    )
    drop_short_series: bool = _opt(
        False, "Drop series too short for one window instead of failing."
    )
    calendar_features: list[str] = _opt(
        ["auto"],
        "Variables derived from date_column, known in the future, so that the model sees where "
        "in the year, week or day each step falls: any of month, quarter, day_of_week, hour; "
        "'none' for none." + _AUTO,
    )
    season_length: int | None = _opt(
        None,
        "Steps per season for the seasonal baselines and `seasonal_input` (0: none). Default: "
        "from freq (12 for months, 4 quarters, 52 weeks, 7 days, 5 business days, 24 hours), "
        "none without it.",
        min=0,
    )
    seasonal_input: str = _opt(
        "auto",
        "The target one season back (`<target>_last_season`) as an input known over the "
        "horizon: 'true', 'false', or 'auto' (true where there is a season of at least "
        "max_prediction_length steps: only then is it known for every forecast step).",
        choices=("auto", "true", "false"),
    )

    @property
    def resolved_min_encoder_length(self) -> int:
        if self.min_encoder_length is None:
            return self.max_encoder_length // 2
        return self.min_encoder_length

    @property
    def resolved_target_unit(self) -> float:
        """`target_unit`, 1 while unset: the job's recipe sets it; a model saved before it
        existed, and a dataset built outside the job, have the target in the data's unit."""
        return 1.0 if self.target_unit is None else self.target_unit

    @property
    def categoricals(self) -> list[str]:
        """Categorical columns as they appear in the data (variable groups expanded)."""
        names = (
            self.static_categoricals
            + self.time_varying_known_categoricals
            + self.time_varying_unknown_categoricals
        )
        return unique(c for name in names for c in self.variable_groups.get(name, [name]))

    @property
    def reals(self) -> list[str]:
        return unique(
            self.static_reals + self.time_varying_known_reals + self.time_varying_unknown_reals
        )

    @property
    def required_columns(self) -> list[str]:
        """Every column the data must have, in a stable order (time_idx is derived from
        date_column when that is set)."""
        time = [self.date_column] if self.date_column else [self.time_idx]
        columns = [
            *self.group_ids,
            *time,
            self.target,
            *self.categoricals,
            *self.reals,
            self.weight,
        ]
        return [c for c in unique(columns) if not (self.date_column and c == self.time_idx)]


@dataclass
class ModelConfig:
    """The Temporal Fusion Transformer and its optimisation."""

    hidden_size: int | None = _opt(None, "Width of the network." + _AUTO, min=1, max=MAX_WIDTH)
    attention_head_size: int = _opt(2, "Attention heads.", min=1, max=128)
    hidden_continuous_size: int | None = _opt(
        None, "Width of the real-variable embeddings." + _AUTO, min=1, max=MAX_WIDTH
    )
    lstm_layers: int = _opt(1, "LSTM layers in encoder and decoder.", min=1, max=32)
    dropout: float | None = _opt(None, "Dropout rate." + _AUTO, min=0.0, max=0.9)
    quantiles: list[float] = _opt(
        [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98], "Quantiles of the QuantileLoss (need 0.5)."
    )
    learning_rate: float | None = _opt(
        None, "Initial learning rate." + _AUTO, exclusive_min=0.0, max=10.0
    )
    optimizer: str = _opt("adam", "Optimizer: adam, adamw, sgd.", choices=("adam", "adamw", "sgd"))
    weight_decay: float = _opt(0.0, "Weight decay.", min=0.0)
    reduce_on_plateau_patience: int | None = _opt(
        None,
        "Epochs without val_loss improvement before the learning rate is halved." + _AUTO,
        min=1,
    )
    ema_decay: float | None = _opt(
        None,
        "Exponential moving average of the weights, per step (e.g. 0.99; 0 turns it off); "
        "validation, checkpoints and the model use the average." + _AUTO,
        min=0.0,
        max=0.9999,
    )


@dataclass
class TrainingConfig:
    """The Lightning Trainer and the input pipeline."""

    max_epochs: int | None = _opt(None, "Maximum number of epochs." + _AUTO, min=1)
    extend_epochs: int | None = _opt(
        None,
        "Epochs that may follow max_epochs while the validation still improves (early stopping "
        "ends them; 0: none), each begun only while training has taken at most "
        "extend_time_limit_s." + _AUTO,
        min=0,
    )
    extend_time_limit_s: float = _opt(
        120.0, "Training time after which no epoch past max_epochs begins.", min=0.0
    )
    limit_train_batches: CountOrFraction | None = _opt(
        None,
        "Batches per epoch and device: an integer count, or a fraction in (0, 1] (1.0: all)."
        + _AUTO,
        exclusive_min=0.0,
    )
    batch_size: int | None = _opt(
        None, "Training windows per batch and device." + _AUTO, min=1, max=MAX_BATCH
    )
    val_batch_size: int | None = _opt(
        None, "Validation batch size (default 8 x batch_size).", min=1, max=MAX_BATCH
    )
    gradient_clip_val: float = _opt(0.1, "Gradient norm clipping (0 disables).", min=0.0)
    early_stopping_patience: int | None = _opt(
        None, "Epochs without val_loss improvement before stopping (0 disables)." + _AUTO, min=0
    )
    warmup_steps: int | None = _opt(
        None,
        "Steps over which the learning rate rises linearly to its value (0: none)." + _AUTO,
        min=0,
    )
    early_stopping_min_delta: float = _opt(1e-4, "Smallest val_loss change that counts.", min=0.0)
    seed: int = _opt(42, "Random seed (weights, shuffling, dropout).", min=0)
    precision: str = _opt(
        "auto",
        "auto (bf16-mixed on GPUs that support it, else 32), 32, bf16-mixed, 16-mixed.",
        choices=("auto", "32", "bf16-mixed", "16-mixed"),
    )
    accelerator: str = _opt("auto", "auto, gpu or cpu.", choices=("auto", "gpu", "cpu"))
    devices: int | None = _opt(
        None, "Devices per host (default: every GPU, or 1 CPU process).", min=1, max=256
    )
    num_workers: int | None = _opt(
        None, "DataLoader worker processes (default: fitted to host).", min=0, max=256
    )
    learning_rate_scaling: str = _opt(
        "sqrt",
        "How learning_rate grows with the number of processes (the global batch is batch_size "
        "x processes): sqrt, linear or none. One process: learning_rate as given.",
        choices=("sqrt", "linear", "none"),
    )
    compile: bool = _opt(False, "torch.compile the model (pays off on GPUs for long runs).")
    checkpoint_dir: str | None = _opt(
        None, "Where epoch checkpoints go and are resumed from (default /opt/ml/checkpoints)."
    )
    keep_checkpoints: int = _opt(2, "Epoch checkpoints kept besides the best one.", min=1, max=1000)
    resume: bool = _opt(True, "Resume from the newest checkpoint in checkpoint_dir, if any.")
    memory_limit_gb: float | None = _opt(
        None,
        "Memory this host may use, in GB (default: the container's cgroup limit, else the "
        "machine's memory, shared by the containers a launcher put on it): a job whose "
        "estimate (memory.py) exceeds it is refused before reading the data.",
        exclusive_min=0.0,
    )
    baseline_max_series: int = _opt(
        500,
        "Validation windows the classical baselines (ETS, Theta) are fitted on, one fit per "
        "series: a fixed sample of them on larger panels (0: naive baselines only).",
        min=0,
    )
    require_beating_baseline: bool = _opt(
        False,
        "Fail the job, and write no model, when the shipped forecast's validation MAE does not "
        "beat every baseline's on the same windows.",
    )
    ensemble: bool = _opt(
        True,
        "Ship the TFT combined with naive, seasonal naive, ETS and Theta, weighted on a backtest "
        "window (each series' last max_prediction_length training steps, which the TFT then "
        "leaves out and early-stops on); false ships the TFT alone, trained on every training "
        "row and early-stopped on the validation windows.",
    )
    ensemble_max_series: int = _opt(
        2000,
        "ETS and Theta join the combination (ensemble=true) on panels of at most this many "
        "series (one fit per series for the backtest, one for the validation windows); above "
        "it, the combination takes the TFT, naive and seasonal naive.",
        min=0,
    )


@dataclass
class SpeedupConfig:
    """One switch per lever of the speed-up layer (tft_sagemaker.speedups). A lever that is on
    still falls back to the library's own path when its guard finds the library differs."""

    fast_batches: bool = _opt(
        True, "Batches by vectorised gathers, bit for bit the library's (not every dataset)."
    )
    fused_variable_selection: bool = _opt(
        True, "Variable selection networks as batched ops (same parameters, same results)."
    )
    fast_embedding_bags: bool = _opt(
        True, "Summing embedding bags (variable_groups) as counts @ weight on CPUs."
    )
    fast_dropout: bool = _opt(
        True, "Dropout masks from 16 random bits per element on CPUs (p rounded to 2^-16)."
    )
    flat_gradients: bool = _opt(
        True, "Gradients in one flat buffer: zeroing and norm clipping as one op each."
    )
    allocator_thresholds: bool = _opt(
        True, "glibc malloc thresholds that keep freed activations for the next step."
    )
    static_shapes: bool = _opt(
        False,
        "On GPUs, training steps at fixed shapes (batches padded to the dataset's lengths, "
        "lengths as masks, no host reads): what compile_mode compiles. Off until measured on a "
        "GPU (bench/gpu_check.sh); CPUs always take the library's step.",
    )
    compile_mode: str = _opt(
        "auto",
        "How the static_shapes step runs on GPUs: eager, or torch.compile's default, "
        "reduce-overhead (CUDA graphs) or max-autotune; auto: reduce-overhead (the logged reason).",
        choices=("auto", "eager", "default", "reduce-overhead", "max-autotune"),
    )


@dataclass
class DistributedConfig:
    """How processes on one or many hosts form one training group."""

    backend: str = _opt(
        "auto",
        "auto (nccl on GPUs, gloo on CPUs), nccl, gloo, smddp.",
        choices=("auto", "nccl", "gloo", "smddp"),
    )
    master_port: int = _opt(
        29500, "TCP port of the rendezvous on the first host.", min=1, max=65535
    )
    collective_timeout_s: int = _opt(
        600, "Seconds a collective waits for a peer before every rank fails.", min=10
    )
    host_wait_timeout_s: int = _opt(
        300, "Seconds to wait for every host's name to resolve before failing.", min=0
    )


@dataclass
class ReportConfig:
    """What the job tells about the trained model besides its metrics (report.py)."""

    report: bool = _opt(
        True,
        "After training: variable importances and attention (interpretation.json), forecast "
        "plots and report.html in output/data; false skips them.",
    )
    report_series: list[str] = _opt(
        [],
        "Series to plot in the report besides the best, median and worst: each its group id "
        "values joined by '/', e.g. 'Agency_01/SKU_01'.",
    )


@dataclass
class JobConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    speedups: SpeedupConfig = field(default_factory=SpeedupConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every hyperparameter by its flat name, as the user sets it."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "speedups": SpeedupConfig,
    "distributed": DistributedConfig,
    "report": ReportConfig,
}
# flat hyperparameter name → (section, dataclass field)
FIELDS: dict[str, tuple[str, dataclasses.Field]] = {
    f.name: (section, f) for section, cls in _SECTIONS.items() for f in dataclasses.fields(cls)
}


# --------------------------------------------------------------------------------------------
# Command line → raw mapping
# --------------------------------------------------------------------------------------------
def parse_cli(argv: Iterable[str]) -> dict[str, str]:
    """`--key value` / `--key=value` pairs (as the SageMaker toolkit builds them) → raw strings.
    The toolkit writes a one-letter key as `-k value` and an empty key as '' (its
    `mapping.to_cmd_args`): both are read here, so that they are reported like any other key."""
    raw: dict[str, str] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--") and token != "--":
            name = token[2:]
        elif token.startswith("-") and token[1:2].isalpha():
            name = token[1:]
        elif token == "" and i + 1 < len(args):
            raise ConfigError(
                f"A hyperparameter has an empty name (its value is {args[i + 1]!r}): name it "
                "or remove it."
            )
        else:
            raise ConfigError(f"Unexpected argument {token!r}: hyperparameters are '--key value'.")
        key, sep, value = name.partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise ConfigError(f"Hyperparameter --{key} has no value.")
            value = args[i + 1]
            i += 1
        raw[key.replace("-", "_")] = value
        i += 1
    return raw


# --------------------------------------------------------------------------------------------
# Raw values → typed values
# --------------------------------------------------------------------------------------------
def _unquote(text: str) -> str:
    """Undo one level of JSON string encoding: '"abc"' → 'abc'."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(decoded, str):
            return decoded.strip()
    return text


def _literal(text: str) -> Any:
    """A JSON or Python literal (lists and dicts come as either, depending on the SDK path)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"not a list/dict literal: {text!r}") from err


def _pairs(text: str) -> dict[str, str]:
    """`k=v,k2=v2`: how the toolkit passes a dict that a framework estimator JSON-encoded
    (it JSON-decodes the value, then joins `f"{k}={v}"`, so v is a Python repr like ['a', 'b'])."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "[{(") - (char in "]})")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    pairs = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"not a mapping: {text!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _number(value: Any, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected {expected}, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected {expected}, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _decode(value: Any, tp: Any) -> Any:
    """Convert a raw value (string from the CLI, or native from a file) to type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and _unquote(value).lower() in _NONE_WORDS):
            return None
        errors = []
        for option in options:
            try:
                return _decode(value, option)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if isinstance(value, str):
        value = _unquote(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.lower() in _TRUE_WORDS
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        number = _number(value, "an integer")
        if not number.is_integer():  # "50.0" is what a generic Estimator sends for 50.0
            raise ValueError(f"expected an integer, got {value!r}")
        return int(number)
    if tp is float:
        return _number(value, "a number")
    if tp is CountOrFraction:
        # Lightning's reading of limit_*_batches: an integer counts batches, a float is a
        # fraction. "50.0" (a generic Estimator's str(50.0)) can only mean 50 batches.
        number = _number(value, "a batch count or a fraction")
        whole = isinstance(value, int) or (isinstance(value, str) and value.isdigit())
        return int(number) if whole or (number > 1 and number.is_integer()) else number
    if tp is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # `precision: 32` in a YAML file
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if isinstance(value, str):
            value = (
                _literal(value)
                if value.startswith("[")
                else ([v.strip() for v in value.split(",") if v.strip()])
            )
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {value!r}")
        return [_decode(v, item_type) for v in value]
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if isinstance(value, str):
            if not value:
                value = {}
            elif "=" in value and not value.startswith(("{", "[")):
                value = _pairs(value)
            else:
                value = _literal(value)
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        return {_decode(k, key_type): _decode(v, value_type) for k, v in value.items()}
    raise TypeError(f"unsupported field type {tp!r}")  # a bug in this module, not user input


def _check_range(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    if "choices" in meta and value not in meta["choices"]:
        shown = ", ".join(str(c) for c in meta["choices"] if c is not None)
        raise ConfigError(f"Hyperparameter {name}={value!r} is not one of: {shown}.")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"Hyperparameter {name}={value} is below its minimum {meta['min']}.")
    if "exclusive_min" in meta and value <= meta["exclusive_min"]:
        raise ConfigError(
            f"Hyperparameter {name}={value} must be greater than {meta['exclusive_min']}."
        )
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"Hyperparameter {name}={value} is above its maximum {meta['max']}.")


def _check_known(values: Mapping[str, Any], source: str) -> None:
    for key in values:
        if key in FIELDS:
            continue
        raise ConfigError(f"Unknown hyperparameter '{key}' (in {source}). {_nearest(key)}")


def _nearest(key: str) -> str:
    """The valid name(s) closest to an unknown key, as a hint."""
    close = difflib.get_close_matches(key, list(FIELDS), n=1, cutoff=0.6)
    if close:
        return f"Did you mean '{close[0]}'?"
    # A short key (the toolkit passes one-letter keys as `-k`) is too short for a close match.
    starting = sorted(name for name in FIELDS if name.startswith(key.lower()))[:4]
    if starting:
        return f"Did you mean one of: {', '.join(starting)}?"
    return "`python train.py --help` lists the valid names."


def _drop_foreign(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not k.startswith(_FOREIGN_KEY_PREFIXES)}


def build_config(
    hyperparameters: Mapping[str, Any],
    file_values: Mapping[str, Any] | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    file_name: str = "the configuration file",
) -> JobConfig:
    """Resolve defaults < preset < file < hyperparameters into a checked `JobConfig`."""
    hyperparameters = _drop_foreign(hyperparameters)
    file_values = _drop_foreign(file_values or {})
    _check_known(file_values, file_name)
    _check_known(hyperparameters, "hyperparameters")

    merged: dict[str, Any] = {**file_values, **hyperparameters}
    preset_name = _decode(merged.get("preset"), str | None)
    if preset_name is not None:
        presets = presets or {}
        if preset_name not in presets:
            raise ConfigError(
                f"Unknown preset '{preset_name}'. Available: {', '.join(sorted(presets))}."
            )
        merged = {**presets[preset_name], **merged}

    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, raw in merged.items():
        section, fld = FIELDS[key]
        try:
            value = _decode(raw, fld.type)
        except ValueError as err:
            raise ConfigError(f"Hyperparameter {key}={raw!r} is invalid: {err}.") from None
        _check_range(key, value, fld.metadata)
        sections[section][key] = value
    config = JobConfig(**{name: _SECTIONS[name](**vals) for name, vals in sections.items()})
    _check_consistency(config)
    return config


def _check_consistency(config: JobConfig) -> None:
    """Rules across fields that a single field's range cannot express."""
    data, model, training = config.data, config.model, config.training
    if data.target is None:
        raise ConfigError(
            "No target column: set the 'target' hyperparameter (and the schema), "
            "or choose a preset: stallion, synthetic."
        )
    if not data.group_ids:
        raise ConfigError("No group_ids: name the column(s) that identify each series.")
    if data.target in data.group_ids:
        raise ConfigError(
            f"The target '{data.target}' is listed in group_ids: name the column(s) that "
            "identify each series instead."
        )
    if data.date_column and not data.freq:
        raise ConfigError(
            f"date_column={data.date_column!r} needs freq (a pandas frequency such as 'D' or 'MS')."
        )
    if data.freq and not data.date_column:
        raise ConfigError("freq is set but date_column is not: name the date column.")
    calendar = data.calendar_features
    if calendar not in (["auto"], ["none"], []):
        unknown = [c for c in calendar if c not in CALENDAR_VARIABLES]
        if unknown:
            raise ConfigError(
                f"calendar_features: {', '.join(map(repr, unknown))} unknown; give any of "
                f"{', '.join(CALENDAR_VARIABLES)}, or auto, or none."
            )
        if not data.date_column:
            raise ConfigError(
                f"calendar_features={','.join(calendar)} needs date_column and freq: the "
                "calendar is read from the dates."
            )
    if data.seasonal_input == "true":
        season = job_season(data)
        if season is None or season < data.max_prediction_length:
            raise ConfigError(
                "seasonal_input=true: the target one season back is known over the horizon only "
                f"when a season ({'none' if season is None else f'{season} steps'}: "
                "season_length, else from freq) is at least max_prediction_length="
                f"{data.max_prediction_length}: set season_length, or seasonal_input=false."
            )
    if data.resolved_min_encoder_length > data.max_encoder_length:
        raise ConfigError(
            f"min_encoder_length={data.min_encoder_length} exceeds "
            f"max_encoder_length={data.max_encoder_length}."
        )
    if data.target_normalizer == "encoder" and data.resolved_min_encoder_length < 2:
        raise ConfigError(
            "target_normalizer=encoder scales each window by its history: it needs "
            f"min_encoder_length >= 2 (it is {data.resolved_min_encoder_length})."
        )
    if data.min_prediction_length > data.max_prediction_length:
        raise ConfigError(
            f"min_prediction_length={data.min_prediction_length} exceeds "
            f"max_prediction_length={data.max_prediction_length}."
        )
    roles = {
        "static_categoricals": data.static_categoricals,
        "static_reals": data.static_reals,
        "time_varying_known_categoricals": data.time_varying_known_categoricals,
        "time_varying_known_reals": data.time_varying_known_reals,
        "time_varying_unknown_categoricals": data.time_varying_unknown_categoricals,
        "time_varying_unknown_reals": data.time_varying_unknown_reals,
    }
    seen: dict[str, str] = {}
    for role, columns in roles.items():
        for column in columns:
            if column in seen:
                raise ConfigError(f"Column '{column}' is listed in both {seen[column]} and {role}.")
            seen[column] = role
    if data.target in data.time_varying_known_reals:
        raise ConfigError(
            f"The target '{data.target}' cannot be a known real: it is not known in the future."
        )
    for group, members in data.variable_groups.items():
        if group not in seen or not seen[group].endswith("categoricals"):
            raise ConfigError(
                f"variable_groups['{group}'] is not listed in any *_categoricals hyperparameter."
            )
        if not members:
            raise ConfigError(f"variable_groups['{group}'] is empty.")
    if 0.5 not in model.quantiles or sorted(model.quantiles) != model.quantiles:
        raise ConfigError(
            f"quantiles={model.quantiles} must be increasing and include 0.5 (the point forecast)."
        )
    if any(not 0.0 < q < 1.0 for q in model.quantiles):
        raise ConfigError(f"quantiles={model.quantiles} must lie strictly between 0 and 1.")
    if model.hidden_size is not None and model.hidden_size % model.attention_head_size:
        raise ConfigError(
            f"hidden_size={model.hidden_size} must be divisible by "
            f"attention_head_size={model.attention_head_size}."
        )
    limit = training.limit_train_batches
    if isinstance(limit, float) and limit > 1.0:
        raise ConfigError(
            f"limit_train_batches={limit} is a fraction above 1: give an integer batch count "
            "or a fraction in (0, 1]."
        )


def describe_hyperparameters() -> str:
    """Help text listing every hyperparameter with its default (for --help and the README)."""
    lines = []
    for section, cls in _SECTIONS.items():
        lines.append(f"[{section}]")
        defaults = cls()
        for f in dataclasses.fields(cls):
            lines.append(f"  {f.name} = {getattr(defaults, f.name)!r}\n      {f.metadata['help']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Loading: the command line and the configuration file → JobConfig (reads files)
# --------------------------------------------------------------------------------------------
CONFIG_FILE_NAMES = ("tft_config.json", "tft_config.yaml", "tft_config.yml")
CONFIG_CHANNELS = ("config", "train")  # where a configuration file is looked for, in order


def find_config_file(channels: Mapping[str, Path], name: str | None) -> Path | None:
    """The configuration file named by `config_file`, or a tft_config.* found in a channel."""
    if name:
        candidate = Path(name)
        if candidate.is_absolute():
            if candidate.is_file():
                return candidate
        else:
            for channel in channels.values():
                if (channel / candidate).is_file():
                    return channel / candidate
        raise ConfigError(
            f"config_file={name!r} was not found (looked in channels: "
            f"{', '.join(sorted(channels)) or 'none'})."
        )
    for channel in CONFIG_CHANNELS:
        directory = channels.get(channel)
        for file_name in CONFIG_FILE_NAMES:
            if directory is not None and (directory / file_name).is_file():
                return directory / file_name
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"Configuration file {path} cannot be read: {err}".strip()) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"Configuration file {path} must hold a mapping of hyperparameters.")
    return values


def load_config(
    argv: Sequence[str],
    channels: Mapping[str, Path],
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[JobConfig, Path | None]:
    """The job's configuration from its command line and the configuration file (the one named
    by `config_file`, else a tft_config.* in the config or train channel), and that file."""
    hyperparameters = parse_cli(argv)
    path = find_config_file(channels, hyperparameters.get("config_file"))
    file_values = read_config_file(path) if path else {}
    return build_config(hyperparameters, file_values, presets, str(path)), path


def job_season(data: DataConfig) -> int | None:
    """Steps per season of the seasonal methods: season_length, else from the frequency."""
    season = season_length(data.freq) if data.season_length is None else data.season_length
    return season or None
