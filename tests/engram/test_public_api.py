"""The public surface: ``engram.__all__`` is sorted and complete, and ``Memory`` keeps its documented signatures."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import pytest

import engram
import engram.errors
from engram import Memory

EMPTY = inspect.Parameter.empty
POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
KEYWORD = inspect.Parameter.KEYWORD_ONLY

# (name, kind, default) after self, as the documentation gives them. A method may grow keyword-only parameters with
# defaults (a compatible addition); anything else is a breaking change to the public API.
DOCUMENTED: dict[str, list[tuple[str, Any, Any]]] = {
    "observe": [
        ("tenant", POSITIONAL, EMPTY),
        ("session", POSITIONAL, EMPTY),
        ("actor", POSITIONAL, EMPTY),
        ("text", POSITIONAL, EMPTY),
        ("at", POSITIONAL, EMPTY),
        ("event_id", POSITIONAL, None),
        ("metadata", POSITIONAL, None),
    ],
    "observe_many": [("rows", POSITIONAL, EMPTY)],
    "close_session": [("tenant", POSITIONAL, EMPTY), ("session", POSITIONAL, EMPTY), ("at", POSITIONAL, None)],
    "search": [
        ("tenant", POSITIONAL, EMPTY),
        ("query", POSITIONAL, EMPTY),
        ("limit", KEYWORD, 20),
        ("layers", KEYWORD, None),
        ("since", KEYWORD, None),
        ("until", KEYWORD, None),
        ("tags", KEYWORD, None),
    ],
    "get": [("tenant", POSITIONAL, EMPTY), ("item_id", POSITIONAL, EMPTY)],
    "history": [("tenant", POSITIONAL, EMPTY), ("item_id", POSITIONAL, EMPTY)],
    "forget": [("tenant", POSITIONAL, EMPTY), ("subject", POSITIONAL, None)],
    "stats": [("tenant", POSITIONAL, None)],
    "run_lifecycle": [("as_of", POSITIONAL, None)],
}
RETURNED = ["Hit", "Item", "HistoryEntry", "IngestReport", "DeletionReceipt"]


def engram_classes(annotation: Any) -> set[type]:
    """The engram classes named anywhere in a type annotation (``list[Hit]`` gives ``Hit``)."""
    found: set[type] = set()
    if isinstance(annotation, type) and annotation.__module__.startswith("engram"):
        found.add(annotation)
    for arg in typing.get_args(annotation):
        found |= engram_classes(arg)
    return found


def public_methods() -> dict[str, Any]:
    return {name: f for name, f in inspect.getmembers(Memory, inspect.isfunction) if not name.startswith("_")}


def test_all_has_no_duplicates() -> None:
    assert len(engram.__all__) == len(set(engram.__all__))


def test_all_is_sorted() -> None:
    assert engram.__all__ == sorted(engram.__all__)


@pytest.mark.parametrize("name", engram.__all__)
def test_every_exported_name_is_importable(name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"from engram import {name}", namespace)  # the statement users write, not just getattr
    assert namespace[name] is getattr(engram, name)


def test_all_covers_the_classes_memory_returns() -> None:
    assert set(RETURNED) <= set(engram.__all__)
    returned: set[type] = set()
    for method in public_methods().values():
        returned |= engram_classes(typing.get_type_hints(method).get("return"))
    assert {cls.__name__ for cls in returned} >= set(RETURNED)  # the annotations say what the docs say
    assert sorted(cls.__name__ for cls in returned if cls.__name__ not in engram.__all__) == []
    assert all(getattr(engram, cls.__name__) is cls for cls in returned)


def test_all_covers_every_error() -> None:
    errors = {
        name
        for name, cls in inspect.getmembers(engram.errors, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == engram.errors.__name__
    }
    assert errors >= {"EngramError", "InvalidInput", "NotFound", "StoreError", "LeaseLost", "ArchiveError"}
    assert sorted(errors - set(engram.__all__)) == []
    assert all(issubclass(getattr(engram, name), engram.EngramError) for name in errors)


@pytest.mark.parametrize("method", sorted(DOCUMENTED))
def test_memory_methods_keep_their_documented_signatures(method: str) -> None:
    assert method in public_methods()
    params = list(inspect.signature(getattr(Memory, method)).parameters.values())
    assert params[0].name == "self"
    documented = DOCUMENTED[method]
    actual = [(p.name, p.kind, p.default) for p in params[1 : 1 + len(documented)]]
    assert actual == documented
    extra = params[1 + len(documented) :]
    assert [p.name for p in extra if p.kind is not KEYWORD or p.default is EMPTY] == []
