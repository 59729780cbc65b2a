PYTHON ?= python3

.PHONY: install install-test demo test

install:
	$(PYTHON) -m pip install -q -e .

install-test:
	$(PYTHON) -m pip install -q -e '.[test]'

demo: install
	$(PYTHON) examples/demo.py

test: install-test
	$(PYTHON) -m pytest -q
