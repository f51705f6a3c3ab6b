# edgeworker — `make` alone lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EDGEWORKER := $(BIN)/edgeworker
CONFIG ?= examples/edgeworker.toml
PYTEST_ARGS ?=

# The one-file binary and where `make install` puts it (DESTDIR for staged installs).
BINARY := dist/edgeworker
PREFIX ?= /usr/local
DESTDIR ?=
UNIT_DIR ?= $(PREFIX)/lib/systemd/system
CONFIG_DIR ?= /etc/edgeworker
SERVICE_USER ?= edgeworker
WORKER_SOURCES := $(wildcard edgeworker/*.py) $(wildcard migrations/*.sql) pyproject.toml
# The whole standard library goes into the binary, so that a callable job from python_path can
# import any of it; less what an unattended worker never needs (GUI, terminal, tests, packaging).
STDLIB_SKIP := tkinter turtle turtledemo idlelib test unittest lib2to3 ensurepip pydoc_data \
	distutils venv curses dbm shelve readline antigravity this
PYI_EXCLUDE := $(STDLIB_SKIP) _tkinter _curses _curses_panel _dbm _gdbm nis crypt _crypt spwd \
	setuptools pkg_resources _distutils_hack pip
STDLIB_ARGS := import importlib.util as u, sys; skip = set(sys.argv[1:]); \
	specs = ((n, u.find_spec(n)) for n in sorted(sys.stdlib_module_names) \
	         if not n.startswith("_") and n not in skip); \
	print(*(("--collect-submodules=" if s.submodule_search_locations else "--hidden-import=") \
	        + n for n, s in specs if s))

.DEFAULT_GOAL := help
.PHONY: help venv install uninstall run test test-task-recovery torture lint migrate \
	migrate-remove-current-task-id build-worker binary run-worker bench bench-smoke

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-32s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(VENV)/.installed ## Create .venv with edgeworker and the test tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

$(VENV)/.installed-build: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[build]'
	touch $@

build-worker: $(BINARY) ## Build dist/edgeworker, one stripped file (PyInstaller)

binary: build-worker ## Same as build-worker

$(BINARY): $(VENV)/.installed-build $(WORKER_SOURCES)
	$(BIN)/pyinstaller --onefile --strip --noconfirm --clean --log-level WARN \
		--name edgeworker --distpath dist --workpath build/pyinstaller \
		--specpath build/pyinstaller --add-data '$(CURDIR)/migrations:migrations' \
		$$($(BIN)/python -c '$(STDLIB_ARGS)' $(STDLIB_SKIP)) \
		$(addprefix --exclude-module=,$(PYI_EXCLUDE)) --hidden-import=prometheus_client \
		edgeworker/__main__.py
	@ls -l $@

run-worker: $(BINARY) ## Run the built binary on the demo config (examples/edgeworker.toml)
	$(BINARY) --config $(CONFIG) run --migrate

install: $(BINARY) ## As root: install the binary, the systemd units and /etc/edgeworker (kept if present)
	@test "$$(id -u)" = 0 || test -n "$(DESTDIR)" || { echo "Error: make install needs root" >&2; exit 1; }
	install -D -m 0755 $(BINARY) $(DESTDIR)$(PREFIX)/bin/edgeworker
	install -d -m 0755 $(DESTDIR)$(UNIT_DIR)
	for unit in edgeworker.service edgeworker-web.service; do \
		sed 's|/usr/local/|$(PREFIX)/|g' systemd/$$unit > $(DESTDIR)$(UNIT_DIR)/$$unit && \
		chmod 0644 $(DESTDIR)$(UNIT_DIR)/$$unit || exit 1; \
	done
	install -D -m 0644 docs/deploy.md $(DESTDIR)$(PREFIX)/share/doc/edgeworker/deploy.md
	install -D -m 0644 docs/operate.md $(DESTDIR)$(PREFIX)/share/doc/edgeworker/operate.md
	install -d -m 0755 $(DESTDIR)$(CONFIG_DIR)
	@if [ -e $(DESTDIR)$(CONFIG_DIR)/edgeworker.toml ]; then \
		echo "kept $(DESTDIR)$(CONFIG_DIR)/edgeworker.toml"; \
	else \
		install -m 0640 systemd/edgeworker.toml $(DESTDIR)$(CONFIG_DIR)/edgeworker.toml; \
		echo "installed $(DESTDIR)$(CONFIG_DIR)/edgeworker.toml"; \
	fi
	@if [ -z "$(DESTDIR)" ]; then \
		id -u $(SERVICE_USER) >/dev/null 2>&1 || useradd --system --user-group \
			--home-dir /var/lib/edgeworker --no-create-home --shell /usr/sbin/nologin \
			$(SERVICE_USER); \
		chgrp $(SERVICE_USER) $(CONFIG_DIR)/edgeworker.toml; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
		echo "next: edit $(CONFIG_DIR)/edgeworker.toml, then systemctl enable --now edgeworker"; \
	fi

uninstall: ## As root: remove the binary and the units (config, database and user stay)
	@test "$$(id -u)" = 0 || test -n "$(DESTDIR)" || { echo "Error: make uninstall needs root" >&2; exit 1; }
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemctl disable --now edgeworker.service edgeworker-web.service 2>/dev/null || true; fi
	rm -f $(DESTDIR)$(PREFIX)/bin/edgeworker $(DESTDIR)$(UNIT_DIR)/edgeworker.service \
		$(DESTDIR)$(UNIT_DIR)/edgeworker-web.service
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/edgeworker
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept $(CONFIG_DIR), /var/lib/edgeworker and the user $(SERVICE_USER)"

run: venv ## Migrate the demo database and run the worker on examples/edgeworker.toml (Ctrl-C stops)
	$(EDGEWORKER) --config $(CONFIG) migrate
	$(EDGEWORKER) --config $(CONFIG) run

test: venv ## Run the test suite (crash, power-cut, binary and systemd tests included)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-task-recovery: venv ## Crash torture: SIGKILL a running worker 200 times, check nothing is lost
	$(BIN)/python tests/torture.py crash --kills $(or $(KILLS),200)

torture: venv ## Power-cut torture: 100 cuts with durability "full", 100 with "normal"
	$(BIN)/python tests/torture.py powercut --cuts $(or $(CUTS),100)
	$(BIN)/python tests/torture.py powercut --cuts $(or $(CUTS),100) --durability normal

bench: venv ## Benchmarks beside raw huey: one table, bench/results.json (about 4 minutes)
	$(BIN)/python -m bench

bench-smoke: venv ## The benchmarks with tiny sizes: do the scripts still run? (seconds)
	$(BIN)/python -m bench --quick

lint: venv ## Check the code with ruff
	$(BIN)/ruff check edgeworker tests bench

migrate: venv ## Apply pending migrations to the configured database (CONFIG=...)
	$(EDGEWORKER) --config $(CONFIG) migrate

migrate-remove-current-task-id: venv ## Apply migrations up to 003 (drops jobs.current_task_id)
	$(EDGEWORKER) --config $(CONFIG) migrate --to 3
