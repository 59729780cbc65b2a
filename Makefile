PYTHON ?= python3

.PHONY: install install-test install-bench demo test bench bench-quick

install:
	$(PYTHON) -m pip install -q -e .

install-test:
	$(PYTHON) -m pip install -q -e '.[test]'

demo: install
	$(PYTHON) examples/demo.py

test: install-test
	$(PYTHON) -m pytest -q

install-bench:
	$(PYTHON) -m pip install -q -e '.[bench]'

bench: install-bench
	$(PYTHON) bench/run.py

bench-quick: install-bench
	$(PYTHON) bench/run.py --quick
