"""The torch versions ebmcpilco_ros supports, checked when `ebmcpilco_ros.core` is imported.

Only torch 2.13.0 (requirements.txt's pin, the CPU wheel) is tested. A ROS 2 install's rosdep
key python3-torch resolves to the distribution's own torch package (Debian 12's is 1.13.1),
which nothing here is tested with; an import with an older one stops at once with the way out,
instead of failing later inside a learning run. Accepted: SUPPORTED_TORCH, from the
tested version up to the next major version.

The version is read from the `torch/version.py` that `import torch` would load, without
importing torch (seconds; the execution node's process never imports it), and nothing is
checked where torch is not installed (a numpy-only rig PC).
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

SUPPORTED_TORCH = ((2, 13), (3, 0))  # [lowest, highest): major.minor
TESTED_TORCH = "2.13.0"
SUPPORTED_TEXT = "torch >= 2.13, < 3"  # as package.xml and the README say it


class UnsupportedTorch(ImportError):
    """The installed torch is outside SUPPORTED_TORCH."""


def installed_torch() -> tuple[str, Path] | None:
    """(version, package folder) of the torch `import torch` would load, or None: not
    installed, or no readable version (nothing to check then)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    try:
        text = (folder / "version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"""^__version__\s*(?::\s*str\s*)?=\s*['"]([^'"]+)['"]""", text, re.M)
    return (match.group(1), folder) if match else None


def check_torch(version: str, where: str = "") -> None:
    """UnsupportedTorch, saying what to install, unless `version` is in SUPPORTED_TORCH."""
    match = re.match(r"(\d+)\.(\d+)", version)
    lowest, highest = SUPPORTED_TORCH
    if match and lowest <= (int(match.group(1)), int(match.group(2))) < highest:
        return
    found = f"torch {version}" + (f" ({where})" if where else "")
    raise UnsupportedTorch(
        f"{found} is not supported: ebmcpilco_ros needs {SUPPORTED_TEXT} (tested with "
        f"{TESTED_TORCH}, the pinned CPU wheel of requirements.txt). Install that one, e.g. "
        f"`pip install torch=={TESTED_TORCH}` in the Python environment ROS 2 runs (a "
        f"distribution's python3-torch package is not supported).")


def check_installed_torch() -> None:
    """check_torch on the installed torch, if there is one."""
    found = installed_torch()
    if found is not None:
        check_torch(found[0], str(found[1]))
