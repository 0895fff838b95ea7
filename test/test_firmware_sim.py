"""Firmware in the loop: the real firmware ELF in the simavr harness (tools.firmware_sim), the real
SerialDriver / Rig over its pty. Timing is asserted in simulated time (the harness's CPU cycles,
from its trace) or on the firmware's own timestamps; wall-clock limits only bound the waits.

Fails, never skips, where the AVR toolchain or simavr is missing: `make test` installs them
(scripts/system-packages.sh).
"""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from ebmcpilco_ros.core import cartpole
from ebmcpilco_ros.core.config import PlantConfig
from ebmcpilco_ros.hardware.driver import SerialDriver
from ebmcpilco_ros.hardware.emulator import EmulatorConfig, matching_hardware_config
from ebmcpilco_ros.hardware.protocol import (COMMAND_FULL_SCALE, Command, DeviceConfig, ResetCause,
                                             State, Status)
from ebmcpilco_ros.hardware.rig import Rig
from ebmcpilco_ros.tools.firmware_sim import FirmwareSim, build, toolchain_missing

WAIT = 15.0           # wall-clock bound of every wait (2 shared cores: loose)
TICK_MS = 2.0         # the firmware's STATE period (500 Hz)
LOOP_MS = 1.0         # bound on the firmware's main-loop reaction after the event it waits for
#                       (a backlog of host bytes in its 64-byte receive ring: up to ~0.7 ms)
PWM_COUNTS = 800      # Timer1 TOP + 1: one PWM count of duty is 1/800


@pytest.fixture(scope="module")
def firmware_dir():
    reason = toolchain_missing()
    if reason:   # never skipped: `make test` installs the toolchain (scripts/system-packages.sh)
        pytest.fail(reason)
    return build()


def host_config(emulator: EmulatorConfig, port, **overrides):
    values = dict(heartbeat_period=0.05)   # COUNTERS follow each HEARTBEAT echo
    values.update(overrides)
    return matching_hardware_config(emulator, str(port), **values)


class Host:
    """A SerialDriver that re-sends its current (duty, enable) on every STATE, as the rig does,
    and remembers every motor value it ever sent. `sending = False` makes it go silent.
    With `link_disables`, a new or lost session drops the enable (the rig's rule)."""

    def __init__(self, config, link_disables: bool = False) -> None:
        self.command = (0.0, False)
        self.sending = True
        self.sent: set[int] = {0}
        self._link_disables = link_disables
        self._lock = threading.Lock()     # a re-send never overtakes a newer command
        self.driver = SerialDriver(config, on_state=self._on_state, on_link=self._on_link)

    def set(self, duty: float, enable: bool = True) -> None:
        with self._lock:
            self.command = (duty, enable)
            self.sent.add(Command.from_duty(duty, enable).motor)
            if self.sending:
                self.driver.send_command(duty, enable)

    def _on_state(self, sample) -> None:
        with self._lock:
            if self.sending:
                self.driver.send_command(*self.command)

    def _on_link(self, connected: bool) -> None:
        if self._link_disables:
            with self._lock:
                self.command = (0.0, False)

    def state(self, predicate, timeout: float = WAIT) -> State:
        """The first STATE from now on that satisfies predicate."""
        latest = self.driver.latest()
        after = latest.index if latest is not None else 0
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                sample = self.driver.wait_state(after, 0.5)
                if sample is None:
                    continue
                after = sample.index
                if predicate(sample.state):
                    return sample.state
        finally:
            timer.cancel()
        raise AssertionError("no STATE satisfied the condition in time")

    def counters(self, predicate, timeout: float = WAIT):
        """The MCU's COUNTERS once predicate(counters) holds."""
        ok = self.driver.wait_stats(lambda s: s.mcu_counters is not None
                                    and predicate(s.mcu_counters), timeout)
        assert ok, f"COUNTERS never satisfied the condition: {self.driver.stats().mcu_counters}"
        return self.driver.stats().mcu_counters

    def __enter__(self) -> "Host":
        self.driver.open(WAIT)
        return self

    def __exit__(self, *exc) -> None:
        self.driver.close()


