"""Running engram as a service: health checks, metrics, alerts, shards and scaling decisions.

Plain Python over the ``Store`` and fsspec; the ``provision``, ``monitor``, ``scale`` and ``decommission`` flows call
it through thin tasks. Every rule that decides something (when to alert, how many workers, which shard a tenant is
in, what a summary says) is here, where it is tested without Prefect.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from engram.errors import InvalidInput
from engram.store import Store

SERVICE_WIDE = "*"  # the tenant of a measurement that covers every tenant

# Layers charted over time, and the layers the monitor counts (beside the whole quarantine, service-wide): the store's
# other counts (the hot versions, the hot turns, every event received) are for `stats`; the last grows with the store's
# whole history.
CHARTED_LAYERS = ("sensory", "working", "episodic", "semantic", "archival", "quarantine")


# -- provisioning ---------------------------------------------------------------------------------------------

Status = Literal["created", "updated", "unchanged", "pending", "unavailable", "failed", "skipped"]


def changed(summary: Mapping[str, str]) -> list[str]:
    """The resources a provisioning summary reports as created or updated (empty: the run changed nothing)."""
    return sorted(name for name, status in summary.items() if status.split(":", 1)[0] in ("created", "updated"))


def fingerprint(declaration: Any) -> str:
    """A short, stable hash of a JSON-able declaration, to tell whether what is applied is what is declared."""
    import json

    return hashlib.sha256(json.dumps(declaration, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- health ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthCheck:
    """The outcome of one check: what was checked, whether it answered, how long it took, and why not."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""


def timed_check(name: str, probe: Any) -> HealthCheck:
    """Run ``probe()``; a check passes when it returns without raising. The error's class and message (never a
    URL with credentials: probes raise engram's own errors, which mask them) become the detail."""
    started = time.perf_counter()
    try:
        detail = probe() or ""
        return HealthCheck(name, True, time.perf_counter() - started, str(detail))
    except Exception as exc:  # a health check reports any failure instead of raising it
        return HealthCheck(name, False, time.perf_counter() - started, f"{exc.__class__.__name__}: {exc}"[:500])


def check_database(store: Store) -> HealthCheck:
    """The store answers a query: it reads the schema's revision, one row of one table, so it takes the same time
    whatever the store holds. (The monitor opens the store first, which migrates it: a store this code cannot
    migrate, one a newer engram migrated say, fails there, with the reason.)"""
    return timed_check("database", lambda: f"{store.dialect}: schema at revision {store.schema_revision() or 'none'}")


def check_object_storage(archive_url: str, storage_options: Mapping[str, Any] | None = None) -> HealthCheck:
    """The archive's folder or bucket can be listed."""

    def probe() -> str:
        import fsspec

        is_s3 = archive_url.startswith("s3://")
        fs = fsspec.filesystem("s3" if is_s3 else "file", **dict(storage_options or {}))
        root = archive_url.removeprefix("s3://") if is_s3 else archive_url.removeprefix("file://")
        if not is_s3 and not fs.exists(root):
            raise FileNotFoundError(f"archive folder {root} does not exist; run the provision flow")
        return f"{len(fs.ls(root.split('/', 1)[0] if is_s3 else root))} entries"

    return timed_check("object_storage", probe)


# -- metrics --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One value for the ``metrics`` table."""

    tenant: str
    name: str
    value: float

    def row(self, at: datetime, flow_run_id: str | None) -> dict[str, Any]:
        return {**asdict(self), "at": at, "flow_run_id": flow_run_id}


