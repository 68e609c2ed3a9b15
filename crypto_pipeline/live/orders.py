"""Orders to the venue through alpaca-py's `TradingClient`, never twice.

Every order's `client_order_id` is derived from (session, symbol, decision bar time, side), so the same
decision always names the same order. A submission that fails with a 429, a 5xx or a lost connection
is sent again, after a backoff with jitter, under the same id: a venue that took it before the error
answers "client_order_id must be unique", and the order it already has is returned instead.
A restarted session therefore re-derives the same ids and cannot double an order.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

from crypto_pipeline.errors import SourceError
from crypto_pipeline.live.journal import Journal
from crypto_pipeline.trading import Account, OrderIntent, OrderType, Position, rules

log = logging.getLogger(__name__)

TERMINAL = {"filled", "canceled", "expired", "rejected", "done_for_day", "replaced"}


def client_order_id(session_id: str, symbol: str, at: datetime, purpose: str = "d") -> str:
    """The one id of the order a session places for `symbol` on the bar closing at `at` (`purpose`
    "d" for a decision; the drawdown switch's closing orders use their own). Not the side: a session
    restarted on the same bar may see another portfolio and decide otherwise, and must still not
    place a second order for that bar."""
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M")
    return f"{session_id}-{symbol.replace('/', '')}-{stamp}-{purpose}"[: rules.CLIENT_ORDER_ID_MAX]


def is_transient(error: BaseException) -> bool:
    if isinstance(error, requests.ConnectionError | requests.Timeout):
        return True
    status = getattr(error, "status_code", None)
    return isinstance(error, APIError) and status is not None and (status == 429 or status >= 500)


def describe(error: BaseException) -> str:
    """Status and the venue's message only: never headers, never keys."""
    if isinstance(error, APIError):
        return f"HTTP {error.status_code}: {str(error)[:200]}"
    return f"{type(error).__name__}: {str(error)[:200]}"


class OrderDesk:
    """Submits order intents idempotently, follows their status and fills, and reads the account."""

    def __init__(
        self,
        trading: TradingClient,
        journal: Journal,
        session_id: str,
        *,
        attempts: int = 5,
        backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.trading = trading
        self.journal = journal
        self.session_id = session_id
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.sleep = sleep
        # order id -> the last state seen (status, filled qty, average price): fills are the differences.
        self._seen: dict[str, tuple[str, float, float]] = {}
        self._orders: dict[str, dict[str, Any]] = {}
        self.submitted = 0
        self.reused = 0
        self.refused: list[str] = []

    # --- reading, with retries for transient errors (reads are safe to repeat) --------------------
    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as error:  # noqa: BLE001 - classified below
                if not is_transient(error) or attempt == self.attempts:
                    raise
                self._backoff(attempt, what, error)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, what: str, error: BaseException) -> None:
        # Exponential with full jitter: many clients retrying together do not retry in step.
        delay = random.uniform(0, self.backoff_s * 2 ** (attempt - 1))
        log.warning(
            "%s failed (%s); retry %d/%d in %.2f s", what, describe(error), attempt + 1, self.attempts, delay
        )
        self.sleep(delay)

    def lookup(self, cid: str) -> dict[str, Any] | None:
        try:
            return self.call(f"order {cid}", lambda: self.trading.get_order_by_client_id(cid))
        except APIError as error:
            if error.status_code == 404:
                return None
            raise

    def account(self) -> Account:
        raw = self.call("account", self.trading.get_account)
        positions = self.call("positions", self.trading.get_all_positions)
        held = tuple(
            Position(symbol=p["symbol"], qty=float(p["qty"]), avg_entry_price=float(p["avg_entry_price"]))
            for p in positions
            if float(p["qty"]) > 0
        )
        return Account(cash=float(raw["cash"]), equity=float(raw["equity"]), positions=held)

    def positions_value(self) -> tuple[float, float]:
        positions = self.call("positions", self.trading.get_all_positions)
        value = sum(float(p.get("market_value") or 0) for p in positions)
        unrealized = sum(float(p.get("unrealized_pl") or 0) for p in positions)
        return value, unrealized

    # --- start: what the venue already has --------------------------------------------------------
    def reconcile(self, at: datetime) -> tuple[int, int]:
        """Follow the venue's open orders and journal them with the positions' orders of this session;
        returns (open orders, positions). Called before the first decision."""
        request = GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500)
        open_orders = self.call("open orders", lambda: self.trading.get_orders(request))
        for order in open_orders:
            self.observe(order, at)
        positions = self.call("positions", self.trading.get_all_positions)
        log.info(
            "reconciled with the venue: %d open order(s), %d position(s)", len(open_orders), len(positions)
        )
        return len(open_orders), len(positions)

    # --- submitting -------------------------------------------------------------------------------
    def submit(self, intent: OrderIntent, cid: str, at: datetime) -> dict[str, Any] | None:
        """The venue's order for `intent` under `cid`: submitted now, or the one it already has. None
        when the venue refuses it (the reason is journaled and kept in `refused`)."""
        request = _request(intent, cid)
        for attempt in range(1, self.attempts + 1):
            try:
                order = self.trading.submit_order(request)
            except Exception as error:  # noqa: BLE001 - classified below
                if isinstance(error, APIError) and "client_order_id must be unique" in str(error):
                    return self._existing(cid, at)
                if not is_transient(error):
                    reason = describe(error)
                    self.refused.append(f"{cid}: {reason}")
                    log.warning("order %s refused: %s", cid, reason)
                    self.journal.order_event(at, _intent_row(intent, cid), status=f"refused: {reason}"[:200])
                    return None
                # Sent again under the same id: had the venue taken it before failing, it answers
                # "client_order_id must be unique" and the order it has is returned (above).
                if attempt == self.attempts:
                    raise SourceError(
                        f"order {cid} not placed after {attempt} attempts ({describe(error)})"
                    ) from None
                self._backoff(attempt, f"order {cid}", error)
                continue
            self.submitted += 1
            self.journal.order_event(at, _intent_row(intent, cid), status="submitted")
            self.observe(order, at)
            return order
        return None

    def _existing(self, cid: str, at: datetime, order: dict[str, Any] | None = None) -> dict[str, Any] | None:
        order = order or self.lookup(cid)
        if order is not None:
            self.reused += 1
            log.info("order %s already at the venue (%s): not sent again", cid, order.get("status"))
            self.observe(order, at)
        return order

    # --- following orders -------------------------------------------------------------------------
    def observe(self, order: dict[str, Any], at: datetime | None = None) -> None:
        """Journal a status change and the fill that a rise of the filled quantity means. Works the
        same for a REST answer and a trade_updates event, so neither source can count a fill twice."""
        oid = str(order.get("id"))
        status = str(order.get("status"))
        filled = float(order.get("filled_qty") or 0)
        avg = float(order.get("filled_avg_price") or 0)
        self._orders[oid] = order
        before = self._seen.get(oid, ("", 0.0, 0.0))
        when = _time(order.get("updated_at")) or at or datetime.now(UTC)
        if status != before[0]:
            self.journal.order_event(when, order)
        if filled > before[1] + 1e-12:
            qty = rules.floor_qty(filled - before[1]) or filled - before[1]
            price = (avg * filled - before[2] * before[1]) / (filled - before[1])
            self.journal.fill(when, order, f"{oid}:{filled:.9f}", qty, price)
        self._seen[oid] = (status, max(filled, before[1]), avg if filled >= before[1] else before[2])

    def poll_open(self) -> None:
        """Refresh every followed order that is not final (fills missed while a stream was down)."""
        for oid, order in list(self._orders.items()):
            if str(order.get("status")) in TERMINAL:
                continue
            try:
                self.observe(self.call(f"order {oid}", lambda oid=oid: self.trading.get_order_by_id(oid)))
            except Exception as error:  # noqa: BLE001 - the next poll tries again
                log.warning("could not refresh order %s (%s)", oid, describe(error))

    @property
    def open_orders(self) -> int:
        return sum(1 for o in self._orders.values() if str(o.get("status")) not in TERMINAL)

    # --- the kill switch --------------------------------------------------------------------------
    def flatten(self, at: datetime) -> int:
        """Cancel every open order and close every position; returns the positions closed."""
        self.call("cancel orders", self.trading.cancel_orders)
        closed = self.call("close positions", lambda: self.trading.close_all_positions(cancel_orders=True))
        for item in closed or []:
            body = item.get("body") if isinstance(item, dict) else None
            if isinstance(body, dict) and body.get("id"):
                self.observe(body, at)
        return len(closed or [])


def _request(intent: OrderIntent, cid: str) -> MarketOrderRequest | LimitOrderRequest:
    common: dict[str, Any] = {
        "symbol": intent.symbol,
        "side": OrderSide(intent.side.value),
        "time_in_force": TimeInForce(intent.time_in_force.value),
        "client_order_id": cid,
    }
    if intent.qty is not None:
        common["qty"] = intent.qty
    else:
        common["notional"] = intent.notional
    if intent.type is OrderType.LIMIT:
        return LimitOrderRequest(limit_price=intent.limit_price, **common)
    return MarketOrderRequest(**common)


def _intent_row(intent: OrderIntent, cid: str) -> dict[str, Any]:
    return {
        "symbol": intent.symbol,
        "client_order_id": cid,
        "side": intent.side.value,
        "type": intent.type.value,
        "time_in_force": intent.time_in_force.value,
        "qty": intent.qty,
        "notional": intent.notional,
        "limit_price": intent.limit_price,
    }


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None
