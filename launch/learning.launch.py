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
"""The learning side of the graph: model_learning and policy_optimization.

    ros2 launch ebmcpilco_ros learning.launch.py [config:=<yaml>] [namespace:=<ns>]
        [algorithm:=mc|eb] [device:=cpu|cuda|cuda:N]

Alone, it is the workstation side of a split: the rig side runs `rig.launch.py learning:=false`
on the rig's computer, and both use the same parameter file (config, by default
config/rig_example.yaml on both sides), namespace and ROS_DOMAIN_ID. sim.launch.py and
rig.launch.py include this file for their learning nodes.

Both nodes are required: if one exits (e.g. policy_optimization with device:=cuda and no CUDA),
the launch stops and logs which node and why.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from ebmcpilco_ros.launch_support import PACKAGE, graph_node

NODES = ("model_learning", "policy_optimization")


def nodes(context):
    return [graph_node(context, name) for name in NODES]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument(
            "config", description="parameter file (ROS 2 layout): the rig side's",
            default_value=PathJoinSubstitution(
                [FindPackageShare(PACKAGE), "config", "rig_example.yaml"])),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of every node and its topics: the rig "
                                          "side's"),
        DeclareLaunchArgument("algorithm", default_value="", choices=["", "mc", "eb"],
                              description="mc = MC-PILCO, eb = EB-MC-PILCO; empty: the config's "
                                          "(give the rig side the same)"),
        DeclareLaunchArgument("device", default_value="",
                              description="torch device of the optimiser (cpu, cuda, cuda:N); "
                                          "empty: the config's"),
        OpaqueFunction(function=nodes),
    ])
