"""The target's unit: the model sees the target divided by `target_unit`, a power of ten chosen
from the training data, and forecasts are multiplied back, so that the unit the user measures
the target in changes nothing but the unit of the forecasts and of the errors.

pytorch-forecasting and torch hold absolute constants that assume values of a usual size: the
target normalisers add float16's epsilon (9.8e-4) to every scale, Adam adds 1e-8 to its
denominators, SMAPE and MAPE add 1e-8 to theirs, and float32's squares overflow from about 1e19.
A panel of values about 1e-8 trained to a validation MAE 70,000 times the naive forecast's. With
the unit chosen here, the model sees a median series spread between 10 and 100 whatever the
unit, where those constants are negligible and where the presets were tuned (Stallion's spread
is 55, the synthetic panel's 16 to 27: their unit is 1, so they train as before).

The datasets take the target through `in_model_unit` (one place, before the library sees the
frame); `evaluate.forecast` multiplies forecasts and actuals back, so that metrics, baselines,
the report, `predict` and the `forecast` channel are all in the data's unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

# The model sees a median series standard deviation in [SPREAD, 10 * SPREAD).
SPREAD = 10.0


def target_spread(frame: pd.DataFrame, group_ids: Sequence[str], target: str) -> float:
    """Median over series of the target's standard deviation (series that vary); for a panel of
    constant series, the median non-zero |target|; 0 for a target of zeros."""
    deviations = frame.groupby(list(group_ids), observed=True)[target].std().to_numpy()
    deviations = deviations[np.isfinite(deviations) & (deviations > 0)]
    if len(deviations):
        return float(np.median(deviations))
    values = np.abs(frame[target].to_numpy(dtype=float, na_value=np.nan))
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.median(values)) if len(values) else 0.0


def unit_for(spread: float) -> float:
    """The power of ten `u` with `spread / u` in [SPREAD, 10 * SPREAD); 1 without a spread."""
    if not (math.isfinite(spread) and spread > 0):
        return 1.0
    return 10.0 ** (math.floor(math.log10(spread / SPREAD)))


def in_model_unit(frame: pd.DataFrame, target: str, unit: float) -> pd.DataFrame:
    """`frame` with its target divided by `unit` (unchanged for 1)."""
    if unit == 1.0:
        return frame
    return frame.assign(**{target: frame[target].to_numpy(dtype=float) / unit})
