"""Benchmarks behind `ebmcpilco bench`: figures printed and written as JSON, never asserted.

    learn   full learning runs over seeds, per algorithm (the paper's comparison)
    step    one MC-PILCO policy-gradient step (rollout + gradient + Adam) at given GP sizes
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .core.config import ExperimentConfig, ModelConfig
from .core.gp import GPPosterior, fit_hyperparameters, select_subset
from .core.learner import LearningReport, TrialSummary, run_in_process
from .core.mcpilco import initial_particles, torch_dtype, torch_threads
from .core.model import SpeedIntegrationModel, training_data
from .core.policy import SquashedRBFPolicy
from .core.rollout import ParticleDynamics, RolloutNoise, rollout_cost_and_gradient
from .core.controllers import RandomController
from .core.systems import SimulatedCartPole


def machine_info(threads: int | None = None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": threads or torch.get_num_threads(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Atomic write: a crash never leaves half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


# -- bench learn ----------------------------------------------------------------------------------

def learn(config: ExperimentConfig, algorithms: Sequence[str], seeds: Sequence[int],
          log: Callable[[str], None] = print) -> dict[str, Any]:
    runs = []
    for seed in seeds:
        for algorithm in algorithms:
            cfg = config.replace(learner={"algorithm": algorithm, "seed": seed})

            def on_trial(s: TrialSummary, _trial: Any, algorithm: str = algorithm,
                         seed: int = seed) -> None:
                log(f"  [{algorithm} seed {seed}] trial {s.index} {s.kind:7s} "
                    f"{'SOLVED' if s.success else 'failed':6s} cost {s.cost:6.2f} "
                    f"steps {s.opt_steps:5d} "
                    + " ".join(f"{k} {v:.1f}s" for k, v in s.wall_s.items()))
            report: LearningReport = run_in_process(cfg, on_trial=on_trial)
            run = report.to_dict()
            run["opt_costs"] = report.opt_costs
            runs.append(run)
            log(f"{algorithm} seed {seed}: solved={run['solved']} "
                f"trials={run['trials_to_solve']} interaction={run['interaction_s']:.1f}s "
                f"steps={run['opt_steps']} total={run['wall_s']['total']:.1f}s")
    return {"runs": runs, "summary": summarize(runs), "config": config.to_dict(),
            "machine": machine_info(config.optimizer.threads or None)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for algorithm in sorted({r["algorithm"] for r in runs}):
        rs = [r for r in runs if r["algorithm"] == algorithm]
        solved = [r for r in rs if r["solved"]]
        out[algorithm] = {
            "seeds": len(rs), "solved": len(solved),
            "success_rate": len(solved) / len(rs),
            "median_trials_to_solve": _median([r["trials_to_solve"] for r in solved]),
            "median_interaction_s": _median([r["interaction_s"] for r in solved]),
            "median_opt_steps": _median([r["opt_steps"] for r in rs]),
            "median_total_s": _median([r["wall_s"]["total"] for r in rs]),
        }
    return out


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def learn_table(result: dict[str, Any]) -> str:
    runs = result["runs"]
    phases = sorted({k for r in runs for k in r["wall_s"]} - {"total", "system"})
    head = (f"{'alg':4s} {'seed':>4s} {'solved':>6s} {'trials':>6s} {'inter_s':>7s} "
            f"{'steps':>6s} " + " ".join(f"{p + '_s':>9s}" for p in phases) + f" {'total_s':>8s}")
    lines = [head, "-" * len(head)]
    for r in sorted(runs, key=lambda r: (r["seed"], r["algorithm"])):
        lines.append(
            f"{r['algorithm']:4s} {r['seed']:4d} {str(r['solved']):>6s} "
            f"{str(r['trials_to_solve']):>6s} {r['interaction_s']:7.1f} {r['opt_steps']:6d} "
            + " ".join(f"{r['wall_s'].get(p, 0.0):9.1f}" for p in phases)
            + f" {r['wall_s']['total']:8.1f}")
    lines.append("")
    for alg, s in result["summary"].items():
        lines.append(f"{alg}: solved {s['solved']}/{s['seeds']}, median trials "
                     f"{s['median_trials_to_solve']}, median interaction "
                     f"{s['median_interaction_s']} s, median steps {s['median_opt_steps']}, "
                     f"median total {s['median_total_s']:.1f} s")
    return "\n".join(lines)


# -- bench step -----------------------------------------------------------------------------------

def model_with_points(points: int, config: ExperimentConfig, seed: int = 0
                      ) -> SpeedIntegrationModel:
    """A real speed-integration model of the cart-pole whose two GPs keep exactly `points`.

    Hyperparameters are fitted on random-exploration data; the support is the first `points`
    samples that SoD would accept at threshold 0 (i.e. distinct samples in visiting order).
    """
    sim = SimulatedCartPole(config.plant, np.random.default_rng(seed))
    ctrl = RandomController(config.plant.u_max, seed=seed + 1)
    trials = [sim.run(ctrl, kind="random", index=i)
              for i in range(int(np.ceil(points / config.plant.steps)) + 1)]
    X, Y = training_data(trials)
    gps = []
    for i in range(2):
        hyp = fit_hyperparameters(X, Y[:, i], ModelConfig())
        keep = select_subset(X, hyp, 0.0, points)
        if len(keep) != points:
            raise RuntimeError(f"could only select {len(keep)} of {points} support points")
        gps.append(GPPosterior.build(X[keep], Y[keep, i], hyp))
    return SpeedIntegrationModel(gps=tuple(gps), dt=config.plant.control_period)  # type: ignore


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak_rss() -> None:
    try:  # Linux: "5" resets the peak-RSS high-water mark of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def step(config: ExperimentConfig, points: Sequence[int], repeats: int = 20,
         warmup: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    opt = config.optimizer
    dtype, device = torch_dtype(opt.dtype), torch.device(opt.device)
    results = []
    with torch_threads(opt.threads):
        for n in points:
            model = model_with_points(n, config)
            dyn = ParticleDynamics.from_model(model, dtype=dtype, device=device,
                                              rank_tol=opt.variance_rank_tol)
            rng = np.random.default_rng(n)
            policy = SquashedRBFPolicy(config.policy, config.plant.u_max, dtype=dtype,
                                       generator=torch.Generator().manual_seed(n)).to(device)
            adam = torch.optim.Adam(policy.parameters(), lr=opt.lr)
            params = (policy.weights, policy.centres, policy.log_lengthscales)

            def one_step() -> None:
                x0 = initial_particles(opt.particles, config.plant.initial_state_std, rng,
                                       dtype, device)
                noise = RolloutNoise.draw(opt.horizon, opt.particles, policy.num_basis,
                                          opt.dropout, rng, dtype, device)
                g = rollout_cost_and_gradient(policy, dyn, x0, noise, opt.horizon, config.cost)
                for p, gp in zip(params, (g.grad_weights, g.grad_centres,
                                          g.grad_log_lengthscales)):
                    p.grad = gp
                adam.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()

            gc.collect()
            base = _rss_mb("VmRSS")
            _reset_peak_rss()
            for _ in range(warmup):
                one_step()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                one_step()
                times.append((time.perf_counter() - t0) * 1e3)
            peak = _rss_mb("VmHWM") - base  # what the step allocates beyond the set-up
            row = {"points": n, "median_ms": round(statistics.median(times), 2),
                   "p90_ms": round(float(np.percentile(times, 90)), 2),
                   "min_ms": round(min(times), 2), "peak_mb": round(max(peak, 0.0), 1),
                   "repeats": repeats}
            results.append(row)
            log(f"points {n:4d}: median {row['median_ms']:8.2f} ms  p90 {row['p90_ms']:8.2f} ms"
                f"  peak {row['peak_mb']:6.1f} MB")
    return {"results": results,
            "settings": {"particles": opt.particles, "horizon": opt.horizon,
                         "basis": config.policy.num_basis, "dtype": opt.dtype,
                         "device": opt.device, "dropout": opt.dropout},
            "machine": machine_info(opt.threads or None)}
