# The two commands: `make up` and `make test`. Everything else is a helper.
BUILD      ?= build
TEST_BUILD ?= build-test
PYTEST     := /usr/bin/python3 -m pytest
FUZZ_SECONDS ?= 20
# Sanitizer settings for the test build: stop at the first report, and let
# the end-to-end suite see reports in each daemon's stderr.
export ASAN_OPTIONS  ?= detect_leaks=1:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS ?= print_stacktrace=1:halt_on_error=1

.PHONY: all deps build up down test unit e2e fuzz format bench bench-store bench-host bench-scheduler bench-router bench-deploy clean

all: build

deps:
	@scripts/deps

$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=release -Db_ndebug=if-release

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

up: build
	@scripts/up $(BUILD)

down:
	@scripts/up --stop $(BUILD)

$(TEST_BUILD)/build.ninja:
	meson setup $(TEST_BUILD) --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false

test: deps $(TEST_BUILD)/build.ninja
	ninja -C $(TEST_BUILD)
	meson test -C $(TEST_BUILD) --suite unit --print-errorlogs
	tests/fuzz/run $(FUZZ_SECONDS)
	PIER_BUILD_DIR=$(abspath $(TEST_BUILD)) $(PYTEST) -n $${PIER_E2E_JOBS:-3} --dist loadfile --timeout 600 -v tests/e2e

unit: deps $(TEST_BUILD)/build.ninja
	ninja -C $(TEST_BUILD)
	meson test -C $(TEST_BUILD) --suite unit --print-errorlogs

e2e: deps $(TEST_BUILD)/build.ninja
	ninja -C $(TEST_BUILD)
	PIER_BUILD_DIR=$(abspath $(TEST_BUILD)) $(PYTEST) -n $${PIER_E2E_JOBS:-3} --dist loadfile --timeout 600 -v tests/e2e

fuzz: deps
	tests/fuzz/run $(FUZZ_SECONDS)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

bench: bench-store bench-host bench-scheduler bench-router bench-deploy

bench-store: build
	bench/store/run $(BUILD)

bench-host: build
	bench/host/run $(BUILD)

bench-scheduler: build
	bench/scheduler/run $(BUILD)

bench-router: build
	bench/router/run $(BUILD)

bench-deploy: build
	bench/deploy/run $(BUILD)

clean:
	rm -rf $(BUILD) $(TEST_BUILD) build-fuzz
