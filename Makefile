# edgeworker — `make` alone lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EDGEWORKER := $(BIN)/edgeworker
CONFIG ?= examples/edgeworker.toml
PYTEST_ARGS ?=
# make test-huey: a venv per huey release, outside the checkout, reused while the project's
# checkout and pyproject.toml are the same; the tests that exercise huey's storage and consumer.
HUEY_VENVS ?= /tmp/edgeworker-huey
HUEY_TESTS := tests/test_ledger.py tests/test_recovery.py tests/test_daemon.py \
	tests/test_crash.py tests/test_worker.py

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

# The host's PyInstaller arguments; packaging/build-in-root passes the same ones in an ARM root.
# packaging/prepare-build writes the help pages and the run-time hooks into PYI_EXTRA.
PYI_EXTRA := build/pyinstaller-extra
PYI_ARGS = --onedir --strip --name edgeworker --add-data '$(CURDIR)/migrations:migrations' \
	$$($(BIN)/python -c '$(STDLIB_ARGS)' $(STDLIB_SKIP)) \
	$(addprefix --exclude-module=,$(PYI_EXCLUDE)) --hidden-import=prometheus_client \
	--additional-hooks-dir '$(CURDIR)/$(PYI_EXTRA)/hooks' \
	--add-data '$(CURDIR)/$(PYI_EXTRA)/help-pages:edgeworker' edgeworker/__main__.py
export STDLIB_ARGS STDLIB_SKIP
export PYI_EXCLUDE_ARGS := $(addprefix --exclude-module=,$(PYI_EXCLUDE))

# Architectures are Debian's names (amd64, arm64, armhf); the one-file ARM binaries are named
# arm64 and armv7. ARM builds run in a Debian root under qemu, cached in BUILD_CACHE.
HOST_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' edgeworker/__init__.py)
BUILD_CACHE ?= /var/cache/edgeworker-build
export EDGEWORKER_BUILD_CACHE := $(BUILD_CACHE)
# The unpacked build (a directory: the program and its _internal/) that `make install` (the
# host's, dist/unpacked) and the packages (dist/unpacked-ARCH, built in a Debian root) install,
# so that no start unpacks anything.
UNPACKED := dist/unpacked/edgeworker
LIB_DIR = $(PREFIX)/lib/edgeworker
DEB_ARCHES := amd64 arm64 armhf
DEBS := $(foreach a,$(DEB_ARCHES),dist/edgeworker_$(VERSION)_$(a).deb)
DEB_MAINTAINER ?= edgeworker maintainers <edgeworker@example.org>
export DEB_MAINTAINER
RELEASE_BINARIES := dist/edgeworker-linux-amd64 dist/edgeworker-linux-arm64 \
	dist/edgeworker-linux-armv7

.DEFAULT_GOAL := help
.PHONY: help venv install uninstall run test test-task-recovery torture torture-pg lint migrate \
	migrate-remove-current-task-id test-huey build-worker binary run-worker bench bench-smoke \
	build-worker-arm64 build-worker-armv7 build-worker-unpacked test-arm deb dist clean clean-cache

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

# One analysis makes both the one-file binary and the unpacked build.
$(BINARY) $(UNPACKED)/edgeworker &: $(VENV)/.installed-build $(WORKER_SOURCES) \
		packaging/finish-spec packaging/prepare-build
	$(BIN)/python packaging/prepare-build $(PYI_EXTRA)
	$(BIN)/pyi-makespec --specpath build/pyinstaller $(PYI_ARGS) >/dev/null
	$(BIN)/python packaging/finish-spec build/pyinstaller/edgeworker.spec
	$(BIN)/pyinstaller --noconfirm --clean --log-level WARN --distpath build/host \
		--workpath build/pyinstaller build/pyinstaller/edgeworker.spec
	mkdir -p dist/unpacked && rm -rf $(UNPACKED)
	cp -a build/host/edgeworker $(UNPACKED)
	cp -a build/host/edgeworker-onefile $(BINARY)
	@ls -l $(BINARY) && du -sh $(UNPACKED)

build-worker-unpacked: $(UNPACKED)/edgeworker ## Build the unpacked build that make install installs

# One build per architecture in its Debian root: build/release-ARCH/edgeworker-onefile and the
# unpacked build/release-ARCH/edgeworker/ (what the package installs).
build/release-%/edgeworker/edgeworker: $(WORKER_SOURCES) packaging/build-in-root \
		packaging/finish-spec packaging/prepare-build
	packaging/build-in-root $* build/release-$*

build-worker-arm64: dist/edgeworker-linux-arm64 ## As root: dist/edgeworker-linux-arm64, one file, built under qemu
build-worker-armv7: dist/edgeworker-linux-armv7 ## As root: dist/edgeworker-linux-armv7, one file, built under qemu

dist/edgeworker-linux-arm64: build/release-arm64/edgeworker/edgeworker
dist/edgeworker-linux-armv7: build/release-armhf/edgeworker/edgeworker
dist/edgeworker-linux-amd64: build/release-amd64/edgeworker/edgeworker
$(RELEASE_BINARIES):
	@mkdir -p dist
	cp $(<D)/../edgeworker-onefile $@

deb: $(DEBS) ## As root: dist/edgeworker_VERSION_{amd64,arm64,armhf}.deb, built in Debian roots

