"""`ebmcpilco`: demo, benchmarks and tools, without `ros2` (pip-installed ROS 2 wheels suffice).

    ebmcpilco demo                     learn the swing-up on the simulated cart-pole
    ebmcpilco sim                      the same through the ROS 2 node graph (no ros2 launch)
    ebmcpilco rig --port DEV           the graph on a physical rig (--emulator: on the emulator,
                                       --firmware-sim: on the firmware ELF in simavr)
    ebmcpilco sim|rig --resume RUN     continue a run that crashed, failed or was aborted
    ebmcpilco up sim|rig [...]         bring the graph up, learning nothing until called
    ebmcpilco call VERB                learn, run_trial, abort, resume, reset, estop: one call
    ebmcpilco status [--follow]        the trial manager's status, or a line per event
    ebmcpilco inspect RUN              how a run directory's run stands (finished, died, ...)
    ebmcpilco report RUN [--out DIR]   plots, a GIF of the best trial and report.md of a run
    ebmcpilco profile RUN [--phases]   where a graph run's wall time went (work, overhead, crashes)
    ebmcpilco bench learn ...          learning runs over seeds -> table + JSON
    ebmcpilco bench merge A B --json C several learn JSONs as one (later files win per variant)
    ebmcpilco bench step ...           one policy-optimisation step at several GP sizes
    ebmcpilco bench accuracy ...       rollout cost of the fast paths against exact float64
    ebmcpilco bench realtime ...       control-loop lateness and latency under optimiser load
    ebmcpilco bench link ...           serial link under byte corruption (emulator, no ROS)
    ebmcpilco bench roundtrip ...      state frame -> JointState -> command frame latency
    ebmcpilco bench firmware ...       the firmware ELF in simavr: interrupt load, jitter, latency
    ebmcpilco bench policy-eval ...    one policy evaluation: numpy export against torch
    ebmcpilco bench resume --kills 20  SIGKILL the learning at random moments, resume each time
    ebmcpilco export-policy F --out P  a learned policy as one numpy-only Python file
    ebmcpilco emulator ...             firmware emulator on a pty (for the hardware node)
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

import yaml

from .core.config import ConfigError, ExperimentConfig, find_config, load_config

RUN_HELP = "a run directory, or a run id under $ROS_HOME/ebmcpilco/runs (ROS_HOME: else ~/.ros)"


def _overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`section.key=value` strings (YAML values) -> {section: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _write_json(path: str | None, result: dict[str, Any]) -> None:
    """A benchmark's figures to --json, if given."""
    if path:
        from .core.jsonio import write_json_atomic

        write_json_atomic(path, result, indent=2)
        print(f"wrote {path}")


def _ros_environment(domain_id: int | None = None) -> None:
    """This process's ROS 2 settings, set here at the entry point (no library function sets
    os.environ): the graph nodes' discovery range and middleware where not set (a client on
    another discovery range than the nodes' would not find them), and `domain_id` if given."""
    from .nodes.bringup import graph_environment

    defaults = graph_environment({})
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION"):
        os.environ.setdefault(key, defaults[key])
    if domain_id is not None:
        os.environ["ROS_DOMAIN_ID"] = str(domain_id)


def _private_domain() -> int:
    """A random ROS domain for a benchmark that brings up a graph of its own."""
    return random.SystemRandom().randint(1, 101)


def _config(args: argparse.Namespace) -> ExperimentConfig:
    return load_config(find_config(args.config), **_overrides(args.set))


def _add_config_args(p: argparse.ArgumentParser, default: str = "paper_cartpole") -> None:
    p.add_argument("--config", default=default,
                   help=f"config name in config/ or a YAML path (default: {default})")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set optimizer.threads=2 (repeatable)")


