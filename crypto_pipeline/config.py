"""One pydantic-settings `Settings` object; every default runs offline on the recorded data."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared sits beside the repository checkout (CI clones main next to it).
SHARED_MARKET_DATA = REPO_ROOT.parent / "shared" / "market-data"

DEFAULT_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
#: LocalLLM's number formats: `Settings.llm_dtype` (env CRYPTO_PIPELINE_LLM_DTYPE), `--dtype`, `dtype=`.
LlmDtype = Literal["auto", "float32", "bfloat16"]
LLM_DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16")
DEFAULT_CAPTURE_DIR = SHARED_MARKET_DATA / "binance-ws-sample-20240808"


class FaultConfig(BaseModel):
    """Fault injection of the local exchange, for resilience drills; everything is off by default."""

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


class ExchangeSettings(BaseModel):
    """The local exchange's part of `Settings` (`Settings.exchange`, env `CRYPTO_PIPELINE_EXCHANGE__<FIELD>`).

    `data_dir`, `db_path`, `key` and `secret` left empty come from the rest of `Settings` when an
    `ExchangeConfig` is built: the market data directory, `<warehouse_dir>/exchange.sqlite` and the Alpaca keys.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535, description="0 picks a free port.")
    data_dir: Path | None = Field(default=None, description="Recorded bars; empty: Settings.market_data_dir.")
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
    key: SecretStr | None = Field(
        default=None, description="Key clients must present; empty: ALPACA_API_KEY."
    )
    secret: SecretStr | None = Field(
        default=None, description="Secret clients must present; empty: ALPACA_SECRET_KEY."
    )
    db_path: Path | None = Field(
        default=None, description="SQLite account, orders and fills; empty: <warehouse_dir>/exchange.sqlite."
    )
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
        # An empty value (e.g. CRYPTO_PIPELINE_EXCHANGE__CAPTURE_DIR="") switches the capture off.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("data_dir", "db_path", "key", "secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An empty value means "derive it from the rest of Settings", as when it is not given at all.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("start", mode="before")
    @classmethod
    def _parse_start(cls, value: object) -> object:
        if isinstance(value, str) and value.strip():
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if isinstance(value, str):
            return None
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _stepped_clock_stands_still(self) -> ExchangeSettings:
        if self.stepped and self.speed > 0:
            raise ValueError("a stepped clock does not run by itself: use speed 0 with stepped")
        return self


