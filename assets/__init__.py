"""The Dagster layer's assets: thin wrappers that call `crypto_pipeline` and report what they built."""
