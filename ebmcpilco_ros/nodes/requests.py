"""Requests between nodes, in the vocabulary of ROS 2 actions: a request is *accepted* or
*refused* at once (an event), may send *feedback* (progress events), ends with a *result* (a
trial record, a model update, a controller update) or a *failed* event, and can be *cancelled*
(a service). The serving side answers a request sent again with its first answer (`Answers`);
the requesting side waits for what it asked for (`Replies`, in worker threads only, never the
executor) and gives up when the peer is gone (health.PeerWatch), on abort or at a timeout."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable


class Answers:
    """The answer each recent request got: a request sent again (its first copy may have gone to
    a reader that was not yet matched) gets the same answer instead of being run twice."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._answers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._answers.get(request_id)

    def record(self, request_id: str, answer: dict[str, Any]) -> None:
        with self._lock:
            self._answers[request_id] = answer
            while len(self._answers) > self.size:
                self._answers.pop(next(iter(self._answers)))


# -- waiting for replies from other nodes (worker threads only, never the executor) ---------------
class RemoteError(RuntimeError):
    """Another node refused, failed, vanished or did not answer in time."""


class NoAnswer(RemoteError):
    """Nothing came within the timeout."""


class Aborted(RuntimeError):
    """The operator aborted the run."""


class Replies:
    """Messages keyed by request id, posted by subscription callbacks, awaited by workers
    (the trial manager posts the payloads as read: events, trials, model and controller updates).

    Only ids someone `expect`s are kept, so progress notes and stray or duplicate messages for
    finished requests do not pile up.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: dict[str, list[Any]] = {}

    def expect(self, request_id: str) -> None:
        with self._cond:
            self._items.setdefault(request_id, [])

    def expecting(self, request_id: str) -> bool:
        """Whether a worker waits on `request_id` (else its results are late or stray)."""
        with self._cond:
            return request_id in self._items

    def post(self, request_id: str, item: Any) -> None:
        with self._cond:
            if request_id in self._items:
                self._items[request_id].append(item)
                self._cond.notify_all()

    def interrupt(self) -> None:
        """Wake every waiter (abort): they re-check their cancel flag."""
        with self._cond:
            self._cond.notify_all()

    def forget(self, request_id: str) -> None:
        with self._cond:
            self._items.pop(request_id, None)

    def wait(self, request_id: str, accept: Callable[[Any], bool], timeout: float,
             what: str, cancel: threading.Event | None = None,
             alive: Callable[[], str | None] | None = None, poll: float = 0.5) -> Any:
        """The first item for `request_id` that `accept`s; RemoteError on timeout or when
        `alive()` names a reason the peer is gone, Aborted when `cancel` is set."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self._items.get(request_id, []):
                    if accept(item):
                        self._items[request_id].remove(item)
                        return item
                if cancel is not None and cancel.is_set():
                    raise Aborted(f"aborted while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoAnswer(f"{what} did not come within {timeout:g} s")
                if alive is not None:
                    gone = alive()
                    if gone:
                        raise RemoteError(f"{gone} while waiting for {what}")
                self._cond.wait(min(left, poll))
