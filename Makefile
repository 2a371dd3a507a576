# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv when missing, install, build the embedded demo set, print the audit
#   make test   - create .venv when missing, install, run the tests
# For contributors:
#   make lint       - ruff check, ruff format --check and mypy (the gate .ci/run runs before the tests)
#   make format     - ruff's fixes and formatting, in place
#   make test-fast  - the tests not marked slow (~20 s of CPU): the inner loop
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint format bench chromium clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stgr demo --out outputs/demo

test: $(STAMP) chromium
	$(VENV)/bin/python -m pytest -q -n 2 --durations=15

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

# Every check runs, and the target fails if any failed (all problems in one go).
lint: $(STAMP)
	@status=0; \
	$(VENV)/bin/ruff check . || status=1; \
	$(VENV)/bin/ruff format --check . || status=1; \
	$(VENV)/bin/mypy || status=1; \
	exit $$status

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The gallery test renders the page in headless Chromium (Debian's package): installed here when
# missing and running as root; otherwise that one test is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; } ; } || \
	  echo "chromium not installed: the gallery test will be skipped"

bench: $(STAMP)
	$(VENV)/bin/python bench/sample_frames.py
	$(VENV)/bin/python bench/memory.py
	$(VENV)/bin/python bench/annotate_throughput.py
	$(VENV)/bin/python bench/full_size.py
	$(VENV)/bin/python bench/chaos.py
	$(VENV)/bin/python bench/track_gate.py

clean:
	rm -rf outputs/demo .pytest_cache
