"""Wire protocol: message round trips, COBS and CRC properties, and a fuzzed streaming decoder."""
from __future__ import annotations

import dataclasses
import random
import struct
from pathlib import Path

import pytest

from ebmcpilco_ros.hardware import protocol as proto
from ebmcpilco_ros.hardware.protocol import (Command, Counters, DeviceConfig, Frame,
                                             FrameDecoder, Heartbeat, Hello, ResetCause, State,
                                             Status)

pytestmark = pytest.mark.timeout(60)

EXAMPLES = [
    State(cart_counts=-123456, pole_counts=2**31 - 1, timestamp_us=2**32 - 1,
          status=int(Status.LIMIT_LEFT | Status.ENABLED), applied_command=-32767),
    State(0, -2**31, 0, 0, 0),
    Command(motor=32767, enable=True),
    Command(motor=-32767, enable=False),
    Command(motor=0, enable=True),
    Hello(watchdog_ms=100),
    Hello(),
    DeviceConfig(1, 2, 3, cart_counts_per_m=20000, pole_counts_per_rev=4096, state_rate_hz=500,
                 watchdog_ms=65535),
    DeviceConfig(1, 0, 0, 20000, 4096, 500, 100, reset_cause=int(ResetCause.WATCHDOG)),
    Heartbeat(token=0xDEADBEEF),
    Counters(1, 2, 3, 4, 5, 6, 7, 65535),
    Counters(),
]


