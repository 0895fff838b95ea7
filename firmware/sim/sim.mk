# The firmware-in-the-loop harness (sim/cartpole_sim.c): a host program on libsimavr that runs the
# firmware ELF with a cart-pole behind its pins. Included by firmware/Makefile (-include
# sim/sim.mk); also usable alone: make -C firmware -f sim/sim.mk sim.
# Needs nothing from the firmware build: a C compiler, libsimavr-dev and libelf-dev.

_SIM_SAVED_GOAL := $(.DEFAULT_GOAL)

SIM_BUILD  ?= $(or $(BUILD),build)/sim
SIM_CC     ?= cc
SIM_CFLAGS ?= -O2 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter
SIM_SIMAVR_CFLAGS := $(shell pkg-config --cflags simavr 2>/dev/null || echo -I/usr/include/simavr)
SIM_SIMAVR_LIBS   := $(shell pkg-config --libs simavr 2>/dev/null || echo -lsimavr)
SIM_LIBS   ?= $(SIM_SIMAVR_LIBS) -lelf -lutil -lm

.PHONY: sim sim-clean
sim: $(SIM_BUILD)/cartpole_sim

$(SIM_BUILD)/cartpole_sim: sim/cartpole_sim.c boards/mega2560_pins.h sim/sim.mk
	@mkdir -p $(@D)
	$(SIM_CC) $(SIM_CFLAGS) $(SIM_SIMAVR_CFLAGS) -Iboards -o $@.tmp sim/cartpole_sim.c $(SIM_LIBS)
	@mv -f $@.tmp $@

sim-clean:
	rm -rf $(SIM_BUILD)

# Leave the including Makefile's default goal alone (empty: its next target becomes the default).
.DEFAULT_GOAL := $(_SIM_SAVED_GOAL)
