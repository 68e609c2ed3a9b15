"""MarketState: the snapshot of one symbol at one decision time that the LLM sees, and its prompt encoding.

A state is built only from bars that had CLOSED by the decision time `at`: a bar opening at t with
duration d contributes from t + d on. The same code builds states for datasets, backtests and the live
loop, so a prompt in training is byte-for-byte what the model would have seen live.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from crypto_pipeline.market.timeframes import Timeframe

STATE_TIMEFRAMES: tuple[str, ...] = ("15m", "1h", "4h", "1d")

# Indicator fields per timeframe, all scale-free (percentages/ratios) so that an anonymized prompt
# reveals no price level and states of different coins look alike to the model.
INDICATOR_FIELDS: tuple[str, ...] = (
    "rsi_14",
    "macd_hist_pct",
    "ema_9_vs_21_pct",
    "close_vs_ema_50_pct",
    "close_vs_ema_200_pct",
    "atr_pct",
    "bb_pctb",
    "change_pct",
)


class TimeframeIndicators(BaseModel):
    """Indicators of the last closed bar of one timeframe; None where not yet warmed up."""

    model_config = ConfigDict(frozen=True)

    bar_close: datetime = Field(description="Close time of the bar these values come from.")
    rsi_14: float | None = None
    macd_hist_pct: float | None = Field(None, description="MACD histogram as % of close.")
    ema_9_vs_21_pct: float | None = Field(None, description="EMA9 / EMA21 - 1, in %.")
    close_vs_ema_50_pct: float | None = None
    close_vs_ema_200_pct: float | None = None
    atr_pct: float | None = Field(None, description="ATR14 as % of close.")
    bb_pctb: float | None = Field(None, description="Bollinger %B (20, 2).")
    change_pct: float | None = Field(None, description="Return of this bar, in %.")


class OrderBookSnapshot(BaseModel):
    """Top of book and depth near the mid, when a live book is known (never for historical bars)."""

    model_config = ConfigDict(frozen=True)

    bid: float
    ask: float
    bid_depth: float = Field(description="Base quantity on the bid side within the captured levels.")
    ask_depth: float

    @property
    def spread_bps(self) -> float:
        mid = (self.bid + self.ask) / 2
        return (self.ask - self.bid) / mid * 1e4 if mid > 0 else float("nan")

    @property
    def imbalance(self) -> float:
        """(bid - ask) / (bid + ask) depth, in [-1, 1]: positive means more resting buyers."""
        total = self.bid_depth + self.ask_depth
        return (self.bid_depth - self.ask_depth) / total if total > 0 else 0.0


class Portfolio(BaseModel):
    """What the account holds of this symbol at decision time (added by the backtest or live loop)."""

    model_config = ConfigDict(frozen=True)

    position_qty: float = 0.0
    avg_entry_price: float | None = None
    cash: float = 0.0
    equity: float = 0.0

    def unrealized_pnl_pct(self, price: float) -> float | None:
        if self.position_qty <= 0 or not self.avg_entry_price:
            return None
        return (price / self.avg_entry_price - 1) * 100

    def exposure_pct(self, price: float) -> float:
        return self.position_qty * price / self.equity * 100 if self.equity > 0 else 0.0


class MarketState(BaseModel):
    """One symbol at one decision time: price, volume, indicators per timeframe, book and portfolio."""

    model_config = ConfigDict(frozen=True)

    symbol: str
    at: datetime = Field(description="Decision time (UTC): the close of the latest base bar.")
    price: float
    change_1h: float | None = Field(None, description="Price change over the last hour, in %.")
    change_24h: float | None = Field(None, description="Price change over the last 24 hours, in %.")
    volume_24h: float | None = Field(None, description="Quote-currency volume over the last 24 hours.")
    volume_vs_avg_7d: float | None = Field(
        None, description="24h volume / average daily volume of the 7 days before."
    )
    timeframes: dict[str, TimeframeIndicators] = Field(default_factory=dict)
    order_book: OrderBookSnapshot | None = None
    portfolio: Portfolio | None = None

    def with_portfolio(self, portfolio: Portfolio) -> MarketState:
        return self.model_copy(update={"portfolio": portfolio})

    def with_order_book(self, order_book: OrderBookSnapshot) -> MarketState:
        return self.model_copy(update={"order_book": order_book})

    def to_prompt(self, anonymize: bool = False) -> str:
        """Compact text for the LLM (at most 350 SmolLM2 tokens with four timeframes).

        `anonymize` drops the symbol, the date and every absolute price or volume, leaving only
        ratios: a model that still predicts well on anonymized prompts is not recalling history.
        """
        lines: list[str] = []
        head = [] if anonymize else [f"{self.symbol} {self.at:%Y-%m-%d %H:%M}Z price {_num(self.price)}"]
        head += [f"chg1h {_pct(self.change_1h)}", f"chg24h {_pct(self.change_24h)}"]
        if self.volume_24h is not None and not anonymize:
            head.append(f"vol24h {_num(self.volume_24h)}")
        head.append(f"vol/avg7d {_fmt(self.volume_vs_avg_7d, 2)}")
        lines.append(" ".join(head))
        # One row per timeframe keeps the prompt short: numbers dominate the token count.
        lines.append("tf rsi macdh% ema9/21% px/ema50% px/ema200% atr% bb%b chg%")
        for tf in STATE_TIMEFRAMES:
            ind = self.timeframes.get(tf)
            if ind is None:
                continue
            values = [
                _fmt(ind.rsi_14, 0),
                _fmt(ind.macd_hist_pct, 2),
                _fmt(ind.ema_9_vs_21_pct, 2),
                _fmt(ind.close_vs_ema_50_pct, 1),
                _fmt(ind.close_vs_ema_200_pct, 1),
                _fmt(ind.atr_pct, 2),
                _fmt(ind.bb_pctb, 2),
                _fmt(ind.change_pct, 2),
            ]
            lines.append(" ".join([tf, *values]))
        if self.order_book is not None:
            book = self.order_book
            lines.append(f"book spread {_fmt(book.spread_bps, 1)}bp imbalance {_fmt(book.imbalance, 2)}")
        if self.portfolio is not None:
            pf = self.portfolio
            if pf.position_qty > 0:
                exposure = _fmt(pf.exposure_pct(self.price), 0)
                lines.append(
                    f"position long {exposure}% of equity, pnl {_pct(pf.unrealized_pnl_pct(self.price))}"
                )
            else:
                lines.append("position flat")
            if not anonymize:
                lines.append(f"cash {_num(pf.cash)} equity {_num(pf.equity)}")
        return "\n".join(lines)

    @classmethod
    def example(cls) -> MarketState:
        """A realistic fixed state (BTC/USDT, 2024-06-01 12:00 UTC) for tests and docs."""
        at = datetime(2024, 6, 1, 12, tzinfo=UTC)

        def ind(
            tf: str,
            rsi: float,
            macd: float,
            e: float,
            e50: float,
            e200: float,
            atr: float,
            bb: float,
            chg: float,
        ) -> TimeframeIndicators:
            return TimeframeIndicators(
                bar_close=at,
                rsi_14=rsi,
                macd_hist_pct=macd,
                ema_9_vs_21_pct=e,
                close_vs_ema_50_pct=e50,
                close_vs_ema_200_pct=e200,
                atr_pct=atr,
                bb_pctb=bb,
                change_pct=chg,
            )

        return cls(
            symbol="BTC/USDT",
            at=at,
            price=67512.3,
            change_1h=0.42,
            change_24h=-1.31,
            volume_24h=1.21e9,
            volume_vs_avg_7d=0.85,
            timeframes={
                "15m": ind("15m", 58.2, 0.012, 0.08, 0.35, 0.9, 0.21, 0.71, 0.12),
                "1h": ind("1h", 54.9, -0.004, 0.11, 0.62, 1.8, 0.48, 0.58, 0.42),
                "4h": ind("4h", 49.3, -0.031, -0.22, -0.4, 3.9, 1.1, 0.41, -0.35),
                "1d": ind("1d", 52.7, 0.085, 0.64, 2.5, 18.2, 3.4, 0.55, -1.31),
            },
            portfolio=Portfolio(position_qty=0.05, avg_entry_price=66000.0, cash=6624.4, equity=10000.0),
        )


# --- building states from features ---------------------------------------------------------------


def _indicator_exprs() -> list[pl.Expr]:
    """Scale-free indicator columns from the raw feature columns of `crypto_pipeline.features`."""
    pct = 100.0
    close = pl.col("close")
    return [
        pl.col("rsi_14").alias("rsi_14"),
        (pl.col("macd_hist") / close * pct).alias("macd_hist_pct"),
        ((pl.col("ema_9") / pl.col("ema_21") - 1) * pct).alias("ema_9_vs_21_pct"),
        ((close / pl.col("ema_50") - 1) * pct).alias("close_vs_ema_50_pct"),
        ((close / pl.col("ema_200") - 1) * pct).alias("close_vs_ema_200_pct"),
        (pl.col("atr_14") / close * pct).alias("atr_pct"),
        pl.col("bb_pctb_20").alias("bb_pctb"),
        ((close / pl.col("open") - 1) * pct).alias("change_pct"),
    ]


def _closed_rows(features: pl.DataFrame, timeframe: str) -> pl.DataFrame:
    """One timeframe's feature rows keyed by the time their bar closed."""
    tf = Timeframe.parse(timeframe)
    frame = features.filter(pl.col("timeframe") == tf.value)
    return frame.with_columns((pl.col("timestamp") + tf.duration).alias("bar_close")).sort(
        "symbol", "bar_close"
    )


