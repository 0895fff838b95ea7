"""Firmware, portable part, on the host: the C codec and receiver against protocol.py, the MCU
state machine's rules (docs/PROTOCOL.md section 5 and the shared contract), the x4 quadrature
table, and the differential fuzz driver, all built with AddressSanitizer and UBSan
(`make -C firmware host`). The AVR build and the simulator are tested elsewhere."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from ebmcpilco_ros.hardware import protocol as proto
from ebmcpilco_ros.hardware.protocol import (Command, Counters, DeviceConfig, FrameDecoder,
                                             Heartbeat, Hello, MsgType, State, Status)

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
HOST = FIRMWARE / "build" / "host"
# Leak checking needs ptrace, which some containers refuse; nothing here allocates long-lived.
ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=0",
           UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")

FW_VERSION = (1, 0, 0)
STATE_RATE_HZ = 500
TICK_MS = 1000 / STATE_RATE_HZ
WATCHDOG_DEFAULT_MS = 100
CART_COUNTS_PER_M = 20000
POLE_COUNTS_PER_REV = 4096
LEFT, RIGHT, FAULT = int(Status.LIMIT_LEFT), int(Status.LIMIT_RIGHT), int(Status.AMP_FAULT)
WATCHDOG, ENABLED, LATCHED = int(Status.WATCHDOG), int(Status.ENABLED), int(Status.FAULT_LATCHED)


@pytest.fixture(scope="module")
def built():
    if shutil.which("make") is None or shutil.which("cc") is None:
        pytest.fail("no C toolchain (make, cc): `make test` installs it "
                    "(scripts/system-packages.sh)")
    result = subprocess.run(["make", "-C", str(FIRMWARE), "host"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return HOST


@pytest.fixture(scope="module")
def codec(built):
    """Runs fwcodec on a list of command lines; returns one parsed answer per line."""
    def run(lines: list[str], timeout: float = 60) -> list[dict]:
        result = subprocess.run([str(built / "fwcodec")], input="\n".join(lines) + "\n",
                                capture_output=True, text=True, timeout=timeout, env=ENV)
        assert result.returncode == 0, result.stderr[-4000:]
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(answers) == len(lines), result.stderr[-4000:]
        errors = [(line[:80], a) for line, a in zip(lines, answers) if "error" in a]
        assert not errors, errors
        return answers
    return run


# ---------------------------------------------------------------------------------------------
# Messages on both sides


def c_fields(message) -> list[int]:
    """A message's fields in wire order, as fwcodec's `encode` takes them."""
    if isinstance(message, Command):
        return [message.motor, int(message.enable)]
    if isinstance(message, DeviceConfig):
        return [message.fw_major, message.fw_minor, message.fw_patch, message.reset_cause,
                message.cart_counts_per_m, message.pole_counts_per_rev, message.state_rate_hz,
                message.watchdog_ms]
    return list(dataclasses.astuple(message))


def encode_line(message, seq: int) -> str:
    return " ".join(["encode", message.TYPE.name, str(seq)] + [str(v) for v in c_fields(message)])


def as_c_dict(message, seq: int) -> dict:
    """The JSON fwcodec prints for a decoded message."""
    return {"type": message.TYPE.name, "seq": seq, **dataclasses.asdict(message)}


def pick(rng: random.Random, lo: int, hi: int) -> int:
    """Uniform most of the time, an extreme or a neighbour of one otherwise."""
    if rng.random() < 0.3:
        return rng.choice([lo, hi, lo + 1, hi - 1, 0 if lo <= 0 <= hi else lo])
    return rng.randint(lo, hi)


def random_message(rng: random.Random, kind: type):
    u16, u32 = (0, 0xFFFF), (0, 0xFFFFFFFF)
    if kind is State:
        return State(pick(rng, -2**31, 2**31 - 1), pick(rng, -2**31, 2**31 - 1), pick(rng, *u32),
                     pick(rng, *u16), pick(rng, -32768, 32767))
    if kind is Command:
        return Command(pick(rng, -32767, 32767), rng.random() < 0.5)
    if kind is Hello:
        return Hello(pick(rng, *u16))
    if kind is DeviceConfig:
        return DeviceConfig(pick(rng, 0, 255), pick(rng, 0, 255), pick(rng, 0, 255),
                            pick(rng, *u32), pick(rng, *u32), pick(rng, *u16), pick(rng, *u16),
                            reset_cause=pick(rng, 0, 255))
    if kind is Heartbeat:
        return Heartbeat(pick(rng, *u32))
    return Counters(*(pick(rng, *u16) for _ in dataclasses.fields(Counters)))


KINDS = [State, Command, Hello, DeviceConfig, Heartbeat, Counters]


def test_every_message_type_is_known_to_both():
    assert sorted(int(k.TYPE) for k in KINDS) == sorted(int(t) for t in MsgType)


def test_crc_check_value_and_random_data(codec):
    rng = random.Random(3)
    data = [b"123456789", b""] + [rng.randbytes(rng.randrange(1, 60)) for _ in range(300)]
    answers = codec([f"crc {d.hex() or '-'}" for d in data])
    assert answers[0]["crc"] == 0x29B1
    assert [a["crc"] for a in answers] == [proto.crc16(d) for d in data]


def protocol_md_wires() -> list[bytes]:
    """The `wire` lines of docs/PROTOCOL.md section 7, in order."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    section = text[text.index("## 7. Worked examples"):text.index("## 8.")]
    return [bytes.fromhex(line.split(None, 1)[1].split("  ")[0])
            for line in section.splitlines() if line.startswith("wire ")]


