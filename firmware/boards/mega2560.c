/* Arduino Mega 2560 (ATmega2560, 16 MHz): the board hooks of ebmfw/board.h. Pins and timer
 * settings come from mega2560_pins.h; the static assertions below tie them to the registers and
 * interrupt vectors used here.
 *
 * Interrupts, all short:
 *   INT4/INT5   cart encoder edge: read both channels, one table step
 *   INT2/INT3   pole encoder edge: same
 *   TIMER3_COMPA the 500 Hz tick: latches both counts, their error counts and the microsecond
 *               timestamp together (encoder interrupts cannot run in between)
 *   USART0_RX/UDRE  receive and transmit rings
 * The main loop does everything else. */
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/sleep.h>
#include <avr/wdt.h>
#include <util/atomic.h>

#include "ebmfw/board.h"
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

/* Ring sizes: powers of two (uint8_t indices wrap with a mask). TX holds a CONFIG, a HEARTBEAT
 * echo, a COUNTERS and a STATE frame at once; RX several host frames. */
#define RX_RING 64u
#define TX_RING 128u

#define DIR_MASK _BV(EBM_DIR_BIT)
#define ENABLE_MASK _BV(EBM_ENABLE_BIT)
#define PWM_MASK _BV(EBM_PWM_BIT)
#define PWM_CONNECTED (_BV(COM1A1) | _BV(WGM11))  /* non-inverting OC1A, mode 14 (low bits) */
#define PWM_DISCONNECTED _BV(WGM11)                /* OC1A off: the pin follows PORTB5 */
#define RESET_CAUSE_BITS (_BV(PORF) | _BV(EXTRF) | _BV(BORF) | _BV(WDRF))

static volatile uint8_t rx_ring[RX_RING];
static volatile uint8_t rx_head;        /* written by the RX interrupt */
static volatile uint8_t rx_tail;        /* written by the main loop */
static volatile uint8_t tx_ring[TX_RING];
static volatile uint8_t tx_head;        /* written by the main loop */
static volatile uint8_t tx_tail;        /* written by the UDRE interrupt */

static struct ebm_quadrature cart;      /* interrupt-owned */
static struct ebm_quadrature pole;
static uint32_t clock_us;               /* time of the last tick */
static struct ebm_tick latch;           /* written by the tick interrupt, read atomically */
static volatile bool tick_pending;

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

static inline uint8_t cart_ab(void)
{
    uint8_t pins = PINE;
    return (uint8_t)(((pins >> EBM_CART_A_BIT) & 1u) << 1 | ((pins >> EBM_CART_B_BIT) & 1u));
}

static inline uint8_t pole_ab(void)
{
    uint8_t pins = PIND;
    return (uint8_t)(((pins >> EBM_POLE_A_BIT) & 1u) << 1 | ((pins >> EBM_POLE_B_BIT) & 1u));
}

ISR(INT4_vect)
{
    ebm_quadrature_update(&cart, cart_ab());
}
ISR(INT5_vect, ISR_ALIASOF(INT4_vect));

ISR(INT2_vect)
{
    ebm_quadrature_update(&pole, pole_ab());
}
ISR(INT3_vect, ISR_ALIASOF(INT2_vect));

ISR(TIMER3_COMPA_vect)
{
    uint16_t since_tick = TCNT3;        /* the latency of this interrupt, in Timer3 counts */
    clock_us += US_PER_TICK;
    latch.timestamp_us = clock_us + since_tick / TIMER3_COUNTS_PER_US;
    latch.cart_counts = ebm_quadrature_count(&cart);
    latch.pole_counts = ebm_quadrature_count(&pole);
    latch.cart_quadrature_errors = cart.errors;
    latch.pole_quadrature_errors = pole.errors;
    tick_pending = true;
}

ISR(USART0_RX_vect)
{
    uint8_t byte = UDR0;
    uint8_t next = (uint8_t)((rx_head + 1u) & (RX_RING - 1u));
    if (next != rx_tail) {              /* full: the byte is lost (the frame fails its CRC) */
        rx_ring[rx_head] = byte;
        rx_head = next;
    }
}

ISR(USART0_UDRE_vect)
{
    uint8_t tail = tx_tail;
    UDR0 = tx_ring[tail];
    tail = (uint8_t)((tail + 1u) & (TX_RING - 1u));
    tx_tail = tail;
    if (tail == tx_head)
        UCSR0B &= (uint8_t)~_BV(UDRIE0);
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

static void init_encoders(void)
{
    ebm_quadrature_init(&cart, cart_ab());
    ebm_quadrature_init(&pole, pole_ab());
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
    uint8_t n = 0;
    uint8_t tail = rx_tail;
    while (n < max && tail != rx_head) {
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
    for (uint8_t i = 0; i < n; i++) {
        tx_ring[head] = bytes[i];
        head = (uint8_t)((head + 1u) & (TX_RING - 1u));
    }
    tx_head = head;
    UCSR0B |= _BV(UDRIE0);              /* the interrupt only ever clears it: no race */
    return true;
}

bool board_take_tick(struct ebm_tick *tick)
{
    bool taken = false;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE)
    {
        if (tick_pending) {
            *tick = latch;
            tick_pending = false;
            taken = true;
        }
    }
    if (taken)
        tick->inputs = board_inputs();
    return taken;
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
    uint16_t high = (uint16_t)(((uint32_t)magnitude * (EBM_PWM_TOP + 1u) +
                                EBM_COMMAND_FULL_SCALE / 2) / EBM_COMMAND_FULL_SCALE);
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
    if (!tick_pending && rx_head == rx_tail) {
        sleep_enable();
        sei();                          /* the instruction after sei runs first: no wakeup lost */
        sleep_cpu();
        sleep_disable();
    }
    sei();
    __asm__ __volatile__("nop");        /* lets a pending interrupt in before the next cli */
}
