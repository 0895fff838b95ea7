/* cartpole_sim: firmware-in-the-loop harness. Runs the unmodified firmware ELF on simavr's
 * ATmega2560 with a cart-pole plant behind its pins and its UART0 on a pty of its own.
 *
 *   cartpole_sim [options] firmware.elf
 *
 * The plant is the cart-pole of ebmcpilco_ros/core/cartpole.py (same equations, RK4 at a fine
 * step with the force held over each step), driven by a first-order motor lag from the PWM/DIR/
 * ENABLE pins, with hard end stops and limit switches; the encoders produce x4 quadrature edges on
 * the encoder pins from the true positions. Pin map: boards/mega2560_pins.h.
 *
 * Control channel: one command line on stdin -> one JSON line on stdout. The first stdout line
 * is {"ready":true,"pty":...,"link":...}. Nothing else is ever written to stdout (simavr's own
 * output goes to stderr). Commands (t = the simulated time; MS = milliseconds of simulated time):
 *   status                          everything, one JSON object (see reply_status)
 *   set_state P PDOT TH THD         place the plant (the encoders follow with edges)
 *   corrupt_rx F | corrupt_tx F     probability that a byte host->MCU / MCU->host is replaced by
 *                                   a different value
 *   drop_rx F | drop_tx F           probability that a byte is lost
 *   stall MS                        UART silent both ways for MS (bytes in either direction lost)
 *   disconnect MS                   close the pty; a new one (and the link) after MS
 *   stuck cart|pole A|B 0|1|off     hold an encoder channel at a level, or release it
 *   glitch cart|pole N              N noise pulses flipping both channels at once (each: both
 *                                   flip, glitch_us later both flip back)
 *   amp_fault 0|1                   the amplifier's fault output (FAULT pin low, no force)
 *   limit neg|pos 0|1|auto          force a limit switch input (1 = pressed), or follow the plant
 *   reset                           pulse the external reset pin (MCUSR EXTRF)
 *   speed F                         pacing: simulated/real time (0 = as fast as possible)
 *   trace_flush                     flush the trace file
 *   quit                            exit (also: EOF on stdin, SIGTERM, SIGINT)
 * Replies: {"ok":true,"cycle":N,...} or {"ok":false,"error":"..."}.
 *
 * Trace (--trace FILE): one event per line, fields separated by one space, cycle = simulated CPU
 * cycle (t = cycle / f_cpu):
 *   # cartpole_sim trace 1 f_cpu=16000000
 *   T cycle hex ncorrupt ndropped nlost   MCU->host frame: the bytes the firmware wrote before a
 *                                         0x00 delimiter ("-" if none), stamped when the firmware
 *                                         wrote the delimiter to UDR0; what the link did to them
 *   R cycle hex ncorrupt ndropped         host->MCU frame: the bytes that entered the UART (after
 *                                         corruption) before a 0x00, stamped when the 0x00 entered
 *   O cycle enable dir ocr top duty       motor pins changed: ENABLE, DIR levels, OCR1A as the
 *                                         compare unit uses it (PWM modes: the register's value
 *                                         from the next BOTTOM on), TOP (ICR1), duty = fraction
 *                                         of the PWM period the pin is high (0..1; fast PWM:
 *                                         (OCR1A + 1) / (TOP + 1); 0 with OC1A disconnected)
 *   I cycle limit_neg limit_pos fault     input pin levels changed (limits: 1 = pressed; fault pin:
 *                                         0 = fault)
 *   P cycle p pdot theta thetadot cart pole step   the plant as the sample vector's interrupt
 *                                         (the STATE tick, --sample-vector) is entered: true
 *                                         state as of the plant step at cycle `step`, the encoder
 *                                         lines' counts (minus those of the last X line: the
 *                                         firmware's counts)
 *   X cycle mcusr cart pole               the AVR (re)started: MCUSR as the firmware finds it, the
 *                                         encoder lines' counts then (the firmware counts from
 *                                         there)
 *   F cycle command...                    a control command that changed something took effect
 * Frames longer than 64 bytes are cut and their hex ends with "+".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <sim_avr.h>
#include <sim_elf.h>
#include <sim_irq.h>
#include <sim_io.h>
#include <sim_regbit.h>
#include <sim_interrupts.h>
#include <sim_cycle_timers.h>
#include <avr_ioport.h>
#include <avr_uart.h>
#include <avr_timer.h>
#include <avr_extint.h>

#include "mega2560_pins.h"

#define HARNESS_VERSION 1

/* ATmega2560 data-space addresses (avr-libc iomxx0_1.h: _SFR_IO8(x) = x + 0x20). */
#define R_PORTB   0x25
#define R_DDRB    0x24
#define R_MCUSR   0x54
#define R_TCCR1A  0x80
#define R_TCCR1B  0x81
#define R_ICR1L   0x86
#define R_ICR1H   0x87
#define R_OCR1AL  0x88
#define R_OCR1AH  0x89
#define R_UCSR0A  0xC0
#define R_UCSR0B  0xC1
#define R_UCSR0C  0xC2
#define R_UBRR0L  0xC4
#define R_UBRR0H  0xC5
#define RXEN0_BIT 4
#define U2X0_BIT  1
#define MCUSR_EXTRF 0x02

/* PINx of ports A..G: 0x20 + 3 * (letter - 'A'). The pin map uses only these ports. */
static int pin_register(char port) {
    if (port < 'A' || port > 'G') {
        fprintf(stderr, "cartpole_sim: port %c is not supported by the harness\n", port);
        exit(2);
    }
    return 0x20 + 3 * (port - 'A');
}

static const char *const VECTOR_NAMES[57] = {
    "RESET", "INT0", "INT1", "INT2", "INT3", "INT4", "INT5", "INT6", "INT7", "PCINT0", "PCINT1",
    "PCINT2", "WDT", "TIMER2_COMPA", "TIMER2_COMPB", "TIMER2_OVF", "TIMER1_CAPT", "TIMER1_COMPA",
    "TIMER1_COMPB", "TIMER1_COMPC", "TIMER1_OVF", "TIMER0_COMPA", "TIMER0_COMPB", "TIMER0_OVF",
    "SPI_STC", "USART0_RX", "USART0_UDRE", "USART0_TX", "ANALOG_COMP", "ADC", "EE_READY",
    "TIMER3_CAPT", "TIMER3_COMPA", "TIMER3_COMPB", "TIMER3_COMPC", "TIMER3_OVF", "USART1_RX",
    "USART1_UDRE", "USART1_TX", "TWI", "SPM_READY", "TIMER4_CAPT", "TIMER4_COMPA", "TIMER4_COMPB",
    "TIMER4_COMPC", "TIMER4_OVF", "TIMER5_CAPT", "TIMER5_COMPA", "TIMER5_COMPB", "TIMER5_COMPC",
    "TIMER5_OVF", "USART2_RX", "USART2_UDRE", "USART2_TX", "USART3_RX", "USART3_UDRE", "USART3_TX",
};

/* ------------------------------------------------------------------------------------------- */
/* Configuration */

typedef struct {
    const char *elf, *link, *trace;
    double cart_mass, pole_mass, pole_length, friction, gravity;
    double cart_counts_per_m, pole_counts_per_rev, pole_zero_angle;
    int cart_sign, pole_sign, motor_sign;
    double motor_force_max, motor_time_constant, track_half_length, limit_switch_position;
    double x0[4];
    double step_us, io_us, speed, max_lag_ms, edge_min_us, glitch_us;
    uint32_t f_cpu;
    uint64_t seed;
    int sample_vector;
} config_t;

static config_t C = {
    .cart_mass = 0.5, .pole_mass = 0.5, .pole_length = 0.5, .friction = 0.1, .gravity = 9.81,
    .cart_counts_per_m = 20000, .pole_counts_per_rev = 4096, .pole_zero_angle = 0.0,
    .cart_sign = 1, .pole_sign = 1, .motor_sign = 1,
    .motor_force_max = 10.0, .motor_time_constant = 0.005, .track_half_length = 0.45,
    .limit_switch_position = 0.42,
    .step_us = 25, .io_us = 250, .speed = 1.0, .max_lag_ms = 20, .edge_min_us = 25,
    .glitch_us = 20, .f_cpu = EBM_F_CPU_HZ, .seed = 1,
    .sample_vector = 32,                 /* TIMER3_COMPA: the STATE tick (mega2560_pins.h) */
};

/* ------------------------------------------------------------------------------------------- */
/* State */

typedef struct {
    char port; int bit; avr_irq_t *irq; int level;
} pin_t;