def test_worked_examples_of_protocol_md(codec):
    examples = [
        (Command(16384, True), 258, b""),
        (State(1000, -2048, 2000, ENABLED, 16384), 7, b""),
        (Hello(100), 0, b"\x00"),
        (DeviceConfig(1, 0, 0, 20000, 4096, 500, 100, reset_cause=8), 0, b"\x00"),
        (Counters(3, 1, 0, 4, 0, 2, 0, 65535), 513, b""),
    ]
    wires = protocol_md_wires()
    assert len(wires) == len(examples)
    lines = [encode_line(m, seq) for m, seq, _ in examples]
    lines += [f"decode {wire.strip(bytes(1)).hex()}" for wire in wires]
    # The CONFIG example is what the MCU answers to the HELLO example after a watchdog reset.
    lines += ["mcu reset 8", f"mcu feed {wires[2].hex()}"]
    answers = codec(lines)
    for i, (message, seq, lead) in enumerate(examples):
        assert lead + bytes.fromhex(answers[i]["wire"]) == wires[i], message
        assert answers[len(examples) + i]["message"] == as_c_dict(message, seq)
    assert bytes.fromhex(answers[-1]["sent"]) == wires[3]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_c_encodes_byte_identically_and_decodes_python_frames(codec, kind):
    rng = random.Random(int(kind.TYPE))
    cases = [(random_message(rng, kind), pick(rng, 0, 0xFFFF)) for _ in range(400)]
    lines = [encode_line(m, seq) for m, seq in cases]
    lines += [f"decode {proto.encode_frame(m, seq).hex()}" for m, seq in cases]
    answers = codec(lines)
    encoded, decoded = answers[:len(cases)], answers[len(cases):]
    for (message, seq), c_wire, c_decoded in zip(cases, encoded, decoded):
        wire = proto.encode_frame(message, seq)
        assert bytes.fromhex(c_wire["wire"]) == wire, message
        assert proto.decode_frame(wire[:-1]) == proto.Frame(seq, message)
        assert c_decoded == {"result": "ok", "message": as_c_dict(message, seq)}


def python_verdict(piece: bytes) -> dict:
    try:
        frame = proto.decode_frame(piece)
    except proto.CrcError:
        return {"result": "crc_error"}
    except proto.ProtocolError:
        return {"result": "malformed"}
    return {"result": "ok", "message": as_c_dict(frame.message, frame.seq)}


def raw_frame(kind: int, seq: int, payload: bytes, version: int = 1, crc_xor: int = 0) -> bytes:
    """A frame with any contents (protocol.py refuses to encode invalid ones)."""
    body = bytes([version, kind]) + seq.to_bytes(2, "little") + payload
    crc = proto.crc16(body) ^ crc_xor
    return proto.cobs_encode(body + crc.to_bytes(2, "little")) + b"\x00"


