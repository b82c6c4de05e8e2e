"""SQL plumbing shared by the latency store, the trial store and the job service."""

from __future__ import annotations

from datetime import datetime, timezone


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
