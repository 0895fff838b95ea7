# Copyright 2026 The ebmcpilco_ros authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""What the launch files (launch/*.launch.py) share, written once: a node of the graph started
from the one parameter file with the launch arguments' overrides, and required, so that its exit
ends the launch with the reason. `ebmcpilco sim` (nodes/bringup.py) ends with the same reason when a
node of its graph exits.

Only `graph_node` needs `launch` / `launch_ros` (a ROS 2 install has them, the pip wheels do not),
so it imports them itself; the rest is plain Python that the tests import anywhere.
"""
from __future__ import annotations

import signal
from typing import Any, Callable, Mapping

PACKAGE = "ebmcpilco_ros"

# What the graph loses with each node: no node is optional, so any that exits ends the launch.
LOST_WITHOUT = {
    "sim_plant": "no plant: no joint states, no trials",
    "hardware_interface": "no rig: no joint states, no trials",
    "policy_execution": "no trial can run",
    "model_learning": "no dynamics model can be learned",
    "policy_optimization": "no controller can be optimised",
    "trial_manager": "nothing runs the learning loop",
}

# Launch arguments that, when given (not empty), override a parameter of the file.
OVERRIDES = {"algorithm": "learner.algorithm", "device": "optimizer.device",
             "port": "hardware.port"}


def exit_reason(name: str, code: int | None) -> str:
    """Why the graph stops when node `name` ended with exit `code` (negative: the signal)."""
    how = f"exited with code {code}"
    if code is not None and code < 0:
        try:
            how += f" ({signal.Signals(-code).name})"
        except ValueError:
            pass
    lost = f" ({LOST_WITHOUT[name]})" if name in LOST_WITHOUT else ""
    return f"{name} {how}; the graph cannot work without it{lost}"


def parameter_overrides(arguments: Mapping[str, str]) -> dict[str, str]:
    """{parameter: value} for the override arguments given; an empty one keeps the file's."""
    return {parameter: arguments[argument] for argument, parameter in OVERRIDES.items()
            if arguments.get(argument)}


def end_launch(name: str) -> Callable[[Any, Any], list[Any] | None]:
    """on_exit of a required node: log the reason, then shut the launch down with it (launch
    itself only logs "process[...] was required"). Nothing while the launch is stopping anyway
    (Ctrl-C, another node's exit): every node then exits, and that is no news."""

    def on_exit(event: Any, context: Any) -> list[Any] | None:
        if context.is_shutdown:
            return None
        from launch.actions import LogInfo, Shutdown

        reason = exit_reason(name, event.returncode)
        return [LogInfo(msg=f"{reason}: stopping the launch"), Shutdown(reason=reason)]

    return on_exit


def graph_node(context: Any, name: str, lifecycle: bool = False) -> Any:
    """The node `name` (executable and node name alike) in the `namespace` launch argument, with
    the `config` parameter file and the override arguments on top, its output on the screen,
    required. `lifecycle`: a launch_ros LifecycleNode (its transitions are launch events; the
    node itself decides whether it configures and activates itself, hardware.autostart)."""
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import LifecycleNode, Node

    node_class = LifecycleNode if lifecycle else Node
    parameters = [LaunchConfiguration("config"),
                  parameter_overrides(context.launch_configurations)]
    return node_class(package=PACKAGE, executable=name, name=name,
                      namespace=LaunchConfiguration("namespace"), parameters=parameters,
                      output="screen", emulate_tty=True, on_exit=end_launch(name))
