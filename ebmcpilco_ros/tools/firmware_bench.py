"""`ebmcpilco bench firmware`: the firmware's own figures, measured on the ELF in simavr.

Every figure is in simulated CPU cycles of the ATmega2560 at 16 MHz (repeatable whatever the
host machine is doing), from the harness's interrupt statistics and trace:

- interrupt load: the share of CPU cycles spent in interrupt handlers while both encoders turn at
  the fastest a cart-pole moves them (and at multiples of it, to show the margin), with the
  largest single handler and the quadrature errors the firmware counted;
- STATE period jitter: the spacing of the STATE frames' delimiters leaving the UART, and of the
  firmware's own timestamps;
- command -> PWM latency: from a COMMAND's delimiter entering the UART to the motor pins taking
  its value;
- flash and RAM use of the ELF (avr-size).

A host (SerialDriver) answers every STATE with a COMMAND throughout, as the hardware node does, so
the receive interrupt's load is included.
"""
from __future__ import annotations

import math
import re
import subprocess
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..core.cartpole import PDOT, THETADOT
from ..core.config import PlantConfig
from ..hardware.driver import SerialDriver
from ..hardware.emulator import EmulatorConfig
from ..hardware.protocol import COMMAND_FULL_SCALE, Command, State
from .firmware_sim import ELF, FirmwareSim, build

WAIT = 30.0                # wall-clock bound of every wait [s]
EDGE_MIN_US = 2            # the harness's spacing floor between edges: far below any rate here
LATENCY_DUTIES = (0.05, -0.05)   # alternated on every STATE: the cart barely moves
PWM_STEP = 1.6 / 800
HEARTBEAT_PERIOD = 0.05    # the MCU answers each HEARTBEAT with its COUNTERS [s]


@dataclass(frozen=True)
class EdgeRate:
    """A motion of the cart and pole and the encoder edge rates it makes."""

    label: str
    cart_speed: float      # [m/s]
    pole_speed: float      # [rad/s]

    def edges_per_s(self, emulator: EmulatorConfig) -> tuple[float, float]:
        return (self.cart_speed * emulator.cart_counts_per_m,
                self.pole_speed * emulator.pole_counts_per_rev / (2 * math.pi))


def cartpole_edge_rate(plant: PlantConfig, cart_speed: float) -> EdgeRate:
    """The fastest a cart-pole turns its encoders: the cart at the host's velocity limit, the pole
    at the speed of falling from upright to hanging, sqrt(6 g / l) for a uniform rod, with half
    again for what the motor adds during a swing-up."""
    pole = 1.5 * math.sqrt(6.0 * plant.gravity / plant.pole_length)
    return EdgeRate("cart-pole", cart_speed, pole)