def measure_store(store: Store, as_of: datetime, tenant: str | None = None) -> list[Measurement]:
    """Items per layer and tenant, the consolidation backlog and lag, episodes set aside, unfinished forgets, and
    quarantine growth since the last monitor.

    Backlog is the number of episodes not consolidated yet; lag is the age, at ``as_of``, of the oldest of them.
    Neither counts the episodes set aside after the store's ``consolidate_attempts`` failed runs, which no run takes
    until an operator retries them: more workers would not help them. Their number is measured apart
    (``set_aside.episodes``).
    An unfinished forget is one that started (its intent is recorded) and has not finished: under way, or
    interrupted and waiting for a rerun with the same subject. Their number is measured for the scope; the age of
    the oldest (from its first start) per tenant that has one.
    Quarantine growth compares the quarantine's size with the last recorded measurement before ``as_of``.
    """
    tenants = [tenant] if tenant is not None else store.tenants()
    out: list[Measurement] = []
    totals: dict[str, float] = {}
    for t in tenants:
        counts = store.count_by_layer(t, CHARTED_LAYERS)
        for layer in CHARTED_LAYERS:
            out.append(Measurement(t, f"layer.{layer}", counts.get(layer, 0)))
            totals[layer] = totals.get(layer, 0) + counts.get(layer, 0)
    if tenant is None:
        # The whole quarantine, counted apart: rows whose tenant id was itself invalid are in no tenant's count.
        totals["quarantine"] = store.quarantine_count()
        for layer in CHARTED_LAYERS:
            out.append(Measurement(SERVICE_WIDE, f"layer.{layer}", totals.get(layer, 0)))
    backlog = store.consolidation_backlog(as_of, tenant)
    scope = tenant if tenant is not None else SERVICE_WIDE
    oldest = [ended for _, ended in backlog.values() if ended is not None]
    out.append(Measurement(scope, "backlog.episodes", sum(n for n, _ in backlog.values())))
    out.append(Measurement(scope, "lag.seconds", max(0.0, (as_of - min(oldest)).total_seconds()) if oldest else 0.0))
    out.append(Measurement(scope, "set_aside.episodes", len(store.set_aside_episodes(tenant))))
    unfinished = store.unfinished_forgets(tenant)
    out.append(Measurement(scope, "forget.unfinished", len(unfinished)))
    first_started: dict[str, datetime] = {}
    for t, started in unfinished:  # oldest first: the first of each tenant is its oldest
        first_started.setdefault(t, started)
    for t, started in sorted(first_started.items()):  # per tenant, so that an alert names whose forget to rerun
        out.append(Measurement(t, "forget.oldest_age_seconds", max(0.0, (as_of - started).total_seconds())))
    previous = store.latest_metric(scope, "layer.quarantine", before=as_of)
    now_quarantined = totals.get("quarantine", 0)  # the tenant's, or the whole quarantine's
    out.append(Measurement(scope, "quarantine.growth", now_quarantined - previous if previous is not None else 0.0))
    return out


def run_duration_measurements(durations: Iterable[tuple[str, float]]) -> list[Measurement]:
    """Mean and longest duration (seconds) per flow, from (flow name, seconds) of finished runs."""
    by_flow: dict[str, list[float]] = {}
    for name, seconds in durations:
        by_flow.setdefault(name, []).append(seconds)
    out = []
    for name in sorted(by_flow):
        values = by_flow[name]
        out.append(Measurement(SERVICE_WIDE, f"run.{name}.mean_s", round(sum(values) / len(values), 3)))
        out.append(Measurement(SERVICE_WIDE, f"run.{name}.max_s", round(max(values), 3)))
        out.append(Measurement(SERVICE_WIDE, f"run.{name}.count", len(values)))
    return out


def health_measurements(checks: Sequence[HealthCheck]) -> list[Measurement]:
    return [Measurement(SERVICE_WIDE, f"health.{c.name}", 1.0 if c.ok else 0.0) for c in checks]


# -- alerts ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorThresholds:
    """When the monitor raises an alert or signals a high backlog.

    Attributes:
        backlog_high: episodes waiting for consolidation above which ``engram.backlog.high`` is emitted.
        max_lag_hours: an unconsolidated episode older than this raises ``engram.alert.lag``.
        max_quarantine_growth: more rows quarantined since the last monitor than this raises
            ``engram.alert.quarantine``.
        max_forget_age_hours: a forget started longer ago than this and not finished raises
            ``engram.alert.forget_unfinished``: a forget takes minutes, so it was interrupted, and until it is rerun
            with the same subject some of the subject may still be stored.
    """

    backlog_high: int = 500
    max_lag_hours: float = 24.0
    max_quarantine_growth: int = 100
    max_forget_age_hours: float = 1.0


