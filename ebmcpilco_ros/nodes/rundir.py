"""The trial manager's run directory: every trial, model and controller, and a JSON-lines log.

    <root>/<run_id>/config.json                  the configuration of the run
                    trials/trial_000.json        every trial record, as it arrives
                    trials/trial_000/            the same trial as a ROS 2 bag (nodes/bag.py:
                                                 metadata.yaml, trial_000.mcap)
                    models/model_v001.json       every model update
                    controllers/controller_v001.json
                    report.json                  the learning report at the end
                    log.jsonl                    every status message, one per line
                    checkpoint.json              the Learner at the last trial boundary
                                                 (core.checkpoint: what a resume starts from)
                    progress.json                the phase now and the last one completed
                    trials/interrupted/          trials a crash cut off: kept, never fitted
Files are written to a temporary name, fsynced and renamed (os.replace), so a crash leaves either
the old file or the new one; log lines are flushed and fsynced one by one (a crash may cut the
last, which readers skip).

<root> is `nodes.run_directory` as `run_root` resolves it, the one function every reader and
writer uses (trial manager, `ebmcpilco sim/rig/inspect/report`, `--resume`, `bench resume`): by
default `$ROS_HOME/ebmcpilco/runs`, next to ROS's own logs ($ROS_HOME, else ~/.ros), not wherever
the graph was started; an explicit relative path stays relative to the working directory.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any, Mapping

from ..core.checkpoint import CHECKPOINT_FILE
from ..core.jsonio import to_json, write_json_atomic
from . import payloads
from .config import DEFAULT_RUN_DIRECTORY
from .payloads import Progress

PROGRESS_FORMAT = payloads.PROGRESS_FORMAT
PROGRESS_FILE = "progress.json"
CONFIG_FILE = "config.json"
END_EVENTS = ("run_done", "failed", "aborted")  # a run's end in log.jsonl
RUNNING = "running"
ROS_HOME = "$ROS_HOME"  # a run_directory starting with it lies in the ROS home


def ros_home(env: Mapping[str, str] | None = None) -> Path:
    """$ROS_HOME, else ~/.ros: the folder ROS keeps its logs under (rcl_logging's rule), so the
    runs of a graph land in one known place whatever directory it was launched from."""
    home = (os.environ if env is None else env).get("ROS_HOME", "")
    return Path(home or "~/.ros").expanduser()


def run_root(setting: str, env: Mapping[str, str] | None = None) -> Path | None:
    """`nodes.run_directory` as an absolute folder, None for '' (no run directories): a leading
    `$ROS_HOME` (or `${ROS_HOME}`) is `ros_home()`, `~` the user's home, and a relative path is
    taken from the working directory, as it always was. Resolved once by each reader and writer
    (the nodes inherit the launching process's environment and working directory, so the trial
    manager and `ebmcpilco sim` agree)."""
    if not setting:
        return None
    head, _, tail = setting.partition("/")
    path = ros_home(env) / tail if head in (ROS_HOME, "${ROS_HOME}") else Path(setting)
    return Path(os.path.abspath(path.expanduser()))


def find_run(run: str | Path, setting: str = DEFAULT_RUN_DIRECTORY) -> Path:
    """A run named on a command line: a path to its directory, or a bare run id found under the
    run root `setting` names (`ebmcpilco inspect 20260101-120000-eb-seed1-1a2b`). Absolute;
    what does not exist is returned as given, for the caller's error message."""
    given = Path(run).expanduser()
    root = run_root(setting)
    if not given.exists() and len(given.parts) == 1 and root is not None \
            and (root / given).exists():
        return root / given
    return Path(os.path.abspath(given))


class RunDirError(ValueError):
    """A path that is not a run directory, or one that cannot be resumed."""


class RunDirectory:
    """One run's files; safe to call from several threads."""

    def __init__(self, root: str | Path, run_id: str) -> None:
        self.path = Path(root) / run_id
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write_json(self, relative: str, data: Any) -> Path:
        return write_json_atomic(self.path / relative,
                                 to_json(data) if isinstance(data, dict) else json.dumps(data))

    def write_progress(self, state: str, phase: str, last_completed: str,
                       trials_completed: int, trial: dict[str, Any] | None = None) -> None:
        """progress.json: what runs now (`phase`, the trial request if a trial runs) and the
        last phase completed; `pid` and `host` tell a dead run from a running one."""
        self.write_json(PROGRESS_FILE, Progress(
            run_id=self.path.name, state=state, phase=phase, last_completed=last_completed,
            trials_completed=trials_completed, trial=trial, pid=os.getpid(),
            host=socket.gethostname()).to_dict())

    def log(self, entry: dict[str, Any]) -> None:
        line = to_json(entry) + "\n"
        with self._lock, open(self.path / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def remove_temporaries(self) -> list[str]:
        """The temporary files a writer killed between writing and renaming left behind
        (`.<name>.<pid>.<thread>.tmp`, core.jsonio.write_json_atomic; a directory for a
        bag, nodes/bag.py), removed; for a resume, which runs only once the run's trial manager
        is gone. Their paths here."""
        removed = []
        for path in sorted(self.path.rglob(".*.tmp")):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(self.path)))
        return removed


