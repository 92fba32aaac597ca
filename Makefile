# Two entry points: `make demo` (install + run the end-to-end demo) and `make test` (install + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/affectmae: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/affectmae

demo: install
	$(BIN)/affectmae demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo_output