@dataclass(frozen=True)
class Signal:
    """An event the monitor emits: its name, the resource it concerns, and a payload of plain values."""

    event: str
    resource: str
    payload: dict[str, Any] = field(default_factory=dict)


def decide_signals(
    checks: Sequence[HealthCheck], measurements: Sequence[Measurement], thresholds: MonitorThresholds
) -> list[Signal]:
    """The alerts (``engram.alert.*``) and the scaling signal (``engram.backlog.high``) a monitor run emits."""
    signals = [
        Signal("engram.alert.unhealthy", f"engram.check.{c.name}", {"check": c.name, "detail": c.detail})
        for c in checks
        if not c.ok
    ]
    hours = 3600
    # measurement -> (event, threshold as set, payload key, the measurement's units per threshold unit)
    rules = {
        "backlog.episodes": ("engram.backlog.high", thresholds.backlog_high, "backlog", 1),
        "lag.seconds": ("engram.alert.lag", thresholds.max_lag_hours, "lag_hours", hours),
        "forget.oldest_age_seconds": (
            "engram.alert.forget_unfinished",
            thresholds.max_forget_age_hours,
            "age_hours",
            hours,
        ),
        "quarantine.growth": ("engram.alert.quarantine", thresholds.max_quarantine_growth, "growth", 1),
        # Any episode set aside waits for an operator (``engram set-aside``, ``engram retry-held``).
        "set_aside.episodes": ("engram.alert.set_aside", 0, "episodes", 1),
    }
    for m in measurements:
        rule = rules.get(m.name)
        if rule is None or m.value <= rule[1] * rule[3]:
            continue
        event, threshold, key, unit = rule
        value = round(m.value / unit, 2) if unit != 1 else int(m.value)
        scope = f"engram.tenant.{m.tenant}" if m.tenant != SERVICE_WIDE else "engram.service"
        signals.append(Signal(event, scope, {key: value, "threshold": threshold}))
    return signals


# -- charts ---------------------------------------------------------------------------------------------------

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    """Values as a row of block characters, lowest to highest (a flat series is a flat line)."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[round((v - low) / (high - low) * (len(SPARKS) - 1))] for v in values)


def layer_chart_markdown(history: Sequence[Mapping[str, Any]], title: str = "layer sizes over time") -> str:
    """A markdown chart of layer sizes over time: a sparkline table and a mermaid ``xychart-beta`` of the layers.

    Args:
        history: rows with ``at``, ``name`` (``layer.<layer>``) and ``value``, oldest first.
    """
    times = sorted({r["at"] for r in history})
    series = {layer: [0.0] * len(times) for layer in CHARTED_LAYERS}
    index = {t: i for i, t in enumerate(times)}
    for r in history:
        layer = str(r["name"]).removeprefix("layer.")
        if layer in series:
            series[layer][index[r["at"]]] = float(r["value"])
    lines = [f"## {title}", "", "| layer | trend | first | latest |", "| --- | --- | --- | --- |"]
    for layer, values in series.items():
        if values:
            lines.append(f"| {layer} | {sparkline(values)} | {values[0]:g} | {values[-1]:g} |")
    if times:
        labels = ", ".join(f'"{t:%m-%d %H:%M}"' for t in times)
        top = max([v for values in series.values() for v in values] + [1.0])
        lines += ["", "```mermaid", "xychart-beta", f'    title "{title}"', f"    x-axis [{labels}]"]
        lines.append(f'    y-axis "items" 0 --> {math.ceil(top * 1.1)}')
        lines += [f"    line [{', '.join(f'{v:g}' for v in values)}]" for values in series.values()]
        lines += ["```", "", "Lines, in order: " + ", ".join(series) + "."]
    return "\n".join(lines)


# -- shards and scaling ---------------------------------------------------------------------------------------


def shard_of(tenant: str, shard_count: int) -> int:
    """The shard a tenant's work belongs to: a stable hash of the tenant id, the same in every process."""
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    return int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:8], "big") % shard_count


