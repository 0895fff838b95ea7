"""A node's process: its main (signals, a bounded stop, exit codes), the torch set-up every
learning node does at start, and ending with the process that started it."""
from __future__ import annotations

import faulthandler
import importlib
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterable, NoReturn

import rclpy
from rclpy.executors import (Executor, ExternalShutdownException, ShutdownException,
                             SingleThreadedExecutor)
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from ..core.config import ConfigError, ExperimentConfig
from ..scheduling import available_cores, end_with_parent
from . import STOP_BOUND_S
from .params import check_params_files


def set_torch_threads(threads: int) -> None:
    """torch's threads for the whole process (optimizer.threads; model_learning, which only
    fits, optimizer.fit_threads); 0 leaves torch's default."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def fit_threads_beside_the_rig(config: ExperimentConfig, log: Callable[[str], None]
                               ) -> ExperimentConfig:
    """The config with optimizer.fit_threads at most one less than this machine's cores (at
    least 1): in the graph the plant or hardware node and the execution node keep working
    during the fits (sensor stream, heartbeats), and torch's intra-op threads wait for each
    other at every operation, so one of them sharing a core with those nodes holds up all.
    Measured on 2 cores (docs/BENCHMARKS.md): with the sim graph up, the warm start's
    pretraining took as long or longer on 2 threads than on 1, in-process 30% less.
    The particle workers are not capped: each rolls out a whole share, and 2 of them still
    gained 17% beside the graph."""
    configured = config.optimizer.fit_threads or config.optimizer.threads
    cores = available_cores()
    cap = max(1, cores - 1)
    if configured != 0 and configured <= cap:
        return config
    log(f"optimizer.fit_threads {configured or 'torch default'} -> {cap}: one of the "
        f"{cores} cores stays with the plant and control nodes during fits")
    return config.replace(optimizer={"fit_threads": cap})


def preload_lazy_imports() -> None:
    """Import at start-up what torch and scipy import on first use: the first torch optimiser
    imports torch._dynamo (about 3 s on a busy 2-core machine), the GP's subset selection
    scipy.linalg. An import cannot be cancelled, so a worker caught in one would hold up a
    shutdown (and the first fit or optimisation would be seconds late)."""
    import torch

    importlib.import_module("scipy.linalg")
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


SHUTDOWN_TIMEOUT = 1.0  # [s] for the executor to stop before the node is destroyed
# [s] for a worker thread told to stop (its long loops check a flag every iteration) to end;
# with SHUTDOWN_TIMEOUT twice, below STOP_BOUND_S.
WORKER_STOP_TIMEOUT = 2.0
DIE_WITH_PARENT_ENV = "EBMCPILCO_DIE_WITH_PARENT"


class GraphNode(Node):
    """A node with a `close()` hook that runs before the ROS context goes down."""

    def close(self) -> None:
        """Stop workers and leave actuators safe; the node can still publish here."""

    def join_worker(self, thread: threading.Thread | None, what: str,
                    timeout: float = WORKER_STOP_TIMEOUT) -> bool:
        """Wait for a worker thread that was told to stop. One still running after `timeout`
        is logged with every thread's stack and remembered: run_node then exits with code 1."""
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if not thread.is_alive():
            return True
        self.get_logger().error(f"{what} did not stop within {timeout:g} s; every thread's "
                                f"stack follows on stderr")
        faulthandler.dump_traceback(all_threads=True)
        self.unstopped_workers = [*getattr(self, "unstopped_workers", []), what]
        return False


def spin_until_shutdown(executor: Executor) -> None:
    """Spin in a helper thread until the context shuts down (a normal end, not an error)."""
    try:
        executor.spin()
    except (ExternalShutdownException, ShutdownException):
        pass


