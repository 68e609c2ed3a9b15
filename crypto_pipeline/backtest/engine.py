"""The backtest engine on vectorbt.

Conventions (the same for every policy): bars are keyed by their open time; a decision taken on the
close of bar t (= the open time of bar t+1) fills at the open of bar t+1. Fees default to the local
exchange's taker rate; slippage to its impact model (`trading.rules.SlippageModel`) for policy runs,
or a flat `slippage_bps`. Spot only: long or flat, never short. Many symbols at once.

Two entry points:
- `backtest_long_signals`: vectorized long/flat signals (ema_cross, rsi, buy-and-hold, LightGBM), one
  `vbt.Portfolio.from_signals` call for every symbol and parameter set at once.
- `run_policy`: any `DecisionProvider`, event by event, every decision through the risk engine (as
  live), then the resulting fills replayed by `vbt.Portfolio.from_orders` for the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import vectorbt as vbt

from crypto_pipeline.errors import UserInputError
from crypto_pipeline.execution import DecisionStep, MarketView, SimulatedVenue, data_age
from crypto_pipeline.execution.simulated import wide
from crypto_pipeline.journal.writer import Journal
from crypto_pipeline.llm.decision import TradeDecision
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely
from crypto_pipeline.market.recorded import folder_bars
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.risk import RiskEngine, RiskResult
from crypto_pipeline.state import MarketState
from crypto_pipeline.state.build import state_from_row
from crypto_pipeline.trading import Fill, OrderSide, rules

log = logging.getLogger(__name__)

INIT_CASH = 10_000.0
DEFAULT_FEE_BPS = rules.FeeSchedule().taker_bps  # market orders pay the local exchange's taker fee


# --- data ---------------------------------------------------------------------------------------


def load_bars(
    symbols: Sequence[str],
    timeframe: str,
    start: datetime | str,
    end: datetime | str,
    data_dir: Path | str,
) -> pl.DataFrame:
    """Recorded bars of `symbols` with open times in [start, end) from any recorded folder (Parquet or
    Alpaca CSVs; a missing coarser timeframe derived from a finer one): `market.recorded.folder_bars`.
    Clear errors for bad input, naming the folder, the symbols and the range it holds."""
    return folder_bars(data_dir, symbols, timeframe, start, end)


def _freq(index: pd.DatetimeIndex) -> pd.Timedelta:
    return pd.Series(index).diff().median() if len(index) > 1 else pd.Timedelta(hours=1)


# --- vectorized long/flat signals -----------------------------------------------------------------
def backtest_long_signals(
    open_: pd.DataFrame,
    close: pd.DataFrame,
    long: pd.DataFrame,
    *,
    fee_bps: float = DEFAULT_FEE_BPS,
    slippage_bps: float = 0.0,
    init_cash: float = INIT_CASH,
    group_by: object = None,
) -> vbt.Portfolio:
    """`long` at the close of bar t (True: be fully invested, False: be flat) traded at the open of
    t+1. Each column is its own account with `init_cash`; `group_by` sums columns into one curve.
    `long` may carry more columns than prices (a parameter grid): prices broadcast by symbol level."""
    held = long.shift(1).fillna(False).astype(bool)  # the position during bar t+1 is the signal at t
    open_b, close_b = open_, close
    if held.shape[1] != close.shape[1]:
        symbols = held.columns.get_level_values("symbol")
        open_b = open_.reindex(columns=symbols).set_axis(held.columns, axis=1)
        close_b = close.reindex(columns=symbols).set_axis(held.columns, axis=1)
    # A symbol without a bar cannot trade then (as at the venue): a NaN price makes vectorbt skip the
    # order, which the still-wanted state places again at the symbol's next bar. Valued at the last close.
    price = open_b
    return vbt.Portfolio.from_signals(
        close_b.ffill(),
        entries=held,
        exits=~held,
        price=price,
        fees=fee_bps / 10_000,
        slippage=slippage_bps / 10_000,
        init_cash=init_cash,
        direction="longonly",
        freq=_freq(close.index),
        group_by=group_by,
    )


def ema(close: pd.DataFrame, span: int) -> pd.DataFrame:
    """Exponential moving average with alpha 2/(span+1), seeded with the first close (recursive form)."""
    return close.ewm(span=span, adjust=False).mean()


def ema_cross_long(close: pd.DataFrame, fast: int = 9, slow: int = 21) -> pd.DataFrame:
    """`ema_cross` as the issue defines it: long while EMA(fast) > EMA(slow) at a bar's close."""
    if fast >= slow:
        raise UserInputError(f"--fast ({fast}) must be below --slow ({slow})")
    return ema(close, fast) > ema(close, slow)


