"""The operator's verbs on a running node graph, for a shell with the pip wheels and no `ros2`.

    ebmcpilco call learn|run_trial|abort|resume|reset|estop    one std_srvs/Trigger call
    ebmcpilco status [--follow [--until-end]]                  ebmcpilco/status as lines

They find the graph as `ros2` would: ROS_DOMAIN_ID, the namespace given, and the same discovery
defaults the graph's nodes get (bringup.graph_environment). A call prints the answer's message
and exits 0 when it succeeded, 1 when the node refused (the message says why), 3 when no
service answered. An answer can be lost: Fast DDS drops a response to a reader the server has
not matched yet (a new process calling at once is the usual case). So the client's readers are
made before its status reader and, for the trial manager's services, the call waits for the
latched status first (the trial manager then knows the response readers, announced before it);
an answer lost all the same is checked on the status topic (learn, resume, run_trial show
their start there) or the call is repeated: a request the server acted on shows on the status
topic, and abort, reset and estop may be repeated.
"""
from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from typing import Any, Callable, TextIO

from .nodes.bringup import GraphClient
from .nodes.names import STATUS_TOPIC
from .progress import StatusView, end_code, ended, summary_line

TRIAL_MANAGER_VERBS = ("learn", "run_trial", "abort", "resume")
PLANT_VERBS = ("reset", "estop")
VERBS = TRIAL_MANAGER_VERBS + PLANT_VERBS

# Exit codes of `ebmcpilco call` and `ebmcpilco status` (2: a usage error, as argparse's).
OK, REFUSED, UNREACHED = 0, 1, 3

# What a verb's effect looks like on the status topic (published before the answer is sent).
EFFECTS = {"learn": ("started_learning",), "resume": ("started_learning",),
           "run_trial": ("started_running_trial",)}
EFFECT_WAIT = 5.0     # [s] for a lost answer's effect to show on the status topic
ANSWER_WAIT = 5.0     # [s] per attempt; the trial manager and the e-stop answer at once
ATTEMPTS = 3          # calls of one verb at most (answers lost)
QUIET = 0.3           # [s] without a message: the latched history has arrived


def where(namespace: str) -> str:
    """Where the verbs looked, for a message that found nothing."""
    return (f"ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}"
            + (f", namespace {namespace}" if namespace else ""))


def service_names() -> dict[str, str]:
    """The services the verbs call, relative to the namespace (the plant's are the defaults of
    nodes.reset_service and nodes.estop_service)."""
    from .nodes.names import ABORT_SERVICE, LEARN_SERVICE, RESUME_SERVICE, RUN_TRIAL_SERVICE
    from .nodes.config import build_node_section

    nodes = build_node_section("nodes", None)
    return {"learn": LEARN_SERVICE, "run_trial": RUN_TRIAL_SERVICE, "abort": ABORT_SERVICE,
            "resume": RESUME_SERVICE, "reset": nodes.reset_service,
            "estop": nodes.estop_service}


def _client(namespace: str, services: dict[str, str] | None = None) -> GraphClient:
    """A client in this process: its DDS settings must be the nodes' (the discovery range
    above all), which `ebmcpilco call` and `status` set before calling here."""
    return GraphClient(namespace=namespace, name=f"ebmcpilco_shell_{os.getpid()}",
                       status_depth=50, services=services)


def _drain(client: GraphClient) -> None:
    while True:
        try:
            client.statuses.get_nowait()
        except queue.Empty:
            return


def _effect(client: GraphClient, verb: str, since: float) -> dict[str, Any] | None:
    """A status published since `since` that shows `verb` took effect."""
    deadline = time.monotonic() + EFFECT_WAIT
    while verb in EFFECTS and time.monotonic() < deadline:
        try:
            status = client.statuses.get(timeout=min(0.5, deadline - time.monotonic()))
        except queue.Empty:
            continue
        if status.get("event") in EFFECTS[verb] and float(status.get("stamp", 0)) >= since:
            return status
    return None


def _attempt(client: GraphClient, verb: str, wait: float) -> tuple[bool, str] | None:
    """One call: (success, message), or None when no answer came within `wait`."""
    from std_srvs.srv import Trigger

    done = threading.Event()
    future = client.clients[verb].call_async(Trigger.Request())
    future.add_done_callback(lambda _f: done.set())
    if not done.wait(wait) or future.result() is None:
        client.clients[verb].remove_pending_request(future)
        return None
    return bool(future.result().success), str(future.result().message)


