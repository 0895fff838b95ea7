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
"""The whole graph on the simulated cart-pole: sim_plant in place of the rig.

    ros2 launch ebmcpilco_ros sim.launch.py [config:=<yaml>] [namespace:=<ns>]
                                            [algorithm:=mc|eb] [device:=cpu|cuda|cuda:N]
    ros2 service call /ebmcpilco/learn std_srvs/srv/Trigger

sim_plant, policy_execution, trial_manager and learning.launch.py's nodes, all from one parameter
file (config, by default config/paper_cartpole.yaml); `algorithm` and `device`, when given,
override learner.algorithm and optimizer.device from it. Every node is required: if one exits,
the launch stops and logs which node and why. `ebmcpilco sim` starts the same processes without
ros2 launch.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from ebmcpilco_ros.launch_support import PACKAGE, graph_node

NODES = ("sim_plant", "policy_execution", "trial_manager")


def nodes(context):
    return [graph_node(context, name) for name in NODES]


def generate_launch_description():
    learning = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare(PACKAGE), "launch", "learning.launch.py"])),
        launch_arguments={name: LaunchConfiguration(name) for name in
                          ("config", "namespace", "algorithm", "device")}.items())
    return LaunchDescription([
        DeclareLaunchArgument(
            "config", description="parameter file (ROS 2 layout) for every node",
            default_value=PathJoinSubstitution(
                [FindPackageShare(PACKAGE), "config", "paper_cartpole.yaml"])),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of every node and its topics"),
        DeclareLaunchArgument("algorithm", default_value="", choices=["", "mc", "eb"],
                              description="mc = MC-PILCO, eb = EB-MC-PILCO; empty: the config's"),
        DeclareLaunchArgument("device", default_value="",
                              description="torch device of the optimiser (cpu, cuda, cuda:N); "
                                          "empty: the config's"),
        OpaqueFunction(function=nodes),
        learning,
    ])