def wait(sim: FirmwareSim, predicate, what: str) -> dict:
    status = sim.wait_until(predicate, WAIT)
    assert status is not None, f"{what}: not reached; status {sim.status()}"
    return status


def run_for(sim: FirmwareSim, seconds: float) -> dict:
    """Wait until `seconds` of simulated time have passed."""
    end = sim.status()["t"] + seconds
    return wait(sim, lambda s: s["t"] >= end, f"simulated time {end:.3f} s")


def ms(sim: FirmwareSim, cycles: int) -> float:
    return cycles * 1000.0 / sim.f_cpu


def pins_drive(duty: float):
    """Predicate: the amplifier enabled and driven at `duty` (signed, within one PWM count plus
    the compare's +1 count)."""
    return lambda s: (s["pins"]["enable"] == 1
                      and abs(s["pins"]["drive"] - duty) <= 1.6 / PWM_COUNTS)


def matches_sent(drive: float, sent: set[int]) -> bool:
    """A pin drive is one of the host's motor values (duty resolution of the PWM)."""
    return any(abs(drive - m / COMMAND_FULL_SCALE) <= 1.6 / PWM_COUNTS for m in sent if m)


# ---------------------------------------------------------------------------------------------


def test_handshake_config_and_reset_cause(firmware_dir):
    em = EmulatorConfig()
    with FirmwareSim(emulator=em) as sim:
        cfg = host_config(em, sim.device_path, command_watchdog_timeout=0.05)
        with SerialDriver(cfg) as driver:
            device = driver.device
            assert device.fw_major >= 1
            assert device.cart_counts_per_m == em.cart_counts_per_m
            assert device.pole_counts_per_rev == em.pole_counts_per_rev
            assert device.state_rate_hz == em.state_rate_hz
            assert device.watchdog_ms == 50
            assert device.reset_cause == ResetCause.POWER_ON
            assert driver.wait_state(0, WAIT) is not None
        sim.reset()                                  # the external reset pin
        with SerialDriver(cfg) as driver:
            assert driver.device.reset_cause == ResetCause.EXTERNAL
            assert driver.device.watchdog_ms == 50
        trace = sim.trace()
        assert [r.mcusr for r in trace.resets] == [ResetCause.POWER_ON, ResetCause.EXTERNAL]
        # CONFIG follows its own leading 0x00 directly (it ends a frame cut by the reset).
        configs = [i for i, f in enumerate(trace.tx)
                   if f.decode() is not None and isinstance(f.decode().message, DeviceConfig)]
        byte = sim.status()["uart"]["byte_cycles"]
        assert len(configs) == 2
        for i in configs:        # (the transmit interrupt's latency adds to each byte time)
            took = trace.tx[i].cycle - trace.tx[i - 1].cycle
            assert took <= 2 * (len(trace.tx[i].data) + 1) * byte


