/* fwfuzz ITERATIONS SEED: differential fuzzing of the receiver and the MCU state machine.
 *
 * Each iteration throws one of: random bytes, a long run without delimiters, a valid host frame
 * (COMMAND, HELLO, HEARTBEAT, or an MCU -> host type), a valid frame mutated (bit flips,
 * truncation, inserted or deleted bytes, inserted delimiters, duplicated pieces), a timer tick
 * with random input levels and encoder figures, a new input level, or a change of transmit room.
 * The same bytes go to a standalone receiver, to the MCU state machine, and to a reference
 * written here independently from docs/PROTOCOL.md and the shared contract (a Python-style
 * buffer-splitting receiver, bitwise CRC, a model of the MCU's rules with the watchdog counted in
 * time rather than ticks). After every step it checks:
 *   - receiver counters and delivered frames equal the reference's (saturated at 65535);
 *   - the MCU's drive, status bits and counters equal the model's, byte for byte what it sent
 *     (STATE, 0x00 + CONFIG, HEARTBEAT echo + COUNTERS, sequence numbers, drops when full);
 *   - a nonzero drive is the motor of the last valid COMMAND on the wire, with ENABLE set.
 * Built with AddressSanitizer and UBSan: any memory error or undefined behaviour aborts.
 * Exit status 0 and a JSON summary on stdout, or 1 and the first violation on stderr. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ebmfw/mcu.h"
#include "ebmfw/protocol.h"

#define SATURATE(x) ((x) > 0xFFFFu ? 0xFFFFu : (uint16_t)(x))
#define REF_BUFFER 256u                /* longer than any run the generator makes */
#define SINK_CAPACITY 4096u
#define MCU_RESET_EVERY 5000           /* iterations: counters both below and at saturation */

static uint64_t rng_state;

static uint32_t rnd(void)                /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

static uint32_t below(uint32_t n)
{
    return rnd() % n;
}

static bool chance(uint32_t percent)
{
    return below(100) < percent;
}

static long iteration;

static void fail(const char *what)
{
    fprintf(stderr, "fwfuzz: iteration %ld: %s\n", iteration, what);
    exit(1);
}

/* ---- reference framing, from PROTOCOL.md sections 2-4 ---------------------------------------- */

