"""Requests that alpaca-py would never send, over raw HTTP: the pydantic request models and query
parameters refuse them with Alpaca's status and `{"code", "message"}` body, and nothing is booked."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import msgpack
import pytest

from crypto_pipeline.exchange import ExchangeServer
from crypto_pipeline.exchange.book import BarView
from crypto_pipeline.exchange.data_wire import bar_wire, stream_message, stream_time
from tests.exchange.conftest import KEY, SECRET

INVALID = 40010001


@pytest.fixture
def http(exchange: ExchangeServer) -> Iterator[httpx.Client]:
    headers = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
    with httpx.Client(base_url=exchange.base_url, headers=headers, timeout=10.0) as client:
        yield client


def refused(response: httpx.Response, status: int = 422) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == INVALID
    return body["message"]


def test_order_bodies_of_the_wrong_shape_are_a_422_and_book_nothing(
    http: httpx.Client, exchange: ExchangeServer
) -> None:
    before = len(exchange.venue.broker.orders)
    headers = {"Content-Type": "application/json"}
    assert refused(http.post("/v2/orders", content=b"{not json", headers=headers)) == (
        "request body is not valid JSON"
    )
    assert refused(http.post("/v2/orders", json=[1, 2])) == "request body must be a JSON object"
    order = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "time_in_force": "gtc"}
    assert refused(http.post("/v2/orders", json={**order, "qty": "a lot"})).startswith("invalid qty:")
    assert refused(http.post("/v2/orders", json={**order, "qty": "inf"})) == (
        "invalid qty: Input should be a finite number"
    )
    assert refused(http.post("/v2/orders", json={**order, "symbol": 7})).startswith("invalid symbol:")
    # Well-formed but against a rule: the validator's message, as before.
    assert refused(http.post("/v2/orders", json={**order, "qty": 0.01, "symbol": ""})) == "symbol is required"
    assert refused(http.post("/v2/orders", json={**order, "qty": 0.01, "side": "short"})).startswith(
        "invalid side:"
    )
    assert refused(http.post("/v2/orders", json={"symbol": "BTC/USDT", "side": "buy", "qty": 0.01})) == (
        "type is required"
    )
    assert refused(http.post("/v2/orders", json={**order, "qty": 0.01, "type": "stop"})) == (
        "invalid order type for crypto order: stop"
    )
    assert refused(http.post("/v2/orders", json={**order, "qty": 0.0100000001})) == (
        "qty must have at most 9 decimal places"
    )
    assert len(exchange.venue.broker.orders) == before


def test_bad_query_parameters_name_the_parameter(http: httpx.Client) -> None:
    bars = "/v1beta3/crypto/us/bars"
    assert refused(http.get(bars, params={"symbols": "BTC/USDT"})) == "timeframe is required"
    assert refused(
        http.get(bars, params={"symbols": "BTC/USDT", "timeframe": "1Hour", "limit": 0})
    ).startswith("invalid limit:")
    assert refused(
        http.get(bars, params={"symbols": "BTC/USDT", "timeframe": "1Hour", "start": "last tuesday"})
    ).startswith("invalid start:")
    assert refused(
        http.get(bars, params={"symbols": "BTC/USDT", "timeframe": "1Hour", "sort": "up"})
    ).startswith("invalid sort:")
    # Missing symbols stays Alpaca's 400.
    assert refused(http.get(bars, params={"timeframe": "1Hour"}), status=400) == "missing symbols"
    assert refused(http.get("/v2/orders", params={"status": "pending"})).startswith("invalid status:")
    assert refused(http.get("/v2/orders", params={"limit": 501})).startswith("invalid limit:")
    assert refused(http.get("/v2/orders:by_client_order_id")) == "client_order_id is required"
    assert refused(http.delete("/v2/positions", params={"cancel_orders": "maybe"})).startswith(
        "invalid cancel_orders:"
    )
    assert refused(http.delete("/v2/positions/BTC/USDT", params={"percentage": 150})).startswith(
        "invalid percentage:"
    )


def test_an_unencoded_plus_in_a_query_time_is_read_as_the_offset(http: httpx.Client) -> None:
    # "+00:00" sent raw arrives as " 00:00"; the bars must be those of the same instant.
    raw = "/v1beta3/crypto/us/bars?symbols=BTC/USDT&timeframe=1Day&start=2024-05-01T00:00:00+00:00&limit=3"
    encoded = {"symbols": "BTC/USDT", "timeframe": "1Day", "start": "2024-05-01T00:00:00+00:00", "limit": 3}
    first, second = http.get(raw), http.get("/v1beta3/crypto/us/bars", params=encoded)
    assert first.status_code == second.status_code == 200
    assert first.json()["bars"]["BTC/USDT"][0]["t"] == "2024-05-01T00:00:00Z"
    assert first.json() == second.json()


def test_rest_and_websocket_bars_are_the_same_fields_stamped_two_ways() -> None:
    bar = BarView("BTC/USDT", 0, 60 * 10**9, 120 * 10**9, 1.0, 2.0, 0.5, 1.5, 10.0, None, 1.2)
    rest = bar_wire(bar)
    message = stream_message("b", bar.symbol, bar_wire(bar, stream_time))
    assert rest["t"] == "1970-01-01T00:01:00Z"
    assert message.pop("T") == "b" and message.pop("S") == "BTC/USDT"
    assert message.pop("t") == msgpack.Timestamp.from_unix_nano(bar.open_ns)
    assert message == {k: v for k, v in rest.items() if k != "t"}
    assert list(rest) == ["t", "o", "h", "l", "c", "v", "n", "vw"]