def test_states_match_the_true_plant(firmware_dir):
    em = EmulatorConfig()
    with FirmwareSim(emulator=em) as sim:
        cfg = host_config(em, sim.device_path)
        measured = {}
        rig = Rig(cfg, on_measurement=lambda m, s: measured.__setitem__(s.seq, m.x.copy()))
        with rig:
            sim.set_state([-0.1, 0.3, 1.2, 0.0])     # moving cart, swinging pole
            wait(sim, lambda s: s["enc"]["cart"]["pending"] == 0
                 and s["enc"]["pole"]["pending"] == 0, "encoder lines caught up")
            start = sim.status()["cycle"]
            run_for(sim, 0.6)
        trace = sim.trace()
    states = trace.states(since=start)
    assert len(states) >= 250
    offsets, checked = [], 0
    for cycle, frame in states:
        sample = trace.sample_before(cycle)
        state = frame.message
        # The counts the firmware latched are exactly those of the lines when its tick began.
        assert (state.cart_counts, state.pole_counts) == trace.firmware_counts(sample)
        reset = trace.reset_before(cycle)
        offsets.append(state.timestamp_us - (sample.cycle - reset.cycle) * 1e6 / trace.f_cpu)
        x = measured.get(frame.seq)
        if x is None:
            continue
        # SI: within half a count of the true plant state, plus the motion during the encoder
        # lines' lag (edges follow the plant within two 25 us steps).
        p, pdot, theta, thetadot = sample.x
        lag = 2 * 25e-6
        why = (frame.seq, state, sample, x)
        assert abs(x[0] - p) <= 0.5 / em.cart_counts_per_m + abs(pdot) * lag + 1e-9, why
        assert (abs(x[2] - theta)
                <= 0.5 * 2 * math.pi / em.pole_counts_per_rev + abs(thetadot) * lag + 1e-9), why
        checked += 1
    assert checked >= 200
    # Timestamps latched with the counts: a constant offset from the moment the tick interrupt
    # began (+-1 us), however late the main loop sends the frame. That moment moves by the
    # interrupt's latency (encoder and UART interrupts go first): a few microseconds.
    assert max(offsets) - min(offsets) <= 2.0
    ticks = [s.cycle for s in trace.samples if s.cycle >= start]
    periods = [b - a for a, b in zip(ticks, ticks[1:])]
    assert all(abs(p - sim.cycles(TICK_MS / 1000)) <= 16 * 20 for p in periods), periods  # 20 us


def test_plant_is_the_core_cart_pole(firmware_dir):
    plant, em = PlantConfig(friction=0.3), EmulatorConfig()
    with FirmwareSim(plant, em) as sim:
        sim.set_state([0.1, 0.4, 2.0, -1.0])     # unpowered: the amplifier is never enabled
        start = sim.status()["cycle"]
        run_for(sim, 0.3)
        samples = [s for s in sim.trace().samples if s.cycle > start]
    assert len(samples) >= 100
    step = sim.cycles(25e-6)                     # the harness's RK4 step
    for a, b in zip(samples, samples[1:]):
        steps, rest = divmod(b.step - a.step, step)
        assert rest == 0 and steps >= 70
        expected = cartpole.step(np.array(a.x), 0.0, plant, dt=steps * 25e-6, substeps=steps)
        assert np.allclose(b.x, expected, rtol=0, atol=1e-9)


def test_commands_reach_the_pwm(firmware_dir):
    em = EmulatorConfig()
    with FirmwareSim(emulator=em) as sim, Host(host_config(em, sim.device_path)) as host:
        for duty in (0.3, -0.55, 1.0, -0.02):
            sim.set_state([0.0, 0.0, 0.0, 0.0])
            host.set(duty, True)
            status = wait(sim, pins_drive(duty), f"duty {duty} on the pins")
            assert status["pins"]["dir"] == (1 if duty > 0 else 0)
            force = duty * em.motor_force_max * em.motor_sign
            wait(sim, lambda s: abs(s["force"] - force) <= 0.01 * abs(force) + 1e-3,
                 f"force {force} N")
        host.set(0.4, False)           # ENABLE = 0 with a motor value: disabled, motor ignored
        wait(sim, lambda s: s["pins"]["enable"] == 0 and s["pins"]["duty"] == 0.0, "disabled")
        state = host.state(lambda st: not st.has(Status.ENABLED))
        assert state.applied_command == 0
        trace = sim.trace()
    # Latency COMMAND (its delimiter into the UART) -> pins, for each new motor value: from the
    # last COMMAND with that value before the pins showed it (a host that fell behind sends a
    # backlog of frames back to back, and the firmware may lose some of those).
    commands = [(c, f.message) for c, f in trace.commands() if f.message.enable]
    latencies, previous = [], None
    for cycle, command in commands:
        if command.motor != previous:
            reached = trace.first_output(cycle, lambda o, m=command.motor:
                                         o.enable and abs(o.motor - m) <= 1.5 * 41)
            assert reached is not None
            sent = max(c for c, m in commands if m.motor == command.motor and c <= reached.cycle)
            latencies.append(ms(sim, reached.cycle - sent))
        previous = command.motor
    assert len(latencies) == 4
    assert max(latencies) <= LOOP_MS + PWM_COUNTS * 1000 / sim.f_cpu   # + OCR1A's next BOTTOM
    print("COMMAND -> pins [ms]:", [round(v, 3) for v in latencies])


