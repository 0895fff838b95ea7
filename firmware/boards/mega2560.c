/* Arduino Mega 2560 (ATmega2560, 16 MHz): the board hooks of ebmfw/board.h. Pins and timer
 * settings come from mega2560_pins.h; the static assertions below tie them to the registers and
 * interrupt vectors used here.
 *
 * Interrupts, all short, none of them nesting (cycles from the vector to RETI as the simulator
 * harness counts them, without a cart step; firmware/README.md, Timing):
 *   INT4/INT5   cart encoder edge: read both channels with one port read, one table step (42)
 *   INT2/INT3   pole encoder edge: same (58)
 *   TIMER3_COMPA the 500 Hz tick: latches both positions and the timer together (52): encoder
 *               interrupts cannot run in between; the main loop extends the positions to 32-bit
 *               counts and the tick number to the microsecond timestamp
 *   USART0_RX/UDRE  receive and transmit rings (43, 45)
 * An encoder edge must be read before the next edge of the same encoder arrives. The cart's edges
 * are the most frequent and its vectors come after the pole's: every other handler also takes the
 * step of a cart edge that came in while it ran (about 25 cycles more), so that a cart edge never
 * waits for two handlers. The main loop does everything else. */
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/sleep.h>
#include <avr/wdt.h>
#include <util/atomic.h>

#include "ebmfw/board.h"
#include "ebmfw/counter.h"
#include "ebmfw/quadrature.h"
#include "mega2560_pins.h"

_Static_assert(F_CPU == EBM_F_CPU_HZ, "F_CPU must match the board's crystal");
_Static_assert(EBM_CART_A_PORT == 'E' && EBM_CART_A_BIT == 4 && EBM_CART_B_PORT == 'E' &&
               EBM_CART_B_BIT == 5, "cart encoder: PE4/INT4, PE5/INT5");
_Static_assert(EBM_POLE_A_PORT == 'D' && EBM_POLE_A_BIT == 2 && EBM_POLE_B_PORT == 'D' &&
               EBM_POLE_B_BIT == 3, "pole encoder: PD2/INT2, PD3/INT3");
_Static_assert(EBM_PWM_PORT == 'B' && EBM_PWM_BIT == 5 && EBM_PWM_TIMER == '1',
               "motor PWM: PB5/OC1A");
_Static_assert(EBM_DIR_PORT == 'B' && EBM_ENABLE_PORT == 'B', "DIR and ENABLE on port B");
_Static_assert(EBM_FAULT_PORT == 'A' && EBM_LIMIT_NEG_PORT == 'A' && EBM_LIMIT_POS_PORT == 'A',
               "fault and limit inputs on port A");
_Static_assert(EBM_TICK_TIMER == '3' && EBM_TIMER3_HZ == F_CPU / 8, "tick: Timer3 at clk/8");

#define UBRR_VALUE (EBM_F_CPU_HZ / (8u * EBM_BAUD) - 1u)     /* U2X: 8 samples per bit */
_Static_assert(EBM_F_CPU_HZ % (8u * EBM_BAUD) == 0, "baud rate not exact at this clock");

#define TICK_TOP (EBM_TIMER3_HZ / EBM_STATE_RATE_HZ - 1u)     /* CTC: 4000 counts = 2 ms */
#define US_PER_TICK (1000000ul / EBM_STATE_RATE_HZ)
#define TIMER3_COUNTS_PER_US (EBM_TIMER3_HZ / 1000000ul)
_Static_assert(EBM_TIMER3_HZ % EBM_STATE_RATE_HZ == 0 && TICK_TOP <= UINT16_MAX,
               "tick period not a whole number of Timer3 counts");

/* Ring sizes: powers of two. TX holds a CONFIG, a HEARTBEAT echo, a COUNTERS and a STATE frame at
 * once; RX several host frames. */
#define RX_RING 64u
#define TX_RING 128u

#define DIR_MASK _BV(EBM_DIR_BIT)
#define ENABLE_MASK _BV(EBM_ENABLE_BIT)
#define PWM_MASK _BV(EBM_PWM_BIT)
#define PWM_CONNECTED (_BV(COM1A1) | _BV(WGM11))  /* non-inverting OC1A, mode 14 (low bits) */
#define PWM_DISCONNECTED _BV(WGM11)                /* OC1A off: the pin follows PORTB5 */
#define RESET_CAUSE_BITS (_BV(PORF) | _BV(EXTRF) | _BV(BORF) | _BV(WDRF))

