"""The ``engram`` command on a temporary SQLite store: ingest, search, stats, history, get, forget, user errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from engram import Memory
from engram.cli import app

Invoke = Callable[..., Result]

GOOD_ROWS = [
    {
        "tenant": "acme",
        "session": "s1",
        "actor": "Caroline",
        "text": "I adopted a dog named Rex",
        "at": "2024-03-01T09:00:00Z",
        "event_id": "e1",
    },
    {
        "tenant": "acme",
        "session": "s1",
        "actor": "Mel",
        "text": "Rex is a lovely name for a dog",
        "at": "2024-03-01T09:01:00Z",
        "event_id": "e2",
        "metadata": {"tags": ["pets"]},
    },
    {
        "tenant": "globex",
        "session": "g1",
        "actor": "Hank",
        "text": "My dog is called Rex too",
        "at": "2024-03-02T10:00:00Z",
        "event_id": "e1",
    },
]
# A blank text is rejected on the field ``text``.
BAD_ROW = {"tenant": "acme", "session": "s1", "actor": "Mel", "text": "   ", "at": "2024-03-01T09:02:00Z"}


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'engram.db'}"


@pytest.fixture
def invoke(store: str, tmp_path: Path) -> Invoke:
    """Run ``engram`` against the test's own store and archive, wide enough that table cells do not wrap."""
    runner = CliRunner()
    where = ["--store", store, "--archive", (tmp_path / "archive").as_uri()]

    def run(*args: str) -> Result:
        return runner.invoke(app, [*args, *where], env={"COLUMNS": "200"})

    return run


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    """Three good rows, a line that is not JSON, a blank line and a row with blank text."""
    lines = [json.dumps(r) for r in GOOD_ROWS[:2]]
    lines += ["{not json", "", json.dumps(BAD_ROW), json.dumps(GOOD_ROWS[2])]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ingested(invoke: Invoke, path: Path) -> dict:
    result = invoke("ingest", str(path), "--format", "jsonl", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_ingest_jsonl_keeps_good_rows_and_quarantines_bad_ones(invoke: Invoke, events_file: Path, store: str) -> None:
    result = invoke("ingest", str(events_file), "--format", "jsonl", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "accepted" in result.stdout
    assert "quarantined for field text" in result.stdout
    # The unparsable line is kept as {"$raw": ...} and rejected as a whole row, with its line number.
    assert "quarantined for field row" in result.stdout
    with Memory(store, migrate=False) as memory:
        counts = memory.stats()
    assert counts["events"] == 3
    assert counts["quarantine"] == 2


def test_ingest_report_counts_every_row(invoke: Invoke, events_file: Path) -> None:
    report = ingested(invoke, events_file)
    # The blank line is not a row: 3 good + 1 unparsable + 1 blank text.
    assert report == {
        "received": 5,
        "accepted": 3,
        "duplicates": 0,
        "quarantined": 2,
        "reasons": {"row": 1, "text": 1},
    }


def test_ingest_twice_is_idempotent(invoke: Invoke, events_file: Path, store: str) -> None:
    ingested(invoke, events_file)
    again = ingested(invoke, events_file)
    assert again["accepted"] == 0
    assert again["duplicates"] == 3
    with Memory(store, migrate=False) as memory:
        assert memory.stats()["events"] == 3
        assert memory.stats("acme")["sensory"] == 2


def test_search_prints_the_rendered_hit(invoke: Invoke, events_file: Path) -> None:
    ingested(invoke, events_file)
    result = invoke("search", "acme", "dog named Rex")
    assert result.exit_code == 0, result.output
    assert "(1 March 2024) Caroline: I adopted a dog named Rex" in result.stdout
    assert "sensory" in result.stdout
    # Tenants stay apart: globex's Rex is not acme's.
    assert "Hank" not in result.stdout


def test_search_json_prints_one_object_per_hit(invoke: Invoke, events_file: Path) -> None:
    ingested(invoke, events_file)
    result = invoke("search", "acme", "Rex", "--json", "--tag", "pets", "--layer", "sensory")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert [h["item_id"] for h in hits] == ["e2"]
    assert hits[0]["text"] == "(1 March 2024) Mel: Rex is a lovely name for a dog"
    assert hits[0]["layer"] == "sensory"
    assert hits[0]["at"] == "2024-03-01T09:01:00+00:00"


def test_search_with_no_match_says_so(invoke: Invoke, events_file: Path) -> None:
    ingested(invoke, events_file)
    result = invoke("search", "acme", "kayak", "--since", "2024-01-01", "--until", "2025-01-01")
    assert result.exit_code == 0, result.output
    assert "no hits" in result.stdout


def test_stats_json_parses(invoke: Invoke, events_file: Path) -> None:
    ingested(invoke, events_file)
    everyone = json.loads(invoke("stats", "--json").stdout)
    acme = json.loads(invoke("stats", "--tenant", "acme", "--json").stdout)
    assert everyone["sensory"] == 3
    assert acme["sensory"] == 2
    assert set(acme) >= {"sensory", "working", "episodic", "semantic", "archival", "quarantine"}


def test_stats_table_lists_every_layer(invoke: Invoke, events_file: Path) -> None:
    ingested(invoke, events_file)
    result = invoke("stats")
    assert result.exit_code == 0, result.output
    for layer in ("sensory", "working", "episodic", "semantic", "archival", "quarantine"):
        assert layer in result.stdout


def test_history_prints_the_observe_row(invoke: Invoke, events_file: Path) -> None:
    ingested(invoke, events_file)
    result = invoke("history", "acme", "e1")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "observe" in line)
    assert "- -> sensory" in row
    assert "e1" in row


def test_get_prints_the_item(invoke: Invoke, events_file: Path) -> None:
    ingested(invoke, events_file)
    result = invoke("get", "globex", "e1", "--json")
    assert result.exit_code == 0, result.output
    item = json.loads(result.stdout)
    assert item["text"] == "My dog is called Rex too"
    assert item["layer"] == "sensory"
    assert item["session_id"] == "g1"


def test_forget_prints_counts_only(invoke: Invoke, events_file: Path, store: str) -> None:
    ingested(invoke, events_file)
    result = invoke("forget", "acme", "--subject", "Rex", "--yes")
    assert result.exit_code == 0, result.output
    assert "deletion receipt" in result.stdout
    assert "Rex" not in result.stdout  # the receipt holds the subject's hash, never the subject
    with Memory(store, migrate=False) as memory:
        assert memory.stats("acme")["sensory"] == 0
        # Another tenant's Rex is not touched.
        assert memory.stats("globex")["sensory"] == 1


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["search", "acme corp", "dog"], "tenant"),  # a space is not allowed in a tenant id
        (["search", "acme", "dog", "--limit", "0"], "limit"),
        (["search", "acme", "dog", "--layer", "hot"], "layers"),  # not one of the five layers
        (["search", "acme", "dog", "--since", "last week"], "since"),  # not ISO-8601
        (["search", "acme", "dog", "--tag", "two words"], "tags"),
        (["stats", "--tenant", "../etc"], "tenant"),
        (["history", "acme", ""], "item_id"),
        (["ingest", "no-such-file.jsonl"], "file"),
        (["ingest", "{events}", "--format", "csv"], "--format"),  # only jsonl and locomo are read
        (["ingest", "{events}", "--batch-size", "0"], "--batch-size"),
        (["ingest", "{events}", "--format", "locomo"], "file"),  # JSON Lines is not one LoCoMo document
        (["forget", "acme"], "--yes"),  # forgetting needs an explicit confirmation
    ],
)
def test_user_errors_print_one_line_naming_the_field(
    invoke: Invoke, events_file: Path, args: list[str], named: str
) -> None:
    result = invoke(*(a.replace("{events}", str(events_file)) for a in args))
    assert result.exit_code == 2, result.output
    assert named in result.stderr
    assert "Traceback" not in result.output
    # One line of error; a progress bar may come before it.
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_an_unknown_item_is_a_user_error(invoke: Invoke) -> None:
    result = invoke("get", "acme", "nope")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: tenant 'acme' has no item 'nope'"


