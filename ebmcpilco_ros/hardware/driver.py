"""Serial driver for the rig's MCU: one I/O thread owns reading, the handshake and reconnection.

The I/O thread opens the port, handshakes (HELLO -> CONFIG), then decodes the STATE stream into a
latest-value slot and an optional callback. Commands are written from the caller's thread under a
lock, so a command never waits for the reader. Every blocking call is bounded by a timeout from
HardwareConfig; a lost port (unplugged, EIO, silence longer than link_timeout) is closed and
reopened with exponential backoff. An MCU that restarts under an open port (its hardware watchdog,
a brown-out) shows up as a STATE timestamp that does not advance or jumps further than
link_timeout: the session ends and a new handshake on the same port starts the next one,
disabled. Bad input only moves counters: nothing from a frame that failed its CRC reaches the
caller, and the driver sends only what the caller asks.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import serial

from ..scheduling import set_thread_priority
from .config import HardwareConfig
from .protocol import (DELIMITER, Command, Counters, DecoderStats, DeviceConfig, FrameDecoder,
                       Heartbeat, Hello, Message, SequenceCounter, State, TIMESTAMP_MODULUS,
                       TOKEN_MODULUS, encode_frame)

log = logging.getLogger(__name__)

SERIAL_ERRORS = (serial.SerialException, OSError, ValueError, TypeError)
US_PER_S = 1_000_000
JOIN_MARGIN = 1.0   # close() waits this long beyond the longest blocking call for the thread


class DriverError(RuntimeError):
    """The driver could not reach the MCU within the allowed time."""


@dataclass(frozen=True)
class StateSample:
    """A STATE as received: the message, when it arrived (host monotonic) and its ordinal."""

    state: State
    seq: int
    received: float
    index: int      # 1, 2, ... over the driver's life (wait_state waits on it)
    session: int    # increments at every successful handshake: a reconnection shows up here


@dataclass(frozen=True)
class DriverStats:
    """Counters since the driver was created (decoder counters summed over connections)."""

    decoder: DecoderStats
    bytes_tx: int
    commands_sent: int
    commands_refused: int       # send_command while not connected
    write_errors: int           # write failed or timed out (the frame was not sent whole)
    timeouts: int               # STATE gaps longer than state_timeout
    link_losses: int            # connections lost (port error or link_timeout)
    mcu_restarts: int           # sessions ended because the MCU's clock restarted (MCU reset)
    reconnects: int             # successful handshakes after a loss
    open_failures: int
    handshake_failures: int
    callback_errors: int
    heartbeat_rtt: float | None  # last HEARTBEAT round trip [s]
    connected: bool
    mcu_counters: Counters | None = None   # the MCU's own counters, latest COUNTERS received

    # The most asked-for decoder counters, flat.
    @property
    def frames(self) -> int:
        return self.decoder.frames

    @property
    def crc_errors(self) -> int:
        return self.decoder.crc_errors

    @property
    def resyncs(self) -> int:
        return self.decoder.resyncs

    @property
    def drops(self) -> int:
        return self.decoder.drops


def _sum(a: DecoderStats, b: DecoderStats) -> DecoderStats:
    return DecoderStats(**{f.name: getattr(a, f.name) + getattr(b, f.name)
                           for f in dataclasses.fields(DecoderStats)})


class SerialDriver:
    """Talks to the MCU; thread-safe send_command, latest-state slot, optional STATE callback.

    `on_state` runs on the I/O thread for every STATE: keep it short (convert, publish, maybe send
    a command); an exception in it is counted, never fatal. `on_link(connected)` is called when a
    session starts or ends.
    """

    def __init__(self, config: HardwareConfig,
                 on_state: Callable[[StateSample], None] | None = None,
                 on_link: Callable[[bool], None] | None = None) -> None:
        self.config = config
        self._on_state = on_state
        self._on_link = on_link
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tx_lock = threading.Lock()
        self._tx_seq = SequenceCounter()
        self._port: serial.Serial | None = None
        self._need_delimiter = False
        self._state_cond = threading.Condition()
        self._latest: StateSample | None = None
        self._index = 0
        self._session = 0
        self._connected = False
        self._device: DeviceConfig | None = None
        self._decoder = FrameDecoder()
        self._past = DecoderStats()
        self._counts = dict(bytes_tx=0, commands_sent=0, commands_refused=0, write_errors=0,
                            timeouts=0, link_losses=0, mcu_restarts=0, reconnects=0,
                            open_failures=0,
                            handshake_failures=0, callback_errors=0)
        self._heartbeat_token = 0
        self._heartbeat_sent: float | None = None
        self._heartbeat_rtt: float | None = None
        self._mcu_counters: Counters | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread; it keeps (re)connecting until close()."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="serial-driver", daemon=True)
        self._thread.start()

    def open(self, timeout: float | None = None) -> DeviceConfig:
        """Start and wait for the first handshake; DriverError (and the driver closed) if none."""
        self.start()
        limit = self.config.handshake_timeout if timeout is None else timeout
        if not self.wait_connected(limit):
            self.close()
            raise DriverError(f"no answer from the MCU on {self.config.port} within {limit:g} s")
        assert self._device is not None
        return self._device

    def close(self) -> None:
        """Zero and disable the motor, stop the I/O thread, close the port."""
        if self._connected:
            self.send_command(0.0, enable=False)
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.config.read_timeout + self.config.write_timeout
                        + self.config.handshake_retry + JOIN_MARGIN)
        self._drop_port()

    def __enter__(self) -> "SerialDriver":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what callers use ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def device(self) -> DeviceConfig | None:
        """The MCU's CONFIG from the last handshake (its reset_cause included)."""
        return self._device

    @property
    def mcu_counters(self) -> Counters | None:
        """The latest COUNTERS from the MCU (sent after each HEARTBEAT echo); None before the
        first. Kept across reconnections until a newer one arrives."""
        with self._state_cond:
            return self._mcu_counters

    def wait_connected(self, timeout: float) -> bool:
        with self._state_cond:
            return self._state_cond.wait_for(lambda: self._connected, timeout)

    def send_command(self, duty: float, enable: bool) -> bool:
        """Send a normalised duty (clipped to [-1, 1]; NaN -> 0); False if not sent."""
        if not self._connected:
            self._bump("commands_refused")
            return False
        sent = self._send(Command.from_duty(duty, enable))
        if sent:
            self._bump("commands_sent")
        return sent

    def latest(self) -> StateSample | None:
        with self._state_cond:
            return self._latest

    def wait_state(self, after: int = 0, timeout: float = 1.0) -> StateSample | None:
        """The first sample with index > after, waiting up to timeout; None on timeout."""
        with self._state_cond:
            ok = self._state_cond.wait_for(
                lambda: self._latest is not None and self._latest.index > after, timeout)
            return self._latest if ok else None

    def stats(self) -> DriverStats:
        with self._state_cond:
            return self._stats()

    def wait_stats(self, predicate: Callable[[DriverStats], bool], timeout: float) -> bool:
        """Block until predicate(stats()) holds; re-checked whenever a driver counter moves or a
        STATE arrives. False on timeout."""
        with self._state_cond:
            return self._state_cond.wait_for(lambda: predicate(self._stats()), timeout)

    def _stats(self) -> DriverStats:
        return DriverStats(decoder=_sum(self._past, self._decoder.stats),
                           heartbeat_rtt=self._heartbeat_rtt, connected=self._connected,
                           mcu_counters=self._mcu_counters, **self._counts)

    def _bump(self, name: str, amount: int = 1) -> None:
        with self._state_cond:
            self._counts[name] += amount
            self._state_cond.notify_all()

    # -- transmit --------------------------------------------------------------------------

    def _send(self, message: Message, lead: bool = False) -> bool:
        """Write one frame; `lead` puts a 0x00 before it (every HELLO has one, PROTOCOL.md §5)."""
        with self._tx_lock:
            port = self._port
            if port is None:
                return False
            frame = encode_frame(message, self._tx_seq.next())
            if lead or self._need_delimiter:  # the last write may have left half a frame
                frame = bytes([DELIMITER]) + frame
            try:
                written = port.write(frame)
            except (serial.SerialTimeoutException, *SERIAL_ERRORS):
                written = 0
            if written != len(frame):
                self._bump("write_errors")
                self._need_delimiter = True
                return False
            self._need_delimiter = False
            self._bump("bytes_tx", written)
            return True

    # -- the I/O thread --------------------------------------------------------------------

    def _run(self) -> None:
        set_thread_priority(self.config.realtime_priority, "the serial I/O thread")
        backoff = self.config.reconnect_backoff_initial
        ever_connected = False
        while not self._stop.is_set():
            try:
                port = self._open_port()
                if port is not None and self._handshake(port):
                    backoff = self.config.reconnect_backoff_initial
                    if ever_connected:
                        self._bump("reconnects")
                    ever_connected = True
                    # True: the MCU restarted under the open port; a new session on the same
                    # port (reopening would reset a Mega again and lose the reset cause).
                    while self._serve(port) and not self._stop.is_set():
                        self._end_session()
                        if not self._handshake(port):
                            break
            except Exception:  # noqa: BLE001 - the I/O thread must survive anything
                log.exception("serial driver: unexpected error; reconnecting")
            self._drop_port()
            if not self._stop.is_set():
                self._stop.wait(backoff)
                backoff = min(2.0 * backoff, self.config.reconnect_backoff_max)

    def _open_port(self) -> serial.Serial | None:
        cfg = self.config
        try:
            port = serial.Serial(cfg.port, cfg.baud, timeout=cfg.read_timeout,
                                 write_timeout=cfg.write_timeout)
            port.reset_input_buffer()  # stale bytes from before we listened
        except SERIAL_ERRORS as exc:
            self._bump("open_failures")
            log.debug("serial driver: cannot open %s: %s", cfg.port, exc)
            return None
        with self._state_cond:  # stats() must see the old counters or the sum, never neither
            self._past = _sum(self._past, self._decoder.stats)
            self._decoder = FrameDecoder()
        with self._tx_lock:
            self._port = port
            self._tx_seq = SequenceCounter()   # every port open starts a new sequence at 0
            self._need_delimiter = True  # flush whatever partial frame the MCU holds
        return port

    def _handshake(self, port: serial.Serial) -> bool:
        cfg = self.config
        deadline = time.monotonic() + cfg.handshake_timeout
        next_hello = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                self._bump("handshake_failures")
                log.warning("serial driver: no CONFIG from %s within %g s", cfg.port,
                            cfg.handshake_timeout)
                return False
            if now >= next_hello:
                self._send(Hello(cfg.watchdog_ms), lead=True)
                next_hello = now + cfg.handshake_retry
            data = self._read(port)
            if data is None:
                return False
            for frame in self._decoder.feed(data):
                if isinstance(frame.message, DeviceConfig):
                    self._device = frame.message
                    log.info("serial driver: connected to %s, firmware %s", cfg.port,
                             frame.message.firmware)
                    # Before anyone waiting in open() wakes: the callback's reset of a session
                    # must not overtake what the caller does next (e.g. enable).
                    with self._state_cond:
                        self._session += 1
                    self._notify_link(True)
                    with self._state_cond:
                        self._connected = True
                        self._state_cond.notify_all()
                    return True
        return False

    def _serve(self, port: serial.Serial) -> bool:
        """Deliver frames until the link is lost (False) or the MCU restarts (True)."""
        cfg = self.config
        now = time.monotonic()
        last_frame = last_state = now
        last_stamp: int | None = None
        restart_gap = int(cfg.link_timeout * US_PER_S)
        timed_out = False
        next_heartbeat = now + cfg.heartbeat_period if cfg.heartbeat_period else None
        while not self._stop.is_set():
            data = self._read(port)
            now = time.monotonic()
            if data is None:
                self._lose_link("port error")
                return False
            for frame in self._decoder.feed(data):
                last_frame = now
                message = frame.message
                if isinstance(message, State):
                    # MCU time advances with every STATE and cannot run ahead of the host's
                    # link_timeout: otherwise its clock restarted. Nothing of the new run is
                    # delivered to the old session.
                    advance = (message.timestamp_us - last_stamp) % TIMESTAMP_MODULUS \
                        if last_stamp is not None else None
                    if advance is not None and (advance == 0 or advance > restart_gap):
                        self._bump("mcu_restarts")
                        log.warning("serial driver: the MCU on %s restarted (STATE clock jumped "
                                    "from %d to %d us); new session", cfg.port, last_stamp,
                                    message.timestamp_us)
                        return True
                    last_stamp = message.timestamp_us
                    last_state, timed_out = now, False
                    self._deliver(message, frame.seq, now)
                elif isinstance(message, Heartbeat):
                    if message.token == self._heartbeat_token and self._heartbeat_sent:
                        self._heartbeat_rtt = now - self._heartbeat_sent
                elif isinstance(message, Counters):
                    with self._state_cond:
                        self._mcu_counters = message
                        self._state_cond.notify_all()
                elif isinstance(message, DeviceConfig):
                    self._device = message
            if not timed_out and now - last_state > cfg.state_timeout:
                self._bump("timeouts")
                timed_out = True
            if now - last_frame > cfg.link_timeout:
                self._lose_link(f"no valid frame for {cfg.link_timeout:g} s")
                return False
            if next_heartbeat is not None and now >= next_heartbeat:
                self._heartbeat_token = (self._heartbeat_token + 1) % TOKEN_MODULUS
                self._heartbeat_sent = now
                self._send(Heartbeat(self._heartbeat_token))
                next_heartbeat = now + cfg.heartbeat_period
        return False

    def _read(self, port: serial.Serial) -> bytes | None:
        """Whatever has arrived, waiting at most read_timeout; None if the port is gone."""
        try:
            data = port.read(1)
            waiting = port.in_waiting
            if waiting:
                data += port.read(waiting)
            return data
        except SERIAL_ERRORS:
            return None

    def _deliver(self, state: State, seq: int, now: float) -> None:
        with self._state_cond:
            self._index += 1
            sample = StateSample(state, seq, now, self._index, self._session)
            self._latest = sample
            self._state_cond.notify_all()
        if self._on_state is not None:
            try:
                self._on_state(sample)
            except Exception:  # noqa: BLE001 - a caller's bug must not stop the link
                self._bump("callback_errors")
                errors = self._counts["callback_errors"]
                if errors & (errors - 1) == 0:  # 1st, 2nd, 4th, ...: visible but not a flood
                    log.exception("serial driver: state callback failed (%d times)", errors)

    def _lose_link(self, why: str) -> None:
        self._bump("link_losses")
        log.warning("serial driver: link to %s lost (%s); reconnecting", self.config.port, why)

    def _notify_link(self, connected: bool) -> None:
        if self._on_link is not None:
            try:
                self._on_link(connected)
            except Exception:  # noqa: BLE001
                self._bump("callback_errors")
                log.exception("serial driver: link callback failed")

    def _end_session(self) -> None:
        """The session is over but the port stays open (the MCU restarted)."""
        with self._state_cond:
            was_connected, self._connected = self._connected, False
            self._state_cond.notify_all()
        self._decoder.reset_sequence()
        if was_connected:
            self._notify_link(False)

    def _drop_port(self) -> None:
        was_connected = self._connected
        with self._state_cond:
            self._connected = False
            self._state_cond.notify_all()
        with self._tx_lock:
            port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except SERIAL_ERRORS:
                pass
        if was_connected:
            self._notify_link(False)
