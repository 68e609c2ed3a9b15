"""Where bars come from: recorded files on disk, or Alpaca's REST API through alpaca-py.

Every source returns bars conformed to `BAR_SCHEMA` (plus nothing else) and leaves judging them to
the cleaning step: rows come back as the source sent them, in the source's order, bad ones included.

Ranges are half-open: `fetch_bars(..., start, end)` returns bars whose open time t has start <= t < end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import polars as pl
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical import CryptoHistoricalDataClient
from alpaca.data.requests import CryptoBarsRequest, CryptoLatestBarRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from pydantic import SecretStr
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from crypto_pipeline.config import Settings
from crypto_pipeline.errors import SourceError, UserInputError
from crypto_pipeline.market.recorded import (  # noqa: F401 - re-exported: recorded files live there
    RecordedFile,
    RecordedSource,
    parse_recorded_name,
    recorded_files,
)
from crypto_pipeline.market.schema import BAR_SCHEMA, conform_bars, empty_frame
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.timeutil import as_utc

log = logging.getLogger(__name__)


@runtime_checkable
class BarSource(Protocol):
    """What ingestion needs from a source of historical bars."""

    @property
    def name(self) -> str:
        """Short kind name: 'recorded' or 'alpaca'."""
        ...

    @property
    def description(self) -> str:
        """Where the data comes from, for messages (never contains credentials)."""
        ...

    @property
    def symbols_per_request(self) -> int | None:
        """How many symbols ingestion should ask for per `fetch_bars` call (None: all at once).
        A local file scan costs the same for 1 symbol as for 24; a remote API gives finer progress
        per symbol at no extra cost (its pages hold 10k bars whatever the symbols)."""
        ...

    def symbols(self, timeframe: Timeframe | None = None) -> list[str]:
        """Every symbol the source can serve (for `timeframe`, when given), sorted."""
        ...

    def unknown_symbols(self, symbols: Sequence[str], timeframe: Timeframe) -> list[str]:
        """The requested symbols this source does not know, in request order."""
        ...

    def fetch_bars(
        self, symbols: Sequence[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Bars of `symbols` with start <= timestamp < end, conformed to BAR_SCHEMA, unjudged."""
        ...


# --- Alpaca ----------------------------------------------------------------------------------------

_ALPACA_TIMEFRAMES: dict[Timeframe, tuple[int, TimeFrameUnit]] = {
    Timeframe.M1: (1, TimeFrameUnit.Minute),
    Timeframe.M5: (5, TimeFrameUnit.Minute),
    Timeframe.M15: (15, TimeFrameUnit.Minute),
    Timeframe.H1: (1, TimeFrameUnit.Hour),
    Timeframe.H4: (4, TimeFrameUnit.Hour),
    Timeframe.D1: (1, TimeFrameUnit.Day),
}
_WIRE_SCHEMA = {
    "t": pl.Utf8,
    "o": pl.Float64,
    "h": pl.Float64,
    "l": pl.Float64,
    "c": pl.Float64,
    "v": pl.Float64,
    "n": pl.Float64,
    "vw": pl.Float64,
}


def _status_code(error: BaseException) -> int | None:
    if isinstance(error, APIError):
        return error.status_code
    return None


def is_transient(error: BaseException) -> bool:
    """Worth retrying: rate limiting (429), server errors (5xx), dropped or timed-out connections."""
    if isinstance(error, requests.ConnectionError | requests.Timeout):
        return True
    status = _status_code(error)
    return status is not None and (status == 429 or status >= 500)


def _describe_error(error: BaseException) -> str:
    status = _status_code(error)
    if status is None:
        text = str(error)
        return f"{type(error).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"
    body = str(error).strip().replace("\n", " ")
    return f"HTTP {status}: {body[:200]}"


class _RetryingCryptoClient(CryptoHistoricalDataClient):
    """alpaca-py's client with our retry policy on each HTTP request.

    alpaca-py paginates by calling `get` once per page, so retrying `get` retries one page, not the
    whole download. Its own retry (3 tries, a fixed 3 s apart, on 429/504 only) is switched off so
    that one policy applies: exponential backoff on 429, every 5xx and connection errors.
    """

    def __init__(self, *, retrying: Retrying, **kwargs: Any) -> None:
        super().__init__(raw_data=True, **kwargs)
        self._retry = 0  # alpaca-py's built-in retry loop; the constructor cannot set 0
        self._retrying = retrying

    def get(self, path: str, data: dict | str | None = None, **kwargs: Any) -> Any:
        return self._retrying(super().get, path, data, **kwargs)


