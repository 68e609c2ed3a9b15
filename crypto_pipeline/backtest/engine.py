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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import vectorbt as vbt

from crypto_pipeline.errors import UserInputError
from crypto_pipeline.llm.decision import TradeDecision
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.risk import RiskEngine, RiskResult
from crypto_pipeline.state import MarketState, Portfolio, state_from_row
from crypto_pipeline.timeutil import as_utc
from crypto_pipeline.trading import Account, OrderIntent, OrderSide, Position, rules

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
    """Recorded bars of `symbols` with open times in [start, end). Clear errors for bad input."""
    tf = Timeframe.parse(timeframe)
    first, last = as_utc(start), as_utc(end)
    if first >= last:
        raise UserInputError(f"start {first:%Y-%m-%d %H:%M} must be before end {last:%Y-%m-%d %H:%M}")
    path = Path(data_dir) / f"bars_{tf.value}.parquet"
    if not path.exists():
        raise UserInputError(f"no recorded {tf.value} bars in {data_dir}")
    if not symbols:
        raise UserInputError("no symbols given")
    known = set(pl.scan_parquet(path).select("symbol").unique().collect()["symbol"].to_list())
    unknown = [s for s in symbols if s not in known]
    if unknown:
        raise UserInputError(f"unknown symbol(s) {unknown}; e.g. {sorted(known)[:5]}")
    bars = (
        pl.scan_parquet(path)
        .with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
        .filter(pl.col("symbol").is_in(list(symbols)))
        .filter((pl.col("timestamp") >= first) & (pl.col("timestamp") < last))
        .sort("symbol", "timestamp")
        .collect()
    )
    if bars.height == 0:
        raise UserInputError(f"no {tf.value} bars for {list(symbols)} in [{first:%Y-%m-%d}, {last:%Y-%m-%d})")
    return bars


def wide(bars: pl.DataFrame, column: str) -> pd.DataFrame:
    """One column of long bars as a time x symbol frame (the shape vectorbt wants)."""
    frame = bars.select("timestamp", "symbol", column).pivot(on="symbol", index="timestamp", values=column)
    frame = frame.sort("timestamp").to_pandas().set_index("timestamp")
    frame.index = pd.DatetimeIndex(frame.index).tz_convert("UTC")
    frame.columns.name = "symbol"
    return frame


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
    # A missing open (a gap) cannot trade: carry the close so that vectorbt values the position.
    price = open_b.fillna(close_b.ffill())
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


# --- policy runs through the risk engine ---------------------------------------------------------
@dataclass(frozen=True)
class SimFill:
    """A fill of the backtest: at the open of `at` (the bar after the decision)."""

    at: datetime
    symbol: str
    side: OrderSide
    qty: float
    price: float
    fee: float
    decided_at: datetime


@dataclass
class PolicyRun:
    """Everything a policy run produced: the vectorbt portfolio, decisions, risk outcomes and fills."""

    portfolio: vbt.Portfolio
    decisions: list[TradeDecision]
    outcomes: list[RiskResult]
    fills: list[SimFill]
    equity: pd.Series
    final_cash: float
    final_equity: float
    wall_s: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)
    # The state each decision was made on (with the portfolio it saw), in the order of `decisions`:
    # what the journal records (`backtest/journaling.py`).
    states: list[MarketState] = field(default_factory=list)


