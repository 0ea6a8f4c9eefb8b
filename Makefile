# Two commands for a new user: `make run` and `make test`. Both make .venv from the lock first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export PYTHONUNBUFFERED := 1

.PHONY: venv run test test-unit test-integration test-e2e bench lint stack-up stack-down lock clean

venv:
	@infra/local/venv.sh

## run: start the local stack and run the end-to-end retrain on the embedded default
## (profiles/demo.yaml: DEMO gates and the local demo reviewer, so the smoke-sized model
## walks the whole path to the simulated robots; never a production profile)
DEMO := --params profiles/demo.yaml
run: venv
	$(BIN)/wallwm stack up $(DEMO)
	$(BIN)/wallwm schedule apply $(DEMO)
	$(BIN)/wallwm retrain $(DEMO)

## test: the whole suite (services are started by fixtures on free ports)
## (pytest-xdist: TEST_WORKERS processes, whole modules each, the `slow` ones first; each
## worker starts its own stack on free ports; TEST_WORKERS=0 runs in one process)
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)
test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -q $(XDIST)

test-unit: venv
	$(BIN)/python -m pytest tests/unit -q

test-integration: venv
	$(BIN)/python -m pytest tests/integration -q

test-e2e: venv
	$(BIN)/python -m pytest tests/e2e -q

## bench: every benchmark; writes benchmarks/results.json and benchmarks/RESULTS.md
bench: venv
	$(BIN)/python -m benchmarks.run_all

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

stack-up: venv
	$(BIN)/wallwm stack up

stack-down: venv
	$(BIN)/wallwm stack down

## lock: re-resolve the dependencies into constraints.txt (after editing pyproject.toml)
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install -q -c infra/local/seed-constraints.txt -e '.[dev]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e ' | sort -f > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache
