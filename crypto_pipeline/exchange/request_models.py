"""The REST requests as pydantic models: the order body and the query parameters of the trading and
market data routes. They check types and ranges; the trading rules are applied in `validation.py`. A request
that fails them is answered the way Alpaca answers it: 422 with `{"code", "message"}`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

from crypto_pipeline.exchange.clock import to_ns
from crypto_pipeline.exchange.market import MAX_PAGE_LIMIT
from crypto_pipeline.exchange.wire import AlpacaError, unprocessable

MAX_ORDERS_LIMIT = 500  # Alpaca's cap on GET /v2/orders


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


def _plus_restored(value: object) -> object:
    # An unencoded "+00:00" in a query string arrives as " 00:00".
    return value.strip().replace(" ", "+") if isinstance(value, str) else value


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Number = Annotated[FiniteFloat | None, BeforeValidator(_blank_is_none)]
Percentage = Annotated[float, Field(allow_inf_nan=False, gt=0, le=100)]
# An RFC 3339 time or a date (no offset: UTC, as Alpaca reads it), as ns since the epoch.
QueryTime = Annotated[datetime, BeforeValidator(_plus_restored), AfterValidator(to_ns)]


class OrderRequest(BaseModel):
    """The JSON body of POST /v2/orders (alpaca-py sends numbers as JSON numbers, enums lowercase).
    Only its shape: the values become a `trading.OrderIntent` in the validator, which checks them."""

    model_config = ConfigDict(extra="ignore")

    symbol: str
    side: str
    type: str = Field(validation_alias=AliasChoices("type", "order_type"))
    time_in_force: str
    qty: Number = None
    notional: Number = None
    limit_price: Number = None
    stop_price: Number = None
    client_order_id: str | None = None


class OrdersQuery(BaseModel):
    """GET /v2/orders."""

    status: Literal["open", "closed", "all"] = "open"
    limit: int = Field(50, ge=1, le=MAX_ORDERS_LIMIT)
    symbols: str | None = None
    after: QueryTime | None = None
    until: QueryTime | None = None
    side: Literal["buy", "sell"] | None = None
    direction: Literal["asc", "desc"] = "desc"


class ClosePositionQuery(BaseModel):
    """DELETE /v2/positions/{symbol}: all of it, a quantity, or a percentage."""

    qty: Number = None
    percentage: Annotated[Percentage | None, BeforeValidator(_blank_is_none)] = None


class BarsQuery(BaseModel):
    """GET /v1beta3/crypto/{feed}/bars."""

    symbols: str | None = None
    timeframe: str
    start: QueryTime | None = None
    end: QueryTime | None = None
    limit: int | None = Field(None, ge=1, le=MAX_PAGE_LIMIT)
    page_token: Annotated[str | None, BeforeValidator(_blank_is_none)] = None
    sort: Literal["asc", "desc"] = "asc"


def refusal(errors: Sequence[Mapping[str, Any]]) -> AlpacaError:
    """Alpaca's 422 for the first problem pydantic found (`loc` without body/query/path), naming the field;
    a rule's own message (a ValueError in a validator, e.g. OrderIntent's) is passed on as it is."""
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"])
    if first["type"] == "json_invalid":
        return unprocessable("request body is not valid JSON")
    if first["type"] == "value_error":
        return unprocessable(str(first["ctx"]["error"]))
    if not field:
        return unprocessable("request body must be a JSON object")
    if first["type"] == "missing":
        return unprocessable(f"{field} is required")
    return unprocessable(f"invalid {field}: {first['msg']}")


def as_alpaca_error(error: RequestValidationError) -> AlpacaError:
    """Alpaca's 422 for a request FastAPI could not read into its models."""
    # The first part of each location says where the value was: body, query or path.
    return refusal([{**e, "loc": tuple(e["loc"])[1:]} for e in error.errors()])
