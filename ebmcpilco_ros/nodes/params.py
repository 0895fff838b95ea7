"""Config dataclasses <-> ROS parameters: one declaration per field, ranges from its metadata.

Every field of every section a node uses becomes a read-only ROS parameter `section.field` with a
ParameterDescriptor built from the field's `setting` metadata (description, FloatingPointRange or
IntegerRange, choices). Values come from the parameter file / `-p` overrides and are validated by
the config dataclasses themselves, so a bad value stops the node with the same message the
`ebmcpilco` command gives, e.g. `plant.u_max = -1.0: must be in (0.0, inf]`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)
from rclpy.node import Node

from ..core.config import SECTIONS, ConfigError, ExperimentConfig, range_text, config_from_dict
from .config import NODE_SECTIONS, build_node_section

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _ros_type(value: Any) -> int:
    if isinstance(value, bool):
        return ParameterType.PARAMETER_BOOL
    if isinstance(value, int):
        return ParameterType.PARAMETER_INTEGER
    if isinstance(value, float):
        return ParameterType.PARAMETER_DOUBLE
    if isinstance(value, str):
        return ParameterType.PARAMETER_STRING
    if isinstance(value, (tuple, list)) and value:
        first = value[0]
        if isinstance(first, str):
            return ParameterType.PARAMETER_STRING_ARRAY
        if isinstance(first, bool):
            return ParameterType.PARAMETER_BOOL_ARRAY
        if isinstance(first, int) and all(isinstance(v, int) for v in value):
            return ParameterType.PARAMETER_INTEGER_ARRAY
        return ParameterType.PARAMETER_DOUBLE_ARRAY
    raise ConfigError(f"no ROS parameter type for default {value!r}")


def descriptor(name: str, f: dataclasses.Field) -> ParameterDescriptor:
    """The descriptor of one field: type, description, range, read-only (config is frozen)."""
    meta = f.metadata
    default = field_default(f)
    kind = _ros_type(default)
    constraint = range_text(meta)
    desc = ParameterDescriptor(name=name, type=kind, read_only=True,
                               description=str(meta.get("doc", "")),
                               additional_constraints=constraint)
    lo, hi = meta.get("lo"), meta.get("hi")
    if meta.get("choices") is None and (lo is not None or hi is not None):
        if kind == ParameterType.PARAMETER_DOUBLE:
            desc.floating_point_range = [FloatingPointRange(
                from_value=-math.inf if lo is None else float(lo),
                to_value=math.inf if hi is None else float(hi), step=0.0)]
        elif kind == ParameterType.PARAMETER_INTEGER:
            low = INT64_MIN if lo is None else int(math.floor(lo)) + int(bool(meta.get("lo_open")))
            desc.integer_range = [IntegerRange(
                from_value=low, to_value=INT64_MAX if hi is None else int(math.floor(hi)),
                step=0)]
    return desc


def _ros_value(value: Any, f: dataclasses.Field) -> Any:
    """A validated field value in the form rclpy declares (lists for tuples, floats for floats)."""
    default = field_default(f)
    if isinstance(value, tuple):
        if default and all(isinstance(v, float) for v in default):
            return [float(v) for v in value]
        return list(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _python_value(value: Any) -> Any:
    """What rclpy hands back (array.array for number arrays) -> plain Python for validation."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return list(value)


def _unknown_overrides(node: Node, sections: Iterable[str],
                       classes: Mapping[str, type]) -> None:
    """A typo in an owned section (`plant.umax`) is an error, not a silently ignored value."""
    overrides = getattr(node, "_parameter_overrides", {}) or {}
    for name in sorted(overrides):
        section, _, key = name.partition(".")
        if section in sections and key:
            known = {f.name for f in dataclasses.fields(classes[section])}
            if key not in known:
                raise ConfigError(f"{name}: unknown parameter (known: {', '.join(sorted(known))})")


