"""The rig's wire protocol (docs/PROTOCOL.md): COBS framing, CRC-16, fixed little-endian messages.

Everything here is pure: encoding returns bytes, decoding either returns a message or raises a
`ProtocolError` subclass. `FrameDecoder` wraps decoding for a byte stream and never raises: bad
input only moves its counters, so a noisy serial line cannot crash the driver and a frame that
fails its CRC never becomes a message.
"""
from __future__ import annotations

import binascii
import dataclasses
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar, Union

PROTOCOL_VERSION = 1
DELIMITER = 0x00
HEADER = struct.Struct("<BBH")          # version, message type, sequence number
CRC = struct.Struct("<H")               # CRC-16/CCITT-FALSE of header + payload, little-endian
CRC_INIT = 0xFFFF                       # CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection
SEQ_MODULUS = 1 << 16
SEQ_RESET_GAP = SEQ_MODULUS // 2        # a jump this large is a restart, not lost frames
TIMESTAMP_MODULUS = 1 << 32             # the MCU's microsecond clock wraps (about 71.6 minutes)
TOKEN_MODULUS = 1 << 32                 # HEARTBEAT tokens are u32
COMMAND_FULL_SCALE = 32767              # raw motor command for 100 % duty; -32768 is invalid
COBS_MAX_BLOCK = 0xFF                   # a COBS code byte covers at most 254 data bytes


class MsgType(IntEnum):
    STATE = 0x01
    COMMAND = 0x02
    HELLO = 0x03
    CONFIG = 0x04
    HEARTBEAT = 0x05
    COUNTERS = 0x06


class Status(IntFlag):
    """STATE status bits; the rest are reserved (sent as 0, ignored on receipt)."""

    LIMIT_LEFT = 0x01
    LIMIT_RIGHT = 0x02
    AMP_FAULT = 0x04
    WATCHDOG = 0x08
    ENABLED = 0x10
    FAULT_LATCHED = 0x20


class ResetCause(IntFlag):
    """CONFIG byte 3: why the MCU last started, in the AVR MCUSR bit layout (0 = not reported)."""

    POWER_ON = 0x01
    EXTERNAL = 0x02
    BROWN_OUT = 0x04
    WATCHDOG = 0x08


RESET_CAUSE_WORDS = ((ResetCause.POWER_ON, "power-on"), (ResetCause.EXTERNAL, "external"),
                     (ResetCause.BROWN_OUT, "brown-out"), (ResetCause.WATCHDOG, "watchdog"))


def reset_cause_text(cause: int) -> str:
    """Words for a CONFIG reset_cause: "power-on", "external", "brown-out", "watchdog" (joined
    with '+' if several bits are set), "not reported" for 0; unknown bits are shown in hex."""
    words = [word for flag, word in RESET_CAUSE_WORDS if cause & flag]
    unknown = cause & ~sum(int(flag) for flag, _ in RESET_CAUSE_WORDS) & 0xFF
    if unknown:
        words.append(f"0x{unknown:02x}")
    return "+".join(words) if words else "not reported"


COMMAND_ENABLE = 0x01                   # COMMAND flags bit 0; other bits must be 0


class ProtocolError(ValueError):
    """A frame that must be discarded."""


class CobsError(ProtocolError):
    """The bytes between two delimiters are not a valid COBS encoding."""


class CrcError(ProtocolError):
    """The frame's CRC does not match its contents."""


class MalformedFrame(ProtocolError):
    """CRC fine but the contents are not a message of this protocol version."""


@dataclass(frozen=True)
class State:
    """MCU -> host at the fixed rate: raw encoder counts, MCU clock, status, applied command."""

    TYPE: ClassVar[MsgType] = MsgType.STATE
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<iiIHh")
    cart_counts: int
    pole_counts: int
    timestamp_us: int
    status: int
    applied_command: int

    def has(self, flag: Status) -> bool:
        return bool(self.status & flag)


