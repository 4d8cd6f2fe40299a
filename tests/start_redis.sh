#!/usr/bin/env bash
# Starts the Redis server the tests use: 127.0.0.1:${FLOCK_TEST_REDIS_PORT:-6390}, AOF on (appendfsync always).
# Installs Debian's redis-server first when it is missing (as root, with apt-get). Does nothing if it is up.
set -euo pipefail
port="${FLOCK_TEST_REDIS_PORT:-6390}"
if ! command -v redis-server >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    fi
    if { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; } && command -v apt-get >/dev/null 2>&1; then
        echo "installing redis-server (Debian package) for the Redis tests"
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get install -y -q redis-server >/dev/null 2>&1 \
            || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q redis-server >/dev/null; }
    else
        echo "the Redis tests need redis-server: install it (apt-get install redis-server) and run again" >&2
        exit 1
    fi
fi
if redis-cli -p "$port" ping >/dev/null 2>&1; then
    exit 0
fi
dir="${TMPDIR:-/tmp}/flock-llm-test-redis-$port"
mkdir -p "$dir"
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync always --save '' \
    --daemonize yes --logfile "$dir/redis.log"
for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && exit 0
    sleep 0.1
done
echo "redis-server did not start on port $port; see $dir/redis.log" >&2
exit 1
