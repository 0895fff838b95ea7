"""`ebmcpilco report RUN`: on a small real run directory (an in-process EB-MC-PILCO run written
in the trial manager's layout), every plot and the GIF are valid images of a sane size, the GIF
has a frame per recorded state, report.md embeds each file; a path that is no run directory is
refused naming it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ebmcpilco_ros import cli
from ebmcpilco_ros.core.config import ExperimentConfig
from ebmcpilco_ros.core.jsonio import plain
from ebmcpilco_ros.core.learner import build_in_process
from ebmcpilco_ros.nodes.rundir import report_hint
from ebmcpilco_ros.core.mcpilco import torch_threads
from ebmcpilco_ros.tools import report

RUN_ID = "20260101-000000-eb-seed3-test"
# random, one GP-iLQR exploration, two pretrained policy trials: every kind and stage, in seconds
SMALL = ExperimentConfig().replace(
    plant={"trial_duration": 1.5},
    learner={"algorithm": "eb", "max_trials": 4, "stop_on_success": False, "seed": 3},
    exploration={"iterations": 1, "match_tol": 0.0, "max_deviation": 0.0},
    pretrain={"steps": 10, "every_trial": True},
    optimizer={"particles": 10, "max_steps": 8, "max_steps_first": 8, "threads": 1},
    policy={"num_basis": 10}, model={"fit_iterations": 20}, ilqr={"max_iterations": 10})


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plain(data)), encoding="utf-8")


class _Models:
    """The in-process model learning, writing each model update as the trial manager does."""

    def __init__(self, inner: Any, run: Path) -> None:
        self.inner, self.run, self.keys = inner, run, []

    def add_trial(self, trial: Any) -> None:
        self.keys.append(f"{RUN_ID}/{trial.index}")
        self.inner.add_trial(trial)

    def fit(self) -> Any:
        model = self.inner.fit()
        _write(self.run / "models" / f"model_v{model.version:03d}.json", {
            "format": "ebmcpilco.model_update/1", "request_id": f"fit-{model.version}",
            "run_id": RUN_ID, "version": model.version, "trials": list(self.keys),
            "points": [gp.size for gp in model.gps], "fit_s": 0.1, "model": model.to_dict()})
        return model


class _Optimization:
    """The in-process optimiser, writing each controller update as the trial manager does."""

    def __init__(self, inner: Any, run: Path) -> None:
        self.inner, self.run, self.version = inner, run, 0

    def next_controller(self, model: Any, request: Any) -> Any:
        update = self.inner.next_controller(model, request)
        self.version += 1
        _write(self.run / "controllers" / f"controller_v{self.version:03d}.json", {
            "format": "ebmcpilco.controller_update/1", "request_id": f"opt-{self.version}",
            "run_id": RUN_ID, "version": self.version, "model_version": model.version,
            "phase": update.phase, "opt_steps": update.opt_steps, "wall_s": update.wall_s,
            "costs": update.costs, "predicted_states": update.predicted_states,
            "info": update.info, "controller": update.controller.to_dict()})
        return update


def _log(run: Path, event: str, **fields: Any) -> None:
    with open(run / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(plain({"format": "ebmcpilco.status/1", "event": event,
                                  "run_id": RUN_ID, **fields})) + "\n")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run's directory: config, trials, models, controllers, report, log."""
    run = tmp_path_factory.mktemp("runs") / RUN_ID
    run.mkdir()
    _write(run / "config.json", {**SMALL.to_dict(), "nodes": {"run_directory": "runs"}})
    _log(run, "started_learning")

    def on_trial(summary: Any, trial: Any) -> None:
        _write(run / "trials" / f"trial_{trial.index:03d}.json", trial.to_dict())
        _log(run, "trial_done", trial=summary.__dict__)

    learner = build_in_process(SMALL, on_trial=on_trial)
    learner.models = _Models(learner.models, run)
    learner.optimizer = _Optimization(learner.optimizer, run)
    with torch_threads(1):
        result = learner.run()
    _write(run / "report.json", {**result.to_dict(), "opt_costs": result.opt_costs})
    _log(run, "run_done", solved=result.solved)
    return run


def _image(path: Path) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 1000, path
    image = Image.open(path)
    image.verify()  # a valid file of its format
    image = Image.open(path)
    assert 300 <= image.width <= 2000 and 200 <= image.height <= 2000, (path, image.size)
    return image