@pytest.mark.parametrize("asked_s, effective_ms", [(0.02, 20), (0.002, 5)])
def test_command_watchdog_in_simulated_time(firmware_dir, asked_s, effective_ms):
    em = EmulatorConfig()
    with FirmwareSim(emulator=em) as sim:
        cfg = host_config(em, sim.device_path, command_watchdog_timeout=asked_s)
        with Host(cfg) as host:
            assert host.driver.device.watchdog_ms == effective_ms     # clamped to 5..5000
            host.set(0.3, True)
            wait(sim, pins_drive(0.3), "driving")
            host.sending = False                                      # the host goes silent
            wait(sim, lambda s: s["pins"]["enable"] == 0, "ENABLE low")
            state = host.state(lambda st: st.has(Status.WATCHDOG))
            assert state.applied_command == 0 and not state.has(Status.ENABLED)
            host.sending = True
            host.set(0.0, False)                                      # COUNTERS need the link
            host.counters(lambda c: c.watchdog_trips >= 1)   # (5 ms: Python may trip it before)
            trace = sim.trace()
    last = [c for c, f in trace.commands() if f.message.enable][-1]
    silent = [c for c, _ in trace.commands() if c > last]
    off = trace.enable_fell(last)
    assert off is not None
    zero = trace.first_change(off.cycle - 1, lambda o: not o.enable and o.duty == 0.0)
    assert zero is not None
    assert not silent or silent[0] > zero.cycle
    # Trips at a tick more than watchdog_ms after the last COMMAND, counted in whole ticks (the
    # firmware rounds watchdog_ms up to ticks: late by under a tick, never early).
    whole = math.ceil(effective_ms / TICK_MS) * TICK_MS
    assert effective_ms < ms(sim, off.cycle - last) <= whole + TICK_MS + LOOP_MS
    assert ms(sim, zero.cycle - off.cycle) <= 0.05


@pytest.mark.parametrize("motor_sign", [1, -1])
def test_limit_switches_block_drive_into_them(firmware_dir, motor_sign):
    em = EmulatorConfig(motor_sign=motor_sign)
    into = 0.4 * motor_sign       # the motor value that pushes the cart to +p
    closed = Status.LIMIT_RIGHT if motor_sign > 0 else Status.LIMIT_LEFT
    with FirmwareSim(emulator=em) as sim, Host(host_config(em, sim.device_path)) as host:
        sim.set_state([0.43, 0.0, 0.0, 0.0])   # past the switch at +0.42, inside the stop
        host.state(lambda st: st.has(closed))
        start = sim.status()["cycle"]
        host.set(into, True)
        state = host.state(lambda st: st.has(Status.ENABLED))
        run_for(sim, 0.05)
        state = host.state(lambda st: st.has(Status.ENABLED) and st.has(closed))
        assert state.applied_command == 0
        assert sim.trace().applied(since=start) == []        # never on the pins
        assert abs(sim.status()["x"][0] - 0.43) < 1e-6
        host.set(-into, True)                                 # away from the switch: allowed
        wait(sim, pins_drive(-into), "driving away")
        wait(sim, lambda s: s["x"][0] < 0.40, "the cart left the switch")
        state = host.state(lambda st: not st.has(closed))
        assert state.applied_command == Command.from_duty(-into, True).motor
        # Both switches closed (a wiring fault): no drive at all.
        sim.limit("neg", True)
        sim.limit("pos", True)
        wait(sim, lambda s: s["pins"]["drive"] == 0.0, "no drive with both switches closed")
        state = host.state(lambda st: st.has(Status.LIMIT_LEFT) and st.has(Status.LIMIT_RIGHT))
        assert state.applied_command == 0
        host.set(0.0, False)


