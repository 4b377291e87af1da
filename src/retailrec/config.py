"""One settings object for the whole product.

Values come from the environment (prefix ``RETAILREC_``) or a ``.env`` file. Nothing here creates
folders or connects to anything: callers ask for paths and create them when they write.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from retailrec.events import DEFAULT_EVENT_WEIGHTS, DEFAULT_HALF_LIFE_DAYS


class Settings(BaseSettings):
    """Settings read from ``RETAILREC_*`` environment variables.

    Every path under the data directory is derived from ``data_dir`` so that one variable moves
    the whole installation.
    """

    model_config = SettingsConfigDict(env_prefix="RETAILREC_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("data"), description="Root of all data, models and reports."
    )
    api_key: str | None = Field(default=None, description="Key for the admin endpoints.")
    api_url: str | None = Field(
        default=None,
        description="A running API that `retailrec monitor --retrain` asks to reload the champion.",
    )
    model_name: str = Field(default="retailrec", description="Registered model name in MLflow.")
    registry_key: str | None = Field(
        default=None,
        description="Signs the gate's approvals in the registry (default: a key made once in"
        " <data_dir>/registry.key); set the same value wherever one registry is shared.",
    )
    store_url: str | None = Field(
        default=None,
        description="The feature store: sqlite:///<path> (default"
        " sqlite:///<data_dir>/feature_store.sqlite) or postgresql://user:pass@host/db, which"
        " API replicas on several machines share.",
    )
    reload_poll_s: float = Field(
        default=2.0,
        gt=0,
        description="How often each API process checks the feature store for a reload announced"
        " by another (a worker of `serve --workers`, or a replica), and follows it.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "RETAILREC_MLFLOW_TRACKING_URI"),
        description="Overrides the default sqlite:///<data_dir>/mlflow.db.",
    )

    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Implicit-feedback confidence per event type (JSON in the environment).",
    )
    recency_half_life_days: float = Field(
        default=DEFAULT_HALF_LIFE_DAYS,
        gt=0,
        description="An interaction this old counts half as much.",
    )
    spark_master: str = Field(
        default="local[2]",
        description="Where `--engine spark` runs: local[N], spark://host:7077, yarn, k8s://…"
        " (spark-submit's own --master wins when the command runs under it).",
    )
    events_key: str | None = Field(
        default=None,
        description="When set, POST /v1/events needs it in X-Events-Key (or the API key): the"
        " shop's own servers send events, nobody else.",
    )
    events_rate_per_s: float = Field(
        default=1000.0,
        gt=0,
        description="Events a second that one client (its address) may post to /v1/events.",
    )
    events_burst: int = Field(
        default=5000,
        ge=1000,
        description="Events one client may post at once before the rate applies (at least one"
        " full batch of 1,000).",
    )
    event_past_margin_days: float = Field(
        default=30.0,
        ge=0,
        description="POST /v1/events rejects events dated more than this before the log's first"
        " event (a backfill belongs in `retailrec etl`).",
    )

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def processed_dir(self) -> Path:
        return self.data_dir / "processed"

    @property
    def rejected_dir(self) -> Path:
        return self.data_dir / "rejected"

    @property
    def feature_store_path(self) -> Path:
        return self.data_dir / "feature_store.sqlite"

    @property
    def feature_store(self) -> str:
        """Where the feature store is: ``RETAILREC_STORE_URL``, else the SQLite file in
        data_dir (as ``sqlite:///<absolute path>``)."""
        if self.store_url:
            return self.store_url
        return f"sqlite:///{self.feature_store_path.resolve()}"

    @property
    def mlartifacts_dir(self) -> Path:
        return self.data_dir / "mlartifacts"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking and registry URI: the override, else a SQLite file in data_dir."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()``."""
    return Settings()
