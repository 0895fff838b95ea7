"""`ebmcpilco sim`/`rig` start-up decisions that do not need a running graph."""
from typing import Any, Callable

from ebmcpilco_ros.nodes.bringup import start_learning


class _Client:
    """Answers like GraphClient: a call result, and the status topic's latest message."""

    def __init__(self, answer: tuple[bool, str], status: dict[str, Any] | None) -> None:
        self.answer, self.status, self.calls = answer, status, []

    def call(self, service: str, timeout: float = 10.0) -> tuple[bool, str]:
        self.calls.append(service)
        return self.answer

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool],
                    timeout: float) -> dict[str, Any] | None:
        return self.status if self.status is not None and predicate(self.status) else None


LOST = (False, "service /ebmcpilco/learn did not answer within 10.0 s")


def test_a_lost_learn_answer_counts_as_started_only_when_the_status_shows_the_run():
    ok, message = start_learning(_Client(LOST, {"state": "learning", "run_id": "r7"}))
    assert ok and "run r7" in message and "answer was lost" in message
    assert start_learning(_Client(LOST, {"state": "idle", "run_id": None})) == LOST
    assert start_learning(_Client(LOST, None)) == LOST


def test_a_refusal_is_not_second_guessed():
    refused = (False, "not ready: waiting for policy_execution")
    client = _Client(refused, {"state": "learning", "run_id": "old"})
    assert start_learning(client) == refused and client.calls == ["learn"]
