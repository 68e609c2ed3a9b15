"""The kill switch: a flag file that `crypto-pipeline kill` (or a person) sets and every live session
watches. A session that sees it cancels its open orders, closes every position and stops. The flag
stays until a person clears it, so a session started meanwhile stops at once too."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path


def kill_flag_path(warehouse_dir: Path) -> Path:
    return Path(warehouse_dir) / "live" / "KILL"


def request_kill(path: Path, reason: str = "requested by a person") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{datetime.now(UTC).isoformat()} {reason}\n", encoding="utf-8")


def kill_reason(path: Path) -> str | None:
    """The reason written in the flag, or None when the switch is off."""
    try:
        return path.read_text(encoding="utf-8").strip() or "kill switch"
    except FileNotFoundError:
        return None


def clear_kill(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