def reference_crc(data: bytes) -> int:
    """Bitwise CRC-16/CCITT-FALSE, written from the definition (an oracle for the fast one)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def reference_valid(piece: bytes) -> bool:
    """Independent check of one delimiter-separated piece: COBS, length, CRC, version, type."""
    try:
        body = proto.cobs_decode(piece)
    except proto.CobsError:
        return False
    if len(body) < 6 or len(piece) > proto.MAX_ENCODED:
        return False
    if reference_crc(body[:-2]) != struct.unpack("<H", body[-2:])[0]:
        return False
    try:
        proto.unpack_message(body[1], body[4:-2])
    except proto.MalformedFrame:
        return False
    return body[0] == proto.PROTOCOL_VERSION


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("seq", [0, 1, 65535])
def test_every_message_round_trips(message, seq):
    wire = proto.encode_frame(message, seq)
    assert wire[-1] == proto.DELIMITER and proto.DELIMITER not in wire[:-1]
    assert len(wire) - 1 <= proto.MAX_ENCODED
    assert proto.decode_frame(wire[:-1]) == Frame(seq, message)


def test_payload_sizes_are_the_documented_ones():
    # docs/PROTOCOL.md tables: changing a size is a protocol version change.
    assert [State.FORMAT.size, Command.FORMAT.size, Hello.FORMAT.size, DeviceConfig.FORMAT.size,
            Heartbeat.FORMAT.size, Counters.FORMAT.size] == [16, 4, 4, 16, 4, 16]
    assert proto.HEADER.size == 4 and proto.MAX_ENCODED == 23
    assert [int(t) for t in proto.MsgType] == [1, 2, 3, 4, 5, 6]


def test_contract_constants():
    # The shared contract (firmware, harness and host implement the same numbers).
    assert Status.FAULT_LATCHED == 0x20
    assert [int(c) for c in (ResetCause.POWER_ON, ResetCause.EXTERNAL, ResetCause.BROWN_OUT,
                             ResetCause.WATCHDOG)] == [0x01, 0x02, 0x04, 0x08]
    assert [f.name for f in dataclasses.fields(Counters)] == [
        "rx_crc_errors", "rx_malformed", "rx_oversized", "rx_drops", "tx_overflows",
        "watchdog_trips", "cart_quadrature_errors", "pole_quadrature_errors"]
    assert proto.reset_cause_text(0) == "not reported"
    assert proto.reset_cause_text(0x01) == "power-on"
    assert proto.reset_cause_text(0x02) == "external"
    assert proto.reset_cause_text(0x04) == "brown-out"
    assert proto.reset_cause_text(0x08) == "watchdog"
    assert proto.reset_cause_text(0x03) == "power-on+external"
    assert proto.reset_cause_text(0x10) == "0x10"


def test_config_reset_cause_is_byte_3():
    payload = proto.pack_message(DeviceConfig(1, 2, 3, 20000, 4096, 500, 100, reset_cause=0x04))
    assert payload[3] == 0x04
    # Old senders put 0 there: decodes as "not reported", and the default is 0.
    legacy = DeviceConfig(1, 2, 3, 20000, 4096, 500, 100)
    assert legacy.reset_cause == 0 and proto.pack_message(legacy)[3] == 0
    assert proto.unpack_message(proto.MsgType.CONFIG, payload).reset_cause == 0x04


def test_counters_refuse_values_beyond_u16():
    with pytest.raises(ValueError):
        proto.encode_frame(Counters(65536), 0)
    with pytest.raises(ValueError):
        proto.encode_frame(Counters(-1), 0)


def test_known_frame_bytes():
    # The worked example in docs/PROTOCOL.md: COMMAND +50 % duty, enabled, seq 258.
    wire = proto.encode_frame(Command(16384, True), 258)
    body = bytes([0x01, 0x02, 0x02, 0x01, 0x00, 0x40, 0x01, 0x00])
    crc = reference_crc(body)
    assert proto.cobs_decode(wire[:-1]) == body + struct.pack("<H", crc)
    assert wire.hex(" ") == "05 01 02 02 01 03 40 01 03 " + struct.pack("<H", crc).hex(" ") + " 00"


DOC = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text()


@pytest.mark.parametrize("lead, message, seq, body, wire", [
    (b"", State(1000, -2048, 2000, int(Status.ENABLED), 16384), 7,
     "01 01 07 00 | e8 03 00 00 | 00 f8 ff ff | d0 07 00 00 | 10 00 | 00 40 | 61 d0",
     "04 01 01 07 03 e8 03 01 01 06 f8 ff ff d0 07 01 02 10 01 04 40 61 d0 00"),
    (b"\x00", Hello(100), 0,
     "01 03 00 00 | 64 00 00 00 | 4c 3d",
     "00 03 01 03 01 02 64 01 01 03 4c 3d 00"),
    (b"\x00", DeviceConfig(1, 0, 0, 20000, 4096, 500, 100, reset_cause=0x08), 0,
     "01 04 00 00 | 01 00 00 08 | 20 4e 00 00 | 00 10 00 00 | f4 01 | 64 00 | 7c c3",
     "00 03 01 04 01 02 01 01 04 08 20 4e 01 01 02 10 01 04 f4 01 64 03 7c c3 00"),
    (b"", Counters(3, 1, 0, 4, 0, 2, 0, 65535), 513,
     "01 06 01 02 | 03 00 01 00 00 00 04 00 00 00 02 00 00 00 ff ff | a8 5e",
     "06 01 06 01 02 03 02 01 01 01 02 04 01 01 02 02 01 01 05 ff ff a8 5e 00"),
], ids=["STATE", "HELLO", "CONFIG", "COUNTERS"])
def test_worked_examples_in_the_protocol_doc(lead, message, seq, body, wire):
    encoded = lead + proto.encode_frame(message, seq)
    assert encoded.hex(" ") == wire
    assert proto.cobs_decode(encoded.strip(b"\x00")).hex(" ") == body.replace(" |", "")
    assert f"body   {body}" in DOC and f"wire   {wire}" in DOC


def test_crc_is_ccitt_false():
    assert proto.crc16(b"123456789") == 0x29B1
    rng = random.Random(1)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 40))
        assert proto.crc16(data) == reference_crc(data)


def test_out_of_range_fields_are_refused_on_encode():
    with pytest.raises(ValueError):
        proto.encode_frame(Command(-32768, True), 0)
    with pytest.raises(ValueError):
        proto.encode_frame(State(2**31, 0, 0, 0, 0), 0)
    with pytest.raises(ValueError):
        proto.encode_frame(Heartbeat(-1), 0)


def test_duty_conversion_saturates_and_ignores_nan():
    assert Command.from_duty(1.0, True).motor == proto.COMMAND_FULL_SCALE
    assert Command.from_duty(-7.0, True).motor == -proto.COMMAND_FULL_SCALE
    assert Command.from_duty(float("nan"), True).motor == 0
    assert Command.from_duty(0.5, False).duty == pytest.approx(0.5, abs=1e-4)


def test_strict_command_decoding():
    body = proto.HEADER.pack(1, proto.MsgType.COMMAND, 0)
    for payload in (struct.pack("<hBB", 100, 0x03, 0), struct.pack("<hBB", 100, 1, 7),
                    struct.pack("<hBB", -32768, 1, 0)):
        frame = body + payload
        frame += struct.pack("<H", proto.crc16(frame))
        with pytest.raises(proto.MalformedFrame):
            proto.decode_frame(proto.cobs_encode(frame))


# -- COBS properties ------------------------------------------------------------------------


def cobs_cases():
    rng = random.Random(7)
    yield b""
    yield b"\x00"
    yield b"\x00" * 300
    yield bytes(range(1, 256)) * 3          # runs longer than one COBS block
    yield bytes(254 * [7])                  # exactly one full block
    yield bytes(253 * [7]) + b"\x00"
    for _ in range(300):
        n = rng.choice([rng.randrange(0, 30), rng.randrange(0, 800)])
        zero_rate = rng.random()
        yield bytes(0 if rng.random() < zero_rate else rng.randrange(1, 256) for _ in range(n))


@pytest.mark.parametrize("data", list(cobs_cases()))
def test_cobs_round_trip_without_zeros(data):
    encoded = proto.cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    assert proto.cobs_decode(encoded) == data


def test_cobs_decode_rejects_invalid_input():
    for bad in (b"", b"\x00", b"\x05\x01", b"\x02\x00", b"\x03\x01\x00"):
        with pytest.raises(proto.CobsError):
            proto.cobs_decode(bad)


# -- streaming decoder ----------------------------------------------------------------------


def stream_of(messages, start_seq=0):
    return b"\x00" + b"".join(proto.encode_frame(m, start_seq + i) for i, m in enumerate(messages))


def feed_in_chunks(decoder: FrameDecoder, data: bytes, rng: random.Random) -> list[Frame]:
    frames, i = [], 0
    while i < len(data):
        n = rng.choice([1, 2, 3, 7, 23, 64, 500])
        frames += decoder.feed(data[i:i + n])
        i += n
    return frames


def test_decoder_handles_any_chunking():
    messages = EXAMPLES * 20
    data = stream_of(messages)
    for seed in range(5):
        decoder = FrameDecoder()
        frames = feed_in_chunks(decoder, data, random.Random(seed))
        assert [f.message for f in frames] == messages
        assert decoder.stats.frames == len(messages)
        assert decoder.stats.bad_frames == decoder.stats.drops == 0


def test_decoder_discards_the_tail_it_joined_in_without_counting_it():
    wire = proto.encode_frame(Heartbeat(1), 0) + proto.encode_frame(Heartbeat(2), 1)
    decoder = FrameDecoder()
    frames = decoder.feed(wire[5:])  # joined mid-frame
    assert [f.message for f in frames] == [Heartbeat(2)]
    assert decoder.stats.bad_frames == 0


def test_sequence_wrap_drops_and_resets():
    decoder = FrameDecoder()
    seqs = [65533, 65534, 65535, 0, 1, 4, 65535, 2, 40000]
    data = b"\x00" + b"".join(proto.encode_frame(Heartbeat(s), s) for s in seqs)
    frames = decoder.feed(data)
    assert [f.seq for f in frames] == seqs
    # 65535 -> 0 -> 1 wraps cleanly; 1 -> 4 loses 2; 4 -> 65535 is a backwards jump (a reset);
    # 65535 -> 2 loses 0 and 1; 2 -> 40000 is too far to be losses (a reset).
    assert decoder.stats.drops == 2 + 2
    assert decoder.stats.sequence_resets == 2
    decoder.reset_sequence()
    decoder.feed(proto.encode_frame(Heartbeat(9), 9))
    assert decoder.stats.drops == 4


def test_a_restart_type_starts_a_new_sequence():
    # The MCU's receiver: a HELLO from a reopened host (seq back to 0) is neither lost frames nor
    # a sequence reset, and the frames after it are counted from it.
    mcu = FrameDecoder(restart_types=(proto.MsgType.HELLO,))
    host = FrameDecoder()
    stream = (b"\x00" + proto.encode_frame(Command(0, False), 900)
              + proto.encode_frame(Command(0, False), 901)
              + b"\x00" + proto.encode_frame(Hello(100), 0)
              + proto.encode_frame(Command(0, False), 1) + proto.encode_frame(Command(0, False), 3))
    assert len(mcu.feed(stream)) == len(host.feed(stream)) == 5
    assert (mcu.stats.drops, mcu.stats.sequence_resets) == (1, 0)      # only seq 2 is lost
    assert (host.stats.drops, host.stats.sequence_resets) == (1, 1)     # 901 -> 0: a reset


def test_garbage_then_resync():
    decoder = FrameDecoder()
    good = proto.encode_frame(State(1, 2, 3, 4, 5), 0)
    frames = decoder.feed(b"\x00" + bytes(range(1, 200)) + b"\x00" + b"\x11\x22\x00" + good)
    assert [f.message for f in frames] == [State(1, 2, 3, 4, 5)]
    assert decoder.stats.oversized == 1 and decoder.stats.bad_frames == 2
    assert decoder.stats.resyncs == 1


def mutate(wire: bytes, rng: random.Random) -> bytes:
    data = bytearray(wire)
    kind = rng.randrange(7)
    if kind == 0:                                   # bit flips
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 1:                                 # truncated
        del data[rng.randrange(len(data)):]
    elif kind == 2:                                 # bytes inserted
        for _ in range(rng.randrange(1, 5)):
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
    elif kind == 3:                                 # bytes deleted
        for _ in range(rng.randrange(1, 4)):
            if data:
                del data[rng.randrange(len(data))]
    elif kind == 4:                                 # COBS code byte made to overrun / fall short
        data[0] = rng.randrange(256)
    elif kind == 5:                                 # oversized: frames glued, delimiter lost
        data = data[:-1] + data + rng.randbytes(rng.randrange(0, 60))
    else:                                           # a valid-CRC frame with a bad length/type
        body = bytes([proto.PROTOCOL_VERSION, rng.randrange(256), 0, 0])
        body += rng.randbytes(rng.choice([0, 1, 3, 4, 15, 16, 17, 40]))
        body += struct.pack("<H", proto.crc16(body))
        data = bytearray(proto.cobs_encode(body) + b"\x00")
    return bytes(data)


def fuzz_stream(rng: random.Random, frames: int) -> bytes:
    parts = [b"\x00"]
    seq = rng.randrange(65536)
    for _ in range(frames):
        wire = proto.encode_frame(rng.choice(EXAMPLES), seq)
        seq = (seq + rng.choice([1, 1, 1, 2, 5000, 40000])) % 65536
        roll = rng.random()
        if roll < 0.4:
            wire = mutate(wire, rng)
        elif roll < 0.5:
            wire = rng.randbytes(rng.randrange(0, 80))
        parts.append(wire)
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(8))
def test_fuzzed_stream_never_raises_and_yields_only_valid_frames(seed):
    rng = random.Random(seed)
    data = fuzz_stream(rng, 800)
    decoder = FrameDecoder()
    frames = feed_in_chunks(decoder, data, rng)
    # Oracle: exactly the delimiter-separated pieces that an independent check finds valid.
    pieces = data.split(b"\x00")[1:-1]
    expected = [proto.decode_frame(p) for p in pieces if p and reference_valid(p)]
    assert frames == expected
    for frame in frames:  # and each of them passes the reference CRC as re-encoded
        assert reference_valid(proto.encode_frame(frame.message, frame.seq)[:-1])
    stats = decoder.stats
    # An undelimited tail longer than any frame is already counted as oversized.
    tail_oversized = len(data.split(b"\x00")[-1]) > proto.MAX_ENCODED
    assert stats.frames + stats.bad_frames == sum(1 for p in pieces if p) + tail_oversized
    assert stats.bytes == len(data)


def test_pure_noise_never_raises():
    rng = random.Random(99)
    decoder = FrameDecoder()
    for _ in range(2000):
        decoder.feed(rng.randbytes(rng.randrange(0, 200)))
    decoder.feed(b"")
    decoder.feed(bytearray(b"\x00\x00\x00"))
    decoder.feed(memoryview(b"\x01\x00"))
    assert decoder.stats.frames <= 1  # a random piece passing COBS, CRC and type: ~never
