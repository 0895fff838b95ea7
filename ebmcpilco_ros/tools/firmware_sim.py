"""Firmware in the loop: the real firmware ELF on simavr, with the cart-pole behind its pins.

`FirmwareSim` builds (if needed) and starts `firmware/build/sim/cartpole_sim` (firmware/sim/
cartpole_sim.c), a harness on libsimavr that runs the unmodified ELF as an ATmega2560 at 16 MHz,
bridges its UART0 to a pty of its own (the device path a `SerialDriver` opens), integrates the
cart-pole of `core.cartpole` behind a first-order motor driven from the PWM/DIR/ENABLE pins, and
produces quadrature edges, limit switches and the amplifier fault on the input pins. It mirrors
`hardware.emulator.FirmwareEmulator` (same parameters, same faults) but the MCU side is the real
firmware, so what it shows is what the AVR does: timing in simulated CPU cycles, pin levels,
interrupt statistics.

Everything is in simulated time (`cycle / f_cpu`), which the harness paces to real time (`speed`
= 1; 0 = as fast as it can). The control channel (one line each way, see the harness's header
comment) answers `status()` with the simulated time, plant state, pins, encoder counts, UART
counters and interrupt statistics; the trace (`trace()`) lists every frame delimiter in both
directions, every motor pin change and every reset with its cycle stamp.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..core.config import (ConfigError, PlantConfig, find_config, load_config, read_parameters,
                           section_from_mapping)
from ..hardware.config import HardwareConfig
from ..hardware.emulator import EmulatorConfig, matching_hardware_config
from ..hardware.protocol import (COMMAND_FULL_SCALE, Command, Frame, State, ProtocolError,
                                 decode_frame)

FIRMWARE_DIR_ENV = "EBMCPILCO_FIRMWARE_DIR"
HARNESS = Path("build/sim/cartpole_sim")          # relative to the firmware directory
ELF = Path("build/mega2560/firmware.elf")
BUILD_TARGETS = ("all", "sim")
BUILD_TIMEOUT = 300.0
START_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
RUN_EDGE_MIN_US = 10.0    # [us] closest encoder edges in a run: a learning run's cart reaches 4 m/s
PACKAGES = "gcc-avr avr-libc binutils-avr simavr libsimavr-dev libelf-dev pkg-config make"

_built: set[Path] = set()
_build_lock = threading.Lock()


class FirmwareSimError(RuntimeError):
    """The simulator could not be built, started or asked."""


# ---------------------------------------------------------------------------------------------
# Locating and building


def find_firmware_dir() -> Path:
    """The firmware source tree: $EBMCPILCO_FIRMWARE_DIR, else `firmware/` of this checkout."""
    env = os.environ.get(FIRMWARE_DIR_ENV)
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "Makefile").is_file() and not (path / "sim" / "sim.mk").is_file():
            raise FirmwareSimError(f"{FIRMWARE_DIR_ENV}={env}: no firmware Makefile there")
        return path
    path = Path(__file__).resolve().parents[2] / "firmware"
    if (path / "sim" / "sim.mk").is_file():
        return path
    raise FirmwareSimError(f"no firmware source tree next to the package ({path}); set "
                           f"{FIRMWARE_DIR_ENV} to the firmware directory of a checkout")


def toolchain_missing() -> str | None:
    """Why the simulator cannot be built here (None if it can)."""
    missing = [tool for tool in ("make", "cc", "avr-gcc", "avr-objcopy")
               if shutil.which(tool) is None]
    include = Path("/usr/include/simavr/sim_avr.h")
    if not include.is_file():
        try:
            flags = subprocess.run(["pkg-config", "--cflags", "simavr"], capture_output=True,
                                   text=True, timeout=10)
            found = flags.returncode == 0
        except (OSError, subprocess.SubprocessError):
            found = False
        if not found:
            missing.append("libsimavr-dev (sim_avr.h)")
    if not missing:
        return None
    return (f"the firmware simulator needs {', '.join(missing)}: "
            f"apt-get install {PACKAGES}")


def build(firmware_dir: str | Path | None = None, timeout: float = BUILD_TIMEOUT,
          force: bool = False) -> Path:
    """`make -C firmware all sim` (once per process unless `force`; serialised across processes
    by a lock file); returns the firmware directory. FirmwareSimError with make's output if it
    fails or takes longer than `timeout`."""
    fw = Path(firmware_dir).resolve() if firmware_dir is not None else find_firmware_dir()
    with _build_lock:
        if fw in _built and not force:
            return fw
        reason = toolchain_missing()
        if reason:
            raise FirmwareSimError(reason)
        (fw / "build").mkdir(exist_ok=True)
        with open(fw / "build" / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                done = subprocess.run(["make", "-C", str(fw), *BUILD_TARGETS],
                                      capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise FirmwareSimError(f"make -C {fw} {' '.join(BUILD_TARGETS)} took longer "
                                       f"than {timeout:g} s") from exc
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
            raise FirmwareSimError(f"make -C {fw} {' '.join(BUILD_TARGETS)} failed "
                                   f"({done.returncode}):\n{tail}")
        _built.add(fw)
    return fw


def harness_arguments(plant: PlantConfig, emulator: EmulatorConfig,
                      x0: Sequence[float] | None = None) -> list[str]:
    """Command-line options that give the harness the plant of `core` and the rig of the
    emulator. (state_rate_hz and watchdog_ms are the firmware's own: CONFIG reports them.)"""
    values = dict(
        cart_mass=plant.cart_mass, pole_mass=plant.pole_mass, pole_length=plant.pole_length,
        friction=plant.friction, gravity=plant.gravity,
        cart_counts_per_m=emulator.cart_counts_per_m,
        pole_counts_per_rev=emulator.pole_counts_per_rev, cart_sign=emulator.cart_sign,
        pole_sign=emulator.pole_sign, pole_zero_angle=emulator.pole_zero_angle,
        motor_force_max=emulator.motor_force_max, motor_sign=emulator.motor_sign,
        motor_time_constant=emulator.motor_time_constant,
        track_half_length=emulator.track_half_length,
        limit_switch_position=emulator.limit_switch_position)
    args = [f"--{name.replace('_', '-')}={value!r}" for name, value in values.items()]
    if x0 is not None:
        args.append("--x0=" + ",".join(repr(float(v)) for v in x0))
    return args


# ---------------------------------------------------------------------------------------------
# Trace


@dataclass(frozen=True)
class TraceFrame:
    """The bytes of one frame before its 0x00 and what the link did to them."""

    cycle: int          # MCU->host: the firmware wrote the 0x00; host->MCU: the 0x00 entered
    data: bytes         # MCU->host: as the firmware wrote them; host->MCU: as the MCU got them
    corrupted: int
    dropped: int
    lost: int = 0       # MCU->host: lost to a stall, a disconnect or a full pty
    cut: bool = False   # longer than the trace keeps

    def decode(self) -> Frame | None:
        """The frame, if it is a valid one (None for an empty frame or any decoding error)."""
        if not self.data or self.cut:
            return None
        try:
            return decode_frame(self.data)
        except ProtocolError:
            return None


@dataclass(frozen=True)
class OutputChange:
    """The motor pins after a change: ENABLE, DIR, Timer1's OCR1A/TOP and the PWM duty."""

    cycle: int
    enable: int
    dir: int
    ocr: int
    top: int
    duty: float

    @property
    def drive(self) -> float:
        """Signed duty the amplifier applies (0 while disabled): +1 = full positive motor."""
        return (self.duty if self.dir else -self.duty) if self.enable else 0.0

    @property
    def motor(self) -> int:
        """`drive` on the COMMAND.motor scale (+-32767), rounded."""
        return int(round(self.drive * COMMAND_FULL_SCALE))


@dataclass(frozen=True)
class InputChange:
    cycle: int
    limit_neg: int      # 1 = pressed
    limit_pos: int
    fault: int          # pin level: 0 = amplifier fault


@dataclass(frozen=True)
class PlantSample:
    """The plant when the firmware's tick interrupt was entered (it latches the encoders)."""

    cycle: int
    x: tuple[float, float, float, float]
    cart_line: int      # the count the encoder lines stood for
    pole_line: int
    step: int = 0       # the cycle of the plant step x belongs to (steps are 25 us apart)


@dataclass(frozen=True)
class ResetEvent:
    """The AVR (re)started: MCUSR as the firmware finds it, the encoder lines' counts then."""

    cycle: int
    mcusr: int
    cart_line: int
    pole_line: int


@dataclass(frozen=True)
class TraceEvent:
    cycle: int
    text: str           # the control command


@dataclass
class Trace:
    """Everything the harness traced so far (grows with each FirmwareSim.trace() call)."""

    f_cpu: int = 16_000_000
    tx: list[TraceFrame] = dataclasses.field(default_factory=list)
    rx: list[TraceFrame] = dataclasses.field(default_factory=list)
    outputs: list[OutputChange] = dataclasses.field(default_factory=list)
    inputs: list[InputChange] = dataclasses.field(default_factory=list)
    samples: list[PlantSample] = dataclasses.field(default_factory=list)
    resets: list[ResetEvent] = dataclasses.field(default_factory=list)
    faults: list[TraceEvent] = dataclasses.field(default_factory=list)

    def seconds(self, cycle: int) -> float:
        return cycle / self.f_cpu

    def cycles(self, seconds: float) -> int:
        return int(round(seconds * self.f_cpu))

    def frames(self, direction: str = "tx", since: int = 0) -> list[tuple[int, Frame]]:
        """Valid frames ("tx": MCU->host as the firmware sent them, "rx": host->MCU as the MCU
        received them) from cycle `since` on, with their delimiter's cycle."""
        out = []
        for f in (self.tx if direction == "tx" else self.rx):
            if f.cycle >= since:
                frame = f.decode()
                if frame is not None:
                    out.append((f.cycle, frame))
        return out

    def states(self, since: int = 0) -> list[tuple[int, Frame]]:
        return [(c, f) for c, f in self.frames("tx", since) if isinstance(f.message, State)]

    def commands(self, since: int = 0) -> list[tuple[int, Frame]]:
        """COMMAND frames that reached the MCU intact."""
        return [(c, f) for c, f in self.frames("rx", since) if isinstance(f.message, Command)]

    def output_at(self, cycle: int) -> OutputChange | None:
        """The motor pins as they were at `cycle`."""
        last = None
        for o in self.outputs:
            if o.cycle > cycle:
                break
            last = o
        return last

    def first_output(self, since: int,
                     predicate: Callable[[OutputChange], bool]) -> OutputChange | None:
        """The first pin state from `since` on (the one in effect at `since` included) that
        satisfies predicate."""
        current = self.output_at(since)
        if current is not None and predicate(current):
            return current
        for o in self.outputs:
            if o.cycle > since and predicate(o):
                return o
        return None

    def first_change(self, after: int,
                     predicate: Callable[[OutputChange], bool]) -> OutputChange | None:
        """The first pin change strictly after cycle `after` that satisfies predicate (what the
        firmware did in answer to something at `after`)."""
        for o in self.outputs:
            if o.cycle > after and predicate(o):
                return o
        return None

    def enable_fell(self, after: int) -> OutputChange | None:
        """The first change strictly after `after` that takes ENABLE from high to low."""
        return self._edge(after, rising=False)

    def enable_rose(self, after: int) -> OutputChange | None:
        """The first change strictly after `after` that takes ENABLE from low to high."""
        return self._edge(after, rising=True)

    def _edge(self, after: int, rising: bool) -> OutputChange | None:
        current = self.output_at(after)
        level = current.enable if current is not None else 0
        for o in self.outputs:
            if o.cycle <= after:
                continue
            if o.enable != level and bool(o.enable) == rising:
                return o
            level = o.enable
        return None

    def reset_before(self, cycle: int) -> ResetEvent | None:
        """The last AVR (re)start at or before `cycle`."""
        last = None
        for r in self.resets:
            if r.cycle > cycle:
                break
            last = r
        return last

    def sample_before(self, cycle: int) -> PlantSample | None:
        """The last plant sample (tick interrupt entry) at or before `cycle`."""
        last = None
        for p in self.samples:
            if p.cycle > cycle:
                break
            last = p
        return last

    def firmware_counts(self, sample: PlantSample) -> tuple[int, int]:
        """The counts the firmware should have latched at `sample` (it counts from its reset)."""
        reset = self.reset_before(sample.cycle)
        cart0, pole0 = (reset.cart_line, reset.pole_line) if reset is not None else (0, 0)
        return sample.cart_line - cart0, sample.pole_line - pole0

    def durations(self, since: int = 0, until: int | None = None
                  ) -> list[tuple[OutputChange, int]]:
        """Each pin state from `since` on with how many cycles it lasted (the last one: up to
        `until`, default its own cycle: 0)."""
        out = []
        changes = [o for o in self.outputs if o.cycle >= since]
        for o, after in zip(changes, changes[1:]):
            out.append((o, after.cycle - o.cycle))
        if changes:
            last = changes[-1]
            out.append((last, max(0, (until if until is not None else last.cycle) - last.cycle)))
        return out

    def applied(self, since: int = 0) -> list[OutputChange]:
        """Pin states with the amplifier enabled and a nonzero duty, from `since` on."""
        return [o for o in self.outputs if o.cycle >= since and o.drive != 0.0]


class _TraceReader:
    """Parses the harness's trace file incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.trace = Trace()
        self._offset = 0
        self._partial = b""

    def read(self) -> Trace:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.trace
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._parse(line.decode("ascii", "replace"))
        return self.trace

    def _parse(self, line: str) -> None:
        fields = line.split()
        if not fields:
            return
        kind, t = fields[0], self.trace
        if kind == "#":
            for field in fields:
                if field.startswith("f_cpu="):
                    t.f_cpu = int(field[6:])
            return
        cycle = int(fields[1])
        if kind in ("T", "R"):
            text = fields[2]
            cut = text.endswith("+")
            data = b"" if text == "-" else bytes.fromhex(text.rstrip("+"))
            counts = [int(v) for v in fields[3:]]
            frame = TraceFrame(cycle, data, counts[0], counts[1],
                               counts[2] if len(counts) > 2 else 0, cut)
            (t.tx if kind == "T" else t.rx).append(frame)
        elif kind == "O":
            t.outputs.append(OutputChange(cycle, int(fields[2]), int(fields[3]), int(fields[4]),
                                          int(fields[5]), float(fields[6])))
        elif kind == "I":
            t.inputs.append(InputChange(cycle, int(fields[2]), int(fields[3]), int(fields[4])))
        elif kind == "P":
            t.samples.append(PlantSample(cycle, tuple(float(v) for v in fields[2:6]),
                                         int(fields[6]), int(fields[7]),
                                         int(fields[8]) if len(fields) > 8 else 0))
        elif kind == "X":
            t.resets.append(ResetEvent(cycle, int(fields[2]), int(fields[3]), int(fields[4])))
        elif kind == "F":
            t.faults.append(TraceEvent(cycle, " ".join(fields[2:])))


# ---------------------------------------------------------------------------------------------
# The simulator


class FirmwareSim:
    """The firmware ELF on simavr with the cart-pole; a context manager (or start()/stop()).

    `plant` (core) and `emulator` (the rig: encoders, motor, track) give the harness the same
    parameters the Python emulator uses. `x0` is the plant state at power-up (the encoders count
    from there). `link`: a symlink kept pointing at the current pty (it follows disconnects).
    `speed`: simulated seconds per real second (0 = as fast as possible). `trace`: keep the
    event trace (in the run directory). Time arguments of the fault methods are in simulated
    seconds.
    """

    def __init__(self, plant: PlantConfig | None = None, emulator: EmulatorConfig | None = None,
                 *, x0: Sequence[float] | None = None, link: str | Path | None = None,
                 speed: float = 1.0, trace: bool = True, seed: int = 0,
                 firmware_dir: str | Path | None = None, elf: str | Path | None = None,
                 harness: str | Path | None = None, build: bool = True,
                 build_timeout: float = BUILD_TIMEOUT, extra_args: Iterable[str] = ()) -> None:
        self.plant = plant or PlantConfig()
        self.emulator = emulator or EmulatorConfig()
        self.x0 = None if x0 is None else [float(v) for v in x0]
        self.link = Path(link) if link is not None else None
        self.speed = speed
        self.trace_enabled = trace
        self.seed = seed
        self._firmware_dir = firmware_dir
        self._elf = elf
        self._harness = harness
        self._build = build
        self._build_timeout = build_timeout
        self._extra_args = list(extra_args)
        self._proc: subprocess.Popen | None = None
        self._rundir: tempfile.TemporaryDirectory | None = None
        self._lock = threading.Lock()
        self._buffer = b""
        self._reader: _TraceReader | None = None
        self.ready: dict = {}
        self._log = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Build if needed, start the harness; returns the device path (the link if any)."""
        if self._proc is not None:
            return self.device_path
        harness, elf = self._paths()
        self._rundir = tempfile.TemporaryDirectory(prefix="firmware-sim-")
        run = Path(self._rundir.name)
        cmd = [str(harness), *harness_arguments(self.plant, self.emulator, self.x0),
               f"--speed={self.speed!r}", f"--seed={self.seed}"]
        if self.link is not None:
            cmd.append(f"--link={self.link}")
        if self.trace_enabled:
            cmd.append(f"--trace={run / 'trace.txt'}")
            self._reader = _TraceReader(run / "trace.txt")
        cmd += [*self._extra_args, str(elf)]
        self._log = open(run / "harness.log", "wb")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log, start_new_session=True)
        try:
            line = self._readline(timeout)
            self.ready = json.loads(line)
            if not self.ready.get("ready"):
                raise FirmwareSimError(f"unexpected first line from the harness: {line!r}")
        except Exception:
            self.stop()
            raise
        return self.device_path

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Quit the harness (SIGTERM, then SIGKILL if it does not go); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.poll() is None and proc.stdin is not None:
                    proc.stdin.write(b"quit\n")
                    proc.stdin.flush()
            except OSError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self._reader is not None:
            self._reader.read()       # the trace stays readable after stop()
        if self._rundir is not None:
            self._rundir.cleanup()
            self._rundir = None

    def __enter__(self) -> "FirmwareSim":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def device_path(self) -> str:
        """The link if one was asked for, else the pty the harness opened first."""
        return str(self.link) if self.link is not None else str(self.ready.get("pty", ""))

    @property
    def f_cpu(self) -> int:
        return int(self.ready.get("f_cpu", 16_000_000))

    def hardware_config(self, **overrides) -> HardwareConfig:
        """A host calibration that matches the simulated rig, on this simulator's device."""
        return matching_hardware_config(self.emulator, self.device_path, **overrides)

    @property
    def log(self) -> str:
        """The harness's stderr so far."""
        if self._rundir is None:
            return ""
        try:
            return (Path(self._rundir.name) / "harness.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- requests --------------------------------------------------------------------------

    def request(self, line: str, timeout: float = REQUEST_TIMEOUT) -> dict:
        """Send one control command, return its JSON answer; FirmwareSimError if it fails."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None:
                raise FirmwareSimError("the simulator is not running")
            try:
                proc.stdin.write(line.encode() + b"\n")
                proc.stdin.flush()
            except OSError as exc:
                raise FirmwareSimError(f"the simulator is gone ({exc}); log:\n{self.log}") from exc
            answer = json.loads(self._readline(timeout))
        if not answer.get("ok"):
            raise FirmwareSimError(f"{line!r}: {answer.get('error')}")
        return answer

    def status(self) -> dict:
        """Simulated time (`t`, `cycle`), plant (`x`, `force`), pins, encoders (`enc`: true,
        line, firmware-expected counts), `uart` counters, `link`, `faults`, `resets`, `pace`,
        `irq` (per vector: count, cycles, max_cycles, latency, max_latency)."""
        return self.request("status")

    def sim_time(self) -> float:
        return float(self.status()["t"])

    def set_state(self, x: Sequence[float]) -> dict:
        """Place the plant. The encoder lines follow with edges, at most one per 25 us per
        encoder (the harness's --edge-min-us): wait for `enc.*.pending` == 0."""
        values = [float(v) for v in x]
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise ValueError("set_state needs 4 finite values [p, pdot, theta, thetadot]")
        return self.request("set_state " + " ".join(repr(v) for v in values))

    def corrupt(self, rx: float | None = None, tx: float | None = None) -> None:
        """Probability that a byte host->MCU (rx) / MCU->host (tx) is replaced."""
        if rx is not None:
            self.request(f"corrupt_rx {float(rx)!r}")
        if tx is not None:
            self.request(f"corrupt_tx {float(tx)!r}")

    def drop(self, rx: float | None = None, tx: float | None = None) -> None:
        """Probability that a byte host->MCU (rx) / MCU->host (tx) is lost."""
        if rx is not None:
            self.request(f"drop_rx {float(rx)!r}")
        if tx is not None:
            self.request(f"drop_tx {float(tx)!r}")

    def stall(self, seconds: float) -> dict:
        """The UART goes silent both ways for `seconds` of simulated time (bytes are lost)."""
        return self.request(f"stall {seconds * 1000.0!r}")

    def disconnect(self, seconds: float) -> dict:
        """Close the pty; a new one (and the link) opens `seconds` of simulated time later."""
        return self.request(f"disconnect {seconds * 1000.0!r}")

    def stuck(self, encoder: str, channel: str, level: int | None) -> dict:
        """Hold encoder ("cart"/"pole") channel ("A"/"B") at level 0/1; None releases it."""
        return self.request(f"stuck {encoder} {channel} {'off' if level is None else int(level)}")

    def glitch(self, encoder: str, count: int = 1) -> dict:
        """`count` noise pulses that flip both channels of an encoder at once and back."""
        return self.request(f"glitch {encoder} {int(count)}")

    def amp_fault(self, active: bool) -> dict:
        return self.request(f"amp_fault {1 if active else 0}")

    def limit(self, which: str, pressed: bool | None) -> dict:
        """Force limit switch "neg"/"pos" pressed/released; None: follow the plant again."""
        return self.request(f"limit {which} {'auto' if pressed is None else int(bool(pressed))}")

    def reset(self) -> dict:
        """Pulse the MCU's external reset pin."""
        return self.request("reset")

    def set_speed(self, speed: float) -> dict:
        self.speed = speed
        return self.request(f"speed {float(speed)!r}")

    def wait_until(self, predicate: Callable[[dict], bool], timeout: float,
                   interval: float = 0.002) -> dict | None:
        """Poll status() until predicate(status) holds (that status is returned) or `timeout`
        wall seconds pass (None)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            if time.monotonic() >= deadline:
                return None
            time.sleep(interval)

    def wait_sim_time(self, t: float, timeout: float) -> dict | None:
        """Wait until the simulated time reaches `t` seconds."""
        return self.wait_until(lambda s: s["t"] >= t, timeout)

    def trace(self) -> Trace:
        """The trace so far (flushed by the harness first); the same object grows per call."""
        if self._reader is None:
            raise FirmwareSimError("started with trace=False")
        if not self.running:
            return self._reader.trace      # read to the end at stop()
        self.request("trace_flush")
        return self._reader.read()

    def seconds(self, cycle: int) -> float:
        return cycle / self.f_cpu

    def cycles(self, seconds: float) -> int:
        return int(round(seconds * self.f_cpu))

    # -- internals -------------------------------------------------------------------------

    def _paths(self) -> tuple[Path, Path]:
        fw = None
        if self._harness is None or self._elf is None:
            fw = (build(self._firmware_dir, self._build_timeout) if self._build
                  else Path(self._firmware_dir).resolve() if self._firmware_dir is not None
                  else find_firmware_dir())
        harness = Path(self._harness) if self._harness is not None else fw / HARNESS
        elf = Path(self._elf) if self._elf is not None else fw / ELF
        for path, what in ((harness, "harness"), (elf, "firmware ELF")):
            if not path.is_file():
                raise FirmwareSimError(f"no {what} at {path} (make -C firmware all sim)")
        return harness, elf

    def _readline(self, timeout: float) -> bytes:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FirmwareSimError(f"no answer from the harness within {timeout:g} s; log:\n"
                                       f"{self.log[-2000:]}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = proc.poll()
                raise FirmwareSimError(f"the harness exited ({code}); log:\n{self.log[-2000:]}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line


# ---------------------------------------------------------------------------------------------
# Command line: python -m ebmcpilco_ros.tools.firmware_sim


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m ebmcpilco_ros.tools.firmware_sim",
        description="Run the firmware ELF on simavr with the cart-pole behind its pins: prints "
                    "the device path, runs until Ctrl-C.")
    parser.add_argument("--config", default=None,
                        help="YAML (or config name) whose plant and emulator sections are used")
    parser.add_argument("--link", default=None, help="keep a symlink here to the current pty")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="simulated seconds per real second (0 = as fast as possible)")
    parser.add_argument("--x0", type=float, nargs=4, default=None,
                        metavar=("P", "PDOT", "THETA", "THETADOT"), help="plant at power-up")
    args = parser.parse_args(argv)
    try:
        plant, emulator = PlantConfig(), EmulatorConfig()
        if args.config:
            path = find_config(args.config)
            plant = load_config(path).plant
            section = read_parameters(path).get(EmulatorConfig._section) or {}
            emulator = section_from_mapping(EmulatorConfig, section)
        sim = FirmwareSim(plant, emulator, x0=args.x0, link=args.link, speed=args.speed,
                          trace=False, extra_args=[f"--edge-min-us={RUN_EDGE_MIN_US:g}"])
        print(sim.start(), flush=True)
    except (ConfigError, FirmwareSimError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5) and sim.running:
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