def market_state_table(
    features: pl.DataFrame,
    decision_points: pl.DataFrame,
    timeframes: Sequence[str] = STATE_TIMEFRAMES,
    price_timeframe: str | None = None,
) -> pl.DataFrame:
    """Flat market states, one row per (symbol, at) of `decision_points`.

    `features` is the long features table (a `timeframe` column, one row per symbol, timeframe and bar).
    Every value joined to a row at time `at` comes from a bar whose close is <= `at` (an as-of join on
    close times), which is what makes states free of look-ahead. A timeframe whose last closed bar is more
    than two bars old at `at` (a data gap) gives nulls rather than stale values.
    """
    available = [tf for tf in timeframes if features.filter(pl.col("timeframe") == tf).height > 0]
    if not available:
        raise ValueError(f"features hold none of the timeframes {list(timeframes)}")
    price_tf = price_timeframe or available[0]
    points = (
        decision_points.select(pl.col("symbol").cast(pl.String), pl.col("at").cast(pl.Datetime("us", "UTC")))
        .unique()
        .sort("symbol", "at")
    )
    out = points.sort("at")

    # Price, short-horizon changes and volumes come from the finest timeframe.
    price_rows = _closed_rows(features, price_tf)
    per_day = Timeframe.parse(price_tf).bars_per(timedelta(days=1))
    quote_volume = pl.col("volume") * pl.col("close")
    price_rows = price_rows.with_columns(
        quote_volume.rolling_sum(per_day).over("symbol").alias("volume_24h"),
        (
            quote_volume.rolling_sum(per_day).over("symbol")
            / (quote_volume.rolling_sum(7 * per_day).shift(per_day).over("symbol") / 7)
        ).alias("volume_vs_avg_7d"),
    ).select(
        "symbol",
        pl.col("bar_close").alias("price_bar_close"),
        pl.col("close").alias("price"),
        (pl.col("ret_1h") * 100).alias("change_1h"),
        (pl.col("ret_24h") * 100).alias("change_24h"),
        "volume_24h",
        "volume_vs_avg_7d",
    )
    out = out.join_asof(
        price_rows.sort("price_bar_close"),
        left_on="at",
        right_on="price_bar_close",
        by="symbol",
        strategy="backward",
        tolerance=2 * Timeframe.parse(price_tf).duration,
        check_sortedness=False,  # sorted by close time above; polars cannot verify it per group
    )

    for tf in available:
        rows = _closed_rows(features, tf).select(
            "symbol",
            pl.col("bar_close").alias(f"bar_close_{tf}"),
            *[e.name.suffix(f"_{tf}") for e in _indicator_exprs()],
        )
        out = out.join_asof(
            rows.sort(f"bar_close_{tf}"),
            left_on="at",
            right_on=f"bar_close_{tf}",
            by="symbol",
            strategy="backward",
            check_sortedness=False,
            tolerance=2 * Timeframe.parse(tf).duration,
        )
    # Indicators are undefined before warm-up (NaN from a ratio of nulls): carry them as nulls.
    float_cols = [c for c, t in out.schema.items() if t == pl.Float64]
    out = out.with_columns(
        [pl.when(pl.col(c).is_nan()).then(None).otherwise(pl.col(c)).alias(c) for c in float_cols]
    )
    return out.sort("symbol", "at")