typedef struct {
    const char *name;
    pin_t ch[2];                 /* A, B */
    long long line;              /* the count the A/B lines stand for (x4) */
    long long target;            /* the count of the true position */
    long long at_reset;          /* line at the last AVR reset: the firmware counts from there */
    int stuck[2];                /* -1 free, else the held level */
    int flip;                    /* glitch: both channels inverted while 3 */
    int glitch_left;
    int armed, glitch_armed;
    uint64_t edges, glitches;
} encoder_t;

typedef struct {
    int enable, dir;
    unsigned ocr, top;
    double duty;                 /* 0..1 of the period the PWM pin is high */
} outputs_t;

typedef struct {
    uint64_t count, cycles, max_cycles, max_latency, latency;
    avr_cycle_count_t entered, raised;
    int inside;
} vector_stats_t;

#define RING 65536
typedef struct { uint8_t b[RING]; size_t head, tail; } ring_t;
static size_t ring_len(const ring_t *r) { return r->head - r->tail; }
static int ring_put(ring_t *r, uint8_t v) {
    if (ring_len(r) >= RING) return 0;
    r->b[r->head++ % RING] = v; return 1;
}
static int ring_get(ring_t *r, uint8_t *v) {
    if (r->head == r->tail) return 0;
    *v = r->b[r->tail++ % RING]; return 1;
}

#define FRAME_TRACE_MAX 64
typedef struct {
    uint8_t b[FRAME_TRACE_MAX]; int n, cut; unsigned corrupt, dropped, lost;
} frame_acc_t;

static struct {
    avr_t *avr;
    /* plant */
    double x[4], force, target_force;
    double lag;                  /* 1 - exp(-step / tau) */
    avr_cycle_count_t step_at;   /* the cycle x belongs to (the last plant step) */
    avr_cycle_count_t step_cycles, io_cycles, edge_min_cycles, glitch_cycles;
    encoder_t enc[2];
    pin_t limit_neg, limit_pos, fault;
    int limit_force[2];          /* -1 auto, else the pressed state */
    int amp_fault;
    outputs_t out;
    unsigned ocr_active;          /* OCR1A as the compare unit uses it */
    int ocr_armed;
    avr_irq_t *portb_reg, *portb_ddr, *pwm_irq, *portb_pins[8];
    /* uart */
    avr_irq_t *uart_in, *uart_out, *uart_xon, *uart_xoff;
    int xoff, feeding;
    ring_t rx, tx;
    double corrupt_rx, corrupt_tx, drop_rx, drop_tx;
    uint64_t rx_bytes_in, rx_bytes, tx_bytes, tx_bytes_out, rx_corrupted, tx_corrupted,
        rx_dropped, tx_dropped, rx_stalled, tx_stalled, rx_no_receiver, tx_lost, tx_overflow,
        rx_frames, tx_frames;
    frame_acc_t rx_frame, tx_frame;
    avr_cycle_count_t stall_until;
    /* pty */
    int master, slave;
    char pty_name[128];
    int disconnected;
    avr_cycle_count_t reconnect_at;
    uint64_t disconnects;
    /* pacing */
    double speed;
    int64_t pace_base_ns;
    avr_cycle_count_t pace_base_cycle;
    double lag_ms, max_lag_ms_seen, slip_ms;
    uint64_t slips;
    /* misc */
    uint64_t resets;
    int last_mcusr;
    vector_stats_t vec[64];
    FILE *ctl, *trace;
    uint64_t trace_lines;
    char line[4096]; size_t line_len;
    int quit, reset_requested;
    uint64_t rng;
    int64_t start_ns;
    void (*core_reset)(avr_t *);
} S;

static volatile sig_atomic_t g_signal;

