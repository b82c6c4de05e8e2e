"""Service settings, read from ``NASVIT_*`` environment variables (pydantic-settings).

The server and every worker must see the same database and artifact root: the server reads the
trials a worker appends under ``<artifact_root>/<job id>/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".nasvit"


class Settings(BaseSettings):
    """Configuration of ``nasvit serve`` and ``nasvit worker``.

    Attributes:
        home: ``NASVIT_HOME``; the SQLite database and default artifact root live here.
        database_url: ``NASVIT_DATABASE_URL``; SQLite under ``home`` when unset. PostgreSQL
            (``postgresql+psycopg2://...``) is needed for workers on several machines.
        artifact_root: where each job writes its outputs (``<root>/<job id>/``).
        read_access: ``public`` (GET endpoints need no token) or ``token``.
        cors_origins: origins allowed to call the API from a browser; none by default.
        max_body_bytes: larger request bodies are refused with 413.
        lease_seconds: a running job whose lease is older than this is taken over.
        heartbeat_seconds: how often a worker renews its lease and checks for cancellation.
        checkpoints: supernet checkpoint per space (JSON in ``NASVIT_CHECKPOINTS``); a space
            without one uses its default supernet, trained once under ``home``.
        max_evaluations: the most candidates one search may ask for.
    """

    model_config = SettingsConfigDict(env_prefix="NASVIT_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    database_url: str | None = None
    artifact_root: Path | None = None
    read_access: Literal["public", "token"] = "public"
    cors_origins: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)
    checkpoints: dict[str, Path] = Field(default_factory=dict)
    max_evaluations: int = Field(100_000, ge=1)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        # A worker must renew its lease well before it runs out, or a live job is taken over.
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be at most half of "
                f"lease_seconds ({self.lease_seconds})"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.home / 'nasvit.db'}"

    @property
    def resolved_artifact_root(self) -> Path:
        return self.artifact_root or self.home / "jobs"

    def export_to_environment(self) -> None:
        """Point the pipeline's own lookups (latency store, default supernets) at this
        service's database and home, which may have been given programmatically."""
        os.environ["NASVIT_HOME"] = str(self.home)
        os.environ["NASVIT_DATABASE_URL"] = self.resolved_database_url
