"""The graph's names: topics and services (relative: they resolve inside the node's namespace)
and the payload formats (one dataclass each in payloads.py; docs/NODES.md lists them)."""
from __future__ import annotations

from . import payloads

LEARN_SERVICE = "ebmcpilco/learn"
RESUME_SERVICE = "ebmcpilco/resume"
RUN_TRIAL_SERVICE = "ebmcpilco/run_trial"
ABORT_SERVICE = "ebmcpilco/abort"
STATUS_TOPIC = "ebmcpilco/status"
TRIAL_REQUEST_TOPIC = "ebmcpilco/execution/trial_request"
EXECUTION_EVENTS_TOPIC = "ebmcpilco/execution/events"
EXECUTION_ABORT_SERVICE = "ebmcpilco/execution/abort"
TRIAL_RECORDS_TOPIC = "ebmcpilco/trial_records"
FIT_REQUEST_TOPIC = "ebmcpilco/model_learning/fit_request"
MODEL_EVENTS_TOPIC = "ebmcpilco/model_learning/events"
MODEL_TOPIC = "ebmcpilco/model"
OPTIMIZATION_REQUEST_TOPIC = "ebmcpilco/policy_optimization/request"
OPTIMIZATION_EVENTS_TOPIC = "ebmcpilco/policy_optimization/events"
OPTIMIZATION_CANCEL_SERVICE = "ebmcpilco/policy_optimization/cancel"
CONTROLLER_TOPIC = "ebmcpilco/controller"
DIAGNOSTICS_TOPIC = "/diagnostics"

# -- payload formats: one dataclass each in payloads.py ------------------------------------------
TRIAL_REQUEST_FORMAT = payloads.TRIAL_REQUEST_FORMAT
FIT_REQUEST_FORMAT = payloads.FIT_REQUEST_FORMAT
OPTIMIZATION_REQUEST_FORMAT = payloads.OPTIMIZATION_REQUEST_FORMAT
EVENT_FORMAT = payloads.EVENT_FORMAT
MODEL_UPDATE_FORMAT = payloads.MODEL_UPDATE_FORMAT
CONTROLLER_UPDATE_FORMAT = payloads.CONTROLLER_UPDATE_FORMAT
STATUS_FORMAT = payloads.STATUS_FORMAT
HEARTBEAT_FORMAT = payloads.HEARTBEAT_FORMAT
# Events that answer a request (sent once per request id; a resent request gets the same one).
ANSWER_EVENTS = payloads.ANSWER_EVENTS


def heartbeat_topic(role: str) -> str:
    """Each worker node's heartbeat: ebmcpilco/<role>/heartbeat (latched JSON)."""
    return f"ebmcpilco/{role}/heartbeat"
