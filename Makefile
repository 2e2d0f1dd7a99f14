# Two commands for a new user: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench bench-scale mutants clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cipherloop demo

test: $(STAMP)
	$(BIN)/ruff check cipherloop bench tests scripts
	$(BIN)/mypy
	$(BIN)/pytest

# Mutation testing of the trust boundary (cosmic-ray; groups in mutation/groups.toml,
# equivalent mutants in mutation/equivalent.txt). Each mutant runs only its group's tests
# and both workers share every group, so one group takes minutes on 2 cores
# (`scripts/mutants.py --group api-releases`) and everything about an hour and a half.
# CI runs a sample (scripts/mutants-sample.sh). Fails when a mutant survives that is not
# listed as equivalent.
mutants: $(STAMP)
	$(BIN)/python scripts/mutants.py --jobs 2

bench: $(STAMP)
	$(BIN)/python bench/refine_lr.py

bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache cipherloop-demo
