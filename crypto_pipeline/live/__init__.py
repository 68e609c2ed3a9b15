"""The live loop (issue 9): stream bars, quotes and order books from a venue through alpaca-py, build
the same `MarketState` as backtests, decide, gate every decision with the same `RiskEngine`, place
idempotent orders and journal everything. No Dagster here: `jobs/live.py` is the thin job around
`run_live`. See docs/live.md.

Modules: `config` (LiveConfig), `venue` (endpoints, clients, key check, real-money refusal), `bars` (the
rolling buffer), `book` (live quotes and L2 order books), `states` (buffer -> MarketState), `streams`
(websocket threads, the bar check), `orders` (idempotent submission, fills, reconciliation, flatten),
`journal`, `kill` (the kill flag), `providers` (rules, or champion with the challenger fallback),
`session` (the loop), `run` (one session with everything set up); monitoring: `metrics` (Prometheus),
`alerts` (log + webhook). What reads the journal back (performance, drift, summary, replay) is
`crypto_pipeline.journal`. See docs/monitoring.md.
"""

from crypto_pipeline.live.config import LiveConfig
from crypto_pipeline.live.run import EmbeddedExchange, run_live
from crypto_pipeline.live.session import LiveSession, SessionReport

__all__ = ["EmbeddedExchange", "LiveConfig", "LiveSession", "SessionReport", "run_live"]