def test_a_store_that_cannot_be_opened_is_a_user_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["stats", "--store", "nosuch://x", "--archive", tmp_path.as_uri()])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot open the store")


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ENGRAM_LEASE_SECONDS", "abc"), ("ENGRAM_LEASE_SECONDS", "inf"), ("ENGRAM_WORKING_TTL_HOURS", "1e12")],
)
def test_a_setting_that_is_not_valid_is_named_in_one_line(tmp_path: Path, variable: str, value: str) -> None:
    """A bad ENGRAM_* value printed a 78-line traceback; an infinite or huge lease or lifetime was taken and then
    overflowed in every flow that adds it to a time."""
    where = ["--store", f"sqlite:///{tmp_path / 'engram.db'}", "--archive", tmp_path.as_uri()]
    result = CliRunner().invoke(app, ["stats", *where], env={variable: value})
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {variable}: ") and len(result.stderr.strip().splitlines()) == 1


def test_a_sqlite_store_whose_folder_cannot_be_made_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    store = f"sqlite:///{tmp_path / 'afile' / 'engram.db'}"
    result = CliRunner().invoke(app, ["stats", "--store", store, "--archive", tmp_path.as_uri()])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot open the store") and "Traceback" not in result.output


def test_set_aside_lists_what_consolidation_gave_up_on_and_retry_held_gives_it_back(invoke: Invoke, store: str) -> None:
    from datetime import UTC, datetime

    from engram.store import EPISODES

    at = datetime(2024, 3, 1, 10, tzinfo=UTC)
    episode = {"tenant": "acme", "session_id": "s1", "started_at": at, "ended_at": at, "participants": [], "tags": []}
    episode["summary"] = ""
    with Memory(store) as memory, memory.store.write() as conn:
        conn.execute(
            EPISODES.insert(),
            [
                {**episode, "episode_id": "ep-given-up", "consolidation_failures": 5},
                {**episode, "episode_id": "ep-failed-once", "consolidation_failures": 1},  # still retried by runs
            ],
        )
    listed = invoke("set-aside", "--json")
    assert listed.exit_code == 0, listed.output
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["tenant"], row["episode_id"], row["consolidation_failures"]) == ("acme", "ep-given-up", 5)
    table = invoke("set-aside", "--tenant", "acme")
    assert "ep-given-up" in table.stdout and "ep-failed-once" not in table.stdout
    retried = invoke("retry-held", "acme", "--episode", "ep-given-up")
    assert retried.exit_code == 0, retried.output
    assert "1 episode(s) of acme will be retried" in retried.stdout
    assert "no episode set aside" in invoke("set-aside").stdout
    with Memory(store, migrate=False) as memory:
        assert memory.set_aside() == []


def test_resummarize_reports_what_it_did(invoke: Invoke, events_file: Path) -> None:
    ingested(invoke, events_file)
    result = invoke("resummarize", "acme", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"episodes": 0, "resummarized": 0, "failed": 0, "empty": 0, "skipped": 0}
    assert "0 of 0 episode(s) of acme" in invoke("resummarize", "acme").stdout
