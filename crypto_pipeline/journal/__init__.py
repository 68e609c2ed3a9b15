"""What reads the journal back: `performance` (a run's equity against buy-and-hold, slippage against the
backtest's assumptions), `drift` (live decisions against the backtest's, by PSI), `summary` (a session in
a few lines) and `replay` (re-making journaled decisions with another model).

The journal itself (the `decisions`, `risk_verdicts`, `orders`, `fills` and `equity` tables) is written by
`crypto_pipeline.journal.writer.Journal`, the same writer in the live loop and in a journaled backtest
(`backtest.journaling`). Nothing here trades or talks to a venue: these modules read the warehouse.
"""