static int64_t now_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double uniform(void) {             /* xorshift64*, [0, 1) */
    S.rng ^= S.rng >> 12; S.rng ^= S.rng << 25; S.rng ^= S.rng >> 27;
    return (double)((S.rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static uint8_t corrupt_byte(uint8_t v) {   /* a different value */
    return v ^ (uint8_t)(1 + (int)(uniform() * 255.0));
}

static double sim_time(void) { return (double)S.avr->cycle / C.f_cpu; }

static avr_cycle_count_t ms_to_cycles(double ms) {
    return ms <= 0 ? 0 : (avr_cycle_count_t)llround(ms * 1e-3 * C.f_cpu);
}

/* ------------------------------------------------------------------------------------------- */
/* Trace */

static void trace(const char *fmt, ...) {
    if (!S.trace) return;
    va_list ap; va_start(ap, fmt);
    vfprintf(S.trace, fmt, ap);
    va_end(ap);
    S.trace_lines++;
}

static void trace_frame(char kind, frame_acc_t *f) {
    if (S.trace) {
        char hex[2 * FRAME_TRACE_MAX + 2];
        int o = 0;
        for (int i = 0; i < f->n; i++) o += sprintf(hex + o, "%02x", f->b[i]);
        if (f->cut) hex[o++] = '+';
        if (!o) hex[o++] = '-';
        hex[o] = 0;
        if (kind == 'T')
            trace("T %llu %s %u %u %u\n", (unsigned long long)S.avr->cycle, hex, f->corrupt,
                  f->dropped, f->lost);
        else
            trace("R %llu %s %u %u\n", (unsigned long long)S.avr->cycle, hex, f->corrupt,
                  f->dropped);
    }
    memset(f, 0, sizeof *f);
}

static void frame_add(frame_acc_t *f, uint8_t v) {
    if (f->n < FRAME_TRACE_MAX) f->b[f->n++] = v; else f->cut = 1;
}

/* ------------------------------------------------------------------------------------------- */
/* Pins driven by the harness: levels kept in step with the port's "external" value (a PORTx
 * write must not clobber them) */

static void set_external(char port) {
    avr_ioport_external_t e = { .name = port & 0x7f, .mask = 0, .value = 0 };
    pin_t *pins[] = { &S.enc[0].ch[0], &S.enc[0].ch[1], &S.enc[1].ch[0], &S.enc[1].ch[1],
                      &S.limit_neg, &S.limit_pos, &S.fault };
    unsigned mask = 0, value = 0;
    for (size_t i = 0; i < sizeof pins / sizeof *pins; i++)
        if (pins[i]->port == port) {
            mask |= 1u << pins[i]->bit;
            if (pins[i]->level) value |= 1u << pins[i]->bit;
        }
    e.mask = mask; e.value = value;
    avr_ioctl(S.avr, AVR_IOCTL_IOPORT_SET_EXTERNAL(port), &e);
}

static void drive(pin_t *p, int level) {
    if (p->level == level) return;
    p->level = level;
    set_external(p->port);
    avr_raise_irq(p->irq, level);
}

/* After a reset (PINx zeroed) or at start: the PIN registers show the driven levels again. */
static void restore_pin_registers(void) {
    pin_t *pins[] = { &S.enc[0].ch[0], &S.enc[0].ch[1], &S.enc[1].ch[0], &S.enc[1].ch[1],
                      &S.limit_neg, &S.limit_pos, &S.fault };
    for (size_t i = 0; i < sizeof pins / sizeof *pins; i++) {
        int reg = pin_register(pins[i]->port);
        if (pins[i]->level) S.avr->data[reg] |= (uint8_t)(1u << pins[i]->bit);
        else S.avr->data[reg] &= (uint8_t)~(1u << pins[i]->bit);
        set_external(pins[i]->port);
    }
}

/* ------------------------------------------------------------------------------------------- */
/* Encoders */

static const int QA[4] = {0, 1, 1, 0}, QB[4] = {0, 0, 1, 1};   /* A leads B counting up */

static void encoder_present(encoder_t *e) {
    int q = (int)(e->line & 3);
    int lv[2] = { QA[q], QB[q] };
    for (int c = 0; c < 2; c++) {
        if (e->flip) lv[c] ^= 1;
        if (e->stuck[c] >= 0) lv[c] = e->stuck[c];
        drive(&e->ch[c], lv[c]);
    }
}

static long long true_count(int which) {
    if (which == 0)
        return (long long)nearbyint(S.x[0] * C.cart_counts_per_m) * C.cart_sign;
    double turns = (S.x[2] - C.pole_zero_angle) / (2.0 * M_PI);
    return (long long)nearbyint(turns * C.pole_counts_per_rev) * C.pole_sign;
}

static avr_cycle_count_t edge_spacing(encoder_t *e) {
    long long d = llabs(e->target - e->line);
    avr_cycle_count_t sp = d ? S.step_cycles / (avr_cycle_count_t)(d + 1) : S.step_cycles;
    return sp < S.edge_min_cycles ? S.edge_min_cycles : sp;
}

static avr_cycle_count_t encoder_timer(avr_t *avr, avr_cycle_count_t when, void *param) {
    (void)avr;
    encoder_t *e = param;
    if (e->target != e->line) {
        e->line += e->target > e->line ? 1 : -1;
        e->edges++;
        encoder_present(e);
    }
    if (e->target == e->line) { e->armed = 0; return 0; }
    return when + edge_spacing(e);
}

static void encoder_update(encoder_t *e, long long target) {
    e->target = target;
    if (!e->armed && e->target != e->line) {
        e->armed = 1;
        avr_cycle_timer_register(S.avr, edge_spacing(e), encoder_timer, e);
    }
}

static avr_cycle_count_t glitch_timer(avr_t *avr, avr_cycle_count_t when, void *param) {
    (void)avr;
    encoder_t *e = param;
    if (!e->flip) {                       /* noise: both lines flip at once ... */
        e->flip = 1; encoder_present(e);
        return when + S.glitch_cycles;
    }
    e->flip = 0; encoder_present(e);      /* ... and both flip back */
    e->glitches++;
    if (--e->glitch_left > 0) return when + 5 * S.glitch_cycles;
    e->glitch_armed = 0;
    return 0;
}

/* ------------------------------------------------------------------------------------------- */
/* Motor outputs: ENABLE and DIR pins, PWM duty from Timer1 */

static avr_timer_t *timer1(void) {
    static avr_timer_t *found;
    if (!found)
        for (avr_io_t *io = S.avr->io_port; io; io = io->next)
            if (!strcmp(io->kind, "timer") && ((avr_timer_t *)io)->name == EBM_PWM_TIMER)
                found = (avr_timer_t *)io;
    return found;
}

static void sample_outputs(int ddrb_override);

/* The compare unit takes a new OCR1A at the next BOTTOM (PWM modes double-buffer it). */
static avr_cycle_count_t ocr_update_timer(avr_t *avr, avr_cycle_count_t when, void *param) {
    (void)when; (void)param;
    S.ocr_armed = 0;
    S.ocr_active = avr->data[R_OCR1AL] | (avr->data[R_OCR1AH] << 8);
    sample_outputs(-1);
    return 0;
}

static void sample_outputs(int ddrb_override) {
    avr_t *avr = S.avr;
    uint8_t ddrb = ddrb_override >= 0 ? (uint8_t)ddrb_override : avr->data[R_DDRB];
    uint8_t portb = avr->data[R_PORTB];
    uint8_t a = avr->data[R_TCCR1A], b = avr->data[R_TCCR1B];
    outputs_t o;
    o.enable = (ddrb >> EBM_ENABLE_BIT) & (portb >> EBM_ENABLE_BIT) & 1;
    o.dir = (ddrb >> EBM_DIR_BIT) & (portb >> EBM_DIR_BIT) & 1;
    unsigned wgm = (a & 3) | (((b >> 3) & 3) << 2), cs = b & 7, com = (a >> 6) & 3;
    unsigned reg = avr->data[R_OCR1AL] | (avr->data[R_OCR1AH] << 8);
    avr_timer_t *t = timer1();
    int buffered = (wgm == 5 || wgm == 6 || wgm == 7 || wgm == 14 || wgm == 15) && cs
                   && t && t->tov_cycles > 1;
    if (!buffered) {
        S.ocr_active = reg;
    } else if (reg != S.ocr_active && !S.ocr_armed) {
        avr_cycle_count_t now = avr->cycle, base = t->tov_base, per = t->tov_cycles;
        avr_cycle_count_t next = now < base ? base : base + ((now - base) / per + 1) * per;
        S.ocr_armed = 1;
        avr_cycle_timer_register(avr, next > now ? next - now : 1, ocr_update_timer, NULL);
    }
    o.ocr = S.ocr_active;
    switch (wgm) {
    case 5: o.top = 0xFF; break;
    case 6: o.top = 0x1FF; break;
    case 7: o.top = 0x3FF; break;
    case 14: o.top = avr->data[R_ICR1L] | (avr->data[R_ICR1H] << 8); break;
    default: o.top = 0; break;
    }
    if (!((ddrb >> EBM_PWM_BIT) & 1)) o.duty = 0.0;                 /* pin not an output */
    else if (com == 0 || cs == 0 || o.top == 0)                      /* plain port pin */
        o.duty = (com == 0 && (portb >> EBM_PWM_BIT) & 1) ? 1.0 : 0.0;
    else {
        /* Fast PWM: the pin is set at BOTTOM and cleared on the compare match, so it is high for
         * OCR1A + 1 of the TOP + 1 counts (OCR1A = 0: a one-count spike; = TOP: always high). */
        double d = (o.ocr + 1.0) / (o.top + 1.0);
        if (d > 1.0) d = 1.0;
        o.duty = com == 3 ? 1.0 - d : d;                              /* 3: inverting */
    }
    if (o.enable != S.out.enable || o.dir != S.out.dir || o.ocr != S.out.ocr ||
        o.top != S.out.top || o.duty != S.out.duty) {
        S.out = o;
        trace("O %llu %d %d %u %u %.6f\n", (unsigned long long)avr->cycle, o.enable, o.dir,
              o.ocr, o.top, o.duty);
    }
}

static void on_portb_write(avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq; (void)value; (void)param; sample_outputs(-1);
}
static void on_ddrb_write(avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq; (void)param; sample_outputs((int)(value & 0xff));
}
static void on_pwm(avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq; (void)value; (void)param; sample_outputs(-1);
}

/* ------------------------------------------------------------------------------------------- */
/* Plant */

static void derivative(const double x[4], double u, double d[4]) {
    double m1 = C.cart_mass, m2 = C.pole_mass, l = C.pole_length, b = C.friction, g = C.gravity;
    double pdot = x[1], th = x[2], thd = x[3];
    double s = sin(th), c = cos(th);
    double den = 4.0 * (m1 + m2) - 3.0 * m2 * c * c;
    d[0] = pdot;
    d[1] = (2.0 * m2 * l * thd * thd * s + 3.0 * m2 * g * s * c + 4.0 * u - 4.0 * b * pdot) / den;
    d[2] = thd;
    d[3] = (-3.0 * m2 * l * thd * thd * s * c - 6.0 * (m1 + m2) * g * s - 6.0 * (u - b * pdot) * c)
           / (l * den);
}

static void rk4(double x[4], double u, double h) {
    double k1[4], k2[4], k3[4], k4[4], t[4];
    derivative(x, u, k1);
    for (int i = 0; i < 4; i++) t[i] = x[i] + 0.5 * h * k1[i];
    derivative(t, u, k2);
    for (int i = 0; i < 4; i++) t[i] = x[i] + 0.5 * h * k2[i];
    derivative(t, u, k3);
    for (int i = 0; i < 4; i++) t[i] = x[i] + h * k3[i];
    derivative(t, u, k4);
    for (int i = 0; i < 4; i++) x[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
}

static int switch_pressed(int which) {    /* 0 = NEG (negative motor's end), 1 = POS */
    if (S.limit_force[which] >= 0) return S.limit_force[which];
    double towards = C.motor_sign * S.x[0];   /* + = where a positive motor drives */
    return which ? towards >= C.limit_switch_position : towards <= -C.limit_switch_position;
}

static void update_inputs(void) {
    int neg = switch_pressed(0), pos = switch_pressed(1), fault = S.amp_fault ? 0 : 1;
    if (neg != S.limit_neg.level || pos != S.limit_pos.level || fault != S.fault.level) {
        drive(&S.limit_neg, neg);            /* normally closed to GND: high = pressed */
        drive(&S.limit_pos, pos);
        drive(&S.fault, fault);              /* active low */
        trace("I %llu %d %d %d\n", (unsigned long long)S.avr->cycle, neg, pos, fault);
    }
}

static void update_encoders(void) {
    encoder_update(&S.enc[0], true_count(0));
    encoder_update(&S.enc[1], true_count(1));
}

static avr_cycle_count_t plant_timer(avr_t *avr, avr_cycle_count_t when, void *param) {
    (void)avr; (void)param;
    sample_outputs(-1);
    double h = (double)S.step_cycles / C.f_cpu;
    double target = 0.0;
    if (S.out.enable && !S.amp_fault)
        target = S.out.duty * C.motor_force_max * C.motor_sign * (S.out.dir ? 1.0 : -1.0);
    S.target_force = target;
    S.force += S.lag * (target - S.force);
    rk4(S.x, S.force, h);
    S.step_at = when;
    double stop = C.track_half_length;
    if (fabs(S.x[0]) >= stop) {               /* hard end stop: the cart stops dead */
        S.x[0] = copysign(stop, S.x[0]);
        if (S.x[1] * S.x[0] > 0) S.x[1] = 0.0;
    }
    update_inputs();
    update_encoders();
    return when + S.step_cycles;
}

/* ------------------------------------------------------------------------------------------- */
/* UART <-> pty */

static int stalled(void) { return S.avr->cycle < S.stall_until; }

static avr_uart_t *uart0(void) {             /* simavr's UART0 (its byte time is public) */
    static avr_uart_t *found;
    if (!found)
        for (avr_io_t *io = S.avr->io_port; io; io = io->next)
            if (!strcmp(io->kind, "uart") && ((avr_uart_t *)io)->name == '0')
                found = (avr_uart_t *)io;
    return found;
}

/* The byte time simavr uses: it recomputes it only when UBRR is written, so a U2X set after UBRR
 * is not seen (the real UART would run twice as fast). Feeding follows simavr's pace. */
static avr_cycle_count_t uart_sim_byte_cycles(void) {
    avr_uart_t *u = uart0();
    return u && u->cycles_per_byte ? u->cycles_per_byte : 176;
}

static avr_cycle_count_t uart_byte_cycles(void) {   /* what the registers say now */
    avr_t *avr = S.avr;
    unsigned ubrr = avr->data[R_UBRR0L] | ((avr->data[R_UBRR0H] & 0x0f) << 8);
    unsigned ucsz = ((avr->data[R_UCSR0C] >> 1) & 3) | (((avr->data[R_UCSR0B] >> 2) & 1) << 2);
    static const int databits[] = { 5, 6, 7, 8, 8, 8, 8, 9 };
    int stop = 1 + ((avr->data[R_UCSR0C] >> 3) & 1);
    avr_cycle_count_t bit = (ubrr + 1) * 8ULL;
    if (!((avr->data[R_UCSR0A] >> U2X0_BIT) & 1)) bit *= 2;
    return bit * (avr_cycle_count_t)(1 + databits[ucsz] + 1 + stop);
}

static void on_uart_out(avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq; (void)param;
    uint8_t v = (uint8_t)value;
    if (!S.tx_bytes++ && uart_sim_byte_cycles() != uart_byte_cycles())
        fprintf(stderr, "cartpole_sim: simavr times UART0 bytes at %llu cycles, the registers say "
                "%llu (simavr reads U2X only when UBRR0 is written: write UCSR0A first)\n",
                (unsigned long long)uart_sim_byte_cycles(), (unsigned long long)uart_byte_cycles());
    int delimiter = v == 0;
    if (!delimiter) frame_add(&S.tx_frame, v);
    if (S.disconnected) { S.tx_lost++; S.tx_frame.lost++; }
    else if (stalled()) { S.tx_stalled++; S.tx_frame.lost++; }
    else if (S.drop_tx > 0 && uniform() < S.drop_tx) { S.tx_dropped++; S.tx_frame.dropped++; }
    else {
        if (S.corrupt_tx > 0 && uniform() < S.corrupt_tx) {
            v = corrupt_byte(v); S.tx_corrupted++; S.tx_frame.corrupt++;
        }
        if (!ring_put(&S.tx, v)) { S.tx_overflow++; S.tx_frame.lost++; }
    }
    if (delimiter) { S.tx_frames++; trace_frame('T', &S.tx_frame); }
}

static void on_uart_xon(avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq; (void)param; if (value) S.xoff = 0;
}
static void on_uart_xoff(avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq; (void)param; S.xoff = value ? 1 : 0;
}

static avr_cycle_count_t uart_feed_timer(avr_t *avr, avr_cycle_count_t when, void *param) {
    (void)param;
    uint8_t v;
    if (!((avr->data[R_UCSR0B] >> RXEN0_BIT) & 1)) {   /* no receiver: bytes on the line lost */
        while (ring_get(&S.rx, &v)) S.rx_no_receiver++;
        S.feeding = 0;
        return 0;
    }
    if (!S.xoff && ring_get(&S.rx, &v)) {
        if (S.drop_rx > 0 && uniform() < S.drop_rx) {
            S.rx_dropped++; S.rx_frame.dropped++;
        } else {
            if (S.corrupt_rx > 0 && uniform() < S.corrupt_rx) {
                v = corrupt_byte(v); S.rx_corrupted++; S.rx_frame.corrupt++;
            }
            S.rx_bytes++;
            avr_raise_irq(S.uart_in, v);
            if (v == 0) { S.rx_frames++; trace_frame('R', &S.rx_frame); }
            else frame_add(&S.rx_frame, v);
        }
    }
    if (!ring_len(&S.rx)) { S.feeding = 0; return 0; }
    return when + uart_sim_byte_cycles();
}

static void uart_start_feed(void) {
    if (!S.feeding && ring_len(&S.rx)) {
        S.feeding = 1;
        avr_cycle_timer_register(S.avr, 1, uart_feed_timer, NULL);
    }
}

static void pty_close(void) {
    if (S.master >= 0) close(S.master);
    if (S.slave >= 0) close(S.slave);
    S.master = S.slave = -1;
    if (C.link) unlink(C.link);
}

static int pty_open(void) {
    int master, slave;
    if (openpty(&master, &slave, NULL, NULL, NULL) < 0) {
        fprintf(stderr, "cartpole_sim: openpty: %s\n", strerror(errno));
        return -1;
    }
    struct termios t;
    if (tcgetattr(slave, &t) == 0) {        /* raw: no echo, no XON/XOFF, no line editing */
        cfmakeraw(&t);
        t.c_iflag &= ~(IXON | IXOFF | IXANY);
        tcsetattr(slave, TCSANOW, &t);
    }
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    fcntl(master, F_SETFD, FD_CLOEXEC);
    fcntl(slave, F_SETFD, FD_CLOEXEC);
    S.master = master; S.slave = slave;      /* the slave stays open: no EIO between hosts */
    snprintf(S.pty_name, sizeof S.pty_name, "%s", ttyname(slave) ? ttyname(slave) : "");
    if (C.link) {                            /* follows reconnections atomically */
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.new", C.link);
        unlink(tmp);
        if (symlink(S.pty_name, tmp) < 0 || rename(tmp, C.link) < 0)
            fprintf(stderr, "cartpole_sim: link %s: %s\n", C.link, strerror(errno));
    }
    return 0;
}

static void pty_io(void) {
    if (S.disconnected) {
        if (S.avr->cycle >= S.reconnect_at && pty_open() == 0) {
            S.disconnected = 0;
            trace("F %llu reconnected %s\n", (unsigned long long)S.avr->cycle, S.pty_name);
        }
        if (S.disconnected) return;
    }
    uint8_t buf[4096];
    for (;;) {                               /* host -> MCU: into the line (ring) */
        size_t room = RING - ring_len(&S.rx);
        if (!room) break;
        ssize_t n = read(S.master, buf, room < sizeof buf ? room : sizeof buf);
        if (n <= 0) break;
        S.rx_bytes_in += (uint64_t)n;
        if (stalled()) { S.rx_stalled += (uint64_t)n; continue; }
        for (ssize_t i = 0; i < n; i++) ring_put(&S.rx, buf[i]);
    }
    uart_start_feed();
    while (ring_len(&S.tx)) {                /* MCU -> host */
        size_t n = 0;
        uint8_t v;
        while (n < sizeof buf && ring_get(&S.tx, &v)) buf[n++] = v;
        ssize_t w = write(S.master, buf, n);
        if (w < 0) w = 0;
        S.tx_bytes_out += (uint64_t)w;
        if ((size_t)w < n) {                 /* nobody reads: the bytes are lost */
            S.tx_overflow += n - (size_t)w;
            while (ring_get(&S.tx, &v)) S.tx_overflow++;
            break;
        }
    }
}

/* ------------------------------------------------------------------------------------------- */
/* Interrupt statistics */

static void on_vector_pending(avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq;
    avr_int_vector_t *v = param;
    vector_stats_t *s = &S.vec[v->vector & 63];
    if (value && !s->raised && avr_regbit_get(S.avr, v->enable)) s->raised = S.avr->cycle;
}

static void on_vector_running(avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq;
    avr_int_vector_t *v = param;
    vector_stats_t *s = &S.vec[v->vector & 63];
    avr_cycle_count_t now = S.avr->cycle;
    if (value) {
        s->inside = 1; s->entered = now;
        if ((int)v->vector == C.sample_vector)   /* the plant when the firmware latches */
            trace("P %llu %.12g %.12g %.12g %.12g %lld %lld %llu\n", (unsigned long long)now,
                  S.x[0], S.x[1], S.x[2], S.x[3], S.enc[0].line, S.enc[1].line,
                  (unsigned long long)S.step_at);
        if (s->raised) {
            uint64_t lat = now - s->raised;
            s->latency += lat;
            if (lat > s->max_latency) s->max_latency = lat;
            s->raised = 0;
        }
    } else if (s->inside) {
        uint64_t d = now - s->entered;
        s->inside = 0; s->count++; s->cycles += d;
        if (d > s->max_cycles) s->max_cycles = d;
    }
}

/* ------------------------------------------------------------------------------------------- */
/* Pacing, control channel */

static void pace(void) {
    if (S.speed <= 0) { S.lag_ms = 0; return; }
    double sim_ns = (double)(S.avr->cycle - S.pace_base_cycle) * 1e9 / C.f_cpu;
    int64_t deadline = S.pace_base_ns + (int64_t)(sim_ns / S.speed);
    int64_t now = now_ns();
    if (now < deadline) {
        struct timespec ts = { .tv_sec = deadline / 1000000000LL, .tv_nsec = deadline % 1000000000LL };
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !g_signal)
            ;
        S.lag_ms = 0;
        return;
    }
    S.lag_ms = (now - deadline) / 1e6;
    if (S.lag_ms > S.max_lag_ms_seen) S.max_lag_ms_seen = S.lag_ms;
    if (C.max_lag_ms > 0 && S.lag_ms > C.max_lag_ms) {   /* fell behind: simulated time slips */
        S.slips++; S.slip_ms += S.lag_ms;
        S.pace_base_ns += now - deadline;
    }
}

static void pace_rebase(void) { S.pace_base_ns = now_ns(); S.pace_base_cycle = S.avr->cycle; }

typedef struct { char *s; size_t n, cap; } sb_t;
static void sb(sb_t *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->n + (size_t)k < b->cap) { b->n += (size_t)k; return; }
        b->cap = 2 * b->cap + (size_t)k + 64;
        b->s = realloc(b->s, b->cap);
        if (!b->s) exit(3);
    }
}

static void json_str(sb_t *b, const char *s) {
    if (!s) { sb(b, "null"); return; }
    sb(b, "\"");
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') sb(b, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) sb(b, "\\u%04x", *s);
        else sb(b, "%c", *s);
    }
    sb(b, "\"");
}

