# make demo / make test: create .venv if needed, install once (re-install only when
# pyproject.toml changes), then run.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test test-quick install bench clean

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dormant demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/python -m pytest

# the inner loop: everything but the slow real-CLI, whole-study and crash tests
test-quick: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/python -m pytest -m "not slow"

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/train_throughput.py
	$(VENV)/bin/python benchmarks/fisher.py --model cnn-small --data digits

clean:
	rm -rf $(VENV) runs .pytest_cache
