"""The local Alpaca-compatible paper exchange: REST + websockets + matching over replayed market data.

The unmodified alpaca-py clients talk to it through `url_override`; see docs/exchange.md.
"""

from crypto_pipeline.exchange.config import ExchangeConfig, FaultConfig
from crypto_pipeline.exchange.server import ExchangeServer, local_exchange, run_exchange, throwaway_keys

__all__ = [
    "ExchangeConfig",
    "ExchangeServer",
    "FaultConfig",
    "local_exchange",
    "run_exchange",
    "throwaway_keys",
]
