"""The operator's shell of a pip-only install: `ebmcpilco up` brings the graph up learning
nothing, and the verbs alone (`ebmcpilco call ...`, `ebmcpilco status [--follow]`, each its own
process, as an operator types them) drive a learning run: learn, abort it, resume it to its end,
run_trial, reset; then Ctrl-C stops `up` and every node. And the status view: plain lines with
the progress figures when its output is no terminal, a tqdm bar when it is one.
"""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from ebmcpilco_ros.nodes.bringup import STOP_GRACE, graph_environment
from ebmcpilco_ros.progress import StatusView

from graph_helpers import REDUCED, STARTUP_TIMEOUT, isolated_domain

CLI = [sys.executable, "-m", "ebmcpilco_ros.cli"]
VERB_TIMEOUT = 60.0      # one verb process: start, discovery, answer (a loaded 2-core machine)
RUN_TIMEOUT = 300.0      # a learn or resume call to the run's end
CONTROL = re.compile(r"[\r\x1b]")  # what a bar draws; never in plain output


# -- the view, without a graph --------------------------------------------------------------------
def _status(event: str, stamp: float, **fields: Any) -> dict[str, Any]:
    return {"format": "ebmcpilco.status/1", "event": event, "stamp": stamp,
            "state": fields.pop("state", "learning"), "ready": True, "waiting_for": [],
            "run_id": "r1", "phase": fields.pop("phase", ""), "trials": 0,
            "node": "/trial_manager", **fields}


def _progress(stamp: float, **progress: Any) -> dict[str, Any]:
    return _status("progress", stamp, phase="optimising (policy, iteration 1)",
                   progress=progress)


RUN = [
    _status("started_learning", 100.0),
    _status("trial_done", 104.0, trial={"index": 0, "kind": "random", "success": False,
                                        "cost": 50.0, "wall_s": {}}),
    _status("phase", 104.0, phase="fitting the model on 1 trials"),
    _status("phase", 108.0, phase="optimising (policy, iteration 1)"),
    _progress(108.0, stage="ilqr"),
    _progress(109.0, stage="ilqr", step=19),
    _progress(110.0, stage="pretrain", max_steps=500),
    _progress(112.0, stage="pretrain", max_steps=500, step=199),
    _progress(113.0, stage="policy", max_steps=100),
    _progress(114.0, stage="policy", max_steps=100, step=9, cost=30.0, lr=0.01, dropout=0.25),
    _progress(116.0, stage="policy", max_steps=100, step=29, cost=20.0, lr=0.01, dropout=0.25),
    _status("phase", 120.0, phase="trial 1 (policy)"),
    _status("trial_done", 123.0, trial={"index": 1, "kind": "policy", "success": False,
                                        "cost": 20.0, "opt_steps": 100,
                                        "wall_s": {"fit": 4.0, "policy": 7.0},
                                        "final_window": {"max_abs_p": 0.234,
                                                         "max_angle_error": 0.051}}),
    _status("run_done", 123.0, state="idle", solved=False,
            report={"solved": False, "trials": [{}, {}], "interaction_s": 6.0,
                    "wall_s": {"total": 23.0},
                    "time_to_solve_s": {"rollouts": 7.0, "fit": 4.0, "ilqr": 2.0,
                                        "pretrain": 3.0, "policy": 7.0, "other": 0.0,
                                        "learn_to_solve": 23.0}}),
]


RUN_TIMES = ("learn call to the run's end: 23.0 s (rollouts 7.0, fit 4.0, ilqr 2.0, "
             "pretrain 3.0, policy 7.0, other 0.0)")


def test_the_view_writes_plain_lines_with_the_figures_when_not_a_terminal():
    out = io.StringIO()
    view = StatusView(stream=out, all_events=True)
    assert not view.live
    for status in RUN:
        view.handle(status)
    view.close()
    text = out.getvalue()
    assert not CONTROL.search(text), repr(text)
    lines = text.splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines), text
    # steps per second from the stage's start; time left against the step limit
    assert "policy optimisation started (at most 100 steps)" in text, text
    assert "policy optimisation: step 30/100, cost 20, 10 steps/s, up to 7 s left" in text, text
    assert "pretraining: step 200/500, 100 steps/s, up to 3 s left" in text, text
    assert "GP-iLQR: step 20, 20 steps/s, 1 s so far" in text, text          # no limit
    assert "model fit done in 4.0 s" in text and "GP-iLQR done in 2.0 s" in text, text
    assert ("policy optimisation done in 7.0 s (last report: step 30/100, cost 20, "
            "10 steps/s)") in text, text
    assert lines[-2].endswith("NOT solved after 2 trials, 6.0 s of interaction, 23 s total "
                              "(run r1)"), text
    assert lines[-1].endswith(RUN_TIMES), text
    # `ebmcpilco sim`'s choice: trials and the end only, no progress where there is no bar
    quiet = io.StringIO()
    sim_view = StatusView(stream=quiet, verbose=False)
    for status in RUN:
        sim_view.handle(status)
    assert quiet.getvalue().splitlines() == [
        "trial 0: random  cost  50.00  not solved",
        "trial 1: policy  cost  20.00  not solved (final window: |p| up to 0.23 m, 0.05 rad "
        "from upright)  (100 optimisation steps; fit 4.0 s, policy 7.0 s)",
        "NOT solved after 2 trials, 6.0 s of interaction, 23 s total (run r1)", RUN_TIMES]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_running_stage_is_a_bar_and_each_stage_leaves_a_line():
    out = _Terminal()
    view = StatusView(stream=out)
    assert view.live
    for status in RUN[:10]:
        view.handle(status)
    drawn = out.getvalue()
    assert "\r" in drawn and "policy optimisation:  10%|" in drawn, repr(drawn)
    assert "step 10/100, cost 30" in drawn, repr(drawn)
    for status in RUN[10:]:
        view.handle(status)
    view.close()
    kept = [line.split("\r")[-1] for line in out.getvalue().split("\n")]
    assert "  model fit done in 4.0 s" in kept, kept
    assert "  GP-iLQR done in 2.0 s (last report: step 20, 20 steps/s)" in kept, kept
    assert kept[-3:-1] == ["NOT solved after 2 trials, 6.0 s of interaction, 23 s total (run r1)",
                           RUN_TIMES], kept


