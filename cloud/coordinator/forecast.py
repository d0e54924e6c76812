"""Arrival-rate forecasts for the predictive autoscaler: Holt's linear trend plus a repeating pattern.

When the history is long enough to hold a repeating pattern (found by autocorrelation), the
forecast is the rate observed one period earlier at the target time, scaled by the current level;
otherwise Holt's double exponential smoothing extrapolates the trend.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HOLT_MEMORY = 200


def holt(rates: Sequence[float], horizon_steps: float, alpha: float = 0.5, beta: float = 0.3) -> float:
    level, trend = float(rates[0]), 0.0
    for x in rates[1:]:
        previous = level
        level = alpha * x + (1 - alpha) * (level + trend)
        trend = beta * (level - previous) + (1 - beta) * trend
    return max(0.0, level + horizon_steps * trend)


def season_length(rates: Sequence[float], min_lag: int = 10, min_corr: float = 0.6) -> int | None:
    """The lag (in samples) of the strongest autocorrelation above ``min_corr``, if the history holds 2 periods."""
    x = np.asarray(rates, float)
    if len(x) < 2 * min_lag or x.std() == 0:
        return None
    x = x - x.mean()
    n = len(x)
    lags = np.arange(min_lag, n // 2 + 1)
    # every lag at once: products by FFT, each side's energy from cumulative sums (O(n log n); a loop
    # over lags was O(n^2) and, with an hour of history, took most of a coordinator tick)
    spectrum = np.fft.rfft(x, 2 * n)
    products = np.fft.irfft(spectrum * np.conj(spectrum), 2 * n)[lags]
    energy = np.cumsum(x * x)
    denom = np.sqrt(energy[n - lags - 1] * (energy[-1] - energy[lags - 1]))
    corr = np.divide(products, denom, out=np.zeros_like(products), where=denom > 0)
    if not corr.size or corr.max() <= min_corr:
        return None
    return int(lags[int(np.argmax(corr))])


def trailing_mean(rates: Sequence[float], width: int) -> np.ndarray:
    x = np.asarray(rates, float)
    return np.convolve(x, np.ones(width))[: len(x)] / width


def forecast_rate(rates: Sequence[float], horizon_s: float, period_s: float, window_s: float | None = None) -> float:
    """Arrival rate expected ``horizon_s`` from the last sample.

    ``rates`` are raw per-period rates. Arrivals are sparse counts (0 or 1 in most periods), so the
    trend is fitted to their trailing mean over ``window_s`` and a repeating pattern is read as the
    mean over ``window_s`` around the target phase one season ago; raw counts would turn a single
    new session into a burst."""
    steps = horizon_s / period_s
    width = max(1, round((window_s or period_s) / period_s))
    # Holt forgets geometrically (alpha 0.5): what lies further back than HOLT_MEMORY samples weighs
    # less than 1e-60 and is left out (a loop over an hour of history took most of a tick)
    trend = holt(trailing_mean(rates, width)[-HOLT_MEMORY:], steps)
    season = season_length(rates)
    if season is None:
        return trend
    # the same phase one season ago, and its neighbourhood, as the shape of what comes next
    idx = len(rates) - season + int(round(steps))
    window = rates[max(0, idx - width // 2) : idx + width // 2 + 1]
    seasonal = float(np.mean(window)) if len(window) else trend
    return max(trend, seasonal)