def test_amplifier_fault_latches_until_acknowledged(firmware_dir):
    em = EmulatorConfig()
    with FirmwareSim(emulator=em) as sim, Host(host_config(em, sim.device_path)) as host:
        host.set(0.3, True)
        wait(sim, pins_drive(0.3), "driving")
        fault_at = sim.amp_fault(True)["cycle"]
        wait(sim, lambda s: s["pins"]["enable"] == 0, "ENABLE low on the fault")
        host.state(lambda st: st.has(Status.AMP_FAULT) and st.has(Status.FAULT_LATCHED))
        sim.amp_fault(False)
        run_for(sim, 0.03)                    # the host keeps asking for ENABLE = 1
        state = host.state(lambda st: True)
        assert state.has(Status.FAULT_LATCHED) and not state.has(Status.AMP_FAULT)
        assert not state.has(Status.ENABLED) and sim.status()["pins"]["enable"] == 0
        host.set(0.0, False)                  # the acknowledgement
        host.state(lambda st: not st.has(Status.FAULT_LATCHED))
        host.set(0.3, True)
        wait(sim, pins_drive(0.3), "driving again after the acknowledgement")
        trace = sim.trace()
    off = trace.enable_fell(fault_at)
    assert ms(sim, off.cycle - fault_at) <= TICK_MS + LOOP_MS
    ack = next(c for c, f in trace.commands(since=fault_at) if not f.message.enable)
    assert all(not o.enable for o in trace.outputs if off.cycle <= o.cycle <= ack)


def test_encoder_faults_show_in_counts_and_counters(firmware_dir):
    em = EmulatorConfig()
    with FirmwareSim(emulator=em) as sim, Host(host_config(em, sim.device_path)) as host:
        sim.set_state([0.0, 0.0, 1.2, 0.0])   # the pole swings through about +-780 counts
        wait(sim, lambda s: s["enc"]["pole"]["pending"] == 0, "pole line caught up")
        base = host.counters(lambda c: True)
        assert base.pole_quadrature_errors == base.cart_quadrature_errors == 0
        stuck_at = sim.stuck("pole", "A", 0)["cycle"]
        run_for(sim, 0.4)
        trace = sim.trace()
        counts = [f.message.pole_counts for _, f in trace.states(since=stuck_at + 16000)]
        true = [s.pole_line for s in trace.samples if s.cycle > stuck_at]
        # One channel held: every step seen is a legal single-channel one, so the count only
        # dithers by one while the pole really moves (no quadrature error: nothing to see).
        assert max(counts) - min(counts) <= 1 and max(true) - min(true) > 200
        assert host.counters(lambda c: True).pole_quadrature_errors == 0
        sim.stuck("pole", "A", None)
        sim.glitch("pole", 5)                 # noise: both channels flip at once, and back
        counters = host.counters(lambda c: c.pole_quadrature_errors >= 5)
        assert counters.cart_quadrature_errors == 0
        assert sim.status()["enc"]["pole"]["glitches"] == 5


