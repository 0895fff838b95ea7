"""Serial driver and rig safety layer against the firmware emulator, through a real pty."""
from __future__ import annotations

import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import tty

import numpy as np
import pytest
import serial

from ebmcpilco_ros.hardware import conversion as cv
from ebmcpilco_ros.hardware import protocol as proto
from ebmcpilco_ros.hardware.driver import DriverError, SerialDriver, StateSample
from ebmcpilco_ros.hardware.emulator import (EmulatorConfig, FirmwareEmulator,
                                             matching_hardware_config)
from ebmcpilco_ros.hardware.protocol import (Command, Counters, DeviceConfig, Heartbeat, Hello,
                                             State, Status)
from ebmcpilco_ros.hardware.rig import Rig

pytestmark = pytest.mark.timeout(30)

EMULATOR = EmulatorConfig()
PERIOD = EMULATOR.period
WAIT = 5.0          # generous bound for anything that should take milliseconds
EXIT_WAIT = 30.0  # a whole interpreter shutting down on a loaded 2-core machine
SCHEDULING = 0.03   # slack for thread wake-ups on a loaded 2-core machine [s]
LOADED_WATCHDOG = 0.5   # [s] the MCU watchdog the `driver` fixture asks for


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
    # A watchdog that a test thread descheduled for a while on a loaded machine does not trip
    # (the tests about the watchdog measure against the value in effect).
    drv = SerialDriver(hardware(emulator, command_watchdog_timeout=LOADED_WATCHDOG))
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
    assert sample.state.has(Status.FAULT_LATCHED) and not sample.state.has(Status.ENABLED)


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


# -- the contract's details, byte by byte -----------------------------------------------------


class RawHost:
    """A bare host on the emulator's pty: writes exactly the bytes it is given, keeps every byte
    and frame that comes back."""

    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, timeout=0.01)
        self.decoder = proto.FrameDecoder()
        self.raw = bytearray()
        self.frames: list[proto.Frame] = []

    def write(self, data: bytes) -> None:
        assert self.port.write(data) == len(data)

    def send(self, message, seq: int) -> None:
        self.write(b"\x00" + proto.encode_frame(message, seq))

    def wait_for(self, predicate, timeout: float = WAIT, start: int | None = None):
        """The first frame received from now on (or from frames[start]) that satisfies
        predicate(frame); None on timeout."""
        start = len(self.frames) if start is None else start
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.port.read(max(1, self.port.in_waiting))
            self.raw += data
            self.frames += self.decoder.feed(data)
            found = next((f for f in self.frames[start:] if predicate(f)), None)
            if found is not None:
                return found
        return None

    def hello(self, watchdog_ms: int, seq: int = 0) -> DeviceConfig:
        self.send(Hello(watchdog_ms), seq)
        frame = self.wait_for(lambda f: isinstance(f.message, DeviceConfig))
        assert frame is not None
        return frame.message

    def counters(self, token: int, seq: int) -> Counters:
        """HEARTBEAT out; the echo, then COUNTERS as the very next frame."""
        self.send(Heartbeat(token), seq)
        echo = self.wait_for(lambda f: f.message == Heartbeat(token))
        assert echo is not None
        following = self.wait_for(lambda f: f.seq == (echo.seq + 1) % proto.SEQ_MODULUS,
                                  start=self.frames.index(echo))
        assert following is not None and isinstance(following.message, Counters), following
        assert self.frames.index(following) == self.frames.index(echo) + 1
        return following.message

    def close(self) -> None:
        self.port.close()


def raw_frame(kind: int, seq: int, payload: bytes) -> bytes:
    body = proto.HEADER.pack(proto.PROTOCOL_VERSION, kind, seq) + payload
    return proto.cobs_encode(body + proto.CRC.pack(proto.crc16(body))) + b"\x00"


@pytest.fixture
def raw_host(emulator):
    host = RawHost(emulator.device_path)
    yield host
    host.close()


