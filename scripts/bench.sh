#!/usr/bin/env bash
# Benchmark Quarry against Polars, DuckDB and pandas on the same job.
#   scripts/bench.sh [--rows 1000000 10000000 50000000] [--reps 3] [--raw] [--tools ...]
# The cost of a daily run into a warehouse of 1M and 10M trades (SQLite and
# the ClickHouse stand-in), and the full-file run beside an earlier build:
#   scripts/bench.sh daily [--bases 1000000 10000000] [--reps 3] [--baseline DIR]
# What a source costs: the plain file beside its .csv.gz, that object in S3
# (moto) and a PostgreSQL table of the same rows:
#   scripts/bench.sh sources [--rows 10000000] [--reps 3]
# Builds the release binaries, creates the peers' virtualenv (cached), generates
# the inputs (cached), checks that all tools agree, then times them.
# QUARRY_BENCH_PROFILE=dev uses the debug build (the test suite's tiny smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${QUARRY_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/quarry}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
VENV="$CACHE/bench-venv"
PROFILE="${QUARRY_BENCH_PROFILE:-release}"
cargo build --profile "$PROFILE" --locked --bin quarry --bin quarry-extractor --bin quarry-transformer --bin quarry-loader
BIN="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
if ! "$VENV/bin/pip" freeze 2>/dev/null | sort | diff -q - <(sort scripts/bench/requirements.txt) >/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/bench/requirements.txt
fi
if [ "${1:-}" = daily ]; then
    shift
    if [ -z "${QUARRY_TEST_CLICKHOUSE_URL:-}" ]; then
        # The ClickHouse stand-in of the tests, stopped when this script exits.
        . scripts/standins.sh
        start_clickhouse
    fi
    "$VENV/bin/python" scripts/bench/daily.py --bin "$BIN" --data "$CACHE/bench" \
        --clickhouse-url "$QUARRY_TEST_CLICKHOUSE_URL" "$@"
    exit
fi
if [ "${1:-}" = sources ]; then
    shift
    # moto and a PostgreSQL server of their own, stopped when this script exits.
    . scripts/standins.sh
    start_s3
    start_postgres
    "$VENV/bin/python" scripts/bench/sources.py --bin "$BIN" --data "$CACHE/bench" \
        --s3-endpoint "$QUARRY_TEST_S3_ENDPOINT" --postgres-url "$QUARRY_TEST_POSTGRES_URL" \
        --postgres-password "$QUARRY_TEST_POSTGRES_PASSWORD" "$@"
    exit
fi
exec "$VENV/bin/python" scripts/bench/bench.py --bin "$BIN" --data "$CACHE/bench" "$@"
