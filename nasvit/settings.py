"""nasvit's settings: one object, read from ``NASVIT_*`` environment variables (pydantic-settings)
or built in code, and passed explicitly to the library, the server and the worker.

Nothing in nasvit writes the environment: a service given settings in code hands the same object
to everything it starts, and a worker process reads its own from its environment.

Example:
    >>> from nasvit.settings import Settings
    >>> settings = Settings(home="/tmp/nasvit-home")
    >>> settings.resolved_database_url
    'sqlite:////tmp/nasvit-home/nasvit.db'
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nasvit.errors import NasvitError


def _default_home() -> Path:
    return Path.home() / ".nasvit"


class Settings(BaseSettings):
    """Where nasvit keeps its state, and how the job service behaves.

    Attributes:
        home: ``NASVIT_HOME``; the SQLite database, default supernets and job artifacts live
            here unless set otherwise. Default ``~/.nasvit``.
        database_url: ``NASVIT_DATABASE_URL``; SQLite under ``home`` when unset. PostgreSQL
            (``postgresql+psycopg2://...``) is needed for workers on several machines.
        artifact_root: where each service job writes its outputs (``<root>/<job id>/``);
            default ``<home>/jobs``.
        ray_address: ``NASVIT_RAY_ADDRESS``; a running Ray cluster for evaluations: its head's
            GCS address ``HOST:PORT``.
        auto_workers: ``NASVIT_AUTO_WORKERS``; how many evaluation actors ``workers=auto``
            starts on this machine (default: one per available core; 1 evaluates in-process).
        read_access: ``public`` (the service's GET endpoints need no token) or ``token``.
        cors_origins: origins allowed to call the API from a browser; none by default.
        max_body_bytes: larger request bodies are refused with 413.
        lease_seconds: a running job whose lease is older than this is taken over.
        heartbeat_seconds: how often a worker renews its lease and checks for cancellation.
        checkpoints: supernet checkpoint per space (JSON in ``NASVIT_CHECKPOINTS``); a space
            without one uses its default supernet, trained once under ``home``.
        max_evaluations: the most candidates one service search may ask for.
        device_timeout_seconds: a search (or ``nasvit profile``) waiting on a device's agent
            fails once no agent of that device has been seen for this long.
        device_lease_seconds: how long an agent holds the work items it claimed; an agent
            killed mid-batch leaves them to the next claim after this.
        agent_poll_seconds: how often an idle agent asks for work (the server tells agents).
        agent_protocol: ``standard`` (agents time as ``nasvit profile`` does) or ``quick``
            (fewer sessions and runs: noisier tables, for smoke tests).
    """

    model_config = SettingsConfigDict(env_prefix="NASVIT_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    database_url: str | None = None
    artifact_root: Path | None = None
    ray_address: str | None = None
    auto_workers: int | None = Field(None, ge=1, le=256)
    read_access: Literal["public", "token"] = "public"
    cors_origins: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)
    checkpoints: dict[str, Path] = Field(default_factory=dict)
    max_evaluations: int = Field(100_000, ge=1)
    device_timeout_seconds: float = Field(600.0, gt=0)
    device_lease_seconds: float = Field(120.0, gt=0)
    agent_poll_seconds: float = Field(1.0, gt=0)
    agent_protocol: Literal["standard", "quick"] = "standard"

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
        """``database_url``, else SQLite at ``<home>/nasvit.db`` (the folder is created)."""
        if self.database_url:
            return self.database_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.home / 'nasvit.db'}"

    @property
    def resolved_artifact_root(self) -> Path:
        return self.artifact_root or self.home / "jobs"


def load_settings(settings: Settings | None = None) -> Settings:
    """``settings`` if given, else a fresh read of the ``NASVIT_*`` environment.

    Raises:
        NasvitError: an unusable environment value, named (``NASVIT_READ_ACCESS: ...``).
    """
    if settings is not None:
        return settings
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"NASVIT_{'_'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
            for e in exc.errors()
        )
        raise NasvitError(f"bad settings: {problems}") from None
