"""Alpaca's crypto spot trading rules in one place: precision and rounding, minimum sizes, the fee tiers
and the slippage model. Pure functions and constants, shared by the exchange, the backtest, the risk
engine and the live loop, so that an order sized in a backtest is one Alpaca would accept."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, InvalidOperation

from crypto_pipeline.trading.enums import Liquidity, OrderSide, OrderType, TimeInForce

# --- precision ----------------------------------------------------------------------------------
QTY_DECIMALS = 9  # Alpaca: crypto quantities up to 9 decimals ("min_trade_increment": "0.000000001")
QTY_INCREMENT = 10.0**-QTY_DECIMALS
# The price step each asset lists ("price_increment"). The replayed Binance data quotes some pairs to 8
# and more decimals, so every asset lists the finest step; `price_increment` is the one place to change.
DEFAULT_PRICE_INCREMENT = 1e-9

# --- what an order may be -------------------------------------------------------------------------
MIN_NOTIONAL = 1.0  # Alpaca refuses crypto orders worth less than $1 ("minimal amount of order")
CLIENT_ORDER_ID_MAX = 128
CRYPTO_ORDER_TYPES: tuple[OrderType, ...] = (OrderType.MARKET, OrderType.LIMIT, OrderType.STOP_LIMIT)
CRYPTO_TIMES_IN_FORCE: tuple[TimeInForce, ...] = (TimeInForce.GTC, TimeInForce.IOC)

_QUANTUM = Decimal(1).scaleb(-QTY_DECIMALS)


def floor_qty(qty: float) -> float:
    """Round down to Alpaca's 9 decimals (never sell more than asked or held); decimal, not binary."""
    return float(Decimal(repr(qty)).quantize(_QUANTUM, rounding=ROUND_DOWN))


def add_qty(a: float, b: float) -> float:
    """Sum of two 9-decimal quantities, exact at 9 decimals (binary floats drift at the 1e-9 digit)."""
    return round(a + b, QTY_DECIMALS)


def decimal_places(value: object) -> int:
    """Decimals a quantity is written with (`0.10` has 1); 0 for what is not a number."""
    try:
        exponent = Decimal(str(value)).normalize().as_tuple().exponent
    except InvalidOperation:
        return 0
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def price_increment(symbol: str) -> float:
    """The price step of `symbol` (see DEFAULT_PRICE_INCREMENT)."""
    return DEFAULT_PRICE_INCREMENT


def round_price(price: float, increment: float = DEFAULT_PRICE_INCREMENT) -> float:
    """`price` on the asset's price grid (half-even, in decimal)."""
    step = Decimal(repr(increment))
    return float((Decimal(repr(price)) / step).quantize(Decimal(1), rounding=ROUND_HALF_EVEN) * step)


def min_order_size(reference_price: float) -> float:
    """About a dollar's worth at `reference_price`, as a power of ten (Alpaca lists one per asset);
    never finer than the quantity step."""
    exponent = math.floor(math.log10(1.0 / reference_price)) if reference_price > 0 else 0
    return float(10 ** max(-QTY_DECIMALS, exponent))


# --- fees -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeeTier:
    """One row of Alpaca's crypto fee schedule: from this 30-day volume (USD) on, these rates."""

    min_volume_30d: float
    maker_bps: float
    taker_bps: float


# Alpaca's crypto fee tiers by 30-day trading volume (docs.alpaca.markets/docs/crypto-fees).
FEE_TIERS: tuple[FeeTier, ...] = (
    FeeTier(0, 15.0, 25.0),
    FeeTier(100_000, 12.0, 22.0),
    FeeTier(500_000, 10.0, 20.0),
    FeeTier(1_000_000, 8.0, 18.0),
    FeeTier(10_000_000, 5.0, 15.0),
    FeeTier(25_000_000, 2.0, 13.0),
    FeeTier(50_000_000, 2.0, 12.0),
    FeeTier(100_000_000, 0.0, 10.0),
)


def fee_tier(volume_30d: float) -> FeeTier:
    """The tier an account with this 30-day volume (USD) trades at."""
    return [tier for tier in FEE_TIERS if volume_30d >= tier.min_volume_30d][-1]


@dataclass(frozen=True)
class FeeSchedule:
    """Maker and taker rates in basis points of the notional; the default is the lowest tier."""

    maker_bps: float = FEE_TIERS[0].maker_bps
    taker_bps: float = FEE_TIERS[0].taker_bps

    @classmethod
    def for_volume(cls, volume_30d: float) -> FeeSchedule:
        tier = fee_tier(volume_30d)
        return cls(tier.maker_bps, tier.taker_bps)

    def fee(self, notional: float, liquidity: Liquidity | str) -> float:
        bps = self.maker_bps if liquidity == Liquidity.MAKER else self.taker_bps
        return notional * bps / 10_000

    @property
    def worst_rate(self) -> float:
        """The fee per unit of notional that covers any fill (the taker rate)."""
        return self.taker_bps / 10_000


# --- slippage ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlippageModel:
    """Price impact grows linearly with size: `impact_coefficient x qty / bar volume` against the taker;
    one order takes at most `max_participation x bar volume` from a bar (the rest waits or is canceled)."""

    impact_coefficient: float = 0.1
    max_participation: float = 0.1

    def capacity(self, bar_volume: float) -> float:
        """The most one order fills against a bar of this volume."""
        return floor_qty(bar_volume * self.max_participation)

    def impact(self, qty: float, bar_volume: float) -> float:
        """Relative price move a taker of `qty` pays (a bar without volume: the full coefficient)."""
        if bar_volume <= 0:
            return self.impact_coefficient
        return self.impact_coefficient * qty / bar_volume

    def taker_price(self, side: OrderSide | str, reference: float, qty: float, bar_volume: float) -> float:
        move = self.impact(qty, bar_volume)
        return reference * (1 + move) if side == OrderSide.BUY else reference * (1 - move)

    @property
    def worst_impact_factor(self) -> float:
        """The largest price factor one fill can pay (impact at full participation)."""
        return 1 + self.impact_coefficient * self.max_participation


def within_bar(price: float, low: float | None, high: float | None) -> float:
    """A fill price inside the bar it trades in: impact never takes a fill above the bar's high or below
    its low (a bar that opens at its high fills a market buy at the high, not beyond). Unknown bounds
    (None or NaN) leave the price as it is."""
    if high is not None and high == high:
        price = min(price, high)
    if low is not None and low == low:
        price = max(price, low)
    return price


def buy_reserve(
    notional: float, order_type: OrderType | str, fees: FeeSchedule, slippage: SlippageModel
) -> float:
    """Cash a buy of `notional` must have set aside. A market buy may pay up to the largest impact one
    fill has: reserving it means buying power checked at submission still covers the fill, so cash never
    goes negative. A limit never pays more than its limit. Both may pay the taker fee."""
    impact = slippage.worst_impact_factor if order_type == OrderType.MARKET else 1.0
    return notional * impact * (1 + fees.worst_rate)


__all__ = [
    "within_bar",
    "CLIENT_ORDER_ID_MAX",
    "CRYPTO_ORDER_TYPES",
    "CRYPTO_TIMES_IN_FORCE",
    "DEFAULT_PRICE_INCREMENT",
    "FEE_TIERS",
    "MIN_NOTIONAL",
    "QTY_DECIMALS",
    "QTY_INCREMENT",
    "FeeSchedule",
    "FeeTier",
    "SlippageModel",
    "add_qty",
    "buy_reserve",
    "decimal_places",
    "fee_tier",
    "floor_qty",
    "min_order_size",
    "price_increment",
    "round_price",
]