def test_mcu_config_reset_cause_and_counters_after_each_heartbeat_echo(emulator, raw_host):
    host = raw_host
    config = host.hello(50)
    assert config.reset_cause == proto.ResetCause.POWER_ON and config.watchdog_ms == 50
    seq = next(f.seq for f in host.frames if f.message == config)
    at = host.raw.find(proto.encode_frame(config, seq))
    # An extra 0x00 before CONFIG: an empty piece, not just the previous frame's delimiter.
    assert at >= 1 and host.raw[at - 1] == 0 and (at == 1 or host.raw[at - 2] == 0)
    assert host.counters(0xABCD, 1) == Counters()                      # a clean link
    # Saturating, never wrapping.
    emulator.stats.watchdog_trips = 70000
    assert host.counters(7, 2).watchdog_trips == 65535


def test_mcu_receiver_counts_like_the_python_receiver(emulator, raw_host):
    host = raw_host
    host.hello(0)
    assert host.counters(1, 1) == Counters()
    # Host-bound types are valid frames with no effect; an unknown type and a body under 6 bytes
    # are malformed; a bad CRC and a run over MAX_ENCODED bytes have their own counters.
    host.write(raw_frame(proto.MsgType.STATE, 2, proto.pack_message(State(1, 2, 3, 0x10, 500))))
    host.write(raw_frame(proto.MsgType.CONFIG, 3,
                         proto.pack_message(DeviceConfig(1, 0, 0, 1, 1, 1, 1))))
    host.write(raw_frame(proto.MsgType.COUNTERS, 4, proto.pack_message(Counters())))
    host.write(raw_frame(0x07, 5, bytes(4)))
    host.write(proto.cobs_encode(bytes([1, 2, 6, 0, 0])) + b"\x00")
    bad_crc = bytearray(proto.encode_frame(Command(1000, True), 6))
    bad_crc[-2] ^= 0x01
    host.write(bytes(bad_crc))
    host.write(bytes(range(1, 31)) + b"\x00")
    counters = host.counters(2, 7)
    # The last valid frame before seq 7 was seq 4: 5 and 6 are counted as lost.
    assert counters == Counters(rx_crc_errors=1, rx_malformed=2, rx_oversized=1, rx_drops=2)
    assert emulator.stats.rx.frames == 2 + 3 + 1
    assert emulator.stats.commands_applied == 0 and not emulator.snapshot().status & (
        Status.ENABLED)
    # A reopened host starts again at 0: HELLO makes the MCU forget the old sequence number.
    host.hello(0, seq=0)
    assert host.counters(3, 1).rx_drops == 2 and emulator.stats.rx.sequence_resets == 0


def test_enable_acts_only_after_a_hello_since_the_mcu_started(emulator, raw_host):
    """Commands already on the wire when the MCU restarts never re-enable it: ENABLE = 1 counts
    as 0 until the host's HELLO has opened a session."""
    host = raw_host

    def enabled_after(seq: int) -> bool:
        """COMMAND +50 % enabled; whether the next tick drives the motor with it."""
        applied = emulator.stats.commands_applied
        host.send(Command(16384, True), seq)
        assert emulator.wait_until(lambda _s: emulator.stats.commands_applied > applied, WAIT)
        tick = emulator.snapshot().tick
        assert emulator.wait_until(lambda s: s.tick > tick, WAIT)
        snapshot = emulator.snapshot()
        return bool(snapshot.status & Status.ENABLED) and snapshot.command != 0

    assert not enabled_after(0)                          # power-up: no session yet
    host.hello(0, seq=1)
    assert enabled_after(2)
    emulator.reset()                                     # e.g. its hardware watchdog
    assert not enabled_after(3)
    assert not emulator.snapshot().status & Status.ENABLED
    host.hello(0, seq=4)
    assert enabled_after(5)


def test_mcu_clamps_the_watchdog_request_to_5_5000_ms(raw_host):
    assert raw_host.hello(1).watchdog_ms == 5
    assert raw_host.hello(60000).watchdog_ms == 5000
    assert raw_host.hello(0).watchdog_ms == 5000          # 0 keeps the value in effect
    assert raw_host.hello(250).watchdog_ms == 250


