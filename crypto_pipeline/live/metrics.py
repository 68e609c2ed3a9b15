"""Prometheus metrics of one live session (docs/monitoring.md).

The counters follow the journal: `LiveMetrics.on_journal` is a journal listener, so every decision,
verdict, order event, fill and equity snapshot that is journaled is counted at the same moment, and
the two cannot disagree. What the journal does not hold (websocket connections, data age, stream
bars) the loop sets with `on_stream`. Each session has its own `CollectorRegistry`: two sessions in
one process (tests, a restart) never collide, and `/metrics` shows one session's figures.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Risk rejections by kind: the engine's reasons carry figures (sizes, ages), a label must not.
_REASONS = (
    (r"^kill switch", "kill_switch"),
    (r"^hold$", "hold"),
    (r"^invalid decision", "invalid_decision"),
    (r"names no symbol", "no_symbol"),
    (r"^no valid price", "no_price"),
    (r"^stale data", "stale_data"),
    (r"^confidence", "low_confidence"),
    (r"^cooldown", "cooldown"),
    (r"orders in the last hour", "order_rate"),
    (r"^no equity", "no_equity"),
    (r"^nothing held", "nothing_to_sell"),
    (r"rounds to zero", "size_zero"),
    (r"daily loss circuit breaker", "daily_loss_breaker"),
    (r"open positions \(max", "max_positions"),
    (r"below minimum", "below_minimum"),
    (r"^spread", "wide_spread"),
)
REJECTION_REASONS = tuple(label for _, label in _REASONS) + ("other",)

# Provider latency: from a rules provider (well under 1 ms) to a CPU-bound LLM (tens of seconds).
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def reason_label(reason: str | None) -> str:
    """The label of a risk engine rejection reason (one of `REJECTION_REASONS`)."""
    for pattern, label in _REASONS:
        if reason and re.search(pattern, reason):
            return label
    return "other"


def order_status_label(status: str | None) -> str:
    # A venue refusal is journaled as "refused: HTTP 403: ..."; the label keeps its kind only.
    status = (status or "unknown").split(":", 1)[0].strip()
    return status or "unknown"


class LiveMetrics:
    """The metrics of one session in their own registry; `serve(port)` exposes them over HTTP."""

    def __init__(self, session_id: str = "live") -> None:
        self.session_id = session_id
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "live_decisions", "Decisions journaled, by symbol, action and validity.",
            ["symbol", "action", "valid"], registry=r,
        )  # fmt: skip
        self.invalid = Counter(
            "live_invalid_outputs", "Model outputs that failed the parser (each became a HOLD).",
            ["symbol"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "live_decision_latency_seconds", "Provider latency of one decision.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.verdicts = Counter(
            "live_risk_verdicts", "Risk engine verdicts, approved or rejected.", ["verdict"], registry=r
        )
        self.rejections = Counter(
            "live_rejections", "Risk engine rejections by reason.", ["reason"], registry=r
        )
        self.orders = Counter("live_orders", "Orders submitted to the venue, by side.", ["side"], registry=r)
        self.order_events = Counter(
            "live_order_events", "Order status events journaled (submitted, filled, refused, ...).",
            ["status"], registry=r,
        )  # fmt: skip
        self.fills = Counter("live_fills", "Fills journaled, by side.", ["side"], registry=r)
        self.equity = Gauge("live_equity_usd", "Account equity at the last snapshot.", registry=r)
        self.drawdown = Gauge(
            "live_drawdown_pct", "Drop of equity from its peak in this session, in percent.", registry=r
        )
        self.reconnects = Counter(
            "live_websocket_reconnects", "Websocket connections made after the first, by stream.",
            ["stream"], registry=r,
        )  # fmt: skip
        self.data_age = Gauge(
            "live_data_age_seconds", "Wall seconds since the last market data bar arrived.", registry=r
        )
        self.stream_bars = Counter("live_stream_bars", "Bars received from the data stream.", registry=r)
        self.spread = Gauge(
            "live_spread_bps", "Spread of the live order book at the last decision time, in bps.",
            ["symbol"], registry=r,
        )  # fmt: skip
        self.info = Gauge(
            "live_session_info", "The session this endpoint describes (value 1).", ["session"], registry=r
        )
        self.info.labels(session=session_id).set(1)
        self._peak = 0.0
        self._connections: dict[str, int] = {}
        self._bars = 0
        self._server: Any = None
        self.port: int | None = None

    # --- the journal listener -------------------------------------------------------------------
    def on_journal(self, table: str, row: dict[str, Any]) -> None:
        if table == "decisions":
            valid = bool(row.get("valid"))
            symbol = str(row.get("symbol") or "")
            self.decisions.labels(
                symbol=symbol, action=str(row.get("action")), valid=str(valid).lower()
            ).inc()
            if not valid:
                self.invalid.labels(symbol=symbol).inc()
            if row.get("latency_ms") is not None:
                self.latency.observe(float(row["latency_ms"]) / 1000)
        elif table == "risk_verdicts":
            self.verdicts.labels(verdict=str(row.get("verdict"))).inc()
            if row.get("verdict") == "rejected":
                reasons = row.get("reasons") or [None]
                self.rejections.labels(reason=reason_label(reasons[0])).inc()
        elif table == "orders":
            status = order_status_label(row.get("status"))
            self.order_events.labels(status=status).inc()
            if status == "submitted":
                self.orders.labels(side=str(row.get("side"))).inc()
        elif table == "fills":
            self.fills.labels(side=str(row.get("side"))).inc()
        elif table == "equity":
            equity = float(row["equity"])
            self._peak = max(self._peak, equity)
            self.equity.set(equity)
            self.drawdown.set((1 - equity / self._peak) * 100 if self._peak > 0 else 0.0)

    # --- what the journal does not hold ---------------------------------------------------------
    def on_stream(self, *, data_age_s: float, connections: dict[str, int], bars: int | None = None) -> None:
        """Called on every turn of the loop: `connections` counts each stream's connections so far."""
        self.data_age.set(max(data_age_s, 0.0))
        for stream, count in connections.items():
            seen = self._connections.get(stream, 1)
            if count > seen:
                self.reconnects.labels(stream=stream).inc(count - seen)
            self._connections[stream] = max(seen, count)
        if bars is not None and bars > self._bars:
            self.stream_bars.inc(bars - self._bars)
            self._bars = bars

    def on_books(self, spreads: dict[str, float]) -> None:
        """Each symbol's book spread at a decision time (symbols with no fresh book keep their last)."""
        for symbol, spread in spreads.items():
            if math.isfinite(spread):
                self.spread.labels(symbol=symbol).set(spread)

    # --- the HTTP endpoint ----------------------------------------------------------------------
    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on `port` (0: a free one) until `close()`; returns the port."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._server.server_port)
        log.info("Prometheus metrics of session %s on http://%s:%d/metrics", self.session_id, host, self.port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def names(self) -> set[str]:
        """Every sample name this registry can expose (e.g. `live_decisions_total`)."""
        suffixes = ("", "_total", "_bucket", "_count", "_sum", "_created")
        return {f"{metric.name}{suffix}" for metric in self.registry.collect() for suffix in suffixes}
