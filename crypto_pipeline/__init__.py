"""crypto_pipeline: the domain library behind the Dagster layer (it never imports Dagster)."""

__version__ = "0.1.0"