def test_c_and_python_reject_the_same_frames(codec):
    rng = random.Random(5)
    pieces = [
        b"\x01", b"\x02\x01", b"\x06\x01\x02\x03\x04\x05",          # shorter than 6 bytes
        raw_frame(2, 1, b"\x00\x80\x01\x00")[:-1],                     # motor -32768
        raw_frame(2, 1, b"\x10\x00\x03\x00")[:-1],                     # reserved flag bit
        raw_frame(2, 1, b"\x10\x00\x01\x01")[:-1],                     # reserved byte
        raw_frame(2, 1, b"\x10\x00\x01")[:-1],                         # short payload
        raw_frame(7, 1, b"\x00" * 4)[:-1],                             # unknown type
        raw_frame(0, 1, b"\x00" * 4)[:-1],
        raw_frame(2, 1, b"\x10\x00\x01\x00", version=2)[:-1],          # other version
        raw_frame(3, 1, b"\x64\x00\xff\xff")[:-1],                     # HELLO reserved: ignored
        b"\x05\x01\x02\x02\x01\x03\x40\x01\x04\x83\x19",               # code overruns
        b"\xff" * 24,                                                  # longer than MAX_ENCODED
    ]
    for _ in range(2000):
        message = random_message(rng, rng.choice(KINDS))
        wire = bytearray(proto.encode_frame(message, rng.randrange(65536))[:-1])
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(wire))
            action = rng.randrange(4)
            if action == 0:
                wire[at] ^= 1 << rng.randrange(8)
            elif action == 1:
                del wire[at]
            elif action == 2:
                wire.insert(at, rng.randrange(1, 256))
            else:
                wire[at] = rng.randrange(1, 256)
        pieces.append(bytes(b for b in wire if b) or b"\x01")
    answers = codec([f"decode {p.hex()}" for p in pieces])
    for piece, answer in zip(pieces, answers):
        assert answer == python_verdict(piece), piece.hex()
    verdicts = [a["result"] for a in answers]
    assert verdicts.count("crc_error") > 500 and verdicts.count("malformed") > 200


def corrupted_stream(rng: random.Random, frames: int, restart_hello: bool,
                     big_jumps: bool) -> bytes:
    """Frames of every type with sequence gaps, then corrupted bytes, garbage and long runs.
    big_jumps: also jumps at the reset threshold and anywhere (drops then saturate)."""
    out = bytearray(rng.randbytes(rng.randrange(0, 30)))   # starts mid-frame
    seq = rng.randrange(65536)
    for _ in range(frames):
        kind = rng.choice(KINDS)
        if rng.random() < 0.05:
            seq += rng.randrange(1, 20)
        elif big_jumps and rng.random() < 0.02:
            seq += rng.choice([32767, 32768, 32769, rng.randrange(65536)])
        message = random_message(rng, kind)
        if restart_hello and kind is Hello and rng.random() < 0.5:
            seq = 0
        frame = bytearray(proto.encode_frame(message, seq % 65536))
        seq += 1
        for i in range(len(frame)):
            if rng.random() < 0.02:
                frame[i] = rng.randrange(256)
        out += frame
        roll = rng.random()
        if roll < 0.03:
            out += rng.randbytes(rng.randrange(1, 60))
        elif roll < 0.05:
            out += bytes(rng.randrange(1, 256) for _ in range(rng.randrange(24, 70)))
        elif roll < 0.07:
            out += b"\x00" * rng.randrange(1, 4)
    return bytes(out)


@pytest.mark.parametrize("restart_hello", [False, True], ids=["plain", "hello-restarts"])
def test_receiver_counters_match_python_on_corrupted_streams(codec, restart_hello):
    rng = random.Random(11 + restart_hello)
    restart = (MsgType.HELLO,) if restart_hello else ()
    for trial in range(8):
        stream = corrupted_stream(rng, 600, restart_hello, big_jumps=trial % 2 == 1)
        decoder = FrameDecoder(restart_types=restart)
        python_frames = []
        at = 0
        while at < len(stream):          # arbitrary chunking on the Python side
            size = rng.randrange(1, 80)
            python_frames += decoder.feed(stream[at:at + size])
            at += size
        chunks = [stream[i:i + 500] for i in range(0, len(stream), 500)]
        answers = codec([f"rx reset {int(MsgType.HELLO) if restart_hello else 0}"]
                        + [f"rx feed {c.hex()}" for c in chunks])
        c_frames = [f for a in answers[1:] for f in a["frames"]]
        assert c_frames == [as_c_dict(f.message, f.seq) for f in python_frames]
        stats = dataclasses.asdict(decoder.stats)
        del stats["bytes"]
        # The C counters saturate (u16 on the MCU), Python's do not.
        assert answers[-1]["counters"] == {k: min(v, 65535) for k, v in stats.items()}, trial
        assert stats["crc_errors"] and stats["malformed"] and stats["oversized"]
        assert stats["drops"] and stats["resyncs"]


