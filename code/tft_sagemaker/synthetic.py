"""A synthetic retail panel: the built-in default data, needing no network.

Weekly unit sales of products in stores, driven by what drives real demand: a per-series level
and trend, yearly seasonality, price elasticity, promotions and holidays, with multiplicative
noise. Column names and frequency differ from Stallion on purpose, so the default run also
shows that datasets are described by configuration, not code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# (name, month, day) of fixed-date holidays, and their demand lift.
HOLIDAYS = (("new_year", 1, 1), ("valentine", 2, 14), ("independence", 7, 4), ("christmas", 12, 25))
HOLIDAY_LIFT = {
    "none": 0.0,
    "new_year": 0.25,
    "valentine": 0.15,
    "independence": 0.3,
    "christmas": 0.6,
}
CATEGORIES = ("beverages", "snacks", "dairy", "household")


def _holiday_of_week(weeks: pd.DatetimeIndex) -> np.ndarray:
    """Name of the holiday falling in each week (starting Monday), or 'none'."""
    labels = np.full(len(weeks), "none", dtype=object)
    for name, month, day in HOLIDAYS:
        for year in sorted(set(weeks.year) | {weeks.year.max() + 1}):
            date = pd.Timestamp(year=year, month=month, day=day)
            hit = (weeks <= date) & (date < weeks + pd.Timedelta(days=7))
            labels[hit] = name
    return labels


def _spread(labels: pd.Categorical, times: int, repeat: bool) -> pd.Categorical:
    """`labels` with each value repeated `times` times (`repeat`) or the whole tiled."""
    codes = (np.repeat if repeat else np.tile)(labels.codes, times)
    return pd.Categorical.from_codes(codes, categories=labels.categories)


def make_panel(
    n_stores: int = 30,
    n_products: int = 10,
    n_weeks: int = 104,
    seed: int = 0,
    start: str = "2022-01-03",
) -> pd.DataFrame:
    """One row per (store, product, week); `sales` is the target."""
    rng = np.random.default_rng(seed)
    weeks = pd.date_range(start, periods=n_weeks, freq="W-MON")
    n_series = n_stores * n_products
    store = np.repeat(np.arange(n_stores), n_products)
    product = np.tile(np.arange(n_products), n_stores)

    store_size = rng.uniform(0.5, 2.0, n_stores)[store]
    product_base = rng.lognormal(mean=3.5, sigma=0.6, size=n_products)[product]
    level = product_base * store_size * rng.lognormal(0.0, 0.2, n_series)
    trend = rng.normal(0.002, 0.003, n_series)
    elasticity = rng.uniform(-2.5, -0.8, n_products)[product]
    promo_lift = rng.uniform(0.2, 0.8, n_products)[product]
    season_phase = rng.uniform(0, 2 * np.pi, n_products)[product]
    season_amp = rng.uniform(0.05, 0.35, n_products)[product]
    regular_price = rng.uniform(1.0, 10.0, n_products)[product]

    t = np.arange(n_weeks)[None, :]
    promo = rng.random((n_series, n_weeks)) < 0.12
    discount = np.where(promo, rng.uniform(0.1, 0.35, (n_series, n_weeks)), 0.0)
    discount += np.abs(rng.normal(0.0, 0.02, (n_series, n_weeks)))  # everyday price noise
    price = regular_price[:, None] * (1.0 - discount)
    holiday = _holiday_of_week(weeks)
    holiday_lift = np.array([HOLIDAY_LIFT[h] for h in holiday])[None, :]

    seasonality = 1.0 + season_amp[:, None] * np.sin(2 * np.pi * t / 52.0 + season_phase[:, None])
    demand = (
        level[:, None]
        * (1.0 + trend[:, None] * t)
        * seasonality
        * (price / regular_price[:, None]) ** elasticity[:, None]
        * (1.0 + promo_lift[:, None] * promo)
        * (1.0 + holiday_lift)
        * rng.lognormal(0.0, 0.15, (n_series, n_weeks))
    )
    sales = np.round(np.clip(demand, 0.0, None), 1)

    # The labels as categoricals made of codes per row, not of a string per row (gigabytes
    # of them at tens of millions of rows), with astype("category")'s sorted categories.
    def per_series(labels: list[str]) -> pd.Categorical:
        return _spread(pd.Categorical(labels), n_weeks, repeat=True)

    def per_week(labels: list[str]) -> pd.Categorical:
        return _spread(pd.Categorical(labels), n_series, repeat=False)

    frame = pd.DataFrame(
        {
            "store": per_series([f"store_{s:03d}" for s in store]),
            "product": per_series([f"product_{p:02d}" for p in product]),
            "category": per_series([CATEGORIES[p % len(CATEGORIES)] for p in product]),
            "week": np.tile(weeks, n_series),
            "sales": sales.ravel(),
            "price": np.round(price, 3).ravel(),
            "discount_pct": np.round(100 * discount, 2).ravel(),
            "promo": pd.Categorical.from_codes(
                promo.ravel().astype(np.int8), categories=["-", "promo"]
            ).remove_unused_categories(),
            "holiday": per_week(list(holiday)),
            "store_size": np.repeat(np.round(store_size, 3), n_weeks),
            "month": per_week([str(m) for m in weeks.month]),
        }
    )
    return frame