def cmd_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from .core.learner import run_in_process
    from .progress import report_lines, trial_line

    cfg = _config(args)
    if args.seed is not None:
        cfg = cfg.replace(learner={"seed": args.seed})
    print(f"EB-MC-PILCO demo: {cfg.learner.algorithm} on the simulated cart-pole, seed "
          f"{cfg.learner.seed}, up to {cfg.learner.max_trials} trials of "
          f"{cfg.plant.trial_duration:g} s", flush=True)

    def on_trial(s: Any, _trial: Any) -> None:
        print(trial_line(dataclasses.asdict(s)), flush=True)

    report = run_in_process(cfg, on_trial=on_trial)
    print(report_lines(report.to_dict()), flush=True)
    return 0 if report.solved else 1


def cmd_bench_learn(args: argparse.Namespace) -> int:
    from .tools import bench

    cfg = _config(args)
    result = bench.learn(cfg, args.algorithm, args.seeds, ablation=args.ablation,
                         json_path=args.json, jobs=args.jobs)
    print(bench.learn_table(result))
    if args.json:
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot_learning_curves(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_bench_merge(args: argparse.Namespace) -> int:
    from .tools import bench

    try:
        result = bench.merge_learn(args.inputs, union=args.union)
    except ValueError as exc:
        print(f"ebmcpilco bench merge: {exc}", file=sys.stderr)
        return 2
    print(bench.learn_table(result))
    _write_json(args.json, result)
    if args.plot:
        bench.plot_learning_curves(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_bench_step(args: argparse.Namespace) -> int:
    from .tools import bench

    cfg = _config(args)
    result = bench.step(cfg, args.points, repeats=args.repeats)
    _write_json(args.json, result)
    return 0


def cmd_bench_policy_eval(args: argparse.Namespace) -> int:
    from .tools import bench

    result = bench.policy_eval(_config(args), calls=args.calls, repeats=args.repeats)
    _write_json(args.json, result)
    return 0


def cmd_bench_resume(args: argparse.Namespace) -> int:
    from .tools import killbench

    _ros_environment(args.domain_id)
    overrides = _overrides(args.set)
    result = killbench.bench(find_config(args.config), overrides, kills=args.kills,
                             seed=args.seed, run_directory=args.run_directory,
                             per_trial=args.per_trial, max_loss=args.max_loss,
                             log=lambda line: print(line, flush=True))
    print(killbench.summary_text(result))
    _write_json(args.json, result)
    return 0 if result["ok"] else 1


def cmd_export_policy(args: argparse.Namespace) -> int:
    import json

    from .core.policy_numpy import export_policy

    try:
        data = json.loads(Path(args.controller).read_text(encoding="utf-8"))
        print(export_policy(data, args.out, origin=args.controller))
    except (OSError, ValueError) as exc:
        print(f"ebmcpilco export-policy: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_bench_accuracy(args: argparse.Namespace) -> int:
    from .tools import bench

    result = bench.accuracy(_config(args), args.points, args.draws)
    _write_json(args.json, result)
    return 0


def _add_graph_args(p: argparse.ArgumentParser, up: bool = False) -> None:
    """What `sim` and `rig` (and `up sim`, `up rig`) share: shortcuts for the learning run and
    the bring-up's options."""
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--algorithm", choices=["mc", "eb"], default=None)
    p.add_argument("--device", default=None, help="optimizer.device: cpu, cuda, cuda:N")
    p.add_argument("--namespace", default="", help="ROS namespace of every node")
    p.add_argument("--startup-timeout", type=float, default=120.0,
                   help="seconds for the graph to become ready (default 120)")
    p.add_argument("--verbose", action="store_true", help="also print each phase")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help=("the run in run directory RUN (or run id RUN under "
                         "$ROS_HOME/ebmcpilco/runs) with its own settings (--set on top), to "
                         "continue with `ebmcpilco call resume`" if up else
                         "continue the run in run directory RUN (or run id RUN under "
                         "$ROS_HOME/ebmcpilco/runs) from its last completed trial (its own "
                         "settings; --set on top)"))
    p.set_defaults(learn=not up)


def _graph_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """--set values, then the shortcuts --seed, --algorithm and --device of sim and rig."""
    overrides = _overrides(args.set)
    for section, key, value in (("learner", "seed", args.seed),
                                ("learner", "algorithm", args.algorithm),
                                ("optimizer", "device", args.device)):
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return overrides


def _resume_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]] | None:
    """The overrides of `sim`/`rig`, with --resume RUN's settings under them (None: RUN is no
    run directory, said on stderr)."""
    from .nodes import bringup
    from .nodes.rundir import RunDirError, describe_run, find_run, run_status

    overrides = _graph_overrides(args)
    if not args.resume:
        return overrides
    try:
        resumed = bringup.resume_overrides(find_run(args.resume), overrides)
        print(describe_run(run_status(find_run(args.resume))), flush=True)
    except RunDirError as exc:
        print(f"ebmcpilco {args.command}: --resume: {exc}", file=sys.stderr)
        return None
    return resumed


