/* Arduino Mega 2560 (ATmega2560, 16 MHz): the pin map. One source of truth for the firmware's
 * board file (boards/mega2560.c), the simulator harness (sim/) and the wiring table in
 * firmware/README.md. Another board: another boards/<name>_pins.h + boards/<name>.c.
 *
 * Arduino pin, AVR port bit, function:
 *   D2   PE4 INT4  cart encoder A   input, internal pull-up, interrupt on any edge
 *   D3   PE5 INT5  cart encoder B   input, internal pull-up, interrupt on any edge
 *   D19  PD2 INT2  pole encoder A   input, internal pull-up, interrupt on any edge
 *   D18  PD3 INT3  pole encoder B   input, internal pull-up, interrupt on any edge
 *   D11  PB5 OC1A  motor PWM        Timer1 fast PWM (mode 14, TOP = ICR1 = 799): 20 kHz
 *   D10  PB4       motor DIR        output: high = positive COMMAND.motor
 *   D12  PB6       amplifier ENABLE output: high = enabled (fit an external 10k pull-down:
 *                                   the pin floats during reset and in the bootloader)
 *   D24  PA2       amplifier FAULT  input, internal pull-up; low = fault (open-drain nFAULT)
 *   D22  PA0       limit switch NEG input, internal pull-up; normally-closed switch to GND:
 *                                   high = pressed (or a broken wire: fails safe)
 *   D23  PA1       limit switch POS input, as NEG
 *   D0/D1 PE0/PE1  UART0 RX/TX      1,000,000 baud 8N1 (exact at 16 MHz with U2X), to the USB
 *                                   bridge (ATmega16U2)
 * Timers: Timer1 = motor PWM; Timer3 = the STATE tick (CTC, clk/8 = 2 MHz, 500 Hz) and the
 * microsecond timestamp (ticks * 2000 + TCNT3 / 2).
 * "NEG"/"POS": the end of the track that a negative/positive COMMAND.motor drives the cart towards
 * (LIMIT_LEFT/LIMIT_RIGHT in STATE), whatever the host's motor_sign.
 */
#ifndef EBMFW_MEGA2560_PINS_H
#define EBMFW_MEGA2560_PINS_H

#define EBM_F_CPU_HZ            16000000UL
#define EBM_BAUD                1000000UL

/* Port letters (for simavr's AVR_IOCTL_IOPORT_GETIRQ) and bit numbers. */
#define EBM_CART_A_PORT  'E'
#define EBM_CART_A_BIT   4      /* INT4 */
#define EBM_CART_B_PORT  'E'
#define EBM_CART_B_BIT   5      /* INT5 */
#define EBM_POLE_A_PORT  'D'
#define EBM_POLE_A_BIT   2      /* INT2 */
#define EBM_POLE_B_PORT  'D'
#define EBM_POLE_B_BIT   3      /* INT3 */
#define EBM_PWM_PORT     'B'
#define EBM_PWM_BIT      5      /* OC1A */
#define EBM_DIR_PORT     'B'
#define EBM_DIR_BIT      4
#define EBM_ENABLE_PORT  'B'
#define EBM_ENABLE_BIT   6
#define EBM_FAULT_PORT   'A'
#define EBM_FAULT_BIT    2
#define EBM_LIMIT_NEG_PORT 'A'
#define EBM_LIMIT_NEG_BIT  0
#define EBM_LIMIT_POS_PORT 'A'
#define EBM_LIMIT_POS_BIT  1

#define EBM_PWM_TIMER    '1'    /* Timer1, channel A: TIMER_IRQ_OUT_PWM0 in simavr */
#define EBM_PWM_TOP      799u   /* ICR1: 16 MHz / (799 + 1) = 20 kHz, duty = (OCR1A + 1) / (TOP + 1),
                                   0 % with OC1A disconnected (pin low) */
#define EBM_TICK_TIMER   '3'
#define EBM_TIMER3_HZ    2000000UL  /* clk/8 */

#endif
