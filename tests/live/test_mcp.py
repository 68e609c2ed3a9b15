"""`crypto-pipeline mcp` driven by the official SDK's own client, over stdio (the client spawns the
command) and streamable HTTP, against the local exchange on a stepped clock: the risk engine's verdicts
come back through MCP, an approved order reaches the venue and a refused one does not, both are
journaled under the server's run id, the report is a resource and the kill switch flattens."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import polars as pl
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from crypto_pipeline.config import REPO_ROOT
from crypto_pipeline.live.kill import kill_flag_path
from crypto_pipeline.state import MarketState
from crypto_pipeline.warehouse import Warehouse

from .conftest import DATA_2024, KEY, SECRET, START

TOOLS = {
    "get_account",
    "get_positions",
    "get_orders",
    "get_bars",
    "get_market_state",
    "place_order",
    "cancel_order",
    "kill_switch",
}


def server_env(warehouse: Path) -> dict[str, str]:
    return {
        "ALPACA_API_KEY": KEY,
        "ALPACA_SECRET_KEY": SECRET,
        "CRYPTO_PIPELINE_WAREHOUSE_DIR": str(warehouse),
        "PYTHONPATH": str(REPO_ROOT),
    }


def mcp_args(url: str, *extra: str) -> list[str]:
    return [
        "-m",
        "crypto_pipeline.cli",
        "mcp",
        "--exchange-url",
        url,
        "--run-id",
        "mcp-t",
        "--lookback-days",
        "4",
        *extra,
    ]


def venue(server) -> TradingClient:  # noqa: ANN001
    """The test's own look at the exchange, beside the MCP server."""
    return TradingClient(KEY, SECRET, paper=True, raw_data=True, url_override=server.base_url)


def venue_orders(server) -> list[dict]:  # noqa: ANN001
    return venue(server).get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))


class Calls:
    """Tool calls through one client session, keeping every text the server sent back."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.texts: list[str] = []

    async def __call__(self, name: str, **arguments: Any) -> tuple[bool, Any]:
        result = await self.session.call_tool(name, arguments)
        text = "".join(c.text for c in result.content if c.type == "text")
        self.texts.append(text)
        return result.is_error, result.structured_content if not result.is_error else text


def reports_in(reports: Path) -> Path:
    """Two walk-forward pages where backtests write them (the CLI's backtest/ first, the asset's
    walk_forward/ later): the resource serves the newer one. A real walk-forward costs half a minute on
    two busy cores, and what the page says is the backtest tests' business."""
    older = reports / "backtest" / "walk_forward.html"
    newer = reports / "walk_forward" / "walk_forward.html"
    for page, title in ((older, "rules 2024-01-01 to 2024-09-07"), (newer, "every policy, 3 folds")):
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(f"<html><body><h1>Walk-forward report</h1><p>{title}</p></body></html>")
        page.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\n" + title.encode())
    stamp = time.time()
    os.utime(older, (stamp - 60, stamp - 60))
    return newer


