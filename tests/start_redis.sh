#!/usr/bin/env bash
# Starts the Redis servers the tests use: 127.0.0.1:${FLOCK_TEST_REDIS_PORT:-6390}, and a 3-node Redis Cluster
# on the next three ports; AOF on (appendfsync always).
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
start() {  # start <port> [extra redis-server options...]
    local p="$1"
    shift
    if redis-cli -p "$p" ping >/dev/null 2>&1; then
        return 0
    fi
    local dir="${TMPDIR:-/tmp}/flock-llm-test-redis-$p"
    rm -rf "$dir" && mkdir -p "$dir"
    redis-server --port "$p" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync always --save '' \
        --daemonize yes --logfile "$dir/redis.log" "$@"
    for _ in $(seq 50); do
        redis-cli -p "$p" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "redis-server did not start on port $p; see $dir/redis.log" >&2
    exit 1
}

# a single server, and a 3-node Redis Cluster on the next three ports
start "$port"
cluster_ports=("$((port + 1))" "$((port + 2))" "$((port + 3))")
for p in "${cluster_ports[@]}"; do
    start "$p" --cluster-enabled yes --cluster-config-file nodes.conf
done
if ! redis-cli -p "${cluster_ports[0]}" cluster info 2>/dev/null | grep -q "cluster_state:ok"; then
    redis-cli --cluster create "${cluster_ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
    for _ in $(seq 100); do
        redis-cli -p "${cluster_ports[0]}" cluster info | grep -q "cluster_state:ok" && exit 0
        sleep 0.1
    done
    echo "the test Redis Cluster (ports ${cluster_ports[*]}) did not become ready" >&2
    exit 1
fi
