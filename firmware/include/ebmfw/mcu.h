/* The MCU's behaviour (docs/PROTOCOL.md section 5 and the shared contract) as a pure state
 * machine: bytes, input levels and timer ticks in; frames to send and the motor drive out.
 *
 * - HELLO: the command goes to 0, the amplifier off, the watchdog request is clamped into
 *   [EBM_WATCHDOG_MS_MIN, EBM_WATCHDOG_MS_MAX] (0 keeps the current value), the fault latch clears
 *   if the fault input is inactive; the reply is 0x00 + CONFIG.
 * - HEARTBEAT: echoed with the same token, then one COUNTERS frame.
 * - COMMAND (valid ones only): feeds the command watchdog and clears WATCHDOG. ENABLE = 1 enables
 *   the amplifier with that motor value unless the fault latch holds or no HELLO has arrived
 *   since start-up (a host always opens a session first); ENABLE = 0 disables it and
 *   ignores the motor value, and acknowledges the fault latch if the fault input is inactive.
 * - Command watchdog, counted in ticks: while enabled, it trips at the first tick at which more
 *   than watchdog_ms have certainly passed since the last valid COMMAND: the k-th tick after it,
 *   k = ceil(watchdog_ms / tick period) + 1 (51 for 100 ms at 500 Hz).
 * - Fault input active: AMP_FAULT, and the amplifier goes off with the fault latch set.
 * - Limit switches: a closed LEFT switch blocks negative drive, RIGHT positive, both any drive.
 * - Each tick sends one STATE of the counts and timestamp latched together by the tick interrupt.
 *
 * Frames leave through a send function that either takes a whole frame or refuses it (transmit
 * buffer full); a refused frame is dropped and counted (tx_overflows), its sequence number used. */
#ifndef EBMFW_MCU_H
#define EBMFW_MCU_H

#include <stdbool.h>
#include <stdint.h>

#include "ebmfw/protocol.h"

#define EBM_FW_MAJOR 1u
#define EBM_FW_MINOR 0u
#define EBM_FW_PATCH 0u
#define EBM_STATE_RATE_HZ 500u
#define EBM_WATCHDOG_MS_DEFAULT 100u
#define EBM_WATCHDOG_MS_MIN 5u
#define EBM_WATCHDOG_MS_MAX 5000u

/* Reported in CONFIG (nominal; the host's calibration stays authoritative). Build settings:
 * make CART_COUNTS_PER_M=... POLE_COUNTS_PER_REV=... */
#ifndef EBM_CART_COUNTS_PER_M
#define EBM_CART_COUNTS_PER_M 20000ul
#endif
#ifndef EBM_POLE_COUNTS_PER_REV
#define EBM_POLE_COUNTS_PER_REV 4096ul
#endif

/* Takes all n bytes or none; false = no room (the frame is dropped). */
typedef bool (*ebm_send_fn)(void *context, const uint8_t *bytes, uint8_t n);

/* What the tick interrupt latched, plus the input levels read when the tick is handled. */
struct ebm_tick {
    int32_t cart_counts;
    int32_t pole_counts;
    uint32_t timestamp_us;
    uint16_t cart_quadrature_errors;
    uint16_t pole_quadrature_errors;
    uint8_t inputs;                   /* EBM_STATUS_LIMIT_LEFT | _LIMIT_RIGHT | _AMP_FAULT */
};

/* The output to apply: signed motor value (EBM_COMMAND_FULL_SCALE = 100 %) and amplifier enable.
 * motor is 0 whenever enable is false. */
struct ebm_drive {
    int16_t motor;
    bool enable;
};

struct ebm_mcu {
    struct ebm_config config;         /* the CONFIG reply; watchdog_ms is the value in effect */
    struct ebm_rx rx;
    ebm_send_fn send;
    void *send_context;
    uint16_t tx_seq;
    uint16_t watchdog_ticks;          /* trips once more ticks than this passed without COMMAND */
    uint16_t ticks_since_command;
    int16_t motor;                    /* the command in effect; 0 while disabled */
    bool enabled;
    bool watchdog_tripped;
    bool fault_latched;
    bool session;                     /* a HELLO arrived since start-up: ENABLE = 1 may act */
    uint8_t inputs;                   /* as in struct ebm_tick, last read */
    uint16_t tx_overflows;
    uint16_t watchdog_trips;
    uint16_t cart_quadrature_errors;  /* as latched at the last tick */
    uint16_t pole_quadrature_errors;
    struct ebm_state state;           /* the STATE of the last tick, to send if state_due */
    bool state_due;
    bool defer_replies;               /* see ebm_mcu_send_due() */
    bool reply_due;                   /* a HEARTBEAT's echo and COUNTERS, not sent yet: */
    bool reply_waited;                /* ... since before the last tick */
    struct ebm_heartbeat reply_heartbeat;
    struct ebm_counters reply_counters;   /* as they were when the HEARTBEAT came */
};

/* The CONFIG this build reports (version, resolutions, rate, watchdog default: the defines
 * above) with the given reset cause. */
struct ebm_config ebm_build_config(uint8_t reset_cause);

/* Starts disabled with config->watchdog_ms in effect. */
void ebm_mcu_init(struct ebm_mcu *mcu, const struct ebm_config *config, ebm_send_fn send,
                  void *send_context);

void ebm_mcu_receive(struct ebm_mcu *mcu, const uint8_t *bytes, uint8_t n);

/* New input levels (limit switches, fault), read at any time. */
void ebm_mcu_inputs(struct ebm_mcu *mcu, uint8_t inputs);

/* One timer tick: inputs, command watchdog, then STATE. */
void ebm_mcu_tick(struct ebm_mcu *mcu, const struct ebm_tick *tick);

/* The same in two halves, so that a main loop can act on received bytes in between without
 * delaying them by the STATE's encoding: _begin does everything but sending (the STATE's status and
 * applied_command are those at the tick, as in ebm_mcu_tick), _end sends the STATE if a _begin left
 * one due. A COMMAND handled in between counts as after the tick, for the watchdog as for STATE;
 * any other frame sent in between (a reply) sends the due STATE first, so frames leave in the same
 * order as with ebm_mcu_tick. */
void ebm_mcu_tick_begin(struct ebm_mcu *mcu, const struct ebm_tick *tick);
void ebm_mcu_tick_end(struct ebm_mcu *mcu);

/* With mcu->defer_replies set (a main loop's choice; ebm_mcu_init clears it), a HEARTBEAT's echo
 * and COUNTERS (their contents those at the HEARTBEAT) wait for this call, which sends them after
 * a due STATE, and not while a frame is coming in (until the next tick at the latest): a COMMAND
 * right behind the HEARTBEAT reaches the motor before two frames are encoded. A second HEARTBEAT
 * sends the first one's reply at once. Frames keep their order. */
void ebm_mcu_send_due(struct ebm_mcu *mcu);

struct ebm_drive ebm_mcu_drive(const struct ebm_mcu *mcu);

/* STATE status bits now (as the next STATE would report them). */
uint16_t ebm_mcu_status(const struct ebm_mcu *mcu);

void ebm_mcu_counters(const struct ebm_mcu *mcu, struct ebm_counters *counters);

#endif
