"""The whole graph on the simulated cart-pole: sim_plant in place of the rig.

    ros2 launch ebmcpilco_ros sim.launch.py [config:=<yaml>] [namespace:=<ns>]
                                            [algorithm:=mc|eb] [device:=cpu|cuda|cuda:N]
    ros2 service call /ebmcpilco/learn std_srvs/srv/Trigger

Every node gets the same parameter file; `algorithm` and `device`, when given, override
learner.algorithm and optimizer.device from it. `ebmcpilco sim` starts the same processes
without ros2 launch.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "ebmcpilco_ros"
NODES = ("sim_plant", "policy_execution", "model_learning", "policy_optimization",
         "trial_manager")


def overrides(context):
    """learner.algorithm / optimizer.device from the launch arguments, where given."""
    values = {}
    algorithm = LaunchConfiguration("algorithm").perform(context)
    device = LaunchConfiguration("device").perform(context)
    if algorithm:
        values["learner.algorithm"] = algorithm
    if device:
        values["optimizer.device"] = device
    return values


def nodes(context):
    parameters = [LaunchConfiguration("config"), overrides(context)]
    return [Node(package=PACKAGE, executable=name, name=name,
                 namespace=LaunchConfiguration("namespace"), parameters=parameters,
                 output="screen", emulate_tty=True)
            for name in NODES]


def generate_launch_description():
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
    ])
