"""A live session in a process of its own, for the SIGKILL tests: `python -m tests.live.session_process
BASE_URL SESSION_ID MAX_DECISIONS WAREHOUSE [always-buy|buy-once]`; keys from ALPACA_API_KEY /
ALPACA_SECRET_KEY, a fault point from CRYPTO_PIPELINE_FAULT_POINT (see `live.orders.fault_point`).
Prints the report as JSON when it ends by itself."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pydantic import SecretStr

from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.live.venue import Clients, Credentials, Endpoints
from crypto_pipeline.warehouse import Warehouse
from tests.live.conftest import AlwaysBuy, BuyOnce, live_config

PROVIDERS = {"always-buy": AlwaysBuy, "buy-once": BuyOnce}


def main() -> None:
    base_url, session_id, max_decisions, warehouse = sys.argv[1:5]
    provider = PROVIDERS[sys.argv[5] if len(sys.argv) > 5 else "always-buy"]()
    credentials = Credentials(
        SecretStr(os.environ["ALPACA_API_KEY"]), SecretStr(os.environ["ALPACA_SECRET_KEY"])
    )
    session = LiveSession(
        live_config(session_id=session_id, max_decisions=int(max_decisions)),
        Clients.connect(Endpoints.local(base_url), credentials),
        provider,
        Warehouse(Path(warehouse)),
    )
    report = session.run()
    print(json.dumps({k: v for k, v in vars(report).items() if k != "decision_to_order_ms"}))


if __name__ == "__main__":
    main()