# --- policy runs through the decision step -----------------------------------------------------
@dataclass
class PolicyRun:
    """Everything a policy run produced: the vectorbt portfolio, decisions, risk outcomes, fills and
    the journal (the rows a live session would have written, not yet in any warehouse)."""

    portfolio: vbt.Portfolio
    decisions: list[TradeDecision]
    outcomes: list[RiskResult]
    fills: list[Fill]
    equity: pd.Series
    final_cash: float
    final_equity: float
    wall_s: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)
    # The state each decision was made on (with the portfolio it saw), in the order of `decisions`.
    states: list[MarketState] = field(default_factory=list)
    journal: Journal | None = None
    # Client order id -> the decision time its order answers (a fill's `order_id` is its client id).
    decided_at: dict[str, datetime] = field(default_factory=dict)


def decision_times(
    index: pd.DatetimeIndex, every: timedelta, start: datetime, end: datetime
) -> list[datetime]:
    """Bar open times in [start, end) on the `every` grid: each is the close of the bar before it, and
    the decision made there fills at that bar's open."""
    step = pd.Timedelta(every)
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    times = index[(index >= start) & (index < end)]
    return [t.to_pydatetime() for t in times if (t - epoch) % step == pd.Timedelta(0)]


def run_policy(
    provider: DecisionProvider,
    bars: pl.DataFrame,
    states: pl.DataFrame,
    *,
    risk: RiskEngine | None = None,
    fee_bps: float = DEFAULT_FEE_BPS,
    slippage_bps: float | None = None,
    init_cash: float = INIT_CASH,
    decide: Callable[[DecisionProvider, list[MarketState]], list[TradeDecision]] = decide_safely,
    lag_bars: int = 0,
    run_id: str = "backtest",
) -> PolicyRun:
    """Backtest `provider` on `states` (rows of `state.market_state_table`, one per symbol and decision
    time `at`) against `bars` (the execution timeframe, keyed by open time).

    At each decision time the simulated venue is marked at the last close and the decision step runs,
    the live loop's own: the drawdown switch, every symbol's state with the account's portfolio, the
    provider (through `decide`, e.g. a decision cache), the risk engine, the journal, the venue.
    Approved intents fill at the open of the bar starting at `at`, paying `fee_bps` and the slippage.
    `lag_bars` delays every fill by that many bars (the one-bar-lag audit). The journal is kept in
    memory under `run_id` (write it with `backtest.journaling.journal_policy_run`).
    """
    started = time.perf_counter()
    risk = risk or RiskEngine()
    opens, closes, volumes = wide(bars, "open"), wide(bars, "close"), wide(bars, "volume")
    base = Timeframe.parse(_tf_of(closes))
    journal = Journal(None, run_id)
    venue = SimulatedVenue(
        opens,
        volumes,
        init_cash=init_cash,
        fee_bps=fee_bps,
        slippage_bps=slippage_bps,
        journal=journal,
        highs=wide(bars, "high"),
        lows=wide(bars, "low"),
    )
    step = DecisionStep(provider, risk, venue, journal, session_id=run_id, decide=decide)
    decisions: list[TradeDecision] = []
    outcomes: list[RiskResult] = []
    seen: list[MarketState] = []
    close_ff = closes.ffill()
    rets = close_ff.pct_change()
    window = risk.config.correlation_window
    by_time = states.partition_by("at", as_dict=True, maintain_order=True)
    for (at,), group in sorted(by_time.items(), key=lambda kv: kv[0][0]):
        at_ts = pd.Timestamp(at)
        # Everything the decision reads is known at `at`: closes of bars that opened before it.
        known = close_ff.loc[close_ff.index < at_ts]
        if known.empty or at_ts not in opens.index:
            continue
        marks = {s: float(v) for s, v in known.iloc[-1].items() if np.isfinite(v)}
        recent = rets.loc[rets.index < at_ts].iloc[-window:]
        newest = closes.loc[closes.index < at_ts]
        market = MarketView(
            marks=marks,
            returns={s: recent[s].dropna().to_numpy() for s in recent.columns},
            data_age={s: data_age(at, _py(newest[s].last_valid_index()), base) for s in closes.columns},
        )
        venue.mark(marks)
        batch = [state_from_row(r) for r in group.iter_rows(named=True)]
        for gated in step(at, batch, market):
            decisions.append(gated.decision)
            outcomes.append(gated.result)
            seen.append(gated.state)  # type: ignore[arg-type] - every symbol of a batch has a state
        position = int(opens.index.get_loc(at_ts)) + lag_bars
        venue.fill_pending(opens.index[position] if position < len(opens.index) else None)
    portfolio = _replay(venue.fills, opens, closes, fee_bps, init_cash)
    equity = portfolio.value()
    last_marks = {s: float(v) for s, v in close_ff.iloc[-1].items() if np.isfinite(v)}
    run = PolicyRun(
        portfolio=portfolio,
        decisions=decisions,
        outcomes=outcomes,
        fills=venue.fills,
        equity=equity,
        final_cash=venue.ledger.cash,
        final_equity=venue.ledger.account(last_marks).equity,
        wall_s=time.perf_counter() - started,
        states=seen,
        journal=journal,
        decided_at=venue.decided_at,
    )
    _journal_equity(journal, run)
    return run


