# The targets a user types. The real build is Meson + Ninja; this file only
# names the common jobs and makes sure the Debian packages are there first.

BUILD      ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
FUZZ_BUILD ?= build-fuzz
COV_BUILD  ?= build-cov
MESON_OPTS ?=
# CI builds treat warnings as errors; so do we by default.
WERROR     ?= true
# make install: where to (DESTDIR: a staging tree, as package builds use).
# The configuration goes to $(SYSCONFDIR)/modelbuf, /etc by default whatever
# the prefix, as a service's does on Debian (meson.build's default too).
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR    ?=

.PHONY: all deps test-deps build run test test-gpu asan tsan fuzz bench coverage clean install uninstall

all: build

deps:
	@scripts/deps.sh

# What some tests take from outside Debian when it can be had (the OpenAI
# Node SDK from npm, with node and npm from Debian by scripts/deps.sh);
# without the registry those tests skip.
test-deps:
	@scripts/test-deps.sh

$(BUILD)/build.ninja:
	@scripts/deps.sh
	meson setup $(BUILD) -Dwerror=$(WERROR) $(MESON_OPTS)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

# The main job: modelbufd serving examples/modelbuf.yaml, with curl examples
# (the library's C example stays runnable as $(BUILD)/examples/c/two_models).
run: build
	@scripts/run.sh $(BUILD)

test: build test-deps
	meson test -C $(BUILD) --print-errorlogs

$(ASAN_BUILD)/build.ninja:
	@scripts/deps.sh
	CC=clang meson setup $(ASAN_BUILD) -Dwerror=$(WERROR) -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug $(MESON_OPTS)

asan: deps test-deps $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  meson test -C $(ASAN_BUILD) --print-errorlogs

$(TSAN_BUILD)/build.ninja:
	@scripts/deps.sh
	CC=clang meson setup $(TSAN_BUILD) -Dwerror=$(WERROR) -Db_sanitize=thread -Db_lundef=false -Dbuildtype=debug $(MESON_OPTS)

# TSan's shadow memory needs a fixed layout; setarch -R turns off address
# randomisation for the test processes so it works on any kernel.
tsan: deps test-deps $(TSAN_BUILD)/build.ninja
	ninja -C $(TSAN_BUILD)
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  setarch -R meson test -C $(TSAN_BUILD) --print-errorlogs

$(FUZZ_BUILD)/build.ninja:
	@scripts/deps.sh
	CC=clang meson setup $(FUZZ_BUILD) -Dfuzz=true -Dtests=false -Db_sanitize=address,undefined \
	  -Dc_args=-fsanitize=fuzzer-no-link -Db_lundef=false -Dbuildtype=debug $(MESON_OPTS)

fuzz: deps $(FUZZ_BUILD)/build.ninja
	ninja -C $(FUZZ_BUILD)

# Every bench/*.sh, each printing its ratio to a baseline measured in the
# same run; results and commands are kept in docs/PERFORMANCE.md.
bench: build
	@scripts/deps.sh --bench
	bench/run $(BUILD)

# GPU tests (tests/gpu): need a CUDA driver and a GPU; exit 77 without one.
# The device layer, loader and tensors backend on cuda:0, then modelbufd end
# to end (PyTorch workers with and without hooks, a tensors model) against
# nvidia-smi's figures.
test-gpu: build
	$(BUILD)/tests/gpu/test_cuda_device
	python3 tests/gpu/daemon_gpu.py --build $(BUILD)

# The programs, library, headers, pkg-config file, man pages, systemd unit,
# sysusers.d and tmpfiles.d entries, bash completion, the configuration's
# schema, and $(SYSCONFDIR)/modelbuf/modelbuf.yaml when none is there (an
# existing one is kept). Without DESTDIR, as root, it also creates the
# modelbuf user and its folders and reloads systemd (dist/post-install.sh).
install: build
	meson configure $(BUILD) -Dprefix=$(PREFIX) -Dsysconfdir=$(SYSCONFDIR)
	ninja -C $(BUILD)
	meson install -C $(BUILD) --no-rebuild $(if $(DESTDIR),--destdir "$(abspath $(DESTDIR))")

# Removes what the last install put there (its log in $(BUILD)), except the
# configuration, as `apt remove` keeps a conffile.
uninstall:
	ninja -C $(BUILD) uninstall

# Line coverage of make test's suites (gcovr, Debian's gcovr package): a
# build with --coverage runs every suite, then gcovr prints the GPU code
# (the library's device layer, tensors backend and loader; the daemon's
# nvml.c, gpu_checkpoint.c, worker.c and daemon.c; run against the stand-in
# driver of tests/gpu_standin) and writes the whole tree's report to
# $(COV_BUILD)/coverage.txt.
COV_FILES = lib/device_cuda.c lib/device_host.c lib/backend_tensors.c lib/tensor/loader.c \
            daemon/nvml.c daemon/gpu_checkpoint.c daemon/worker.c daemon/daemon.c
$(COV_BUILD)/build.ninja:
	@scripts/deps.sh --coverage
	meson setup $(COV_BUILD) -Dwerror=$(WERROR) -Db_coverage=true -Dbuildtype=debug $(MESON_OPTS)

coverage: $(COV_BUILD)/build.ninja
	@scripts/deps.sh --coverage
	ninja -C $(COV_BUILD)
	find $(COV_BUILD) -name '*.gcda' -delete
	meson test -C $(COV_BUILD) --print-errorlogs
	gcovr -r . $(COV_BUILD) --exclude 'tests/.*' --exclude 'bench/.*' --exclude 'examples/.*' \
	  -o $(COV_BUILD)/coverage.txt
	gcovr -r . $(COV_BUILD) $(foreach f,$(COV_FILES),--filter $(f)) --print-summary

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(FUZZ_BUILD) $(COV_BUILD)