def cmd_sim(args: argparse.Namespace) -> int:
    from .nodes import bringup

    overrides = _resume_overrides(args)
    if overrides is None:
        return 2
    _ros_environment()
    return bringup.run_sim(find_config(args.config), overrides, namespace=args.namespace,
                           startup_timeout=args.startup_timeout, verbose=args.verbose,
                           resume=bool(args.resume), learn=args.learn)


def cmd_call(args: argparse.Namespace) -> int:
    from .shell import call

    _ros_environment()
    return call(args.verb.replace("-", "_"), namespace=args.namespace, timeout=args.timeout,
                service=args.service)


def cmd_status(args: argparse.Namespace) -> int:
    from .shell import follow, status

    if args.until_end and not args.follow:
        print("ebmcpilco status: --until-end goes with --follow", file=sys.stderr)
        return 2
    _ros_environment()
    if args.follow:
        return follow(namespace=args.namespace, until_end=args.until_end,
                      timeout=args.timeout, as_json=args.json)
    return status(namespace=args.namespace, timeout=args.timeout or 10.0, as_json=args.json)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .nodes.rundir import RunDirError, describe_run, find_run, run_status

    try:
        status = run_status(find_run(args.run))
    except RunDirError as exc:
        print(f"ebmcpilco inspect: {exc}", file=sys.stderr)
        return 2
    print(describe_run(status))
    if status["trial"] and status["outcome"] not in ("run_done", "running"):
        print(f"trial running at the end: {status['trial']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .nodes.rundir import find_run
    from .tools.report import ReportError, write_report

    try:
        files = write_report(find_run(args.run), args.out, particles=args.particles)
    except ReportError as exc:
        print(f"ebmcpilco report: {exc}", file=sys.stderr)
        return 2
    for path in files.all():
        print(f"wrote {path}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .core.jsonio import write_json_atomic
    from .nodes.rundir import RunDirError, find_run
    from .tools.profile import ProfileError, format_profile, profile_run

    try:
        profile = profile_run(find_run(args.run))
    except (RunDirError, ProfileError) as exc:
        print(f"ebmcpilco profile: {exc}", file=sys.stderr)
        return 2
    print(format_profile(profile, phases=args.phases))
    if args.json:
        write_json_atomic(Path(args.json), profile.to_dict())
    return 0


def cmd_rig(args: argparse.Namespace) -> int:
    from .nodes import bringup

    overrides = _resume_overrides(args)
    if overrides is None:
        return 2
    stand_in = (bringup.StandIn.EMULATOR if args.emulator
                else bringup.StandIn.FIRMWARE_SIM if args.firmware_sim else None)
    if not args.port and stand_in is None:
        print("ebmcpilco rig: give --port DEVICE (or --emulator, or --firmware-sim)",
              file=sys.stderr)
        return 2
    _ros_environment()
    return bringup.run_rig(find_config(args.config), overrides, port=args.port,
                           stand_in=stand_in, namespace=args.namespace,
                           startup_timeout=args.startup_timeout, verbose=args.verbose,
                           resume=bool(args.resume), learn=args.learn)


def cmd_bench_link(args: argparse.Namespace) -> int:
    from .tools import rigbench

    if not 0.0 <= args.corrupt <= 1.0:
        print("--corrupt must be in [0, 1]", file=sys.stderr)
        return 2
    print(f"streaming from the firmware emulator for {args.seconds:g} s with "
          f"{args.corrupt * 100:g} % of bytes corrupted both ways", flush=True)
    result = rigbench.link(args.seconds, args.corrupt, seed=args.seed,
                           log=lambda line: print(line, flush=True))
    print(rigbench.link_text(result))
    _write_json(args.json, result)
    return 0 if result["ok"] else 1


def cmd_bench_roundtrip(args: argparse.Namespace) -> int:
    from .tools import rigbench

    _ros_environment(None if "ROS_DOMAIN_ID" in os.environ else _private_domain())
    result = rigbench.roundtrip(args.seconds, find_config(args.config), _overrides(args.set),
                                startup_timeout=args.startup_timeout)
    print(rigbench.roundtrip_text(result))
    _write_json(args.json, result)
    return 0


def cmd_bench_firmware(args: argparse.Namespace) -> int:
    from .tools import firmware_bench

    from .hardware.config import load_hardware_config

    cfg = _config(args)
    cart_speed = (args.cart_speed if args.cart_speed is not None
                  else load_hardware_config(find_config(args.config)).cart_velocity_limit)
    result = firmware_bench.bench(cfg.plant, cart_speed, tuple(args.multiples),
                                  window=args.window, latency_seconds=args.seconds,
                                  log=lambda line: print(line, flush=True))
    print(firmware_bench.summary_text(result))
    _write_json(args.json, result)
    return 0


def cmd_bench_realtime(args: argparse.Namespace) -> int:
    from .tools import realtime

    _ros_environment(_private_domain())
    result = realtime.bench(find_config(args.config), _overrides(args.set), trials=args.trials,
                            load=not args.no_load, load_threads=args.load_threads,
                            load_nice=args.load_nice)
    print(realtime.summary_text(result))
    _write_json(args.json, result)
    return 0


def cmd_emulator(args: argparse.Namespace, rest: list[str]) -> int:
    from .hardware import emulator

    return int(emulator.main(rest) or 0)


def _add_sim_args(p: argparse.ArgumentParser, up: bool = False) -> None:
    _add_config_args(p)
    _add_graph_args(p, up)
    p.set_defaults(func=cmd_sim)


def _add_rig_args(p: argparse.ArgumentParser, up: bool = False) -> None:
    _add_config_args(p, "rig_example")
    p.add_argument("--port", default=None, help="serial device of the rig (hardware.port)")
    stand_in = p.add_mutually_exclusive_group()
    stand_in.add_argument("--emulator", action="store_true",
                          help="start the firmware emulator here (the config's plant) and use it")
    stand_in.add_argument("--firmware-sim", action="store_true",
                          help="run the real firmware ELF in simavr with the config's plant "
                               "behind its pins (needs a source checkout and the AVR "
                               "toolchain: firmware/README.md)")
    _add_graph_args(p, up)
    p.set_defaults(func=cmd_rig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebmcpilco", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="learn the swing-up on the simulated cart-pole")
    _add_config_args(demo)
    demo.add_argument("--seed", type=int, default=None)
    demo.set_defaults(func=cmd_demo)

    sim = sub.add_parser("sim", help="learn through the ROS 2 node graph (separate processes)")
    _add_sim_args(sim)
    rig = sub.add_parser("rig", help="learn on a physical rig through the ROS 2 node graph "
                                     "(hardware_interface in place of sim_plant)")
    _add_rig_args(rig)

    up = sub.add_parser("up", help="bring the node graph up and keep it running, learning "
                                   "nothing until called (Ctrl-C stops it)",
                        description="Bring the node graph up (the processes of `sim` or `rig`) "
                                    "and keep it up until Ctrl-C or SIGTERM, printing a line "
                                    "per status event; it learns only when called: "
                                    "`ebmcpilco call learn`. Exit 0 after Ctrl-C when every "
                                    "node stopped cleanly, 1 when a node died or did not, 2 "
                                    "for a configuration error.")
    usub = up.add_subparsers(dest="plant", required=True)
    _add_sim_args(usub.add_parser("sim", help="the simulated cart-pole (the processes of "
                                              "`ebmcpilco sim`)"), up=True)
    _add_rig_args(usub.add_parser("rig", help="a rig (the processes of `ebmcpilco rig`)"),
                  up=True)

    call = sub.add_parser(
        "call", help="call a service of a running graph: learn, run_trial, abort, resume, "
                     "reset, estop",
        description="Call one std_srvs/Trigger service of a running graph (`ebmcpilco up`, "
                    "`sim`, `rig` or `ros2 launch`) on this ROS_DOMAIN_ID and print its "
                    "answer. Exit 0: it succeeded; 1: refused (the answer says why); 3: no "
                    "such service or no answer.")
    call.add_argument("verb", choices=["learn", "run_trial", "run-trial", "abort", "resume",
                                       "reset", "estop"],
                      help="/ebmcpilco/learn, run_trial, abort, resume (the trial manager); "
                           "/cartpole/reset, /cartpole/estop (the plant; estop: a rig only)")
    call.add_argument("--namespace", default="", help="ROS namespace of the graph")
    call.add_argument("--timeout", type=float, default=30.0,
                      help="seconds to find the service and get its answer (default 30)")
    call.add_argument("--service", default=None,
                      help="another service name (e.g. the rig's nodes.reset_service)")
    call.set_defaults(func=cmd_call)

    st = sub.add_parser(
        "status", help="the trial manager's status now, or a line per event (--follow)",
        description="Read /ebmcpilco/status of a running graph on this ROS_DOMAIN_ID. Without "
                    "--follow: one line, how things stand (exit 0; 3 when no status came "
                    "within --timeout, default 10 s). --follow: that line, then a line per "
                    "event as it comes, with a live progress bar on a terminal, until Ctrl-C "
                    "(exit 0); --until-end: until a learning run or a run_trial trial ends "
                    "(0: solved, or the trial ran; 1: not solved, failed or aborted; 3: none "
                    "ended within --timeout; 130: Ctrl-C).")
    st.add_argument("--follow", action="store_true", help="a line per status event")
    st.add_argument("--until-end", action="store_true",
                    help="with --follow: end when a run (or a run_trial trial) ends")
    st.add_argument("--timeout", type=float, default=None,
                    help="seconds to wait (default: 10 without --follow, none with it)")
    st.add_argument("--json", action="store_true", help="the status messages as JSON")
    st.add_argument("--namespace", default="", help="ROS namespace of the graph")
    st.set_defaults(func=cmd_status)

    report = sub.add_parser("report", help="plots, an animation of the best trial and a "
                                           "markdown summary of a run directory")
    report.add_argument("run", help=RUN_HELP)
    report.add_argument("--out", default=None, help="output folder (default RUN/report)")
    report.add_argument("--particles", type=_positive_int, default=200,
                        help="particles of the model's predictions (default 200)")
    report.set_defaults(func=cmd_report)

    prof = sub.add_parser("profile", help="where a graph run's wall time went: rollouts, fits, "
                                          "each optimisation stage, overhead, crashes")
    prof.add_argument("run", help=RUN_HELP)
    prof.add_argument("--phases", action="store_true", help="every phase too, not only totals")
    prof.add_argument("--json", default=None, help="write the profile to this JSON file")
    prof.set_defaults(func=cmd_profile)

    inspect = sub.add_parser("inspect", help="how a run directory's run stands: trials "
                                             "completed, last phase, finished or died")
    inspect.add_argument("run", help=RUN_HELP)
    inspect.set_defaults(func=cmd_inspect)

    export = sub.add_parser("export-policy", help="write a learned policy as one Python file "
                                                  "that needs numpy only (for a rig PC)")
    export.add_argument("controller", help="controller JSON: a run's controllers/"
                                           "controller_vNNN.json, a controller or policy payload")
    export.add_argument("--out", default="policy.py", help="the file to write (default policy.py)")
    export.set_defaults(func=cmd_export_policy)

    bench = sub.add_parser("bench", help="benchmarks (figures and JSON)")
    bsub = bench.add_subparsers(dest="bench", required=True)
    learn = bsub.add_parser("learn", help="learning runs over seeds")
    _add_config_args(learn)
    learn.add_argument("--algorithm", nargs="+", default=["mc"], choices=["mc", "eb"])
    learn.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    learn.add_argument("--ablation", action="store_true",
                       help="also run EB-MC-PILCO with each pretraining: none, mse, bayes")
    learn.add_argument("--json", default=None, help="write results to this JSON file")
    learn.add_argument("--jobs", type=_positive_int, default=1,
                       help="runs at a time in separate processes (each with "
                            "optimizer.threads torch threads; 2 on a 2-core machine)")
    learn.add_argument("--plot", default=None, help="write cost-per-step curves to this PNG")
    learn.set_defaults(func=cmd_bench_learn)
    merge = bsub.add_parser("merge", help="several bench learn JSONs as one table + JSON")
    merge.add_argument("inputs", nargs="+",
                       help="bench learn JSONs; a variant in a later file replaces it")
    merge.add_argument("--union", action="store_true",
                       help="pool the files' runs (seeds split across files; a later file's "
                            "run of the same variant and seed replaces it); the files must "
                            "share one config")
    merge.add_argument("--json", required=True, help="write the merged results here")
    merge.add_argument("--plot", default=None, help="write cost-per-step curves to this PNG")
    merge.set_defaults(func=cmd_bench_merge)
    step = bsub.add_parser("step", help="time one policy-optimisation step")
    _add_config_args(step)
    step.add_argument("--points", nargs="+", type=int, default=[60, 120, 170])
    step.add_argument("--repeats", type=int, default=20)
    step.add_argument("--json", default=None, help="write results to this JSON file")
    step.set_defaults(func=cmd_bench_step)
    acc = bsub.add_parser("accuracy", help="rollout cost of float32 / truncated / native paths "
                                           "against the exact float64 rollout")
    _add_config_args(acc)
    acc.add_argument("--points", type=_positive_int, default=170)
    acc.add_argument("--draws", type=_positive_int, default=8)
    acc.add_argument("--json", default=None, help="write results to this JSON file")
    acc.set_defaults(func=cmd_bench_accuracy)
    rt = bsub.add_parser("realtime", help="control-loop lateness and state-to-command latency "
                                          "while the optimiser runs in another process")
    _add_config_args(rt)
    rt.add_argument("--trials", type=int, default=5, help="trials of plant.trial_duration")
    rt.add_argument("--load-threads", type=int, default=0,
                    help="torch threads of the optimiser load (0: torch's default)")
    rt.add_argument("--load-nice", type=int, default=0,
                    help="niceness of the optimiser load process (default 0)")
    rt.add_argument("--no-load", action="store_true", help="measure without the optimiser")
    rt.add_argument("--json", default=None, help="write results to this JSON file")
    rt.set_defaults(func=cmd_bench_realtime)
    lk = bsub.add_parser("link", help="serial link through the driver and rig layer with "
                                      "corrupted bytes, against the firmware emulator")
    lk.add_argument("--seconds", type=float, default=60.0, help="streaming time (default 60)")
    lk.add_argument("--corrupt", type=float, default=0.01,
                    help="fraction of bytes corrupted, both directions (default 0.01)")
    lk.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    lk.add_argument("--json", default=None, help="write results to this JSON file")
    lk.set_defaults(func=cmd_bench_link)
    rtt = bsub.add_parser("roundtrip", help="state frame -> JointState -> command frame through "
                                            "the pty, hardware_interface and DDS")
    _add_config_args(rtt, "rig_example")
    rtt.add_argument("--seconds", type=float, default=10.0, help="measuring time (default 10)")
    rtt.add_argument("--startup-timeout", type=float, default=120.0)
    rtt.add_argument("--json", default=None, help="write results to this JSON file")
    rtt.set_defaults(func=cmd_bench_roundtrip)
    fw = bsub.add_parser("firmware", help="the firmware ELF in simavr: interrupt load at the "
                                          "cart-pole's encoder edge rates, STATE jitter, "
                                          "command -> PWM latency, flash and RAM")
    _add_config_args(fw, "rig_example")
    fw.add_argument("--cart-speed", type=float, default=None,
                    help="cart speed of the 1x motion [m/s] (default: the config's "
                         "hardware.cart_velocity_limit)")
    fw.add_argument("--multiples", type=float, nargs="+", default=[1.0, 2.0, 3.0],
                    help="edge rates measured, as multiples of the cart-pole's (default 1 2 3)")
    fw.add_argument("--window", type=float, default=0.25,
                    help="simulated seconds of motion at 1x (shorter at higher multiples)")
    fw.add_argument("--seconds", type=float, default=2.0,
                    help="simulated seconds of commands for the latency and jitter figures")
    fw.add_argument("--json", default=None, help="write results to this JSON file")
    fw.set_defaults(func=cmd_bench_firmware)
    pe = bsub.add_parser("policy-eval", help="time one policy evaluation u = pi(x): the numpy "
                                             "export, the execution node's controller, torch")
    _add_config_args(pe)
    pe.add_argument("--calls", type=_positive_int, default=20000, help="timed calls per repeat")
    pe.add_argument("--repeats", type=_positive_int, default=5)
    pe.add_argument("--json", default=None, help="write results to this JSON file")
    pe.set_defaults(func=cmd_bench_policy_eval)
    rs = bsub.add_parser("resume", help="SIGKILL nodes and the whole graph at random moments "
                                        "of a learning run, resume each time, check the run "
                                        "directory; the run must finish solved")
    _add_config_args(rs)
    rs.add_argument("--kills", type=_positive_int, default=20, help="kills (default 20)")
    rs.add_argument("--seed", type=int, default=1,
                    help="learner.seed and the seed of the kill moments (default 1)")
    rs.add_argument("--per-trial", type=_positive_int, default=20,
                    help="most kills between two trial boundaries (default 20)")
    rs.add_argument("--max-loss", type=float, default=45.0,
                    help="a kill whose moment has not come this many seconds after the last "
                         "trial boundary happens then (default 45)")
    rs.add_argument("--run-directory", default=None,
                    help="nodes.run_directory (default: a new temporary folder)")
    rs.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID to use")
    rs.add_argument("--json", default=None, help="write results to this JSON file")
    rs.set_defaults(func=cmd_bench_resume)

    emu = sub.add_parser("emulator", help="cart-pole firmware emulator on a pty",
                         add_help=False)
    emu.set_defaults(func=None)
    return parser


def interruptible() -> None:
    """SIGINT raises KeyboardInterrupt, whatever this process inherited: a background job of a
    non-interactive shell (a script's `ebmcpilco up &`, a CI runner) starts with SIGINT ignored,
    and Python then installs no handler, so `kill -INT` and a test's SIGINT did nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    interruptible()
    if argv[:1] == ["emulator"]:
        return cmd_emulator(argparse.Namespace(), argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"ebmcpilco: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling (sim: while starting)
        print("ebmcpilco: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
