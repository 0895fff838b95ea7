"""The whole graph on a physical cart-pole: the hardware_interface node in place of sim_plant.

    ros2 launch ebmcpilco_ros rig.launch.py [port:=/dev/ttyACM0] [config:=<yaml>]
        [namespace:=<ns>] [algorithm:=mc|eb] [device:=cpu|cuda|cuda:N] [learning:=true|false]
    ros2 service call /ebmcpilco/learn std_srvs/srv/Trigger

learning:=false starts only the rig side (hardware_interface, policy_execution, trial_manager),
for model learning and optimisation on a workstation (learning.launch.py there, same
namespace and ROS_DOMAIN_ID).

hardware_interface is a lifecycle node that configures (opens the port, handshakes) and
activates (enables the amplifier) by itself, retrying until it can: hardware.autostart, true in
rig_example.yaml. With autostart false it waits for `ros2 lifecycle set /hardware_interface
configure`, then `activate`. `ebmcpilco rig --port DEV` starts the same processes without
ros2 launch.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "ebmcpilco_ros"
RIG_NODES = ("hardware_interface", "policy_execution", "trial_manager")
LEARNING_NODES = ("model_learning", "policy_optimization")


def overrides(context):
    """Launch arguments that override the parameter file, where given."""
    values = {}
    for argument, parameter in (("algorithm", "learner.algorithm"),
                                ("device", "optimizer.device"), ("port", "hardware.port")):
        value = LaunchConfiguration(argument).perform(context)
        if value:
            values[parameter] = value
    return values


def nodes(context):
    parameters = [LaunchConfiguration("config"), overrides(context)]
    namespace = LaunchConfiguration("namespace")
    rig = [Node(package=PACKAGE, executable=name, name=name, namespace=namespace,
                parameters=parameters, output="screen", emulate_tty=True)
           for name in RIG_NODES]
    learning = [Node(package=PACKAGE, executable=name, name=name, namespace=namespace,
                     parameters=parameters, output="screen", emulate_tty=True,
                     condition=IfCondition(LaunchConfiguration("learning")))
                for name in LEARNING_NODES]
    return rig + learning


def generate_launch_description():
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
                              description="also start model_learning and policy_optimization"),
        OpaqueFunction(function=nodes),
    ])