def test_every_hello_is_led_by_a_delimiter_and_seq_restarts_at_each_open(tmp_path):
    # A pty nobody answers: the driver retries HELLO, gives up, reopens and starts again.
    master, slave = os.openpty()
    tty.setraw(slave)
    link = tmp_path / "silent"
    link.symlink_to(os.ttyname(slave))
    cfg = matching_hardware_config(EMULATOR, str(link), handshake_timeout=0.25,
                                   handshake_retry=0.05, reconnect_backoff_initial=0.01,
                                   command_watchdog_timeout=0.1)
    drv = SerialDriver(cfg)
    data = bytearray()
    try:
        drv.start()
        deadline = time.monotonic() + WAIT
        pieces: list[bytes] = []
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                data += os.read(master, 4096)
            pieces = bytes(data).split(b"\x00")[:-1]
            frames = [proto.decode_frame(p) for p in pieces if p]
            seqs = [f.seq for f in frames]
            if seqs.count(0) >= 2 and drv.stats().handshake_failures >= 1:
                break
        assert seqs.count(0) >= 2, seqs
    finally:
        drv.close()
        os.close(master)
        os.close(slave)
    assert all(f.message == Hello(100) for f in frames)
    restart = seqs.index(0, 1)
    assert restart >= 3 and seqs[:restart] == list(range(restart))   # retries: 0, 1, 2, ...
    assert seqs[restart:] == list(range(len(seqs) - restart))        # a new open: 0 again
    # On the bytes: every HELLO, first and retries, is 0x00 + frame.
    expected = b"".join(b"\x00" + proto.encode_frame(f.message, f.seq) for f in frames)
    assert bytes(data[:len(expected)]) == expected


def test_driver_keeps_the_reset_cause_and_the_latest_mcu_counters(emulator):
    with SerialDriver(hardware(emulator, heartbeat_period=0.02)) as drv:
        assert drv.device.reset_cause == proto.ResetCause.POWER_ON
        assert drv.wait_stats(lambda s: s.mcu_counters is not None, WAIT)
        assert drv.mcu_counters == Counters()
        emulator.faults.corrupt_rx = 0.05
        assert drv.wait_stats(lambda s: s.mcu_counters.rx_crc_errors > 0, WAIT)
        emulator.faults.corrupt_rx = 0.0
        # Once the line is clean the host's copy catches up with the MCU's figures exactly.
        assert drv.wait_stats(lambda s: s.mcu_counters == emulator.counters(), WAIT)
        assert drv.stats().mcu_counters.rx_drops > 0


def test_sessions_one_after_another_are_not_losses_for_the_mcu(emulator):
    for _ in range(2):
        with SerialDriver(hardware(emulator)) as drv:
            for _ in range(50):
                assert drv.send_command(0.0, enable=False)
    assert emulator.stats.rx.drops == 0 and emulator.stats.rx.sequence_resets == 0
    assert emulator.stats.rx.bad_frames == 0


def test_command_with_enable_0_feeds_the_watchdog_and_applies_nothing(driver, emulator):
    assert drive(driver, emulator, 0.1, lambda s: s.command != 0)
    assert emulator.wait_until(lambda s: s.status & Status.WATCHDOG, WAIT)   # commands stopped
    trips, applied = emulator.stats.watchdog_trips, emulator.stats.commands_applied
    assert driver.send_command(0.5, enable=False)
    # A valid COMMAND: applied (WATCHDOG cleared: it fed the watchdog), its motor value ignored.
    assert emulator.wait_until(lambda s: not s.status & Status.WATCHDOG, WAIT)
    assert emulator.stats.commands_applied == applied + 1
    assert emulator.command_log[-1][1:] == (round(0.5 * 32767), False)
    for _ in range(20):
        tick = emulator.snapshot().tick
        assert driver.send_command(0.5, enable=False)
        assert emulator.wait_until(lambda s, t=tick: s.tick > t, WAIT)
        snap = emulator.snapshot()
        assert snap.command == 0 and not snap.status & (Status.ENABLED | Status.WATCHDOG)
    assert emulator.stats.watchdog_trips == trips
    sample = next_state(driver)
    assert sample.state.applied_command == 0
    assert not sample.state.status & (Status.ENABLED | Status.WATCHDOG)