/* Interrupt-owned state. The hot handlers below are written in assembly (avr-gcc's own prologue
 * saves r0, r1, RAMPZ and every register the body might touch: 87 cycles for an encoder edge,
 * which a cart at full speed cannot afford). Each keeps to a handful of registers, saves SREG,
 * and never assumes r1 = 0 (it may be in use by the interrupted code).
 *
 * Cart encoder (the busiest: up to ~190k edges/s at 3x the cart-pole's fastest motion), in the
 * general purpose I/O registers (IN/OUT: 1 cycle; LDS/STS: 2):
 *   GPIOR0          the pins last seen, B:A in bits 1:0 (PINE bits 5:4 swapped down)
 *   GPIOR2:GPIOR1   position: a 16-bit count that wraps, +-1 per edge (the main loop extends it)
 * Pole encoder: the same in RAM (pole_pins, pole_position). */
#define CART_PINS GPIOR0
#define CART_POS_LO GPIOR1
#define CART_POS_HI GPIOR2
#define CART_PIN_MASK (_BV(EBM_CART_A_BIT) | _BV(EBM_CART_B_BIT))   /* PINE 0x30 */
#define POLE_PIN_MASK (_BV(EBM_POLE_A_BIT) | _BV(EBM_POLE_B_BIT))   /* PIND 0x0C */

/* (volatile: C writes these at start-up, only the handlers' assembly reads them) */
static volatile uint8_t pole_pins;      /* B:A in bits 1:0 */
static volatile uint16_t pole_position;
static volatile uint16_t cart_errors;   /* impossible steps, saturating */
static volatile uint16_t pole_errors;

/* What the tick interrupt latches, all at once; tick_count says which tick it is (the main loop
 * copies it without blocking interrupts, retrying if a tick came in between). */
static volatile struct {
    uint16_t timer;                     /* TCNT3 when latched: the interrupt's latency, 0.5 us */
    uint16_t cart;                      /* the positions then */
    uint16_t pole;
} latch;
static volatile uint8_t tick_count;     /* ticks since start, wrapping */
static uint8_t ticks_taken;             /* tick_count at the last board_take_tick() */
#define HW_WATCHDOG_MS 60u             /* WDTO_60MS: a main loop this late has been reset */
_Static_assert(HW_WATCHDOG_MS * EBM_STATE_RATE_HZ / 1000u < 255u,
               "more ticks than tick_count holds could pass before the hardware watchdog resets");

/* Main-loop side of the tick: 32-bit counts and the microsecond clock, extended from the above. */
static uint32_t clock_us;               /* time of the last tick taken */
static int32_t cart_count, pole_count;
static uint16_t cart_taken, pole_taken; /* positions at the last tick taken */

static volatile uint8_t rx_head;        /* written by the RX interrupt */
static volatile uint8_t rx_tail;        /* written by the main loop */
static volatile uint8_t tx_head;        /* written by the main loop */
static volatile uint8_t tx_tail;        /* written by the UDRE interrupt */

/* Step tables, indexed by the raw pins: (new pins & mask) | old pins as B:A in bits 1:0, so that
 * the handlers need no bit shuffling. Entries -1, 0, +1, or STEP_ERROR for an impossible step
 * (both channels changed). Built at start-up from the portable table (src/quadrature.c), the one
 * the host tests check, translating its ab = A << 1 | B to the pins' order. In RAM (LD: 2 cycles),
 * each aligned to its size: Z = &table[0] + index in two instructions, the index never carrying
 * into the high byte of the address. */
#define STEP_ERROR 0x80
static volatile int8_t pole_steps[16] __attribute__((aligned(16)));    /* index 0bBABA */
static volatile int8_t cart_steps[64] __attribute__((aligned(64)));    /* 0bBA00BA: 0..0x33 */

/* Rings: uint8_t indices that wrap with a mask. */
static volatile uint8_t rx_ring[RX_RING];
static volatile uint8_t tx_ring[TX_RING];

/* MCUSR survives only until we clear it, and .bss is zeroed after .init3: hence .noinit. */
static uint8_t reset_flags __attribute__((section(".noinit")));

/* Runs before the C runtime's initialisation. A watchdog reset leaves the watchdog running
 * (WDRF keeps WDE set) at its shortest period, which would reset again before main: stop it first.
 * naked + .init3: inlined into the startup code, no call or return. */