# -- the verbs on a running graph -----------------------------------------------------------------
class Output:
    """A child's output lines as they come, and waits on them."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, pattern: str, timeout: float) -> str:
        """The first line matching `pattern` (a regex), failing after `timeout`."""
        def found() -> str | None:
            return next((line for line in self.lines if re.search(pattern, line)), None)
        with self.cond:
            self.cond.wait_for(lambda: found() is not None, timeout)
            line = found()
        assert line is not None, f"no line /{pattern}/ within {timeout:g} s:\n{self.text()}"
        return line

    def text(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def finish(self, timeout: float) -> int:
        """The exit code, once the process ended and its output was read."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running after {timeout:g} s:\n{self.text()}")
        self.thread.join(10)
        return code


def _start(args: list[str], env: dict[str, str]) -> Output:
    return Output(subprocess.Popen(CLI + args, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   text=True))


def _verb(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(CLI + args, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=VERB_TIMEOUT)
    return done.returncode, (done.stdout + done.stderr).strip()


def _follow(env: dict[str, str]) -> Output:
    """`status --follow --until-end`, once it has caught up (its `now:` line)."""
    follow = _start(["status", "--follow", "--until-end"], env)
    follow.wait_line(r"^now: ", VERB_TIMEOUT)
    return follow


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(STARTUP_TIMEOUT + 3 * RUN_TIMEOUT)
def test_the_operator_verbs_alone_drive_a_learning_run(tmp_path):
    env = graph_environment(os.environ, domain_id=isolated_domain(44))
    env.pop("EBMCPILCO_DIE_WITH_PARENT")  # `up` and the verbs are no nodes
    settings = {**REDUCED, "learner.max_trials": 2, "nodes.progress_period": 0.2,
                "nodes.run_directory": str(tmp_path / "runs")}
    up = _start(["up", "sim", *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]],
                env)
    nodes: list[int] = []
    try:
        up.wait_line(r"the node graph is up", STARTUP_TIMEOUT + 30)
        nodes = _children(up.process.pid)
        assert len(nodes) == 5, (nodes, up.text())

        code, out = _verb(["status"], env)
        assert code == 0 and out.startswith("idle, ready"), out
        code, out = _verb(["call", "estop", "--timeout", "3"], env)  # a rig's service only
        assert code == 3 and "no service /cartpole/estop" in out, out

        # learn, and abort the run once its first trial is done (fit, optimisation and a
        # 3 s trial are left: more than a verb takes to start)
        follow = _follow(env)
        code, out = _verb(["call", "learn"], env)
        assert code == 0 and out.startswith("learning: run "), out
        run_id = out.split()[2]
        code, out = _verb(["call", "learn"], env)
        assert code == 1 and "already learning" in out, out
        follow.wait_line(r"trial 0: random", RUN_TIMEOUT)
        code, out = _verb(["call", "abort"], env)
        assert code == 0 and out.startswith(f"aborting learning ({run_id}"), out
        assert follow.finish(RUN_TIMEOUT) == 1
        follow.wait_line(r"learning aborted: ", 1)

        # resume it to its end, following its progress
        follow = _follow(env)
        code, out = _verb(["call", "resume"], env)
        assert code == 0 and out.startswith("resuming: ") and run_id in out, out
        end = follow.finish(RUN_TIMEOUT)
        text = follow.text()
        solved = follow.wait_line(r"solved after 2 trials", 1)
        assert end == (0 if solved.split()[1] == "solved" else 1), text
        for seen in (r"resumed: run " + run_id, r"model fit done in \d", r"trial 1: policy",
                     r"policy optimisation: step \d+/100, cost [-\d.e]+, [\d.e]+ steps/s, "
                     r"up to \d+ s left", r"policy optimisation done in "):
            follow.wait_line(seen, 1)
        code, out = _verb(["status"], env)
        assert code == 0 and out.startswith(f"idle, ready; run {run_id}, 2 trials done"), out

        # one trial with the learned policy, then the plant's reset; abort with nothing to stop
        follow = _follow(env)
        code, out = _verb(["call", "run_trial"], env)
        assert code == 0 and out.startswith("running trial 0 with"), out
        assert follow.finish(RUN_TIMEOUT) == 0, follow.text()
        follow.wait_line(r"trial 0: policy .*\(run_trial with ", 1)
        code, out = _verb(["call", "reset"], env)
        assert code == 0 and out.startswith("reset: pole down"), out
        code, out = _verb(["call", "abort"], env)
        assert code == 0 and out.startswith("nothing running"), out
    finally:
        if up.process.poll() is None:
            up.process.send_signal(signal.SIGINT)
        code = up.finish(STOP_GRACE * 3 + 30)
    output = up.text()
    assert code == 0 and "interrupted: stopping the graph" in output, output
    assert "exited with code" not in output, output
    assert not [pid for pid in nodes if _alive(pid)], output
    # `up` printed the same run as the follower did, a line per event
    assert re.search(r"^\d\d:\d\d:\d\d NOT solved after|^\d\d:\d\d:\d\d solved after",
                     output, re.M), output