class BenchHost:
    """Answers every STATE with the next COMMAND of `commands` (the amplifier enabled or not)."""

    def __init__(self, sim: FirmwareSim) -> None:
        self.commands: Callable[[int], tuple[float, bool]] = lambda _k: (0.0, False)
        self._count = 0
        self._lock = threading.Lock()
        config = sim.hardware_config(heartbeat_period=HEARTBEAT_PERIOD)
        self.driver = SerialDriver(config, on_state=self._on_state)

    def _on_state(self, sample: Any) -> None:
        with self._lock:
            self._count += 1
            duty, enable = self.commands(self._count)
            self.driver.send_command(duty, enable)

    def quadrature_errors(self) -> dict[str, int]:
        """The firmware's quadrature error counts from a COUNTERS frame sent from now on."""
        for _ in range(2):   # the first new one may have left the MCU before this call
            seen = self.driver.mcu_counters
            if not self.driver.wait_stats(lambda s: s.mcu_counters is not seen, WAIT):
                raise RuntimeError("firmware bench: no COUNTERS from the firmware")
        counters = self.driver.mcu_counters
        assert counters is not None
        return {"cart": counters.cart_quadrature_errors, "pole": counters.pole_quadrature_errors}

    def __enter__(self) -> "BenchHost":
        self.driver.open(WAIT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.driver.close()


def _wait(sim: FirmwareSim, predicate: Callable[[dict], bool], what: str) -> dict:
    status = sim.wait_until(predicate, WAIT)
    if status is None:
        raise RuntimeError(f"firmware bench: {what} not reached")
    return status


def _run_for(sim: FirmwareSim, seconds: float) -> dict:
    end = sim.status()["t"] + seconds
    return _wait(sim, lambda s: s["t"] >= end, f"simulated time {end:.3f} s")


def _irq_delta(before: dict, after: dict) -> dict[str, dict[str, int]]:
    out = {}
    for name, b in after["irq"].items():
        a = before["irq"].get(name, {"count": 0, "cycles": 0})
        out[name] = {"count": b["count"] - a["count"], "cycles": b["cycles"] - a["cycles"],
                     "max_cycles": b["max_cycles"]}
    return out


def interrupt_load(sim: FirmwareSim, host: BenchHost, rate: EdgeRate,
                   window: float) -> dict[str, Any]:
    """Both encoders at `rate` for `window` simulated seconds (the cart crossing the track)."""
    emulator = sim.emulator
    start_p = -0.8 * emulator.limit_switch_position
    sim.set_state([start_p, 0.0, 0.0, 0.0])
    _wait(sim, lambda s: s["enc"]["cart"]["pending"] == 0 and s["enc"]["pole"]["pending"] == 0,
          "the encoders at the start position")
    x = sim.status()["x"]
    errors_before = host.quadrature_errors()
    state = np.array(x, dtype=float)
    state[PDOT], state[THETADOT] = rate.cart_speed, rate.pole_speed
    sim.set_state(state.tolist())
    before = sim.status()
    after = _run_for(sim, window)
    cycles = after["cycle"] - before["cycle"]
    irq = _irq_delta(before, after)
    busy = sum(v["cycles"] for v in irq.values())
    cart_edges = after["enc"]["cart"]["edges"] - before["enc"]["cart"]["edges"]
    pole_edges = after["enc"]["pole"]["edges"] - before["enc"]["pole"]["edges"]
    seconds = cycles / sim.f_cpu
    errors = host.quadrature_errors()
    lag = {k: after["enc"][k]["pending"] for k in ("cart", "pole")}
    return {
        "label": rate.label, "cart_speed_m_s": rate.cart_speed,
        "pole_speed_rad_s": round(rate.pole_speed, 3),
        "cart_edges_per_s": round(cart_edges / seconds), "pole_edges_per_s":
            round(pole_edges / seconds),
        "window_s": round(seconds, 4), "load_percent": round(100.0 * busy / cycles, 2),
        "isr": {name: {"per_s": round(v["count"] / seconds),
                       "mean_cycles": round(v["cycles"] / v["count"], 1) if v["count"] else 0,
                       "max_cycles": v["max_cycles"]}
                for name, v in sorted(irq.items()) if v["count"]},
        "quadrature_errors": {k: errors[k] - errors_before[k] for k in errors},
        "edges_pending_at_end": lag,
    }


def latency_and_jitter(sim: FirmwareSim, host: BenchHost, seconds: float) -> dict[str, Any]:
    """Commands that change on every STATE; the STATE spacing meanwhile."""
    sim.set_state([0.0, 0.0, 0.0, 0.0])
    _wait(sim, lambda s: s["enc"]["cart"]["pending"] == 0, "the cart at the centre")
    start = int(sim.status()["cycle"])
    host.commands = lambda k: (LATENCY_DUTIES[k % 2], True)
    end = int(_run_for(sim, seconds)["cycle"])
    host.commands = lambda _k: (0.0, False)
    _run_for(sim, 0.05)
    trace = sim.trace()
    # Command -> PWM: the first pin change after each COMMAND's delimiter that shows its value,
    # before the next COMMAND arrives. A COMMAND equal to the drive in effect changes nothing,
    # and one followed by the next before the pins changed (both handled in one pass of the main
    # loop: only the newer is applied) has no latency of its own: both are counted apart.
    commands = [(c, f.message) for c, f in trace.commands(start) if c <= end]
    latencies, superseded = [], 0
    for (cycle, message), (following, _next) in zip(commands, commands[1:]):
        assert isinstance(message, Command)
        target = message.motor / COMMAND_FULL_SCALE if message.enable else 0.0
        current = trace.output_at(cycle)
        if current is not None and abs(current.drive - target) <= PWM_STEP:
            continue
        change = trace.first_change(cycle, lambda o, t=target: abs(o.drive - t) <= PWM_STEP)
        if change is None or change.cycle > following:
            superseded += 1
            continue
        latencies.append(trace.seconds(change.cycle - cycle) * 1e6)
    states = [(c, f.message) for c, f in trace.states(start) if c <= end]
    wire = np.diff([c for c, _m in states]) / sim.f_cpu * 1e6
    stamps = np.diff([m.timestamp_us for _c, m in states if isinstance(m, State)])
    return {
        "commands_timed": len(latencies), "commands_superseded": superseded,
        "command_to_pwm_us": _percentiles(latencies),
        "state_frames": len(states),
        "state_period_us": {**_percentiles(wire), "std": round(float(np.std(wire)), 3)},
        "state_timestamp_period_us": {"min": int(stamps.min()), "max": int(stamps.max())},
    }


def _percentiles(values: Any) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {}
    figures = {"p50": np.percentile(v, 50), "p99": np.percentile(v, 99), "min": v.min(),
               "max": v.max()}
    return {k: round(float(x), 3) for k, x in figures.items()}


def memory_use(elf: str) -> dict[str, int]:
    """Flash (.text + .data) and static RAM (.data + .bss + .noinit) of the ELF."""
    out = subprocess.run(["avr-size", "-A", elf], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    sizes = {m.group(1): int(m.group(2))
             for m in re.finditer(r"^\.(\w+)\s+(\d+)", out, re.MULTILINE)}
    flash = sizes.get("text", 0) + sizes.get("data", 0)
    ram = sizes.get("data", 0) + sizes.get("bss", 0) + sizes.get("noinit", 0)
    return {"flash_bytes": flash, "flash_total": 256 * 1024, "ram_bytes": ram,
            "ram_total": 8 * 1024}


def bench(plant: PlantConfig, cart_speed: float, multiples: tuple[float, ...] = (1.0, 2.0, 3.0),
          window: float = 0.25, latency_seconds: float = 2.0,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    from .bench import machine_info

    emulator = EmulatorConfig()
    firmware_dir = build()
    base = cartpole_edge_rate(plant, cart_speed)
    result: dict[str, Any] = {"memory": memory_use(str(firmware_dir / ELF))}
    with FirmwareSim(plant, emulator, speed=1.0,
                     extra_args=[f"--edge-min-us={EDGE_MIN_US}"]) as sim, BenchHost(sim) as host:
        result["latency"] = latency_and_jitter(sim, host, latency_seconds)
        log(f"latency and jitter over {latency_seconds:g} s measured")
        loads = []
        for k in multiples:
            rate = EdgeRate(f"{k:g}x cart-pole", base.cart_speed * k, base.pole_speed * k)
            loads.append(interrupt_load(sim, host, rate, window / k))
            log(f"interrupt load at {k:g}x the cart-pole's edge rate measured")
        result["interrupt_load"] = loads
    result["machine"] = machine_info()
    result["machine"]["simulated"] = "ATmega2560 at 16 MHz in simavr (cycle counts)"
    return result


def summary_text(result: dict[str, Any]) -> str:
    mem, lat = result["memory"], result["latency"]
    lines = [f"flash {mem['flash_bytes']} B of {mem['flash_total']} "
             f"({100 * mem['flash_bytes'] / mem['flash_total']:.1f} %), "
             f"RAM {mem['ram_bytes']} B of {mem['ram_total']} "
             f"({100 * mem['ram_bytes'] / mem['ram_total']:.1f} %) static",
             f"STATE period [us]: p50 {lat['state_period_us']['p50']}, min "
             f"{lat['state_period_us']['min']}, max {lat['state_period_us']['max']}, std "
             f"{lat['state_period_us']['std']} ({lat['state_frames']} frames); firmware "
             f"timestamps {lat['state_timestamp_period_us']['min']}.."
             f"{lat['state_timestamp_period_us']['max']}",
             f"COMMAND -> PWM [us]: p50 {lat['command_to_pwm_us'].get('p50')}, p99 "
             f"{lat['command_to_pwm_us'].get('p99')}, max {lat['command_to_pwm_us'].get('max')} "
             f"({lat['commands_timed']} commands; {lat['commands_superseded']} superseded by the "
             f"next before they reached the pins)",
             "interrupt load:"]
    for load in result["interrupt_load"]:
        worst = max(load["isr"].items(), key=lambda kv: kv[1]["max_cycles"])
        lines.append(f"  {load['label']:15s} cart {load['cart_edges_per_s']:6d} + pole "
                     f"{load['pole_edges_per_s']:6d} edges/s: {load['load_percent']:5.1f} % in "
                     f"interrupts; longest {worst[0]} {worst[1]['max_cycles']} cycles; "
                     f"quadrature errors {load['quadrature_errors']}")
    return "\n".join(lines)
