"""Orders to the venue through alpaca-py's `TradingClient`, never twice.

Every order's `client_order_id` is derived from (session, symbol, decision bar time, side), so the same
decision always names the same order. A submission that fails with a 429, a 5xx or a lost connection
is sent again, after a backoff with jitter, under the same id: a venue that took it before the error
answers "client_order_id must be unique", and the order it already has is returned instead.
A restarted session therefore re-derives the same ids and cannot double an order.

Write ahead: the intent (with its client id) is journaled and the journal flushed, with the decision and
the verdict gathered before it, before the order leaves the process; the venue's answer is journaled
after. A process killed in between leaves the intent, and `reconcile` at the next start asks the venue
what became of it.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import requests
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

from crypto_pipeline.errors import SourceError
from crypto_pipeline.execution.venue import intent_row
from crypto_pipeline.journal.writer import Journal
from crypto_pipeline.trading import Account, OrderIntent, OrderType, Position, rules

log = logging.getLogger(__name__)

TERMINAL = {"filled", "canceled", "expired", "rejected", "done_for_day", "replaced"}
# Journal-only statuses of the `orders` table: the write-ahead row before the order is sent, an intent
# that a restart found the venue never received, and a refusal (followed by the venue's reason).
INTENT, NOT_SENT, REFUSED = "intent", "not sent", "refused"
FAULT_POINT = "CRYPTO_PIPELINE_FAULT_POINT"
_ORDERS_PAGE = 500  # Alpaca's largest page of GET /v2/orders


def fault_point(name: str) -> None:
    """Tests only: when the environment's CRYPTO_PIPELINE_FAULT_POINT names this point, the process
    dies here by SIGKILL (no cleanup, no flush), as in an OOM kill or a power cut. Points:
    `after_submit` (`OrderDesk.submit`: the venue has taken the order, its answer is not journaled)."""
    if os.environ.get(FAULT_POINT) == name:
        log.error("fault point %s: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)


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
        # (decision time, symbol) -> its order's client id (None: rejected), for each decision this
        # session journaled before a restart (`reconcile`): `gate_decision` keeps those decisions.
        self.decided: dict[tuple[datetime, str], str | None] = {}
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
        """Bring the journal level with the venue before the first decision, after a crash too.

        Asks the venue for every order of this session (client id prefix, any status) submitted since
        the session's last journaled decision, or since its oldest order the journal leaves unfinished
        if that is older, and journals each status and fill the journal lacks (a market order that
        filled while no one journaled it included). An order whose decision a crash lost (a journal
        written before write-ahead existed) gets a decision and an approved verdict "recovered from the
        venue"; an intent the venue never received is closed as "not sent". What this session decided
        is kept in `decided`, so that a restart on the same bar neither decides that bar again nor
        journals a second decision beside the first. Returns (this session's open orders, positions)."""
        done = self._journaled()
        since = done.since()
        orders = self._session_orders(since)
        found = {str(o.get("client_order_id")) for o in orders}
        for cid in sorted(done.unfinished - found):
            order = self.lookup(cid)  # an unfinished intent older than the listing asked for
            if order is not None:
                orders.append(order)
            else:
                log.warning("order %s was journaled but never reached the venue: closed as not sent", cid)
                self.journal.order_event(at, done.intents.get(cid, {"client_order_id": cid}), status=NOT_SENT)
        recovered = 0
        for order in orders:
            cid = str(order.get("client_order_id"))
            decided_at, purpose = _decision_of(cid, self.session_id) or (None, "")
            if cid not in done.submitted:  # the venue took it, the crash took the journal's word of it
                self.journal.order_event(
                    decided_at or _time(order.get("created_at")) or at, order, "submitted"
                )
            self.observe(order, at)
            symbol = str(order.get("symbol"))
            if decided_at is not None and purpose == "d" and (decided_at, symbol) not in done.decided:
                self.journal.recovered(decided_at, symbol, order)
                done.decided[(decided_at, symbol)] = cid
                recovered += 1
        self.decided.update(done.decided)
        self.journal.flush()
        positions = self.call("positions", self.trading.get_all_positions)
        log.info(
            "reconciled with the venue: %d order(s) of session %s since %s (%d open, %d decision(s) "
            "recovered from the venue), %d position(s)",
            len(orders),
            self.session_id,
            since or "its start",
            self.open_orders,
            recovered,
            len(positions),
        )
        return self.open_orders, len(positions)

    def _journaled(self) -> _Journaled:
        """What the journal holds of this session, and `_seen` primed with it, so that observing the
        venue's orders journals exactly the events and fills the journal lacks."""
        rows = self.journal.stored
        decisions = rows("decisions", ["time", "symbol"])
        verdicts = rows("risk_verdicts", ["time", "symbol", "client_order_id"])
        orders = rows(
            "orders",
            ["time", "symbol", "client_order_id", "order_id", "status", "filled_qty", "filled_avg_price"],
        ).sort("time", pl.col("filled_qty").fill_null(0))
        decided: dict[tuple[datetime, str], str | None] = dict.fromkeys(
            decisions.select("time", "symbol").iter_rows()
        )
        decided.update({(t, s): c for t, s, c in verdicts.iter_rows()})
        venue_rows = orders.filter(
            pl.col("order_id").is_not_null(), ~pl.col("status").is_in([INTENT, NOT_SENT, "submitted"])
        )
        for (oid,), rows_of in venue_rows.partition_by("order_id", as_dict=True).items():
            last, most = (
                rows_of.row(-1, named=True),
                rows_of.sort(pl.col("filled_qty").fill_null(0)).row(-1, named=True),
            )
            self._seen[str(oid)] = (
                str(last["status"]),
                most["filled_qty"] or 0.0,
                most["filled_avg_price"] or 0.0,
            )
        statuses: dict[str, set[str]] = {}
        first: dict[str, datetime] = {}
        intents: dict[str, dict[str, Any]] = {}
        for row in orders.iter_rows(named=True):
            cid = row["client_order_id"]
            statuses.setdefault(cid, set()).add(str(row["status"]))
            first.setdefault(cid, row["time"])
            if row["status"] == INTENT:
                intents[cid] = {"client_order_id": cid, "symbol": row["symbol"]}
        unfinished = {
            cid
            for cid, seen in statuses.items()
            if not any(s in TERMINAL or s == NOT_SENT or s.startswith(REFUSED) for s in seen)
        }
        submitted = {cid for cid, seen in statuses.items() if "submitted" in seen}
        last_decision = decisions["time"].max() if decisions.height else None
        return _Journaled(
            decided, unfinished, submitted, intents, last_decision, [first[c] for c in unfinished]
        )

    def _session_orders(self, since: datetime | None) -> list[dict[str, Any]]:
        """Every venue order whose client id carries this session's prefix, submitted after `since`
        (all of them without), oldest first: pages of 500 moved on by their last submission time (one
        second back, in case several orders share it; the same order twice is kept once)."""
        out: dict[str, dict[str, Any]] = {}
        after = since
        while True:
            request = GetOrdersRequest(
                status=QueryOrderStatus.ALL, limit=_ORDERS_PAGE, after=after, direction=Sort.ASC
            )
            page = self.call("orders", lambda request=request: self.trading.get_orders(request))
            new = [o for o in page if str(o.get("id")) not in out]
            out.update((str(o.get("id")), o) for o in page)
            last = _time(page[-1].get("created_at")) if page else None
            if len(page) < _ORDERS_PAGE or not new or last is None:
                break
            after = last - timedelta(seconds=1)
        return [o for o in out.values() if _decision_of(str(o.get("client_order_id")), self.session_id)]

    # --- submitting -------------------------------------------------------------------------------
    def submit(self, intent: OrderIntent, cid: str, at: datetime) -> dict[str, Any] | None:
        """The venue's order for `intent` under `cid`: submitted now, or the one it already has. None
        when the venue refuses it (the reason is journaled and kept in `refused`)."""
        request = _request(intent, cid)
        # Write ahead: this intent, and the decision and verdict journaled before it, are durable
        # before the order leaves; a crash after the send leaves `reconcile` the client id to ask for.
        self.journal.order_event(at, intent_row(intent, cid), status=INTENT)
        self.journal.write_ahead()
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
                    self.journal.order_event(at, intent_row(intent, cid), status=f"{REFUSED}: {reason}"[:200])
                    return None
                # Sent again under the same id: had the venue taken it before failing, it answers
                # "client_order_id must be unique" and the order it has is returned (above).
                if attempt == self.attempts:
                    raise SourceError(
                        f"order {cid} not placed after {attempt} attempts ({describe(error)})"
                    ) from None
                self._backoff(attempt, f"order {cid}", error)
                continue
            fault_point("after_submit")
            self.submitted += 1
            self.journal.order_event(at, intent_row(intent, cid), status="submitted")
            self.observe(order, at)
            return order
        return None

    def resume(self, cid: str, at: datetime) -> dict[str, Any] | None:
        """The venue's order `cid` of a decision journaled before a restart, followed as one already
        placed; None when it never reached the venue (`reconcile` journaled it "not sent")."""
        return self._existing(cid, at)

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


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


@dataclass
class _Journaled:
    """What the journal holds of one session (see `OrderDesk._journaled`)."""

    decided: dict[tuple[datetime, str], str | None]
    unfinished: set[str]  # client ids without a final status: intents, orders still open
    submitted: set[str]  # client ids with a "submitted" row
    intents: dict[str, dict[str, Any]]
    last_decision: datetime | None
    unfinished_since: list[datetime]

    def since(self) -> datetime | None:
        """Orders of later decisions, and unfinished ones, were submitted after this time (a decision
        is made at or after its time); a second earlier, as `after` is exclusive at the venue."""
        times = [t for t in (self.last_decision, *self.unfinished_since) if t is not None]
        return min(times) - timedelta(seconds=1) if times else None


_CLIENT_ID_TAIL = re.compile(r"^[A-Za-z0-9]+-(\d{8}T\d{4})-(\w+)$")


def _decision_of(cid: str, session_id: str) -> tuple[datetime, str] | None:
    """(decision time, purpose) of a client id `client_order_id` gave this session, else None (also
    for a session whose id only starts like this one's)."""
    if not cid.startswith(f"{session_id}-"):
        return None
    match = _CLIENT_ID_TAIL.match(cid[len(session_id) + 1 :])
    if match is None:
        return None
    return datetime.strptime(match[1], "%Y%m%dT%H%M").replace(tzinfo=UTC), match[2]