def _py(stamp: object) -> datetime | None:
    return stamp.to_pydatetime() if isinstance(stamp, pd.Timestamp) else None


def _journal_equity(journal: Journal, run: PolicyRun) -> None:
    """Equity at each decision time (the live journal snapshots there too), from the run's curve."""
    cash = run.portfolio.cash()
    for at in sorted({s.at for s in run.states}):
        stamp = pd.Timestamp(at)
        equity = run.equity.asof(stamp)
        if pd.isna(equity):
            continue
        free = float(cash.asof(stamp))
        journal.equity(
            at, equity=float(equity), cash=free, positions_value=float(equity) - free, unrealized=None
        )


def _tf_of(frame: pd.DataFrame) -> str:
    minutes = int(_freq(frame.index) / pd.Timedelta(minutes=1))
    for tf in Timeframe:
        if tf.duration == timedelta(minutes=minutes):
            return tf.value
    return "1h"


def _replay(
    fills: Sequence[Fill], opens: pd.DataFrame, closes: pd.DataFrame, fee_bps: float, init_cash: float
) -> vbt.Portfolio:
    """The fills as one cash-sharing vectorbt portfolio (sells before buys within a bar)."""
    size = pd.DataFrame(np.nan, index=closes.index, columns=closes.columns)
    price = pd.DataFrame(np.nan, index=closes.index, columns=closes.columns)
    for f in fills:
        ts = pd.Timestamp(f.at)
        prev = size.at[ts, f.symbol]
        signed = f.qty if f.side == OrderSide.BUY else -f.qty
        size.at[ts, f.symbol] = signed + (0.0 if np.isnan(prev) else prev)
        price.at[ts, f.symbol] = f.price
    return vbt.Portfolio.from_orders(
        closes.ffill().bfill(),
        size=size,
        size_type="amount",
        price=price,
        fees=fee_bps / 10_000,
        init_cash=init_cash,
        cash_sharing=True,
        group_by=True,
        call_seq="auto",
        direction="longonly",
        freq=_freq(closes.index),
    )