static void save_reset_cause(void) __attribute__((naked, used, section(".init3")));
static void save_reset_cause(void)
{
    reset_flags = MCUSR;
    MCUSR = 0;
    wdt_disable();
}

/* Register operands of the handlers' assembly: I/O space (IN/OUT) and data space (LDS/STS). */
#define IO(name, reg) [name] "I" (_SFR_IO_ADDR(reg))
#define MEM(name, reg) [name] "n" (_SFR_MEM_ADDR(reg))

/* One step of an encoder: r24 = its port's pins as read, r30/r31 free, SREG saved. The pins
 * last seen and the position are updated; an impossible step branches to the _ERROR block (placed
 * after the RETI, out of the common path), which counts it (saturating) and comes back. e and d:
 * numeric labels (strings) that pair a _STEP with its _ERROR. */
#define CART_STEP(e, d)                                                                           \
        "andi r24, %[cart_mask]     \n\t"   /* new pins: B:A in bits 5:4 */                       \
        "in   r30, %[cart_pins]     \n\t"   /* old pins: B:A in bits 1:0 */                       \
        "or   r30, r24              \n\t"                                                         \
        "swap r24                   \n\t"                                                         \
        "out  %[cart_pins], r24     \n\t"                                                         \
        "ldi  r31, hi8(%[cart_steps])    \n\t"   /* Z = &cart_steps[index] */                     \
        "subi r30, lo8(-(%[cart_steps])) \n\t"                                                    \
        "ld   r24, Z                \n\t"                                                         \
        "cpi  r24, %[error]         \n\t"                                                         \
        "breq " e "f                \n\t"                                                         \
        "in   r30, %[cart_pos_lo]   \n\t"   /* position += step (sign-extended) */                \
        "in   r31, %[cart_pos_hi]   \n\t"                                                         \
        "add  r30, r24              \n\t"                                                         \
        "brcc .+2                   \n\t"                                                         \
        "inc  r31                   \n\t"                                                         \
        "sbrc r24, 7                \n\t"                                                         \
        "dec  r31                   \n\t"                                                         \
        "out  %[cart_pos_lo], r30   \n\t"                                                         \
        "out  %[cart_pos_hi], r31   \n\t"                                                         \
        d ":                        \n\t"
#define CART_ERROR(e, d)                                                                          \
        e ":                        \n\t"   /* both channels changed */                           \
        "lds  r30, %[cart_errors]   \n\t"                                                         \
        "lds  r31, %[cart_errors]+1 \n\t"                                                         \
        "adiw r30, 1                \n\t"                                                         \
        "breq " d "b                \n\t"   /* was 0xFFFF: stays */                               \
        "sts  %[cart_errors]+1, r31 \n\t"                                                         \
        "sts  %[cart_errors], r30   \n\t"                                                         \
        "rjmp " d "b                \n\t"
#define CART_OPERANDS                                                                             \
        IO(cart_pins, CART_PINS), IO(cart_pos_lo, CART_POS_LO), IO(cart_pos_hi, CART_POS_HI),     \
        [cart_mask] "M" (CART_PIN_MASK), [cart_steps] "i" (cart_steps),                           \
        [cart_errors] "i" (&cart_errors)

/* The same for the pole, its state in RAM and its pins in bits 3:2. */
#define POLE_STEP(e, d)                                                                           \
        "andi r24, %[pole_mask]     \n\t"   /* new pins: B:A in bits 3:2 */                       \
        "lds  r30, %[pole_pins]     \n\t"   /* old pins: B:A in bits 1:0 */                       \
        "or   r30, r24              \n\t"                                                         \
        "lsr  r24                   \n\t"                                                         \
        "lsr  r24                   \n\t"                                                         \
        "sts  %[pole_pins], r24     \n\t"                                                         \
        "ldi  r31, hi8(%[pole_steps])    \n\t"                                                    \
        "subi r30, lo8(-(%[pole_steps])) \n\t"                                                    \
        "ld   r24, Z                \n\t"                                                         \
        "cpi  r24, %[error]         \n\t"                                                         \
        "breq " e "f                \n\t"                                                         \
        "lds  r30, %[pole_pos]      \n\t"                                                         \
        "lds  r31, %[pole_pos]+1    \n\t"                                                         \
        "add  r30, r24              \n\t"                                                         \
        "brcc .+2                   \n\t"                                                         \
        "inc  r31                   \n\t"                                                         \
        "sbrc r24, 7                \n\t"                                                         \
        "dec  r31                   \n\t"                                                         \
        "sts  %[pole_pos]+1, r31    \n\t"                                                         \
        "sts  %[pole_pos], r30      \n\t"                                                         \
        d ":                        \n\t"