def test_amplifier_fault_latches_until_the_host_acknowledges(driver, emulator):
    assert drive(driver, emulator, 0.1, lambda s: s.command != 0)
    emulator.faults.amp_fault = True
    assert drive(driver, emulator, 0.1, lambda s: s.status & Status.FAULT_LATCHED)
    snap = emulator.snapshot()
    assert snap.status & Status.AMP_FAULT and not snap.status & Status.ENABLED
    assert snap.command == 0
    # The fault input clears; ENABLE = 1 commands do not re-enable a latched amplifier ...
    emulator.faults.amp_fault = False
    assert drive(driver, emulator, 0.1, lambda s: not s.status & Status.AMP_FAULT)
    for _ in range(20):
        assert not drive(driver, emulator, 0.1, lambda s: s.command != 0
                         or not s.status & Status.FAULT_LATCHED, timeout=PERIOD)
    # ... an ENABLE = 0 COMMAND acknowledges the latch, then ENABLE = 1 enables as usual.
    assert driver.send_command(0.0, enable=False)
    assert emulator.wait_until(lambda s: not s.status & Status.FAULT_LATCHED, WAIT)
    assert drive(driver, emulator, 0.1, lambda s: s.command != 0 and s.status & Status.ENABLED)
    sample = next_state(driver)
    assert not sample.state.status & (Status.AMP_FAULT | Status.FAULT_LATCHED)


def test_an_acknowledgement_while_the_fault_input_is_active_does_not_clear(driver, emulator):
    emulator.faults.amp_fault = True
    assert emulator.wait_until(lambda s: s.status & Status.FAULT_LATCHED, WAIT)
    for _ in range(5):
        driver.send_command(0.0, enable=False)
        tick = emulator.snapshot().tick
        assert emulator.wait_until(lambda s: s.tick > tick, WAIT)
        assert emulator.snapshot().status & Status.FAULT_LATCHED
    driver.close()                         # its last COMMAND (ENABLE = 0) comes too early
    sent = driver.stats().commands_sent     # the emulator has read all of them before going on
    assert emulator.wait_until(lambda s: emulator.stats.commands_applied == sent, WAIT)
    assert emulator.snapshot().status & Status.FAULT_LATCHED
    # With the input inactive the latch holds until acknowledged: here by a HELLO.
    emulator.faults.amp_fault = False
    tick = emulator.snapshot().tick
    assert emulator.wait_until(lambda s: s.tick > tick + 10, WAIT)
    assert emulator.snapshot().status & Status.FAULT_LATCHED
    host = RawHost(emulator.device_path)
    try:
        host.hello(0)
        assert emulator.wait_until(lambda s: not s.status & Status.FAULT_LATCHED, WAIT)
    finally:
        host.close()


@pytest.mark.parametrize("motor_sign", [1, -1])
def test_limit_switches_are_named_by_the_motor_direction(tmp_path, motor_sign):
    config = EmulatorConfig(motor_sign=motor_sign)
    with FirmwareEmulator(config, link=tmp_path / "tty", seed=1) as emu:
        cfg = matching_hardware_config(config, emu.device_path)
        with SerialDriver(cfg) as drv:
            emu.set_state([0.43, 0.0, 0.0, 0.0])          # the switch at +p is closed
            # LEFT is the end a negative command drives towards: +p when motor_sign is -1.
            closed = Status.LIMIT_RIGHT if motor_sign > 0 else Status.LIMIT_LEFT
            towards = 0.2 * motor_sign                        # raw command driving to +p
            assert drive(drv, emu, towards, lambda s: s.status & closed)
            snap = emu.snapshot()
            assert snap.status & (Status.LIMIT_LEFT | Status.LIMIT_RIGHT) == closed
            assert snap.command == 0                          # further into it: refused
            assert drive(drv, emu, -towards, lambda s: s.command != 0)   # away: allowed
            assert emu.snapshot().command == round(-towards * 32767)


def test_both_switches_closed_allow_no_drive(driver, emulator):
    emulator.faults.switches = Status.LIMIT_LEFT | Status.LIMIT_RIGHT
    for duty in (0.2, -0.2):
        assert not drive(driver, emulator, duty, lambda s: s.command != 0, timeout=0.1)
    assert emulator.snapshot().status & Status.ENABLED
    emulator.faults.switches = 0
    assert drive(driver, emulator, 0.2, lambda s: s.command != 0)


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


