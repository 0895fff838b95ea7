"""The execution node pairs each measured sample with the plant's noise-free state of the same
stamp. The plant publishes that state just after the measured one, so at a tick it can still be
on its way: the step waits a few milliseconds for it (after its command) rather than record the
trial without true states. A real PolicyExecution node, fed over real DDS by a test publisher."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import rclpy
from sensor_msgs.msg import JointState

from ebmcpilco_ros.nodes import policy_execution
from ebmcpilco_ros.nodes.convert import state_message
from ebmcpilco_ros.nodes.policy_execution import PolicyExecution
from ebmcpilco_ros.nodes.qos import sensor_qos

from graph_helpers import isolated_domain, ros_environment

WAIT = 10.0  # [s] for DDS matching and first delivery on a busy machine


def _state(k: float) -> np.ndarray:
    return np.array([k, 0.0, 0.0, 0.0])


@pytest.fixture
def execution():
    with ros_environment(isolated_domain(12)):
        rclpy.init()
        node = PolicyExecution()
        helper = rclpy.create_node("true_state_source")
        try:
            yield node, helper
        finally:
            node.close()
            helper.destroy_node()
            node.destroy_node()
            rclpy.try_shutdown()


@pytest.mark.timeout(60)
def test_a_noise_free_state_arriving_after_its_tick_is_still_paired(execution):
    node, helper = execution
    joints = node.names.joint_names
    pub = helper.create_publisher(JointState, node.resolve_topic_name(
        node.names.true_state_topic), sensor_qos())
    assert node._true_state(1_000) is None       # nothing flowing (a rig): no wait, no state

    # Flowing: sent until the node holds one (best effort, and a new writer's first samples
    # can go before the reader matched it).
    stamp = 1_000_000_000
    deadline = time.monotonic() + WAIT
    while not node.true_states and time.monotonic() < deadline:
        pub.publish(state_message(_state(1.0), 0.0, joints, stamp))
        node._take_true_states()
        time.sleep(0.01)
    assert node.true_states, "no noise-free state reached the node"

    # The next sample's noise-free state comes 2 ms after the tick asked for it.
    late = stamp + 2_000_000
    timer = threading.Timer(policy_execution.TRUE_STATE_WAIT * 0.4, lambda: pub.publish(
        state_message(_state(2.0), 0.0, joints, late)))
    timer.start()
    try:
        found = node._true_state(late)
    finally:
        timer.join()
    assert found is not None, "a state 2 ms late was not waited for"
    assert found[0] == 2.0

    # One that never came while a newer one did: dropped, without waiting for it.
    newer = late + 4_000_000
    pub.publish(state_message(_state(3.0), 0.0, joints, newer))
    deadline = time.monotonic() + WAIT
    while node.true_states[-1][0] != newer and time.monotonic() < deadline:
        node._take_true_states()
        time.sleep(0.001)
    assert node._true_state(late + 2_000_000) is None
    assert node._true_state(newer)[0] == 3.0
