"""Labels from what the market did next: a volatility-scaled forward return mapped to BUY / SELL / HOLD,
and the decision (confidence, size, stop, take profit, reasoning) a good trader would have written.

Timing. A decision made at `at` (the close of the decision bar) executes at the open of the next bar, so
the forward return runs from the open of the bar that opens at `at` to the close of the bar that closes at
`label_end = at + horizon`. Only bars inside [at, label_end] are read: `label_end` is the last instant a
label depends on, which is what the purged splits and the look-ahead test rely on.

Everything else in an example (the volatility that scales the return, the reasoning) comes from the
market state, i.e. from bars closed by `at`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import polars as pl

from crypto_pipeline.llm.decision import (
    CONFIDENCE_RANGE,
    POSITION_SIZE_RANGE,
    STOP_LOSS_RANGE,
    TAKE_PROFIT_RANGE,
    Action,
    TradeDecision,
)
from crypto_pipeline.market.timeframes import Timeframe

# The ATR column of the market-state table that scales returns (1h ATR14 as % of close).
DEFAULT_VOLATILITY_COLUMN = "atr_pct_1h"
STOP_ATR_MULTIPLE = 2.0  # the system prompt asks for a stop near 1-2x ATR%; RuleBased uses the same
TAKE_PROFIT_ATR_MULTIPLE = 4.0
REASONING_MAX_CHARS = 100  # what the constrained-decoding grammar lets a model write
MAX_REASONS = 2  # signals named in one reasoning sentence: short to learn, short to generate


def forward_returns(
    bars: pl.DataFrame, points: pl.DataFrame, horizon: timedelta, timeframe: str = "1h"
) -> pl.DataFrame:
    """`points` (symbol, at) with `label_end`, `entry_price`, `exit_price` and `forward_return` (a ratio).

    `bars` holds `timeframe` bars (symbol, timestamp = open time, open, close). Entry is the open of the bar
    opening at `at`, exit the close of the bar closing at `at + horizon`; a missing bar (a gap) gives a null
    return rather than a price from another time.
    """
    tf = Timeframe.parse(timeframe)
    if horizon < tf.duration or horizon % tf.duration:
        raise ValueError(f"the horizon {horizon} must be a positive multiple of the {tf.value} bar")
    prices = bars.select(
        pl.col("symbol").cast(pl.String), pl.col("timestamp").cast(pl.Datetime("us", "UTC")), "open", "close"
    )
    out = points.select(
        pl.col("symbol").cast(pl.String), pl.col("at").cast(pl.Datetime("us", "UTC"))
    ).with_columns((pl.col("at") + horizon).alias("label_end"))
    entry = prices.select("symbol", pl.col("timestamp").alias("at"), pl.col("open").alias("entry_price"))
    exit_ = prices.select(
        "symbol",
        (pl.col("timestamp") + tf.duration).alias("label_end"),
        pl.col("close").alias("exit_price"),
    )
    out = out.join(entry, on=["symbol", "at"], how="left").join(exit_, on=["symbol", "label_end"], how="left")
    return out.with_columns((pl.col("exit_price") / pl.col("entry_price") - 1).alias("forward_return"))


def triple_barrier(
    bars: pl.DataFrame,
    points: pl.DataFrame,
    horizon: timedelta,
    timeframe: str = "1h",
    *,
    take_profit_multiple: float = TAKE_PROFIT_ATR_MULTIPLE,
    stop_multiple: float = STOP_ATR_MULTIPLE,
) -> pl.DataFrame:
    """`points` (symbol, at, atr_pct) with `barrier`: which of the response's own exits a long entered at the
    open of the bar opening at `at` reaches first within the horizon (López de Prado's triple barrier).

    BUY: the take profit (`take_profit_multiple` x ATR% above the entry) is touched first; SELL: the stop
    (`stop_multiple` x ATR% below) first; HOLD: neither by `at + horizon`. A bar whose range touches both
    counts as the stop (the pessimistic order: a bar does not say which came first). Only the bars inside
    [at, at + horizon] are read; a missing bar in that window gives a null label, not a guess.
    """
    import numpy as np

    tf = Timeframe.parse(timeframe)
    if horizon < tf.duration or horizon % tf.duration:
        raise ValueError(f"the horizon {horizon} must be a positive multiple of the {tf.value} bar")
    missing = {"high", "low", "open"} - set(bars.columns)
    if missing:
        raise ValueError(f"triple-barrier labels need the bars' {sorted(missing)} columns")
    n = int(horizon / tf.duration)
    out = []
    for (symbol,), group in points.group_by("symbol", maintain_order=True):
        prices = bars.filter(pl.col("symbol") == symbol).sort("timestamp")
        stamps = prices["timestamp"].cast(pl.Datetime("us", "UTC")).to_numpy()
        opens, highs, lows = (prices[c].to_numpy().astype(float) for c in ("open", "high", "low"))
        index = {t: i for i, t in enumerate(stamps)}
        labels = []
        for at, atr in group.select(pl.col("at").cast(pl.Datetime("us", "UTC")), "atr_pct").iter_rows():
            i = index.get(np.datetime64(at.replace(tzinfo=None), "us")) if at is not None else None
            # The window must be whole: n consecutive bars from the one opening at `at`.
            if (
                i is None
                or atr is None
                or not atr > 0
                or i + n > len(stamps)
                or stamps[i + n - 1] - stamps[i] != np.timedelta64(tf.duration * (n - 1))
            ):
                labels.append(None)
                continue
            entry = opens[i]
            take, stop = (
                entry * (1 + take_profit_multiple * atr / 100),
                entry * (1 - stop_multiple * atr / 100),
            )
            hit_take = np.flatnonzero(highs[i : i + n] >= take)
            hit_stop = np.flatnonzero(lows[i : i + n] <= stop)
            first_take = hit_take[0] if hit_take.size else n
            first_stop = hit_stop[0] if hit_stop.size else n
            if first_take == n and first_stop == n:
                labels.append(Action.HOLD.value)
            else:
                labels.append(Action.BUY.value if first_take < first_stop else Action.SELL.value)
        out.append(group.select("symbol", "at").with_columns(pl.Series("barrier", labels, dtype=pl.String)))
    if not out:
        return points.select("symbol", "at").with_columns(pl.lit(None, pl.String).alias("barrier"))
    return pl.concat(out)


def volatility_scaled(
    forward_return: pl.Expr, atr_pct: pl.Expr, horizon: timedelta, atr_timeframe: str = "1h"
) -> pl.Expr:
    """The forward return in units of the volatility expected over the horizon (ATR% x sqrt(bars))."""
    bars = horizon / Timeframe.parse(atr_timeframe).duration
    return (forward_return * 100) / (atr_pct * math.sqrt(bars))


@dataclass(frozen=True)
class Thresholds:
    """Volatility-scaled return below `sell_below` is SELL, above `buy_above` BUY, between them HOLD."""

    sell_below: float
    buy_above: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sell_below) and math.isfinite(self.buy_above)):
            raise ValueError(f"thresholds must be finite, got {self}")
        if self.sell_below >= self.buy_above:
            raise ValueError(f"sell_below ({self.sell_below}) must be below buy_above ({self.buy_above})")

    @property
    def spread(self) -> float:
        return self.buy_above - self.sell_below

    def as_dict(self) -> dict[str, float]:
        return {"sell_below": self.sell_below, "buy_above": self.buy_above}


def fit_thresholds(
    train_scores: pl.Series, sell_share: float = 1 / 3, buy_share: float = 1 / 3
) -> Thresholds:
    """Quantile thresholds fitted on the TRAINING scores only, so each class holds about its share there.

    Quantiles rather than fixed numbers keep the classes from being degenerate whatever the period's
    volatility; fitting on train alone keeps validation and test out of the label definition.
    """
    if not (0 < sell_share < 1 and 0 < buy_share < 1 and sell_share + buy_share < 1):
        raise ValueError(f"class shares must be in (0, 1) and leave room for HOLD: {sell_share}, {buy_share}")
    scores = train_scores.drop_nulls().drop_nans()
    if scores.len() < 3:
        raise ValueError(f"need at least 3 training scores to fit thresholds, got {scores.len()}")
    return Thresholds(
        sell_below=float(scores.quantile(sell_share, interpolation="linear")),
        buy_above=float(scores.quantile(1 - buy_share, interpolation="linear")),
    )


def action_expr(score: pl.Expr, thresholds: Thresholds) -> pl.Expr:
    return (
        pl.when(score > thresholds.buy_above)
        .then(pl.lit(Action.BUY.value))
        .when(score < thresholds.sell_below)
        .then(pl.lit(Action.SELL.value))
        .otherwise(pl.lit(Action.HOLD.value))
    )


# --- the response: the decision a trader who knew the label would have written ---------------------


def label_decision(
    row: dict[str, Any],
    action: Action,
    score: float,
    thresholds: Thresholds,
    *,
    max_position_pct: float = 40.0,
    volatility_column: str = DEFAULT_VOLATILITY_COLUMN,
) -> TradeDecision:
    """The target decision for one market-state row (a dict of `market_state_table` columns).

    Confidence grows with the distance of the score past its threshold (for HOLD: from the nearer
    threshold, inwards), from 50 up to 95. BUY sizes by confidence up to `max_position_pct`; SELL exits the
    whole long (spot: SELL means "exit or stay out"); HOLD trades nothing. Stop and take profit are 2x and
    4x the 1h ATR%, as the system prompt asks.
    """
    if action is Action.BUY:
        margin = score - thresholds.buy_above
    elif action is Action.SELL:
        margin = thresholds.sell_below - score
    else:
        margin = min(score - thresholds.sell_below, thresholds.buy_above - score)
    # Whole numbers: fewer tokens to learn and to generate, and no false precision.
    confidence = float(round(50.0 + 45.0 * math.tanh(max(margin, 0.0) / thresholds.spread)))
    size = {
        Action.BUY: float(round(_round1(max_position_pct * confidence / 100.0, POSITION_SIZE_RANGE))),
        Action.SELL: POSITION_SIZE_RANGE[1],
        Action.HOLD: 0.0,
    }[action]
    atr = row.get(volatility_column)
    atr = float(atr) if atr is not None and math.isfinite(float(atr)) else None
    stop = _round1(STOP_ATR_MULTIPLE * atr, STOP_LOSS_RANGE) if atr else None
    take = _round1(TAKE_PROFIT_ATR_MULTIPLE * atr, TAKE_PROFIT_RANGE) if atr else None
    return TradeDecision(
        action=action,
        confidence=confidence,
        position_size_pct=size,
        stop_loss_pct=stop,
        take_profit_pct=take,
        reasoning=deterministic_reasoning(row, action),
    )


def format_response(decision: TradeDecision) -> str:
    """The decision as the exact text the constrained-decoding grammar produces (same keys, order, number
    form), so the fine-tuned model learns what it will be allowed to write."""
    fields = [
        f'"action": "{decision.action.value}"',
        f'"confidence": {_grammar_number(decision.confidence, CONFIDENCE_RANGE)}',
        f'"position_size_pct": {_grammar_number(decision.position_size_pct, POSITION_SIZE_RANGE)}',
        f'"stop_loss_pct": {_grammar_number(decision.stop_loss_pct or 0.0, STOP_LOSS_RANGE)}',
        f'"take_profit_pct": {_grammar_number(decision.take_profit_pct or 0.0, TAKE_PROFIT_RANGE)}',
        f'"reasoning": "{_grammar_text(decision.reasoning)}"',
    ]
    return "{" + ", ".join(fields) + "}"


# Signals read from the state row: (column, bullish when positive?, words when bullish, words when bearish).
_SIGNALS: tuple[tuple[str, str, str], ...] = (
    ("ema_9_vs_21_pct_1h", "1h EMA9 above EMA21", "1h EMA9 below EMA21"),
    ("macd_hist_pct_4h", "4h MACD histogram positive", "4h MACD histogram negative"),
    ("close_vs_ema_50_pct_1h", "price above 1h EMA50", "price below 1h EMA50"),
    ("close_vs_ema_200_pct_1d", "price above daily EMA200", "price below daily EMA200"),
    ("change_24h", "up over 24h", "down over 24h"),
)


def deterministic_reasoning(row: dict[str, Any], action: Action) -> str:
    """One short sentence naming up to two of the state's features that agree with `action` (<= 100 chars).

    Only features known at decision time are named, and the same row and action always give the same
    sentence. BUY cites bullish signals, SELL bearish ones, HOLD what is neutral or mixed.
    """
    bullish, bearish = [], []
    for column, up, down in _SIGNALS:
        value = _finite(row.get(column))
        if value is None or value == 0:
            continue
        (bullish if value > 0 else bearish).append((abs(value), up if value > 0 else down))
    rsi = _finite(row.get("rsi_14_1h"))
    if action is Action.BUY:
        agreeing = [text for _, text in sorted(bullish, reverse=True)]
        if rsi is not None and rsi < 35:
            agreeing.insert(0, f"1h RSI {rsi:.0f} oversold")
        lead = "Upside edge"
        fallback = "volatility-adjusted upside despite mixed signals"
    elif action is Action.SELL:
        agreeing = [text for _, text in sorted(bearish, reverse=True)]
        if rsi is not None and rsi > 70:
            agreeing.insert(0, f"1h RSI {rsi:.0f} overbought")
        lead = "Exit or stay out"
        fallback = "downside risk outweighs the signals"
    else:
        agreeing = []
        if rsi is not None and 40 <= rsi <= 60:
            agreeing.append(f"1h RSI {rsi:.0f} neutral")
        if bullish and bearish:
            agreeing.append("trend signals mixed")
        change = _finite(row.get("change_24h"))
        if change is not None and abs(change) < 1:
            agreeing.append("little move over 24h")
        lead = "No clear edge"
        fallback = "move unlikely to beat costs"
    sentence = f"{lead}: {fallback}." if not agreeing else f"{lead}: {agreeing[0]}"
    for text in agreeing[1:MAX_REASONS]:
        longer = f"{sentence}, {text}"
        if len(longer) + 1 > REASONING_MAX_CHARS:
            break
        sentence = longer
    if not sentence.endswith("."):
        sentence += "."
    return sentence[:REASONING_MAX_CHARS]


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _round1(value: float, bounds: tuple[float, float]) -> float:
    return round(min(max(value, bounds[0]), bounds[1]), 1)


def _grammar_number(value: float, bounds: tuple[float, float]) -> str:
    """At most one decimal, no trailing '.0', within bounds: the grammar's number form ("100", "12.5", "0")."""
    value = _round1(value, bounds)
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def _grammar_text(text: str) -> str:
    """Reasoning the grammar can express: one line, no quotes, backslashes or control characters."""
    cleaned = "".join(" " if ord(ch) < 32 else ch for ch in text).replace('"', "'").replace("\\", "/")
    return cleaned[:REASONING_MAX_CHARS]
