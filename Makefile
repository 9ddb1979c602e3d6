PY := .venv/bin/python

.PHONY: setup test demo
setup:
	./scripts/setup.sh

test:
	./scripts/setup.sh test
	$(PY) -m pytest -q

demo: setup
	$(PY) -m tagtune.demo
