"""Alerts of the live loop: breaker trips, the kill switch, repeated invalid model outputs and stale
data. Each is always logged; when a webhook URL is set it is also POSTed there as Slack-style
(`{"text": ...}`) or Discord-style (`{"content": ...}`) JSON.

Posting happens on a background thread with a timeout, so a slow or dead webhook never holds up
the loop, and a failed post is logged, never raised. Messages are built from the session's own
figures only; the webhook URL (which embeds a token) is never logged.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import httpx

log = logging.getLogger(__name__)


class Alerter:
    """Logs every alert and posts it to `webhook_url` (if any) in `style`."""

    def __init__(
        self,
        session_id: str = "live",
        webhook_url: str | None = None,
        *,
        style: str = "slack",
        timeout_s: float = 5.0,
        invalid_streak: int = 3,
    ) -> None:
        if style not in ("slack", "discord"):
            raise ValueError(f"alert style must be slack or discord, not {style!r}")
        self.session_id = session_id
        self.style = style
        self.invalid_streak = invalid_streak
        self.sent: list[str] = []  # every alert raised, in order (the summary and tests read it)
        self.failed = 0
        self._url = webhook_url
        self._timeout = timeout_s
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._invalid_run = 0
        self._breaker = False
        self._killed = False

    @classmethod
    def from_settings(cls, session_id: str, settings: Any) -> Alerter:
        cfg = getattr(settings, "monitoring", None)
        if cfg is None:
            return cls(session_id)
        url = cfg.alert_webhook_url.get_secret_value() if cfg.alert_webhook_url is not None else None
        return cls(
            session_id,
            url or None,
            style=cfg.alert_style,
            timeout_s=cfg.alert_timeout_s,
            invalid_streak=cfg.invalid_streak,
        )

    # --- the alerts -------------------------------------------------------------------------------
    def alert(self, message: str) -> None:
        text = f"[crypto-pipeline {self.session_id}] {message}"
        self.sent.append(text)
        log.warning("ALERT %s", text)
        if self._url:
            self._ensure_worker()
            self._queue.put(text)

    def risk_state(self, daily_breaker: bool, killed: bool, kill_reason: str | None) -> None:
        """After each breaker update: alert when a breaker trips (not again while it stays tripped)."""
        if daily_breaker and not self._breaker:
            self.alert("daily loss circuit breaker tripped: no new positions until the next UTC day")
        if killed and not self._killed:
            self.alert(f"drawdown kill switch tripped ({kill_reason}): every position is being closed")
        self._breaker, self._killed = daily_breaker, killed

    def kill_switch(self, reason: str, closed: int, *, session: bool = True) -> None:
        stopped = ", session stopped" if session else ""
        self.alert(f"kill switch ({reason}): open orders canceled, {closed} position(s) closed{stopped}")

    def stale_data(self, idle_s: float) -> None:
        self.alert(f"stale data: no bar for {idle_s:.0f} s; no position is opened until bars arrive")

    def on_journal(self, table: str, row: dict[str, Any]) -> None:
        """Journal listener: counts invalid decisions in a row, alerting once per streak."""
        if table != "decisions":
            return
        if row.get("valid"):
            self._invalid_run = 0
            return
        self._invalid_run += 1
        if self._invalid_run == self.invalid_streak:
            reason = str(row.get("invalid_reason") or "")[:120]
            self.alert(
                f"{self._invalid_run} invalid model outputs in a row (last: {reason}); each became a HOLD"
            )

    # --- posting ----------------------------------------------------------------------------------
    def payload(self, text: str) -> dict[str, str]:
        return {"content": text} if self.style == "discord" else {"text": text}

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._post_all, name="live-alerts", daemon=True)
            self._worker.start()

    def _post_all(self) -> None:
        with httpx.Client(timeout=self._timeout) as client:
            while (text := self._queue.get()) is not None:
                try:
                    client.post(self._url or "", json=self.payload(text)).raise_for_status()
                except httpx.HTTPStatusError as exc:
                    self.failed += 1
                    log.warning(
                        "alert webhook answered HTTP %d; alert kept in the log", exc.response.status_code
                    )
                except httpx.HTTPError as exc:
                    # The exception's text may carry the URL (and so its token): name the kind only.
                    self.failed += 1
                    log.warning("alert webhook unreachable (%s); alert kept in the log", type(exc).__name__)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (within `timeout`) and stop the worker."""
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout=timeout)
        self._worker = None