def call(verb: str, namespace: str = "", timeout: float = 30.0, service: str | None = None,
         out: Callable[[str], None] = print,
         err: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> int:
    """`ebmcpilco call VERB`: OK, REFUSED or UNREACHED (see the module's docstring)."""
    name = service or service_names()[verb]
    deadline = time.monotonic() + timeout
    client = _client(namespace, {verb: name})
    try:
        srv = client.clients[verb]
        resolved = client.node.resolve_service_name(name)
        if verb in TRIAL_MANAGER_VERBS and client.wait_status(lambda _s: True, timeout) is None:
            err(f"no trial manager: nothing on {client.node.resolve_topic_name(STATUS_TOPIC)} "
                f"within {timeout:g} s ({where(namespace)}); is the graph up (`ebmcpilco up`)?")
            return UNREACHED
        if not srv.wait_for_service(timeout_sec=max(0.0, deadline - time.monotonic())):
            err(f"no service {resolved} within {timeout:g} s ({where(namespace)})"
                + ("; only a rig's hardware_interface has one" if verb == "estop" else ""))
            return UNREACHED
        for _ in range(ATTEMPTS):
            _drain(client)
            sent = time.time()
            left = deadline - time.monotonic()
            answer = _attempt(client, verb, left if verb == "reset" else min(ANSWER_WAIT, left))
            if answer is not None:
                out(answer[1])
                return OK if answer[0] else REFUSED
            effect = _effect(client, verb, sent - 1.0)
            if effect is not None:
                out(f"{verb}: its answer was lost; the status topic shows it took effect "
                    f"({effect['event']}, run {effect.get('run_id')})")
                return OK
            if time.monotonic() >= deadline:
                break
        err(f"{resolved} did not answer ({where(namespace)})")
        return UNREACHED
    finally:
        client.close()


def _latest(client: GraphClient, timeout: float) -> dict[str, Any] | None:
    """The newest status of the latched history (which arrives as a burst), or None."""
    if client.wait_status(lambda _s: True, timeout) is None:
        return None
    newest: dict[str, Any] | None = None
    while True:
        try:
            status = client.statuses.get(timeout=QUIET)
        except queue.Empty:
            return newest
        if newest is None or float(status.get("stamp", 0)) >= float(newest.get("stamp", 0)):
            newest = status


def status(namespace: str = "", timeout: float = 10.0, as_json: bool = False,
           out: Callable[[str], None] = print,
           err: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> int:
    """`ebmcpilco status`: the trial manager's latest status, OK, or UNREACHED."""
    client = _client(namespace)
    try:
        latest = _latest(client, timeout)
        topic = client.node.resolve_topic_name(STATUS_TOPIC)
    finally:
        client.close()
    if latest is None:
        err(f"no status on {topic} within {timeout:g} s ({where(namespace)}); is the graph up "
            f"(`ebmcpilco up`)?")
        return UNREACHED
    out(json.dumps(latest) if as_json else summary_line(latest))
    return OK


def follow(namespace: str = "", until_end: bool = False, timeout: float | None = None,
           as_json: bool = False, stream: TextIO | None = None) -> int:
    """`ebmcpilco status --follow`: a line per status event from now on (the latest one
    before first, as `now: ...`), a live bar on a terminal. Ends at Ctrl-C (0; 130 with
    `until_end`), with `until_end` when a run or a run_trial trial ends (0 solved or the trial
    ran, 1 otherwise), or after `timeout` seconds (UNREACHED)."""
    stream = stream if stream is not None else sys.stdout
    view = StatusView(stream=stream, all_events=True, live=False if as_json else None)
    client = _client(namespace)
    started = time.time()
    deadline = None if timeout is None else time.monotonic() + timeout
    history: dict[str, Any] | None = None
    caught_up = False
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                status = client.statuses.get(timeout=QUIET)
            except queue.Empty:
                if not caught_up and history is not None:
                    _now(view, history, as_json)
                caught_up = caught_up or history is not None
                view.tick()
                continue
            if float(status.get("stamp", 0)) < started:   # the latched history
                if not caught_up:
                    history = status
                continue
            if not caught_up and history is not None:
                _now(view, history, as_json)
            caught_up = True
            if as_json:
                view.line(json.dumps(status))
            else:
                view.handle(status)
            if until_end and ended(status):
                view.close()
                return end_code(status)
        view.close()
        if not until_end:
            return OK
        print(f"ebmcpilco status: no run ended within {timeout:g} s", file=sys.stderr)
        return UNREACHED
    except KeyboardInterrupt:
        view.close()
        return 130 if until_end else OK
    finally:
        view.close()
        client.close()


def _now(view: StatusView, latest: dict[str, Any], as_json: bool) -> None:
    """The state when following began: the newest status of the latched history."""
    view.line(json.dumps(latest) if as_json else "now: " + summary_line(latest))
