# `make demo` and `make test` set everything up on a fresh machine (Python 3.10+ and make).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -e '.[train,dev,diffusers]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

demo: $(STAMP)
	bash scripts/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check diffclass_cli tests benchmarks

clean:
	rm -rf $(VENV) runs demo-out .pytest_cache
