# make demo / make test: create .venv if needed, install once (re-install only when
# pyproject.toml changes), then run.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test test-quick test-fuzz install bench clean docs docs-serve

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

# property-based CLI fuzzing at depth: 500 random examples a property (make test runs 25)
test-fuzz: $(STAMP)
	$(VENV)/bin/python -m pytest -m fuzz tests/test_fuzz.py

# the documentation site (strict: a broken link or any warning fails); docs-serve previews it
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/train_throughput.py
	$(VENV)/bin/python benchmarks/fisher.py --model cnn-small --data digits

clean:
	rm -rf $(VENV) runs site .pytest_cache
