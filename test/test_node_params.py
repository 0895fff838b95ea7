"""Node parameters: every config field is a declared, described, range-checked, read-only ROS
parameter; bad values stop a node at start with a message naming the parameter."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import rclpy
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from ebmcpilco_ros.nodes.bringup import graph_environment, ros_value
from ebmcpilco_ros.core.config import SECTIONS, ConfigError
from ebmcpilco_ros.nodes.config import (NODE_SECTIONS, SimPlantConfig, build_node_section,
                                        check_sim_plant, load_node_sections)
from ebmcpilco_ros.nodes.params import command_line, declare_config, parse_override

from graph_helpers import CONFIG, isolated_domain


@pytest.fixture
def make_node():
    context = rclpy.Context()
    rclpy.init(context=context)
    nodes = []

    def make(overrides: dict | None = None):
        node = rclpy.create_node(
            "params_under_test", context=context,
            parameter_overrides=[Parameter(k, value=v) for k, v in (overrides or {}).items()])
        nodes.append(node)
        return node
    yield make
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown(context=context)


@pytest.mark.timeout(60)
def test_every_field_is_declared_with_its_range_and_description(make_node):
    node = make_node({"plant.u_max": 5, "nodes.joint_names": ["cart", "pole"]})
    config, parts = declare_config(node, list(SECTIONS), list(NODE_SECTIONS))
    for section, cls in {**SECTIONS, **NODE_SECTIONS}.items():
        for name in cls.__dataclass_fields__:
            assert node.has_parameter(f"{section}.{name}")
    assert config.plant.u_max == 5.0  # a YAML/CLI integer is accepted for a float field
    assert node.get_parameter("plant.u_max").type_ == Parameter.Type.DOUBLE
    assert parts["nodes"].joint_names == ("cart", "pole")
    [u_max] = node.describe_parameters(["plant.u_max"])
    assert u_max.description == "force limit |u| <= u_max [N]" and u_max.read_only
    assert u_max.floating_point_range[0].from_value == 0.0
    assert math.isinf(u_max.floating_point_range[0].to_value)
    assert u_max.additional_constraints == "in (0.0, inf]"
    [particles] = node.describe_parameters(["optimizer.particles"])
    assert particles.type == ParameterType.PARAMETER_INTEGER
    assert (particles.integer_range[0].from_value, particles.integer_range[0].to_value) == \
        (1, 100000)
    [dtype] = node.describe_parameters(["optimizer.dtype"])
    assert "one of 'float32', 'float64'" in dtype.additional_constraints
    [rate] = node.describe_parameters(["sim_plant.physics_rate"])
    assert rate.floating_point_range[0].to_value == 100000.0 and "RK4" in rate.description
    assert not node.set_parameters([Parameter("plant.u_max", value=3.0)])[0].successful


@pytest.mark.timeout(60)
@pytest.mark.parametrize("overrides, message", [
    ({"plant.u_max": -1.0}, "plant.u_max = -1.0: must be in (0.0, inf]"),
    ({"optimizer.particles": 0}, "optimizer.particles = 0: must be in [1, 100000]"),
    ({"optimizer.dtype": "float16"}, "optimizer.dtype = 'float16': must be one of"),
    ({"sim_plant.publish_rate": 2000.0}, "sim_plant.publish_rate = 2000.0: must be <= "
                                         "sim_plant.physics_rate"),
    ({"nodes.request_timeout": 0.0}, "nodes.request_timeout = 0.0: must be in [0.1, 3600.0]"),
    ({"plant.umax": 3.0}, "plant.umax: unknown parameter"),
    ({"execution.state_timeout": "soon"}, "execution.state_timeout = 'soon': must be a number"),
])
def test_invalid_values_are_refused_naming_the_parameter(make_node, overrides, message):
    node = make_node(overrides)
    with pytest.raises(ConfigError) as err:
        declare_config(node, list(SECTIONS), list(NODE_SECTIONS))
    assert message in str(err.value)


def test_node_sections_of_the_paper_config_and_cross_checks():
    parts = load_node_sections(CONFIG)
    assert parts["sim_plant"].physics_rate == 1000.0 and parts["sim_plant"].publish_rate == 500.0
    assert parts["nodes"].joint_names == ("slider_to_cart", "cart_to_pendulum")
    with pytest.raises(ConfigError, match="sim_plant.colour: unknown parameter"):
        build_node_section("sim_plant", {"colour": "red"})
    from ebmcpilco_ros.core.config import PlantConfig
    with pytest.raises(ConfigError, match="command_watchdog_timeout = 0.05: must be > "
                                          "plant.control_period"):
        check_sim_plant(PlantConfig(), SimPlantConfig(command_watchdog_timeout=0.05))


def test_parameter_values_are_written_as_ros_parses_them():
    assert ros_value(50) == "50" and ros_value(0.5) == "0.5" and ros_value(True) == "true"
    assert ros_value("cpu") == "cpu" and ros_value("1.0") == "'1.0'" and ros_value("") == "''"
    assert ros_value(["a", "b"]) == "[a, b]"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("node, parameter, value, message", [
    ("sim_plant", "plant.u_max", "-1.0", "plant.u_max = -1.0: must be in (0.0, inf]"),
    ("policy_optimization", "optimizer.device", "tpu", "optimizer.device = 'tpu': must be"),
    ("policy_execution", "execution.state_timeout", "0.0",
     "execution.state_timeout = 0.0: must be in (0.0, 10.0]"),
    # rcl itself drops an override whose type differs from the file's value: not silently here
    ("sim_plant", "plant.u_max", "abc", "plant.u_max = 'abc': must be a number"),
    ("model_learning", "model_learning:model.fit_iterations", "1.5",
     "model.fit_iterations = 1.5: must be an integer"),
])
def test_a_node_with_an_invalid_parameter_exits_with_the_message(node, parameter, value, message):
    env = graph_environment(domain_id=isolated_domain(4))
    done = subprocess.run([sys.executable, "-m", f"ebmcpilco_ros.nodes.{node}", "--ros-args",
                           "--params-file", str(CONFIG), "-p", f"{parameter}:={value}"],
                          env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 2, done.stderr
    assert f"{node}: configuration error: {message}" in done.stderr


@pytest.mark.timeout(120)
def test_a_missing_params_file_exits_with_the_message():
    env = graph_environment(domain_id=isolated_domain(4))
    done = subprocess.run([sys.executable, "-m", "ebmcpilco_ros.nodes.sim_plant", "--ros-args",
                           "--params-file", "/nonexistent/params.yaml"],
                          env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 2, done.stderr
    assert ("sim_plant: configuration error: --params-file /nonexistent/params.yaml: no such file"
            in done.stderr)
    assert "Traceback" not in done.stderr


def test_command_line_parameters_are_read_as_rcl_reads_them():
    line = command_line(["prog", "--ros-args", "--params-file", "a.yaml", "-p", "plant.u_max:=8",
                         "--param", "sim_plant:plant.friction:=0.2", "-r", "__ns:=/x", "--",
                         "-p", "ignored:=1", "--ros-args", "--params-file", "b.yaml"])
    assert line.params_files == ("a.yaml", "b.yaml")
    assert line.overrides == ((None, "plant.u_max", "8"), ("sim_plant", "plant.friction", "0.2"))
    assert [parse_override(v) for v in ("8", "1e-3", "true", "cpu", "'1.0'", "[1.0, 2.0]")] == \
        [8, 1e-3, True, "cpu", "1.0", [1.0, 2.0]]