def tenants_by_shard(tenants: Iterable[str], shard_count: int) -> dict[int, list[str]]:
    """Tenants grouped by shard (only shards that have tenants), each list sorted."""
    out: dict[int, list[str]] = {}
    for t in sorted(set(tenants)):
        out.setdefault(shard_of(t, shard_count), []).append(t)
    return out


@dataclass(frozen=True)
class ScalingPolicy:
    """How many shard workers consolidate at once.

    Attributes:
        backlog_per_worker: one more worker for each this many episodes waiting; a backlog above
            ``current workers x backlog_per_worker`` raises parallelism.
        min_workers: parallelism once the backlog is drained.
        max_workers: never more than this many workers.
        shard_count: how many shards the tenants are hashed into (more shards than workers balances the load).
    """

    backlog_per_worker: int = 500
    min_workers: int = 1
    max_workers: int = 8
    shard_count: int = 16

    def __post_init__(self) -> None:
        for name in ("backlog_per_worker", "min_workers", "max_workers", "shard_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(name, f"must be a whole number of at least 1, got {value!r}")
        if self.min_workers > self.max_workers:
            raise InvalidInput("min_workers", f"is {self.min_workers}, above max_workers ({self.max_workers})")


@dataclass(frozen=True)
class ScalingDecision:
    backlog: int
    current: int
    desired: int
    action: Literal["raise", "lower", "hold"]
    reason: str


def decide_parallelism(backlog: int, current: int, policy: ScalingPolicy) -> ScalingDecision:
    """Raise parallelism as soon as the backlog needs more workers; lower it only once the backlog is drained.

    Lowering only when drained keeps a burst from bouncing the worker count up and down while it is processed.
    """
    needed = max(policy.min_workers, min(policy.max_workers, math.ceil(backlog / policy.backlog_per_worker)))
    if needed > current:
        return ScalingDecision(backlog, current, needed, "raise", f"backlog {backlog} needs {needed} workers")
    if current > policy.max_workers:
        return ScalingDecision(backlog, current, max(needed, 1), "lower", f"above max_workers {policy.max_workers}")
    if backlog == 0 and current > policy.min_workers:
        return ScalingDecision(backlog, current, policy.min_workers, "lower", "backlog drained")
    return ScalingDecision(backlog, current, current, "hold", f"backlog {backlog} fits {current} workers")


# -- decommissioning ------------------------------------------------------------------------------------------


def hot_rows(counts: Mapping[str, int]) -> int:
    """Rows a tenant still has in the hot layers (sensory, working, episodic, semantic; versions and turns too)."""
    return sum(
        int(counts.get(k, 0))
        for k in ("sensory", "working", "episodic", "episodic_turns", "semantic", "semantic_versions")
    )


def audit_report_markdown(
    scope: str, steps: Mapping[str, Any], before: Mapping[str, int], after: Mapping[str, int]
) -> str:
    """The final audit report of a decommission: every step's outcome and the layer counts before and after."""
    lines = [f"# decommission {scope}", "", "| step | outcome |", "| --- | --- |"]
    lines += [f"| {name} | {_cell(outcome)} |" for name, outcome in steps.items()]
    lines += ["", "| layer | before | after |", "| --- | --- | --- |"]
    lines += [f"| {k} | {before.get(k, 0)} | {after.get(k, 0)} |" for k in sorted(set(before) | set(after))]
    left = hot_rows(after)
    lines += ["", f"Rows left in the hot layers: {left}."]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, Mapping):
        value = ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value).replace("|", "/").replace("\n", " ")[:300]


__all__ = [
    "HealthCheck",
    "Measurement",
    "MonitorThresholds",
    "SERVICE_WIDE",
    "ScalingDecision",
    "ScalingPolicy",
    "Signal",
    "audit_report_markdown",
    "changed",
    "check_database",
    "check_object_storage",
    "decide_parallelism",
    "decide_signals",
    "fingerprint",
    "health_measurements",
    "hot_rows",
    "layer_chart_markdown",
    "measure_store",
    "run_duration_measurements",
    "shard_of",
    "sparkline",
    "tenants_by_shard",
]