def test_over_stdio_the_risk_engine_decides_what_reaches_the_venue(start_exchange, tmp_path) -> None:
    server = start_exchange()
    warehouse = tmp_path / "wh"
    page = reports_in(warehouse / "reports")
    params = StdioServerParameters(
        command=sys.executable, args=mcp_args(server.base_url), env=server_env(warehouse), cwd=REPO_ROOT
    )

    async def scenario() -> dict[str, Any]:
        async with (
            stdio_client(params, errlog=log) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            call = Calls(session)
            out: dict[str, Any] = {"tools": {t.name for t in (await session.list_tools()).tools}}
            out["resources"] = {str(r.uri) for r in (await session.list_resources()).resources}
            out["account"] = await call("get_account")
            out["state"] = await call("get_market_state", symbol="BTC/USDT")
            out["buy"] = await call(
                "place_order", symbol="BTC/USDT", action="BUY", position_size_pct=10, confidence=80
            )
            out["positions"] = await call("get_positions")
            out["orders"] = await call("get_orders", status="all")
            cid = out["buy"][1]["client_order_id"]
            out["cancel_filled"] = await call("cancel_order", order_id=cid)
            out["sell_unheld"] = await call(
                "place_order", symbol="ETH/USDT", action="SELL", position_size_pct=10, confidence=90
            )
            out["unknown"] = await call("get_market_state", symbol="DOGE/USDT")
            report = await session.read_resource("report://walk-forward/latest")
            out["report"] = (report.contents[0].text, report.contents[0].mime_type)
            chart = await session.read_resource("report://walk-forward/latest.png")
            out["chart"] = base64.b64decode(chart.contents[0].blob)
            out["kill"] = await call("kill_switch", reason="test")
            server.advance_to(START + timedelta(minutes=5))  # one journal row per symbol and venue instant
            out["after_kill"] = await call(
                "place_order", symbol="ETH/USDT", action="BUY", position_size_pct=10, confidence=90
            )
            out["texts"] = call.texts
            return out

    with (tmp_path / "server.log").open("w") as log:
        out = anyio.run(scenario)
    assert out["tools"] == TOOLS
    assert "report://walk-forward/latest" in out["resources"]

    error, account = out["account"]
    assert not error and account["equity"] == 100_000 and account["venue"] == "local" and account["paper"]
    assert account["venue_time"] == START.isoformat() and account["kill_switch"] is None

    # The state the live loop builds: at the venue's clock, priced at the last bar closed by then.
    error, state = out["state"]
    state = MarketState.model_validate(state)
    recorded = pl.read_parquet(DATA_2024 / "bars_5m.parquet").filter(
        pl.col("symbol") == "BTC/USDT", pl.col("timestamp") == START - timedelta(minutes=5)
    )
    assert not error and state.symbol == "BTC/USDT" and state.at == START
    assert state.price == recorded["close"].item()
    assert set(state.timeframes) == {"15m", "1h", "4h", "1d"} and state.portfolio.cash == 100_000

    # Approved: sized by the engine (10% of equity x 80% confidence = $8,000), at the venue, filled.
    error, buy = out["buy"]
    assert not error and buy["verdict"] == "approved" and buy["reasons"] == []
    cid = buy["client_order_id"]
    assert cid.startswith("mcp-t-BTCUSDT-20240805T1200")
    assert abs(buy["intent"]["qty"] * state.price - 8_000) < 1
    at_venue = venue(server).get_order_by_client_id(cid)
    assert at_venue["id"] == buy["order"]["id"] and float(at_venue["qty"]) == buy["intent"]["qty"]
    error, positions = out["positions"]
    assert [p["symbol"] for p in positions["positions"]] == ["BTC/USDT"]
    assert positions["positions"][0]["qty"] == buy["order"]["filled_qty"] == buy["intent"]["qty"]
    error, orders = out["orders"]
    assert [(o["client_order_id"], o["status"]) for o in orders["orders"]] == [(cid, "filled")]
    error, cancel = out["cancel_filled"]  # found by its client id; the venue's refusal comes back
    assert error and "already" in cancel and "filled" in cancel

    # Refused: nothing of ETH is held (spot only): refused through MCP, with the reason, and not sent.
    error, sell = out["sell_unheld"]
    assert not error and sell["verdict"] == "rejected" and sell["order"] is None
    assert sell["reasons"] == ["nothing held of ETH/USDT to sell (spot only)"]
    assert sell["client_order_id"] is None

    error, unknown = out["unknown"]
    assert error and "DOGE/USDT" in unknown

    assert out["report"] == (page.read_text(), "text/html")
    assert out["chart"] == page.with_suffix(".png").read_bytes()

    # The kill switch: flag set, every position closed at the venue, orders refused afterwards.
    error, kill = out["kill"]
    assert not error and kill["positions_closed"] == 1 and kill["positions_left"] == []
    assert kill["open_orders_left"] == 0
    assert venue(server).get_all_positions() == []
    assert "test" in kill_flag_path(warehouse).read_text()
    error, after = out["after_kill"]
    assert after["verdict"] == "rejected" and after["reasons"][0].startswith("kill switch is set")

    # At the venue: the approved buy and the kill switch's close, nothing of ETH.
    orders = venue_orders(server)
    assert sorted((o["symbol"], o["side"]) for o in orders) == [("BTC/USDT", "buy"), ("BTC/USDT", "sell")]

    # Journaled in the live tables under the server's run id, refusals with their reasons.
    wh = Warehouse(warehouse)
    verdicts = wh.read("risk_verdicts").filter(pl.col("run_id") == "mcp-t").sort("time", "symbol")
    assert verdicts.select("symbol", "verdict").rows() == [
        ("BTC/USDT", "approved"),
        ("ETH/USDT", "rejected"),
        ("ETH/USDT", "rejected"),
    ]
    reasons = {r for rs in verdicts["reasons"].to_list() for r in rs}
    assert "nothing held of ETH/USDT to sell (spot only)" in reasons
    decisions = wh.read("decisions").filter(pl.col("run_id") == "mcp-t")
    assert set(decisions["provider"].to_list()) == {"mcp"}
    journaled = wh.read("orders").filter(pl.col("run_id") == "mcp-t")
    assert cid in journaled["client_order_id"].to_list()
    assert "submitted" in journaled.filter(pl.col("client_order_id") == cid)["status"].to_list()

    # No answer, and no line of the server's log, carries the key or the secret.
    log_text = (tmp_path / "server.log").read_text()
    assert "kill switch via MCP" in log_text  # the log is there...
    assert not any(SECRET in text or KEY in text for text in [*out["texts"], log_text])  # ...without keys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_over_streamable_http_a_refused_order_is_refused_and_bars_come_from_the_venue(
    start_exchange, tmp_path
) -> None:
    server = start_exchange()
    warehouse = tmp_path / "wh"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *mcp_args(server.base_url, "--transport", "http", "--port", str(port))],
        env={**os.environ, **server_env(warehouse)},
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the MCP server never listened"
                time.sleep(0.2)

        async def scenario() -> dict[str, Any]:
            url = f"http://127.0.0.1:{port}/mcp"
            async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                call = Calls(session)
                out: dict[str, Any] = {"tools": {t.name for t in (await session.list_tools()).tools}}
                out["account"] = await call("get_account")
                out["bars"] = await call("get_bars", symbol="ETH/USDT", timeframe="1h", limit=3)
                out["low_confidence"] = await call(
                    "place_order", symbol="ETH/USDT", action="BUY", position_size_pct=10, confidence=20
                )
                out["orders"] = await call("get_orders", status="all")
                out["texts"] = call.texts
                return out

        out = anyio.run(scenario)
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert out["tools"] == TOOLS
    assert out["account"][1]["cash"] == 100_000
    error, bars = out["bars"]
    closes = [b["close"] for b in bars["bars"]]
    recorded = (
        pl.read_parquet(DATA_2024 / "bars_5m.parquet")
        .filter(pl.col("symbol") == "ETH/USDT", pl.col("timestamp") < START)
        .sort("timestamp")
    )
    assert not error and [b["timestamp"][:16] for b in bars["bars"]] == [
        "2024-08-05T09:00",
        "2024-08-05T10:00",
        "2024-08-05T11:00",
    ]
    assert closes[-1] == recorded["close"][-1]  # the 11:00 hour closes with the 11:55 bar

    error, refused = out["low_confidence"]
    assert refused["verdict"] == "rejected" and refused["reasons"] == ["confidence 20 < 55"]
    assert out["orders"][1]["orders"] == []
    try:
        assert venue_orders(server) == []
    except APIError as error:  # pragma: no cover - the exchange answers; a failure here says so
        raise AssertionError(f"the venue did not answer: {error}") from None
    verdicts = Warehouse(warehouse).read("risk_verdicts").filter(pl.col("run_id") == "mcp-t")
    assert verdicts.select("symbol", "verdict", "reasons").rows() == [
        ("ETH/USDT", "rejected", ["confidence 20 < 55"])
    ]
    log_text = (tmp_path / "server.log").read_text()
    assert "Created new transport with session ID" in log_text
    assert not any(SECRET in text or KEY in text for text in [*out["texts"], log_text])


