/* fwcodec: the firmware's portable code behind a line protocol, for the host tests
 * (test/test_firmware_host.py). One command per line on stdin, one JSON object per line on stdout.
 * Numbers are decimal or 0x-hex; HEX is a string of byte pairs ("" = none: write "-").
 *
 *   crc HEX                         {"crc": N}
 *   encode STATE SEQ CART POLE T_US STATUS APPLIED
 *   encode COMMAND SEQ MOTOR ENABLE
 *   encode HELLO SEQ WATCHDOG_MS
 *   encode CONFIG SEQ MAJOR MINOR PATCH RESET_CAUSE CPM CPR RATE WATCHDOG_MS
 *   encode HEARTBEAT SEQ TOKEN
 *   encode COUNTERS SEQ C0 .. C7    {"wire": HEX} (frame with its delimiter)
 *   decode HEX                      the bytes between two delimiters (a trailing 00 is dropped):
 *                                   {"result": "ok", "message": {...}} or {"result": "crc_error"}
 *                                   or {"result": "malformed"}
 *   rx reset [RESTART_TYPE]         a new streaming receiver (the one at start has none)
 *   rx feed HEX                     {"frames": [{...}, ...], "counters": {...}}
 *   mcu reset [RESET_CAUSE]         a new MCU state machine with the firmware's CONFIG
 *   mcu feed HEX                    received bytes
 *   mcu inputs BITS                 limit/fault levels (STATE status bits 0-2)
 *   mcu tick CART POLE T_US INPUTS CART_ERRORS POLE_ERRORS
 *   mcu tx full|free                the transmit buffer refuses / takes frames
 *   mcu show                        every mcu command answers {"sent": HEX (bytes it sent),
 *                                   "motor": N, "enable": B, "status": N, "counters": {...}}
 *   quad reset AB                   a new x4 decoder with channels at AB (0..3)
 *   quad steps DIGITS               channel states in order, e.g. 0231: {"count": N, "errors": N}
 * A line it cannot parse: {"error": "..."}. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ebmfw/mcu.h"
#include "ebmfw/protocol.h"
#include "ebmfw/quadrature.h"

#define MAX_FIELDS 12
#define SENT_CAPACITY 65536u

static const char *const TYPE_NAMES[] = {
    [EBM_STATE] = "STATE",         [EBM_COMMAND] = "COMMAND",     [EBM_HELLO] = "HELLO",
    [EBM_CONFIG] = "CONFIG",       [EBM_HEARTBEAT] = "HEARTBEAT", [EBM_COUNTERS] = "COUNTERS",
};
#define TYPE_COUNT (sizeof TYPE_NAMES / sizeof TYPE_NAMES[0])

static const char *const COUNTER_NAMES[EBM_COUNTER_COUNT] = {
    "rx_crc_errors", "rx_malformed",  "rx_oversized",           "rx_drops",
    "tx_overflows",  "watchdog_trips", "cart_quadrature_errors", "pole_quadrature_errors",
};

/* What the MCU sends, collected until the next answer. */
struct sink {
    uint8_t bytes[SENT_CAPACITY];
    size_t n;
    bool full;
};

static struct ebm_rx rx;
static struct ebm_mcu mcu;
static struct sink sink;
static struct ebm_quadrature quad;

static bool sink_send(void *context, const uint8_t *bytes, uint8_t n)
{
    struct sink *s = context;
    if (s->full || s->n + n > sizeof s->bytes)
        return false;
    memcpy(s->bytes + s->n, bytes, n);
    s->n += n;
    return true;
}

static void mcu_reset(uint8_t reset_cause)
{
    const struct ebm_config config = ebm_build_config(reset_cause);
    sink.n = 0;
    sink.full = false;
    ebm_mcu_init(&mcu, &config, sink_send, &sink);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parses HEX into a malloc'd buffer; "-" is empty. NULL on bad input. */
static uint8_t *parse_hex(const char *hex, size_t *n)
{
    if (strcmp(hex, "-") == 0)
        hex = "";
    size_t len = strlen(hex);
    if (len % 2)
        return NULL;
    uint8_t *out = malloc(len / 2 + 1);
    for (size_t i = 0; i < len / 2; i++) {
        int high = hex_digit(hex[2 * i]);
        int low = hex_digit(hex[2 * i + 1]);
        if (high < 0 || low < 0) {
            free(out);
            return NULL;
        }
        out[i] = (uint8_t)(high << 4 | low);
    }
    *n = len / 2;
    return out;
}

static void print_hex(const uint8_t *bytes, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++)
        printf("%02x", bytes[i]);
    putchar('"');
}

