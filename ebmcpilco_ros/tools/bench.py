"""Benchmarks behind `ebmcpilco bench`: figures printed and written as JSON, never asserted.

    learn   full learning runs over seeds, per algorithm (the paper's comparison)
    step    one MC-PILCO policy-gradient step (rollout + gradient + Adam) at given GP sizes
    policy-eval  one evaluation u = pi(x) of the policy: numpy export, controller, torch
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..core.config import ExperimentConfig, ModelConfig
from ..core.gp import GPPosterior, fit_hyperparameters, select_subset
from ..core.learner import LearningReport, TrialSummary, run_in_process
from ..core.mcpilco import initial_particles, rollout_backend, torch_dtype, torch_threads
from ..core.native_rollout import resolve_backend, unavailable_reason
from ..core.model import SpeedIntegrationModel, training_data
from ..core.policy import SquashedRBFPolicy
from ..core.policy_numpy import export_source
from ..core.rollout import (TORCH_BACKEND, ParticleDynamics, RolloutNoise,
                            rollout_cost_and_gradient)
from ..core.controllers import PolicyController, RandomController
from ..core.jsonio import write_json_atomic
from ..core.systems import SimulatedCartPole
from ..progress import trial_line
from ..scheduling import available_cores, end_with_parent


def machine_info(threads: int | None = None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": available_cores(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": threads or torch.get_num_threads(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average": os.getloadavg()}


# -- bench learn ----------------------------------------------------------------------------------

PRETRAIN_ABLATION = ("none", "mse", "bayes")


def learn_variants(config: ExperimentConfig, algorithms: Sequence[str], ablation: bool
                   ) -> list[tuple[str, str, dict]]:
    """(label, algorithm, config overrides) per variant. The ablation adds EB once per
    pretraining method; the configured method is the plain "eb" run when that is requested."""
    variants = [(a, a, {}) for a in algorithms]
    if ablation:
        variants += [(f"eb-{m}", "eb", {"pretrain": {"method": m}}) for m in PRETRAIN_ABLATION
                     if not ("eb" in algorithms and m == config.pretrain.method)]
    return variants


def _print_flushed(line: str) -> None:
    print(line, flush=True)


def _learn_run(cfg: ExperimentConfig, label: str,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """One benchmark run (module level: it also runs in worker processes, printing there)."""
    seed = cfg.learner.seed

    def on_trial(s: TrialSummary, _trial: Any) -> None:
        log(f"  [{label} seed {seed}] {trial_line(dataclasses.asdict(s))}")
    report: LearningReport = run_in_process(cfg, on_trial=on_trial)
    run = report.to_dict()
    run["variant"] = label
    run["pretrain"] = cfg.pretrain.method if cfg.learner.algorithm == "eb" else None
    run["opt_costs"] = report.opt_costs
    return run


def threads_per_run(configured: int, jobs: int) -> int:
    """Threads per run (particle workers, fit threads) when `jobs` runs share the cores: at most
    cores // jobs, >= 1."""
    return max(1, min(configured, available_cores() // jobs))


def learn(config: ExperimentConfig, algorithms: Sequence[str], seeds: Sequence[int],
          ablation: bool = False, log: Callable[[str], None] = print,
          json_path: str | Path | None = None, jobs: int = 1) -> dict[str, Any]:
    """Every (seed, variant) run, `jobs` at a time in separate processes (each with
    optimizer.threads torch threads); with json_path the results so far are rewritten after
    each run, so an interrupted benchmark keeps every finished run. With jobs > 1 each run's
    optimizer.particle_workers and optimizer.fit_threads are capped at its share of the cores
    (threads_per_run): more threads than cores only queue."""
    if jobs > 1:
        for name in ("particle_workers", "fit_threads"):
            configured = getattr(config.optimizer, name)
            capped = threads_per_run(configured, jobs) if configured else 0
            if capped != configured:
                log(f"{jobs} runs at a time on {available_cores()} cores: "
                    f"optimizer.{name} {configured} -> {capped}")
                config = config.replace(optimizer={name: capped})
    variants = learn_variants(config, algorithms, ablation)
    order = {(seed, label): i for i, (seed, (label, _, _)) in
             enumerate((s, v) for s in seeds for v in variants)}
    # the requested algorithms on every seed first, the ablation after: a benchmark cut short
    # still has the main comparison
    main, extra = variants[:len(algorithms)], variants[len(algorithms):]
    work = [(config.replace(learner={"algorithm": algorithm, "seed": seed}, **overrides), label)
            for group in (main, extra) for seed in seeds
            for label, algorithm, overrides in group]
    runs: list[dict[str, Any]] = []

    def result() -> dict[str, Any]:
        runs.sort(key=lambda r: order[(r["seed"], r["variant"])])
        machine = machine_info(config.optimizer.threads or None)
        machine["parallel_runs"] = jobs
        return {"runs": runs, "summary": summarize(runs), "config": config.to_dict(),
                "machine": machine}

    def finished(run: dict[str, Any]) -> None:
        runs.append(run)
        log(f"{run['variant']} seed {run['seed']}: solved={run['solved']} "
            f"trials={run['trials_to_solve']} interaction={run['interaction_s']:.1f}s "
            f"steps={run['opt_steps']} total={run['wall_s']['total']:.1f}s "
            f"learn_to_solve={_to_solve(run)}s")
        if json_path:
            write_json_atomic(json_path, result(), indent=2)

    if jobs <= 1:
        for cfg, label in work:
            finished(_learn_run(cfg, label, log))
        return result()
    context = multiprocessing.get_context("spawn")   # no forked torch thread pools
    # workers end with this process even when it is killed outright (not only on Ctrl-C,
    # which reaches the whole process group): a stray worker would hold a core for minutes
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context,
                                                initializer=end_with_parent,
                                                initargs=(os.getpid(),)) as pool:
        pending = [pool.submit(_learn_run, cfg, label, _print_flushed) for cfg, label in work]
        for future in concurrent.futures.as_completed(pending):
            finished(future.result())
    return result()


def merge_learn(paths: Sequence[str | Path], union: bool = False) -> dict[str, Any]:
    """Several `bench learn` JSONs as one (e.g. runs split across machines, or one algorithm
    rerun after a change that cannot affect the other). A variant present in a later file
    replaces all of that variant's runs from earlier files; with `union`, the files' runs are
    pooled instead (seeds split across files), a later file's run of the same variant and seed
    replacing the earlier one, and files run with different configs are refused, including
    those `learn` capped by --jobs (optimizer.particle_workers splits the particles' sums, so
    a run at another count follows another optimisation). Each file's machine is kept."""
    by_variant: dict[str, dict[int | None, dict[str, Any]]] = {}
    sources: list[dict[str, Any]] = []
    data: dict[str, Any] = {}
    first_config: Any = None
    for path in paths:
        data = json.loads(Path(path).read_text())
        if union and sources and data.get("config") != first_config:
            raise ValueError(f"{path}: run with another config than {sources[0]['path']} "
                             f"(differs at {_first_difference(first_config, data.get('config'))})"
                             "; --union pools only runs of one config")
        if not sources:
            first_config = data.get("config")
        variants = list(dict.fromkeys(r["variant"] for r in data["runs"]))
        for v in variants:
            runs = {r["seed"]: r for r in data["runs"] if r["variant"] == v}
            by_variant[v] = {**by_variant.get(v, {}), **runs} if union else runs
        sources.append({"path": str(path), "variants": variants, "machine": data.get("machine")})
    order = list(by_variant)
    runs = sorted((r for rs in by_variant.values() for r in rs.values()),
                  key=lambda r: (r["seed"], order.index(r["variant"])))
    return {"runs": runs, "summary": summarize(runs), "config": data.get("config"),
            "machine": data.get("machine"), "sources": sources}


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    """The first dotted key at which two configs differ, for the refusal's message."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}{key}.")
    return where.rstrip(".") or "the top level"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rs = [r for r in runs if r["variant"] == variant]
        solved = [r for r in rs if r["solved"]]
        out[variant] = {
            "algorithm": rs[0]["algorithm"], "seeds": len(rs), "solved": len(solved),
            "success_rate": len(solved) / len(rs),
            "median_trials_to_solve": _median([r["trials_to_solve"] for r in solved]),
            "median_interaction_s": _median([r["interaction_s"] for r in solved]),
            "median_opt_steps": _median([r["opt_steps"] for r in rs]),
            "median_total_s": _median([r["wall_s"]["total"] for r in rs]),
            # learn call -> solving rollout's end, the rollouts in real time (solved runs)
            "median_learn_to_solve_s": _median([r["time_to_solve_s"]["learn_to_solve"]
                                                for r in solved if "time_to_solve_s" in r]),
        }
    if "eb" in out and "mc" in out and out["mc"]["median_total_s"]:
        eb, mc = out["eb"], out["mc"]
        out["eb_vs_mc"] = {
            "total_time_reduction": 1.0 - eb["median_total_s"] / mc["median_total_s"],
            "opt_steps_reduction": (1.0 - eb["median_opt_steps"] / mc["median_opt_steps"]
                                    if mc["median_opt_steps"] else None)}
    return out


def _to_solve(run: dict[str, Any]) -> str:
    """The run's learn-call-to-solved seconds (rollouts in real time), '-' if unsolved."""
    times = run.get("time_to_solve_s")
    return f"{times['learn_to_solve']:.1f}" if run["solved"] and times else "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def learn_table(result: dict[str, Any]) -> str:
    """One row per seed, the variants side by side, then medians and EB's reduction over MC."""
    runs = result["runs"]
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    phases = [p for p in ("model", "ilqr", "pretrain", "policy")
              if any(p in r["wall_s"] for r in runs)]
    cols = ["trials", "inter_s", "steps"] + [f"{p}_s" for p in phases] + ["total_s", "solve_s"]
    width = max(len(c) for c in cols) + 1
    span = len(cols) * (width + 1) - 1
    head1 = f"{'seed':>4s} | " + " | ".join(f"{v:^{span}s}" for v in variants)
    head2 = f"{'':>4s} | " + " | ".join(" ".join(f"{c:>{width}s}" for c in cols)
                                        for _ in variants)
    lines = [head1, head2, "-" * len(head2)]

    def cells(r: dict[str, Any] | None) -> str:
        if r is None:
            return " ".join(f"{'-':>{width}s}" for _ in cols)
        trials = str(r["trials_to_solve"]) if r["solved"] else "fail"
        vals = [trials, f"{r['interaction_s']:.1f}", str(r["opt_steps"])]
        vals += [f"{r['wall_s'].get(p, 0.0):.1f}" for p in phases]
        vals += [f"{r['wall_s']['total']:.1f}", _to_solve(r)]
        return " ".join(f"{v:>{width}s}" for v in vals)

    for seed in sorted({r["seed"] for r in runs}):
        by = {r["variant"]: r for r in runs if r["seed"] == seed}
        lines.append(f"{seed:4d} | " + " | ".join(cells(by.get(v)) for v in variants))
    lines.append("")
    for v in variants:
        s = result["summary"][v]
        lines.append(f"{v}: solved {s['solved']}/{s['seeds']}, median trials to solve "
                     f"{s['median_trials_to_solve']}, median interaction "
                     f"{s['median_interaction_s']} s, median optimisation steps "
                     f"{s['median_opt_steps']}, median total {s['median_total_s']:.1f} s, "
                     f"median learn call to solved {_seconds(s.get('median_learn_to_solve_s'))}")
    if "eb_vs_mc" in result["summary"]:
        red = result["summary"]["eb_vs_mc"]
        lines.append(f"EB-MC-PILCO vs MC-PILCO: median total time "
                     f"{100 * red['total_time_reduction']:.1f}% lower"
                     + (f", optimisation steps {100 * red['opt_steps_reduction']:.1f}% fewer"
                        if red["opt_steps_reduction"] is not None else ""))
    return "\n".join(lines)


def plot_learning_curves(result: dict[str, Any], path: str | Path) -> None:
    """Cost against optimisation step, trial by trial (steps concatenated across trials, a
    marker at each trial boundary), one line per run, one panel per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4), sharey=True,
                             squeeze=False)
    for ax, variant in zip(axes[0], variants):
        for r in (r for r in runs if r["variant"] == variant):
            offset = 0
            for i, costs in enumerate(r["opt_costs"]):
                steps = np.arange(offset, offset + len(costs))
                ax.plot(steps, costs, lw=0.8, color=f"C{r['seed'] % 10}",
                        label=f"seed {r['seed']}" if i == 0 else None)
                if len(costs):
                    ax.axvline(offset, color=f"C{r['seed'] % 10}", lw=0.4, ls=":")
                offset += len(costs)
        ax.set_title(f"{variant}: cost per optimisation step (dotted: new trial)")
        ax.set_xlabel("optimisation step (all learning trials)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("Monte Carlo cost J")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        kernel, likelihood = fit_hyperparameters(X, Y[:, i], ModelConfig())
        keep = select_subset(X, kernel, likelihood, 0.0, points)
        if len(keep) != points:
            raise RuntimeError(f"could only select {len(keep)} of {points} support points")
        gps.append(GPPosterior.build(X[keep], Y[keep, i], kernel, likelihood))
    return SpeedIntegrationModel(gps=tuple(gps), dt=config.plant.control_period)  # type: ignore


def accuracy(config: ExperimentConfig, points: int = 170, draws: int = 8,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """The rollout cost J of each fast path against the exact float64 rollout, on common noise.

    The approximations of ALGORITHM.md §7 (float32, variance rank truncation, the native
    kernel's polynomial exp2) bias J slightly; this measures that bias per implementation and
    the Monte Carlo std of J it should stay well below. No dropout, so only the rollout differs.
    """
    opt = config.optimizer
    model = model_with_points(points, config)
    exact_dyn = ParticleDynamics.from_model(model, torch.float64, rank_tol=0.0)
    fast_dyn = ParticleDynamics.from_model(model, torch.float32, rank_tol=opt.variance_rank_tol)
    policy64 = SquashedRBFPolicy(config.policy, config.plant.u_max, dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(points))
    policy32 = SquashedRBFPolicy(config.policy, config.plant.u_max, dtype=torch.float32)
    policy32.load_snapshot(policy64.parameters_snapshot())
    paths = [(TORCH_BACKEND, "float64", 0.0, policy64, exact_dyn)]
    paths += [(resolve_backend(name, torch.float32, "cpu"), "float32", opt.variance_rank_tol,
               policy32, fast_dyn)
              for name in ("torch", "native") if name == "torch" or unavailable_reason() is None]
    costs: dict[int, list[float]] = {i: [] for i in range(len(paths))}
    with torch_threads(opt.threads):
        for draw in range(draws):
            rng = np.random.default_rng([points, draw])
            x0 = initial_particles(opt.particles, config.plant.initial_state_std, rng,
                                   torch.float64, "cpu")
            noise = RolloutNoise.draw(opt.horizon, opt.particles, policy64.num_basis, 0.0, rng,
                                      torch.float64)
            for i, (backend, dtype, _, policy, dyn) in enumerate(paths):
                t = torch_dtype(dtype)
                n = RolloutNoise(noise.eps.to(t), None, 1.0)
                costs[i].append(rollout_cost_and_gradient(policy, dyn, x0.to(t), n, opt.horizon,
                                                          config.cost, backend).cost)
    exact = np.array(costs[0])
    results = []
    for i, (backend, dtype, tol, _, dyn) in enumerate(paths):
        err = np.array(costs[i]) - exact
        row = {"backend": backend.name, "dtype": dtype, "variance_rank_tol": tol,
               "rank": dyn.rank, "mean_cost": round(float(np.mean(costs[i])), 5),
               "mean_error": round(float(err.mean()), 5), "sd_error": round(float(err.std()), 5)}
        results.append(row)
        log(f"{backend.name:6s} {dtype}  rank {row['rank']:3d}  J {row['mean_cost']:9.4f}  "
            f"error vs exact {row['mean_error']:+.5f} (sd {row['sd_error']:.5f})")
    mc_std = float(exact.std(ddof=1))
    log(f"Monte Carlo std of J (exact, {draws} draws of {opt.particles} particles): {mc_std:.5f}")
    return {"points": points, "draws": draws, "monte_carlo_std": round(mc_std, 5),
            "results": results, "machine": machine_info(opt.threads or None)}


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
    backend = rollout_backend(opt)
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
                g = rollout_cost_and_gradient(policy, dyn, x0, noise, opt.horizon, config.cost,
                                              backend)
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
                         "device": opt.device, "dropout": opt.dropout,
                         "backend": backend.name, "particle_workers": opt.particle_workers},
            "machine": machine_info(opt.threads or None)}


# -- bench policy-eval ----------------------------------------------------------------------------

def policy_eval(config: ExperimentConfig, calls: int = 20000, repeats: int = 5,
                warmup: int = 2000, seed: int = 0, log: Callable[[str], None] = print
                ) -> dict[str, Any]:
    """The time of one policy evaluation u = pi(x) for one measured state, as the control loop
    asks for it, at the config's policy size (the paper's: 200 centres, 4-D state):

        numpy_export  the file `ebmcpilco export-policy` writes, imported from a temporary folder
        controller    PolicyController (what the execution node runs: the same numpy code)
        torch         SquashedRBFPolicy in evaluation mode, float64, no_grad, one torch thread,
                      the state taken from numpy and u returned as a float, as a caller would

    Each repeat times `calls` single calls with perf_counter_ns (the timer's own cost included,
    and reported), the paths in turn so that a change of load hits them alike; the figures are
    the medians over repeats of each repeat's median and p99. Also the largest |u| difference
    between the numpy and torch paths on the states used."""
    machine = machine_info(1)   # with the load average before the measurement
    u_max = config.plant.u_max
    policy = SquashedRBFPolicy(config.policy, u_max, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(seed)).eval()
    params = policy.parameters_snapshot(version=1)
    controller = PolicyController(params)
    rng = np.random.default_rng(seed)
    states = rng.normal(0.0, [0.5, 1.5, 4.0, 6.0], size=(1024, 4))  # swing-up's range
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "exported_policy.py"
        path.write_text(export_source(params, "bench policy-eval", "exported_policy"))
        spec = importlib.util.spec_from_file_location("exported_policy", path)
        assert spec is not None and spec.loader is not None
        exported = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(exported)
    numpy_policy = exported.policy

    def torch_eval(x: np.ndarray) -> float:
        with torch.no_grad():
            return float(policy(torch.from_numpy(x)[None])[0])

    paths: dict[str, Callable[[np.ndarray], float]] = {
        "numpy_export": numpy_policy, "controller": lambda x: controller(0, x),
        "torch": torch_eval}
    n = len(states)
    rows = [states[k] for k in range(n)]
    with torch_threads(1):
        reference = np.array([torch_eval(x) for x in rows])
        agreement = {name: float(np.max(np.abs(np.array([f(x) for x in rows]) - reference)))
                     for name, f in paths.items() if name != "torch"}
        timer = np.diff([time.perf_counter_ns() for _ in range(10001)])
        per_repeat: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        for name, f in paths.items():
            for k in range(warmup):
                f(rows[k % n])
        for _ in range(repeats):
            for name, f in paths.items():
                times = np.empty(calls)
                clock = time.perf_counter_ns
                for k in range(calls):
                    x = rows[k % n]
                    t0 = clock()
                    f(x)
                    times[k] = clock() - t0
                times *= 1e-3  # us
                per_repeat[name].append((float(np.median(times)),
                                         float(np.percentile(times, 99))))
    results = []
    log(f"one policy evaluation: {config.policy.num_basis} centres, 4-D state, {repeats} "
        f"repeats x {calls} calls (figures: medians over repeats)")
    for name, figures in per_repeat.items():
        medians = [m for m, _ in figures]
        row = {"path": name, "median_us": round(statistics.median(medians), 2),
               "p99_us": round(statistics.median(p for _, p in figures), 2),
               "repeat_medians_us": [round(m, 2) for m in medians],
               "max_abs_diff_vs_torch": agreement.get(name)}
        results.append(row)
        diff = (f"  max |u - u_torch| {row['max_abs_diff_vs_torch']:.1e} N"
                if name in agreement else "")
        log(f"  {name:13s} median {row['median_us']:8.2f} us  p99 {row['p99_us']:8.2f} us  "
            f"(repeat medians {min(medians):.2f}-{max(medians):.2f}){diff}")
    timer_us = float(np.median(timer)) * 1e-3
    after = os.getloadavg()
    log(f"  timer overhead {timer_us:.3f} us per call (included); load average "
        + " ".join(f"{v:.2f}" for v in machine["load_average"]) + " before, "
        + " ".join(f"{v:.2f}" for v in after) + f" after; {machine['cpu']}, "
        f"{machine['cores']} cores, numpy {np.__version__}, torch {torch.__version__}")
    return {"results": results,
            "settings": {"basis": config.policy.num_basis, "u_max": u_max, "calls": calls,
                         "repeats": repeats, "warmup": warmup, "seed": seed,
                         "torch_threads": 1, "numpy": np.__version__,
                         "timer_overhead_us": round(timer_us, 3)},
            "machine": machine, "load_average_after": after}