#define POLE_ERROR(e, d)                                                                          \
        e ":                        \n\t"                                                         \
        "lds  r30, %[pole_errors]   \n\t"                                                         \
        "lds  r31, %[pole_errors]+1 \n\t"                                                         \
        "adiw r30, 1                \n\t"                                                         \
        "breq " d "b                \n\t"                                                         \
        "sts  %[pole_errors]+1, r31 \n\t"                                                         \
        "sts  %[pole_errors], r30   \n\t"                                                         \
        "rjmp " d "b                \n\t"
#define POLE_OPERANDS                                                                             \
        [pole_mask] "M" (POLE_PIN_MASK), [pole_pins] "i" (&pole_pins),                            \
        [pole_steps] "i" (pole_steps), [pole_pos] "i" (&pole_position),                           \
        [pole_errors] "i" (&pole_errors)

/* If a cart edge waits (its flag set while this handler ran), its step now, with the pins read
 * now: the cart's own interrupt follows and finds them seen (a 0 step), but the pins are read
 * the ~15 cycles of its entry and prologue sooner. For the end of a handler that has saved r24,
 * r30, r31 and SREG. */
#define CART_IF_WAITING(e, d)                                                                     \
        "in   r30, %[eifr]          \n\t"                                                         \
        "andi r30, %[cart_flags]    \n\t"                                                         \
        "breq " d "f                \n\t"                                                         \
        "in   r24, %[pine]          \n\t"                                                         \
        CART_STEP(e, d)
#define CART_IF_WAITING_OPERANDS                                                                  \
        IO(pine, PINE), IO(eifr, EIFR), [cart_flags] "M" (_BV(INTF4) | _BV(INTF5)),               \
        [error] "M" (STEP_ERROR), CART_OPERANDS

/* Saves r24 (then loaded from the port), r30, SREG and r31; and the reverse. */
#define ENCODER_PROLOGUE(port)                                                                    \
        "push r24                   \n\t"                                                         \
        "in   r24, " port "         \n\t"   /* both channels at once, as early as possible */     \
        "push r30                   \n\t"                                                         \
        "in   r30, __SREG__         \n\t"                                                         \
        "push r30                   \n\t"                                                         \
        "push r31                   \n\t"
#define ENCODER_EPILOGUE                                                                          \
        "pop  r31                   \n\t"                                                         \
        "pop  r30                   \n\t"                                                         \
        "out  __SREG__, r30         \n\t"                                                         \
        "pop  r30                   \n\t"                                                         \
        "pop  r24                   \n\t"                                                         \
        "reti                       \n\t"

/* Cart edge, either channel: 42 cycles from the vector to RETI, the pins read 3 cycles after the
 * vector (plus the 5-cycle interrupt response and the vector's JMP). One step of the x4 table per
 * edge; a second edge of the same pair whose interrupt finds the pins already seen is a 0 step,
 * as it should be. */
ISR(INT4_vect, ISR_NAKED)
{
    __asm__ __volatile__(
        ENCODER_PROLOGUE("%[pine]")
        CART_STEP("1", "2")
        ENCODER_EPILOGUE
        CART_ERROR("1", "2")
        :: IO(pine, PINE), [error] "M" (STEP_ERROR), CART_OPERANDS);
}
ISR(INT5_vect, ISR_ALIASOF(INT4_vect));

/* Pole edge. The pole's vectors come before the cart's (a higher priority), though its edges are
 * 10x rarer: a cart edge would wait for this handler as well as for the one it came in behind
 * (too long at twice the cart's fastest edge rate), and one that comes in during this handler
 * would wait for all of it. So this handler samples the cart's pins first and, if a cart edge is
 * waiting, takes its step; and again after the pole's step, if a cart edge waits then. (The cart's
 * own interrupt follows and finds the pins seen: a 0 step. The flag stays set until then, so the
 * second sample is taken whenever the first was.) */