static bool parse_number(const char *text, long long *value)
{
    char *end;
    *value = strtoll(text, &end, 0);
    return *text != 0 && *end == 0;
}

static bool parse_numbers(char **field, int n, long long *value)
{
    for (int i = 0; i < n; i++)
        if (!parse_number(field[i], &value[i]))
            return false;
    return true;
}

static int type_by_name(const char *name)
{
    for (unsigned t = 0; t < TYPE_COUNT; t++)
        if (TYPE_NAMES[t] && strcmp(TYPE_NAMES[t], name) == 0)
            return (int)t;
    return -1;
}

static void print_message(const struct ebm_message *m)
{
    printf("{\"type\": \"%s\", \"seq\": %u", TYPE_NAMES[m->type], m->seq);
    switch (m->type) {
    case EBM_STATE:
        printf(", \"cart_counts\": %" PRId32 ", \"pole_counts\": %" PRId32
               ", \"timestamp_us\": %" PRIu32 ", \"status\": %u, \"applied_command\": %d",
               m->u.state.cart_counts, m->u.state.pole_counts, m->u.state.timestamp_us,
               m->u.state.status, m->u.state.applied_command);
        break;
    case EBM_COMMAND:
        printf(", \"motor\": %d, \"enable\": %s", m->u.command.motor,
               m->u.command.enable ? "true" : "false");
        break;
    case EBM_HELLO:
        printf(", \"watchdog_ms\": %u", m->u.hello.watchdog_ms);
        break;
    case EBM_CONFIG:
        printf(", \"fw_major\": %u, \"fw_minor\": %u, \"fw_patch\": %u, \"reset_cause\": %u"
               ", \"cart_counts_per_m\": %" PRIu32 ", \"pole_counts_per_rev\": %" PRIu32
               ", \"state_rate_hz\": %u, \"watchdog_ms\": %u",
               m->u.config.fw_major, m->u.config.fw_minor, m->u.config.fw_patch,
               m->u.config.reset_cause, m->u.config.cart_counts_per_m,
               m->u.config.pole_counts_per_rev, m->u.config.state_rate_hz,
               m->u.config.watchdog_ms);
        break;
    case EBM_HEARTBEAT:
        printf(", \"token\": %" PRIu32, m->u.heartbeat.token);
        break;
    case EBM_COUNTERS:
        for (unsigned i = 0; i < EBM_COUNTER_COUNT; i++)
            printf(", \"%s\": %u", COUNTER_NAMES[i], m->u.counters.value[i]);
        break;
    default:
        break;
    }
    putchar('}');
}

static void print_rx_counters(const struct ebm_rx_counters *c)
{
    printf("{\"frames\": %u, \"crc_errors\": %u, \"malformed\": %u, \"oversized\": %u, "
           "\"resyncs\": %u, \"drops\": %u, \"sequence_resets\": %u}",
           c->frames, c->crc_errors, c->malformed, c->oversized, c->resyncs, c->drops,
           c->sequence_resets);
}

