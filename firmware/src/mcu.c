/* The MCU state machine (see mcu.h for the rules). */
#include "ebmfw/mcu.h"

#include <string.h>

#include "ebmfw/counter.h"

#define MS_PER_S 1000ul
#define INPUTS (EBM_STATUS_LIMIT_LEFT | EBM_STATUS_LIMIT_RIGHT | EBM_STATUS_AMP_FAULT)

/* Whole ticks that may pass without a COMMAND: ceil(watchdog_ms / tick period). */
static uint16_t watchdog_ticks(const struct ebm_config *config)
{
    uint32_t ms_times_hz = (uint32_t)config->watchdog_ms * config->state_rate_hz;
    return (uint16_t)((ms_times_hz + MS_PER_S - 1) / MS_PER_S);
}

static void disable(struct ebm_mcu *mcu)
{
    mcu->enabled = false;
    mcu->motor = 0;
}

static bool fault_active(const struct ebm_mcu *mcu)
{
    return (mcu->inputs & EBM_STATUS_AMP_FAULT) != 0;
}

/* Numbers msg with the next sequence number and hands it over, after a 0x00 if lead is set. A
 * STATE still due from ebm_mcu_tick_begin() goes first: replies never overtake it. */
static void send(struct ebm_mcu *mcu, struct ebm_message *msg, bool lead)
{
    if (msg->type != EBM_STATE)
        ebm_mcu_tick_end(mcu);
    uint8_t frame[1 + EBM_MAX_FRAME];
    uint8_t n = 0;
    if (lead)
        frame[n++] = EBM_DELIMITER;
    msg->seq = mcu->tx_seq++;
    n = (uint8_t)(n + ebm_encode(msg, frame + n));
    if (!mcu->send(mcu->send_context, frame, n))
        ebm_count(&mcu->tx_overflows);
}

struct ebm_config ebm_build_config(uint8_t reset_cause)
{
    return (struct ebm_config){
        .fw_major = EBM_FW_MAJOR,
        .fw_minor = EBM_FW_MINOR,
        .fw_patch = EBM_FW_PATCH,
        .reset_cause = reset_cause,
        .cart_counts_per_m = EBM_CART_COUNTS_PER_M,
        .pole_counts_per_rev = EBM_POLE_COUNTS_PER_REV,
        .state_rate_hz = EBM_STATE_RATE_HZ,
        .watchdog_ms = EBM_WATCHDOG_MS_DEFAULT,
    };
}

void ebm_mcu_init(struct ebm_mcu *mcu, const struct ebm_config *config, ebm_send_fn send_fn,
                  void *send_context)
{
    memset(mcu, 0, sizeof *mcu);
    mcu->config = *config;
    mcu->watchdog_ticks = watchdog_ticks(config);
    mcu->send = send_fn;
    mcu->send_context = send_context;
    ebm_rx_init(&mcu->rx, EBM_HELLO);
}

static void on_command(struct ebm_mcu *mcu, const struct ebm_command *command)
{
    mcu->ticks_since_command = 0;
    mcu->watchdog_tripped = false;
    if (!command->enable) {
        disable(mcu);
        if (!fault_active(mcu))
            mcu->fault_latched = false;   /* the host's acknowledgement */
    } else if (mcu->fault_latched || !mcu->session) {
        /* Held off by the fault latch, or no session yet: commands a host sent before this MCU
         * (re)started never enable it. */
        disable(mcu);
    } else {
        mcu->enabled = true;
        mcu->motor = command->motor;
    }
}

static void on_hello(struct ebm_mcu *mcu, const struct ebm_hello *hello)
{
    disable(mcu);
    mcu->session = true;
    if (!fault_active(mcu))
        mcu->fault_latched = false;
    if (hello->watchdog_ms != 0) {
        uint16_t ms = hello->watchdog_ms;
        mcu->config.watchdog_ms = ms < EBM_WATCHDOG_MS_MIN   ? EBM_WATCHDOG_MS_MIN
                                  : ms > EBM_WATCHDOG_MS_MAX ? EBM_WATCHDOG_MS_MAX
                                                             : ms;
        mcu->watchdog_ticks = watchdog_ticks(&mcu->config);
    }
    struct ebm_message reply = {.type = EBM_CONFIG, .u.config = mcu->config};
    send(mcu, &reply, true);
}

/* The echo, then the COUNTERS as they were when the HEARTBEAT came, but for the transmit
 * overflows: those as after the echo (and a due STATE before it), as when the reply was sent at
 * once. */
static void send_heartbeat_reply(struct ebm_mcu *mcu)
{
    mcu->reply_due = false;
    mcu->reply_waited = false;
    struct ebm_message echo = {.type = EBM_HEARTBEAT, .u.heartbeat = mcu->reply_heartbeat};
    send(mcu, &echo, false);
    struct ebm_message counters = {.type = EBM_COUNTERS, .u.counters = mcu->reply_counters};
    counters.u.counters.value[EBM_COUNTER_TX_OVERFLOWS] = mcu->tx_overflows;
    send(mcu, &counters, false);
}

static void on_heartbeat(struct ebm_mcu *mcu, const struct ebm_heartbeat *heartbeat)
{
    if (mcu->reply_due)               /* an earlier one still waits: it goes first */
        send_heartbeat_reply(mcu);
    mcu->reply_heartbeat = *heartbeat;
    ebm_mcu_counters(mcu, &mcu->reply_counters);
    mcu->reply_due = true;
    if (!mcu->defer_replies)
        send_heartbeat_reply(mcu);
}

