"""Launch files, read statically (`launch` is not installed with the pip wheels): they name only
executables this package installs, launch files and parameter files that exist, and launch
arguments they declare; they start the graph `ebmcpilco sim` / `rig` start, the rig launch
includes the learning launch (not a copy of it) and both sides of a split read one parameter
file; hardware_interface is a lifecycle node; every node is required. launch_support's plain
parts (the reasons, the overrides) are run here; docs/ROS2_WORKSPACE_CHECK.md has the launch
files run by `ros2 launch`."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from ebmcpilco_ros import launch_support
from ebmcpilco_ros.nodes.bringup import RIG_NODES, SIM_NODES
from ebmcpilco_ros.core.config import load_config
from ebmcpilco_ros.hardware.config import load_hardware_config

from package_helpers import console_scripts, data_files, distribution

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
LAUNCH_FILES = sorted(LAUNCH.glob("*.launch.py"))
LEARNING_NODES = {"model_learning", "policy_optimization"}
LICENSE_HEADER = ("# Copyright 2026 The ebmcpilco_ros authors\n#\n"
                  '# Licensed under the Apache License, Version 2.0 (the "License");\n')


def tree_of(name: str) -> ast.Module:
    return ast.parse((LAUNCH / name).read_text())


def module_constants(tree: ast.Module) -> dict[str, object]:
    """Module-level NAME = <literal> assignments (strings, tuples of strings)."""
    out: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            out.update({t.id: value for t in node.targets if isinstance(t, ast.Name)})
    return out


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and
            getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def loops_around(tree: ast.Module, node: ast.AST) -> list[ast.For | ast.comprehension]:
    """The `for` statements and comprehension clauses whose scope holds `node`."""
    out: list[ast.For | ast.comprehension] = []
    for outer in ast.walk(tree):
        if node not in set(ast.walk(outer)) or outer is node:
            continue
        if isinstance(outer, ast.For):
            out.append(outer)
        elif isinstance(outer, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            out.extend(outer.generators)
    return out


def strings_of(tree: ast.Module, arg: ast.AST) -> set[str]:
    """The values an argument takes: a string, or a loop variable bound by a `for` (statement
    or comprehension) around it over a literal tuple or a module-level tuple constant."""
    if isinstance(arg, ast.Constant):
        return {arg.value}
    constants = module_constants(tree)
    values: set[str] = set()
    for loop in loops_around(tree, arg):
        targets = loop.target.elts if isinstance(loop.target, ast.Tuple) else [loop.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if isinstance(arg, ast.Name) and arg.id in names:
            position = names.index(arg.id)
            items = (constants[loop.iter.id] if isinstance(loop.iter, ast.Name)
                     else ast.literal_eval(loop.iter))
            for item in items:  # type: ignore[attr-defined]
                values.add(item[position] if isinstance(item, tuple) else item)
    assert values, f"cannot resolve {ast.dump(arg)} statically"
    return values


def started(name: str) -> dict[str, bool]:
    """{node: lifecycle} the file starts itself (graph_node(context, NAME, lifecycle=...))."""
    tree = tree_of(name)
    out: dict[str, bool] = {}
    for call in calls(tree, "graph_node"):
        lifecycle = keyword(call, "lifecycle")
        for node in strings_of(tree, call.args[1]):
            out[node] = bool(lifecycle is not None and ast.literal_eval(lifecycle))
    return out


def includes(name: str) -> list[tuple[str, set[str], str | None]]:
    """(included launch file, launch arguments passed, condition's launch argument or None)."""
    tree = tree_of(name)
    out = []
    for call in calls(tree, "IncludeLaunchDescription"):
        files = [c.value for c in ast.walk(call.args[0]) if isinstance(c, ast.Constant)
                 and isinstance(c.value, str) and c.value.endswith(".launch.py")]
        assert len(files) == 1, ast.dump(call)
        passed = {n for c in calls(keyword(call, "launch_arguments"), "LaunchConfiguration")
                  for n in strings_of(tree, c.args[0])}
        condition = keyword(call, "condition")
        on = None
        if condition is not None:
            (argument,) = calls(condition, "LaunchConfiguration")
            on = argument.args[0].value
        out.append((files[0], passed, on))
    return out


def declared(name: str) -> dict[str, ast.Call]:
    tree = tree_of(name)
    return {a: c for c in calls(tree, "DeclareLaunchArgument") for a in strings_of(tree, c.args[0])}


def default_config(name: str) -> str:
    """The parameter file a launch file uses when `config` is not given."""
    default = keyword(declared(name)["config"], "default_value")
    (yaml_name,) = [c.value for c in ast.walk(default) if isinstance(c, ast.Constant)
                    and str(c.value).endswith(".yaml")]
    return yaml_name


def graph(name: str, arguments: dict[str, str] | None = None) -> set[str]:
    """Every node a launch file starts, through its includes; `arguments`: values of the
    arguments includes are conditional on (default: the declared default)."""
    nodes = set(started(name))
    for included, _passed, condition in includes(name):
        if condition is not None:
            value = (arguments or {}).get(condition) or ast.literal_eval(
                keyword(declared(name)[condition], "default_value"))
            if value != "true":
                continue
        nodes |= graph(included, arguments)
    return nodes


def test_there_are_the_three_launch_files():
    assert {p.name for p in LAUNCH_FILES} == {"sim.launch.py", "rig.launch.py",
                                              "learning.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_only_what_exists(path):
    source = path.read_text()
    tree = ast.parse(source)
    executables = set(started(path.name))
    assert executables, "no graph_node(context, NAME) found"
    unknown = executables - set(console_scripts())
    assert not unknown, f"{path.name} names executables setup.py does not install: {unknown}"
    for yaml_name in re.findall(r'"([\w.-]+\.yaml)"', source):
        assert (ROOT / "config" / yaml_name).is_file(), yaml_name
    for included, passed, _condition in includes(path.name):
        assert (LAUNCH / included).is_file(), included
        # an argument the included file does not declare would be dropped without a word
        assert passed <= set(declared(included)), (included, passed - set(declared(included)))
    # Launch arguments: every LaunchConfiguration is declared, and the common ones exist
    # (graph_node reads config and namespace; the overrides algorithm and device).
    have = set(declared(path.name))
    used = {n for c in calls(tree, "LaunchConfiguration") for n in strings_of(tree, c.args[0])}
    assert used <= have, f"undeclared launch arguments: {used - have}"
    common = {"config", "namespace", "algorithm", "device"}
    assert common <= have, f"{path.name} lacks launch arguments {common - have}"
    assert "generate_launch_description" in {f.name for f in tree.body
                                             if isinstance(f, ast.FunctionDef)}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_files_carry_the_license_header(path):
    assert path.read_text().startswith(LICENSE_HEADER), path.name
    assert (ROOT / "ebmcpilco_ros" / "launch_support.py").read_text().startswith(LICENSE_HEADER)
    assert distribution().metadata.license == "Apache-2.0"


def test_the_launch_files_start_the_graphs_ebmcpilco_sim_and_rig_start():
    assert graph("sim.launch.py") == set(SIM_NODES)
    assert graph("rig.launch.py") == set(RIG_NODES)
    assert "hardware_interface" in RIG_NODES and "sim_plant" not in graph("rig.launch.py")
    assert graph("learning.launch.py") == LEARNING_NODES
    # the split: the rig side without the learning nodes, which learning.launch.py starts
    assert graph("rig.launch.py", {"learning": "false"}) == set(RIG_NODES) - LEARNING_NODES


def test_the_learning_nodes_are_written_once_and_included():
    assert set(started("learning.launch.py")) == LEARNING_NODES
    for name in ("sim.launch.py", "rig.launch.py"):
        assert not set(started(name)) & LEARNING_NODES, f"{name} copies the learning nodes"
        (include,) = includes(name)
        assert include[0] == "learning.launch.py"
        assert include[1] == {"config", "namespace", "algorithm", "device"}
    assert includes("rig.launch.py")[0][2] == "learning"  # learning:=false leaves it out
    assert includes("sim.launch.py")[0][2] is None


def test_both_sides_of_a_split_read_one_parameter_file_which_runs_eb_mc_pilco():
    assert default_config("rig.launch.py") == default_config("learning.launch.py")
    rig_config = ROOT / "config" / default_config("rig.launch.py")
    assert rig_config.name == "rig_example.yaml"
    assert load_config(rig_config).learner.algorithm == "eb"
    assert default_config("sim.launch.py") == "paper_cartpole.yaml"
    assert load_config(ROOT / "config" / "paper_cartpole.yaml").learner.algorithm == "eb"


def test_the_hardware_is_a_lifecycle_node_that_activates_itself_by_default():
    nodes = started("rig.launch.py")
    assert nodes["hardware_interface"] is True
    assert not any(lifecycle for name, lifecycle in nodes.items() if name != "hardware_interface")
    # launch_ros's LifecycleNode leaves the transitions to the node (autostart not passed), and
    # the node configures and activates itself: hardware.autostart in the rig's file
    support = ast.parse((ROOT / "ebmcpilco_ros" / "launch_support.py").read_text())
    (node_call,) = [c for c in calls(support, "node_class")]
    assert keyword(node_call, "autostart") is None
    assert load_hardware_config(ROOT / "config" / "rig_example.yaml").autostart is True


def test_every_node_is_required_and_names_what_the_graph_loses():
    support = ast.parse((ROOT / "ebmcpilco_ros" / "launch_support.py").read_text())
    (node_call,) = calls(support, "node_class")
    on_exit = keyword(node_call, "on_exit")
    assert isinstance(on_exit, ast.Call) and on_exit.func.id == "end_launch"
    assert set(launch_support.LOST_WITHOUT) == set(SIM_NODES) | set(RIG_NODES)
    assert launch_support.exit_reason("policy_optimization", 1) == (
        "policy_optimization exited with code 1; the graph cannot work without it "
        "(no controller can be optimised)")
    assert launch_support.exit_reason("sim_plant", -9).startswith(
        "sim_plant exited with code -9 (SIGKILL); the graph cannot work without it (no plant")


def test_override_arguments_given_override_the_file_and_empty_ones_do_not():
    assert launch_support.parameter_overrides(
        {"algorithm": "mc", "device": "", "port": "/dev/ttyUSB1", "namespace": "x"}) == {
        "learner.algorithm": "mc", "hardware.port": "/dev/ttyUSB1"}
    assert launch_support.parameter_overrides({}) == {}
    # the arguments declare what they override
    for name in ("sim.launch.py", "rig.launch.py", "learning.launch.py"):
        choices = keyword(declared(name)["algorithm"], "choices")
        assert set(ast.literal_eval(choices)) == {"", "mc", "eb"}
    assert "port" in declared("rig.launch.py")


def test_setup_installs_every_launch_and_parameter_file_where_ros2_launch_looks():
    """share/<package>/launch and /config, where `ros2 launch ebmcpilco_ros sim.launch.py` and
    the launch files' FindPackageShare look; the package marker ament_index needs."""
    installed = data_files()
    assert installed["share/ebmcpilco_ros/launch"] == {
        str(p.relative_to(ROOT)) for p in LAUNCH_FILES}
    assert installed["share/ebmcpilco_ros/config"] == {
        str(p.relative_to(ROOT)) for p in (ROOT / "config").glob("*.yaml")}
    assert installed["share/ebmcpilco_ros"] == {"package.xml"}
    assert installed["share/ament_index/resource_index/packages"] == {"resource/ebmcpilco_ros"}


def test_every_console_script_names_a_function_that_exists():
    """What `ros2 run ebmcpilco_ros NAME` and the launch files start: each entry point imports
    and is callable (a renamed module or main would only show on an installed workspace)."""
    scripts = console_scripts()
    assert {"ebmcpilco", *SIM_NODES, *RIG_NODES} == set(scripts)
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
