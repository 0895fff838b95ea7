"""Launch files, read statically (`launch` is not installed with the pip wheels): they name only
executables this package installs, parameter files that exist, and launch arguments they
declare."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
LAUNCH_FILES = sorted(LAUNCH.glob("*.launch.py"))


def console_scripts() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    scripts: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    scripts |= {ast.literal_eval(e).split("=")[0].strip() for e in value.elts}
    return scripts


def module_constants(tree: ast.AST) -> dict[str, object]:
    """Module-level NAME = <literal> assignments (strings, tuples of strings)."""
    out: dict[str, object] = {}
    for node in tree.body:  # type: ignore[attr-defined]
        if isinstance(node, ast.Assign):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            out.update({t.id: value for t in node.targets if isinstance(t, ast.Name)})
    return out


def literal(node: ast.AST, constants: dict[str, object]) -> object:
    return constants[node.id] if isinstance(node, ast.Name) else ast.literal_eval(node)


def executables_of(tree: ast.AST) -> set[str]:
    """The Node(executable=...) names, directly or through the tuple a comprehension iterates."""
    constants = module_constants(tree)
    names: set[str] = set()
    for call in calls(tree, "Node"):
        keywords = {k.arg: k.value for k in call.keywords}
        assert literal(keywords["package"], constants) == "ebmcpilco_ros"
        value = keywords["executable"]
        if isinstance(value, ast.Constant):
            names.add(value.value)
        else:
            for comp in (n for n in ast.walk(tree) if isinstance(n, ast.comprehension)):
                if isinstance(comp.iter, ast.Name) and comp.iter.id in constants:
                    names |= set(constants[comp.iter.id])  # type: ignore[arg-type]
    return names


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and
            getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def first_strings(tree: ast.AST, call: ast.Call) -> set[str]:
    """The values a call's first argument takes: a string, or a loop variable bound by
    `for a, b in (("x", ...), ...)` over literal tuples."""
    arg = call.args[0]
    if isinstance(arg, ast.Constant):
        return {arg.value}
    values: set[str] = set()
    for loop in (n for n in ast.walk(tree) if isinstance(n, ast.For)):
        targets = loop.target.elts if isinstance(loop.target, ast.Tuple) else [loop.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if isinstance(arg, ast.Name) and arg.id in names:
            position = names.index(arg.id)
            for item in ast.literal_eval(loop.iter):
                values.add(item[position] if isinstance(item, tuple) else item)
    assert values, f"cannot resolve {ast.dump(arg)} statically"
    return values


def test_there_are_the_three_launch_files():
    assert {p.name for p in LAUNCH_FILES} == {"sim.launch.py", "rig.launch.py",
                                              "learning.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_only_what_exists(path):
    source = path.read_text()
    tree = ast.parse(source)
    scripts = console_scripts()
    executables = executables_of(tree)
    assert executables, "no Node(executable=...) found"
    unknown = executables - scripts
    assert not unknown, f"{path.name} names executables setup.py does not install: {unknown}"
    # Parameter files: every config/*.yaml it mentions exists.
    for yaml_name in re.findall(r'"([\w.-]+\.yaml)"', source):
        assert (ROOT / "config" / yaml_name).is_file(), yaml_name
    # Launch arguments: every LaunchConfiguration is declared, and the common ones exist.
    declared = set().union(*(first_strings(tree, c) for c in calls(tree, "DeclareLaunchArgument")))
    used = set().union(*(first_strings(tree, c) for c in calls(tree, "LaunchConfiguration")))
    assert used <= declared, f"undeclared launch arguments: {used - declared}"
    common = {"config", "namespace", "algorithm", "device"}
    assert common <= declared, f"{path.name} lacks launch arguments {common - declared}"
    assert "generate_launch_description" in {f.name for f in tree.body
                                             if isinstance(f, ast.FunctionDef)}


def test_rig_launch_uses_the_hardware_node_and_the_rig_config():
    rig = executables_of(ast.parse((LAUNCH / "rig.launch.py").read_text()))
    assert "hardware_interface" in rig and "sim_plant" not in rig
    assert "rig_example.yaml" in (LAUNCH / "rig.launch.py").read_text()
    assert executables_of(ast.parse((LAUNCH / "sim.launch.py").read_text())) >= {"sim_plant"}
    learning = executables_of(ast.parse((LAUNCH / "learning.launch.py").read_text()))
    assert learning == {"model_learning", "policy_optimization"}


def test_setup_installs_launch_and_config_files():
    setup = (ROOT / "setup.py").read_text()
    assert 'glob("launch/*.launch.py")' in setup and 'glob("config/*.yaml")' in setup
