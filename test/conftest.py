"""Every test runs with ROS_HOME in a temporary folder of its own: the default run directory
($ROS_HOME/ebmcpilco/runs, nodes/rundir.run_root) and ROS's own logs of the node processes the
tests start (inheriting this environment) land there, never in the real ~/.ros."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

_STATE: dict[str, str | None] = {}


def pytest_configure(config: Any) -> None:
    """Before collection, so that module-level code and session fixtures see it too."""
    _STATE["saved"] = os.environ.get("ROS_HOME")
    _STATE["made"] = os.environ["ROS_HOME"] = tempfile.mkdtemp(prefix="ebmcpilco-ros-home-")


def pytest_unconfigure(config: Any) -> None:
    saved, made = _STATE.pop("saved", None), _STATE.pop("made", None)
    if saved is None:
        os.environ.pop("ROS_HOME", None)
    else:
        os.environ["ROS_HOME"] = saved
    if made:
        shutil.rmtree(made, ignore_errors=True)