@dataclass(frozen=True)
class Command:
    """Host -> MCU: motor command (+-COMMAND_FULL_SCALE = +-100 % duty) and amplifier enable."""

    TYPE: ClassVar[MsgType] = MsgType.COMMAND
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<hBB")
    motor: int
    enable: bool

    @classmethod
    def from_duty(cls, duty: float, enable: bool) -> "Command":
        """Normalised duty in [-1, 1] (clipped; NaN becomes 0) to the raw wire value."""
        if duty != duty:  # NaN: never turn an undefined number into motion
            duty = 0.0
        duty = min(1.0, max(-1.0, duty))
        return cls(int(round(duty * COMMAND_FULL_SCALE)), bool(enable))

    @property
    def duty(self) -> float:
        return self.motor / COMMAND_FULL_SCALE


@dataclass(frozen=True)
class Hello:
    """Host -> MCU: starts a session; asks for a command watchdog timeout (0 = firmware default)."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<HH")
    watchdog_ms: int = 0


@dataclass(frozen=True)
class DeviceConfig:
    """MCU -> host, the answer to HELLO: firmware identity and the settings in effect."""

    TYPE: ClassVar[MsgType] = MsgType.CONFIG
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<BBBBIIHH")
    fw_major: int
    fw_minor: int
    fw_patch: int
    cart_counts_per_m: int
    pole_counts_per_rev: int
    state_rate_hz: int
    watchdog_ms: int
    reset_cause: int = 0    # byte 3: ResetCause bits (AVR MCUSR layout), 0 = not reported

    @property
    def firmware(self) -> str:
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"


@dataclass(frozen=True)
class Heartbeat:
    """Either way: liveness and round-trip time; the MCU echoes the host's token unchanged."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<I")
    token: int


@dataclass(frozen=True)
class Counters:
    """MCU -> host, right after each HEARTBEAT echo: the MCU's error counters since power-up,
    each a u16 that saturates at 65535 (never wraps); a HELLO does not clear them."""

    TYPE: ClassVar[MsgType] = MsgType.COUNTERS
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<8H")
    rx_crc_errors: int = 0            # host frames whose CRC failed
    rx_malformed: int = 0             # host frames with bad COBS, length, version, type, payload
    rx_oversized: int = 0             # runs longer than MAX_ENCODED without a delimiter
    rx_drops: int = 0                 # host frames missing by sequence number
    tx_overflows: int = 0             # frames the MCU dropped because its transmit buffer was full
    watchdog_trips: int = 0           # command watchdog trips
    cart_quadrature_errors: int = 0   # impossible x4 transitions (both channels changed at once)
    pole_quadrature_errors: int = 0


COUNTER_SATURATION = 0xFFFF

Message = Union[State, Command, Hello, DeviceConfig, Heartbeat, Counters]
MESSAGE_TYPES: dict[int, type] = {cls.TYPE: cls for cls in (State, Command, Hello, DeviceConfig,
                                                            Heartbeat, Counters)}
MAX_PAYLOAD = max(cls.FORMAT.size for cls in MESSAGE_TYPES.values())
MAX_BODY = HEADER.size + MAX_PAYLOAD + CRC.size
MAX_ENCODED = MAX_BODY + MAX_BODY // (COBS_MAX_BLOCK - 1) + 1   # COBS worst case, no delimiter


@dataclass(frozen=True)
class Frame:
    """A decoded, CRC-checked frame."""

    seq: int
    message: Message


# ---------------------------------------------------------------------------------------------
# COBS and CRC


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result has no 0x00 bytes (delimiter not appended)."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
            continue
        block.append(byte)
        if len(block) == COBS_MAX_BLOCK - 1:
            out.append(COBS_MAX_BLOCK)
            out += block
            block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of cobs_encode; raises CobsError on a zero byte or a code that overruns the data."""
    out = bytearray()
    i, n = 0, len(data)
    if n == 0:
        raise CobsError("empty frame")
    while i < n:
        code = data[i]
        if code == 0:
            raise CobsError("zero byte inside a frame")
        end = i + code
        if end > n:
            raise CobsError("code byte overruns the frame")
        block = data[i + 1:end]
        if 0 in block:
            raise CobsError("zero byte inside a frame")
        out += block
        i = end
        if code < COBS_MAX_BLOCK and i < n:
            out.append(0)
    return bytes(out)


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor; '123456789' ->
    0x29B1)."""
    return binascii.crc_hqx(data, CRC_INIT)


