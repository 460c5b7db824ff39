# The two entry points are `sudo make demo` and `sudo make test`; both install what they need.
# Mininet is packaged for the system interpreter, so the venv is made from it and sees its site-packages.
SYSTEM_PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RESULTS ?= results

.PHONY: deps apt venv bytecode demo test lint bench images clean
deps: apt venv bytecode

# Cheap when nothing is missing (one dpkg-query per package), so it runs every time.
apt:
	@scripts/install-deps.sh

venv: apt $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# Byte-compiled here because an environment that sets PYTHONDONTWRITEBYTECODE (some containers and
# CI images do) would otherwise compile ~70 modules on every `testbed run`: 0.1 s of a 0.6 s cell.
# A no-op when up to date.
bytecode: venv
	@$(PY) -m compileall -q testbed

# The interop matrix host, linux-6.1, tcp × the hackathon suite. The 6.1 guest image is built from
# Debian's kernel package (cached); without it those cells are listed as unavailable.
demo: deps
	$(PY) -m testbed doctor
	$(PY) -m testbed images linux-6.1 || echo "demo: no linux-6.1 guest image; its cells will be unavailable" >&2
	$(PY) -m testbed demo --results $(RESULTS)

test: deps
	$(PY) -m ruff check testbed tests bench
	$(PY) -m pytest -q -p no:cacheprovider tests

images: deps
	$(PY) -m testbed images

# Every bench at a quick size (15-25 min on 2 cores), each under a time limit, figures into
# bench/RESULTS.md (its hand-written part kept); BENCH=full for the big sizes.
BENCH ?= quick
bench: deps
	$(PY) bench/run_all.py --mode $(BENCH)

clean:
	$(PY) -m testbed clean