@dataclasses.dataclass(frozen=True)
class CommandLine:
    """The parameter sources on a node's command line (inside --ros-args)."""

    params_files: tuple[str, ...]
    overrides: tuple[tuple[str | None, str, str], ...]  # (node name or None, name, raw value)


def command_line(argv: Sequence[str]) -> CommandLine:
    """`--params-file F` and `-p [node:]name:=value` / `--param ...` of the --ros-args parts."""
    files: list[str] = []
    overrides: list[tuple[str | None, str, str]] = []
    inside, i = False, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--ros-args":
            inside = True
        elif arg == "--":
            inside = False
        elif inside and arg in ("--params-file", "-p", "--param") and i + 1 < len(argv):
            i += 1
            if arg == "--params-file":
                files.append(argv[i])
            else:
                target, sep, value = argv[i].partition(":=")
                if sep:
                    node, colon, name = target.rpartition(":")
                    overrides.append((node if colon else None, name, value))
        i += 1
    return CommandLine(tuple(files), tuple(overrides))


def check_params_files(argv: Sequence[str]) -> None:
    """Each --params-file must exist and be YAML: ConfigError naming it (rcl's own error is a
    traceback from rclpy.init)."""
    for name in command_line(argv).params_files:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"--params-file {name}: no such file")
        try:
            yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--params-file {name}: not readable YAML ({exc})") from exc


def _command_line_values(node: Node, argv: Sequence[str]) -> dict[str, Any]:
    """`-p` values meant for this node, as rcl parses them (YAML). rcl drops an override whose
    type differs from a parameter file's value for the same name (`-p plant.u_max:=abc` over a
    file's 10.0), so they are taken from the command line and validated like any other value."""
    values: dict[str, Any] = {}
    for target, name, raw in command_line(argv).overrides:
        if target in (None, node.get_name(), node.get_fully_qualified_name()):
            values[name] = parse_override(raw)
    return values


def parse_override(raw: str) -> Any:
    """A `-p` value as rcl reads it: bool, integer, double (1e-3 included), list, or string."""
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, (list, str)) else raw   # 'quoted' -> quoted text


def declare_config(node: Node, core_sections: Iterable[str], node_sections: Iterable[str]
                   ) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Declare the given sections' parameters on `node`, validate, and build the configs.

    Raises ConfigError naming the parameter and its range. Core sections not listed keep their
    defaults in the returned ExperimentConfig (the node does not use them).
    """
    core_sections = [s for s in core_sections]
    node_sections = [s for s in node_sections]
    classes = {**{s: SECTIONS[s] for s in core_sections},
               **{s: NODE_SECTIONS[s] for s in node_sections}}
    _unknown_overrides(node, classes, classes)
    raw: dict[str, dict[str, Any]] = {}
    fields: dict[str, dataclasses.Field] = {}
    # Read each value with a dynamically typed declaration first: a YAML `10` for a float
    # field must reach validation (which accepts it) rather than fail rclpy's type check.
    for section, cls in classes.items():
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f"{section}.{f.name}"
            fields[name] = f
            param = node.declare_parameter(
                name, _ros_value(field_default(f), f),
                ParameterDescriptor(name=name, dynamic_typing=True))
            values[f.name] = _python_value(param.value)
        raw[section] = values
    for name, value in _command_line_values(node, sys.argv).items():
        section, _, key = name.partition(".")
        if section in raw and key in raw[section]:
            raw[section][key] = value
    config = config_from_dict({s: raw[s] for s in core_sections})
    parts = {s: build_node_section(s, raw[s]) for s in node_sections}
    # Re-declare with the validated value and the full descriptor (type, range, read-only).
    for section in classes:
        source = getattr(config, section) if section in core_sections else parts[section]
        for f in dataclasses.fields(classes[section]):
            name = f"{section}.{f.name}"
            node.undeclare_parameter(name)
            node.declare_parameter(name, _ros_value(getattr(source, f.name), f),
                                   descriptor(name, f), ignore_override=True)
    return config, parts
