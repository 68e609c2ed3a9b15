"""What an outside agent (the MCP server's tools) may do at the venue, each through the live loop's own
code: the venue and its real-money refusal (`venue`), the account as the risk engine sees it
(`OrderDesk.account`), the same `MarketState` (`states.states_at`), the same `RiskEngine` and journal
(`gate.gate_decision`), idempotent client ids (`orders`), and the kill switch (`kill`).

An agent never sizes an order: it asks to BUY or SELL a share of equity with a confidence, as a model's
decision does, and the risk engine turns that into an order or a rejection with its reason. Every answer
holds only what the venue and the engine said: never a key."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from alpaca.common.exceptions import APIError
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest
from pydantic import BaseModel, ConfigDict, Field

from crypto_pipeline.errors import UserInputError
from crypto_pipeline.execution import DecisionStep, MarketView
from crypto_pipeline.journal.writer import Journal
from crypto_pipeline.live.config import Venue
from crypto_pipeline.live.kill import kill_flag_path, kill_reason, request_kill
from crypto_pipeline.live.marks import last_closes, recent_returns
from crypto_pipeline.live.orders import OrderDesk, describe
from crypto_pipeline.live.states import states_at
from crypto_pipeline.live.venue import Clients, Credentials, resolve_endpoints
from crypto_pipeline.llm.decision import Action, TradeDecision
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.risk import RiskEngine, RiskResult
from crypto_pipeline.state import MarketState, Portfolio
from crypto_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)

ORDER_FIELDS = (
    "id",
    "client_order_id",
    "symbol",
    "side",
    "type",
    "time_in_force",
    "qty",
    "notional",
    "limit_price",
    "status",
    "filled_qty",
    "filled_avg_price",
    "created_at",
    "updated_at",
    "filled_at",
    "canceled_at",
)


class AgentConfig(BaseModel):
    """The agent's venue and how its states are built (as a live session's: base bars and lookback)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field(
        "mcp",
        min_length=1,
        max_length=40,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The journal's run_id of everything the agent does and the prefix of its client ids.",
    )
    venue: Venue = "local"
    exchange_url: str | None = Field(
        None, description="Local venue: a running exchange (default: Settings')."
    )
    timeframe: str = "5m"
    lookback_days: int = Field(30, ge=2, description="History the market states are built from.")
    max_bars: int = Field(1000, ge=1, description="Most bars one get_bars call returns.")

    @property
    def base(self) -> Timeframe:
        return Timeframe.parse(self.timeframe)