def test_report_of_a_run(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["report", str(run_dir), "--particles", "20"]) == 0
    out = run_dir / "report"
    run = report.read_run(run_dir)
    assert [t.kind for t in run.trials] == ["random", "ilqr", "policy", "policy"]
    pngs = ["cost_per_trial.png", "optimisation.png", "success.png",
            *[f"trial_{i:03d}_prediction.png" for i in range(4)]]
    for name in pngs:
        assert _image(out / name).format == "PNG"
    best = report.best_trial(run)
    gif = _image(out / f"trial_{best.index:03d}.gif")
    assert gif.format == "GIF"
    assert gif.n_frames == len(best.states) == 31  # one frame per recorded state
    markdown = (out / "report.md").read_text(encoding="utf-8")
    for name in [*pngs, f"trial_{best.index:03d}.gif"]:
        assert f"]({name})" in markdown, name
    assert RUN_ID in markdown and "not stored" in markdown
    written = capsys.readouterr().out
    assert written.count("wrote ") == len(pngs) + 2  # and the GIF and report.md


def test_repeated_versions_after_a_restart_are_told_apart_by_when_written(run_dir: Path,
                                                                          tmp_path: Path) -> None:
    """A model_learning and policy_optimization restarted within a run count from v1 again
    (the trial manager writes model_v001-<request>.json): trial 3 ran the controller written
    after the model fitted last before its record, whatever their versions say."""
    import os

    run = tmp_path / RUN_ID
    shutil.copytree(run_dir, run)
    first = json.loads((run / "models" / "model_v003.json").read_text())
    [policy] = [p for p in (run / "controllers").glob("controller_v*.json")
                if json.loads(p.read_text())["model_version"] == 3]
    again = {**json.loads(policy.read_text()), "version": 1, "model_version": 1,
             "request_id": "opt-again", "opt_steps": 99}
    files = {run / "models" / "model_v003.json": 100.0,
             run / "models" / "model_v001-fit-again.json": 101.0,
             run / "controllers" / "controller_v001-opt-again.json": 102.0,
             run / "trials" / "trial_003.json": 103.0}
    _write(run / "models" / "model_v001-fit-again.json",
           {**first, "version": 1, "request_id": "fit-again"})
    _write(run / "controllers" / "controller_v001-opt-again.json", again)
    for path, stamp in files.items():
        os.utime(path, (stamp, stamp))
    data = report.read_run(run)
    assert report.model_before(data, 3).version == 1
    assert report.controller_of(data, 3).opt_steps == 99
    assert report.controller_of(data, 1).phase == "ilqr"   # earlier trials as before


def test_read_run_links_models_and_controllers(run_dir: Path) -> None:
    run = report.read_run(run_dir)
    assert report.model_before(run, 0) is None  # the random trial had no model before it
    for index in (1, 2, 3):
        model = report.model_before(run, index)
        assert model is not None and model.trial_indices == tuple(range(index))
    assert report.controller_of(run, 1).phase == "ilqr"
    assert report.controller_of(run, 1).predicted_states.shape == (31, 4)
    assert [c.phase for c in map(lambda i: report.controller_of(run, i), (2, 3))] == [
        "policy", "policy"]
    assert run.opt_costs and all(len(c) == 8 for c in run.opt_costs)
    prediction = report.predict_trial(run.trials[2], report.model_before(run, 2), particles=30)
    assert prediction.mean.shape == prediction.std.shape == (31, 4)
    assert np.allclose(prediction.mean[0], run.trials[2].states[0])
    assert np.all(prediction.std[0] < 1e-12) and np.all(prediction.std[-1] > 1e-6)


def test_a_run_without_report_or_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    """A run that died: the trials' costs and success are computed as the Learner does."""
    copy = tmp_path / RUN_ID
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report*", "log.jsonl"))
    full, bare = report.read_run(run_dir), report.read_run(copy)
    assert [t.cost for t in bare.trials] == pytest.approx([t.cost for t in full.trials])
    assert [t.success for t in bare.trials] == [t.success for t in full.trials]
    assert bare.outcome == "no end" and full.outcome == "run_done"
    assert bare.opt_costs == full.opt_costs  # from the controller updates


def test_not_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(report.ReportError, match="is not a run directory"):
        report.read_run(tmp_path / "nowhere")
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"ebmcpilco report: {tmp_path} is not a run directory (no config.json)" in err
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(report.ReportError, match="no trials"):
        report.read_run(tmp_path)


def test_gif_frames_subsample_long_trials() -> None:
    assert report.gif_frames(61) == list(range(61))
    frames = report.gif_frames(1001, max_frames=400)
    assert frames[0] == 0 and frames[-1] == 1000 and len(frames) <= 401
    assert set(np.diff(frames[:-1])) == {3}


def test_report_hint() -> None:
    assert report_hint("/data/runs", "r1") == "report: ebmcpilco report /data/runs/r1"
