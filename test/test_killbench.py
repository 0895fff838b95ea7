"""`ebmcpilco bench resume` (tools/killbench.py) with a few kills on the reduced configuration:
the trial manager, a learning node and the whole graph SIGKILLed at moments drawn from a seed,
each restarted and the run resumed; every check of the run directory passes and the run ends."""
from __future__ import annotations

import pytest

from graph_helpers import CONFIG, REDUCED, isolated_domain, ros_environment

KILLS = ("trial_manager", "policy_optimization", "graph")
TRIALS = 4  # room for the three kills before the run ends


def overrides() -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for key, value in {**REDUCED, "learner.stop_on_success": False,
                       "learner.max_trials": TRIALS}.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


@pytest.mark.timeout(400)
def test_kills_at_random_moments_lose_nothing_and_the_run_ends(tmp_path):
    from ebmcpilco_ros.tools.killbench import bench, summary_text

    with ros_environment(isolated_domain(70)):
        result = bench(CONFIG, overrides(), kills=len(KILLS), seed=1,
                       run_directory=tmp_path / "runs", targets=KILLS, max_loss=20.0,
                       run_timeout=300.0)
    print(summary_text(result))
    assert result["checks_passed"], result["problems"]
    assert result["kills"] == len(KILLS) and result["by_node"] == {k: 1 for k in KILLS}
    assert result["resumes"] >= 2  # the trial manager's and the graph's kills always resume
    assert result["completed_trials"] == TRIALS
    for entry in result["log"]:
        if entry["target"] in ("trial_manager", "graph"):
            assert entry["outcome_after_kill"] == "died" and entry["resumed"], entry


def test_a_resume_removes_the_temporaries_a_killed_writer_left(tmp_path):
    """A trial manager SIGKILLed between writing a file's temporary and renaming it leaves
    `.<name>.<pid>.<thread>.tmp` (seen by the bench: a kill as trial 0's record was written);
    the resume removes it, and only it."""
    from ebmcpilco_ros.nodes.rundir import RunDirectory

    run = RunDirectory(tmp_path, "run")
    run.write_json("trials/trial_000.json", {"index": 0})
    left = run.path / "trials" / ".trial_001.json.7023.139919364191936.tmp"
    left.write_text('{"index": 1, "sta')
    assert run.remove_temporaries() == ["trials/.trial_001.json.7023.139919364191936.tmp"]
    assert not left.exists() and (run.path / "trials" / "trial_000.json").exists()
    assert run.remove_temporaries() == []


def test_a_request_lost_in_a_quick_restart_ends_the_wait():
    """A node killed and restarted within the trial manager's peer grace never looks gone; its
    heartbeats then name no request (or another) while the trial manager still waits for the
    result of the accepted one: that ends the wait after nodes.peer_grace (the bench found the
    trial manager waiting out nodes.optimization_timeout, 2 h, for a killed optimiser)."""
    import time
    from types import SimpleNamespace

    from ebmcpilco_ros.nodes.remote import Link

    doing = {"policy_optimization": "opt-1"}
    peer = SimpleNamespace(gone=lambda: None)
    link = Link(None, None, SimpleNamespace(peer_grace=0.2), {}, {"policy_optimization": peer},
                lambda _phase: None, working_on=lambda role: doing.get(role))
    check = link._lost_or_gone("policy_optimization", "opt-1")
    assert check() is None
    doing["policy_optimization"] = ""  # the restarted node: idle
    assert check() is None  # not yet: a heartbeat may lag the result
    time.sleep(0.25)
    assert "no longer works on opt-1" in check()
    doing["policy_optimization"] = None  # no heartbeat known: up to the peer watch
    assert check() is None