ISR(INT2_vect, ISR_NAKED)
{
    __asm__ __volatile__(
        ENCODER_PROLOGUE("%[pine]")
        "in   r30, %[eifr]          \n\t"
        "andi r30, %[cart_flags]    \n\t"
        "breq 5f                    \n\t"
        CART_STEP("1", "2")
        "rjmp 5f                    \n\t"
        CART_ERROR("1", "2")                /* (here: within reach of its branch) */
        "5:                         \n\t"
        "in   r24, %[pind]          \n\t"
        POLE_STEP("3", "4")
        CART_IF_WAITING("6", "7")
        ENCODER_EPILOGUE
        POLE_ERROR("3", "4")
        CART_ERROR("6", "7")
        :: IO(pine, PINE), IO(pind, PIND), IO(eifr, EIFR),
           [cart_flags] "M" (_BV(INTF4) | _BV(INTF5)), [error] "M" (STEP_ERROR), CART_OPERANDS,
           POLE_OPERANDS);
}
ISR(INT3_vect, ISR_ALIASOF(INT2_vect));

/* The 500 Hz tick: latches the timer (this interrupt's latency) and both positions together, and
 * counts the tick. Nothing else (the 32-bit counts and the timestamp are the main loop's), but a
 * waiting cart edge's step after the latch. */
ISR(TIMER3_COMPA_vect, ISR_NAKED)
{
    __asm__ __volatile__(
        "push r24                   \n\t"
        "in   r24, __SREG__         \n\t"
        "push r24                   \n\t"
        "push r30                   \n\t"
        "push r31                   \n\t"
        "lds  r24, %[tcnt3l]        \n\t"   /* low byte first: latches the high byte */
        "lds  r31, %[tcnt3h]        \n\t"
        "sts  %[latch], r24         \n\t"
        "sts  %[latch]+1, r31       \n\t"
        "in   r24, %[cart_pos_lo]   \n\t"
        "in   r31, %[cart_pos_hi]   \n\t"
        "sts  %[latch]+2, r24       \n\t"
        "sts  %[latch]+3, r31       \n\t"
        "lds  r24, %[pole]          \n\t"
        "lds  r31, %[pole]+1        \n\t"
        "sts  %[latch]+4, r24       \n\t"
        "sts  %[latch]+5, r31       \n\t"
        "lds  r24, %[count]         \n\t"
        "inc  r24                   \n\t"
        "sts  %[count], r24         \n\t"
        CART_IF_WAITING("6", "7")
        "pop  r31                   \n\t"
        "pop  r30                   \n\t"
        "pop  r24                   \n\t"
        "out  __SREG__, r24         \n\t"
        "pop  r24                   \n\t"
        "reti                       \n\t"
        CART_ERROR("6", "7")
        :: MEM(tcnt3l, TCNT3L), MEM(tcnt3h, TCNT3H), [latch] "i" (&latch),
           [pole] "i" (&pole_position), [count] "i" (&tick_count), CART_IF_WAITING_OPERANDS);
}

/* A received byte goes into the ring's free slot (there always is one: the ring holds
 * RX_RING - 1 bytes), and counts only if the ring is not full: when it is, the byte is lost (its
 * frame fails the CRC). */
ISR(USART0_RX_vect, ISR_NAKED)
{
    __asm__ __volatile__(
        "push r24                   \n\t"
        "in   r24, __SREG__         \n\t"
        "push r24                   \n\t"
        "push r30                   \n\t"
        "push r31                   \n\t"
        "lds  r24, %[udr0]          \n\t"
        "lds  r30, %[head]          \n\t"
        "ldi  r31, 0                \n\t"   /* Z = &rx_ring[head] */
        "subi r30, lo8(-(%[ring]))  \n\t"
        "sbci r31, hi8(-(%[ring]))  \n\t"
        "st   Z, r24                \n\t"
        "lds  r24, %[head]          \n\t"
        "inc  r24                   \n\t"
        "andi r24, %[mask]          \n\t"
        "lds  r31, %[tail]          \n\t"
        "cpse r24, r31              \n\t"   /* next == tail: full, the byte is not kept */
        "sts  %[head], r24          \n\t"
        CART_IF_WAITING("6", "7")
        "pop  r31                   \n\t"
        "pop  r30                   \n\t"
        "pop  r24                   \n\t"
        "out  __SREG__, r24         \n\t"
        "pop  r24                   \n\t"
        "reti                       \n\t"
        CART_ERROR("6", "7")
        :: MEM(udr0, UDR0), [ring] "i" (rx_ring), [head] "i" (&rx_head), [tail] "i" (&rx_tail),
           [mask] "M" (RX_RING - 1), CART_IF_WAITING_OPERANDS);
}

