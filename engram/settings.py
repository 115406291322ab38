"""engram's configuration: one place, read from ``ENGRAM_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from platformdirs import user_data_dir
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(user_data_dir("engram", appauthor=False))


class Settings(BaseSettings):
    """Settings for one engram installation.

    Every field can be set with an ``ENGRAM_`` environment variable, e.g. ``ENGRAM_STORE_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="ENGRAM_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir, description="Folder for the embedded defaults.")
    store_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the hot store; defaults to SQLite in data_dir."
    )
    archive_url: str | None = Field(
        default=None,
        description="file:// or s3://bucket/prefix URL of the archive; defaults to data_dir/archive.",
    )
    archive_endpoint: str | None = Field(
        default=None, description="S3 endpoint of MinIO or another S3-compatible server, for an s3:// archive."
    )
    archive_region: str | None = Field(
        default=None, description="The archive bucket's region, if the server needs one."
    )
    archive_access_key: SecretStr | None = Field(default=None, description="S3 access key id of the archive.")
    archive_secret_key: SecretStr | None = Field(default=None, description="S3 secret access key of the archive.")
    max_text_bytes: int = Field(default=65_536, gt=0, description="Largest accepted event text, in UTF-8 bytes.")
    max_metadata_bytes: int = Field(default=16_384, gt=0, description="Largest accepted metadata, as JSON bytes.")
    write_batch_size: int = Field(default=5_000, gt=0, description="Rows per INSERT batch in bulk writes.")
    pause_collector: bool = Field(
        default=True,
        description="Pause Python's cycle collector while observe_many writes a batch, and resume it after (about a"
        " fifth off its time); false leaves the host process's collector alone.",
    )
    # Upper bounds keep every time these make (now plus one of them) inside the calendar: a ten-year lifetime,
    # idle time or lease is already far past any use.
    working_ttl_hours: float = Field(
        default=24.0, gt=0, le=87_600, allow_inf_nan=False, description="Lifetime of task-scoped working memory."
    )
    session_idle_minutes: float = Field(
        default=30.0, gt=0, le=5_256_000, allow_inf_nan=False, description="Idle time after which a session closes."
    )
    embeddings: bool = Field(
        default=True, description="Use dense embeddings when the embeddings extra is installed (fused with BM25)."
    )
    lease_seconds: float = Field(
        default=300.0, gt=0, le=315_360_000, allow_inf_nan=False, description="How long a claimed batch stays reserved."
    )
    consolidate_attempts: int = Field(
        default=5,
        gt=0,
        description="Consolidation runs that may fail on one episode before it is set aside, to be retried by hand.",
    )
    metrics_retention_days: float = Field(
        default=30.0,
        gt=0,
        le=36_500,
        allow_inf_nan=False,
        description="Days the monitor's measurements are kept in the metrics table; each run deletes older ones.",
    )
    search_max_tenants: int = Field(
        default=64,
        gt=0,
        description="Tenants whose search index a process keeps in memory; the least recently searched goes first.",
    )

    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{self.data_dir / 'engram.db'}"

    def resolved_archive_url(self) -> str:
        if self.archive_url:
            return self.archive_url
        return (self.data_dir / "archive").resolve().as_uri()


def url_parameter(url: str) -> str | SecretStr:
    """A store URL as a flow parameter: a ``SecretStr`` when it holds a password, so that Prefect records and shows
    ``**********`` in its place; as it is otherwise, so that a run shows which store it used. The flows take either
    and ``reveal`` it for their tasks."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except ArgumentError:
        return SecretStr(url)  # not a form we can read: hide it whole
    return url if password is None else SecretStr(url)


def reveal(url: str | SecretStr | None) -> str | None:
    """The URL inside a ``SecretStr`` flow parameter, or the parameter as it is."""
    return url.get_secret_value() if isinstance(url, SecretStr) else url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
