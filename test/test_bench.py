"""The benchmark commands run end to end and write the JSON keys reviews rely on (no timing
assertions: figures live in the JSON, not in tests)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ebmcpilco_ros.cli import main

TINY = ["--set", "optimizer.particles=16", "--set", "optimizer.max_steps_first=15",
        "--set", "optimizer.max_steps=15", "--set", "policy.num_basis=12",
        "--set", "pretrain.steps=10", "--set", "learner.max_trials=3",
        "--set", "exploration.iterations=1", "--set", "exploration.max_deviation=0",
        "--set", "model.fit_iterations=30",
        "--set", "ilqr.max_iterations=10", "--set", "ilqr.continuation_start=0",
        "--set", "plant.trial_duration=1.0", "--set", "optimizer.horizon=20"]


@pytest.mark.timeout(600)
def test_bench_learn_writes_runs_summary_and_plot(tmp_path, capsys):
    out, png = tmp_path / "learn.json", tmp_path / "curves.png"
    assert main(["bench", "learn", "--algorithm", "eb", "mc", "--seeds", "1", "--ablation",
                 "--jobs", "2", "--json", str(out), "--plot", str(png)] + TINY) == 0
    data = json.loads(out.read_text())
    # in seed/variant order whatever order the two worker processes finished in; the
    # configured pretraining (bayes) is the plain "eb" run, not repeated in the ablation
    variants = [r["variant"] for r in data["runs"]]
    assert variants == ["eb", "mc", "eb-none", "eb-mse"]
    assert data["machine"]["parallel_runs"] == 2
    # two runs at a time share the cores: each run's particle workers capped at its share
    cores = len(os.sched_getaffinity(0))
    assert data["config"]["optimizer"]["particle_workers"] == max(1, min(2, cores // 2))
    assert data["config"]["optimizer"]["fit_threads"] == max(1, min(2, cores // 2))
    for run in data["runs"]:
        for key in ("algorithm", "seed", "solved", "trials_to_solve", "interaction_s",
                    "opt_steps", "success_per_trial", "wall_s"):
            assert key in run
        assert {"model", "policy", "total"} <= set(run["wall_s"])
        assert len(run["success_per_trial"]) == 3
        # learn call to the run's end, the in-process rollouts counted as their duration
        times = run["time_to_solve_s"]
        assert times["rollouts"] == pytest.approx(run["interaction_s"]) and times["rollouts"] > 0
        assert times["learn_to_solve"] == pytest.approx(sum(
            v for k, v in times.items() if k != "learn_to_solve"), abs=0.01)
        assert times["learn_to_solve"] >= run["wall_s"]["total"] - 0.01
    eb = next(r for r in data["runs"] if r["variant"] == "eb")
    assert eb["kind_per_trial"] == ["random", "ilqr", "policy"]
    assert {"ilqr", "pretrain"} <= set(eb["wall_s"])
    assert "machine" in data and "eb_vs_mc" in data["summary"]
    assert png.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "EB-MC-PILCO vs MC-PILCO" in printed
    assert "solve_s" in printed and "median learn call to solved" in printed


@pytest.mark.timeout(300)
def test_bench_step_writes_results(tmp_path):
    out = tmp_path / "step.json"
    assert main(["bench", "step", "--points", "20", "30", "--repeats", "2", "--json", str(out),
                 "--set", "optimizer.particles=32"]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["points"] for r in results] == [20, 30]
    for r in results:
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and "peak_mb" in r


@pytest.mark.timeout(300)
def test_bench_accuracy_compares_each_fast_path_with_exact_float64(tmp_path):
    out = tmp_path / "accuracy.json"
    assert main(["bench", "accuracy", "--points", "30", "--draws", "3", "--json", str(out),
                 "--set", "optimizer.particles=64", "--set", "optimizer.horizon=20"]) == 0
    data = json.loads(out.read_text())
    rows = {(r["backend"], r["dtype"]): r for r in data["results"]}
    assert set(rows) == {("torch", "float64"), ("torch", "float32"), ("native", "float32")}
    assert rows["torch", "float64"]["mean_error"] == 0 and data["monte_carlo_std"] > 0
    for key in (("torch", "float32"), ("native", "float32")):
        assert rows[key]["variance_rank_tol"] == 1e-3
        assert abs(rows[key]["mean_error"]) < 0.5 * data["monte_carlo_std"]


def test_bad_override_is_reported_with_the_parameter(capsys):
    assert main(["bench", "step", "--set", "optimizer.horizon=0"]) == 2
    assert "optimizer.horizon = 0: must be in [1, 100000]" in capsys.readouterr().err


def _run(variant, seed, solved, total):
    return {"variant": variant, "algorithm": variant.split("-")[0], "seed": seed,
            "solved": solved, "trials_to_solve": 5 if solved else None, "interaction_s": 15.0,
            "opt_steps": 1000, "success_per_trial": [],
            "wall_s": {"model": 1.0, "policy": 2.0, "total": total},
            "opt_costs": [[30.0, 20.0, 10.0]]}


def test_bench_merge_replaces_a_rerun_variant_whole(tmp_path, capsys):
    first, second, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "merged.json"
    first.write_text(json.dumps({"runs": [_run("eb", 1, False, 900.0), _run("mc", 1, True, 800.0),
                                          _run("eb", 2, False, 900.0), _run("mc", 2, True, 600.0)],
                                 "machine": {"cpu": "A"}}))
    second.write_text(json.dumps({"runs": [_run("eb", 1, True, 300.0)],
                                  "machine": {"cpu": "B"}}))
    assert main(["bench", "merge", str(first), str(second), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    # eb from the second file only (its seed 2 from the first file is gone), mc from the first
    pairs = [(r["variant"], r["seed"]) for r in data["runs"]]
    assert pairs == [("eb", 1), ("mc", 1), ("mc", 2)]
    assert data["summary"]["eb"]["solved"] == 1 and data["summary"]["mc"]["seeds"] == 2
    assert data["summary"]["eb_vs_mc"]["total_time_reduction"] == pytest.approx(1 - 300 / 700)
    assert [s["machine"]["cpu"] for s in data["sources"]] == ["A", "B"]
    assert "EB-MC-PILCO vs MC-PILCO" in capsys.readouterr().out


def test_bench_merge_union_pools_seeds_and_refuses_another_config(tmp_path, capsys):
    config = {"exploration": {"max_deviation": 1.0}}
    files = [tmp_path / f"{n}.json" for n in "abc"]
    runs = [[_run("eb", 1, True, 100.0), _run("eb", 2, False, 900.0)],
            [_run("eb", 2, True, 200.0), _run("eb", 3, True, 300.0)]]
    for path, rs in zip(files, runs):
        path.write_text(json.dumps({"runs": rs, "config": config}))
    files[2].write_text(json.dumps({"runs": [_run("eb", 4, True, 50.0)],
                                    "config": {"exploration": {"max_deviation": 0.0}}}))
    out = tmp_path / "merged.json"
    assert main(["bench", "merge", "--union", str(files[0]), str(files[1]),
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    # seeds 1-3 pooled, seed 2 from the later file
    assert [(r["seed"], r["wall_s"]["total"]) for r in data["runs"]] == [
        (1, 100.0), (2, 200.0), (3, 300.0)]
    assert data["summary"]["eb"]["seeds"] == 3 and data["summary"]["eb"]["solved"] == 3
    assert data["summary"]["eb"]["median_total_s"] == 200.0
    capsys.readouterr()
    assert main(["bench", "merge", "--union", str(files[0]), str(files[2]),
                 "--json", str(out)]) == 2
    assert "differs at exploration.max_deviation" in capsys.readouterr().err


def _children(pid: int) -> set[int]:
    """The live child processes of `pid` (every thread's list)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


def _is_pool_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.timeout(180)
def test_bench_workers_end_when_the_bench_is_killed_outright(tmp_path):
    """`bench learn --jobs 2` killed with SIGKILL (no Ctrl-C reaching its process group): its
    worker processes end too instead of running their learning to the end."""
    bench = subprocess.Popen(
        [sys.executable, "-m", "ebmcpilco_ros.cli", "bench", "learn", "--algorithm", "eb",
         "--seeds", "1", "2", "--jobs", "2", "--json", str(tmp_path / "learn.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120.0
        while len(workers) < 2:   # both workers started and running their first run
            assert bench.poll() is None and time.monotonic() < deadline, "no workers started"
            workers = {p for p in _children(bench.pid) if _is_pool_worker(p)}
            time.sleep(0.2)
        time.sleep(2.0)            # past the workers' start-up, into their runs
        assert all(_is_pool_worker(p) for p in workers)
        bench.send_signal(signal.SIGKILL)
        bench.wait(timeout=10.0)
        deadline = time.monotonic() + 30.0
        while any(_is_pool_worker(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_is_pool_worker(p) for p in workers), "a worker outlived the bench"
    finally:
        for pid in workers | ({bench.pid} if bench.poll() is None else set()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
