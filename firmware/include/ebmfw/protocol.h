/* The rig wire protocol, version 1 (docs/PROTOCOL.md): COBS framing with a CRC-16/CCITT-FALSE,
 * fixed little-endian messages, and a streaming receiver that turns any byte stream into validated
 * messages plus the receiver counters of PROTOCOL.md section 5.
 *
 * Portable C: no allocation, no hardware; the same code runs on the MCU and in the host tests. */
#ifndef EBMFW_PROTOCOL_H
#define EBMFW_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EBM_PROTOCOL_VERSION 1u
#define EBM_DELIMITER 0x00u
#define EBM_HEADER_SIZE 4u                  /* version, type, u16 seq */
#define EBM_CRC_SIZE 2u
#define EBM_MAX_PAYLOAD 16u
#define EBM_MAX_BODY (EBM_HEADER_SIZE + EBM_MAX_PAYLOAD + EBM_CRC_SIZE)
#define EBM_MAX_ENCODED (EBM_MAX_BODY + 1u) /* COBS adds one code byte per 254 body bytes */
#define EBM_MAX_FRAME (EBM_MAX_ENCODED + 1u) /* with the delimiter */
#define EBM_SEQ_RESET_GAP 32768u            /* a sequence jump this large is a restart */
#define EBM_COMMAND_FULL_SCALE 32767        /* |motor| for 100 % duty; -32768 is invalid */
#define EBM_COMMAND_ENABLE 0x01u            /* COMMAND flags bit 0; the others must be 0 */
#define EBM_COBS_MAX_CODE 0xFFu             /* a COBS code byte covers at most 254 data bytes */

enum ebm_type {
    EBM_STATE = 0x01,
    EBM_COMMAND = 0x02,
    EBM_HELLO = 0x03,
    EBM_CONFIG = 0x04,
    EBM_HEARTBEAT = 0x05,
    EBM_COUNTERS = 0x06,
};

/* STATE status bits. The limit and fault bits double as the MCU's input bits (struct ebm_tick). */
enum ebm_status {
    EBM_STATUS_LIMIT_LEFT = 0x0001,   /* switch at the end a negative motor drives towards */
    EBM_STATUS_LIMIT_RIGHT = 0x0002,  /* switch at the end a positive motor drives towards */
    EBM_STATUS_AMP_FAULT = 0x0004,    /* the amplifier's fault input is active */
    EBM_STATUS_WATCHDOG = 0x0008,     /* the command watchdog tripped since the last COMMAND */
    EBM_STATUS_ENABLED = 0x0010,      /* the amplifier is enabled */
    EBM_STATUS_FAULT_LATCHED = 0x0020, /* a past fault holds the amplifier off until acknowledged */
};

/* COUNTERS payload order. */
enum ebm_counter {
    EBM_COUNTER_RX_CRC_ERRORS,
    EBM_COUNTER_RX_MALFORMED,
    EBM_COUNTER_RX_OVERSIZED,
    EBM_COUNTER_RX_DROPS,
    EBM_COUNTER_TX_OVERFLOWS,
    EBM_COUNTER_WATCHDOG_TRIPS,
    EBM_COUNTER_CART_QUADRATURE_ERRORS,
    EBM_COUNTER_POLE_QUADRATURE_ERRORS,
    EBM_COUNTER_COUNT
};

struct ebm_state {
    int32_t cart_counts;
    int32_t pole_counts;
    uint32_t timestamp_us;
    uint16_t status;
    int16_t applied_command;
};

/* A COMMAND as decoded: only valid ones exist (reserved bits and -32768 are rejected). */
struct ebm_command {
    int16_t motor;
    bool enable;
};

struct ebm_hello {
    uint16_t watchdog_ms;             /* 0 = keep the current value */
};

struct ebm_config {
    uint8_t fw_major;
    uint8_t fw_minor;
    uint8_t fw_patch;
    uint8_t reset_cause;              /* AVR MCUSR bits: 1 power-on, 2 reset pin, 4 brown-out, 8 wdt */
    uint32_t cart_counts_per_m;
    uint32_t pole_counts_per_rev;
    uint16_t state_rate_hz;
    uint16_t watchdog_ms;
};

struct ebm_heartbeat {
    uint32_t token;
};

struct ebm_counters {
    uint16_t value[EBM_COUNTER_COUNT];
};

struct ebm_message {
    uint8_t type;                     /* enum ebm_type */
    uint16_t seq;
    union {
        struct ebm_state state;
        struct ebm_command command;
        struct ebm_hello hello;
        struct ebm_config config;
        struct ebm_heartbeat heartbeat;
        struct ebm_counters counters;
    } u;
};

enum ebm_frame_result {
    EBM_FRAME_OK,
    EBM_FRAME_CRC_ERROR,              /* COBS fine, CRC mismatch */
    EBM_FRAME_MALFORMED,              /* bad COBS, length, version, type or reserved bits */
};

/* CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR. */
uint16_t ebm_crc16(const uint8_t *data, size_t n);

/* The wire frame of msg: COBS(header | payload | crc) followed by the 0x00 delimiter. Returns its
 * length (at most EBM_MAX_FRAME); 0 for an unknown type. */
uint8_t ebm_encode(const struct ebm_message *msg, uint8_t out[EBM_MAX_FRAME]);

/* Validates and decodes the n bytes between two delimiters (decoded in place: buf is clobbered). */
enum ebm_frame_result ebm_decode(uint8_t *buf, size_t n, struct ebm_message *msg);

