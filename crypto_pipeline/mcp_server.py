"""`crypto-pipeline mcp`: the venue's risk-gated tools for any MCP client, on the official `mcp` SDK
(`MCPServer`, the SDK 2 name of FastMCP), over stdio or streamable HTTP.

The tools are thin: each calls `mcp_desk.AgentDesk`, which trades through the live loop's own venue,
risk engine, journal and kill switch. A failure the agent can act on (an unknown symbol, a refused key,
a venue that is down) comes back as a tool error with its reason; anything else stays in the server's
log, which holds no key either. The latest walk-forward report is a resource."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from alpaca.common.exceptions import APIError
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import ToolAnnotations
from pydantic import AfterValidator, Field

from crypto_pipeline.errors import SourceError, UserInputError
from crypto_pipeline.live.orders import describe
from crypto_pipeline.mcp_desk import AgentDesk
from crypto_pipeline.state import MarketState

log = logging.getLogger(__name__)

REPORT_URI = "report://walk-forward/latest"
REPORT_PNG_URI = "report://walk-forward/latest.png"
REPORT_PAGE = "walk_forward.html"

INSTRUCTIONS = """Paper trading on crypto spot through a deterministic risk engine.
Read get_account, get_positions, get_market_state before acting. place_order takes a decision (BUY or
SELL, a share of equity and a confidence), never a size: the risk engine sizes it or rejects it with
its reasons, and every call is journaled. SELL only reduces what is held (no shorting). kill_switch
cancels every order, closes every position and stops all trading until a person clears it."""

READ = ToolAnnotations(read_only_hint=True, open_world_hint=True)
TRADE = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True
)

# What the SDK checks before a tool runs; a value it refuses comes back as a tool error naming the argument
# and what it accepts. A symbol is one pair: a comma would ask the data API for several.
PAIR = re.compile(r"[A-Z0-9]{1,15}/[A-Z0-9]{1,15}")


def _pair(value: str) -> str:
    if not PAIR.fullmatch(value):
        raise ValueError("expected one pair as the venue writes it, BASE/QUOTE in capitals, e.g. BTC/USDT")
    return value


def _one_line(value: str) -> str:
    if not value.strip() or not value.isprintable():
        raise ValueError("expected one line of printable text, not blank")
    return value


Symbol = Annotated[
    str,
    AfterValidator(_pair),
    Field(
        description="Pair as the venue writes it, e.g. BTC/USDT.",
        json_schema_extra={"pattern": f"^{PAIR.pattern}$"},
    ),
]


def latest_report(reports_dir: Path, name: str = REPORT_PAGE) -> Path | None:
    """The newest walk-forward page under `reports_dir`: the `walk_forward_report` asset writes
    reports/walk_forward/, `crypto-pipeline backtest` reports/backtest/ (or its --out)."""
    pages = [p for p in Path(reports_dir).rglob(name) if p.is_file()]
    return max(pages, key=lambda p: p.stat().st_mtime) if pages else None


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Errors with a reason the agent can act on become tool errors with that reason (never a key)."""
    try:
        return fn(*args, **kwargs)
    except (UserInputError, SourceError) as error:
        raise ToolError(str(error)) from None
    except APIError as error:
        raise ToolError(f"the venue answered {describe(error)}") from None