static void reply(sb_t *b) {
    fprintf(S.ctl, "%s\n", b->s);
    fflush(S.ctl);
    free(b->s);
}

static sb_t reply_begin(void) {
    sb_t b = { malloc(1024), 0, 1024 };
    sb(&b, "{\"ok\":true,\"cycle\":%llu,\"t\":%.9f", (unsigned long long)S.avr->cycle, sim_time());
    return b;
}

static void reply_ok(void) { sb_t b = reply_begin(); sb(&b, "}"); reply(&b); }

static void reply_error(const char *fmt, ...) {
    char msg[512];
    va_list ap; va_start(ap, fmt); vsnprintf(msg, sizeof msg, fmt, ap); va_end(ap);
    sb_t b = { malloc(1024), 0, 1024 };
    sb(&b, "{\"ok\":false,\"cycle\":%llu,\"error\":", (unsigned long long)S.avr->cycle);
    json_str(&b, msg);
    sb(&b, "}");
    reply(&b);
}

static const char *cpu_state_name(int st) {
    switch (st) {
    case cpu_Limbo: return "limbo";
    case cpu_Stopped: return "stopped";
    case cpu_Running: return "running";
    case cpu_Sleeping: return "sleeping";
    case cpu_Step: case cpu_StepDone: return "step";
    case cpu_Done: return "done";
    case cpu_Crashed: return "crashed";
    default: return "unknown";
    }
}

