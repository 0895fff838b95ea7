"""Cooperative cancellation of the long computations: GP fit, iLQR, pretraining, MC-PILCO.

Why: a thread cannot be killed from outside, and a process that exits while one of its threads
is inside torch dies in torch's teardown (SIGABRT, SIGSEGV). So a node that must stop (SIGINT,
abort) sets a flag; each long loop asks `should_stop()` once per iteration and raises
`Cancelled`, and the node joins its worker within a bounded time. ROS-free: any callable works
(`threading.Event().is_set`, a lambda).
"""
from __future__ import annotations

from typing import Callable, Optional

# Asked once per iteration; True: stop now (raise Cancelled).
StopCheck = Optional[Callable[[], bool]]


class Cancelled(RuntimeError):
    """A computation stopped early because its caller asked it to."""


def check(should_stop: StopCheck, where: str) -> None:
    """Raise Cancelled("cancelled <where>") if `should_stop` says so; no-op for None."""
    if should_stop is not None and should_stop():
        raise Cancelled(f"cancelled {where}")
