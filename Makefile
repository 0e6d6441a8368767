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

.PHONY: venv base-images image image-cuda model setup tools run lint test unit mutate bench soak screenshots reproduce image-arm64 test-arm64 test-cuda clean

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

# The CUDA image (not part of `make test`: a long compile). Without a registry its builder base is made
# from Debian's nvidia-cuda-toolkit (scripts/make-base-images cuda, about 6 GB). CUDA_ARCH is
# CMAKE_CUDA_ARCHITECTURES, one architecture (90: Hopper, the newest CUDA 11.8 compiles for).
CUDA_ARCH ?= 90
image-cuda: venv
	@if [ "$$(id -u)" -eq 0 ]; then scripts/make-base-images cuda; else sudo scripts/make-base-images cuda; fi
	$(BIN)/llama-supervisorctl build cuda --cuda-arch $(CUDA_ARCH)

model: venv
	$(BIN)/llama-supervisorctl fetch-model

setup: image model

# Host tools some tests run: gpg/gpgv (the lock signature), systemd-analyze (the unit files),
# systemd-socket-activate (socket activation, tests/integration/test_socket_activation.py),
# chromium + chromedriver (the web console in a real headless browser, driven by selenium) and
# docker-registry (Debian's distribution registry: the push/pull round trip, tests/integration/test_registry.py).
# Installed only when missing, and only as root; otherwise it says what to install and goes on, and
# those tests skip (locally) or fail (under CI, where CI is set).
TOOLS := gpg gpgv systemd-analyze systemd-socket-activate chromium chromedriver docker-registry
TOOL_PACKAGES := gnupg gpgv systemd chromium chromium-driver docker-registry
tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(TOOL_PACKAGES) for:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TOOL_PACKAGES) >/dev/null; \
	else \
		echo "missing:$$missing; as root: apt-get install $(TOOL_PACKAGES) (their tests skip, or fail under CI)" >&2; \
	fi

run: setup
	$(BIN)/llama-supervisord --manifests $(LLAMA_SUPERVISOR_MANIFESTS)

# The package layers ([tool.importlinter] in pyproject.toml, docs/DESIGN.md "Module map"), then
# mypy --strict over the packages [tool.mypy] names.
lint: venv
	$(BIN)/lint-imports
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

# image-arm64: the arm64 tests (tests/integration/test_arm64.py) need the cross-built image and qemu;
# on a fresh machine that is one more llama-server build, from the layer cache after that.
test: setup tools lint image-arm64
	$(BIN)/pytest -ra -m "not cuda" tests

# The arm64 image (issue 19): the cross builder base and qemu where missing (scripts/make-base-images
# arm64), then the cross build: cold on a fresh machine (about one more llama-server build), from the
# layer cache (seconds) after that. Part of `make test`: its tests read the image's facts and serve a
# completion from it under emulation (tests/integration/test_arm64.py).
image-arm64: venv
	@if [ "$$(id -u)" -eq 0 ]; then scripts/make-base-images arm64; else sudo scripts/make-base-images arm64; fi
	$(BIN)/llama-supervisorctl build arm64

# Only the arm64 tests (they are part of `make test` too).
test-arm64: setup tools image-arm64
	$(BIN)/pytest -ra -m arm64 tests

# The cuda image (issue 19): its facts, its root, and the demo model served on the CPU where there is no GPU
# (tests/integration/test_cuda.py). image-cuda makes the Debian CUDA builder base and compiles: long, once.
test-cuda: setup tools image-cuda
	$(BIN)/pytest -ra -m cuda tests

# Mutation testing (docs/TESTING.md): mutmut over the packages in [tool.mutmut] against tests/unit only.
# Not part of `make test`. MUTANTS narrows it (a glob of mutant names, e.g. 'supervisor.core.*');
# MUTATE_JOBS is the number of parallel workers.
MUTANTS ?=
MUTATE_JOBS ?= 2
mutate: venv
	$(BIN)/pip install -q -e '.[test,mutate]'
	$(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(foreach m,$(MUTANTS),'$(m)')
	$(BIN)/python scripts/mutation-score

# A full no-cache rebuild of one variant compared with the lock (README "Reproducible"): exit 0 when the
# binary is reproduced, 3 naming what differs. A full build, so not part of `make test`.
REPRODUCE ?= arm64
reproduce: venv base-images image-arm64
	$(BIN)/llama-supervisorctl build $(REPRODUCE)
	$(BIN)/llama-supervisorctl verify --rebuild $(REPRODUCE)

bench: setup
	$(BIN)/python -m bench.run --out docs/BENCHMARKS.md $(BENCH_ARGS)

soak: setup
	$(BIN)/python -m bench.soak --duration $(or $(DURATION),600)

# The console's screenshots in docs/console/ (README), each page at desktop width and at 390 px, of a real
# daemon running the demo model (after `make setup`).
screenshots: venv tools
	CONSOLE_SCREENSHOTS=1 $(BIN)/pytest -q tests/integration/test_console_browser.py -k screenshots

clean:
	rm -rf $(VENV) $(STATE)