def test_uart_corruption_never_creates_a_command(firmware_dir):
    em = EmulatorConfig()
    values = [0.2, -0.25, 0.1, -0.15]
    with FirmwareSim(emulator=em, seed=7) as sim, \
            Host(host_config(em, sim.device_path)) as host:
        host.set(values[0], True)
        wait(sim, pins_drive(values[0]), "driving")
        sim.corrupt(rx=0.01, tx=0.01)
        start = sim.status()["cycle"]
        for i in range(24):                   # 2.4 s of corrupted link, the command changing
            host.set(values[i % len(values)], True)
            run_for(sim, 0.1)
        sim.corrupt(rx=0.0, tx=0.0)
        host.set(0.0, False)
        clean = sim.status()["cycle"]
        run_for(sim, 0.15)                    # COUNTERS sent after the corruption stopped
        counters = host.counters(lambda c: True)
        status = sim.status()
        trace = sim.trace()
        stats = host.driver.stats()
    assert status["uart"]["rx_corrupted"] > 20 and status["uart"]["tx_corrupted"] > 20
    # Frame level: every COMMAND the firmware accepted is one the host sent.
    accepted = {f.message.motor for _, f in trace.commands(since=start)}
    assert accepted <= host.sent and len(accepted) >= len(values)
    # Pin level: every drive held longer than a PWM period is one of the host's values. In
    # between, up to a period after the firmware's register writes (2 us), the pins may show
    # the old duty in the new direction: OCR1A is double-buffered, the new duty starts at the
    # next BOTTOM while DIR changes at once.
    held = [(o, n) for o, n in trace.durations(since=start, until=clean) if o.drive != 0.0]
    unsent = [(o, n) for o, n in held if not matches_sent(o.drive, host.sent)]
    assert all(n <= PWM_COUNTS + 32 for o, n in unsent), (unsent, sorted(host.sent))
    # Both receivers counted the damage (a hit delimiter merges two frames into one bad one, a
    # byte turned into 0x00 splits one into two).
    rx_hit = sum(1 for f in trace.rx if f.corrupted and start <= f.cycle <= clean)
    tx_hit = sum(1 for f in trace.tx if f.corrupted and start <= f.cycle <= clean)
    firmware_bad = counters.rx_crc_errors + counters.rx_malformed + counters.rx_oversized
    assert rx_hit / 2 <= firmware_bad <= 2 * rx_hit + 2
    assert counters.rx_drops >= firmware_bad / 2
    assert tx_hit / 2 <= stats.decoder.bad_frames <= 2 * tx_hit + 2
    assert stats.link_losses == 0


def test_stall_turns_the_motor_off_until_the_link_returns(firmware_dir):
    em = EmulatorConfig()
    with FirmwareSim(emulator=em) as sim, Host(host_config(em, sim.device_path)) as host:
        host.set(0.3, True)
        wait(sim, pins_drive(0.3), "driving")
        stall_at = sim.stall(0.3)["cycle"]
        wait(sim, lambda s: s["pins"]["enable"] == 0, "ENABLE low during the stall")
        end = stall_at + sim.cycles(0.3)
        wait(sim, lambda s: s["cycle"] > end and s["pins"]["enable"] == 1, "driving again")
        assert host.driver.stats().timeouts >= 1
        trace = sim.trace()
    last = max(c for c, _ in trace.commands() if c <= stall_at)
    off = trace.enable_fell(last)
    assert 100 < ms(sim, off.cycle - last) <= 100 + TICK_MS + LOOP_MS
    assert all(not o.enable for o in trace.outputs if off.cycle <= o.cycle <= end)


def test_disconnect_and_reconnect(firmware_dir, tmp_path):
    em = EmulatorConfig()
    link = tmp_path / "ttyFW"
    with FirmwareSim(emulator=em, link=link) as sim:
        cfg = host_config(em, link, reconnect_backoff_max=0.1)
        with Host(cfg, link_disables=True) as host:
            host.set(0.3, True)
            wait(sim, pins_drive(0.3), "driving")
            cut_at = sim.disconnect(0.3)["cycle"]
            assert host.driver.wait_stats(lambda s: s.link_losses >= 1, WAIT)
            assert host.driver.wait_stats(lambda s: s.reconnects >= 1 and s.connected, WAIT)
            reconnected = sim.status()["cycle"]
            assert ms(sim, reconnected - cut_at) >= 300
            run_for(sim, 0.02)
            assert sim.status()["pins"]["enable"] == 0          # a new session starts disabled
            host.set(0.3, True)
            wait(sim, pins_drive(0.3), "driving after the reconnection")
            trace = sim.trace()
    last = max(c for c, _ in trace.commands() if c <= cut_at)
    off = trace.enable_fell(last)
    assert ms(sim, off.cycle - last) <= 100 + TICK_MS + LOOP_MS
    enabled_again = trace.enable_rose(off.cycle)
    assert enabled_again.cycle > reconnected
