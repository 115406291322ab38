"""The LLM consolidator against a real OpenAI-compatible HTTP server on loopback, configured through its block."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from blocks.consolidator import LLMConsolidatorEndpoint
from engram import Memory
from flows.consolidate import consolidate
from flows.ingest import ingest
from flows.sessions import close_sessions
from tests.conftest import T0
from tests.flows.helpers import answer_json

TURN = re.compile(r"^\[(\d+)\] ([^:]+): (.*)$")


class ChatHandler(BaseHTTPRequestHandler):
    """Answers /chat/completions like a model that keeps every turn of five words or more as one fact, and
    garbles its answer for any conversation that mentions 'garble'."""

    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ChatHandler.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        transcript = body["messages"][-1]["content"]
        facts = []
        for line in transcript.splitlines():
            m = TURN.match(line)
            if m and len(m.group(3).split()) >= 5:
                facts.append(
                    {
                        "speaker": m.group(2),
                        "statement": m.group(3),
                        "turns": [int(m.group(1))],
                        "slot": "home" if "live in" in m.group(3) else None,
                    }
                )
        content = "not json at all" if "garble" in transcript else json.dumps({"facts": facts})
        answer_json(self, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def chat_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ChatHandler.requests = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def test_consolidate_with_the_llm_block_writes_the_models_facts_with_lineage(
    sqlite_memory: Memory, chat_server: str
) -> None:
    LLMConsolidatorEndpoint(base_url=chat_server, model="test-model", api_key="sk-test-secret").save(
        "engram-test-llm", overwrite=True
    )
    memory = sqlite_memory
    memory.observe("acme", "s1", "Maya", "I live in Denver with my dog Biscuit.", T0, event_id="a1")
    memory.observe("acme", "s1", "Leo", "Nice!", T0 + timedelta(minutes=1), event_id="a2")
    memory.observe("acme", "s2", "Leo", "please garble this whole conversation now", T0, event_id="b1")
    as_of = T0 + timedelta(days=1)
    ingest(store_url=memory.store_url, as_of=as_of)
    close_sessions(store_url=memory.store_url, as_of=as_of)
    result = consolidate(store_url=memory.store_url, as_of=as_of, consolidator_block="engram-test-llm")

    assert result["episodes"] == 2
    assert len(ChatHandler.requests) >= 2
    assert ChatHandler.requests[0]["path"] == "/v1/chat/completions"
    assert ChatHandler.requests[0]["auth"] == "Bearer sk-test-secret"
    hits = memory.search("acme", "Maya Denver dog", layers=["semantic"])
    assert hits[0].text == "(1 March 2024) Maya: I live in Denver with my dog Biscuit."
    assert hits[0].sources == ("a1",)
    # The garbled answer fell back to the local consolidator: that episode's fact is not lost.
    assert memory.search("acme", "garble conversation", layers=["semantic"])