def test_wrong_keys_are_a_clear_tool_error_and_no_order(start_exchange, tmp_path) -> None:
    from mcp import Client
    from pydantic import SecretStr

    from crypto_pipeline.config import Settings
    from crypto_pipeline.mcp_desk import AgentConfig, AgentDesk
    from crypto_pipeline.mcp_server import build_server

    server = start_exchange()
    wrong = "not-the-secret-5b1f"
    settings = Settings(
        warehouse_dir=tmp_path / "wh", alpaca_api_key=SecretStr(KEY), alpaca_secret_key=SecretStr(wrong)
    )
    desk = AgentDesk(AgentConfig(exchange_url=server.base_url), settings)

    async def scenario() -> list[Any]:
        async with Client(build_server(desk, tmp_path / "wh" / "reports")) as client:
            account = await client.call_tool("get_account", {})
            order = await client.call_tool(
                "place_order",
                {"symbol": "BTC/USDT", "action": "BUY", "position_size_pct": 10, "confidence": 90},
            )
            report = await client.call_tool("get_positions", {})
            return [account, order, report]

    results = anyio.run(scenario)
    for result in results:
        text = result.content[0].text
        assert result.is_error and "refused the API keys (HTTP 403)" in text, text
        assert wrong not in text and "no order was sent" in text
    assert venue_orders(server) == []


