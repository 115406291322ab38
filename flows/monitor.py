"""``monitor``: health checks, metrics into the ``metrics`` table and artifacts, alerts as Prefect events."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import flow
from pydantic import SecretStr

from engram.service import MonitorThresholds, decide_signals
from engram.settings import reveal
from flows.registry import FLOWS
from tasks.common import Stopwatch, resolve_as_of
from tasks.reporting import publish_run_summary
from tasks.service import (
    check_health,
    emit_signals,
    measure_layers,
    measure_run_durations,
    publish_metrics,
    record_measurements,
)


@flow(name="monitor")
def monitor(
    store_url: str | SecretStr | None = None,
    archive_url: str | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    backlog_high: int = 500,
    max_lag_hours: float = 24.0,
    max_quarantine_growth: int = 100,
    max_forget_age_hours: float = 1.0,
    runs_since_hours: float = 24.0,
) -> dict:
    """Check the database, object storage and Prefect API; measure layer sizes per tenant, the consolidation backlog
    and lag, unfinished forgets, quarantine growth and flow-run durations; keep them in the ``metrics`` table,
    publish them as a table and a chart of layer sizes over time; emit ``engram.alert.*`` and ``engram.backlog.high``
    events.
    """
    store_url = reveal(store_url)
    clock, as_of = Stopwatch(), resolve_as_of(as_of)
    thresholds = MonitorThresholds(backlog_high, max_lag_hours, max_quarantine_growth, max_forget_age_hours)
    checks = check_health(store_url, archive_url)
    store_ok = checks[0].ok  # without the database, report health and run durations only
    measurements = measure_layers(store_url, as_of, tenant) if store_ok else []
    measurements += measure_run_durations(as_of - timedelta(hours=runs_since_hours), [s.name for s in FLOWS])
    recorded = record_measurements(store_url, measurements, checks, as_of) if store_ok else 0
    publish_metrics(store_url, measurements, checks, tenant, with_history=store_ok)
    emitted = emit_signals(decide_signals(checks, measurements, thresholds))
    counts = {
        "healthy": all(c.ok for c in checks),
        **{f"health.{c.name}": "ok" if c.ok else c.detail for c in checks},
        "measurements": len(measurements),
        "recorded": recorded,
        "events": emitted,
    }
    return publish_run_summary("monitor", counts, clock.seconds)
