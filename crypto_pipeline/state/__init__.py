"""MarketState: the snapshot of one symbol at one decision time that the LLM sees, as plain value types
(`MarketState`, `TimeframeIndicators`, `OrderBookSnapshot`, `Portfolio`).

Building states from features is `crypto_pipeline.state.build`; rendering a state as prompt text is
`crypto_pipeline.llm.prompts` (`render_state`, `build_user_prompt`). This module imports neither: the
renderer reads these types, and the builder calls the renderer, so the arrows point one way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the trading model is only named here; importing it would load alpaca-py's enums
    from crypto_pipeline.trading import Account

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
    """What the account holds of this symbol at decision time: the prompt's view of a
    `crypto_pipeline.trading.Account` (build it with `Portfolio.from_account`)."""

    model_config = ConfigDict(frozen=True)

    position_qty: float = 0.0
    avg_entry_price: float | None = None
    cash: float = 0.0
    equity: float = 0.0

    @classmethod
    def from_account(cls, account: Account, symbol: str) -> Portfolio:
        """The account's cash, equity and holding of `symbol`, as the backtest and live loop see it."""
        position = account.position(symbol)
        return cls(
            position_qty=position.qty if position is not None else 0.0,
            avg_entry_price=position.avg_entry_price if position is not None else None,
            cash=account.cash,
            equity=account.equity,
        )

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