def test_real_money_is_refused_unless_explicitly_enabled(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from crypto_pipeline.cli import app

    monkeypatch.setenv("ALPACA_API_KEY", KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(tmp_path))
    monkeypatch.delenv("CRYPTO_PIPELINE_LIVE_TRADING_ENABLED", raising=False)
    result = CliRunner().invoke(app, ["mcp", "--venue", "alpaca_live"])
    assert result.exit_code == 2
    assert "CRYPTO_PIPELINE_LIVE_TRADING_ENABLED=true" in result.output


BUY = {"symbol": "BTC/USDT", "action": "BUY", "position_size_pct": 10, "confidence": 90}
PAIR_EXPECTED = "Value error, expected one pair as the venue writes it, BASE/QUOTE in capitals"
# (tool, arguments, what its answer must say): each a tool error with its reason, none a crash.
HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("cancel_order", {"order_id": "not-a-uuid"}, "no order 'not-a-uuid' at the venue"),
    ("cancel_order", {"order_id": "'; DROP TABLE orders; --"}, "not an order id of the venue (a UUID"),
    ("cancel_order", {"order_id": "../../v2/account"}, "is no client_order_id the venue knows"),
    ("cancel_order", {"order_id": "00000000-0000-0000-0000-000000000000"}, "HTTP 404"),
    ("cancel_order", {"order_id": ""}, "order_id\n  String should have at least 1 character"),
    ("cancel_order", {"order_id": "   "}, "order_id\n  Value error, expected one line of printable text"),
    ("cancel_order", {"order_id": "abc\nforged"}, "expected one line of printable text"),
    ("cancel_order", {"order_id": "x" * 500}, "order_id\n  String should have at most 128 characters"),
    ("cancel_order", {}, "order_id\n  Field required"),
    ("get_orders", {"status": "pending"}, "status\n  Input should be 'open', 'closed' or 'all'"),
    ("get_orders", {"limit": -1}, "limit\n  Input should be greater than or equal to 1"),
    ("get_orders", {"limit": 10**12}, "limit\n  Input should be less than or equal to 500"),
    ("get_orders", {"limit": "ten"}, "limit\n  Input should be a valid integer"),
    ("get_orders", {"symbol": ""}, PAIR_EXPECTED),  # empty was "no filter": every order
    ("get_orders", {"symbol": "BTC/USDT,ETH/USDT"}, PAIR_EXPECTED),
    ("get_bars", {"symbol": "BTC/USDT", "timeframe": "7m"}, "timeframe\n  Input should be '1m', '5m'"),
    ("get_bars", {"symbol": "BTC/USDT", "limit": 0}, "limit\n  Input should be greater than or equal to 1"),
    ("get_bars", {"symbol": "BTC/USDT", "limit": -5}, "limit\n  Input should be greater than or equal to 1"),
    (
        "get_bars",
        {"symbol": "BTC/USDT", "limit": 10**9},
        "limit\n  Input should be less than or equal to 1000",
    ),
    ("get_bars", {"symbol": "   "}, PAIR_EXPECTED),  # was the data API's HTTP 400 "missing symbols"
    ("get_bars", {"symbol": "btc/usdt"}, PAIR_EXPECTED),
    ("get_bars", {"symbol": "BTCUSDT"}, PAIR_EXPECTED),
    ("get_bars", {"symbol": "BTC/USDT,ETH/USDT"}, PAIR_EXPECTED),  # was both symbols' bars, mixed
    ("get_bars", {"symbol": "../../etc"}, PAIR_EXPECTED),
    ("get_bars", {"symbol": "DOGE/USDT"}, "the venue has no 1h bars of DOGE/USDT before 2024-08-05 12:00"),
    ("get_bars", {}, "symbol\n  Field required"),
    ("get_market_state", {"symbol": ""}, PAIR_EXPECTED),
    ("get_market_state", {"symbol": "x" * 5000}, PAIR_EXPECTED),
    ("get_market_state", {"symbol": "DOGE/USDT"}, "no market state for DOGE/USDT"),
    ("place_order", {**BUY, "symbol": "BTCUSDT"}, PAIR_EXPECTED),
    ("place_order", {**BUY, "symbol": "BTC/USDT\nSELL"}, PAIR_EXPECTED),
    ("place_order", {**BUY, "action": "HOLD"}, "action\n  Input should be 'BUY' or 'SELL'"),
    ("place_order", {**BUY, "action": "buy"}, "action\n  Input should be 'BUY' or 'SELL'"),
    ("place_order", {**BUY, "position_size_pct": -10}, "position_size_pct\n  Input should be greater than 0"),
    ("place_order", {**BUY, "position_size_pct": 0}, "position_size_pct\n  Input should be greater than 0"),
    (
        "place_order",
        {**BUY, "position_size_pct": 1e308},
        "position_size_pct\n  Input should be less than or equal to 100",
    ),
    (
        "place_order",
        {**BUY, "position_size_pct": "ten"},
        "position_size_pct\n  Input should be a valid number",
    ),
    ("place_order", {**BUY, "confidence": 101}, "confidence\n  Input should be less than or equal to 100"),
    ("place_order", {**BUY, "confidence": -1}, "confidence\n  Input should be greater than or equal to 0"),
    (
        "place_order",
        {**BUY, "reasoning": "x" * 1000},
        "reasoning\n  String should have at most 300 characters",
    ),
    ("place_order", {"symbol": "BTC/USDT", "action": "BUY"}, "position_size_pct\n  Field required"),
    ("kill_switch", {"reason": ""}, "reason\n  String should have at least 1 character"),
    ("kill_switch", {"reason": "   "}, "reason\n  Value error, expected one line of printable text"),
    ("kill_switch", {"reason": "drill\n2024-08-05 forged log line"}, "expected one line of printable text"),
    ("kill_switch", {"reason": "x" * 1000}, "reason\n  String should have at most 200 characters"),
]


