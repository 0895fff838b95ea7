"""Messages <-> arrays: JointState <-> x = [p, pdot, theta, thetadot], force <-> command."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from ..core.cartpole import P, PDOT, STATE_DIM, THETA, THETADOT

NANOSECONDS = 1_000_000_000


def state_message(x: np.ndarray, force: float, joint_names: Sequence[str],
                  stamp_ns: int) -> JointState:
    """Positions [p m, theta rad], velocities, efforts [force on the cart N, 0 on the pole]."""
    msg = JointState()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), NANOSECONDS)
    msg.name = list(joint_names)
    msg.position = [float(x[P]), float(x[THETA])]
    msg.velocity = [float(x[PDOT]), float(x[THETADOT])]
    msg.effort = [float(force), 0.0]
    return msg


def state_from_message(msg: JointState, joint_names: Sequence[str]) -> tuple[np.ndarray, int]:
    """(x, stamp in ns); ValueError if a joint is missing or a value is not there."""
    cart, pole = joint_names[0], joint_names[1]
    names = list(msg.name)
    try:
        i, j = names.index(cart), names.index(pole)
        x = np.empty(STATE_DIM)
        x[P], x[PDOT] = msg.position[i], msg.velocity[i]
        x[THETA], x[THETADOT] = msg.position[j], msg.velocity[j]
    except (ValueError, IndexError) as exc:
        raise ValueError(f"joint state lacks {cart!r}/{pole!r} positions and velocities "
                         f"(names {names})") from exc
    if not np.all(np.isfinite(x)):
        raise ValueError("joint state is not finite")
    stamp = msg.header.stamp.sec * NANOSECONDS + msg.header.stamp.nanosec
    return x, stamp


def effort_from_message(msg: JointState, joint_names: Sequence[str]) -> float | None:
    """The force on the cart the plant reports applying [N], or None where it reports none."""
    names = list(msg.name)
    try:
        force = float(msg.effort[names.index(joint_names[0])])
    except (ValueError, IndexError):
        return None
    return force if math.isfinite(force) else None


def command_message(force: float) -> Float64MultiArray:
    """The ros2_control forward-command convention: one element, force in N."""
    return Float64MultiArray(data=[float(force)])
