# The two commands a newcomer needs:   make demo   and   make test
# Each one sets everything up from nothing on first use (system library, venv, packages).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.terrain_ssl-installed
FLEET_STAMP := $(VENV)/.terrain_ssl-fleet-installed
PYTEST_ARGS ?=

.PHONY: demo test setup system-deps bench clean help

help:
	@echo "make demo   - simulate an off-road drive, learn terrain roughness live, write a report"
	@echo "make test   - run the test suite (real rclpy over DDS, real rosbag2 files)"
	@echo "make bench  - run every benchmark and print one table"
	@echo "make setup  - only install: libusb (for open3d), $(VENV) with ROS 2 rclpy wheels + deps"

demo: setup
	$(VENV)/bin/terrain-ssl demo $(DEMO_ARGS)

test: setup $(FLEET_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run_all.py

setup: system-deps $(STAMP)

# open3d's wheel links against the system libusb-1.0; it is the one system library we need.
system-deps:
	@if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libusb-1.0-0 (needed by open3d)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0; \
	  else \
	    echo "open3d needs the system library libusb-1.0. Install it, then re-run make:"; \
	    echo "  Debian/Ubuntu: sudo apt-get install libusb-1.0-0"; \
	    echo "  Fedora/RHEL:   sudo dnf install libusbx"; \
	    exit 1; \
	  fi; \
	fi
	@# A C compiler and the Python headers build the compiled kernels (terrain_ssl/core/_kernels.c).
	@# Without them everything still works, on their numpy reference (~2x slower per scan).
	@if ! command -v cc >/dev/null || ! $(PYTHON) -c "import os, sysconfig, sys; \
	    sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing gcc and python3-dev (for the compiled kernels)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev python3-dev; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev python3-dev; \
	  else \
	    echo "note: no C compiler or Python headers: the core will run on numpy (slower)."; \
	    echo "  Debian/Ubuntu: sudo apt-get install gcc python3-dev; then make setup again"; \
	  fi; \
	fi

# The editable install also compiles terrain_ssl/core/_kernels.c (any C compiler; without
# one it goes on, and scans take the slower numpy path).
$(STAMP): requirements.txt requirements-ros.txt setup.py terrain_ssl/core/_kernels.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-ros.txt -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import rclpy, sensor_msgs.msg, open3d, sklearn, cv2, terrain_ssl; print('environment ready')"
	touch $(STAMP)

# Ray and Optuna (terrain-ssl evaluate / tune and their tests): for the tests, not the robot.
$(FLEET_STAMP): $(STAMP) requirements-fleet.txt
	$(PY) -m pip install --quiet -r requirements-fleet.txt
	touch $(FLEET_STAMP)

clean:
	rm -rf $(VENV) build install log *.egg-info .pytest_cache demo_out
