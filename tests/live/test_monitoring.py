"""Monitoring of a live session on the local exchange: the Prometheus endpoint, scraped over HTTP,
counts what the journal holds; alerts reach a real loopback webhook and the log, and a dead webhook
never stops the loop."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crypto_pipeline.live.alerts import Alerter
from crypto_pipeline.live.kill import kill_flag_path, request_kill
from crypto_pipeline.live.metrics import LiveMetrics, reason_label
from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.llm.decision import parse_decision
from crypto_pipeline.risk import RiskEngine
from crypto_pipeline.trading import Account
from crypto_pipeline.warehouse import Warehouse

from .conftest import SECRET, AlwaysBuy, Running, clients_for, live_config


class Webhook:
    """A loopback endpoint that keeps every JSON body POSTed to it and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.status = status
        hook = self

        class _H(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        # A path with a token in it, as Slack and Discord webhook URLs have.
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hooks/T0KEN-abc123"

    def wait_for(self, n: int, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.bodies

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == x for k, x in labels.items())
    )


class Garbage:
    """A provider whose model answers something the parser cannot read: every decision is invalid."""

    name = "garbage"

    def decide(self, states: list) -> list:
        return [
            parse_decision("buy it all!!").with_meta(
                symbol=s.symbol, at=s.at, provider=self.name, latency_ms=3.0
            )
            for s in states
        ]


class BuyBtcDoubtEth(AlwaysBuy):
    """AlwaysBuy, but unsure of ETH: the risk engine rejects those for low confidence."""

    def decide(self, states: list) -> list:
        made = super().decide(states)
        return [d.model_copy(update={"confidence": 5}) if d.symbol == "ETH/USDT" else d for d in made]


def test_scraped_metrics_count_what_the_journal_holds(start_exchange, tmp_path) -> None:
    # Dropped connections, so that reconnects are counted too.
    server = start_exchange(faults={"drop_ws_every_messages": 7})
    warehouse = Warehouse(tmp_path / "wh")
    metrics = LiveMetrics("t1")
    port = metrics.serve(0)
    try:
        session = LiveSession(
            live_config(), clients_for(server), BuyBtcDoubtEth(), warehouse, metrics=metrics
        )
        with Running(session, server) as running:
            running.step(3)
            during = scrape(port)  # the endpoint answers while the session runs
        after = scrape(port)
    finally:
        metrics.close()
    assert total(during, "live_decisions_total") >= 2

    decisions = warehouse.read("decisions")
    assert total(after, "live_decisions_total") == decisions.height
    assert total(after, "live_decisions_total", valid="true") == decisions["valid"].sum()
    for (symbol, action), rows in decisions.group_by("symbol", "action"):
        assert total(after, "live_decisions_total", symbol=symbol, action=action) == rows.height
    assert total(after, "live_invalid_outputs_total") == (~decisions["valid"]).sum() == 0
    assert total(after, "live_decision_latency_seconds_count") == decisions["latency_ms"].is_not_null().sum()

    verdicts = warehouse.read("risk_verdicts")
    rejected = verdicts.filter(pl.col("verdict") == "rejected")
    expected = Counter(reason_label(r[0]) for r in rejected["reasons"].to_list())
    assert expected["low_confidence"] >= 3 and sum(expected.values()) == total(after, "live_rejections_total")
    for reason, n in expected.items():
        assert total(after, "live_rejections_total", reason=reason) == n

    orders = warehouse.read("orders")
    submitted = orders.filter(pl.col("status") == "submitted")
    assert total(after, "live_orders_total") == submitted.height == session.report.orders_submitted >= 2
    for side, rows in submitted.group_by("side"):
        assert total(after, "live_orders_total", side=side[0]) == rows.height
    assert (
        total(after, "live_order_events_total", status="filled")
        == orders.filter(pl.col("status") == "filled").height
    )
    assert total(after, "live_fills_total") == warehouse.read("fills").height

    equity = warehouse.read("equity")
    assert total(after, "live_equity_usd") == pytest.approx(session.report.equity_end)
    peak = equity["equity"].max()
    assert total(after, "live_drawdown_pct") == pytest.approx((1 - session.report.equity_end / peak) * 100)

    assert total(after, "live_websocket_reconnects_total", stream="live-data-stream") > 0
    assert total(after, "live_stream_bars_total") == session.report.stream_bars
    assert total(after, "live_data_age_seconds") >= 0
    assert total(after, "live_session_info", session="t1") == 1