static const char *encode(char **field, int n)
{
    if (n < 2)
        return "encode TYPE SEQ ...";
    int type = type_by_name(field[0]);
    static const int FIELD_COUNT[TYPE_COUNT] = {
        [EBM_STATE] = 5,  [EBM_COMMAND] = 2,   [EBM_HELLO] = 1,
        [EBM_CONFIG] = 8, [EBM_HEARTBEAT] = 1, [EBM_COUNTERS] = EBM_COUNTER_COUNT,
    };
    if (type < 0)
        return "unknown message type";
    if (n != 2 + FIELD_COUNT[type])
        return "wrong number of fields";
    long long v[MAX_FIELDS];
    if (!parse_numbers(field + 1, n - 1, v))
        return "bad number";
    struct ebm_message m = {.type = (uint8_t)type, .seq = (uint16_t)v[0]};
    const long long *f = v + 1;
    switch (type) {
    case EBM_STATE:
        m.u.state = (struct ebm_state){(int32_t)f[0], (int32_t)f[1], (uint32_t)f[2],
                                       (uint16_t)f[3], (int16_t)f[4]};
        break;
    case EBM_COMMAND:
        m.u.command = (struct ebm_command){(int16_t)f[0], f[1] != 0};
        break;
    case EBM_HELLO:
        m.u.hello.watchdog_ms = (uint16_t)f[0];
        break;
    case EBM_CONFIG:
        m.u.config = (struct ebm_config){(uint8_t)f[0], (uint8_t)f[1], (uint8_t)f[2],
                                         (uint8_t)f[3], (uint32_t)f[4], (uint32_t)f[5],
                                         (uint16_t)f[6], (uint16_t)f[7]};
        break;
    case EBM_HEARTBEAT:
        m.u.heartbeat.token = (uint32_t)f[0];
        break;
    default:
        for (int i = 0; i < EBM_COUNTER_COUNT; i++)
            m.u.counters.value[i] = (uint16_t)f[i];
        break;
    }
    uint8_t wire[EBM_MAX_FRAME];
    uint8_t len = ebm_encode(&m, wire);
    printf("{\"wire\": ");
    print_hex(wire, len);
    printf("}\n");
    return NULL;
}

static void decode(uint8_t *bytes, size_t n)
{
    if (n > 0 && bytes[n - 1] == EBM_DELIMITER)
        n--;
    struct ebm_message m;
    switch (ebm_decode(bytes, n, &m)) {
    case EBM_FRAME_OK:
        printf("{\"result\": \"ok\", \"message\": ");
        print_message(&m);
        printf("}\n");
        break;
    case EBM_FRAME_CRC_ERROR:
        printf("{\"result\": \"crc_error\"}\n");
        break;
    default:
        printf("{\"result\": \"malformed\"}\n");
        break;
    }
}

static void rx_feed(const uint8_t *bytes, size_t n)
{
    printf("{\"frames\": [");
    const char *separator = "";
    for (size_t i = 0; i < n; i++) {
        struct ebm_message m;
        if (ebm_rx_byte(&rx, bytes[i], &m)) {
            printf("%s", separator);
            print_message(&m);
            separator = ", ";
        }
    }
    printf("], \"counters\": ");
    print_rx_counters(&rx.counters);
    printf("}\n");
}

static void mcu_show(void)
{
    struct ebm_drive drive = ebm_mcu_drive(&mcu);
    struct ebm_counters counters;
    ebm_mcu_counters(&mcu, &counters);
    printf("{\"sent\": ");
    print_hex(sink.bytes, sink.n);
    sink.n = 0;
    printf(", \"motor\": %d, \"enable\": %s, \"status\": %u, \"counters\": {", drive.motor,
           drive.enable ? "true" : "false", ebm_mcu_status(&mcu));
    for (unsigned i = 0; i < EBM_COUNTER_COUNT; i++)
        printf("%s\"%s\": %u", i ? ", " : "", COUNTER_NAMES[i], counters.value[i]);
    printf("}}\n");
}

static const char *mcu_command(char **field, int n)
{
    static const char usage[] =
        "mcu reset [CAUSE] | feed HEX | inputs BITS | tick C P T IN CE PE | tx full|free | show";
    long long v[6];
    const char *verb = n > 0 ? field[0] : "";
    bool numeric = strcmp(verb, "reset") == 0 || strcmp(verb, "inputs") == 0 ||
                   strcmp(verb, "tick") == 0;
    if (numeric && (n > 7 || !parse_numbers(field + 1, n - 1, v)))
        return "bad number";
    if (strcmp(verb, "reset") == 0 && n <= 2) {
        mcu_reset(n == 2 ? (uint8_t)v[0] : 0);
    } else if (strcmp(verb, "feed") == 0 && n == 2) {
        size_t len;
        uint8_t *bytes = parse_hex(field[1], &len);
        if (!bytes)
            return "bad hex";
        for (size_t i = 0; i < len; i += UINT8_MAX) {
            size_t chunk = len - i < UINT8_MAX ? len - i : UINT8_MAX;
            ebm_mcu_receive(&mcu, bytes + i, (uint8_t)chunk);
        }
        free(bytes);
    } else if (strcmp(verb, "inputs") == 0 && n == 2) {
        ebm_mcu_inputs(&mcu, (uint8_t)v[0]);
    } else if (strcmp(verb, "tick") == 0 && n == 7) {
        const struct ebm_tick tick = {
            .cart_counts = (int32_t)v[0],
            .pole_counts = (int32_t)v[1],
            .timestamp_us = (uint32_t)v[2],
            .inputs = (uint8_t)v[3],
            .cart_quadrature_errors = (uint16_t)v[4],
            .pole_quadrature_errors = (uint16_t)v[5],
        };
        ebm_mcu_tick(&mcu, &tick);
    } else if (strcmp(verb, "tx") == 0 && n == 2 &&
               (strcmp(field[1], "full") == 0 || strcmp(field[1], "free") == 0)) {
        sink.full = strcmp(field[1], "full") == 0;
    } else if (strcmp(verb, "show") != 0 || n != 1) {
        return usage;
    }
    mcu_show();
    return NULL;
}

