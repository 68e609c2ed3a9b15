"""Alpaca's crypto rules: 9-decimal quantities, price grid, minimum sizes, fee tiers, slippage, reserves."""

from __future__ import annotations

import pytest

from crypto_pipeline.trading import Liquidity, OrderSide, OrderType, rules
from crypto_pipeline.trading.rules import FeeSchedule, SlippageModel


def test_quantities_round_down_to_nine_decimals_in_decimal_arithmetic() -> None:
    assert rules.floor_qty(0.1234567899) == 0.123456789
    assert rules.floor_qty(0.3) == 0.3  # binary 0.29999... must not lose a step
    assert rules.add_qty(0.1, 0.2) == 0.3
    assert rules.decimal_places("0.0123456789") == 10 and rules.decimal_places("1.50") == 1
    assert rules.decimal_places("abc") == 0


def test_prices_snap_to_the_assets_grid() -> None:
    assert rules.round_price(123.456789, 0.01) == 123.46
    assert rules.round_price(60_000.4, 1) == 60_000.0
    assert rules.price_increment("BTC/USDT") == rules.DEFAULT_PRICE_INCREMENT == 1e-9


def test_the_minimum_order_size_is_about_a_dollars_worth_as_a_power_of_ten() -> None:
    assert rules.min_order_size(60_000.0) == 1e-5
    assert rules.min_order_size(3_000.0) == 1e-4
    assert rules.min_order_size(0.5) == 1.0
    assert rules.min_order_size(1e12) == 1e-9  # never finer than the quantity step
    assert rules.MIN_NOTIONAL == 1.0


def test_fees_follow_alpacas_tiers_by_thirty_day_volume() -> None:
    assert (rules.fee_tier(0).maker_bps, rules.fee_tier(0).taker_bps) == (15.0, 25.0)
    assert rules.fee_tier(99_999.99).taker_bps == 25.0 and rules.fee_tier(100_000).taker_bps == 22.0
    assert (rules.fee_tier(2e8).maker_bps, rules.fee_tier(2e8).taker_bps) == (0.0, 10.0)
    assert [t.min_volume_30d for t in rules.FEE_TIERS] == sorted(t.min_volume_30d for t in rules.FEE_TIERS)
    fees = FeeSchedule()
    assert fees == FeeSchedule.for_volume(0) == FeeSchedule(15.0, 25.0)
    assert fees.fee(10_000.0, Liquidity.MAKER) == pytest.approx(15.0)
    assert fees.fee(10_000.0, "taker") == pytest.approx(25.0)


def test_slippage_grows_linearly_with_size_and_is_capped_by_participation() -> None:
    model = SlippageModel(impact_coefficient=0.1, max_participation=0.1)
    assert model.capacity(123.4567891234) == 12.345678912
    assert model.impact(5.0, 100.0) == pytest.approx(0.005)
    assert model.impact(5.0, 0.0) == 0.1  # a bar without volume: the full coefficient
    assert model.taker_price(OrderSide.BUY, 100.0, 5.0, 100.0) == pytest.approx(100.5)
    assert model.taker_price(OrderSide.SELL, 100.0, 5.0, 100.0) == pytest.approx(99.5)
    assert model.worst_impact_factor == pytest.approx(1.01)


def test_a_market_buy_reserves_the_worst_impact_and_the_taker_fee_a_limit_only_the_fee() -> None:
    fees, slippage = FeeSchedule(15.0, 25.0), SlippageModel(0.1, 0.1)
    assert rules.buy_reserve(1_000.0, OrderType.MARKET, fees, slippage) == pytest.approx(
        1_000 * 1.01 * 1.0025
    )
    assert rules.buy_reserve(1_000.0, OrderType.LIMIT, fees, slippage) == pytest.approx(1_000 * 1.0025)
