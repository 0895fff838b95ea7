"""A learning node needs no serial driver: a GPU workstation running only policy_optimization
(or any node but the rig's hardware_interface) does without pyserial."""
from __future__ import annotations

import subprocess
import sys

import pytest

NODES = ("sim_plant", "policy_execution", "model_learning", "policy_optimization",
         "trial_manager")


@pytest.mark.timeout(180)
def test_every_node_but_the_rigs_imports_without_pyserial():
    code = ("import sys; sys.modules['serial'] = None\n"   # `import serial` now fails
            + "".join(f"import ebmcpilco_ros.nodes.{name}\n" for name in NODES)
            + "import ebmcpilco_ros.nodes.hardware_interface\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=170)
    # the five learning nodes imported; the rig's node is the first to need the driver
    assert result.returncode == 1, result.stderr
    assert f'File "<string>", line {len(NODES) + 2}' in result.stderr, result.stderr
    assert "serial" in result.stderr, result.stderr
