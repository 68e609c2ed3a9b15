"""The asset catalog: which pairs trade here, how a request may name them, and each pair's minimum order
size and increments (Alpaca's rules from `crypto_pipeline.trading.rules`)."""

from __future__ import annotations

import uuid

from crypto_pipeline.exchange.bars import BarStore
from crypto_pipeline.exchange.wire import not_found
from crypto_pipeline.trading.rules import QTY_INCREMENT, min_order_size, price_increment

# Asset ids are stable across restarts: a uuid5 of the symbol.
ASSET_NAMESPACE = uuid.UUID("5b0c7a3e-8f1d-4c39-9a57-2f1e6d0b9c11")


def asset_id(symbol: str) -> str:
    return str(uuid.uuid5(ASSET_NAMESPACE, symbol))


class AssetCatalog:
    """Every recorded pair is tradable; Alpaca names them `BTC/USD`, `BTCUSD` or by asset id."""

    def __init__(self, bars: BarStore) -> None:
        self._bars = bars
        self._symbols = bars.symbols()
        self._known = frozenset(self._symbols)
        self._by_compact = {s.replace("/", ""): s for s in self._symbols}
        self._by_id = {asset_id(s): s for s in self._symbols}
        self._min_sizes: dict[str, float] = {}

    def symbols(self) -> list[str]:
        return list(self._symbols)

    def resolve(self, raw: str) -> str:
        """The pair a request names (slashed, compact or asset id); 404 when none."""
        symbol = raw.strip().upper()
        if "/" not in symbol:
            symbol = self._by_compact.get(symbol, symbol)
        if symbol in self._known:
            return symbol
        by_id = self._by_id.get(raw.strip())
        if by_id is None:
            raise not_found(f"asset not found for {raw}")
        return by_id

    def min_order_size(self, symbol: str) -> float:
        """About a dollar's worth at the first recorded price (Alpaca lists one per asset)."""
        if symbol not in self._min_sizes:
            store = self._bars
            bars = next(
                (store.bars(tf, symbol) for tf in reversed(store.timeframes) if symbol in store.symbols(tf)),
                None,
            )
            price = float(bars.close[0]) if bars is not None and len(bars.close) else 1.0
            self._min_sizes[symbol] = min_order_size(price)
        return self._min_sizes[symbol]

    @staticmethod
    def min_trade_increment(symbol: str) -> float:
        return QTY_INCREMENT

    @staticmethod
    def price_increment(symbol: str) -> float:
        return price_increment(symbol)
