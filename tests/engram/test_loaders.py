"""The file readers: LoCoMo conversations and JSON Lines, alone and through ``engram ingest``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engram import InvalidInput, Memory
from engram.cli import app
from engram.loaders import jsonl_rows, locomo_rows, parse_locomo_time

LOCOMO_DEV = Path(__file__).resolve().parents[3] / "shared/data/locomo/locomo-dev.json"
LOCOMO_DEV_TURNS = 2_960  # as counted in the data set's README: 5 conversations, 136 sessions

# A conversation in LoCoMo's shape. Session 10 comes after session 2 although "session_10" sorts before
# "session_2" as text; the "qa" and "observation" keys are the data set's annotations and are not turns.
CONVERSATION = {
    "sample_id": "conv-t1",
    "conversation": {
        "speaker_a": "Caroline",
        "speaker_b": "Melanie",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Caroline", "dia_id": "D1:1", "text": "Hey Mel! I went to a support group yesterday."},
            {
                "speaker": "Melanie",
                "dia_id": "D1:2",
                "text": "That sounds great. Look at what I painted!",
                "img_url": ["https://example.org/lake.jpg"],
                "blip_caption": "a photo of a painting of a lake at sunrise",
            },
        ],
        "session_2_date_time": "10:37 am on 27 June, 2023",
        "session_2": [
            {"speaker": "Melanie", "dia_id": "D2:1", "text": "We went camping last weekend."},
        ],
        "session_10_date_time": "12:05 am on 1 January, 2024",
        "session_10": [
            {"speaker": "Caroline", "dia_id": "D10:1", "text": "Happy new year!"},
            {"speaker": "Melanie", "dia_id": "D10:2", "text": "Happy new year to you too."},
        ],
    },
    "qa": [{"question": "What did Melanie paint?", "answer": "a lake at sunrise", "evidence": ["D1:2"]}],
    "observation": {"session_1_observation": {"Caroline": [["Caroline went to a support group.", "D1:1"]]}},
}


@pytest.fixture
def locomo_file(tmp_path: Path) -> Path:
    path = tmp_path / "conversation.json"
    path.write_text(json.dumps([CONVERSATION]), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:56 pm on 8 May, 2023", datetime(2023, 5, 8, 13, 56, tzinfo=UTC)),
        ("12:05 am on 1 January, 2024", datetime(2024, 1, 1, 0, 5, tzinfo=UTC)),  # 12 am is just after midnight
        ("12:30 pm on 3 Jun, 2023", datetime(2023, 6, 3, 12, 30, tzinfo=UTC)),  # 12 pm is noon
        ("9:00 AM on 15 August 2022", datetime(2022, 8, 15, 9, 0, tzinfo=UTC)),  # case and a missing comma
    ],
)
def test_parse_locomo_time(text: str, expected: datetime) -> None:
    assert parse_locomo_time(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "yesterday at noon",  # not the shape at all
        "1:56 pm on 8 Smarch, 2023",  # the shape, but no month
        "1:56 pm on 31 June, 2023",  # June has 30 days
        "1:75 pm on 8 May, 2023",  # no minute 75
        "1:56 pm on 0 May, 2023",  # days count from 1
    ],
)
def test_parse_locomo_time_names_the_field_when_it_cannot(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_locomo_time(text)
    assert caught.value.field == "session_date_time"


def test_locomo_rows_give_tenant_session_and_event_ids(locomo_file: Path) -> None:
    rows = list(locomo_rows(locomo_file))
    assert [r["event_id"] for r in rows] == [
        "conv-t1:D1:1",
        "conv-t1:D1:2",
        "conv-t1:D2:1",
        "conv-t1:D10:1",
        "conv-t1:D10:2",
    ]
    assert {r["tenant"] for r in rows} == {"conv-t1"}
    assert [r["session"] for r in rows] == ["conv-t1-s1", "conv-t1-s1", "conv-t1-s2", "conv-t1-s10", "conv-t1-s10"]
    assert [r["actor"] for r in rows] == ["Caroline", "Melanie", "Melanie", "Caroline", "Melanie"]


def test_locomo_turns_follow_their_session_start_one_second_apart(locomo_file: Path) -> None:
    at = [r["at"] for r in locomo_rows(locomo_file)]
    start = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert at[:2] == [start, start + timedelta(seconds=1)]
    assert at[2] == datetime(2023, 6, 27, 10, 37, tzinfo=UTC)
    assert at[3:] == [datetime(2024, 1, 1, 0, 5, tzinfo=UTC), datetime(2024, 1, 1, 0, 5, 1, tzinfo=UTC)]


def test_locomo_caption_is_appended_to_the_text(locomo_file: Path) -> None:
    shared = next(r for r in locomo_rows(locomo_file) if r["event_id"] == "conv-t1:D1:2")
    assert shared["text"] == (
        "That sounds great. Look at what I painted! [shares a photo of a painting of a lake at sunrise]"
    )
    assert shared["metadata"] == {"dia_id": "D1:2", "image": "a photo of a painting of a lake at sunrise"}


def test_jsonl_rows_keep_unreadable_lines_for_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"tenant": "acme", "text": "hi"}\n\n[1, 2]\n{broken\n\xff\xfe\n')
    rows = list(jsonl_rows(path))
    assert rows[0] == {"tenant": "acme", "text": "hi"}
    # The blank line 2 is skipped; a JSON value that is not an object, broken JSON and bad UTF-8 are kept raw.
    assert [(r["$line"], r["$raw"]) for r in rows[1:]] == [(3, b"[1, 2]\n"), (4, b"{broken\n"), (5, b"\xff\xfe\n")]


def test_jsonl_lines_past_the_json_readers_limits_are_quarantined_and_the_rows_around_them_written(
    tmp_path: Path,
) -> None:
    """An integer of 5,000 digits (ValueError) and 100,000 nested brackets (RecursionError) are not JSONDecodeErrors:
    they used to end the command with a traceback, the valid rows before and after them unwritten."""
    path = tmp_path / "events.jsonl"
    good = [
        {"tenant": "acme", "session": "s1", "actor": "Ada", "text": f"row {i}", "at": "2024-03-01T09:00:00Z"}
        for i in range(2)
    ]
    lines = [json.dumps(good[0]), '{"tenant": "acme", "at": ' + "9" * 5000 + "}", "[" * 100_000, json.dumps(good[1])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert [r.get("$line") for r in jsonl_rows(path)] == [None, 2, 3, None]

    store = f"sqlite:///{tmp_path / 'engram.db'}"
    args = ["ingest", str(path), "--json", "--store", store, "--archive", (tmp_path / "archive").as_uri()]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["accepted"], report["quarantined"], report["reasons"]) == (2, 2, {"row": 2})


def test_a_locomo_session_without_a_usable_date_is_quarantined_and_the_rest_of_the_file_loads(tmp_path: Path) -> None:
    """One session's date that does not parse, a turn that is not an object and an entry that is not a conversation
    are quarantined each with its field; every other turn of the file is written, and turns without a dia_id each
    get an id of their own (they used to share "<sample_id>:None" and count as resends of the first)."""
    broken = json.loads(json.dumps(CONVERSATION))
    broken["sample_id"] = "conv-t2"
    broken["conversation"]["session_2_date_time"] = "sometime in June"
    broken["conversation"]["session_10"].append("not a turn")
    no_ids = {
        "sample_id": "conv-t3",
        "conversation": {
            "session_1_date_time": "1:00 pm on 2 May, 2023",
            "session_1": [{"speaker": "Ada", "text": f"turn {i}"} for i in range(3)],
        },
    }
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([CONVERSATION, broken, 7, no_ids]), encoding="utf-8")

    store = f"sqlite:///{tmp_path / 'engram.db'}"
    args = ["ingest", str(path), "--format", "locomo", "--json", "--store", store]
    result = CliRunner().invoke(app, [*args, "--archive", (tmp_path / "archive").as_uri()])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["accepted"], report["duplicates"], report["quarantined"]) == (5 + 4 + 3, 0, 3)
    assert report["reasons"] == {"session_date_time": 1, "turn": 1, "conversation": 1}
    with Memory(store, (tmp_path / "archive").as_uri(), migrate=False) as memory:
        assert memory.stats("conv-t2")["events"] == 4
        assert memory.stats("conv-t3")["events"] == 3
        assert memory.get("conv-t2", "conv-t2:D10:2").text == "Happy new year to you too."


def test_ingest_locomo_through_the_command(locomo_file: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'engram.db'}"
    args = ["ingest", str(locomo_file), "--format", "locomo", "--json", "--store", store]
    result = CliRunner().invoke(app, [*args, "--archive", (tmp_path / "archive").as_uri()])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accepted"] == 5
    with Memory(store, (tmp_path / "archive").as_uri(), migrate=False) as memory:
        hits = memory.search("conv-t1", "what did Melanie paint")
    assert hits[0].text == (
        "(8 May 2023) Melanie: That sounds great. Look at what I painted! "
        "[shares a photo of a painting of a lake at sunrise]"
    )


@pytest.mark.skipif(not LOCOMO_DEV.exists(), reason=f"the LoCoMo development file is not at {LOCOMO_DEV}")
def test_locomo_dev_file_stores_every_turn_exactly_once(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'engram.db'}"
    archive = (tmp_path / "archive").as_uri()
    args = ["ingest", str(LOCOMO_DEV), "--format", "locomo", "--json", "--store", store, "--archive", archive]
    runner = CliRunner()

    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output

    assert json.loads(first.stdout) == {
        "received": LOCOMO_DEV_TURNS,
        "accepted": LOCOMO_DEV_TURNS,
        "duplicates": 0,
        "quarantined": 0,
        "reasons": {},
    }
    assert json.loads(second.stdout) == {
        "received": LOCOMO_DEV_TURNS,
        "accepted": 0,
        "duplicates": LOCOMO_DEV_TURNS,
        "quarantined": 0,
        "reasons": {},
    }
    with Memory(store, archive, migrate=False) as memory:
        counts = memory.stats()
        assert counts["events"] == LOCOMO_DEV_TURNS
        assert counts["quarantine"] == 0
        assert sum(memory.stats(t)["events"] for t in memory.store.tenants()) == LOCOMO_DEV_TURNS
