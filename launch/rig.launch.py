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
"""The whole graph on a physical cart-pole: hardware_interface in place of sim_plant.

    ros2 launch ebmcpilco_ros rig.launch.py [port:=/dev/ttyACM0] [config:=<yaml>]
        [namespace:=<ns>] [algorithm:=mc|eb] [device:=cpu|cuda|cuda:N] [learning:=true|false]
    ros2 service call /ebmcpilco/learn std_srvs/srv/Trigger

The rig side (hardware_interface, policy_execution, trial_manager) and, with learning:=true (the
default), learning.launch.py's nodes, all from one parameter file (config, by default
config/rig_example.yaml: EB-MC-PILCO). learning:=false starts the rig side only, for the learning
nodes on a workstation: `ros2 launch ebmcpilco_ros learning.launch.py` there, with the same
config, namespace and ROS_DOMAIN_ID.

hardware_interface is a lifecycle node (a launch_ros LifecycleNode) that configures (opens the
port, handshakes) and activates (enables the amplifier) by itself, retrying until it can:
hardware.autostart, true in rig_example.yaml. With autostart false it waits for
`ros2 lifecycle set /hardware_interface configure`, then `activate`.

Every node is required: if one exits, the launch stops and logs which node and why.
`ebmcpilco rig --port DEV` starts the same processes without ros2 launch.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from ebmcpilco_ros.launch_support import PACKAGE, graph_node

RIG_NODES = ("policy_execution", "trial_manager")


def nodes(context):
    return ([graph_node(context, "hardware_interface", lifecycle=True)]
            + [graph_node(context, name) for name in RIG_NODES])


def generate_launch_description():
    learning = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare(PACKAGE), "launch", "learning.launch.py"])),
        launch_arguments={name: LaunchConfiguration(name) for name in
                          ("config", "namespace", "algorithm", "device")}.items(),
        condition=IfCondition(LaunchConfiguration("learning")))
    return LaunchDescription([
        DeclareLaunchArgument(
            "config", description="parameter file (ROS 2 layout) for every node",
            default_value=PathJoinSubstitution(
                [FindPackageShare(PACKAGE), "config", "rig_example.yaml"])),
        DeclareLaunchArgument("port", default_value="",
                              description="serial device of the rig; empty: hardware.port"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of every node and its topics"),
        DeclareLaunchArgument("algorithm", default_value="", choices=["", "mc", "eb"],
                              description="mc = MC-PILCO, eb = EB-MC-PILCO; empty: the config's"),
        DeclareLaunchArgument("device", default_value="",
                              description="torch device of the optimiser; empty: the config's"),
        DeclareLaunchArgument("learning", default_value="true", choices=["true", "false"],
                              description="also start model_learning and policy_optimization "
                                          "(learning.launch.py)"),
        OpaqueFunction(function=nodes),
        learning,
    ])
