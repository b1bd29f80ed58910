# The two commands a newcomer needs:   make demo   and   make test
# Each one sets everything up from nothing on first use (C compiler check, venv, packages).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.terrain_ssl-installed
FLEET_STAMP := $(VENV)/.terrain_ssl-fleet-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast setup system-deps bench clean help

help:
	@echo "make demo      - simulate an off-road drive, learn terrain roughness live, write a report"
	@echo "make test      - run the whole test suite (real rclpy over DDS, real rosbag2 files, lint)"
	@echo "make test-fast - the tests not marked slow, for day-to-day work"
	@echo "make bench     - run every benchmark and print one table"
	@echo "make setup     - only install: $(VENV) with ROS 2 rclpy wheels + deps, the compiled core"

demo: setup
	$(VENV)/bin/terrain-ssl demo $(DEMO_ARGS)

test: setup $(FLEET_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run_all.py

setup: system-deps $(STAMP)

# A C compiler and the Python headers build the compiled core (terrain_ssl/core/_kernels.c),
# which the package needs. As root (or with passwordless sudo) they are installed; otherwise
# make stops with one line that says what to install.
system-deps:
	@if ! command -v cc >/dev/null || ! $(PYTHON) -c "import os, sysconfig, sys; \
	    sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing gcc and python3-dev (for the compiled core)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev python3-dev; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev python3-dev; \
	  else \
	    echo "terrain_ssl needs a C compiler and the Python headers to build its core:" \
	         "sudo apt-get install gcc python3-dev (Debian/Ubuntu), then make again"; \
	    exit 1; \
	  fi; \
	fi

# The editable install also compiles terrain_ssl/core/_kernels.c.
$(STAMP): requirements.txt requirements-ros.txt setup.py terrain_ssl/core/_kernels.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-ros.txt -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import rclpy, sensor_msgs.msg, terrain_ssl.core.kernels; print('environment ready')"
	touch $(STAMP)

# Ray and Optuna (terrain-ssl evaluate / tune and their tests): for the tests, not the robot.
$(FLEET_STAMP): $(STAMP) requirements-fleet.txt
	$(PY) -m pip install --quiet -r requirements-fleet.txt
	touch $(FLEET_STAMP)

clean:
	rm -rf $(VENV) build install log *.egg-info .pytest_cache demo_out
