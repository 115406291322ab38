"""The invariant checker every crash, fault and load test ends with.

``check_invariants(store, tenant, archive)`` walks one tenant's whole memory and reports what would mean a memory
was lost, duplicated or left unaccounted for:

- every event of the sensory ledger is in exactly one place: the sensory layer (not routed yet), working memory, an
  episode's turns, the archive (its turn's tombstone points at a committed manifest whose files hold the turn), the
  quarantine (audited, with its quarantine row) or an audited discard (``expire``);
- no fact has two rows with the same (fact_key, version), and no fact has two current versions;
- every lineage row points at an existing item and an existing event;
- every archived fact is readable from a committed manifest;
- every transition but ``observe`` names the flow run that made it.

``expected`` names the events that must still exist (those observed, minus those forgotten): a missing one is lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from engram.archive import StorageLike, read_manifest_rows
from engram.store import EVENTS, LINEAGE, QUARANTINE, SEMANTIC, TRANSITIONS, TURNS, WORKING, Store, stable_id
from tests.reliability import figures

PLACES = ("sensory", "working", "episodic", "archive", "quarantine", "discarded")


@dataclass
class Report:
    """What ``check_invariants`` found for one tenant; ``ok`` when nothing is wrong."""

    tenant: str
    events: int = 0
    places: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)  # in the ledger but nowhere, or expected and gone
    duplicated: dict[str, list[str]] = field(default_factory=dict)  # in more than one place
    orphans: dict[str, list[str]] = field(default_factory=dict)  # in a layer without a ledger row
    duplicate_versions: list[tuple[str, int]] = field(default_factory=list)
    several_current: list[str] = field(default_factory=list)
    dangling_lineage: list[tuple[str, str]] = field(default_factory=list)
    unreadable_archive: list[str] = field(default_factory=list)
    unaudited_transitions: list[tuple[str, str]] = field(default_factory=list)
    # A turn's item id is its event's id: the store finds and deletes turns by event id (its index).
    turns_not_named_by_event: list[tuple[str, str]] = field(default_factory=list)
    unfinished_manifests: int = 0
    facts: int = 0

    @property
    def problems(self) -> dict[str, Any]:
        found = {
            "lost": self.lost,
            "duplicated": self.duplicated,
            "orphans": self.orphans,
            "duplicate_versions": self.duplicate_versions,
            "several_current": self.several_current,
            "dangling_lineage": self.dangling_lineage,
            "unreadable_archive": self.unreadable_archive,
            "unaudited_transitions": self.unaudited_transitions,
            "turns_not_named_by_event": self.turns_not_named_by_event,
        }
        return {k: v for k, v in found.items() if v}

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, limit: int = 5) -> str:
        def cut(v: Any) -> Any:
            if isinstance(v, dict):
                return dict(list(v.items())[:limit])
            return list(v)[:limit]

        shown = {k: (len(v), cut(v)) for k, v in self.problems.items()}
        return f"tenant {self.tenant!r}: {self.events} events in {dict(self.places)}; problems: {shown}"

    def assert_ok(self, context: str = "") -> Report:
        assert self.ok, f"{context}: invariants broken: {self.summary()}"
        return self


def check_invariants(
    store: Store, tenant: str, archive: StorageLike | None = None, expected: Iterable[str] | None = None
) -> Report:
    """Check one tenant's memory; with ``archive``, archived rows are read back from their files.

    Records the count of lost events in the run's figures, whatever the outcome.
    """
    report = Report(tenant)
    where: dict[str, list[str]] = {}
    with store.read() as conn:
        ledger = {
            r[0]: r[1]
            for r in conn.execute(select(EVENTS.c.event_id, EVENTS.c.routed_at).where(EVENTS.c.tenant == tenant))
        }
        for event_id, routed_at in ledger.items():
            if routed_at is None:
                where.setdefault(event_id, []).append("sensory")
        for (event_id,) in conn.execute(select(WORKING.c.event_id).where(WORKING.c.tenant == tenant)):
            where.setdefault(event_id, []).append("working")
        archived_turns: dict[str, list[str]] = {}
        for event_id, item_id, manifest_id in conn.execute(
            select(TURNS.c.event_id, TURNS.c.item_id, TURNS.c.archived_manifest_id).where(TURNS.c.tenant == tenant)
        ):
            if item_id != event_id:
                report.turns_not_named_by_event.append((item_id, event_id))
            if manifest_id is None:
                where.setdefault(event_id, []).append("episodic")
            else:
                archived_turns.setdefault(manifest_id, []).append(item_id)
                where.setdefault(event_id, []).append(f"archive:{manifest_id}:{item_id}")
        quarantined = {
            r[0] for r in conn.execute(select(QUARANTINE.c.quarantine_id).where(QUARANTINE.c.tenant == tenant))
        }
        transitions = conn.execute(
            select(TRANSITIONS.c.item_id, TRANSITIONS.c.action, TRANSITIONS.c.flow_run_id).where(
                TRANSITIONS.c.tenant == tenant
            )
        ).all()
        semantic = conn.execute(
            select(
                SEMANTIC.c.item_id,
                SEMANTIC.c.fact_key,
                SEMANTIC.c.version,
                SEMANTIC.c.valid_to,
                SEMANTIC.c.archived_manifest_id,
            ).where(SEMANTIC.c.tenant == tenant)
        ).all()
        lineage = conn.execute(select(LINEAGE.c.item_id, LINEAGE.c.event_id).where(LINEAGE.c.tenant == tenant)).all()
        event_count = conn.execute(select(func.count()).select_from(EVENTS).where(EVENTS.c.tenant == tenant)).scalar()
    for item_id, action, run_id in transitions:
        if action == "quarantine":
            # An audited quarantine counts only with the quarantine row that keeps the payload and the reason.
            place = (
                "quarantine" if stable_id("q", tenant, item_id, "ingest") in quarantined else "quarantine-unrecorded"
            )
            where.setdefault(item_id, []).append(place)
        elif action == "expire":
            where.setdefault(item_id, []).append("discarded")
        if action != "observe" and not run_id:
            report.unaudited_transitions.append((item_id, action))

    manifests = {m["manifest_id"]: m for m in store.manifests(tenant)}
    report.unfinished_manifests = sum(1 for m in manifests.values() if m["status"] != "committed")
    readable = _readable_archive(archive, manifests, archived_turns, semantic)
    for places in where.values():
        for i, place in enumerate(places):
            if place.startswith("archive:"):
                _, manifest_id, item_id = place.split(":", 2)
                places[i] = "archive" if (manifest_id, item_id) in readable else "archive-unreadable"
    report.unreadable_archive = sorted(
        f"{r.item_id}@{r.archived_manifest_id}"
        for r in semantic
        if r.archived_manifest_id is not None and (r.archived_manifest_id, r.item_id) not in readable
    )

    report.events = event_count or 0
    for event_id in ledger:
        places = where.get(event_id, [])
        good = [p for p in places if p in PLACES]
        if not places or (len(places) == 1 and not good):
            report.lost.append(event_id)
        elif len(places) > 1:
            report.duplicated[event_id] = places
        else:
            report.places[places[0]] += 1
    for event_id, places in where.items():
        if event_id not in ledger:
            report.orphans[event_id] = places
    if expected is not None:
        report.lost += sorted(set(expected) - set(ledger))

    versions = Counter((r.fact_key, r.version) for r in semantic)
    report.duplicate_versions = sorted(k for k, n in versions.items() if n > 1)
    current = Counter(r.fact_key for r in semantic if r.valid_to is None)
    report.several_current = sorted(k for k, n in current.items() if n > 1)
    report.facts = len(current)
    items = {r.item_id for r in semantic}
    report.dangling_lineage = sorted((i, e) for i, e in lineage if i not in items or e not in ledger)
    figures.record_check(len(report.lost))
    return report


def _readable_archive(
    archive: StorageLike | None,
    manifests: dict[str, dict[str, Any]],
    archived_turns: dict[str, list[str]],
    semantic: list[Any],
) -> set[tuple[str, str]]:
    """(manifest_id, item_id) of archived turns and facts whose manifest is committed and whose files hold them.

    Without ``archive`` the files are not read: a committed manifest is taken at its word.
    """
    wanted: dict[str, set[str]] = {m: set(ids) for m, ids in archived_turns.items()}
    for r in semantic:
        if r.archived_manifest_id is not None:
            wanted.setdefault(r.archived_manifest_id, set()).add(r.item_id)
    out: set[tuple[str, str]] = set()
    for manifest_id, ids in wanted.items():
        manifest = manifests.get(manifest_id)
        if manifest is None or manifest["status"] != "committed":
            continue
        if archive is None:
            out |= {(manifest_id, i) for i in ids}
            continue
        try:
            rows = read_manifest_rows(archive, manifest, {"semantic_items": ["item_id"], "episode_turns": ["item_id"]})
        except Exception:  # an unreadable manifest is reported through the rows that point at it
            continue
        held = {r["item_id"] for name in ("semantic_items", "episode_turns") for r in rows.get(name, [])}
        out |= {(manifest_id, i) for i in ids & held}
    return out
