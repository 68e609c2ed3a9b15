"""What the local exchange is started with: address, data, replay clock, keys, fees and faults."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crypto_pipeline.config import REPO_ROOT, SHARED_MARKET_DATA

DEFAULT_CAPTURE_DIR = SHARED_MARKET_DATA / "binance-ws-sample-20240808"


class FaultConfig(BaseModel):
    """Fault injection for resilience drills; everything is off by default."""

    drop_ws_every_messages: int = Field(
        default=0, ge=0, description="Close each data stream after N messages."
    )
    drop_ws_every_seconds: float = Field(default=0.0, ge=0, description="Close each stream after S seconds.")
    rest_error_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of REST calls answered in error."
    )
    rest_error_codes: list[int] = Field(default_factory=lambda: [429, 500, 504])
    latency_ms: float = Field(default=0.0, ge=0, description="Delay added to every REST answer.")

    @field_validator("rest_error_codes")
    @classmethod
    def _known_codes(cls, codes: list[int]) -> list[int]:
        unknown = sorted(set(codes) - {429, 500, 502, 503, 504})
        if unknown or not codes:
            raise ValueError(f"rest_error_codes must be among 429, 500, 502, 503, 504; got {codes}")
        return codes

    @property
    def any_active(self) -> bool:
        return bool(
            self.drop_ws_every_messages
            or self.drop_ws_every_seconds
            or self.rest_error_rate
            or self.latency_ms
        )


class ExchangeConfig(BaseSettings):
    """Settings of one exchange process. Keys also come from ALPACA_API_KEY / ALPACA_SECRET_KEY."""

    model_config = SettingsConfigDict(env_prefix="CRYPTO_PIPELINE_EXCHANGE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535, description="0 picks a free port.")
    data_dir: Path = Field(default=SHARED_MARKET_DATA / "binance-spot-2024")
    capture_dir: Path | None = Field(
        default=DEFAULT_CAPTURE_DIR,
        description="Binance websocket capture replayed for its day (quotes, trades, book); None: none.",
    )
    start: datetime | None = Field(
        default=None,
        description="Replay clock start (UTC); None resumes the saved clock or starts at the data.",
    )
    speed: float = Field(
        default=1.0, ge=0, description="Market seconds per wall second; 0 = as fast as read."
    )
    stepped: bool = Field(
        default=False,
        description="The clock moves only when ExchangeServer.advance_to steps it (tests); needs speed 0.",
    )
    key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("key", "ALPACA_API_KEY", "CRYPTO_PIPELINE_EXCHANGE_KEY"),
    )
    secret: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("secret", "ALPACA_SECRET_KEY", "CRYPTO_PIPELINE_EXCHANGE_SECRET"),
    )
    db_path: Path = Field(default=REPO_ROOT / "warehouse" / "exchange.sqlite")
    reset: bool = False
    initial_cash: float = Field(default=100_000.0, gt=0)
    # Alpaca's crypto fee schedule, lowest volume tier: 15 bps maker, 25 bps taker.
    maker_fee_bps: float = Field(default=15.0, ge=0)
    taker_fee_bps: float = Field(default=25.0, ge=0)
    # Spread/book model for symbols that only have bars (see docs/exchange.md).
    min_spread_bps: float = Field(default=1.0, ge=0)
    spread_range_fraction: float = Field(
        default=0.05, ge=0, description="Spread as a share of the bar's range."
    )
    book_levels: int = Field(default=10, ge=1, le=50)
    # Slippage/participation model: price impact grows linearly with size / bar volume.
    impact_coefficient: float = Field(default=0.1, ge=0, description="Price impact at 100% of bar volume.")
    max_participation: float = Field(
        default=0.1, gt=0, le=1, description="Largest share of a bar one order fills."
    )
    faults: FaultConfig = Field(default_factory=FaultConfig)

    @field_validator("capture_dir", mode="before")
    @classmethod
    def _no_capture(cls, value: object) -> object:
        # An empty value (e.g. CRYPTO_PIPELINE_EXCHANGE_CAPTURE_DIR="") switches the capture off.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("start", mode="before")
    @classmethod
    def _parse_start(cls, value: object) -> object:
        if isinstance(value, str) and value.strip():
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _stepped_clock_stands_still(self) -> ExchangeConfig:
        if self.stepped and self.speed > 0:
            raise ValueError("a stepped clock does not run by itself: use speed 0 with stepped")
        return self

    @property
    def credentials_set(self) -> bool:
        return bool(self.key.get_secret_value() and self.secret.get_secret_value())