# ---------------------------------------------------------------------------------------------
# The MCU state machine


class Host:
    """Builds fwcodec `mcu` lines: frames from the host with its own sequence numbers (the first
    led by a 0x00, as a host does after opening the port), and ticks."""

    def __init__(self) -> None:
        self.seq = proto.SequenceCounter()
        self.lead = b"\x00"
        self.t_us = 0

    def send(self, *messages) -> str:
        wire = self.lead + b"".join(proto.encode_frame(m, self.seq.next()) for m in messages)
        self.lead = b""
        return "mcu feed " + wire.hex()

    def tick(self, inputs: int = 0, cart: int = 0, pole: int = 0, cart_errors: int = 0,
             pole_errors: int = 0) -> str:
        self.t_us += int(TICK_MS * 1000)
        return f"mcu tick {cart} {pole} {self.t_us} {inputs} {cart_errors} {pole_errors}"


@pytest.fixture
def mcu(codec):
    """Runs `mcu reset` and the given lines; returns the answers with the MCU's sent bytes decoded
    by protocol.py (as `frames`, each answer's own), checking the MCU's sequence is unbroken
    apart from frames it dropped for lack of room."""
    def run(lines: list[str], reset_cause: int = 1) -> list[dict]:
        answers = codec([f"mcu reset {reset_cause}"] + lines)[1:]
        decoder = FrameDecoder()
        decoder.feed(b"\x00")
        for answer in answers:
            answer["frames"] = decoder.feed(bytes.fromhex(answer["sent"]))
        assert decoder.stats.bad_frames == 0
        assert decoder.stats.drops == answers[-1]["counters"]["tx_overflows"]
        return answers
    return run


def only(answer: dict, kind: type):
    messages = [f.message for f in answer["frames"]]
    assert len(messages) == 1 and isinstance(messages[0], kind), messages
    return messages[0]


@pytest.mark.parametrize("request_ms, in_effect", [
    (0, WATCHDOG_DEFAULT_MS), (1, 5), (4, 5), (5, 5), (100, 100), (250, 250), (5000, 5000),
    (5001, 5000), (65535, 5000)])
def test_hello_clamps_watchdog_and_replies_config_after_a_delimiter(mcu, request_ms, in_effect):
    host = Host()
    answer, = mcu([host.send(Hello(request_ms))], reset_cause=8)
    sent = bytes.fromhex(answer["sent"])
    config = DeviceConfig(*FW_VERSION, CART_COUNTS_PER_M, POLE_COUNTS_PER_REV, STATE_RATE_HZ,
                          in_effect, reset_cause=8)
    assert sent == b"\x00" + proto.encode_frame(config, 0)
    assert only(answer, DeviceConfig) == config


def test_hello_keeps_the_last_watchdog_when_asked_for_zero(mcu):
    host = Host()
    answers = mcu([host.send(Hello(300)), host.send(Hello(0))])
    assert only(answers[1], DeviceConfig).watchdog_ms == 300


def test_heartbeat_is_echoed_then_counters_and_does_not_feed_the_watchdog(mcu):
    host = Host()
    lines = [host.send(Hello(10)), host.send(Command(500, True))]
    lines += [host.tick() for _ in range(4)]
    lines += [host.send(Heartbeat(0xDEADBEEF)), host.tick(), host.tick()]
    answers = mcu(lines)
    echo = answers[6]["frames"]
    assert [f.message for f in echo] == [Heartbeat(0xDEADBEEF), Counters()]
    assert echo[1].seq == echo[0].seq + 1
    # 10 ms = 5 ticks: the 6th tick after the COMMAND trips, heartbeat or not.
    assert only(answers[7], State).status == ENABLED
    assert only(answers[8], State).status == WATCHDOG