def read_log(path: Path) -> list[dict[str, Any]]:
    """log.jsonl's entries; a line a crash cut short is skipped."""
    entries = []
    try:
        lines = (path / "log.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _alive(pid: Any, host: Any) -> bool | None:
    """Whether process `pid` runs (None: on another host, unknown)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except PermissionError:  # there, and not ours
        return True
    except (ProcessLookupError, TypeError, ValueError, OverflowError):
        return False
    return True


def run_status(path: str | Path) -> dict[str, Any]:
    """What a run directory says about its run: trials completed (checkpoint), the phase last
    completed and the one running (progress.json), how it ended (the last end event in
    log.jsonl after its last start) and, without an end, whether it still runs or died.

    `outcome` is run_done, failed, aborted, running, died or unknown (another host's run without
    an end). RunDirError if `path` is not a run directory."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise RunDirError(f"{path} is not a run directory (no {CONFIG_FILE})")
    progress: dict[str, Any] = {}
    try:
        progress = json.loads((path / PROGRESS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except ValueError as exc:
        raise RunDirError(f"{path / PROGRESS_FILE} is not JSON: {exc}") from exc
    completed = 0
    try:
        completed = int(json.loads((path / CHECKPOINT_FILE).read_text(encoding="utf-8"))
                        .get("trials_completed", 0))
    except FileNotFoundError:
        pass
    except (ValueError, TypeError, AttributeError) as exc:
        raise RunDirError(f"{path / CHECKPOINT_FILE} is not a checkpoint: {exc}") from exc
    ended = None
    for entry in read_log(path):
        if entry.get("event") == "started_learning":
            ended = None
        elif entry.get("event") in END_EVENTS:
            ended = entry
    if ended is not None:
        outcome = str(ended["event"])
    else:
        alive = _alive(progress.get("pid"), progress.get("host"))
        outcome = ("unknown" if alive is None and progress else
                   RUNNING if alive and progress.get("state") == RUNNING else "died")
    return {"run_id": path.name, "path": str(path), "outcome": outcome,
            "trials_completed": completed, "phase": progress.get("phase", ""),
            "last_completed": progress.get("last_completed", ""),
            "trial": progress.get("trial"),
            "reason": ended.get("reason", "") if ended is not None else ""}


def describe_run(status: dict[str, Any]) -> str:
    """One line for `ebmcpilco inspect` and a resume: how the run stands."""
    outcome = status["outcome"]
    how = {"run_done": "finished", "failed": f"failed ({status['reason']})",
           "aborted": f"was aborted ({status['reason']})", RUNNING: "is running",
           "died": "died (no end in log.jsonl, its trial manager is gone)",
           "unknown": "has no end in log.jsonl (its trial manager ran on another host)"}
    where = (f"; last phase completed: {status['last_completed']}" if status["last_completed"]
             else "")
    if outcome not in ("run_done", RUNNING) and status["phase"]:
        where += f"; cut off in: {status['phase']}"
    return (f"run {status['run_id']} {how.get(outcome, outcome)} after "
            f"{status['trials_completed']} completed trials{where}")


def report_hint(run_directory: str, run_id: str | None) -> str:
    """The line `ebmcpilco sim` and `rig` print when a run ends: the command that reports it."""
    root = run_root(run_directory)
    if root is None or not run_id:
        return "report: none (no run directory)"
    return f"report: ebmcpilco report {root / run_id}"
