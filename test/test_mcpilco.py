"""MC-PILCO optimisation: the monitor's schedule, and a short learning run that lowers the cost."""
import numpy as np
import pytest

from ebmcpilco_ros.core.config import ExperimentConfig, OptimizerConfig
from ebmcpilco_ros.core.learner import run_in_process
from ebmcpilco_ros.core.mcpilco import ConvergenceMonitor, Decision


def _run_monitor(costs):
    mon = ConvergenceMonitor.from_config(OptimizerConfig())
    events = []
    for k, c in enumerate(costs):
        d = mon.update(c)
        if d is not Decision.CONTINUE:
            events.append((k + 1, d, mon.lr, mon.dropout))
        if d is Decision.STOP:
            break
    return events


def test_monitor_reproduces_the_lr_and_dropout_schedule_on_a_plateau():
    rng = np.random.default_rng(0)
    # 300 steps of steady descent, then a noisy plateau
    costs = np.concatenate([np.linspace(40, 20, 300), 20 + 0.05 * rng.normal(size=3000)])
    events = _run_monitor(costs)
    kinds = [e[1] for e in events]
    assert kinds == [Decision.REDUCE, Decision.REDUCE, Decision.STOP]
    assert [e[2] for e in events[:2]] == [0.005, 0.0025]
    assert [e[3] for e in events[:2]] == [0.125, 0.0]
    first, second, stop = (e[0] for e in events)
    assert first > 300                      # never during the steady descent
    assert second - first >= 200 and stop - second >= 200   # n_s steps apart at least


def test_monitor_never_stops_a_steady_descent():
    assert _run_monitor(np.linspace(60, 10, 4000)) == []


@pytest.mark.timeout(300)
def test_short_learning_run_lowers_the_cost():
    cfg = ExperimentConfig().replace(
        optimizer={"particles": 100, "max_steps_first": 250, "max_steps": 250},
        policy={"num_basis": 60},
        learner={"max_trials": 3, "seed": 3, "stop_on_success": False})
    report = run_in_process(cfg)
    costs = [t.cost for t in report.trials]
    assert [t.kind for t in report.trials] == ["random", "policy", "policy"]
    for opt in report.opt_costs:            # each optimisation lowers the predicted cost
        assert np.mean(opt[-20:]) < 0.9 * np.mean(opt[:5])
    assert min(costs[1:]) < 0.8 * costs[0]  # learned rollouts beat random exploration
    assert report.wall_s["policy"] > 0 and report.wall_s["model"] > 0
    assert all(t.opt_steps == 250 or t.kind == "random" for t in report.trials)
