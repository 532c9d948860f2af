# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    := demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-slow test-integration browser fuzz bench bench-quality bench-precision bench-gpu wheels install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# the fast tier a newcomer runs (minutes): every command on tiny data, the invariants, the refusals
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not slow" --durations=15

# crash drills, benchmark dry runs, quality checks, the headless-browser check (docs/testing.md)
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not integration" --durations=15

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q -m integration --durations=15

# Debian's Chromium for the report's browser check (test-slow skips that one test without it)
browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# the hostile-input fuzz suite with many random examples (make test runs a few, derandomized)
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} FUZZ_RANDOM=1 $(BIN)/python -m pytest -q tests/test_fuzz.py tests/test_fuzz_crawl.py

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh $(DEMO)

bench: $(STAMP)
	for b in benchmarks/*.py; do case $$b in *heads_quality.py|*precision.py|*_util.py|*__init__.py) continue;; esac; \
		m=$$(basename $$b .py); echo "== benchmarks.$$m"; $(BIN)/python -m benchmarks.$$m || exit 1; done

# learning quality of `heads fit` on planted stores, several seeds and precisions (about an hour on 2 cores)
bench-quality: $(STAMP)
	$(BIN)/python -m benchmarks.heads_quality

# what bf16 and the nvJPEG path's preprocessing do to image features, every row, and to the labels a
# classifier gives (about 45 minutes on 2 cores: the bf16 jobs are emulated on a CPU without bf16)
bench-precision: $(STAMP)
	$(BIN)/python -m benchmarks.precision

# The prepared GPU check, for a GPU machine with no network (torch, torchvision, transformers, h5py,
# scikit-learn, typer there; zarr, numcodecs and dask carried as wheels in .whl/, made here by
# `make wheels`). Uses the machine's python3, not the venv. Writes gpu-bench.{md,json} to $$OUT or ./.
GPU_WHEELS := zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 dask==2026.7.0 distributed==2026.7.0 \
	partd==1.4.2 locket==1.0.0 zict==3.0.0 tblib==3.2.2 tornado==6.6.1 google-crc32c==1.9.0
bench-gpu:
	python3 -c "import zarr, numcodecs, dask" 2>/dev/null || { \
		python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
		&& echo "installed the carried wheels into /tmp/site"; }
	PYTHONPATH=/tmp/site:$$PYTHONPATH PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu $(GPU_ARGS)

wheels:
	mkdir -p .whl && $(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS) && ls .whl

clean:
	rm -rf $(DEMO) .pytest_cache
