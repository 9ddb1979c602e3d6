PY := .venv/bin/python

.PHONY: setup test demo
setup:
	./scripts/setup.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m tagtune.demo