@pytest.mark.parametrize("watchdog_ms", [5, 6, 7, 100, 101, 5000])
def test_watchdog_trips_at_first_tick_beyond_watchdog_ms(mcu, watchdog_ms):
    # The COMMAND arrives between two ticks: at the k-th tick after it, more than
    # (k - 1) * TICK_MS have certainly passed; the trip is at the first k where that exceeds or
    # reaches watchdog_ms (strictly more time has passed then).
    trip = next(k for k in range(1, 10000) if (k - 1) * TICK_MS >= watchdog_ms)
    host = Host()
    lines = [host.send(Hello(watchdog_ms)), host.tick(), host.send(Command(-1200, True))]
    lines += [host.tick() for _ in range(trip + 1)]
    answers = mcu(lines)
    states = [only(a, State) for a in answers[3:]]
    assert all(s.status == ENABLED and s.applied_command == -1200 for s in states[:trip - 1])
    assert states[trip - 1] == State(0, 0, (trip + 1) * 2000, WATCHDOG, 0)
    assert states[trip].status == WATCHDOG
    assert answers[-1]["enable"] is False and answers[-1]["motor"] == 0
    assert answers[-1]["counters"]["watchdog_trips"] == 1


def test_watchdog_bit_clears_at_next_command_whose_enable_decides(mcu):
    host = Host()
    lines = [host.send(Hello(5), Command(100, True))] + [host.tick() for _ in range(4)]
    lines += [host.send(Command(200, False)), host.tick()]
    lines += [host.send(Command(300, True)), host.tick()]
    answers = mcu(lines)
    assert only(answers[4], State).status == WATCHDOG
    assert only(answers[6], State) == State(0, 0, 10000, 0, 0)
    assert only(answers[8], State) == State(0, 0, 12000, ENABLED, 300)


def test_watchdog_does_not_trip_while_disabled(mcu):
    host = Host()
    lines = [host.send(Hello(5), Command(0, False))] + [host.tick() for _ in range(20)]
    answers = mcu(lines)
    assert all(only(a, State).status == 0 for a in answers[1:])
    assert answers[-1]["counters"]["watchdog_trips"] == 0


def test_command_with_enable_0_and_nonzero_motor_disables_and_feeds_the_watchdog(mcu):
    host = Host()
    lines = [host.send(Hello(10), Command(3000, True)), host.tick()]
    lines += [host.send(Command(-25000, False)), host.tick()]
    lines += [host.tick() for _ in range(10)]
    answers = mcu(lines)
    assert answers[2]["enable"] is False and answers[2]["motor"] == 0
    assert only(answers[3], State) == State(0, 0, 4000, 0, 0)
    assert all(only(a, State).status == 0 for a in answers[4:])


@pytest.mark.parametrize("payload", [b"\x00\x80\x01\x00", b"\x00\x80\x00\x00", b"\x10\x00\x03\x00",
                                     b"\x10\x00\x81\x00", b"\x10\x00\x01\x01",
                                     b"\x10\x00\x00\xff"],
                         ids=["motor-32768", "motor-32768-disabled", "flag-bit-1", "flag-bit-7",
                              "reserved-byte", "reserved-byte-disabled"])
def test_invalid_commands_are_ignored_entirely(mcu, payload):
    host = Host()
    lines = [host.send(Hello(6), Command(700, True)), host.tick(),
             "mcu feed " + raw_frame(2, host.seq.next(), payload).hex()]
    lines += [host.tick() for _ in range(4)]
    answers = mcu(lines)
    assert answers[2]["motor"] == 700 and answers[2]["enable"] is True
    assert answers[2]["counters"]["rx_malformed"] == 1
    # Not a COMMAND as far as the watchdog goes either: 6 ms = 3 ticks, the 4th trips.
    assert [only(a, State).status for a in answers[3:]] == [ENABLED, ENABLED, WATCHDOG, WATCHDOG]