@dataclass
class _Book:
    """The backtest's account: cash and long positions, marked to the latest close."""

    cash: float
    qty: dict[str, float] = field(default_factory=dict)
    entry: dict[str, float] = field(default_factory=dict)

    def account(self, marks: dict[str, float]) -> Account:
        positions = tuple(
            Position(symbol=s, qty=q, avg_entry_price=self.entry[s]) for s, q in self.qty.items() if q > 0
        )
        equity = self.cash + sum(q * marks.get(s, self.entry[s]) for s, q in self.qty.items())
        return Account(cash=self.cash, equity=equity, positions=positions)

    def fill(self, side: OrderSide, symbol: str, qty: float, price: float, fee: float) -> None:
        held = self.qty.get(symbol, 0.0)
        if side == OrderSide.BUY:
            self.entry[symbol] = (held * self.entry.get(symbol, 0.0) + qty * price) / (held + qty)
            self.qty[symbol] = rules.add_qty(held, qty)
            self.cash -= qty * price + fee
        else:
            self.qty[symbol] = rules.add_qty(held, -qty)
            self.cash += qty * price - fee
            if self.qty[symbol] <= 0:
                del self.qty[symbol], self.entry[symbol]


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
) -> PolicyRun:
    """Backtest `provider` on `states` (rows of `state.market_state_table`, one per symbol and decision
    time `at`) against `bars` (the execution timeframe, keyed by open time).

    At each decision time: the account is marked at the last close, the risk engine's breakers are
    updated, every symbol's state gets the account's portfolio, the provider decides (through `decide`,
    e.g. a decision cache), and the risk engine turns each decision into an order intent or a rejection.
    Approved intents fill at the open of the bar starting at `at`, paying `fee_bps` and the slippage.
    `lag_bars` delays every fill by that many bars (the one-bar-lag audit).
    """
    import time

    started = time.perf_counter()
    risk = risk or RiskEngine()
    opens, closes, volumes = wide(bars, "open"), wide(bars, "close"), wide(bars, "volume")
    slip_model = rules.SlippageModel()
    book = _Book(cash=init_cash)
    decisions: list[TradeDecision] = []
    outcomes: list[RiskResult] = []
    fills: list[SimFill] = []
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
        account = book.account(marks)
        intents: list[tuple[OrderIntent, datetime]] = [(i, at) for i in risk.update(account, marks, at)]
        recent = rets.loc[rets.index < at_ts].iloc[-window:]
        returns = {s: recent[s].dropna().to_numpy() for s in recent.columns}
        batch = [
            state_from_row(r).with_portfolio(Portfolio.from_account(account, r["symbol"]))
            for r in group.iter_rows(named=True)
        ]
        made = decide(provider, batch)
        seen.extend(batch)
        for state, decision in zip(batch, made, strict=True):
            last_close_time = known[state.symbol].last_valid_index()
            age = at_ts - last_close_time if last_close_time is not None else pd.Timedelta(days=365)
            outcome = risk.evaluate(
                decision,
                account,
                state.price,
                now=at,
                data_age=age.to_pytimedelta() - Timeframe.parse(_tf_of(closes)).duration,
                prices=marks,
                returns=returns,
            )
            decisions.append(decision)
            outcomes.append(outcome)
            if outcome.intent is not None:
                intents.append((outcome.intent, at))
                # Later decisions of this batch see the order as if filled at the last close: exposure
                # caps then hold across symbols decided at the same time.
                account = _projected(book, account, outcome.intent, state.price, marks)
        position = int(opens.index.get_loc(at_ts)) + lag_bars
        if position >= len(opens.index):
            continue
        fill_ts = opens.index[position]
        # Sells first, so that a rotation frees cash before buying.
        for intent, decided_at in sorted(intents, key=lambda x: x[0].side != OrderSide.SELL):
            _execute(
                book, intent, opens, volumes, fill_ts, fee_bps, slippage_bps, slip_model, fills, decided_at
            )
    portfolio = _replay(fills, opens, closes, fee_bps, init_cash)
    equity = portfolio.value()
    last_marks = {s: float(v) for s, v in close_ff.iloc[-1].items() if np.isfinite(v)}
    return PolicyRun(
        portfolio=portfolio,
        decisions=decisions,
        outcomes=outcomes,
        fills=fills,
        equity=equity,
        final_cash=book.cash,
        final_equity=book.account(last_marks).equity,
        wall_s=time.perf_counter() - started,
        states=seen,
    )


def _tf_of(frame: pd.DataFrame) -> str:
    minutes = int(_freq(frame.index) / pd.Timedelta(minutes=1))
    for tf in Timeframe:
        if tf.duration == timedelta(minutes=minutes):
            return tf.value
    return "1h"


def _projected(
    book: _Book, account: Account, intent: OrderIntent, price: float, marks: dict[str, float]
) -> Account:
    shadow = _Book(
        cash=account.cash,
        qty={p.symbol: p.qty for p in account.positions},
        entry={p.symbol: p.avg_entry_price for p in account.positions},
    )
    qty = intent.qty or 0.0
    shadow.fill(intent.side, intent.symbol, qty, price, qty * price * DEFAULT_FEE_BPS / 10_000)
    return shadow.account(marks)


def _execute(
    book: _Book,
    intent: OrderIntent,
    opens: pd.DataFrame,
    volumes: pd.DataFrame,
    at: pd.Timestamp,
    fee_bps: float,
    slippage_bps: float | None,
    slip_model: rules.SlippageModel,
    fills: list[SimFill],
    decided_at: datetime,
) -> None:
    """Fill a market intent at the open of the bar starting at `at`, or drop it (no bar, no cash)."""
    symbol = intent.symbol
    open_price = float(opens.at[at, symbol]) if symbol in opens.columns else math.nan
    if not np.isfinite(open_price) or open_price <= 0:
        log.info("no open for %s at %s: order dropped", symbol, at)
        return
    qty = intent.qty or 0.0
    if intent.side == OrderSide.SELL:
        qty = min(qty, book.qty.get(symbol, 0.0))
    volume = float(volumes.at[at, symbol]) if np.isfinite(volumes.at[at, symbol]) else 0.0
    if slippage_bps is None:
        move = slip_model.impact(qty, volume)
    else:
        move = slippage_bps / 10_000
    price = float(open_price * (1 + move) if intent.side == OrderSide.BUY else open_price * (1 - move))
    if intent.side == OrderSide.BUY:
        # The open may gap above the decision's price: shrink the order to the cash there is.
        affordable = rules.floor_qty(book.cash / (price * (1 + fee_bps / 10_000)))
        qty = min(qty, affordable)
    qty = rules.floor_qty(qty)
    if qty <= 0:
        return
    fee = qty * price * fee_bps / 10_000
    book.fill(intent.side, symbol, qty, price, fee)
    fills.append(SimFill(at.to_pydatetime(), symbol, intent.side, qty, float(price), fee, decided_at))


def _replay(
    fills: Sequence[SimFill], opens: pd.DataFrame, closes: pd.DataFrame, fee_bps: float, init_cash: float
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
