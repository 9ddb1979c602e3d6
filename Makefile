PY := .venv/bin/python

.PHONY: setup test demo
setup:
	./scripts/setup.sh

test:
	./scripts/setup.sh test
	$(PY) -m pytest -q --durations=15

demo: setup
	$(PY) -m tagtune.demo
