"""Where runs are written (issue 12): `nodes.run_directory` is resolved by one function,
nodes/rundir.run_root, for every reader and writer; by default under $ROS_HOME (else ~/.ros),
like ROS's logs, not wherever the graph was started. Real files, a real trial manager process."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ebmcpilco_ros.nodes.bringup import GraphClient
from ebmcpilco_ros.cli import main as cli_main
from ebmcpilco_ros.core.config import ConfigError, find_config
from ebmcpilco_ros.nodes.config import (DEFAULT_RUN_DIRECTORY, NodesConfig, build_node_section,
                                        load_node_sections)
from ebmcpilco_ros.nodes.rundir import RunDirectory, find_run, ros_home, run_root
from ebmcpilco_ros.nodes.rundir import report_hint

from graph_helpers import (STARTUP_TIMEOUT, describe_failure, isolated_domain, ros_environment,
                           start_graph)
from test_data_hygiene import Watch


def test_the_tests_never_write_into_the_real_ros_home():
    """conftest.py: ROS_HOME is a temporary folder for the whole session (node processes
    inherit it), so the default run directory and ROS's logs stay out of ~/.ros."""
    home = Path(os.environ["ROS_HOME"])
    assert home.is_dir() and home != Path("~/.ros").expanduser()
    assert run_root(DEFAULT_RUN_DIRECTORY) == home / "ebmcpilco" / "runs"


def test_the_default_is_under_ros_home_else_dot_ros(tmp_path, monkeypatch):
    assert NodesConfig().run_directory == DEFAULT_RUN_DIRECTORY == "$ROS_HOME/ebmcpilco/runs"
    for name in ("paper_cartpole", "rig_example"):  # the shipped configs keep the default
        assert load_node_sections(find_config(name))["nodes"].run_directory == \
            DEFAULT_RUN_DIRECTORY, name
    assert run_root(DEFAULT_RUN_DIRECTORY, {"ROS_HOME": str(tmp_path)}) == \
        tmp_path / "ebmcpilco" / "runs"
    assert run_root("${ROS_HOME}/x", {"ROS_HOME": str(tmp_path)}) == tmp_path / "x"
    # ROS's rule: unset or empty ROS_HOME is ~/.ros; `~` in it is the user's home.
    dot_ros = Path.home() / ".ros"
    assert ros_home({}) == ros_home({"ROS_HOME": ""}) == dot_ros
    assert run_root(DEFAULT_RUN_DIRECTORY, {}) == dot_ros / "ebmcpilco" / "runs"
    assert run_root("$ROS_HOME", {"ROS_HOME": "~/rh"}) == Path.home() / "rh"
    # An explicit relative path keeps meaning the working directory; '' writes none.
    monkeypatch.chdir(tmp_path)
    assert run_root("runs") == tmp_path / "runs"
    assert run_root("~/r") == Path.home() / "r"
    assert run_root("/abs/runs") == Path("/abs/runs")
    assert run_root("") is None
    assert report_hint("", "some-run") == "report: none (no run directory)"
    assert report_hint("runs", "some-run") == f"report: ebmcpilco report {tmp_path}/runs/some-run"


def test_a_bad_model_max_runs_is_refused_naming_it():
    assert NodesConfig().model_max_runs == 2
    with pytest.raises(ConfigError, match=r"nodes\.model_max_runs = 0: must be in \[1, 1000\]"):
        build_node_section("nodes", {"model_max_runs": 0})


def test_inspect_and_report_find_a_run_id_under_the_default_root(tmp_path, monkeypatch, capsys):
    """`ebmcpilco inspect RUN` (and report, --resume) take a run directory or a bare run id
    under $ROS_HOME/ebmcpilco/runs; a path that exists wins."""
    monkeypatch.setenv("ROS_HOME", str(tmp_path / "ros_home"))
    root = run_root(DEFAULT_RUN_DIRECTORY)
    assert root == tmp_path / "ros_home" / "ebmcpilco" / "runs"
    run = RunDirectory(root, "20260101-120000-mc-seed1-abcd")
    run.write_json("config.json", {"nodes": {}})
    monkeypatch.chdir(tmp_path)
    assert find_run(run.path.name) == run.path
    assert cli_main(["inspect", run.path.name]) == 0
    assert f"run {run.path.name} died" in capsys.readouterr().out
    local = RunDirectory(tmp_path, run.path.name)  # the same name in the working directory
    assert find_run(run.path.name) == local.path
    assert find_run("no-such-run") == tmp_path / "no-such-run"
    assert cli_main(["inspect", "no-such-run"]) == 2
    assert f"{tmp_path / 'no-such-run'} is not a run directory" in capsys.readouterr().err


@pytest.mark.timeout(STARTUP_TIMEOUT + 60)
def test_the_trial_manager_logs_the_resolved_root(tmp_path):
    """A trial manager process with the default run_directory, started from the repository,
    resolves it under the $ROS_HOME it inherits and logs the absolute path at start."""
    root = run_root(DEFAULT_RUN_DIRECTORY)
    with ros_environment(isolated_domain(90)):
        g = start_graph(tmp_path, {"nodes.run_directory": DEFAULT_RUN_DIRECTORY},
                        nodes=("trial_manager",))
        client = GraphClient()
        watch = Watch(client)
        try:
            line = watch.wait_log("trial_manager", "run directories in", timeout=STARTUP_TIMEOUT)
            assert line == f"run directories in {root}", (line, describe_failure(g))
        finally:
            client.close()
            g.stop()
