"""What a job tells about its model: one self-contained page, its figures and the interpretation.

    output/data/report.html          headline numbers against the naive forecast, training
                                     curve, interpretation, forecast plots, configuration, data
    output/data/interpretation.json  variable importances and attention (interpret.py)
    output/data/figures/*.png        the page's figures (also in TensorBoard's Images tab)

    python -m tft_sagemaker.report MODEL [--output report.html]

The page is drawn from the model directory alone (metrics.json, config.json and
report_data.json, which the job saves there), so this command writes the same page for a saved
model, from a directory or SageMaker's model.tar.gz, with no data and no torch model at hand.
What needs the data (the interpretation, the forecast plots' series, the data summary) was
computed by the job on the validation windows and stored in report_data.json; a model saved
with `report=false` or by an older version lacks some of it, and the page says which.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import plots
from .artifacts import CONFIG_FILE, METRICS_FILE, REPORT_DATA_FILE, model_directory
from .config import FIELDS, DataConfig, JobConfig
from .errors import DataError, JobError
from .evaluate import Forecast, window_errors
from .interpret import GROUPS, series_names
from .job_data import JobData

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
INTERPRETATION_FILE = "interpretation.json"
FIGURES_DIR = "figures"
_LISTED = 50  # dropped series listed by name in the data summary


# --------------------------------------------------------------------------------------------
# Collected by the job (global rank 0), saved as report_data.json
# --------------------------------------------------------------------------------------------
def check_report_series(
    frame: pd.DataFrame,
    config: JobConfig,
    gather: Callable[[str, Any], list[Any]] | None = None,
) -> None:
    """Before training: every series named in `report_series` must be validated (on some host:
    `gather`, shares.Hosts.gather)."""
    if not config.report.report_series:
        return
    known = set(series_names(frame, config.data.group_ids).unique())
    if gather is not None:
        known = set().union(*gather("report_series", known & set(config.report.report_series)))
    missing = [name for name in config.report.report_series if name not in known]
    if missing:
        example = series_names(frame.head(1), config.data.group_ids).iloc[0]
        raise DataError(
            f"report_series names {len(missing)} series that are not in the validation data: "
            f"{', '.join(missing[:5])}; name each by its {'/'.join(config.data.group_ids)} "
            f"values joined by '/', e.g. '{example}'."
        )


def _time_values(frame: pd.DataFrame, config: DataConfig) -> pd.Series:
    """Dates as ISO text (with the time of day unless every one is midnight), else time_idx."""
    if not config.date_column:
        return frame[config.time_idx]
    dates = frame[config.date_column]
    midnight = bool((dates == dates.dt.normalize()).all())
    return dates.dt.strftime("%Y-%m-%d" if midnight else "%Y-%m-%dT%H:%M")


def _describe(frame: pd.DataFrame, config: DataConfig) -> dict[str, Any]:
    times = frame[config.date_column] if config.date_column else frame[config.time_idx]
    ends = _time_values(frame.loc[[times.idxmin(), times.idxmax()]], config).tolist()
    return {
        "rows": len(frame),
        "series": frame.groupby(config.group_ids, observed=True).ngroups,
        "first": ends[0],
        "last": ends[1],
    }


def data_summary(data: JobData, config: DataConfig) -> dict[str, Any]:
    """Series, rows and time span of the training and validation data; dropped series."""
    dropped = data.dropped
    if dropped is None:
        dropped = pd.DataFrame(columns=[*config.group_ids, "reason"])
    listed = dropped.head(_LISTED)
    return {
        "target": config.target,
        "group_ids": config.group_ids,
        "time": config.date_column or config.time_idx,
        "freq": config.freq,
        "train": _describe(data.train, config),
        "validation": _describe(data.validation, config),
        "dropped_count": len(dropped),
        "dropped": [
            {"series": name, "reason": reason}
            for name, reason in zip(
                series_names(listed, config.group_ids), listed["reason"], strict=True
            )
        ],
    }


def merged_summary(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """`data_summary`s of the hosts' shares (disjoint series) as the whole data's."""
    merged = dict(parts[0])
    for frame in ("train", "validation"):
        shares = [p[frame] for p in parts]
        merged[frame] = {
            "rows": sum(s["rows"] for s in shares),
            "series": sum(s["series"] for s in shares),
            "first": min(s["first"] for s in shares),
            "last": max(s["last"] for s in shares),
        }
    merged["dropped_count"] = sum(p["dropped_count"] for p in parts)
    merged["dropped"] = [d for p in parts for d in p["dropped"]][:_LISTED]
    return merged


def _floats(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def plotted_windows(result: Forecast, config: JobConfig) -> dict[int, str]:
    """The windows `plotted_series` plots, each with its role: the best, median and worst by
    MAE, and those of `report_series`."""
    order = np.argsort(window_errors(result, config.model.quantiles), kind="stable")
    names = series_names(result.index, config.data.group_ids).tolist()
    chosen: dict[int, str] = {}  # window → role; a window chosen twice keeps its first role
    for i, role in ((order[0], "best"), (order[len(order) // 2], "median"), (order[-1], "worst")):
        chosen.setdefault(int(i), role)
    for requested in config.report.report_series:
        chosen.setdefault(names.index(requested), "requested")
    return chosen


def _rows_of(frame: pd.DataFrame, series: pd.Series, group_ids: list[str]) -> np.ndarray:
    """Which rows of `frame` are of `series` (its group ids, compared as text as
    `series_names` compares them; a categorical column by its categories, not row by row)."""
    rows = np.ones(len(frame), dtype=bool)
    for name in group_ids:
        column, value = frame[name], str(series[name])
        if isinstance(column.dtype, pd.CategoricalDtype):
            codes = np.flatnonzero(column.cat.categories.astype(str) == value)
            rows &= np.isin(column.cat.codes.to_numpy(), codes)
        else:
            rows &= (column.astype(str) == value).to_numpy()
    return rows


def plotted_series(
    result: Forecast, frame: pd.DataFrame, config: JobConfig
) -> list[dict[str, Any]]:
    """The best, median and worst validation windows by MAE, and those of `report_series`:
    each window's history (as long as the encoder), actuals and forecast quantiles (`frame`:
    rows of at least those series)."""
    data = config.data
    errors = window_errors(result, config.model.quantiles)
    names = series_names(result.index, data.group_ids).tolist()
    chosen = plotted_windows(result, config)
    records = []
    for i, role in chosen.items():
        start, length = int(result.index[data.time_idx].iloc[i]), int(result.lengths[i])
        rows = frame[_rows_of(frame, result.index.iloc[i], data.group_ids)]
        first = start - data.max_encoder_length
        rows = rows[rows[data.time_idx].between(first, start + length - 1)]
        past = rows[data.time_idx] < start
        x = _time_values(rows, data)
        y = rows[data.target].to_numpy(dtype=float)
        records.append(
            {
                "series": names[i],
                "role": role,
                "mae": float(errors[i]),
                "dates": bool(data.date_column),
                "history": {"x": x[past].tolist(), "y": _floats(y[past.to_numpy()])},
                "forecast": {
                    "x": x[~past].tolist(),
                    "actual": _floats(y[~past.to_numpy()]),
                    "quantiles": {
                        f"{q:g}": _floats(result.quantiles[i, :length, j].numpy())
                        for j, q in enumerate(config.model.quantiles)
                    },
                },
            }
        )
    return records


# --------------------------------------------------------------------------------------------
# Drawn from the model directory
# --------------------------------------------------------------------------------------------
@dataclass
class SavedRun:
    """What the page is drawn from: the model directory's JSON files."""

    config: dict[str, dict[str, Any]]
    time_axis: dict[str, str] | None
    versions: dict[str, str]
    metrics: dict[str, Any]
    data: dict[str, Any]  # report_data.json (empty for models saved without it)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SavedRun:
        with model_directory(path) as directory:
            if not (directory / CONFIG_FILE).is_file():
                raise JobError(f"{path} is not a model of this project: missing {CONFIG_FILE}.")
            saved = json.loads((directory / CONFIG_FILE).read_text())

            def optional(name: str) -> dict[str, Any]:
                file = directory / name
                return json.loads(file.read_text()) if file.is_file() else {}

            return cls(
                saved["config"],
                saved.get("time_axis"),
                saved.get("versions", {}),
                optional(METRICS_FILE),
                optional(REPORT_DATA_FILE),
            )


