"""Where a live session trades: the local exchange (default), Alpaca's paper API, or, only when
`Settings.live_trading_enabled` says so, Alpaca's live API with real money. Builds the alpaca-py
clients and checks the keys before anything else happens."""

from __future__ import annotations

from dataclasses import dataclass

import requests
from alpaca.common.exceptions import APIError
from alpaca.data.live.crypto import CryptoDataStream
from alpaca.trading.client import TradingClient
from alpaca.trading.stream import TradingStream
from pydantic import SecretStr

from crypto_pipeline.errors import SourceError, UserInputError
from crypto_pipeline.live.streams import keep_keys_out_of_websocket_logs
from crypto_pipeline.market.sources import AlpacaSource


@dataclass(frozen=True)
class Endpoints:
    """URLs of one venue (None: alpaca-py's own hosts) and whether it is a paper account."""

    name: str
    trading_url: str | None
    data_url: str | None
    data_stream_url: str | None
    trading_stream_url: str | None
    paper: bool = True

    @classmethod
    def local(cls, base_url: str) -> Endpoints:
        ws = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        return cls("local", base_url, base_url, ws + "/v1beta3/crypto/us", ws + "/stream")


def resolve_endpoints(venue: str, settings: object, exchange_url: str | None = None) -> Endpoints:
    """The endpoints of `venue`; real money is refused unless the explicit setting enables it."""
    if venue == "local":
        url = exchange_url or f"http://{settings.exchange.host}:{settings.exchange.port}"
        return Endpoints.local(url)
    if venue == "alpaca_paper":
        return Endpoints("alpaca_paper", None, None, None, None, paper=True)
    if venue == "alpaca_live":
        if not getattr(settings, "live_trading_enabled", False):
            raise UserInputError(
                "venue alpaca_live trades real money and is refused: set "
                "CRYPTO_PIPELINE_LIVE_TRADING_ENABLED=true to allow it explicitly"
            )
        return Endpoints("alpaca_live", None, None, None, None, paper=False)
    raise UserInputError(f"unknown venue {venue!r}; expected local, alpaca_paper or alpaca_live")


@dataclass(frozen=True)
class Credentials:
    key: SecretStr
    secret: SecretStr

    @classmethod
    def from_settings(cls, settings: object, venue: str) -> Credentials:
        key = getattr(settings, "alpaca_api_key", None)
        secret = getattr(settings, "alpaca_secret_key", None)
        if not key or not secret or not key.get_secret_value() or not secret.get_secret_value():
            raise UserInputError(
                f"venue {venue} needs ALPACA_API_KEY and ALPACA_SECRET_KEY in the environment"
            )
        return cls(key, secret)


class _TradingClient(TradingClient):
    """alpaca-py's client with its own retry (429/504, re-posting the same client_order_id: safe) cut
    to one try 1 s later; `OrderDesk` does the rest with backoff and a lookup before each resend. The
    constructor takes no retry settings, hence the attributes (as `market.sources` does)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._retry = 1
        self._retry_wait = 1


@dataclass
class Clients:
    trading: TradingClient
    data: AlpacaSource
    endpoints: Endpoints
    credentials: Credentials

    @classmethod
    def connect(cls, endpoints: Endpoints, credentials: Credentials) -> Clients:
        key, secret = credentials.key.get_secret_value(), credentials.secret.get_secret_value()
        trading = _TradingClient(
            key, secret, paper=endpoints.paper, raw_data=True, url_override=endpoints.trading_url
        )
        data = AlpacaSource(
            credentials.key,
            credentials.secret,
            endpoints.data_url,
            trading_url_override=endpoints.trading_url,
            paper=endpoints.paper,
            retry_wait_min=0.2,
            retry_wait_max=2.0,
        )
        return cls(trading, data, endpoints, credentials)

    def data_stream(self) -> CryptoDataStream:
        keep_keys_out_of_websocket_logs()
        return CryptoDataStream(
            self.credentials.key.get_secret_value(),
            self.credentials.secret.get_secret_value(),
            raw_data=True,  # our handler validates each message: one malformed message cannot cost others
            url_override=self.endpoints.data_stream_url,
        )

    def trading_stream(self) -> TradingStream:
        keep_keys_out_of_websocket_logs()
        return TradingStream(
            self.credentials.key.get_secret_value(),
            self.credentials.secret.get_secret_value(),
            paper=self.endpoints.paper,
            raw_data=True,
            url_override=self.endpoints.trading_stream_url,
        )

    def check_keys(self) -> dict:
        """The account, or a clear error when the venue refuses the keys (before any order)."""
        where = self.endpoints.trading_url or self.endpoints.name
        try:
            return self.trading.get_account()
        except APIError as error:
            if error.status_code in (401, 403):
                raise UserInputError(
                    f"the venue at {where} refused the API keys (HTTP {error.status_code}): set "
                    "ALPACA_API_KEY and ALPACA_SECRET_KEY to this venue's keys; no order was sent"
                ) from None
            raise  # a 429 or 5xx: the caller retries
        except requests.RequestException as error:
            raise SourceError(f"cannot reach the venue at {where} ({type(error).__name__})") from None
