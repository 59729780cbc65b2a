PYTHON ?= python3

.PHONY: install install-test install-bench demo test bench bench-quick

# An editable install leaves gigq_mp uncompiled: byte-compile it as pip does a regular install,
# or each fork server start compiles it anew where PYTHONDONTWRITEBYTECODE is set (and again
# after each change to gigq_mp, until one of these targets runs).
COMPILE = $(PYTHON) -m compileall -q gigq_mp

install:
	$(PYTHON) -m pip install -q -e .
	$(COMPILE)

install-test:
	$(PYTHON) -m pip install -q -e '.[test]'
	$(COMPILE)

demo: install
	$(PYTHON) examples/demo.py

test: install-test
	$(PYTHON) -m pytest -q

install-bench:
	$(PYTHON) -m pip install -q -e '.[bench]'
	$(COMPILE)

bench: install-bench
	$(PYTHON) bench/run.py

bench-quick: install-bench
	$(PYTHON) bench/run.py --quick