static const char *quad_command(char **field, int n)
{
    if (n == 2 && strcmp(field[0], "reset") == 0) {
        long long ab;
        if (!parse_number(field[1], &ab) || ab < 0 || ab > 3)
            return "quad reset AB (0..3)";
        ebm_quadrature_init(&quad, (uint8_t)ab);
    } else if (n == 2 && strcmp(field[0], "steps") == 0) {
        for (const char *c = field[1]; *c; c++) {
            if (*c < '0' || *c > '3')
                return "steps are digits 0..3";
            ebm_quadrature_update(&quad, (uint8_t)(*c - '0'));
            ebm_quadrature_count(&quad);      /* as each tick does: pending stays small */
        }
    } else {
        return "quad reset AB | quad steps DIGITS";
    }
    printf("{\"count\": %" PRId32 ", \"errors\": %u}\n", ebm_quadrature_count(&quad),
           quad.errors);
    return NULL;
}

static const char *run_line(char *line)
{
    char *field[MAX_FIELDS + 2];
    int n = 0;
    for (char *token = strtok(line, " \t\r\n"); token; token = strtok(NULL, " \t\r\n")) {
        if (n == MAX_FIELDS + 2)
            return "too many fields";
        field[n++] = token;
    }
    if (n == 0)
        return "empty line";
    if (strcmp(field[0], "encode") == 0)
        return encode(field + 1, n - 1);
    if (strcmp(field[0], "mcu") == 0)
        return mcu_command(field + 1, n - 1);
    if (strcmp(field[0], "quad") == 0)
        return quad_command(field + 1, n - 1);
    if (strcmp(field[0], "rx") == 0 && n >= 2 && strcmp(field[1], "reset") == 0 && n <= 3) {
        long long restart = 0;
        if (n == 3 && !parse_number(field[2], &restart))
            return "bad number";
        ebm_rx_init(&rx, (uint8_t)restart);
        printf("{\"ok\": true}\n");
        return NULL;
    }
    bool takes_hex = strcmp(field[0], "crc") == 0 || strcmp(field[0], "decode") == 0 ||
                     (strcmp(field[0], "rx") == 0 && n == 3 && strcmp(field[1], "feed") == 0);
    if (!takes_hex || n != (strcmp(field[0], "rx") == 0 ? 3 : 2))
        return "unknown command";
    size_t len;
    uint8_t *bytes = parse_hex(field[n - 1], &len);
    if (!bytes)
        return "bad hex";
    if (strcmp(field[0], "crc") == 0)
        printf("{\"crc\": %u}\n", ebm_crc16(bytes, len));
    else if (strcmp(field[0], "decode") == 0)
        decode(bytes, len);
    else
        rx_feed(bytes, len);
    free(bytes);
    return NULL;
}

int main(void)
{
    char *line = NULL;
    size_t capacity = 0;
    ebm_rx_init(&rx, 0);
    mcu_reset(0);
    ebm_quadrature_init(&quad, 0);
    while (getline(&line, &capacity, stdin) >= 0) {
        const char *error = run_line(line);
        if (error)
            printf("{\"error\": \"%s\"}\n", error);
        fflush(stdout);
    }
    free(line);
    return 0;
}
