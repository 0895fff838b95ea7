"""Resume after a crash: in-process, a run stopped at a trial boundary and resumed from its
checkpoint gives exactly the uninterrupted run (same seed); through the node graph, a trial
manager or a whole graph killed with SIGKILL resumes from its run directory, losing no
completed trial."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ebmcpilco_ros.core.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, load_checkpoint,
                                           write_json_atomic)
from ebmcpilco_ros.core.config import ExperimentConfig
from ebmcpilco_ros.core.learner import LearningReport, build_in_process
from ebmcpilco_ros.core.mcpilco import torch_threads

# EB-MC-PILCO with every phase (random, two GP-iLQR rollouts, pretrained policy trials with the
# warm start's cost comparison), small enough for seconds per trial.
SMALL = ExperimentConfig().replace(
    learner={"algorithm": "eb", "max_trials": 6, "stop_on_success": False, "seed": 5},
    exploration={"iterations": 2, "match_tol": 0.0},
    pretrain={"steps": 20, "every_trial": True},
    optimizer={"particles": 20, "max_steps": 12, "max_steps_first": 12, "threads": 1},
    policy={"num_basis": 20}, model={"fit_iterations": 30}, ilqr={"max_iterations": 20})


class Crash(RuntimeError):
    """Stands in for the process dying."""


class CrashingSystem:
    """The run's system until trial `at`, where the "machine" dies before the trial runs."""

    def __init__(self, inner: Any, at: int) -> None:
        self.inner = inner
        self.at = at

    def run(self, controller: Any, kind: str, index: int) -> Any:
        if index == self.at:
            raise Crash(f"crash before trial {index}")
        return self.inner.run(controller, kind, index)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def run(config: ExperimentConfig, crash_at: int | None = None, checkpoint: Path | None = None,
        resume: dict[str, Any] | None = None) -> tuple[LearningReport, Any]:
    """A run in a fresh Learner (as a restarted process builds it); its report and policy."""
    def save(data: dict[str, Any]) -> None:
        write_json_atomic(checkpoint, data)
    learner = build_in_process(config, on_checkpoint=save if checkpoint else None)
    if crash_at is not None:
        learner.system = CrashingSystem(learner.system, crash_at)
    with torch_threads(config.optimizer.threads):
        report = learner.run(resume)
    return report, learner.optimizer.policy


def outcome(report: LearningReport) -> list[tuple[Any, ...]]:
    return [(t.index, t.kind, t.success, t.cost, t.opt_steps, t.predicted_cost, t.model_points)
            for t in report.trials]


@pytest.fixture(scope="module")
def uninterrupted():
    return run(SMALL)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("crash_at", [2, 4])
def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path, uninterrupted, crash_at):
    """Stopped before trial `crash_at` (2: while exploring with GP-iLQR; 4: after the first
    policy trial, so the persistent policy, the last plan and the warm start's draws matter),
    resumed from the checkpoint file by a new Learner: the same trials, costs, optimisation
    costs and final policy, bit for bit."""
    full, full_policy = uninterrupted
    path = tmp_path / "checkpoint.json"
    with pytest.raises(Crash):
        run(SMALL, crash_at=crash_at, checkpoint=path)
    saved = load_checkpoint(path, SMALL)
    assert saved["format"] == CHECKPOINT_FORMAT and saved["trials_completed"] == crash_at
    torch.manual_seed(12345)  # a restarted process: nothing left of the first one's state
    np.random.seed(54321)
    resumed, policy = run(SMALL, checkpoint=path, resume=saved)
    assert outcome(resumed) == outcome(full)
    assert resumed.opt_costs == full.opt_costs
    for name, value in full_policy.state_dict().items():
        assert torch.equal(policy.state_dict()[name], value), name
    assert load_checkpoint(path)["trials_completed"] == SMALL.learner.max_trials


def test_a_checkpoint_of_another_format_or_configuration_is_refused(tmp_path):
    path = tmp_path / "checkpoint.json"
    learner = build_in_process(SMALL)
    write_json_atomic(path, {**learner.checkpoint(), "format": "ebmcpilco.checkpoint/0"})
    with pytest.raises(CheckpointError, match="not of format ebmcpilco.checkpoint/1"):
        load_checkpoint(path)
    write_json_atomic(path, learner.checkpoint())
    other = SMALL.replace(learner={"seed": 6}, policy={"num_basis": 30})
    with pytest.raises(CheckpointError,
                       match=r"another configuration: learner.seed: 5 .*, 6 now"):
        load_checkpoint(path, other)
    with pytest.raises(CheckpointError, match="policy.num_basis: 20 in the checkpoint, 30"):
        build_in_process(other).restore(json.loads(path.read_text()))
    # Where and how fast it computes may change.
    load_checkpoint(path, SMALL.replace(optimizer={"threads": 2}))
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.json")
