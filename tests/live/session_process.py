"""A live session in a process of its own, for the SIGKILL test: `python -m tests.live.session_process
BASE_URL SESSION_ID MAX_DECISIONS WAREHOUSE`; keys from ALPACA_API_KEY / ALPACA_SECRET_KEY. Prints the
report as JSON when it ends by itself."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pydantic import SecretStr

from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.live.venue import Clients, Credentials, Endpoints
from crypto_pipeline.warehouse import Warehouse
from tests.live.conftest import AlwaysBuy, live_config


def main() -> None:
    base_url, session_id, max_decisions, warehouse = sys.argv[1:5]
    credentials = Credentials(
        SecretStr(os.environ["ALPACA_API_KEY"]), SecretStr(os.environ["ALPACA_SECRET_KEY"])
    )
    session = LiveSession(
        live_config(session_id=session_id, max_decisions=int(max_decisions)),
        Clients.connect(Endpoints.local(base_url), credentials),
        AlwaysBuy(),
        Warehouse(Path(warehouse)),
    )
    report = session.run()
    print(json.dumps({k: v for k, v in vars(report).items() if k != "decision_to_order_ms"}))


if __name__ == "__main__":
    main()