static uint16_t ref_crc(const uint8_t *p, size_t n)
{
    uint16_t crc = 0xFFFF;
    while (n--) {
        crc ^= (uint16_t)(*p++ << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

static int ref_payload_size(uint8_t type)
{
    static const int size[7] = {-1, 16, 4, 4, 16, 4, 16};
    return type < 7 ? size[type] : -1;
}

/* Wire frame (COBS + delimiter) of a body; returns its length. */
static size_t ref_frame(const uint8_t *body, size_t n, uint8_t *out)
{
    size_t code_at = 0, o = 1;
    uint8_t code = 1;
    for (size_t i = 0; i < n; i++) {
        if (body[i] == 0) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
        } else {
            out[o++] = body[i];
            code++;
        }
    }
    out[code_at] = code;
    out[o++] = 0;
    return o;
}

/* Body of type/seq/payload with its CRC; returns its length. */
static size_t ref_body(uint8_t type, uint16_t seq, const uint8_t *payload, uint8_t *body)
{
    int size = ref_payload_size(type);
    body[0] = 1;
    body[1] = type;
    body[2] = (uint8_t)seq;
    body[3] = (uint8_t)(seq >> 8);
    memcpy(body + 4, payload, (size_t)size);
    uint16_t crc = ref_crc(body, 4u + (size_t)size);
    body[4 + size] = (uint8_t)crc;
    body[5 + size] = (uint8_t)(crc >> 8);
    return 6u + (size_t)size;
}

enum ref_result { REF_OK, REF_CRC, REF_MALFORMED };

/* The checks of PROTOCOL.md section 2 in the order of protocol.py's decode_frame. */
static enum ref_result ref_decode(const uint8_t *in, size_t n, uint8_t *body, size_t *len)
{
    size_t i = 0, o = 0;
    if (n > 23)
        return REF_MALFORMED;
    while (i < n) {
        uint8_t code = in[i];
        if (code == 0 || i + code > n)
            return REF_MALFORMED;
        for (uint8_t k = 1; k < code; k++)
            body[o++] = in[i + k];
        i += code;
        if (code < 0xFF && i < n)
            body[o++] = 0;
    }
    if (o < 6)
        return REF_MALFORMED;
    if (ref_crc(body, o - 2) != (body[o - 2] | body[o - 1] << 8))
        return REF_CRC;
    if (body[0] != 1 || ref_payload_size(body[1]) != (int)o - 6)
        return REF_MALFORMED;
    if (body[1] == 2 && ((body[4] == 0x00 && body[5] == 0x80) || (body[6] & 0xFE) || body[7]))
        return REF_MALFORMED;
    *len = o;
    return REF_OK;
}

struct ref_rx {
    uint8_t buf[REF_BUFFER];
    size_t len;
    bool hunting, lost_sync, have_seq;
    uint8_t restart_type;
    uint16_t last_seq;
    uint32_t frames, crc_errors, malformed, oversized, resyncs, drops, sequence_resets;
};

static void ref_rx_init(struct ref_rx *r, uint8_t restart_type)
{
    memset(r, 0, sizeof *r);
    r->hunting = true;
    r->restart_type = restart_type;
}

/* Like protocol.py's FrameDecoder.feed on one chunk: split at delimiters; a piece that leaves more
 * than 23 bytes buffered is oversized and hunting starts. Returns frames delivered (bodies). */
static int ref_rx_feed(struct ref_rx *r, const uint8_t *p, size_t n, uint8_t bodies[][32],
                       size_t *lens)
{
    int frames = 0;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        bool complete = i < n && p[i] == 0;
        if (i < n && !complete)
            continue;
        const uint8_t *piece = p + start;
        size_t size = i - start;
        start = i + 1;
        if (r->hunting) {
            if (complete)
                r->hunting = false;
            continue;
        }
        for (size_t k = 0; k < size && r->len < REF_BUFFER; k++)
            r->buf[r->len++] = piece[k];
        if (!complete) {
            if (r->len > 23) {
                r->oversized++;
                r->lost_sync = true;
                r->len = 0;
                r->hunting = true;
            }
            continue;
        }
        size_t len = r->len;
        r->len = 0;
        if (len > 23) {
            r->oversized++;
            r->lost_sync = true;
            continue;
        }
        if (len == 0)
            continue;
        uint8_t *body = bodies[frames];
        switch (ref_decode(r->buf, len, body, &lens[frames])) {
        case REF_CRC:
            r->crc_errors++;
            r->lost_sync = true;
            continue;
        case REF_MALFORMED:
            r->malformed++;
            r->lost_sync = true;
            continue;
        case REF_OK:
            break;
        }
        r->frames++;
        if (r->lost_sync) {
            r->resyncs++;
            r->lost_sync = false;
        }
        uint16_t seq = (uint16_t)(body[2] | body[3] << 8);
        if (r->have_seq && body[1] != r->restart_type) {
            uint16_t gap = (uint16_t)(seq - r->last_seq - 1);
            if (gap >= 32768)
                r->sequence_resets++;
            else
                r->drops += gap;
        }
        r->have_seq = true;
        r->last_seq = seq;
        frames++;
    }
    return frames;
}

static void check_counters(const struct ebm_rx_counters *c, const struct ref_rx *r,
                           const char *who)
{
    if (c->frames != SATURATE(r->frames) || c->crc_errors != SATURATE(r->crc_errors) ||
        c->malformed != SATURATE(r->malformed) || c->oversized != SATURATE(r->oversized) ||
        c->resyncs != SATURATE(r->resyncs) || c->drops != SATURATE(r->drops) ||
        c->sequence_resets != SATURATE(r->sequence_resets)) {
        fprintf(stderr,
                "%s: frames %u/%" PRIu32 " crc %u/%" PRIu32 " malformed %u/%" PRIu32
                " oversized %u/%" PRIu32 " resyncs %u/%" PRIu32 " drops %u/%" PRIu32
                " resets %u/%" PRIu32 "\n",
                who, c->frames, r->frames, c->crc_errors, r->crc_errors, c->malformed,
                r->malformed, c->oversized, r->oversized, c->resyncs, r->resyncs, c->drops,
                r->drops, c->sequence_resets, r->sequence_resets);
        fail("receiver counters differ from the reference");
    }
}

/* ---- reference MCU, from the contract --------------------------------------------------------- */

#define TICK_US (1000000u / EBM_STATE_RATE_HZ)

struct sink {
    uint8_t bytes[SINK_CAPACITY];
    size_t n;
    size_t room;                      /* bytes it takes before refusing frames */
};

struct model {
    int16_t motor;
    bool enabled, tripped, latched, session;
    uint8_t inputs;
    uint16_t watchdog_ms;
    uint32_t ticks_since_command;
    uint16_t tx_seq;
    uint32_t tx_overflows, watchdog_trips;
    uint16_t cart_errors, pole_errors;
    int16_t last_motor;               /* the last valid COMMAND on the wire */
    bool last_enable;
    struct ref_rx rx;
    struct sink expected;
};

/* What the run covered, over all MCU resets. */
static struct {
    uint64_t commands, hellos, heartbeats, watchdog_trips, overflows;
} tally;

static struct ebm_mcu mcu;
static struct sink actual;
static struct model model;
static struct ebm_rx rx;               /* standalone, no restart type */
static struct ref_rx ref_rx;

static bool sink_send(void *context, const uint8_t *bytes, uint8_t n)
{
    struct sink *s = context;
    if (n > s->room)
        return false;
    if (s->n + n > SINK_CAPACITY)
        fail("sink overflow (test bug)");
    memcpy(s->bytes + s->n, bytes, n);
    s->n += n;
    s->room -= n;
    return true;
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, v);
    put16(p + 2, v >> 16);
}