def run_node(factory: Callable[[], GraphNode], args: Iterable[str] | None = None,
             executor: Executor | None = None, name: str = "node",
             make_executor: Callable[[], Executor] = SingleThreadedExecutor) -> int:
    """Process main of a node: config errors -> message and exit 2; SIGINT/SIGTERM -> close()
    (while the node can still publish, e.g. a zero command; it tells its workers to stop and
    joins them) -> exit 0.

    The executor spins in a background thread; the main thread only waits for a signal, so a
    signal is handled at once whatever the callbacks are doing. `make_executor` builds it after
    rclpy.init (a node whose services block, like the rig's homing reset, wants a
    MultiThreadedExecutor).

    Bounded (docs/NODES.md, "Stopping"): close() joins the node's workers for at most
    WORKER_STOP_TIMEOUT, the executor gets SHUTDOWN_TIMEOUT, and the process then ends with
    exit_now (no interpreter teardown); exit code 0, or 1 if close() failed or a worker or the
    executor did not stop. The first signal also arms a watchdog (faulthandler's, a C thread
    that needs no interpreter lock) that prints every thread's stack and ends the process with
    exit code 1 if it is still there STOP_BOUND_S later, whatever hangs. A signal while the
    node is being built lets the constructor finish (a rig node must not be left half-open)
    and the bound runs from then. For process mains only: it does not return once the node
    is up.
    """
    stop = threading.Event()
    up = threading.Event()  # the node is built: the bound runs from the signal

    def on_signal(signum: int, _frame: Any) -> None:
        if up.is_set():
            arm_stop_deadline()
        stop.set()

    # From here on a signal means "close and exit" (before: nodes/__init__.py exits at once).
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        check_params_files(sys.argv if args is None else list(args))
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    rclpy.init(args=list(args) if args is not None else None,
               signal_handler_options=SignalHandlerOptions.NO)
    die_with_parent()
    if stop.is_set():  # stopped before the node was built
        rclpy.try_shutdown()
        exit_now(0)
    try:
        node = factory()
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    up.set()  # a signal during factory() stops the node once built, the bound from then
    executor = executor or make_executor()
    executor.add_node(node)

    def spin() -> None:
        try:
            executor.spin()
        except (ExternalShutdownException, ShutdownException):
            pass
        except Exception as exc:  # noqa: BLE001 - a crashed executor must still stop the node
            print(f"{name}: executor failed: {exc!r}", file=sys.stderr, flush=True)
        finally:
            stop.set()

    spinner = threading.Thread(target=spin, name=f"{name}-executor", daemon=True)
    spinner.start()
    code = 0
    try:
        while not stop.wait(1.0):
            pass
    finally:
        arm_stop_deadline()
        try:
            node.close()
        except Exception as exc:  # noqa: BLE001 - shutting down regardless
            print(f"{name}: close failed: {exc!r}", file=sys.stderr, flush=True)
            code = 1
        executor.shutdown(timeout_sec=SHUTDOWN_TIMEOUT)
        spinner.join(SHUTDOWN_TIMEOUT)  # no callback may run on a destroyed node
        unstopped = list(getattr(node, "unstopped_workers", []))
        if spinner.is_alive():
            unstopped.append("the executor")
        else:
            node.destroy_node()
        rclpy.try_shutdown()
    if unstopped:
        print(f"{name}: {', '.join(unstopped)} did not stop in time", file=sys.stderr,
              flush=True)
        code = 1
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """End the process now, after the ROS shutdown: flush Python's and C's output buffers,
    destroy the ROS context (DDS tells its peers the participant is gone), then os._exit.

    Why not the interpreter's own teardown: with torch loaded it takes 1.5-3 s of CPU (five
    nodes stopping together on two busy cores: 3-5 s), and a thread still inside torch's or
    rclpy's C++ code while it runs takes the process down (SIGABRT, "terminate called without an
    active exception", or SIGSEGV: what issue 11 measured). Nothing a node needs runs at
    interpreter exit: its files are written and fsynced as it goes (rundir.py).
    """
    try:
        rclpy.get_default_context().destroy()
    except Exception:  # noqa: BLE001 - exiting regardless
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)  # C stdio: rcutils' console output
    except (OSError, AttributeError):
        pass
    os._exit(code)


_stop_deadline_armed = threading.Event()


def arm_stop_deadline(bound: float = STOP_BOUND_S) -> None:
    """From the first call on, the process has `bound` seconds: then faulthandler prints every
    thread's stack to stderr and exits with code 1 (later calls keep the first deadline)."""
    if not _stop_deadline_armed.is_set():
        _stop_deadline_armed.set()
        faulthandler.dump_traceback_later(bound, exit=True)


def die_with_parent() -> None:
    """Started by `ebmcpilco sim` or a test (EBMCPILCO_DIE_WITH_PARENT=1): end with the process
    that started us, even if it is killed outright (Linux prctl PR_SET_PDEATHSIG)."""
    if os.environ.get(DIE_WITH_PARENT_ENV) == "1":
        end_with_parent()
