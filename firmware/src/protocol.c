/* Wire protocol: framing, message packing and the streaming receiver (see protocol.h). */
#include "ebmfw/protocol.h"

#include <string.h>

#include "ebmfw/counter.h"

#define COBS_MAX_CODE 0xFFu                 /* a code byte covers at most 254 data bytes */

uint16_t ebm_crc16(const uint8_t *data, size_t n)
{
    uint16_t crc = 0xFFFF;
    while (n--) {
        /* Byte-wise form of the bitwise poly-0x1021 shift register: no table, a few shifts. */
        uint8_t x = (uint8_t)((crc >> 8) ^ *data++);
        x ^= (uint8_t)(x >> 4);
        crc = (uint16_t)((crc << 8) ^ ((uint16_t)x << 12) ^ ((uint16_t)x << 5) ^ x);
    }
    return crc;
}

/* COBS-encodes n bytes (n < 254) into out (n + 1 bytes, no 0x00 among them); returns n + 1. */
static size_t cobs_encode(const uint8_t *in, size_t n, uint8_t *out)
{
    size_t code_at = 0;
    size_t o = 1;
    uint8_t code = 1;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == 0) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
        } else {
            out[o++] = in[i];
            code++;
        }
    }
    out[code_at] = code;
    return o;
}

/* Decodes n COBS bytes in place; returns the decoded length, or -1 if the encoding is invalid. */
static int cobs_decode(uint8_t *buf, size_t n)
{
    size_t i = 0;
    size_t o = 0;
    while (i < n) {
        uint8_t code = buf[i];
        if (code == 0 || code > n - i)
            return -1;
        for (uint8_t k = 1; k < code; k++) {
            if (buf[i + k] == 0)
                return -1;
            buf[o++] = buf[i + k];
        }
        i += code;
        if (code < COBS_MAX_CODE && i < n)
            buf[o++] = 0;
    }
    return (int)o;
}

/* Payload bytes of a message type, 0 for a type this protocol version does not know. */
static uint8_t payload_size(uint8_t type)
{
    switch (type) {
    case EBM_STATE:
    case EBM_CONFIG:
    case EBM_COUNTERS:
        return 16;
    case EBM_COMMAND:
    case EBM_HELLO:
    case EBM_HEARTBEAT:
        return 4;
    default:
        return 0;
    }
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)v);
    put16(p + 2, (uint16_t)(v >> 16));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
    return get16(p) | (uint32_t)get16(p + 2) << 16;
}

/* Two's complement reinterpretation without implementation-defined conversions. */
static int16_t as_i16(uint16_t v)
{
    return v < 0x8000u ? (int16_t)v : (int16_t)(-(int32_t)(0x10000ul - v));
}

static int32_t as_i32(uint32_t v)
{
    return v < 0x80000000ul ? (int32_t)v : -(int32_t)(0xFFFFFFFFul - v) - 1;
}

static void pack_payload(const struct ebm_message *msg, uint8_t *p)
{
    switch (msg->type) {
    case EBM_STATE:
        put32(p, (uint32_t)msg->u.state.cart_counts);
        put32(p + 4, (uint32_t)msg->u.state.pole_counts);
        put32(p + 8, msg->u.state.timestamp_us);
        put16(p + 12, msg->u.state.status);
        put16(p + 14, (uint16_t)msg->u.state.applied_command);
        break;
    case EBM_COMMAND:
        put16(p, (uint16_t)msg->u.command.motor);
        p[2] = msg->u.command.enable ? EBM_COMMAND_ENABLE : 0;
        p[3] = 0;
        break;
    case EBM_HELLO:
        put16(p, msg->u.hello.watchdog_ms);
        put16(p + 2, 0);
        break;
    case EBM_CONFIG:
        p[0] = msg->u.config.fw_major;
        p[1] = msg->u.config.fw_minor;
        p[2] = msg->u.config.fw_patch;
        p[3] = msg->u.config.reset_cause;
        put32(p + 4, msg->u.config.cart_counts_per_m);
        put32(p + 8, msg->u.config.pole_counts_per_rev);
        put16(p + 12, msg->u.config.state_rate_hz);
        put16(p + 14, msg->u.config.watchdog_ms);
        break;
    case EBM_HEARTBEAT:
        put32(p, msg->u.heartbeat.token);
        break;
    case EBM_COUNTERS:
        for (uint8_t i = 0; i < EBM_COUNTER_COUNT; i++)
            put16(p + 2 * i, msg->u.counters.value[i]);
        break;
    default:
        break;
    }
}