/* The next byte to the UART; when the ring is empty, the interrupt turns itself off (board_tx
 * turns it on). */
ISR(USART0_UDRE_vect, ISR_NAKED)
{
    __asm__ __volatile__(
        "push r24                   \n\t"
        "in   r24, __SREG__         \n\t"
        "push r24                   \n\t"
        "push r30                   \n\t"
        "push r31                   \n\t"
        "lds  r30, %[tail]          \n\t"
        "ldi  r31, 0                \n\t"   /* Z = &tx_ring[tail] */
        "subi r30, lo8(-(%[ring]))  \n\t"
        "sbci r31, hi8(-(%[ring]))  \n\t"
        "ld   r24, Z                \n\t"
        "sts  %[udr0], r24          \n\t"
        "lds  r24, %[tail]          \n\t"
        "inc  r24                   \n\t"
        "andi r24, %[mask]          \n\t"
        "sts  %[tail], r24          \n\t"
        "lds  r31, %[head]          \n\t"
        "cpse r24, r31              \n\t"
        "rjmp 1f                    \n\t"
        "lds  r24, %[ucsr0b]        \n\t"   /* empty: UDRIE0 off */
        "cbr  r24, 1 << %[udrie0]   \n\t"
        "sts  %[ucsr0b], r24        \n\t"
        "1:                         \n\t"
        CART_IF_WAITING("6", "7")
        "pop  r31                   \n\t"
        "pop  r30                   \n\t"
        "pop  r24                   \n\t"
        "out  __SREG__, r24         \n\t"
        "pop  r24                   \n\t"
        "reti                       \n\t"
        CART_ERROR("6", "7")
        :: MEM(udr0, UDR0), MEM(ucsr0b, UCSR0B), [ring] "i" (tx_ring), [head] "i" (&tx_head),
           [tail] "i" (&tx_tail), [mask] "M" (TX_RING - 1), [udrie0] "I" (UDRIE0),
           CART_IF_WAITING_OPERANDS);
}

static void init_uart(void)
{
    UCSR0A = _BV(U2X0);      /* before UBRR0: simavr takes the byte time from both only when */
    UBRR0 = UBRR_VALUE;      /* UBRR0 is written (the chip does not care about the order)    */
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);                 /* 8N1 */
    UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);
}

static void init_motor(void)
{
    PORTB &= (uint8_t)~(DIR_MASK | ENABLE_MASK | PWM_MASK);
    DDRB |= DIR_MASK | ENABLE_MASK | PWM_MASK;
    ICR1 = EBM_PWM_TOP;                 /* before TCCR1B (simavr picks TOP up only then) */
    OCR1A = 0;
    TCCR1A = PWM_DISCONNECTED;
    TCCR1B = _BV(WGM13) | _BV(WGM12) | _BV(CS10);       /* fast PWM mode 14, clk/1: 20 kHz */
}

static void init_inputs(void)
{
    /* Inputs with pull-ups: encoders, fault (open-drain), normally-closed limit switches. */
    DDRE &= (uint8_t)~(_BV(EBM_CART_A_BIT) | _BV(EBM_CART_B_BIT));
    PORTE |= _BV(EBM_CART_A_BIT) | _BV(EBM_CART_B_BIT);
    DDRD &= (uint8_t)~(_BV(EBM_POLE_A_BIT) | _BV(EBM_POLE_B_BIT));
    PORTD |= _BV(EBM_POLE_A_BIT) | _BV(EBM_POLE_B_BIT);
    DDRA &= (uint8_t)~(_BV(EBM_FAULT_BIT) | _BV(EBM_LIMIT_NEG_BIT) | _BV(EBM_LIMIT_POS_BIT));
    PORTA |= _BV(EBM_FAULT_BIT) | _BV(EBM_LIMIT_NEG_BIT) | _BV(EBM_LIMIT_POS_BIT);
}

/* B:A in bits 1:0 from ab = A << 1 | B (quadrature.h's order). */
static uint8_t pins_ba(uint8_t ab)
{
    return (uint8_t)((ab >> 1) | (ab & 1u) << 1);
}