static double cpu_seconds(void) {
    struct rusage ru; getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec
           + ru.ru_stime.tv_usec * 1e-6;
}

static void reply_status(void) {
    sb_t b = reply_begin();
    avr_t *avr = S.avr;
    double drive = S.out.enable ? (S.out.dir ? S.out.duty : -S.out.duty) : 0.0;
    sb(&b, ",\"cpu_state\":\"%s\",\"wall\":%.6f,\"cpu_s\":%.6f,\"speed\":%g",
       cpu_state_name(avr->state), (now_ns() - S.start_ns) / 1e9, cpu_seconds(), S.speed);
    sb(&b, ",\"x\":[%.12g,%.12g,%.12g,%.12g],\"force\":%.9g,\"force_target\":%.9g",
       S.x[0], S.x[1], S.x[2], S.x[3], S.force, S.target_force);
    sb(&b, ",\"pins\":{\"enable\":%d,\"dir\":%d,\"ocr\":%u,\"ocr_register\":%u,\"top\":%u,"
           "\"duty\":%.6f,\"drive\":%.6f,\"limit_neg\":%d,\"limit_pos\":%d,\"fault\":%d}",
       S.out.enable, S.out.dir, S.out.ocr, avr->data[R_OCR1AL] | (avr->data[R_OCR1AH] << 8),
       S.out.top, S.out.duty, drive, S.limit_neg.level, S.limit_pos.level, S.fault.level);
    sb(&b, ",\"enc\":{");
    for (int i = 0; i < 2; i++) {
        encoder_t *e = &S.enc[i];
        sb(&b, "%s\"%s\":{\"true\":%lld,\"line\":%lld,\"at_reset\":%lld,\"firmware\":%lld,"
               "\"pending\":%lld,\"a\":%d,\"b\":%d,\"stuck_a\":%d,\"stuck_b\":%d,\"edges\":%llu,"
               "\"glitches\":%llu}",
           i ? "," : "", e->name, true_count(i), e->line, e->at_reset, e->line - e->at_reset,
           e->target - e->line, e->ch[0].level, e->ch[1].level, e->stuck[0], e->stuck[1],
           (unsigned long long)e->edges, (unsigned long long)e->glitches);
    }
    sb(&b, "}");
    sb(&b, ",\"uart\":{\"rx_bytes_in\":%llu,\"rx_bytes\":%llu,\"rx_frames\":%llu,"
           "\"rx_corrupted\":%llu,\"rx_dropped\":%llu,\"rx_stalled\":%llu,\"rx_no_receiver\":%llu,"
           "\"rx_pending\":%zu,\"tx_bytes\":%llu,\"tx_bytes_out\":%llu,\"tx_frames\":%llu,"
           "\"tx_corrupted\":%llu,\"tx_dropped\":%llu,\"tx_stalled\":%llu,\"tx_lost\":%llu,"
           "\"tx_overflow\":%llu,\"byte_cycles\":%llu,\"byte_cycles_registers\":%llu,"
           "\"xoff\":%d}",
       (unsigned long long)S.rx_bytes_in, (unsigned long long)S.rx_bytes,
       (unsigned long long)S.rx_frames, (unsigned long long)S.rx_corrupted,
       (unsigned long long)S.rx_dropped, (unsigned long long)S.rx_stalled,
       (unsigned long long)S.rx_no_receiver, ring_len(&S.rx), (unsigned long long)S.tx_bytes,
       (unsigned long long)S.tx_bytes_out, (unsigned long long)S.tx_frames,
       (unsigned long long)S.tx_corrupted, (unsigned long long)S.tx_dropped,
       (unsigned long long)S.tx_stalled, (unsigned long long)S.tx_lost,
       (unsigned long long)S.tx_overflow, (unsigned long long)uart_sim_byte_cycles(),
       (unsigned long long)uart_byte_cycles(), S.xoff);
    sb(&b, ",\"link\":{\"pty\":");
    json_str(&b, S.disconnected ? NULL : S.pty_name);
    sb(&b, ",\"link\":");
    json_str(&b, C.link);
    sb(&b, ",\"connected\":%s,\"stalled\":%s,\"stall_until\":%llu,\"disconnects\":%llu}",
       S.disconnected ? "false" : "true", stalled() ? "true" : "false",
       (unsigned long long)S.stall_until, (unsigned long long)S.disconnects);
    sb(&b, ",\"faults\":{\"corrupt_rx\":%g,\"corrupt_tx\":%g,\"drop_rx\":%g,\"drop_tx\":%g,"
           "\"amp_fault\":%d,\"limit_neg\":%d,\"limit_pos\":%d}",
       S.corrupt_rx, S.corrupt_tx, S.drop_rx, S.drop_tx, S.amp_fault, S.limit_force[0],
       S.limit_force[1]);
    sb(&b, ",\"resets\":%llu,\"last_reset_mcusr\":%d,\"mcusr\":%d",
       (unsigned long long)S.resets, S.last_mcusr, avr->data[R_MCUSR]);
    sb(&b, ",\"pace\":{\"lag_ms\":%.3f,\"max_lag_ms\":%.3f,\"slips\":%llu,\"slip_ms\":%.3f}",
       S.lag_ms, S.max_lag_ms_seen, (unsigned long long)S.slips, S.slip_ms);
    sb(&b, ",\"irq\":{");
    int first = 1;
    for (int v = 0; v < 64; v++) {
        vector_stats_t *s = &S.vec[v];
        if (!s->count) continue;
        sb(&b, "%s\"%s\":{\"vector\":%d,\"count\":%llu,\"cycles\":%llu,\"max_cycles\":%llu,"
               "\"latency\":%llu,\"max_latency\":%llu}",
           first ? "" : ",", v < 57 ? VECTOR_NAMES[v] : "?", v, (unsigned long long)s->count,
           (unsigned long long)s->cycles, (unsigned long long)s->max_cycles,
           (unsigned long long)s->latency, (unsigned long long)s->max_latency);
        first = 0;
    }
    sb(&b, "},\"trace_lines\":%llu}", (unsigned long long)S.trace_lines);
    reply(&b);
}

