# Two commands do all the set-up on a fresh machine (see README):
#   make demo   creates .venv, installs router with its models, runs `router demo`
#   make test   the same venv plus test tools, redis-server and PostgreSQL, then the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench lint

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# llama-cpp-python compiles llama.cpp once (about 8-12 minutes on 2 cores); pip caches the wheel
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/router demo

test: $(STAMP)
	bash scripts/ensure-services.sh
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check router tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_tiers.py
