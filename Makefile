# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    := demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-integration fuzz bench bench-quality install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q -m integration

# the hostile-input fuzz suite with many random examples (make test runs a few, derandomized)
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} FUZZ_RANDOM=1 $(BIN)/python -m pytest -q tests/test_fuzz.py

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh $(DEMO)

bench: $(STAMP)
	for b in benchmarks/*.py; do case $$b in *heads_quality.py) continue;; esac; \
		echo "== $$b"; $(BIN)/python $$b || exit 1; done

# learning quality of `heads fit` on planted stores, several seeds and precisions (about an hour on 2 cores)
bench-quality: $(STAMP)
	$(BIN)/python benchmarks/heads_quality.py

clean:
	rm -rf $(DEMO) .pytest_cache
