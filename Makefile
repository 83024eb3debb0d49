# The two commands: `make book` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
CACHE := _build/.jupyter_cache
# nbgrader shells out to `alembic`, and the kernels must be the venv's Python.
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg
# Nothing here may reach the network at run time.
export HF_HUB_OFFLINE := 1
# Outside a grading run, hidden tests draw their inputs from this seed (tutorlib.checks.draw), so
# that the Solutions appendix and the tests repeat; a grading run uses the course's secret.
export TUTORLIB_HIDDEN_SEED := course-book

.PHONY: book test venv lint exercises solutions notebooks budgets lock clean sandbox-tools \
  browser-tools

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@# build matplotlib's font cache now, not as stderr noise on the first page
	$(BIN)/python -c "import matplotlib.pyplot"
	@touch $@

## Build the site into _build/html with warnings as errors. Pages are executed through Jupyter
## Book's cache (_build/.jupyter_cache): a page runs again when its code changed, and every page
## runs again when tutorlib or the lock changed. The pages the cache lacks are executed first, two
## at a time with one thread each (the pages in tests/budgets.py's QUIET alone, with both), as
## `make test` executes them, into the cache (tests/budgets.py, execute_pages); pages that
## `make test` executed against the same sources are taken from it. It ends with a table of each
## page's execution time, written by the build (book/_ext/course_site.py) to
## _build/execution-times.txt.
## Sphinx rebuilds incrementally (an unchanged rebuild re-reads nothing) only after a build that
## succeeded with -W: after a failed build, when the cache was cleared, or when the course's
## Sphinx extension (book/_ext, which Sphinx does not track) changed, everything is read again,
## so that a failed page cannot hide behind a stale page.
book: $(STAMP) $(CACHE)/.sources
	@test -f _build/.book-ok -a -z "$$(find book/_ext -newer _build/.book-ok -name '*.py' 2>/dev/null)" || \
	  rm -rf _build/html _build/.doctrees _build/jupyter_execute
	rm -f _build/.book-ok
	$(BIN)/python -m tests.budgets --execute-pages $(CACHE)
	COURSE_BUILD_STARTED=$$(cat $(CACHE)/.executed-since) \
	  $(BIN)/jupyter-book build . -W -n --keep-going
	@touch _build/.book-ok
	@cat _build/execution-times.txt
	@echo "Open _build/html/index.html in a browser."

$(CACHE)/.sources: $(shell find tutorlib -name '*.py') requirements.txt
	rm -rf $(CACHE) _build/.book-ok
	mkdir -p $(CACHE)
	touch $@

## The whole suite: lint, unit tests, notebooks, the grading round trip, then the clean book build,
## which renders the notebooks the budget tests executed (tests/test_site.py says how).
## Two pytest workers share the 2 cores, so each process (and each kernel it starts) gets one
## thread: with two threads each, torch's thread pools fight over the cores and slow down
## by orders of magnitude.
## The pages that train a model for most of their budget (marker `quiet`, tests/test_pages.py)
## then run one at a time with both cores, as their budgets are defined.
## Grading a class starts grading processes of its own (two workers): those tests run after the
## parallel phase, one module after another in one process, so that they do not compete with the
## pages' time budgets: the hostile class (its cells have 8 s each), then one class of every
## assignment (the round trips, tests/test_grading.py, and the red team, tests/test_redteam.py,
## share it: tests.conftest.graded_class). So do the book build and the site tests, which open every
## page in Chromium: one worker builds and browses the site (one module, so one build: --dist
## loadscope keeps a module on one worker) while the other runs the instructors' page's
## commands; neither has a time budget.
GRADING_TESTS := tests/test_autograde.py tests/test_grading.py tests/test_redteam.py
SITE_TESTS := tests/test_instructors.py tests/test_site.py
SERIAL_TESTS := $(GRADING_TESTS) $(SITE_TESTS)

test: $(STAMP) lint sandbox-tools browser-tools
	rm -rf _build/executed _build/test-artifacts
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadscope \
	  --nbval --nbval-current-env -m "not quiet" $(addprefix --deselect ,$(SERIAL_TESTS))
	OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 $(BIN)/python -m pytest -m quiet tests/test_pages.py
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest $(GRADING_TESTS)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadscope \
	  $(SITE_TESTS)

## The grading tests run hostile submissions in bubblewrap, with `unshare` and `ip` cutting the
## network (Debian's bubblewrap, util-linux and iproute2). Installed with apt where this runs as
## root; otherwise the tests say loudly what they could not contain, and skip those checks.
sandbox-tools:
	@command -v bwrap >/dev/null && command -v ip >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -qq bubblewrap iproute2 >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq bubblewrap iproute2 >/dev/null; }; }; } || \
	  echo "WARNING: could not install bubblewrap: submissions are graded with resource limits only"

## The site tests drive Debian's Chromium (tests/test_site.py); installed with apt where this
## runs as root, otherwise those tests skip with a warning.
browser-tools:
	@command -v chromium >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium \
	        >/dev/null; }; }; } || \
	  echo "WARNING: could not install Chromium: the site is not tested in a browser"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Regenerate the student notebooks in exercises/ from solutions/.
exercises: $(STAMP)
	$(BIN)/python -m tests.grading regenerate

## Rewrite the launch notebooks (book/**/*.ipynb) from the pages: the site's Binder, Colab and
## JupyterHub buttons open them (tests/notebooks.py).
notebooks: $(STAMP)
	$(BIN)/python -m tests.notebooks

## Execute the instructor notebooks in place, so their stored outputs stay current.
solutions: $(STAMP)
	$(BIN)/python -m tests.grading execute

## Measure every page and solution notebook and rewrite the README's budget table.
budgets: $(STAMP)
	$(BIN)/python -m tests.budgets --write-readme

## Re-resolve requirements.in into the lock, requirements.txt.
lock:
	rm -rf /tmp/tutorlib-lock && $(PYTHON) -m venv /tmp/tutorlib-lock
	/tmp/tutorlib-lock/bin/pip install --quiet -r requirements.in
	( head -2 requirements.txt; /tmp/tutorlib-lock/bin/pip freeze --exclude-editable \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' ) > requirements.txt.new
	mv requirements.txt.new requirements.txt

clean:
	rm -rf _build submitted autograded feedback gradebook.db reports downloaded
