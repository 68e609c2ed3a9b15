"""The local Alpaca-compatible paper exchange: REST + websockets + matching over replayed market data.

The unmodified alpaca-py clients talk to it through `url_override`; see docs/exchange.md.
"""

from crypto_pipeline.exchange.config import ExchangeConfig, FaultConfig
from crypto_pipeline.exchange.server import ExchangeServer, run_exchange

__all__ = ["ExchangeConfig", "ExchangeServer", "FaultConfig", "run_exchange"]