static void model_send(uint8_t type, const uint8_t *payload, bool lead)
{
    uint8_t body[32], frame[40];
    size_t n = 0;
    if (lead)
        frame[n++] = 0;
    n += ref_frame(body, ref_body(type, model.tx_seq++, payload, body), frame + n);
    if (!sink_send(&model.expected, frame, (uint8_t)n)) {
        model.tx_overflows++;
        tally.overflows++;
    }
}

static void model_disable(void)
{
    model.enabled = false;
    model.motor = 0;
}

static void model_inputs(uint8_t inputs)
{
    model.inputs = inputs & 7u;
    if (inputs & EBM_STATUS_AMP_FAULT) {
        model.latched = true;
        model_disable();
    }
}

static int16_t model_applied(void)
{
    bool left = model.inputs & 1u, right = model.inputs & 2u;
    if ((left && right) || (left && model.motor < 0) || (right && model.motor > 0))
        return 0;
    return model.motor;
}

static uint16_t model_status(void)
{
    return (uint16_t)(model.inputs | (model.tripped ? 0x08 : 0) | (model.enabled ? 0x10 : 0) |
                      (model.latched ? 0x20 : 0));
}

static void model_counters(uint8_t *payload)
{
    const uint32_t value[8] = {model.rx.crc_errors, model.rx.malformed, model.rx.oversized,
                               model.rx.drops,      model.tx_overflows, model.watchdog_trips,
                               model.cart_errors,   model.pole_errors};
    for (int i = 0; i < 8; i++)
        put16(payload + 2 * i, SATURATE(value[i]));
}

