"""Walk-forward backtests on vectorbt: folds, the execution engine, baselines, metrics, leakage audits.

Every policy is judged on the same ground: a decision on the close of bar t fills at the open of bar
t+1, with the local exchange's fees and slippage, through the same risk engine as live trading."""
