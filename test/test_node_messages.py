"""Messages <-> arrays, JSON payloads, reply matching and the run directory (no processes)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from std_msgs.msg import String

from ebmcpilco_ros.nodes.codec import decode, encode, to_json
from ebmcpilco_ros.nodes.requests import Aborted, Answers, NoAnswer, Replies
from ebmcpilco_ros.nodes.convert import command_message, state_from_message, state_message
from ebmcpilco_ros.nodes.rundir import RunDirectory

JOINTS = ("slider_to_cart", "cart_to_pendulum")


def test_joint_state_round_trip_in_any_joint_order():
    x = np.array([0.1, -0.2, 3.0, 0.4])
    msg = state_message(x, 2.5, JOINTS, stamp_ns=1_500_000_001)
    assert list(msg.position) == [0.1, 3.0] and list(msg.velocity) == [-0.2, 0.4]
    assert list(msg.effort) == [2.5, 0.0]
    back, stamp = state_from_message(msg, JOINTS)
    assert np.array_equal(back, x) and stamp == 1_500_000_001
    msg.name = list(reversed(msg.name))
    msg.position, msg.velocity = list(reversed(msg.position)), list(reversed(msg.velocity))
    assert np.array_equal(state_from_message(msg, JOINTS)[0], x)
    msg.name = ["slider_to_cart", "elbow"]
    with pytest.raises(ValueError, match="cart_to_pendulum"):
        state_from_message(msg, JOINTS)
    assert list(command_message(-3.0).data) == [-3.0]


def test_payloads_are_versioned_json_and_non_finite_values_become_null():
    payload = {"format": "ebmcpilco.test/1", "x": np.array([1.0, np.nan]), "n": np.int64(3),
               "inf": float("inf")}
    data = json.loads(to_json(payload))
    assert data == {"format": "ebmcpilco.test/1", "x": [1.0, None], "n": 3, "inf": None}
    assert decode(encode(payload), "ebmcpilco.test/1")["n"] == 3
    with pytest.raises(ValueError, match="expected format ebmcpilco.other/1"):
        decode(encode(payload), "ebmcpilco.other/1")
    with pytest.raises(ValueError, match="not JSON"):
        decode(String(data="{"), "ebmcpilco.test/1")


@pytest.mark.timeout(30)
def test_replies_match_by_request_id_and_end_on_timeout_or_abort():
    replies = Replies()
    replies.post("r1", {"event": "accepted"})  # not expected: dropped
    replies.expect("r1")
    threading.Timer(0.05, replies.post, ("r1", {"event": "accepted"})).start()
    got = replies.wait("r1", lambda m: m["event"] == "accepted", 10.0, "an answer")
    assert got == {"event": "accepted"}
    with pytest.raises(NoAnswer, match="an answer did not come within 0.05 s"):
        replies.wait("r1", lambda m: True, 0.05, "an answer")
    cancel = threading.Event()
    threading.Timer(0.05, lambda: (cancel.set(), replies.interrupt())).start()
    with pytest.raises(Aborted):
        replies.wait("r1", lambda m: True, 10.0, "an answer", cancel=cancel)
    with pytest.raises(Exception, match="the node is gone"):
        replies.wait("r1", lambda m: True, 10.0, "an answer", alive=lambda: "the node is gone")


def test_answers_remember_a_bounded_number_of_requests():
    answers = Answers(2)
    for i in range(3):
        answers.record(f"r{i}", {"event": "accepted", "i": i})
    assert answers.get("r0") is None and answers.get("r2")["i"] == 2


def test_run_directory_writes_atomically_and_logs_lines(tmp_path):
    run = RunDirectory(tmp_path, "run-1")
    path = run.write_json("trials/trial_000.json", {"format": "ebmcpilco.trial/1", "v": 1})
    run.write_json("trials/trial_000.json", {"format": "ebmcpilco.trial/1", "v": 2})
    assert json.loads(path.read_text())["v"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["trial_000.json"]  # no temporaries left
    run.log({"event": "a"})
    run.log({"event": "b"})
    lines = (tmp_path / "run-1" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["a", "b"]