static void model_frame(const uint8_t *body)
{
    const uint8_t *p = body + 4;
    bool fault = model.inputs & EBM_STATUS_AMP_FAULT;
    uint8_t payload[16];
    switch (body[1]) {
    case 2: {                         /* COMMAND */
        int16_t motor = (int16_t)(uint16_t)(p[0] | p[1] << 8);
        bool enable = p[2] & 1;
        tally.commands++;
        model.last_motor = motor;
        model.last_enable = enable;
        model.ticks_since_command = 0;
        model.tripped = false;
        if (!enable && !fault)
            model.latched = false;
        if (enable && !model.latched && model.session) {
            model.enabled = true;
            model.motor = motor;
        } else {
            model_disable();
        }
        break;
    }
    case 3: {                         /* HELLO */
        uint16_t ms = (uint16_t)(p[0] | p[1] << 8);
        tally.hellos++;
        model_disable();
        model.session = true;
        if (!fault)
            model.latched = false;
        if (ms)
            model.watchdog_ms = ms < 5 ? 5 : ms > 5000 ? 5000 : ms;
        payload[0] = EBM_FW_MAJOR;
        payload[1] = EBM_FW_MINOR;
        payload[2] = EBM_FW_PATCH;
        payload[3] = 0x08;            /* the reset cause the fuzz MCU is built with */
        put32(payload + 4, EBM_CART_COUNTS_PER_M);
        put32(payload + 8, EBM_POLE_COUNTS_PER_REV);
        put16(payload + 12, EBM_STATE_RATE_HZ);
        put16(payload + 14, model.watchdog_ms);
        model_send(4, payload, true);
        break;
    }
    case 5:                           /* HEARTBEAT */
        tally.heartbeats++;
        model_send(5, p, false);
        model_counters(payload);
        model_send(6, payload, false);
        break;
    default:
        break;
    }
}

static void model_tick(const struct ebm_tick *tick)
{
    model_inputs(tick->inputs);
    model.cart_errors = tick->cart_quadrature_errors;
    model.pole_errors = tick->pole_quadrature_errors;
    model.ticks_since_command++;
    /* More than watchdog_ms certainly passed: the command came after the previous-but-k tick. */
    if (model.enabled &&
        (uint64_t)(model.ticks_since_command - 1) * TICK_US >= model.watchdog_ms * 1000ull) {
        model_disable();
        model.tripped = true;
        model.watchdog_trips++;
        tally.watchdog_trips++;
    }
    uint8_t payload[16];
    put32(payload, (uint32_t)tick->cart_counts);
    put32(payload + 4, (uint32_t)tick->pole_counts);
    put32(payload + 8, tick->timestamp_us);
    put16(payload + 12, model_status());
    put16(payload + 14, (uint16_t)model_applied());
    model_send(1, payload, false);
}

static void reset_all(void)
{
    const struct ebm_config config = ebm_build_config(0x08);
    actual.n = 0;
    actual.room = SIZE_MAX;
    ebm_mcu_init(&mcu, &config, sink_send, &actual);
    memset(&model, 0, sizeof model);
    model.watchdog_ms = EBM_WATCHDOG_MS_DEFAULT;
    model.expected.room = SIZE_MAX;
    ref_rx_init(&model.rx, EBM_HELLO);
    ebm_rx_init(&rx, 0);
    ref_rx_init(&ref_rx, 0);
}

static void check_mcu(void)
{
    struct ebm_drive drive = ebm_mcu_drive(&mcu);
    if (drive.motor != model_applied() || drive.enable != model.enabled)
        fail("drive differs from the model");
    if (drive.motor != 0 && (!model.last_enable || drive.motor != model.last_motor))
        fail("a drive that no valid COMMAND asked for");
    if (!drive.enable && drive.motor != 0)
        fail("drive while disabled");
    if (ebm_mcu_status(&mcu) != model_status())
        fail("status differs from the model");
    check_counters(&mcu.rx.counters, &model.rx, "mcu receiver");
    struct ebm_counters c;
    uint8_t expected[16];
    ebm_mcu_counters(&mcu, &c);
    model_counters(expected);
    for (int i = 0; i < EBM_COUNTER_COUNT; i++)
        if (c.value[i] != (expected[2 * i] | expected[2 * i + 1] << 8))
            fail("MCU counters differ from the model");
    if (actual.n != model.expected.n || memcmp(actual.bytes, model.expected.bytes, actual.n))
        fail("sent bytes differ from the model");
    actual.n = model.expected.n = 0;
}

