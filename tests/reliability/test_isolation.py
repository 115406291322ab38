"""Tenant isolation under randomized data and queries: no search, get or history ever returns another tenant's
item, whatever the query holds."""

from __future__ import annotations

import string
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engram import InvalidInput, Memory, NotFound
from tests.conftest import T0

pytestmark = pytest.mark.reliability

WORDS = ["dog", "lisbon", "nurse", "pottery", "camping", "secret", "DROP", "TABLE", "'", ";", "--", "%", "_", "*"]
QUERY = st.lists(st.sampled_from(WORDS) | st.text(string.printable, max_size=12), min_size=1, max_size=6).map(" ".join)
TENANTS = ["alpha", "beta", "gamma"]


@pytest.fixture
def populated(sqlite_memory: Memory) -> Memory:
    rows = []
    for t_index, tenant in enumerate(TENANTS):
        for i in range(40):
            words = " ".join(WORDS[(i + j + t_index) % len(WORDS)] for j in range(5))
            rows.append(
                {
                    "tenant": tenant,
                    "session": f"{tenant}-s{i % 4}",
                    "actor": tenant.title(),
                    "text": f"{tenant} marker {words}",
                    "at": T0 + timedelta(minutes=i),
                    "event_id": f"{tenant}-{i}",
                }
            )
    sqlite_memory.observe_many(rows)
    return sqlite_memory


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenant=st.sampled_from(TENANTS), query=QUERY, limit=st.integers(1, 50))
def test_search_never_returns_another_tenants_item(populated: Memory, tenant: str, query: str, limit: int) -> None:
    try:
        hits = populated.search(tenant, query, limit=limit)
    except InvalidInput:
        return
    assert all(h.item_id.startswith(f"{tenant}-") for h in hits)
    assert all(f"{tenant} marker" in h.text for h in hits)


@pytest.mark.parametrize("owner", TENANTS)
def test_get_and_history_do_not_cross_tenants(populated: Memory, owner: str) -> None:
    for other in TENANTS:
        if other == owner:
            continue
        with pytest.raises(NotFound):
            populated.get(other, f"{owner}-1")
        with pytest.raises(NotFound):
            populated.history(other, f"{owner}-1")


def test_forgetting_one_tenant_leaves_the_others_whole(populated: Memory) -> None:
    before = {t: populated.stats(t)["events"] for t in TENANTS}
    populated.forget("beta")
    assert populated.stats("beta")["events"] == 0
    assert {t: populated.stats(t)["events"] for t in ("alpha", "gamma")} == {
        "alpha": before["alpha"],
        "gamma": before["gamma"],
    }