/* PROTOCOL.md section 5 "Receiver counters", each saturating at 65535. */
struct ebm_rx_counters {
    uint16_t frames;                  /* valid frames delivered */
    uint16_t crc_errors;
    uint16_t malformed;
    uint16_t oversized;               /* runs of more than EBM_MAX_ENCODED bytes without 0x00 */
    uint16_t resyncs;                 /* valid frames that ended a run of bad input */
    uint16_t drops;                   /* frames missing by sequence number */
    uint16_t sequence_resets;         /* sequence jumps of EBM_SEQ_RESET_GAP or more */
};

/* Streaming receiver. It starts by discarding everything up to the first 0x00 (it may have started
 * listening mid-frame). A valid frame of restart_type starts a new sender sequence: the MCU passes
 * EBM_HELLO (a reopened host restarts at 0, which is neither a loss nor a reset), 0 for none. */
struct ebm_rx {
    /* The frame is COBS-decoded and its CRC computed as its bytes come in (the work falls between
     * bytes, not after the delimiter): buf holds the decoded bytes, the CRC covers all but the last
     * two of them (the frame's own CRC, if this is the end). */
    uint8_t buf[EBM_MAX_ENCODED];
    uint8_t len;                      /* encoded bytes received */
    uint8_t decoded;                  /* bytes in buf */
    uint8_t code_at;                  /* where the next COBS code byte is due (len counts; 0xFF:
                                         past any frame's end) */
    uint8_t code;                     /* the last code byte */
    uint8_t crc_hi, crc_lo;           /* CRC-16 of buf[0 .. decoded - 2) */
    bool hunting;                     /* discarding up to the next delimiter */
    bool lost_sync;                   /* a bad frame since the last good one */
    bool have_seq;
    uint8_t restart_type;
    uint16_t last_seq;
    struct ebm_rx_counters counters;
};

void ebm_rx_init(struct ebm_rx *rx, uint8_t restart_type);

/* ebm_rx_byte() for a delimiter, a byte while hunting, or one that makes the run too long. */
bool ebm_rx_byte_slow(struct ebm_rx *rx, uint8_t byte, struct ebm_message *msg);

/* One byte into a CRC-16/CCITT-FALSE held as two bytes (init 0xFF, 0xFF): the byte-wise form of
 * the bitwise poly-0x1021 shift register, no table,
 *     x = (crc >> 8) ^ byte;  x ^= x >> 4;
 *     crc = (crc << 8) ^ (x << 12) ^ (x << 5) ^ x,
 * written on the two bytes of crc, so that an 8-bit MCU shifts bytes, not 16-bit words (about
 * 20 cycles a byte on an AVR instead of 50). */
static inline __attribute__((always_inline)) void ebm_crc_byte(uint8_t *hi, uint8_t *lo,
                                                             uint8_t byte)
{
    uint8_t x = (uint8_t)(*hi ^ byte);
    x ^= (uint8_t)(x >> 4);
    *hi = (uint8_t)(*lo ^ (uint8_t)(x << 4) ^ (uint8_t)(x >> 3));
    *lo = (uint8_t)((uint8_t)(x << 5) ^ x);
}

/* True if ebm_rx_byte() would only add byte to the frame being received (most bytes): then
 * ebm_rx_append() is all it does. */
static inline bool ebm_rx_appends(const struct ebm_rx *rx, uint8_t byte)
{
    return byte != EBM_DELIMITER && !rx->hunting && rx->len < EBM_MAX_ENCODED;
}

/* A decoded byte into the frame; the one two places back joins the CRC (the last two are the
 * frame's CRC if the delimiter comes next). */
static inline __attribute__((always_inline)) void ebm_rx_decoded(struct ebm_rx *rx, uint8_t byte)
{
    uint8_t n = rx->decoded;
    if (n >= EBM_CRC_SIZE)
        ebm_crc_byte(&rx->crc_hi, &rx->crc_lo, rx->buf[n - EBM_CRC_SIZE]);
    rx->buf[n] = byte;
    rx->decoded = (uint8_t)(n + 1u);
}

/* Adds a byte to the frame being received (if ebm_rx_appends()): COBS decoding as in ebm_decode(),
 * a byte at a time (bytes are never 0x00 here), so that a delimiter leaves only the final checks
 * (ebm_rx_byte_slow). A code byte where one is due, preceded by the 0x00 that ends the previous
 * group unless that group was a full one (code 0xFF); data bytes otherwise. The encoding was valid
 * iff the last group ends exactly at the delimiter. Inline: it runs for every byte received. */
static inline __attribute__((always_inline)) void ebm_rx_append(struct ebm_rx *rx, uint8_t byte)
{
    uint8_t len = rx->len;
    if (len == rx->code_at) {
        if (rx->code < EBM_COBS_MAX_CODE)
            ebm_rx_decoded(rx, 0);
        rx->code = byte;
        rx->code_at = byte < 0xFFu - len ? (uint8_t)(len + byte) : 0xFFu;
    } else {
        ebm_rx_decoded(rx, byte);
    }
    rx->len = (uint8_t)(len + 1u);
}

/* Feeds one byte; true when it completed a valid frame, which is then in *msg. */
static inline bool ebm_rx_byte(struct ebm_rx *rx, uint8_t byte, struct ebm_message *msg)
{
    if (ebm_rx_appends(rx, byte)) {
        ebm_rx_append(rx, byte);
        return false;
    }
    return ebm_rx_byte_slow(rx, byte, msg);
}

#endif