def test_hostile_inputs_to_every_tool_are_clear_tool_errors_and_change_nothing(
    start_exchange, tmp_path, caplog
) -> None:
    """Each tool, given what it cannot use (ids that are neither a UUID nor a known client id, symbols
    that are not one pair, unknown timeframes and statuses, limits out of range, empty or multi-line text),
    answers with a tool error that names the argument and what was wrong: never the bare "Error executing
    tool ..." of a crash, never a traceback in the server's log, and no order, position or kill switch."""
    import logging

    from mcp import Client
    from pydantic import SecretStr

    from crypto_pipeline.config import Settings
    from crypto_pipeline.mcp_desk import AgentConfig, AgentDesk
    from crypto_pipeline.mcp_server import build_server

    server = start_exchange()
    settings = Settings(
        warehouse_dir=tmp_path / "wh", alpaca_api_key=SecretStr(KEY), alpaca_secret_key=SecretStr(SECRET)
    )
    desk = AgentDesk(AgentConfig(exchange_url=server.base_url, run_id="mcp-h", lookback_days=4), settings)

    async def scenario() -> tuple[list[tuple[bool, str]], list[str]]:
        async with Client(build_server(desk, tmp_path / "wh" / "reports")) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            answers = []
            for name, arguments, _ in HOSTILE:
                result = await client.call_tool(name, arguments)
                answers.append((result.is_error, "".join(c.text for c in result.content if c.type == "text")))
            return answers, sorted(tools)

    with caplog.at_level(logging.INFO):
        answers, tools = anyio.run(scenario)

    assert set(tools) == TOOLS and {name for name, _, _ in HOSTILE} == TOOLS - {
        "get_account",
        "get_positions",
    }
    unclear = [
        (name, arguments, text)
        for (name, arguments, expected), (error, text) in zip(HOSTILE, answers, strict=True)
        if not (error and text.startswith(f"Error executing tool {name}: ") and expected in text)
    ]
    assert unclear == [], "\n\n".join(f"{n} {str(a)[:80]}:\n{t}" for n, a, t in unclear)
    crashes = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert crashes == []
    # Nothing reached the venue or the switch, and no answer carries a key.
    assert venue_orders(server) == [] and venue(server).get_all_positions() == []
    assert not kill_flag_path(tmp_path / "wh").exists()
    assert not any(SECRET in text or KEY in text for _, text in answers)