class AgentDesk:
    """The venue for an agent. Thread-safe: the MCP server runs tools on worker threads, and the risk
    engine's state (cooldowns, orders per hour, breakers) must see one order at a time."""

    def __init__(self, config: AgentConfig, settings: object, *, risk: RiskEngine | None = None) -> None:
        self.config = config
        self.endpoints = resolve_endpoints(config.venue, settings, config.exchange_url)  # real money refused
        self.clients = Clients.connect(self.endpoints, Credentials.from_settings(settings, config.venue))
        warehouse_dir = settings.warehouse_dir  # type: ignore[attr-defined]
        self.journal = Journal(Warehouse(warehouse_dir), config.run_id)
        self.desk = OrderDesk(self.clients.trading, self.journal, config.run_id)
        self.risk = risk or RiskEngine()
        self.kill_flag = kill_flag_path(warehouse_dir)
        self._lock = threading.Lock()
        self._keys_checked = False
        self._pairs: dict[str, str] = {}

    # --- the venue ----------------------------------------------------------------------------------
    def _connect(self) -> None:
        """The keys are checked on first use (a clear error, before any order), not at start: an MCP
        client may start the server before the venue is up."""
        if not self._keys_checked:
            self.desk.call("account", self.clients.check_keys)
            self._keys_checked = True

    def venue_time(self) -> datetime:
        clock = self.desk.call("clock", self.clients.trading.get_clock)
        stamp = clock["timestamp"] if isinstance(clock, dict) else clock.timestamp
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).astimezone(UTC)

    def _pair(self, symbol: str) -> str:
        """The slashed pair of a position's compact symbol (BTCUSDT -> BTC/USDT), asked of the venue once."""
        if "/" in symbol:
            return symbol
        if symbol not in self._pairs:
            asset = self.desk.call(f"asset {symbol}", lambda: self.clients.trading.get_asset(symbol))
            self._pairs[symbol] = str(asset["symbol"])
        return self._pairs[symbol]

    # --- reading ------------------------------------------------------------------------------------
    def account(self) -> dict[str, Any]:
        self._connect()
        raw = self.desk.call("account", self.clients.trading.get_account)
        fields = (
            "status",
            "currency",
            "cash",
            "equity",
            "buying_power",
            "portfolio_value",
            "long_market_value",
        )
        out: dict[str, Any] = {k: _number(raw.get(k)) for k in fields}
        out |= {
            "trading_blocked": bool(raw.get("trading_blocked")),
            "venue": self.endpoints.name,
            "paper": self.endpoints.paper,
            "venue_time": self.venue_time().isoformat(),
            "run_id": self.config.run_id,
            "kill_switch": kill_reason(self.kill_flag),
            "risk": {
                "daily_loss_breaker": self.risk.daily_breaker,
                "drawdown_switch": self.risk.killed,
                "drawdown_reason": self.risk.kill_reason,
                "config": self.risk.config.model_dump(mode="json"),
            },
        }
        return out

    def positions(self) -> list[dict[str, Any]]:
        self._connect()
        raw = self.desk.call("positions", self.clients.trading.get_all_positions)
        fields = ("qty", "avg_entry_price", "current_price", "market_value", "cost_basis", "unrealized_pl")
        return [
            {"symbol": self._pair(str(p["symbol"])), **{k: _number(p.get(k)) for k in fields}} for p in raw
        ]

    def orders(
        self, status: Literal["open", "closed", "all"] = "open", limit: int = 50, symbol: str | None = None
    ) -> list[dict[str, Any]]:
        self._connect()
        request = GetOrdersRequest(
            status=QueryOrderStatus(status), limit=limit, symbols=[symbol] if symbol else None
        )
        orders = self.desk.call("orders", lambda: self.clients.trading.get_orders(request))
        return [order_view(o) for o in orders]

    def bars(self, symbol: str, timeframe: str = "1h", limit: int = 100) -> dict[str, Any]:
        """The newest `limit` bars of `symbol` closed by the venue's clock (oldest first)."""
        self._connect()
        tf = Timeframe.parse(timeframe)
        limit = max(1, min(limit, self.config.max_bars))
        now = self.venue_time()
        end = _floor(now, tf)
        frame = self.clients.data.fetch_bars([symbol], tf, end - tf.duration * limit, end)
        if frame.is_empty():
            raise UserInputError(f"the venue has no {tf.value} bars of {symbol} before {now:%Y-%m-%d %H:%M}")
        frame = frame.sort("timestamp").tail(limit)
        columns = [c for c in ("open", "high", "low", "close", "volume", "trade_count", "vwap") if c in frame]
        rows = [
            {"timestamp": row["timestamp"].isoformat(), **{c: row[c] for c in columns}}
            for row in frame.iter_rows(named=True)
        ]
        return {"symbol": symbol, "timeframe": tf.value, "venue_time": now.isoformat(), "bars": rows}

    def market_state(self, symbol: str) -> MarketState:
        """The `MarketState` the live loop would build for `symbol` now, with the account's portfolio."""
        self._connect()
        account = self.desk.account()
        state, missing, *_ = self._state(symbol, account, self.venue_time())
        if state is None:
            raise UserInputError(f"no market state for {symbol}: {missing}")
        return state

    def _state(
        self, symbol: str, account: Any, now: datetime
    ) -> tuple[MarketState | None, str, Any, timedelta]:
        """(state or None, why none, the bars it came from, data age): bars of `symbol` and of every
        held symbol (their marks and returns for the risk engine), closed by the base bar before `now`."""
        base = self.config.base
        at = _floor(now, base)
        held = [self._pair(p.symbol) for p in account.positions]
        pairs = list(dict.fromkeys([symbol, *held]))
        frame = self.clients.data.fetch_bars(pairs, base, at - timedelta(days=self.config.lookback_days), at)
        mine = frame.filter(frame["symbol"] == symbol) if not frame.is_empty() else frame
        if mine.is_empty():
            return (
                None,
                f"the venue has no {base.value} bars of {symbol} before {at:%Y-%m-%d %H:%M}",
                frame,
                timedelta(days=365),
            )
        age = now - (mine["timestamp"].max() + base.duration)
        states, missing = states_at(frame, base, [symbol], at)
        state = states.get(symbol)
        if state is None:
            return None, missing.get(symbol, "no state"), frame, age
        return state.with_portfolio(Portfolio.from_account(account, symbol)), "", frame, age

    # --- acting -------------------------------------------------------------------------------------
    def place_order(
        self,
        symbol: str,
        action: Literal["BUY", "SELL"],
        position_size_pct: float,
        confidence: float,
        reasoning: str = "",
    ) -> dict[str, Any]:
        """The agent's request as a decision, through the kill switch, the risk engine, the journal and
        (approved) the venue; returns the verdict with its reasons, and the order when there is one."""
        asked = {
            "symbol": symbol,
            "action": action,
            "position_size_pct": position_size_pct,
            "confidence": confidence,
            "reasoning": reasoning,
        }
        with self._lock:
            self._connect()
            now = self.venue_time()
            meta = {"symbol": symbol, "at": now, "provider": "mcp", "raw_text": json.dumps(asked)}
            decision = TradeDecision(
                action=Action(action),
                confidence=confidence,
                position_size_pct=position_size_pct,
                reasoning=reasoning,
                **meta,
            )
            flag = kill_reason(self.kill_flag)
            if flag is not None:
                # The flag stops every live session; an agent's orders stop with them.
                result = RiskResult(reason=f"kill switch is set ({flag}); a person clears it")
                self.journal.decision(now, None, "", decision)
                self.journal.verdict(now, symbol, action, result, None)
                self.journal.flush()
                return self._answer(asked, now, result, None, None, None, None)
            account = self.desk.account()
            state, missing, frame, age = self._state(symbol, account, now)
            market = MarketView(
                marks=last_closes(frame) if not frame.is_empty() else {},
                returns=(
                    recent_returns(frame, self.risk.config.correlation_window) if not frame.is_empty() else {}
                ),
                data_age={symbol: age},
            )
            # The live loop's decision step, with the agent's request standing where a model would.
            step = DecisionStep(
                Requested(decision),
                self.risk,
                self.desk,
                self.journal,
                session_id=self.config.run_id,
                show_prompt=False,
            )
            states = [state] if state is not None else []
            (gated,) = step(now, states, market, missing={symbol: missing} if state is None else None)
            refused = None
            if gated.result.approved and gated.order is None and self.desk.refused:
                refused = self.desk.refused[-1].split(": ", 1)[-1]
            self.desk.poll_open()
            self.journal.flush()
            return self._answer(
                asked, now, gated.result, gated.client_order_id, gated.order, state, age, refused
            )

    def _answer(
        self,
        asked: dict[str, Any],
        now: datetime,
        result: RiskResult,
        cid: str | None,
        order: dict[str, Any] | None,
        state: MarketState | None,
        age: timedelta | None,
        venue_refused: str | None = None,
    ) -> dict[str, Any]:
        intent = result.intent
        return {
            "run_id": self.config.run_id,
            "asked": asked,
            "verdict": "approved" if intent is not None else "rejected",
            "reasons": [result.reason] if result.reason else [],
            "intent": intent.model_dump(mode="json", exclude_none=True) if intent is not None else None,
            "client_order_id": cid,
            "order": order_view(order) if order is not None else None,
            "venue_refused": venue_refused,
            "price": state.price if state is not None else None,
            "state_at": state.at.isoformat() if state is not None else None,
            "data_age_s": age.total_seconds() if age is not None else None,
            "venue_time": now.isoformat(),
        }

    def cancel_order(self, order_id: str) -> dict[str, Any]:
        """Cancel an open order, named by the venue's id or its client_order_id; returns it afterwards."""
        with self._lock:
            self._connect()
            known = self.desk.lookup(order_id) if len(order_id) <= 128 else None
            venue_id = str(known["id"]) if known is not None else _venue_order_id(order_id)
            try:
                self.desk.call(
                    f"cancel {venue_id}", lambda: self.clients.trading.cancel_order_by_id(venue_id)
                )
                order = self.desk.call(
                    f"order {venue_id}", lambda: self.clients.trading.get_order_by_id(venue_id)
                )
            except APIError as error:
                raise UserInputError(
                    f"the venue did not cancel order {order_id}: {describe(error)}"
                ) from None
            self.desk.observe(order, self.venue_time())
            self.journal.flush()
            return order_view(order)

    def kill_switch(self, reason: str) -> dict[str, Any]:
        """Set the kill switch (every live session flattens and stops, as with `crypto-pipeline kill`),
        cancel every open order and close every position at this venue now."""
        with self._lock:
            self._connect()
            request_kill(self.kill_flag, f"MCP {self.config.run_id}: {reason}")
            now = self.venue_time()
            closed = self.desk.flatten(now)
            self.desk.poll_open()
            self.journal.flush()
            log.warning("kill switch via MCP (%s): orders canceled, %d position(s) closed", reason, closed)
            return {
                "kill_switch": kill_reason(self.kill_flag),
                "positions_closed": closed,
                "positions_left": self.positions(),
                "open_orders_left": len(self.orders("open")),
                "note": "orders are refused until a person runs `crypto-pipeline kill --clear`",
            }