/* Feeds bytes to everyone, in one chunk or (to vary the reference's chunking) in pieces. */
static void feed(const uint8_t *p, size_t n)
{
    static uint8_t bodies[64][32];
    static size_t lens[64];
    size_t at = 0;
    while (at < n) {
        size_t piece = chance(70) ? n - at : 1 + below((uint32_t)(n - at));
        int expected = ref_rx_feed(&ref_rx, p + at, piece, bodies, lens);
        int got = 0;
        for (size_t i = at; i < at + piece; i++) {
            struct ebm_message msg;
            if (!ebm_rx_byte(&rx, p[i], &msg))
                continue;
            if (got >= expected)
                fail("receiver delivered a frame the reference did not");
            uint8_t wire[EBM_MAX_FRAME], ref_wire[40], body[32];
            memcpy(body, bodies[got], lens[got]);
            if (body[1] == EBM_HELLO) {   /* the reserved half is ignored, not kept */
                body[6] = body[7] = 0;
                ref_body(EBM_HELLO, (uint16_t)(body[2] | body[3] << 8), body + 4, body);
            }
            size_t ref_len = ref_frame(body, lens[got], ref_wire);
            uint8_t len = ebm_encode(&msg, wire);
            if (len != ref_len || memcmp(wire, ref_wire, len))
                fail("delivered frame differs from the reference");
            got++;
        }
        if (got != expected)
            fail("receiver missed a frame the reference delivered");
        check_counters(&rx.counters, &ref_rx, "receiver");

        /* The model takes each frame as it completes (a HEARTBEAT's COUNTERS report the counts
         * of that moment): its receiver is fed up to each delimiter in turn. */
        for (size_t i = at, from = at; i < at + piece; i++) {
            if (p[i] != 0 && i + 1 < at + piece)
                continue;
            int frames = ref_rx_feed(&model.rx, p + from, i + 1 - from, bodies, lens);
            for (int f = 0; f < frames; f++)
                model_frame(bodies[f]);
            from = i + 1;
        }
        ebm_mcu_receive(&mcu, p + at, (uint8_t)piece);
        check_mcu();
        at += piece;
    }
}

/* ---- generator -------------------------------------------------------------------------------- */

static uint16_t host_seq;

static size_t valid_frame(uint8_t *out)
{
    uint8_t payload[16], body[32];
    uint8_t type;
    uint32_t pick = below(100);
    for (int i = 0; i < 16; i++)
        payload[i] = (uint8_t)rnd();
    if (pick < 70) {
        type = EBM_COMMAND;
        int16_t motor = chance(10) ? (chance(50) ? 32767 : -32767) : (int16_t)rnd();
        if (motor == INT16_MIN)
            motor = 0;
        put16(payload, (uint16_t)motor);
        payload[2] = chance(80) ? 1 : 0;
        payload[3] = 0;
    } else if (pick < 80) {
        type = EBM_HELLO;
        uint32_t pick_ms = below(10);
        put16(payload, pick_ms < 3 ? 0 : pick_ms < 6 ? below(20) : pick_ms < 8 ? below(6000) : rnd());
    } else if (pick < 92) {
        type = EBM_HEARTBEAT;
    } else {
        static const uint8_t host_bound[] = {EBM_STATE, EBM_CONFIG, EBM_COUNTERS};
        type = host_bound[below(3)];
    }
    if (chance(3))
        host_seq = (uint16_t)rnd();   /* a jump: drops or a sequence reset */
    else if (chance(1))
        host_seq = (uint16_t)(host_seq + 32766 + below(3));   /* gaps at the reset threshold */
    else if (chance(3))
        host_seq = (uint16_t)(host_seq + below(5));
    return ref_frame(body, ref_body(type, host_seq++, payload, body), out);
}

/* A COMMAND every bit of which the MCU must refuse (bad motor, flags or reserved byte). */
static size_t invalid_command(uint8_t *out)
{
    uint8_t payload[4] = {0x00, 0x80, 0x01, 0x00}, body[32];
    switch (below(3)) {
    case 0:
        break;
    case 1:
        put16(payload, rnd());
        payload[2] = (uint8_t)(1u << (1 + below(7))) | (uint8_t)(rnd() & 1);
        break;
    default:
        put16(payload, rnd());
        payload[3] = (uint8_t)(1 + below(255));
        break;
    }
    return ref_frame(body, ref_body(EBM_COMMAND, host_seq++, payload, body), out);
}

