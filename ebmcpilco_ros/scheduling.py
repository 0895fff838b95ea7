"""Where and how long work runs, with neither ROS nor the serial driver: real-time scheduling
for one thread (Linux SCHED_FIFO; the control loop, the plant's physics, the serial I/O thread
and the benches set it), the cores a process may use, and a child process's life tied to its
parent's (the nodes `ebmcpilco sim` starts, `bench learn`'s workers)."""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Callable

log = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


PR_SET_PDEATHSIG = 1    # <linux/prctl.h>


def end_with_parent(parent_pid: int | None = None) -> None:
    """Have this process sent SIGTERM when its parent ends, even if the parent is killed
    outright (Linux prctl PR_SET_PDEATHSIG; elsewhere nothing). If the parent is already gone
    (parent_pid given and no longer our parent, or we were handed to init), end now."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    parent = os.getppid()
    if parent == 1 or (parent_pid is not None and parent != parent_pid):
        os.kill(os.getpid(), signal.SIGTERM)


def set_thread_priority(priority: int, what: str,
                        warn: Callable[[str], None] | None = None) -> bool:
    """SCHED_FIFO for the calling thread (Linux applies it per thread); 0 leaves it alone.
    Without the privilege (CAP_SYS_NICE or an rtprio limit) it warns (`warn`, else this
    module's logger) and carries on with normal scheduling."""
    if priority <= 0:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return True
    except (OSError, AttributeError) as exc:
        (warn or log.warning)(f"no SCHED_FIFO {priority} for {what}: {exc}")
        return False
