"""Serial driver and rig safety layer against the firmware emulator, through a real pty."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from ebmcpilco_ros.hardware import conversion as cv
from ebmcpilco_ros.hardware.driver import DriverError, SerialDriver, StateSample
from ebmcpilco_ros.hardware.emulator import (EmulatorConfig, FirmwareEmulator,
                                             matching_hardware_config)
from ebmcpilco_ros.hardware.protocol import Status
from ebmcpilco_ros.hardware.rig import Rig

pytestmark = pytest.mark.timeout(30)

EMULATOR = EmulatorConfig()
PERIOD = EMULATOR.period
WAIT = 5.0          # generous bound for anything that should take milliseconds
EXIT_WAIT = 30.0  # a whole interpreter shutting down on a loaded 2-core machine
SCHEDULING = 0.03   # slack for thread wake-ups on a loaded 2-core machine [s]


@pytest.fixture
def emulator(tmp_path):
    emu = FirmwareEmulator(EMULATOR, link=tmp_path / "ttyRIG", seed=1)
    emu.start()
    yield emu
    emu.stop()


def hardware(emu: FirmwareEmulator, **overrides):
    return matching_hardware_config(emu.config, emu.device_path, **overrides)


@pytest.fixture
def driver(emulator):
    drv = SerialDriver(hardware(emulator))
    drv.open()
    yield drv
    drv.close()


def drive(driver: SerialDriver, emulator: FirmwareEmulator, duty: float,
          until, timeout: float = WAIT) -> bool:
    """Send `duty` once per emulator tick until until(snapshot) holds."""
    deadline_ticks = int(timeout / PERIOD)
    tick = emulator.snapshot().tick
    for _ in range(deadline_ticks):
        driver.send_command(duty, enable=True)
        if not emulator.wait_until(lambda s: s.tick > tick, WAIT):
            return False
        snap = emulator.snapshot()
        tick = snap.tick
        if until(snap):
            return True
    return False


def next_state(driver: SerialDriver) -> StateSample:
    """The next STATE to arrive after this call."""
    latest = driver.latest()
    sample = driver.wait_state(latest.index if latest else 0, WAIT)
    assert sample is not None
    return sample


def test_handshake_reports_the_firmware_and_sets_the_watchdog(emulator):
    cfg = hardware(emulator, command_watchdog_timeout=0.05)
    with SerialDriver(cfg) as drv:
        device = drv.device
        assert device.firmware == "1.0.0" and device.state_rate_hz == EMULATOR.state_rate_hz
        assert device.watchdog_ms == 50                   # the HELLO asked for it
        assert cv.calibration_mismatches(cfg, device) == []
        assert drv.stats().connected


def test_open_fails_in_bounded_time_without_a_device(tmp_path):
    cfg = matching_hardware_config(EMULATOR, str(tmp_path / "nothing"), handshake_timeout=0.2,
                                   reconnect_backoff_initial=0.01)
    drv = SerialDriver(cfg)
    with pytest.raises(DriverError):
        drv.open()
    assert drv.stats().open_failures >= 1 and not drv.connected


def test_state_stream_is_complete_and_on_the_mcu_clock(driver):
    first = driver.wait_state(0, WAIT)
    samples = [first]
    while len(samples) < 100:
        samples.append(driver.wait_state(samples[-1].index, WAIT))
    seqs = [s.seq for s in samples]
    assert all(b - a >= 1 for a, b in zip(seqs, seqs[1:]))
    stamps = [s.state.timestamp_us for s in samples]
    steps = [(b - a) * 1e-6 / (sb - sa) for a, b, sa, sb in
             zip(stamps, stamps[1:], seqs, seqs[1:])]
    assert steps == pytest.approx([PERIOD] * len(steps))  # one tick per frame, MCU time
    stats = driver.stats()
    assert stats.drops == 0 and stats.decoder.bad_frames == 0


def test_command_moves_the_cart_and_the_host_sees_it(driver, emulator):
    assert drive(driver, emulator, 0.2, lambda s: s.x[0] > 0.05)
    snap = emulator.snapshot()
    assert snap.status & Status.ENABLED and snap.command == round(0.2 * 32767)
    cfg = driver.config
    next_state(driver)
    sample = next_state(driver)   # a frame sent after the snapshot above
    assert cv.cart_position(sample.state.cart_counts, cfg) > 0.05
    assert cv.applied_force(sample.state, cfg) == pytest.approx(2.0, rel=1e-3)


def test_emulator_watchdog_zeroes_the_motor_when_commands_stop(driver, emulator):
    assert drive(driver, emulator, 0.1, lambda s: s.x[0] > 0.01)
    assert emulator.wait_until(lambda s: s.watchdog_trip_time is not None, WAIT)
    snap = emulator.snapshot()
    silence = snap.watchdog_trip_time - snap.last_command_time
    assert silence <= driver.device.watchdog_ms / 1000 + PERIOD + SCHEDULING
    assert snap.command == 0 and not snap.status & Status.ENABLED
    # ... and the host sees it in the stream.
    sample = next_state(driver)
    assert sample.state.has(Status.WATCHDOG) and sample.state.applied_command == 0
    assert not sample.state.has(Status.ENABLED)


@pytest.mark.timeout(40)
def test_corrupted_bytes_are_counted_and_never_applied(emulator):
    duties = (-0.05, 0.0, 0.05)
    raw = {round(d * 32767) for d in duties}
    counter = iter(range(10**9))

    def on_state(sample: StateSample) -> None:   # a command per state, like a control loop
        drv.send_command(duties[next(counter) % len(duties)], enable=True)

    drv = SerialDriver(hardware(emulator), on_state=on_state)
    drv.open()
    try:
        before, emu_before = drv.stats(), emulator.stats.frames_corrupted
        log_start = len(emulator.command_log)
        emulator.faults.corrupt_tx = emulator.faults.corrupt_rx = 0.01
        start = emulator.snapshot().tick
        seconds = 3.0
        assert emulator.wait_until(lambda s: s.tick >= start + seconds / PERIOD, seconds + WAIT)
        emulator.faults.corrupt_tx = emulator.faults.corrupt_rx = 0.0
        # Let clean frames follow the last corrupted one so every loss has been seen.
        assert drv.wait_state(next_state(drv).index + 20, WAIT) is not None
        after = drv.stats()
        corrupted = emulator.stats.frames_corrupted - emu_before
        drops = after.drops - before.drops
        bad = after.decoder.bad_frames - before.decoder.bad_frames
        print(f"\n{seconds:g} s at 1 % byte corruption: {corrupted} corrupted frames sent, "
              f"{bad} bad frames and {drops} sequence drops counted by the host, "
              f"{after.resyncs - before.resyncs} resyncs; MCU rejected "
              f"{emulator.stats.rx.bad_frames} host frames")
        assert corrupted > 10 and bad > 0 and after.resyncs > before.resyncs
        assert corrupted <= drops <= 2 * corrupted      # every corrupted frame shows up as lost
        assert emulator.stats.rx.bad_frames > 0           # host->MCU frames were hit too ...
        applied = {motor for _, motor, _ in list(emulator.command_log)[log_start:]}
        assert applied <= raw                             # ... and none became a command
        assert drv.connected and after.callback_errors == 0
    finally:
        drv.close()


def test_dropped_frames_are_counted_exactly(driver, emulator):
    next_state(driver)
    before, dropped = driver.stats().drops, emulator.stats.frames_dropped
    emulator.faults.drop = 0.1
    start = emulator.snapshot().tick
    assert emulator.wait_until(lambda s: s.tick >= start + 300, WAIT)
    emulator.faults.drop = 0.0
    assert driver.wait_state(next_state(driver).index + 5, WAIT) is not None
    lost = emulator.stats.frames_dropped - dropped
    assert lost > 0 and driver.stats().drops - before == lost
    assert driver.stats().decoder.bad_frames == 0


def test_limit_switch_and_amplifier_fault_block_the_motor(driver, emulator):
    emulator.set_state([0.43, 0.0, 0.0, 0.0])                # on the right switch
    assert drive(driver, emulator, 0.2, lambda s: s.status & Status.LIMIT_RIGHT)
    assert emulator.snapshot().command == 0                  # further right: refused
    assert drive(driver, emulator, -0.2, lambda s: s.command < 0)   # back left: allowed
    emulator.faults.amp_fault = True
    assert drive(driver, emulator, -0.2, lambda s: s.status & Status.AMP_FAULT)
    assert emulator.snapshot().command == 0
    sample = next_state(driver)
    assert sample.state.has(Status.AMP_FAULT) and sample.state.applied_command == 0


def test_heartbeat_round_trip_and_callback_errors_are_survived(emulator):
    calls = []

    def faulty(sample: StateSample) -> None:
        calls.append(sample.index)
        raise RuntimeError("a bug in the caller")

    with SerialDriver(hardware(emulator, heartbeat_period=0.05), on_state=faulty) as drv:
        assert drv.wait_stats(lambda s: s.heartbeat_rtt is not None and s.callback_errors > 10,
                              WAIT)
        assert drv.stats().heartbeat_rtt < 1.0 and drv.connected and len(calls) > 10


def test_close_sends_zero_and_disable(driver, emulator):
    assert drive(driver, emulator, 0.1, lambda s: s.command != 0)
    driver.close()
    assert emulator.wait_until(lambda s: not s.status & Status.ENABLED, WAIT)
    assert emulator.command_log[-1][1:] == (0, False)
    assert emulator.stats.watchdog_trips == 0             # it did not need the watchdog


def test_stall_counts_a_timeout_without_losing_the_link(driver, emulator):
    next_state(driver)
    emulator.stall(3 * driver.config.state_timeout)
    assert driver.wait_state(next_state(driver).index + 50, WAIT) is not None
    stats = driver.stats()
    assert stats.timeouts >= 1 and stats.link_losses == 0 and stats.reconnects == 0


def test_disconnect_zeroes_both_sides_and_reconnects(emulator):
    links: list[bool] = []
    changed = threading.Condition()

    def on_link(up: bool) -> None:
        with changed:
            links.append(up)
            changed.notify_all()

    drv = SerialDriver(hardware(emulator, reconnect_backoff_initial=0.02,
                                reconnect_backoff_max=0.2), on_link=on_link)
    drv.open()
    try:
        assert drive(drv, emulator, 0.1, lambda s: s.command != 0)
        session = next_state(drv).session
        assert emulator.disconnect(0.5)
        with changed:
            assert changed.wait_for(lambda: links[-1] is False, WAIT)
        assert not drv.send_command(0.1, enable=True)      # nothing goes out while down
        # The MCU side: the watchdog zeroes the motor within its timeout.
        assert emulator.wait_until(lambda s: s.watchdog_trip_time is not None, WAIT)
        snap = emulator.snapshot()
        assert snap.watchdog_trip_time - snap.last_command_time <= (
            drv.device.watchdog_ms / 1000 + PERIOD + SCHEDULING)
        # The port comes back (a new pty behind the same link): the driver reconnects.
        assert drv.wait_connected(WAIT)
        sample = next_state(drv)
        while sample.session == session:            # frames from before the cut, if any
            sample = next_state(drv)
        assert sample.session == session + 1
        stats = drv.stats()
        assert stats.link_losses == 1 and stats.reconnects == 1 and links == [True, False, True]
        assert not sample.state.has(Status.ENABLED)        # HELLO left the motor disabled
    finally:
        drv.close()


def test_driver_started_before_the_device_appears(tmp_path):
    link = tmp_path / "late"
    emu = FirmwareEmulator(EMULATOR, link=link)
    drv = SerialDriver(matching_hardware_config(EMULATOR, str(link),
                                                reconnect_backoff_initial=0.01,
                                                reconnect_backoff_max=0.05))
    drv.start()
    try:
        assert drv.wait_stats(lambda s: s.open_failures >= 2, WAIT)   # retrying with backoff
        emu.start()
        assert drv.wait_connected(WAIT)
    finally:
        drv.close()
        emu.stop()


# -- the rig safety layer ---------------------------------------------------------------------


def test_soft_limits_hold_against_a_policy_pushing_into_the_end_stop(emulator):
    cfg = hardware(emulator)
    with Rig(cfg) as rig:
        assert rig.enable()
        seen = 0
        max_p = 0.0
        count = 0
        limits = set()
        while count < 1.5 / PERIOD:                         # 1.5 s of full push
            rig.set_force(cv.max_force(cfg))                 # the policy insists
            got = rig.wait_measurement(count, WAIT)
            assert got is not None
            count, measurement = got
            max_p = max(max_p, measurement.x[0])
            seen |= emulator.snapshot().status
            limits.add(rig.status().limit)
        assert "position" in limits and rig.status().enabled
    assert max_p > cfg.cart_position_limit - cfg.soft_limit_margin      # it did push
    assert max_p < cfg.cart_position_limit + 0.05                       # and was held
    assert not seen & (Status.LIMIT_LEFT | Status.LIMIT_RIGHT)        # switches never hit


def test_rig_watchdog_zeroes_a_stale_force_and_estop_latches(emulator):
    cfg = hardware(emulator, command_watchdog_timeout=0.05)
    with Rig(cfg) as rig:
        assert rig.enable()
        rig.set_force(2.0)
        assert emulator.wait_until(lambda s: s.command > 0, WAIT)
        # The controller goes quiet: the host watchdog zeroes the force, the link stays up.
        assert emulator.wait_until(lambda s: s.command == 0, WAIT)
        assert rig.status().watchdog_expired and emulator.stats.watchdog_trips == 0
        rig.estop()
        assert emulator.wait_until(lambda s: not s.status & Status.ENABLED, WAIT)
        assert not rig.enable()                              # latched
        rig.set_force(2.0)
        assert emulator.snapshot().command == 0
        rig.reset_estop()
        assert not rig.status().enabled                      # reset does not re-enable
        assert rig.enable()
        rig.set_force(2.0)
        assert emulator.wait_until(lambda s: s.command > 0, WAIT)


def test_homing_centres_the_cart_and_an_estop_interrupts_it(emulator):
    cfg = hardware(emulator)
    emulator.set_state([0.2, 0.0, 0.0, 0.0])
    with Rig(cfg) as rig:
        refused = rig.home()
        assert not refused.homed and "disabled" in refused.reason
        assert rig.enable()
        outcome = rig.home()
        assert outcome.homed, outcome.reason
        assert abs(emulator.snapshot().x[0]) <= cfg.home_tolerance + 0.005
        assert rig.status().requested_force == 0.0 and not rig.status().homing
        # An e-stop mid-homing ends it at once, not homed, with the motor at zero.
        emulator.set_state([-0.2, 0.0, 0.0, 0.0])
        count, _m = rig.wait_measurement(0, WAIT)
        while _m.x[0] > -0.1:
            count, _m = rig.wait_measurement(count, WAIT)
        outcomes = []
        homing = threading.Thread(target=lambda: outcomes.append(rig.home()))
        homing.start()
        assert emulator.wait_until(lambda s: s.command > 0, WAIT)   # pushing back to the centre
        rig.estop()
        homing.join(WAIT)
        assert outcomes and not outcomes[0].homed and "e-stop" in outcomes[0].reason
        assert emulator.wait_until(lambda s: s.command == 0, WAIT)


def test_cli_prints_the_device_and_stops_on_ctrl_c():
    proc = subprocess.Popen([sys.executable, "-m", "ebmcpilco_ros.hardware.emulator",
                             "--rate", "200", "--corrupt", "0.001"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        path = proc.stdout.readline().strip()
        assert os.path.exists(path)
        cfg = matching_hardware_config(EmulatorConfig(state_rate_hz=200), path)
        with SerialDriver(cfg) as drv:
            assert drv.device.state_rate_hz == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(EXIT_WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