# ---------------------------------------------------------------------------------------------
# Frames


def pack_message(message: Message) -> bytes:
    """The payload bytes of a message; ValueError if a field is out of its wire range."""
    if isinstance(message, Command):
        if not -COMMAND_FULL_SCALE <= message.motor <= COMMAND_FULL_SCALE:
            raise ValueError(f"motor command {message.motor} outside +-{COMMAND_FULL_SCALE}")
        fields: tuple = (message.motor, COMMAND_ENABLE if message.enable else 0, 0)
    elif isinstance(message, Hello):
        fields = (message.watchdog_ms, 0)
    elif isinstance(message, DeviceConfig):
        fields = (message.fw_major, message.fw_minor, message.fw_patch, message.reset_cause,
                  message.cart_counts_per_m, message.pole_counts_per_rev,
                  message.state_rate_hz, message.watchdog_ms)
    else:
        fields = dataclasses.astuple(message)
    try:
        return message.FORMAT.pack(*fields)
    except struct.error as exc:
        raise ValueError(f"{type(message).__name__}: {exc}") from exc


def unpack_message(kind: int, payload: bytes) -> Message:
    """A message from its type and payload; MalformedFrame if either is not valid."""
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise MalformedFrame(f"unknown message type 0x{kind:02x}")
    if len(payload) != cls.FORMAT.size:
        raise MalformedFrame(f"{cls.__name__} payload of {len(payload)} bytes, "
                             f"expected {cls.FORMAT.size}")
    values = cls.FORMAT.unpack(payload)
    if cls is Command:
        motor, flags, reserved = values
        # Strict: a command is applied only if every bit is one we sent on purpose.
        if motor < -COMMAND_FULL_SCALE or flags & ~COMMAND_ENABLE or reserved:
            raise MalformedFrame("COMMAND with reserved bits or value set")
        return Command(motor, bool(flags & COMMAND_ENABLE))
    if cls is Hello:
        return Hello(values[0])
    if cls is DeviceConfig:
        major, minor, patch, reset_cause, cpm, cpr, rate, watchdog = values
        return DeviceConfig(major, minor, patch, cpm, cpr, rate, watchdog, reset_cause)
    return cls(*values)


def encode_frame(message: Message, seq: int) -> bytes:
    """One complete wire frame: COBS(header + payload + CRC) followed by the 0x00 delimiter."""
    body = HEADER.pack(PROTOCOL_VERSION, message.TYPE, seq % SEQ_MODULUS) + pack_message(message)
    body += CRC.pack(crc16(body))
    return cobs_encode(body) + bytes([DELIMITER])


