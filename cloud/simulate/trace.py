"""Arrival traces: any CSV with a time column, as seconds from the first arrival.

The column holds either absolute date-times (``--time-format`` in ``strptime`` syntax; fractional
seconds may have any number of digits, e.g. Azure's 7) or numbers in a unit (``--time-unit ms|s``).
Without either, numbers are read as seconds and anything else as an ISO 8601 date-time. Rows are
sorted; month-long spans and long idle stretches are fine (the simulator steps through the
arrivals, not through empty seconds). ``scale`` multiplies the load: each arrival becomes
``floor(k)`` arrivals, plus one more with probability ``k - floor(k)`` (seeded); the first keeps
the arrival's time, the others fall at random in the gap before the next arrival, so the trace's
bursts and idle stretches keep their shape. ``speedup`` compresses time.
"""

from __future__ import annotations

import csv
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from splitasr.shared.errors import ConfigError

UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}
_FRACTION = re.compile(r"(\.\d{6})\d+")  # strptime's %f takes at most 6 digits


def _datetime_seconds(text: str, fmt: str | None) -> float:
    text = _FRACTION.sub(r"\1", text.strip())
    stamp = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def load_arrivals(
    path: str | Path, time_column: str, time_format: str | None = None, time_unit: str | None = None
) -> np.ndarray:
    """Arrival times (s) from the first arrival, sorted; a :class:`ConfigError` names a bad row."""
    if time_format and time_unit:
        raise ConfigError("give the time column's format (date-times) or its unit (numbers), not both")
    if time_unit is not None and time_unit not in UNITS:
        raise ConfigError(f"time unit {time_unit!r} unknown; units are {', '.join(UNITS)}")
    try:
        handle = Path(path).open(newline="")
    except OSError as exc:
        raise ConfigError(f"cannot read trace {path}: {exc}") from None
    values = []
    with handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or time_column not in reader.fieldnames:
            raise ConfigError(f"trace {path} has no column {time_column!r}; columns: {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            text = (row.get(time_column) or "").strip()
            if not text:
                continue
            try:
                if time_format:
                    values.append(_datetime_seconds(text, time_format))
                elif time_unit:
                    values.append(float(text) * UNITS[time_unit])
                else:
                    try:
                        values.append(float(text))
                    except ValueError:
                        values.append(_datetime_seconds(text, None))
            except ValueError as exc:
                raise ConfigError(f"trace {path} line {line}: cannot read time {text!r} ({exc})") from None
    if not values:
        raise ConfigError(f"trace {path} has no arrivals in column {time_column!r}")
    times = np.sort(np.asarray(values, dtype=np.float64))
    if not np.all(np.isfinite(times)):
        raise ConfigError(f"trace {path}: time column {time_column!r} holds non-finite values")
    return times - times[0]


def transform(arrivals: np.ndarray, scale: float = 1.0, speedup: float = 1.0, seed: int = 0) -> np.ndarray:
    """Arrivals with the load multiplied by ``scale`` and time divided by ``speedup``."""
    if not (math.isfinite(scale) and 0 < scale <= 1e6 and math.isfinite(speedup) and 0 < speedup <= 1e6):
        raise ConfigError(f"scale and speedup must be in (0, 1e6], got {scale}, {speedup}")
    times = np.asarray(arrivals, dtype=np.float64) / speedup
    if times.size == 0 or scale == 1.0:
        return times
    rng = np.random.default_rng(seed)
    whole = math.floor(scale)
    copies = whole + (rng.random(times.size) < scale - whole).astype(np.int64)
    mean_gap = (times[-1] - times[0]) / max(1, times.size - 1)
    gaps = np.diff(times, append=times[-1] + mean_gap)
    kept = times[copies >= 1]  # the first copy keeps the trace's own time
    extra = np.maximum(copies - 1, 0)
    spread = np.repeat(times, extra) + np.repeat(gaps, extra) * rng.random(int(extra.sum()))  # before the next
    out = np.sort(np.concatenate([kept, spread]))
    return out - out[0] if out.size else out