class MonitoringSettings(BaseModel):
    """Metrics and alerts of the live loop (docs/monitoring.md). Nested in `Settings`:
    CRYPTO_PIPELINE_MONITORING__METRICS_PORT=9464 serves /metrics on that port."""

    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint; empty: off, 0: any.",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address /metrics listens on.")
    # A Slack or Discord webhook URL carries its own token: a secret, never logged.
    alert_webhook_url: SecretStr | None = Field(default=None, description="Alerts are POSTed here when set.")
    alert_style: Literal["slack", "discord"] = Field(
        default="slack", description='Webhook body: Slack {"text": ...} or Discord {"content": ...}.'
    )
    alert_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one webhook POST.")
    invalid_streak: int = Field(
        default=3, ge=1, description="Alert when this many decisions in a row are invalid model outputs."
    )

    drift_reference_run: str | None = Field(
        default=None,
        description="drift_sensor's reference run in the journal; empty: the newest backtest run.",
    )
    drift_threshold: float = Field(default=0.25, gt=0, description="PSI beyond which drift_sensor retrains.")
    drift_min_decisions: int = Field(
        default=50, ge=1, description="Fewer live decisions: drift is not judged."
    )

    @field_validator("metrics_port", "alert_webhook_url", "drift_reference_run", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


class Settings(BaseSettings):
    """Project configuration: environment variables prefixed `CRYPTO_PIPELINE_`, or a `.env` file."""

    model_config = SettingsConfigDict(
        env_prefix="CRYPTO_PIPELINE_",
        env_file=".env",
        env_file_encoding="utf-8",
        # Nested settings: CRYPTO_PIPELINE_EXCHANGE__PORT=9000 sets Settings().exchange.port.
        env_nested_delimiter="__",
        extra="ignore",
    )

    # --- data -----------------------------------------------------------------------------
    market_data_dir: Path = Field(
        default=SHARED_MARKET_DATA / "binance-spot-2024",
        description="Directory of recorded Parquet bars (bars_<tf>.parquet) used by the offline default.",
    )
    warehouse_dir: Path = Field(
        default=REPO_ROOT / "warehouse", description="DuckDB + Parquet warehouse root."
    )
    mlruns_dir: Path = Field(default=REPO_ROOT / "mlruns", description="MLflow tracking/registry root.")
    symbols: list[str] = Field(default_factory=lambda: list(DEFAULT_SYMBOLS))
    base_timeframe: str = Field(default="5m", description="Timeframe ingested; coarser ones are resampled.")
    timeframes: list[str] = Field(default_factory=lambda: ["15m", "1h", "4h", "1d"])
    # Day ranges include both ends everywhere (start/end, partitions_start/partitions_end, a partition range).
    start: str = Field(default="2024-01-01", description="First day (UTC) ingested by default.")
    end: str = Field(default="2024-09-06", description="Last day (UTC, inclusive) ingested by default.")
    partitions_start: str = Field(
        default="2024-01-01", description="First daily partition of the Dagster assets."
    )
    partitions_end: str | None = Field(
        default="2024-09-06",
        description="Last daily partition (inclusive, like `end`); empty for open-ended live data.",
    )
    max_gap_ratio: float = Field(
        default=0.02, description="Asset check: largest tolerated share of missing bars."
    )

    # --- sources --------------------------------------------------------------------------
    source: Literal["recorded", "alpaca"] = Field(
        default="recorded",
        description="'recorded' imports Parquet files; 'alpaca' uses alpaca-py's REST client.",
    )
    alpaca_data_url: str | None = Field(
        default=None, description="url_override for CryptoHistoricalDataClient (None: Alpaca's own host)."
    )
    alpaca_trading_url: str | None = Field(default=None, description="url_override for TradingClient.")
    alpaca_paper: bool = True
    live_trading_enabled: bool = Field(
        default=False,
        description="The one switch that lets the live loop trade real money (venue alpaca_live); off by default.",
    )

    # Secrets: read from the conventional Alpaca variable names as well as the prefixed ones.
    alpaca_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ALPACA_API_KEY", "CRYPTO_PIPELINE_ALPACA_API_KEY")
    )
    alpaca_secret_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ALPACA_SECRET_KEY", "CRYPTO_PIPELINE_ALPACA_SECRET_KEY")
    )

    # --- the live_paper job's bounds where its run config leaves them out ------------------------
    # (the design card's `dagster job execute -m definitions -j live_paper`, or a launched run, has none)
    live_max_runtime_s: float = Field(
        default=120.0, gt=0, description="live_paper: wall seconds of a session whose run config has none."
    )
    live_max_decisions: int | None = Field(
        default=None, ge=1, description="live_paper: decision times of a session whose run config has none."
    )

    # --- the local LLM ----------------------------------------------------------------------
    llm_dtype: LlmDtype = Field(
        default="auto",
        description="Number format of LocalLLM's weights wherever one is built (CLI, backtests, evaluation, "
        "live): 'auto' is bfloat16 where the hardware computes it natively (AVX512-BF16 or AMX on CPU, "
        "a bf16 GPU), else float32, said in the log; 'float32' or 'bfloat16' forces one (docs/llm.md).",
    )

    # --- local exchange -------------------------------------------------------------------
    exchange: ExchangeSettings = Field(default_factory=ExchangeSettings)

    # --- monitoring of the live loop --------------------------------------------------------
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    @property
    def duckdb_path(self) -> Path:
        return self.warehouse_dir / "warehouse.duckdb"

    @property
    def models_dir(self) -> Path:
        return self.warehouse_dir / "models"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlruns_dir / 'mlflow.db'}"


def with_llm_dtype(settings: Settings, dtype: str | None) -> Settings:
    """`settings` with `llm_dtype` set to `dtype` (a CLI `--dtype`, a run config's `dtype`); None or empty:
    `settings` unchanged. An unknown format is a ValueError naming the choices."""
    if not dtype:
        return settings
    if dtype not in LLM_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(LLM_DTYPES)}")
    return settings.model_copy(update={"llm_dtype": dtype})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own `Settings(...)` instead)."""
    return Settings()