def test_rig_amplifier_fault_disables_like_a_lost_session(emulator):
    cfg = hardware(emulator)
    with Rig(cfg) as rig:
        assert rig.enable()
        rig.set_force(2.0)
        assert emulator.wait_until(lambda s: s.command > 0, WAIT)
        emulator.faults.amp_fault = True
        count, _m = rig.wait_measurement(0, WAIT)
        while rig.status().enabled:
            rig.set_force(2.0)
            count, _m = rig.wait_measurement(count, WAIT)
        assert rig.status().fault_disables == 1
        assert not rig.enable() and "fault" in rig.refusal()
        # The fault clears: the host's ENABLE = 0 commands acknowledge the latch by themselves,
        # and however long the controller keeps asking, motion does not resume.
        emulator.faults.amp_fault = False
        assert emulator.wait_until(lambda s: not s.status & (Status.AMP_FAULT
                                                             | Status.FAULT_LATCHED), WAIT)
        driven = []
        start = emulator.snapshot().tick
        while emulator.snapshot().tick < start + 100:
            rig.set_force(2.0)
            count, _m = rig.wait_measurement(count, WAIT)
            snap = emulator.snapshot()
            driven.append(snap.command != 0 or bool(snap.status & Status.ENABLED))
        assert not any(driven) and not rig.status().enabled
        assert emulator.command_log[-1][2] is False
        # The next enable (a reset) is what brings it back.
        rig.wait_measurement(rig.wait_measurement(count, WAIT)[0], WAIT)
        assert rig.refusal() is None and rig.enable()
        rig.set_force(2.0)
        assert emulator.wait_until(lambda s: s.command > 0, WAIT)
        assert rig.status().fault_disables == 1


def test_an_mcu_reset_under_the_open_port_starts_a_new_disabled_session(emulator):
    cfg = hardware(emulator)
    with Rig(cfg) as rig:
        assert rig.enable()
        rig.set_force(2.0)
        assert emulator.wait_until(lambda s: s.command > 0, WAIT)
        count = rig.wait_measurement(rig.wait_measurement(0, WAIT)[0], WAIT)[0]
        session = rig.status().session
        emulator.reset()                                   # its hardware watchdog fired
        deadline = time.monotonic() + WAIT
        while rig.status().session == session and time.monotonic() < deadline:
            got = rig.wait_measurement(count, WAIT)
            count = got[0] if got is not None else count
        status, stats = rig.status(), rig.driver.stats()
        assert status.session == session + 1 and not status.enabled
        assert stats.mcu_restarts == 1 and stats.link_losses == 0 and stats.reconnects == 0
        assert rig.driver.device.reset_cause == proto.ResetCause.WATCHDOG   # a new CONFIG
        # However long the controller keeps asking, the restarted MCU stays disabled ...
        start = emulator.snapshot().tick
        while emulator.snapshot().tick < start + 100:
            rig.set_force(2.0)
            count = rig.wait_measurement(count, WAIT)[0]
            snap = emulator.snapshot()
            assert snap.command == 0 and not snap.status & Status.ENABLED
        # ... until the next enable.
        assert rig.enable()
        rig.set_force(2.0)
        assert emulator.wait_until(lambda s: s.command > 0, WAIT)
        assert rig.driver.stats().mcu_restarts == 1


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


POLE_RATE_RESOLUTION = 0.07   # [rad/s] how far the rig's pole-rate estimate may sit from the
#   true rate: a 2 pi / 4096 count per 2 ms tick is 0.77 rad/s, the 10 ms filter spreads each
#   count into a decaying step of 0.13 rad/s, so the estimate ripples about +-0.064 around it


def wrapped(theta: float) -> float:
    return math.remainder(theta, 2 * math.pi)


class TrueStates:
    """An on_measurement callback that keeps, per measured state, the emulator's true state when
    the host measured it and how many ticks after the STATE was sampled that was."""

    def __init__(self, emulator: FirmwareEmulator) -> None:
        self.emulator = emulator
        self.seen: list[tuple[np.ndarray, int, np.ndarray]] = []
        self.cond = threading.Condition()

    def __call__(self, measurement, sample: StateSample) -> None:
        snap = self.emulator.snapshot()
        tick = round(sample.state.timestamp_us * EMULATOR.state_rate_hz / 1e6)
        with self.cond:
            self.seen.append((measurement.x.copy(), snap.tick - tick, snap.x))
            self.cond.notify_all()

    def at(self, measured: np.ndarray | None) -> tuple[int, np.ndarray] | None:
        """(lag in ticks, true state) for the first measured state equal to `measured`; waits
        for it (the rig wakes its waiters before it runs this callback for the same state)."""
        def found() -> tuple[int, np.ndarray] | None:
            return next(((lag, x) for x_measured, lag, x in self.seen
                         if measured is not None and np.array_equal(x_measured, measured)), None)
        with self.cond:
            self.cond.wait_for(lambda: found() is not None, WAIT)
            return found()


