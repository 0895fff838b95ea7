"""Every node of the graph is required: when one dies, the graph ends, naming the node and the
reason, and stops the others. Checked through `ebmcpilco sim`, which brings up the same graph as
launch/sim.launch.py (the launch files mark the same nodes required, launch_support.end_launch;
test_launch_files checks that, docs/ROS2_WORKSPACE_CHECK.md shows `ros2 launch` ending so)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ebmcpilco_ros.nodes.bringup import SIM_NODES, STOP_GRACE, graph_environment
from ebmcpilco_ros.launch_support import exit_reason

from graph_helpers import REDUCED, STARTUP_TIMEOUT, isolated_domain


def node_processes(parent: int) -> dict[str, int]:
    """{node name: pid} of the node processes `parent` started (python -m
    ebmcpilco_ros.nodes.<name>), read from /proc."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"-m" in argv:
            module = argv[argv.index(b"-m") + 1].decode()
            if module.startswith("ebmcpilco_ros.nodes."):
                found[module.rsplit(".", 1)[1]] = int(entry.name)
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(STARTUP_TIMEOUT + 120)
def test_a_killed_required_node_ends_ebmcpilco_sim_with_the_reason(tmp_path):
    """policy_optimization SIGKILLed while a run goes on (a crash, or a node that cannot start
    its device): `ebmcpilco sim` ends with exit code 1, names the node, its exit code and what
    the graph lost, and stops the other four nodes, which exit 0."""
    settings = {**REDUCED, "nodes.run_directory": str(tmp_path / "runs")}
    command = [sys.executable, "-m", "ebmcpilco_ros.cli", "sim"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    env = graph_environment(os.environ, domain_id=isolated_domain(50))
    env.pop("EBMCPILCO_DIE_WITH_PARENT")  # the sim process itself is no node
    sim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    learning = threading.Event()

    def read() -> None:
        for line in sim.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip())
            if line.startswith("learning: run"):  # the learn call's answer: the run is on
                learning.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert learning.wait(STARTUP_TIMEOUT + 30), "\n".join(lines)
        nodes = node_processes(sim.pid)
        assert set(nodes) == set(SIM_NODES), (nodes, "\n".join(lines))
        os.kill(nodes["policy_optimization"], signal.SIGKILL)
        code = sim.wait(timeout=STOP_GRACE + 30)
        others_alive = [name for name, pid in nodes.items() if alive(pid)]
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    reader.join(5)
    output = "\n".join(lines)
    assert code == 1, output
    reason = exit_reason("policy_optimization", -signal.SIGKILL)
    assert reason == ("policy_optimization exited with code -9 (SIGKILL); the graph cannot work "
                      "without it (no controller can be optimised)")
    assert f"node {reason}:" in output, output
    # the other nodes were stopped before sim ended, cleanly (exit 0: not named)
    assert not others_alive, (others_alive, output)
    stopping = [line for line in lines if line.startswith("stopping the graph: ")]
    assert len(stopping) == 1 and "policy_optimization exited with code -9" in stopping[0], output
    assert not any(f"{name} exited" in stopping[0] for name in SIM_NODES
                   if name != "policy_optimization"), output
