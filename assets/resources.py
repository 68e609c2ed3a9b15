"""Dagster resources: the warehouse and the market-data source. A field left empty takes its value from
`Settings` when the run starts (not when the code is imported), so environment changes between runs count."""

from pathlib import Path

import dagster as dg
from pydantic import Field, SecretStr

from crypto_pipeline.config import get_settings
from crypto_pipeline.market.sources import BarSource, make_source
from crypto_pipeline.warehouse import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB + hive-partitioned Parquet warehouse."""

    root: str | None = Field(default=None, description="Warehouse root (default: Settings.warehouse_dir).")

    def get(self) -> Warehouse:
        return Warehouse(self.root or get_settings().warehouse_dir)


class MarketDataSourceResource(dg.ConfigurableResource):
    """Where raw bars come from: recorded Parquet files, or Alpaca (or the local exchange) via alpaca-py."""

    kind: str | None = Field(default=None, description="'recorded' or 'alpaca' (default: Settings.source).")
    data_dir: str | None = Field(
        default=None, description="recorded: folder (default: Settings.market_data_dir)."
    )
    url_override: str | None = Field(
        default=None, description="alpaca: data URL (default: Settings.alpaca_data_url)."
    )
    api_key: str | None = None
    secret_key: str | None = None

    def get(self) -> BarSource:
        settings = get_settings()
        keys = {
            name: SecretStr(value)
            for name, value in (("alpaca_api_key", self.api_key), ("alpaca_secret_key", self.secret_key))
            if value
        }
        return make_source(
            settings.model_copy(update=keys) if keys else settings,
            kind=self.kind,
            data_dir=Path(self.data_dir) if self.data_dir else None,
            url=self.url_override,
        )

    @property
    def source_kind(self) -> str:
        return self.kind or get_settings().source
