"""Only the learning nodes (model_learning, policy_optimization), e.g. on a GPU workstation on
the same ROS network as the rig (rig.launch.py learning:=false there).

    ros2 launch ebmcpilco_ros learning.launch.py device:=cuda [config:=<yaml>] [namespace:=<ns>]
        [algorithm:=mc|eb]

Use the same parameter file, namespace and ROS_DOMAIN_ID as the rig side.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "ebmcpilco_ros"
NODES = ("model_learning", "policy_optimization")


def overrides(context):
    """learner.algorithm / optimizer.device from the launch arguments, where given."""
    values = {}
    for argument, parameter in (("algorithm", "learner.algorithm"),
                                ("device", "optimizer.device")):
        value = LaunchConfiguration(argument).perform(context)
        if value:
            values[parameter] = value
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
            "config", description="parameter file (ROS 2 layout), the rig side's",
            default_value=PathJoinSubstitution(
                [FindPackageShare(PACKAGE), "config", "paper_cartpole.yaml"])),
        DeclareLaunchArgument("namespace", default_value="",
                              description="the rig side's namespace"),
        DeclareLaunchArgument("algorithm", default_value="", choices=["", "mc", "eb"],
                              description="mc = MC-PILCO, eb = EB-MC-PILCO; empty: the config's"),
        DeclareLaunchArgument("device", default_value="",
                              description="torch device of the optimiser (cpu, cuda, cuda:N); "
                                          "empty: the config's"),
        OpaqueFunction(function=nodes),
    ])