static void init_encoders(void)
{
    for (uint8_t old_ab = 0; old_ab < 4; old_ab++)
        for (uint8_t new_ab = 0; new_ab < 4; new_ab++) {
            int8_t step = ebm_quadrature_steps[old_ab << 2 | new_ab];
            int8_t entry = step == EBM_QUADRATURE_BOTH_CHANGED ? (int8_t)STEP_ERROR : step;
            uint8_t old_pins = pins_ba(old_ab), new_pins = pins_ba(new_ab);
            cart_steps[new_pins << EBM_CART_A_BIT | old_pins] = entry;
            pole_steps[new_pins << EBM_POLE_A_BIT | old_pins] = entry;
        }
    CART_PINS = (uint8_t)((PINE & CART_PIN_MASK) >> EBM_CART_A_BIT);
    pole_pins = (uint8_t)((PIND & POLE_PIN_MASK) >> EBM_POLE_A_BIT);
    CART_POS_LO = 0;
    CART_POS_HI = 0;
    EICRA = _BV(ISC20) | _BV(ISC30);    /* any edge */
    EICRB = _BV(ISC40) | _BV(ISC50);
    EIFR = _BV(INTF2) | _BV(INTF3) | _BV(INTF4) | _BV(INTF5);
    EIMSK = _BV(INT2) | _BV(INT3) | _BV(INT4) | _BV(INT5);
}

static void init_tick(void)
{
    OCR3A = TICK_TOP;
    TCCR3A = 0;
    TCCR3B = _BV(WGM32) | _BV(CS31);    /* CTC on OCR3A, clk/8 */
    TIMSK3 = _BV(OCIE3A);
}

void board_init(void)
{
    init_motor();                       /* first: the amplifier stays off */
    init_inputs();
    init_uart();
    init_encoders();
    init_tick();
    set_sleep_mode(SLEEP_MODE_IDLE);
    wdt_enable(WDTO_60MS);
    sei();
}

uint8_t board_reset_cause(void)
{
    return reset_flags & RESET_CAUSE_BITS;
}

uint8_t board_rx(uint8_t *bytes, uint8_t max)
{
    uint8_t tail = rx_tail;
    uint8_t head = rx_head;             /* bytes after this: the next call */
    uint8_t n = 0;
    while (n < max && tail != head) {
        bytes[n++] = rx_ring[tail];
        tail = (uint8_t)((tail + 1u) & (RX_RING - 1u));
    }
    rx_tail = tail;
    return n;
}

bool board_tx(const uint8_t *bytes, uint8_t n)
{
    uint8_t head = tx_head;
    uint8_t free = (uint8_t)((tx_tail - head - 1u) & (TX_RING - 1u));
    if (n > free)
        return false;
    /* Up to the end of the ring, then from its start: plain copies, no index arithmetic. */
    uint8_t first = (uint8_t)(TX_RING - head);
    if (first > n)
        first = n;
    volatile uint8_t *to = tx_ring + head;
    for (const uint8_t *end = bytes + first; bytes != end;)
        *to++ = *bytes++;
    to = tx_ring;
    for (const uint8_t *end = bytes + (uint8_t)(n - first); bytes != end;)
        *to++ = *bytes++;
    head = (uint8_t)((head + n) & (TX_RING - 1u));
    tx_head = head;
    UCSR0B |= _BV(UDRIE0);              /* the interrupt only ever clears it: no race */
    return true;
}

static bool tick_pending(void)
{
    return tick_count != ticks_taken;
}

/* board_take_tick() when there is a tick to take (out of line: the common case, no tick, needs
 * none of the registers this saves). */
static bool __attribute__((noinline)) take_tick(struct ebm_tick *tick)
{
    /* A consistent copy of the latch without blocking the encoders: retried if a tick came in
     * meanwhile (the latch and the count change together, in one interrupt). */
    uint8_t count;
    uint16_t timer, cart, pole;
    do {
        count = tick_count;
        timer = latch.timer;
        cart = latch.cart;
        pole = latch.pole;
    } while (count != tick_count);
    /* Every tick counts, taken or not (a late main loop loses a STATE, never time or counts);
     * the positions wrap at 16 bits, far more edges than can pass between two passes. */
    clock_us += (uint32_t)(uint8_t)(count - ticks_taken) * US_PER_TICK;
    ticks_taken = count;
    cart_count += (int16_t)(cart - cart_taken);
    pole_count += (int16_t)(pole - pole_taken);
    cart_taken = cart;
    pole_taken = pole;
    tick->timestamp_us = clock_us + timer / TIMER3_COUNTS_PER_US;
    tick->cart_counts = cart_count;
    tick->pole_counts = pole_count;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE)
    {
        tick->cart_quadrature_errors = cart_errors;
        tick->pole_quadrature_errors = pole_errors;
    }
    tick->inputs = board_inputs();
    return true;
}