class AlpacaSource:
    """Historical crypto bars from Alpaca (or any server speaking its protocol, via `url_override`).

    Keys are optional for crypto data; they raise the rate limit. They are kept as `SecretStr` and
    never appear in logs or messages. `retry_attempts`, `retry_wait_min`/`retry_wait_max` (seconds)
    shape the exponential backoff on 429/5xx/connection errors.
    """

    def __init__(
        self,
        api_key: SecretStr | str | None = None,
        secret_key: SecretStr | str | None = None,
        url_override: str | None = None,
        *,
        trading_url_override: str | None = None,
        paper: bool = True,
        retry_attempts: int = 5,
        retry_wait_min: float = 1.0,
        retry_wait_max: float = 30.0,
    ) -> None:
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self._secret_key = SecretStr(secret_key) if isinstance(secret_key, str) else secret_key
        self.url_override = url_override
        # One local server (the exchange) usually answers both APIs: default trading to the data URL.
        self.trading_url_override = trading_url_override or url_override
        self.paper = paper
        self.retry_attempts = max(1, retry_attempts)
        self._retrying = Retrying(
            stop=stop_after_attempt(self.retry_attempts),
            wait=wait_exponential(multiplier=retry_wait_min, min=retry_wait_min, max=retry_wait_max),
            retry=retry_if_exception(is_transient),
            before_sleep=self._log_retry,
            reraise=True,
        )

    @property
    def name(self) -> str:
        return "alpaca"

    @property
    def description(self) -> str:
        return f"alpaca at {self.url_override or 'data.alpaca.markets'}"

    @property
    def symbols_per_request(self) -> int | None:
        return 1  # progress per symbol; Alpaca pages hold 10k bars either way

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: request failed (%s); retry %d/%d in %.1f s",
            self.description,
            _describe_error(error) if error else "unknown error",
            state.attempt_number + 1,
            self.retry_attempts,
            wait,
        )

    @cached_property
    def _client(self) -> _RetryingCryptoClient:
        return _RetryingCryptoClient(
            retrying=self._retrying,
            api_key=self._api_key.get_secret_value() if self._api_key else None,
            secret_key=self._secret_key.get_secret_value() if self._secret_key else None,
            url_override=self.url_override,
        )

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except APIError as error:
            status = error.status_code or 0
            if status in (401, 403):
                raise SourceError(
                    f"{self.description} refused {what} ({_describe_error(error)}); "
                    "check ALPACA_API_KEY / ALPACA_SECRET_KEY"
                ) from None
            if 400 <= status < 500 and status != 429:
                raise UserInputError(
                    f"{self.description} rejected {what}: {_describe_error(error)}"
                ) from None
            raise SourceError(
                f"{self.description}: {what} failed after {self.retry_attempts} attempts ({_describe_error(error)})"
            ) from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise SourceError(
                f"{self.description}: {what} failed after {self.retry_attempts} attempts ({_describe_error(error)})"
            ) from None

    def symbols(self, timeframe: Timeframe | None = None) -> list[str]:
        """Alpaca's active crypto assets. Listing them needs keys (the trading API); fetching bars does not."""
        if not (self._api_key and self._secret_key):
            raise UserInputError(
                "listing Alpaca's crypto symbols needs ALPACA_API_KEY and ALPACA_SECRET_KEY "
                "(fetching bars does not)"
            )
        from alpaca.trading.client import TradingClient
        from alpaca.trading.enums import AssetClass, AssetStatus
        from alpaca.trading.requests import GetAssetsRequest

        client = TradingClient(
            self._api_key.get_secret_value(),
            self._secret_key.get_secret_value(),
            paper=self.paper,
            raw_data=True,
            url_override=self.trading_url_override,
        )
        request = GetAssetsRequest(asset_class=AssetClass.CRYPTO, status=AssetStatus.ACTIVE)
        assets = self._call("the asset list", lambda: client.get_all_assets(request))
        return sorted({a["symbol"] for a in assets})

    def unknown_symbols(self, symbols: Sequence[str], timeframe: Timeframe) -> list[str]:
        """Asks for the latest bar of each symbol (no keys needed); those without one are unknown."""
        if not symbols:
            return []
        request = CryptoLatestBarRequest(symbol_or_symbols=list(symbols))
        latest = self._call("the latest bars", lambda: self._client.get_crypto_latest_bar(request)) or {}
        return [s for s in symbols if s not in latest]

    def fetch_bars(
        self, symbols: Sequence[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> pl.DataFrame:
        timeframe = Timeframe.parse(timeframe)
        start, end = as_utc(start), as_utc(end)
        if not symbols or start >= end:
            return empty_frame(BAR_SCHEMA)
        amount, unit = _ALPACA_TIMEFRAMES[timeframe]
        request = CryptoBarsRequest(
            symbol_or_symbols=list(symbols), timeframe=TimeFrame(amount, unit), start=start, end=end
        )
        what = f"bars {','.join(symbols)} {timeframe.value} {start:%Y-%m-%dT%H:%M}..{end:%Y-%m-%dT%H:%M}"
        raw: dict[str, list[dict[str, Any]]] = (
            self._call(what, lambda: self._client.get_crypto_bars(request)) or {}
        )
        frames = [
            conform_bars(pl.from_dicts(bars, schema=_WIRE_SCHEMA, strict=False), symbol=symbol)
            for symbol, bars in raw.items()
            if bars
        ]
        if not frames:
            return empty_frame(BAR_SCHEMA)
        bars = pl.concat(frames, how="vertical")
        # Alpaca's `end` is inclusive; ours is exclusive.
        return bars.filter((pl.col("timestamp") < end) | pl.col("timestamp").is_null())


def make_source(
    settings: Settings,
    *,
    kind: str | None = None,
    data_dir: Path | None = None,
    url: str | None = None,
) -> BarSource:
    """The source named by `kind` (default `settings.source`), with overrides from the command line."""
    kind = kind or settings.source
    if kind == "recorded":
        return RecordedSource(data_dir or settings.market_data_dir)
    if kind == "alpaca":
        return AlpacaSource(
            settings.alpaca_api_key,
            settings.alpaca_secret_key,
            url or settings.alpaca_data_url,
            trading_url_override=settings.alpaca_trading_url,
            paper=settings.alpaca_paper,
        )
    raise UserInputError(f"unknown source {kind!r}; expected 'recorded' or 'alpaca'")
