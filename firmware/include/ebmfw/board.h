/* What main.c needs from a board: one boards/<name>.c implements it (with boards/<name>_pins.h for
 * the pin map). Everything here is called from the main loop only. */
#ifndef EBMFW_BOARD_H
#define EBMFW_BOARD_H

#include <stdbool.h>
#include <stdint.h>

#include "ebmfw/mcu.h"

/* Pins, UART, PWM (amplifier off), encoders, the tick timer and the hardware watchdog; returns
 * with interrupts enabled. */
void board_init(void);

/* Why the MCU last started: AVR MCUSR bits (1 power-on, 2 reset pin, 4 brown-out, 8 watchdog),
 * 0 if unknown. */
uint8_t board_reset_cause(void);

/* Moves up to max received bytes into bytes; returns how many. */
uint8_t board_rx(uint8_t *bytes, uint8_t max);

/* Queues all n bytes for transmission, or none if they do not fit (returns false). */
bool board_tx(const uint8_t *bytes, uint8_t n);

/* The tick latched since the last call, if any (counts and timestamp from the tick interrupt, input
 * levels read now). */
bool board_take_tick(struct ebm_tick *tick);

/* Limit switch and fault levels now, as EBM_STATUS_LIMIT_LEFT | _LIMIT_RIGHT | _AMP_FAULT. */
uint8_t board_inputs(void);

/* Applies the drive to the PWM, direction and enable pins. */
void board_drive(struct ebm_drive drive);

void board_feed_watchdog(void);

/* Sleeps until an interrupt if no received byte and no tick is waiting. */
void board_idle(void);

#endif
