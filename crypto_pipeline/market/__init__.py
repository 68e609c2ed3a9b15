"""Market data: timeframes, bar schemas, cleaning, resampling and data sources."""