/* A byte that is not simply appended to the frame being received: a delimiter (which may complete
 * a message, acted on here) or a byte the receiver discards or counts. Out of line: its frame of
 * registers and stack (a message, the replies) stays off the path of ordinary bytes. */
static void __attribute__((noinline)) receive_slow(struct ebm_mcu *mcu, uint8_t byte)
{
    struct ebm_message msg;
    if (!ebm_rx_byte_slow(&mcu->rx, byte, &msg))
        return;
    switch (msg.type) {
    case EBM_COMMAND:
        on_command(mcu, &msg.u.command);
        break;
    case EBM_HELLO:
        on_hello(mcu, &msg.u.hello);
        break;
    case EBM_HEARTBEAT:
        on_heartbeat(mcu, &msg.u.heartbeat);
        break;
    default:                          /* valid, but not a host -> MCU message */
        break;
    }
}

void ebm_mcu_receive(struct ebm_mcu *mcu, const uint8_t *bytes, uint8_t n)
{
    struct ebm_rx *rx = &mcu->rx;
    for (const uint8_t *end = bytes + n; bytes != end; bytes++) {
        uint8_t byte = *bytes;
        if (ebm_rx_appends(rx, byte))     /* as ebm_rx_byte() does for most bytes */
            ebm_rx_append(rx, byte);
        else
            receive_slow(mcu, byte);
    }
}

void ebm_mcu_inputs(struct ebm_mcu *mcu, uint8_t inputs)
{
    mcu->inputs = inputs & INPUTS;
    if (fault_active(mcu)) {
        mcu->fault_latched = true;
        disable(mcu);
    }
}

void ebm_mcu_tick_begin(struct ebm_mcu *mcu, const struct ebm_tick *tick)
{
    ebm_mcu_inputs(mcu, tick->inputs);
    mcu->cart_quadrature_errors = tick->cart_quadrature_errors;
    mcu->pole_quadrature_errors = tick->pole_quadrature_errors;
    if (mcu->ticks_since_command < UINT16_MAX)
        mcu->ticks_since_command++;
    if (mcu->enabled && mcu->ticks_since_command > mcu->watchdog_ticks) {
        disable(mcu);
        mcu->watchdog_tripped = true;
        ebm_count(&mcu->watchdog_trips);
    }
    mcu->state = (struct ebm_state){
        .cart_counts = tick->cart_counts,
        .pole_counts = tick->pole_counts,
        .timestamp_us = tick->timestamp_us,
        .status = ebm_mcu_status(mcu),
        .applied_command = ebm_mcu_drive(mcu).motor,
    };
    mcu->state_due = true;
    mcu->reply_waited = mcu->reply_due;
}

void ebm_mcu_tick_end(struct ebm_mcu *mcu)
{
    if (!mcu->state_due)
        return;
    mcu->state_due = false;
    struct ebm_message state = {.type = EBM_STATE, .u.state = mcu->state};
    send(mcu, &state, false);
}

void ebm_mcu_send_due(struct ebm_mcu *mcu)
{
    ebm_mcu_tick_end(mcu);
    if (mcu->reply_due && (mcu->rx.len == 0 || mcu->reply_waited))
        send_heartbeat_reply(mcu);
}

void ebm_mcu_tick(struct ebm_mcu *mcu, const struct ebm_tick *tick)
{
    ebm_mcu_tick_begin(mcu, tick);
    ebm_mcu_tick_end(mcu);
}

struct ebm_drive ebm_mcu_drive(const struct ebm_mcu *mcu)
{
    /* Both switches closed (a wiring fault) block both directions: no drive at all. */
    int16_t motor = mcu->motor;
    if ((motor < 0 && (mcu->inputs & EBM_STATUS_LIMIT_LEFT)) ||
        (motor > 0 && (mcu->inputs & EBM_STATUS_LIMIT_RIGHT)))
        motor = 0;
    return (struct ebm_drive){.motor = motor, .enable = mcu->enabled};
}

uint16_t ebm_mcu_status(const struct ebm_mcu *mcu)
{
    uint16_t status = mcu->inputs;
    if (mcu->watchdog_tripped)
        status |= EBM_STATUS_WATCHDOG;
    if (mcu->enabled)
        status |= EBM_STATUS_ENABLED;
    if (mcu->fault_latched)
        status |= EBM_STATUS_FAULT_LATCHED;
    return status;
}

void ebm_mcu_counters(const struct ebm_mcu *mcu, struct ebm_counters *counters)
{
    uint16_t *value = counters->value;
    value[EBM_COUNTER_RX_CRC_ERRORS] = mcu->rx.counters.crc_errors;
    value[EBM_COUNTER_RX_MALFORMED] = mcu->rx.counters.malformed;
    value[EBM_COUNTER_RX_OVERSIZED] = mcu->rx.counters.oversized;
    value[EBM_COUNTER_RX_DROPS] = mcu->rx.counters.drops;
    value[EBM_COUNTER_TX_OVERFLOWS] = mcu->tx_overflows;
    value[EBM_COUNTER_WATCHDOG_TRIPS] = mcu->watchdog_trips;
    value[EBM_COUNTER_CART_QUADRATURE_ERRORS] = mcu->cart_quadrature_errors;
    value[EBM_COUNTER_POLE_QUADRATURE_ERRORS] = mcu->pole_quadrature_errors;
}
