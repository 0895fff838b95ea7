# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Isolated DDS for everything started from here.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
export AMENT_PREFIX_PATH := $(abspath $(VENV))$(if $(AMENT_PREFIX_PATH),:$(AMENT_PREFIX_PATH),)

.PHONY: venv system demo test bench-step bench-learn clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

# Learns through the ROS 2 node graph (five processes over DDS); `ebmcpilco demo` is in-process.
demo: $(STAMP)
	$(BIN)/ebmcpilco sim

# Debian packages for the firmware tests (AVR toolchain, simavr): installed when root or with
# password-less sudo, else the one command to run is printed.
system:
	scripts/system-packages.sh

test: $(STAMP) system
	$(BIN)/python -m pytest -q test

bench-step: $(STAMP)
	$(BIN)/ebmcpilco bench step --points 60 120 170 --json results/bench_step.json

bench-learn: $(STAMP)
	$(BIN)/ebmcpilco bench learn --algorithm mc --seeds 1 2 3 4 5 --json results/bench_learn.json

clean:
	rm -rf $(VENV) build install log *.egg-info firmware/build