def state_from_row(row: dict[str, Any], timeframes: Iterable[str] = STATE_TIMEFRAMES) -> MarketState:
    """A `MarketState` from one row of `market_state_table`."""
    if row.get("price") is None:
        raise ValueError(f"no closed bar for {row['symbol']} at or before {row['at']}")
    per_tf: dict[str, TimeframeIndicators] = {}
    for tf in timeframes:
        close = row.get(f"bar_close_{tf}")
        if close is None:
            continue
        per_tf[tf] = TimeframeIndicators(
            bar_close=close, **{f: _clean(row.get(f"{f}_{tf}")) for f in INDICATOR_FIELDS}
        )
    return MarketState(
        symbol=row["symbol"],
        at=row["at"],
        price=row["price"],
        change_1h=_clean(row.get("change_1h")),
        change_24h=_clean(row.get("change_24h")),
        volume_24h=_clean(row.get("volume_24h")),
        volume_vs_avg_7d=_clean(row.get("volume_vs_avg_7d")),
        timeframes=per_tf,
    )


def build_market_state(features: pl.DataFrame, symbol: str, at: datetime) -> MarketState:
    """The state of `symbol` at decision time `at` from the long features table."""
    at = _as_utc(at)
    table = market_state_table(
        features.filter(pl.col("symbol") == symbol), pl.DataFrame({"symbol": [symbol], "at": [at]})
    )
    return state_from_row(table.row(0, named=True))


