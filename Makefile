# llama-supervisor: `make run` serves the demo model, `make test` runs every test.
# Both do all set-up on a fresh machine: venv, base images, image build, demo model.

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
STATE    ?= $(CURDIR)/var
export LLAMA_SUPERVISOR_STATE_DIR ?= $(STATE)/state
export LLAMA_SUPERVISOR_CACHE_DIR ?= $(STATE)/cache
# The control socket stays at its standard place (paths.socket_path), so that
# llama-supervisorctl in another shell finds the daemon `make run` started, and
# asks it where this state is (verify, hardware, fetch-model, ...: cli/where.py).
export LLAMA_SUPERVISOR_MANIFESTS ?= $(CURDIR)/manifests

.PHONY: venv base-images image model setup run test unit bench soak clean

$(BIN)/llama-supervisorctl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/llama-supervisorctl

base-images:
	@if [ "$$(id -u)" -eq 0 ]; then scripts/make-base-images; else sudo scripts/make-base-images; fi

image: venv base-images
	$(BIN)/llama-supervisorctl build auto

model: venv
	$(BIN)/llama-supervisorctl fetch-model

setup: image model

run: setup
	$(BIN)/llama-supervisord --manifests $(LLAMA_SUPERVISOR_MANIFESTS)

unit: venv
	$(BIN)/pytest -q tests/unit

test: setup
	$(BIN)/pytest -ra tests

bench: setup
	$(BIN)/python -m bench.run --out docs/BENCHMARKS.md $(BENCH_ARGS)

soak: setup
	$(BIN)/python -m bench.soak --duration $(or $(DURATION),600)

clean:
	rm -rf $(VENV) $(STATE)
