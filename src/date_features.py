"""Date and time columns as model inputs: a scikit-learn transformer, fit on the train rows.

A date is neither a number an MLP can use as written (days since 1970 are tens of thousands)
nor a category (each day would be a feature of its own few rows). ``DateFeatures`` turns each
date column into the time elapsed since the first train date, in years, and the position in
the cycles that repeat: the year, the week and, where the train rows' times of day differ,
the day, each as a sine and a cosine so that 31 December sits next to 1 January.

Text dates are ISO 8601 (2024-01-31, 2024-01-31 13:45, 2024-01-31T13:45:00+01:00) unless a
``strptime`` format is given. Times that carry an offset are compared in UTC. A value that
is not a date is missing (NaN), imputed by the pipeline's next step, as a number would be.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

ISO_DATE = re.compile(
    r"\d{4}-\d{1,2}-\d{1,2}"  # a date, then optionally a time and an offset
    r"([T ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?( ?(Z|UTC|[+-]\d{2}(:?\d{2})?))?)?"
)
# Day, month and year in another order (31/01/2024, 1.31.24): dates, but whose order only the
# user knows (dataset.date_format).
OTHER_DATE = re.compile(r"\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}([ T].*)?")
YEAR_DAYS = 365.2425  # the Gregorian calendar's mean year
DAY = pd.Timedelta(days=1)


def parse(values: Any, date_format: str | None = None) -> pd.Series:
    """``values`` (text or datetimes) as naive UTC datetimes; NaT where a value is no date."""
    series = pd.Series(values)
    if isinstance(series.dtype, pd.StringDtype):  # pandas' text columns: 30x a Python map
        series = series.str.strip()
    elif not pd.api.types.is_datetime64_any_dtype(series.dtype):
        series = series.astype(object).map(lambda v: v.strip() if isinstance(v, str) else v)
    parsed = pd.to_datetime(series, format=date_format or "ISO8601", errors="coerce", utc=True)
    return parsed.dt.tz_localize(None)


def holds_dates(values: pd.Series, date_format: str | None = None) -> bool:
    """Whether every value present is a date: a datetime column, or text that parses, all of
    it (ISO 8601 when no format is given). A column with one value that is not a date stays
    what it was (a category), and no number is ever taken for a date."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return True
    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        return False
    present = values.dropna()
    sample = _text_sample(present)
    if not sample:
        return False
    if date_format is None and not all(ISO_DATE.fullmatch(v.strip()) for v in sample):
        return False
    return bool(parse(present, date_format).notna().all())


def example_of_other_dates(values: pd.Series) -> str | None:
    """A value of a text column whose every sampled value looks like a date in an order that
    needs ``dataset.date_format``, for the start-up line that says so; None otherwise."""
    sample = _text_sample(values.dropna())
    if sample and all(OTHER_DATE.fullmatch(v.strip()) for v in sample):
        return sample[0].strip()
    return None


def _text_sample(present: pd.Series) -> list[str]:
    """The first 100 values present when all are text, else none: most text columns that
    hold no dates fail on these at once, before the whole column is parsed."""
    sample = present.head(100).tolist()
    return sample if all(isinstance(v, str) for v in sample) else []


class DateFeatures(TransformerMixin, BaseEstimator):
    """Each date column as years since the train rows' first date, and the sine and cosine
    of its place in the year, the week and (where the train rows' times differ) the day."""

    def __init__(self, date_format: str | None = None) -> None:
        self.date_format = date_format

    def fit(self, X: pd.DataFrame, y: Any = None) -> DateFeatures:
        frame = pd.DataFrame(X)
        self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        self.n_features_in_ = frame.shape[1]
        self.origins_: list[pd.Timestamp] = []
        self.with_time_: list[bool] = []
        for name in frame.columns:
            dates = parse(frame[name], self.date_format).dropna()
            origin = dates.min() if len(dates) else pd.Timestamp(0)
            self.origins_.append(origin.normalize())
            self.with_time_.append(bool((dates != dates.dt.normalize()).any()))
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        frame = pd.DataFrame(X)
        blocks = []
        for i, origin in enumerate(self.origins_):
            dates = parse(frame.iloc[:, i], self.date_format)
            day_part = (dates - dates.dt.normalize()) / DAY
            cycles = [
                (dates.dt.day_of_year - 1 + day_part) / YEAR_DAYS,
                (dates.dt.day_of_week + day_part) / 7,
            ]
            if self.with_time_[i]:
                cycles.append(day_part)
            columns = [(dates - origin) / DAY / YEAR_DAYS]
            for turn in cycles:
                angle = 2 * np.pi * turn.to_numpy(dtype=np.float64, na_value=np.nan)
                columns += [np.sin(angle), np.cos(angle)]
            blocks.append(np.column_stack([np.asarray(c, dtype=np.float64) for c in columns]))
        return np.hstack(blocks) if blocks else np.empty((len(frame), 0))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = []
        for name, with_time in zip(self.feature_names_in_, self.with_time_):
            cycles = ["year", "week"] + (["day"] if with_time else [])
            names += [f"{name}_years"]
            names += [f"{name}_{cycle}_{f}" for cycle in cycles for f in ("sin", "cos")]
        return np.asarray(names, dtype=object)