def states_from_table(table: pl.DataFrame) -> list[MarketState]:
    return [state_from_row(row) for row in table.iter_rows(named=True)]


# --- formatting helpers --------------------------------------------------------------------------


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _clean(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _fmt(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "na"
    return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0 turns -0.0 into 0.0: no "-0.00"


def _pct(value: float | None) -> str:
    return "na" if value is None else f"{_fmt(value, 2)}%"


def _num(value: float) -> str:
    """Prices and volumes with about six significant digits (compact for the tokenizer)."""
    if value >= 1e9:
        return f"{value / 1e9:.2f}B"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 100:
        return f"{value:.1f}"
    return f"{value:.6g}"


# --- states straight from recorded files (the `decide` command, examples, tests) -----------------


def build_market_state_from_recorded(symbol: str, at: datetime, settings: Any = None) -> MarketState:
    """The state of `symbol` at `at`, computed in memory from the recorded Parquet bars.

    Only bars that had closed by `at` are read (the filter is pushed into the Parquet scan), so the
    state cannot see the future even by accident. Timeframes missing from the recording are left out.
    """
    from crypto_pipeline.config import get_settings
    from crypto_pipeline.features import compute_features
    from crypto_pipeline.market.sources import RecordedSource

    settings = settings or get_settings()
    at = _as_utc(at)
    source = RecordedSource(settings.market_data_dir)
    frames = []
    for tf_name in STATE_TIMEFRAMES:
        tf = Timeframe.parse(tf_name)
        if tf not in source.timeframes():
            continue
        # Closed by `at`: open time + duration <= at, i.e. open time < at - duration + 1 us.
        end = at - tf.duration + timedelta(microseconds=1)
        bars = source.fetch_bars([symbol], tf, datetime(1970, 1, 1, tzinfo=UTC), end)
        bars = bars.filter(pl.col("timestamp").is_not_null())
        if bars.height:
            frames.append(compute_features(bars, tf).with_columns(pl.lit(tf.value).alias("timeframe")))
    if not frames:
        raise ValueError(
            f"no recorded bars for {symbol!r} closed by {at:%Y-%m-%d %H:%M} in {settings.market_data_dir}"
        )
    return build_market_state(pl.concat(frames, how="diagonal_relaxed"), symbol, at)
