"""The Learner's three protocols as requests to other nodes (the trial manager's side).

    RemoteSystem        System.run           -> policy_execution (trial request, trial record)
    RemoteModelLearning add_trial / fit      -> model_learning (fit request naming the trials,
                                                resending any it reports missing; model update)
    RemoteOptimization  next_controller      -> policy_optimization (request naming the model;
                                                controller update)
Each call publishes one JSON request, waits for the node to accept or refuse it, then for the
result. Waits run in the trial manager's worker thread, never on the executor, and end early on
abort (Aborted) or when the other node leaves the graph (RemoteError).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from ..core.config import PlantConfig
from ..core.controllers import Controller, controller_from_dict
from ..core.learner import ControllerUpdate, OptimizationRequest
from ..core.model import SpeedIntegrationModel
from ..core.trial import Trial
from .names import ANSWER_EVENTS
from .codec import encode, new_id
from .requests import Aborted, NoAnswer, RemoteError, Replies
from .health import PeerWatch
from .config import NodesConfig
from .model_learning import trial_key
from .payloads import (ControllerUpdatePayload, Event, FitRequest, ModelUpdate,
                       OptimizationRequestPayload, Payload, TrialRequest)

EXECUTION, MODEL_LEARNING, OPTIMIZATION = "policy_execution", "model_learning", \
    "policy_optimization"


# What the trial manager posts to Replies for a request: the node's events (Event), its results
# as read and checked (Trial, ModelUpdate, ControllerUpdatePayload).
def is_event(*kinds: str) -> Callable[[Any], bool]:
    return lambda item: isinstance(item, Event) and item.event in kinds


def is_a(kind: type, *or_events: str) -> Callable[[Any], bool]:
    """A result of type `kind`, or one of the events `or_events` (a failure instead of it)."""
    return lambda item: isinstance(item, kind) or is_event(*or_events)(item)


def reason_of(item: Any) -> str:
    return (item.reason if isinstance(item, Event) else None) or "no reason given"


def work_ended(item: Any, what: str, link: "Link") -> Exception:
    """What a node's `failed` event instead of its result ends the run with. A failure with
    `cancelled: true` is the work stopped by an abort or by that node shutting down: nothing
    failed, so the run is aborted (and can be resumed as one). At a Ctrl-C of the whole graph
    the peer's cancellation often arrives before the trial manager's own signal does."""
    if isinstance(item, Event) and item.cancelled:
        return Aborted(f"aborted during {what}" if link.cancel.is_set()
                       else f"{what} cancelled: {reason_of(item)}")
    return RemoteError(f"{what} failed: {reason_of(item)}")


class Link:
    """The trial manager's publishers, replies, abort flag and peers, as the protocols use them."""

    def __init__(self, replies: Replies, cancel: threading.Event, names: NodesConfig,
                 publishers: dict[str, Any], peers: dict[str, PeerWatch],
                 on_phase: Callable[[str], None],
                 on_trial: Callable[[dict[str, Any]], None] | None = None,
                 working_on: Callable[[str], str | None] | None = None) -> None:
        self.replies = replies
        self.cancel = cancel
        self.names = names
        self.publishers = publishers
        self.peers = peers
        self.on_phase = on_phase
        self.on_trial = on_trial  # hears each trial request as it goes out
        # The request a node's latest heartbeat says it works on ("" idle, None unknown).
        self.working_on = working_on

    def send(self, role: str, payload: Payload) -> None:
        """Publish once someone subscribes (a late-matched subscriber would miss the message)."""
        peer = self.peers[role]
        waited = 0.0
        poll = min(0.05, self.names.request_timeout)
        while not peer.present():
            if self.cancel.wait(poll):
                raise Aborted(f"aborted before reaching {role}")
            waited += poll
            if waited >= max(self.names.peer_grace, poll):
                raise RemoteError(f"no {role} node: nobody subscribes to "
                                  f"{self.publishers[role].topic_name}")
        self.replies.expect(payload.request_id)  # type: ignore[attr-defined]
        self.publishers[role].publish(encode(payload.to_dict()))

    def wait(self, role: str, request_id: str, accept: Callable[[Any], bool],
             timeout: float, what: str, accepted: bool = False) -> Any:
        """`accepted`: the node accepted the request, so its heartbeats name it until the
        result is out; heartbeats naming another request or none for nodes.peer_grace mean the
        request is lost (the node was killed and restarted faster than it could be missed),
        ending the wait then, not at the timeout."""
        alive = self.peers[role].gone
        if accepted and self.working_on is not None:
            alive = self._lost_or_gone(role, request_id)
        return self.replies.wait(request_id, accept, timeout, f"{what} from {role}",
                                 cancel=self.cancel, alive=alive)

    def _lost_or_gone(self, role: str, request_id: str) -> Callable[[], str | None]:
        since: float | None = None

        def check() -> str | None:
            nonlocal since
            gone = self.peers[role].gone()
            if gone:
                return gone
            doing = self.working_on(role) if self.working_on is not None else None
            if doing is None or doing == request_id:
                since = None
                return None
            now = time.monotonic()
            since = now if since is None else since
            if now - since < self.names.peer_grace:
                return None
            return (f"the {role} node no longer works on {request_id}: its heartbeats say "
                    f"{doing!r} (it restarted?)" if doing else
                    f"the {role} node no longer works on {request_id}: its heartbeats say it "
                    "is idle (it restarted?)")
        return check

    def answer(self, role: str, payload: Payload) -> Event:
        """The node's answer (accepted, missing), or RemoteError with its reason. A request
        unanswered for nodes.answer_timeout is sent again (it may have gone out before the
        node's reader matched); the node answers a repeat with its first answer."""
        request_id = payload.request_id  # type: ignore[attr-defined]
        deadline = time.monotonic() + self.names.request_timeout
        while True:
            left = deadline - time.monotonic()
            try:
                item = self.wait(role, request_id, is_event(*ANSWER_EVENTS),
                                 max(0.0, min(self.names.answer_timeout, left)), "an answer")
                break
            except NoAnswer:
                if time.monotonic() >= deadline:
                    raise NoAnswer(f"no answer from {role} within "
                                   f"{self.names.request_timeout:g} s") from None
                self.publishers[role].publish(encode(payload.to_dict()))
        if item.event == "refused":
            raise RemoteError(f"{role} refused: {reason_of(item)}")
        return item