dist/edgeworker_$(VERSION)_%.deb: build/release-%/edgeworker/edgeworker packaging/deb \
		$(wildcard packaging/debian/*) systemd/edgeworker.service systemd/edgeworker.toml \
		docs/deploy.md
	packaging/deb $* $(<D) $@

dist: $(RELEASE_BINARIES) $(DEBS) ## As root: the one-file binaries and packages of the 3 architectures, SHA256SUMS
	cd dist && sha256sum $(notdir $^) > SHA256SUMS && cat SHA256SUMS

test-arm: venv ## As root: the ARM binaries under qemu and the .deb in a booted systemd (CI runs it)
	$(BIN)/pytest -q -p no:cacheprovider -m arm $(PYTEST_ARGS) tests/test_arm.py tests/test_deb.py

clean: ## Remove build/ and dist/ (the cached Debian roots stay: make clean-cache)
	rm -rf build dist

clean-cache: ## Remove the cached Debian roots and wheels of the ARM builds (BUILD_CACHE)
	rm -rf $(BUILD_CACHE)

run-worker: $(BINARY) ## Run the built binary on the demo config (examples/edgeworker.toml)
	$(BINARY) --config $(CONFIG) run --migrate

install: $(UNPACKED)/edgeworker ## As root: install the unpacked build, the systemd units and /etc/edgeworker (kept if present)
	@test "$$(id -u)" = 0 || test -n "$(DESTDIR)" || { echo "Error: make install needs root" >&2; exit 1; }
	install -d -m 0755 $(DESTDIR)$(PREFIX)/bin $(dir $(DESTDIR)$(LIB_DIR))
	rm -rf $(DESTDIR)$(LIB_DIR).new
	cp -R $(UNPACKED) $(DESTDIR)$(LIB_DIR).new
	chmod -R u=rwX,go=rX $(DESTDIR)$(LIB_DIR).new
	rm -rf $(DESTDIR)$(LIB_DIR) && mv $(DESTDIR)$(LIB_DIR).new $(DESTDIR)$(LIB_DIR)
	ln -sfn ../lib/edgeworker/edgeworker $(DESTDIR)$(PREFIX)/bin/edgeworker
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

uninstall: ## As root: remove the program and the units (config, database and user stay)
	@test "$$(id -u)" = 0 || test -n "$(DESTDIR)" || { echo "Error: make uninstall needs root" >&2; exit 1; }
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemctl disable --now edgeworker.service edgeworker-web.service 2>/dev/null || true; fi
	rm -f $(DESTDIR)$(PREFIX)/bin/edgeworker $(DESTDIR)$(UNIT_DIR)/edgeworker.service \
		$(DESTDIR)$(UNIT_DIR)/edgeworker-web.service
	rm -rf $(DESTDIR)$(LIB_DIR)
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/edgeworker
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept $(CONFIG_DIR), /var/lib/edgeworker and the user $(SERVICE_USER)"

run: venv ## Migrate the demo database and run the worker on examples/edgeworker.toml (Ctrl-C stops)
	$(EDGEWORKER) --config $(CONFIG) migrate
	$(EDGEWORKER) --config $(CONFIG) run

test: venv ## Run the test suite (crash, power-cut, binary and systemd tests included)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-huey: venv ## The ledger, recovery, daemon, crash and worker tests on the oldest and newest huey allowed (CI runs it)
	@versions=$$($(BIN)/python tests/huey_versions.py) || exit 1; \
	stamp="$(CURDIR) $$(sha256sum pyproject.toml | cut -c1-64)"; \
	for v in $$versions; do \
		venv=$(HUEY_VENVS)-$$v; \
		if [ "$$(cat $$venv/.edgeworker 2>/dev/null)" != "$$stamp" ]; then \
			echo "building $$venv"; \
			$(PYTHON) -m venv $$venv && \
			$$venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]' \
				"huey==$$v" && echo "$$stamp" > $$venv/.edgeworker || exit 1; \
		fi; \
		echo "huey $$($$venv/bin/python -c 'import huey; print(huey.__version__)') in $$venv"; \
		$$venv/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS) $(HUEY_TESTS) || exit 1; \
	done

test-task-recovery: venv ## Crash torture: SIGKILL a running worker 200 times, check nothing is lost
	$(BIN)/python tests/torture.py crash --kills $(or $(KILLS),200)

torture: venv ## Power-cut torture: 100 cuts with durability "full", 100 with "normal"
	$(BIN)/python tests/torture.py powercut --cuts $(or $(CUTS),100)
	$(BIN)/python tests/torture.py powercut --cuts $(or $(CUTS),100) --durability normal

torture-pg: venv ## Kill torture on PostgreSQL: 3 workers on one database, 100 events (SIGKILLs, a server crash)
	$(BIN)/python tests/torture_pg.py --events $(or $(EVENTS),100) $(if $(SEED),--seed $(SEED))

bench: venv $(UNPACKED)/edgeworker $(BINARY) ## Benchmarks beside raw huey and of the installed build: one table, bench/results.json (about 13 minutes, 6 of them PostgreSQL's)
	$(BIN)/python -m bench

bench-smoke: venv ## The benchmarks with tiny sizes: do the scripts still run? (seconds)
	$(BIN)/python -m bench --quick

lint: venv ## Check the code with ruff
	$(BIN)/ruff check edgeworker tests bench

migrate: venv ## Apply pending migrations to the configured database (CONFIG=...)
	$(EDGEWORKER) --config $(CONFIG) migrate

migrate-remove-current-task-id: venv ## Apply migrations up to 003 (drops jobs.current_task_id)
	$(EDGEWORKER) --config $(CONFIG) migrate --to 3
