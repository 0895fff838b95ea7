"""`ebmcpilco profile RUN`: a run directory's phases, each with the nodes' own figures matched to
it by when their file was written, summed into work, overhead, other and what crashes cut off;
the rows add up to the run's wall time."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ebmcpilco_ros import cli
from ebmcpilco_ros.tools.profile import ProfileError, profile_run

T0 = 1_800_000_000.0


def _status(at: float, event: str, phase: str = "", **fields: Any) -> dict[str, Any]:
    return {"format": "ebmcpilco.status/1", "stamp": T0 + at, "event": event, "phase": phase,
            "state": "learning", "ready": True, "waiting_for": [], "run_id": "run",
            "trials": 0, "node": "/trial_manager", **fields}


def _trial_done(at: float, index: int) -> dict[str, Any]:
    return _status(at, "trial_done", f"trial {index}",
                   trial={"index": index, "kind": "policy", "duration_s": 3.0})


def _file(path: Path, at: float, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    os.utime(path, (T0 + at, T0 + at))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A random trial, a fit and an optimisation, a crash during the next optimisation, the
    resume redoing fit and optimisation, a policy trial, the end."""
    path = tmp_path / "run"
    log = [_status(0.0, "started_learning", "starting"),
           _status(0.0, "phase", "trial 0 (random)"), _trial_done(3.5, 0),
           _status(3.6, "phase", "fitting the model on 1 trials"),
           _status(5.6, "phase", "optimising (policy, iteration 0)"),
           _status(7.0, "progress", "optimising (policy, iteration 0)"),   # within the phase
           _status(15.6, "phase", "trial 1 (policy)"), _trial_done(19.0, 1),
           _status(19.0, "phase", "fitting the model on 2 trials"),
           _status(20.0, "phase", "optimising (policy, iteration 1)"),
           _status(50.0, "failed", "failed"),                               # a crash
           _status(60.0, "resumed", "starting"),
           _status(61.0, "phase", "fitting the model on 2 trials"),
           _status(62.0, "phase", "optimising (policy, iteration 1)"),
           _status(72.0, "phase", "trial 2 (policy)"), _trial_done(75.2, 2),
           _status(75.2, "run_done", "run_done", solved=True)]
    path.mkdir()
    (path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    _file(path / "models" / "model_v001.json", 5.5, {"fit_s": 1.5})
    _file(path / "models" / "model_v002.json", 19.9, {"fit_s": 0.8})      # before the crash
    _file(path / "models" / "model_v001-fit-b.json", 61.9, {"fit_s": 0.7})  # after the resume
    _file(path / "controllers" / "controller_v001.json", 15.5,
          {"wall_s": {"policy": 9.0}})
    _file(path / "controllers" / "controller_v001-opt-b.json", 71.9,
          {"wall_s": {"ilqr": 1.0, "pretrain": 2.0, "policy": 6.5}})
    return path


def test_each_phase_gets_the_nodes_figures_written_within_it(run: Path) -> None:
    profile = profile_run(run)
    by_label = [(p.label, round(p.wall_s, 3), p.work_s, p.completed) for p in profile.phases]
    assert by_label[1] == ("trial 0 (random)", 3.5, {"rollout": 3.0}, True)
    assert by_label[3] == ("fitting the model on 1 trials", 2.0, {"fit": 1.5}, True)
    assert by_label[4] == ("optimising (policy, iteration 0)", 10.0, {"policy": 9.0}, True)
    cut = [p for p in profile.phases if not p.completed]
    assert [p.label for p in cut] == ["optimising (policy, iteration 1)", "after failed"]
    totals = profile.totals
    assert totals["rollout"] == pytest.approx(9.0)
    assert totals["fit"] == pytest.approx(1.5 + 0.8 + 0.7)
    assert (totals["ilqr"], totals["pretrain"]) == (pytest.approx(1.0), pytest.approx(2.0))
    assert totals["policy"] == pytest.approx(9.0 + 6.5)
    assert totals["lost to crashes"] == pytest.approx(30.0)   # the optimisation cut off
    # failed -> resumed, the resume's start, trial 0's end -> the fit's phase status
    assert totals["other"] == pytest.approx(10.0 + 1.0 + 0.1)
    assert totals["trial overhead"] == pytest.approx(0.5 + 0.4 + 0.2)
    assert profile.wall_s == pytest.approx(75.2)
    assert sum(totals.values()) == pytest.approx(profile.wall_s)
    assert profile.trials == 3 and profile.solved is True


def test_the_command_prints_the_table_and_writes_json(run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["profile", str(run), "--phases", "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "lost to crashes" in out and "(cut off)" in out and "75.2 s" in out
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["totals"]["policy"] == pytest.approx(15.5)
    assert cli.main(["profile", str(tmp_path)]) == 2
    assert "no run log" in capsys.readouterr().err
    with pytest.raises(ProfileError):
        profile_run(tmp_path)
