"""The serving side of the request protocol, written once (nodes/requests.py): accepted or
refused at once, a request sent again answered as the first time, one worker at a time started
so that close() finds it, cancel set by close."""
from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from ebmcpilco_ros.nodes.requests import RequestServer


class Published:
    """The events a server publishes, decoded."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, msg: Any) -> None:
        self.events.append(json.loads(msg.data))

    def kinds(self) -> list[tuple[str, str]]:
        return [(e["request_id"], e["event"]) for e in self.events]


@pytest.fixture
def server() -> tuple[RequestServer, Published]:
    published = Published()
    return RequestServer("node_under_test", published, 4, lambda busy: f"busy with {busy}"), \
        published


@pytest.mark.timeout(30)
def test_one_request_at_a_time_and_the_same_answer_again(server) -> None:
    requests, published = server
    release = threading.Event()
    assert requests.start("r1", lambda: release.wait(10), "work", phase="policy")
    assert requests.busy == "r1"
    assert not requests.start("r2", lambda: None, "work")           # busy: refused
    assert published.events[-1]["reason"] == "busy with r1"
    assert requests.answer_again("r2")                              # sent again: same answer
    assert published.events[-1] == published.events[-2]
    assert not requests.answer_again("r3")                          # never seen
    release.set()
    requests.worker.join(10)
    assert requests.busy is None
    assert published.kinds() == [("r1", "accepted"), ("r2", "refused"), ("r2", "refused")]
    assert published.events[0]["phase"] == "policy"
    assert published.events[0]["node"] == "node_under_test"


@pytest.mark.timeout(30)
def test_check_answers_instead_of_accepting_and_close_cancels_the_work(server) -> None:
    requests, published = server
    assert not requests.start("r1", lambda: None, "work",
                              lambda: ("missing", {"missing": ["run/0"]}))
    assert published.events[-1]["event"] == "missing"
    assert published.events[-1]["missing"] == ["run/0"]
    cancelled = threading.Event()

    def work() -> None:
        requests.cancel.wait(10)
        cancelled.set()
    assert requests.start("r2", work, "work")
    worker = requests.close()
    worker.join(10)
    assert cancelled.is_set() and not worker.is_alive()
    assert not requests.start("r3", lambda: None, "work")           # closing: refused
    assert published.events[-1]["reason"] == "node_under_test is shutting down"
    requests.send("r2", "progress", step=3)                         # feedback: not an answer
    assert not requests.answer_again("never")
    assert requests.answers.get("r2")["event"] == "accepted"