static size_t mutate(uint8_t *p, size_t n)
{
    int edits = 1 + (int)below(3);
    for (int e = 0; e < edits && n > 0; e++) {
        size_t at = below((uint32_t)n);
        switch (below(7)) {
        case 0:                       /* bit flip */
            p[at] ^= (uint8_t)(1u << below(8));
            break;
        case 1:                       /* truncation */
            n = at;
            break;
        case 2:                       /* inserted byte */
            memmove(p + at + 1, p + at, n - at);
            p[at] = (uint8_t)rnd();
            n++;
            break;
        case 3:                       /* inserted delimiter */
            memmove(p + at + 1, p + at, n - at);
            p[at] = 0;
            n++;
            break;
        case 4:                       /* deleted byte */
            memmove(p + at, p + at + 1, n - at - 1);
            n--;
            break;
        case 5:                       /* replaced byte */
            p[at] = (uint8_t)rnd();
            break;
        default:                      /* duplicated piece */
            {
                size_t len = 1 + below((uint32_t)(n - at));
                memmove(p + at + len, p + at, n - at);
                n += len;
            }
            break;
        }
    }
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: fwfuzz ITERATIONS SEED\n");
        return 2;
    }
    long iterations = atol(argv[1]);
    rng_state = strtoull(argv[2], NULL, 0);
    uint64_t bytes = 0, ticks = 0;
    int32_t cart = 0, pole = 0;
    uint32_t t_us = 0;
    uint16_t cart_errors = 0, pole_errors = 0;
    uint8_t inputs = 0;
    uint8_t buf[512];
    reset_all();
    for (iteration = 0; iteration < iterations; iteration++) {
        if (iteration % MCU_RESET_EVERY == 0)
            reset_all();
        size_t n = 0;
        uint32_t pick = below(100);
        if (pick < 12) {              /* random bytes, some delimiters */
            n = below(48);
            for (size_t i = 0; i < n; i++)
                buf[i] = chance(15) ? 0 : (uint8_t)rnd();
        } else if (pick < 16) {       /* a run too long for any frame */
            n = 24 + below(40);
            for (size_t i = 0; i < n; i++)
                buf[i] = (uint8_t)(1 + below(255));
            if (chance(50))
                buf[n++] = 0;
        } else if (pick < 45) {
            n = valid_frame(buf);
        } else if (pick < 50) {
            n = invalid_command(buf);
        } else if (pick < 68) {
            n = mutate(buf, valid_frame(buf));
        } else if (pick < 72) {
            n = 1 + below(3);
            memset(buf, 0, n);
        } else if (pick < 92) {       /* tick */
            cart += (int32_t)below(201) - 100;
            pole += (int32_t)below(41) - 20;
            t_us += TICK_US + below(5);
            if (chance(5))
                cart_errors = (uint16_t)(cart_errors + 1 + below(chance(5) ? 40000 : 3));
            if (chance(5))
                pole_errors = (uint16_t)(pole_errors + 1 + below(3));
            if (chance(10))
                inputs = chance(60) ? 0 : (uint8_t)below(8);
            const struct ebm_tick tick = {cart, pole, t_us, cart_errors, pole_errors, inputs};
            for (uint32_t k = chance(10) ? 1 + below(120) : 1; k > 0; k--) {
                ebm_mcu_tick(&mcu, &tick);
                model_tick(&tick);
                check_mcu();
                ticks++;
            }
            continue;
        } else if (pick < 96) {       /* input levels between ticks */
            inputs = chance(60) ? 0 : (uint8_t)below(8);
            ebm_mcu_inputs(&mcu, inputs);
            model_inputs(inputs);
            check_mcu();
            continue;
        } else {                      /* transmit room: plenty, a little, none */
            size_t room = chance(70) ? SIZE_MAX : below(80);
            actual.room = model.expected.room = room;
            continue;
        }
        feed(buf, n);
        bytes += n;
    }
    printf("{\"iterations\": %ld, \"bytes\": %" PRIu64 ", \"ticks\": %" PRIu64
           ", \"commands\": %" PRIu64 ", \"hellos\": %" PRIu64 ", \"heartbeats\": %" PRIu64
           ", \"watchdog_trips\": %" PRIu64 ", \"tx_overflows\": %" PRIu64 "}\n",
           iterations, bytes, ticks, tally.commands, tally.hellos, tally.heartbeats,
           tally.watchdog_trips, tally.overflows);
    return 0;
}
