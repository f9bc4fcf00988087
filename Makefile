# rnnofrnns: `make test` and `make demo` work from a fresh clone.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
# The CUDA wheel of torch 2.13.0 pins triton 3.7.1; keep the two in step.
TRITON_SPEC ?= triton==3.7.1
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
# Without a GPU the Triton kernels are checked in Triton's interpreter on CPU tensors.
HAS_GPU     := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
ifeq ($(HAS_GPU),1)
TRITON_ENV  := TRITON_INTERPRET=0
else
TRITON_ENV  := TRITON_INTERPRET=1
endif
PYTEST_ARGS ?=

.PHONY: all install deps test bench demo clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# Third-party packages, once per venv (or when this Makefile changes).
$(VENV)/.deps-stamp: Makefile | $(PY)
	$(PIP) install --disable-pip-version-check "$(TORCH_SPEC)" "$(TRITON_SPEC)" numpy ninja \
		pytest pytest-benchmark hypothesis tqdm matplotlib scikit-learn mnist1d mlxtend requests
	touch $@

deps: $(VENV)/.deps-stamp

# The package itself, built against the installed torch (no build isolation). The kernels are
# compiled in place, their objects kept in build/ (ninja), so that a rebuild after an edit and the
# wheel test (tests/test_install.py) recompile only what changed; the editable install then only
# links the package into the venv.
$(VENV)/.install-stamp: $(VENV)/.deps-stamp setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*/*.cpp csrc/*/*.h csrc/*/*/*.h)
	$(PY) setup.py -q build_ext --inplace
	RNNOFRNNS_NO_EXT=1 $(PIP) install --disable-pip-version-check --no-build-isolation --no-deps -e .
	$(PY) -c "import rnnofrnns; assert rnnofrnns.cpu_extension_available(), 'rnnofrnns._C did not load'"
	touch $@

install: $(VENV)/.install-stamp

test: install
	$(TRITON_ENV) $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	mkdir -p bench/results
	$(TRITON_ENV) $(PY) -m pytest bench/ops/test_bench_modular_rnn.py --benchmark-enable --benchmark-only \
		--benchmark-json=bench/results/modular_rnn.json $(PYTEST_ARGS)
	$(TRITON_ENV) $(PY) -m pytest bench/ops/test_bench_ensemble.py --benchmark-enable --benchmark-only \
		--benchmark-json=bench/results/ensemble.json $(PYTEST_ARGS)
	$(TRITON_ENV) $(PY) -m pytest bench/ops/test_bench_gated_paths.py --benchmark-enable --benchmark-only \
		--benchmark-json=bench/results/gated_paths.json $(PYTEST_ARGS)
	$(PY) bench/ops/report.py bench/results/modular_rnn.json bench/results/ensemble.json bench/results/gated_paths.json

demo: install
	$(TRITON_ENV) $(PY) -m rnnofrnns demo --out runs/demo

clean:
	rm -rf build dist *.egg-info rnnofrnns/_C*.so bench/results .pytest_cache .benchmarks