_TITLES = {
    "static_variables": "Static variables",
    "encoder_variables": "Encoder variables (the past)",
    "decoder_variables": "Decoder variables (known in the forecast horizon)",
}


def figures(run: SavedRun) -> dict[str, bytes]:
    """The page's figures by name (also their file names), in the page's order."""
    drawn: dict[str, bytes] = {}
    if run.data.get("history"):
        drawn["training_curve"] = plots.training_curve(
            run.data["history"], run.metrics.get("baseline_val_MAE")
        )
    interpretation = run.data.get("interpretation")
    if interpretation:
        for group in GROUPS:
            if interpretation[group]:
                drawn[group] = plots.importance(_TITLES[group], interpretation[group])
        drawn["attention"] = plots.attention(
            interpretation["attention"]["relative_step"],
            interpretation["attention"]["weight"],
            "Attention of the first forecast step over the encoder steps",
        )
    for i, series in enumerate(run.data.get("series", [])):
        title = f"{series['series']}: {series['role']}, MAE {series['mae']:.4g}"
        drawn[f"forecast_{i}_{series['role']}"] = plots.forecast(series, title)
    return drawn


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1000px; padding: 1em 2em 4em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ddd; margin-top: 2em; }
nav a { margin-right: 1em; } .muted { color: #666; } .note { color: #8a5a00; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.better { color: #1a7f37; font-weight: 600; } .worse { color: #c0392b; font-weight: 600; }
.headline { font-size: 1.25em; margin: 0.6em 0; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.2em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""
_SCORES = (
    ("val_MAE", "MAE"),
    ("val_RMSE", "RMSE"),
    ("val_SMAPE", "SMAPE"),
    ("val_quantile_loss", "quantile loss"),
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else _e(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_number(c)}</td>' if isinstance(c, int | float) else f"<td>{c}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(figures: Mapping[str, bytes], name: str, alt: str) -> str:
    if name not in figures:
        return ""
    data = base64.b64encode(figures[name]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _missing(what: str) -> str:
    return (
        f'<p class="note">No {what} was saved with this model (trained with report=false or '
        "by an earlier version).</p>"
    )


def _headline(run: SavedRun) -> str:
    metrics = run.metrics
    if "val_MAE" not in metrics:
        return _missing("metrics.json")
    rows = []
    for key, label in _SCORES:
        if key not in metrics:
            continue
        model, naive = metrics[key], metrics.get(f"baseline_{key}")
        change = ""
        if naive:
            ratio = model / naive - 1
            change = f'<span class="{"better" if ratio < 0 else "worse"}">{ratio:+.1%}</span>'
        rows.append([label, model, naive if naive is not None else "", change])
    mae, naive = metrics["val_MAE"], metrics.get("baseline_val_MAE")
    verdict = ""
    if naive:
        better = mae < naive
        verdict = (
            f'<p class="headline">Validation MAE <b>{_number(mae)}</b> against '
            f"{_number(naive)} for the naive forecast (repeating the last value): "
            f'<span class="{"better" if better else "worse"}">{abs(1 - mae / naive):.1%} '
            f"{'lower' if better else 'higher'}</span>.</p>"
        )
    facts = [
        ("validation windows", metrics.get("validation_windows")),
        ("forecast points", metrics.get("validation_points")),
        ("best epoch", metrics.get("best_epoch")),
        ("epochs trained", metrics.get("epochs_trained")),
        ("processes", metrics.get("world_size")),
        ("training time (s)", metrics.get("fit_s")),
    ]
    listed = ", ".join(f"{k} {_number(v)}" for k, v in facts if v is not None)
    return (
        verdict
        + _table(["metric", "model", "naive", "change"], rows)
        + f'<p class="muted">{_e(listed)}. Lower is better for every metric; the naive '
        "forecast's quantiles all equal its point forecast.</p>" + _baselines(metrics)
    )


# Each baseline: its name in metrics.json's best_baseline, the prefix of its scores there, and
# its name on the page.
_BASELINES = (
    ("naive", "baseline_", "naive (last value)"),
    ("seasonal_naive", "seasonal_naive_", "seasonal naive"),
    ("ets", "ets_", "ETS"),
    ("theta", "theta_", "Theta"),
)


def _verdict(
    metrics: Mapping[str, Any], prefix: str, labels: Mapping[str, str], forecast: str
) -> str:
    """Whether one forecast (`prefix`: "" for the shipped one, "tft_" for the TFT alone) beats
    every baseline, in a sentence."""
    name = labels.get(metrics[f"{prefix}best_baseline"], metrics[f"{prefix}best_baseline"])
    margin = abs(metrics[f"{prefix}baseline_margin"])
    verdict = (
        f'<span class="better">beats every baseline</span>: {margin:.1%} lower MAE than the '
        f"strongest, {_e(name)}, on the same windows"
        if metrics[f"{prefix}beats_baselines"]
        else f'<span class="worse">does not beat {_e(name)}</span>: {margin:.1%} higher MAE '
        "on the same windows"
    )
    return f"{forecast} {verdict}"


def _baselines(metrics: Mapping[str, Any]) -> str:
    """The shipped forecast, the TFT alone and every baseline the job scored on the same
    windows (baselines.py), with the combination's weights (combination.py)."""
    if "beats_baselines" not in metrics:
        return ""
    labels = {key: label for key, _, label in _BASELINES}
    weights = metrics.get("ensemble_weights")
    if weights is None:  # the TFT alone was shipped
        rows = [["TFT", metrics["val_MAE"], metrics.get("val_MASE", "")]]
        header = ["forecast", "MAE", "MASE"]
        sentences = [
            _verdict(metrics, "", labels, "The TFT")
            + (
                ""
                if metrics["beats_baselines"]
                else ". A simpler model forecasts this data better: train longer, or check "
                "the schema and the recipe, or ship the combination (ensemble=true)"
            )
        ]
    else:
        rows = [
            ["shipped: the combination", metrics["val_MAE"], metrics.get("val_MASE", ""), 1.0],
            ["TFT alone", metrics["tft_val_MAE"], metrics["tft_val_MASE"], weights.get("tft", 0)],
        ]
        header = ["forecast", "MAE", "MASE", "weight"]
        sentences = [
            _verdict(metrics, "", labels, "The shipped forecast (the combination)"),
            _verdict(metrics, "tft_", labels, "The TFT alone"),
        ]
    key_of = {prefix: key for key, prefix, _ in _BASELINES}
    rows += [
        [label, metrics[f"{prefix}val_MAE"], metrics.get(f"{prefix}val_MASE", "")]
        + ([] if weights is None else [weights.get(key_of[prefix], 0)])
        for _, prefix, label in _BASELINES
        if f"{prefix}val_MAE" in metrics
    ]
    sampled = metrics.get("classical_windows")
    note = (
        f" ETS and Theta were fitted on a sample of {sampled:,} windows, and the forecasts are "
        "compared with them on that sample."
        if sampled and sampled < metrics.get("validation_windows", sampled)
        else ""
    )
    chosen = (
        ""
        if weights is None
        else f" The weights were chosen on the backtest window (the last steps of the training "
        f"data, {metrics.get('backtest_windows', 0):,} windows), never on these."
    )
    text = ". ".join(sentences) + "."
    return f"<p>{text}{_e(note + chosen)}</p>" + _table(header, rows)


def _shares(shares: Mapping[str, float], top: int = 3) -> str:
    return ", ".join(f"{_e(name)} {value:.0%}" for name, value in list(shares.items())[:top])


def _interpretation(run: SavedRun, figures: Mapping[str, bytes]) -> str:
    interpretation = run.data.get("interpretation")
    if not interpretation:
        return _missing("interpretation")
    parts = [
        f"<p>{_e(interpretation['method'])}; {interpretation['windows']:,} windows. The "
        "variable selection networks weigh each input per step; larger means the model "
        "relies on it more.</p>"
    ]
    for group in GROUPS:
        parts.append(_image(figures, group, _TITLES[group] + " importance"))
    parts.append(_image(figures, "attention", "attention by encoder step"))
    derived = interpretation.get("derived_variables", {})
    if derived:
        rows = [[f"<code>{_e(name)}</code>", _e(meaning)] for name, meaning in derived.items()]
        parts.append("<p>Inputs the model adds to the data's columns:</p>")
        parts.append(_table(["input", "what it is"], rows))
    largest = interpretation.get("largest_series", [])
    if largest:
        parts.append("<h3>The largest series (by total target), one by one</h3>")
        rows = [[_e(s["series"]), *(_shares(s[group]) for group in GROUPS)] for s in largest]
        parts.append(_table(["series", "static", "encoder", "decoder"], rows))
    return "".join(parts)


def _forecasts(run: SavedRun, figures: Mapping[str, bytes]) -> str:
    series = run.data.get("series")
    if not series:
        return _missing("forecast plot data")
    parts = [
        "<p>Validation windows: the best, median and worst series by MAE (and any named in "
        "<code>report_series</code>), with the history the model saw, the actuals and the "
        "forecast's quantile bands.</p>"
    ]
    for i, s in enumerate(series):
        parts.append(f"<h3>{_e(s['role'])}: {_e(s['series'])}, MAE {_number(s['mae'])}</h3>")
        parts.append(_image(figures, f"forecast_{i}_{s['role']}", f"forecast of {s['series']}"))
    return "".join(parts)


def _configuration(run: SavedRun) -> str:
    defaults = JobConfig().to_dict()
    rows_set, rows_all = [], []
    for section, values in run.config.items():
        for key, value in values.items():
            help_text = FIELDS[key][1].metadata["help"] if key in FIELDS else ""
            row = [
                f"<code>{_e(key)}</code>",
                f"<code>{_e(json.dumps(value))}</code>",
                _e(help_text),
            ]
            rows_all.append(row)
            if value != defaults.get(section, {}).get(key, value):
                rows_set.append(row)
    versions = ", ".join(f"{k} {v}" for k, v in run.versions.items())
    return (
        "<p>Set for this job (differing from the defaults):</p>"
        + _table(["hyperparameter", "value", "meaning"], rows_set)
        + "<details><summary>Every hyperparameter</summary>"
        + _table(["hyperparameter", "value", "meaning"], rows_all)
        + "</details>"
        + f'<p class="muted">{_e(versions)}</p>'
    )


def _data(run: SavedRun) -> str:
    summary = run.data.get("data")
    if not summary:
        return _missing("data summary")
    rows = [
        [name, part["series"], part["rows"], _e(part["first"]), _e(part["last"])]
        for name, part in (("train", summary["train"]), ("validation", summary["validation"]))
    ]
    text = (
        f"<p>Target <code>{_e(summary['target'])}</code>, series identified by "
        f"<code>{_e(', '.join(summary['group_ids']))}</code>, time "
        f"<code>{_e(summary['time'])}</code>"
        + (f" (frequency <code>{_e(summary['freq'])}</code>)" if summary.get("freq") else "")
        + ". Validation: the last forecast horizon of each series in it, with its history.</p>"
    )
    dropped = f"<p>Series dropped: {summary['dropped_count']}.</p>"
    if summary["dropped"]:
        listed = [[_e(d["series"]), _e(d["reason"])] for d in summary["dropped"]]
        more = summary["dropped_count"] - len(listed)
        dropped += _table(["series", "reason"], listed)
        dropped += f'<p class="muted">and {more} more.</p>' if more > 0 else ""
    return text + _table(["", "series", "rows", "first", "last"], rows) + dropped


_SECTIONS: tuple[tuple[str, str, Callable[[SavedRun, Mapping[str, bytes]], str]], ...] = (
    ("headline", "Headline", lambda run, _: _headline(run)),
    (
        "training",
        "Training",
        lambda run, figs: (
            _image(figs, "training_curve", "training curve") or _missing("per-epoch history")
        ),
    ),
    ("interpretation", "What the model looks at", _interpretation),
    ("forecasts", "Forecasts", _forecasts),
    ("configuration", "Configuration", lambda run, _: _configuration(run)),
    ("data", "Data", lambda run, _: _data(run)),
)


def render_html(run: SavedRun, figures: Mapping[str, bytes]) -> str:
    """The self-contained page: styles inline, figures as data: URIs, no script, no links
    but to its own sections."""
    data = run.config.get("data", {})
    series = ", ".join(data.get("group_ids", []))
    title = f"TFT forecasting report: {data.get('target')} by {series}"
    nav = "".join(f'<a href="#{key}">{_e(name)}</a>' for key, name, _ in _SECTIONS)
    body = "".join(
        f'<section id="{key}"><h2>{_e(name)}</h2>{render(run, figures)}</section>'
        for key, name, render in _SECTIONS
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{_e(title)}</h1><nav>{nav}</nav>{body}</body></html>\n"
    )


def write_report(model: str | os.PathLike[str], output: Path, figures_dir: Path | None) -> dict:
    """report.html at `output` from a saved model; with `figures_dir`, the figures as PNG files
    and interpretation.json beside them. Returns the figures by name."""
    run = SavedRun.load(model)
    drawn = figures(run)
    output.parent.mkdir(parents=True, exist_ok=True)
    if figures_dir is not None:
        figures_dir.mkdir(parents=True, exist_ok=True)
        for name, png in drawn.items():
            (figures_dir / f"{name}.png").write_bytes(png)
        if run.data.get("interpretation"):
            interpretation = json.dumps(run.data["interpretation"], indent=2)
            (output.parent / INTERPRETATION_FILE).write_text(interpretation)
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(render_html(run, drawn))
    os.replace(partial, output)
    return drawn


def write_job_report(model_dir: Path, output_dir: Path, interpretation_s: float) -> dict:
    """The job's report.html, figures and interpretation.json in output/data, from the model
    directory just written. A page that cannot be drawn is logged and does not fail the job:
    the model is saved, and this module's command can draw the page again later."""
    started = time.monotonic()
    try:
        drawn = write_report(model_dir, output_dir / REPORT_FILE, output_dir / FIGURES_DIR)
    except Exception:
        log.exception("report.html could not be written (the model is saved)")
        return {}
    log.info(
        "report: %s; interpretation %.2f s, figures and page %.2f s (report=false skips both)",
        output_dir / REPORT_FILE,
        interpretation_s,
        time.monotonic() - started,
    )
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tft_sagemaker.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model", type=Path, help="model directory or model.tar.gz")
    parser.add_argument("--output", type=Path, default=Path(REPORT_FILE), help="the page")
    args = parser.parse_args(argv)
    try:
        write_report(args.model, args.output, figures_dir=None)
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
