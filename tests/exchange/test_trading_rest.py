"""The trading REST API and its matching rules, driven through alpaca-py's TradingClient.

Tests that assert which bar or price something happened at drive a stepped clock (`stepped`); the
others run against the shared exchange whose clock runs in real time and assert only what holds at any
speed (shapes, rejections, eventual fills)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from alpaca.common.exceptions import APIError
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.requests import CryptoLatestBarRequest, CryptoLatestQuoteRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetAssetsRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    StopLimitOrderRequest,
)

from crypto_pipeline.exchange import ExchangeServer

from .conftest import KEY, SECRET, STEPPED_START, bars_5m, half_spread, wait_for

BUY, SELL, GTC, IOC = OrderSide.BUY, OrderSide.SELL, TimeInForce.GTC, TimeInForce.IOC


def quote(data_client: CryptoHistoricalDataClient, symbol: str):  # noqa: ANN201
    return data_client.get_crypto_latest_quote(CryptoLatestQuoteRequest(symbol_or_symbols=symbol))[symbol]


def latest_bar(data_client: CryptoHistoricalDataClient, symbol: str):  # noqa: ANN201
    return data_client.get_crypto_latest_bar(CryptoLatestBarRequest(symbol_or_symbols=symbol))[symbol]


def clients(server: ExchangeServer) -> tuple[TradingClient, CryptoHistoricalDataClient]:
    return (
        TradingClient(KEY, SECRET, paper=True, url_override=server.base_url),
        CryptoHistoricalDataClient(KEY, SECRET, url_override=server.base_url),
    )


def rejection(call) -> APIError:  # noqa: ANN001
    with pytest.raises(APIError) as error:
        call()
    return error.value


def test_account_clock_and_assets_have_alpacas_shapes(trading: TradingClient) -> None:
    account = trading.get_account()
    assert account.status == "ACTIVE" and float(account.cash) > 0 and account.shorting_enabled is False
    assert trading.get_clock().is_open is True
    assets = trading.get_all_assets(GetAssetsRequest(asset_class="crypto"))
    assert len(assets) == 136 and {a.symbol for a in assets} >= {"BTC/USDT", "ETH/USDT"}
    btc = trading.get_asset("BTC/USDT")
    assert btc.asset_class == "crypto" and not btc.shortable and not btc.marginable and btc.fractionable
    assert trading.get_asset("BTCUSDT").id == btc.id
    assert rejection(lambda: trading.get_asset("NOPE/USDT")).status_code == 404


def test_a_market_buy_fills_at_the_ask_plus_impact_and_opens_a_position(stepped: ExchangeServer) -> None:
    trading, data_client = clients(stepped)
    stepped.advance_to(STEPPED_START + timedelta(hours=1))  # the clock stands here while the test trades
    cash_before = float(trading.get_account().cash)
    ask = quote(data_client, "ETH/USDT").ask_price
    volume = latest_bar(data_client, "ETH/USDT").volume
    order = trading.submit_order(MarketOrderRequest(symbol="ETH/USDT", qty=0.5, side=BUY, time_in_force=GTC))
    assert order.status == OrderStatus.FILLED and float(order.filled_qty) == 0.5
    assert float(order.filled_avg_price) == pytest.approx(ask * (1 + 0.1 * 0.5 / volume), rel=1e-9)
    cost = 0.5 * float(order.filled_avg_price)
    assert float(trading.get_account().cash) == pytest.approx(cash_before - cost * 1.0025, rel=1e-9)
    position = trading.get_open_position("ETH/USDT")
    assert float(position.qty) >= 0.5 and position.side == "long" and position.symbol == "ETHUSDT"
    assert trading.get_order_by_client_id(order.client_order_id).id == order.id
    assert trading.get_order_by_id(order.id).status == OrderStatus.FILLED


def test_a_resting_limit_fills_as_maker_at_its_price_on_the_first_later_bar_through_it(
    stepped: ExchangeServer, capture_days_data: Path
) -> None:
    # The test knows the recorded future (the exchange does not) and moves the clock itself: it picks a
    # resting limit (a buy below the bid or a sell above the ask, whichever the next hours reach first),
    # steps to just before the first bar through it closes (still resting), then to that close.
    trading, data_client = clients(stepped)
    stepped.advance_to(STEPPED_START + timedelta(days=1))
    trading.submit_order(MarketOrderRequest(symbol="BTC/USDT", qty=0.01, side=BUY, time_in_force=GTC))
    touch = quote(data_client, "BTC/USDT")
    now = trading.get_clock().timestamp
    future = bars_5m(capture_days_data, "BTC/USDT", since=now).head(300)  # bars opening from now on
    buy_at, sell_at = round(touch.bid_price * 0.9995, 2), round(touch.ask_price * 1.0005, 2)
    buy_reach = next((i for i, low in enumerate(future["low"]) if low < buy_at), 10**6)
    sell_reach = next((i for i, high in enumerate(future["high"]) if high > sell_at), 10**6)
    assert min(buy_reach, sell_reach) < 300, "the next day never moves 5 bp: pick another start"
    side, limit, reach = (BUY, buy_at, buy_reach) if buy_reach <= sell_reach else (SELL, sell_at, sell_reach)
    first = future.row(reach, named=True)
    assert (first["open"] > limit) if side == BUY else (first["open"] < limit), (
        "it opens through: pick another"
    )
    order = trading.submit_order(
        LimitOrderRequest(symbol="BTC/USDT", qty=0.01, side=side, time_in_force=GTC, limit_price=limit)
    )
    assert order.status == OrderStatus.NEW and float(order.filled_qty) == 0
    closes_at = first["timestamp"] + timedelta(minutes=5)
    stepped.advance_to(closes_at - timedelta(seconds=1))
    assert trading.get_order_by_id(order.id).status == OrderStatus.NEW
    stepped.advance_to(closes_at)
    filled = trading.get_order_by_id(order.id)
    assert filled.status == OrderStatus.FILLED and filled.filled_at == closes_at
    assert float(filled.filled_avg_price) == limit  # a maker fill at its own price


def test_a_stop_limit_waits_for_its_stop_then_works_as_a_limit(
    stepped: ExchangeServer, capture_days_data: Path
) -> None:
    trading, data_client = clients(stepped)
    stepped.advance_to(STEPPED_START + timedelta(days=2))
    trading.submit_order(MarketOrderRequest(symbol="BTC/USDT", qty=0.01, side=BUY, time_in_force=GTC))
    touch = quote(data_client, "BTC/USDT")
    future = bars_5m(capture_days_data, "BTC/USDT", since=trading.get_clock().timestamp).head(300)
    up, down = round(touch.ask_price * 1.0005, 2), round(touch.bid_price * 0.9995, 2)
    up_reach = next((i for i, high in enumerate(future["high"]) if high >= up), 10**6)
    down_reach = next((i for i, low in enumerate(future["low"]) if low <= down), 10**6)
    assert min(up_reach, down_reach) < 299, "the next day never moves 5 bp: pick another start"
    # a buy stop above the market if it rises first, else a sell stop below it; the limit is 5% beyond
    if up_reach <= down_reach:
        side, stop, limit, armed = BUY, up, round(up * 1.05, 2), up_reach
    else:
        side, stop, limit, armed = SELL, down, round(down * 0.95, 2), down_reach
    order = trading.submit_order(
        StopLimitOrderRequest(
            symbol="BTC/USDT", qty=0.01, side=side, time_in_force=GTC, stop_price=stop, limit_price=limit
        )
    )
    assert order.status == OrderStatus.NEW
    # the bar that trades through the stop arms it; it works as a limit from the next bar on, which
    # opens well inside the limit: a taker fill at that bar's open plus spread and impact
    stepped.advance_to(future["timestamp"][armed] + timedelta(minutes=5))
    assert trading.get_order_by_id(order.id).status == OrderStatus.NEW
    bar = future.row(armed + 1, named=True)
    stepped.advance_to(bar["timestamp"] + timedelta(minutes=5))
    filled = trading.get_order_by_id(order.id)
    assert filled.status == OrderStatus.FILLED and filled.filled_at == bar["timestamp"] + timedelta(minutes=5)
    sign = 1 if side == BUY else -1
    expected = bar["open"] * (1 + sign * half_spread(bar)) * (1 + sign * 0.1 * 0.01 / bar["volume"])
    assert abs(expected / limit - 1) > 0.01  # inside the limit: the limit does not cap the price
    assert float(filled.filled_avg_price) == pytest.approx(expected, rel=1e-9)


def test_an_ioc_limit_that_cannot_trade_is_canceled_at_once(
    trading: TradingClient, data_client: CryptoHistoricalDataClient
) -> None:
    limit = round(quote(data_client, "BTC/USDT").bid_price * 0.8, 2)
    order = trading.submit_order(
        LimitOrderRequest(symbol="BTC/USDT", qty=0.01, side=BUY, time_in_force=IOC, limit_price=limit)
    )
    assert order.status == OrderStatus.CANCELED and float(order.filled_qty) == 0


def test_an_order_larger_than_the_bar_allows_fills_partially_then_over_later_bars(
    stepped: ExchangeServer, capture_days_data: Path
) -> None:
    trading, data_client = clients(stepped)
    stepped.advance_to(STEPPED_START + timedelta(days=3))
    now = trading.get_clock().timestamp
    bar = latest_bar(data_client, "ETH/USDT")
    qty = round(bar.volume * 0.15, 2)  # 10% of a bar fills at once
    order = trading.submit_order(MarketOrderRequest(symbol="ETH/USDT", qty=qty, side=BUY, time_in_force=GTC))
    cap = int(bar.volume * 0.1 * 10**9) / 10**9
    assert order.status == OrderStatus.PARTIALLY_FILLED and float(order.filled_qty) == pytest.approx(cap)
    # each later bar takes up to 10% of its own volume: the recorded bars say which one completes it
    left, done_at = qty - cap, None
    for later in bars_5m(capture_days_data, "ETH/USDT", since=now).iter_rows(named=True):
        left -= min(left, int(later["volume"] * 0.1 * 10**9) / 10**9)
        if left <= 1e-9:
            done_at = later["timestamp"] + timedelta(minutes=5)
            break
    assert done_at is not None
    stepped.advance_to(done_at - timedelta(seconds=1))
    assert trading.get_order_by_id(order.id).status == OrderStatus.PARTIALLY_FILLED
    stepped.advance_to(done_at)
    done = trading.get_order_by_id(order.id)
    assert done.status == OrderStatus.FILLED and done.filled_at == done_at
    assert float(done.filled_qty) == pytest.approx(qty)
    # a small order pays next to no impact: it fills at the ask (that impact grows with size is proved
    # exactly in test_frozen_clock_rules.py)
    small_qty = round(qty / 100, 2)
    ask, volume = quote(data_client, "ETH/USDT").ask_price, latest_bar(data_client, "ETH/USDT").volume
    small = trading.submit_order(
        MarketOrderRequest(symbol="ETH/USDT", qty=small_qty, side=BUY, time_in_force=IOC)
    )
    assert float(small.filled_avg_price) == pytest.approx(ask * (1 + 0.1 * small_qty / volume), rel=1e-9)
    closing = trading.close_position("ETH/USDT")  # larger than a bar allows again: later bars finish it
    stepped.advance_to(done_at + timedelta(hours=6))
    assert trading.get_order_by_id(closing.id).status == OrderStatus.FILLED


def test_orders_are_listed_by_status_and_canceled_singly_or_all(
    trading: TradingClient, data_client: CryptoHistoricalDataClient
) -> None:
    low = round(quote(data_client, "ETH/USDT").bid_price * 0.7, 2)
    first = trading.submit_order(
        LimitOrderRequest(symbol="ETH/USDT", qty=0.01, side=BUY, time_in_force=GTC, limit_price=low)
    )
    second = trading.submit_order(
        LimitOrderRequest(symbol="ETH/USDT", qty=0.02, side=BUY, time_in_force=GTC, limit_price=low)
    )
    open_ids = {o.id for o in trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))}
    assert {first.id, second.id} <= open_ids
    trading.cancel_order_by_id(first.id)
    assert trading.get_order_by_id(first.id).status == OrderStatus.CANCELED
    error = rejection(lambda: trading.cancel_order_by_id(first.id))
    assert error.status_code == 422 and "canceled" in error.message
    canceled = trading.cancel_orders()
    assert second.id in {c.id for c in canceled}
    assert not trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))
    closed = trading.get_orders(
        GetOrdersRequest(status=QueryOrderStatus.CLOSED, symbols=["ETH/USDT"], limit=500)
    )
    assert {first.id, second.id} <= {o.id for o in closed}
    assert (
        rejection(lambda: trading.get_order_by_id("00000000-0000-0000-0000-000000000000")).status_code == 404
    )


def test_positions_close_partly_singly_and_all_at_once(trading: TradingClient) -> None:
    trading.submit_order(MarketOrderRequest(symbol="XRP/USDT", qty=100, side=BUY, time_in_force=GTC))
    trading.submit_order(MarketOrderRequest(symbol="LINK/USDT", qty=10, side=BUY, time_in_force=GTC))
    half = trading.close_position("XRP/USDT", ClosePositionRequest(percentage="50"))
    assert half.side == SELL and float(half.qty) == pytest.approx(50)
    assert float(trading.get_open_position("XRPUSDT").qty) == pytest.approx(50)
    results = trading.close_all_positions(cancel_orders=True)
    assert {r.symbol for r in results} >= {"XRP/USDT", "LINK/USDT"} and all(r.status == 200 for r in results)
    # close orders are market gtc orders: a big one may need more than one bar to fill
    wait_for(lambda: trading.get_all_positions() == [], timeout=20)
    assert rejection(lambda: trading.get_open_position("XRP/USDT")).status_code == 404


class TestRejections:
    """Every spot rule answers with Alpaca's status code and a message that names the problem."""

    def test_selling_what_is_not_held_is_refused(self, trading: TradingClient) -> None:
        error = rejection(
            lambda: trading.submit_order(
                MarketOrderRequest(symbol="DOGE/USDT", qty=100, side=SELL, time_in_force=GTC)
            )
        )
        assert error.status_code == 403 and error.message.startswith("insufficient balance for DOGE")

    def test_buying_beyond_buying_power_is_refused(self, trading: TradingClient) -> None:
        error = rejection(
            lambda: trading.submit_order(
                MarketOrderRequest(symbol="BTC/USDT", qty=100, side=BUY, time_in_force=GTC)
            )
        )
        assert error.status_code == 403 and error.message.startswith("insufficient balance for USD")

    def test_open_buy_orders_use_up_buying_power(
        self, trading: TradingClient, data_client: CryptoHistoricalDataClient
    ) -> None:
        cash = float(trading.get_account().buying_power)
        low = round(quote(data_client, "BTC/USDT").bid_price * 0.5, 2)
        qty = round(cash * 0.6 / low, 4)
        resting = trading.submit_order(
            LimitOrderRequest(symbol="BTC/USDT", qty=qty, side=BUY, time_in_force=GTC, limit_price=low)
        )
        try:
            error = rejection(
                lambda: trading.submit_order(
                    LimitOrderRequest(
                        symbol="BTC/USDT", qty=qty, side=BUY, time_in_force=GTC, limit_price=low
                    )
                )
            )
            assert error.status_code == 403
        finally:
            trading.cancel_order_by_id(resting.id)

    def test_below_the_minimum_order_size_is_refused(self, trading: TradingClient) -> None:
        minimum = float(trading.get_asset("BTC/USDT").min_order_size)
        error = rejection(
            lambda: trading.submit_order(
                MarketOrderRequest(symbol="BTC/USDT", qty=round(minimum / 10, 9), side=BUY, time_in_force=GTC)
            )
        )
        assert error.status_code == 422 and "minimum order size" in error.message

    def test_below_the_minimum_notional_is_refused(self, trading: TradingClient) -> None:
        error = rejection(
            lambda: trading.submit_order(
                MarketOrderRequest(symbol="ETH/USDT", notional=0.5, side=BUY, time_in_force=GTC)
            )
        )
        assert error.status_code == 403 and "minimal amount of order" in error.message

    def test_more_than_nine_decimals_is_refused(self, trading: TradingClient) -> None:
        error = rejection(
            lambda: trading.submit_order(
                MarketOrderRequest(symbol="ETH/USDT", qty=0.0123456789, side=BUY, time_in_force=GTC)
            )
        )
        assert error.status_code == 422 and "9 decimal places" in error.message

    def test_a_duplicate_client_order_id_is_refused(self, trading: TradingClient) -> None:
        request = MarketOrderRequest(
            symbol="ETH/USDT", qty=0.01, side=BUY, time_in_force=GTC, client_order_id="dup-1"
        )
        trading.submit_order(request)
        error = rejection(lambda: trading.submit_order(request))
        assert error.status_code == 422 and error.message == "client_order_id must be unique"

    def test_a_time_in_force_crypto_does_not_support_is_refused(self, trading: TradingClient) -> None:
        error = rejection(
            lambda: trading.submit_order(
                MarketOrderRequest(symbol="ETH/USDT", qty=0.01, side=BUY, time_in_force=TimeInForce.DAY)
            )
        )
        assert error.status_code == 422 and "time_in_force" in error.message

    def test_an_unknown_symbol_is_refused(self, trading: TradingClient) -> None:
        error = rejection(
            lambda: trading.submit_order(
                MarketOrderRequest(symbol="NOPE/USDT", qty=1, side=BUY, time_in_force=GTC)
            )
        )
        assert error.status_code == 422 and "NOPE/USDT" in error.message

    def test_refused_orders_leave_no_trace(self, trading: TradingClient) -> None:
        before = len(trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500)))
        rejection(
            lambda: trading.submit_order(
                MarketOrderRequest(symbol="DOGE/USDT", qty=10**6, side=SELL, time_in_force=GTC)
            )
        )
        assert len(trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))) == before


def test_trading_with_wrong_or_missing_keys_is_refused_and_does_nothing(
    exchange: ExchangeServer, trading: TradingClient
) -> None:
    before = len(trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500)))
    request = MarketOrderRequest(symbol="ETH/USDT", qty=0.01, side=BUY, time_in_force=GTC)
    wrong = TradingClient(KEY, "wrong-secret", paper=True, url_override=exchange.base_url)
    assert rejection(lambda: wrong.submit_order(request)).status_code == 403
    assert rejection(lambda: wrong.get_account()).status_code == 403
    assert len(trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))) == before