@pytest.mark.parametrize("inputs, motor, applied", [
    (0, -9000, -9000), (0, 9000, 9000),
    (LEFT, -9000, 0), (LEFT, 9000, 9000),
    (RIGHT, 9000, 0), (RIGHT, -9000, -9000),
    (LEFT | RIGHT, 9000, 0), (LEFT | RIGHT, -9000, 0), (LEFT | RIGHT, 0, 0)])
def test_limit_switches_block_drive_into_them(mcu, inputs, motor, applied):
    host = Host()
    lines = [host.send(Hello(), Command(motor, True)), f"mcu inputs {inputs}",
             host.tick(inputs=inputs), "mcu inputs 0"]
    answers = mcu(lines)
    assert answers[1]["motor"] == applied and answers[1]["enable"] is True
    assert only(answers[2], State) == State(0, 0, 2000, inputs | ENABLED, applied)
    assert answers[3]["motor"] == motor      # the command comes back once the switch opens


def test_fault_latch_and_its_acknowledgement(mcu):
    host = Host()
    lines = [
        host.send(Hello(), Command(4000, True)),        # 0 enabled
        f"mcu inputs {FAULT}",                          # 1 fault: off, latched
        host.tick(inputs=FAULT),                        # 2
        host.send(Command(4000, False)),                # 3 ENABLE 0 while active: no ack
        host.send(Hello()),                             # 4 HELLO while active: no ack
        "mcu inputs 0",                                 # 5 fault gone, latch holds
        host.send(Command(4000, True)),                 # 6 held off
        host.tick(),                                    # 7
        host.send(Command(4000, False)),                # 8 the acknowledgement
        host.tick(),                                    # 9
        host.send(Command(4000, True)),                 # 10 enables as usual
        host.tick(),                                    # 11
        f"mcu inputs {FAULT}", "mcu inputs 0",          # 12, 13 latched again
        host.send(Hello()),                             # 14 HELLO while inactive: ack
        host.send(Command(-100, True)),                 # 15
    ]
    answers = mcu(lines)
    drive = [(a["motor"], a["enable"]) for a in answers]
    assert drive[0] == (4000, True) and drive[1] == (0, False)
    assert only(answers[2], State) == State(0, 0, 2000, FAULT | LATCHED, 0)
    assert answers[3]["status"] == FAULT | LATCHED and answers[4]["status"] == FAULT | LATCHED
    assert answers[5]["status"] == LATCHED
    assert drive[6] == (0, False) and only(answers[7], State).status == LATCHED
    assert drive[8] == (0, False) and only(answers[9], State).status == 0
    assert drive[10] == (4000, True) and only(answers[11], State).status == ENABLED
    assert drive[12] == (0, False) and answers[13]["status"] == LATCHED
    assert answers[14]["status"] == 0 and drive[15] == (-100, True)


def test_hello_zeroes_and_disables(mcu):
    host = Host()
    answers = mcu([host.send(Hello(), Command(-32767, True)), host.send(Hello()), host.tick()])
    assert (answers[0]["motor"], answers[0]["enable"]) == (-32767, True)
    assert (answers[1]["motor"], answers[1]["enable"]) == (0, False)
    assert only(answers[2], State).status == 0


def test_enable_acts_only_after_a_hello_since_start_up(mcu):
    """Commands a host sent before the MCU (re)started never enable it: until the first HELLO,
    ENABLE = 1 acts as 0 (valid, feeds the watchdog); after it, as usual."""
    host = Host()
    answers = mcu([host.send(Command(16384, True)), host.tick(), host.send(Hello()),
                   host.send(Command(16384, True))])
    assert (answers[0]["motor"], answers[0]["enable"]) == (0, False)
    state = only(answers[1], State)
    assert not state.status & Status.ENABLED and not state.status & Status.WATCHDOG
    assert (answers[3]["motor"], answers[3]["enable"]) == (16384, True)


def test_state_carries_the_latched_tick(mcu):
    host = Host()
    answers = mcu([host.tick(cart=-2**31, pole=2**31 - 1, cart_errors=7, pole_errors=65535),
                   host.send(Heartbeat(1))])
    assert only(answers[0], State) == State(-2**31, 2**31 - 1, 2000, 0, 0)
    assert answers[1]["frames"][1].message == Counters(cart_quadrature_errors=7,
                                                       pole_quadrature_errors=65535)


