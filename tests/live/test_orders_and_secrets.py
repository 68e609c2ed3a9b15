"""Order idempotency when the venue took an order but the answer was lost, and secrets that reach
no file a session writes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alpaca.common.exceptions import APIError
from requests import HTTPError, Response

from crypto_pipeline.config import Settings
from crypto_pipeline.execution import client_order_id
from crypto_pipeline.journal.writer import Journal
from crypto_pipeline.live.orders import OrderDesk
from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.live.venue import Clients, Credentials, Endpoints
from crypto_pipeline.trading import OrderIntent, OrderSide
from crypto_pipeline.warehouse import Warehouse

from .conftest import AlwaysBuy, Running, live_config

AT = datetime(2024, 8, 5, 13, tzinfo=UTC)


def api_error(status: int, message: str) -> APIError:
    response = Response()
    response.status_code = status
    return APIError(f'{{"code": {status}0000, "message": "{message}"}}', HTTPError(response=response))


class TakesThenFails:
    """A venue that stores the order and then answers 500 (the answer is lost), then enforces unique
    client ids as Alpaca does."""

    def __init__(self) -> None:
        self.orders: dict[str, dict] = {}
        self.posts = 0

    def submit_order(self, request) -> dict:  # noqa: ANN001
        self.posts += 1
        if request.client_order_id in self.orders:
            raise api_error(422, "client_order_id must be unique")
        self.orders[request.client_order_id] = {
            "id": f"o{len(self.orders)}",
            "client_order_id": request.client_order_id,
            "symbol": request.symbol,
            "status": "filled",
            "filled_qty": str(request.qty),
            "filled_avg_price": "100",
            "side": "buy",
            "updated_at": AT.isoformat(),
        }
        if self.posts == 1:
            raise api_error(500, "internal server error")
        return self.orders[request.client_order_id]

    def get_order_by_client_id(self, cid: str) -> dict:
        return self.orders[cid]


def test_an_order_the_venue_took_before_a_500_is_not_placed_again(tmp_path: Path) -> None:
    venue = TakesThenFails()
    desk = OrderDesk(venue, Journal(Warehouse(tmp_path), "s"), "s", sleep=lambda _: None)  # type: ignore[arg-type]
    cid = client_order_id("s", "BTC/USDT", AT)
    order = desk.submit(OrderIntent(symbol="BTC/USDT", side=OrderSide.BUY, qty=0.5), cid, AT)
    assert order is not None and order["client_order_id"] == cid
    assert len(venue.orders) == 1 and venue.posts == 2
    assert desk.submitted == 0 and desk.reused == 1
    desk.journal.flush()
    fills = desk.journal.warehouse.read("fills")
    assert fills["qty"].to_list() == [0.5]


class ManyOrders:
    """A venue holding 1,200 orders of session s (two at each minute) and some of session s-x; it
    answers GET /v2/orders as Alpaca does: submitted after `after` (exclusive), oldest first, `limit`."""

    def __init__(self) -> None:
        self.requests: list = []
        self.orders = [
            {
                "id": f"{session}{i}",
                "client_order_id": client_order_id(
                    session, "BTC/USDT", AT + timedelta(minutes=i // 2), f"d{i}"
                ),
                "created_at": (AT + timedelta(minutes=i // 2)).isoformat(),
            }
            for session, n in (("s", 1200), ("s-x", 10))
            for i in range(n)
        ]

    def get_orders(self, request) -> list[dict]:  # noqa: ANN001
        self.requests.append(request)
        after = request.after
        chosen = [o for o in self.orders if after is None or datetime.fromisoformat(o["created_at"]) > after]
        return sorted(chosen, key=lambda o: o["created_at"])[: request.limit]


def test_reconciling_pages_through_every_order_of_the_session_and_no_other(tmp_path: Path) -> None:
    venue = ManyOrders()
    desk = OrderDesk(venue, Journal(Warehouse(tmp_path), "s"), "s")  # type: ignore[arg-type]
    orders = desk._session_orders(AT - timedelta(seconds=1))
    assert sorted(o["id"] for o in orders) == sorted(f"s{i}" for i in range(1200))
    assert len(venue.requests) == 3 and all(r.status.value == "all" for r in venue.requests)


def test_the_secret_key_appears_in_no_file_the_session_writes(start_exchange, tmp_path, monkeypatch) -> None:
    secret = "s3cr3t-value-that-must-not-leak-7f1c"
    monkeypatch.setenv("ALPACA_API_KEY", "leak-test-key")
    monkeypatch.setenv("ALPACA_SECRET_KEY", secret)
    settings = Settings(warehouse_dir=tmp_path / "warehouse")
    server = start_exchange(
        key="leak-test-key", secret=secret, db_path=tmp_path / "venue" / "exchange.sqlite"
    )
    log_file = tmp_path / "logs" / "live.log"
    log_file.parent.mkdir()
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # everything any library logs, websocket frames included
    try:
        clients = Clients.connect(
            Endpoints.local(server.base_url), Credentials.from_settings(settings, "local")
        )
        session = LiveSession(live_config(), clients, AlwaysBuy(), Warehouse(settings.warehouse_dir))
        with Running(session, server) as running:
            running.step(1)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()
    assert session.report.orders_submitted >= 2
    written = [p for p in (tmp_path / "warehouse").rglob("*") if p.is_file()] + [log_file]
    assert any(p.suffix == ".parquet" for p in written) and log_file.stat().st_size > 0
    # Not even a piece: websockets abbreviates the frames it logs, which would cut the key, not hide it.
    pieces = [secret[i : i + 8].encode() for i in range(len(secret) - 7)]
    pieces += [" ".join(f"{b:02x}" for b in piece).encode() for piece in pieces]  # a frame logged in hex
    leaked = [str(p) for p in written if any(piece in p.read_bytes() for piece in pieces)]
    assert leaked == []
    assert (
        b"authorized" in log_file.read_bytes()
    )  # the streams did log at DEBUG: the check had something to read
