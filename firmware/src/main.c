/* The firmware's main loop, the same on every board: ticks become STATE frames, received bytes
 * become actions, and the drive follows the state machine. Interrupt handlers (in the board file)
 * only move bytes and latch encoder counts. */
#include <stddef.h>

#include "ebmfw/board.h"
#include "ebmfw/mcu.h"

#define RX_CHUNK 32u            /* bytes taken from the receive ring at a time */
#define RX_CHUNKS_PER_PASS 3u   /* bounds one pass's work */

static bool transmit(void *context, const uint8_t *bytes, uint8_t n)
{
    (void)context;
    return board_tx(bytes, n);
}

int main(void)
{
    static struct ebm_mcu mcu;
    board_init();
    const struct ebm_config config = ebm_build_config(board_reset_cause());
    ebm_mcu_init(&mcu, &config, transmit, NULL);
    mcu.defer_replies = true;
    for (;;) {
        struct ebm_tick tick;
        uint8_t bytes[RX_CHUNK];
        board_feed_watchdog();
        /* The tick first: the watchdog and the STATE's status are those at the tick. A COMMAND
         * received just before the latch but handled after it counts as after the tick: the
         * watchdog errs late by under one loop pass, never early. The STATE (and any HEARTBEAT's
         * reply) is encoded and sent after the received bytes and the drive: a COMMAND waiting
         * then reaches the pins first (the STATE waits for at most RX_CHUNK bytes' handling). */
        if (board_take_tick(&tick))
            ebm_mcu_tick_begin(&mcu, &tick);
        /* Bytes that come in meanwhile are taken at once (a frame's delimiter usually arrives
         * while the bytes before it are handled), a few chunks at most per pass, one only when a
         * STATE is due. */
        for (uint8_t chunk = 0; chunk < RX_CHUNKS_PER_PASS; chunk++) {
            uint8_t n = board_rx(bytes, sizeof bytes);
            if (n == 0)
                break;
            ebm_mcu_receive(&mcu, bytes, n);
            if (mcu.state_due)
                break;
        }
        ebm_mcu_inputs(&mcu, board_inputs());
        board_drive(ebm_mcu_drive(&mcu));
        ebm_mcu_send_due(&mcu);
        board_idle();
    }
}