static int parse_double(const char *s, double *out) {
    if (!s) return 0;
    char *end; errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return 0;
    *out = v; return 1;
}

static int parse_prob(const char *s, double *out) {
    return parse_double(s, out) && *out >= 0.0 && *out <= 1.0;
}

static encoder_t *parse_encoder(const char *s) {
    if (!s) return NULL;
    if (!strcmp(s, "cart")) return &S.enc[0];
    if (!strcmp(s, "pole")) return &S.enc[1];
    return NULL;
}

static void hard_reset(void);

static void command(char *line) {
    char copy[sizeof S.line];
    snprintf(copy, sizeof copy, "%s", line);
    char *argv[8]; int argc = 0;
    for (char *tok = strtok(line, " \t\r"); tok && argc < 8; tok = strtok(NULL, " \t\r"))
        argv[argc++] = tok;
    if (!argc) { reply_error("empty command"); return; }
    const char *cmd = argv[0];
    unsigned long long cyc = (unsigned long long)S.avr->cycle;
    double v;
    if (!strcmp(cmd, "status")) { reply_status(); return; }
    if (!strcmp(cmd, "quit")) { S.quit = 1; reply_ok(); return; }
    if (!strcmp(cmd, "trace_flush")) {
        if (S.trace) fflush(S.trace);
        sb_t b = reply_begin();
        sb(&b, ",\"trace_lines\":%llu}", (unsigned long long)S.trace_lines);
        reply(&b);
        return;
    }
    if (!strcmp(cmd, "set_state")) {
        double x[4];
        if (argc != 5 || !parse_double(argv[1], &x[0]) || !parse_double(argv[2], &x[1]) ||
            !parse_double(argv[3], &x[2]) || !parse_double(argv[4], &x[3])) {
            reply_error("usage: set_state P PDOT THETA THETADOT"); return;
        }
        memcpy(S.x, x, sizeof x);
        update_inputs();
        update_encoders();
    } else if (!strcmp(cmd, "corrupt_rx") || !strcmp(cmd, "corrupt_tx") ||
               !strcmp(cmd, "drop_rx") || !strcmp(cmd, "drop_tx")) {
        if (argc != 2 || !parse_prob(argv[1], &v)) {
            reply_error("usage: %s PROBABILITY (0..1)", cmd); return;
        }
        if (!strcmp(cmd, "corrupt_rx")) S.corrupt_rx = v;
        else if (!strcmp(cmd, "corrupt_tx")) S.corrupt_tx = v;
        else if (!strcmp(cmd, "drop_rx")) S.drop_rx = v;
        else S.drop_tx = v;
    } else if (!strcmp(cmd, "stall")) {
        if (argc != 2 || !parse_double(argv[1], &v) || v < 0) {
            reply_error("usage: stall MS"); return;
        }
        S.stall_until = S.avr->cycle + ms_to_cycles(v);
        S.rx_stalled += ring_len(&S.rx);             /* bytes on the wire are lost too */
        S.rx.tail = S.rx.head;
    } else if (!strcmp(cmd, "disconnect")) {
        if (argc != 2 || !parse_double(argv[1], &v) || v < 0) {
            reply_error("usage: disconnect MS"); return;
        }
        if (!S.disconnected) { pty_close(); S.disconnects++; }
        S.disconnected = 1;
        S.rx.tail = S.rx.head;
        S.tx.tail = S.tx.head;
        S.reconnect_at = S.avr->cycle + ms_to_cycles(v);
    } else if (!strcmp(cmd, "stuck")) {
        encoder_t *e = parse_encoder(argc > 1 ? argv[1] : NULL);
        int ch = argc > 2 ? (!strcmp(argv[2], "A") || !strcmp(argv[2], "a") ? 0
                             : !strcmp(argv[2], "B") || !strcmp(argv[2], "b") ? 1 : -1) : -1;
        int level = argc > 3 ? (!strcmp(argv[3], "0") ? 0 : !strcmp(argv[3], "1") ? 1
                                : !strcmp(argv[3], "off") ? -1 : -2) : -2;
        if (argc != 4 || !e || ch < 0 || level == -2) {
            reply_error("usage: stuck cart|pole A|B 0|1|off"); return;
        }
        e->stuck[ch] = level;
        encoder_present(e);
    } else if (!strcmp(cmd, "glitch")) {
        encoder_t *e = parse_encoder(argc > 1 ? argv[1] : NULL);
        if (argc != 3 || !e || !parse_double(argv[2], &v) || v < 1 || v > 1e6) {
            reply_error("usage: glitch cart|pole N"); return;
        }
        e->glitch_left += (int)v;
        if (!e->glitch_armed) {
            e->glitch_armed = 1;
            avr_cycle_timer_register(S.avr, 1, glitch_timer, e);
        }
    } else if (!strcmp(cmd, "amp_fault")) {
        if (argc != 2 || (strcmp(argv[1], "0") && strcmp(argv[1], "1"))) {
            reply_error("usage: amp_fault 0|1"); return;
        }
        S.amp_fault = argv[1][0] == '1';
        update_inputs();
    } else if (!strcmp(cmd, "limit")) {
        int which = argc > 1 ? (!strcmp(argv[1], "neg") ? 0 : !strcmp(argv[1], "pos") ? 1 : -1) : -1;
        int level = argc > 2 ? (!strcmp(argv[2], "0") ? 0 : !strcmp(argv[2], "1") ? 1
                                : !strcmp(argv[2], "auto") ? -1 : -2) : -2;
        if (argc != 3 || which < 0 || level == -2) {
            reply_error("usage: limit neg|pos 0|1|auto"); return;
        }
        S.limit_force[which] = level;
        update_inputs();
    } else if (!strcmp(cmd, "reset")) {
        hard_reset();
    } else if (!strcmp(cmd, "speed")) {
        if (argc != 2 || !parse_double(argv[1], &v) || v < 0) {
            reply_error("usage: speed FACTOR (0 = as fast as possible)"); return;
        }
        S.speed = v;
        pace_rebase();
    } else {
        reply_error("unknown command: %s", cmd);
        return;
    }
    trace("F %llu %s\n", cyc, copy);
    reply_ok();
}

static void control_input(void) {
    for (;;) {
        char buf[1024];
        ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
        if (n == 0) { S.quit = 1; return; }          /* EOF: the parent is gone */
        if (n < 0) { if (errno != EAGAIN && errno != EINTR) S.quit = 1; return; }
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == '\n') {
                S.line[S.line_len] = 0;
                S.line_len = 0;
                command(S.line);
            } else if (S.line_len < sizeof S.line - 1) {
                S.line[S.line_len++] = buf[i];
            }
        }
    }
}

static avr_cycle_count_t io_timer(avr_t *avr, avr_cycle_count_t when, void *param) {
    (void)avr; (void)param;
    pace();
    if (g_signal) S.quit = 1;
    control_input();
    pty_io();
    return when + S.io_cycles;
}

/* ------------------------------------------------------------------------------------------- */
/* Reset handling: simavr's avr_reset cancels every cycle timer and zeroes the I/O registers */

