# The project's command surface: the README and .ci/run call these targets.
#
# Every environment installs from uv.lock, so a commit installs the same packages on any day.
# uv itself is bootstrapped from PyPI into .tools/ when it is not on PATH.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)

# uv puts the project's environment here, and never downloads an interpreter of its own.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never

.PHONY: serve demo test lint format bench lock runtime dev clean

.tools/bin/uv:
	@echo "tripwire: bootstrapping uv $(UV_VERSION) from PyPI into .tools/ ..."
	@$(PYTHON) -m venv .tools
	@.tools/bin/pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'

# The runtime only: what `tripwire serve` needs, no test or dev tools. --inexact keeps dev
# tools a previous `make test` installed.
runtime: $(UV)
	@echo "tripwire: installing the runtime packages from uv.lock into $(VENV)/ ..."
	@start=$$(date +%s); $(UV) sync --locked --no-dev --extra uvloop --inexact --compile-bytecode --quiet \
	  && echo "tripwire: runtime ready in $$(( $$(date +%s) - start )) s"

# The runtime plus the test and dev toolchain (the lock's `dev` group).
dev: $(UV)
	@echo "tripwire: installing the runtime and the dev/test tools from uv.lock into $(VENV)/ ..."
	@start=$$(date +%s); $(UV) sync --locked --extra uvloop --compile-bytecode --quiet \
	  && echo "tripwire: dev environment ready in $$(( $$(date +%s) - start )) s"

serve: runtime  ## start the proxy on 127.0.0.1:8787 (embedded state)
	$(BIN)/tripwire serve $(ARGS)

demo: runtime  ## three runaway agents against a built-in mock provider
	$(BIN)/tripwire demo

test: dev  ## lint, type-check and run the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

bench: dev  ## benchmark harness: quick (about 4 min); ARGS=--full for the long run
	$(BIN)/python -m bench $(ARGS)

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Refresh the lock to the newest releases the ranges in pyproject.toml allow, then prove it:
# commit uv.lock only after this passes.
lock: $(UV)
	$(UV) lock --upgrade
	$(MAKE) test

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