def test_full_transmit_buffer_drops_frames_and_counts_them(mcu):
    host = Host()
    answers = mcu([host.tick(), "mcu tx full", host.tick(), host.send(Heartbeat(5)),
                   "mcu tx free", host.tick(), host.send(Heartbeat(6))])
    assert [f.seq for f in answers[0]["frames"]] == [0]
    assert answers[2]["sent"] == "" and answers[3]["sent"] == ""
    assert [f.seq for f in answers[5]["frames"]] == [4]      # seq 1-3 were used and dropped
    echo, counters = answers[6]["frames"]
    assert echo.message == Heartbeat(6) and counters.message.tx_overflows == 3


def test_mcu_sequence_continues_across_hello_and_forgets_the_hosts(mcu):
    old, new = Host(), Host()
    for _ in range(40000):
        old.seq.next()
    answers = mcu([old.send(Hello(), Command(1, True)), new.send(Hello()),
                   new.send(Command(2, True), Heartbeat(3))])
    assert [f.seq for a in answers for f in a["frames"]] == [0, 1, 2, 3]
    assert answers[-1]["frames"][1].message.rx_drops == 0


def test_receiver_counts_reach_the_mcu_counters_and_saturate(mcu):
    host = Host()
    lines = [host.send(Hello())]
    for _ in range(3):                 # three gaps of 32767 frames: saturated at 65535
        for _ in range(32767):
            host.seq.next()
        lines.append(host.send(Command(0, False)))
    lines.append("mcu feed " + "0100" * 70000)                       # malformed, empty bodies
    lines.append("mcu feed " + raw_frame(2, host.seq.next(), bytes(4), crc_xor=1).hex())
    lines.append("mcu feed " + "55" * 30 + "00")                      # oversized
    lines.append(host.send(Heartbeat(9)))
    answers = mcu(lines)
    drops = [a["counters"]["rx_drops"] for a in answers[1:4]]
    assert drops == [32767, 65534, 65535]
    assert answers[-1]["frames"][1].message == Counters(
        rx_crc_errors=1, rx_malformed=65535, rx_oversized=1, rx_drops=65535)


# ---------------------------------------------------------------------------------------------
# x4 quadrature


GRAY_UP = [0b00, 0b10, 0b11, 0b01]      # A leads B: counts up


def expected_step(before: int, after: int) -> int | None:
    """+1/-1 along GRAY_UP, 0 for no change, None when both channels changed."""
    if before == after:
        return 0
    if before ^ after == 0b11:
        return None
    return 1 if GRAY_UP[(GRAY_UP.index(before) + 1) % 4] == after else -1


def test_quadrature_table_every_transition(codec):
    lines, cases = [], []
    for before in range(4):
        for after in range(4):
            lines += [f"quad reset {before}", f"quad steps {after}"]
            cases.append(expected_step(before, after))
    answers = codec(lines)
    for case, answer in zip(cases, answers[1::2]):
        assert answer == ({"count": 0, "errors": 1} if case is None
                          else {"count": case, "errors": 0})


def test_quadrature_counts_turns_both_ways_and_errors_saturate(codec):
    up = "".join(str(s) for s in GRAY_UP[1:] + GRAY_UP[:1])
    down = up[::-1][1:] + "0"
    answers = codec(["quad reset 0", f"quad steps {up * 1000}", f"quad steps {down * 250}",
                     "quad steps 0303", "quad reset 0", "quad steps " + "03" * 33000])
    assert answers[1] == {"count": 4000, "errors": 0}
    assert answers[2] == {"count": 3000, "errors": 0}
    assert answers[3] == {"count": 3000, "errors": 3}       # 0->3, 3->0, 0->3 ... from 0
    assert answers[5] == {"count": 0, "errors": 65535}


# ---------------------------------------------------------------------------------------------
# Fuzzing


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_driver_finds_no_violation(built, seed):
    result = subprocess.run([str(built / "fwfuzz"), "200000", str(seed)], capture_output=True,
                            text=True, timeout=120, env=ENV)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary["iterations"] == 200000
    for key in ("commands", "hellos", "heartbeats", "watchdog_trips", "tx_overflows"):
        assert summary[key] > 100, summary
