/* Wire protocol: framing, message packing and the streaming receiver (see protocol.h). */
#include "ebmfw/protocol.h"

#include <string.h>

#include "ebmfw/counter.h"

#define COBS_MAX_CODE EBM_COBS_MAX_CODE

#define CRC_INIT 0xFFFFu

uint16_t ebm_crc16(const uint8_t *data, size_t n)
{
    uint8_t hi = (uint8_t)(CRC_INIT >> 8), lo = (uint8_t)CRC_INIT;
    for (const uint8_t *end = data + n; data != end; data++)
        ebm_crc_byte(&hi, &lo, *data);
    return (uint16_t)((uint16_t)hi << 8 | lo);
}

/* Decodes n COBS bytes (n < 256) in place; returns the decoded length, or -1 if the encoding is
 * invalid. */
static int cobs_decode(uint8_t *buf, uint8_t n)
{
    uint8_t i = 0;
    uint8_t o = 0;
    while (i < n) {
        uint8_t code = buf[i];
        if (code == 0 || code > (uint8_t)(n - i))
            return -1;
        for (uint8_t k = 1; k < code; k++) {
            if (buf[i + k] == 0)
                return -1;
            buf[o++] = buf[i + k];
        }
        i = (uint8_t)(i + code);
        if (code < COBS_MAX_CODE && i < n)
            buf[o++] = 0;
    }
    return o;
}

/* Payload bytes of a message type, 0 for a type this protocol version does not know. */
static inline __attribute__((always_inline)) uint8_t payload_size(uint8_t type)
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

/* COBS encoding one byte at a time into out: code_at points at the current group's code byte,
 * code counts the group's bytes + 1 (groups stay under 254 bytes: frames are shorter). */
struct cobs_writer {
    uint8_t *out;
    uint8_t *code_at;
    uint8_t code;
};

static inline __attribute__((always_inline)) void cobs_put(struct cobs_writer *w, uint8_t byte)
{
    if (byte == 0) {
        *w->code_at = w->code;
        w->code_at = w->out++;
        w->code = 1;
    } else {
        *w->out++ = byte;
        w->code++;
    }
}

uint8_t ebm_encode(const struct ebm_message *msg, uint8_t out[EBM_MAX_FRAME])
{
    uint8_t body[EBM_HEADER_SIZE + EBM_MAX_PAYLOAD];
    uint8_t size = payload_size(msg->type);
    if (size == 0)
        return 0;
    body[0] = EBM_PROTOCOL_VERSION;
    body[1] = msg->type;
    put16(body + 2, msg->seq);
    pack_payload(msg, body + EBM_HEADER_SIZE);
    uint8_t n = (uint8_t)(EBM_HEADER_SIZE + size);
    /* CRC and COBS in one pass over the body, then the CRC's two bytes (little-endian). */
    uint8_t hi = (uint8_t)(CRC_INIT >> 8), lo = (uint8_t)CRC_INIT;
    struct cobs_writer w = {.out = out + 1, .code_at = out, .code = 1};
    for (const uint8_t *p = body, *end = body + n; p != end; p++) {
        ebm_crc_byte(&hi, &lo, *p);
        cobs_put(&w, *p);
    }
    cobs_put(&w, lo);
    cobs_put(&w, hi);
    *w.code_at = w.code;
    *w.out++ = EBM_DELIMITER;
    return (uint8_t)(w.out - out);
}

/* The checks of ebm_decode() after the CRC's, on the decoded body (data bytes before the CRC). */
static enum ebm_frame_result decode_body(const uint8_t *buf, uint8_t data, struct ebm_message *msg)
{
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

enum ebm_frame_result ebm_decode(uint8_t *buf, size_t n, struct ebm_message *msg)
{
    if (n > EBM_MAX_ENCODED)
        return EBM_FRAME_MALFORMED;
    int len = cobs_decode(buf, (uint8_t)n);
    if (len < (int)(EBM_HEADER_SIZE + EBM_CRC_SIZE))
        return EBM_FRAME_MALFORMED;
    uint8_t data = (uint8_t)(len - EBM_CRC_SIZE);
    if (ebm_crc16(buf, data) != get16(buf + data))
        return EBM_FRAME_CRC_ERROR;
    return decode_body(buf, data, msg);
}

_Static_assert(EBM_MAX_ENCODED < 0xFFu, "ebm_rx.code_at: 0xFF must be past any frame's end");

/* An empty frame: the next byte is a COBS code byte. */
static void rx_restart(struct ebm_rx *rx)
{
    rx->len = 0;
    rx->decoded = 0;
    rx->code_at = 0;
    rx->code = COBS_MAX_CODE;         /* (no 0x00 before the first group) */
    rx->crc_hi = (uint8_t)(CRC_INIT >> 8);
    rx->crc_lo = (uint8_t)CRC_INIT;
}

void ebm_rx_init(struct ebm_rx *rx, uint8_t restart_type)
{
    memset(rx, 0, sizeof *rx);
    rx_restart(rx);
    rx->hunting = true;
    rx->restart_type = restart_type;
}

/* ebm_decode() of the frame just ended, from what ebm_rx_append() worked out. */
static enum ebm_frame_result rx_decode(struct ebm_rx *rx, struct ebm_message *msg)
{
    if (rx->code_at != rx->len || rx->decoded < EBM_HEADER_SIZE + EBM_CRC_SIZE)
        return EBM_FRAME_MALFORMED;
    uint8_t data = (uint8_t)(rx->decoded - EBM_CRC_SIZE);
    uint16_t crc = (uint16_t)((uint16_t)rx->crc_hi << 8 | rx->crc_lo);
    if (crc != get16(rx->buf + data))
        return EBM_FRAME_CRC_ERROR;
    return decode_body(rx->buf, data, msg);
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

bool ebm_rx_byte_slow(struct ebm_rx *rx, uint8_t byte, struct ebm_message *msg)
{
    if (byte != EBM_DELIMITER) {
        if (rx->hunting)
            return false;
        if (rx->len == EBM_MAX_ENCODED) {
            ebm_count(&rx->counters.oversized);
            rx->lost_sync = true;
            rx->hunting = true;
            rx_restart(rx);
            return false;
        }
        ebm_rx_append(rx, byte);
        return false;
    }
    if (rx->hunting) {
        rx->hunting = false;
        return false;
    }
    if (rx->len == 0)                 /* repeated delimiters: idle fill */
        return false;
    enum ebm_frame_result result = rx_decode(rx, msg);
    rx_restart(rx);
    switch (result) {
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
