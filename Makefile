PY := .venv/bin/python
# Arguments for pytest after the defaults, e.g. make test-avx2 TESTS="tests/test_bench.py -x"
TESTS ?=
PYTEST = -m pytest -q --durations=15 $(TESTS)
# MKL, oneDNN and PyTorch's own CPU kernels limited to AVX2, as on an AVX2-only CPU (bf16
# emulated): the variables of bench/flops.py's AVX2_KERNELS, read as the libraries start
AVX2_KERNELS := MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2

.PHONY: setup test test-bf16-on test-bf16-off test-avx2 test-latest demo docs docs-serve
setup:
	./scripts/setup.sh

# The suite on the pinned versions of scripts/constraints.txt, --bf16 auto as this CPU measures.
test:
	./scripts/setup.sh test
	$(PY) $(PYTEST)

# The suite with --bf16 auto forced to bf16 / fp32 on the CPU (TAGTUNE_CPU_BF16, which the
# processes the tests start inherit), and with the kernels limited to AVX2: together they stand
# for the CPUs the suite must pass on, whichever this one is.
test-bf16-on:
	./scripts/setup.sh test
	TAGTUNE_CPU_BF16=on $(PY) $(PYTEST)

test-bf16-off:
	./scripts/setup.sh test
	TAGTUNE_CPU_BF16=off $(PY) $(PYTEST)

test-avx2:
	./scripts/setup.sh test
	env $(AVX2_KERNELS) $(PY) $(PYTEST)

# The suite on the newest releases of every dependency but torch, in .venv-latest.
test-latest:
	./scripts/setup.sh latest
	.venv-latest/bin/python $(PYTEST) --unpinned

demo: setup
	$(PY) -m tagtune.apps.demo

# The documentation site (mkdocs.yml, docs/) built into site/, every warning an error; and served
# at http://127.0.0.1:8000 while you edit it.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr 127.0.0.1:8000
