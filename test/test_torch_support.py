"""The supported torch versions, as package.xml and the README state them: the torch installed
here is inside the range, the check reads the very torch `import torch` loads (without importing
it), and a version outside the range stops the import of ebmcpilco_ros.core with what to
install."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ebmcpilco_ros.core.torch_support import (SUPPORTED_TEXT, SUPPORTED_TORCH, TESTED_TORCH,
                                              UnsupportedTorch, check_torch, installed_torch)

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_torch_is_the_tested_one_and_in_the_range():
    """requirements.txt pins the tested version; what is installed is it, and supported."""
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().split("\n")
                if "==" in line and not line.startswith("#"))
    assert pins["torch"] == TESTED_TORCH
    version, _folder = installed_torch()
    assert version.split("+")[0] == TESTED_TORCH
    check_torch(version)


def test_the_check_reads_the_torch_that_import_loads_without_importing_it():
    code = ("import sys; from ebmcpilco_ros.core.torch_support import installed_torch; "
            "found = installed_torch(); print('torch' in sys.modules); "
            "import torch; print(found[0] == torch.__version__); "
            "print(str(found[1]) == str(__import__('pathlib').Path(torch.__file__).parent))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ), check=True).stdout.split()
    assert out == ["False", "True", "True"], out


@pytest.mark.parametrize("version", ["2.13.0", "2.13.0+cpu", "2.13.1+cu128", "2.20.0"])
def test_versions_in_the_range_pass(version):
    check_torch(version)


@pytest.mark.parametrize("version", ["1.13.1", "2.1.2", "2.12.1+cpu", "3.0.0", "nightly"])
def test_a_version_outside_the_range_is_refused_saying_what_to_install(version):
    with pytest.raises(UnsupportedTorch) as refused:
        check_torch(version, "/usr/lib/python3/dist-packages/torch")
    message = str(refused.value)
    assert f"torch {version} (/usr/lib/python3/dist-packages/torch) is not supported" in message
    assert SUPPORTED_TEXT in message and f"pip install torch=={TESTED_TORCH}" in message
    assert isinstance(refused.value, ImportError)  # what an import of the core raises


def test_importing_the_core_stops_on_a_torch_outside_the_range():
    """The installed torch made unsupported by moving the range past it: importing
    ebmcpilco_ros.core again (what every module of the package does first) raises, naming it."""
    code = ("import importlib, sys; import ebmcpilco_ros.core.torch_support as t; "
            "t.SUPPORTED_TORCH = ((9, 0), (10, 0)); del sys.modules['ebmcpilco_ros.core']\n"
            "try:\n    importlib.import_module('ebmcpilco_ros.core.policy_numpy')\n"
            "except ImportError as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ), check=True).stdout
    version, folder = installed_torch()
    assert out.startswith(f"UnsupportedTorch torch {version} ({folder}) is not supported"), out


def test_package_xml_and_readme_state_the_same_range():
    lowest, highest = SUPPORTED_TORCH
    assert SUPPORTED_TEXT == f"torch >= {lowest[0]}.{lowest[1]}, < {highest[0]}"
    package = (ROOT / "package.xml").read_text()
    assert f"{SUPPORTED_TEXT} (tested with {TESTED_TORCH}" in package
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"{SUPPORTED_TEXT} (tested with {TESTED_TORCH}" in readme
