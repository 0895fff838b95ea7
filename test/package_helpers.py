"""What setup.py installs, asked of setuptools itself: distutils' run_setup runs the file (from the
package root, as pip and colcon do) and stops after setuptools has parsed its arguments into a
Distribution, before any command runs."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import setuptools  # noqa: F401  (installs its distutils, the one that knows setuptools' keywords)
import distutils.core

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def distribution() -> setuptools.dist.Distribution:
    with contextlib.chdir(ROOT):
        return distutils.core.run_setup("setup.py", stop_after="init")


def console_scripts() -> dict[str, str]:
    """{script name: 'module:function'} of setup.py's console scripts."""
    entries = distribution().entry_points["console_scripts"]
    return dict(tuple(part.strip() for part in entry.split("=", 1)) for entry in entries)


def data_files() -> dict[str, set[str]]:
    """{install folder: source files relative to the root} of setup.py's data files."""
    return {folder: set(files) for folder, files in distribution().data_files}
