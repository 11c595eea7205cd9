# sbc developer entry points.  Quick start on a fresh Debian machine with Python 3.11+:
#   make run    # virtualenv, install, dev certificates, start the SBC with deploy/sbc.example.yaml
#   make test   # test dependencies, system tools (redis-server, sipp, socat, baresip), then all tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= deploy/sbc.example.yaml
PYTEST_ARGS ?=

.PHONY: run test deps check-config lint typecheck bench bench-sip bench-signalling bench-media bench-policy fuzz clean

$(VENV)/.stamp-runtime: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed; installing python3-venv (Debian)"; \
	  apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-runtime
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-test
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

## run: start the SBC with the example configuration (dev certificates made on first run)
run: $(VENV)/.stamp-runtime
	$(BIN)/sbc run -c $(CONFIG) --init-dev-certs certs

## test: install what the tests need (incl. a Redis server when none answers) and run them all
test: $(VENV)/.stamp-test
	@bash tests/tools/ensure-deps.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## deps: the system tools end-to-end tests use, from Debian packages
deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server sip-tester socat baresip-core

check-config: $(VENV)/.stamp-runtime
	$(BIN)/sbc check-config $(CONFIG)

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check sbc tests bench

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy

## bench: every benchmark (figures, never pass/fail)
bench: bench-sip bench-signalling bench-media bench-policy

bench-sip: $(VENV)/.stamp-runtime
	$(BIN)/python bench/bench_sip_parse.py

bench-signalling: $(VENV)/.stamp-runtime
	$(BIN)/python bench/bench_signalling.py

bench-media: $(VENV)/.stamp-runtime
	$(BIN)/python bench/bench_media.py

bench-policy: $(VENV)/.stamp-runtime
	$(BIN)/python bench/bench_policy.py

## fuzz: the deep hypothesis profile (100k+ examples per property)
fuzz: $(VENV)/.stamp-test
	HYPOTHESIS_PROFILE=deep $(BIN)/python -m pytest tests/sip/test_sip_fuzz.py tests/media/test_sdp_fuzz.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
