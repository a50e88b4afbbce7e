# One command each: `make run` executes every notebook, `make test` runs every test.
# Both create .venv and install requirements.txt on first use (or when it changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Thread policy: one thread per process, for every target (kernels, tests, benchmark). torch
# starts one thread per core; when another program keeps a core busy, its threads spin waiting
# for each other and a 13 s lesson took 128-235 s (14.5 s with one thread). README, "Threads".
# Override per call: make run OMP_NUM_THREADS=2
OMP_NUM_THREADS ?= 1
export OMP_NUM_THREADS

.PHONY: setup run test test-portable lab slides chromium refresh benchmark clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

run: $(STAMP)  ## execute every notebook headlessly, print a time table (tracked files untouched)
	$(PY) tools/run_notebooks.py

test: $(STAMP)  ## unit tests for helper + strict nbval over every notebook
	$(PY) -m pytest

test-portable: $(STAMP)  ## every notebook again under several CPU-kernel settings (vector units, threads)
	$(PY) tools/test_portable.py $(PORTABLE)  # e.g. make test-portable PORTABLE="--setting mixed"

lab: $(STAMP)  ## open the course in JupyterLab
	$(VENV)/bin/jupyter lab notebooks/

slides: $(STAMP) chromium  ## instructors: offline reveal.js decks in artifacts/slides/, checked in headless Chromium
	$(PY) tools/slides.py browser

chromium:  ## Debian's Chromium for the slide check (installed with apt-get when missing and run as root)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "install Chromium (Debian/Ubuntu: apt-get install chromium) to check the slides"; exit 1; }

benchmark: $(STAMP)  ## time training, checkpoint save/load, and big-model loading (lesson 10) on this machine
	$(PY) tools/benchmark.py
	$(PY) tools/bench_loading.py

refresh: $(STAMP)  ## maintainers: re-execute notebooks in place and store their outputs
	$(PY) tools/run_notebooks.py --write

clean:  ## remove generated files (not the virtual environment)
	rm -rf artifacts .pytest_cache
