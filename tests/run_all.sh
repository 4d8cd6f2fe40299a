#!/usr/bin/env bash
# The whole suite (`make test`): the main tests, and alongside them the flock-core plugin tests, which
# build their own Python 3.12 virtualenv first (mostly waiting on pip, so the two overlap well).
# Needs the test Redis: tests/start_redis.sh (make test runs it first).
set -uo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
tests_flock_core/run.sh >"$log" 2>&1 &
plugin_pid=$!
# pytest-xdist spreads the test files over FLOCK_TEST_WORKERS processes (default 2, one per core of the CI
# machine): much of the suite waits on subprocesses, servers and timeouts, and another file's tests run meanwhile.
# --dist loadfile keeps each file on one worker, so a module's shared fixture (the docs site build, the local
# model's server) is started once. FLOCK_TEST_WORKERS=0 runs everything in this one process, as plain pytest does.
.venv/bin/python -m pytest -q -n "${FLOCK_TEST_WORKERS:-2}" --dist loadfile
main_status=$?
wait "$plugin_pid"
plugin_status=$?
echo "--- flock-core plugin tests (tests_flock_core/run.sh) ---"
grep -v "is ignored: it is neither a file nor a directory" "$log"
rm -f "$log"
if [ "$main_status" -ne 0 ] || [ "$plugin_status" -ne 0 ]; then
    echo "FAILED: main suite exit $main_status, flock-core plugin suite exit $plugin_status" >&2
    exit 1
fi
