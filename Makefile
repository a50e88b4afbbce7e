# One command each: `make lab` opens the course, `make run` executes every notebook, `make test`
# runs every test. Each creates .venv on first use and installs what it needs (again whenever a
# requirements file changes): students requirements.txt, instructors also requirements-slides.txt,
# maintainers also requirements-dev.txt. Without make (Windows): README, "Install".
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev
SLIDES := $(VENV)/.installed-slides
SITE   := $(VENV)/.installed-site
# Thread policy: one thread per process, for every target (kernels, tests, benchmark, lab), set by
# tools/harness.py (the one place) unless the caller chose: make run OMP_NUM_THREADS=2. README, "Threads".
# The tools run as modules of the tools package: $(PY) -m tools.NAME
# JupyterLab refuses to start as root (containers) unless told
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup run lint test quick mutations fuzz test-portable lab slides site chromium refresh benchmark clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml  ## students: the lessons' libraries, JupyterLab, helper
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	touch $@

$(DEV): $(STAMP) requirements-dev.txt  ## maintainers: pytest, nbval, pytest-xdist
	$(PIP) -r requirements-dev.txt
	touch $@

$(SLIDES): $(STAMP) requirements-slides.txt  ## instructors: RISE, reveal.js export, playwright
	$(PIP) -r requirements-slides.txt
	touch $@

$(SITE): $(SLIDES) requirements-site.txt  ## the course site: Sphinx, myst-nb, sphinx-book-theme
	$(PIP) -r requirements-site.txt
	touch $@

run: $(STAMP)  ## execute every notebook headlessly, print a time table (tracked files untouched)
	$(PY) -m tools.run_notebooks

lint: $(DEV)  ## ruff (a small rule set, pyproject.toml) and its format check; mypy on helper/
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy helper

test: $(DEV) $(SLIDES) $(SITE) lint  ## unit tests for helper + strict nbval over every notebook + slide check (2 workers)
	$(PY) -m pytest

quick: $(DEV) $(SLIDES) lint  ## make test less the slow tests (browser checks of slides and site, crash, bombs): the fast loop
	$(PY) -m pytest -m "not mutation and not slow"

mutations: $(DEV)  ## break each lesson's guarded lines (tests/mutations/NN.toml): the checking cell must fail
	$(PY) -m pytest -m mutation tests/test_mutations.py

fuzz: $(DEV)  ## every byte change and truncation of a small checkpoint, and the hostile corpus (capped per case)
	FUZZ_FULL=1 $(PY) -m pytest -p no:nbval -o addopts="" -s tests/test_fuzz.py
	FUZZ_FULL=1 $(PY) -m pytest -p no:nbval -o addopts="" tests/test_hostile.py

SCAN   := .venv-scan
$(SCAN)/.installed: requirements-scan.txt  ## the model scanners, in a virtual env of their own (their pins differ)
	test -x $(SCAN)/bin/python || $(PYTHON) -m venv $(SCAN)
	$(SCAN)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-scan.txt
	touch $@

.PHONY: scan-compare
scan-compare: $(DEV) $(SCAN)/.installed  ## picklescan, modelscan, fickling, modelaudit vs the doctor on the hostile corpus
	$(PY) -m tools.scan_compare --scan-venv $(SCAN) $(SCAN_ARGS)  # e.g. SCAN_ARGS="--json scan.json"

test-portable: $(DEV)  ## every notebook again under several CPU-kernel settings (vector units, threads)
	$(PY) -m tools.portability $(PORTABLE)  # e.g. make test-portable PORTABLE="--setting mixed"

lab: $(STAMP)  ## open the course in JupyterLab
	$(PY) -m tools.harness --threads-only $(VENV)/bin/jupyter lab $(LAB_ROOT) notebooks/

slides: $(SLIDES) chromium  ## instructors: offline reveal.js decks in artifacts/slides/, checked in headless Chromium
	$(PY) -m tools.slides browser

site: $(SITE) chromium  ## the course as a static site in artifacts/site/ (stored outputs, nothing run), checked in headless Chromium
	$(PY) -m tools.course_site all

chromium:  ## Debian's Chromium for the slide check (installed with apt-get when missing and run as root)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "install Chromium (Debian/Ubuntu: apt-get install chromium) to check the slides"; exit 1; }

benchmark: $(STAMP)  ## noise-aware timings (load average, CPU model, quiet vs one core busy); BENCH="--only io"
	$(PY) -m tools.benchmark $(BENCH)

refresh: $(STAMP)  ## maintainers: re-execute notebooks in place and store their outputs
	$(PY) -m tools.run_notebooks --write

clean:  ## remove generated files (not the virtual environment)
	rm -rf artifacts .pytest_cache
