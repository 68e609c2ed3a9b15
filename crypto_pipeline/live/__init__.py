"""The live loop: stream bars, quotes and order books from a venue through alpaca-py, build the same
`MarketState` as backtests, and run the backtest's decision step (`crypto_pipeline.execution`) with the
live order desk as its venue: the same `RiskEngine`, idempotent orders, everything journaled. No Dagster here: `jobs/live.py` is the thin job around
`run_live`. See docs/live.md.

Modules: `config` (LiveConfig), `venue` (endpoints, clients, key check, real-money refusal), `bars` (the
rolling buffer), `book` (live quotes and L2 order books), `states` (buffer -> MarketState), `streams`
(websocket threads, the bar check), `orders` (the live venue: idempotent submission written ahead,
fills, reconciliation, flatten), `marks` (the marks and returns the risk engine reads), `kill` (the kill
flag), `shadow` (other versions deciding on shadow books), `session` (the loop), `run` (one session with
everything set up: provider `auto`, the shadows); monitoring: `metrics` (Prometheus), `alerts` (log +
webhook). The journal writer is `crypto_pipeline.journal.writer`. What reads the journal back (performance, drift, summary, replay) is
`crypto_pipeline.journal`. See docs/monitoring.md.
"""

from crypto_pipeline.live.config import LiveConfig
from crypto_pipeline.live.run import EmbeddedExchange, run_live
from crypto_pipeline.live.session import LiveSession, SessionReport

__all__ = ["EmbeddedExchange", "LiveConfig", "LiveSession", "SessionReport", "run_live"]
