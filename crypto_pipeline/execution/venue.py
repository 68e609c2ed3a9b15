"""What the decision step needs of a venue, and the one name of every order it sends.

Two venues implement `Venue`: `SimulatedVenue` (backtests, shadow books: next-open fills with the
exchange's fee and slippage model) and the live `OrderDesk` (alpaca-py's `TradingClient`, Alpaca's
paper API or the local exchange)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from crypto_pipeline.trading import Account, OrderIntent, rules


class Venue(Protocol):
    """Where approved intents go. The account it reports is what the next decision is sized on. A venue
    that journals durably writes the intent ahead before it sends (`OrderDesk.submit`)."""

    # (decision time, symbol) -> client id (None: no order) of decisions a session journaled before a
    # restart: they stand, and are not decided again (the live desk fills it at `reconcile`).
    decided: Mapping[tuple[datetime, str], str | None]

    def account(self) -> Account:
        """Cash, equity and positions now, including what orders sent so far have done to them."""
        ...

    def submit(self, intent: OrderIntent, cid: str, at: datetime) -> dict[str, Any] | None:
        """Send `intent` under client id `cid` (never twice: the same id names the same order). Returns
        the venue's order, or None when the venue refused it."""
        ...

    def resume(self, cid: str, at: datetime) -> dict[str, Any] | None:
        """The venue's order `cid` of a decision made before a restart, followed as one already sent."""
        ...


def client_order_id(session_id: str, symbol: str, at: datetime, purpose: str = "d") -> str:
    """The one id of the order a session places for `symbol` on the bar closing at `at` (`purpose`
    "d" for a decision; the drawdown switch's closing orders use "kill"). Not the side: a session
    restarted on the same bar may see another portfolio and decide otherwise, and must still not
    place a second order for that bar."""
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M")
    return f"{session_id}-{symbol.replace('/', '')}-{stamp}-{purpose}"[: rules.CLIENT_ORDER_ID_MAX]


def intent_row(intent: OrderIntent, cid: str) -> dict[str, Any]:
    """An intent as the journal's `orders` table records an order the venue has not answered yet."""
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