class Requested:
    """A decision provider that answers with an agent's own request: the agent decided, the step does
    the rest (the risk engine, the journal, the venue)."""

    name = "mcp"

    def __init__(self, decision: TradeDecision) -> None:
        self.decision = decision

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        return [self.decision for _ in states]


def order_view(order: dict[str, Any]) -> dict[str, Any]:
    """An order as the agent sees it: the venue's fields that say what it is and where it stands."""
    out: dict[str, Any] = {}
    for name in ORDER_FIELDS:
        value = order.get(name)
        value = getattr(value, "value", value)
        out[name] = (
            _number(value)
            if name in ("qty", "notional", "limit_price", "filled_qty", "filled_avg_price")
            else value
        )
    return out


def _venue_order_id(order_id: str) -> str:
    """An id that is no client_order_id the venue knows must be the venue's own (a UUID): say so, rather
    than let alpaca-py's check fail inside the call."""
    try:
        return str(UUID(order_id))
    except ValueError:
        shown = repr(order_id[:64]) + ("..." if len(order_id) > 64 else "")
        raise UserInputError(
            f"no order {shown} at the venue: it is no client_order_id the venue knows, and not an order "
            "id of the venue (a UUID such as 3f2b9c1e-5d4a-4e8b-9a7c-1b2c3d4e5f60)"
        ) from None


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _floor(at: datetime, timeframe: Timeframe) -> datetime:
    step = int(timeframe.duration.total_seconds())
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % step, tz=UTC)
