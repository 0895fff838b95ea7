"""Requests between nodes, in the vocabulary of ROS 2 actions: a request is *accepted* or
*refused* at once (an event), may send *feedback* (progress events), ends with a *result* (a
trial record, a model update, a controller update) or a *failed* event, and can be *cancelled*
(a service). The serving side (`RequestServer`) answers at once, a request sent again with its
first answer (`Answers`), and works on one request at a time; the requesting side waits for
what it asked for (`Replies`, in worker threads only, never the executor) and gives up when the
peer is gone (health.PeerWatch), on abort or at a timeout."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .codec import encode, event
from .names import ANSWER_EVENTS


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


# -- the serving side ----------------------------------------------------------------------------
Answer = tuple[str, dict[str, Any]]  # (event kind, its fields): an answer instead of accepting


class RequestServer:
    """The serving side of a node's requests, one at a time, each worked on in a thread.

    accept / refuse: `start` answers at once: refused while the node is closing or busy (or
    what `check` answers instead, e.g. model_learning's `missing`), else `accepted`, with the
    worker started under the lock so that `close` joins whatever runs. feedback: `send(...,
    "progress", ...)`. result: the node publishes it on its result topic, or `send(...,
    "failed", ...)`. cancel: `cancel` is the flag the work checks (the node's cancel service
    sets it, and `close`). A request sent again (its first copy may have reached a reader not
    yet matched) gets its first answer (`answer_again`), never a second run.
    """

    def __init__(self, node_name: str, publish: Callable[[Any], None], depth: int,
                 busy_reason: Callable[[str], str]) -> None:
        self.node_name = node_name
        self._publish = publish           # a publisher's publish: takes std_msgs/String
        self.answers = Answers(depth)
        self.busy_reason = busy_reason    # the refusal while busy with request <id>
        self.lock = threading.Lock()
        self.busy: str | None = None      # the request worked on
        self.closing = False
        self.cancel = threading.Event()   # abort or shutdown: the work checks it
        self.worker: threading.Thread | None = None

    def send(self, request_id: str, kind: str, **fields: Any) -> None:
        """An event about `request_id`; an answer (accepted, refused, missing, failed, ...)
        is remembered for a request sent again."""
        payload = event(self.node_name, request_id, kind, **fields)
        if kind in ANSWER_EVENTS:
            self.answers.record(request_id, payload)
        self._publish(encode(payload))

    def answer_again(self, request_id: str) -> bool:
        """A request answered before gets the same answer again (True); False if new."""
        answered = self.answers.get(request_id)
        if answered is None:
            return False
        self._publish(encode(answered))
        return True

    def start(self, request_id: str, work: Callable[[], None], thread_name: str,
              check: Callable[[], Answer | None] | None = None, **accepted: Any) -> bool:
        """Accept `request_id` and run `work` in a thread (True), or answer it otherwise:
        refused when closing or busy, else what `check` (asked under the lock) answers."""
        with self.lock:
            answer: Answer | None = None
            if self.closing:
                answer = ("refused", {"reason": f"{self.node_name} is shutting down"})
            elif self.busy is not None:
                answer = ("refused", {"reason": self.busy_reason(self.busy)})
            elif check is not None:
                answer = check()
            if answer is not None:
                kind, fields = answer
                self.send(request_id, kind, **fields)
                return False
            self.busy = request_id
            self.cancel.clear()
            self.send(request_id, "accepted", **accepted)
            self.worker = threading.Thread(target=self._work, args=(work,), name=thread_name,
                                           daemon=True)
            self.worker.start()
            return True

    def _work(self, work: Callable[[], None]) -> None:
        try:
            work()
        finally:
            with self.lock:
                self.busy = None

    def close(self) -> threading.Thread | None:
        """Refuse new requests and cancel the running one; the worker, for the node to join."""
        with self.lock:
            self.closing = True
            worker = self.worker
        self.cancel.set()
        return worker