/* simavr polls a low INTn pin every cycle while its sense control is "low level" (the reset
 * value), and keeps polling after the firmware selects edges: an interrupt storm. Off for all. */
static void extint_no_level_polling(avr_t *avr) {
    for (int n = 0; n < 8; n++) avr_extint_set_strict_lvl_trig(avr, (uint8_t)n, 0);
}

static avr_cycle_count_t post_reset_timer(avr_t *avr, avr_cycle_count_t when, void *param) {
    (void)when; (void)param;
    extint_no_level_polling(avr);            /* the extint module's reset turned it back on */
    S.last_mcusr = avr->data[R_MCUSR];
    trace("X %llu %d %lld %lld\n", (unsigned long long)avr->cycle, S.last_mcusr,
          S.enc[0].at_reset, S.enc[1].at_reset);
    return 0;
}

static void arm_timers(void) {
    avr_t *avr = S.avr;
    avr_cycle_timer_register(avr, S.step_cycles, plant_timer, NULL);
    avr_cycle_timer_register(avr, S.io_cycles, io_timer, NULL);
    avr_cycle_timer_register(avr, 0, post_reset_timer, NULL);
    for (int i = 0; i < 2; i++) {
        encoder_t *e = &S.enc[i];
        e->armed = 0;
        if (e->glitch_armed) avr_cycle_timer_register(avr, 1, glitch_timer, e);
        encoder_update(e, e->target);
    }
    S.feeding = 0;
    uart_start_feed();
}

static void after_reset(void) {
    /* Output pins are inputs again (ENABLE pulled down on the board); the port's IRQ values must
     * match the zeroed registers, or the firmware's first writes are filtered as no-change. */
    S.portb_reg->value = 0;
    S.portb_ddr->value = 0;
    for (int i = 0; i < 8; i++) S.portb_pins[i]->value = 0;
    S.pwm_irq->value = 0;
    S.ocr_active = 0;
    S.ocr_armed = 0;                         /* its timer went with the reset */
    restore_pin_registers();
    for (int i = 0; i < 2; i++) S.enc[i].at_reset = S.enc[i].line;
    for (int v = 0; v < 64; v++) { S.vec[v].inside = 0; S.vec[v].raised = 0; }
    S.xoff = 1;                              /* no input until the firmware's receiver is on */
    frame_acc_t empty = {0};
    S.rx_frame = empty;
    sample_outputs(-1);
    arm_timers();
}

static void on_reset(avr_t *avr) {
    if (S.core_reset) S.core_reset(avr);
    S.resets++;
    after_reset();
}

/* The external reset pin. Not from inside a cycle timer (avr_reset clears the timer list that
 * is being walked): the main loop does it between two avr_run() calls. */
static void hard_reset(void) { S.reset_requested = 1; }

static void do_reset_requested(void) {
    if (!S.reset_requested) return;
    S.reset_requested = 0;
    avr_reset(S.avr);
    S.avr->data[R_MCUSR] |= MCUSR_EXTRF;
}

static void avr_sleep_paced(avr_t *avr, avr_cycle_count_t how_long) {
    (void)avr; (void)how_long;               /* pacing happens in io_timer */
}

static void logger(avr_t *avr, const int level, const char *fmt, va_list ap) {
    (void)avr;
    if (level <= LOG_ERROR) vfprintf(stderr, fmt, ap);
}

/* ------------------------------------------------------------------------------------------- */
/* Setup */

static void on_signal(int sig) { g_signal = sig; }

static void usage(FILE *f) {
    fprintf(f,
        "usage: cartpole_sim [options] FIRMWARE.elf\n"
        "  plant:   --cart-mass --pole-mass --pole-length --friction --gravity\n"
        "  rig:     --cart-counts-per-m --pole-counts-per-rev --cart-sign --pole-sign\n"
        "           --pole-zero-angle --motor-force-max --motor-sign --motor-time-constant\n"
        "           --track-half-length --limit-switch-position --x0 P,PDOT,TH,THD\n"
        "  sim:     --f-cpu HZ --step-us US (plant step, 25) --io-us US (pty/control poll, 250)\n"
        "           --speed F (1 = real time, 0 = as fast as possible) --max-lag-ms MS (20;\n"
        "           further behind real time and simulated time slips; 0 = never)\n"
        "           --edge-min-us US (25: closest edges of one encoder) --glitch-us US (20) --seed N\n"
        "  io:      --link PATH (symlink to the current pty) --trace FILE\n"
        "           --sample-vector N (32 = TIMER3_COMPA: a P line at each entry; 0 = none)\n");
}

static void parse_args(int argc, char **argv) {
    enum { O_BASE = 1000 };
    static const struct { const char *name; double *d; int *i; } opts[] = {
        {"cart-mass", &C.cart_mass, NULL}, {"pole-mass", &C.pole_mass, NULL},
        {"pole-length", &C.pole_length, NULL}, {"friction", &C.friction, NULL},
        {"gravity", &C.gravity, NULL}, {"cart-counts-per-m", &C.cart_counts_per_m, NULL},
        {"pole-counts-per-rev", &C.pole_counts_per_rev, NULL},
        {"pole-zero-angle", &C.pole_zero_angle, NULL}, {"cart-sign", NULL, &C.cart_sign},
        {"pole-sign", NULL, &C.pole_sign}, {"motor-sign", NULL, &C.motor_sign},
        {"motor-force-max", &C.motor_force_max, NULL},
        {"motor-time-constant", &C.motor_time_constant, NULL},
        {"track-half-length", &C.track_half_length, NULL},
        {"limit-switch-position", &C.limit_switch_position, NULL},
        {"step-us", &C.step_us, NULL}, {"io-us", &C.io_us, NULL}, {"speed", &C.speed, NULL},
        {"max-lag-ms", &C.max_lag_ms, NULL}, {"edge-min-us", &C.edge_min_us, NULL},
        {"glitch-us", &C.glitch_us, NULL},
    };
    enum { N = sizeof opts / sizeof *opts };
    struct option lo[N + 9];
    for (int i = 0; i < N; i++) lo[i] = (struct option){ opts[i].name, 1, NULL, O_BASE + i };
    lo[N + 0] = (struct option){ "x0", 1, NULL, 'x' };
    lo[N + 1] = (struct option){ "f-cpu", 1, NULL, 'f' };
    lo[N + 2] = (struct option){ "seed", 1, NULL, 's' };
    lo[N + 3] = (struct option){ "link", 1, NULL, 'l' };
    lo[N + 4] = (struct option){ "trace", 1, NULL, 't' };
    lo[N + 5] = (struct option){ "help", 0, NULL, 'h' };
    lo[N + 6] = (struct option){ "sample-vector", 1, NULL, 'v' };
    lo[N + 7] = (struct option){ 0, 0, 0, 0 };
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        if (c >= O_BASE && c < O_BASE + N) {
            double v;
            if (!parse_double(optarg, &v)) {
                fprintf(stderr, "cartpole_sim: --%s: not a number: %s\n", opts[c - O_BASE].name,
                        optarg);
                exit(2);
            }
            if (opts[c - O_BASE].d) *opts[c - O_BASE].d = v;
            else *opts[c - O_BASE].i = (int)v;
            continue;
        }
        switch (c) {
        case 'x':
            if (sscanf(optarg, "%lf,%lf,%lf,%lf", &C.x0[0], &C.x0[1], &C.x0[2], &C.x0[3]) != 4) {
                fprintf(stderr, "cartpole_sim: --x0 P,PDOT,TH,THD\n"); exit(2);
            }
            break;
        case 'f': C.f_cpu = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 's': C.seed = strtoull(optarg, NULL, 10); break;
        case 'l': C.link = optarg; break;
        case 't': C.trace = optarg; break;
        case 'v': C.sample_vector = atoi(optarg); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc - 1) { usage(stderr); exit(2); }
    C.elf = argv[optind];
    int bad = 0;
    bad |= C.cart_mass <= 0 || C.pole_mass <= 0 || C.pole_length <= 0 || C.gravity <= 0;
    bad |= C.friction < 0 || C.cart_counts_per_m <= 0 || C.pole_counts_per_rev <= 0;
    bad |= abs(C.cart_sign) != 1 || abs(C.pole_sign) != 1 || abs(C.motor_sign) != 1;
    bad |= C.motor_force_max < 0 || C.motor_time_constant < 0 || C.track_half_length <= 0;
    bad |= C.limit_switch_position <= 0 || C.limit_switch_position > C.track_half_length;
    bad |= C.step_us <= 0 || C.io_us <= 0 || C.speed < 0 || C.f_cpu < 1000000;
    bad |= C.edge_min_us < 0 || C.glitch_us <= 0;
    if (bad) { fprintf(stderr, "cartpole_sim: parameter out of range\n"); exit(2); }
}