bool board_take_tick(struct ebm_tick *tick)
{
    return tick_pending() && take_tick(tick);
}

uint8_t board_inputs(void)
{
    uint8_t pins = PINA;
    uint8_t inputs = 0;
    if (pins & _BV(EBM_LIMIT_NEG_BIT))      /* normally closed to GND: high = pressed or cut */
        inputs |= EBM_STATUS_LIMIT_LEFT;
    if (pins & _BV(EBM_LIMIT_POS_BIT))
        inputs |= EBM_STATUS_LIMIT_RIGHT;
    if (!(pins & _BV(EBM_FAULT_BIT)))       /* open-drain nFAULT: low = fault */
        inputs |= EBM_STATUS_AMP_FAULT;
    return inputs;
}

/* round(magnitude * (TOP + 1) / EBM_COMMAND_FULL_SCALE), halves up: (x + 16383) / 32767 with
 * x = magnitude * 800. 32767 = 2^15 - 1, and for 0 <= y < 2^26, y / (2^15 - 1) =
 * (y + (y >> 15) + 1) >> 15 exactly (checked for every such y): shifts and adds instead of a 32-bit
 * division (about 600 cycles on the AVR). */
_Static_assert(EBM_COMMAND_FULL_SCALE == 32767, "pwm_counts divides by 2^15 - 1");
_Static_assert((EBM_PWM_TOP + 1ul) * EBM_COMMAND_FULL_SCALE + EBM_COMMAND_FULL_SCALE / 2 < 1ul << 26,
               "pwm_counts: checked below 2^26 only");
static uint32_t shift_right_15(uint32_t y)    /* y >> 15 as byte moves, not a 15-step loop */
{
    return (uint32_t)(uint16_t)(y >> 16) << 1 | (uint16_t)y >> 15;
}

static uint16_t pwm_counts(uint16_t magnitude)
{
    uint32_t y = (uint32_t)magnitude * (EBM_PWM_TOP + 1u) + EBM_COMMAND_FULL_SCALE / 2;
    return (uint16_t)shift_right_15(y + shift_right_15(y) + 1u);
}

void board_drive(struct ebm_drive drive)
{
    static struct ebm_drive applied;    /* as set by init_motor: off, 0 */
    if (drive.motor == applied.motor && drive.enable == applied.enable)
        return;
    applied = drive;
    bool forward = drive.motor > 0;
    bool reversing = forward != ((PORTB & DIR_MASK) != 0) && (TCCR1A & _BV(COM1A1));
    uint16_t magnitude = forward ? (uint16_t)drive.motor : (uint16_t)(0u - (uint16_t)drive.motor);
    /* Fast PWM holds the pin high for OCR1A + 1 of the TOP + 1 counts of a period (OCR1A = TOP:
     * always high), so OCR1A = high counts - 1. Zero counts cannot be set that way (OCR1A = 0
     * still pulses once per period): OC1A is disconnected instead and PORTB5 = 0 holds it low.
     * Computed before any pin changes, so that the pins change within a few cycles. */
    uint16_t high = pwm_counts(magnitude);
    if (!drive.enable)
        PORTB &= (uint8_t)~ENABLE_MASK;     /* off before touching the bridge */
    if (high == 0 || reversing)
        TCCR1A = PWM_DISCONNECTED;          /* low at once */
    OCR1A = high == 0 ? 0 : high - 1u;
    if (reversing && high != 0) {
        /* OCR1A is double-buffered: the old duty would run on in the new direction until the
         * next BOTTOM (up to 50 us). Stay low until then; the new value loads there. */
        TIFR1 = _BV(TOV1);
        while (!(TIFR1 & _BV(TOV1)))
            ;
    }
    if (forward)
        PORTB |= DIR_MASK;
    else
        PORTB &= (uint8_t)~DIR_MASK;
    if (high != 0)
        TCCR1A = PWM_CONNECTED;
    if (drive.enable)
        PORTB |= ENABLE_MASK;
}

void board_feed_watchdog(void)
{
    wdt_reset();
}

void board_idle(void)
{
    cli();
    if (!tick_pending() && rx_head == rx_tail) {
        sleep_enable();
        sei();                          /* the instruction after sei runs first: no wakeup lost */
        sleep_cpu();
        sleep_disable();
    }
    sei();
    __asm__ __volatile__("nop");        /* lets a pending interrupt in before the next cli */
}
