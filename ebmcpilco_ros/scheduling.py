"""Real-time scheduling for one thread (Linux SCHED_FIFO), with neither ROS nor the serial
driver: the control loop, the plant's physics, the serial I/O thread and the benches set it."""
from __future__ import annotations

import logging
import os
from typing import Callable

log = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
