"""Feature charts are real PNGs drawn from the features, with a clear error when there is nothing to draw."""

from __future__ import annotations

import polars as pl
import pytest

from crypto_pipeline.features import compute_features
from crypto_pipeline.plots import plot_features


@pytest.fixture(scope="module")
def features(recorded) -> pl.DataFrame:
    bars = pl.read_parquet(recorded("binance-spot-2024", "bars_1h.parquet")).filter(
        pl.col("symbol") == "ETH/USDT"
    )
    return compute_features(bars, "1h").with_columns(pl.lit("1h").alias("timeframe"))


def test_plot_features_writes_a_png(features, tmp_path):
    out = plot_features(features, "ETH/USDT", "1h", tmp_path / "charts" / "eth.png", days=10)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # three panels of real lines, not an empty canvas


def test_plot_features_without_rows_is_a_clear_error(features, tmp_path):
    with pytest.raises(ValueError, match="no 4h features for ETH/USDT"):
        plot_features(features, "ETH/USDT", "4h", tmp_path / "x.png")