def test_homing_brings_a_swinging_pole_to_rest_hanging_and_the_cart_to_the_centre(emulator):
    cfg = hardware(emulator)
    assert cfg.home_pole_damping > 0
    emulator.set_state([-0.15, 0.0, 0.25, 1.0])           # off centre, the pole swinging
    true_states = TrueStates(emulator)
    with Rig(cfg, on_measurement=true_states) as rig:
        assert rig.enable()
        outcome = rig.home()
        assert outcome.homed, outcome.reason
        truth = true_states.at(outcome.x)                  # the state judged homed
        assert truth is not None
        lag, x = truth
        drift = lag * PERIOD                               # [s] sampled -> looked at
        assert abs(x[0]) <= cfg.home_tolerance + 0.001 + drift * cfg.home_speed_tolerance
        assert abs(x[1]) <= cfg.home_speed_tolerance + 0.01 + drift * cfg.home_force_limit
        assert abs(wrapped(x[2])) <= (cfg.home_pole_tolerance + cfg.radians_per_pole_count
                                      + drift * (cfg.home_pole_speed_tolerance
                                                 + POLE_RATE_RESOLUTION))
        assert abs(x[3]) <= cfg.home_pole_speed_tolerance + POLE_RATE_RESOLUTION + drift * 10.0
        assert rig.status().requested_force == 0.0 and not rig.status().homing


def test_homing_without_pole_damping_fails_on_a_swinging_pole_and_names_it(emulator):
    # The emulated pole has no friction: left to itself (the cart law alone couples into it a
    # little) it is still swinging when the homing gives up, and the reason says so.
    cfg = hardware(emulator, home_pole_damping=0.0, home_timeout=1.0)
    emulator.set_state([0.0, 0.0, 0.25, 0.0])
    with Rig(cfg) as rig:
        assert rig.enable()
        start = time.monotonic()
        outcome = rig.home()
        elapsed = time.monotonic() - start
        x = emulator.snapshot().x
    assert not outcome.homed
    assert cfg.home_timeout <= elapsed + SCHEDULING and elapsed <= cfg.home_timeout + 1.0
    assert "not homed within 1 s" in outcome.reason and "the pole" in outcome.reason
    assert "home_pole_tolerance" in outcome.reason or "home_pole_speed_tolerance" in outcome.reason
    # The pole really swings: its amplitude sqrt(theta^2 + (thetadot / omega)^2), omega at most
    # 6.9 rad/s here, is well above what homed would allow.
    assert math.hypot(wrapped(x[2]), x[3] / 6.9) > 3 * cfg.home_pole_tolerance


def test_a_timeout_names_the_cart_when_it_did_not_settle(emulator):
    cfg = hardware(emulator, home_timeout=0.05)
    emulator.set_state([0.2, 0.0, 0.0, 0.0])
    with Rig(cfg) as rig:
        assert rig.enable()
        outcome = rig.home()
    # (the cart's first push may set the pole swinging too: then both are named)
    assert not outcome.homed and re.search(r"the cart (and the pole )?did not settle",
                                           outcome.reason), outcome.reason
    reached = re.search(r"cart: \|p\| = ([0-9.]+) m > hardware.home_tolerance = 0.01 m",
                        outcome.reason)
    assert reached and float(reached.group(1)) > 0.1, outcome.reason


@pytest.mark.parametrize("turns", [1, -1])
def test_a_pole_hanging_a_whole_turn_away_counts_as_hanging(emulator, turns):
    cfg = hardware(emulator)
    emulator.set_state([0.05, 0.0, turns * 2 * math.pi, 0.0])
    true_states = TrueStates(emulator)
    with Rig(cfg, on_measurement=true_states) as rig:
        assert rig.enable()
        outcome = rig.home()
        assert outcome.homed, outcome.reason
        truth = true_states.at(outcome.x)
        assert abs(outcome.x[2] - turns * 2 * math.pi) <= cfg.home_pole_tolerance
        assert truth is not None and abs(truth[1][2] - turns * 2 * math.pi) < 0.05   # not swung


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
