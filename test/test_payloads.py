"""Typed payloads (issue 11): every `ebmcpilco.*/N` format round-trips to_dict -> JSON ->
from_dict, and from_dict refuses a missing or a mistyped field with a ValueError naming the
format and the field. Fast: no ROS processes."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import numpy as np
import pytest

from ebmcpilco_ros.core.checkpoint import CHECKPOINT_FORMAT, CheckpointError, check_checkpoint
from ebmcpilco_ros.core.controllers import (CONTROLLER_FORMAT, FeedbackPlan,
                                            FeedbackPlanController, RandomController,
                                            controller_from_dict)
from ebmcpilco_ros.core.model import INPUT_NAMES, MODEL_FORMAT, SpeedIntegrationModel
from ebmcpilco_ros.core.trial import TRIAL_FORMAT, Trial
from ebmcpilco_ros.nodes import payloads
from ebmcpilco_ros.nodes.codec import event, to_json
from ebmcpilco_ros.nodes.payloads import (ControllerUpdatePayload, Event, FitRequest, Heartbeat,
                                          InterruptedTrial, ModelUpdate,
                                          OptimizationRequestPayload, Progress, Status,
                                          TrialRequest)


def _wire(payload: dict[str, Any]) -> dict[str, Any]:
    """As it travels: JSON in a std_msgs/String (NaN as null)."""
    return json.loads(to_json(payload))


def _model() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    gp = {"name": "delta_pdot", "support": rng.normal(size=(3, len(INPUT_NAMES))).tolist(),
          "targets": rng.normal(size=3).tolist(),
          "hyperparameters": {"lengthscales": [1.0] * len(INPUT_NAMES), "signal_std": 1.0,
                              "noise_std": 0.1}}
    other = {**json.loads(json.dumps(gp)), "name": "delta_thetadot"}
    return {"format": MODEL_FORMAT, "version": 1, "dt": 0.05, "num_data": 3,
            "inputs": list(INPUT_NAMES), "gps": [gp, other]}


def _controller() -> dict[str, Any]:
    return RandomController(10.0, seed=1).to_dict()


# One instance of each node-level format, with (a required field, a mistyped value for a field).
EXAMPLES: list[tuple[payloads.Payload, str, tuple[str, Any]]] = [
    (TrialRequest(request_id="trial-1", run_id="r", index=2, kind="policy",
                  controller=_controller()), "controller", ("index", "2")),
    (FitRequest(request_id="fit-1", run_id="r", trials=["r/0/trial-1", "r/1"]), "trials",
     ("trials", ["r/0", 1])),
    (OptimizationRequestPayload(request_id="opt-1", run_id="r", seed=3, model_version=1,
                                model_request_id="fit-1", session="session-1",
                                request={"phase": "explore", "iteration": 1,
                                         "pretrain": True}),
     "session", ("request", {"phase": "policy", "iteration": 0, "pretrain": "no"})),
    (OptimizationRequestPayload(request_id="opt-2", run_id="r", seed=3, model_version=1,
                                model_request_id="fit-1", session="session-2",
                                request={"phase": "policy", "iteration": 0, "pretrain": False},
                                optimizer_state={"version": 2, "last_plan": None}),
     "model_request_id", ("optimizer_state", [1])),
    (OptimizationRequestPayload(request_id="opt-3", run_id="r", seed=3, model_version=2,
                                model_request_id="fit-2", session="session-2",
                                request={"phase": "policy", "iteration": 2, "pretrain": True,
                                         "failed_since_warm_start": 2}),
     "seed", ("request", {"phase": "policy", "iteration": 2, "pretrain": True,
                          "failed_since_warm_start": -1})),
    (OptimizationRequestPayload(request_id="opt-4", run_id="r", seed=3, model_version=2,
                                model_request_id="fit-2", session="session-2",
                                request={"phase": "policy", "iteration": 2, "pretrain": True,
                                         "failed_since_warm_start": 1,
                                         "predicted_failure": True}),
     "session", ("request", {"phase": "policy", "iteration": 2, "pretrain": True,
                             "predicted_failure": "yes"})),
    (ModelUpdate(request_id="fit-1", run_id="r", version=1, trials=["r/0"], points=[3, 3],
                 fit_s=0.5, model=_model()), "points", ("fit_s", None)),
    (ControllerUpdatePayload(request_id="opt-1", run_id="r", version=2, model_version=1,
                             phase="ilqr", opt_steps=4, wall_s={"ilqr": 1.5}, node_wall_s=1.6,
                             costs=[3.0, 2.0], predicted_states=[[0.0] * 4] * 3,
                             info={"converged": True}, optimizer_state={"version": 2},
                             controller=_controller()),
     "optimizer_state", ("predicted_states", [[0.0, None, 0.0, 0.0]])),
    (ControllerUpdatePayload(request_id="opt-2", run_id="r", version=3, model_version=1,
                             phase="policy", opt_steps=0, wall_s={}, node_wall_s=0.1, costs=[],
                             predicted_states=None, info={}, optimizer_state={},
                             controller=_controller()),
     "predicted_states", ("phase", "explore")),
    (Event(node="/policy_execution", request_id="trial-1", event="accepted", stamp=1.5,
           steps=60, period=0.05), "stamp", ("steps", 1.5)),
    (Event(node="/model_learning", request_id="fit-1", event="missing", stamp=1.5,
           missing=["r/0"]), "event", ("missing", "r/0")),
    (Event(node="/policy_optimization", request_id="opt-1", event="progress", stamp=1.5,
           stage="policy", step=3, cost=2.5, lr=0.01, dropout=0.25), "node", ("cost", None)),
    (Event(node="/policy_optimization", request_id="opt-1", event="failed", stamp=1.5,
           reason="cancelled", cancelled=True), "request_id", ("cancelled", "yes")),
    (Heartbeat(role="policy_execution", node="/policy_execution", stamp=2.0, fresh=True,
               state_age_s=0.002, request_state_timeout=0.5, running="trial-1"), "role",
     ("fresh", 1)),
    (Heartbeat(role="model_learning", node="/model_learning", stamp=2.0, busy="fit-1",
               trials=2, model_version=1), "stamp", ("trials", -1)),
    (Heartbeat(role="policy_optimization", node="/policy_optimization", stamp=2.0,
               device="cpu", backend="native"), "node", ("role", "plant")),
    (Status(event="trial_done", state="learning", ready=True, waiting_for=[], run_id="r",
            phase="trial 1 (policy)", trials=2, stamp=3.0, node="/trial_manager",
            trial={"index": 1, "success": False}), "waiting_for", ("ready", "yes")),
    (Status(event="resumed", state="learning", ready=True, waiting_for=[], run_id="r",
            phase="starting", trials=1, stamp=3.0, node="/trial_manager", previous="died",
            from_trial=1, last_completed="trial 0 (random)", cut_off_in="trial 1 (policy)",
            interrupted=[{"index": 1}], message="run r died"), "trials",
     ("from_trial", "1")),
    (Status(event="run_done", state="idle", ready=False, waiting_for=["the x node"],
            run_id="r", phase="done", trials=5, stamp=3.0, node="/trial_manager",
            report={"solved": True}, solved=True), "event", ("event", "finished")),
    (Progress(run_id="r", state="running", phase="trial 1 (policy)",
              last_completed="trial 0 (random), checkpointed", trials_completed=1,
              trial={"index": 1, "kind": "policy", "request_id": "trial-2"}, pid=12,
              host="h"), "pid", ("trials_completed", 1.0)),
    (Progress(run_id="r", state="run_done", phase="", last_completed="", trials_completed=0,
              trial=None, pid=12, host="h"), "trial", ("host", None)),
    (InterruptedTrial(index=1, kind="policy", request_id="trial-2", failed=True, record=None,
                      reason="crashed"), "reason", ("index", -1)),
]
IDS = [f"{type(p).__name__}-{i}" for i, (p, _, _) in enumerate(EXAMPLES)]


def test_every_node_format_has_an_example():
    covered = {type(p).FORMAT for p, _, _ in EXAMPLES}
    formats = {cls.FORMAT for cls in vars(payloads).values() if isinstance(cls, type)
               and issubclass(cls, payloads.Payload) and dataclasses.is_dataclass(cls)
               and cls.FORMAT.startswith("ebmcpilco.")}
    assert covered == formats


@pytest.mark.parametrize("payload, _missing, _mistyped", EXAMPLES, ids=IDS)
def test_round_trip(payload, _missing, _mistyped):
    data = payload.to_dict()
    assert data["format"] == type(payload).FORMAT
    assert type(payload).from_dict(_wire(data)) == payload
    assert all(v is not None for k, v in data.items()
               if k not in type(payload).NULLABLE), "an unset optional field is not sent"


@pytest.mark.parametrize("payload, missing, _mistyped", EXAMPLES, ids=IDS)
def test_missing_field_refused(payload, missing, _mistyped):
    data = _wire(payload.to_dict())
    del data[missing]
    with pytest.raises(ValueError, match=f"^{type(payload).FORMAT}: missing field '{missing}'$"):
        type(payload).from_dict(data)


@pytest.mark.parametrize("payload, _missing, mistyped", EXAMPLES, ids=IDS)
def test_mistyped_field_refused(payload, _missing, mistyped):
    name, value = mistyped
    data = {**_wire(payload.to_dict()), name: value}
    with pytest.raises(ValueError, match=f"^{type(payload).FORMAT}: field '{name}'"):
        type(payload).from_dict(data)


@pytest.mark.parametrize("cls", [TrialRequest, Event, Status, ModelUpdate])
def test_another_format_refused(cls):
    with pytest.raises(ValueError, match=f"expected format {cls.FORMAT}, got 'ebmcpilco.x/1'"):
        cls.from_dict({"format": "ebmcpilco.x/1"})
    with pytest.raises(ValueError, match=f"expected format {cls.FORMAT}, got 'list'"):
        cls.from_dict([])


def test_event_helper_builds_an_event_and_refuses_unknown_fields():
    ev = Event.from_dict(event("/n", "r", "progress", stage="ilqr"))
    assert (ev.event, ev.stage, ev.extras()) == ("progress", "ilqr", {"stage": "ilqr"})
    with pytest.raises(TypeError):
        event("/n", "r", "accepted", colour="red")


def test_enums_keep_the_wire_strings():
    assert payloads.ANSWER_EVENTS == ("accepted", "refused", "missing")
    ev = Event(node="n", request_id="r", event=payloads.EventKind.REFUSED, stamp=1.0,
               reason="busy")
    assert json.loads(to_json(ev.to_dict()))["event"] == "refused"
    assert Event.from_dict(ev.to_dict()).event == "refused"
    status = Status(event=payloads.StatusEvent.RUN_DONE, state="idle", ready=True,
                    waiting_for=[], run_id="r", phase="", trials=0, stamp=1.0, node="/t")
    assert '"event": "run_done"' in to_json(status.to_dict())


def test_request_id_of():
    assert payloads.request_id_of({"request_id": "a"}, TrialRequest.FORMAT) == "a"
    with pytest.raises(ValueError, match="trial_request/1: field 'request_id' must be a "
                                         "non-empty string, got None"):
        payloads.request_id_of({}, TrialRequest.FORMAT)


# -- the formats core owns ------------------------------------------------------------------------
def _trial() -> Trial:
    return Trial(states=np.zeros((4, 4)), inputs=np.ones(3), times=np.arange(4) * 0.05,
                 kind="random", index=0, meta={"run_id": "r", "request_id": "t"})


CORE: list[tuple[str, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], Any],
                 list[str], tuple[str, Any]]] = [
    (TRIAL_FORMAT, lambda: _trial().to_dict(), Trial.from_dict,
     ["states", "inputs", "times", "kind", "index", "failed", "meta"], ("failed", 0)),
    (MODEL_FORMAT, _model, SpeedIntegrationModel.from_dict,
     ["dt", "version", "num_data", "inputs", "gps"], ("num_data", 2.5)),
    (CONTROLLER_FORMAT, _controller, controller_from_dict, ["kind", "u_max", "seed"],
     ("u_max", "10")),
    (CONTROLLER_FORMAT, lambda: FeedbackPlanController(FeedbackPlan(
        X=np.zeros((3, 4)), U=np.zeros(2), K=np.zeros((2, 4)), sigma=np.zeros(2), u_max=5.0,
        seed=1, version=2)).to_dict(), controller_from_dict,
     ["X", "U", "K", "sigma", "u_max", "seed", "version"], ("K", [[0.0] * 4])),
]


@pytest.mark.parametrize("fmt, make, read, _required, _mistyped", CORE,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CORE)])
def test_core_round_trip(fmt, make, read, _required, _mistyped):
    data = _wire(make())
    assert data["format"] == fmt
    assert _wire(read(data).to_dict()) == data


@pytest.mark.parametrize("fmt, make, read, required, mistyped", CORE,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CORE)])
def test_core_refusals(fmt, make, read, required, mistyped):
    for name in required:
        data = _wire(make())
        del data[name]
        with pytest.raises(ValueError, match=f"'{name}'"):
            read(data)
    name, value = mistyped
    with pytest.raises(ValueError, match=f"'{name}'"):
        read({**_wire(make()), name: value})


def test_checkpoint_refuses_missing_and_mistyped_fields():
    good = {"format": CHECKPOINT_FORMAT, "config": {}, "trials_completed": 1,
            "learner": {"summaries": [], "opt_costs": [], "totals": {}, "rng": {}},
            "system": None, "models": {"trials": []}, "optimizer": None}
    assert check_checkpoint(json.loads(json.dumps(good))) == good
    for name in ("config", "trials_completed", "learner", "system", "models", "optimizer"):
        with pytest.raises(CheckpointError, match=f"checkpoint/1\\): field '{name}' missing"):
            check_checkpoint({k: v for k, v in good.items() if k != name})
    with pytest.raises(CheckpointError, match="field 'trials_completed' missing or not an "
                                              "integer >= 0"):
        check_checkpoint({**good, "trials_completed": True})
    with pytest.raises(CheckpointError, match="field learner.'totals'"):
        check_checkpoint({**good, "learner": {**good["learner"], "totals": []}})
