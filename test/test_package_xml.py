"""package.xml is complete and exact: every module the package, its launch files, setup.py and the
tests import has its rosdep key there, of the right kind (the package's own imports exec_depend,
the tests' test_depend, setup.py's buildtool_depend), and every key there is needed by an import
or by a tool named below. rosdep installs what package.xml says and nothing else: a missing key
is a ROS user's ImportError, an extra one an install for nothing."""
from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from package_helpers import distribution

ROOT = Path(__file__).resolve().parents[1]

# Import name -> rosdep key (checked against ros/rosdistro's rosdep/{base,python}.yaml and
# kilted/distribution.yaml when written). A new import fails the test until it is added here
# and to package.xml.
KEYS = {
    # ROS 2 packages: the key is the package name.
    **{name: name for name in ("rclpy", "std_msgs", "std_srvs", "sensor_msgs", "diagnostic_msgs",
                               "lifecycle_msgs", "rcl_interfaces", "ament_index_python",
                               "launch", "launch_ros")},
    "numpy": "python3-numpy",
    "scipy": "python3-scipy",
    "yaml": "python3-yaml",
    "serial": "python3-serial",
    "matplotlib": "python3-matplotlib",
    "torch": "python3-pytorch-pip",  # pip's torch: the distribution's is too old (torch_support)
    "rosbags": "python3-rosbags-pip",
    "tqdm": "python3-tqdm",
    "PIL": "python3-pil",
    "pytest": "python3-pytest",
    "pycodestyle": "python3-pycodestyle",
    "pyflakes": "pyflakes3",
    "mcap": "mcap-ros2-support",  # pip; installs mcap with it
    "mcap_ros2": "mcap-ros2-support",
    "setuptools": "python3-setuptools",
}
# Keys no import asks for, and what needs them.
TOOLS = {
    "exec_depend": {"ros2launch": "`ros2 launch` runs the launch files"},
    "test_depend": {"python3-pytest-timeout": "the tests' timeout marks (pytest plugin)",
                    "gcc-avr": "the firmware tests build the firmware",
                    "avr-libc": "the firmware tests build the firmware",
                    "pkg-config": "the firmware tests build the simavr harness"},
}


def imports(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level modules imported anywhere in these files (also inside functions), with the
    files that import them; relative imports, the standard library, this package and the
    tests' own helper modules left out."""
    local = {p.stem for p in (ROOT / "test").glob("*.py")} | {"ebmcpilco_ros"}
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def declared() -> dict[str, set[str]]:
    """{dependency tag: keys} of package.xml."""
    root = ET.parse(ROOT / "package.xml").getroot()
    out: dict[str, set[str]] = {}
    for element in root:
        if isinstance(element.tag, str) and element.tag.endswith("depend"):
            out.setdefault(element.tag, set()).add((element.text or "").strip())
    return out


def needed() -> dict[str, dict[str, set[str]]]:
    """{tag: {key: importing files}} from the sources: the package and launch files need
    exec_depend, the tests test_depend (unless the package needs it anyway), setup.py
    buildtool_depend."""
    groups = {
        "exec_depend": sorted((ROOT / "ebmcpilco_ros").rglob("*.py"))
        + sorted((ROOT / "launch").glob("*.launch.py")),
        "test_depend": sorted((ROOT / "test").glob("*.py")),
        "buildtool_depend": [ROOT / "setup.py"],
    }
    out: dict[str, dict[str, set[str]]] = {}
    for tag, paths in groups.items():
        for module, files in imports(paths).items():
            assert module in KEYS, (f"{module} (imported by {sorted(files)}) has no rosdep key "
                                    f"here: add it to KEYS and to package.xml")
            out.setdefault(tag, {}).setdefault(KEYS[module], set()).update(files)
    return out


def test_every_import_has_its_key_of_the_right_kind():
    have = declared()
    need = needed()
    # The tests run in the built workspace: what the build and the package need is there too.
    built = have.get("exec_depend", set()) | have.get("buildtool_depend", set())
    for tag, keys in need.items():
        available = have.get(tag, set()) | (built if tag == "test_depend" else set())
        missing = {key: sorted(files) for key, files in keys.items() if key not in available}
        assert not missing, f"package.xml lacks these <{tag}> keys: {missing}"


def test_every_key_is_needed_and_none_twice():
    have = declared()
    need = needed()
    for tag, keys in have.items():
        extra = keys - set(need.get(tag, {})) - set(TOOLS.get(tag, {}))
        assert not extra, f"package.xml <{tag}> keys that nothing imports or uses: {extra}"
    tags = list(have)
    for i, tag in enumerate(tags):
        for other in tags[i + 1:]:
            assert not have[tag] & have[other], (tag, other, have[tag] & have[other])


def test_the_lint_and_launch_keys_that_were_missing_are_there():
    """The keys the issue found missing (rcl_interfaces, the lint tests' pycodestyle and
    pyflakes), and the launch files' runtime."""
    have = declared()
    assert "rcl_interfaces" in have["exec_depend"]
    assert {"python3-pycodestyle", "pyflakes3"} <= have["test_depend"]
    assert {"launch", "launch_ros", "ros2launch"} <= have["exec_depend"]


def test_the_build_type_is_ament_python_and_setup_py_agrees():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("export/build_type") == "ament_python"
    metadata = distribution().metadata
    assert (metadata.name, metadata.version, metadata.license) == (
        root.findtext("name"), root.findtext("version"), root.findtext("license"))
    # What colcon test reads to run pytest (tests_require, which current setuptools drops
    # without a word, would leave colcon running unittest and 0 tests).
    assert "pytest" in distribution().extras_require["test"]
