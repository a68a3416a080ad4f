"""Hyperparameters → JobConfig: `parse_cli` and `build_config`, pure functions.

SageMaker hands every hyperparameter over as a string, encoded by the SDK path that launched the
job: framework estimators JSON-encode (`true`, `"\"abc\""`, `{"a": [1]}`), a generic Estimator
sends `str(v)` (`True`, `['a', 'b']`), and the training toolkit JSON-decodes what it can and
passes `str()` of the result (dicts as `k=v,k2=v2`). Configuration files give native values.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from tft_sagemaker.config import (
    FIELDS,
    DataConfig,
    DistributedConfig,
    JobConfig,
    ModelConfig,
    ReportConfig,
    SpeedupConfig,
    TrainingConfig,
    build_config,
    parse_cli,
)
from tft_sagemaker.errors import ConfigError
from tft_sagemaker.presets import PRESET_VALUES

# The least a configuration needs without a preset.
BASE = {"target": "y", "group_ids": "series"}


def build(**values: Any) -> JobConfig:
    return build_config({**BASE, **values})


def value_of(name: str, raw: Any, **extra: Any) -> Any:
    config = build(**{name: raw}, **extra)
    return config.flat()[name]


def config_error(hyperparameters: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(hyperparameters, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# parse_cli
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {}),
        (["--max_epochs", "3"], {"max_epochs": "3"}),
        (["--a", "1", "--b", "x y"], {"a": "1", "b": "x y"}),
        (["--max_epochs=3"], {"max_epochs": "3"}),
        (["--variable_groups=g=['a', 'b']"], {"variable_groups": "g=['a', 'b']"}),
        (["--target="], {"target": ""}),
        (["--target", ""], {"target": ""}),
        (["--max-epochs", "3"], {"max_epochs": "3"}),
        (["--max-encoder-length=12"], {"max_encoder_length": "12"}),
        (["--learning_rate", "-1"], {"learning_rate": "-1"}),  # a value, not an option
        (["--target", "--weird"], {"target": "--weird"}),
        (["--seed", "1", "--seed", "2"], {"seed": "2"}),  # the last one wins
        (["--sagemaker_program", "train.py"], {"sagemaker_program": "train.py"}),
    ],
)
def test_parse_cli(argv: list[str], expected: dict[str, str]) -> None:
    assert parse_cli(argv) == expected


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["max_epochs", "3"], ["Unexpected argument 'max_epochs'", "--key value"]),
        (["--", "x"], ["Unexpected argument '--'"]),
        (["--seed", "1", "extra"], ["Unexpected argument 'extra'"]),
        (["--max_epochs"], ["--max_epochs has no value"]),
        (["--seed", "1", "--max_epochs"], ["--max_epochs has no value"]),
    ],
)
def test_parse_cli_rejects(argv: list[str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cli(argv)
    for word in words:
        assert word in str(info.value)


def test_cli_to_config_end_to_end() -> None:
    argv = [
        '--target="sales"',
        "--group-ids",
        "['store', 'product']",
        "--max-epochs=5",
        "--allow_missing_timesteps",
        "False",
        "--sagemaker_program",
        "train.py",
    ]
    config = build_config(parse_cli(argv))
    assert config.data.target == "sales"
    assert config.data.group_ids == ["store", "product"]
    assert config.training.max_epochs == 5
    assert config.data.allow_missing_timesteps is False


# --------------------------------------------------------------------------------------------
# Value encodings
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),  # framework estimator (JSON)
        ("True", True),  # generic Estimator (str(True))
        ("TRUE", True),
        ('"true"', True),  # a JSON-encoded string
        ('"True"', True),
        (" true ", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        (True, True),  # native, from a configuration file
        ("false", False),
        ("False", False),  # truthy as a Python string: must mean false
        ('"False"', False),
        ('"false"', False),
        ("0", False),
        ("no", False),
        ("off", False),
        (False, False),
    ],
)
@pytest.mark.parametrize("name", ["allow_missing_timesteps", "drop_short_series", "resume"])
def test_bool_encodings(name: str, raw: Any, expected: bool) -> None:
    assert value_of(name, raw) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "", '""', "tru", "[true]", 1, 0.0])
def test_bool_rejects(raw: Any) -> None:
    message = config_error({**BASE, "fast_batches": raw})
    assert message.startswith(f"Hyperparameter fast_batches={raw!r} is invalid")
    assert "expected true or false" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.1", 0.1),
        ('"0.1"', 0.1),
        ("1e-3", 1e-3),
        ("1E-3", 1e-3),
        ('"1e-3"', 1e-3),
        (".05", 0.05),
        (" 0.2 ", 0.2),
        (0.25, 0.25),
        ("2", 2),
        (2, 2),
    ],
)
def test_float_encodings(raw: Any, expected: float) -> None:
    value = value_of("learning_rate", raw)
    assert value == pytest.approx(expected)
    assert isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("abc", "expected a number, got 'abc'"),
        ("nan", "finite"),
        ("inf", "finite"),
        ("-inf", "finite"),
        ("[0.1]", "expected a number"),
        (True, "expected a number"),
        ([0.1], "expected a number"),
    ],
)
def test_float_rejects(raw: Any, reason: str) -> None:
    message = config_error({**BASE, "learning_rate": raw})
    assert message.startswith(f"Hyperparameter learning_rate={raw!r} is invalid")
    assert reason in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("50", 50),
        ("50.0", 50),  # str(50.0) from a generic Estimator, or a float in a YAML file
        ('"50"', 50),
        ("5e1", 50),
        (" 50 ", 50),
        ("+50", 50),
        (50, 50),
        (50.0, 50),
    ],
)
def test_int_encodings(raw: Any, expected: int) -> None:
    value = value_of("max_epochs", raw)
    assert value == expected and type(value) is int


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("50.5", "expected an integer"),
        (50.5, "expected an integer"),
        ("abc", ""),
        ("", ""),
        ("[50]", ""),
        (True, "expected an integer"),
        ("true", ""),
    ],
)
def test_int_rejects(raw: Any, reason: str) -> None:
    message = config_error({**BASE, "keep_checkpoints": raw})
    assert message.startswith(f"Hyperparameter keep_checkpoints={raw!r} is invalid")
    assert reason in message


@pytest.mark.parametrize(
    ("raw", "expected", "kind"),
    [
        # An integer is a batch count for Lightning, a float in (0, 1] a fraction of the epoch.
        ("50", 50, int),
        ('"50"', 50, int),
        (50, 50, int),
        ("1", 1, int),
        ("0.5", 0.5, float),
        ('"0.25"', 0.25, float),
        (0.5, 0.5, float),
        ("1.0", 1.0, float),
        ("None", None, type(None)),
        ("null", None, type(None)),
    ],
)
def test_limit_train_batches_count_or_fraction(raw: Any, expected: Any, kind: type) -> None:
    value = value_of("limit_train_batches", raw)
    assert value == expected and type(value) is kind


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("50", 50), (50, 50), ("50.0", 50), (50.0, 50), ("1", 1), ("1.0", 1.0), ("0.25", 0.25)],
)
def test_limit_train_batches_counts_or_fractions(raw: Any, expected: float) -> None:
    # Lightning: an int counts batches, a float is a fraction. A generic Estimator sends
    # str(50.0) == "50.0", which can only mean 50 batches.
    value = build_config({**BASE, "limit_train_batches": raw}).training.limit_train_batches
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("raw", ["1.5", 2.5])
def test_limit_train_batches_fraction_above_one(raw: Any) -> None:
    message = config_error({**BASE, "limit_train_batches": raw})
    assert "limit_train_batches=" in message
    assert "fraction above 1" in message and "integer batch count" in message


@pytest.mark.parametrize(
    "raw",
    [
        '["store", "product"]',  # JSON (framework estimator)
        "['store', 'product']",  # Python repr (generic Estimator, and the toolkit)
        "store,product",
        "store, product",
        " store , product, ",
        '"store,product"',  # a JSON-encoded comma-separated string
        ["store", "product"],  # native
        ("store", "product"),
    ],
)
def test_list_encodings(raw: Any) -> None:
    config = build_config({"target": "y", "group_ids": raw})
    assert config.data.group_ids == ["store", "product"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("store", ["store"]),
        ('"store"', ["store"]),
        ("['store']", ["store"]),
        ("[]", []),
        ("", []),
    ],
)
def test_list_single_and_empty(raw: str, expected: list[str]) -> None:
    assert value_of("static_reals", raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["[0.1, 0.5, 0.9]", "0.1,0.5,0.9", "['0.1', '0.5', '0.9']", '"0.1, 0.5, 0.9"', [0.1, 0.5, 0.9]],
)
def test_float_list_encodings(raw: Any) -> None:
    assert value_of("quantiles", raw) == [0.1, 0.5, 0.9]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("[0.1, 0.5", "list/dict literal"),
        ("0.1,abc,0.9", "expected a number, got 'abc'"),
        ({"q": 0.5}, "expected a list"),
    ],
)
def test_list_rejects(raw: Any, reason: str) -> None:
    message = config_error({**BASE, "quantiles": raw})
    assert message.startswith("Hyperparameter quantiles=") and reason in message


GROUPS = {"calendar": ["holiday", "month"]}


@pytest.mark.parametrize(
    "raw",
    [
        '{"calendar": ["holiday", "month"]}',  # JSON (framework estimator)
        "{'calendar': ['holiday', 'month']}",  # Python repr (generic Estimator)
        # The toolkit JSON-decodes a framework estimator's dict and passes `k=v,...`.
        "calendar=['holiday', 'month']",
        {"calendar": ["holiday", "month"]},  # native
        {"calendar": "holiday,month"},
    ],
)
def test_variable_groups_encodings(raw: Any) -> None:
    config = build(variable_groups=raw, time_varying_known_categoricals="calendar")
    assert config.data.variable_groups == GROUPS
    assert config.data.categoricals == ["holiday", "month"]


def test_variable_groups_toolkit_encoding_of_several_groups() -> None:
    raw = "calendar=['holiday', 'month'],events=['promo']"
    config = build(variable_groups=raw, time_varying_known_categoricals="calendar,events")
    assert config.data.variable_groups == {**GROUPS, "events": ["promo"]}


@pytest.mark.parametrize("raw", ["{'calendar': ", "calendar", "[1, 2]"])
def test_variable_groups_rejects(raw: str) -> None:
    message = config_error({**BASE, "variable_groups": raw})
    assert message.startswith("Hyperparameter variable_groups=") and "invalid" in message


@pytest.mark.parametrize("raw", ["None", "none", "null", "NULL", '"null"', "auto", "", None])
@pytest.mark.parametrize(
    "name",
    [
        "target_transformation",
        "min_encoder_length",
        "val_batch_size",
        "devices",
        "num_workers",
        "limit_train_batches",
        "weight",
        "checkpoint_dir",
    ],
)
def test_optional_fields_accept_none_words(name: str, raw: Any) -> None:
    assert value_of(name, raw) is None


def test_optional_int_keeps_numbers() -> None:
    assert value_of("min_encoder_length", "0") == 0
    assert value_of("devices", '"2"') == 2
    assert (
        build(min_encoder_length="None", max_encoder_length="30").data.resolved_min_encoder_length
        == 15
    )


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("target", '"sales"', "sales"),  # framework estimator
        ("target", "sales", "sales"),
        ("target", '"  sales "', "sales"),
        ("optimizer", '"adamw"', "adamw"),
        ("precision", "32", "32"),
        ("precision", '"bf16-mixed"', "bf16-mixed"),
        ("freq", '"W-MON"', "W-MON"),
        ("target_transformation", '"softplus"', "softplus"),
        ("time_idx", "t", "t"),
    ],
)
def test_string_encodings(name: str, raw: Any, expected: str) -> None:
    extra = {"date_column": "day"} if name == "freq" else {}
    assert value_of(name, raw, **extra) == expected


def test_precision_as_native_number_from_a_file() -> None:
    # YAML reads `precision: 32` as an int.
    config = build_config(BASE, {"precision": 32})
    assert config.training.precision == "32"


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("max_epoch", "max_epochs"),
        ("learningrate", "learning_rate"),
        ("hidden_sizes", "hidden_size"),
        ("group_id", "group_ids"),
        ("batchsize", "batch_size"),
        ("epochs", "max_epochs"),
        ("zzz", None),
    ],
)
def test_unknown_key_names_it_and_the_nearest(key: str, suggestion: str | None) -> None:
    message = config_error({**BASE, key: "1"})
    assert message.startswith(f"Unknown hyperparameter '{key}' (in hyperparameters).")
    if suggestion:
        assert message.endswith(f"Did you mean '{suggestion}'?")
    else:
        assert "Did you mean" not in message


def test_unknown_key_in_a_file_names_the_file() -> None:
    message = config_error(BASE, file_values={"dropuot": 0.2}, file_name="/x/tft_config.yaml")
    assert message == (
        "Unknown hyperparameter 'dropuot' (in /x/tft_config.yaml). Did you mean 'dropout'?"
    )


def test_dashes_in_keys_reach_build_config_as_underscores() -> None:
    config = build_config(parse_cli(["--target", "y", "--group-ids", "s", "--hidden-size", "32"]))
    assert config.model.hidden_size == 32


@pytest.mark.parametrize(
    "key",
    [
        "sagemaker_program",
        "sagemaker_submit_directory",
        "sagemaker_region",
        "sagemaker_container_log_level",
        "sagemaker_job_name",
        "_tuning_objective_metric",
    ],
)
def test_sagemaker_keys_are_ignored(key: str) -> None:
    assert build_config({**BASE, key: '"whatever"'}) == build()
    assert build_config(BASE, file_values={key: 1}) == build()


# --------------------------------------------------------------------------------------------
# Ranges
# --------------------------------------------------------------------------------------------
def _checked_fields(check: str) -> list[str]:
    return sorted(name for name, (_, f) in FIELDS.items() if check in f.metadata)


def _is_int_field(name: str) -> bool:
    return "int" in str(FIELDS[name][1].type)


# Values a boundary test needs besides the field itself (cross-field rules).
_CONTEXT = {
    "hidden_size": {"attention_head_size": "1"},
    "max_prediction_length": {},
    "seasonal_input": {"season_length": "12"},  # true needs a season
}


def test_checked_fields_are_the_expected_ones() -> None:
    """Guards the generated range tests below against an empty or shrinking field list."""
    assert _checked_fields("min") == sorted(
        [
            "max_encoder_length",
            "min_encoder_length",
            "max_prediction_length",
            "min_prediction_length",
            "season_length",
            "hidden_size",
            "attention_head_size",
            "hidden_continuous_size",
            "lstm_layers",
            "dropout",
            "weight_decay",
            "reduce_on_plateau_patience",
            "ema_decay",
            "max_epochs",
            "extend_epochs",
            "extend_time_limit_s",
            "batch_size",
            "val_batch_size",
            "gradient_clip_val",
            "early_stopping_patience",
            "warmup_steps",
            "early_stopping_min_delta",
            "seed",
            "devices",
            "num_workers",
            "keep_checkpoints",
            "baseline_max_series",
            "ensemble_max_series",
            "master_port",
            "collective_timeout_s",
            "host_wait_timeout_s",
        ]
    )
    assert _checked_fields("max") == [
        "attention_head_size",
        "batch_size",
        "devices",
        "dropout",
        "ema_decay",
        "hidden_continuous_size",
        "hidden_size",
        "keep_checkpoints",
        "learning_rate",
        "lstm_layers",
        "master_port",
        "max_encoder_length",
        "max_prediction_length",
        "num_workers",
        "val_batch_size",
    ]
    assert _checked_fields("exclusive_min") == [
        "learning_rate",
        "limit_train_batches",
        "memory_limit_gb",
        "target_unit",
    ]
    assert _checked_fields("choices") == [
        "accelerator",
        "backend",
        "compile_mode",
        "learning_rate_scaling",
        "optimizer",
        "precision",
        "seasonal_input",
        "target_normalizer",
        "target_transformation",
    ]


@pytest.mark.parametrize("name", _checked_fields("min"))
def test_below_minimum(name: str) -> None:
    minimum = FIELDS[name][1].metadata["min"]
    below = minimum - 1 if _is_int_field(name) else minimum - 0.5
    message = config_error({**BASE, name: str(below)})
    assert message == f"Hyperparameter {name}={below} is below its minimum {minimum}."
    # The minimum itself is accepted.
    assert value_of(name, str(minimum), **_CONTEXT.get(name, {})) == minimum


@pytest.mark.parametrize("name", _checked_fields("max"))
def test_above_maximum(name: str) -> None:
    maximum = FIELDS[name][1].metadata["max"]
    above = maximum + 1 if _is_int_field(name) else maximum + 0.05
    message = config_error({**BASE, name: str(above)})
    assert message.startswith(f"Hyperparameter {name}=")
    assert message.endswith(f"is above its maximum {maximum}.")
    assert value_of(name, str(maximum)) == maximum


@pytest.mark.parametrize("name", _checked_fields("exclusive_min"))
@pytest.mark.parametrize("raw", ["0", "0.0", "-1"])
def test_exclusive_minimum(name: str, raw: str) -> None:
    bound = FIELDS[name][1].metadata["exclusive_min"]
    message = config_error({**BASE, name: raw})
    assert message.startswith(f"Hyperparameter {name}=")
    assert message.endswith(f"must be greater than {bound}.")
    assert value_of(name, "1e-6") == pytest.approx(1e-6)


@pytest.mark.parametrize("name", _checked_fields("choices"))
def test_choices(name: str) -> None:
    choices = FIELDS[name][1].metadata["choices"]
    message = config_error({**BASE, name: "bogus"})
    assert message.startswith(f"Hyperparameter {name}='bogus' is not one of: ")
    for choice in choices:
        if choice is not None:
            assert choice in message
            context = _CONTEXT.get(name, {})
            assert value_of(name, json.dumps(choice), **context) == choice  # JSON-encoded
            assert value_of(name, choice, **context) == choice  # plain
    assert "None" not in message  # None is accepted but not advertised as a word


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"dropout": "-0.1"}, ["dropout=-0.1", "below its minimum 0.0"]),
        ({"dropout": "0.95"}, ["dropout=0.95", "above its maximum 0.9"]),
        ({"learning_rate": "0"}, ["learning_rate=0", "greater than 0.0"]),
        ({"learning_rate": "11"}, ["learning_rate=11", "above its maximum 10.0"]),
        ({"limit_train_batches": "0"}, ["limit_train_batches=0", "greater than 0.0"]),
        ({"batch_size": "0"}, ["batch_size=0", "below its minimum 1"]),
        ({"master_port": "70000"}, ["master_port=70000", "above its maximum 65535"]),
        ({"collective_timeout_s": "5"}, ["collective_timeout_s=5", "below its minimum 10"]),
        ({"optimizer": "ranger"}, ["optimizer='ranger'", "adam, adamw, sgd"]),
        ({"precision": "16"}, ["precision='16'", "auto, 32, bf16-mixed, 16-mixed"]),
        ({"target_transformation": "sqrt"}, ["softplus, log, log1p, relu, logit"]),
    ],
)
def test_range_messages(values: dict[str, str], words: list[str]) -> None:
    message = config_error({**BASE, **values})
    for word in words:
        assert word in message


def test_range_checks_apply_to_file_values_and_presets() -> None:
    message = config_error(BASE, file_values={"dropout": 2.0})
    assert message == "Hyperparameter dropout=2.0 is above its maximum 0.9."
    presets = {"bad": {"target": "y", "group_ids": ["g"], "batch_size": 0}}
    message = config_error({"preset": "bad"}, presets=presets)
    assert message == "Hyperparameter batch_size=0 is below its minimum 1."


# --------------------------------------------------------------------------------------------
# Cross-field rules (_check_consistency)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"group_ids": "s"}, ["No target column", "'target'", "stallion, synthetic"]),
        ({"target": "y"}, ["No group_ids"]),
        ({**BASE, "group_ids": "[]"}, ["No group_ids"]),
        ({**BASE, "date_column": "day"}, ["date_column='day' needs freq"]),
        ({**BASE, "freq": "D"}, ["freq is set but date_column is not"]),
        (
            {**BASE, "min_encoder_length": "13", "max_encoder_length": "12"},
            ["min_encoder_length=13 exceeds max_encoder_length=12"],
        ),
        (
            {**BASE, "min_prediction_length": "7", "max_prediction_length": "6"},
            ["min_prediction_length=7 exceeds max_prediction_length=6"],
        ),
        (
            {**BASE, "static_reals": "size", "time_varying_known_reals": "size"},
            ["Column 'size'", "static_reals", "time_varying_known_reals"],
        ),
        (
            {**BASE, "static_categoricals": "a", "time_varying_unknown_categoricals": "b,a"},
            ["Column 'a'", "static_categoricals", "time_varying_unknown_categoricals"],
        ),
        (
            {**BASE, "time_varying_known_reals": "price,y"},
            ["target 'y' cannot be a known real"],
        ),
        (
            {**BASE, "variable_groups": "{'g': ['a']}"},
            ["variable_groups['g']", "not listed in any *_categoricals"],
        ),
        (
            {**BASE, "variable_groups": "{'g': ['a']}", "static_reals": "g"},
            ["variable_groups['g']", "not listed in any *_categoricals"],
        ),
        (
            {**BASE, "variable_groups": "{'g': []}", "static_categoricals": "g"},
            ["variable_groups['g'] is empty"],
        ),
        ({**BASE, "quantiles": "[0.1, 0.9]"}, ["quantiles=[0.1, 0.9]", "include 0.5"]),
        ({**BASE, "quantiles": "[0.9, 0.5, 0.1]"}, ["must be increasing"]),
        ({**BASE, "quantiles": "[0.0, 0.5]"}, ["strictly between 0 and 1"]),
        ({**BASE, "quantiles": "[0.5, 1.0]"}, ["strictly between 0 and 1"]),
        (
            {**BASE, "hidden_size": "10", "attention_head_size": "4"},
            ["hidden_size=10 must be divisible by attention_head_size=4"],
        ),
        ({**BASE, "limit_train_batches": "1.01"}, ["fraction above 1"]),
    ],
)
def test_consistency_rules(values: dict[str, str], words: list[str]) -> None:
    message = config_error(values)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"date_column": "day", "freq": "D"}, {"date_column": "day", "freq": "D"}),
        (
            {"min_encoder_length": "12", "max_encoder_length": "12"},
            {"min_encoder_length": 12, "max_encoder_length": 12},
        ),
        (
            {"min_prediction_length": "6", "max_prediction_length": "6"},
            {"min_prediction_length": 6, "max_prediction_length": 6},
        ),
        (
            {"time_varying_unknown_reals": "y", "time_varying_known_reals": "time_idx"},
            {"time_varying_unknown_reals": ["y"], "time_varying_known_reals": ["time_idx"]},
        ),
        (
            {"static_categoricals": "g", "variable_groups": "{'g': ['a', 'b']}"},
            {"static_categoricals": ["g"], "variable_groups": {"g": ["a", "b"]}},
        ),
        ({"quantiles": "[0.5]"}, {"quantiles": [0.5]}),
        (
            {"hidden_size": "12", "attention_head_size": "4"},
            {"hidden_size": 12, "attention_head_size": 4},
        ),
        ({"limit_train_batches": "1.0"}, {"limit_train_batches": 1.0}),
    ],
)
def test_consistent_values_pass(values: dict[str, str], expected: dict[str, Any]) -> None:
    flat = build(**values).flat()
    assert {name: flat[name] for name in expected} == expected
    # limit_train_batches=1.0 is a fraction (every batch), 1 would be one batch: types count.
    assert [type(flat[name]) for name in expected] == [type(v) for v in expected.values()]


def test_defaults() -> None:
    config = build()
    defaults = JobConfig(
        data=DataConfig(target="y", group_ids=["series"]),
        model=ModelConfig(),
        training=TrainingConfig(),
        speedups=SpeedupConfig(),
        distributed=DistributedConfig(),
    )
    assert config == defaults
    assert config.data.resolved_min_encoder_length == 12
    # Left to the default recipe, which chooses them from the data (recipe.py).
    assert config.data.target_normalizer == "auto"
    assert config.training.max_epochs is None
    assert config.model.learning_rate is None
    # Mutable defaults are not shared between configurations.
    config.model.quantiles.append(0.99)
    assert build().model.quantiles == [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98]


# --------------------------------------------------------------------------------------------
# Precedence: defaults < preset < file < hyperparameters
# --------------------------------------------------------------------------------------------
PRESETS = {"small": {"target": "y", "group_ids": ["g"], "max_epochs": 10, "dropout": 0.3}}


@pytest.mark.parametrize(
    ("hyperparameters", "file_values", "max_epochs", "dropout"),
    [
        ({**BASE}, {}, None, None),  # defaults: the recipe's to choose
        ({"preset": "small"}, {}, 10, 0.3),  # preset over defaults
        ({"preset": "small"}, {"max_epochs": 5}, 5, 0.3),  # file over preset
        ({"preset": "small", "max_epochs": "3"}, {"max_epochs": 5}, 3, 0.3),  # CLI over file
        ({"max_epochs": "3"}, {"preset": "small", "max_epochs": 5, "dropout": 0.2}, 3, 0.2),
        ({**BASE}, {"dropout": 0.2}, None, 0.2),  # file over defaults
    ],
)
def test_precedence(
    hyperparameters: dict[str, Any],
    file_values: dict[str, Any],
    max_epochs: int | None,
    dropout: float | None,
) -> None:
    config = build_config(hyperparameters, file_values, PRESETS)
    assert config.training.max_epochs == max_epochs
    assert config.model.dropout == dropout


def test_hyperparameter_preset_wins_over_the_file_preset() -> None:
    presets = {**PRESETS, "other": {**PRESETS["small"], "max_epochs": 7}}
    config = build_config({"preset": '"other"'}, {"preset": "small"}, presets)
    assert config.data.preset == "other"
    assert config.training.max_epochs == 7


@pytest.mark.parametrize("name", sorted(PRESET_VALUES))
def test_builtin_presets_resolve(name: str) -> None:
    config = build_config({"preset": name}, {}, PRESET_VALUES)
    flat = config.flat()
    for key, value in PRESET_VALUES[name].items():
        assert flat[key] == value, key
    assert config.data.preset == name


@pytest.mark.parametrize("name", sorted(PRESET_VALUES))
def test_resolved_config_round_trips_through_json(name: str) -> None:
    """What artifacts.py stores in config.json and loads back for prediction."""
    config = build_config({"preset": name, "max_epochs": "2", "dropout": "0.2"}, {}, PRESET_VALUES)
    saved = json.loads(json.dumps(config.to_dict()))
    flat = {k: v for section in saved.values() for k, v in section.items()}
    assert build_config({}, flat, PRESET_VALUES) == config


@pytest.mark.parametrize("raw", ["stalion", '"nope"'])
def test_unknown_preset_lists_the_presets(raw: str) -> None:
    message = config_error({"preset": raw}, presets=PRESET_VALUES)
    name = raw.strip('"')
    assert message == f"Unknown preset '{name}'. Available: stallion, synthetic."


def test_unknown_preset_without_presets() -> None:
    assert "Unknown preset 'small'" in config_error({"preset": "small"})


def test_preset_none_words_mean_no_preset() -> None:
    assert build(preset="None").data.preset is None


def test_config_is_checked_after_merging() -> None:
    """A rule that spans layers: the file's min_encoder_length against the CLI's maximum."""
    message = config_error(
        {**BASE, "max_encoder_length": "4"}, file_values={"min_encoder_length": 8}
    )
    assert "min_encoder_length=8 exceeds max_encoder_length=4" in message


def test_every_field_has_help_and_a_unique_name() -> None:
    names = [
        f.name
        for cls in (
            DataConfig,
            ModelConfig,
            TrainingConfig,
            SpeedupConfig,
            DistributedConfig,
            ReportConfig,
        )
        for f in dataclasses.fields(cls)
    ]
    assert len(names) == len(set(names)) == len(FIELDS)
    assert all(FIELDS[n][1].metadata.get("help") for n in names)


@pytest.mark.parametrize("raw", ["1", 1, "1.0", '"1"'])
def test_float_fields_stay_floats(raw: Any) -> None:
    value = build_config({**BASE, "learning_rate": raw}).model.learning_rate
    assert value == 1.0 and type(value) is float


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"calendar_features": "month,weekday"}, "calendar_features: 'weekday' unknown; give any"),
        ({"calendar_features": "month"}, "calendar_features=month needs date_column and freq"),
    ],
)
def test_calendar_features_are_checked(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({**BASE, **values})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, r"seasonal_input=true: .* when a season \(none: season_length"),
        (
            {"date_column": "d", "freq": "D", "max_prediction_length": "14"},
            r"a season \(7 steps: .*\) is at least max_prediction_length=14",
        ),
    ],
)
def test_a_seasonal_input_needs_a_season_as_long_as_the_horizon(
    values: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({**BASE, "seasonal_input": "true", **values})
    assert build_config({**BASE, **values, "seasonal_input": "true", "season_length": "14"})


@pytest.mark.parametrize(
    ("given", "parsed"),
    [
        ("auto", ["auto"]),
        ("none", ["none"]),
        ("", []),
        ("month, day_of_week", ["month", "day_of_week"]),
    ],
)
def test_calendar_features_values(given: str, parsed: list[str]) -> None:
    daily = {**BASE, "date_column": "day", "freq": "D"}
    assert build_config({**daily, "calendar_features": given}).data.calendar_features == parsed
