# The README's two commands: `make run` (set up, then serve on 127.0.0.1:8123) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= example
# Every distribution in the repository: the core first, then each plugin.
DISTS := core $(patsubst %/setup.cfg,%,$(wildcard providers/*/setup.cfg mfa_modules/*/setup.cfg plugins_contrib/*/setup.cfg stores/*/setup.cfg))
STAMP := $(VENV)/.installed

.PHONY: setup run test bench lint clean

$(STAMP): Makefile requirements-test.txt $(addsuffix /setup.cfg,$(DISTS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(addprefix -e ./,$(DISTS)) -r requirements-test.txt
	touch $@

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/opp-auth -c $(CONFIG) serve --host 127.0.0.1 --port 8123

# Byte-compile the repository's code first: with PYTHONDONTWRITEBYTECODE set, every `opp-auth`
# process the tests start (hundreds: the crash test alone restarts the server 200 times in CI)
# would compile it again (incremental: only changed files are compiled).
test: $(STAMP)
	$(BIN)/python -m compileall -q $(DISTS) >/dev/null
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check core providers mfa_modules plugins_contrib stores tests bench
	$(BIN)/ruff format --check core providers mfa_modules plugins_contrib stores
	$(BIN)/mypy core/opp_auth

clean:
	rm -rf $(VENV) .pytest_cache build */*/build */*.egg-info */*/*.egg-info
