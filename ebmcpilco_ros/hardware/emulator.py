"""Firmware emulator: the MCU side of the wire protocol on a pty, with a cart-pole behind it.

Lets the driver, the hardware node and the fault tests run without a rig. It behaves as
docs/PROTOCOL.md asks the firmware to: it is the clock (STATE at a fixed rate from its own thread on
a steady clock), answers HELLO with CONFIG (reset_cause power-on) and forgets the host's sequence
number there, echoes HEARTBEAT and follows each echo with COUNTERS, applies COMMAND only from valid
frames, zeroes and disables the motor when commands stop (its own watchdog, 5..5000 ms), blocks
drive into a closed limit switch (LEFT = the end a negative command drives towards), and latches an
amplifier fault until the host acknowledges it (COMMAND with ENABLE = 0, or HELLO, while the fault
input is inactive). The plant is the core cart-pole (`core.cartpole.step`) with a first-order
motor, hard end stops and quantised encoders. Faults are injected on request: corrupted bytes
(both directions), dropped frames, stalls and disconnects (the pty closes and a new one opens later;
a stable symlink, like a udev name, follows it).

Probe mode (`probe=True`, for the round-trip benchmark) disconnects the motor from the plant and
makes every STATE name itself: the cart encoder reads 0 and the pole encoder the tick number. A
host that answers STATE `k` with the motor command `probe_code(k)` lets the emulator time each
round trip from the STATE leaving to the matching COMMAND arriving (`round_trips`).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import os
import select
import signal
import sys
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core import cartpole
from ..core.config import ConfigError, PlantConfig, Section, find_config, load_config, setting
from .config import HardwareConfig
from .protocol import (COMMAND_FULL_SCALE, COUNTER_SATURATION, DELIMITER, Command, Counters,
                       DecoderStats, DeviceConfig, FrameDecoder, Heartbeat, Hello, MsgType,
                       ResetCause, SequenceCounter, State, Status, TIMESTAMP_MODULUS,
                       encode_frame)

FIRMWARE_VERSION = (1, 0, 0)
WATCHDOG_MS_RANGE = (5, 5000)     # the emulated firmware clamps a HELLO's request to this
READ_CHUNK = 4096                 # bytes per read of the pty master
MAX_CATCHUP_TICKS = 20            # further behind than this: skip ahead (counted as an overrun)
COMMAND_LOG_LENGTH = 100000       # applied commands kept for inspection
US_PER_S = 1_000_000
BYTE_VALUES = 256
PROBE_COUNT_MODULUS = 1 << 31     # the pole counts (i32) carry the tick in probe mode
PROBE_CODES = 30000               # distinct motor values naming a STATE in probe mode (< 32767)
ROUND_TRIP_LOG_LENGTH = 1000000   # round trips kept in probe mode


def probe_code(tick: int) -> int:
    """The motor command that answers STATE `tick` in probe mode (never 0, unique for
    PROBE_CODES consecutive ticks)."""
    return tick % PROBE_CODES + 1


@dataclass(frozen=True)
class EmulatorConfig(Section):
    """The emulated rig: firmware settings, encoders, motor and track (the plant is PlantConfig)."""

    _section = "emulator"
    state_rate_hz: int = setting(500, 1, 10000, doc="STATE frames per second (the MCU's tick)")
    watchdog_ms: int = setting(100, WATCHDOG_MS_RANGE[0], WATCHDOG_MS_RANGE[1],
                               doc="command watchdog until a HELLO asks for another [ms]")
    cart_counts_per_m: int = setting(20000, 1, 10**7, doc="cart encoder resolution [counts/m]")
    pole_counts_per_rev: int = setting(4096, 1, 10**7, doc="pole encoder resolution [counts/rev]")
    cart_sign: int = setting(1, -1, 1, doc="+1/-1: encoder counts up towards +p")
    pole_sign: int = setting(1, -1, 1, doc="+1/-1: encoder counts up with theta")
    pole_zero_angle: float = setting(0.0, -2 * math.pi, 2 * math.pi,
                                     doc="pole angle at which the encoder reads 0 [rad]")
    motor_force_max: float = setting(10.0, 0.0, None, lo_open=True, doc="force at 100 % duty [N]")
    motor_sign: int = setting(1, -1, 1, doc="+1/-1: positive duty pushes towards +p")
    motor_time_constant: float = setting(0.005, 0.0, 1.0, doc="first-order force lag [s]")
    track_half_length: float = setting(0.45, 0.0, None, lo_open=True, doc="hard end stops at +-[m]")
    limit_switch_position: float = setting(0.42, 0.0, None, lo_open=True,
                                           doc="limit switches close at |p| >= this [m]")
    integrator_substeps: int = setting(2, 1, 100, doc="RK4 substeps per tick")
    reset_cause: int = setting(int(ResetCause.POWER_ON), 0, 255,
                               doc="CONFIG reset_cause (AVR MCUSR bits; 0x01 power-on)")

    def check(self) -> None:
        for name in ("cart_sign", "pole_sign", "motor_sign"):
            if getattr(self, name) not in (-1, 1):
                self.fail(name, "must be +1 or -1")
        if self.limit_switch_position > self.track_half_length:
            self.fail("limit_switch_position", "must lie inside the end stops")

    @property
    def period(self) -> float:
        return 1.0 / self.state_rate_hz


def matching_hardware_config(emulator: EmulatorConfig, port: str, **overrides) -> HardwareConfig:
    """A host calibration that agrees with the emulated rig (what a lab measures on a real one)."""
    values = dict(
        port=port,
        metres_per_cart_count=1.0 / emulator.cart_counts_per_m,
        cart_sign=emulator.cart_sign,
        radians_per_pole_count=2 * math.pi / emulator.pole_counts_per_rev,
        pole_sign=emulator.pole_sign,
        pole_angle_offset=emulator.pole_zero_angle,
        force_to_command=1.0 / emulator.motor_force_max,
        motor_sign=emulator.motor_sign,
    )
    values.update(overrides)
    return HardwareConfig().replace(**values)


@dataclass
class Faults:
    """Fault injection, changeable while running: fractions in [0, 1]."""

    corrupt_tx: float = 0.0   # of bytes sent to the host, each replaced by a different value
    corrupt_rx: float = 0.0   # of bytes received from the host
    drop: float = 0.0         # of frames never sent (their sequence number is still used)
    amp_fault: bool = False   # the amplifier's fault input is active: no force, the fault latches
    switches: int = 0         # Status.LIMIT_LEFT/RIGHT bits forced closed (stuck or miswired)


@dataclass
class EmulatorStats:
    frames_sent: int = 0
    frames_corrupted: int = 0     # frames with at least one corrupted byte (tx)
    frames_dropped: int = 0
    bytes_corrupted_tx: int = 0
    bytes_corrupted_rx: int = 0
    tx_overflows: int = 0         # frames lost because nobody was reading the pty
    commands_applied: int = 0     # valid COMMAND frames (every other received frame is rejected
    #                               and counted in rx: crc_errors, malformed, oversized)
    watchdog_trips: int = 0
    overruns: int = 0             # ticks skipped because the thread fell behind real time
    disconnects: int = 0
    rx: DecoderStats = dataclasses.field(default_factory=DecoderStats)


@dataclass(frozen=True)
class Snapshot:
    """The emulated rig at one tick."""

    tick: int
    x: np.ndarray           # true plant state [p, pdot, theta, thetadot]
    force: float            # force the motor applies now [N]
    command: int            # raw command the motor is driven with (after watchdog and limits)
    status: int
    watchdog_trip_time: float | None   # monotonic time of the last trip
    last_command_time: float | None    # monotonic time of the last valid COMMAND


class FirmwareEmulator:
    """The emulated MCU on a pty; use as a context manager or start()/stop()."""

    def __init__(self, config: EmulatorConfig | None = None, plant: PlantConfig | None = None,
                 faults: Faults | None = None, link: str | Path | None = None,
                 seed: int = 0, probe: bool = False) -> None:
        self.config = config or EmulatorConfig()
        self.probe = probe
        self.plant = plant or PlantConfig()
        self.faults = faults or Faults()
        self.link = Path(link) if link is not None else None
        self.stats = EmulatorStats()
        self.command_log: collections.deque[tuple[float, int, bool]] = collections.deque(
            maxlen=COMMAND_LOG_LENGTH)
        # Probe mode: (tick, STATE written -> answering COMMAND read [s]) per answered STATE.
        self.round_trips: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=ROUND_TRIP_LOG_LENGTH)
        self._probe_sent: dict[int, tuple[int, float]] = {}   # code -> (tick, time written)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name = ""
        self._reopen_at = 0.0
        self._stalled_until = 0.0
        self._disconnect_for: float | None = None
        self._decoder = FrameDecoder()
        self._tx_seq = SequenceCounter()
        self._watchdog_ms = self.config.watchdog_ms
        self._x = np.zeros(4)
        self._force = 0.0
        self._duty_cmd = 0          # last valid raw command
        self._enabled = False
        self._watchdog_tripped = False
        self._fault_latched = False  # set by an active fault input, cleared by the acknowledgement
        self._session = False       # a HELLO arrived since power-up / reset: ENABLE = 1 may act
        self._last_command: float | None = None
        self._trip_time: float | None = None
        self._command = 0           # raw command actually driving the motor
        self._status = 0
        self._tick = 0
        self._boot_tick = 0         # the tick of the last (emulated) MCU reset: its clock's zero
        self._reset_cause = self.config.reset_cause
        self._counter_base = (0,) * 6   # counter values at the last reset (since power-up)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Open the pty, start the firmware thread; returns the device path to connect to."""
        self._open_pty()
        self._thread = threading.Thread(target=self._run, name="firmware-emulator", daemon=True)
        self._thread.start()
        return self.device_path

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._close_pty()
        if self.link is not None:
            self.link.unlink(missing_ok=True)

    def __enter__(self) -> "FirmwareEmulator":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def device_path(self) -> str:
        """The stable link if one was asked for, else the current pty slave."""
        return str(self.link) if self.link is not None else self._slave_name

    # -- faults and inspection ------------------------------------------------------------

    def stall(self, seconds: float) -> None:
        """Stop talking (no STATE, no RX processing) for a while; the plant and watchdog go on."""
        with self._lock:
            self._stalled_until = time.monotonic() + seconds

    def disconnect(self, seconds: float, timeout: float = 1.0) -> bool:
        """Close the pty (the host sees the device vanish) and open a new one `seconds` later.

        The firmware thread does the closing (it alone touches the descriptors, so a number reused
        by another open() is never read by mistake); this waits until it has, up to `timeout`.
        """
        with self._lock:
            self._disconnect_for = seconds
            self._lock.notify_all()
            return self._lock.wait_for(lambda: self._disconnect_for is None, timeout)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot()

    def reset(self, cause: int = int(ResetCause.WATCHDOG)) -> None:
        """Restart the emulated MCU under the open port, as its hardware watchdog or a brown-out
        would: clock, sequence number and counters from zero, amplifier disabled, the watchdog
        back to its default, the host's sequence number forgotten, `cause` in the next CONFIG."""
        with self._lock:
            self._boot_tick = self._tick
            self._tx_seq = SequenceCounter()
            self._decoder.reset_sequence()
            self._counter_base = self._counter_values()
            self._duty_cmd, self._enabled, self._last_command = 0, False, None
            self._watchdog_tripped = self._fault_latched = self._session = False
            self._watchdog_ms = self.config.watchdog_ms
            self._reset_cause = int(cause)

    def reconfigure(self, **changes: object) -> None:
        """Change the emulated rig's settings (tests: new firmware figures for the next CONFIG)."""
        with self._lock:
            self.config = dataclasses.replace(self.config, **changes)

    def counters(self) -> Counters:
        """What the next COUNTERS frame will carry."""
        with self._lock:
            return self._counters()

    def set_state(self, x: Sequence[float]) -> None:
        """Place the plant (tests: start near an end stop, or in motion)."""
        with self._lock:
            self._x = np.asarray(x, dtype=float).copy()

    def wait_until(self, predicate: Callable[[Snapshot], bool], timeout: float) -> bool:
        """Block until predicate(snapshot) holds at a tick; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self._snapshot()):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return False
                self._lock.wait(remaining)
            return True

    def _snapshot(self) -> Snapshot:
        return Snapshot(self._tick, self._x.copy(), self._force, self._command, self._status,
                        self._trip_time, self._last_command)

    # -- pty -------------------------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)            # no echo, no line editing: bytes pass through untouched
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._slave_name = os.ttyname(slave)
        self._decoder = FrameDecoder(restart_types=(MsgType.HELLO,))
        self._decoder.stats = self.stats.rx  # one set of counters across reopenings
        if self.link is not None:
            temporary = self.link.with_name(self.link.name + ".new")
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(self._slave_name)
            temporary.replace(self.link)

    def _close_pty(self) -> None:
        if self.link is not None:
            self.link.unlink(missing_ok=True)
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None

    # -- the firmware loop -----------------------------------------------------------------

    def _run(self) -> None:
        period = self.config.period
        start = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            due = int((now - start) / period) - self._tick
            if due > MAX_CATCHUP_TICKS:
                self.stats.overruns += due - 1
                start += (due - 1) * period
                due = 1
            if due > 0:
                with self._lock:
                    if self._disconnect_for is not None:
                        self._reopen_at = now + self._disconnect_for
                        self._disconnect_for = None
                        self._close_pty()
                        self.stats.disconnects += 1
                    if self._master is None and now >= self._reopen_at:
                        self._open_pty()
                    for _ in range(due):
                        self._step(period, now)
                    self._lock.notify_all()
                continue
            wait = start + (self._tick + 1) * period - now
            master = self._master
            if master is None or now < self._stalled_until:
                self._stop.wait(wait)
                continue
            try:
                ready, _, _ = select.select([master], [], [], wait)
            except (OSError, ValueError):  # closed by disconnect() meanwhile
                continue
            if ready:
                self._receive()

    def _step(self, period: float, now: float) -> None:
        """One MCU tick: watchdog, motor, plant, encoders, STATE."""
        self._tick += 1
        watchdog = self._watchdog_ms / 1000.0
        if (self._enabled and self._last_command is not None
                and now - self._last_command > watchdog):
            self._enabled = False
            self._watchdog_tripped = True
            self._trip_time = now
            self.stats.watchdog_trips += 1
        self._check_fault()
        p = self._x[cartpole.P]
        at_minus = p <= -self.config.limit_switch_position
        at_plus = p >= self.config.limit_switch_position
        # LEFT is the switch at the end a negative command drives towards: -p with motor_sign +1.
        if self.config.motor_sign > 0:
            limit_left, limit_right = at_minus, at_plus
        else:
            limit_left, limit_right = at_plus, at_minus
        limit_left = limit_left or bool(self.faults.switches & Status.LIMIT_LEFT)
        limit_right = limit_right or bool(self.faults.switches & Status.LIMIT_RIGHT)
        command = self._duty_cmd if self._enabled else 0
        if (limit_left and limit_right) or (limit_left and command < 0) or (
                limit_right and command > 0):
            command = 0   # both closed is a wiring fault: no drive at all
        self._command = command
        target = command / COMMAND_FULL_SCALE * self.config.motor_force_max * self.config.motor_sign
        tau = self.config.motor_time_constant
        lag = 1.0 if tau == 0.0 else 1.0 - math.exp(-period / tau)
        self._force += lag * (target - self._force)
        if self.probe:  # the motor drives nothing: the plant stays where it is
            x = self._x
        else:
            x = cartpole.step(self._x, self._force, self.plant, dt=period,
                              substeps=self.config.integrator_substeps)
        stop = self.config.track_half_length
        if abs(x[cartpole.P]) >= stop:  # hard end stop: the cart stops dead
            x[cartpole.P] = math.copysign(stop, x[cartpole.P])
            if x[cartpole.PDOT] * x[cartpole.P] > 0:
                x[cartpole.PDOT] = 0.0
        self._x = x
        status = ((Status.LIMIT_LEFT if limit_left else 0)
                  | (Status.LIMIT_RIGHT if limit_right else 0)
                  | (Status.AMP_FAULT if self.faults.amp_fault else 0)
                  | (Status.WATCHDOG if self._watchdog_tripped else 0)
                  | (Status.ENABLED if self._enabled else 0)
                  | (Status.FAULT_LATCHED if self._fault_latched else 0))
        self._status = int(status)
        if self._master is not None and now >= self._stalled_until:
            self._send(State(*self._encoders(), self._timestamp_us(), self._status, command))
            if self.probe:
                self._probe_sent[probe_code(self._tick)] = (self._tick, time.monotonic())

    def _encoders(self) -> tuple[int, int]:
        if self.probe:  # the STATE names itself
            return 0, self._tick % PROBE_COUNT_MODULUS
        cfg = self.config
        cart = int(round(self._x[cartpole.P] * cfg.cart_counts_per_m)) * cfg.cart_sign
        turns = (self._x[cartpole.THETA] - cfg.pole_zero_angle) / (2 * math.pi)
        pole = int(round(turns * cfg.pole_counts_per_rev)) * cfg.pole_sign
        return cart, pole

    def _timestamp_us(self) -> int:
        ticks = self._tick - self._boot_tick
        return int(round(ticks * US_PER_S / self.config.state_rate_hz)) % TIMESTAMP_MODULUS

    def _send(self, message: object, lead: bool = False) -> None:
        seq = self._tx_seq.next()
        if self._rng.random() < self.faults.drop:
            self.stats.frames_dropped += 1
            return
        frame = encode_frame(message, seq)  # type: ignore[arg-type]
        if lead:
            frame = bytes([DELIMITER]) + frame
        frame, corrupted = self._corrupt(frame, self.faults.corrupt_tx)
        if corrupted:
            self.stats.frames_corrupted += 1
            self.stats.bytes_corrupted_tx += corrupted
        try:
            written = os.write(self._master, frame)  # type: ignore[arg-type]
        except (BlockingIOError, OSError):
            self.stats.tx_overflows += 1
            return
        if written < len(frame):
            self.stats.tx_overflows += 1
        self.stats.frames_sent += 1

    def _corrupt(self, data: bytes, fraction: float) -> tuple[bytes, int]:
        if fraction <= 0.0:
            return data, 0
        hits = self._rng.random(len(data)) < fraction
        count = int(hits.sum())
        if not count:
            return data, 0
        buf = np.frombuffer(data, dtype=np.uint8).copy()
        buf[hits] ^= self._rng.integers(1, BYTE_VALUES, size=count, dtype=np.uint8)
        return buf.tobytes(), count

    def _receive(self) -> None:
        try:
            data = os.read(self._master, READ_CHUNK)  # type: ignore[arg-type]
        except (BlockingIOError, OSError, TypeError):
            return
        data, corrupted = self._corrupt(data, self.faults.corrupt_rx)
        now = time.monotonic()
        with self._lock:
            self.stats.bytes_corrupted_rx += corrupted
            for frame in self._decoder.feed(data):
                self._handle(frame.message, now)

    def _check_fault(self) -> None:
        """An active fault input disables the amplifier, zeroes the drive and latches."""
        if self.faults.amp_fault:
            self._fault_latched = True
            self._enabled = False
            self._duty_cmd = 0

    def _counter_values(self) -> tuple[int, ...]:
        rx, stats = self.stats.rx, self.stats
        return (rx.crc_errors, rx.malformed, rx.oversized, rx.drops, stats.tx_overflows,
                stats.watchdog_trips)

    def _counters(self) -> Counters:
        """Since power-up (the last reset), saturating; no quadrature errors in an emulated
        encoder."""
        values = [v - base for v, base in zip(self._counter_values(), self._counter_base)]
        return Counters(*(min(v, COUNTER_SATURATION) for v in values), 0, 0)

    def _handle(self, message: object, now: float) -> None:
        if isinstance(message, Command):
            self._check_fault()
            self._duty_cmd = message.motor
            if self._fault_latched:
                # Held off; ENABLE = 0 with the fault input inactive is the acknowledgement.
                if not message.enable and not self.faults.amp_fault:
                    self._fault_latched = False
                self._enabled = False
            else:
                # Before the first HELLO after a (re)start, ENABLE = 1 acts as 0: commands the
                # host sent to the MCU before it restarted never re-enable it.
                self._enabled = message.enable and self._session
            self._watchdog_tripped = False
            self._last_command = now
            self.stats.commands_applied += 1
            self.command_log.append((now, message.motor, message.enable))
            if self.probe:
                sent = self._probe_sent.pop(message.motor, None)
                if sent is not None:
                    self.round_trips.append((sent[0], now - sent[1]))
        elif isinstance(message, Hello):
            # A new session: the motor is zeroed and disabled until the host commands it.
            lo, hi = WATCHDOG_MS_RANGE
            if message.watchdog_ms:
                self._watchdog_ms = min(hi, max(lo, message.watchdog_ms))
            self._duty_cmd, self._enabled, self._last_command = 0, False, None
            self._session = True
            if not self.faults.amp_fault:
                self._fault_latched = False
            cfg = self.config
            self._send(DeviceConfig(*FIRMWARE_VERSION, cfg.cart_counts_per_m,
                                    cfg.pole_counts_per_rev, cfg.state_rate_hz,
                                    self._watchdog_ms, self._reset_cause), lead=True)
        elif isinstance(message, Heartbeat):
            self._send(Heartbeat(message.token))
            self._send(self._counters())
        # Host-bound types (STATE, CONFIG, COUNTERS) are valid frames with no effect.


# ---------------------------------------------------------------------------------------------
# Command line: `ebmcpilco emulator`


def build_parser() -> argparse.ArgumentParser:
    defaults = EmulatorConfig()
    parser = argparse.ArgumentParser(
        prog="ebmcpilco emulator",
        description="Emulate the rig's firmware on a pty: prints the device path, runs until "
                    "Ctrl-C.")
    parser.add_argument("--rate", type=int, default=defaults.state_rate_hz,
                        help="STATE frames per second")
    parser.add_argument("--watchdog-ms", type=int, default=defaults.watchdog_ms,
                        help="command watchdog until a HELLO asks for another")
    parser.add_argument("--config", default=None,
                        help="YAML (or config name) whose plant section is emulated")
    parser.add_argument("--link", default=None,
                        help="keep a symlink at this path pointing to the current pty")
    parser.add_argument("--corrupt", type=float, default=0.0,
                        help="fraction of bytes corrupted, both directions")
    parser.add_argument("--drop", type=float, default=0.0, help="fraction of frames dropped")
    parser.add_argument("--stall-ms", type=float, default=0.0, help="length of each stall")
    parser.add_argument("--stall-every", type=float, default=0.0,
                        help="seconds between stalls (0 = never)")
    parser.add_argument("--disconnect-s", type=float, default=1.0,
                        help="how long each disconnect lasts")
    parser.add_argument("--disconnect-every", type=float, default=0.0,
                        help="seconds between disconnects (0 = never)")
    parser.add_argument("--amp-fault", action="store_true", help="report an amplifier fault")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("corrupt", "drop"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            print(f"--{name} must be in [0, 1]", file=sys.stderr)
            return 2
    try:
        config = EmulatorConfig(state_rate_hz=args.rate, watchdog_ms=args.watchdog_ms)
        plant = load_config(find_config(args.config)).plant if args.config else PlantConfig()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    faults = Faults(corrupt_tx=args.corrupt, corrupt_rx=args.corrupt, drop=args.drop,
                    amp_fault=args.amp_fault)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # Both set explicitly: a SIGINT disposition inherited as "ignored" (as children of some
        # launchers get) would otherwise make Ctrl-C do nothing.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    emulator = FirmwareEmulator(config, plant, faults, link=args.link, seed=args.seed)
    print(emulator.start(), flush=True)
    next_stall = args.stall_every or math.inf
    next_disconnect = args.disconnect_every or math.inf
    started = time.monotonic()
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if elapsed >= next_stall:
                emulator.stall(args.stall_ms / 1000.0)
                next_stall += args.stall_every
            if elapsed >= next_disconnect:
                emulator.disconnect(args.disconnect_s)
                next_disconnect += args.disconnect_every
            stop.wait(max(0.0, min(next_stall, next_disconnect) - elapsed)
                      if math.isfinite(min(next_stall, next_disconnect)) else None)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
        print(f"stopped: {emulator.stats}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
