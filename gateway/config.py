"""Settings: one pydantic-settings class, read from ``IMAGEGATE_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "change-me-in-production"  # noqa: S105 - a marker that is refused outside development


class Settings(BaseSettings):
    """Every knob of the gateway. Unset values fall back to the embedded default (SQLite, embedded queue)."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_", env_file=".env", extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    var_dir: Path = Field(default=Path("./var"), description="Folder of the embedded database and demo keys.")
    database_url: str = Field(default="", description="Default: sqlite+aiosqlite:///<var_dir>/imagegate.db")
    redis_url: str | None = None
    asset_dir: Path = Field(default=Path(""), description="Default: <var_dir>/assets")
    public_url: str | None = Field(
        default=None,
        description="Base URL used in links to assets; defaults to the URL the request came in on.",
    )
    secret_key: str = PLACEHOLDER_SECRET
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Proxies whose X-Forwarded-* headers are trusted (comma-separated IPs/CIDRs, or *).",
    )

    queue_name: str = "imagegate:queue"
    embedded_concurrency: int = Field(
        default=8, ge=1, le=256, description="Jobs the embedded runner takes at once (they wait for backend slots)."
    )
    worker_concurrency: int = Field(
        default=16, ge=1, le=256, description="Jobs one arq worker takes at once (they wait for backend slots)."
    )
    job_lease_seconds: float = Field(default=30.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    job_timeout_seconds: int = Field(default=3600, ge=1)
    reconcile_seconds: float = Field(default=15.0, gt=0)
    reconcile_grace_seconds: float = Field(default=10.0, ge=0)
    poll_seconds: float = Field(default=0.5, gt=0, description="How often idle runners look for work.")

    preview_backend: bool = Field(default=True, description="Offer the built-in preview renderer as a backend.")
    preview_step_ms: float = Field(default=0.0, ge=0, description="Simulated GPU time per step of the preview backend.")
    preview_models: str = "*"
    preview_slots: int = Field(default=2, ge=1, le=64)

    scheduler: Literal["eft", "round_robin"] = Field(
        default="eft", description="eft: earliest expected finish time; round_robin: a baseline for benchmarks."
    )
    backend_refresh_seconds: float = Field(default=5.0, gt=0, description="How often the backends table is re-read.")
    backend_probe_seconds: float = Field(default=10.0, gt=0, description="How often each backend is probed.")
    backend_failure_threshold: int = Field(default=3, ge=1, description="Consecutive failures that open a circuit.")
    backend_cooldown_seconds: float = Field(default=30.0, gt=0, description="How long an open circuit stays open.")
    backend_max_tries: int = Field(default=3, ge=1, description="Backends one run of a job may try.")
    backend_wait_seconds: float = Field(default=300.0, gt=0, description="Longest wait for a healthy backend.")
    backend_switch_seconds: float = Field(default=10.0, ge=0, description="Expected cost of a checkpoint switch.")
    scheduler_poll_seconds: float = Field(default=0.1, gt=0, description="How often a waiting job re-checks slots.")

    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    cors_origins: str = Field(default="", description="Origins allowed by CORS (comma-separated); empty: CORS off.")

    outbound_allowlist: str = Field(
        default="",
        description="Internal hosts caller-given URLs may reach anyway (comma-separated host names and CIDRs).",
    )
    outbound_timeout_seconds: float = Field(default=10.0, gt=0, description="Connect/read timeout of outbound calls.")
    outbound_max_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest response body read from a caller-given URL."
    )

    oauth_issuer: str = Field(default="imagegate", description="The `iss` of issued access tokens.")
    oauth_audience: str = Field(default="imagegate-api", description="The `aud` of issued access tokens.")
    oauth_token_ttl_seconds: int = Field(default=600, ge=60, le=3600, description="Lifetime of an access token.")

    quota_seconds_per_megapixel_step: float = Field(
        default=0.05,
        gt=0,
        description="GPU-seconds per megapixel per step, for the estimate a job reserves against its quota.",
    )
    content_semantic: bool = Field(
        default=False, description="Second content-filter stage: a sentence-embedding check for paraphrases."
    )
    content_semantic_threshold: float = Field(default=0.6, gt=0, le=1)

    delivery_relay: bool = Field(default=True, description="Run a delivery relay in this process (API and worker).")
    delivery_retry_schedule: str = Field(
        default="5,300,1800,7200,18000,36000,50400,72000,86400",
        description=(
            "Seconds to wait before each retry of a delivery (comma-separated; jittered, and never sooner than a"
            " receiver's Retry-After): one attempt more than its length, then the delivery is dead."
        ),
    )
    delivery_lease_seconds: float = Field(
        default=300, gt=0, description="How long a relay holds a delivery (renewed while an attempt runs)."
    )
    delivery_attempt_timeout_seconds: float = Field(default=120, gt=0, description="Longest single attempt.")
    delivery_poll_seconds: float = Field(default=1.0, gt=0, description="How often an idle relay looks for work.")
    delivery_concurrency: int = Field(default=8, ge=1, le=256, description="Deliveries one relay runs at once.")
    delivery_circuit_failures: int = Field(
        default=5, ge=1, description="Failures in a row that open a connector's circuit (no attempts meanwhile)."
    )
    delivery_circuit_seconds: float = Field(default=60, gt=0, description="How long an open circuit stays open.")
    delivery_link_ttl_seconds: int = Field(
        default=7 * 24 * 3600, ge=60, description="Lifetime of the signed download links sent to link-taking targets."
    )

    @property
    def retry_schedule(self) -> list[float]:
        return [float(part) for part in self.delivery_retry_schedule.split(",") if part.strip()]

    @field_validator("delivery_retry_schedule")
    @classmethod
    def _schedule_parses(cls, value: str) -> str:
        try:
            parts = [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError("a comma-separated list of seconds, e.g. 5,300,1800") from None
        if any(not (0 <= part <= 30 * 86400) for part in parts):  # also refuses nan and inf
            raise ValueError("each wait is 0 to 2592000 seconds (30 days)")
        return value

    @field_validator("redis_url", "public_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("outbound_allowlist")
    @classmethod
    def _allowlist_parses(cls, value: str) -> str:
        from policies.ssrf import OutboundPolicy

        OutboundPolicy.from_setting(value)  # a typo in a host or CIDR stops the start, with the entry named
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        """Accept the plain URLs operators write and pick the async driver the gateway needs."""
        for plain, driver in (
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if value.startswith(plain):
                return driver + value[len(plain) :]
        return value

    @model_validator(mode="after")
    def _defaults_under_var_dir(self) -> Settings:
        if not self.database_url:
            folder = self.var_dir.as_posix() if self.var_dir.is_absolute() else f"./{self.var_dir.as_posix()}"
            self.database_url = f"sqlite+aiosqlite:///{folder}/imagegate.db"
        if self.asset_dir == Path(""):
            self.asset_dir = self.var_dir / "assets"
        return self

    @model_validator(mode="after")
    def _no_placeholder_secret_in_production(self) -> Settings:
        if self.env == "production" and self.secret_key == PLACEHOLDER_SECRET:
            raise ValueError("IMAGEGATE_SECRET_KEY must be set to a real secret when IMAGEGATE_ENV=production")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a SQLite URL (None for PostgreSQL or an in-memory database)."""
        if not self.is_sqlite:
            return None
        path = self.database_url.split(":///", 1)[1].split("?", 1)[0] if ":///" in self.database_url else ""
        return Path(path) if path and path != ":memory:" else None

    @property
    def distributed(self) -> bool:
        """True when jobs travel through arq on Redis instead of the embedded runner."""
        return self.redis_url is not None


@lru_cache
def get_settings() -> Settings:
    return Settings()