def decode_frame(encoded: bytes) -> Frame:
    """One frame from the bytes between two delimiters (delimiter excluded)."""
    if len(encoded) > MAX_ENCODED:
        raise MalformedFrame(f"frame of {len(encoded)} bytes exceeds {MAX_ENCODED}")
    body = cobs_decode(encoded)
    if len(body) < HEADER.size + CRC.size:
        raise MalformedFrame(f"frame of {len(body)} bytes is shorter than header + CRC")
    (received,) = CRC.unpack_from(body, len(body) - CRC.size)
    if crc16(body[:-CRC.size]) != received:
        raise CrcError("CRC mismatch")
    version, kind, seq = HEADER.unpack_from(body)
    if version != PROTOCOL_VERSION:
        raise MalformedFrame(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    return Frame(seq, unpack_message(kind, body[HEADER.size:-CRC.size]))


class SequenceCounter:
    """The sender's u16 sequence number: one counter per direction, all message types."""

    def __init__(self, start: int = 0) -> None:
        self._next = start % SEQ_MODULUS

    def next(self) -> int:
        seq = self._next
        self._next = (seq + 1) % SEQ_MODULUS
        return seq


def sequence_gap(previous: int, current: int) -> int:
    """Frames missing between two received sequence numbers, modulo the u16 wrap."""
    return (current - previous - 1) % SEQ_MODULUS


# ---------------------------------------------------------------------------------------------
# Streaming receiver


@dataclass
class DecoderStats:
    """Receiver counters; every byte that does not become a message shows up in one of them."""

    bytes: int = 0
    frames: int = 0            # valid messages delivered
    crc_errors: int = 0        # COBS-valid frames whose CRC failed
    malformed: int = 0         # bad COBS, too short, wrong version, type or payload length
    oversized: int = 0         # runs longer than any frame without a delimiter (discarded)
    resyncs: int = 0           # valid frames that ended a run of bad input (sync regained)
    drops: int = 0             # frames missing by sequence number (lost, corrupted, not sent)
    sequence_resets: int = 0   # sequence jumps too large to be losses (sender restarted)

    @property
    def bad_frames(self) -> int:
        return self.crc_errors + self.malformed + self.oversized

    def copy(self) -> "DecoderStats":
        return dataclasses.replace(self)


class FrameDecoder:
    """Turns arbitrary byte chunks into CRC-checked frames; never raises on any input.

    Starts hunting: bytes before the first delimiter may be the tail of a frame that began before
    we listened, so they are dropped without being counted as errors.
    """

    def __init__(self, restart_types: tuple[int, ...] = ()) -> None:
        """restart_types: message types that start a new sequence (the MCU passes HELLO: a
        reopened host restarts at 0, which is neither a loss nor a reset)."""
        self.stats = DecoderStats()
        self._restart_types = frozenset(int(t) for t in restart_types)
        self._buffer = bytearray()
        self._hunting = True      # discard up to the next delimiter
        self._lost_sync = False   # a bad frame was seen since the last good one
        self._last_seq: int | None = None

    def reset_sequence(self) -> None:
        """Forget the last sequence number (a new session: no drops counted across it)."""
        self._last_seq = None

    def feed(self, chunk: bytes) -> list[Frame]:
        frames: list[Frame] = []
        if not chunk:
            return frames
        self.stats.bytes += len(chunk)
        pieces = bytes(chunk).split(bytes([DELIMITER]))
        for i, piece in enumerate(pieces):
            complete = i < len(pieces) - 1
            if self._hunting:
                if complete:
                    self._hunting = False
                continue
            self._buffer += piece
            if not complete:
                if len(self._buffer) > MAX_ENCODED:
                    self.stats.oversized += 1
                    self._lost_sync = True
                    self._buffer.clear()
                    self._hunting = True
                continue
            data = bytes(self._buffer)
            self._buffer.clear()
            if len(data) > MAX_ENCODED:  # same count whether or not it came in one chunk
                self.stats.oversized += 1
                self._lost_sync = True
            elif data:  # empty frames (repeated delimiters) are allowed as idle fill
                frame = self._decode(data)
                if frame is not None:
                    frames.append(frame)
        return frames

    def _decode(self, data: bytes) -> Frame | None:
        try:
            frame = decode_frame(data)
        except CrcError:
            self.stats.crc_errors += 1
            self._lost_sync = True
            return None
        except Exception:  # noqa: BLE001 - any other failure is a malformed frame, never a crash
            self.stats.malformed += 1
            self._lost_sync = True
            return None
        self.stats.frames += 1
        if self._lost_sync:
            self.stats.resyncs += 1
            self._lost_sync = False
        if frame.message.TYPE in self._restart_types:
            self._last_seq = None
        if self._last_seq is not None:
            gap = sequence_gap(self._last_seq, frame.seq)
            if gap >= SEQ_RESET_GAP:
                self.stats.sequence_resets += 1
            else:
                self.stats.drops += gap
        self._last_seq = frame.seq
        return frame
