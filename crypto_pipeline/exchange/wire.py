"""Alpaca's wire conventions: timestamps, decimal strings and the `{"code", "message"}` error body."""

from __future__ import annotations

from datetime import UTC, datetime

from crypto_pipeline.exchange.clock import NS_PER_S, from_ns


class AlpacaError(Exception):
    """An error answered the way Alpaca answers it: an HTTP status and a JSON `{"code", "message"}`."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


def unprocessable(message: str) -> AlpacaError:
    return AlpacaError(422, 40010001, message)


def forbidden(message: str) -> AlpacaError:
    return AlpacaError(403, 40310000, message)


def not_found(message: str) -> AlpacaError:
    return AlpacaError(404, 40410000, message)


def rfc3339(ns: int) -> str:
    """`2024-06-01T00:00:00Z`, with up to nanoseconds when the instant has them."""
    seconds, fraction = divmod(ns, NS_PER_S)
    text = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += f".{fraction:09d}".rstrip("0")
    return text + "Z"


def rfc3339_dt(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def decimal_str(value: float | None, places: int = 9) -> str | None:
    """Alpaca sends numbers as strings; trailing zeros trimmed, at most `places` decimals."""
    if value is None:
        return None
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


__all__ = [
    "AlpacaError",
    "decimal_str",
    "forbidden",
    "from_ns",
    "not_found",
    "rfc3339",
    "unprocessable",
]