static pin_t make_pin(char port, int bit) {
    pin_t p = { port, bit, avr_io_getirq(S.avr, AVR_IOCTL_IOPORT_GETIRQ(port), bit), -1 };
    if (!p.irq) { fprintf(stderr, "cartpole_sim: no pin %c%d\n", port, bit); exit(2); }
    return p;
}

int main(int argc, char **argv) {
    parse_args(argc, argv);

    /* stdout is the control channel alone: simavr and its parts print to stdout. */
    int ctl_fd = dup(STDOUT_FILENO);
    dup2(STDERR_FILENO, STDOUT_FILENO);
    S.ctl = fdopen(ctl_fd, "w");
    fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);

    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    avr_global_logger_set(logger);

    elf_firmware_t fw;
    memset(&fw, 0, sizeof fw);
    if (elf_read_firmware(C.elf, &fw) != 0) {
        fprintf(stderr, "cartpole_sim: cannot read %s\n", C.elf); return 2;
    }
    S.avr = avr_make_mcu_by_name("atmega2560");
    if (!S.avr) { fprintf(stderr, "cartpole_sim: no atmega2560 core\n"); return 2; }
    avr_init(S.avr);
    fw.frequency = C.f_cpu;
    avr_load_firmware(S.avr, &fw);
    S.avr->frequency = C.f_cpu;
    S.avr->sleep = avr_sleep_paced;
    S.avr->log = 1;
    avr_t *avr = S.avr;

    S.rng = C.seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL;
    if (!S.rng) S.rng = 1;
    S.speed = C.speed;
    S.master = S.slave = -1;
    S.limit_force[0] = S.limit_force[1] = -1;
    S.step_cycles = (avr_cycle_count_t)llround(C.step_us * 1e-6 * C.f_cpu);
    S.io_cycles = (avr_cycle_count_t)llround(C.io_us * 1e-6 * C.f_cpu);
    S.edge_min_cycles = (avr_cycle_count_t)llround(C.edge_min_us * 1e-6 * C.f_cpu);
    S.glitch_cycles = (avr_cycle_count_t)llround(C.glitch_us * 1e-6 * C.f_cpu);
    if (S.step_cycles < 16) S.step_cycles = 16;
    if (S.io_cycles < 16) S.io_cycles = 16;
    if (S.edge_min_cycles < 1) S.edge_min_cycles = 1;
    if (S.glitch_cycles < 1) S.glitch_cycles = 1;
    double h = (double)S.step_cycles / C.f_cpu;
    S.lag = C.motor_time_constant > 0 ? 1.0 - exp(-h / C.motor_time_constant) : 1.0;
    memcpy(S.x, C.x0, sizeof S.x);

    if (C.trace) {
        S.trace = fopen(C.trace, "w");
        if (!S.trace) { fprintf(stderr, "cartpole_sim: %s: %s\n", C.trace, strerror(errno)); return 2; }
        setvbuf(S.trace, NULL, _IOFBF, 1 << 16);
        trace("# cartpole_sim trace %d f_cpu=%u\n", HARNESS_VERSION, C.f_cpu);
    }

    /* UART0: our own bridge */
    uint32_t flags = 0;
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)(AVR_UART_FLAG_POLL_SLEEP | AVR_UART_FLAG_STDIO);
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    S.uart_in = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    S.uart_out = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT);
    S.uart_xon = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON);
    S.uart_xoff = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF);
    avr_irq_register_notify(S.uart_out, on_uart_out, NULL);
    avr_irq_register_notify(S.uart_xon, on_uart_xon, NULL);
    avr_irq_register_notify(S.uart_xoff, on_uart_xoff, NULL);

    /* Motor outputs */
    S.portb_reg = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ(EBM_PWM_PORT), IOPORT_IRQ_REG_PORT);
    S.portb_ddr = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ(EBM_PWM_PORT), IOPORT_IRQ_DIRECTION_ALL);
    for (int i = 0; i < 8; i++)
        S.portb_pins[i] = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ(EBM_PWM_PORT), i);
    S.pwm_irq = avr_io_getirq(avr, AVR_IOCTL_TIMER_GETIRQ(EBM_PWM_TIMER), TIMER_IRQ_OUT_PWM0);
    if (!S.portb_reg || !S.portb_ddr || !S.pwm_irq) {
        fprintf(stderr, "cartpole_sim: motor output IRQs missing\n"); return 2;
    }
    avr_irq_register_notify(S.portb_reg, on_portb_write, NULL);
    avr_irq_register_notify(S.portb_ddr, on_ddrb_write, NULL);
    avr_irq_register_notify(S.pwm_irq, on_pwm, NULL);
    {   /* writes to Timer1's mode, TOP and compare registers (the IRQ follows the write) */
        const avr_io_addr_t regs[] = { R_TCCR1A, R_TCCR1B, R_ICR1L, R_OCR1AL };
        for (size_t i = 0; i < sizeof regs / sizeof *regs; i++)
            avr_irq_register_notify(avr_iomem_getirq(avr, regs[i], NULL, AVR_IOMEM_IRQ_ALL),
                                    on_pwm, NULL);
    }
    S.out.enable = -1;                       /* first sample is traced */

    /* Driven inputs */
    extint_no_level_polling(avr);
    S.enc[0] = (encoder_t){ .name = "cart", .stuck = {-1, -1} };
    S.enc[1] = (encoder_t){ .name = "pole", .stuck = {-1, -1} };
    S.enc[0].ch[0] = make_pin(EBM_CART_A_PORT, EBM_CART_A_BIT);
    S.enc[0].ch[1] = make_pin(EBM_CART_B_PORT, EBM_CART_B_BIT);
    S.enc[1].ch[0] = make_pin(EBM_POLE_A_PORT, EBM_POLE_A_BIT);
    S.enc[1].ch[1] = make_pin(EBM_POLE_B_PORT, EBM_POLE_B_BIT);
    S.limit_neg = make_pin(EBM_LIMIT_NEG_PORT, EBM_LIMIT_NEG_BIT);
    S.limit_pos = make_pin(EBM_LIMIT_POS_PORT, EBM_LIMIT_POS_BIT);
    S.fault = make_pin(EBM_FAULT_PORT, EBM_FAULT_BIT);
    for (int i = 0; i < 2; i++) {            /* the encoders start where the plant is */
        S.enc[i].line = S.enc[i].target = true_count(i);
        encoder_present(&S.enc[i]);
    }
    update_inputs();

    /* Interrupt statistics */
    for (int i = 0; i < avr->interrupts.vector_count; i++) {
        avr_int_vector_t *v = avr->interrupts.vector[i];
        avr_irq_register_notify(v->irq + AVR_INT_IRQ_PENDING, on_vector_pending, v);
        avr_irq_register_notify(v->irq + AVR_INT_IRQ_RUNNING, on_vector_running, v);
    }

    if (pty_open() < 0) return 2;
    S.start_ns = now_ns();
    pace_rebase();

    /* The power-on reset has already happened in avr_init: apply what follows every reset. */
    S.core_reset = avr->reset;
    avr->reset = on_reset;
    S.avr->data[R_MCUSR] |= 0x01;            /* PORF (avr_init set it; be explicit) */
    after_reset();

    {
        sb_t b = { malloc(1024), 0, 1024 };
        sb(&b, "{\"ready\":true,\"version\":%d,\"pid\":%d,\"pty\":", HARNESS_VERSION, (int)getpid());
        json_str(&b, S.pty_name);
        sb(&b, ",\"link\":");
        json_str(&b, C.link);
        sb(&b, ",\"trace\":");
        json_str(&b, C.trace);
        sb(&b, ",\"f_cpu\":%u,\"step_cycles\":%llu,\"io_cycles\":%llu}", C.f_cpu,
           (unsigned long long)S.step_cycles, (unsigned long long)S.io_cycles);
        reply(&b);
    }

    while (!S.quit && !g_signal) {
        int st = avr_run(avr);
        do_reset_requested();
        if (st == cpu_Done || st == cpu_Crashed) {
            /* The firmware stopped (sleep with interrupts off, or a crash): keep serving the
             * control channel, time stands still until a reset. */
            struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
            poll(&p, 1, 20);
            control_input();
            pty_io();
        }
    }
    if (S.trace) { fflush(S.trace); fclose(S.trace); }
    pty_close();
    return 0;
}
