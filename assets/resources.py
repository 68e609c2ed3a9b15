"""Dagster resources: the warehouse and the market-data source, configured from `Settings`."""

import dagster as dg
from pydantic import Field

from crypto_pipeline.config import get_settings
from crypto_pipeline.market.sources import AlpacaSource, BarSource, RecordedSource
from crypto_pipeline.warehouse import Warehouse

_SETTINGS = get_settings()  # defaults shown in the launchpad; override per run


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB + hive-partitioned Parquet warehouse."""

    root: str = Field(default=str(_SETTINGS.warehouse_dir))

    def get(self) -> Warehouse:
        return Warehouse(self.root)


class MarketDataSourceResource(dg.ConfigurableResource):
    """Where raw bars come from: recorded Parquet files, or Alpaca (or the local exchange) via alpaca-py."""

    kind: str = Field(default=_SETTINGS.source, description="'recorded' or 'alpaca'.")
    data_dir: str = Field(default=str(_SETTINGS.market_data_dir))
    url_override: str | None = Field(default=_SETTINGS.alpaca_data_url)
    api_key: str | None = None
    secret_key: str | None = None

    def get(self) -> BarSource:
        if self.kind == "recorded":
            return RecordedSource(self.data_dir)
        if self.kind == "alpaca":
            return AlpacaSource(
                api_key=self.api_key, secret_key=self.secret_key, url_override=self.url_override
            )
        raise ValueError(f"unknown source kind {self.kind!r}; expected 'recorded' or 'alpaca'")
