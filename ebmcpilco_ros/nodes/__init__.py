"""ROS 2 nodes: thin shells (parameters -> config dataclasses -> core calls, messages <-> arrays).

    sim_plant            simulated cart-pole (stand-in for the rig)
    policy_execution     real-time control loop, trial recording
    model_learning       dataset and GP model fit
    policy_optimization  MC-PILCO / GP-iLQR optimisation
    trial_manager        the learning loop, services, status, run directory
    hardware_interface   the physical rig (serial link) in place of sim_plant; lifecycle node
docs/NODES.md lists every topic, service, parameter and payload.
"""
import os
import signal
import sys

NODE_NAMES = ("sim_plant", "policy_execution", "model_learning", "policy_optimization",
              "trial_manager")
# The graph on a rig: the hardware interface in place of the simulated plant.
RIG_NODE_NAMES = ("hardware_interface",) + NODE_NAMES[1:]
# Every node process ends within this many seconds [s] of its first SIGINT or SIGTERM, in any
# phase (docs/NODES.md, "Stopping"); common.run_node enforces it. ros2 launch's default is to
# send SIGTERM 5 s after SIGINT, and SIGKILL 5 s later.
STOP_BOUND_S = 5.0


def _exit_while_starting(_signum: int, _frame: object) -> None:
    """SIGINT/SIGTERM before run_node takes over: nothing is set up yet (no ROS context, no
    file, no command sent), so the process ends here, cleanly, with exit code 0."""
    os._exit(0)


# A node process (ROS arguments on its command line: ros2 launch, `ebmcpilco sim`) imports torch
# for seconds (tens on a busy machine) before run_node installs its handlers; a Ctrl-C meanwhile
# would end it with a KeyboardInterrupt inside an import (exit -2, or SIGABRT in torch's).
if "--ros-args" in sys.argv:
    try:
        for _sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(_sig, _exit_while_starting)
    except ValueError:  # not the main thread: leave the handlers alone
        pass
