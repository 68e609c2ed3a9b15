"""From a market state to an order, the same way in backtest, live and MCP: the decision step
(`step.DecisionStep`: state -> provider -> parse -> risk engine -> intent -> journal (write ahead) ->
venue) and the venues it sends to (`venue.Venue`: the simulated venue of backtests and shadow books in
`simulated.py`, the live order desk in `live/orders.py`). Backtest, live and MCP differ only in their
venue and clock."""

from crypto_pipeline.execution.simulated import SimulatedVenue
from crypto_pipeline.execution.step import DecisionStep, Gated, MarketView, data_age
from crypto_pipeline.execution.venue import Venue, client_order_id, intent_row

__all__ = [
    "DecisionStep",
    "Gated",
    "MarketView",
    "SimulatedVenue",
    "Venue",
    "client_order_id",
    "data_age",
    "intent_row",
]