class RemoteSystem:
    """Trials on the plant through the policy execution node."""

    def __init__(self, link: Link, run_id: str, plant: PlantConfig) -> None:
        self.link = link
        self.run_id = run_id
        self.plant = plant

    def run(self, controller: Controller, kind: str, index: int) -> Trial:
        link = self.link
        request_id = new_id("trial")
        if link.on_trial is not None:
            link.on_trial({"index": index, "kind": kind, "request_id": request_id})
        link.on_phase(f"trial {index} ({kind})")
        request = TrialRequest(request_id=request_id, run_id=self.run_id, index=index, kind=kind,
                               controller=controller.to_dict())
        link.send(EXECUTION, request)
        try:
            link.answer(EXECUTION, request)
            timeout = self.plant.trial_duration + link.names.trial_timeout_margin
            item = link.wait(EXECUTION, request_id,
                             lambda m: isinstance(m, Trial) or (
                                 is_event("failed", "aborted")(m) and not m.record),
                             timeout, "the trial record")
        finally:
            link.replies.forget(request_id)
        if not isinstance(item, Trial):
            raise RemoteError(f"trial {index} failed: {reason_of(item)}")
        trial = item
        if link.cancel.is_set():
            raise Aborted(f"aborted during trial {index}")
        return trial


class RemoteModelLearning:
    """The dataset lives in the model learning node; this side remembers which trials belong to
    the run (to name them in fit requests and resend any the node lacks)."""

    def __init__(self, link: Link, run_id: str,
                 publish_record: Callable[[Trial], None]) -> None:
        self.link = link
        self.run_id = run_id
        self.publish_record = publish_record
        self.trials: dict[str, Trial] = {}
        self.fit_requests: dict[int, str] = {}  # model version -> fit request id

    def add_trial(self, trial: Trial) -> None:
        self.trials[trial_key(trial)] = trial

    def state_dict(self) -> dict[str, Any]:
        """The run's trial records, for a checkpoint: a resumed run names them in its fits
        (model_learning, if it restarted too, reports them missing and gets them again)."""
        return {"trials": [t.to_dict() for t in self.trials.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trials = {trial_key(t): t for t in (Trial.from_dict(r) for r in state["trials"])}

    def fit(self) -> SpeedIntegrationModel:
        link = self.link
        keys = list(self.trials)
        link.on_phase(f"fitting the model on {len(keys)} trials")
        for _attempt in range(link.names.resend_attempts + 1):
            request_id = new_id("fit")
            request = FitRequest(request_id=request_id, run_id=self.run_id, trials=keys)
            link.send(MODEL_LEARNING, request)
            try:
                answer = link.answer(MODEL_LEARNING, request)
                if answer.event == "missing":
                    for key in answer.missing or []:
                        if key in self.trials:
                            self.publish_record(self.trials[key])
                    continue
                item = link.wait(MODEL_LEARNING, request_id, is_a(ModelUpdate, "failed"),
                                 link.names.fit_timeout, "the model", accepted=True)
            finally:
                link.replies.forget(request_id)
            if not isinstance(item, ModelUpdate):
                raise work_ended(item, "the model fit", link)
            model = SpeedIntegrationModel.from_dict(item.model)
            self.fit_requests[model.version] = request_id
            return model
        raise RemoteError(f"model_learning still lacks trials after "
                          f"{link.names.resend_attempts} resends")


class RemoteOptimization:
    """Controllers from the policy optimisation node, for whatever phase the Learner asks.

    What the optimiser keeps across trials (the persistent policy, the last plan, its
    generators) comes back with each controller (`optimizer_state`) and goes into the trial
    manager's checkpoint; every later request carries it back, so a node that restarted
    between two requests (or a resumed run's new session) starts from the run's state, not
    from a fresh policy. Nothing travels by file.
    """

    def __init__(self, link: Link, run_id: str, seed: int, models: RemoteModelLearning) -> None:
        self.link = link
        self.run_id = run_id
        self.seed = seed
        self.models = models
        self.session = new_id("session")
        self.state: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any] | None:
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    def next_controller(self, model: SpeedIntegrationModel, request: OptimizationRequest
                        ) -> ControllerUpdate:
        link = self.link
        request_id = new_id("opt")
        link.on_phase(f"optimising ({request.phase}, iteration {request.iteration})")
        payload = OptimizationRequestPayload(
            request_id=request_id, run_id=self.run_id, seed=self.seed,
            model_version=model.version,
            model_request_id=self.models.fit_requests[model.version], session=self.session,
            request=request.to_dict(),
            optimizer_state=self.state)
        link.send(OPTIMIZATION, payload)
        try:
            link.answer(OPTIMIZATION, payload)
            item = link.wait(OPTIMIZATION, request_id, is_a(ControllerUpdatePayload, "failed"),
                             link.names.optimization_timeout, "the controller", accepted=True)
        finally:
            link.replies.forget(request_id)
        if not isinstance(item, ControllerUpdatePayload):
            raise work_ended(item, "optimisation", link)
        predicted = item.predicted_states
        self.state = item.optimizer_state
        return ControllerUpdate(
            controller=controller_from_dict(item.controller), phase=item.phase,
            opt_steps=item.opt_steps, wall_s=dict(item.wall_s), costs=list(item.costs),
            predicted_states=None if predicted is None else np.asarray(predicted, dtype=float),
            info=dict(item.info))
