# Two commands do all the set-up on a fresh machine (see README):
#   make demo   creates .venv, installs router with its models, runs `router demo`
#   make test   the same venv plus test tools, redis-server, PostgreSQL and Chromium, then the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# llama.cpp is compiled for this CPU (-march=native) but without AMX: some virtual machines list AMX in their CPU
# flags and then fault on its tile instructions (SIGILL in ggml's AMX matmul), and these small models gain little.
LLAMA_FLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16

.PHONY: demo test install bench lint

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# llama-cpp-python compiles llama.cpp once (about 8-12 minutes on 2 cores); pip caches the wheel
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) CMAKE_ARGS="-DCMAKE_C_FLAGS='$(LLAMA_FLAGS)' -DCMAKE_CXX_FLAGS='$(LLAMA_FLAGS)'" \
		$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/router demo

test: $(STAMP)
	bash scripts/ensure-services.sh
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check router tests benchmarks scripts
	$(VENV)/bin/mypy router

bench: $(STAMP)
	$(PY) benchmarks/bench_tiers.py