def test_repeated_invalid_outputs_and_the_kill_switch_post_to_the_webhook(
    start_exchange, tmp_path, webhook, caplog
) -> None:
    server = start_exchange()
    flag = kill_flag_path(tmp_path)
    alerts = Alerter("t1", webhook.url, style="discord", invalid_streak=3)
    session = LiveSession(
        live_config(),
        clients_for(server),
        Garbage(),
        Warehouse(tmp_path / "wh"),
        kill_flag=flag,
        alerts=alerts,
    )
    with caplog.at_level(logging.WARNING), Running(session, server) as running:
        running.step(1)  # two batches of two symbols: four invalid outputs in a row
        request_kill(flag, "test drill")
        deadline = time.monotonic() + 10
        while not session.report.stop_reason and time.monotonic() < deadline:
            time.sleep(0.02)
    bodies = webhook.wait_for(2)
    alerts.close()
    assert [set(b) for b in bodies] == [{"content"}, {"content"}]  # Discord style
    assert "3 invalid model outputs in a row" in bodies[0]["content"]
    assert bodies[1]["content"].startswith("[crypto-pipeline t1] kill switch (")
    assert "test drill): open orders canceled" in bodies[1]["content"]
    # Always logged too, and never a secret: neither the venue's key nor the webhook's token.
    logged = caplog.text
    assert "3 invalid model outputs in a row" in logged and "test drill): open orders" in logged
    for text in (logged, json.dumps(bodies)):
        assert SECRET not in text and "T0KEN" not in text


def test_a_tripped_breaker_alerts_once_in_slack_style(webhook) -> None:
    alerts = Alerter("t2", webhook.url)  # slack is the default style
    risk = RiskEngine()
    now = datetime(2024, 8, 5, 12, tzinfo=UTC)
    for equity in (100_000.0, 100_000.0, 90_000.0, 89_000.0, 70_000.0, 69_000.0):
        risk.update(Account(cash=equity, equity=equity), {}, now)
        alerts.risk_state(risk.daily_breaker, risk.killed, risk.kill_reason)
    bodies = webhook.wait_for(2)
    alerts.close()
    assert [set(b) for b in bodies] == [{"text"}, {"text"}]
    assert "daily loss circuit breaker tripped" in bodies[0]["text"]
    assert "drawdown kill switch tripped (drawdown 30.0%" in bodies[1]["text"]
    assert len(alerts.sent) == 2  # not again while the breakers stay tripped


@pytest.mark.parametrize("status", [500, None])
def test_a_failing_webhook_is_logged_and_never_stops_the_caller(status, caplog) -> None:
    if status is None:
        hook = Webhook()
        url = hook.url
        hook.close()  # nothing listens there any more
    else:
        hook = Webhook(status)
        url = hook.url
    alerts = Alerter("t3", url, timeout_s=2)
    with caplog.at_level(logging.WARNING):
        alerts.stale_data(45)
        alerts.close()
    if status is not None:
        hook.close()
    assert alerts.failed == 1
    assert "stale data: no bar for 45 s" in caplog.text
    assert ("HTTP 500" if status else "unreachable") in caplog.text
    assert "T0KEN" not in caplog.text


def test_run_live_serves_metrics_on_the_configured_port_while_the_session_runs(tmp_path, small_data) -> None:
    import socket

    from crypto_pipeline.config import Settings
    from crypto_pipeline.live.run import EmbeddedExchange, run_live

    with socket.socket() as probe:  # a port free now, given as a fixed setting
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(warehouse_dir=tmp_path / "wh", monitoring={"metrics_port": port})
    seen: list[dict] = []
    done = threading.Event()

    def scrape_while_running() -> None:
        while not done.is_set():
            try:
                seen.append(scrape(port))
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=scrape_while_running, daemon=True)
    watcher.start()
    try:
        report = run_live(
            live_config(session_id="served", max_decisions=2, lookback_days=3),
            settings,
            embedded=EmbeddedExchange(start="2024-08-05T12:00:00", speed=3600, data_dir=small_data),
        )
    finally:
        done.set()
        watcher.join(timeout=10)
    assert report.decision_batches == 2
    assert seen and total(seen[-1], "live_session_info", session="served") == 1
    with pytest.raises(httpx.HTTPError):  # the endpoint ends with the session
        scrape(port)


def test_the_kill_switch_without_a_session_alerts_the_webhook(
    start_exchange, tmp_path, webhook, monkeypatch
) -> None:
    from crypto_pipeline.config import Settings
    from crypto_pipeline.live.run import flatten_venue

    from .conftest import KEY

    server = start_exchange()
    monkeypatch.setenv("ALPACA_API_KEY", KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    settings = Settings(warehouse_dir=tmp_path / "wh", monitoring={"alert_webhook_url": webhook.url})
    assert flatten_venue(settings, "local", server.base_url) == 0
    (body,) = webhook.wait_for(1)
    assert body == {
        "text": "[crypto-pipeline kill-switch] kill switch (no session running, venue local): "
        "open orders canceled, 0 position(s) closed"
    }
