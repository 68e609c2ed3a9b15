"""Features of OHLCV bars: the indicator definitions (`compute`), their compiled recursive kernel
(`kernels`) and the warehouse builder (`build`). The data-quality check on features lives with the other
checks in `crypto_pipeline.quality`."""

from crypto_pipeline.features.build import FeaturesReport, build_features
from crypto_pipeline.features.compute import (
    ATR_PERIOD,
    BB_PERIOD,
    BB_STDDEVS,
    EMA_PERIODS,
    FEATURE_COLUMNS,
    MACD_FAST,
    MACD_SIGNAL,
    MACD_SLOW,
    RECURSIVE_COLUMNS,
    REQUIRED_COLUMNS,
    RSI_PERIODS,
    WARMUP_BARS,
    applicable_features,
    compute_features,
    infer_timeframe,
    join_higher_timeframes,
    warmup_bars,
)

__all__ = [
    "ATR_PERIOD",
    "BB_PERIOD",
    "BB_STDDEVS",
    "EMA_PERIODS",
    "FEATURE_COLUMNS",
    "MACD_FAST",
    "MACD_SIGNAL",
    "MACD_SLOW",
    "RECURSIVE_COLUMNS",
    "REQUIRED_COLUMNS",
    "RSI_PERIODS",
    "WARMUP_BARS",
    "FeaturesReport",
    "applicable_features",
    "build_features",
    "compute_features",
    "infer_timeframe",
    "join_higher_timeframes",
    "warmup_bars",
]
