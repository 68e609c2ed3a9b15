"""The FastAPI application: Alpaca's trading and crypto data REST routes plus the two websockets,
behind key checks and fault injection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Query, Request, Response, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from crypto_pipeline.exchange.config import ExchangeConfig
from crypto_pipeline.exchange.market import DAY_NS, split_symbols
from crypto_pipeline.exchange.request_models import (
    BarsQuery,
    ClosePositionQuery,
    OrderRequest,
    OrdersQuery,
    as_alpaca_error,
)
from crypto_pipeline.exchange.venue import Venue
from crypto_pipeline.exchange.views import account_wire, asset_wire, order_wire, position_wire
from crypto_pipeline.exchange.wire import AlpacaError, rfc3339

PROTECTED_PREFIXES = ("/v2", "/v1beta3")
LATEST_KINDS = ("bars", "quotes", "trades", "orderbooks")


def _venue(request: Request | WebSocket) -> Venue:
    return request.app.state.venue


def create_app(config: ExchangeConfig, venue: Venue | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.venue = venue if venue is not None else Venue(config)
        await app.state.venue.start()
        yield
        await app.state.venue.stop()

    app = FastAPI(title="crypto_pipeline local Alpaca-compatible exchange", lifespan=lifespan, docs_url=None)

    @app.exception_handler(AlpacaError)
    async def alpaca_error(_: Request, error: AlpacaError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        alpaca = as_alpaca_error(error)
        return JSONResponse(alpaca.body(), status_code=alpaca.status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        v = _venue(request)
        faults = v.config.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if not request.url.path.startswith(PROTECTED_PREFIXES):
            return await call_next(request)
        injected = v.rest_faults.next_error()
        if injected is not None:
            return JSONResponse(injected[1], status_code=injected[0])
        key = request.headers.get("APCA-API-KEY-ID")
        secret = request.headers.get("APCA-API-SECRET-KEY")
        if not key or not secret:
            return JSONResponse({"code": 40110000, "message": "request is not authorized"}, status_code=401)
        if not v.credentials.valid(key, secret):
            return JSONResponse(
                {"code": 40310000, "message": "forbidden: invalid API key or secret"}, status_code=403
            )
        return await call_next(request)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> dict[str, object]:
        v = _venue(request)
        return {"status": "ok", "clock": rfc3339(v.clock.now_ns()), "replay_ready": v.replayer.ready.is_set()}

    # --- trading API ----------------------------------------------------------------------------
    @app.get("/v2/clock")
    async def clock(request: Request) -> dict[str, object]:
        now = _venue(request).clock.now_ns()
        next_day = now - now % DAY_NS + DAY_NS
        # Crypto trades around the clock: always open; the next session bounds are the next UTC day.
        return {
            "timestamp": rfc3339(now),
            "is_open": True,
            "next_open": rfc3339(next_day),
            "next_close": rfc3339(next_day + DAY_NS),
        }

    @app.get("/v2/account")
    async def account(request: Request) -> dict[str, object]:
        return account_wire(_venue(request).broker)

    @app.get("/v2/assets")
    async def assets(
        request: Request, asset_class: str = "crypto", status: str = "active"
    ) -> list[dict[str, object]]:
        catalog = _venue(request).broker.catalog
        if asset_class != "crypto" or status != "active":
            return []
        return [asset_wire(catalog, symbol) for symbol in catalog.symbols()]

    @app.get("/v2/assets/{symbol:path}")
    async def asset(request: Request, symbol: str) -> dict[str, object]:
        catalog = _venue(request).broker.catalog
        return asset_wire(catalog, catalog.resolve(symbol))

    @app.post("/v2/orders")
    async def submit_order(request: Request, order: OrderRequest) -> dict[str, object]:
        return order_wire(_venue(request).broker.submit(order))

    @app.get("/v2/orders")
    async def list_orders(
        request: Request, query: Annotated[OrdersQuery, Query()]
    ) -> list[dict[str, object]]:
        broker = _venue(request).broker
        symbols = set(split_symbols(query.symbols)) if query.symbols else None
        chosen = [
            order
            for order in broker.orders.values()
            if (query.status == "all" or order.is_open == (query.status == "open"))
            and (symbols is None or order.symbol in symbols or order.symbol.replace("/", "") in symbols)
            and (query.after is None or order.created_at_ns > query.after)
            and (query.until is None or order.created_at_ns < query.until)
            and (query.side is None or order.side == query.side)
        ]
        chosen.sort(key=lambda o: o.created_at_ns, reverse=query.direction == "desc")
        return [order_wire(order) for order in chosen[: query.limit]]

    @app.get("/v2/orders:by_client_order_id")
    async def order_by_client_id(
        request: Request, client_order_id: Annotated[str, Query(min_length=1)]
    ) -> dict[str, object]:
        return order_wire(_venue(request).broker.ledger.get_by_client_id(client_order_id))

    @app.get("/v2/orders/{order_id}")
    async def get_order(request: Request, order_id: str) -> dict[str, object]:
        return order_wire(_venue(request).broker.ledger.get_order(order_id))

    @app.delete("/v2/orders/{order_id}", status_code=204)
    async def cancel_order(request: Request, order_id: str) -> Response:
        _venue(request).broker.cancel(order_id)
        return Response(status_code=204)

    @app.delete("/v2/orders")
    async def cancel_all_orders(request: Request) -> JSONResponse:
        canceled = _venue(request).broker.cancel_all()
        body = [{"id": o.id, "status": 200, "body": order_wire(o)} for o in canceled]
        return JSONResponse(body, status_code=207)

    @app.get("/v2/positions")
    async def positions(request: Request) -> list[dict[str, object]]:
        broker = _venue(request).broker
        return [position_wire(p, broker.mark_price(p.symbol)) for _, p in sorted(broker.positions.items())]

    @app.get("/v2/positions/{symbol:path}")
    async def position(request: Request, symbol: str) -> dict[str, object]:
        broker = _venue(request).broker
        found = broker.get_position(symbol)
        return position_wire(found, broker.mark_price(found.symbol))

    @app.delete("/v2/positions/{symbol:path}")
    async def close_position(
        request: Request, symbol: str, query: Annotated[ClosePositionQuery, Query()]
    ) -> dict[str, object]:
        return order_wire(_venue(request).broker.close_position(symbol, query.qty, query.percentage))

    @app.delete("/v2/positions")
    async def close_all_positions(request: Request, cancel_orders: bool = False) -> JSONResponse:
        results = _venue(request).broker.close_all(cancel_orders)
        body = []
        for symbol, status, outcome in results:
            if isinstance(outcome, AlpacaError):
                detail: dict[str, object] = {
                    "code": outcome.code,
                    "message": outcome.message,
                    "symbol": symbol,
                }
                body.append({"order_id": None, "status": status, "symbol": symbol, "body": detail})
            else:
                body.append(
                    {"order_id": outcome.id, "status": status, "symbol": symbol, "body": order_wire(outcome)}
                )
        return JSONResponse(body, status_code=207)

    # --- crypto market data API -------------------------------------------------------------------
    @app.get("/v1beta3/crypto/{feed}/bars")
    async def bars(request: Request, feed: str, query: Annotated[BarsQuery, Query()]) -> dict[str, object]:
        v = _venue(request)
        return await asyncio.to_thread(
            v.market.bars_page,
            split_symbols(query.symbols),
            query.timeframe,
            v.clock.now_ns(),
            query.start,
            query.end,
            query.limit,
            query.page_token,
            query.sort == "desc",
        )

    @app.get("/v1beta3/crypto/{feed}/latest/{kind}")
    async def latest(request: Request, feed: str, kind: str, symbols: str | None = None) -> dict[str, object]:
        if kind not in LATEST_KINDS:
            raise AlpacaError(404, 40410000, "endpoint not found")
        v = _venue(request)
        return {
            kind: await asyncio.to_thread(v.market.latest, kind, split_symbols(symbols), v.clock.now_ns())
        }

    @app.get("/v1beta3/crypto/{feed}/snapshots")
    async def snapshots(request: Request, feed: str, symbols: str | None = None) -> dict[str, object]:
        v = _venue(request)
        return {
            "snapshots": await asyncio.to_thread(v.market.snapshots, split_symbols(symbols), v.clock.now_ns())
        }

    # --- websockets --------------------------------------------------------------------------------
    @app.websocket("/v1beta3/crypto/{feed}")
    async def market_stream(websocket: WebSocket, feed: str) -> None:
        await _venue(websocket).data_hub.serve(websocket)

    @app.websocket("/stream")
    async def trade_stream(websocket: WebSocket) -> None:
        await _venue(websocket).trade_hub.serve(websocket)

    return app