def build_server(desk: AgentDesk, reports_dir: Path) -> MCPServer:
    server = MCPServer(
        "crypto-pipeline",
        title="crypto-pipeline paper trading",
        instructions=INSTRUCTIONS,
        version="0.1.0",
    )

    @server.tool(annotations=READ)
    def get_account() -> dict[str, Any]:
        """Cash, equity and buying power at the venue; the venue's clock; whether the kill switch is set;
        the risk engine's breakers and rules."""
        return _call(desk.account)

    @server.tool(annotations=READ)
    def get_positions() -> dict[str, Any]:
        """Every position held: quantity, entry price, current price, market value, unrealized P&L."""
        return {"positions": _call(desk.positions)}

    @server.tool(annotations=READ)
    def get_orders(
        status: Literal["open", "closed", "all"] = "open",
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
        symbol: Symbol | None = None,
    ) -> dict[str, Any]:
        """Orders at the venue, newest first: open (default), closed or all; optionally of one symbol."""
        return {"orders": _call(desk.orders, status, limit, symbol)}

    @server.tool(annotations=READ)
    def get_bars(
        symbol: Symbol,
        timeframe: Literal["1m", "5m", "15m", "1h", "4h", "1d"] = "1h",
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The newest closed OHLCV bars of a symbol from the venue's market data, oldest first."""
        return _call(desk.bars, symbol, timeframe, limit)

    @server.tool(annotations=READ)
    def get_market_state(symbol: Symbol) -> MarketState:
        """The market state the trading model sees for a symbol now: price, changes, volume, indicators
        per timeframe (15m, 1h, 4h, 1d) and the account's holding of it."""
        return _call(desk.market_state, symbol)

    @server.tool(annotations=TRADE)
    def place_order(
        symbol: Symbol,
        action: Literal["BUY", "SELL"],
        position_size_pct: Annotated[
            float, Field(gt=0, le=100, description="BUY: share of equity to buy; SELL: of equity to sell.")
        ],
        confidence: Annotated[
            float, Field(ge=0, le=100, description="0-100; the risk engine scales the size by it.")
        ],
        reasoning: Annotated[str, Field(max_length=300)] = "",
    ) -> dict[str, Any]:
        """Ask to trade. The risk engine decides: `verdict` is approved (with the venue's `order`) or
        rejected (with `reasons`). A market order; SELL never sells more than is held."""
        return _call(desk.place_order, symbol, action, position_size_pct, confidence, reasoning)

    @server.tool(annotations=TRADE)
    def cancel_order(
        order_id: Annotated[
            str,
            Field(min_length=1, max_length=128, description="The venue's order id or client_order_id."),
            AfterValidator(_one_line),
        ],
    ) -> dict[str, Any]:
        """Cancel an open order; returns the order as the venue now has it."""
        return _call(desk.cancel_order, order_id)

    @server.tool(annotations=TRADE)
    def kill_switch(
        reason: Annotated[
            str, Field(min_length=1, max_length=200), AfterValidator(_one_line)
        ] = "requested via MCP",
    ) -> dict[str, Any]:
        """Emergency stop: set the kill switch (every live session stops), cancel every open order and
        close every position. Orders stay refused until a person clears it."""
        return _call(desk.kill_switch, reason)

    @server.resource(
        REPORT_URI,
        name="walk-forward report",
        description="The latest walk-forward backtest report (HTML): every policy's stitched "
        "out-of-sample return, Sharpe with its interval, drawdown, per-fold table and leakage audits.",
        mime_type="text/html",
    )
    def walk_forward_report() -> str:
        page = latest_report(reports_dir)
        if page is None:
            raise ResourceError(
                f"no walk-forward report under {reports_dir} yet: materialize walk_forward_report "
                "(make run) or run crypto-pipeline backtest --policy rules"
            )
        return page.read_text(encoding="utf-8")

    @server.resource(
        REPORT_PNG_URI,
        name="walk-forward equity and drawdowns",
        description="The equity curves and drawdowns of the latest walk-forward report (PNG).",
        mime_type="image/png",
    )
    def walk_forward_chart() -> bytes:
        page = latest_report(reports_dir)
        png = page.with_suffix(".png") if page is not None else None
        if png is None or not png.is_file():
            raise ResourceError(f"no walk-forward chart under {reports_dir} yet")
        return png.read_bytes()

    return server


def serve(
    desk: AgentDesk,
    reports_dir: Path,
    transport: Literal["stdio", "http"] = "stdio",
    host: str = "127.0.0.1",
    port: int = 8766,
    path: str = "/mcp",
) -> None:
    """Run the server until the client goes (stdio) or the process is stopped (http)."""
    server = build_server(desk, reports_dir)
    if transport == "stdio":
        server.run("stdio")
    else:
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "MCP over HTTP on %s: anyone who reaches it can trade; there is no authentication", host
            )
        server.run("streamable-http", host=host, port=port, streamable_http_path=path)
