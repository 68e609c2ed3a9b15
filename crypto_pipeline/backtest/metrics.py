"""Performance metrics and their significance.

Ratios are annualized with crypto's 365-day year from the bar frequency. Confidence intervals come from
a stationary block bootstrap (`arch.bootstrap`), which resamples blocks of consecutive returns and so
keeps the serial structure a plain bootstrap would destroy. The deflated Sharpe ratio (Bailey and
Lopez de Prado, 2014) discounts the best Sharpe for the number of policies and parameter sets tried.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import vectorbt as vbt
from arch.bootstrap import StationaryBootstrap
from scipy import stats

YEAR = pd.Timedelta(days=365)
EULER_GAMMA = 0.5772156649015329


def periods_per_year(index: pd.DatetimeIndex) -> float:
    step = pd.Series(index).diff().median() if len(index) > 1 else pd.Timedelta(hours=1)
    return YEAR / step


def sharpe(returns: np.ndarray, ppy: float) -> float:
    r = np.asarray(returns, dtype=float)
    sd = r.std(ddof=1) if r.size > 1 else 0.0
    return float(r.mean() / sd * math.sqrt(ppy)) if sd > 0 else 0.0


def sortino(returns: np.ndarray, ppy: float) -> float:
    r = np.asarray(returns, dtype=float)
    downside = np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)) if r.size else 0.0
    return float(r.mean() / downside * math.sqrt(ppy)) if downside > 0 else 0.0


def max_drawdown(equity: np.ndarray) -> float:
    """Largest fall from a peak, as a positive fraction."""
    e = np.asarray(equity, dtype=float)
    if e.size == 0:
        return 0.0
    peaks = np.maximum.accumulate(e)
    return float(np.max(1 - e / peaks))


def drawdown_series(equity: pd.Series) -> pd.Series:
    return equity / equity.cummax() - 1


def summarize(portfolio: vbt.Portfolio, *, equity: pd.Series | None = None) -> dict[str, float]:
    """Every headline metric of one (grouped) portfolio."""
    value = equity if equity is not None else _one(portfolio.value())
    ppy = periods_per_year(value.index)
    returns = value.pct_change().fillna(0.0).to_numpy()
    total = float(value.iloc[-1] / value.iloc[0] - 1)
    years = max((value.index[-1] - value.index[0]) / YEAR, 1e-9)
    annual = float((1 + total) ** (1 / years) - 1) if total > -1 else -1.0
    mdd = max_drawdown(value.to_numpy())
    trades = portfolio.trades.records_arr
    pnl = trades["pnl"] if len(trades) else np.array([])
    wins, losses = pnl[pnl > 0].sum(), -pnl[pnl < 0].sum()
    orders = portfolio.orders.records_arr
    traded = float(np.sum(np.abs(orders["size"]) * orders["price"])) if len(orders) else 0.0
    held_bars = (trades["exit_idx"] - trades["entry_idx"]) if len(trades) else np.array([])
    bar_hours = (value.index[1] - value.index[0]) / pd.Timedelta(hours=1) if len(value) > 1 else 1.0
    asset_value = _one(portfolio.asset_value())
    return {
        "final_equity": float(value.iloc[-1]),
        "total_return": total,
        "annualized_return": annual,
        "sharpe": sharpe(returns, ppy),
        "sortino": sortino(returns, ppy),
        "calmar": annual / mdd if mdd > 0 else 0.0,
        "max_drawdown": mdd,
        "win_rate": float((pnl > 0).mean()) if pnl.size else 0.0,
        "profit_factor": float(wins / losses) if losses > 0 else (math.inf if wins > 0 else 0.0),
        "exposure": float((asset_value / value).mean()),
        "turnover": traded / float(value.mean()),
        "fees_paid": float(orders["fees"].sum()) if len(orders) else 0.0,
        "trades": int(len(trades)),
        "avg_holding_hours": float(held_bars.mean() * bar_hours) if held_bars.size else 0.0,
    }


def _one(frame: pd.Series | pd.DataFrame) -> pd.Series:
    """A grouped portfolio's single curve, or the sum of per-column accounts."""
    return frame if isinstance(frame, pd.Series) else frame.sum(axis=1)


def bootstrap_ci(
    returns: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    *,
    block: float | None = None,
    reps: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of `statistic` under a stationary block bootstrap (mean block `block` bars,
    default the cube root of the sample, a common rule for dependent data)."""
    r = np.asarray(returns, dtype=float)
    if r.size < 10:
        return (math.nan, math.nan)
    bs = StationaryBootstrap(block or max(2.0, r.size ** (1 / 3)), r, seed=seed)
    values = np.array([statistic(data[0][0]) for data in bs.bootstrap(reps)])
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def sharpe_ci(returns: np.ndarray, ppy: float, **kw: object) -> tuple[float, float]:
    return bootstrap_ci(returns, lambda r: sharpe(r, ppy), **kw)  # type: ignore[arg-type]


def sharpe_difference_ci(
    a: np.ndarray, b: np.ndarray, ppy: float, *, reps: int = 500, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Interval of Sharpe(a) - Sharpe(b) with the same blocks drawn for both (paired in time)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = min(a.size, b.size)
    if n < 10:
        return (math.nan, math.nan)
    pair = np.column_stack([a[-n:], b[-n:]])
    bs = StationaryBootstrap(max(2.0, n ** (1 / 3)), pair, seed=seed)
    diffs = np.array([sharpe(d[0][0][:, 0], ppy) - sharpe(d[0][0][:, 1], ppy) for d in bs.bootstrap(reps)])
    alpha = (1 - level) / 2
    return float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))


def deflated_sharpe(returns: np.ndarray, trial_sharpes: Sequence[float]) -> float:
    """Probability that the true (per-period) Sharpe of `returns` exceeds the best expected by chance
    among `trial_sharpes` (per-period Sharpes of every policy and parameter set tried)."""
    r = np.asarray(returns, dtype=float)
    n = r.size
    if n < 3 or r.std(ddof=1) == 0:
        return 0.0
    sr = r.mean() / r.std(ddof=1)
    trials = np.asarray(list(trial_sharpes), dtype=float)
    k = max(len(trials), 1)
    var = trials.var(ddof=1) if k > 1 else 0.0
    if k > 1:
        sr0 = math.sqrt(var) * (
            (1 - EULER_GAMMA) * stats.norm.ppf(1 - 1 / k) + EULER_GAMMA * stats.norm.ppf(1 - 1 / (k * math.e))
        )
    else:
        sr0 = 0.0
    skew, kurt = float(stats.skew(r)), float(stats.kurtosis(r, fisher=False))
    denom = math.sqrt(max(1 - skew * sr + (kurt - 1) / 4 * sr**2, 1e-12))
    return float(stats.norm.cdf((sr - sr0) * math.sqrt(n - 1) / denom))


def per_period_sharpe(returns: np.ndarray) -> float:
    r = np.asarray(returns, dtype=float)
    sd = r.std(ddof=1) if r.size > 1 else 0.0
    return float(r.mean() / sd) if sd > 0 else 0.0