/* False if the payload is not a meaningful message (COMMAND: every bit must be one we sent). */
static bool unpack_payload(uint8_t type, const uint8_t *p, struct ebm_message *msg)
{
    switch (type) {
    case EBM_STATE:
        msg->u.state.cart_counts = as_i32(get32(p));
        msg->u.state.pole_counts = as_i32(get32(p + 4));
        msg->u.state.timestamp_us = get32(p + 8);
        msg->u.state.status = get16(p + 12);
        msg->u.state.applied_command = as_i16(get16(p + 14));
        return true;
    case EBM_COMMAND:
        if (get16(p) == 0x8000u || (p[2] & ~EBM_COMMAND_ENABLE) != 0 || p[3] != 0)
            return false;
        msg->u.command.motor = as_i16(get16(p));
        msg->u.command.enable = (p[2] & EBM_COMMAND_ENABLE) != 0;
        return true;
    case EBM_HELLO:
        msg->u.hello.watchdog_ms = get16(p);   /* the reserved half is ignored */
        return true;
    case EBM_CONFIG:
        msg->u.config.fw_major = p[0];
        msg->u.config.fw_minor = p[1];
        msg->u.config.fw_patch = p[2];
        msg->u.config.reset_cause = p[3];
        msg->u.config.cart_counts_per_m = get32(p + 4);
        msg->u.config.pole_counts_per_rev = get32(p + 8);
        msg->u.config.state_rate_hz = get16(p + 12);
        msg->u.config.watchdog_ms = get16(p + 14);
        return true;
    case EBM_HEARTBEAT:
        msg->u.heartbeat.token = get32(p);
        return true;
    case EBM_COUNTERS:
        for (uint8_t i = 0; i < EBM_COUNTER_COUNT; i++)
            msg->u.counters.value[i] = get16(p + 2 * i);
        return true;
    default:
        return false;
    }
}

uint8_t ebm_encode(const struct ebm_message *msg, uint8_t out[EBM_MAX_FRAME])
{
    uint8_t body[EBM_MAX_BODY];
    uint8_t size = payload_size(msg->type);
    if (size == 0)
        return 0;
    body[0] = EBM_PROTOCOL_VERSION;
    body[1] = msg->type;
    put16(body + 2, msg->seq);
    pack_payload(msg, body + EBM_HEADER_SIZE);
    uint8_t n = (uint8_t)(EBM_HEADER_SIZE + size);
    put16(body + n, ebm_crc16(body, n));
    uint8_t len = (uint8_t)cobs_encode(body, n + EBM_CRC_SIZE, out);
    out[len++] = EBM_DELIMITER;
    return len;
}

enum ebm_frame_result ebm_decode(uint8_t *buf, size_t n, struct ebm_message *msg)
{
    if (n > EBM_MAX_ENCODED)
        return EBM_FRAME_MALFORMED;
    int len = cobs_decode(buf, n);
    if (len < (int)(EBM_HEADER_SIZE + EBM_CRC_SIZE))
        return EBM_FRAME_MALFORMED;
    uint8_t data = (uint8_t)(len - EBM_CRC_SIZE);
    if (ebm_crc16(buf, data) != get16(buf + data))
        return EBM_FRAME_CRC_ERROR;
    uint8_t type = buf[1];
    uint8_t size = payload_size(type);
    if (buf[0] != EBM_PROTOCOL_VERSION || size == 0 || data - EBM_HEADER_SIZE != size)
        return EBM_FRAME_MALFORMED;
    if (!unpack_payload(type, buf + EBM_HEADER_SIZE, msg))
        return EBM_FRAME_MALFORMED;
    msg->type = type;
    msg->seq = get16(buf + 2);
    return EBM_FRAME_OK;
}

void ebm_rx_init(struct ebm_rx *rx, uint8_t restart_type)
{
    memset(rx, 0, sizeof *rx);
    rx->hunting = true;
    rx->restart_type = restart_type;
}

static void count_sequence(struct ebm_rx *rx, const struct ebm_message *msg)
{
    if (rx->have_seq && msg->type != rx->restart_type) {
        uint16_t gap = (uint16_t)(msg->seq - rx->last_seq - 1u);
        if (gap >= EBM_SEQ_RESET_GAP)
            ebm_count(&rx->counters.sequence_resets);
        else
            ebm_count_add(&rx->counters.drops, gap);
    }
    rx->have_seq = true;
    rx->last_seq = msg->seq;
}

bool ebm_rx_byte(struct ebm_rx *rx, uint8_t byte, struct ebm_message *msg)
{
    if (byte != EBM_DELIMITER) {
        if (rx->hunting)
            return false;
        if (rx->len == EBM_MAX_ENCODED) {
            ebm_count(&rx->counters.oversized);
            rx->lost_sync = true;
            rx->hunting = true;
            rx->len = 0;
            return false;
        }
        rx->buf[rx->len++] = byte;
        return false;
    }
    if (rx->hunting) {
        rx->hunting = false;
        return false;
    }
    uint8_t len = rx->len;
    rx->len = 0;
    if (len == 0)                     /* repeated delimiters: idle fill */
        return false;
    switch (ebm_decode(rx->buf, len, msg)) {
    case EBM_FRAME_OK:
        break;
    case EBM_FRAME_CRC_ERROR:
        ebm_count(&rx->counters.crc_errors);
        rx->lost_sync = true;
        return false;
    default:
        ebm_count(&rx->counters.malformed);
        rx->lost_sync = true;
        return false;
    }
    ebm_count(&rx->counters.frames);
    if (rx->lost_sync) {
        ebm_count(&rx->counters.resyncs);
        rx->lost_sync = false;
    }
    count_sequence(rx, msg);
    return true;
}
