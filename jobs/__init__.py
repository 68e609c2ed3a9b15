"""Jobs and their schedules: what runs together, and when (`market_data`, `training`, `live`), and
`run_offline` (`crypto-pipeline run`). The one `dg.Definitions` is built in `definitions.py`; nothing here
imports it, so a sensor can import the job it starts."""
