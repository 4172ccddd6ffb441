# streamlab — `just demo` runs the whole pipeline, `just test` runs the tests.

set shell := ["bash", "-euo", "pipefail", "-c"]
# On Windows the recipes marked [windows] run in PowerShell; the rest need bash (WSL2 or Git Bash).
set windows-shell := ["powershell.exe", "-NoLogo", "-NoProfile", "-Command"]

broker_port := env_var_or_default("STREAMLAB_BROKER_PORT", "9092")
export STREAMLAB_BROKER_PORT := broker_port
export STREAMLAB_BROKERS := env_var_or_default("STREAMLAB_BROKERS", "127.0.0.1:" + broker_port)
streamlab := "./target/release/streamlab"
demo_db := "sqlite://target/demo/warehouse.db"

# List the recipes.
default:
    @just --list

# Build the release binary (no debug info: target/release/streamlab).
build:
    cargo build --release

# `STREAMLAB=target/profiling/streamlab scripts/group-demo` runs the groups demo with it.
# The release build with line tables (target/profiling/streamlab), for perf, flamegraphs and backtraces.
build-profiling:
    cargo build --profile profiling

# Install the tansu broker once (≈15–25 minutes the first time, then cached in ~/.cargo/bin).
install-broker:
    scripts/broker install

# Start tansu on 127.0.0.1:{{broker_port}}: durable, its log in .tansu/ (STREAMLAB_BROKER_STORAGE=memory: faster, forgets on stop).
broker: install-broker
    scripts/broker start

# Stop the broker `just broker` started (its topics, records and group offsets stay on disk).
broker-stop:
    scripts/broker stop

# Stop the broker and delete its log: the next `just broker` starts with nothing.
broker-reset:
    scripts/broker reset

# Start Apache Kafka 4 and PostgreSQL with Docker (docker-compose.yaml).
up:
    docker compose up -d --wait

# Stop the Docker stack.
down:
    docker compose down

# The broker is installed first, so that its one-time build (≈15–25 minutes) is announced up front.
# The whole pipeline on the embedded default: broker → topic → produce → consume into SQLite → check.
[unix]
demo: install-broker build broker
    mkdir -p target/demo
    {{streamlab}} topic create --topic sales --partitions 3 --config retention.ms=86400000 --if-not-exists
    {{streamlab}} produce --topic sales --kind sales --count 3000 --rate 1000
    {{streamlab}} consume --topic sales --sink sqlite -D {{demo_db}} --stop-at-end
    {{streamlab}} check --sink sqlite -D {{demo_db}} --topic sales --max-lag 0

# On Windows: the same pipeline against Apache Kafka from docker-compose.yaml (Docker Desktop);
# tansu, the embedded broker, does not build for Windows.
[windows]
demo: build
    docker compose up -d --wait kafka
    mkdir -Force target/demo | Out-Null
    {{streamlab}} topic create --topic sales --partitions 3 --config retention.ms=86400000 --if-not-exists
    {{streamlab}} produce --topic sales --kind sales --count 3000 --rate 1000
    {{streamlab}} consume --topic sales --sink sqlite -D {{demo_db}} --stop-at-end
    {{streamlab}} check --sink sqlite -D {{demo_db}} --topic sales --max-lag 0

# Consumer groups live: three members share six partitions, one is killed, one joins (≈ 50 s).
demo-groups: build broker
    STREAMLAB={{streamlab}} scripts/group-demo

# Integration tests are one binary of a module per command (tests/lib.rs): `just test -- consume::` runs one.
# Every test, against the real broker and databases; sets up what they need (scripts/test). ARGS go to cargo test.
[positional-arguments]
test *ARGS: install-broker
    scripts/test "$@"

# Formatting and lints, as CI wants them.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# Measure the pipeline against its limits (1,000,000 events × 3 runs; table + target/bench/latest.json).
# The pipeline runs on an in-memory broker (port STREAMLAB_BENCH_PORT, default 9093) so the broker
# is not what is measured; the durable `just broker` gets its own produce/fetch row.
bench *ARGS: build broker
    #!/usr/bin/env bash
    set -euo pipefail
    export STREAMLAB_BROKER_PORT="${STREAMLAB_BENCH_PORT:-9093}" STREAMLAB_BROKER_STORAGE=memory
    scripts/broker start
    status=0
    {{streamlab}} bench -b "127.0.0.1:$STREAMLAB_BROKER_PORT" --durable-broker "$STREAMLAB_BROKERS" {{ARGS}} || status=$?
    scripts/broker stop
    if [ "$status" -ne 0 ]; then exit "$status"; fi
    if command -v valgrind >/dev/null; then
        scripts/cost --json-into target/bench/latest.json
    else
        echo "instructions per event: not measured (valgrind is not installed)"
    fi

# Instructions per event of the hot paths without broker or database, counted by callgrind:
# a figure noise cannot move (scripts/cost; `just bench` prints it too). PATHS: consume-sales …
cost *PATHS: build
    scripts/cost {{PATHS}}

# Produce + consume for SOAK_MINUTES (default 10) while the consumer is killed again and again,
# then print the totals (SOAK_RATE, SOAK_SINK=sqlite|pg, SOAK_DATABASE_URL).
soak: build broker
    scripts/soak
